//! Field errors and the value checks that the config file and the admin API
//! share: a [`FieldError`] names the key path of a wrong value
//! (`repeaters[2].retry.max_attempts`), the `check_*` functions hold the rules
//! for names, URLs, header names and e-mail addresses, and [`from_serde`] turns
//! what serde reports (a path and a message) into a `FieldError` in our own
//! words, with a "did you mean" for a near miss. Both readers of
//! connections and repeaters, TOML and JSON, go through here, so a key reads
//! and fails the same way in both.

use std::fmt;

use url::Url;

/// A value that is wrong, with the key path it is at (`auth.password`,
/// `retry_codes_add[1]`); an empty path means the object itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The same error seen from an enclosing object: `within("repeaters[2]")`
    /// turns `connection` into `repeaters[2].connection`.
    pub fn within(self, prefix: &str) -> Self {
        let field = match (prefix.is_empty(), self.field.is_empty()) {
            (true, _) => self.field,
            (false, true) => prefix.to_owned(),
            (false, false) if self.field.starts_with('[') => format!("{prefix}{}", self.field),
            (false, false) => format!("{prefix}.{}", self.field),
        };
        Self { field, ..self }
    }

    /// This error as the error of a `Deserialize` impl that reads a key of its
    /// own (`auth.type`, `smtp.url`): the field rides in the message through
    /// the deserializer's error type and [`from_serde`] takes it out again.
    pub fn into_serde<E: serde::de::Error>(self) -> E {
        E::custom(Nested(self))
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            formatter.write_str(&self.problem)
        } else {
            write!(formatter, "{}: {}", self.field, self.problem)
        }
    }
}

/// Marks a serde message that carries a field of its own (see
/// [`FieldError::into_serde`]); a control character no key or problem holds.
const NESTED_MARK: char = '\u{1}';

/// Whether a serde message carries a field of its own.
pub fn is_nested(message: &str) -> bool {
    message.starts_with(NESTED_MARK)
}

/// A [`FieldError`] displayed for the trip through a serde error type.
pub struct Nested(pub FieldError);

impl fmt::Display for Nested {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{NESTED_MARK}{}{NESTED_MARK}{}",
            self.0.field, self.0.problem
        )
    }
}

// ---------------------------------------------------------------------------
// Serde's reports in our words
// ---------------------------------------------------------------------------

/// Which document a value came from; it decides a few words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The config file: TOML words ("a table"), environment references allowed.
    File,
    /// An admin API body: JSON words ("an object").
    Api,
}

impl Origin {
    fn table_word(self) -> &'static str {
        match self {
            Origin::File => "a table",
            Origin::Api => "an object",
        }
    }
}

/// Keys that hold secrets; in the file each may instead be given as
/// `<key>_env = "VAR"`.
pub const SECRET_KEYS: &[&str] = &["admin_token", "password", "token", "key", "client_secret"];

/// Which secret a key `<name>_env` of a table names, when it is one:
/// `password_env` names `password`. In a plugin's `auth` table every setting
/// is a secret; the keys of free-form tables (`headers`, `settings`) are data
/// and never references.
pub fn env_reference(key: &str, in_plugin_auth: bool) -> Option<&str> {
    let name = key.strip_suffix("_env").filter(|name| !name.is_empty())?;
    (in_plugin_auth || SECRET_KEYS.contains(&name)).then_some(name)
}

/// Tables whose keys are data, not config keys.
pub const FREE_FORM_TABLES: &[&str] = &["headers", "settings"];

/// Reads a connection or repeater from an admin API body. JSON `null` reads
/// as an absent key, `name` may be left to the URL path (read as empty), and
/// a secret named by environment variable is refused: an API caller may not
/// read the gateway's environment.
pub fn from_json_body<T: serde::de::DeserializeOwned>(
    mut value: serde_json::Value,
) -> Result<T, FieldError> {
    // Checked here because serde's derived structs would also read an array,
    // by position.
    let serde_json::Value::Object(object) = &mut value else {
        let found = match value {
            serde_json::Value::Array(_) => "an array".to_owned(),
            other => format!("{other}"),
        };
        return Err(FieldError::new(
            "",
            format!("expected an object, found {found}"),
        ));
    };
    object
        .entry("name")
        .or_insert_with(|| serde_json::Value::String(String::new()));
    refuse_env_references(&mut value, "", true)?;
    serde_path_to_error::deserialize(value)
        .map_err(|error| from_serde(error.path(), &error.inner().to_string(), Origin::Api))
}

