//! `Rate`: bits per second on the wire, parsed from tc's units.
//!
//! `bit`, `kbit`, `mbit`, `gbit`, `tbit` are SI bits/s; `bps`, `kbps`, `mbps`, `gbps`, `tbps`
//! are bytes/s (as in tc(8)), so `1mbps` is 8 000 000 bit/s. Decimals are allowed (`2.5gbit`).
//! A bare number is bits/s, as in tc.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The lowest rate a topology may give (capacity, guarantee or ceiling): 1 Mbit/s.
///
/// Why a floor: a shaped lane holds at most about `max(queue_delay, 64 KiB / rate)` of frames,
/// plus the debt of one frame in flight, so the time a frame can wait grows as `1 / rate`.
/// At 1 Mbit/s one 64 KiB GSO frame takes 0.52 s and the worst wait is about 1.6 s; at
/// 1 bit/s it was ten days (issue 15). Rates below this are refused by validation, and the
/// shaper raises any ceiling below it to it.
pub const MIN_RATE: Rate = Rate(1_000_000);

/// A rate in bits per second.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rate(u64);

/// Why a rate string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateParseError {
    #[error("Malformed rate {0:?}: expected a number and a tc unit such as 600mbit or 2.5gbit")]
    Malformed(String),
    #[error(
        "Unknown rate unit {unit:?} in {value:?}: use bit, kbit, mbit, gbit, tbit (bits/s) or bps, kbps, mbps, gbps, tbps (bytes/s)"
    )]
    UnknownUnit { value: String, unit: String },
    #[error("Rate {0:?} is not positive")]
    NotPositive(String),
    #[error("Rate {0:?} is too large")]
    TooLarge(String),
}

impl Rate {
    /// Build a rate from bits per second.
    pub const fn from_bits_per_sec(bits: u64) -> Rate {
        Rate(bits)
    }

    /// Return the rate in bits per second.
    pub const fn bits_per_sec(self) -> u64 {
        self.0
    }

    /// Return the rate in bytes per second (rounded down).
    pub const fn bytes_per_sec(self) -> u64 {
        self.0 / 8
    }
}

impl FromStr for Rate {
    type Err = RateParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| RateParseError::Malformed(s.to_string()))?;
        let multiplier: f64 = match unit.to_ascii_lowercase().as_str() {
            "" | "bit" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            "tbit" => 1e12,
            "bps" => 8.0,
            "kbps" => 8e3,
            "mbps" => 8e6,
            "gbps" => 8e9,
            "tbps" => 8e12,
            other => {
                return Err(RateParseError::UnknownUnit {
                    value: s.to_string(),
                    unit: other.to_string(),
                });
            }
        };
        if !number.is_finite() {
            return Err(RateParseError::Malformed(s.to_string()));
        }
        let bits = (number * multiplier).round();
        if bits <= 0.0 {
            return Err(RateParseError::NotPositive(s.to_string()));
        }
        // 2^63 bit/s is far beyond any link; refusing it keeps later arithmetic in range.
        if bits >= 9.2e18 {
            return Err(RateParseError::TooLarge(s.to_string()));
        }
        #[allow(clippy::cast_possible_truncation)] // range checked just above
        Ok(Rate(bits as u64))
    }
}

impl fmt::Display for Rate {
    /// Show the largest tc unit that keeps the figure exact, e.g. `600mbit`, `2500mbit`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1_000_000_000_000, "tbit"),
            (1_000_000_000, "gbit"),
            (1_000_000, "mbit"),
            (1_000, "kbit"),
        ];
        for (scale, unit) in UNITS {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{}", self.0 / scale, unit);
            }
        }
        write!(f, "{}bit", self.0)
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tc_units() {
        let cases = [
            ("1gbit", 1_000_000_000),
            ("600mbit", 600_000_000),
            ("2.5gbit", 2_500_000_000),
            ("64kbit", 64_000),
            ("1tbit", 1_000_000_000_000),
            ("100bit", 100),
            ("100", 100),
            ("1mbps", 8_000_000),
            ("1.5kbps", 12_000),
            ("1gbps", 8_000_000_000),
            ("10MBit", 10_000_000),
        ];
        for (text, bits) in cases {
            assert_eq!(text.parse::<Rate>().unwrap().bits_per_sec(), bits, "{text}");
        }
    }

    #[test]
    fn rejects_bad_rates() {
        assert!(matches!(
            "0mbit".parse::<Rate>(),
            Err(RateParseError::NotPositive(_))
        ));
        assert!(matches!(
            "-5mbit".parse::<Rate>(),
            Err(RateParseError::NotPositive(_))
        ));
        assert!(matches!(
            "5mb".parse::<Rate>(),
            Err(RateParseError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "fast".parse::<Rate>(),
            Err(RateParseError::Malformed(_))
        ));
        assert!(matches!(
            "".parse::<Rate>(),
            Err(RateParseError::Malformed(_))
        ));
        assert!(matches!(
            "99999999tbit".parse::<Rate>(),
            Err(RateParseError::TooLarge(_))
        ));
    }

    #[test]
    fn displays_exact_units() {
        assert_eq!(Rate::from_bits_per_sec(600_000_000).to_string(), "600mbit");
        assert_eq!(
            Rate::from_bits_per_sec(2_500_000_000).to_string(),
            "2500mbit"
        );
        assert_eq!(Rate::from_bits_per_sec(1_000_000_000).to_string(), "1gbit");
        assert_eq!(Rate::from_bits_per_sec(1234).to_string(), "1234bit");
    }
}
