//! The daemon's configuration: one TOML file (`/etc/repld/repld.toml`), every field documented and
//! defaulted, overridden by flags, checked by [`Config::validate`].
//!
//! Loading goes: [`Config::load`] (parse; a malformed value is reported with its field path and
//! line) → flags applied by the caller → [`Config::resolve`] (relative device paths joined to
//! `data_dir`) → [`Config::validate`] (every problem, each naming its field).
//! `docs/configuration.md` describes every field for operators; keep the two in step.

pub mod units;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use units::{ByteSize, HumanDuration};

/// Where the daemon looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/repld/repld.toml";

/// Longest path a Unix socket can be bound at (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Smallest image file the daemon will create; the engine may need more for its segment size.
pub const MIN_DEVICE_SIZE: ByteSize = ByteSize::mib(16);

/// The whole configuration of one `repld` node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Name of this node, used in logs, metrics and status output. It should match the common name
    /// (CN) of the node's certificate, which is how other nodes know it.
    /// Default: the host name.
    pub node_name: String,

    /// Directory for the daemon's state: the sled index and, by default, the device image file.
    /// Created on start if missing. Default: `/var/lib/repld`.
    pub data_dir: PathBuf,

    /// The devices (block devices or image files) the daemon owns. A relative path is relative to
    /// `data_dir`. Default: one sparse 8 GiB image file `repld.img` in `data_dir`, created and
    /// formatted on first start.
    pub devices: Vec<DeviceConfig>,

    /// TCP address of the gRPC server (Storage, Admin, Replication, health, reflection), served
    /// with mutual TLS. Default: `0.0.0.0:7420`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,

    /// Path of the local admin socket (Unix domain socket, mode 0600), which `replctl` uses by
    /// default on the same node. Its parent directory is created if missing.
    /// Default: `/run/repld/admin.sock`.
    pub admin_socket: PathBuf,

    /// TCP address of the Prometheus metrics endpoint (`/metrics`, `/healthz`), plain HTTP.
    /// Default: `127.0.0.1:9420`.
    #[serde(deserialize_with = "socket_addr")]
    pub metrics_listen: SocketAddr,

    /// Log filter in `tracing` env-filter syntax, such as `info` or `info,repld=debug`. The
    /// `RUST_LOG` environment variable, when set, takes precedence. Default: `info`.
    pub log_filter: String,

    /// How long a graceful shutdown waits for in-flight requests to finish before it abandons them
    /// and closes the engine anyway. Keep it below systemd's `TimeoutStopSec`. Default: `30s`.
    pub shutdown_timeout: HumanDuration,

    /// TLS files and the identities allowed to administer this node.
    pub tls: TlsConfig,

    /// Limits on what clients and peers may ask of the server.
    pub limits: LimitsConfig,

    /// Replication streams.
    pub replication: ReplicationConfig,

    /// Scheduled pruning of history by each PFS's retention policy.
    pub retention: RetentionConfig,

    /// Space reclaim: giving back the space of pruned and deleted data.
    pub reclaim: ReclaimConfig,
}

/// When and how fast the daemon reclaims space (see `docs/operations.md`, "Space").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReclaimConfig {
    /// Whether the daemon reclaims space by itself. Default: `true`.
    pub enabled: bool,
    /// Bytes per second that reclaim reads at most (it writes at most as much). Default:
    /// `32MiB`.
    pub rate: ByteSize,
    /// Reclaim starts when the reclaimable bytes exceed this percentage of the used bytes
    /// (and stops when they are below half of it). Default: `25`.
    pub threshold_percent: u8,
    /// Reclaim also starts when free space falls below this percentage of the device.
    /// Default: `10`.
    pub min_free_percent: u8,
    /// How often the daemon works out how much is reclaimable (for the decision, the metrics
    /// and `replctl pfs status`). Default: `30s`.
    pub check_interval: HumanDuration,
}

impl Default for ReclaimConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: ByteSize::mib(32),
            threshold_percent: 25,
            min_free_percent: 10,
            check_interval: HumanDuration::secs(30),
        }
    }
}

/// When the daemon prunes history by itself. Policies are per PFS (`replctl pfs set
/// --retention`); `replctl prune` prunes at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// How often every PFS whose policy drops history is pruned (never forced: what a paired
    /// slave has not confirmed is kept). `0s` turns scheduled pruning off. Default: `10m`.
    pub prune_interval: HumanDuration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            prune_interval: HumanDuration::secs(600),
        }
    }
}

