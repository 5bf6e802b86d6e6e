//! Human-friendly sizes (`8GiB`, `512MiB`, `4096`) and durations (`10s`, `5m`, `1h30m`) for the
//! config file and the flags.
//!
//! Both parse strictly: a size needs a whole number of bytes, a duration needs a unit. Both print
//! back in a form they parse, so `repld check-config` output can be fed back in as a config file.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// A number of bytes, written in the config as an integer (`4096`) or as a string with a unit:
/// binary `KiB`/`MiB`/`GiB`/`TiB` (also `K`/`M`/`G`/`T`, as `truncate -s` reads them) or
/// decimal `kB`/`MB`/`GB`/`TB`. Units are case-insensitive; a space before the unit is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` KiB.
    pub const fn kib(n: u64) -> Self {
        Self(n * KIB)
    }
    /// `n` MiB.
    pub const fn mib(n: u64) -> Self {
        Self(n * MIB)
    }
    /// `n` GiB.
    pub const fn gib(n: u64) -> Self {
        Self(n * GIB)
    }
    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a size or a duration did not parse. The text is meant to follow `field: "value" `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            UnitError(format!(
                "{s:?} is not a size: use a whole number of bytes, or a number with a unit such as \
                 512MiB or 8GiB"
            ))
        };
        let t = s.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        if digits_end == 0 {
            return Err(bad());
        }
        let n: u64 = t[..digits_end].parse().map_err(|_| bad())?;
        let unit = t[digits_end..].trim_start();
        let mult = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => KIB,
            "m" | "mib" => MIB,
            "g" | "gib" => GIB,
            "t" | "tib" => TIB,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| UnitError(format!("{s:?} is too large a size")))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the value exactly: `8GiB`, `16MiB`, `1000B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (mult, unit) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
            if n != 0 && n.checked_rem(mult) == Some(0) {
                return write!(f, "{}{unit}", n / mult);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 8GiB, 512MiB or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is not a size: it must not be negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A span of time, written as a number with a unit: `500ms`, `10s`, `5m`, `2h`, `1d`, or a
/// sequence of them such as `1h30m`. A bare number is refused, because the unit is never obvious.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Self {
        Self(Duration::from_secs(n))
    }
    /// The duration itself.
    pub const fn get(self) -> Duration {
        self.0
    }
    /// True for `0s`, which some fields read as "off".
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            UnitError(format!(
                "{s:?} is not a duration: use a number with a unit (ms, s, m, h, d), such as \
                 500ms, 10s, 5m or 1h30m"
            ))
        };
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let mut total = Duration::ZERO;
        while !rest.is_empty() {
            let digits_end = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            if digits_end == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits_end].parse().map_err(|_| bad())?;
            rest = &rest[digits_end..];
            let unit_end = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let part = match &rest[..unit_end] {
                "ms" => Some(Duration::from_millis(n)),
                "s" => Some(Duration::from_secs(n)),
                "m" => n.checked_mul(60).map(Duration::from_secs),
                "h" => n.checked_mul(3600).map(Duration::from_secs),
                "d" => n.checked_mul(86_400).map(Duration::from_secs),
                _ => return Err(bad()),
            };
            total = part
                .and_then(|p| total.checked_add(p))
                .ok_or_else(|| UnitError(format!("{s:?} is too long a duration")))?;
            rest = &rest[unit_end..];
        }
        Ok(HumanDuration(total))
    }
}

impl fmt::Display for HumanDuration {
    /// Compound form that [`FromStr`] reads back: `1h30m`, `10s`, `1s500ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut secs = self.0.as_secs();
        let millis = self.0.subsec_millis();
        if secs == 0 && millis == 0 {
            return f.write_str("0s");
        }
        for (mult, unit) in [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")] {
            if secs >= mult {
                write!(f, "{}{unit}", secs / mult)?;
                secs %= mult;
            }
        }
        if millis != 0 {
            write!(f, "{millis}ms")?;
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\" or \"5m\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "{v} is not a duration: write it as a string with a unit, such as \"{v}s\""
                )))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(s: &str) -> Result<u64, UnitError> {
        s.parse::<ByteSize>().map(ByteSize::bytes)
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("4096B"), Ok(4096));
        assert_eq!(size("8GiB"), Ok(8 << 30));
        assert_eq!(size("8G"), Ok(8 << 30));
        assert_eq!(size("512MiB"), Ok(512 << 20));
        assert_eq!(size("512 mib"), Ok(512 << 20));
        assert_eq!(size("64KiB"), Ok(64 << 10));
        assert_eq!(size("2TiB"), Ok(2 << 40));
        assert_eq!(size("1GB"), Ok(1_000_000_000));
        assert_eq!(size("10kB"), Ok(10_000));
    }

    #[test]
    fn bad_sizes_are_refused_with_a_hint() {
        for s in ["", "GiB", "8 GiBs", "1.5GiB", "-1", "8 gigabytes", "0x10"] {
            let e = size(s).expect_err(s);
            assert!(e.to_string().contains("is not a size"), "{s}: {e}");
            assert!(e.to_string().contains("8GiB"), "{s}: {e}");
        }
        assert!(size("99999999999TiB").is_err());
    }

    #[test]
    fn sizes_print_back_in_a_parsable_form() {
        for n in [0, 1, 1000, 4096, 16 << 20, 8 << 30, (8 << 30) + 1, 3 << 40] {
            let text = ByteSize(n).to_string();
            assert_eq!(size(&text), Ok(n), "{text}");
        }
        assert_eq!(ByteSize::gib(8).to_string(), "8GiB");
        assert_eq!(ByteSize::mib(16).to_string(), "16MiB");
    }

    fn dur(s: &str) -> Result<Duration, UnitError> {
        s.parse::<HumanDuration>().map(HumanDuration::get)
    }

    #[test]
    fn durations_parse() {
        assert_eq!(dur("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(dur("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(dur("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(dur("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(dur("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(dur("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(dur("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_are_refused_with_a_hint() {
        for s in ["", "10", "s", "10 s", "10sec", "1.5s", "-1s", "ten seconds"] {
            let e = dur(s).expect_err(s);
            assert!(e.to_string().contains("is not a duration"), "{s}: {e}");
        }
    }

    #[test]
    fn durations_print_back_in_a_parsable_form() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(1500),
            Duration::from_secs(10),
            Duration::from_secs(5400),
            Duration::from_secs(90_061),
        ] {
            let text = HumanDuration(d).to_string();
            assert_eq!(dur(&text), Ok(d), "{text}");
        }
        assert_eq!(HumanDuration::secs(60).to_string(), "1m");
        assert_eq!(HumanDuration::secs(5400).to_string(), "1h30m");
    }
}
