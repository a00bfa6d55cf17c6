//! The gateway's configuration: the TOML file given with `repeatd serve
//! --config FILE`, read and validated once at start-up, or the embedded
//! defaults of `repeatd serve` when no file is given. This module only reads
//! and checks the file; the types it fills live with the modules that use
//! them (`connection`, `repeater`, `record`'s retry policy, `email`'s SMTP
//! settings, `plugins`' limits, `delivery`'s settings, `secrets`' [`Secret`]).
//!
//! [`Config`] is one serde struct, deserialized by the `toml` crate with
//! `deny_unknown_fields` everywhere; adding a key is adding a field (and its
//! line in `examples/repeatd.toml`). Before deserializing, a secret given as
//! `<key>_env = "VAR"` is replaced by the variable's value. Every error names
//! the file, the line and column, and the key path
//! (`repeatd.toml:14:1: repeaters[2].retry: unknown key "max_atempts"; did
//! you mean "max_attempts"?`); rules that span several values (references
//! between objects, duplicates) are checked once, after deserializing.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::connection::ConnectionSpec;
use crate::delivery::DeliveryConfig;
use crate::email::SmtpConfig;
use crate::field::{
    self, FREE_FORM_TABLES, FieldError, Origin, check_not_empty, env_reference, key_path,
};
use crate::plugins::PluginLimits;
use crate::record::RetryPolicy;
use crate::repeater::RepeaterSpec;
use crate::retention::RetentionConfig;
use crate::secrets::Secret;
use crate::tls::ServeTls;
use crate::units;

/// The environment variable that sets the admin token, overriding the file.
pub const ADMIN_TOKEN_ENV: &str = "REPEATD_ADMIN_TOKEN";

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// Everything `repeatd serve` runs on. `Config::default()` is the embedded
/// configuration used when no file is given; keys left out of the file keep
/// these defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `address:port` to serve on.
    #[serde(deserialize_with = "socket_address")]
    pub listen: SocketAddr,
    /// Where the store, the secret key and the plugin cache live.
    #[serde(deserialize_with = "non_empty_path")]
    pub data_dir: PathBuf,
    /// Extra plugins (`*.wasm`), watched for changes.
    #[serde(deserialize_with = "non_empty_path")]
    pub plugin_dir: PathBuf,
    /// The admin API's token; `REPEATD_ADMIN_TOKEN` overrides it.
    pub admin_token: Option<Secret>,
    /// Where error e-mails go; none are sent without it.
    #[serde(deserialize_with = "field::optional_table")]
    pub smtp: Option<SmtpConfig>,
    /// Serve HTTPS on `listen` with this certificate and key.
    #[serde(deserialize_with = "field::optional_table")]
    pub tls: Option<ServeTls>,
    #[serde(deserialize_with = "field::table")]
    pub retry: RetryPolicy,
    #[serde(deserialize_with = "field::table")]
    pub plugins: PluginLimits,
    #[serde(deserialize_with = "field::table")]
    pub delivery: DeliveryConfig,
    #[serde(deserialize_with = "field::table")]
    pub ingest: IngestConfig,
    #[serde(deserialize_with = "field::table")]
    pub metrics: MetricsConfig,
    #[serde(deserialize_with = "field::table")]
    pub retention: RetentionConfig,
    #[serde(deserialize_with = "field::table")]
    pub store: StoreConfig,
    #[serde(deserialize_with = "field::tables")]
    pub domains: Vec<DomainConfig>,
    #[serde(deserialize_with = "field::tables")]
    pub api_tokens: Vec<ApiTokenConfig>,
    #[serde(deserialize_with = "field::tables")]
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
            tls: None,
            retry: RetryPolicy::default(),
            plugins: PluginLimits::default(),
            delivery: DeliveryConfig::default(),
            ingest: IngestConfig::default(),
            metrics: MetricsConfig::default(),
            retention: RetentionConfig::default(),
            store: StoreConfig::default(),
            domains: Vec::new(),
            api_tokens: Vec::new(),
            submitters: Vec::new(),
            connections: Vec::new(),
            repeaters: Vec::new(),
        }
    }
}

