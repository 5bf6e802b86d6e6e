//! repld's gRPC protocol.
//!
//! The wire side of every repld conversation: node to node, CLI to node. Generated messages stay
//! at this edge; callers work with the domain types of [`repl_types`] and the small result types
//! defined here.
//!
//! - [`pb`]: the code generated from `proto/repld/v1/*.proto` (package `repld.v1`): messages,
//!   and tonic clients and servers for the Storage, Admin and Replication services.
//! - [`convert`]: domain request and result types, with `TryFrom<pb::X>` that validates on
//!   receipt and `From<..> for pb::X` for sending.
//! - [`client`]: typed clients ([`StorageClient`], [`AdminClient`]) and connection set-up
//!   ([`Endpoint`]: Unix socket, `https://` with mutual TLS, or loopback `http://`).
//! - [`dump`]: the dump file of offline seeding (frames, checks), shared by `replctl` and the
//!   daemon.
//! - [`error`]: [`ProtocolError`] (a malformed message; maps to `INVALID_ARGUMENT`) and
//!   [`ClientError`].
//!
//! Limits shared by both ends: [`MAX_MESSAGE_SIZE`] per gRPC message and [`CHUNK_SIZE`] per
//! content chunk.

pub mod client;
pub mod convert;
pub mod dump;
pub mod error;

/// Code generated from the `.proto` files (package `repld.v1`).
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod pb {
    tonic::include_proto!("repld.v1");
}

pub use client::{
    AdminClient, ByteStream, Endpoint, ImportCommits, ImportSession, StorageClient, TlsFiles,
    replication_client,
};
pub use convert::*;
pub use error::{ClientError, ProtocolError};
pub use repl_types;
pub use repl_types::Retention;

/// The largest gRPC message either end encodes or accepts, in bytes. A bigger message fails with
/// `RESOURCE_EXHAUSTED`.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// The largest content chunk in a `data` field (Put, Get, Export, Import), in bytes.
pub const CHUNK_SIZE: usize = 1024 * 1024;

/// The default path of a node's local admin socket (the daemon's `admin_socket` default), which
/// `replctl` uses when no endpoint is given.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/repld/admin.sock";

/// The default TCP port of a node's gRPC listener (the daemon's `listen` default is
/// `0.0.0.0:7420`).
pub const DEFAULT_PORT: u16 = 7420;

/// The encoded `FileDescriptorSet` of every repld service, for gRPC reflection
/// (`tonic_reflection::server::Builder::register_encoded_file_descriptor_set`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/repld_descriptor.bin"));
