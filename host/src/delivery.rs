//! Delivery: one attempt of one record. Builds the payload with the
//! repeater's format plugin (from the form or the case as it stands now),
//! adds `Idempotency-Key`, the connection's headers and its authentication,
//! sends it over a pooled HTTP client and classifies what came back into an
//! `Outcome`. Only this module and `auth` reach the network.
//!
//! Connections created or changed with a domain token go through clients
//! guarded by the [`egress`](crate::egress) policy: their names are resolved
//! by a resolver that drops refused addresses, their IP-literal URLs (and
//! OAuth2 token URLs) are checked before sending, and they use no proxy, so
//! the address checked is the one connected to. A refused address is a
//! failed attempt (retried like a network failure, and reported to the
//! connection's contacts) whose error says which address and why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::{self, TokenCache};
use crate::catalog::Origin;
use crate::connection::{AuthSpec, ConnectionSpec};
use crate::egress::{self, EgressPolicy, GuardedResolver};
use crate::plugins::{self, Payload, PluginError, PluginHost};
use crate::record::{self, Attempt, Outcome, PayloadRef, RepeatRecord};
use crate::repeater::{HttpMethod, PayloadKind, RepeaterSpec};
use crate::store::SendSource;

mod settings;
pub use settings::DeliveryConfig;

/// How much of a response body an attempt keeps.
pub const RESPONSE_EXCERPT_BYTES: usize = 64 * 1024;

/// What one delivery attempt came to.
#[derive(Debug)]
pub enum SendResult {
    /// The attempt happened (or the plugin decided it): commit this.
    Done {
        outcome: Outcome,
        attempt: Option<Attempt>,
    },
    /// The repeater's format plugin is not loaded: the record waits for it.
    PluginMissing(String),
}

/// The HTTP side of the gateway.
pub struct Delivery {
    client: reqwest::Client,
    insecure_client: reqwest::Client,
    /// The same two for connections made with a domain token.
    guarded_client: reqwest::Client,
    guarded_insecure_client: reqwest::Client,
    egress: Arc<EgressPolicy>,
    plugins: Arc<PluginHost>,
    tokens: TokenCache,
    default_timeout: Duration,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").finish_non_exhaustive()
    }
}