fn socket_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    units::deserialize_text(deserializer, "an address like \"127.0.0.1:8080\"", |text| {
        text.parse()
            .map_err(|_| format!("expected an address like \"127.0.0.1:8080\", found \"{text}\""))
    })
}

fn non_empty_path<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    units::deserialize_text(deserializer, "a path", |text| {
        if text.is_empty() {
            Err("must not be empty".to_owned())
        } else {
            Ok(PathBuf::from(text))
        }
    })
}

/// Limits on incoming submissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// The largest submission body, in bytes (`"10MB"` or a number).
    #[serde(deserialize_with = "units::size")]
    pub max_body_bytes: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 10_000_000,
        }
    }
}

/// `[store]`: where the gateway keeps everything (SPEC sections 3 and 12).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(deserialize_with = "store_backend")]
    pub backend: StoreBackend,
    /// The PostgreSQL database (`postgres://user:password@host/db`); after
    /// parsing, also what `url_env` named.
    pub url: Option<Secret>,
    /// The environment variable that holds `url`.
    pub url_env: Option<String>,
    /// PostgreSQL: how long a node holds a record it claimed to send; a node
    /// that dies leaves its records to the others after this long.
    #[serde(with = "units::duration")]
    pub lease: Duration,
}

/// Which store `[store] backend` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreBackend {
    /// One file in `data_dir` (the default).
    #[default]
    Redb,
    /// A PostgreSQL database several nodes may share.
    Postgres,
}

impl StoreBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreBackend::Redb => "redb",
            StoreBackend::Postgres => "postgres",
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Redb,
            url: None,
            url_env: None,
            lease: Duration::from_secs(30),
        }
    }
}

fn store_backend<'de, D: Deserializer<'de>>(deserializer: D) -> Result<StoreBackend, D::Error> {
    units::deserialize_text(
        deserializer,
        "\"redb\" or \"postgres\"",
        |text| match text {
            "redb" => Ok(StoreBackend::Redb),
            "postgres" => Ok(StoreBackend::Postgres),
            _ => Err(format!(
                "unknown backend \"{text}\"; expected redb or postgres"
            )),
        },
    )
}

impl StoreConfig {
    /// Reads the URL that `url_env` names into `url`. It is not one of the
    /// secrets every table may name by variable (`<key>_env`), so it is
    /// read here, from the same environment.
    fn read_url_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), FieldError> {
        let Some(variable) = &self.url_env else {
            return Ok(());
        };
        let field = "store.url_env";
        if self.url.is_some() {
            return Err(FieldError::new(
                field,
                "give either \"url\" or \"url_env\", not both",
            ));
        }
        if variable.is_empty() {
            return Err(FieldError::new(field, "must name an environment variable"));
        }
        match env(variable) {
            Some(url) if !url.is_empty() => {
                self.url = Some(Secret::new(url));
                Ok(())
            }
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

    fn validate(&self) -> Result<(), FieldError> {
        if self.lease.is_zero() {
            return Err(FieldError::new("store.lease", "must be longer than zero"));
        }
        match (self.backend, &self.url) {
            (StoreBackend::Redb, Some(_)) => {
                let key = if self.url_env.is_some() {
                    "url_env"
                } else {
                    "url"
                };
                Err(FieldError::new(
                    format!("store.{key}"),
                    "is for backend = \"postgres\"; the backend is \"redb\" (the default)",
                ))
            }
            (StoreBackend::Redb, None) => Ok(()),
            (StoreBackend::Postgres, None) => Err(FieldError::new(
                "store",
                "backend \"postgres\" needs \"url\" or \"url_env\"",
            )),
            (StoreBackend::Postgres, Some(url)) => {
                let url = url.expose();
                if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                    Ok(())
                } else {
                    let key = if self.url_env.is_some() {
                        "url_env"
                    } else {
                        "url"
                    };
                    Err(FieldError::new(
                        format!("store.{key}"),
                        "expected a URL like \"postgres://user:password@host/database\"",
                    ))
                }
            }
        }
    }
}

