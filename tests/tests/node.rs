//! End-to-end tests of a node as an operator drives it (issue 3, "Prove it"): real `repld`
//! processes, driven with the real `replctl` over the admin socket and over mutual TLS.
//!
//! - `round_trip_import_export_keeps_content_modes_mtimes_and_symlinks`: a generated tree
//!   (0 B to 6 MiB files, odd names, modes, ns mtimes, symlinks, empty dirs) goes in with
//!   `replctl import` and out with `replctl export`; GNU tar extracts it; `diff -r` is clean and
//!   every entry's kind, content, mode, mtime (ns) and symlink target are equal.
//! - `an_export_at_an_old_tid_reproduces_the_old_state_byte_for_byte`: after overwrites,
//!   deletes and new files, an export at the earlier TID (and at a snapshot of it) is the old
//!   tree again; two exports of one TID are the same bytes; the head is the new tree.
//! - `over_mutual_tls_the_same_operations_work`: the admin certificate from `replctl certs
//!   init` does over TLS what the admin socket does, with the same bytes out; a node certificate
//!   is told it is not an admin.
//! - `sigterm_during_an_import_keeps_what_was_committed_and_the_import_finishes_on_a_rerun`
//! - `a_stock_grpc_client_lists_the_services_and_gets_serving` (mutual TLS) and
//!   `a_stock_grpc_client_works_over_plaintext_loopback`: Python grpcio with reflection and
//!   health (`tests/scripts/stock_grpc_client.py`).
//! - `fsck_of_a_stopped_node_reports_a_clean_log`, `format_refuses_an_existing_repld_device`.
//! - `pfs_wait_head_answers_when_a_commit_passes_the_tid_and_at_its_timeout_otherwise`: the call
//!   `replctl wait-sync` makes instead of polling.
//!
//! Bad input is in `bad_input.rs`. The binaries come from the workspace build: run
//! `cargo build --workspace` (or `-p repld -p replctl`) before these tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use repl_tests::node::{NodeOptions, StoredState, TestNode, run_ok, run_output, runtime};
use repl_tests::tree;
use repl_types::{PfsName, Tid};

/// How long a replctl command may take (imports and exports of a few MiB in a debug build).
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

fn pfs(name: &str) -> PfsName {
    PfsName::new(name).expect("a valid PFS name")
}

