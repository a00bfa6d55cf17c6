//! Connections (CommCare's "Connection Settings"): where a repeater sends and
//! how it authenticates. [`ConnectionSpec`] is the one shape the config file's
//! `[[connections]]`, the admin API's JSON bodies and the store share, read by
//! serde and checked by [`ConnectionSpec::validate`]; the secrets in its
//! [`AuthSpec`] are [`Secret`]s, shown redacted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::field::{
    self, FieldError, check_http_url, check_not_empty, check_object_name, check_plugin_name,
    is_email_address, key_path,
};
use crate::secrets::Secret;
use crate::tls::ClientTls;
use crate::units;

/// Header names a connection may not set because repeatd owns them.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "idempotency-key",
    "transfer-encoding",
];

/// Where and how a repeater sends (CommCare's "Connection Settings").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    pub name: String,
    pub url: String,
    /// Addresses that get an e-mail when a send fails.
    #[serde(default)]
    pub notify: Vec<String>,
    #[serde(default)]
    pub auth: AuthSpec,
    /// Extra headers on every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request timeout; `[delivery] default_timeout` when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "units::optional_duration"
    )]
    pub timeout: Option<Duration>,
    /// Accept any certificate (testing only; warned about at start-up).
    #[serde(default)]
    pub skip_cert_verify: bool,
    /// A PEM bundle trusted for this connection instead of the built-in roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS: a PEM certificate chain and its key, both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

impl ConnectionSpec {
    /// Reads a connection from an admin API body: the domain is in the URL path,
    /// `name` may be left out (empty) when the path names the connection, and
    /// environment references (`password_env`) are refused. Call
    /// [`ConnectionSpec::validate`] next.
    pub fn from_json(value: serde_json::Value) -> Result<Self, FieldError> {
        field::from_json_body(value)
    }

    /// A copy fit to show: every secret replaced by [`Secret::PLACEHOLDER`].
    pub fn redacted(&self) -> ConnectionSpec {
        ConnectionSpec {
            auth: self.auth.redacted(),
            ..self.clone()
        }
    }

    /// How this connection speaks TLS.
    pub fn tls(&self) -> ClientTls {
        ClientTls {
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            skip_cert_verify: self.skip_cert_verify,
        }
    }

    /// The keys of the TLS files it sets (`ca_file`, `client_cert`, `client_key`).
    pub fn tls_file_keys(&self) -> impl Iterator<Item = &'static str> {
        [
            ("ca_file", &self.ca_file),
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
        ]
        .into_iter()
        .filter(|(_, file)| file.is_some())
        .map(|(key, _)| key)
    }

    /// The warning `skip_cert_verify` calls for, logged at start-up and
    /// whenever the API saves such a connection.
    pub fn warn_if_unverified(&self, domain: &str) {
        if self.skip_cert_verify {
            tracing::warn!(
                domain,
                connection = %self.name,
                "connection \"{}\" of domain \"{domain}\" has skip_cert_verify = true: any TLS certificate is accepted, so its traffic can be intercepted",
                self.name
            );
        }
    }

    /// Checks the values; field names are relative to the connection. The
    /// TLS files are read (and must hold what their key says).
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
        self.auth.validate().map_err(|error| error.within("auth"))?;
        self.tls().validate()
    }
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

/// The `type` tags, as [`AuthSpec::type_name`] gives them.
pub const AUTH_TYPES: [&str; 8] = [
    "none",
    "basic",
    "digest",
    "bearer",
    "api_key",
    "oauth2_client_credentials",
    "oauth2_password",
    "plugin",
];

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
        for (_, secret) in copy.named_secrets_mut() {
            *secret = Secret::new(Secret::PLACEHOLDER);
        }
        copy
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