/// How this node's replication streams behave. Pairings themselves are made with
/// `replctl pair` and kept in `data_dir/replication.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// A cap on the bytes per second that all pairings together send, on top of each pairing's
    /// own `--bandwidth`. Default: none.
    pub node_bandwidth: Option<ByteSize>,

    /// A stream whose sent batches get no acknowledgement for this long is reset and
    /// reconnected. Default: `30s`.
    pub stall_timeout: HumanDuration,

    /// The payload bytes a master's sender puts in one batch, at most (a single change record
    /// travels whole and may be larger). Two batches are in flight per stream, so this also
    /// bounds what a crash or a cut makes the sender send again. Between 64KiB and 64MiB; a
    /// stream uses at most `limits.max_message_bytes` less 64KiB (see
    /// [`ReplicationConfig::stream_batch_bytes`]). Default: `4MiB`.
    pub batch_bytes: ByteSize,
}

impl ReplicationConfig {
    /// The range `batch_bytes` must lie in.
    pub const BATCH_BYTES: std::ops::RangeInclusive<u64> = (64 << 10)..=(64 << 20);

    /// The batch size a stream aims at: `batch_bytes`, but small enough that a batch and its
    /// framing fit in a message of `max_message_bytes` (never below 64 KiB).
    pub fn stream_batch_bytes(&self, max_message_bytes: ByteSize) -> u64 {
        let fits = max_message_bytes.bytes().saturating_sub(64 << 10);
        self.batch_bytes
            .bytes()
            .min(fits)
            .max(*Self::BATCH_BYTES.start())
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            node_bandwidth: None,
            stall_timeout: HumanDuration::secs(30),
            batch_bytes: ByteSize(crate::replication::MAX_BATCH_BYTES),
        }
    }
}

/// One device: a block device, or an image file that stands in for one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Path of the block device or image file. Relative paths are relative to `data_dir`.
    /// Required in each `[[devices]]` entry.
    pub path: PathBuf,

    /// For an image file: create it, sparse, with this size (such as `8GiB`) if it does not
    /// exist. Leave unset for a block device. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,

    /// Format the device on start when it carries no repld superblock (a new image file or an
    /// all-zero device). A device carrying another signature is never formatted automatically:
    /// use `repld format --force`. Default: `false` (`true` for the default image file).
    #[serde(default)]
    pub format_if_missing: bool,
}

/// TLS for the TCP listener, and who may administer the node over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) that client and peer certificates must chain to.
    /// Default: `/etc/repld/tls/ca.pem`.
    pub ca: PathBuf,

    /// PEM file with this node's certificate chain (leaf first). Default: `/etc/repld/tls/node.pem`.
    pub cert: PathBuf,

    /// PEM file with this node's private key (PKCS#8, PKCS#1 or SEC1). Keep it mode 0600.
    /// Default: `/etc/repld/tls/node.key`.
    pub key: PathBuf,

    /// Certificate identities (subject common names) allowed to call the Admin and Storage
    /// services over TCP. Every other certificate gets `PERMISSION_DENIED` there. The admin socket
    /// does not need to be listed. Default: empty (administration only over the admin socket).
    pub admins: Vec<String>,

    /// Serve gRPC on `listen` as plaintext, without TLS. Refused at start-up unless `listen` is a
    /// loopback address. Any local user can then call every service, as if on the admin socket:
    /// for tests and single-machine trials only. Default: `false`.
    pub allow_plaintext_loopback: bool,
}

