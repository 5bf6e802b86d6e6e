//! Transaction ids.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A transaction id: strictly increasing per PFS, and at least the commit's wall-clock time in
/// nanoseconds since the Unix epoch. A TID is therefore also a timestamp, and the lag between two
/// TIDs is their difference in nanoseconds.
///
/// Displayed as `0x%016x`, as HAMMER does. Parsed from that form, from decimal, or from an
/// RFC 3339 time (which names the newest TID at or before that instant).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Tid(pub u64);

impl Tid {
    /// The TID before any commit.
    pub const ZERO: Tid = Tid(0);
    /// The greatest TID; used as "not deleted" and as "the head".
    pub const MAX: Tid = Tid(u64::MAX);

    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The TID for a wall-clock instant (saturating at the ends of the range).
    pub fn from_system_time(t: SystemTime) -> Tid {
        let ns = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Tid(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// The TID for the current wall-clock time.
    pub fn now() -> Tid {
        Tid::from_system_time(SystemTime::now())
    }

    /// The wall-clock instant this TID stands for.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.0)
    }

    /// The TID as an RFC 3339 UTC time, for display beside the hex form.
    pub fn to_rfc3339(self) -> String {
        let ns = i128::from(self.0);
        OffsetDateTime::from_unix_timestamp_nanos(ns)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| "?".to_owned())
    }

    /// Seconds since the Unix epoch, as Prometheus timestamps are given.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// How far `self` is behind `later`, in seconds (zero when it is not behind).
    pub fn lag_secs(self, later: Tid) -> f64 {
        later.0.saturating_sub(self.0) as f64 / 1e9
    }

    /// The next TID.
    pub fn next(self) -> Tid {
        Tid(self.0.saturating_add(1))
    }
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:016x}", self.0)
    }
}

/// Why a string is not a TID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{input}` is not a TID: give hex (0x0000018f2c...), decimal, or an RFC 3339 time such as 2026-11-22T10:00:00Z"
)]
pub struct TidParseError {
    input: String,
}

impl FromStr for Tid {
    type Err = TidParseError;

    fn from_str(s: &str) -> Result<Tid, TidParseError> {
        let err = || TidParseError {
            input: s.to_owned(),
        };
        let s = s.trim();
        if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            return u64::from_str_radix(hex, 16).map(Tid).map_err(|_| err());
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().map(Tid).map_err(|_| err());
        }
        let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| err())?;
        let ns = u64::try_from(t.unix_timestamp_nanos()).map_err(|_| err())?;
        Ok(Tid(ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_hammer_hex_and_parses_back() {
        let t = Tid(0x0000_018f_2c00_0001);
        assert_eq!(t.to_string(), "0x0000018f2c000001");
        assert_eq!(t.to_string().parse::<Tid>(), Ok(t));
    }

    #[test]
    fn parses_decimal_and_rfc3339() {
        assert_eq!("42".parse::<Tid>(), Ok(Tid(42)));
        let t: Tid = "2026-11-22T10:00:00Z".parse().expect("valid time");
        assert_eq!(t.0, 1_795_341_600_000_000_000);
        assert_eq!(t.to_rfc3339(), "2026-11-22T10:00:00Z");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "0xzz", "yesterday", "-5", "0x1ffffffffffffffff"] {
            assert!(bad.parse::<Tid>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn lag_is_the_difference_in_seconds() {
        assert_eq!(Tid(1_000_000_000).lag_secs(Tid(3_500_000_000)), 2.5);
        assert_eq!(Tid(5).lag_secs(Tid(1)), 0.0);
    }
}
