//! `replctl`: the command-line interface to repld nodes.
//!
//! A clap [`Cli`] with one [`Command`] variant per area; each area lives in its own module and
//! exposes `run(args)`:
//!
//! - `certs`: `replctl certs init`, a CA and node and admin certificates for a first setup.
//!
//! Exit codes: 0 ok, 1 error, 2 usage (clap's own).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod certs;

/// replctl: operate repld storage nodes.
#[derive(Debug, Parser)]
#[command(name = "replctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The areas of replctl.
#[derive(Debug, Subcommand)]
enum Command {
    /// Certificates for mutual TLS between nodes and admins.
    Certs(certs::CertsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Certs(args) => certs::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
