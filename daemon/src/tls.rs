//! Mutual TLS for the TCP listener.
//!
//! [`ServerTls::load`] builds a rustls server config from the PEM files named in `[tls]`: the
//! node's certificate chain and key, and a [`WebPkiClientVerifier`] over the CA that *requires* a
//! client certificate. ALPN offers `h2` only.
//!
//! [`tls_incoming`] turns accepted TCP connections into TLS streams. Handshakes run concurrently,
//! each bounded by `limits.handshake_timeout`, and a refused handshake is logged with the peer's
//! address and the reason, so an operator can see a node with the wrong CA knocking. The streams
//! are `tokio_rustls::server::TlsStream<TcpStream>`, for which tonic records the peer's
//! certificates: a handler (or [`crate::auth`]) reads them with `request.peer_certs()`, and
//! [`certificate_identity`] turns the leaf into the identity the node knows it by (subject CN).

use std::future::ready;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use crate::config::TlsConfig;

/// Handshakes in progress at once; further connections wait in the listen backlog.
const MAX_PENDING_HANDSHAKES: usize = 512;

/// Warn at start-up when the node's certificate expires sooner than this.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// A TLS setup problem, naming the `[tls]` field whose file is at fault.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TlsSetupError {
    /// `tls.ca`, `tls.cert` or `tls.key`.
    pub field: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

fn setup_error(field: &'static str, message: impl Into<String>) -> TlsSetupError {
    TlsSetupError {
        field,
        message: message.into(),
    }
}

/// The loaded TLS server side: a rustls config requiring client certificates from the CA.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    identity: Option<String>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The crypto provider used for every TLS config the daemon builds (ring), chosen explicitly so
/// that no process-wide default has to be installed.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTls {
    /// Reads the CA, the certificate chain and the key named in `tls`, and builds the server
    /// config. Every error names the field whose file is wrong and says what to do.
    pub fn load(tls: &TlsConfig) -> Result<ServerTls, TlsSetupError> {
        let hint =
            "create the files with `replctl certs init`, or point the field at an existing file";
        let cas = read_certs("tls.ca", &tls.ca, hint)?;
        let chain = read_certs("tls.cert", &tls.cert, hint)?;
        let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
            setup_error(
                "tls.key",
                format!(
                    "cannot read a private key from {}: {e} ({hint})",
                    tls.key.display()
                ),
            )
        })?;

        let mut roots = rustls::RootCertStore::empty();
        for (i, ca) in cas.into_iter().enumerate() {
            roots.add(ca).map_err(|e| {
                setup_error(
                    "tls.ca",
                    format!(
                        "certificate #{} in {} is not a usable CA certificate: {e}",
                        i + 1,
                        tls.ca.display()
                    ),
                )
            })?;
        }

        let provider = crypto_provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| setup_error("tls.ca", format!("{}: {e}", tls.ca.display())))?;

        let leaf = chain.first().cloned();
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| setup_error("tls.cert", e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| {
                setup_error(
                    "tls.key",
                    format!(
                        "{} cannot be used with the certificate in {}: {e} (is it the key of that \
                         certificate?)",
                        tls.key.display(),
                        tls.cert.display()
                    ),
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];

        let identity = leaf.as_ref().and_then(|c| certificate_identity(c).ok());
        if let Some(leaf) = &leaf {
            check_expiry(leaf, &tls.cert);
        }
        Ok(ServerTls {
            config: Arc::new(config),
            identity,
        })
    }

    /// The rustls server config.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The subject CN of this node's own certificate, if it has one.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// An acceptor for this config.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }
}

fn read_certs(
    field: &'static str,
    path: &Path,
    hint: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            setup_error(
                field,
                format!(
                    "cannot read certificates from {}: {e} ({hint})",
                    path.display()
                ),
            )
        })?;
    if certs.is_empty() {
        return Err(setup_error(
            field,
            format!("{} holds no PEM certificate ({hint})", path.display()),
        ));
    }
    Ok(certs)
}

fn check_expiry(leaf: &CertificateDer<'_>, path: &Path) {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return;
    };
    let not_after = cert.validity().not_after;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let left = not_after.timestamp().saturating_sub(now);
    if left <= 0 {
        warn!(
            cert = %path.display(),
            %not_after,
            "the node certificate has expired: peers will refuse it; issue a new one"
        );
    } else if u64::try_from(left).unwrap_or(u64::MAX) < EXPIRY_WARNING.as_secs() {
        warn!(
            cert = %path.display(),
            %not_after,
            "the node certificate expires within 30 days; issue a new one"
        );
    }
}

