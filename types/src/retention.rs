//! Retention policies: how much history a PFS keeps.
//!
//! The syntax, which `replctl pfs set --retention` takes and `pfs status` shows:
//!
//! ```text
//! forever                      keep every version (the default)
//! KEEP[,EVERY:UNTIL]...        e.g. 7d,1h:14d,1d:90d
//! ```
//!
//! `KEEP` is how long all history is kept: every commit younger than it stays readable. Each
//! `EVERY:UNTIL` rule then keeps one point per `EVERY` (the newest commit in each `EVERY`-long
//! slot of the clock, counted from the Unix epoch) for commits up to `UNTIL` old, starting
//! where the previous rule (or `KEEP`) ends. History older than the last `UNTIL` is pruned.
//! Durations are a whole number followed by `s`, `m`, `h`, `d` or `w`. Rules run from young to
//! old: each `UNTIL` is larger than the one before (and than `KEEP`), each `EVERY` at least the
//! one before and shorter than its own `UNTIL`. At most [`MAX_GRID_RULES`] rules.
//!
//! Named snapshots, the head, and what a paired slave has not yet confirmed are kept whatever
//! the policy says; the engine adds those to what [`Retention::thin`] keeps.

use std::fmt;
use std::str::FromStr;

use crate::Tid;

/// Most `EVERY:UNTIL` rules in one policy.
pub const MAX_GRID_RULES: usize = 8;

/// The longest duration a policy may name: 100 years.
const MAX_NS: u64 = 100 * 365 * DAY;

const SEC: u64 = 1_000_000_000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;

/// One thinning rule: keep one point per `every_ns` for commits up to `until_ns` old.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GridRule {
    /// The slot length, in ns.
    pub every_ns: u64,
    /// The age up to which the rule applies, in ns.
    pub until_ns: u64,
}

/// How much history a PFS keeps. See the module documentation for the syntax.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Retention {
    /// Keep every version until it is pruned by hand (never pruned by the policy).
    #[default]
    Forever,
    /// Keep all history for `keep_all_ns`, then the points of `grid`; drop the rest.
    Thin {
        /// How long all history is kept, in ns.
        keep_all_ns: u64,
        /// The thinning rules, youngest first.
        grid: Vec<GridRule>,
    },
}

/// Why a retention policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid retention `{text}`: {why} (expected `forever` or KEEP[,EVERY:UNTIL]..., \
     for example `7d,1h:14d,1d:90d`; durations are a number and s, m, h, d or w)"
)]
pub struct RetentionParseError {
    text: String,
    why: String,
}

impl Retention {
    /// Whether the policy ever drops anything.
    pub fn prunes(&self) -> bool {
        !matches!(self, Retention::Forever)
    }

    /// Which of `commits` (ascending TIDs) the policy alone keeps at `now`: one flag per
    /// commit. The caller adds what is kept whatever the policy says (the head, snapshots,
    /// holds).
    pub fn thin(&self, now: Tid, commits: &[Tid]) -> Vec<bool> {
        let Retention::Thin { keep_all_ns, grid } = self else {
            return vec![true; commits.len()];
        };
        let mut keep = vec![false; commits.len()];
        let mut taken: std::collections::HashSet<(usize, u64)> = std::collections::HashSet::new();
        for (i, c) in commits.iter().enumerate().rev() {
            let age = now.get().saturating_sub(c.get());
            if age <= *keep_all_ns {
                keep[i] = true;
                continue;
            }
            let mut from = *keep_all_ns;
            for (r, rule) in grid.iter().enumerate() {
                if age > from && age <= rule.until_ns {
                    // Newest first: the first commit seen in a slot is the newest one in it.
                    keep[i] = taken.insert((r, c.get() / rule.every_ns));
                    break;
                }
                from = rule.until_ns;
            }
        }
        keep
    }