/// Limits on requests, connections and streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest gRPC message accepted or sent. A larger request fails with `RESOURCE_EXHAUSTED`.
    /// Default: `16MiB`.
    pub max_message_bytes: ByteSize,

    /// Most concurrent HTTP/2 streams (calls) one connection may have open. Default: `256`.
    pub max_concurrent_streams: u32,

    /// Longest time a call may take to produce its response. Streaming calls that services mark
    /// as long-running (replication streams, imports) are exempt. Default: `60s`.
    pub request_timeout: HumanDuration,

    /// Longest time a TLS handshake may take before the connection is dropped. Default: `10s`.
    pub handshake_timeout: HumanDuration,

    /// Idle time before TCP keepalive probes start on accepted connections; `0s` turns them off.
    /// Default: `60s`.
    pub tcp_keepalive: HumanDuration,

    /// Interval of HTTP/2 PING frames on otherwise idle connections, so that a dead peer is noticed
    /// even on a quiet replication stream; `0s` turns them off. Default: `30s`.
    pub http2_keepalive_interval: HumanDuration,

    /// How long to wait for a PING acknowledgement before closing the connection. Default: `20s`.
    pub http2_keepalive_timeout: HumanDuration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: default_node_name(),
            data_dir: PathBuf::from("/var/lib/repld"),
            devices: vec![DeviceConfig::default_image()],
            listen: SocketAddr::from(([0, 0, 0, 0], 7420)),
            admin_socket: PathBuf::from("/run/repld/admin.sock"),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9420)),
            log_filter: "info".to_owned(),
            shutdown_timeout: HumanDuration::secs(30),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            replication: ReplicationConfig::default(),
            retention: RetentionConfig::default(),
            reclaim: ReclaimConfig::default(),
        }
    }
}

impl DeviceConfig {
    /// The embedded default: `repld.img` in `data_dir`, 8 GiB, sparse, formatted on first start.
    pub fn default_image() -> Self {
        Self {
            path: PathBuf::from("repld.img"),
            size: Some(ByteSize::gib(8)),
            format_if_missing: true,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca: PathBuf::from("/etc/repld/tls/ca.pem"),
            cert: PathBuf::from("/etc/repld/tls/node.pem"),
            key: PathBuf::from("/etc/repld/tls/node.key"),
            admins: Vec::new(),
            allow_plaintext_loopback: false,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: ByteSize::mib(16),
            max_concurrent_streams: 256,
            request_timeout: HumanDuration::secs(60),
            handshake_timeout: HumanDuration::secs(10),
            tcp_keepalive: HumanDuration::secs(60),
            http2_keepalive_interval: HumanDuration::secs(30),
            http2_keepalive_timeout: HumanDuration::secs(20),
        }
    }
}

/// A socket address, with an error that says what one looks like.
fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not a socket address: use IP:PORT, such as 0.0.0.0:7420, 127.0.0.1:7420 \
             or [::]:7420"
        ))
    })
}

/// The host name, or `repld` if it cannot be read.
fn default_node_name() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy();
    let name = name.split('.').next().unwrap_or_default();
    if valid_node_name(name) {
        name.to_owned()
    } else {
        "repld".to_owned()
    }
}

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, such as `limits.request_timeout` or `devices[1].size`.
    pub field: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}: {message}", origin.display())]
    Syntax {
        /// The file, or `<string>`.
        origin: PathBuf,
        /// The parser's message, with the offending line.
        message: String,
    },
    /// A field has a value of the wrong shape, or is unknown.
    #[error("{}{}: {error}", origin.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Field {
        /// The file, or `<string>`.
        origin: PathBuf,
        /// The line of the offending value, when known.
        line: Option<usize>,
        /// The field and the problem.
        error: FieldError,
    },
    /// Values parse, but do not make a usable configuration.
    #[error("invalid configuration:\n{}", errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Every problem found, each naming its field.
        errors: Vec<FieldError>,
    },
}

impl ConfigError {
    /// The field errors, if this error is about fields.
    pub fn field_errors(&self) -> Vec<&FieldError> {
        match self {
            ConfigError::Field { error, .. } => vec![error],
            ConfigError::Invalid { errors } => errors.iter().collect(),
            _ => Vec::new(),
        }
    }
}

