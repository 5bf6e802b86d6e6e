//! Tar export: deterministic, extractable by GNU tar, faithful to modes, mtimes and symlinks.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use repld_engine::{
    At, Attrs, Engine, EngineOptions, EntryPath, FormatOptions, PfsName, PfsOptions,
};

fn p(s: &str) -> EntryPath {
    EntryPath::new(s).expect("valid path")
}

fn open(dir: &Path) -> Engine {
    let mut o = EngineOptions::new(dir.join("dev.img"), dir.join("index"));
    o.create = Some(FormatOptions {
        force: false,
        segment_size: Some(4 << 20),
        create_size: Some(128 << 20),
    });
    Engine::open(o).expect("open")
}

fn extract(tar_bytes: &[u8], into: &Path) {
    std::fs::create_dir_all(into).expect("mkdir");
    let archive = into.with_extension("tar");
    std::fs::write(&archive, tar_bytes).expect("write tar");
    let out = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(into)
        .output()
        .expect("run GNU tar");
    assert!(
        out.status.success(),
        "tar -xf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn gnu_tar_extracts_an_exact_deterministic_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(dir.path());
    let data = PfsName::new("data").expect("name");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    let long_dir = "d".repeat(120);
    let odd = "odd name ünïcødé #1";
    let mtime = 1_700_000_000_123_456_789i64;
    let mut tx = e.begin(&data).expect("begin");
    tx.mkdir(
        &p("empty"),
        Attrs {
            mode: 0o700,
            mtime_ns: mtime,
        },
        false,
    )
    .expect("mkdir");
    tx.mkdir(
        &p(&long_dir),
        Attrs {
            mode: 0o755,
            mtime_ns: mtime,
        },
        false,
    )
    .expect("mkdir");
    tx.put_bytes(
        &p(&format!("{long_dir}/{}", "f".repeat(150))),
        Attrs {
            mode: 0o600,
            mtime_ns: mtime,
        },
        b"deep",
    )
    .expect("put");
    tx.put_bytes(
        &p(odd),
        Attrs {
            mode: 0o755,
            mtime_ns: mtime + 1,
        },
        &vec![7u8; 2_500_000],
    )
    .expect("put");
    tx.put_bytes(
        &p("zero"),
        Attrs {
            mode: 0o644,
            mtime_ns: mtime,
        },
        b"",
    )
    .expect("put");
    tx.symlink(
        &p("link"),
        odd,
        Attrs {
            mode: 0o777,
            mtime_ns: mtime,
        },
    )
    .expect("symlink");
    tx.symlink(
        &p("longlink"),
        &"t/".repeat(90),
        Attrs {
            mode: 0o777,
            mtime_ns: mtime,
        },
    )
    .expect("symlink");
    let t1 = tx.commit().expect("commit").expect("changed");

    let mut a = Vec::new();
    e.export_tar(&data, &At::Head, &mut a).expect("export");
    let mut b = Vec::new();
    e.export_tar(&data, &At::Tid(t1), &mut b)
        .expect("export again");
    assert_eq!(a, b, "two exports of the same TID must be byte-identical");

    let out = dir.path().join("out");
    extract(&a, &out);
    let f = std::fs::metadata(out.join(odd)).expect("odd file");
    assert_eq!(
        (f.len(), f.permissions().mode() & 0o7777),
        (2_500_000, 0o755)
    );
    assert_eq!(
        f.mtime() * 1_000_000_000 + f.mtime_nsec(),
        mtime + 1,
        "mtime keeps nanoseconds"
    );
    assert_eq!(
        std::fs::read(out.join(&long_dir).join("f".repeat(150))).expect("deep"),
        b"deep"
    );
    assert_eq!(
        std::fs::metadata(out.join("empty"))
            .expect("empty dir")
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );
    assert_eq!(
        std::fs::read_link(out.join("link")).expect("link").to_str(),
        Some(odd)
    );
    assert_eq!(
        std::fs::read_link(out.join("longlink"))
            .expect("long link")
            .to_str()
            .map(str::len),
        Some(180)
    );
    assert_eq!(std::fs::read(out.join("zero")).expect("zero").len(), 0);

    // Later changes do not alter an export of the old TID.
    let mut tx = e.begin(&data).expect("begin");
    tx.put_bytes(&p("zero"), Attrs::now(0o644), b"now non-empty")
        .expect("put");
    tx.delete(&p("empty"), false).expect("delete");
    tx.commit().expect("commit");
    let mut old = Vec::new();
    e.export_tar(&data, &At::Tid(t1), &mut old)
        .expect("export old");
    assert_eq!(
        old, a,
        "an export at an old TID reproduces the old state exactly"
    );
    let mut new = Vec::new();
    e.export_tar(&data, &At::Head, &mut new)
        .expect("export head");
    assert_ne!(new, a);
}