/// Who may read `GET /metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `true`: anyone who reaches `listen`; `false` (the default): the admin token only.
    pub public: bool,
}

/// A project space.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: String,
}

/// An admin API token limited to one domain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenConfig {
    pub domain: String,
    pub token: Secret,
}

/// A username and password allowed to submit forms to one domain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitterConfig {
    pub domain: String,
    pub username: String,
    pub password: Secret,
}

/// An object declared in the file for one project space: the object's own
/// keys and a `domain` key, in one table.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared<T> {
    pub domain: String,
    pub spec: T,
}

/// Takes `domain` out of the table and hands every other key to `T`, so that
/// `T`'s own `deny_unknown_fields` still refuses strangers, with their
/// position (serde's `flatten` would lose both).
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Declared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DeclaredVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for DeclaredVisitor<T> {
            type Value = Declared<T>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Declared<T>, A::Error> {
                let mut domain = None;
                let spec = T::deserialize(de::value::MapAccessDeserializer::new(WithoutDomain {
                    map,
                    domain: &mut domain,
                }))?;
                let domain = domain.ok_or_else(|| de::Error::missing_field("domain"))?;
                Ok(Declared { domain, spec })
            }
        }
        deserializer.deserialize_map(DeclaredVisitor(PhantomData))
    }
}

