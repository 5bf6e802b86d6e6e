//! `repl-bench`: the project's one benchmark harness.
//!
//! Every figure the issues ask for is produced by a [`Scenario`]: a named measurement that runs
//! against a scratch directory and returns [`Figure`]s (a value with its unit, and for the ratios
//! the issues set targets on, the [`Target`]). The harness runs the chosen scenarios a few times
//! each, reports the median of every figure with its spread, and says for each target whether it
//! was met. Adding a scenario is one file under `scenarios/` and one line in
//! [`scenarios::registry`].
//!
//! Modules:
//! - [`scenario`]: the [`Scenario`] trait, the [`Ctx`] it runs in, [`Figure`] and [`Target`].
//! - [`scenarios`]: the registry and the scenarios themselves (one module each).
//! - [`data`]: incompressible, never-repeating test data, generated once and streamed cheaply.
//! - [`machine`]: what the figures were measured on (cores, memory, file system of the data).
//! - [`report`]: aggregation of repeated runs (median, spread) and the table and JSON output.
//! - [`fixture`]: fresh engines on image files, as the scenarios use them.
//! - [`node`]: a real `repld` process and `replctl` commands against it.
//! - [`tree`]: directory trees to import, generated on disk.
//! - [`operator`]: `replctl import` and `cp -a` + `sync -f` of a tree, timed side by side.
//! - [`cluster`]: nodes sharing a CA that replicate over mutual TLS on loopback, a replctl
//!   config naming them, in-process gRPC clients on their admin sockets.
//! - [`tls_loopback`]: the raw throughput of one rustls connection on loopback.
//! - [`rsyncd`]: an `rsync --daemon` on loopback, and `rsync -a` to it.
//!
//! The binary (`src/main.rs`) only parses flags and calls [`run`].

pub mod cluster;
pub mod data;
pub mod fixture;
pub mod machine;
pub mod node;
pub mod operator;
pub mod report;
pub mod rsyncd;
pub mod scenario;
pub mod scenarios;
pub mod tls_loopback;
pub mod tree;

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

pub use report::Report;
pub use scenario::{Ctx, Figure, Scenario, Target, Verdict};

/// What to run, and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scenario names to run, in this order; all of them when empty.
    pub scenarios: Vec<String>,
    /// The directory to put data under; a temporary directory in the current directory when
    /// `None`. A fresh subdirectory is made inside it and removed afterwards.
    pub dir: Option<PathBuf>,
    /// Small sizes and short durations (a smoke test), instead of the sizes the issues name.
    pub quick: bool,
    /// Runs per scenario; the median of each figure is reported.
    pub repeat: usize,
}

/// Runs the chosen scenarios and returns their aggregated figures. Progress goes to stderr.
pub fn run(opts: &Options) -> Result<Report> {
    let all = scenarios::registry();
    let chosen: Vec<&dyn Scenario> = if opts.scenarios.is_empty() {
        all.iter().map(|s| &**s).collect()
    } else {
        let mut v = Vec::new();
        for name in &opts.scenarios {
            match all.iter().find(|s| s.name() == name) {
                Some(s) => v.push(&**s),
                None => bail!(
                    "no scenario named `{name}`; known scenarios: {} (see `repl-bench --list`)",
                    all.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        v
    };
    if opts.repeat == 0 {
        bail!("--repeat must be at least 1");
    }

    let base = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("create the data directory {}", d.display()))?;
            d.clone()
        }
        None => std::env::current_dir().context("find the current directory")?,
    };
    let scratch = tempfile::Builder::new()
        .prefix(".repl-bench-")
        .tempdir_in(&base)
        .with_context(|| format!("create a scratch directory under {}", base.display()))?;
    let fs = machine::fs_of(scratch.path())
        .with_context(|| format!("find the file system of {}", scratch.path().display()))?;
    let machine = machine::Machine::probe();
    if fs.is_memory() {
        eprintln!(
            "warning: {} is on {} (memory): fdatasync does nothing there, so the figures do not describe a disk. Use --dir on a disk-backed file system.",
            scratch.path().display(),
            fs.fs_type
        );
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; build with --release for figures worth reporting"
        );
    }

    let mut report = Report::new(machine, fs, opts.quick, opts.repeat);
    for s in chosen {
        let mut samples = Vec::with_capacity(opts.repeat);
        for run in 0..opts.repeat {
            eprintln!(
                "[{}] run {}/{}: {}",
                s.name(),
                run + 1,
                opts.repeat,
                s.description()
            );
            let ctx = Ctx::new(scratch.path().to_owned(), opts.quick, run, opts.repeat);
            let figures = s
                .run(&ctx)
                .with_context(|| format!("scenario `{}`, run {}", s.name(), run + 1))?;
            samples.push(figures);
        }
        report.add(s.name(), s.description(), samples);
    }
    report.finish();
    scratch
        .close()
        .context("remove the scratch directory after the run")?;
    Ok(report)
}
