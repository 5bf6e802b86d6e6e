//! Several real nodes that share one CA, and a replctl config that names them all with `alice`
//! (an admin on each) as the client: what replication, metrics and observability tests start
//! from.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::node::{NodeOptions, TestNode, bin, run_ok};

/// How long one `replctl` command may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// Nodes sharing one CA, and a replctl config that names them all, with `alice` as the admin.
pub struct Cluster {
    /// `node1`, `node2`, ... in order.
    pub nodes: Vec<TestNode>,
    /// The replctl config naming every node.
    pub config: PathBuf,
    /// A scratch directory that lives as long as the cluster.
    pub work: tempfile::TempDir,
}

impl Cluster {
    /// Nodes `node1`.. with `opts` applied to each (name and certificates are set here).
    pub fn start(count: usize, opts: impl Fn(usize) -> NodeOptions) -> Result<Cluster> {
        let names: Vec<String> = (1..=count).map(|i| format!("node{i}")).collect();
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let o = opts(i + 1);
            let node = TestNode::start(NodeOptions {
                name: name.clone(),
                other_nodes: if i == 0 {
                    names[1..].to_vec()
                } else {
                    Vec::new()
                },
                shared_certs: nodes.first().map(|n: &TestNode| n.certs().dir.clone()),
                ..o
            })?;
            nodes.push(node);
        }
        let work = tempfile::tempdir()?;
        let config = work.path().join("replctl.toml");
        let mut cluster = Cluster {
            nodes,
            config,
            work,
        };
        cluster.write_config()?;
        Ok(cluster)
    }

    fn write_config(&mut self) -> Result<()> {
        let c = self.nodes[0].certs();
        let mut text = format!(
            "ca = {:?}\ncert = {:?}\nkey = {:?}\n",
            c.ca(),
            c.cert("alice"),
            c.key("alice")
        );
        for n in &self.nodes {
            text.push_str(&format!(
                "\n[nodes.{}]\nendpoint = \"https://{}\"\n",
                n.name(),
                n.addr()
            ));
        }
        fs::write(&self.config, text).context("write replctl.toml")
    }

    /// Node `i`, counting from 1 (`node1`).
    pub fn node(&mut self, i: usize) -> &mut TestNode {
        &mut self.nodes[i - 1]
    }

    /// A `replctl --config CLUSTER_CONFIG ARGS` command, with no replctl environment.
    pub fn replctl(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
        let mut cmd = Command::new(bin("replctl"));
        for var in ["REPLCTL_SOCKET", "REPLCTL_ENDPOINT", "REPLCTL_CONFIG"] {
            cmd.env_remove(var);
        }
        cmd.arg("--config").arg(&self.config);
        for a in args {
            cmd.arg(a);
        }
        cmd
    }

    /// Runs `replctl ARGS`; fails with its output unless it exits 0. Returns stdout.
    pub fn ok(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<String> {
        run_ok(&mut self.replctl(args), CLI_TIMEOUT)
    }

    /// `replctl --json status NODE`.
    pub fn status(&self, node: &str) -> Result<Value> {
        let out = self.ok(&[&"--json", &"status", &node])?;
        serde_json::from_str(&out).with_context(|| format!("status JSON: {out}"))
    }

    /// The row of the slave PFS `pfs` in `node`'s status (`slaves`).
    pub fn slave_row(&self, node: &str, pfs: &str) -> Result<Value> {
        let s = self.status(node)?;
        s["slaves"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["slave"] == pfs))
            .cloned()
            .with_context(|| format!("no slave {pfs} on {node}: {s}"))
    }

    /// The row of the pairing that `master` feeds to `slave` (`node2:data`), from its node.
    pub fn pairing(&self, master_node: &str, slave: &str) -> Result<Value> {
        let s = self.status(master_node)?;
        s["pairings"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["slave"] == slave))
            .cloned()
            .with_context(|| format!("no pairing to {slave} on {master_node}: {s}"))
    }

    /// [`Cluster::ok`] for arguments that are all strings.
    pub fn ok_str(&self, args: &[&str]) -> Result<String> {
        let args: Vec<&dyn AsRef<std::ffi::OsStr>> = args
            .iter()
            .map(|a| a as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        self.ok(&args)
    }

    /// `replctl wait-sync MASTER SLAVE`, 90 s at most.
    pub fn wait_sync(&self, master: &str, slave: &str) -> Result<()> {
        self.ok(&[&"wait-sync", &master, &slave, &"--timeout", &"90"])
            .map(drop)
    }

    /// `replctl verify [--deep] MASTER SLAVE` must say MATCH.
    pub fn verify_match(&self, master: &str, slave: &str, deep: bool) -> Result<()> {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--json", &"verify"];
        if deep {
            args.push(&"--deep");
        }
        args.push(&master);
        args.push(&slave);
        let out = self.ok(&args)?;
        ensure!(
            out.contains("\"result\":\"MATCH\""),
            "verify {master} {slave}: {out}"
        );
        Ok(())
    }

    /// Waits until `cond` holds for the pairing's status row.
    pub fn wait_pairing(
        &self,
        master_node: &str,
        slave: &str,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let row = self.pairing(master_node, slave)?;
            if cond(&row) {
                return Ok(row);
            }
            if Instant::now() > deadline {
                bail!("waited 60 s for {what}; the pairing: {row}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Versions stored in a PFS (each applied once, or the counts differ).
    pub fn versions(&self, target: &str) -> Result<u64> {
        let out = self.ok(&[&"--json", &"pfs", &"status", &target])?;
        let v: Value = serde_json::from_str(&out)?;
        v["versions"]
            .as_u64()
            .with_context(|| format!("no versions in {out}"))
    }
}
