//! Outbound authentication: how the gateway proves who it is to a remote.
//! Static schemes become headers; HTTP Digest answers the remote's challenge;
//! OAuth2 tokens are fetched from the token endpoint, cached until shortly
//! before they expire and fetched again after a 401; `plugin` hands the
//! request to an auth plugin. Only this module and `delivery` reach the network.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::connection::AuthSpec;

/// Tokens are refreshed this long before the expiry the server gave.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// When a token response has no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// Why an auth scheme could not make its headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token endpoint answered with an error status.
    #[error("oauth2 token request to {url} failed: answered {status}: {excerpt}")]
    TokenAnswered {
        url: String,
        status: u16,
        excerpt: String,
    },
    /// The token endpoint was not reached, or its answer was unusable.
    #[error("oauth2 token request to {url} failed: {problem}")]
    Token { url: String, problem: String },
    #[error("digest challenge from the remote is not usable: {0}")]
    Challenge(String),
    /// `token` was asked for an auth that has no token.
    #[error("auth type \"{0}\" has no oauth2 token")]
    NotOauth2(&'static str),
}

#[derive(Debug, Clone)]
struct CachedToken {
    access_token: String,
    /// When it is fetched again (micros, the cache's clock).
    expires_at: i64,
}

/// OAuth2 tokens by (token_url, client_id, username and a digest of the
/// secrets): connections that share a token endpoint and client id but not its
/// credentials (another project space, say) never share a token.
#[derive(Debug, Default)]
pub struct TokenCache {
    clock: Clock,
    tokens: Mutex<HashMap<String, CachedToken>>,
    /// How many tokens were fetched (for metrics and tests).
    fetched: std::sync::atomic::AtomicU64,
}

/// What an OAuth2 auth sends to its token endpoint.
struct Oauth2Grant<'a> {
    token_url: &'a str,
    client_id: &'a str,
    client_secret: &'a str,
    scope: Option<&'a str>,
    /// The resource owner's username and password (the password grant).
    resource_owner: Option<(&'a str, &'a str)>,
}

impl Oauth2Grant<'_> {
    fn of(spec: &AuthSpec) -> Option<Oauth2Grant<'_>> {
        let (token_url, client_id, client_secret, scope, resource_owner) = match spec {
            AuthSpec::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
            } => (token_url, client_id, client_secret, scope, None),
            AuthSpec::Oauth2Password {
                token_url,
                client_id,
                client_secret,
                scope,
                username,
                password,
            } => (
                token_url,
                client_id,
                client_secret,
                scope,
                Some((username.as_str(), password.expose())),
            ),
            _ => return None,
        };
        Some(Oauth2Grant {
            token_url,
            client_id,
            client_secret: client_secret.expose(),
            scope: scope.as_deref(),
            resource_owner,
        })
    }

    /// The form the token endpoint gets.
    fn form(&self) -> Vec<(&'static str, &str)> {
        let grant_type = match self.resource_owner {
            Some(_) => "password",
            None => "client_credentials",
        };
        let mut form = vec![
            ("grant_type", grant_type),
            ("client_id", self.client_id),
            ("client_secret", self.client_secret),
        ];
        if let Some((username, password)) = self.resource_owner {
            form.push(("username", username));
            form.push(("password", password));
        }
        if let Some(scope) = self.scope {
            form.push(("scope", scope));
        }
        form
    }
}

fn cache_key(spec: &AuthSpec) -> Option<String> {
    Oauth2Grant::of(spec).map(|grant| grant.cache_key())
}

