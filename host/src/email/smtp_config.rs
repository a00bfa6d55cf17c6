//! Where error e-mails go, as `[smtp]` sets it: the server's URL read into
//! host, port and TLS mode, the sender, the quiet period and the credentials.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::field::{FieldError, Nested, is_mailbox};
use crate::secrets::Secret;
use crate::units;

/// Where error e-mails go. `url` is kept without credentials, so it can be
/// logged; credentials given in the URL end up in `username` and `password`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "SmtpSection")]
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

/// `[smtp]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SmtpSection {
    url: String,
    from: String,
    #[serde(default = "default_quiet_period", with = "units::duration")]
    quiet_period: Duration,
    username: Option<String>,
    password: Option<Secret>,
}

fn default_quiet_period() -> Duration {
    Duration::from_secs(15 * 60)
}

impl TryFrom<SmtpSection> for SmtpConfig {
    type Error = Nested;

    fn try_from(section: SmtpSection) -> Result<Self, Nested> {
        let url_error = |problem: String| Nested(FieldError::new("url", problem));
        let SmtpSection {
            url: url_text,
            from,
            quiet_period,
            mut username,
            mut password,
        } = section;
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
                    "carries credentials and so do smtp.username or smtp.password; keep one"
                        .to_owned(),
                ));
            }
            let decode = |text: &str, part: &str| {
                percent_decode(text).map_err(|()| {
                    url_error(format!("the {part} is not valid percent-encoded UTF-8"))
                })
            };
            username = Some(decode(url.username(), "username")?);
            password = url
                .password()
                .map(|text| decode(text, "password").map(Secret::new))
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
}

impl SmtpConfig {
    /// Field names are relative to `[smtp]`.
    pub fn validate(&self) -> Result<(), FieldError> {
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
