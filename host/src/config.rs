//! The gateway's configuration: one model for the TOML file given with
//! `repeatd serve --config FILE`, read and validated once at start-up, with the
//! embedded defaults of `repeatd serve` when no file is given. The connection and
//! repeater specs ([`ConnectionSpec`], [`RepeaterSpec`]) are the same types the
//! admin API takes as JSON bodies and the store keeps, so a key means the same
//! thing everywhere and is checked by the same code.
//!
//! Reading walks the parsed document by hand instead of deriving `Deserialize`, so
//! that every error names its key path (`repeaters[2].connection: …`) and unknown
//! keys are refused by name. Secrets may be given as `<key>_env = "VAR"` and read
//! from the environment, in the file only: a JSON body naming an environment
//! variable is refused, so an API caller cannot read the gateway's environment.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use reqwest::Url;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The environment variable that sets the admin token, overriding the file.
pub const ADMIN_TOKEN_ENV: &str = "REPEATD_ADMIN_TOKEN";

/// Header names a connection may not set because repeatd owns them.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "idempotency-key",
    "transfer-encoding",
];

/// The smallest plugin memory limit: one WebAssembly page.
const MIN_PLUGIN_MEMORY: u64 = 64 * 1024;

/// Highest `max_workers` a repeater may ask for.
pub const MAX_WORKERS_LIMIT: usize = 64;

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// Everything `repeatd serve` runs on. `Config::default()` is the embedded
/// configuration used when no file is given.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub plugin_dir: PathBuf,
    pub admin_token: Option<Secret>,
    pub smtp: Option<SmtpConfig>,
    pub retry: RetryPolicy,
    pub plugins: PluginLimits,
    pub delivery: DeliveryConfig,
    pub ingest: IngestConfig,
    pub domains: Vec<DomainConfig>,
    pub api_tokens: Vec<ApiTokenConfig>,
    pub submitters: Vec<SubmitterConfig>,
    pub connections: Vec<Declared<ConnectionSpec>>,
    pub repeaters: Vec<Declared<RepeaterSpec>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("repeatd-data"),
            plugin_dir: PathBuf::from("plugins.d"),
            admin_token: None,
            smtp: None,
            retry: RetryPolicy::default(),
            plugins: PluginLimits::default(),
            delivery: DeliveryConfig::default(),
            ingest: IngestConfig::default(),
            domains: Vec::new(),
            api_tokens: Vec::new(),
            submitters: Vec::new(),
            connections: Vec::new(),
            repeaters: Vec::new(),
        }
    }
}

/// An object declared in the file for one project space.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared<T> {
    pub domain: String,
    pub spec: T,
}

/// When and how often a failed record is retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all; after the last one fails the record is cancelled.
    pub max_attempts: u32,
    /// The wait after the first failure.
    pub min_wait: Duration,
    /// No wait is longer than this.
    pub max_wait: Duration,
    /// Each wait is `factor` times the previous one.
    pub factor: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            min_wait: Duration::from_secs(60),
            max_wait: Duration::from_secs(7 * 86_400),
            factor: 3.0,
        }
    }
}

impl RetryPolicy {
    /// Checks the policy on its own; field names are relative to the policy.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.max_attempts < 1 {
            return Err(FieldError::new("max_attempts", "must be at least 1"));
        }
        check_factor(self.factor).map_err(|problem| FieldError::new("factor", problem))?;
        check_wait_order(self.min_wait, self.max_wait)
    }
}

/// A repeater's own retry settings; what it leaves out comes from `[retry]`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct RetryOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_optional_duration"
    )]
    pub min_wait: Option<Duration>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_optional_duration"
    )]
    pub max_wait: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
}

impl RetryOverride {
    /// The policy this repeater runs on: its own values over `defaults`.
    pub fn resolve(&self, defaults: &RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            min_wait: self.min_wait.unwrap_or(defaults.min_wait),
            max_wait: self.max_wait.unwrap_or(defaults.max_wait),
            factor: self.factor.unwrap_or(defaults.factor),
        }
    }

    /// Checks the values given; the resolved policy is checked by the caller,
    /// who knows the defaults (see [`RetryPolicy::validate`]).
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.max_attempts == Some(0) {
            return Err(FieldError::new("max_attempts", "must be at least 1"));
        }
        if let Some(factor) = self.factor {
            check_factor(factor).map_err(|problem| FieldError::new("factor", problem))?;
        }
        if let (Some(min_wait), Some(max_wait)) = (self.min_wait, self.max_wait) {
            check_wait_order(min_wait, max_wait)?;
        }
        Ok(())
    }
}

fn check_factor(factor: f64) -> Result<(), String> {
    if factor.is_finite() && factor >= 1.0 {
        Ok(())
    } else {
        Err(format!("must be a number of at least 1.0, found {factor}"))
    }
}

fn check_wait_order(min_wait: Duration, max_wait: Duration) -> Result<(), FieldError> {
    if min_wait > max_wait {
        return Err(FieldError::new(
            "min_wait",
            format!(
                "must not be longer than max_wait ({} > {})",
                format_duration(min_wait),
                format_duration(max_wait)
            ),
        ));
    }
    Ok(())
}

/// Where error e-mails go. `url` is kept without credentials, so it can be
/// logged; credentials given in the URL end up in `username` and `password`.
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpConfig {
    /// `smtp://host[:port][?tls=starttls]` or `smtps://host[:port]`.
    pub url: String,
    pub host: String,
    /// From the URL, else 25 (`smtp`), 587 (`smtp` with STARTTLS) or 465 (`smtps`).
    pub port: u16,
    pub tls: SmtpTls,
    /// `addr@host` or `Name <addr@host>`.
    pub from: String,
    /// At most one e-mail per connection per this period.
    pub quiet_period: Duration,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text: `smtp://` (the default, for a local relay).
    None,
    /// `smtp://…?tls=starttls`: upgrade with STARTTLS, refusing to go on without it.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

impl SmtpConfig {
    fn validate(&self) -> Result<(), FieldError> {
        if !is_mailbox(&self.from) {
            return Err(FieldError::new(
                "from",
                format!(
                    "\"{}\" is not an e-mail address (use \"addr@host\" or \"Name <addr@host>\")",
                    self.from
                ),
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(FieldError::new("password", "given without a username"));
        }
        Ok(())
    }
}

/// Limits on every plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// CPU time per call.
    pub timeout: Duration,
    /// Linear memory per instance, in bytes.
    pub memory: u64,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(100),
            memory: 64 * 1024 * 1024,
        }
    }
}

/// Outbound delivery settings shared by every repeater.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Sends under way at once, over all repeaters.
    pub max_in_flight: usize,
    /// Request timeout for connections that set none.
    pub default_timeout: Duration,
    /// Private networks connections may reach; empty means public addresses only.
    pub allowed_networks: Vec<IpNet>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            default_timeout: Duration::from_secs(30),
            allowed_networks: Vec::new(),
        }
    }
}

/// Limits on incoming submissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestConfig {
    pub max_body_bytes: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 10_000_000,
        }
    }
}

/// A project space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    pub name: String,
}

/// An admin API token limited to one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenConfig {
    pub domain: String,
    pub token: Secret,
}

/// A username and password allowed to submit forms to one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitterConfig {
    pub domain: String,
    pub username: String,
    pub password: Secret,
}

