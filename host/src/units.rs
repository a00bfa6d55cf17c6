//! Durations and byte sizes as operators write them (`"90s"`, `"1h30m"`,
//! `"64MiB"`), and the serde adapters that read them into `Duration` and `u64`
//! fields and write durations back in the same words. Shared by the config
//! file, the admin API bodies and the log lines that print a wait.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serializer};

const DURATION_UNITS: &str = "use ms, s, m, h or d";

/// Parses `"250ms"`, `"90s"`, `"5m"`, `"2h"`, `"7d"` and sums like `"1h30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = |why: &str| format!("invalid duration \"{text}\": {why}");
    if text.is_empty() {
        return Err(invalid("expected a number and a unit, like \"90s\""));
    }
    let mut total_millis: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|character: char| !character.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid("expected a number and a unit, like \"90s\""));
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid("too long"))?;
        rest = &rest[digits..];
        if rest.starts_with(['.', ',']) {
            return Err(invalid(
                "use whole numbers with a smaller unit, like \"90m\"",
            ));
        }
        let unit_length = rest
            .find(|character: char| character.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_length];
        rest = &rest[unit_length..];
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(invalid(&format!(
                    "the number needs a unit; {DURATION_UNITS}"
                )));
            }
            other => {
                return Err(invalid(&format!(
                    "unknown unit \"{other}\"; {DURATION_UNITS}"
                )));
            }
        };
        total_millis = number
            .checked_mul(millis_per_unit)
            .and_then(|millis| total_millis.checked_add(millis))
            .ok_or_else(|| invalid("too long"))?;
    }
    Ok(Duration::from_millis(total_millis))
}

/// The shortest text [`parse_duration`] reads back as `duration`, to the
/// millisecond: `"90s"` comes back as `"1m30s"`.
pub fn format_duration(duration: Duration) -> String {
    let mut millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    let mut text = String::new();
    for (unit, unit_millis) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        let count = millis / unit_millis;
        if count > 0 {
            text.push_str(&format!("{count}{unit}"));
            millis %= unit_millis;
        }
    }
    text
}

/// Parses a byte count: an integer or `"512KiB"`, `"64MiB"`, `"1GiB"`, `"10MB"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = |why: &str| format!("invalid size \"{text}\": {why}");
    let trimmed = text.trim();
    let digits = trimmed
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(trimmed.len());
    if digits == 0 {
        return Err(invalid("expected a number of bytes, like \"64MiB\""));
    }
    let number: u64 = trimmed[..digits]
        .parse()
        .map_err(|_| invalid("too large"))?;
    let unit = trimmed[digits..].trim_start();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => {
            return Err(invalid(&format!(
                "unknown unit \"{unit}\"; use B, KB, MB, GB, KiB, MiB or GiB"
            )));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| invalid("too large"))
}

/// Reads a string with `parse`; anything but a string is refused as not
/// being `expecting`. The building block of every text-typed field.
pub fn deserialize_text<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct TextVisitor<T> {
        expecting: &'static str,
        parse: fn(&str) -> Result<T, String>,
    }
    impl<T> Visitor<'_> for TextVisitor<T> {
        type Value = T;
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
            (self.parse)(text).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(TextVisitor { expecting, parse })
}

/// `#[serde(with = "units::duration")]`: a `Duration` written `"90s"`.
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*duration))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserialize_text(
            deserializer,
            "a duration string like \"90s\"",
            parse_duration,
        )
    }
}

/// `#[serde(default, with = "units::optional_duration")]`: an absent or
/// `"90s"`-written `Duration`.
pub mod optional_duration {
    use super::*;

    pub fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => super::duration::serialize(duration, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(deserializer).map(Some)
    }
}

/// `#[serde(deserialize_with = "units::size")]`: a byte count written as an
/// integer or `"64MiB"`.
pub fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct SizeVisitor;
    impl Visitor<'_> for SizeVisitor {
        type Value = u64;
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a size like \"64MiB\" or a number of bytes")
        }
        fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<u64, E> {
            Ok(bytes)
        }
        fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<u64, E> {
            u64::try_from(bytes).map_err(|_| E::invalid_value(de::Unexpected::Signed(bytes), &self))
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            parse_size(text).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(SizeVisitor)
}

/// Reads any value as text: strings as they are, anything else as its JSON
/// (`3`, `true`, `["a","b"]`). Plugin settings are text on the plugin side.
pub fn setting_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    })
}

/// `#[serde(deserialize_with = "units::setting_texts")]`: a table of plugin
/// settings, each read by [`setting_text`].
pub fn setting_texts<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromIterator<(String, String)>,
{
    struct Settings<T>(PhantomData<T>);
    impl<'de, T: FromIterator<(String, String)>> Visitor<'de> for Settings<T> {
        type Value = T;
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a table")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let mut settings = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                settings.push((name, map.next_value::<SettingText>()?.0));
            }
            Ok(settings.into_iter().collect())
        }
    }
    deserializer.deserialize_map(Settings(PhantomData))
}

struct SettingText(String);

impl<'de> Deserialize<'de> for SettingText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        setting_text(deserializer).map(SettingText)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        for (text, expected) in [
            ("250ms", Duration::from_millis(250)),
            ("90s", Duration::from_secs(90)),
            ("5m", Duration::from_secs(300)),
            ("2h", Duration::from_secs(7200)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("1h30m", Duration::from_secs(5400)),
            ("1s500ms", Duration::from_millis(1500)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
            assert_eq!(
                parse_duration(&format_duration(expected)),
                Ok(expected),
                "{text}"
            );
        }
        for (duration, text) in [
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(7 * 86_400), "7d"),
            (Duration::from_millis(100), "100ms"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(format_duration(duration), text);
        }
    }

    #[test]
    fn bad_durations_name_the_text() {
        for (text, problem) in [
            ("", "expected a number and a unit, like \"90s\""),
            ("90", "the number needs a unit; use ms, s, m, h or d"),
            ("5x", "unknown unit \"x\"; use ms, s, m, h or d"),
            (
                "1.5h",
                "use whole numbers with a smaller unit, like \"90m\"",
            ),
            ("-5s", "expected a number and a unit, like \"90s\""),
            ("99999999999999999999d", "too long"),
        ] {
            assert_eq!(
                parse_duration(text),
                Err(format!("invalid duration \"{text}\": {problem}"))
            );
        }
    }

    #[test]
    fn sizes_parse() {
        for (text, bytes) in [
            ("64MiB", 64 << 20),
            ("512KiB", 512 << 10),
            ("1GiB", 1 << 30),
            ("10MB", 10_000_000),
            ("2 kb", 2_000),
            ("4096", 4096),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for (text, problem) in [
            (
                "64Mb!",
                "unknown unit \"Mb!\"; use B, KB, MB, GB, KiB, MiB or GiB",
            ),
            ("MiB", "expected a number of bytes, like \"64MiB\""),
        ] {
            assert_eq!(
                parse_size(text),
                Err(format!("invalid size \"{text}\": {problem}"))
            );
        }
    }
}
