//! Repeaters (CommCare's "Data Forwarding"): which payloads of a domain go to
//! which connection, in which format, with which filters and retry settings.
//! [`RepeaterSpec`] is the one shape the config file's `[[repeaters]]`, the
//! admin API's JSON bodies and the store share, read by serde and checked by
//! [`RepeaterSpec::validate`]; adding a key is adding a field here.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::field::{self, FieldError, check_object_name, check_plugin_name};
use crate::record::RetryOverride;
use crate::units;

/// Highest `max_workers` a repeater may ask for.
pub const MAX_WORKERS_LIMIT: usize = 64;

/// What a repeater forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PayloadKind {
    Form,
    Case,
    FormStub,
    AppSchema,
}

impl PayloadKind {
    pub const ALL: [PayloadKind; 4] = [Self::Form, Self::Case, Self::FormStub, Self::AppSchema];

    pub fn as_str(self) -> &'static str {
        match self {
            PayloadKind::Form => "form",
            PayloadKind::Case => "case",
            PayloadKind::FormStub => "form-stub",
            PayloadKind::AppSchema => "app-schema",
        }
    }
}

/// HTTP method of every send of a repeater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HttpMethod {
    #[default]
    Post,
    Put,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
        }
    }
}

/// Which case changes a case repeater forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CaseEvents {
    #[default]
    Any,
    Create,
    Update,
}

impl CaseEvents {
    pub fn as_str(self) -> &'static str {
        match self {
            CaseEvents::Any => "any",
            CaseEvents::Create => "create",
            CaseEvents::Update => "update",
        }
    }
}

/// A word that is not one of an enum's names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} \"{found}\"; expected {expected}{}", suggestion(near))]
pub struct UnknownName {
    pub what: &'static str,
    pub found: String,
    pub expected: &'static str,
    /// The name `found` is a near miss of, if any.
    pub near: Option<String>,
}

fn suggestion(near: &Option<String>) -> String {
    near.as_ref()
        .map(|near| format!("; did you mean \"{near}\"?"))
        .unwrap_or_default()
}

impl UnknownName {
    /// The one of `names` whose `as_str` is `text`.
    fn find<T: Copy>(
        text: &str,
        names: &[T],
        as_str: fn(T) -> &'static str,
        what: &'static str,
        expected: &'static str,
    ) -> Result<T, UnknownName> {
        names
            .iter()
            .copied()
            .find(|name| as_str(*name) == text)
            .ok_or_else(|| {
                let known: Vec<String> =
                    names.iter().map(|name| as_str(*name).to_owned()).collect();
                UnknownName {
                    what,
                    found: text.to_owned(),
                    expected,
                    near: field::did_you_mean(text, &known).map(str::to_owned),
                }
            })
    }
}

impl FromStr for PayloadKind {
    type Err = UnknownName;
    fn from_str(text: &str) -> Result<Self, UnknownName> {
        UnknownName::find(
            text,
            &PayloadKind::ALL,
            PayloadKind::as_str,
            "payload kind",
            "form, case, form-stub or app-schema",
        )
    }
}

impl FromStr for HttpMethod {
    type Err = UnknownName;
    fn from_str(text: &str) -> Result<Self, UnknownName> {
        if text.eq_ignore_ascii_case("POST") {
            Ok(HttpMethod::Post)
        } else if text.eq_ignore_ascii_case("PUT") {
            Ok(HttpMethod::Put)
        } else {
            Err(UnknownName {
                what: "method",
                found: text.to_owned(),
                expected: "POST or PUT",
                near: None,
            })
        }
    }
}

impl FromStr for CaseEvents {
    type Err = UnknownName;
    fn from_str(text: &str) -> Result<Self, UnknownName> {
        UnknownName::find(
            text,
            &[CaseEvents::Any, CaseEvents::Create, CaseEvents::Update],
            CaseEvents::as_str,
            "case event",
            "any, create or update",
        )
    }
}

/// Display, Serialize and Deserialize through `as_str` and `FromStr`.
macro_rules! text_enum {
    ($($name:ty => $expecting:literal),*) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(self.as_str())
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                units::deserialize_text(deserializer, $expecting, |text| {
                    text.parse().map_err(|error: UnknownName| error.to_string())
                })
            }
        }
    )*};
}

text_enum!(
    PayloadKind => "a payload kind like \"form\"",
    HttpMethod => "POST or PUT",
    CaseEvents => "any, create or update"
);

/// A data-forwarding rule (CommCare's "Data Forwarding"): which payloads of a
/// domain go to which connection, in which format. Keys left out take the
/// defaults of [`RepeaterSpec::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeaterSpec {
    pub name: String,
    pub kind: PayloadKind,
    /// The connection's name, in the same domain.
    pub connection: String,
    /// The payload plugin's name.
    pub format: String,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub method: HttpMethod,
    /// Parallel sends; 1 delivers in registration order.
    #[serde(default = "default_max_workers")]
    pub max_workers: usize,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "field::optional_table"
    )]
    pub retry: Option<RetryOverride>,
    /// Status codes to retry on top of the standard ones.
    #[serde(default)]
    pub retry_codes_add: Vec<u16>,
    /// Standard retryable status codes to treat as rejections instead.
    #[serde(default)]
    pub retry_codes_remove: Vec<u16>,
    /// Form repeaters: add `?app_id=` when the form has one.
    #[serde(default = "yes")]
    pub include_app_id_param: bool,
    /// Form and form-stub repeaters: only forms with one of these xmlns (empty = all).
    #[serde(default)]
    pub xmlns: Vec<String>,
    /// Form, form-stub and case repeaters: skip what these user ids submitted.
    #[serde(default)]
    pub user_blocklist: Vec<String>,
    /// Case repeaters: only cases of these types (empty = all).
    #[serde(default)]
    pub case_types: Vec<String>,
    /// Case repeaters: which changes to forward.
    #[serde(default)]
    pub case_events: CaseEvents,
    /// Handed to the format plugin as is; values that are not strings are
    /// handed over as JSON.
    #[serde(default, deserialize_with = "units::setting_texts")]
    pub settings: BTreeMap<String, String>,
}

