//! Bad input against a real `repld` (issue 3, "Prove it"): each case is refused with the status
//! an operator or a client library can act on, and nothing stored changes.
//!
//! Every test starts a node with two PFSes holding a few entries, records what it stores
//! ([`StoredState`]: the PFS list with head TIDs, and every entry at each head), sends the bad
//! input, and then checks that the state is exactly what it was.
//!
//! - `a_certificate_from_another_ca_is_refused_at_the_handshake`
//! - `a_node_certificate_gets_permission_denied_on_admin_and_storage_calls`
//! - `an_oversized_message_gets_resource_exhausted`
//! - `a_bad_path_gets_invalid_argument_naming_the_path`
//! - `a_write_to_a_slave_pfs_gets_failed_precondition`
//! - `check_config_names_the_malformed_field_and_exits_non_zero`

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use repl_proto::{
    AdminClient, Attrs, ImportBegin, ImportOp, MkdirRequest, PfsCreateRequest, PfsRole, PutHeader,
    StorageClient, pb,
};
use repl_tests::node::{Certs, NodeOptions, StoredState, TestNode, run_output, runtime};
use repl_types::{EntryPath, PfsName};
use tokio::runtime::Runtime;
use tonic::Code;

fn pfs(name: &str) -> PfsName {
    PfsName::new(name).expect("a valid PFS name")
}

fn path(p: &str) -> EntryPath {
    EntryPath::new(p).expect("a valid path")
}

fn attrs(mode: u32) -> Attrs {
    Attrs {
        mode,
        mtime_ns: 1_700_000_000_000_000_001,
    }
}

/// A node with PFS `data` (a directory and two files) and an empty slave PFS `standby`.
fn seeded(opts: NodeOptions) -> Result<(TestNode, Runtime, StoredState)> {
    let node = TestNode::start(opts)?;
    let rt = runtime();
    let state = rt.block_on(async {
        let mut admin = node.admin().await?;
        for (name, role) in [("data", PfsRole::Master), ("standby", PfsRole::Slave)] {
            admin
                .pfs_create(PfsCreateRequest {
                    name: pfs(name),
                    role,
                    nohistory: false,
                    shared_uuid: None,
                })
                .await?;
        }
        let mut storage = node.storage().await?;
        storage
            .mkdir(MkdirRequest {
                pfs: pfs("data"),
                path: path("docs"),
                attrs: attrs(0o755),
                parents: false,
            })
            .await?;
        for (p, content) in [("docs/a.txt", "alpha\n"), ("b.bin", "bravo")] {
            storage
                .put_bytes(header("data", p), Bytes::from_static(content.as_bytes()))
                .await?;
        }
        StoredState::read(&node).await
    })?;
    ensure!(state.entries["data"].len() == 3, "seeded: {state:?}");
    Ok((node, rt, state))
}

fn header(pfs_name: &str, p: &str) -> PutHeader {
    PutHeader {
        pfs: pfs(pfs_name),
        path: path(p),
        attrs: attrs(0o644),
        size: None,
        parents: true,
    }
}

/// The status of a failed call, or a failure if it succeeded.
fn status<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, repl_proto::ClientError>,
) -> Result<tonic::Status> {
    match r {
        Ok(v) => bail!("{what} succeeded ({v:?}), but must be refused"),
        Err(repl_proto::ClientError::Status(s)) => Ok(s),
        Err(e) => bail!("{what} failed without a status from the server: {e}"),
    }
}

fn expect_code(what: &str, s: &tonic::Status, code: Code) -> Result<()> {
    ensure!(
        s.code() == code,
        "{what}: expected {code:?}, got {:?}: {}",
        s.code(),
        s.message()
    );
    Ok(())
}

/// Runs a replctl command that must fail with exit 1 and say each of `words` on stderr.
fn cli_fails(cmd: &mut std::process::Command, words: &[&str]) -> Result<()> {
    let out = run_output(cmd, Duration::from_secs(60))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "{cmd:?} must exit 1, got {}:\n{stderr}",
        out.status
    );
    for w in words {
        ensure!(stderr.contains(w), "{cmd:?} must say `{w}`:\n{stderr}");
    }
    Ok(())
}