impl Config {
    /// Reads and parses a config file. Fields that are absent take their defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses a config from TOML text. `origin` names the text in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|mut e| {
            e.set_input(Some(text));
            ConfigError::Syntax {
                origin: origin.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            }
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            ConfigError::Field {
                origin: origin.to_owned(),
                line,
                error: FieldError {
                    field: if field == "." {
                        "(top level)".to_owned()
                    } else {
                        field
                    },
                    message: inner.message().to_owned(),
                },
            }
        })
    }

    /// Makes relative device paths absolute by joining them to `data_dir`. Call after flags have
    /// been applied, so that `--data-dir` moves the default image file too.
    pub fn resolve(&mut self) {
        for dev in &mut self.devices {
            if dev.path.is_relative() {
                dev.path = self.data_dir.join(&dev.path);
            }
        }
    }

    /// Whether the TCP listener serves plaintext instead of mutual TLS.
    pub fn plaintext(&self) -> bool {
        self.tls.allow_plaintext_loopback
    }

    /// Checks every field and returns every problem found, each naming its field. Does not touch
    /// the file system; [`crate::tls::ServerTls::load`] checks the TLS files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(FieldError {
                field: field.to_owned(),
                message,
            })
        };

        if !valid_node_name(&self.node_name) {
            err(
                "node_name",
                format!(
                    "{:?} is not a valid node name: use 1 to 64 letters, digits, '-', '_' or '.', \
                     starting with a letter or digit",
                    self.node_name
                ),
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            err("data_dir", "must not be empty".to_owned());
        }

        if self.devices.is_empty() {
            err(
                "devices",
                "at least one device is needed (remove `devices = []` to get the default image \
                 file data_dir/repld.img)"
                    .to_owned(),
            );
        }
        let mut seen = HashSet::new();
        for (i, dev) in self.devices.iter().enumerate() {
            let field = format!("devices[{i}]");
            if dev.path.as_os_str().is_empty() {
                err(&format!("{field}.path"), "must not be empty".to_owned());
            } else if !seen.insert(self.data_dir.join(&dev.path)) {
                err(
                    &format!("{field}.path"),
                    format!("{} is listed twice", dev.path.display()),
                );
            }
            if let Some(size) = dev.size
                && size < MIN_DEVICE_SIZE
            {
                err(
                    &format!("{field}.size"),
                    format!("{size} is too small for a device: use at least {MIN_DEVICE_SIZE}"),
                );
            }
        }

        if self.reclaim.threshold_percent == 0 || self.reclaim.threshold_percent > 100 {
            err(
                "reclaim.threshold_percent",
                format!(
                    "{} is not a percentage from 1 to 100",
                    self.reclaim.threshold_percent
                ),
            );
        }
        if self.reclaim.min_free_percent > 100 {
            err(
                "reclaim.min_free_percent",
                format!(
                    "{} is not a percentage from 0 to 100",
                    self.reclaim.min_free_percent
                ),
            );
        }
        if self.reclaim.rate.bytes() < 1024 {
            err(
                "reclaim.rate",
                format!(
                    "{} is too slow to reclaim anything: use at least 1KiB (or set enabled = false)",
                    self.reclaim.rate
                ),
            );
        }

        if self.admin_socket.as_os_str().is_empty() {
            err("admin_socket", "must not be empty".to_owned());
        } else if self.admin_socket.as_os_str().len() > MAX_SOCKET_PATH_BYTES {
            err(
                "admin_socket",
                format!(
                    "{} is {} bytes long; a Unix socket path can have at most {MAX_SOCKET_PATH_BYTES}",
                    self.admin_socket.display(),
                    self.admin_socket.as_os_str().len()
                ),
            );
        }
        if self.metrics_listen.port() != 0 && self.metrics_listen == self.listen {
            err(
                "metrics_listen",
                format!("{} is also the gRPC `listen` address", self.metrics_listen),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_filter) {
            err(
                "log_filter",
                format!("{:?} is not a valid filter: {e}", self.log_filter),
            );
        }
        if self.shutdown_timeout.is_zero() {
            err("shutdown_timeout", "must be more than 0s".to_owned());
        }

        if let Some(e) = plaintext_refusal(self) {
            err("tls.allow_plaintext_loopback", e);
        }
        if !self.plaintext() {
            for (field, path) in [
                ("tls.ca", &self.tls.ca),
                ("tls.cert", &self.tls.cert),
                ("tls.key", &self.tls.key),
            ] {
                if path.as_os_str().is_empty() {
                    err(field, "must name a PEM file".to_owned());
                }
            }
        }
        let mut admins = HashSet::new();
        for (i, admin) in self.tls.admins.iter().enumerate() {
            if admin.trim().is_empty() || admin.trim() != admin {
                err(
                    &format!("tls.admins[{i}]"),
                    format!(
                        "{admin:?} is not a certificate common name (empty, or blank at an end)"
                    ),
                );
            } else if !admins.insert(admin) {
                err(
                    &format!("tls.admins[{i}]"),
                    format!("{admin:?} is listed twice"),
                );
            }
        }

        let l = &self.limits;
        if l.max_message_bytes < ByteSize::kib(4) || l.max_message_bytes > ByteSize::gib(1) {
            err(
                "limits.max_message_bytes",
                format!(
                    "{} is out of range: use between 4KiB and 1GiB",
                    l.max_message_bytes
                ),
            );
        }
        let batch = self.replication.batch_bytes;
        if !ReplicationConfig::BATCH_BYTES.contains(&batch.bytes()) {
            err(
                "replication.batch_bytes",
                format!("{batch} is out of range: use between 64KiB and 64MiB"),
            );
        }
        if l.max_concurrent_streams == 0 {
            err(
                "limits.max_concurrent_streams",
                "must be at least 1".to_owned(),
            );
        }
        for (field, d) in [
            ("limits.request_timeout", l.request_timeout),
            ("limits.handshake_timeout", l.handshake_timeout),
            ("limits.http2_keepalive_timeout", l.http2_keepalive_timeout),
        ] {
            if d.is_zero() {
                err(field, "must be more than 0s".to_owned());
            }
        }

        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { errors })
        }
    }

    /// The effective config as TOML, as `repld check-config` prints it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self)
            .expect("a Config always serializes: no maps with non-string keys")
    }
}

