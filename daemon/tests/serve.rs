//! The daemon's serving machinery, end to end in one process: a node on 127.0.0.1:0 with
//! certificates made here, a client over mutual TLS and one over the admin socket.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use repld::config::{ByteSize, Config, HumanDuration};
use repld::{CancellationToken, Daemon, Services};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const WAIT: Duration = Duration::from_secs(20);

/// A CA and the certificates it signed, written as PEM files.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

struct Pem {
    cert: String,
    key: String,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        Pki { ca }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    fn issue(&self, cn: &str, server: bool) -> Pem {
        let sans = if server {
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("signed");
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

struct Node {
    dir: tempfile::TempDir,
    pki: Pki,
    config: Config,
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).expect("write");
    path.to_owned()
}

impl Node {
    /// A node config with TLS files from a fresh CA and `ops` as its only admin.
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new("repld test CA");
        let server = pki.issue("node-a", true);
        let mut config = Config {
            node_name: "node-a".to_owned(),
            data_dir: dir.path().join("data"),
            listen: "127.0.0.1:0".parse().expect("addr"),
            admin_socket: dir.path().join("run/admin.sock"),
            metrics_listen: "127.0.0.1:0".parse().expect("addr"),
            ..Config::default()
        };
        config.tls.ca = write(&dir.path().join("ca.pem"), &pki.ca_pem());
        config.tls.cert = write(&dir.path().join("node.pem"), &server.cert);
        config.tls.key = write(&dir.path().join("node.key"), &server.key);
        config.tls.admins = vec!["ops".to_owned()];
        config.limits.handshake_timeout = HumanDuration(Duration::from_millis(300));
        config.shutdown_timeout = HumanDuration(Duration::from_secs(60));
        config.resolve();
        Node { dir, pki, config }
    }
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: &Pem,
) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(&client.cert, &client.key))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::from_static("http://admin.sock")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connects to the admin socket")
}

async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(resp.into_inner().status)
}

/// Calls a method of a service that is not registered: admin-only by default, so the auth layer
/// answers first (PERMISSION_DENIED) or lets it through to the router (UNIMPLEMENTED).
async fn call_admin_method(channel: Channel, request: HealthCheckRequest) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
    grpc.unary(
        tonic::Request::new(request),
        PathAndQuery::from_static("/repld.v1.Admin/Ping"),
        codec,
    )
    .await
    .expect_err("no such method")
}