#[test]
fn a_certificate_from_another_ca_is_refused_at_the_handshake() -> Result<()> {
    let (node, rt, before) = seeded(NodeOptions::default())?;
    // Another CA that issued certificates with the very same names.
    let other_dir = tempfile::tempdir()?;
    let other = Certs::init(other_dir.path(), &["node1"], &["alice"])?;
    // The client trusts the node's CA (so the server side checks out), but presents alice's
    // certificate from the other CA.
    let mut tls = other.client("alice", node.name());
    tls.ca = node.certs().ca();
    let endpoint = node.https_with(tls);

    let outcome = rt.block_on(async {
        // With TLS 1.3 the client may only learn of the refusal on its first call.
        let channel = endpoint.connect().await?;
        let mut admin = AdminClient::new(channel.clone());
        let info = admin.node_info().await;
        let mut storage = StorageClient::new(channel);
        let put = storage
            .put_bytes(header("data", "intruder"), Bytes::from_static(b"x"))
            .await;
        anyhow::Ok((format!("{info:?}"), info.is_ok(), put.is_ok()))
    });
    eprintln!("another CA's certificate: {outcome:?}");
    match outcome {
        Err(e) => {
            let text = format!("{e:#}");
            ensure!(
                text.contains("cannot connect"),
                "the connection must fail, not a call: {text}"
            );
        }
        Ok((info, info_ok, put_ok)) => {
            ensure!(
                !info_ok && !put_ok,
                "a certificate from another CA was served: {info}"
            );
            // Refused by TLS, not by a service: no gRPC status from a handler.
            ensure!(
                !info.contains("PermissionDenied") && !info.contains("permission"),
                "the refusal must come from the handshake, not from authorization: {info}"
            );
        }
    }
    // The daemon says why, with the peer's address.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !node.log_text().contains("TLS handshake refused") {
        ensure!(
            std::time::Instant::now() < deadline,
            "the daemon did not log the refused handshake:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // replctl with that certificate fails with exit 1 and says it could not get through.
    let mut cmd = std::process::Command::new(repl_tests::node::bin("replctl"));
    cmd.env("XDG_CONFIG_HOME", "/nonexistent-replctl-test-config")
        .arg("--endpoint")
        .arg(format!("https://{}", node.addr()))
        .arg("--ca")
        .arg(node.certs().ca())
        .arg("--cert")
        .arg(other.cert("alice"))
        .arg("--key")
        .arg(other.key("alice"))
        .arg("--server-name")
        .arg(node.name())
        .args(["pfs", "create", "intruder"]);
    let out = run_output(&mut cmd, Duration::from_secs(30))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "replctl with another CA's certificate: {}\n{stderr}",
        out.status
    );
    ensure!(
        out.status.code() == Some(1),
        "replctl with another CA's certificate must exit 1, got {}:\n{stderr}",
        out.status
    );

    // The node's own admin certificate still works over the same listener.
    rt.block_on(async {
        let mut admin = AdminClient::connect(&node.https("alice")).await?;
        admin.node_info().await?;
        anyhow::Ok(())
    })
    .context("the admin certificate of the node's CA must still be served")?;
    let after = rt.block_on(StoredState::read(&node))?;
    before.assert_unchanged(&after, "a handshake with another CA's certificate")
}