/// Where and how a repeater sends (CommCare's "Connection Settings").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionSpec {
    pub name: String,
    pub url: String,
    /// Addresses that get an e-mail when a send fails.
    pub notify: Vec<String>,
    pub auth: AuthSpec,
    /// Extra headers on every request.
    pub headers: BTreeMap<String, String>,
    /// Request timeout; `[delivery] default_timeout` when absent.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_optional_duration"
    )]
    pub timeout: Option<Duration>,
    pub skip_cert_verify: bool,
}

/// How a connection authenticates. Serialized with a `type` tag; secrets are
/// serialized in clear for the store (which encrypts whole records), so the API
/// must answer with [`ConnectionSpec::redacted`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuthSpec {
    #[default]
    None,
    Basic {
        username: String,
        password: Secret,
    },
    Digest {
        username: String,
        password: Secret,
    },
    Bearer {
        token: Secret,
    },
    ApiKey {
        header: String,
        key: Secret,
    },
    Oauth2ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: Secret,
        #[serde(skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
    Oauth2Password {
        token_url: String,
        client_id: String,
        client_secret: Secret,
        #[serde(skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        username: String,
        password: Secret,
    },
    /// Handled by an auth plugin; every other key is one of its settings.
    Plugin {
        plugin: String,
        #[serde(flatten)]
        settings: BTreeMap<String, Secret>,
    },
}

const AUTH_TYPES: &str =
    "none, basic, digest, bearer, api_key, oauth2_client_credentials, oauth2_password or plugin";

impl AuthSpec {
    /// The `type` tag: `none`, `basic`, … `plugin`.
    pub fn type_name(&self) -> &'static str {
        match self {
            AuthSpec::None => "none",
            AuthSpec::Basic { .. } => "basic",
            AuthSpec::Digest { .. } => "digest",
            AuthSpec::Bearer { .. } => "bearer",
            AuthSpec::ApiKey { .. } => "api_key",
            AuthSpec::Oauth2ClientCredentials { .. } => "oauth2_client_credentials",
            AuthSpec::Oauth2Password { .. } => "oauth2_password",
            AuthSpec::Plugin { .. } => "plugin",
        }
    }

    /// A copy with every secret replaced by [`Secret::PLACEHOLDER`].
    pub fn redacted(&self) -> AuthSpec {
        let mut copy = self.clone();
        for secret in copy.secrets_mut() {
            *secret = Secret::new(Secret::PLACEHOLDER);
        }
        copy
    }

    fn secrets_mut(&mut self) -> Vec<&mut Secret> {
        self.named_secrets_mut()
            .into_iter()
            .map(|(_, secret)| secret)
            .collect()
    }

    /// Every secret with its key name (relative to the `auth` table).
    fn named_secrets_mut(&mut self) -> Vec<(String, &mut Secret)> {
        match self {
            AuthSpec::None => Vec::new(),
            AuthSpec::Basic { password, .. } | AuthSpec::Digest { password, .. } => {
                vec![("password".into(), password)]
            }
            AuthSpec::Bearer { token } => vec![("token".into(), token)],
            AuthSpec::ApiKey { key, .. } => vec![("key".into(), key)],
            AuthSpec::Oauth2ClientCredentials { client_secret, .. } => {
                vec![("client_secret".into(), client_secret)]
            }
            AuthSpec::Oauth2Password {
                client_secret,
                password,
                ..
            } => vec![
                ("client_secret".into(), client_secret),
                ("password".into(), password),
            ],
            AuthSpec::Plugin { settings, .. } => settings
                .iter_mut()
                .map(|(name, secret)| (name.clone(), secret))
                .collect(),
        }
    }

    /// Where a secret was sent back as the placeholder, keeps the value of
    /// `stored` (the same auth type, as the API showed it).
    pub fn keep_placeholders_from(&mut self, stored: &AuthSpec) {
        if self.type_name() != stored.type_name() {
            return;
        }
        let mut stored = stored.clone();
        let kept: BTreeMap<String, Secret> = stored
            .named_secrets_mut()
            .into_iter()
            .map(|(name, secret)| (name, secret.clone()))
            .collect();
        for (name, secret) in self.named_secrets_mut() {
            if secret.expose() == Secret::PLACEHOLDER
                && let Some(value) = kept.get(&name)
            {
                *secret = value.clone();
            }
        }
    }

    /// The first secret that is still the placeholder, if any.
    pub fn placeholder_field(&self) -> Option<String> {
        let mut copy = self.clone();
        copy.named_secrets_mut()
            .into_iter()
            .find(|(_, secret)| secret.expose() == Secret::PLACEHOLDER)
            .map(|(name, _)| name)
    }

    /// Field names are relative to the `auth` table.
    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            AuthSpec::None => Ok(()),
            AuthSpec::Basic { username, password } => {
                check_not_empty("username", username)?;
                if username.contains(':') {
                    return Err(FieldError::new("username", "must not contain ':'"));
                }
                check_not_empty("password", password.expose())
            }
            AuthSpec::Digest { username, password } => {
                check_not_empty("username", username)?;
                check_not_empty("password", password.expose())
            }
            AuthSpec::Bearer { token } => check_header_secret("token", token),
            AuthSpec::ApiKey { header, key } => {
                check_header_name(header).map_err(|problem| FieldError::new("header", problem))?;
                check_header_secret("key", key)
            }
            AuthSpec::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope: _,
            } => check_oauth2_client(token_url, client_id, client_secret),
            AuthSpec::Oauth2Password {
                token_url,
                client_id,
                client_secret,
                scope: _,
                username,
                password,
            } => {
                check_oauth2_client(token_url, client_id, client_secret)?;
                check_not_empty("username", username)?;
                check_not_empty("password", password.expose())
            }
            AuthSpec::Plugin { plugin, settings } => {
                check_plugin_name(plugin).map_err(|problem| FieldError::new("plugin", problem))?;
                match settings.keys().find(|key| key.is_empty()) {
                    Some(_) => Err(FieldError::new("", "a setting has an empty name")),
                    None => Ok(()),
                }
            }
        }
    }
}

fn check_oauth2_client(
    token_url: &str,
    client_id: &str,
    client_secret: &Secret,
) -> Result<(), FieldError> {
    check_http_url(token_url).map_err(|problem| FieldError::new("token_url", problem))?;
    check_not_empty("client_id", client_id)?;
    check_not_empty("client_secret", client_secret.expose())
}

fn check_not_empty(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    Ok(())
}

/// A secret that goes into a header as is.
fn check_header_secret(field: &str, secret: &Secret) -> Result<(), FieldError> {
    check_not_empty(field, secret.expose())?;
    if http::HeaderValue::from_str(secret.expose()).is_err() {
        return Err(FieldError::new(
            field,
            "must be printable ASCII to fit in a header",
        ));
    }
    Ok(())
}

impl ConnectionSpec {
    /// Reads a connection from an admin API body: the domain is in the URL path,
    /// `name` may be left out (empty) when the path names the connection, and
    /// environment references (`password_env`) are refused. Call
    /// [`ConnectionSpec::validate`] next.
    pub fn from_json(value: serde_json::Value) -> Result<Self, FieldError> {
        let reader = Reader::api();
        let mut table = Table::open(
            &reader,
            Node::from_json(value),
            String::new(),
            &[CONNECTION_KEYS],
        )?;
        read_connection(&mut table)
    }