/// Read by hand rather than derived: which keys an `auth` table may hold
/// depends on its `type`, and a plugin's table takes any key, which serde's
/// internally tagged enums cannot refuse or report by key path.
impl<'de> Deserialize<'de> for AuthSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AuthVisitor;
        impl<'de> Visitor<'de> for AuthVisitor {
            type Value = AuthTable;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AuthTable, A::Error> {
                let mut entries = BTreeMap::new();
                while let Some((key, value)) = map.next_entry()? {
                    entries.insert(key, value);
                }
                Ok(AuthTable { entries })
            }
        }
        deserializer
            .deserialize_map(AuthVisitor)?
            .into_spec()
            .map_err(FieldError::into_serde)
    }
}

/// An `auth` table's keys, taken one by one; errors are relative to it and
/// in serde's words, which [`field::from_serde`] puts in ours.
struct AuthTable {
    entries: BTreeMap<String, serde_json::Value>,
}

impl AuthTable {
    fn into_spec(mut self) -> Result<AuthSpec, FieldError> {
        let auth_type: String = self.required("type")?;
        if auth_type == "plugin" {
            let plugin = self.required("plugin")?;
            let settings = std::mem::take(&mut self.entries)
                .into_iter()
                .map(|(name, value)| {
                    let text = match value {
                        serde_json::Value::String(text) => text,
                        other => other.to_string(),
                    };
                    (name, Secret::new(text))
                })
                .collect();
            return Ok(AuthSpec::Plugin { plugin, settings });
        }
        let allowed: &[&str] = match auth_type.as_str() {
            "none" => &[],
            "basic" | "digest" => &["username", "password"],
            "bearer" => &["token"],
            "api_key" => &["header", "key"],
            "oauth2_client_credentials" => &["token_url", "client_id", "client_secret", "scope"],
            "oauth2_password" => &[
                "token_url",
                "client_id",
                "client_secret",
                "scope",
                "username",
                "password",
            ],
            other => {
                let known = AUTH_TYPES.map(String::from);
                let mut problem = format!(
                    "unknown auth type \"{other}\"; expected {} or plugin",
                    AUTH_TYPES[..AUTH_TYPES.len() - 1].join(", ")
                );
                if let Some(near) = field::did_you_mean(other, &known) {
                    problem.push_str(&format!("; did you mean \"{near}\"?"));
                }
                return Err(FieldError::new("type", problem));
            }
        };
        if let Some(unknown) = self
            .entries
            .keys()
            .find(|key| !allowed.contains(&key.as_str()))
        {
            let expected: Vec<String> = allowed.iter().map(|key| (*key).to_owned()).collect();
            return Err(FieldError::new("", field::unknown_key(unknown, &expected)));
        }
        Ok(match auth_type.as_str() {
            "basic" | "digest" => {
                let username = self.required("username")?;
                let password = self.required("password")?;
                if auth_type == "basic" {
                    AuthSpec::Basic { username, password }
                } else {
                    AuthSpec::Digest { username, password }
                }
            }
            "bearer" => AuthSpec::Bearer {
                token: self.required("token")?,
            },
            "api_key" => AuthSpec::ApiKey {
                header: self.required("header")?,
                key: self.required("key")?,
            },
            "oauth2_client_credentials" => AuthSpec::Oauth2ClientCredentials {
                token_url: self.required("token_url")?,
                client_id: self.required("client_id")?,
                client_secret: self.required("client_secret")?,
                scope: self.optional("scope")?,
            },
            "oauth2_password" => AuthSpec::Oauth2Password {
                token_url: self.required("token_url")?,
                client_id: self.required("client_id")?,
                client_secret: self.required("client_secret")?,
                scope: self.optional("scope")?,
                username: self.required("username")?,
                password: self.required("password")?,
            },
            _ => AuthSpec::None,
        })
    }

    fn optional<T: de::DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, FieldError> {
        self.entries
            .remove(key)
            .map(|value| {
                T::deserialize(value).map_err(|error| FieldError::new(key, error.to_string()))
            })
            .transpose()
    }

    fn required<T: de::DeserializeOwned>(&mut self, key: &str) -> Result<T, FieldError> {
        self.optional(key)?
            .ok_or_else(|| FieldError::new("", format!("missing field `{key}`")))
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
