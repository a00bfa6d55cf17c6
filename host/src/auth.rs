//! Outbound authentication: how the gateway proves who it is to a remote.
//! Static schemes become headers; HTTP Digest answers the remote's challenge;
//! OAuth2 tokens are fetched from the token endpoint, cached until shortly
//! before they expire and fetched again after a 401; `plugin` hands the
//! request to an auth plugin. Only this module and `delivery` reach the network.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::connection::AuthSpec;

/// Tokens are refreshed this long before the expiry the server gave.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// When a token response has no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("oauth2 token request to {url} failed: {problem}")]
    Token { url: String, problem: String },
    #[error("digest challenge from the remote is not usable: {0}")]
    Challenge(String),
}

#[derive(Debug, Clone)]
struct CachedToken {
    access_token: String,
    expires_at: Instant,
}

/// OAuth2 tokens by (token_url, client_id, username and a digest of the
/// secrets): connections that share a token endpoint and client id but not its
/// credentials (another project space, say) never share a token.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, CachedToken>>,
    /// How many tokens were fetched (for metrics and tests).
    fetched: std::sync::atomic::AtomicU64,
}

fn cache_key(spec: &AuthSpec) -> Option<String> {
    let parts: Vec<&str> = match spec {
        AuthSpec::Oauth2ClientCredentials {
            token_url,
            client_id,
            client_secret,
            scope,
        } => vec![
            token_url,
            client_id,
            client_secret.expose(),
            scope.as_deref().unwrap_or_default(),
        ],
        AuthSpec::Oauth2Password {
            token_url,
            client_id,
            client_secret,
            scope,
            username,
            password,
        } => vec![
            token_url,
            client_id,
            client_secret.expose(),
            scope.as_deref().unwrap_or_default(),
            username,
            password.expose(),
        ],
        _ => return None,
    };
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    Some(
        hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect(),
    )
}

impl TokenCache {
    pub fn fetched(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets the token of this auth (after the remote answered 401).
    pub fn invalidate(&self, spec: &AuthSpec) {
        if let Some(key) = cache_key(spec) {
            self.tokens.lock().expect("token cache").remove(&key);
        }
    }

    /// A valid access token, from the cache or freshly fetched.
    pub async fn token(
        &self,
        client: &reqwest::Client,
        spec: &AuthSpec,
    ) -> Result<String, AuthError> {
        let Some(key) = cache_key(spec) else {
            return Err(AuthError::Token {
                url: String::new(),
                problem: "not an oauth2 auth".into(),
            });
        };
        if let Some(cached) = self.tokens.lock().expect("token cache").get(&key)
            && cached.expires_at > Instant::now()
        {
            return Ok(cached.access_token.clone());
        }
        let (token_url, form) = match spec {
            AuthSpec::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                let mut form = vec![
                    ("grant_type", "client_credentials".to_owned()),
                    ("client_id", client_id.clone()),
                    ("client_secret", client_secret.expose().to_owned()),
                ];
                if let Some(scope) = scope {
                    form.push(("scope", scope.clone()));
                }
                (token_url, form)
            }
            AuthSpec::Oauth2Password {
                token_url,
                client_id,
                client_secret,
                scope,
                username,
                password,
            } => {
                let mut form = vec![
                    ("grant_type", "password".to_owned()),
                    ("client_id", client_id.clone()),
                    ("client_secret", client_secret.expose().to_owned()),
                    ("username", username.clone()),
                    ("password", password.expose().to_owned()),
                ];
                if let Some(scope) = scope {
                    form.push(("scope", scope.clone()));
                }
                (token_url, form)
            }
            _ => unreachable!("cache_key accepted only oauth2 auths"),
        };
        let token_error = |problem: String| AuthError::Token {
            url: token_url.clone(),
            problem,
        };
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let response = client
            .post(token_url.as_str())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| token_error(describe_send_error(&e)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| token_error(e.without_url().to_string()))?;
        if !status.is_success() {
            return Err(token_error(format!(
                "answered {}: {}",
                status.as_u16(),
                excerpt(&text)
            )));
        }
        let parsed: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| token_error(format!("answer is not JSON: {e}")))?;
        let access_token = parsed
            .get("access_token")
            .and_then(|v| v.as_str())
            .ok_or_else(|| token_error("answer has no access_token".into()))?
            .to_owned();
        let lifetime = parsed
            .get("expires_in")
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        let expires_at = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN.min(lifetime / 2));
        self.fetched
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tokens.lock().expect("token cache").insert(
            key,
            CachedToken {
                access_token: access_token.clone(),
                expires_at,
            },
        );
        Ok(access_token)
    }
}

/// Why the token request did not get an answer, with its causes.
fn describe_send_error(error: &reqwest::Error) -> String {
    if let Some(refused) = crate::egress::refusal_in(error) {
        return refused.to_string();
    }
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    let mut text = if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
    .to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn excerpt(text: &str) -> String {
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim().to_owned()
}

/// The `Authorization` value for HTTP Basic.
pub fn basic_header(username: &str, password: &str) -> String {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    format!("Basic {encoded}")
}

/// A parsed `WWW-Authenticate: Digest ...` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestChallenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: String,
    /// Whether the server offers qop=auth.
    pub qop_auth: bool,
}