/// Runs `replctl ARGS` and fails with its output unless it exits 0; returns stdout.
fn ok(mut cmd: Command, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<String> {
    for a in args {
        cmd.arg(a);
    }
    run_ok(&mut cmd, CLI_TIMEOUT)
}

/// The head TID of a PFS, read over the admin socket.
fn head(node: &TestNode, name: &str) -> Result<Option<Tid>> {
    let rt = runtime();
    rt.block_on(async {
        let mut admin = node.admin().await?;
        Ok(admin.pfs_status(&pfs(name)).await?.pfs.head_tid)
    })
}

/// How many files a PFS holds at its head, read over the admin socket.
fn stored_files(node: &TestNode, name: &str) -> Result<u64> {
    let rt = runtime();
    rt.block_on(async {
        let mut admin = node.admin().await?;
        Ok(admin.pfs_status(&pfs(name)).await?.files)
    })
}

/// `replctl export TARGET -o FILE` through `cmd`, then the archive's bytes.
fn export(cmd: Command, target: &str, file: &Path) -> Result<Vec<u8>> {
    ok(cmd, &[&"export", &target, &"-o", &file])?;
    fs::read(file).with_context(|| format!("read {}", file.display()))
}

/// Extracts `archive` into a fresh directory `dir` with GNU tar.
fn extracted(archive: &Path, dir: &Path) -> Result<PathBuf> {
    tree::extract(archive, dir)?;
    Ok(dir.to_owned())
}

#[test]
fn round_trip_import_export_keeps_content_modes_mtimes_and_symlinks() -> Result<()> {
    let node = TestNode::start(NodeOptions::default())?;
    let work = tempfile::tempdir()?;
    let src = work.path().join("src");
    tree::round_trip_tree(&src)?;
    let entries = tree::scan(&src)?.len();

    ok(node.replctl(), &[&"pfs", &"create", &"data"])?;
    let out = ok(node.replctl(), &[&"import", &src, &"data"])?;
    ensure!(out.contains("imported"), "import summary: {out}");
    let archive = work.path().join("data.tar");
    export(node.replctl(), "data", &archive)?;
    let dst = extracted(&archive, &work.path().join("dst"))?;

    tree::diff_r(&src, &dst)?;
    tree::compare(&src, &dst)?;
    ensure!(entries > 60, "the tree has {entries} entries");
    tree::make_writable(work.path());
    Ok(())
}

#[test]
fn an_export_at_an_old_tid_reproduces_the_old_state_byte_for_byte() -> Result<()> {
    let mut node = TestNode::start(NodeOptions::default())?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    // The tree as first imported, kept aside as the expected old state; `live` then changes.
    let old = w.join("old");
    let live = w.join("live");
    for dir in [&old, &live] {
        let mut t = tree::TreeBuilder::new(dir, 7)?;
        t.dir("docs", 0o755)?
            .file("docs/keep.txt", 3000, 0o644)?
            .file("docs/overwrite.bin", 200_000, 0o600)?
            .file("docs/delete-me", 10, 0o644)?
            .dir("docs/gone", 0o700)?
            .file("docs/gone/inner", 500, 0o644)?
            .dir("empty", 0o755)?
            .symlink("link", "docs/keep.txt")?
            .file("top", 1_500_000, 0o755)?;
        t.finish()?;
    }
    ok(node.replctl(), &[&"pfs", &"create", &"data"])?;
    ok(node.replctl(), &[&"import", &live, &"data"])?;
    let t1 = head(&node, "data")?.context("the import committed")?;
    ok(
        node.replctl(),
        &[&"snapshot", &"create", &"data", &"before"],
    )?;

    // Later changes, made the way an operator would: overwrite, delete, new files, and a
    // re-import of the changed tree (which also sets the directories' attributes).
    fs::write(live.join("docs/overwrite.bin"), b"new content")?;
    tree::set_mtime(&live.join("docs/overwrite.bin"), 1_750_000_000_000_000_042)?;
    ok(
        node.replctl(),
        &[
            &"put",
            &live.join("docs/overwrite.bin"),
            &"data/docs/overwrite.bin",
        ],
    )?;
    fs::remove_file(live.join("docs/delete-me"))?;
    ok(node.replctl(), &[&"rm", &"data/docs/delete-me"])?;
    fs::remove_dir_all(live.join("docs/gone"))?;
    ok(node.replctl(), &[&"rm", &"-r", &"data/docs/gone"])?;
    fs::create_dir(live.join("new-dir"))?;
    fs::write(live.join("new-dir/new-file"), vec![9u8; 70_000])?;
    fs::write(live.join("docs/added.txt"), b"added later\n")?;
    ok(node.replctl(), &[&"import", &live, &"data"])?;
    let t2 = head(&node, "data")?.context("head after the changes")?;
    ensure!(t2 > t1, "the changes committed after {t1}: head is {t2}");

    let at_t1 = format!("data@{t1}");
    let a = export(node.replctl(), &at_t1, &w.join("t1-a.tar"))?;
    let b = export(node.replctl(), &at_t1, &w.join("t1-b.tar"))?;
    ensure!(
        a == b,
        "two exports of {t1} differ: {} and {} bytes, blake3 {} and {}",
        a.len(),
        b.len(),
        blake3::hash(&a),
        blake3::hash(&b)
    );
    let snap = export(node.replctl(), "data@before", &w.join("t1-snap.tar"))?;
    ensure!(
        snap == a,
        "the export at snapshot `before` differs from the export at its TID"
    );
    // --at names the same point as @TID.
    let mut cmd = node.replctl();
    cmd.args(["export", "data", "--at"])
        .arg(t1.to_string())
        .arg("-o")
        .arg(w.join("t1-c.tar"));
    run_ok(&mut cmd, CLI_TIMEOUT)?;
    let c = fs::read(w.join("t1-c.tar"))?;
    ensure!(
        c == a,
        "`export data --at {t1}` differs from `export data@{t1}`"
    );

    let dst_old = extracted(&w.join("t1-a.tar"), &w.join("dst-old"))?;
    tree::diff_r(&old, &dst_old)?;
    tree::compare(&old, &dst_old)?;

    let head_a = export(node.replctl(), "data", &w.join("head-a.tar"))?;
    let head_b = export(node.replctl(), &format!("data@{t2}"), &w.join("head-b.tar"))?;
    ensure!(
        head_a == head_b,
        "the head export differs from the export at the head TID"
    );
    ensure!(head_a != a, "the head export must differ from the old one");
    let dst_new = extracted(&w.join("head-a.tar"), &w.join("dst-new"))?;
    tree::diff_r(&live, &dst_new)?;
    tree::compare(&live, &dst_new)?;

    // The same TID gives the same bytes after a restart too (the index replayed from the log).
    node.stop()?;
    node.launch()?;
    let after_restart = export(node.replctl(), &at_t1, &w.join("t1-restart.tar"))?;
    ensure!(
        after_restart == a,
        "the export of {t1} changed across a restart"
    );
    Ok(())
}

#[test]
fn over_mutual_tls_the_same_operations_work() -> Result<()> {
    let node = TestNode::start(NodeOptions::default())?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let src = w.join("src");
    let mut t = tree::TreeBuilder::new(&src, 11)?;
    t.dir("a", 0o750)?
        .file("a/one", 1_200_000, 0o640)?
        .file("a/two", 0, 0o600)?
        .symlink("a/link", "one")?
        .dir("empty", 0o700)?;
    t.finish()?;

    // Everything over mutual TLS as the admin `alice`.
    let tls = || node.replctl_tls("alice");
    let info = ok(tls(), &[&"node", &"info"])?;
    ensure!(info.contains("node1"), "node info over TLS: {info}");
    ok(tls(), &[&"pfs", &"create", &"data"])?;
    ok(tls(), &[&"import", &src, &"data"])?;
    fs::write(w.join("extra"), b"put over TLS\n")?;
    ok(tls(), &[&"put", &w.join("extra"), &"data/a/extra"])?;
    fs::write(src.join("a/extra"), b"put over TLS\n")?;
    let ls = ok(tls(), &[&"ls", &"-R", &"data"])?;
    for name in ["one", "two", "link", "extra", "empty"] {
        ensure!(ls.contains(name), "ls over TLS lacks {name}:\n{ls}");
    }
    let list = ok(tls(), &[&"pfs", &"list"])?;
    ensure!(list.contains("data"), "pfs list over TLS: {list}");
    let over_tls = export(tls(), "data", &w.join("tls.tar"))?;

    // The admin socket sees the same PFS and exports the same bytes.
    let over_socket = export(node.replctl(), "data", &w.join("socket.tar"))?;
    ensure!(
        over_tls == over_socket,
        "the export over TLS differs from the export over the admin socket"
    );
    let dst = extracted(&w.join("tls.tar"), &w.join("dst"))?;
    // `extra` was put with the local file's mode and mtime: give the source copy the same.
    let extra_meta = fs::symlink_metadata(w.join("extra"))?;
    fs::set_permissions(src.join("a/extra"), extra_meta.permissions())?;
    tree::set_mtime(
        &src.join("a/extra"),
        std::os::unix::fs::MetadataExt::mtime(&extra_meta) * 1_000_000_000
            + std::os::unix::fs::MetadataExt::mtime_nsec(&extra_meta),
    )?;
    // Adding `extra` changed the local directory's mtime, not the stored one: restore it.
    let stored_a = tree::scan(&dst)?[Path::new("a")].mtime_ns;
    tree::set_mtime(&src.join("a"), i64::try_from(stored_a)?)?;
    tree::diff_r(&src, &dst)?;
    tree::compare(&src, &dst)?;

    // A node certificate (valid, same CA, not in tls.admins) is told what is wrong.
    let before = runtime().block_on(StoredState::read(&node))?;
    let mut cmd = node.replctl_tls("node2");
    cmd.args(["pfs", "create", "intruder"]);
    let out = run_output(&mut cmd, CLI_TIMEOUT)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "replctl as node2 must exit 1: {}\n{stderr}",
        out.status
    );
    ensure!(
        stderr.contains("node2") && stderr.contains("tls.admins"),
        "replctl as node2 must say which identity was refused and which setting admits it:\n{stderr}"
    );
    let after = runtime().block_on(StoredState::read(&node))?;
    before.assert_unchanged(&after, "a refused pfs create over TLS")?;
    Ok(())
}