    fn check(&self) -> Result<(), String> {
        let Retention::Thin { keep_all_ns, grid } = self else {
            return Ok(());
        };
        if grid.len() > MAX_GRID_RULES {
            return Err(format!("at most {MAX_GRID_RULES} EVERY:UNTIL rules"));
        }
        let (mut until, mut every) = (*keep_all_ns, 0);
        for r in grid {
            if r.every_ns == 0 {
                return Err("EVERY must be longer than 0".into());
            }
            if r.until_ns <= until {
                return Err(format!(
                    "UNTIL {} must be longer than the age before it ({})",
                    Dur(r.until_ns),
                    Dur(until)
                ));
            }
            if r.every_ns < every {
                return Err(format!(
                    "EVERY {} is shorter than the rule before it ({}): rules go from fine to coarse",
                    Dur(r.every_ns),
                    Dur(every)
                ));
            }
            if r.every_ns >= r.until_ns {
                return Err(format!(
                    "EVERY {} must be shorter than its UNTIL {}",
                    Dur(r.every_ns),
                    Dur(r.until_ns)
                ));
            }
            (until, every) = (r.until_ns, r.every_ns);
        }
        Ok(())
    }

    /// The policy in plain words, for status displays.
    pub fn describe(&self) -> String {
        let Retention::Thin { keep_all_ns, grid } = self else {
            return "keep all history".into();
        };
        let mut s = format!("keep all history for {}", Dur(*keep_all_ns));
        for r in grid {
            s.push_str(&format!(
                ", then one point per {} until {} old",
                Dur(r.every_ns),
                Dur(r.until_ns)
            ));
        }
        s.push_str(", prune older history (snapshots are kept)");
        s
    }
}

/// A duration in the policy syntax.
struct Dur(u64);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, ns) in [("w", WEEK), ("d", DAY), ("h", HOUR), ("m", MIN)] {
            if self.0 >= ns && self.0.is_multiple_of(ns) {
                return write!(f, "{}{unit}", self.0 / ns);
            }
        }
        write!(f, "{}s", self.0 / SEC)
    }
}

