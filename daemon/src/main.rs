//! `repld`: the node daemon. Parses flags, sets up tracing, and hands over to the library.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;
use repld::cli::{Cli, Command};
use repld::{CancellationToken, EssentialTaskFailed};
use tracing_subscriber::EnvFilter;

/// mimalloc: glibc's malloc cost the writer and the slave's apply a quarter of their CPU
/// (docs/architecture.md, Crates).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Command::CheckConfig(args) => return repld::cli::check_config(&args),
        Command::Format(args) => return report(repld::cli::format(&args)),
        Command::Fsck(args) => return report(repld::cli::fsck(&args)),
        Command::Run(args) => args,
    };
    let config = match repld::cli::load_config(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("repld: {e}");
            return ExitCode::FAILURE;
        }
    };

    // RUST_LOG, when set, wins over `log_filter`; validate() has checked the latter.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        repld::signals::spawn_signal_handler(shutdown.clone())?;
        repld::run(config, shutdown).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // Already logged when it happened.
        Err(e) if e.is::<EssentialTaskFailed>() => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("repld: {e:#}");
            ExitCode::FAILURE
        }
    }
}
