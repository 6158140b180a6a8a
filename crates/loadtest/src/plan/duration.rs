//! Durations as people write them — `"30s"`, `"1m30s"`, `"500ms"`, `"2h"` — for every file
//! the CLI reads and writes (scenarios, capacity plans, reports), and as seconds where a report
//! wants numbers.

use std::time::Duration;

/// A duration string that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (write e.g. \"30s\", \"1m30s\", \"500ms\", \"2h\")")]
pub struct ParseError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses durations such as `"30s"`, `"1m"`, `"1m30s"`, `"500ms"`, `"1.5s"`, `"2h"`.
///
/// A duration is one or more `<number><unit>` parts (units `h`, `m`, `s`, `ms`), added together.
pub fn parse(input: &str) -> Result<Duration, ParseError> {
    let error = |reason| ParseError {
        input: input.to_string(),
        reason,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(error("empty"));
    }

    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after_number) = rest.split_at(number_len);
        let unit_len = after_number
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_len);

        if number.is_empty() {
            return Err(error("expected a number"));
        }
        let value: f64 = number.parse().map_err(|_| error("bad number"))?;
        let nanos_per_unit = match unit {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "" => return Err(error("missing unit")),
            _ => return Err(error("unknown unit")),
        };
        // Counting in whole nanoseconds keeps "300ms" exact, which seconds as f64 would not.
        let nanos = (value * nanos_per_unit).round();
        if !(0.0..u64::MAX as f64).contains(&nanos) {
            return Err(error("out of range"));
        }
        let part = Duration::from_nanos(nanos as u64);
        total = total
            .checked_add(part)
            .ok_or_else(|| error("out of range"))?;
        rest = after_unit.trim_start();
    }
    Ok(total)
}

/// Formats a duration the way [`parse`] reads it, e.g. `1m30s`, `500ms`.
pub fn format(duration: Duration) -> String {
    let total_ms = duration.as_millis();
    if total_ms == 0 {
        return "0s".to_string();
    }
    let (hours, minutes) = (total_ms / 3_600_000, total_ms / 60_000 % 60);
    let (seconds, millis) = (total_ms / 1000 % 60, total_ms % 1000);
    let mut text = String::new();
    for (value, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")] {
        if value > 0 {
            text.push_str(&format!("{value}{unit}"));
        }
    }
    text
}

/// `#[serde(with = "duration::text")]`: a duration as text (`"30s"`).
pub mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(default, with = "duration::optional_text")]`: an optional duration as text.
pub mod optional_text {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::text::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::text::deserialize(d).map(Some)
    }
}

/// `#[serde(with = "duration::seconds")]`: a duration as seconds (`15.0`), for JSON reports.
pub mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let seconds = f64::deserialize(d)?;
        Duration::try_from_secs_f64(seconds).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        let cases = [
            ("30s", Duration::from_secs(30)),
            ("1m", Duration::from_secs(60)),
            ("3m", Duration::from_secs(180)),
            ("1m30s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
            ("2h", Duration::from_secs(7200)),
            ("0s", Duration::ZERO),
            (" 1m 5s ", Duration::from_secs(65)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn rejects_bad_durations() {
        for text in ["", "30", "s", "10x", "1..5s", "-3s", "1m30"] {
            assert!(parse(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn formats_durations_back() {
        for text in ["1m30s", "500ms", "2h", "3m", "1s250ms"] {
            let duration = parse(text).expect("valid");
            assert_eq!(format(duration), text);
        }
    }
}
