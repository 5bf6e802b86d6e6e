//! The replication protocol: a master-side sender and a slave-side receiver, generic over small
//! traits that the daemon implements with the storage engine.
//!
//! - [`sender`]: one task per pairing. It connects ([`Connect`]), learns the slave's checkpoint,
//!   and streams bounded batches from its [`Source`] with a window of them unacknowledged,
//!   throttled ([`Throttle`]), with heartbeats, a stall watchdog, and reconnects that back off
//!   with jitter ([`Backoff`]). Its progress is published in a [`PairingStatus`].
//! - [`receiver`]: serves one stream on the slave. It checks each batch (sequence, checksum,
//!   size, position) before its [`Sink`] applies it, and acknowledges only what is durable.
//! - [`Position`]: a checkpoint inside the master's history (a TID, plus progress inside a TID
//!   split across batches).
//!
//! Nothing here touches a disk or a socket, so unit tests drive both ends in memory with
//! `tokio::time::pause`. docs/replication.md describes the protocol.

pub mod backoff;
pub mod position;
pub mod receiver;
pub mod sender;
pub mod throttle;

pub use backoff::Backoff;
pub use position::Position;
pub use receiver::{CheckedBatch, Hello, Limits, Prepare, Rejection, Session, Sink};
pub use sender::{
    Connect, Inbound, PairingStatus, Payload, Progress, SLAVE_FULL, SenderConfig, Source,
    StreamState,
};
pub use throttle::{Limiter, Throttle};

/// The version of the replication protocol this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The checksum of a batch payload on the wire.
pub fn payload_crc(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

#[cfg(test)]
mod tests;
