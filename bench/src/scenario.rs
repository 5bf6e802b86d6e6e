//! What a scenario is, what it gets, and what it returns.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;

/// One measurement the harness can run: typically one "Measure it" item of an issue.
///
/// `run` is called once per repetition, each time with a fresh [`Ctx`]; it must clean up what it
/// wrote (scratch directories from [`Ctx::scratch`] do so when dropped). Figures are matched
/// across repetitions by name, so a run returns the same names every time.
pub trait Scenario: Send + Sync {
    /// A short, unique, kebab-case name (`--scenario NAME`).
    fn name(&self) -> &'static str;
    /// One line: what is measured, and against what.
    fn description(&self) -> &'static str;
    /// Measures once and returns the figures.
    fn run(&self, ctx: &Ctx) -> Result<Vec<Figure>>;
}

/// What a scenario run gets from the harness.
#[derive(Debug, Clone)]
pub struct Ctx {
    dir: PathBuf,
    quick: bool,
    run: usize,
    runs: usize,
}

impl Ctx {
    /// A context whose scratch directories go under `dir`.
    pub fn new(dir: PathBuf, quick: bool, run: usize, runs: usize) -> Ctx {
        Ctx {
            dir,
            quick,
            run,
            runs,
        }
    }

    /// Whether to use the small sizes of a smoke test.
    pub fn quick(&self) -> bool {
        self.quick
    }

    /// `quick` in quick mode, `full` otherwise.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }

    /// Which repetition this is (0-based), e.g. to alternate the order of two measured sides.
    pub fn run_index(&self) -> usize {
        self.run
    }

    /// How many repetitions there are in all.
    pub fn runs(&self) -> usize {
        self.runs
    }

    /// The directory all data goes under (on the file system the report names).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh, empty directory, removed when the returned guard is dropped.
    pub fn scratch(&self, label: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir_in(&self.dir)
            .with_context(|| format!("create a scratch directory in {}", self.dir.display()))
    }

    /// Progress for the operator, on stderr.
    pub fn progress(&self, what: impl std::fmt::Display) {
        eprintln!("    {what}");
    }
}

/// A value a figure should reach.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The value must be at least this.
    AtLeast(f64),
    /// The value must be at most this.
    AtMost(f64),
}

impl Target {
    /// Whether `value` meets the target.
    pub fn verdict(&self, value: f64) -> Verdict {
        match *self {
            Target::AtLeast(t) if value >= t => Verdict::Pass,
            Target::AtLeast(_) => Verdict::Below,
            Target::AtMost(t) if value <= t => Verdict::Pass,
            Target::AtMost(_) => Verdict::Above,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::AtLeast(t) => write!(f, ">= {t}"),
            Target::AtMost(t) => write!(f, "<= {t}"),
        }
    }
}

/// Whether a figure met its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// The target is met.
    Pass,
    /// The value is below an at-least target.
    Below,
    /// The value is above an at-most target.
    Above,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Below => "BELOW",
            Verdict::Above => "ABOVE",
        })
    }
}

/// One measured value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// What it is, unique within its scenario ("16 writers", "engine / plain").
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit ("commits/s", "MiB/s", "x" for a ratio).
    pub unit: String,
    /// The target an issue sets on it, if any.
    pub target: Option<Target>,
    /// How it was measured, where that is not obvious from the name.
    pub note: Option<String>,
}

impl Figure {
    /// A figure without a target.
    pub fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Figure {
        Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            target: None,
            note: None,
        }
    }

    /// A ratio (unit "x") with a target.
    pub fn ratio(name: impl Into<String>, value: f64, target: Target) -> Figure {
        Figure {
            target: Some(target),
            ..Figure::new(name, value, "x")
        }
    }

    /// The same figure with a target (for figures that are not ratios).
    pub fn with_target(mut self, target: Target) -> Figure {
        self.target = Some(target);
        self
    }

    /// The same figure with a note on how it was measured.
    pub fn note(mut self, note: impl Into<String>) -> Figure {
        self.note = Some(note.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_judge_both_directions() {
        assert_eq!(Target::AtLeast(5.0).verdict(5.0), Verdict::Pass);
        assert_eq!(Target::AtLeast(5.0).verdict(4.9), Verdict::Below);
        assert_eq!(Target::AtMost(2.0).verdict(2.0), Verdict::Pass);
        assert_eq!(Target::AtMost(2.0).verdict(2.1), Verdict::Above);
    }
}