#[test]
fn a_node_certificate_gets_permission_denied_on_admin_and_storage_calls() -> Result<()> {
    let (node, rt, before) = seeded(NodeOptions::default())?;
    rt.block_on(async {
        // node2 has a valid certificate of the same CA, but is not in tls.admins.
        let channel = node.https("node2").connect().await?;
        let mut admin = AdminClient::new(channel.clone());
        let mut storage = StorageClient::new(channel.clone());

        let s = status("NodeInfo as node2", admin.node_info().await)?;
        expect_code("NodeInfo as node2", &s, Code::PermissionDenied)?;
        ensure!(
            s.message().contains("node2") && s.message().contains("tls.admins"),
            "the refusal must name the identity and the setting: {}",
            s.message()
        );
        let s = status(
            "PfsCreate as node2",
            admin
                .pfs_create(PfsCreateRequest {
                    name: pfs("evil"),
                    role: PfsRole::Master,
                    nohistory: false,
                    shared_uuid: None,
                })
                .await,
        )?;
        expect_code("PfsCreate as node2", &s, Code::PermissionDenied)?;
        let s = status(
            "Put as node2",
            storage
                .put_bytes(
                    header("data", "docs/a.txt"),
                    Bytes::from_static(b"overwritten"),
                )
                .await,
        )?;
        expect_code("Put as node2", &s, Code::PermissionDenied)?;
        let s = status(
            "Delete as node2",
            storage
                .delete(repl_proto::DeleteRequest {
                    pfs: pfs("data"),
                    path: path("docs"),
                    recursive: true,
                })
                .await,
        )?;
        expect_code("Delete as node2", &s, Code::PermissionDenied)?;
        let s = status(
            "List as node2",
            storage
                .list(repl_proto::ListRequest {
                    pfs: pfs("data"),
                    path: EntryPath::root(),
                    at: repl_proto::ReadAt::Head,
                    recursive: true,
                })
                .await,
        )?;
        expect_code("List as node2", &s, Code::PermissionDenied)?;
        let mut import = storage.import(ImportBegin::new(pfs("data"))).await?;
        import
            .send(ImportOp::Mkdir {
                path: path("imported"),
                attrs: attrs(0o755),
            })
            .await
            .ok();
        let s = status("Import as node2", import.finish().await)?;
        expect_code("Import as node2", &s, Code::PermissionDenied)?;

        // The same connection may use the peer services: the handshake was fine, only the
        // admin services are refused.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .context("health over TLS as node2")?;
        ensure!(
            resp.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        anyhow::Ok(())
    })?;
    let after = rt.block_on(StoredState::read(&node))?;
    before.assert_unchanged(&after, "admin and storage calls with a node certificate")
}

#[test]
fn an_oversized_message_gets_resource_exhausted() -> Result<()> {
    let (node, rt, before) = seeded(NodeOptions {
        max_message_bytes: Some("64KiB".to_owned()),
        ..NodeOptions::default()
    })?;
    rt.block_on(async {
        // A Put whose one data message (256 KiB) is over the limit, over the admin socket.
        let mut storage = node.storage().await?;
        let big = Bytes::from(vec![7u8; 256 << 10]);
        let s = status(
            "an oversized Put",
            storage
                .put_bytes(header("data", "docs/a.txt"), big.clone())
                .await,
        )?;
        expect_code("an oversized Put", &s, Code::ResourceExhausted)?;
        ensure!(
            s.message().contains("max_message_bytes"),
            "the status must name the setting: {}",
            s.message()
        );

        // The same over mutual TLS, with the admin certificate.
        let mut storage = StorageClient::connect(&node.https("alice")).await?;
        let s = status(
            "an oversized Put over TLS",
            storage
                .put_bytes(header("data", "new.bin"), big.clone())
                .await,
        )?;
        expect_code("an oversized Put over TLS", &s, Code::ResourceExhausted)?;

        // An Import whose file message is over the limit.
        let mut import = storage.import(ImportBegin::new(pfs("data"))).await?;
        import
            .send(ImportOp::File {
                path: path("docs/a.txt"),
                attrs: attrs(0o644),
                size: big.len() as u64,
                data: big.clone(),
            })
            .await
            .ok();
        let s = status("an oversized Import", import.finish().await)?;
        expect_code("an oversized Import", &s, Code::ResourceExhausted)?;

        // A unary call over the limit: a PfsCreate with a 100 KiB name, in one message.
        let mut raw = AdminClient::connect(&node.unix()).await?.into_inner();
        let e = raw
            .pfs_create(pb::PfsCreateRequest {
                name: "x".repeat(100 << 10),
                ..Default::default()
            })
            .await
            .err()
            .context("an oversized PfsCreate must be refused")?;
        expect_code("an oversized PfsCreate", &e, Code::ResourceExhausted)?;

        // A message under the limit still works on the same node.
        let mut storage = node.storage().await?;
        storage
            .list(repl_proto::ListRequest {
                pfs: pfs("data"),
                path: EntryPath::root(),
                at: repl_proto::ReadAt::Head,
                recursive: false,
            })
            .await
            .context("a small call after the oversized ones")?;
        anyhow::Ok(())
    })?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("big"), vec![1u8; 256 << 10])?;
    let mut cmd = node.replctl();
    cmd.arg("put").arg(dir.path().join("big")).arg("data/big");
    cli_fails(&mut cmd, &["max_message_bytes"])?;
    let after = rt.block_on(StoredState::read(&node))?;
    before.assert_unchanged(&after, "oversized messages")
}

