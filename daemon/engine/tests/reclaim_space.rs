//! Space (issue 7): a 256 MiB working set overwritten 10 times on a 1 GiB device, with a
//! retention that keeps only the head (pruned as the daemon's worker would, every few commits)
//! and space reclaim running beside the writer as the daemon's reclaim worker runs it (when the
//! reclaimable bytes exceed 25% of the used bytes). The device never fills (every commit
//! succeeds) and its used space never exceeds twice the working set.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{file_attrs, name, options, p};
use repld_engine::{At, Engine, PfsOptions, PruneOptions};

const MIB: u64 = 1 << 20;
const WORKING_SET: u64 = 256 * MIB;
const FILE: u64 = 4 * MIB;
const DEVICE: u64 = 1 << 30;

/// `len` bytes of content unique to `seed`, fast (8 bytes per step).
fn content(seed: u64, len: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

#[test]
fn overwriting_a_256_mib_working_set_10_times_on_1_gib_never_fills_and_stays_within_2x() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = options(dir.path(), DEVICE);
    // The size `format` picks for 1 GiB (1/32 of it).
    o.create.as_mut().expect("create").segment_size = None;
    let e = Engine::open(o).expect("open");
    let pfs = name("data");
    e.create_pfs(&pfs, PfsOptions::default()).expect("create");
    e.set_retention(&pfs, "0s".parse().expect("policy"))
        .expect("retention");
    let stop = Arc::new(AtomicBool::new(false));
    let max_used = Arc::new(AtomicU64::new(0));
    let reclaimer = {
        let (e, stop) = (e.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut freed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let usage = e.space_usage().expect("usage");
                let used = e.space().used_bytes();
                if usage.reclaimable_bytes * 4 <= used {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    continue;
                }
                loop {
                    let s = e.reclaim_step(8 * MIB).expect("reclaim step");
                    freed += s.freed_segments;
                    if s.idle || !s.in_pass {
                        break;
                    }
                }
            }
            freed
        })
    };
    let files = WORKING_SET / FILE;
    let note = |e: &Engine| {
        max_used.fetch_max(e.space().used_bytes(), Ordering::Relaxed);
    };
    for round in 0..11u64 {
        for f in 0..files {
            let mut tx = e.begin(&pfs).expect("begin");
            tx.put_bytes(
                &p(&format!("f{f}")),
                file_attrs(),
                &content(round * 1000 + f, FILE),
            )
            .expect("put");
            tx.commit()
                .unwrap_or_else(|err| panic!("round {round}, file {f}: {err}"))
                .expect("a change");
            note(&e);
            if f % 8 == 7 {
                e.prune(&pfs, PruneOptions::now()).expect("prune");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let freed = reclaimer.join().expect("reclaimer");
    let max = max_used.load(Ordering::Relaxed);
    assert!(
        max <= 2 * WORKING_SET,
        "used space peaked at {} MiB, more than twice the working set ({} MiB)",
        max / MIB,
        WORKING_SET / MIB
    );
    assert!(freed > 0, "reclaim freed segments");
    // The working set reads back as the last round wrote it.
    for f in [0, files / 2, files - 1] {
        let got = e
            .read_file(&pfs, &p(&format!("f{f}")), &At::Head)
            .expect("read");
        assert!(got == content(10 * 1000 + f, FILE), "f{f} reads back");
    }
}
