//! The shipped observability files (`deploy/prometheus`, `deploy/grafana`) against the tools
//! that read them and against real nodes:
//!
//! - `promtool` accepts the alert rules, the example config, and passes the rules' unit tests,
//!   which cover every alert; every alert links to a runbook section that exists.
//! - Every Grafana panel (rows and the panels nested in collapsed rows included) uses the
//!   `${datasource}` variable and has a query.
//! - A real Prometheus server scrapes two paired nodes under a small write load: every query of
//!   the dashboard and every series the alerts are built on returns data through the HTTP API,
//!   no alert condition holds on the healthy pair, and ReplicationLagHigh fires while the slave
//!   falls behind (a throttled pairing) and clears once it caught up.
//! - The same with the slave stopped: the lag alert fires while it is down and clears once it
//!   is back.

use std::fs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use repl_tests::cluster::Cluster;
use repl_tests::node::{NodeOptions, bin, http_get, run_ok, run_output};
use serde_json::Value;

const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Generous: a debug build on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);
/// What `$__rate_interval` stands for in the live queries. Grafana makes it at least four scrape
/// intervals; with the test's 1 s scrapes, 30 s holds many samples.
const RATE_INTERVAL: &str = "30s";

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

/// Runs `promtool ARGS` in `dir`; fails with its output unless it exits 0.
fn promtool(dir: &Path, args: &[&str]) -> Result<String> {
    let out = run_output(
        Command::new("promtool").args(args).current_dir(dir),
        CLI_TIMEOUT,
    )
    .context("run promtool (installed by scripts/setup: Debian's prometheus package)")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{said}",
        out.status
    );
    Ok(said)
}

/// The alert names of a rules file, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn promtool_accepts_the_rules_and_the_config_and_their_unit_tests_pass() -> Result<()> {
    let dir = deploy("prometheus");
    let said = promtool(&dir, &["check", "rules", "repld-rules.yml"])?;
    let rules = read(&dir.join("repld-rules.yml"))?;
    let names = alert_names(&rules);
    ensure!(
        said.contains(&format!("SUCCESS: {} rules found", names.len())),
        "promtool found another number of rules than the {} alerts {names:?}:\n{said}",
        names.len()
    );
    promtool(&dir, &["check", "config", "prometheus.yml"])?;
    promtool(&dir, &["test", "rules", "repld-rules.test.yml"])?;

    // A coarse coverage check (there is no YAML parser here): every alert is named by at least
    // two alert_rule_test cases, one that expects it and one that expects silence.
    let tests = read(&dir.join("repld-rules.test.yml"))?;
    for name in &names {
        let cases = tests
            .lines()
            .filter(|l| l.trim() == format!("alertname: {name}"))
            .count();
        ensure!(
            cases >= 2,
            "{name} has {cases} alert_rule_test case(s) in repld-rules.test.yml: it needs one \
             where it fires and one where it stays silent"
        );
    }
    Ok(())
}

/// The anchor GitHub gives a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_links_to_a_runbook_section_of_operations_md() -> Result<()> {
    let rules = read(&deploy("prometheus/repld-rules.yml"))?;
    let ops = read(&deploy("../docs/operations.md"))?;
    let anchors: Vec<String> = ops
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect();
    let names = alert_names(&rules);
    ensure!(!names.is_empty(), "no alerts in repld-rules.yml");
    // Each alert's block, from its `- alert:` line to the next.
    let blocks: Vec<&str> = rules.split("- alert:").skip(1).collect();
    ensure!(blocks.len() == names.len());
    for (name, block) in names.iter().zip(&blocks) {
        for key in ["summary:", "description:"] {
            ensure!(block.contains(key), "{name} has no {key} annotation");
        }
        let link = block
            .split_whitespace()
            .find_map(|w| w.strip_prefix("docs/operations.md#"))
            .with_context(|| format!("{name}'s description links to no runbook section"))?;
        ensure!(
            link == name.to_lowercase(),
            "{name} links to #{link}, not to its own section #{}",
            name.to_lowercase()
        );
        ensure!(
            anchors.iter().any(|a| a == link),
            "{name} links to docs/operations.md#{link}, which has no such heading"
        );
    }
    Ok(())
}

