//! The raw throughput of one rustls connection over loopback: the most bytes per second any
//! replication stream between two nodes on this machine could carry.
//!
//! A tokio-rustls server and client in this process, over `127.0.0.1`, with mutual TLS set up
//! as the nodes' is: the CA and node certificates of the same `replctl certs init` directory, a
//! client certificate the server requires, the ring crypto provider and rustls' default protocol
//! versions and cipher suites (so the same cipher as the nodes negotiate), `TCP_NODELAY`. The
//! client writes `bytes` bytes from an incompressible buffer in 1 MiB writes; the server reads
//! and discards them. Timed from the TCP connect until the server has read the last byte, so
//! the handshake is included (it is a millisecond of a second or more).
//!
//! What it leaves out is what the replication stream adds on top: HTTP/2 and gRPC framing, the
//! master's reads, the slave's writes.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::fixture;

/// One measured transfer.
#[derive(Debug, Clone, Copy)]
pub struct TlsRun {
    /// Wall seconds, connect to last byte read.
    pub secs: f64,
    /// CPU seconds of this process (both ends) meanwhile.
    pub cpu: f64,
    /// The cipher suite negotiated.
    pub suite: &'static str,
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("read certificates from {}", path.display()))
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("read a key from {}", path.display()))
}

fn roots(certs_dir: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for ca in certs(&certs_dir.join("ca.pem"))? {
        roots.add(ca).context("add the CA certificate")?;
    }
    Ok(Arc::new(roots))
}

/// Pushes `bytes` bytes (cycling through `data`) from `client` to `server`, two certificate
/// names of `certs_dir`, through one TLS connection on loopback.
pub fn measure(
    certs_dir: &Path,
    server: &str,
    client: &str,
    data: &[u8],
    bytes: u64,
) -> Result<TlsRun> {
    ensure!(!data.is_empty(), "no data to send");
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let roots = roots(certs_dir)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .context("build the client verifier")?;
    let server_config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs(&certs_dir.join(format!("{server}.pem")))?,
            key(&certs_dir.join(format!("{server}.key")))?,
        )
        .context("the server certificate")?;
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("protocol versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            certs(&certs_dir.join(format!("{client}.pem")))?,
            key(&certs_dir.join(format!("{client}.key")))?,
        )
        .context("the client certificate")?;
    let name = ServerName::try_from(server.to_owned()).context("the server name")?;
    let rt = crate::cluster::runtime()?;
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(server_config));
        let reader = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0u64;
            loop {
                let n = tls.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            anyhow::Ok((got, Instant::now()))
        });
        let cpu = fixture::cpu_time();
        let t = Instant::now();
        let tcp = TcpStream::connect(addr).await.context("connect")?;
        tcp.set_nodelay(true)?;
        let mut tls = TlsConnector::from(Arc::new(client_config))
            .connect(name, tcp)
            .await
            .context("the TLS handshake")?;
        let suite = tls
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("?");
        let mut left = bytes;
        let mut at = 0usize;
        while left > 0 {
            let n = (left.min(1 << 20) as usize).min(data.len() - at);
            tls.write_all(&data[at..at + n]).await?;
            left -= n as u64;
            at = (at + n) % data.len();
        }
        tls.shutdown().await?;
        let (got, done) = reader.await.context("the TLS server task")??;
        let secs = done.duration_since(t).as_secs_f64();
        let cpu = (fixture::cpu_time() - cpu).as_secs_f64();
        ensure!(got == bytes, "the server read {got} bytes of {bytes}");
        Ok(TlsRun { secs, cpu, suite })
    })
}
