//! `repl-bench`: runs the benchmark scenarios and prints their figures.
//!
//! ```text
//! repl-bench [--scenario NAME...] [--dir DIR] [--quick] [--repeat N] [--json] [--list]
//! ```
//!
//! See `docs/benchmarks.md` and the [`repl_bench`] library, where everything happens.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// repld's benchmark harness: runs the chosen scenarios (default: all) and prints their figures,
/// with the targets the issues set and whether they are met.
#[derive(Debug, Parser)]
#[command(name = "repl-bench", version)]
struct Args {
    /// A scenario to run (repeatable, or comma-separated); all of them when not given.
    #[arg(
        long = "scenario",
        short = 's',
        value_name = "NAME",
        value_delimiter = ','
    )]
    scenarios: Vec<String>,
    /// Where the data goes: a scratch directory is made inside DIR and removed afterwards.
    /// Default: the current directory (so not /tmp, which may be a tmpfs).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Small sizes and short durations: a smoke test, not figures to report.
    #[arg(long)]
    quick: bool,
    /// Runs per scenario; the median is reported. Default: 3, or 1 with --quick.
    #[arg(long, value_name = "N")]
    repeat: Option<usize>,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for s in repl_bench::scenarios::registry() {
            println!("{:<16} {}", s.name(), s.description());
        }
        return ExitCode::SUCCESS;
    }
    let opts = repl_bench::Options {
        scenarios: args.scenarios,
        dir: args.dir,
        quick: args.quick,
        repeat: args.repeat.unwrap_or(if args.quick { 1 } else { 3 }),
    };
    match repl_bench::run(&opts) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("error: encode the report as JSON: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