/// Parses the Digest challenge among a response's `WWW-Authenticate` values.
pub fn parse_digest_challenge(header: &str) -> Result<DigestChallenge, AuthError> {
    let trimmed = header.trim_start();
    let Some(rest) = trimmed
        .get(..6)
        .filter(|scheme| scheme.eq_ignore_ascii_case("digest"))
        .map(|_| &trimmed[6..])
    else {
        return Err(AuthError::Challenge(format!(
            "not a Digest challenge: {header}"
        )));
    };
    let mut params: HashMap<String, String> = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if name.trim().is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            break;
        }
        let value = if chars.peek() == Some(&'"') {
            chars.next();
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    other => value.push(other),
                }
            }
            value
        } else {
            std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_owned()
        };
        params.insert(name.trim().to_ascii_lowercase(), value);
    }
    let required = |name: &str| {
        params
            .get(name)
            .cloned()
            .ok_or_else(|| AuthError::Challenge(format!("no {name} in {header}")))
    };
    let algorithm = params
        .get("algorithm")
        .cloned()
        .unwrap_or_else(|| "MD5".into());
    if !matches!(algorithm.to_ascii_uppercase().as_str(), "MD5" | "SHA-256") {
        return Err(AuthError::Challenge(format!(
            "unsupported algorithm {algorithm}"
        )));
    }
    Ok(DigestChallenge {
        realm: required("realm")?,
        nonce: required("nonce")?,
        opaque: params.get("opaque").cloned(),
        algorithm,
        qop_auth: params
            .get("qop")
            .is_some_and(|qop| qop.split(',').any(|q| q.trim() == "auth")),
    })
}

fn digest_hex(algorithm: &str, text: &str) -> String {
    let bytes: Vec<u8> = if algorithm.eq_ignore_ascii_case("SHA-256") {
        Sha256::digest(text.as_bytes()).to_vec()
    } else {
        Md5::digest(text.as_bytes()).to_vec()
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `Authorization` value answering a Digest challenge (RFC 7616).
pub fn digest_header(
    challenge: &DigestChallenge,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
) -> String {
    let algorithm = &challenge.algorithm;
    let ha1 = digest_hex(
        algorithm,
        &format!("{username}:{}:{password}", challenge.realm),
    );
    let ha2 = digest_hex(algorithm, &format!("{method}:{uri}"));
    let nc = "00000001";
    let response = if challenge.qop_auth {
        digest_hex(
            algorithm,
            &format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", challenge.nonce),
        )
    } else {
        digest_hex(algorithm, &format!("{ha1}:{}:{ha2}", challenge.nonce))
    };
    let mut header = format!(
        "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", algorithm={algorithm}, response=\"{response}\"",
        challenge.realm, challenge.nonce
    );
    if challenge.qop_auth {
        header.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
    }
    if let Some(opaque) = &challenge.opaque {
        header.push_str(&format!(", opaque=\"{opaque}\""));
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_is_base64_of_user_and_password() {
        assert_eq!(basic_header("u", "p"), "Basic dTpw");
    }

    #[test]
    fn digest_matches_rfc_2617_example() {
        // RFC 2617 section 3.5.
        let challenge = parse_digest_challenge(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap();
        assert!(challenge.qop_auth);
        let header = digest_header(
            &challenge,
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "0a4f113b",
        );
        assert!(
            header.contains(r#"response="6629fae49393a05397450978507c4ef1""#),
            "{header}"
        );
        assert!(header.contains(r#"opaque="5ccc069c403ebaf9f0171e9517f40e41""#));
    }

    #[test]
    fn tokens_are_shared_only_by_identical_credentials() {
        let spec = |secret: &str| AuthSpec::Oauth2ClientCredentials {
            token_url: "https://idp.example/token".into(),
            client_id: "gateway".into(),
            client_secret: crate::secrets::Secret::new(secret),
            scope: None,
        };
        assert_eq!(cache_key(&spec("a")), cache_key(&spec("a")));
        assert_ne!(
            cache_key(&spec("a")),
            cache_key(&spec("b")),
            "another domain's guess must not reuse a token"
        );
        assert!(
            !cache_key(&spec("s3cret-value")).unwrap().contains("s3cret"),
            "the key holds a digest only"
        );
    }

    #[test]
    fn digest_challenges_that_cannot_be_answered_are_errors() {
        assert!(parse_digest_challenge("Basic realm=\"x\"").is_err());
        assert!(parse_digest_challenge("Digest realm=\"x\"").is_err());
        assert!(
            parse_digest_challenge("Digest realm=\"x\", nonce=\"n\", algorithm=SHA-512").is_err()
        );
    }
}