/// Why plaintext serving must be refused for this config, if it must. Plaintext is allowed only
/// when asked for (`tls.allow_plaintext_loopback`) and only on a loopback `listen` address.
pub fn plaintext_refusal(config: &Config) -> Option<String> {
    if config.tls.allow_plaintext_loopback && !config.listen.ip().is_loopback() {
        let loopback = SocketAddr::from(([127, 0, 0, 1], config.listen.port()));
        Some(format!(
            "plaintext gRPC is only served on a loopback address, but listen is {}: \
             anyone on the network could call the node without a certificate. \
             Set listen = \"{loopback}\" to keep plaintext for local tests, \
             or set allow_plaintext_loopback = false and configure [tls] for mutual TLS",
            config.listen
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn valid(text: &str) -> Config {
        let mut c = parse(text).expect("parses");
        c.resolve();
        c.validate().expect("valid");
        c
    }

    /// The one field error a text produces, at parse or at validation.
    fn field_error(text: &str) -> FieldError {
        let e = match parse(text) {
            Err(e) => e,
            Ok(c) => c.validate().expect_err("should be invalid"),
        };
        let errs = e.field_errors();
        assert_eq!(errs.len(), 1, "{e}");
        errs[0].clone()
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = valid("");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/repld"));
        assert_eq!(c.listen, "0.0.0.0:7420".parse().expect("addr"));
        assert_eq!(c.admin_socket, PathBuf::from("/run/repld/admin.sock"));
        assert_eq!(c.metrics_listen, "127.0.0.1:9420".parse().expect("addr"));
        assert_eq!(
            c.devices,
            vec![DeviceConfig {
                path: PathBuf::from("/var/lib/repld/repld.img"),
                size: Some(ByteSize(8 << 30)),
                format_if_missing: true,
            }]
        );
        assert!(!c.tls.allow_plaintext_loopback);
        assert!(c.tls.admins.is_empty());
        assert_eq!(c.limits.max_message_bytes, ByteSize(16 << 20));
        assert_eq!(c.limits.request_timeout.get(), Duration::from_secs(60));
        assert_eq!(c.limits.handshake_timeout.get(), Duration::from_secs(10));
        assert!(valid_node_name(&c.node_name), "{}", c.node_name);
    }

    #[test]
    fn a_full_file_parses() {
        let c = valid(
            r#"
            node_name = "node-a"
            data_dir = "/srv/repld"
            listen = "[::]:7420"
            admin_socket = "/run/repld/admin.sock"
            metrics_listen = "127.0.0.1:9500"
            log_filter = "info,repld=debug"
            shutdown_timeout = "45s"

            [[devices]]
            path = "/dev/vdb"

            [[devices]]
            path = "extra.img"
            size = "512MiB"
            format_if_missing = true

            [tls]
            ca = "/etc/repld/tls/ca.pem"
            cert = "/etc/repld/tls/node-a.pem"
            key = "/etc/repld/tls/node-a.key"
            admins = ["admin", "ops-alice"]

            [limits]
            max_message_bytes = 33554432
            max_concurrent_streams = 64
            request_timeout = "2m"
            handshake_timeout = "5s"
            tcp_keepalive = "0s"
            "#,
        );
        assert_eq!(c.node_name, "node-a");
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.devices[0].size, None);
        assert!(!c.devices[0].format_if_missing);
        assert_eq!(c.devices[1].path, PathBuf::from("/srv/repld/extra.img"));
        assert_eq!(c.devices[1].size, Some(ByteSize(512 << 20)));
        assert_eq!(c.tls.admins, ["admin", "ops-alice"]);
        assert_eq!(c.limits.max_message_bytes, ByteSize(32 << 20));
        assert_eq!(c.limits.request_timeout.get(), Duration::from_secs(120));
        assert!(c.limits.tcp_keepalive.is_zero());
        assert_eq!(c.shutdown_timeout.get(), Duration::from_secs(45));
    }

    #[test]
    fn a_malformed_value_names_its_field_and_line() {
        let e = parse("node_name = \"a\"\nlisten = \"x:y\"\n").expect_err("bad listen");
        let text = e.to_string();
        assert!(
            text.starts_with("test.toml line 2: listen: \"x:y\" is not a socket address"),
            "{text}"
        );

        let f = field_error("[limits]\nrequest_timeout = \"60 seconds\"\n");
        assert_eq!(f.field, "limits.request_timeout");
        assert!(f.message.contains("is not a duration"), "{f}");

        let f = field_error("[limits]\nhandshake_timeout = 10\n");
        assert_eq!(f.field, "limits.handshake_timeout");
        assert!(f.message.contains("\"10s\""), "{f}");

        let f = field_error("[limits]\nmax_message_bytes = \"16 megs\"\n");
        assert_eq!(f.field, "limits.max_message_bytes");
        assert!(f.message.contains("is not a size"), "{f}");

        let f = field_error("[[devices]]\npath = \"a.img\"\nsize = \"big\"\n");
        assert_eq!(f.field, "devices[0].size");

        let f = field_error("[tls]\nallow_plaintext_loopback = \"yes\"\n");
        assert_eq!(f.field, "tls.allow_plaintext_loopback");
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let f = field_error("lisen = \"127.0.0.1:1\"\n");
        assert_eq!(f.field, "lisen");
        assert!(f.message.contains("unknown field `lisen`"), "{f}");
        let f = field_error("[tls]\nadmin = [\"x\"]\n");
        assert_eq!(f.field, "tls.admin");
        assert!(
            f.message.contains("expected one of"),
            "lists the known ones: {f}"
        );
        let f = field_error("[[devices]]\npath = \"a\"\nsise = \"1GiB\"\n");
        assert_eq!(f.field, "devices[0].sise");
    }

    #[test]
    fn the_batch_size_is_bounded_and_a_stream_clamps_it_to_a_message() {
        let ok = parse("[replication]\nbatch_bytes = \"1MiB\"\n").expect("1MiB");
        assert_eq!(ok.replication.batch_bytes, ByteSize::mib(1));
        assert_eq!(
            parse("").expect("default").replication.batch_bytes,
            ByteSize::mib(4)
        );
        for bad in ["\"32KiB\"", "\"128MiB\""] {
            let f = field_error(&format!("[replication]\nbatch_bytes = {bad}\n"));
            assert_eq!(f.field, "replication.batch_bytes");
            assert!(f.message.contains("out of range"), "{f}");
        }
        let c = parse(
            "[replication]\nbatch_bytes = \"16MiB\"\n[limits]\nmax_message_bytes = \"8MiB\"\n",
        )
        .expect("a batch larger than a message is clamped, not refused");
        let r = &c.replication;
        assert_eq!(
            r.stream_batch_bytes(c.limits.max_message_bytes),
            (8 << 20) - (64 << 10)
        );
        assert_eq!(r.stream_batch_bytes(ByteSize::mib(32)), 16 << 20);
        assert_eq!(r.stream_batch_bytes(ByteSize::kib(4)), 64 << 10);
    }

    #[test]
    fn a_device_needs_a_path() {
        let f = field_error("[[devices]]\nsize = \"1GiB\"\n");
        assert_eq!(f.field, "devices[0]");
        assert!(f.message.contains("path"), "{f}");
    }

    #[test]
    fn syntax_errors_show_the_line() {
        let e = parse("listen = \n").expect_err("syntax");
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
        assert!(e.to_string().contains("listen ="), "{e}");
    }

    #[test]
    fn validation_names_each_bad_field() {
        let f = field_error("node_name = \"bad name!\"\n");
        assert_eq!(f.field, "node_name");
        let f = field_error("devices = []\n");
        assert_eq!(f.field, "devices");
        let f = field_error("[[devices]]\npath = \"a.img\"\nsize = \"1MiB\"\n");
        assert_eq!(f.field, "devices[0].size");
        let f = field_error("[[devices]]\npath = \"a.img\"\n[[devices]]\npath = \"a.img\"\n");
        assert_eq!(f.field, "devices[1].path");
        let long = format!("admin_socket = \"/{}\"\n", "x".repeat(120));
        assert_eq!(field_error(&long).field, "admin_socket");
        let f = field_error("metrics_listen = \"0.0.0.0:7420\"\n");
        assert_eq!(f.field, "metrics_listen");
        let f = field_error("log_filter = \"info,[[\"\n");
        assert_eq!(f.field, "log_filter");
        let f = field_error("[tls]\nadmins = [\"a\", \"a\"]\n");
        assert_eq!(f.field, "tls.admins[1]");
        let f = field_error("[limits]\nmax_message_bytes = \"2GiB\"\n");
        assert_eq!(f.field, "limits.max_message_bytes");
        let f = field_error("[limits]\nmax_concurrent_streams = 0\n");
        assert_eq!(f.field, "limits.max_concurrent_streams");
        let f = field_error("[limits]\nrequest_timeout = \"0s\"\n");
        assert_eq!(f.field, "limits.request_timeout");
    }

    #[test]
    fn validation_reports_every_problem_at_once() {
        let c = parse("node_name = \"\"\ndevices = []\n").expect("parses");
        let e = c.validate().expect_err("invalid");
        let fields: Vec<_> = e.field_errors().iter().map(|f| f.field.clone()).collect();
        assert_eq!(fields, ["node_name", "devices"]);
        assert!(e.to_string().contains("\n  devices: "), "{e}");
    }

    #[test]
    fn plaintext_is_refused_on_a_non_loopback_address() {
        let f = field_error("listen = \"0.0.0.0:7420\"\n[tls]\nallow_plaintext_loopback = true\n");
        assert_eq!(f.field, "tls.allow_plaintext_loopback");
        assert!(
            f.message.contains("only served on a loopback address"),
            "{f}"
        );
        assert!(f.message.contains("127.0.0.1:7420"), "says what to do: {f}");

        let f = field_error("listen = \"10.1.2.3:7420\"\n[tls]\nallow_plaintext_loopback = true\n");
        assert_eq!(f.field, "tls.allow_plaintext_loopback");

        for addr in ["127.0.0.1:7420", "127.0.0.2:0", "[::1]:7420"] {
            let c = valid(&format!(
                "listen = \"{addr}\"\n[tls]\nallow_plaintext_loopback = true\n"
            ));
            assert!(c.plaintext());
            assert!(plaintext_refusal(&c).is_none());
        }
    }

    #[test]
    fn the_shipped_example_is_valid_and_shows_the_defaults() {
        let example = include_str!("../../deploy/repld.toml");
        let mut c = parse(example).expect("deploy/repld.toml parses");
        c.resolve();
        c.validate().expect("deploy/repld.toml is valid");
        let mut expected = Config {
            node_name: "storage-a".to_owned(),
            ..Config::default()
        };
        expected.tls.admins = vec!["admin".to_owned()];
        expected.resolve();
        assert_eq!(c, expected, "the example's values are the defaults");
    }

    #[test]
    fn resolve_joins_relative_device_paths_to_data_dir() {
        let mut c = parse("data_dir = \"/tmp/x\"\n").expect("parses");
        c.resolve();
        assert_eq!(c.devices[0].path, PathBuf::from("/tmp/x/repld.img"));
    }

    #[test]
    fn the_effective_config_round_trips_through_toml() {
        let c = valid("node_name = \"n1\"\n[tls]\nadmins = [\"root-admin\"]\n");
        let text = c.to_toml();
        let again = parse(&text).expect("reparses");
        assert_eq!(again, c, "{text}");
        assert!(text.contains("max_message_bytes = \"16MiB\""), "{text}");
        assert!(text.contains("request_timeout = \"1m\""), "{text}");
    }
}