    /// A copy fit to show: every secret replaced by [`Secret::PLACEHOLDER`].
    pub fn redacted(&self) -> ConnectionSpec {
        ConnectionSpec {
            auth: self.auth.redacted(),
            ..self.clone()
        }
    }

    /// Checks the values; field names are relative to the connection.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_object_name(&self.name).map_err(|problem| FieldError::new("name", problem))?;
        check_http_url(&self.url).map_err(|problem| FieldError::new("url", problem))?;
        for (index, address) in self.notify.iter().enumerate() {
            if !is_email_address(address) {
                return Err(FieldError::new(
                    format!("notify[{index}]"),
                    format!("\"{address}\" is not an e-mail address"),
                ));
            }
        }
        let mut seen_headers = BTreeSet::new();
        for (name, value) in &self.headers {
            let field = key_path("headers", name);
            check_header_name(name).map_err(|problem| FieldError::new(&field, problem))?;
            if !seen_headers.insert(name.to_ascii_lowercase()) {
                return Err(FieldError::new(
                    field,
                    "given twice (header names ignore case)",
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err(FieldError::new(
                    field,
                    "invalid header value (use printable ASCII, no line breaks)",
                ));
            }
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(FieldError::new("timeout", "must be longer than zero"));
        }
        self.auth.validate().map_err(|error| error.within("auth"))
    }
}

impl<'de> Deserialize<'de> for ConnectionSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Self::from_json(value).map_err(serde::de::Error::custom)
    }
}

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
#[error("unknown {what} \"{found}\"; expected {expected}")]
pub struct UnknownName {
    pub what: &'static str,
    pub found: String,
    pub expected: &'static str,
}

impl FromStr for PayloadKind {
    type Err = UnknownName;
    fn from_str(text: &str) -> Result<Self, UnknownName> {
        PayloadKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownName {
                what: "payload kind",
                found: text.to_owned(),
                expected: "form, case, form-stub or app-schema",
            })
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
            })
        }
    }
}

impl FromStr for CaseEvents {
    type Err = UnknownName;
    fn from_str(text: &str) -> Result<Self, UnknownName> {
        [CaseEvents::Any, CaseEvents::Create, CaseEvents::Update]
            .into_iter()
            .find(|events| events.as_str() == text)
            .ok_or_else(|| UnknownName {
                what: "case event",
                found: text.to_owned(),
                expected: "any, create or update",
            })
    }
}

/// Display, Serialize and Deserialize through `as_str` and `FromStr`.
macro_rules! text_enum {
    ($($name:ty),*) => {$(
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
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

text_enum!(PayloadKind, HttpMethod, CaseEvents);

/// A data-forwarding rule (CommCare's "Data Forwarding"): which payloads of a
/// domain go to which connection, in which format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepeaterSpec {
    pub name: String,
    pub kind: PayloadKind,
    /// The connection's name, in the same domain.
    pub connection: String,
    /// The payload plugin's name.
    pub format: String,
    pub paused: bool,
    pub method: HttpMethod,
    /// Parallel sends; 1 delivers in registration order.
    pub max_workers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryOverride>,
    /// Status codes to retry on top of the standard ones.
    pub retry_codes_add: Vec<u16>,
    /// Standard retryable status codes to treat as rejections instead.
    pub retry_codes_remove: Vec<u16>,
    /// Form repeaters: add `?app_id=` when the form has one.
    pub include_app_id_param: bool,
    /// Form and form-stub repeaters: only forms with one of these xmlns (empty = all).
    pub xmlns: Vec<String>,
    /// Form, form-stub and case repeaters: skip what these user ids submitted.
    pub user_blocklist: Vec<String>,
    /// Case repeaters: only cases of these types (empty = all).
    pub case_types: Vec<String>,
    /// Case repeaters: which changes to forward.
    pub case_events: CaseEvents,
    /// Handed to the format plugin as is.
    pub settings: BTreeMap<String, String>,
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
            method: HttpMethod::Post,
            max_workers: 8,
            retry: None,
            retry_codes_add: Vec::new(),
            retry_codes_remove: Vec::new(),
            include_app_id_param: true,
            xmlns: Vec::new(),
            user_blocklist: Vec::new(),
            case_types: Vec::new(),
            case_events: CaseEvents::Any,
            settings: BTreeMap::new(),
        }
    }

    /// Reads a repeater from an admin API body: the domain is in the URL path and
    /// `name` may be left out (empty) when the path names the repeater. Call
    /// [`RepeaterSpec::validate`] next.
    pub fn from_json(value: serde_json::Value) -> Result<Self, FieldError> {
        let reader = Reader::api();
        let mut table = Table::open(
            &reader,
            Node::from_json(value),
            String::new(),
            &[REPEATER_KEYS],
        )?;
        read_repeater(&mut table)
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
        for (field, codes) in [
            ("retry_codes_add", &self.retry_codes_add),
            ("retry_codes_remove", &self.retry_codes_remove),
        ] {
            for (index, &code) in codes.iter().enumerate() {
                check_status_code(code)
                    .map_err(|problem| FieldError::new(format!("{field}[{index}]"), problem))?;
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

impl<'de> Deserialize<'de> for RepeaterSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Self::from_json(value).map_err(serde::de::Error::custom)
    }
}

/// A password, token or key. `Debug` and `Display` print
/// [`Secret::PLACEHOLDER`]; `Serialize` writes the real value, because the store
/// encrypts whole records; only [`Secret::expose`] reads it in code.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// What is shown in place of a secret.
    pub const PLACEHOLDER: &'static str = "********";

    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(Self::PLACEHOLDER)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(Self::PLACEHOLDER)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is a
/// network of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl IpNet {
    /// Whether `address` is in this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.0.0.1`) count as their IPv4 address.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            IpAddr::V4(_) => address,
        };
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => prefix_matches(
                network.to_bits().into(),
                address.to_bits().into(),
                32,
                self.prefix_len,
            ),
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                prefix_matches(network.to_bits(), address.to_bits(), 128, self.prefix_len)
            }
            _ => false,
        }
    }
}

fn prefix_matches(network: u128, address: u128, width: u32, prefix_len: u8) -> bool {
    let ignored_bits = width - u32::from(prefix_len);
    if ignored_bits >= width {
        return true;
    }
    (network >> ignored_bits) == (address >> ignored_bits)
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "invalid network \"{text}\": expected a CIDR like \"10.0.0.0/8\" or an IP address"
            )
        };
        let (address_text, prefix_text) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address_text.parse().map_err(|_| invalid())?;
        let width = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_text {
            None => width,
            Some(prefix) => prefix.parse::<u8>().map_err(|_| invalid())?,
        };
        if prefix_len > width {
            return Err(format!(
                "invalid network \"{text}\": the prefix length must be at most {width}"
            ));
        }
        Ok(IpNet {
            address,
            prefix_len,
        })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.address, self.prefix_len)
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

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

/// Why the configuration cannot be used. Displayed as
/// `<source>: <key path>: <problem>`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not valid TOML; the message carries toml's line and column.
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {error}")]
    Invalid { origin: String, error: FieldError },
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// The configuration `repeatd serve` runs on: the file at `path`, or the
/// embedded defaults when there is none; `REPEATD_ADMIN_TOKEN` sets the admin
/// token either way.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    load_with_env(path, &process_env)
}

