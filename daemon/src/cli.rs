//! The `repld` command line: subcommands, config loading with flag overrides, `check-config`.
//!
//! Exit codes: 0 ok, 1 error (including an invalid config), 2 usage (clap).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{ByteSize, Config, ConfigError, DEFAULT_CONFIG_PATH};
use crate::tls::ServerTls;

/// repld: the storage replication node daemon.
#[derive(Debug, Parser)]
#[command(name = "repld", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: serve gRPC on `listen` (mutual TLS) and on the admin socket.
    Run(ConfigArgs),
    /// Check a config file: print OK and the effective config, or the errors naming each field.
    CheckConfig(ConfigArgs),
    /// Write a fresh repld superblock to a device or image file.
    Format(FormatArgs),
    /// Check the device log and the index; optionally rebuild the index from the device.
    Fsck(FsckArgs),
}

/// Where the config comes from, and the flags that override it.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// Config file. Default: /etc/repld/repld.toml if it exists, else built-in defaults.
    #[arg(long, short = 'c', env = "REPLD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Flags that override the file.
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Flags that override fields of the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// Overrides `listen`: TCP address of the gRPC server.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Overrides `admin_socket`: path of the local admin socket.
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// Overrides `data_dir`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Overrides `metrics_listen`: TCP address of the metrics endpoint.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Overrides `node_name`.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Sets `tls.allow_plaintext_loopback`: serve plaintext gRPC (loopback `listen` only).
    #[arg(long)]
    pub allow_plaintext_loopback: bool,
}

impl Overrides {
    /// Applies the flags that were given.
    pub fn apply(&self, config: &mut Config) {
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = &self.admin_socket {
            config.admin_socket = v.clone();
        }
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = self.metrics_listen {
            config.metrics_listen = v;
        }
        if let Some(v) = &self.node_name {
            config.node_name = v.clone();
        }
        if self.allow_plaintext_loopback {
            config.tls.allow_plaintext_loopback = true;
        }
    }
}

/// Arguments of `repld format`.
#[derive(Debug, Clone, Args)]
pub struct FormatArgs {
    /// The block device or image file to format.
    pub device: PathBuf,
    /// Format even if the device carries another signature (a file system, another repld volume).
    #[arg(long)]
    pub force: bool,
    /// Create the image file with this size (such as 8GiB) if it does not exist.
    #[arg(long, value_name = "SIZE")]
    pub size: Option<ByteSize>,
}

/// Arguments of `repld fsck`.
#[derive(Debug, Clone, Args)]
pub struct FsckArgs {
    /// Config naming the devices and data_dir to check.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Throw the index away and rebuild it from the device log alone.
    #[arg(long)]
    pub rebuild_index: bool,
}

/// Loads the config named by `args` (or the default file, or the built-in defaults), applies the
/// flags, resolves device paths and validates. Says on stderr when built-in defaults are used.
pub fn load_config(args: &ConfigArgs) -> Result<Config, ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            Config::load(Path::new(DEFAULT_CONFIG_PATH))?
        }
        None => {
            eprintln!(
                "repld: no config file ({DEFAULT_CONFIG_PATH} does not exist): using built-in \
                 defaults"
            );
            Config::default()
        }
    };
    args.overrides.apply(&mut config);
    config.resolve();
    config.validate()?;
    Ok(config)
}

/// `repld check-config`: prints `OK` and the effective config on stdout and exits 0, or prints
/// the problems (each naming its field) on stderr and exits 1. Loads the TLS files too, since a
/// wrong key is as fatal at start-up as a wrong field.
pub fn check_config(args: &ConfigArgs) -> ExitCode {
    let config = match load_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("repld: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !config.plaintext()
        && let Err(e) = ServerTls::load(&config.tls)
    {
        eprintln!("repld: {e}");
        return ExitCode::FAILURE;
    }
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) is not a config problem.
    let _ = writeln!(out, "OK\n\n{}", config.to_toml());
    ExitCode::SUCCESS
}

/// `repld format`.
pub fn format(args: &FormatArgs) -> anyhow::Result<()> {
    crate::node::format(&args.device, args.force, args.size.map(|s| s.bytes()))
}

/// `repld fsck`.
pub fn fsck(args: &FsckArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config)?;
    crate::node::fsck(&config, args.rebuild_index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("repld.toml");
        std::fs::write(
            &file,
            "node_name = \"from-file\"\nlisten = \"0.0.0.0:7420\"\ndata_dir = \"/srv/a\"\n",
        )
        .expect("write");
        let cli = Cli::try_parse_from([
            "repld",
            "run",
            "--config",
            file.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:7000",
            "--node-name",
            "from-flag",
            "--data-dir",
            "/srv/b",
            "--admin-socket",
            "/tmp/x.sock",
            "--metrics-listen",
            "127.0.0.1:9999",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("run expected");
        };
        let c = load_config(&args).expect("loads");
        assert_eq!(c.node_name, "from-flag");
        assert_eq!(c.listen, "127.0.0.1:7000".parse().expect("addr"));
        assert_eq!(c.data_dir, PathBuf::from("/srv/b"));
        assert_eq!(c.devices[0].path, PathBuf::from("/srv/b/repld.img"));
        assert_eq!(c.admin_socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.metrics_listen, "127.0.0.1:9999".parse().expect("addr"));
    }

    #[test]
    fn a_bad_flag_value_is_a_usage_error() {
        let e = Cli::try_parse_from(["repld", "run", "--listen", "x:y"]).expect_err("bad");
        assert_eq!(e.exit_code(), 2);
        let e =
            Cli::try_parse_from(["repld", "format", "/dev/x", "--size", "lots"]).expect_err("bad");
        assert!(e.to_string().contains("is not a size"), "{e}");
    }

    #[test]
    fn a_missing_explicit_config_file_is_an_error() {
        let args = ConfigArgs {
            config: Some(PathBuf::from("/nonexistent/repld.toml")),
            ..ConfigArgs::default()
        };
        let e = load_config(&args).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/repld.toml"), "{e}");
    }

    #[test]
    fn format_creates_an_image_then_refuses_to_overwrite_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = dir.path().join("x.img");
        let args = FormatArgs {
            device: device.clone(),
            force: false,
            size: Some("64MiB".parse().expect("size")),
        };
        format(&args).expect("format a new image");
        assert_eq!(std::fs::metadata(&device).expect("image").len(), 64 << 20);
        let e = format(&args).expect_err("a repld device is not overwritten without --force");
        assert!(e.to_string().contains("--force"), "{e}");
        format(&FormatArgs {
            force: true,
            ..args
        })
        .expect("forced format");
    }
}
