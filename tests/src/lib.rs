//! Shared helpers for the end-to-end tests: temporary nodes, child processes, fault injection,
//! directory trees.
//!
//! Modules:
//! - [`workload`]: the engine crash tests' workload (what transaction `seq` writes, derived from
//!   `seq` alone) and the logs their helper binary keeps of what was acknowledged and sent.
//! - [`child`]: a child process that is killed when the test drops it, with its output lines.
//! - [`cluster`]: several nodes sharing a CA, and a replctl config naming them ([`cluster::Cluster`]).
//! - [`node`]: a real `repld` process on a temporary directory ([`node::TestNode`]), its
//!   certificates, the workspace binaries, and what a node stores ([`node::StoredState`]).
//! - [`port`]: loopback ports below the ephemeral range, so a restarted node gets its address
//!   back ([`port::PortLease`]).
//! - [`proxy`]: a fault-injecting TCP proxy to put between two nodes ([`proxy::FaultProxy`]):
//!   cut, stall, refuse, truncate, corrupt or slow the link on demand.
//! - [`tree`]: generated directory trees (odd names, modes, nanosecond mtimes, symlinks) and
//!   comparing two trees entry by entry, with `diff -r` beside.

pub mod child;
pub mod cluster;
pub mod node;
pub mod port;
pub mod proxy;
pub mod tree;
pub mod workload;