/// [`load`] reading environment variables through `env`.
pub fn load_with_env(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let (mut config, origin) = match path {
        None => (Config::default(), "embedded defaults".to_owned()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let origin = path.display().to_string();
            (parse_with_env(&text, &origin, env)?, origin)
        }
    };
    if let Some(token) = env(ADMIN_TOKEN_ENV) {
        if token.is_empty() {
            return Err(ConfigError::Invalid {
                origin: "environment".to_owned(),
                error: FieldError::new(ADMIN_TOKEN_ENV, "is set but empty"),
            });
        }
        config.admin_token = Some(Secret::new(token));
        config
            .validate()
            .map_err(|error| ConfigError::Invalid { origin, error })?;
    }
    Ok(config)
}

/// Reads and validates a config file's text; `source` names it in errors.
/// `<key>_env` references are read from the process environment;
/// `REPEATD_ADMIN_TOKEN` is not applied (that is [`load`]'s job).
pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
    parse_with_env(text, source, &process_env)
}

/// [`parse`] reading environment variables through `env`.
pub fn parse_with_env(
    text: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let document: toml::Table = toml::from_str(text).map_err(|error| ConfigError::Syntax {
        origin: source.to_owned(),
        message: error.to_string().trim_end().to_owned(),
    })?;
    let invalid = |error| ConfigError::Invalid {
        origin: source.to_owned(),
        error,
    };
    let reader = Reader {
        origin: Origin::File,
        env,
    };
    let config =
        read_config(&reader, Node::from_toml(toml::Value::Table(document))).map_err(invalid)?;
    config.validate().map_err(invalid)?;
    Ok(config)
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn no_env(_name: &str) -> Option<String> {
    None
}

impl Config {
    /// Checks everything that involves more than one value: references between
    /// objects, duplicates, and each object's own rules.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(token) = &self.admin_token {
            check_not_empty("admin_token", token.expose())?;
        }
        self.retry
            .validate()
            .map_err(|error| error.within("retry"))?;
        if let Some(smtp) = &self.smtp {
            smtp.validate().map_err(|error| error.within("smtp"))?;
        }
        if self.plugins.timeout.is_zero() {
            return Err(FieldError::new(
                "plugins.timeout",
                "must be longer than zero",
            ));
        }
        if self.plugins.memory < MIN_PLUGIN_MEMORY {
            return Err(FieldError::new(
                "plugins.memory",
                format!(
                    "must be at least 64KiB, found {} bytes",
                    self.plugins.memory
                ),
            ));
        }
        if self.delivery.max_in_flight < 1 {
            return Err(FieldError::new(
                "delivery.max_in_flight",
                "must be at least 1",
            ));
        }
        if self.delivery.default_timeout.is_zero() {
            return Err(FieldError::new(
                "delivery.default_timeout",
                "must be longer than zero",
            ));
        }
        if self.ingest.max_body_bytes < 1 {
            return Err(FieldError::new(
                "ingest.max_body_bytes",
                "must be at least 1",
            ));
        }

        let mut domains = BTreeSet::new();
        for (index, domain) in self.domains.iter().enumerate() {
            let field = format!("domains[{index}].name");
            check_domain_slug(&domain.name).map_err(|problem| FieldError::new(&field, problem))?;
            if !domains.insert(domain.name.as_str()) {
                return Err(FieldError::new(
                    field,
                    format!("duplicate domain \"{}\"", domain.name),
                ));
            }
        }
        let check_declared = |list: &str, index: usize, domain: &str| {
            if domains.contains(domain) {
                Ok(())
            } else {
                Err(FieldError::new(
                    format!("{list}[{index}].domain"),
                    format!("no domain \"{domain}\" declared in [[domains]]"),
                ))
            }
        };

        let mut token_owners: HashMap<&str, usize> = HashMap::new();
        for (index, api_token) in self.api_tokens.iter().enumerate() {
            check_declared("api_tokens", index, &api_token.domain)?;
            let field = format!("api_tokens[{index}].token");
            check_not_empty(&field, api_token.token.expose())?;
            if let Some(first) = token_owners.insert(api_token.token.expose(), index) {
                return Err(FieldError::new(
                    field,
                    format!("the same token as api_tokens[{first}]"),
                ));
            }
            if self.admin_token.as_ref() == Some(&api_token.token) {
                return Err(FieldError::new(field, "must differ from the admin token"));
            }
        }

        let mut submitters = BTreeSet::new();
        for (index, submitter) in self.submitters.iter().enumerate() {
            check_declared("submitters", index, &submitter.domain)?;
            let field = format!("submitters[{index}].username");
            check_not_empty(&field, &submitter.username)?;
            if submitter.username.chars().any(|character| {
                character == ':' || character.is_whitespace() || character.is_control()
            }) {
                return Err(FieldError::new(
                    field,
                    "must not contain ':', spaces or control characters",
                ));
            }
            check_not_empty(
                &format!("submitters[{index}].password"),
                submitter.password.expose(),
            )?;
            if !submitters.insert((submitter.domain.as_str(), submitter.username.as_str())) {
                return Err(FieldError::new(
                    field,
                    format!(
                        "duplicate submitter \"{}\" in domain \"{}\"",
                        submitter.username, submitter.domain
                    ),
                ));
            }
        }

        let mut connections = BTreeSet::new();
        for (index, connection) in self.connections.iter().enumerate() {
            let prefix = format!("connections[{index}]");
            check_declared("connections", index, &connection.domain)?;
            connection
                .spec
                .validate()
                .map_err(|error| error.within(&prefix))?;
            if !connections.insert((connection.domain.as_str(), connection.spec.name.as_str())) {
                return Err(FieldError::new(
                    format!("{prefix}.name"),
                    format!(
                        "duplicate connection \"{}\" in domain \"{}\"",
                        connection.spec.name, connection.domain
                    ),
                ));
            }
        }

        let mut repeaters = BTreeSet::new();
        for (index, repeater) in self.repeaters.iter().enumerate() {
            let prefix = format!("repeaters[{index}]");
            check_declared("repeaters", index, &repeater.domain)?;
            let spec = &repeater.spec;
            spec.validate().map_err(|error| error.within(&prefix))?;
            if !repeaters.insert((repeater.domain.as_str(), spec.name.as_str())) {
                return Err(FieldError::new(
                    format!("{prefix}.name"),
                    format!(
                        "duplicate repeater \"{}\" in domain \"{}\"",
                        spec.name, repeater.domain
                    ),
                ));
            }
            if !connections.contains(&(repeater.domain.as_str(), spec.connection.as_str())) {
                return Err(FieldError::new(
                    format!("{prefix}.connection"),
                    format!(
                        "no connection \"{}\" in domain \"{}\"",
                        spec.connection, repeater.domain
                    ),
                ));
            }
            if let Some(retry) = &spec.retry {
                retry
                    .resolve(&self.retry)
                    .validate()
                    .map_err(|error| error.within(&format!("{prefix}.retry")))?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Text formats
// ---------------------------------------------------------------------------

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

fn serialize_optional_duration<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => serializer.serialize_str(&format_duration(*duration)),
        None => serializer.serialize_none(),
    }
}

fn check_domain_slug(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let valid = (1..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|&byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid domain \"{name}\": use 1 to 63 lowercase letters, digits and '-', starting with a letter or digit"
        ))
    }
}

