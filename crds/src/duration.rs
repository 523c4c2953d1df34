//! Kubernetes-style durations (`30s`, `5m`, `1h30m`, `250ms`) as they appear
//! in manifests, with a schema pattern so the API server rejects malformed
//! values before the operator sees them.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern in the CRD schema; [`Duration::from_str`] accepts exactly
/// the strings it matches.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// A non-negative duration written the Kubernetes way: one or more
/// `<number><unit>` groups with units `ms`, `s`, `m`, `h` (`90s`, `1h30m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(StdDuration);

impl Duration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration(StdDuration::from_secs(secs))
    }

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Duration(StdDuration::from_millis(ms))
    }

    /// The value as a standard library duration.
    pub const fn as_std(self) -> StdDuration {
        self.0
    }

    /// Whole milliseconds, saturating.
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl From<StdDuration> for Duration {
    fn from(d: StdDuration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for StdDuration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

/// A string that is not a Kubernetes-style duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {0:?}: write a number and a unit, e.g. 30s, 5m, 1h30m or 500ms (units ms, s, m, h)"
)]
pub struct DurationError(String);

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(s.to_owned());
        if s.is_empty() {
            return Err(err());
        }
        let mut total_ms: f64 = 0.0;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            let (num, after) = rest.split_at(num_len);
            // Same shape as the schema pattern: digits, optionally `.digits`.
            let valid_number = match num.split_once('.') {
                Some((int, frac)) => {
                    !int.is_empty()
                        && !frac.is_empty()
                        && int.bytes().all(|b| b.is_ascii_digit())
                        && frac.bytes().all(|b| b.is_ascii_digit())
                }
                None => !num.is_empty(),
            };
            if !valid_number {
                return Err(err());
            }
            let value: f64 = num.parse().map_err(|_| err())?;
            let (unit_ms, unit_len) = if after.starts_with("ms") {
                (1.0, 2)
            } else if after.starts_with('s') {
                (1_000.0, 1)
            } else if after.starts_with('m') {
                (60_000.0, 1)
            } else if after.starts_with('h') {
                (3_600_000.0, 1)
            } else {
                return Err(err());
            };
            total_ms += value * unit_ms;
            rest = &after[unit_len..];
        }
        // Durations beyond ~292 million years are not meaningful here.
        if !total_ms.is_finite() || total_ms > 9.0e15 {
            return Err(err());
        }
        Ok(Duration(StdDuration::from_micros(
            (total_ms * 1_000.0).round() as u64,
        )))
    }
}

impl fmt::Display for Duration {
    /// Canonical form: `1h30m`, `5m`, `45s`, `1m0s500ms` collapses to
    /// `1m500ms`, zero is `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ms = self.as_millis();
        if total_ms == 0 {
            return f.write_str("0s");
        }
        let (h, rem) = (total_ms / 3_600_000, total_ms % 3_600_000);
        let (m, rem) = (rem / 60_000, rem % 60_000);
        let (s, ms) = (rem / 1_000, rem % 1_000);
        for (value, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
            if value > 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_style_durations() {
        let cases = [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("250ms", 250),
            ("1.5h", 5_400_000),
            ("0s", 0),
        ];
        for (text, ms) in cases {
            assert_eq!(
                text.parse::<Duration>().map(Duration::as_millis),
                Ok(ms),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_malformed_durations_with_an_example() {
        for bad in [
            "",
            "5",
            "5 minutes",
            "m5",
            "1d",
            "-5s",
            "1.s",
            ".5s",
            "5M",
            "1h 30m",
        ] {
            let err = bad.parse::<Duration>().err().map(|e| e.to_string());
            assert!(
                err.is_some_and(|e| e.contains("e.g. 30s")),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn displays_canonically() {
        for (text, canon) in [
            ("90s", "1m30s"),
            ("1h", "1h"),
            ("0ms", "0s"),
            ("1500ms", "1s500ms"),
        ] {
            assert_eq!(
                text.parse::<Duration>().map(|d| d.to_string()),
                Ok(canon.to_owned())
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn display_round_trips(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            proptest::prop_assert_eq!(d.to_string().parse::<Duration>(), Ok(d));
        }
    }
}
