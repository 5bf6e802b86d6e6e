//! The repld storage engine: versioned PFSes on a checksummed device log, indexed in sled.
//!
//! The device log is the truth; the index is a cache of it that may lag and can be rebuilt from
//! the device alone. One writer thread owns every write: it validates work against the index,
//! assigns TIDs, groups concurrent commits into one write and one `fdatasync`, and updates the
//! index only once the log is durable, so readers only ever see durable state.
//!
//! Modules, from the bottom up:
//! - [`device`]: the image file or block device, superblock and backup.
//! - `log`: segments, flush units, the recovery scan and the unit planner.
//! - [`record`]: the record kinds (chunks, commits, PFS events, checkpoints) and their framing.
//! - `index`: the ordered key-value trait, its sled and in-memory backends, the overlay.
//! - `schema`: key layout and typed values of the index.
//! - `apply`: how a record changes the index (used by the writer and by replay alike).
//! - `exec`: validation of transactions, replicated changes and catalog commands.
//! - `writer`: the group-commit writer thread; `bufpool`: the chunk buffers it recycles;
//!   `chunkfilter`: the Bloom filter that spares it an index lookup for each new chunk.
//! - [`Engine`] (`engine`) and its reads (`read`): the public API.
//! - `export`: deterministic tar export of a PFS at a TID.
//! - [`prune`]: which commits and versions a retention policy drops, and the prune record.
//! - `lineage`: the history chain at a TID, upgrade, downgrade and rollback (failover).
//! - `reclaim`: space reclaim, which cleans the oldest segment of the log and frees it.
//! - `digest`: the canonical Merkle digest of a PFS at a TID, which `verify` compares.
//! - [`fsck`]: offline checks of a device.
//!
//! The engine's API is blocking; async callers use `spawn_blocking`.

mod apply;
mod bufpool;
mod chunkfilter;
mod codec;
pub mod device;
mod digest;
mod engine;
mod error;
mod exec;
mod export;
pub mod fsck;
mod index;
pub mod latency;
mod lineage;
mod log;
pub mod prune;
mod read;
mod reclaim;
pub mod record;
mod schema;
mod writer;

pub use codec::DecodeError;
pub use device::{Device, FormatOptions, Superblock};
pub use digest::{ChildDigest, DIGEST_DOMAIN, PfsDigest};
pub use engine::{
    ApplyBatch, Attrs, Checkpoint, Committed, Engine, EngineOptions, PfsInfo, PfsOptions,
    ReadyBatch, SpaceInfo, SpaceUsage, Txn,
};
pub use error::{Error, ErrorKind, Result};
pub use exec::MAX_TXN_OPS;
pub use latency::{HistogramSnapshot, LatencyHistogram};
pub use lineage::{Link, RolledBack, Upgraded};
pub use prune::{PruneOptions, PruneReport, TidRange};
pub use read::{At, Entry, FileReader, PfsStats};
pub use reclaim::ReclaimStep;
pub use record::{CHUNK_SIZE, Change, ChunkRef, EntryKind, EntryMeta, Hash, Op, Partial, Role};
pub use repl_types::{EntryPath, PfsName, Retention, Tid};
pub use writer::Stats;
