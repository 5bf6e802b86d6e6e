//! End-to-end replication: real `repld` nodes over mutual TLS on loopback, driven by `replctl`.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use repl_tests::node::{NodeOptions, TestNode, run_ok, run_output};
use repl_tests::tree;

const CLI_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Two nodes sharing a CA, and a replctl config that names both, with `alice` as the admin.
struct Pair {
    master: TestNode,
    slave: TestNode,
    config: std::path::PathBuf,
    _work: tempfile::TempDir,
}

impl Pair {
    fn start() -> Result<Pair> {
        let master = TestNode::start(NodeOptions {
            name: "node1".into(),
            other_nodes: vec!["node2".into()],
            ..NodeOptions::default()
        })?;
        let slave = TestNode::start(NodeOptions {
            name: "node2".into(),
            other_nodes: vec![],
            shared_certs: Some(master.certs().dir.clone()),
            ..NodeOptions::default()
        })?;
        let work = tempfile::tempdir()?;
        let config = work.path().join("replctl.toml");
        let c = master.certs();
        fs::write(
            &config,
            format!(
                "ca = {:?}\ncert = {:?}\nkey = {:?}\n\n[nodes.node1]\nendpoint = \"https://{}\"\n\n[nodes.node2]\nendpoint = \"https://{}\"\n",
                c.ca(),
                c.cert("alice"),
                c.key("alice"),
                master.addr(),
                slave.addr()
            ),
        )?;
        Ok(Pair {
            master,
            slave,
            config,
            _work: work,
        })
    }

    fn replctl(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
        let mut cmd = Command::new(repl_tests::node::bin("replctl"));
        cmd.env_remove("REPLCTL_SOCKET")
            .env_remove("REPLCTL_ENDPOINT");
        cmd.arg("--config").arg(&self.config);
        for a in args {
            cmd.arg(a);
        }
        cmd
    }

    fn ok(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<String> {
        run_ok(&mut self.replctl(args), CLI_TIMEOUT)
    }
}

fn export(p: &Pair, target: &str, file: &Path) -> Result<Vec<u8>> {
    p.ok(&[&"export", &target, &"-o", &file])?;
    fs::read(file).with_context(|| format!("read {}", file.display()))
}

#[test]
fn a_paired_slave_catches_up_and_verifies_equal_to_its_master() -> Result<()> {
    let p = Pair::start()?;
    let work = tempfile::tempdir()?;
    let src = work.path().join("src");
    tree::round_trip_tree(&src)?;
    p.ok(&[&"pfs", &"create", &"node1:data"])?;
    p.ok(&[&"import", &src, &"node1:data"])?;
    p.ok(&[&"pair", &"node1:data", &"node2:data"])?;
    p.ok(&[
        &"wait-sync",
        &"node1:data",
        &"node2:data",
        &"--timeout",
        &"60",
    ])?;

    let out = p.ok(&[&"--json", &"verify", &"node1:data", &"node2:data"])?;
    ensure!(out.contains("\"result\":\"MATCH\""), "verify: {out}");
    let deep = p.ok(&[
        &"--json",
        &"verify",
        &"--deep",
        &"node1:data",
        &"node2:data",
    ])?;
    ensure!(
        deep.contains("\"result\":\"MATCH\""),
        "verify --deep: {deep}"
    );

    // A later change streams without any command, and the exports agree at the synced TID.
    p.ok(&[&"mkdir", &"node1:data/later"])?;
    p.ok(&[
        &"wait-sync",
        &"node1:data",
        &"node2:data",
        &"--timeout",
        &"60",
    ])?;
    let status = p.ok(&[&"--json", &"status", &"node2"])?;
    let synced: serde_json::Value = serde_json::from_str(&status)?;
    let tid = synced["slaves"][0]["synced_tid"]
        .as_str()
        .context("the slave's synced TID in status")?
        .to_owned();
    let m = export(&p, &format!("node1:data@{tid}"), &work.path().join("m.tar"))?;
    let s = export(&p, &format!("node2:data@{tid}"), &work.path().join("s.tar"))?;
    ensure!(
        m == s,
        "the exports at {tid} differ ({} vs {} bytes)",
        m.len(),
        s.len()
    );
    tree::make_writable(work.path());
    drop(p.slave);
    drop(p.master);
    Ok(())
}

#[test]
fn verify_names_a_differing_path_and_exits_3() -> Result<()> {
    let p = Pair::start()?;
    p.ok(&[&"pfs", &"create", &"node1:data"])?;
    p.ok(&[&"mkdir", &"node1:data/docs"])?;
    p.ok(&[&"pfs", &"create", &"node2:other"])?;
    p.ok(&[&"mkdir", &"node2:other/docs"])?;
    p.ok(&[&"mkdir", &"node2:other/extra"])?;
    let out = run_output(
        &mut p.replctl(&[&"verify", &"--at", &"0", &"node1:data", &"node2:other"]),
        CLI_TIMEOUT,
    );
    // Different PFSes at head (TID 0 means the head on each side).
    let out = out?;
    ensure!(
        out.status.code() == Some(3),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains("differs: /extra"),
        "verify output: {stdout}"
    );
    Ok(())
}