/// A table's entries without its `domain`, which lands in `domain`.
struct WithoutDomain<'a, A> {
    map: A,
    domain: &'a mut Option<String>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for WithoutDomain<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let mut seed = Some(seed);
        loop {
            match self.map.next_key_seed(DomainOrKey { seed: &mut seed })? {
                None => return Ok(None),
                Some(Some(key)) => return Ok(Some(key)),
                Some(None) => *self.domain = Some(self.map.next_value()?),
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// Reads a key: `None` for `domain`, else what `seed` makes of it.
struct DomainOrKey<'s, K> {
    seed: &'s mut Option<K>,
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for DomainOrKey<'_, K> {
    type Value = Option<K::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let key = String::deserialize(deserializer)?;
        if key == "domain" {
            return Ok(None);
        }
        match self.seed.take() {
            Some(seed) => seed
                .deserialize(de::value::StringDeserializer::<D::Error>::new(key))
                .map(Some),
            None => Err(de::Error::custom("a key was read twice")),
        }
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why the configuration cannot be used. Displayed as
/// `<source>[:<line>:<column>]: <key path>: <problem>`, each cause said once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The io error is part of the message rather than a `source`, so that a
    /// chain printed with `{:#}` does not say it twice.
    #[error("{}: cannot read the config file: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not valid TOML.
    #[error("{origin}{}: {message}", at(location))]
    Syntax {
        origin: String,
        location: Option<Location>,
        message: String,
    },
    #[error("{origin}{}: {error}", at(location))]
    Invalid {
        origin: String,
        location: Option<Location>,
        error: FieldError,
    },
}

/// A position in the file, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// Where byte `offset` of `text` is.
    fn of(text: &str, offset: usize) -> Location {
        let before = &text[..offset.min(text.len())];
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        Location {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }

    /// The line of `text` this is on, with a caret under the column.
    fn snippet(&self, text: &str) -> String {
        let line = text.lines().nth(self.line - 1).unwrap_or_default();
        let number = self.line.to_string();
        let gutter = " ".repeat(number.len());
        let caret = " ".repeat(self.column - 1);
        format!("\n {number} | {line}\n {gutter} | {caret}^")
    }
}

fn at(location: &Option<Location>) -> String {
    location.map_or_else(String::new, |location| {
        format!(":{}:{}", location.line, location.column)
    })
}

/// A [`FieldError`] with where in the file it was found.
struct Located {
    error: FieldError,
    span: Option<Range<usize>>,
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
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                path: path.to_owned(),
                error,
            })?;
            let origin = path.display().to_string();
            (parse_with_env(&text, &origin, env)?, origin)
        }
    };
    if let Some(token) = env(ADMIN_TOKEN_ENV) {
        if token.is_empty() {
            return Err(ConfigError::Invalid {
                origin: "environment".to_owned(),
                location: None,
                error: FieldError::new(ADMIN_TOKEN_ENV, "is set but empty"),
            });
        }
        config.admin_token = Some(Secret::new(token));
        config.validate().map_err(|error| ConfigError::Invalid {
            origin,
            location: None,
            error,
        })?;
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
    let invalid = |located: Located| ConfigError::Invalid {
        origin: source.to_owned(),
        location: located.span.map(|span| Location::of(text, span.start)),
        error: located.error,
    };
    let mut document = DeTable::parse(text).map_err(|error| {
        let location = error.span().map(|span| Location::of(text, span.start));
        let mut message = error.message().trim_end().to_owned();
        if let Some(location) = location {
            message.push_str(&location.snippet(text));
        }
        ConfigError::Syntax {
            origin: source.to_owned(),
            location,
            message,
        }
    })?;
    resolve_env_references(document.get_mut(), "", env).map_err(invalid)?;
    let positions = document.get_ref().clone();
    let mut config: Config = serde_path_to_error::deserialize(toml::de::Deserializer::from(
        document,
    ))
    .map_err(|error| {
        let mut field_error =
            field::from_serde(error.path(), error.inner().message(), Origin::File);
        // serde sees a TOML datetime as a table of one private key.
        if let Some(DeValue::Datetime(datetime)) =
            locate(&positions, &field_error.field).map(Spanned::get_ref)
            && let Some(expected) = field_error.problem.strip_suffix(", found a table")
        {
            field_error.problem = format!("{expected}, found datetime {datetime}");
        }
        // toml's span is the value or key serde stopped at; a `Deserialize`
        // impl that reads keys of its own (`auth.type`, `smtp.url`) names
        // a deeper key, found in the document.
        let reported = error.inner().span();
        let span = if field::is_nested(error.inner().message()) {
            locate(&positions, &field_error.field)
                .map(Spanned::span)
                .or(reported)
        } else {
            reported
        };
        invalid(Located {
            error: field_error,
            span,
        })
    })?;
    let located = |error: FieldError| {
        invalid(Located {
            span: locate(&positions, &error.field).map(Spanned::span),
            error,
        })
    };
    config.store.read_url_env(env).map_err(located)?;
    config.validate().map_err(located)?;
    Ok(config)
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Replaces every `<secret>_env = "VAR"` of the document by `<secret> =
/// <the variable's value>`, keeping the reference's position.
fn resolve_env_references(
    table: &mut DeTable<'_>,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Located> {
    let in_plugin_auth = table.get("type").and_then(|tag| tag.get_ref().as_str()) == Some("plugin");
    let references: Vec<(String, String)> = table
        .keys()
        .filter_map(|key| {
            env_reference(key.get_ref(), in_plugin_auth)
                .map(|name| (key.get_ref().to_string(), name.to_owned()))
        })
        .collect();
    for (reference, name) in references {
        let Some((key, value)) = table.remove_entry(reference.as_str()) else {
            continue;
        };
        let located = |error: FieldError, span: Range<usize>| Located {
            error,
            span: Some(span),
        };
        if table.contains_key(name.as_str()) {
            return Err(located(
                FieldError::new(
                    path,
                    format!("give either \"{name}\" or \"{reference}\", not both"),
                ),
                key.span(),
            ));
        }
        let field = key_path(path, &reference);
        let secret =
            read_env(value.get_ref(), &field, env).map_err(|error| located(error, value.span()))?;
        table.insert(
            Spanned::new(key.span(), Cow::Owned(name)),
            Spanned::new(value.span(), DeValue::String(Cow::Owned(secret))),
        );
    }
    if in_plugin_auth {
        return Ok(());
    }
    for (key, value) in table.iter_mut() {
        let key = key.get_ref().as_ref();
        if FREE_FORM_TABLES.contains(&key) {
            continue;
        }
        let field = key_path(path, key);
        match value.get_mut() {
            DeValue::Table(child) => resolve_env_references(child, &field, env)?,
            DeValue::Array(items) => {
                for (index, item) in items.iter_mut().enumerate() {
                    if let DeValue::Table(child) = item.get_mut() {
                        resolve_env_references(child, &format!("{field}[{index}]"), env)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The value of the environment variable that `reference` (at `field`) names.
fn read_env(
    reference: &DeValue<'_>,
    field: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, FieldError> {
    let Some(variable) = reference.as_str() else {
        return Err(FieldError::new(
            field,
            format!("expected a string, found {}", reference.type_str()),
        ));
    };
    if variable.is_empty() {
        return Err(FieldError::new(field, "must name an environment variable"));
    }
    match env(variable) {
        Some(value) if !value.is_empty() => Ok(value),
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

/// Where the value at key path `field` (`repeaters[2].connection`,
/// `connections[0].headers."X Bad"`) is written: the deepest part of the
/// path the document has, with its position.
fn locate<'d, 'i>(document: &'d DeTable<'i>, field: &str) -> Option<&'d Spanned<DeValue<'i>>> {
    let mut table = Some(document);
    let mut current: Option<&Spanned<DeValue<'_>>> = None;
    for segment in path_segments(field) {
        let next = match segment {
            PathSegment::Key(key) => table.and_then(|table| table.get(key.as_str())),
            PathSegment::Index(index) => current.and_then(|value| match value.get_ref() {
                DeValue::Array(items) => items.get(index),
                _ => None,
            }),
        };
        let Some(value) = next else { break };
        current = Some(value);
        table = value.get_ref().as_table();
    }
    current
}

enum PathSegment {
    Key(String),
    Index(usize),
}

/// The parts of a key path as [`key_path`] writes it.
fn path_segments(field: &str) -> Vec<PathSegment> {
    let mut segments = Vec::new();
    let mut rest = field;
    while !rest.is_empty() {
        rest = rest.strip_prefix('.').unwrap_or(rest);
        if let Some(after) = rest.strip_prefix('[') {
            let Some((index, tail)) = after.split_once(']') else {
                break;
            };
            let Ok(index) = index.parse() else { break };
            segments.push(PathSegment::Index(index));
            rest = tail;
        } else if rest.starts_with('"') {
            let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<String>();
            let Some(Ok(key)) = stream.next() else { break };
            rest = &rest[stream.byte_offset()..];
            segments.push(PathSegment::Key(key));
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            segments.push(PathSegment::Key(rest[..end].to_owned()));
            rest = &rest[end..];
        }
    }
    segments
}

// ---------------------------------------------------------------------------
// Rules across values
// ---------------------------------------------------------------------------

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
        if let Some(tls) = &self.tls {
            tls.validate().map_err(|error| error.within("tls"))?;
        }
        self.store.validate()?;
        self.plugins
            .validate()
            .map_err(|error| error.within("plugins"))?;
        self.delivery
            .validate()
            .map_err(|error| error.within("delivery"))?;
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

fn check_domain_slug(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let valid = (1..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|&byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
    valid.then_some(()).ok_or_else(|| {
        format!(
            "invalid domain \"{name}\": use 1 to 63 lowercase letters, digits and '-', starting with a letter or digit"
        )
    })
}

#[cfg(test)]
mod tests;