fn default_max_workers() -> usize {
    8
}

fn yes() -> bool {
    true
}

impl RepeaterSpec {
    /// A repeater with every option at its default.
    pub fn new(
        name: impl Into<String>,
        kind: PayloadKind,
        connection: impl Into<String>,
        format: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            kind,
            connection: connection.into(),
            format: format.into(),
            paused: false,
            method: HttpMethod::default(),
            max_workers: default_max_workers(),
            retry: None,
            retry_codes_add: Vec::new(),
            retry_codes_remove: Vec::new(),
            include_app_id_param: yes(),
            xmlns: Vec::new(),
            user_blocklist: Vec::new(),
            case_types: Vec::new(),
            case_events: CaseEvents::default(),
            settings: BTreeMap::new(),
        }
    }

    /// Reads a repeater from an admin API body: the domain is in the URL path and
    /// `name` may be left out (empty) when the path names the repeater. Call
    /// [`RepeaterSpec::validate`] next.
    pub fn from_json(value: serde_json::Value) -> Result<Self, FieldError> {
        field::from_json_body(value)
    }

    /// Checks the values; field names are relative to the repeater. Whether the
    /// connection and the format plugin exist is for the caller to check.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_object_name(&self.name).map_err(|problem| FieldError::new("name", problem))?;
        check_object_name(&self.connection)
            .map_err(|problem| FieldError::new("connection", problem))?;
        check_plugin_name(&self.format).map_err(|problem| FieldError::new("format", problem))?;
        if !(1..=MAX_WORKERS_LIMIT).contains(&self.max_workers) {
            return Err(FieldError::new(
                "max_workers",
                format!(
                    "must be between 1 and {MAX_WORKERS_LIMIT}, found {}",
                    self.max_workers
                ),
            ));
        }
        if let Some(retry) = &self.retry {
            retry.validate().map_err(|error| error.within("retry"))?;
        }
        self.check_retry_codes()?;
        self.check_filters_fit_kind()?;
        for (field, values) in [
            ("xmlns", &self.xmlns),
            ("user_blocklist", &self.user_blocklist),
            ("case_types", &self.case_types),
        ] {
            if let Some(index) = values.iter().position(|value| value.is_empty()) {
                return Err(FieldError::new(
                    format!("{field}[{index}]"),
                    "must not be empty",
                ));
            }
        }
        if self.settings.keys().any(|key| key.is_empty()) {
            return Err(FieldError::new("settings", "a setting has an empty name"));
        }
        Ok(())
    }

    fn check_retry_codes(&self) -> Result<(), FieldError> {
        for (field, codes) in [
            ("retry_codes_add", &self.retry_codes_add),
            ("retry_codes_remove", &self.retry_codes_remove),
        ] {
            for (index, &code) in codes.iter().enumerate() {
                if !(100..=599).contains(&code) {
                    return Err(FieldError::new(
                        format!("{field}[{index}]"),
                        format!("must be an HTTP status code from 100 to 599, found {code}"),
                    ));
                }
            }
        }
        for (index, code) in self.retry_codes_add.iter().enumerate() {
            if (200..300).contains(code) {
                return Err(FieldError::new(
                    format!("retry_codes_add[{index}]"),
                    format!("{code} is a success and cannot be retried"),
                ));
            }
        }
        for (index, code) in self.retry_codes_remove.iter().enumerate() {
            if self.retry_codes_add.contains(code) {
                return Err(FieldError::new(
                    format!("retry_codes_remove[{index}]"),
                    format!("{code} is also in retry_codes_add"),
                ));
            }
        }
        Ok(())
    }

    /// Filters are refused on kinds they cannot apply to, rather than ignored.
    fn check_filters_fit_kind(&self) -> Result<(), FieldError> {
        let kind = self.kind;
        let misplaced = |field: &str, applies_to: &str| {
            FieldError::new(
                field,
                format!("only applies to {applies_to} repeaters, not to kind \"{kind}\""),
            )
        };
        if kind != PayloadKind::Case {
            if !self.case_types.is_empty() {
                return Err(misplaced("case_types", "case"));
            }
            if self.case_events != CaseEvents::Any {
                return Err(misplaced("case_events", "case"));
            }
        }
        let form_like = matches!(kind, PayloadKind::Form | PayloadKind::FormStub);
        if !form_like && !self.xmlns.is_empty() {
            return Err(misplaced("xmlns", "form and form-stub"));
        }
        if kind != PayloadKind::Form && !self.include_app_id_param {
            return Err(misplaced("include_app_id_param", "form"));
        }
        if kind == PayloadKind::AppSchema && !self.user_blocklist.is_empty() {
            return Err(misplaced("user_blocklist", "form, form-stub and case"));
        }
        Ok(())
    }
}