/// Drops `null`s from objects and refuses `<secret>_env` keys, at any depth
/// (`check_env` is off inside free-form tables and a plugin's `auth`).
fn refuse_env_references(
    value: &mut serde_json::Value,
    path: &str,
    check_env: bool,
) -> Result<(), FieldError> {
    match value {
        serde_json::Value::Object(object) => {
            object.retain(|_, value| !value.is_null());
            let in_plugin_auth = object.get("type").and_then(|tag| tag.as_str()) == Some("plugin");
            let check_env = check_env && !in_plugin_auth;
            for (key, value) in object.iter_mut() {
                let field = key_path(path, key);
                if check_env && env_reference(key, false).is_some() {
                    return Err(FieldError::new(
                        field,
                        "environment variables can only be named in the config file",
                    ));
                }
                let free_form = FREE_FORM_TABLES.contains(&key.as_str());
                refuse_env_references(value, &field, check_env && !free_form)?;
            }
            Ok(())
        }
        serde_json::Value::Array(items) => {
            items.iter_mut().enumerate().try_for_each(|(index, item)| {
                refuse_env_references(item, &format!("{path}[{index}]"), check_env)
            })
        }
        _ => Ok(()),
    }
}

/// The error serde reported at `path` (as [`serde_path_to_error`] renders
/// it) with `message`, in our words: `unknown key "max_attemps"; did you mean
/// "max_attempts"?`, `missing key "url"`, `expected a string, found integer 8080`.
pub fn from_serde(path: &serde_path_to_error::Path, message: &str, origin: Origin) -> FieldError {
    let segments: Vec<_> = path.iter().collect();
    // An unknown key's path ends in the key itself; the error is the table's.
    let segments = match segments.split_last() {
        Some((_, table)) if message.starts_with("unknown field ") => table,
        _ => &segments[..],
    };
    from_message(render_path(segments), message, origin)
}

/// [`from_serde`] for a path already rendered (`repeaters[0].retry`).
fn from_message(field: String, message: &str, origin: Origin) -> FieldError {
    if let Some((nested, problem)) = message
        .strip_prefix(NESTED_MARK)
        .and_then(|rest| rest.split_once(NESTED_MARK))
    {
        return FieldError::new(nested, problem_from_serde(problem, origin)).within(&field);
    }
    FieldError::new(field, problem_from_serde(message, origin))
}

fn render_path(segments: &[&serde_path_to_error::Segment]) -> String {
    use serde_path_to_error::Segment;
    let mut field = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                field = key_path(&field, key);
            }
            Segment::Unknown => field = key_path(&field, "?"),
        }
    }
    field
}

fn problem_from_serde(message: &str, origin: Origin) -> String {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let names = backticked(rest);
        if let Some((unknown, expected)) = names.split_first() {
            return unknown_key(unknown, expected);
        }
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        let key = backticked(rest).into_iter().next().unwrap_or_default();
        return match origin {
            Origin::File if SECRET_KEYS.contains(&key.as_str()) => {
                format!("missing key \"{key}\" (or \"{key}_env\")")
            }
            _ => format!("missing key \"{key}\""),
        };
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((found, expected)) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.rsplit_once(", expected "))
        {
            let expected = match (expected, found, origin) {
                // `[domains]` written for `[[domains]]`.
                ("a sequence", "map", Origin::File) => "an array of tables".to_owned(),
                _ => expected_words(expected, origin),
            };
            return format!("expected {expected}, found {}", found_words(found, origin));
        }
    }
    message.to_owned()
}

/// `unknown key "x"`, then the near miss or the keys there are.
pub fn unknown_key(unknown: &str, expected: &[String]) -> String {
    let mut problem = format!("unknown key \"{unknown}\"");
    match did_you_mean(unknown, expected) {
        Some(near) => problem.push_str(&format!("; did you mean \"{near}\"?")),
        None => match expected {
            [] => {}
            [only] => problem.push_str(&format!("; expected \"{only}\"")),
            _ => problem.push_str(&format!("; expected one of {}", expected.join(", "))),
        },
    }
    problem
}

/// The candidate closest to `word`, when it is close enough to be a typo.
pub fn did_you_mean<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|candidate| (strsim::jaro_winkler(word, candidate), candidate))
        .filter(|(similarity, _)| *similarity >= 0.8)
        .max_by(|left, right| left.0.total_cmp(&right.0))
        .map(|(_, candidate)| candidate.as_str())
}