/// Connection and repeater names: `[A-Za-z0-9_.-]{1,64}`.
fn check_object_name(name: &str) -> Result<(), String> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid name \"{name}\": use 1 to 64 letters, digits, '_', '.' and '-'"
        ))
    }
}

/// Plugin names, which are also file names: `[a-z0-9][a-z0-9_-]*`.
fn check_plugin_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'_' | b'-')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid plugin name \"{name}\": use lowercase letters, digits, '_' and '-', starting with a letter or digit"
        ))
    }
}

/// An absolute http(s) URL with a host and no credentials.
fn check_http_url(text: &str) -> Result<(), String> {
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

fn check_status_code(code: u16) -> Result<(), String> {
    if (100..=599).contains(&code) {
        Ok(())
    } else {
        Err(format!(
            "must be an HTTP status code from 100 to 599, found {code}"
        ))
    }
}

fn check_header_name(name: &str) -> Result<(), String> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("invalid header name \"{name}\""));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "header \"{name}\" is set by repeatd and cannot be configured"
        ));
    }
    Ok(())
}

/// `local@host`, without display name.
fn is_email_address(text: &str) -> bool {
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
fn is_mailbox(text: &str) -> bool {
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
fn key_path(parent: &str, key: &str) -> String {
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

fn percent_decode(text: &str) -> Result<String, ()> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3).ok_or(())?;
            decoded.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| ())
}

// ---------------------------------------------------------------------------
// Reading: a parsed TOML or JSON document, walked with key paths
// ---------------------------------------------------------------------------

/// A value of either document format. JSON `null` inside an object reads as an
/// absent key.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
    Datetime(String),
    Array(Vec<Node>),
    Table(BTreeMap<String, Node>),
}

impl Node {
    fn from_toml(value: toml::Value) -> Node {
        match value {
            toml::Value::String(text) => Node::String(text),
            toml::Value::Integer(number) => Node::Integer(number),
            toml::Value::Float(number) => Node::Float(number),
            toml::Value::Boolean(flag) => Node::Bool(flag),
            toml::Value::Datetime(datetime) => Node::Datetime(datetime.to_string()),
            toml::Value::Array(items) => {
                Node::Array(items.into_iter().map(Node::from_toml).collect())
            }
            toml::Value::Table(table) => Node::Table(
                table
                    .into_iter()
                    .map(|(key, value)| (key, Node::from_toml(value)))
                    .collect(),
            ),
        }
    }

    fn from_json(value: serde_json::Value) -> Node {
        match value {
            serde_json::Value::Null => Node::Null,
            serde_json::Value::Bool(flag) => Node::Bool(flag),
            serde_json::Value::Number(number) => match number.as_i64() {
                Some(integer) => Node::Integer(integer),
                None => Node::Float(number.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(text) => Node::String(text),
            serde_json::Value::Array(items) => {
                Node::Array(items.into_iter().map(Node::from_json).collect())
            }
            serde_json::Value::Object(object) => Node::Table(
                object
                    .into_iter()
                    .filter(|(_, value)| !value.is_null())
                    .map(|(key, value)| (key, Node::from_json(value)))
                    .collect(),
            ),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Node::Null => serde_json::Value::Null,
            Node::Bool(flag) => serde_json::Value::Bool(*flag),
            Node::Integer(number) => serde_json::Value::from(*number),
            Node::Float(number) => serde_json::Value::from(*number),
            Node::String(text) | Node::Datetime(text) => serde_json::Value::String(text.clone()),
            Node::Array(items) => {
                serde_json::Value::Array(items.iter().map(Node::to_json).collect())
            }
            Node::Table(table) => serde_json::Value::Object(
                table
                    .iter()
                    .map(|(key, value)| (key.clone(), value.to_json()))
                    .collect(),
            ),
        }
    }

    /// A setting's value as text: strings as they are, anything else as JSON.
    fn into_setting_text(self) -> String {
        match self {
            Node::String(text) | Node::Datetime(text) => text,
            other => other.to_json().to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The config file: TOML words, environment references allowed.
    File,
    /// An admin API body: JSON words, no environment.
    Api,
}

struct Reader<'env> {
    origin: Origin,
    env: &'env dyn Fn(&str) -> Option<String>,
}

impl Reader<'static> {
    fn api() -> Self {
        Reader {
            origin: Origin::Api,
            env: &no_env,
        }
    }
}

impl Reader<'_> {
    fn describe(&self, node: &Node) -> &'static str {
        match node {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Integer(_) => "an integer",
            Node::Float(_) => "a float",
            Node::String(_) => "a string",
            Node::Datetime(_) => "a datetime",
            Node::Array(_) => "an array",
            Node::Table(_) => self.table_word(),
        }
    }

    fn table_word(&self) -> &'static str {
        match self.origin {
            Origin::File => "a table",
            Origin::Api => "an object",
        }
    }

    fn mismatch(&self, field: &str, expected: &str, found: &Node) -> FieldError {
        FieldError::new(
            field,
            format!("expected {expected}, found {}", self.describe(found)),
        )
    }

    fn string(&self, node: Node, field: &str) -> Result<String, FieldError> {
        match node {
            Node::String(text) => Ok(text),
            other => Err(self.mismatch(field, "a string", &other)),
        }
    }
}

/// One table (object) being read; keys are removed as they are read.
struct Table<'r, 'env> {
    reader: &'r Reader<'env>,
    path: String,
    entries: BTreeMap<String, Node>,
}

impl<'r, 'env> Table<'r, 'env> {
    /// Opens `node` as a table whose keys must all be in `allowed`.
    fn open(
        reader: &'r Reader<'env>,
        node: Node,
        path: String,
        allowed: &[&[&str]],
    ) -> Result<Self, FieldError> {
        let table = Self::open_any(reader, node, path)?;
        if let Some(unknown) = table
            .entries
            .keys()
            .find(|key| !allowed.iter().any(|keys| keys.contains(&key.as_str())))
        {
            return Err(FieldError::new(
                &table.path,
                format!("unknown key \"{unknown}\""),
            ));
        }
        Ok(table)
    }

    /// Opens `node` as a table with any keys.
    fn open_any(reader: &'r Reader<'env>, node: Node, path: String) -> Result<Self, FieldError> {
        match node {
            Node::Table(entries) => Ok(Table {
                reader,
                path,
                entries,
            }),
            other => Err(reader.mismatch(&path, reader.table_word(), &other)),
        }
    }

    fn field(&self, key: &str) -> String {
        key_path(&self.path, key)
    }

    fn take(&mut self, key: &str) -> Option<Node> {
        self.entries.remove(key)
    }

    fn missing(&self, key: &str) -> FieldError {
        FieldError::new(&self.path, format!("missing key \"{key}\""))
    }

    fn string(&mut self, key: &str) -> Result<String, FieldError> {
        self.optional_string(key)?.ok_or_else(|| self.missing(key))
    }

    /// An object's `name`: required in the file; an API body may leave it out
    /// (empty) when the URL path names the object.
    fn name(&mut self) -> Result<String, FieldError> {
        match self.reader.origin {
            Origin::File => self.string("name"),
            Origin::Api => Ok(self.optional_string("name")?.unwrap_or_default()),
        }
    }

    fn optional_string(&mut self, key: &str) -> Result<Option<String>, FieldError> {
        self.take(key)
            .map(|node| self.reader.string(node, &self.field(key)))
            .transpose()
    }

