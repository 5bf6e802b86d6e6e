//! Who is calling, and may they.
//!
//! Every request gets a [`PeerIdentity`] from its connection, before any service sees it:
//! - over the admin socket (mode 0600, owner only) the caller is trusted: [`PeerIdentity::AdminSocket`];
//! - over plaintext loopback TCP (only when `tls.allow_plaintext_loopback` is set) likewise:
//!   [`PeerIdentity::PlaintextLoopback`];
//! - over mutual TLS the caller is the subject CN of its verified client certificate:
//!   [`PeerIdentity::Certificate`].
//!
//! [`Authorize`] then applies the [`AccessPolicy`]. A service is either *peer* (any verified peer
//! may call it: health, reflection, replication) or, by default, *admin* (Storage, Admin, and any
//! service not registered otherwise): over TLS only identities listed in `tls.admins` may call
//! it, and every other one gets `PERMISSION_DENIED` naming the refused identity and the setting to
//! change. The identity is put in the request's extensions, so a handler authorizes finer
//! (per PFS, for replication) with [`PeerIdentity::of`].

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, FutureExt};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tower::Service;
use tracing::warn;

use crate::tls::certificate_identity;

/// The caller of a request, as established by the connection it came on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// A local process on the admin socket. Trusted: the socket is mode 0600.
    AdminSocket {
        /// The caller's user id, from `SO_PEERCRED`, when the kernel gave it.
        uid: Option<u32>,
    },
    /// A local process over plaintext loopback TCP, which the operator allowed explicitly.
    /// Trusted like the admin socket.
    PlaintextLoopback {
        /// The caller's address.
        addr: Option<SocketAddr>,
    },
    /// A peer with a client certificate verified against `tls.ca`.
    Certificate {
        /// The subject common name (CN) of the certificate: the node or admin name.
        name: String,
        /// The peer's address.
        addr: Option<SocketAddr>,
    },
}

impl PeerIdentity {
    /// The identity of the caller of a request. Always present on requests that reached a
    /// service through the daemon's servers (the [`Authorize`] layer puts it there).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&PeerIdentity> {
        request.extensions().get::<PeerIdentity>()
    }

    /// The certificate name, for a TLS peer.
    pub fn certificate_name(&self) -> Option<&str> {
        match self {
            PeerIdentity::Certificate { name, .. } => Some(name),
            _ => None,
        }
    }

    /// True for callers on this machine that are trusted as admins by where they connect.
    pub fn is_local(&self) -> bool {
        !matches!(self, PeerIdentity::Certificate { .. })
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdentity::AdminSocket { uid: Some(uid) } => write!(f, "admin socket (uid {uid})"),
            PeerIdentity::AdminSocket { uid: None } => f.write_str("admin socket"),
            PeerIdentity::PlaintextLoopback { addr: Some(a) } => {
                write!(f, "plaintext loopback {a}")
            }
            PeerIdentity::PlaintextLoopback { addr: None } => f.write_str("plaintext loopback"),
            PeerIdentity::Certificate { name, .. } => write!(f, "certificate {name:?}"),
        }
    }
}

/// Establishes the caller's identity from the connection info tonic put into the request.
pub fn identify(extensions: &http::Extensions) -> Result<PeerIdentity, Status> {
    if let Some(tls) = extensions.get::<TlsConnectInfo<TcpConnectInfo>>() {
        let addr = tls.get_ref().remote_addr();
        let certs = tls.peer_certs().ok_or_else(|| {
            Status::unauthenticated("a client certificate signed by this node's CA is required")
        })?;
        let leaf = certs.first().ok_or_else(|| {
            Status::unauthenticated("a client certificate signed by this node's CA is required")
        })?;
        let name =
            certificate_identity(leaf).map_err(|e| Status::unauthenticated(e.to_string()))?;
        return Ok(PeerIdentity::Certificate { name, addr });
    }
    if let Some(uds) = extensions.get::<UdsConnectInfo>() {
        return Ok(PeerIdentity::AdminSocket {
            uid: uds.peer_cred.map(|c| c.uid()),
        });
    }
    if let Some(tcp) = extensions.get::<TcpConnectInfo>() {
        return Ok(PeerIdentity::PlaintextLoopback {
            addr: tcp.remote_addr(),
        });
    }
    Err(Status::unauthenticated(
        "the connection carries no identity (neither the admin socket nor mutual TLS)",
    ))
}

/// Which services need an admin, and who is one.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    admins: HashSet<String>,
    peer_services: HashSet<String>,
    node_name: String,
}

impl AccessPolicy {
    /// A policy in which `admins` (certificate names) may call admin services over TLS.
    pub fn new(node_name: impl Into<String>, admins: impl IntoIterator<Item = String>) -> Self {
        Self {
            admins: admins.into_iter().collect(),
            peer_services: HashSet::new(),
            node_name: node_name.into(),
        }
    }

