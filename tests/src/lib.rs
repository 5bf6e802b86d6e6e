//! Shared helpers for the end-to-end tests: temporary nodes, child processes, fault injection.
//!
//! Modules:
//! - [`workload`]: the engine crash tests' workload (what transaction `seq` writes, derived from
//!   `seq` alone) and the logs their helper binary keeps of what was acknowledged and sent.
//! - [`child`]: a child process that is killed when the test drops it, with its output lines.

pub mod child;
pub mod workload;
