//! The registry of scenarios, one module each.
//!
//! - [`commit_rate`]: commits/s of 4 KiB files with 1 and 16 writers (issue 2).
//! - [`large_write`]: large-file write throughput against a plain write + `fdatasync` (issue 2).
//! - [`index_rebuild`]: index rebuild time per GiB of log (issue 2).
//! - [`import_throughput`]: `replctl import` of a mixed tree into a running node vs `cp -a`
//!   (issue 3).
//! - [`import_small_files`]: files/s of `replctl import` of 4 KiB files (issue 3).
//! - [`initial_sync`]: `replctl pair` + `wait-sync` of a mixed 1 GiB tree between two nodes
//!   against the lower of TLS loopback and write + `fdatasync` throughput (issue 4).
//! - [`incremental_sync`]: a 1% change of 100,000 files streamed to a paired slave vs
//!   `rsync -a` of it to an rsync daemon (issue 4).
//! - [`lag`]: a pairing's lag under a steady writer (issue 4).
//! - [`reclaim_writes`]: write throughput and commit p99 while space reclaim runs, against
//!   reclaim idle (issue 7).
//!
//! A new scenario is a module here plus one line in [`registry`].

pub mod commit_rate;
pub mod import_small_files;
pub mod import_throughput;
pub mod incremental_sync;
pub mod index_rebuild;
pub mod initial_sync;
pub mod lag;
pub mod large_write;
pub mod reclaim_writes;

use crate::scenario::Scenario;

/// Every scenario, in the order a full run uses.
pub fn registry() -> Vec<Box<dyn Scenario>> {
    vec![
        Box::new(commit_rate::CommitRate),
        Box::new(large_write::LargeWrite),
        Box::new(index_rebuild::IndexRebuild),
        Box::new(import_throughput::ImportThroughput),
        Box::new(import_small_files::ImportSmallFiles),
        Box::new(initial_sync::InitialSync),
        Box::new(incremental_sync::IncrementalSync),
        Box::new(lag::Lag),
        Box::new(reclaim_writes::ReclaimWrites),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_kebab_case() {
        let mut seen = HashSet::new();
        for s in super::registry() {
            assert!(seen.insert(s.name()), "duplicate scenario {}", s.name());
            assert!(
                s.name().chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                "{}",
                s.name()
            );
            assert!(!s.description().is_empty());
        }
    }
}