/// Why a certificate gives no identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The DER could not be parsed as X.509.
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// The subject has no usable common name.
    #[error(
        "the certificate's subject has no common name (CN); repld identifies nodes and admins by CN"
    )]
    NoCommonName,
}

/// The identity a certificate stands for: the first common name (CN) of its subject.
pub fn certificate_identity(cert: &CertificateDer<'_>) -> Result<String, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or(IdentityError::NoCommonName)?;
    let cn = cn.as_str().map_err(|_| IdentityError::NoCommonName)?;
    if cn.is_empty() {
        return Err(IdentityError::NoCommonName);
    }
    Ok(cn.to_owned())
}

/// TLS streams from accepted TCP connections. Handshakes run concurrently (at most
/// [`MAX_PENDING_HANDSHAKES`] at once), each bounded by `handshake_timeout`; failures are logged
/// and dropped, so the stream only ever yields established sessions. It ends when `tcp` ends.
pub fn tls_incoming<S>(
    tcp: S,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static
where
    S: Stream<Item = TcpStream> + Send + 'static,
{
    tcp.map(move |stream| handshake(acceptor.clone(), stream, handshake_timeout))
        .buffer_unordered(MAX_PENDING_HANDSHAKES)
        .filter_map(|session| ready(session.map(Ok)))
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "unknown".to_owned());
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let name = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| certificate_identity(c).unwrap_or_else(|e| format!("<{e}>")));
            debug!(%peer, identity = name.as_deref().unwrap_or("-"), "TLS session established");
            Some(tls)
        }
        Ok(Err(e)) => {
            warn!(%peer, error = %e, "TLS handshake refused (a client certificate signed by tls.ca is required)");
            None
        }
        Err(_) => {
            info!(%peer, timeout = ?timeout, "TLS handshake timed out (limits.handshake_timeout)");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert_with_subject(cn: Option<&str>) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["x.example".to_owned()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "repld test");
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn identity_is_the_subject_common_name() {
        assert_eq!(
            certificate_identity(&cert_with_subject(Some("node-a"))),
            Ok("node-a".to_owned())
        );
        assert_eq!(
            certificate_identity(&cert_with_subject(None)),
            Err(IdentityError::NoCommonName)
        );
        assert!(matches!(
            certificate_identity(&CertificateDer::from(vec![1, 2, 3])),
            Err(IdentityError::Unparsable(_))
        ));
    }

    #[test]
    fn missing_files_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = TlsConfig {
            ca: dir.path().join("nope-ca.pem"),
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("nope.key"),
            ..TlsConfig::default()
        };
        let e = ServerTls::load(&tls).expect_err("missing");
        assert_eq!(e.field, "tls.ca");
        assert!(e.to_string().contains("nope-ca.pem"), "{e}");
        assert!(e.to_string().contains("replctl certs init"), "{e}");

        std::fs::write(&tls.ca, "not pem").expect("write");
        let e = ServerTls::load(&tls).expect_err("empty");
        assert_eq!(e.field, "tls.ca");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca_params = CertificateParams::new(Vec::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("key");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
        let node_key = KeyPair::generate().expect("key");
        let other_key = KeyPair::generate().expect("key");
        let node = CertificateParams::new(vec!["node-a".to_owned()])
            .expect("params")
            .signed_by(&node_key, &ca)
            .expect("node");
        let tls = TlsConfig {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("node.pem"),
            key: dir.path().join("node.key"),
            ..TlsConfig::default()
        };
        std::fs::write(&tls.ca, ca.pem()).expect("write");
        std::fs::write(&tls.cert, node.pem()).expect("write");
        std::fs::write(&tls.key, other_key.serialize_pem()).expect("write");
        let e = ServerTls::load(&tls).expect_err("mismatch");
        assert_eq!(e.field, "tls.key", "{e}");

        std::fs::write(&tls.key, node_key.serialize_pem()).expect("write");
        let ok = ServerTls::load(&tls).expect("loads");
        assert_eq!(ok.server_config().alpn_protocols, vec![b"h2".to_vec()]);
    }
}