#[test]
fn sigterm_during_an_import_keeps_what_was_committed_and_the_import_finishes_on_a_rerun()
-> Result<()> {
    let mut node = TestNode::start(NodeOptions::default())?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let src = w.join("src");
    let bytes = tree::bulk_tree(&src, 3000, 100 << 20, 42)?;
    ensure!(bytes > 90 << 20, "the bulk tree has {bytes} bytes");
    ok(node.replctl(), &[&"pfs", &"create", &"data"])?;
    // A new PFS already has a head (its creation); the import's commits move it.
    let created = head(&node, "data")?;

    // Small transactions, so that several commit before the signal and many are left after.
    let stdout_path = w.join("import-1.out");
    let stderr_path = w.join("import-1.err");
    let mut import = node
        .replctl()
        .arg("import")
        .arg(&src)
        .arg("data")
        .args(["--txn-ops", "100"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path)?)
        .stderr(fs::File::create(&stderr_path)?)
        .spawn()
        .context("start replctl import")?;
    let started = Instant::now();

    // Wait for the first commits, then SIGTERM the daemon in the middle of the import.
    let deadline = started + Duration::from_secs(60);
    loop {
        if let Some(status) = import.try_wait()? {
            bail!(
                "the import ended ({status}) before the test could interrupt it:\n{}",
                fs::read_to_string(&stderr_path)?
            );
        }
        // A few transactions in (of 30), well before the end.
        if head(&node, "data")? > created && stored_files(&node, "data")? >= 300 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no import transaction committed within a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        import.try_wait()?.is_none(),
        "the import finished before the signal; make the tree larger"
    );
    node.sigterm()?;
    let status = node.wait_exit(Duration::from_secs(30))?;
    ensure!(
        status.success(),
        "repld must exit 0 after SIGTERM during an import, got {status}; its log:\n{}",
        node.log_text()
    );
    let import_status = wait_child(&mut import, Duration::from_secs(30))?;
    let stderr = fs::read_to_string(&stderr_path)?;
    ensure!(
        !import_status.success(),
        "replctl import must fail when the node goes away mid-import:\n{stderr}"
    );
    let lower = stderr.to_lowercase();
    ensure!(
        lower.contains("shutting down") || lower.contains("interrupted"),
        "replctl must say that the import was interrupted:\n{stderr}"
    );
    ensure!(
        lower.contains("run the same command again"),
        "replctl must say that running the import again finishes it:\n{stderr}"
    );
    eprintln!("replctl import after SIGTERM ({import_status}):\n{stderr}");
    // "Committed N transactions up to TID 0x...: F files, ..."
    let reported = committed_report(&stderr)?;

    // After a restart the PFS is readable, and what the import reported as committed is there,
    // byte for byte.
    node.launch()?;
    let stored_head = head(&node, "data")?.context("data committed before the signal")?;
    let files_total = 3000;
    if let Some((tid, files)) = reported {
        ensure!(
            stored_head >= tid,
            "head {stored_head} is before the reported commit {tid}"
        );
        let archive = w.join("reported.tar");
        export(node.replctl(), &format!("data@{tid}"), &archive)?;
        let got = tree::compare_subset(&src, &extracted(&archive, &w.join("reported"))?)?;
        let got_files = got.values().filter(|n| n.kind == tree::Kind::File).count();
        ensure!(
            got_files as u64 == files,
            "the import reported {files} files committed at {tid}; the PFS has {got_files} there"
        );
        ensure!(
            got_files < files_total,
            "everything was committed; the signal came too late to test an interruption"
        );
    }
    let archive = w.join("partial.tar");
    export(node.replctl(), "data", &archive)?;
    let partial = tree::compare_subset(&src, &extracted(&archive, &w.join("partial"))?)?;
    let partial_files = partial
        .values()
        .filter(|n| n.kind == tree::Kind::File)
        .count();
    ensure!(
        partial_files > 0 && partial_files < files_total,
        "after the interruption the PFS has {partial_files} of {files_total} files"
    );

    // The same command again completes the import.
    let out = ok(
        node.replctl(),
        &[&"import", &src, &"data", &"--txn-ops", &"100"],
    )?;
    ensure!(out.contains("imported"), "rerun summary: {out}");
    let archive = w.join("full.tar");
    export(node.replctl(), "data", &archive)?;
    let full = extracted(&archive, &w.join("full"))?;
    tree::diff_r(&src, &full)?;
    tree::compare(&src, &full)?;
    eprintln!(
        "interrupted import: {partial_files} of {files_total} files were in before the rerun; \
         test took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Waits for a child with a timeout (it is killed after that).
fn wait_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the child did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The TID and file count of replctl's "Committed N transactions up to TID T: F files" line;
/// `None` when it says nothing was committed.
fn committed_report(stderr: &str) -> Result<Option<(Tid, u64)>> {
    if stderr.contains("Nothing was committed") {
        return Ok(None);
    }
    let rest = stderr
        .split("up to TID ")
        .nth(1)
        .with_context(|| format!("no `up to TID` in replctl's report:\n{stderr}"))?;
    let tid_text: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let tid: Tid = tid_text
        .parse()
        .map_err(|e| anyhow::anyhow!("bad TID {tid_text:?} in the report: {e}"))?;
    let files = rest
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no file count in replctl's report:\n{stderr}"))?;
    Ok(Some((tid, files)))
}

/// Runs the stock client script against `target` with extra arguments; returns its JSON.
fn stock_client(target: &str, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stock_grpc_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).args(["--target", target]);
    for a in extra {
        cmd.arg(a);
    }
    let out = run_output(&mut cmd, Duration::from_secs(60)).context(
        "run python3 (the stock client needs grpcio, grpcio-reflection and \
         grpcio-health-checking: scripts/setup installs them)",
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "the stock gRPC client failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "repld.v1.Storage",
        "repld.v1.Admin",
        "grpc.health.v1.Health",
        "\"SERVING\"",
        "Import",
        "PfsCreate",
    ] {
        ensure!(
            stdout.contains(expected),
            "the stock client's summary lacks {expected}:\n{stdout}"
        );
    }
    Ok(stdout)
}

#[test]
fn a_stock_grpc_client_lists_the_services_and_gets_serving() -> Result<()> {
    let node = TestNode::start(NodeOptions::default())?;
    let certs = node.certs();
    let target = node.addr().to_string();
    stock_client(
        &target,
        &[
            &"--ca",
            &certs.ca(),
            &"--cert",
            &certs.cert("alice"),
            &"--key",
            &certs.key("alice"),
            &"--server-name",
            &"node1",
        ],
    )?;
    // Health and reflection are peer services: a node certificate may use them too.
    stock_client(
        &target,
        &[
            &"--ca",
            &certs.ca(),
            &"--cert",
            &certs.cert("node2"),
            &"--key",
            &certs.key("node2"),
            &"--server-name",
            &"node1",
        ],
    )?;
    Ok(())
}

#[test]
fn a_stock_grpc_client_works_over_plaintext_loopback() -> Result<()> {
    let node = TestNode::start(NodeOptions {
        plaintext: true,
        ..NodeOptions::default()
    })?;
    stock_client(&node.addr().to_string(), &[&"--plaintext"])?;
    Ok(())
}

#[test]
fn fsck_of_a_stopped_node_reports_a_clean_log() -> Result<()> {
    let mut node = TestNode::start(NodeOptions::default())?;
    let work = tempfile::tempdir()?;
    let src = work.path().join("src");
    let mut t = tree::TreeBuilder::new(&src, 3)?;
    t.dir("d", 0o755)?
        .file("d/f", 2_500_000, 0o644)?
        .file("g", 10, 0o644)?;
    t.finish()?;
    ok(node.replctl(), &[&"pfs", &"create", &"data"])?;
    ok(node.replctl(), &[&"import", &src, &"data"])?;
    let before = runtime().block_on(StoredState::read(&node))?;
    node.stop()?;

    let out = run_ok(&mut node.repld("fsck"), Duration::from_secs(60))?;
    ensure!(
        out.contains("log is clean"),
        "repld fsck of a cleanly stopped node must report a clean log:\n{out}"
    );
    ensure!(!out.contains("torn tail"), "{out}");

    // fsck changed nothing: the node starts again with the same content.
    node.launch()?;
    let after = runtime().block_on(StoredState::read(&node))?;
    before.assert_unchanged(&after, "repld fsck")
}

#[test]
fn format_refuses_an_existing_repld_device() -> Result<()> {
    let mut node = TestNode::start(NodeOptions::default())?;
    ok(node.replctl(), &[&"pfs", &"create", &"data"])?;
    let work = tempfile::tempdir()?;
    fs::write(work.path().join("f"), b"precious")?;
    ok(node.replctl(), &[&"put", &work.path().join("f"), &"data/f"])?;
    let before = runtime().block_on(StoredState::read(&node))?;
    node.stop()?;

    let device = node.device_path();
    let image = fs::read(&device)?;
    let mut cmd = Command::new(repl_tests::node::bin("repld"));
    cmd.arg("format").arg(&device);
    let out = run_output(&mut cmd, Duration::from_secs(60))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "repld format of a repld device without --force must exit 1, got {}:\n{stderr}",
        out.status
    );
    ensure!(
        stderr.contains("--force"),
        "the refusal must say how to format anyway:\n{stderr}"
    );
    ensure!(
        fs::read(&device)? == image,
        "a refused format changed the device"
    );

    node.launch()?;
    let after = runtime().block_on(StoredState::read(&node))?;
    before.assert_unchanged(&after, "a refused repld format")
}