#[test]
fn a_bad_path_gets_invalid_argument_naming_the_path() -> Result<()> {
    let (node, rt, before) = seeded(NodeOptions::default())?;
    rt.block_on(async {
        // The typed client cannot even build these paths; the generated client sends them raw.
        let mut raw = node.storage().await?.into_inner();
        let bad = [
            "../x",
            "/abs",
            "docs/../../etc",
            "a//b",
            "docs/./a.txt",
            "trailing/",
        ];
        for p in bad {
            let put = vec![
                pb::PutRequest::from(repl_proto::PutMessage::Header(header("data", "tmp"))),
                pb::PutRequest::from(repl_proto::PutMessage::Data(Bytes::from_static(b"x"))),
                pb::PutRequest::from(repl_proto::PutMessage::End),
            ];
            let mut put = put;
            if let Some(pb::put_request::Msg::Header(h)) = &mut put[0].msg {
                h.path = p.to_owned();
            } else {
                bail!("the first Put message is a header");
            }
            let results = [
                (
                    "Put",
                    raw.put(tokio_stream::iter(put)).await.map(drop).err(),
                ),
                (
                    "Mkdir",
                    raw.mkdir(pb::MkdirRequest {
                        pfs: "data".to_owned(),
                        path: p.to_owned(),
                        mode: 0o755,
                        ..Default::default()
                    })
                    .await
                    .map(drop)
                    .err(),
                ),
                (
                    "Delete",
                    raw.delete(pb::DeleteRequest {
                        pfs: "data".to_owned(),
                        path: p.to_owned(),
                        recursive: true,
                    })
                    .await
                    .map(drop)
                    .err(),
                ),
                (
                    "Symlink",
                    raw.symlink(pb::SymlinkRequest {
                        pfs: "data".to_owned(),
                        path: p.to_owned(),
                        target: "b.bin".to_owned(),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
                    .err(),
                ),
                (
                    "Rename",
                    raw.rename(pb::RenameRequest {
                        pfs: "data".to_owned(),
                        from: "b.bin".to_owned(),
                        to: p.to_owned(),
                        replace: true,
                    })
                    .await
                    .map(drop)
                    .err(),
                ),
            ];
            for (call, err) in results {
                let what = format!("{call} of `{p}`");
                let s = err.with_context(|| format!("{what} must be refused"))?;
                expect_code(&what, &s, Code::InvalidArgument)?;
                ensure!(
                    s.message().contains(p),
                    "{what}: the message must name the path: {}",
                    s.message()
                );
            }
        }

        // An Import whose second message carries a bad path commits nothing, not even the good
        // entries of its first message.
        let import = raw
            .import(tokio_stream::iter(vec![
                pb::ImportRequest {
                    begin: Some(ImportBegin::new(pfs("data")).into()),
                    ops: vec![
                        ImportOp::Mkdir {
                            path: path("fine"),
                            attrs: attrs(0o755),
                        }
                        .into(),
                    ],
                    finish: false,
                },
                pb::ImportRequest {
                    begin: None,
                    ops: vec![pb::ImportOp {
                        op: Some(pb::import_op::Op::Mkdir(pb::ImportMkdir {
                            path: "../escape".to_owned(),
                            mode: 0o755,
                            mtime_ns: 0,
                        })),
                    }],
                    finish: true,
                },
            ]))
            .await;
        // The server may refuse the first message before it answers, or end the stream with
        // the error; either way nothing may have been committed.
        let s = match import {
            Err(s) => s,
            Ok(resp) => import_error(resp.into_inner()).await?,
        };
        expect_code("Import of `../escape`", &s, Code::InvalidArgument)?;
        ensure!(s.message().contains("../escape"), "{}", s.message());
        anyhow::Ok(())
    })?;
    let after = rt.block_on(StoredState::read(&node))?;
    before.assert_unchanged(&after, "bad paths")
}

/// The error that ends an Import response stream; fails if it commits anything or ends well.
async fn import_error(mut import: tonic::Streaming<pb::ImportResponse>) -> Result<tonic::Status> {
    loop {
        match import.message().await {
            Ok(Some(m)) => {
                let p = repl_proto::ImportProgress::try_from(m)?;
                ensure!(
                    p.tid.is_none() && !p.done,
                    "the bad import committed: {p:?}"
                );
            }
            Ok(None) => bail!("the import with a bad path ended without an error"),
            Err(s) => return Ok(s),
        }
    }
}

#[test]
fn a_write_to_a_slave_pfs_gets_failed_precondition() -> Result<()> {
    let (node, rt, before) = seeded(NodeOptions::default())?;
    rt.block_on(async {
        for endpoint in [node.unix(), node.https("alice")] {
            let mut storage = StorageClient::connect(&endpoint).await?;
            let s = status(
                "Put to a slave",
                storage
                    .put_bytes(header("standby", "x"), Bytes::from_static(b"x"))
                    .await,
            )?;
            expect_code("Put to a slave", &s, Code::FailedPrecondition)?;
            ensure!(
                s.message().contains("standby") && s.message().contains("slave"),
                "the message must say which PFS and why: {}",
                s.message()
            );
            let s = status(
                "Mkdir on a slave",
                storage
                    .mkdir(MkdirRequest {
                        pfs: pfs("standby"),
                        path: path("d"),
                        attrs: attrs(0o755),
                        parents: true,
                    })
                    .await,
            )?;
            expect_code("Mkdir on a slave", &s, Code::FailedPrecondition)?;
            let s = status(
                "Symlink on a slave",
                storage
                    .symlink(repl_proto::SymlinkRequest {
                        pfs: pfs("standby"),
                        path: path("l"),
                        target: "x".to_owned(),
                        mtime_ns: 0,
                        parents: false,
                    })
                    .await,
            )?;
            expect_code("Symlink on a slave", &s, Code::FailedPrecondition)?;
            let mut import = storage.import(ImportBegin::new(pfs("standby"))).await?;
            import
                .send(ImportOp::File {
                    path: path("f"),
                    attrs: attrs(0o644),
                    size: 1,
                    data: Bytes::from_static(b"f"),
                })
                .await
                .ok();
            let s = status("Import into a slave", import.finish().await)?;
            expect_code("Import into a slave", &s, Code::FailedPrecondition)?;
        }
        anyhow::Ok(())
    })?;
    // What the operator sees.
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("f"), b"f")?;
    let mut cmd = node.replctl();
    cmd.arg("put").arg(dir.path().join("f")).arg("standby/f");
    cli_fails(&mut cmd, &["standby", "slave"])?;
    let mut cmd = node.replctl();
    cmd.arg("import").arg(dir.path()).arg("standby");
    cli_fails(&mut cmd, &["standby", "slave"])?;
    let after = rt.block_on(StoredState::read(&node))?;
    before.assert_unchanged(&after, "writes to a slave PFS")
}

#[test]
fn check_config_names_the_malformed_field_and_exits_non_zero() -> Result<()> {
    let (node, rt, before) = seeded(NodeOptions::default())?;
    let good = std::fs::read_to_string(node.config_path())?;
    // The node's own config passes.
    let out = run_output(&mut node.repld("check-config"), Duration::from_secs(30))?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("OK"),
        "the running node's config must pass: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Each case: an edit of the good config, and the field the error must name.
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("[limits]\n", "[limits]\nrequest_timeout = \"60\"\n"),
            "limits.request_timeout",
        ),
        (with_listen(&good, "localhost-7420"), "listen"),
        (
            good.replace("[limits]\n", "[limits]\nmax_message_bytes = \"lots\"\n"),
            "limits.max_message_bytes",
        ),
        (
            good.replace("[limits]\n", "[limits]\nmax_message_bytes = \"2GiB\"\n"),
            "limits.max_message_bytes",
        ),
        (
            good.replace("node_name = \"node1\"", "node_name = \"bad name\""),
            "node_name",
        ),
        (
            good.replace("node_name = ", "lisen = \"127.0.0.1:1\"\nnode_name = "),
            "lisen",
        ),
        (
            good.replace(
                "allow_plaintext_loopback = false",
                "allow_plaintext_loopback = \"yes\"",
            ),
            "tls.allow_plaintext_loopback",
        ),
        (
            good.replace("size = \"256MiB\"", "size = \"huge\""),
            "devices[0].size",
        ),
        (
            with_listen(&good, "0.0.0.0:0").replace(
                "allow_plaintext_loopback = false",
                "allow_plaintext_loopback = true",
            ),
            "tls.allow_plaintext_loopback",
        ),
        // A syntax error has no field yet: the message shows the offending line.
        (good.replace("[tls]\n", "[tls\n"), "[tls"),
    ];
    let dir = tempfile::tempdir()?;
    for (i, (text, field)) in cases.iter().enumerate() {
        ensure!(
            text != &good,
            "case {i} ({field}) did not change the config"
        );
        let file = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&file, text)?;
        let mut cmd = std::process::Command::new(repl_tests::node::bin("repld"));
        cmd.arg("check-config").arg("--config").arg(&file);
        let out = run_output(&mut cmd, Duration::from_secs(30))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(1),
            "check-config of a config with a bad `{field}` must exit 1, got {}:\n{stderr}",
            out.status
        );
        ensure!(
            stderr.contains(field),
            "check-config must name `{field}`:\n{stderr}"
        );
        eprintln!("bad `{field}`: {}", stderr.trim_end());
        ensure!(
            out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).starts_with("OK"),
            "check-config printed OK for a bad `{field}`"
        );
    }
    let after = rt.block_on(StoredState::read(&node))?;
    before.assert_unchanged(&after, "check-config of malformed configs")
}

/// `config` with its `listen = ...` line set to `addr` (a started node listens on the port it
/// bound first, not on port 0).
fn with_listen(config: &str, addr: &str) -> String {
    config
        .lines()
        .map(|l| {
            if l.starts_with("listen = ") {
                format!("listen = \"{addr}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}
