//! The registry of scenarios, one module each.
//!
//! - [`commit_rate`]: commits/s of 4 KiB files with 1 and 16 writers (issue 2).
//! - [`large_write`]: large-file write throughput against a plain write + `fdatasync` (issue 2).
//! - [`index_rebuild`]: index rebuild time per GiB of log (issue 2).
//! - [`import_throughput`]: `replctl import` of a mixed tree into a running node vs `cp -a`
//!   (issue 3).
//! - [`import_small_files`]: files/s of `replctl import` of 4 KiB files (issue 3).
//!
//! A new scenario is a module here plus one line in [`registry`].

pub mod commit_rate;
pub mod import_small_files;
pub mod import_throughput;
pub mod index_rebuild;
pub mod large_write;

use crate::scenario::Scenario;

/// Every scenario, in the order a full run uses.
pub fn registry() -> Vec<Box<dyn Scenario>> {
    vec![
        Box::new(commit_rate::CommitRate),
        Box::new(large_write::LargeWrite),
        Box::new(index_rebuild::IndexRebuild),
        Box::new(import_throughput::ImportThroughput),
        Box::new(import_small_files::ImportSmallFiles),
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
