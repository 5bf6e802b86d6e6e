//! Aggregation of repeated runs, and the table and JSON output.

use std::fmt::Write as _;

use serde::Serialize;

use crate::machine::{FsInfo, Machine, load_average};
use crate::scenario::{Figure, Target, Verdict};

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// Where the data went.
    pub data_fs: FsInfo,
    /// Whether the small sizes of a smoke test were used.
    pub quick: bool,
    /// Runs per scenario.
    pub repeat: usize,
    /// Whether the harness itself was built without optimizations.
    pub debug_build: bool,
    /// Per scenario, in the order run.
    pub scenarios: Vec<ScenarioReport>,
}

/// One scenario's aggregated figures.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Its name.
    pub name: String,
    /// What it measures.
    pub description: String,
    /// Its figures, in the order the scenario returned them.
    pub figures: Vec<Aggregate>,
}

/// One figure over all runs.
#[derive(Debug, Clone, Serialize)]
pub struct Aggregate {
    /// The figure's name.
    pub name: String,
    /// The median over the runs.
    pub median: f64,
    /// The smallest value seen.
    pub min: f64,
    /// The largest value seen.
    pub max: f64,
    /// Every run's value, in run order.
    pub samples: Vec<f64>,
    /// The unit.
    pub unit: String,
    /// The target, if any.
    pub target: Option<Target>,
    /// Whether the median meets the target.
    pub verdict: Option<Verdict>,
    /// How it was measured.
    pub note: Option<String>,
}

impl Report {
    /// An empty report.
    pub fn new(machine: Machine, data_fs: FsInfo, quick: bool, repeat: usize) -> Report {
        Report {
            machine,
            data_fs,
            quick,
            repeat,
            debug_build: cfg!(debug_assertions),
            scenarios: Vec::new(),
        }
    }

    /// Adds a scenario's runs: figures are matched by name, and each gets its median.
    pub fn add(&mut self, name: &str, description: &str, runs: Vec<Vec<Figure>>) {
        let mut figures: Vec<(Figure, Vec<f64>)> = Vec::new();
        for run in runs {
            for f in run {
                match figures.iter_mut().find(|(g, _)| g.name == f.name) {
                    Some((_, samples)) => samples.push(f.value),
                    None => {
                        let v = f.value;
                        figures.push((f, vec![v]));
                    }
                }
            }
        }
        let figures = figures
            .into_iter()
            .map(|(f, samples)| {
                let median = median(&samples);
                Aggregate {
                    name: f.name,
                    median,
                    min: samples.iter().copied().fold(f64::INFINITY, f64::min),
                    max: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    samples,
                    unit: f.unit,
                    target: f.target,
                    verdict: f.target.map(|t| t.verdict(median)),
                    note: f.note,
                }
            })
            .collect();
        self.scenarios.push(ScenarioReport {
            name: name.to_owned(),
            description: description.to_owned(),
            figures,
        });
    }

    /// Records what is known only at the end (the load average).
    pub fn finish(&mut self) {
        self.machine.load_at_end = load_average();
    }

    /// Whether every figure with a target met it.
    pub fn all_targets_met(&self) -> bool {
        self.scenarios
            .iter()
            .flat_map(|s| &s.figures)
            .all(|f| f.verdict.is_none_or(|v| v == Verdict::Pass))
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "machine: {} cores{}{}{}; load {} at start, {} at end",
            m.cores,
            m.cpu
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default(),
            m.memory_bytes
                .map(|b| format!(", {:.1} GiB RAM", b as f64 / (1u64 << 30) as f64))
                .unwrap_or_default(),
            m.kernel
                .as_deref()
                .map(|k| format!(", Linux {k}"))
                .unwrap_or_default(),
            m.load_at_start.as_deref().unwrap_or("?"),
            m.load_at_end.as_deref().unwrap_or("?"),
        );
        let _ = writeln!(out, "data:    {}", self.data_fs);
        let _ = writeln!(
            out,
            "runs:    {} per scenario, median shown with min..max{}{}",
            self.repeat,
            if self.quick {
                "; QUICK sizes (smoke test, not the issues' sizes)"
            } else {
                ""
            },
            if self.debug_build {
                "; DEBUG build (not representative)"
            } else {
                ""
            },
        );
        let header = [
            "scenario", "figure", "median", "unit", "min..max", "target", "verdict",
        ];
        let mut rows: Vec<[String; 7]> = Vec::new();
        let mut notes = Vec::new();
        for s in &self.scenarios {
            for f in &s.figures {
                rows.push([
                    s.name.clone(),
                    f.name.clone(),
                    fmt_value(f.median),
                    f.unit.clone(),
                    if f.samples.len() > 1 {
                        format!("{}..{}", fmt_value(f.min), fmt_value(f.max))
                    } else {
                        String::new()
                    },
                    f.target.map(|t| t.to_string()).unwrap_or_default(),
                    f.verdict.map(|v| v.to_string()).unwrap_or_default(),
                ]);
                if let Some(n) = &f.note {
                    notes.push(format!("{} / {}: {n}", s.name, f.name));
                }
            }
        }
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut l = String::new();
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                // Text columns align left, numbers right.
                if matches!(i, 2 | 4) {
                    let _ = write!(l, "{c:>w$}  ");
                } else {
                    let _ = write!(l, "{c:<w$}  ");
                }
            }
            l.trim_end().to_owned()
        };
        out.push('\n');
        let _ = writeln!(out, "{}", line(&header.map(String::from)));
        let mut last = "";
        for r in &rows {
            if !last.is_empty() && last != r[0] {
                out.push('\n');
            }
            last = &r[0];
            let _ = writeln!(out, "{}", line(r));
        }
        if !notes.is_empty() {
            out.push('\n');
            for n in notes {
                let _ = writeln!(out, "note: {n}");
            }
        }
        out
    }
}

/// The median; the mean of the middle two for an even count.
pub fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Whole numbers as such, others with about three significant digits.
fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::FsInfo;

    fn report() -> Report {
        Report::new(
            Machine::probe(),
            FsInfo {
                path: "/d".into(),
                fs_type: "ext4".into(),
                source: "/dev/x".into(),
                mount_point: "/".into(),
            },
            false,
            3,
        )
    }

    #[test]
    fn medians_are_taken_per_figure_across_runs() {
        let mut r = report();
        let run = |a: f64, b: f64| {
            vec![
                Figure::new("rate", a, "ops/s"),
                Figure::ratio("ratio", b, Target::AtLeast(5.0)),
            ]
        };
        r.add(
            "s",
            "d",
            vec![run(10.0, 4.0), run(30.0, 6.0), run(20.0, 5.5)],
        );
        let f = &r.scenarios[0].figures;
        assert_eq!((f[0].median, f[0].min, f[0].max), (20.0, 10.0, 30.0));
        assert_eq!(f[1].median, 5.5);
        assert_eq!(f[1].verdict, Some(Verdict::Pass));
        assert!(r.all_targets_met());
        let t = r.table();
        assert!(t.contains("PASS") && t.contains(">= 5"), "{t}");
        assert_eq!(median(&[1.0, 2.0, 3.0, 4.0]), 2.5);
    }

    #[test]
    fn a_missed_target_shows_in_the_table() {
        let mut r = report();
        r.add(
            "s",
            "d",
            vec![vec![Figure::ratio("ratio", 0.5, Target::AtLeast(0.8))]],
        );
        assert!(!r.all_targets_met());
        assert!(r.table().contains("BELOW"));
    }
}