fn parse_dur(s: &str) -> Result<u64, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` does not start with a number"))?;
    let scale = match unit {
        "s" => SEC,
        "m" => MIN,
        "h" => HOUR,
        "d" => DAY,
        "w" => WEEK,
        _ => return Err(format!("`{s}` has an unknown unit `{unit}`")),
    };
    match n.checked_mul(scale) {
        Some(ns) if ns <= MAX_NS => Ok(ns),
        _ => Err(format!("`{s}` is longer than 100 years")),
    }
}

impl FromStr for Retention {
    type Err = RetentionParseError;

    fn from_str(text: &str) -> Result<Retention, RetentionParseError> {
        let err = |why: String| RetentionParseError {
            text: text.to_owned(),
            why,
        };
        let t = text.trim();
        if t == "forever" {
            return Ok(Retention::Forever);
        }
        let mut parts = t.split(',');
        let keep_all_ns = parse_dur(parts.next().unwrap_or_default().trim()).map_err(err)?;
        let mut grid = Vec::new();
        for part in parts {
            let (every, until) = part
                .trim()
                .split_once(':')
                .ok_or_else(|| err(format!("rule `{part}` is not EVERY:UNTIL")))?;
            grid.push(GridRule {
                every_ns: parse_dur(every.trim()).map_err(err)?,
                until_ns: parse_dur(until.trim()).map_err(err)?,
            });
        }
        let r = Retention::Thin { keep_all_ns, grid };
        r.check().map_err(err)?;
        Ok(r)
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Retention::Forever => f.write_str("forever"),
            Retention::Thin { keep_all_ns, grid } => {
                write!(f, "{}", Dur(*keep_all_ns))?;
                for r in grid {
                    write!(f, ",{}:{}", Dur(r.every_ns), Dur(r.until_ns))?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Retention {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn policies_parse_and_print_back_in_canonical_form() {
        for (text, canon) in [
            ("forever", "forever"),
            ("7d", "1w"),
            ("0s", "0s"),
            ("1d,1h:2d", "1d,1h:2d"),
            ("36h, 1h:2d, 1d:30d", "36h,1h:2d,1d:30d"),
            ("90m,60m:7d,7d:52w", "90m,1h:1w,1w:52w"),
        ] {
            let p = r(text);
            assert_eq!(p.to_string(), canon, "{text}");
            assert_eq!(r(canon), p, "{canon} round-trips");
        }
        assert!(
            r("1d,1h:2d")
                .describe()
                .contains("one point per 1h until 2d old")
        );
    }

    #[test]
    fn malformed_or_contradictory_policies_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "no unit"),
            ("7", "no unit"),
            ("7y", "unknown unit"),
            ("x7d", "does not start with a number"),
            ("7d,1h", "not EVERY:UNTIL"),
            ("7d,1h:2d", "must be longer than the age before it"),
            ("1d,1d:2d,1h:30d", "rules go from fine to coarse"),
            ("1d,2d:2d", "shorter than its UNTIL"),
            ("1d,0s:2d", "longer than 0"),
            ("1d,1h:3d,1h:2d", "must be longer than the age before it"),
            ("99999w", "100 years"),
            (
                "1s,1s:2s,1s:3s,1s:4s,1s:5s,1s:6s,1s:7s,1s:8s,1s:9s,1s:10s",
                "at most 8",
            ),
        ] {
            let e = text.parse::<Retention>().expect_err(text).to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn thinning_keeps_recent_history_and_the_newest_commit_of_each_slot() {
        let p = r("1h,1h:1d");
        let now = Tid(10 * DAY);
        // Four commits in the last hour, three in one older hour slot, one older than a day.
        let hour_slot = 10 * DAY - 5 * HOUR;
        let commits: Vec<Tid> = [
            10 * DAY - 2 * DAY,
            hour_slot - hour_slot % HOUR + 1,
            hour_slot - hour_slot % HOUR + 2,
            hour_slot - hour_slot % HOUR + 3,
            10 * DAY - 50 * MIN,
            10 * DAY - 30 * MIN,
            10 * DAY - MIN,
            10 * DAY,
        ]
        .into_iter()
        .map(Tid)
        .collect();
        assert_eq!(
            p.thin(now, &commits),
            [false, false, false, true, true, true, true, true]
        );
        assert!(Retention::Forever.thin(now, &commits).iter().all(|k| *k));
    }

    #[test]
    fn a_point_kept_by_a_coarse_rule_was_kept_by_the_finer_one() {
        // Thinning again later never needs a commit an earlier run dropped: the newest commit
        // of a day is the newest commit of that day's last non-empty hour.
        let p = r("0s,1h:1d,1d:30d");
        let commits: Vec<Tid> = (0..500u64).map(|i| Tid(i * 7 * MIN + i % 13)).collect();
        let t1 = Tid(500 * 7 * MIN);
        let keep1 = p.thin(t1, &commits);
        let kept: Vec<Tid> = commits
            .iter()
            .zip(&keep1)
            .filter(|(_, k)| **k)
            .map(|(c, _)| *c)
            .collect();
        let t2 = Tid(t1.get() + 3 * DAY);
        let later_on_all = p.thin(t2, &commits);
        let later_on_kept = p.thin(t2, &kept);
        let from_all: Vec<Tid> = commits
            .iter()
            .zip(&later_on_all)
            .filter(|(_, k)| **k)
            .map(|(c, _)| *c)
            .collect();
        let from_kept: Vec<Tid> = kept
            .iter()
            .zip(&later_on_kept)
            .filter(|(_, k)| **k)
            .map(|(c, _)| *c)
            .collect();
        assert_eq!(from_all, from_kept);
        assert!(from_kept.len() < kept.len(), "the later run thins further");
    }
}
