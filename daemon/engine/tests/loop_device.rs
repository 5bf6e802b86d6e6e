//! The engine on a real block device: a loop device (`losetup`) over a 128 MiB image is
//! formatted with the size the kernel reports for it, written, read and reopened.
//!
//! It needs root and `losetup`. Without them the test says so and passes, except under CI
//! (`CI` set), which runs as root: there a missing loop device is a failure, not a skip.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{name, p, pattern, put};
use repld_engine::{At, Device, Engine, EngineOptions, Error, FormatOptions, PfsOptions};

const SIZE: u64 = 128 << 20;

/// The effective user id, from `/proc/self/status`.
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Skips the test with a loud message, or fails it under CI, where it must run.
fn unavailable(why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    if ci {
        panic!("loop device test cannot run under CI: {why}");
    }
    eprintln!("SKIPPED loop_device: {why} (it runs, and must pass, under CI as root)");
}

/// An attached loop device, detached when dropped (also when the test fails).
struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    fn attach(image: &Path) -> Result<LoopDevice, String> {
        let run = || {
            Command::new("losetup")
                .arg("--find")
                .arg("--show")
                .arg(image)
                .output()
        };
        let mut out = run().map_err(|e| format!("cannot run losetup: {e}"))?;
        if !out.status.success() {
            // The loop driver may be a module that is not loaded yet.
            let _ = Command::new("modprobe").arg("loop").status();
            out = run().map_err(|e| format!("cannot run losetup: {e}"))?;
        }
        if !out.status.success() {
            return Err(format!(
                "`losetup --find --show {}` failed ({}): {}",
                image.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(LoopDevice { path })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        match Command::new("losetup").arg("-d").arg(&self.path).status() {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("losetup -d {} failed: {s}", self.path.display()),
            Err(e) => eprintln!("cannot run losetup -d {}: {e}", self.path.display()),
        }
    }
}

#[test]
fn the_engine_formats_and_uses_a_loop_block_device() {
    if euid() != Some(0) {
        return unavailable("not running as root");
    }
    if Command::new("losetup").arg("--version").output().is_err() {
        return unavailable("losetup is not installed");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("backing.img");
    std::fs::File::create(&img)
        .expect("create the backing image")
        .set_len(SIZE)
        .expect("size the backing image");
    let lo = match LoopDevice::attach(&img) {
        Ok(lo) => lo,
        Err(why) => return unavailable(&why),
    };
    let meta = std::fs::metadata(&lo.path).expect("stat the loop device");
    assert!(
        meta.file_type().is_block_device(),
        "{} is a block device",
        lo.path.display()
    );

    let format = FormatOptions {
        force: false,
        segment_size: Some(common::SEGMENT),
        create_size: None,
    };
    let sb = Device::format(&lo.path, &format).expect("format the loop device");
    assert_eq!(sb.device_size, SIZE, "the size comes from the block device");
    assert!(
        matches!(
            Device::format(&lo.path, &format),
            Err(Error::ForeignSignature { signature, .. }) if signature == "repld"
        ),
        "a formatted device is not formatted again without force"
    );

    let opts = EngineOptions::new(&lo.path, dir.path().join("index"));
    let data = name("data");
    let big = pattern(5, 6 << 20);
    let (t1, t2);
    {
        let e = Engine::open(opts.clone()).expect("open on the loop device");
        assert_eq!(e.superblock(), &sb);
        assert_eq!(e.space().device_bytes, SIZE);
        e.create_pfs(&data, PfsOptions::default()).expect("create");
        t1 = put(&e, &data, "small", b"on a block device");
        t2 = put(&e, &data, "big", &big);
        assert_eq!(e.read_file(&data, &p("big"), &At::Head).expect("read"), big);
    }
    for rebuild in [false, true] {
        let mut o = opts.clone();
        o.rebuild_index = rebuild;
        let e = Engine::open(o).expect("reopen on the loop device");
        assert_eq!(e.pfs(&data).expect("pfs").head, t2);
        assert_eq!(
            e.read_file(&data, &p("small"), &At::Tid(t1)).expect("read"),
            b"on a block device"
        );
        assert_eq!(e.read_file(&data, &p("big"), &At::Head).expect("read"), big);
    }
    let report = repld_engine::fsck::check(&lo.path).expect("fsck of the loop device");
    assert_eq!(report.torn_tail, None);
    assert!(report.records[0] >= 7, "the chunks are on the device");
    drop(lo);
    // The data went through the block device to its backing image.
    let dev = Device::open(&img).expect("the backing image holds the same volume");
    assert_eq!(dev.superblock(), &sb);
}