#[test]
fn pfs_wait_head_answers_when_a_commit_passes_the_tid_and_at_its_timeout_otherwise() -> Result<()> {
    use repl_proto::pb::PfsWaitHeadRequest;
    let node = TestNode::start(NodeOptions::default())?;
    ok(node.replctl(), &[&"pfs", &"create", &"data"])?;
    ok(node.replctl(), &[&"mkdir", &"data/a"])?;
    let h1 = head(&node, "data")?.context("mkdir committed")?;
    let req = |tid: u64, timeout_ms: u32| PfsWaitHeadRequest {
        name: "data".into(),
        tid,
        timeout_ms,
    };
    let rt = runtime();
    let mut admin = rt.block_on(node.admin())?.into_inner();
    // Reached already: the head at once. Not reached: the head, after the timeout.
    let at = rt.block_on(admin.pfs_wait_head(req(h1.get(), 60_000)))?;
    ensure!(at.into_inner().head_tid == h1.get());
    let t = Instant::now();
    let at = rt.block_on(admin.pfs_wait_head(req(h1.get() + 1, 300)))?;
    ensure!(at.into_inner().head_tid == h1.get());
    ensure!(
        t.elapsed() >= Duration::from_millis(300),
        "answered before its timeout"
    );

    // A waiter with a long timeout is answered by the next commit, with the new head.
    let waiter = {
        let mut admin = admin.clone();
        rt.spawn(async move { admin.pfs_wait_head(req(h1.get() + 1, 60_000)).await })
    };
    std::thread::sleep(Duration::from_millis(200));
    ensure!(
        !waiter.is_finished(),
        "the waiter answered before any commit"
    );
    let t = Instant::now();
    ok(node.replctl(), &[&"mkdir", &"data/b"])?;
    let got = rt.block_on(waiter)??.into_inner().head_tid;
    let h2 = head(&node, "data")?.context("mkdir committed")?;
    ensure!(
        got == h2.get() && h2 > h1,
        "the waiter got {got:#x}, the head is {h2}"
    );
    ensure!(
        t.elapsed() < Duration::from_secs(30),
        "the waiter was answered by its timeout, not by the commit"
    );

    // Bad input is refused before any wait.
    for (name, code) in [
        ("../x", tonic::Code::InvalidArgument),
        ("nope", tonic::Code::NotFound),
    ] {
        let mut r = req(1, 60_000);
        r.name = name.into();
        let err = rt.block_on(admin.pfs_wait_head(r)).expect_err("refused");
        ensure!(err.code() == code, "{name}: {err:?}");
    }
    Ok(())
}