/// The names serde quotes in backticks, in order.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Serde's `expected` words (a type's name, "a sequence") as a user reads them.
fn expected_words(expected: &str, origin: Origin) -> String {
    match expected {
        "a boolean" => "true or false".to_owned(),
        "u16" => format!("an integer from 0 to {}", u16::MAX),
        "u32" => format!("an integer from 0 to {}", u32::MAX),
        "u64" | "usize" => format!("an integer from 0 to {}", u64::MAX),
        "f32" | "f64" => "a number".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a map" | "a table" => origin.table_word().to_owned(),
        other if other.starts_with("struct ") => origin.table_word().to_owned(),
        other => other.to_owned(),
    }
}

/// Serde's `unexpected` words ("integer `8080`", "map") as a user reads them.
fn found_words(found: &str, origin: Origin) -> String {
    match found {
        "map" => origin.table_word().to_owned(),
        "sequence" => "an array".to_owned(),
        "null" | "unit value" => "null".to_owned(),
        other => other.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Tables only
// ---------------------------------------------------------------------------

/// `#[serde(deserialize_with = "field::table")]` on a struct-typed field:
/// read it from a table only. A derived struct also reads an array, by
/// position, so `retry = [3]` would quietly mean `max_attempts = 3`.
pub fn table<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    deserializer.deserialize_map(TableOnly(std::marker::PhantomData))
}

/// [`table`] for an optional field (with `#[serde(default)]`).
pub fn optional_table<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    table(deserializer).map(Some)
}

/// [`table`] for an array of tables (`[[domains]]`).
pub fn tables<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Item<T>(T);
    impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Item<T> {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            table(deserializer).map(Item)
        }
    }
    let items: Vec<Item<T>> = serde::Deserialize::deserialize(deserializer)?;
    Ok(items.into_iter().map(|Item(item)| item).collect())
}

struct TableOnly<T>(std::marker::PhantomData<T>);

impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for TableOnly<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a table")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
    }
}

// ---------------------------------------------------------------------------
// Value checks
// ---------------------------------------------------------------------------

pub fn check_not_empty(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    Ok(())
}

/// Connection and repeater names: `[A-Za-z0-9_.-]{1,64}`.
pub fn check_object_name(name: &str) -> Result<(), String> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'));
    valid.then_some(()).ok_or_else(|| {
        format!("invalid name \"{name}\": use 1 to 64 letters, digits, '_', '.' and '-'")
    })
}

/// Plugin names, which are also file names: `[a-z0-9][a-z0-9_-]*`.
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'_' | b'-')
        });
    valid.then_some(()).ok_or_else(|| {
        format!(
            "invalid plugin name \"{name}\": use lowercase letters, digits, '_' and '-', starting with a letter or digit"
        )
    })
}

/// An absolute http(s) URL with a host and no credentials.
pub fn check_http_url(text: &str) -> Result<(), String> {
    let url = Url::parse(text).map_err(|error| format!("invalid url \"{text}\": {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "url \"{text}\" must start with http:// or https://"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("url \"{text}\" has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // The url is not a secret and is logged, so it must not carry one; the
        // message leaves the url out for the same reason.
        return Err("must not carry a username or password; put them in auth".to_owned());
    }
    Ok(())
}

/// `local@host`, without display name.
pub fn is_email_address(text: &str) -> bool {
    let Some((local, host)) = text.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local
            .chars()
            .all(|character| character.is_ascii_graphic() && !"@<>()[]\\,;:\"".contains(character));
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        });
    local_ok && host_ok
}

/// `local@host` or `Display Name <local@host>`.
pub fn is_mailbox(text: &str) -> bool {
    match text
        .strip_suffix('>')
        .and_then(|rest| rest.rsplit_once('<'))
    {
        Some((name, address)) => {
            !name.contains(['\r', '\n', '<', '>']) && is_email_address(address)
        }
        None => is_email_address(text),
    }
}

/// `parent.key`, quoting `key` when it is not a bare TOML key.
pub fn key_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'));
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_near_miss_is_suggested_and_a_far_one_lists_the_keys() {
        let keys = ["max_attempts", "min_wait", "max_wait", "factor"].map(String::from);
        assert_eq!(did_you_mean("max_atempts", &keys), Some("max_attempts"));
        assert_eq!(did_you_mean("colour", &keys), None);
        assert_eq!(
            unknown_key("colour", &keys),
            "unknown key \"colour\"; expected one of max_attempts, min_wait, max_wait, factor"
        );
        assert_eq!(unknown_key("x", &[]), "unknown key \"x\"");
    }

    #[test]
    fn a_nested_error_keeps_its_field_through_serde() {
        let error: serde_json::Error = FieldError::new("type", "unknown auth type").into_serde();
        assert_eq!(
            from_message(
                "connections[0].auth".into(),
                &error.to_string(),
                Origin::File
            ),
            FieldError::new("connections[0].auth.type", "unknown auth type")
        );
    }
}