    fn parsed<T>(
        &mut self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, FieldError> {
        let field = self.field(key);
        match self.optional_string(key)? {
            Some(text) => parse(&text)
                .map(Some)
                .map_err(|problem| FieldError::new(field, problem)),
            None => Ok(None),
        }
    }

    fn path_buf(&mut self, key: &str) -> Result<Option<PathBuf>, FieldError> {
        self.parsed(key, |text| {
            if text.is_empty() {
                Err("must not be empty".to_owned())
            } else {
                Ok(PathBuf::from(text))
            }
        })
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Node::Bool(flag)) => Ok(Some(flag)),
            Some(other) => Err(self
                .reader
                .mismatch(&self.field(key), "true or false", &other)),
        }
    }

    /// A non-negative integer no larger than `max`.
    fn unsigned(&mut self, key: &str, max: u64) -> Result<Option<u64>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(node) => unsigned_value(self.reader, node, &self.field(key), max).map(Some),
        }
    }

    fn float(&mut self, key: &str) -> Result<Option<f64>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Node::Float(number)) => Ok(Some(number)),
            Some(Node::Integer(number)) => Ok(Some(number as f64)),
            Some(other) => Err(self.reader.mismatch(&self.field(key), "a number", &other)),
        }
    }

    fn duration(&mut self, key: &str) -> Result<Option<Duration>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Node::String(text)) => parse_duration(&text)
                .map(Some)
                .map_err(|problem| FieldError::new(self.field(key), problem)),
            Some(other) => Err(self.reader.mismatch(
                &self.field(key),
                "a duration string like \"90s\"",
                &other,
            )),
        }
    }

    fn size(&mut self, key: &str) -> Result<Option<u64>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Node::String(text)) => parse_size(&text)
                .map(Some)
                .map_err(|problem| FieldError::new(self.field(key), problem)),
            Some(node @ Node::Integer(_)) => {
                unsigned_value(self.reader, node, &self.field(key), u64::MAX).map(Some)
            }
            Some(other) => Err(self.reader.mismatch(
                &self.field(key),
                "a size like \"64MiB\" or a number of bytes",
                &other,
            )),
        }
    }

    fn items(&mut self, key: &str, expected: &str) -> Result<Vec<(String, Node)>, FieldError> {
        let field = self.field(key);
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Node::Array(items)) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(index, item)| (format!("{field}[{index}]"), item))
                .collect()),
            Some(other) => Err(self.reader.mismatch(&field, expected, &other)),
        }
    }

    fn strings(&mut self, key: &str) -> Result<Vec<String>, FieldError> {
        self.items(key, "an array of strings")?
            .into_iter()
            .map(|(field, node)| self.reader.string(node, &field))
            .collect()
    }

    fn status_codes(&mut self, key: &str) -> Result<Vec<u16>, FieldError> {
        self.items(key, "an array of status codes")?
            .into_iter()
            .map(|(field, node)| match node {
                Node::Integer(code) if (100..=599).contains(&code) => Ok(code as u16),
                Node::Integer(code) => Err(FieldError::new(
                    field,
                    format!("must be an HTTP status code from 100 to 599, found {code}"),
                )),
                other => Err(self.reader.mismatch(&field, "an integer", &other)),
            })
            .collect()
    }

    /// Arrays of tables (`[[connections]]`), each opened with `allowed` keys.
    fn tables(
        &mut self,
        key: &str,
        allowed: &[&[&str]],
    ) -> Result<Vec<Table<'r, 'env>>, FieldError> {
        let reader = self.reader;
        self.items(key, "an array of tables")?
            .into_iter()
            .map(|(field, node)| Table::open(reader, node, field, allowed))
            .collect()
    }

    fn child(
        &mut self,
        key: &str,
        allowed: &[&[&str]],
    ) -> Result<Option<Table<'r, 'env>>, FieldError> {
        let field = self.field(key);
        self.take(key)
            .map(|node| Table::open(self.reader, node, field, allowed))
            .transpose()
    }

    /// A table of string values (headers).
    fn string_map(&mut self, key: &str) -> Result<BTreeMap<String, String>, FieldError> {
        let field = self.field(key);
        let Some(node) = self.take(key) else {
            return Ok(BTreeMap::new());
        };
        let table = Table::open_any(self.reader, node, field)?;
        let path = table.path;
        table
            .entries
            .into_iter()
            .map(|(name, value)| {
                let text = self.reader.string(value, &key_path(&path, &name))?;
                Ok((name, text))
            })
            .collect()
    }

    /// A table of free-form settings: strings as they are, other values as JSON.
    fn settings(&mut self, key: &str) -> Result<BTreeMap<String, String>, FieldError> {
        let field = self.field(key);
        match self.take(key) {
            None => Ok(BTreeMap::new()),
            Some(node) => Ok(Table::open_any(self.reader, node, field)?
                .entries
                .into_iter()
                .map(|(name, value)| (name, value.into_setting_text()))
                .collect()),
        }
    }

    /// A secret given as `key`, or (in the file) as `key_env` naming an
    /// environment variable.
    fn secret(&mut self, key: &str) -> Result<Option<Secret>, FieldError> {
        let env_key = format!("{key}_env");
        match (self.take(key), self.take(&env_key)) {
            (Some(_), Some(_)) => Err(FieldError::new(
                &self.path,
                format!("give either \"{key}\" or \"{env_key}\", not both"),
            )),
            (Some(node), None) => Ok(Some(Secret(self.reader.string(node, &self.field(key))?))),
            (None, Some(node)) => {
                let field = self.field(&env_key);
                let variable = self.reader.string(node, &field)?;
                self.read_env(&field, &variable).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    fn read_env(&self, field: &str, variable: &str) -> Result<Secret, FieldError> {
        if self.reader.origin == Origin::Api {
            return Err(FieldError::new(
                field,
                "environment variables can only be named in the config file",
            ));
        }
        if variable.is_empty() {
            return Err(FieldError::new(field, "must name an environment variable"));
        }
        match (self.reader.env)(variable) {
            Some(value) if !value.is_empty() => Ok(Secret(value)),
            Some(_) => Err(FieldError::new(
                field,
                format!("environment variable \"{variable}\" is empty"),
            )),
            None => Err(FieldError::new(
                field,
                format!("environment variable \"{variable}\" is not set"),
            )),
        }
    }

    fn required_secret(&mut self, key: &str) -> Result<Secret, FieldError> {
        self.secret(key)?.ok_or_else(|| {
            let problem = match self.reader.origin {
                Origin::File => format!("missing key \"{key}\" (or \"{key}_env\")"),
                Origin::Api => format!("missing key \"{key}\""),
            };
            FieldError::new(&self.path, problem)
        })
    }
}

fn unsigned_value(
    reader: &Reader<'_>,
    node: Node,
    field: &str,
    max: u64,
) -> Result<u64, FieldError> {
    match node {
        Node::Integer(number) if number >= 0 && number as u64 <= max => Ok(number as u64),
        Node::Integer(number) => Err(FieldError::new(
            field,
            format!("expected an integer from 0 to {max}, found {number}"),
        )),
        other => Err(reader.mismatch(field, "an integer", &other)),
    }
}

const TOP_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "plugin_dir",
    "admin_token",
    "admin_token_env",
    "smtp",
    "retry",
    "plugins",
    "delivery",
    "ingest",
    "domains",
    "api_tokens",
    "submitters",
    "connections",
    "repeaters",
];
const SMTP_KEYS: &[&str] = &[
    "url",
    "from",
    "quiet_period",
    "username",
    "password",
    "password_env",
];
const RETRY_KEYS: &[&str] = &["max_attempts", "min_wait", "max_wait", "factor"];
const PLUGINS_KEYS: &[&str] = &["timeout", "memory"];
const DELIVERY_KEYS: &[&str] = &["max_in_flight", "default_timeout", "allowed_networks"];
const INGEST_KEYS: &[&str] = &["max_body_bytes"];
const DOMAIN_KEYS: &[&str] = &["name"];
const API_TOKEN_KEYS: &[&str] = &["domain", "token", "token_env"];
const SUBMITTER_KEYS: &[&str] = &["domain", "username", "password", "password_env"];
const DECLARED_KEYS: &[&str] = &["domain"];
const CONNECTION_KEYS: &[&str] = &[
    "name",
    "url",
    "notify",
    "auth",
    "headers",
    "timeout",
    "skip_cert_verify",
];
const REPEATER_KEYS: &[&str] = &[
    "name",
    "kind",
    "connection",
    "format",
    "paused",
    "method",
    "max_workers",
    "retry",
    "retry_codes_add",
    "retry_codes_remove",
    "include_app_id_param",
    "xmlns",
    "user_blocklist",
    "case_types",
    "case_events",
    "settings",
];

fn read_config(reader: &Reader<'_>, root: Node) -> Result<Config, FieldError> {
    let mut top = Table::open(reader, root, String::new(), &[TOP_KEYS])?;
    let defaults = Config::default();
    let listen = top
        .parsed("listen", |text| {
            text.parse::<SocketAddr>().map_err(|_| {
                format!("expected an address like \"127.0.0.1:8080\", found \"{text}\"")
            })
        })?
        .unwrap_or(defaults.listen);
    let data_dir = top.path_buf("data_dir")?.unwrap_or(defaults.data_dir);
    let plugin_dir = top.path_buf("plugin_dir")?.unwrap_or(defaults.plugin_dir);
    let admin_token = top.secret("admin_token")?;
    let smtp = match top.child("smtp", &[SMTP_KEYS])? {
        Some(mut table) => Some(read_smtp(&mut table)?),
        None => None,
    };
    let retry = match top.child("retry", &[RETRY_KEYS])? {
        Some(mut table) => read_retry_override(&mut table)?.resolve(&defaults.retry),
        None => defaults.retry,
    };
    let plugins = match top.child("plugins", &[PLUGINS_KEYS])? {
        Some(mut table) => PluginLimits {
            timeout: table
                .duration("timeout")?
                .unwrap_or(defaults.plugins.timeout),
            memory: table.size("memory")?.unwrap_or(defaults.plugins.memory),
        },
        None => defaults.plugins,
    };
    let delivery = match top.child("delivery", &[DELIVERY_KEYS])? {
        Some(mut table) => DeliveryConfig {
            max_in_flight: table
                .unsigned("max_in_flight", usize::MAX as u64)?
                .map_or(defaults.delivery.max_in_flight, |number| number as usize),
            default_timeout: table
                .duration("default_timeout")?
                .unwrap_or(defaults.delivery.default_timeout),
            allowed_networks: table
                .items("allowed_networks", "an array of networks")?
                .into_iter()
                .map(|(field, node)| {
                    let text = reader.string(node, &field)?;
                    text.parse::<IpNet>()
                        .map_err(|problem| FieldError::new(field, problem))
                })
                .collect::<Result<_, _>>()?,
        },
        None => defaults.delivery,
    };
    let ingest = match top.child("ingest", &[INGEST_KEYS])? {
        Some(mut table) => IngestConfig {
            max_body_bytes: table
                .size("max_body_bytes")?
                .unwrap_or(defaults.ingest.max_body_bytes),
        },
        None => defaults.ingest,
    };
    let domains = top
        .tables("domains", &[DOMAIN_KEYS])?
        .into_iter()
        .map(|mut table| {
            Ok(DomainConfig {
                name: table.string("name")?,
            })
        })
        .collect::<Result<_, FieldError>>()?;
    let api_tokens = top
        .tables("api_tokens", &[API_TOKEN_KEYS])?
        .into_iter()
        .map(|mut table| {
            Ok(ApiTokenConfig {
                domain: table.string("domain")?,
                token: table.required_secret("token")?,
            })
        })
        .collect::<Result<_, FieldError>>()?;
    let submitters = top
        .tables("submitters", &[SUBMITTER_KEYS])?
        .into_iter()
        .map(|mut table| {
            Ok(SubmitterConfig {
                domain: table.string("domain")?,
                username: table.string("username")?,
                password: table.required_secret("password")?,
            })
        })
        .collect::<Result<_, FieldError>>()?;
    let connections = top
        .tables("connections", &[DECLARED_KEYS, CONNECTION_KEYS])?
        .into_iter()
        .map(|mut table| {
            Ok(Declared {
                domain: table.string("domain")?,
                spec: read_connection(&mut table)?,
            })
        })
        .collect::<Result<_, FieldError>>()?;
    let repeaters = top
        .tables("repeaters", &[DECLARED_KEYS, REPEATER_KEYS])?
        .into_iter()
        .map(|mut table| {
            Ok(Declared {
                domain: table.string("domain")?,
                spec: read_repeater(&mut table)?,
            })
        })
        .collect::<Result<_, FieldError>>()?;
    Ok(Config {
        listen,
        data_dir,
        plugin_dir,
        admin_token,
        smtp,
        retry,
        plugins,
        delivery,
        ingest,
        domains,
        api_tokens,
        submitters,
        connections,
        repeaters,
    })
}

fn read_retry_override(table: &mut Table<'_, '_>) -> Result<RetryOverride, FieldError> {
    Ok(RetryOverride {
        max_attempts: table
            .unsigned("max_attempts", u32::MAX.into())?
            .map(|number| number as u32),
        min_wait: table.duration("min_wait")?,
        max_wait: table.duration("max_wait")?,
        factor: table.float("factor")?,
    })
}

fn read_smtp(table: &mut Table<'_, '_>) -> Result<SmtpConfig, FieldError> {
    let url_field = table.field("url");
    let url_text = table.string("url")?;
    let from = table.string("from")?;
    let quiet_period = table
        .duration("quiet_period")?
        .unwrap_or(Duration::from_secs(15 * 60));
    let mut username = table.optional_string("username")?;
    let mut password = table.secret("password")?;

    let url_error = |problem: String| FieldError::new(&url_field, problem);
    // The url may carry a password, so errors quote only its harmless parts.
    let mut url =
        Url::parse(&url_text).map_err(|error| url_error(format!("invalid url: {error}")))?;
    let implicit_tls = match url.scheme() {
        "smtp" => false,
        "smtps" => true,
        other => {
            return Err(url_error(format!(
                "unsupported scheme \"{other}\"; use smtp:// or smtps://"
            )));
        }
    };
    let host = match url.host_str() {
        Some(host) if !host.is_empty() => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        _ => return Err(url_error("has no host".to_owned())),
    };
    if !matches!(url.path(), "" | "/") {
        return Err(url_error(format!("unexpected path \"{}\"", url.path())));
    }
    let mut tls = if implicit_tls {
        SmtpTls::Implicit
    } else {
        SmtpTls::None
    };
    for (name, value) in url.query_pairs() {
        match (name.as_ref(), value.as_ref(), implicit_tls) {
            ("tls", "starttls", false) => tls = SmtpTls::StartTls,
            ("tls", "none", false) => tls = SmtpTls::None,
            ("tls", _, true) => {
                return Err(url_error(
                    "smtps:// always uses TLS; drop the tls parameter".to_owned(),
                ));
            }
            ("tls", other, false) => {
                return Err(url_error(format!(
                    "unknown tls mode \"{other}\"; use tls=starttls or tls=none"
                )));
            }
            (other, _, _) => {
                return Err(url_error(format!(
                    "unknown parameter \"{other}\"; only \"tls\" is understood"
                )));
            }
        }
    }
    let port = url.port().unwrap_or(match tls {
        SmtpTls::None => 25,
        SmtpTls::StartTls => 587,
        SmtpTls::Implicit => 465,
    });
    if !url.username().is_empty() || url.password().is_some() {
        if username.is_some() || password.is_some() {
            return Err(url_error(
                "carries credentials and so do smtp.username or smtp.password; keep one".to_owned(),
            ));
        }
        let decode = |text: &str, part: &str| {
            percent_decode(text)
                .map_err(|()| url_error(format!("the {part} is not valid percent-encoded UTF-8")))
        };
        username = Some(decode(url.username(), "username")?);
        password = url
            .password()
            .map(|text| decode(text, "password").map(Secret))
            .transpose()?;
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    Ok(SmtpConfig {
        url: url.to_string(),
        host,
        port,
        tls,
        from,
        quiet_period,
        username,
        password,
    })
}

fn read_connection(table: &mut Table<'_, '_>) -> Result<ConnectionSpec, FieldError> {
    let name = table.name()?;
    let auth = match table.take("auth") {
        Some(node) => read_auth(table.reader, node, table.field("auth"))?,
        None => AuthSpec::None,
    };
    Ok(ConnectionSpec {
        name,
        url: table.string("url")?,
        notify: table.strings("notify")?,
        auth,
        headers: table.string_map("headers")?,
        timeout: table.duration("timeout")?,
        skip_cert_verify: table.bool("skip_cert_verify")?.unwrap_or(false),
    })
}

fn read_auth(reader: &Reader<'_>, node: Node, path: String) -> Result<AuthSpec, FieldError> {
    let mut table = Table::open_any(reader, node, path)?;
    let auth_type = table.string("type")?;
    let allowed: &[&str] = match auth_type.as_str() {
        "none" => &[],
        "basic" | "digest" => &["username", "password", "password_env"],
        "bearer" => &["token", "token_env"],
        "api_key" => &["header", "key", "key_env"],
        "oauth2_client_credentials" => &[
            "token_url",
            "client_id",
            "client_secret",
            "client_secret_env",
            "scope",
        ],
        "oauth2_password" => &[
            "token_url",
            "client_id",
            "client_secret",
            "client_secret_env",
            "scope",
            "username",
            "password",
            "password_env",
        ],
        "plugin" => return read_plugin_auth(table),
        other => {
            return Err(FieldError::new(
                table.field("type"),
                format!("unknown auth type \"{other}\"; expected {AUTH_TYPES}"),
            ));
        }
    };
    let mut table = Table::open(reader, Node::Table(table.entries), table.path, &[allowed])?;
    Ok(match auth_type.as_str() {
        "basic" => AuthSpec::Basic {
            username: table.string("username")?,
            password: table.required_secret("password")?,
        },
        "digest" => AuthSpec::Digest {
            username: table.string("username")?,
            password: table.required_secret("password")?,
        },
        "bearer" => AuthSpec::Bearer {
            token: table.required_secret("token")?,
        },
        "api_key" => AuthSpec::ApiKey {
            header: table.string("header")?,
            key: table.required_secret("key")?,
        },
        "oauth2_client_credentials" => AuthSpec::Oauth2ClientCredentials {
            token_url: table.string("token_url")?,
            client_id: table.string("client_id")?,
            client_secret: table.required_secret("client_secret")?,
            scope: table.optional_string("scope")?,
        },
        "oauth2_password" => AuthSpec::Oauth2Password {
            token_url: table.string("token_url")?,
            client_id: table.string("client_id")?,
            client_secret: table.required_secret("client_secret")?,
            scope: table.optional_string("scope")?,
            username: table.string("username")?,
            password: table.required_secret("password")?,
        },
        _ => AuthSpec::None,
    })
}

/// Every key but `type` and `plugin` is a setting for the plugin. In the file, a
/// setting `NAME_env = "VAR"` is read from the environment as setting `NAME`.
fn read_plugin_auth(mut table: Table<'_, '_>) -> Result<AuthSpec, FieldError> {
    let plugin = table.string("plugin")?;
    let entries = std::mem::take(&mut table.entries);
    let mut settings = BTreeMap::new();
    for (key, node) in entries {
        let env_name = match table.reader.origin {
            Origin::File => key.strip_suffix("_env").filter(|name| !name.is_empty()),
            Origin::Api => None,
        };
        let (name, value) = match env_name {
            Some(name) => {
                let field = table.field(&key);
                let variable = table.reader.string(node, &field)?;
                (name.to_owned(), table.read_env(&field, &variable)?)
            }
            None => (key.clone(), Secret(node.into_setting_text())),
        };
        if settings.insert(name.clone(), value).is_some() {
            return Err(FieldError::new(
                &table.path,
                format!("give either \"{name}\" or \"{name}_env\", not both"),
            ));
        }
    }
    Ok(AuthSpec::Plugin { plugin, settings })
}

fn read_repeater(table: &mut Table<'_, '_>) -> Result<RepeaterSpec, FieldError> {
    let name = table.name()?;
    let kind = table
        .parsed("kind", |text| {
            text.parse::<PayloadKind>()
                .map_err(|error| error.to_string())
        })?
        .ok_or_else(|| table.missing("kind"))?;
    let connection = table.string("connection")?;
    let format = table.string("format")?;
    let mut spec = RepeaterSpec::new(name, kind, connection, format);
    if let Some(paused) = table.bool("paused")? {
        spec.paused = paused;
    }
    if let Some(method) = table.parsed("method", |text| {
        text.parse::<HttpMethod>()
            .map_err(|error| error.to_string())
    })? {
        spec.method = method;
    }
    if let Some(max_workers) = table.unsigned("max_workers", usize::MAX as u64)? {
        spec.max_workers = max_workers as usize;
    }
    if let Some(mut retry) = table.child("retry", &[RETRY_KEYS])? {
        spec.retry = Some(read_retry_override(&mut retry)?);
    }
    spec.retry_codes_add = table.status_codes("retry_codes_add")?;
    spec.retry_codes_remove = table.status_codes("retry_codes_remove")?;
    if let Some(include) = table.bool("include_app_id_param")? {
        spec.include_app_id_param = include;
    }
    spec.xmlns = table.strings("xmlns")?;
    spec.user_blocklist = table.strings("user_blocklist")?;
    spec.case_types = table.strings("case_types")?;
    if let Some(events) = table.parsed("case_events", |text| {
        text.parse::<CaseEvents>()
            .map_err(|error| error.to_string())
    })? {
        spec.case_events = events;
    }
    spec.settings = table.settings("settings")?;
    Ok(spec)
}

#[cfg(test)]
mod tests;