fn build_client(
    skip_cert_verify: bool,
    guard: Option<&Arc<EgressPolicy>>,
) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if let Some(policy) = guard {
        builder = builder
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
            .no_proxy();
    }
    builder
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(skip_cert_verify)
        .user_agent(concat!("repeatd/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl Delivery {
    pub fn new(plugins: Arc<PluginHost>, config: &DeliveryConfig) -> anyhow::Result<Delivery> {
        let egress = Arc::new(EgressPolicy::new(config.allowed_networks.clone()));
        Ok(Delivery {
            client: build_client(false, None)?,
            insecure_client: build_client(true, None)?,
            guarded_client: build_client(false, Some(&egress))?,
            guarded_insecure_client: build_client(true, Some(&egress))?,
            egress,
            plugins,
            tokens: TokenCache::default(),
            default_timeout: config.default_timeout,
        })
    }

    /// The policy for connections made with a domain token.
    pub fn egress(&self) -> &EgressPolicy {
        &self.egress
    }

    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    /// Makes one attempt at `record`. `origin` says who made the connection:
    /// one made with a domain token may only reach what the egress policy allows.
    pub async fn send(
        &self,
        record_id: &str,
        record: &RepeatRecord,
        source: SendSource,
        repeater: &RepeaterSpec,
        connection: &ConnectionSpec,
        origin: Origin,
    ) -> SendResult {
        let Some(plugin) = self.plugins.get(&repeater.format) else {
            return SendResult::PluginMissing(repeater.format.clone());
        };
        let event = match (&record.payload, source) {
            (_, SendSource::Missing(reason)) => return rejected(reason),
            (PayloadRef::Form { .. }, SendSource::Form { form, xml }) => {
                plugins::form_event(&form, xml)
            }
            (PayloadRef::Case { .. }, SendSource::Case(case)) => plugins::case_event(&case),
            (
                PayloadRef::App {
                    app_id,
                    change,
                    build_id,
                },
                SendSource::App,
            ) => plugins::app_event(&record.domain, app_id, *change, build_id.as_deref()),
            (payload, _) => {
                return rejected(format!(
                    "record payload {payload:?} does not match what the store holds"
                ));
            }
        };
        let mut settings: Vec<(&str, &str)> = repeater
            .settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if repeater.kind == PayloadKind::Form {
            settings.push((
                "include_app_id_param",
                if repeater.include_app_id_param {
                    "true"
                } else {
                    "false"
                },
            ));
        }
        let settings = plugins::pairs(settings);
        let payload = match self
            .plugins
            .clone()
            .build_payload_off_runtime(plugin, record.kind, event, settings)
            .await
        {
            Ok(payload) => payload,
            Err(
                error @ (PluginError::Failed { .. }
                | PluginError::Trapped { .. }
                | PluginError::WrongKind { .. }),
            ) => {
                return rejected(error.to_string());
            }
            Err(PluginError::Missing(name)) => return SendResult::PluginMissing(name),
            Err(error) => return rejected(error.to_string()),
        };
        let request = match payload {
            Payload::Send(request) => request,
            Payload::Nothing => {
                return SendResult::Done {
                    outcome: Outcome::Empty,
                    attempt: None,
                };
            }
        };
        let mut url = match reqwest::Url::parse(&connection.url) {
            Ok(url) => url,
            Err(error) => return rejected(format!("connection url {}: {error}", connection.url)),
        };
        if !request.query.is_empty() {
            let mut query = url.query_pairs_mut();
            for pair in &request.query {
                query.append_pair(&pair.name, &pair.value);
            }
        }
        let mut headers = HeaderMap::new();
        let mut header_problem = None;
        let mut put = |name: &str, value: &str| match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.insert(name, value);
            }
            _ => header_problem = Some(format!("header {name:?} is not a valid HTTP header")),
        };
        put("content-type", &request.content_type);
        for pair in &request.headers {
            put(&pair.name, &pair.value);
        }
        for (name, value) in &connection.headers {
            put(name, value);
        }
        put("idempotency-key", record_id);
        if let Some(problem) = header_problem {
            return rejected(problem);
        }
        let method = match repeater.method {
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
        };
        let guarded = origin == Origin::Domain;
        let exchange = Exchange {
            client: match (guarded, connection.skip_cert_verify) {
                (false, false) => &self.client,
                (false, true) => &self.insecure_client,
                (true, false) => &self.guarded_client,
                (true, true) => &self.guarded_insecure_client,
            },
            guard: guarded.then_some(&*self.egress),
            method,
            url,
            headers,
            body: request.body,
            timeout: connection.timeout.unwrap_or(self.default_timeout),
        };
        let started_at = crate::time::now_micros();
        let clock = Instant::now();
        let result = self
            .exchange_with_auth(&exchange, &connection.auth, record_id)
            .await;
        let duration_ms = clock.elapsed().as_millis() as u64;
        let mut attempt = Attempt {
            number: 0,
            at: started_at,
            duration_ms,
            url: redact_url(&exchange.url),
            status: None,
            response: None,
            error: None,
        };
        let outcome = match result {
            Ok(answer) => {
                attempt.status = Some(answer.status);
                let excerpt = String::from_utf8_lossy(&answer.body).into_owned();
                let outcome = record::classify_status(
                    answer.status,
                    first_line_excerpt(&excerpt),
                    answer.retry_after,
                    &repeater.retry_codes_add,
                    &repeater.retry_codes_remove,
                );
                attempt.response = Some(excerpt);
                if let Outcome::Retryable { error, .. } | Outcome::Rejected { error, .. } = &outcome
                {
                    attempt.error = Some(error.clone());
                }
                outcome
            }
            Err(error) => {
                attempt.error = Some(error.clone());
                Outcome::Retryable {
                    status: None,
                    retry_after: None,
                    error,
                }
            }
        };
        tracing::debug!(
            record = record_id,
            url = %attempt.url,
            auth = connection.auth.type_name(),
            status = ?attempt.status,
            error = ?attempt.error,
            duration_ms,
            "attempt"
        );
        SendResult::Done {
            outcome,
            attempt: Some(attempt),
        }
    }

    /// Sends the request with the connection's authentication. Digest answers
    /// the remote's challenge; OAuth2 fetches a new token once after a 401.
    async fn exchange_with_auth(
        &self,
        exchange: &Exchange<'_>,
        auth_spec: &AuthSpec,
        record_id: &str,
    ) -> Result<Answer, String> {
        match auth_spec {
            AuthSpec::None => exchange.run(None).await,
            AuthSpec::Basic { username, password } => {
                exchange
                    .run(Some((
                        "authorization".into(),
                        auth::basic_header(username, password.expose()),
                    )))
                    .await
            }
            AuthSpec::Bearer { token } => {
                exchange
                    .run(Some((
                        "authorization".into(),
                        format!("Bearer {}", token.expose()),
                    )))
                    .await
            }
            AuthSpec::ApiKey { header, key } => {
                exchange
                    .run(Some((header.clone(), key.expose().to_owned())))
                    .await
            }
            AuthSpec::Digest { username, password } => {
                let first = exchange.run(None).await?;
                if first.status != 401 {
                    return Ok(first);
                }
                let Some(challenge) = first.digest_challenge.as_deref() else {
                    return Ok(first);
                };
                let challenge =
                    auth::parse_digest_challenge(challenge).map_err(|e| e.to_string())?;
                let uri = match exchange.url.query() {
                    Some(query) => format!("{}?{query}", exchange.url.path()),
                    None => exchange.url.path().to_owned(),
                };
                let cnonce = format!("{:016x}", fastrand::u64(..));
                let header = auth::digest_header(
                    &challenge,
                    username,
                    password.expose(),
                    exchange.method.as_str(),
                    &uri,
                    &cnonce,
                );
                exchange.run(Some(("authorization".into(), header))).await
            }
            AuthSpec::Oauth2ClientCredentials { .. } | AuthSpec::Oauth2Password { .. } => {
                let token = self.oauth2_token(exchange, auth_spec).await?;
                let answer = exchange
                    .run(Some(("authorization".into(), format!("Bearer {token}"))))
                    .await?;
                if answer.status != 401 {
                    return Ok(answer);
                }
                self.tokens.invalidate(auth_spec);
                let token = self.oauth2_token(exchange, auth_spec).await?;
                exchange
                    .run(Some(("authorization".into(), format!("Bearer {token}"))))
                    .await
            }
            AuthSpec::Plugin { plugin, settings } => {
                let Some(loaded) = self.plugins.get(plugin) else {
                    return Err(format!("auth plugin \"{plugin}\" is not loaded"));
                };
                let request = plugins::SignRequest {
                    method: exchange.method.as_str().to_owned(),
                    url: exchange.url.to_string(),
                    headers: exchange
                        .headers
                        .iter()
                        .map(|(name, value)| {
                            (
                                name.as_str().to_owned(),
                                String::from_utf8_lossy(value.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body: exchange.body.clone(),
                    record_id: record_id.to_owned(),
                    unix_time: (crate::time::now_micros() / 1_000_000) as u64,
                };
                let settings: Vec<(String, String)> = settings
                    .iter()
                    .map(|(name, value)| (name.clone(), value.expose().to_owned()))
                    .collect();
                let added = self
                    .plugins
                    .clone()
                    .sign_off_runtime(loaded, request, settings)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut extra = Vec::new();
                for (name, value) in added {
                    extra.push((name, value));
                }
                exchange.run_with(&extra).await
            }
        }
    }
}

impl Delivery {
    /// An OAuth2 access token, fetched over the connection's own client (so
    /// the token URL is held to the same egress policy and certificate setting).
    async fn oauth2_token(
        &self,
        exchange: &Exchange<'_>,
        auth_spec: &AuthSpec,
    ) -> Result<String, String> {
        if let (
            Some(policy),
            AuthSpec::Oauth2ClientCredentials { token_url, .. }
            | AuthSpec::Oauth2Password { token_url, .. },
        ) = (exchange.guard, auth_spec)
        {
            policy.check_url_text(token_url).map_err(|refused| {
                format!("oauth2 token request to {token_url} failed: {refused}")
            })?;
        }
        self.tokens
            .token(exchange.client, auth_spec)
            .await
            .map_err(|error| error.to_string())
    }
}

fn rejected(error: String) -> SendResult {
    SendResult::Done {
        outcome: Outcome::Rejected {
            status: None,
            error,
        },
        attempt: None,
    }
}

/// One prepared HTTP request, sendable more than once.
struct Exchange<'a> {
    client: &'a reqwest::Client,
    /// Set for connections made with a domain token.
    guard: Option<&'a EgressPolicy>,
    method: reqwest::Method,
    url: reqwest::Url,
    headers: HeaderMap,
    body: Vec<u8>,
    timeout: Duration,
}

/// What the remote answered.
struct Answer {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<Duration>,
    digest_challenge: Option<String>,
}

impl Exchange<'_> {
    async fn run(&self, auth_header: Option<(String, String)>) -> Result<Answer, String> {
        let extra: Vec<(String, String)> = auth_header.into_iter().collect();
        self.run_with(&extra).await
    }

    async fn run_with(&self, extra_headers: &[(String, String)]) -> Result<Answer, String> {
        if let Some(policy) = self.guard {
            policy
                .check_url(&self.url)
                .map_err(|refused| refused.to_string())?;
        }
        let mut headers = self.headers.clone();
        for (name, value) in extra_headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("auth header name {name:?} is not valid"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("auth header {name} has an invalid value"))?;
            headers.insert(name, value);
        }
        let send = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(headers)
            .body(self.body.clone())
            .timeout(self.timeout)
            .send();
        let mut response = send
            .await
            .map_err(|error| describe_error(&error, self.timeout))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let digest_challenge = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.trim_start().to_ascii_lowercase().starts_with("digest"))
            .map(str::to_owned);
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = RESPONSE_EXCERPT_BYTES - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= RESPONSE_EXCERPT_BYTES {
                        break;
                    }
                }
                Ok(None) => break,
                // The status is what counts; a body cut short is kept as is.
                Err(_) => break,
            }
        }
        Ok(Answer {
            status,
            body,
            retry_after,
            digest_challenge,
        })
    }
}

/// A network error as an operator wants to read it.
fn describe_error(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("timed out after {} ms", timeout.as_millis());
    }
    if let Some(refused) = egress::refusal_in(error) {
        return refused.to_string();
    }
    let mut text = if error.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = crate::time::parse_http_date(value)?;
    let now = crate::time::now_micros();
    Some(Duration::from_micros(at.saturating_sub(now).max(0) as u64))
}

fn first_line_excerpt(text: &str) -> &str {
    let mut end = text.len().min(500);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim()
}

/// The URL without a password, for attempts and e-mails.
pub fn redact_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("********"));
    }
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn passwords_never_show_in_urls() {
        let url = reqwest::Url::parse("https://u:secret@example.org/in?x=1").unwrap();
        assert_eq!(redact_url(&url), "https://u:********@example.org/in?x=1");
    }
}