impl Oauth2Grant<'_> {
    /// The cache key: a digest of everything that identifies the token.
    fn cache_key(&self) -> String {
        let mut parts = vec![
            self.token_url,
            self.client_id,
            self.client_secret,
            self.scope.unwrap_or_default(),
        ];
        if let Some((username, password)) = self.resource_owner {
            parts.extend([username, password]);
        }
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

impl TokenCache {
    /// An empty cache whose tokens expire by `clock`.
    pub fn new(clock: Clock) -> TokenCache {
        TokenCache {
            clock,
            ..TokenCache::default()
        }
    }

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
        let Some(grant) = Oauth2Grant::of(spec) else {
            return Err(AuthError::NotOauth2(spec.type_name()));
        };
        let key = grant.cache_key();
        if let Some(cached) = self.cached(&key) {
            return Ok(cached);
        }
        let token_url = grant.token_url;
        let token_error = |problem: String| AuthError::Token {
            url: token_url.to_owned(),
            problem,
        };
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(grant.form())
            .finish();
        let response = client
            .post(token_url)
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
            return Err(AuthError::TokenAnswered {
                url: token_url.to_owned(),
                status: status.as_u16(),
                excerpt: excerpt(&text),
            });
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
        self.fetched
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.remember(key, access_token.clone(), lifetime);
        Ok(access_token)
    }

    /// The cached token under `key`, while it is still good.
    fn cached(&self, key: &str) -> Option<String> {
        let now = self.clock.now_micros();
        let tokens = self.tokens.lock().expect("token cache");
        tokens
            .get(key)
            .filter(|cached| cached.expires_at > now)
            .map(|cached| cached.access_token.clone())
    }

    /// Keeps a token the endpoint said lives `lifetime`, to be fetched again
    /// a margin before that (at most half its life, for short-lived ones).
    fn remember(&self, key: String, access_token: String, lifetime: Duration) {
        let good_for = lifetime.saturating_sub(EXPIRY_MARGIN.min(lifetime / 2));
        let expires_at = self.clock.after(good_for);
        self.tokens.lock().expect("token cache").insert(
            key,
            CachedToken {
                access_token,
                expires_at,
            },
        );
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
    let what = if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{what}{}", causes(error))
}

/// `": cause: cause…"`: every cause of `error` in turn, as operators read
/// network failures.
pub fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut source = error.source();
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

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

    fn client_credentials(token_url: &str) -> AuthSpec {
        AuthSpec::Oauth2ClientCredentials {
            token_url: token_url.into(),
            client_id: "gateway".into(),
            client_secret: crate::secrets::Secret::new("s3cret"),
            scope: None,
        }
    }

    /// A token endpoint on loopback handing out `t1`, `t2`, … that live
    /// `expires_in` seconds; returns its URL and how many it handed out.
    async fn token_endpoint(expires_in: u64) -> (String, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let handed_out = Arc::new(AtomicU64::new(0));
        let counter = handed_out.clone();
        let app = axum::Router::new().route(
            "/token",
            axum::routing::post(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    axum::Json(serde_json::json!({
                        "access_token": format!("t{n}"),
                        "expires_in": expires_in,
                    }))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, handed_out)
    }

    #[tokio::test]
    async fn a_token_is_reused_until_a_margin_before_it_expires_then_fetched_again() {
        let (url, handed_out) = token_endpoint(60).await;
        let cache = TokenCache::new(Clock::starting_at(0));
        let client = reqwest::Client::new();
        let spec = client_credentials(&url);
        assert_eq!(cache.token(&client, &spec).await.unwrap(), "t1");
        // Time stands still from here, except as the test moves it; the
        // token lives 60 s and is fetched again 30 s before that.
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(cache.token(&client, &spec).await.unwrap(), "t1");
        assert_eq!(
            handed_out.load(Ordering::SeqCst),
            1,
            "served from the cache"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        tokio::time::resume();
        assert_eq!(
            cache.token(&client, &spec).await.unwrap(),
            "t2",
            "refreshed before the endpoint's expiry, without a 401"
        );
        assert_eq!((handed_out.load(Ordering::SeqCst), cache.fetched()), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_lived_token_is_kept_for_half_its_life() {
        let cache = TokenCache::new(Clock::starting_at(0));
        cache.remember("key".into(), "short".into(), Duration::from_secs(2));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(cache.cached("key").as_deref(), Some("short"));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cache.cached("key"), None, "expired after 1 s of its 2");
        cache.remember("key".into(), "endless".into(), Duration::MAX);
        tokio::time::advance(Duration::from_secs(100 * 365 * 86_400)).await;
        assert_eq!(
            cache.cached("key").as_deref(),
            Some("endless"),
            "an expires_in beyond the end of time saturates instead of wrapping"
        );
    }

    #[tokio::test]
    async fn an_error_status_from_the_token_endpoint_is_typed_with_its_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/token",
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::UNAUTHORIZED,
                    "{\"error\":\"invalid_client\"}",
                )
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let cache = TokenCache::new(Clock::system());
        let error = cache
            .token(&reqwest::Client::new(), &client_credentials(&url))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            AuthError::TokenAnswered {
                url: url.clone(),
                status: 401,
                excerpt: "{\"error\":\"invalid_client\"}".into(),
            }
        );
        assert_eq!(
            error.to_string(),
            format!(
                "oauth2 token request to {url} failed: answered 401: {{\"error\":\"invalid_client\"}}"
            )
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