async fn list_services_v1(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection v1")
        .into_inner();
    match stream
        .message()
        .await
        .expect("message")
        .and_then(|m| m.message_response)
    {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn list_services_v1alpha(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    match stream
        .message()
        .await
        .expect("message")
        .and_then(|m| m.message_response)
    {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn serves_health_and_reflection_over_mtls_and_the_admin_socket_then_shuts_down() {
    let node = Node::new();
    let daemon = Daemon::bind(node.config.clone(), Services::new(&node.config.limits))
        .await
        .expect("binds");
    let addr = daemon.tcp_addr();
    assert_ne!(addr.port(), 0);
    let socket = daemon.admin_socket().to_owned();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(daemon.run(shutdown.clone()));

    // The admin socket is owner-only.
    let mode = std::fs::metadata(&socket)
        .expect("socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");

    // Mutual TLS with a certificate from the node's CA: SERVING.
    let ca = node.pki.ca_pem();
    let admin = node.pki.issue("ops", false);
    let channel = tls_channel(addr, &ca, &admin).await.expect("mTLS connects");
    let status = tokio::time::timeout(WAIT, health(channel.clone()))
        .await
        .expect("in time")
        .expect("health over mTLS");
    assert_eq!(status, ServingStatus::Serving as i32);

    // The admin socket: SERVING.
    let local = unix_channel(&socket).await;
    let status = health(local.clone())
        .await
        .expect("health over the admin socket");
    assert_eq!(status, ServingStatus::Serving as i32);

    // Reflection, both versions, lists health and reflection itself.
    for names in [
        list_services_v1(channel.clone()).await,
        list_services_v1alpha(local.clone()).await,
    ] {
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{names:?}"
        );
        assert!(
            names.iter().any(|n| n.starts_with("grpc.reflection.")),
            "{names:?}"
        );
    }

    // Admin services: an admin certificate and the admin socket pass the auth layer (and reach
    // the router, which does not know the method); another certificate of the same CA is refused.
    let code = call_admin_method(channel.clone(), HealthCheckRequest::default())
        .await
        .code();
    assert_eq!(code, tonic::Code::Unimplemented);
    let code = call_admin_method(local.clone(), HealthCheckRequest::default())
        .await
        .code();
    assert_eq!(code, tonic::Code::Unimplemented);
    let peer = node.pki.issue("node-b", false);
    let peer_channel = tls_channel(addr, &ca, &peer).await.expect("peer connects");
    assert_eq!(
        health(peer_channel.clone())
            .await
            .expect("peers may check health"),
        ServingStatus::Serving as i32
    );
    let denied = call_admin_method(peer_channel, HealthCheckRequest::default()).await;
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("\"node-b\""),
        "{}",
        denied.message()
    );
    assert!(
        denied.message().contains("tls.admins"),
        "{}",
        denied.message()
    );

    // A client certificate from another CA fails the handshake: no call gets through.
    let stranger = Pki::new("another CA").issue("ops", false);
    let refused = match tls_channel(addr, &ca, &stranger).await {
        Err(e) => format!("{e:?}"),
        Ok(ch) => match health(ch).await {
            Err(status) => format!("{status:?}"),
            Ok(s) => panic!("a certificate from another CA was served: {s}"),
        },
    };
    assert!(
        refused.contains("UnknownCA"),
        "the server's TLS alert says why: {refused}"
    );

    // A connection that never starts its handshake is dropped after handshake_timeout.
    let mut idle = tokio::net::TcpStream::connect(addr)
        .await
        .expect("tcp connects");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("closed by the server well before 10s")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");

    // A message over limits.max_message_bytes: RESOURCE_EXHAUSTED.
    let huge = HealthCheckRequest {
        service: "x".repeat(17 << 20),
    };
    let status = HealthClient::new(local.clone())
        .check(huge)
        .await
        .expect_err("too big");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // A call in flight when shutdown starts: a health Watch stream, which never ends by itself.
    let mut watch = HealthClient::new(local.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("watch message")
        .expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // Shutdown: the watcher hears NOT_SERVING and its stream ends, so the drain does not wait
    // for shutdown_timeout (60s here); run returns Ok, and the socket file is gone.
    shutdown.cancel();
    drop((channel, local));
    let mut statuses = Vec::new();
    while let Ok(Some(msg)) = watch.message().await {
        statuses.push(msg.status);
    }
    assert_eq!(statuses, [ServingStatus::NotServing as i32]);
    let outcome = tokio::time::timeout(WAIT, running)
        .await
        .expect("drains well before shutdown_timeout")
        .expect("no panic");
    outcome.expect("run returns Ok");
    assert!(!socket.exists(), "admin socket removed at shutdown");
    drop(node.dir);
}

#[tokio::test]
async fn run_serves_plaintext_loopback_and_the_socket_and_returns_ok_when_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        node_name: "solo".to_owned(),
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin_socket: dir.path().join("admin.sock"),
        ..Config::default()
    };
    config.tls.allow_plaintext_loopback = true;
    config.limits.max_message_bytes = ByteSize::mib(1);
    config.resolve();
    let socket = config.admin_socket.clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(repld::run(config, shutdown.clone()));

    let deadline = tokio::time::Instant::now() + WAIT;
    while !socket.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "socket never appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let local = unix_channel(&socket).await;
    let status = tokio::time::timeout(WAIT, health(local.clone()))
        .await
        .expect("in time")
        .expect("health");
    assert_eq!(status, ServingStatus::Serving as i32);

    // `run` registers the repld descriptors for reflection.
    let names = list_services_v1(local.clone()).await;
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.starts_with("repld.")), "{names:?}");

    let big = HealthCheckRequest {
        service: "x".repeat(2 << 20),
    };
    let status = HealthClient::new(local.clone())
        .check(big)
        .await
        .expect_err("too big");
    assert_eq!(
        status.code(),
        tonic::Code::ResourceExhausted,
        "limit from the config"
    );

    shutdown.cancel();
    drop(local);
    tokio::time::timeout(WAIT, running)
        .await
        .expect("stops in time")
        .expect("no panic")
        .expect("run returns Ok");
    assert!(!socket.exists());
}

#[tokio::test]
async fn plaintext_on_a_non_loopback_address_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        data_dir: dir.path().join("data"),
        listen: "0.0.0.0:0".parse().expect("addr"),
        admin_socket: dir.path().join("admin.sock"),
        ..Config::default()
    };
    config.tls.allow_plaintext_loopback = true;
    config.resolve();
    let e = repld::run(config, CancellationToken::new())
        .await
        .expect_err("refused");
    let text = format!("{e:#}");
    assert!(text.contains("tls.allow_plaintext_loopback"), "{text}");
    assert!(
        text.contains("127.0.0.1:0"),
        "says what to set instead: {text}"
    );
}
