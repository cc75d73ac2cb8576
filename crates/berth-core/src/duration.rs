//! Durations written the way people write them in a spec: `500ms`, `1s`, `2m`, `1h`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration in milliseconds that reads and writes as `1s`, `500ms`, `2m`, `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub u64);

impl Dur {
    /// The longest duration written anywhere: a year.
    pub const MAX: Dur = Dur(365 * 24 * 3_600_000);

    pub const fn secs(s: u64) -> Self {
        Dur(s * 1000)
    }
    /// `secs` seconds, if no more than [`Dur::MAX`].
    pub fn from_secs_checked(secs: u64) -> Option<Self> {
        secs.checked_mul(1000).map(Dur).filter(|d| *d <= Self::MAX)
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(ms)
    }
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
    pub fn as_millis(self) -> u64 {
        self.0
    }
    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }

    /// Parses `250ms`, `10s`, `1m30s`, `2h`; a bare number is seconds.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty duration".into());
        }
        if let Ok(secs) = text.parse::<u64>() {
            return Dur::from_secs_checked(secs).ok_or_else(|| format!("`{text}` is longer than a year (365 days)"));
        }
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!("`{text}` is not a duration (expected e.g. 500ms, 10s, 2m, 1h)"));
            }
            let number: f64 = rest[..digits].parse().map_err(|_| format!("`{text}` is not a duration (bad number)"))?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let unit_ms = match &rest[..unit_len] {
                "ms" => 1.0,
                "s" => 1000.0,
                "m" => 60_000.0,
                "h" => 3_600_000.0,
                "" => {
                    return Err(format!("`{text}` needs a unit after {number} (ms, s, m or h)"));
                }
                other => {
                    return Err(format!("`{text}` has unknown unit `{other}` (use ms, s, m or h)"));
                }
            };
            rest = &rest[unit_len..];
            total = total.saturating_add((number * unit_ms).round() as u64);
        }
        // Beyond a year nothing in Berth waits; far beyond, the number stops fitting anywhere.
        if total > Self::MAX.0 {
            return Err(format!("`{text}` is longer than a year (365 days)"));
        }
        Ok(Dur(total))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DurVisitor;
        impl Visitor<'_> for DurVisitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 500ms, 10s, 2m or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Dur::from_secs_checked(v)
                    .ok_or_else(|| E::custom(format!("{v} seconds is longer than a year (365 days)")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v).map_err(|_| E::custom("a duration cannot be negative")).and_then(|v| self.visit_u64(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                if !(v.is_finite() && v >= 0.0) {
                    Err(E::custom("a duration must be a positive number of seconds"))
                } else if v * 1000.0 > Dur::MAX.0 as f64 {
                    Err(E::custom(format!("{v} seconds is longer than a year (365 days)")))
                } else {
                    Ok(Dur((v * 1000.0).round() as u64))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(DurVisitor)
    }
}

/// How long before `now` a time was, for people: `12s ago`, `3m ago`, `2h ago`, `4d ago`; `-`
/// for a time never set (zero or less). The CLI's tables and the console say it alike.
pub fn ago(then: crate::Millis, now: crate::Millis) -> String {
    if then <= 0 {
        return "-".into();
    }
    let secs = (now - then).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(Dur::parse("500ms"), Ok(Dur(500)));
        assert_eq!(Dur::parse("1s"), Ok(Dur(1000)));
        assert_eq!(Dur::parse("2m"), Ok(Dur(120_000)));
        assert_eq!(Dur::parse("1m30s"), Ok(Dur(90_000)));
        assert_eq!(Dur::parse("1.5s"), Ok(Dur(1500)));
        assert_eq!(Dur::parse("7"), Ok(Dur(7000)));
    }

    #[test]
    fn rejects_garbage_with_reason() {
        assert!(Dur::parse("").is_err());
        assert!(Dur::parse("5 parsecs").unwrap_err().contains("unit"));
        assert!(Dur::parse("10").is_ok());
        assert!(Dur::parse("ms").is_err());
        assert!(Dur::parse("3d").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn displays_in_largest_whole_unit() {
        assert_eq!(Dur(1500).to_string(), "1500ms");
        assert_eq!(Dur(60_000).to_string(), "1m");
        assert_eq!(Dur(0).to_string(), "0s");
        for text in ["250ms", "3s", "4m", "2h"] {
            assert_eq!(Dur::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn ago_says_the_largest_whole_unit() {
        let now = 10 * 86_400_000;
        assert_eq!(ago(0, now), "-");
        assert_eq!(ago(now - 59_999, now), "59s ago");
        assert_eq!(ago(now - 60_000, now), "1m ago");
        assert_eq!(ago(now - 3_600_000, now), "1h ago");
        assert_eq!(ago(now - 2 * 86_400_000, now), "2d ago");
        assert_eq!(ago(now + 5_000, now), "0s ago", "a clock a little ahead is now");
    }
}
