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

/// How long memory freed by a burst of work stays with repld before mimalloc gives it back to
/// the OS (its `purge_delay`; mimalloc's own default is 1 s). Given back, the next commit or
/// replicated batch faults it in again and the kernel zeroes every page of it: that cost a
/// 1,000-file commit's replication about a third of its time (docs/architecture.md, Crates).
const PURGE_DELAY_MS: std::ffi::c_long = 60_000;

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

#[allow(unsafe_code)]
unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Sets [`PURGE_DELAY_MS`], unless the operator set `MIMALLOC_PURGE_DELAY`.
fn keep_freed_memory_a_while() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mimalloc's option setter takes two integers; the option index is checked
        // against mimalloc's documented default in the tests below.
        #[allow(unsafe_code)]
        unsafe {
            mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}

fn main() -> ExitCode {
    keep_freed_memory_a_while();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    unsafe extern "C" {
        fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    }

    #[test]
    fn the_purge_delay_option_is_mimallocs_and_is_set() {
        // SAFETY: reads an integer option of the allocator this binary links.
        #[allow(unsafe_code)]
        let get = || unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            get(),
            1_000,
            "option {MI_OPTION_PURGE_DELAY} is not mimalloc's purge delay (default 1,000 ms), \
             or MIMALLOC_PURGE_DELAY is set in the test's environment"
        );
        keep_freed_memory_a_while();
        assert_eq!(get(), PURGE_DELAY_MS);
    }
}