    /// Lets any verified peer call the service with this full name (`package.Service`).
    pub fn allow_peers(&mut self, service: &str) {
        self.peer_services.insert(service.to_owned());
    }

    /// Whether a service is open to every verified peer.
    pub fn is_peer_service(&self, service: &str) -> bool {
        self.peer_services.contains(service)
    }

    /// Decides whether `identity` may call the gRPC method at `path` (`/package.Service/Method`).
    pub fn check(&self, identity: &PeerIdentity, path: &str) -> Result<(), Status> {
        let service = service_name(path);
        if identity.is_local() || self.is_peer_service(service) {
            return Ok(());
        }
        let name = identity.certificate_name().unwrap_or_default();
        if self.admins.contains(name) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "certificate {name:?} is not an admin of node {node:?}: {path} needs an identity \
             listed in tls.admins of that node's repld.toml (add {name:?} there and restart repld, \
             use an admin certificate, or call through the admin socket on the node)",
            node = self.node_name,
        )))
    }
}

/// `package.Service` from a gRPC path `/package.Service/Method`.
pub fn service_name(path: &str) -> &str {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').map(|(s, _)| s).unwrap_or(path)
}

/// A tower layer applying an [`AccessPolicy`] and attaching the [`PeerIdentity`].
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    policy: Arc<AccessPolicy>,
}

impl AuthorizeLayer {
    /// A layer for this policy.
    pub fn new(policy: AccessPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service made by [`AuthorizeLayer`].
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: Arc<AccessPolicy>,
}

impl<S, B> Service<http::Request<B>> for Authorize<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let verdict = identify(req.extensions()).and_then(|identity| {
            self.policy
                .check(&identity, req.uri().path())
                .map(|()| identity)
        });
        match verdict {
            Ok(identity) => {
                req.extensions_mut().insert(identity);
                // The clone was readied by poll_ready; keep it, leave a fresh clone in its place.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                inner.call(req).boxed()
            }
            Err(status) => {
                warn!(
                    path = req.uri().path(),
                    code = ?status.code(),
                    reason = status.message(),
                    "call refused"
                );
                std::future::ready(Ok(status.into_http())).boxed()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str) -> PeerIdentity {
        PeerIdentity::Certificate {
            name: name.to_owned(),
            addr: None,
        }
    }

    fn policy() -> AccessPolicy {
        let mut p = AccessPolicy::new("node-a", ["ops".to_owned()]);
        p.allow_peers("grpc.health.v1.Health");
        p.allow_peers("repld.v1.Replication");
        p
    }

    #[test]
    fn service_names_come_from_grpc_paths() {
        assert_eq!(service_name("/repld.v1.Admin/PfsCreate"), "repld.v1.Admin");
        assert_eq!(
            service_name("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health"
        );
        assert_eq!(service_name("/odd"), "odd");
    }

    #[test]
    fn admins_may_call_admin_services_over_tls() {
        assert!(
            policy()
                .check(&cert("ops"), "/repld.v1.Admin/PfsCreate")
                .is_ok()
        );
        assert!(
            policy()
                .check(&cert("ops"), "/repld.v1.Storage/Put")
                .is_ok()
        );
    }

    #[test]
    fn other_certificates_are_denied_admin_services_with_a_clear_message() {
        let e = policy()
            .check(&cert("node-b"), "/repld.v1.Admin/PfsCreate")
            .expect_err("denied");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("\"node-b\""), "{}", e.message());
        assert!(e.message().contains("tls.admins"), "{}", e.message());
        assert!(e.message().contains("\"node-a\""), "{}", e.message());
        // Unknown services are admin-only: deny by default.
        assert!(policy().check(&cert("node-b"), "/x.New/Thing").is_err());
    }

    #[test]
    fn peer_services_are_open_to_every_verified_peer() {
        assert!(
            policy()
                .check(&cert("node-b"), "/grpc.health.v1.Health/Check")
                .is_ok()
        );
        assert!(
            policy()
                .check(&cert("node-b"), "/repld.v1.Replication/Stream")
                .is_ok()
        );
    }

    #[test]
    fn local_callers_are_trusted() {
        let p = policy();
        assert!(
            p.check(
                &PeerIdentity::AdminSocket { uid: Some(0) },
                "/repld.v1.Admin/X"
            )
            .is_ok()
        );
        assert!(
            p.check(
                &PeerIdentity::PlaintextLoopback { addr: None },
                "/repld.v1.Storage/X"
            )
            .is_ok()
        );
    }

    #[test]
    fn a_connection_without_info_has_no_identity() {
        let e = identify(&http::Extensions::new()).expect_err("no identity");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
}