/// Every panel of a dashboard, with the panels nested in (collapsed) rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The dashboard, parsed, and the PromQL of every target of every panel (with its title).
fn dashboard() -> Result<(Value, Vec<(String, String)>)> {
    let text = read(&deploy("grafana/repld.json"))?;
    let d: Value = serde_json::from_str(&text).context("deploy/grafana/repld.json is not JSON")?;
    let mut exprs = Vec::new();
    for p in all_panels(&d) {
        if p["type"] == "row" {
            continue;
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                exprs.push((
                    format!("{} ({})", p["title"], t["refId"]),
                    e.trim().to_owned(),
                ));
            }
        }
    }
    Ok((d, exprs))
}

#[test]
fn every_dashboard_panel_uses_the_datasource_variable_and_has_a_query() -> Result<()> {
    let (d, exprs) = dashboard()?;
    let want = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    let vars = d["templating"]["list"]
        .as_array()
        .context("no templating.list")?;
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("datasource").context("no datasource variable")?;
    ensure!(
        ds["type"] == "datasource" && ds["query"] == "prometheus",
        "the datasource variable does not list Prometheus datasources: {ds}"
    );
    let inst = var("instance").context("no instance variable")?;
    ensure!(
        inst["datasource"] == want,
        "the instance variable's datasource: {}",
        inst["datasource"]
    );
    ensure!(
        inst["definition"] == "label_values(repld_up, instance)",
        "the instance variable: {inst}"
    );

    let panels = all_panels(&d);
    ensure!(
        panels
            .iter()
            .any(|p| p["type"] == "row" && p["panels"].as_array().is_some_and(|n| !n.is_empty())),
        "no collapsed row with nested panels: the nested case goes unchecked"
    );
    let mut ids = std::collections::HashSet::new();
    for p in &panels {
        let title = &p["title"];
        ensure!(
            p["datasource"] == want,
            "panel {title}: datasource {}",
            p["datasource"]
        );
        ensure!(
            ids.insert(p["id"].as_u64().context("a panel without an id")?),
            "panel {title}: id {} is used twice",
            p["id"]
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .with_context(|| format!("panel {title} has no targets"))?;
        ensure!(
            targets
                .iter()
                .any(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty())),
            "panel {title} has no target with an expr"
        );
        for t in targets {
            ensure!(
                t["datasource"].is_null() || t["datasource"] == want,
                "panel {title}, target {}: datasource {}",
                t["refId"],
                t["datasource"]
            );
        }
    }
    ensure!(exprs.len() >= 10, "only {} queries", exprs.len());
    Ok(())
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on loopback, killed when dropped.
struct Prometheus {
    proc: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `prometheus` with `config` (written to its directory, beside `rules` as
    /// `repld-rules.yml`) and waits until it is ready.
    fn start(config: &str, rules: &str) -> Result<Prometheus> {
        let dir = tempfile::Builder::new()
            .prefix("prometheus-e2e-")
            .tempdir()?;
        fs::write(dir.path().join("prometheus.yml"), config)?;
        fs::write(dir.path().join("repld-rules.yml"), rules)?;
        // A free port: bind, read it, let it go (Prometheus binds it a moment later).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = fs::File::create(dir.path().join("prometheus.log"))?;
        let proc = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context(
                "start prometheus (installed by scripts/setup: Debian's prometheus package)",
            )?;
        let mut p = Prometheus { proc, addr, dir };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = p.proc.try_wait()? {
                bail!("prometheus exited ({status}); its log:\n{}", p.log());
            }
            if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!(
                    "prometheus was not ready within {WAIT:?}; its log:\n{}",
                    p.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/...`: the `data` of a successful answer.
    fn api(&self, path: &str) -> Result<Value> {
        let (code, body) = http_get(self.addr, &format!("/api/v1/{path}"))?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET /api/v1/{path} answered {code}: {body}"))?;
        ensure!(
            code == 200 && v["status"] == "success",
            "GET /api/v1/{path} answered {code}: {body}"
        );
        Ok(v["data"].clone())
    }

    /// The instant vector `expr` evaluates to now.
    fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let data = self.api(&format!("query?query={}", url_encode(expr)))?;
        ensure!(
            data["resultType"] == "vector",
            "{expr} is a {}, not an instant vector",
            data["resultType"]
        );
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The states (`pending`, `firing`) of the active alerts named `name` with these labels.
    fn alert_states(&self, name: &str, labels: &[(&str, &str)]) -> Result<Vec<String>> {
        let data = self.api("alerts")?;
        Ok(data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| {
                a["labels"]["alertname"] == name
                    && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
            })
            .map(|a| a["state"].as_str().unwrap_or("?").to_owned())
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// The shipped rules with ReplicationLagHigh made quick enough for a test: a threshold of 1 s
/// instead of 60 s and `for: 2s` instead of 5m. Fails if the shipped rule no longer reads as
/// expected, so the test never silently runs against an unchanged rule.
fn quick_lag_rules(shipped: &str) -> Result<String> {
    let start = shipped
        .find("- alert: ReplicationLagHigh")
        .context("no ReplicationLagHigh in repld-rules.yml")?;
    let len = shipped[start + 1..]
        .find("- alert:")
        .map_or(shipped.len() - start, |n| n + 1);
    let block = &shipped[start..start + len];
    let mut quick = block.to_owned();
    for (from, to) in [
        (
            r#"expr: repld_replication_lag_seconds{role="master"} > 60"#,
            r#"expr: repld_replication_lag_seconds{role="master"} > 1"#,
        ),
        ("for: 5m", "for: 2s"),
    ] {
        ensure!(
            quick.matches(from).count() == 1,
            "ReplicationLagHigh no longer has `{from}` (once): update this test's rewrite:\n{block}"
        );
        quick = quick.replace(from, to);
    }
    Ok(format!(
        "{}{quick}{}",
        &shipped[..start],
        &shipped[start + len..]
    ))
}

/// The operands an alert condition is made of, each without its comparison: for
/// `a > 0 and b > 120` that is `a` and `b`; for `x / y < 0.1` it is `x / y`. On a healthy
/// cluster the condition itself is empty by design, but these must not be: they are the series
/// the alert watches.
fn alert_operands(expr: &str) -> Vec<String> {
    // Split on set operators outside (), [], {} and quotes.
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut last) = (0i32, false, 0);
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => quoted = !quoted,
            b'(' | b'[' | b'{' if !quoted => depth += 1,
            b')' | b']' | b'}' if !quoted => depth -= 1,
            b' ' if !quoted && depth == 0 => {
                if let Some(op) = [" and ", " or ", " unless "]
                    .iter()
                    .find(|op| expr[i..].starts_with(**op))
                {
                    parts.push(&expr[last..i]);
                    i += op.len();
                    last = i;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&expr[last..]);
    parts
        .into_iter()
        .map(|p| strip_comparison(p.trim()).to_owned())
        .collect()
}

/// `x OP number` → `x`, for a comparison at the top level of `p`.
fn strip_comparison(p: &str) -> &str {
    for op in ["==", "!=", ">=", "<=", ">", "<"] {
        if let Some((lhs, rhs)) = p.rsplit_once(&format!(" {op} "))
            && rhs.trim().parse::<f64>().is_ok()
            && !lhs.trim().is_empty()
        {
            return lhs.trim();
        }
    }
    p
}

/// Writes on the master every ~200 ms until stopped: each write a `replctl put` of a new
/// 64 KiB file of its own content (distinct, so no chunk is deduplicated away), ~320 KiB/s.
struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Writer {
    fn start(config: PathBuf, scratch: PathBuf) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (Arc::clone(&stop), Arc::clone(&done));
        let thread = std::thread::spawn(move || -> Result<()> {
            let file = scratch.join("payload");
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let mut content = vec![0u8; 64 << 10];
                rand::fill(&mut content[..]);
                fs::write(&file, &content)?;
                let mut cmd = Command::new(bin("replctl"));
                cmd.env_remove("REPLCTL_SOCKET")
                    .env_remove("REPLCTL_ENDPOINT")
                    .env_remove("REPLCTL_CONFIG")
                    .arg("--config")
                    .arg(&config)
                    .arg("put")
                    .arg(&file)
                    .arg(format!("node1:data/w{i}"));
                run_ok(&mut cmd, CLI_TIMEOUT)?;
                i += 1;
                d.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        });
        Writer {
            stop,
            done,
            thread: Some(thread),
        }
    }

    fn writes(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops the writer; fails with its error if a write failed.
    fn finish(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r.context("the writer on node1")?,
            Some(Err(_)) => bail!("the writer thread panicked"),
            None => {}
        }
        Ok(self.writes())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Polls `cond` every 250 ms until it yields a value or `WAIT` passes (then fails with `what`
/// and the last state `cond` described).
fn wait_for<T>(what: &str, mut cond: impl FnMut() -> Result<Result<T, String>>) -> Result<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = match cond()? {
            Ok(v) => return Ok(v),
            Err(state) => state,
        };
        if Instant::now() > deadline {
            bail!("waited {WAIT:?} for {what}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Two paired nodes under a writer, scraped by a real Prometheus with the shipped rules.
///
/// Prometheus scrapes node1 (master of `data`) and node2 (its slave) every second and evaluates
/// the rules every second, while node1 takes a write every ~200 ms. The rules are a copy of
/// `deploy/prometheus/repld-rules.yml` in which ReplicationLagHigh is shortened (threshold 1 s,
/// `for: 2s`; see [`quick_lag_rules`]): the shipped 60 s for 5 minutes would make the test take
/// six minutes. Every other rule is loaded as shipped.
///
/// TestNode's metrics endpoint is on `127.0.0.1:0`, so a node started again gets a new metrics
/// port and Prometheus keeps scraping the old (dead) one. The lag alert is the master's view
/// (`role="master"`), which this does not affect.
struct Live {
    /// node1 (master) and node2 (slave), kept running until the test ends.
    cluster: Cluster,
    writer: Writer,
    prom: Prometheus,
    /// The rules as Prometheus loaded them (from `/api/v1/rules`), in file order.
    rules: Vec<Value>,
    metrics: [SocketAddr; 2],
}

/// The labels of the pairing's alerts.
const PAIRING: [(&str, &str); 3] = [("pfs", "data"), ("peer", "node2"), ("peer_pfs", "data")];

impl Live {
    fn start() -> Result<Live> {
        let cluster = Cluster::start(2, |_| NodeOptions::default())?;
        let (master, slave) = (&cluster.nodes[0], &cluster.nodes[1]);
        let config = cluster.config.clone();
        let work = &cluster.work;
        let replctl = |args: &[&str]| cluster.ok_str(args);
        replctl(&["pfs", "create", "node1:data"])?;
        replctl(&["mkdir", "node1:data/a"])?;
        replctl(&["pair", "node1:data", "node2:data"])?;
        replctl(&["wait-sync", "node1:data", "node2:data", "--timeout", "60"])?;
        // So that the verify series exist.
        replctl(&["verify", "node1:data", "node2:data"])?;

        let writer = Writer::start(config.clone(), work.path().to_owned());
        let metrics = [master.metrics_addr()?, slave.metrics_addr()?];
        let shipped = read(&deploy("prometheus/repld-rules.yml"))?;
        let prom = Prometheus::start(
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - repld-rules.yml\n\
                 scrape_configs:\n  - job_name: repld\n    static_configs:\n      \
                 - targets: [\"{}\", \"{}\"]\n",
                metrics[0], metrics[1]
            ),
            &quick_lag_rules(&shipped)?,
        )?;

        // Every shipped alert is loaded and evaluates without error.
        let names = alert_names(&shipped);
        let rules = wait_for("every rule evaluated", || {
            let data = prom.api("rules")?;
            let rules: Vec<Value> = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let done = rules.len() == names.len() && rules.iter().all(|r| r["health"] != "unknown");
            Ok(if done {
                Ok(rules)
            } else {
                Err(data.to_string())
            })
        })?;
        for r in &rules {
            ensure!(
                r["health"] == "ok",
                "rule {} does not evaluate: {}",
                r["name"],
                r["lastError"]
            );
        }
        let loaded: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
        ensure!(
            loaded == names,
            "Prometheus loaded {loaded:?}, the file has {names:?}"
        );
        Ok(Live {
            cluster,
            writer,
            prom,
            rules,
            metrics,
        })
    }

    fn replctl(&self, args: &[&str]) -> Result<String> {
        self.cluster.ok_str(args)
    }

    /// Waits until the pairing's ReplicationLagHigh is firing (`true`) or not (`false`).
    fn wait_lag_alert(&self, firing: bool) -> Result<Duration> {
        let since = Instant::now();
        let what = if firing {
            "ReplicationLagHigh to fire"
        } else {
            "ReplicationLagHigh to clear"
        };
        wait_for(what, || {
            let states = self.prom.alert_states("ReplicationLagHigh", &PAIRING)?;
            Ok(if states.iter().any(|s| s == "firing") == firing {
                Ok(since.elapsed())
            } else {
                Err(format!(
                    "alert states {states:?}; {} writes; the master reports {}",
                    self.writer.writes(),
                    pairing_view(&self.prom)?
                ))
            })
        })
    }
}

/// What the master's series of the pairing read now, for failure messages.
fn pairing_view(prom: &Prometheus) -> Result<String> {
    let mut out = Vec::new();
    for name in [
        "repld_replication_lag_seconds",
        "repld_replication_stream_up",
        "repld_replication_head_tid_seconds",
        "repld_replication_synced_tid_seconds",
        "repld_replication_seconds_since_progress",
        "repld_replication_reconnects_total",
    ] {
        let q = format!(r#"{name}{{role="master",pfs="data",peer="node2"}}"#);
        let v: Vec<String> = prom
            .query(&q)?
            .iter()
            .map(|s| s["value"][1].as_str().unwrap_or("?").to_owned())
            .collect();
        out.push(format!("{name}={}", v.join(",")));
    }
    Ok(out.join(" "))
}

/// Every query of the dashboard (variables filled in) and every series the alerts watch returns
/// a number through Prometheus's HTTP API; no alert condition holds on the healthy pair; and
/// ReplicationLagHigh fires while the slave falls behind (its pairing throttled to 16 KiB/s under
/// ~320 KiB/s of writes) and clears once the limit is lifted and it caught up.
#[test]
fn a_real_prometheus_answers_every_dashboard_and_alert_query_and_fires_the_lag_alert() -> Result<()>
{
    let t0 = Instant::now();
    let live = Live::start()?;
    let prom = &live.prom;
    let [m_addr, s_addr] = live.metrics;

    // The dashboard's queries with its variables filled in, and the rules' operands.
    let instances = format!("{m_addr}|{s_addr}");
    let (_, dash) = dashboard()?;
    let mut queries = Vec::new();
    for (what, expr) in &dash {
        let q = expr
            .replace("${instance}", &instances)
            .replace("$instance", &instances)
            .replace("${__rate_interval}", RATE_INTERVAL)
            .replace("$__rate_interval", RATE_INTERVAL);
        ensure!(
            !q.contains('$'),
            "panel {what}: a variable this test does not fill in: {q}"
        );
        queries.push((format!("panel {what}"), q));
    }
    let mut conditions = Vec::new();
    for r in &live.rules {
        let expr = r["query"].as_str().context("a rule without a query")?;
        let name = r["name"].as_str().unwrap_or("?").to_owned();
        for operand in alert_operands(expr) {
            queries.push((format!("alert {name}"), operand));
        }
        conditions.push((name, expr.to_owned()));
    }
    // Rate and quantile queries need a few scrapes of a moving counter: wait until every query
    // has at least one sample with a number (a quantile of no events is NaN).
    wait_for("every query to return a number", || {
        let mut missing = Vec::new();
        for (what, q) in &queries {
            let result = prom.query(q)?;
            let numbers = result.iter().any(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            });
            if !numbers {
                missing.push(format!("{what}: {q} -> {result:?}"));
            }
        }
        Ok(if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("\n{}", missing.join("\n")))
        })
    })?;
    // The Node variable lists both nodes.
    let listed = prom.api("label/instance/values?match[]=repld_up")?;
    for a in live.metrics {
        ensure!(
            listed
                .as_array()
                .is_some_and(|l| l.iter().any(|v| *v == a.to_string())),
            "label_values(repld_up, instance) does not list {a}: {listed}"
        );
    }
    // Healthy: no alert condition holds. ReplicationLagHigh is left out here, since its test
    // threshold of 1 s may be crossed for a moment on a loaded machine.
    for (name, expr) in &conditions {
        if name == "ReplicationLagHigh" {
            continue;
        }
        let result = prom.query(expr)?;
        ensure!(
            result.is_empty(),
            "{name} holds on a healthy pair: {expr} -> {result:?}"
        );
    }

    // Throttled below the write rate, the slave falls behind with its stream up.
    live.replctl(&[
        "pair",
        "set",
        "node1:data",
        "node2:data",
        "--bandwidth",
        "16KiB",
    ])?;
    let fired_after = live.wait_lag_alert(true)?;
    ensure!(
        !prom
            .query(r#"repld_replication_stream_up{peer="node2"} == 1"#)?
            .is_empty(),
        "the stream is not up: the throttle, not an outage, was to make the lag"
    );
    // Unthrottled, it catches up and the alert clears.
    live.replctl(&[
        "pair",
        "set",
        "node1:data",
        "node2:data",
        "--bandwidth",
        "0",
    ])?;
    let cleared_after = live.wait_lag_alert(false)?;
    let writes = live.writer.finish()?;
    live.cluster
        .ok_str(&["wait-sync", "node1:data", "node2:data", "--timeout", "60"])?;
    eprintln!(
        "{} queries answered; ReplicationLagHigh fired {fired_after:?} after the throttle and \
         cleared {cleared_after:?} after it was lifted; {writes} writes; {:?} in all",
        queries.len(),
        t0.elapsed()
    );
    Ok(())
}

/// ReplicationLagHigh fires while the slave is stopped and the master keeps taking writes, and
/// clears once the slave is back. (The sender follows the master's head between streams, so the
/// lag grows while the slave is down.)
#[test]
fn a_real_prometheus_fires_the_lag_alert_while_the_slave_is_stopped() -> Result<()> {
    let mut live = Live::start()?;
    live.cluster.node(2).stop()?;
    let before = live.writer.writes();
    let fired_after = live.wait_lag_alert(true)?;
    ensure!(
        !live
            .prom
            .query(r#"repld_replication_stream_up{peer="node2"} == 0"#)?
            .is_empty(),
        "the master's stream_up for node2 is not 0 while node2 is stopped"
    );
    ensure!(
        live.writer.writes() > before,
        "no write went through while the slave was down"
    );
    live.cluster.node(2).launch()?;
    let cleared_after = live.wait_lag_alert(false)?;
    let writes = live.writer.finish()?;
    eprintln!(
        "ReplicationLagHigh fired {fired_after:?} after the slave stopped and cleared \
         {cleared_after:?} after it started again; {writes} writes"
    );
    Ok(())
}
