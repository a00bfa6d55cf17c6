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
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::{self, AuthError, TokenCache};
use crate::catalog::Origin;
use crate::clock::Clock;
use crate::connection::{AuthSpec, ConnectionSpec};
use crate::egress::{self, Clients, EgressPolicy};
use crate::plugins::{self, Payload, PluginError, PluginHost};
use crate::record::{self, Attempt, DeliveryError, Outcome, PayloadRef, RepeatRecord};
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
    /// Each connection's client (its TLS settings, the egress guard).
    clients: Clients,
    plugins: Arc<PluginHost>,
    tokens: TokenCache,
    default_timeout: Duration,
    clock: Clock,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").finish_non_exhaustive()
    }
}

impl Delivery {
    pub fn new(
        plugins: Arc<PluginHost>,
        config: &DeliveryConfig,
        clock: Clock,
    ) -> anyhow::Result<Delivery> {
        let egress = Arc::new(EgressPolicy::new(config.allowed_networks.clone()));
        Ok(Delivery {
            clients: Clients::new(egress)?,
            plugins,
            tokens: TokenCache::new(clock),
            default_timeout: config.default_timeout,
            clock,
        })
    }

    /// The policy for connections made with a domain token.
    pub fn egress(&self) -> &EgressPolicy {
        self.clients.policy()
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
        let prepared = match self
            .prepare(record_id, record, source, repeater, connection)
            .await
        {
            Ok(prepared) => prepared,
            Err(NotSent::PluginMissing(name)) => return SendResult::PluginMissing(name),
            Err(NotSent::Nothing) => {
                return SendResult::Done {
                    outcome: Outcome::Empty,
                    attempt: None,
                };
            }
            Err(NotSent::Failed(error)) => return failed(error),
        };
        let PreparedRequest {
            method,
            url,
            headers,
            body,
        } = prepared;
        let exchange = match self.exchange(connection, origin, method, url, headers, body) {
            Ok(exchange) => exchange,
            Err(error) => return failed(error),
        };
        self.attempt(record_id, &exchange, repeater, connection)
            .await
    }

    /// Sends one `GET` to the connection's URL with its headers and
    /// authentication, through the same client and egress guard a delivery
    /// uses (the console's "Test connection"). Returns the status and the
    /// start of the answer.
    pub async fn test_connection(
        &self,
        connection: &ConnectionSpec,
        origin: Origin,
    ) -> Result<(u16, String), DeliveryError> {
        let url = connection_url(connection)?;
        let mut headers = HeaderMap::new();
        for (name, value) in &connection.headers {
            put_header(&mut headers, name, value)?;
        }
        let exchange = self.exchange(
            connection,
            origin,
            reqwest::Method::GET,
            url,
            headers,
            Vec::new(),
        )?;
        let answer = self
            .exchange_with_auth(&exchange, &connection.auth, "connection-test")
            .await?;
        Ok((
            answer.status,
            String::from_utf8_lossy(&answer.body).into_owned(),
        ))
    }

    /// An exchange over the client `connection` and `origin` call for: one
    /// made with a domain token goes through the egress guard. A TLS file
    /// that went missing since the connection was checked fails it before
    /// anything is sent, like a failed handshake: retried, and the error
    /// names the key and the file.
    fn exchange(
        &self,
        connection: &ConnectionSpec,
        origin: Origin,
        method: reqwest::Method,
        url: reqwest::Url,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<Exchange<'_>, DeliveryError> {
        let guarded = origin == Origin::Domain;
        let client =
            self.clients
                .get(connection, guarded)
                .map_err(|problem| DeliveryError::Tls {
                    causes: format!(": {problem}"),
                })?;
        Ok(Exchange {
            client,
            guard: guarded.then_some(&**self.clients.policy()),
            method,
            url,
            headers,
            body,
            timeout: connection.timeout.unwrap_or(self.default_timeout),
            clock: self.clock,
        })
    }

    /// The request an attempt at `record` would make now (the payload built
    /// from the form or case as it stands, the connection's headers and the
    /// `Idempotency-Key`), before authentication is added; or why nothing
    /// would be sent. The console shows it on a record's page.
    pub async fn prepare(
        &self,
        record_id: &str,
        record: &RepeatRecord,
        source: SendSource,
        repeater: &RepeaterSpec,
        connection: &ConnectionSpec,
    ) -> Result<PreparedRequest, NotSent> {
        let Some(plugin) = self.plugins.get(&repeater.format) else {
            return Err(NotSent::PluginMissing(repeater.format.clone()));
        };
        let mut form_object = None;
        let event = match (&record.payload, source) {
            (_, SendSource::Missing(reason)) => {
                return Err(NotSent::Failed(DeliveryError::PluginFailed { reason }));
            }
            (
                PayloadRef::Form { .. },
                SendSource::Form {
                    form,
                    xml,
                    indexed_on,
                },
            ) => {
                if plugin.wants_form_object() {
                    match crate::data_api::form_object::form_object_json(&form, &xml, indexed_on) {
                        Ok(json) => form_object = Some(json),
                        Err(error) => {
                            return Err(NotSent::Failed(DeliveryError::PluginFailed {
                                reason: error.to_string(),
                            }));
                        }
                    }
                }
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
                return Err(NotSent::Failed(DeliveryError::PluginFailed {
                    reason: format!(
                        "record payload {payload:?} does not match what the store holds"
                    ),
                }));
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
            .build_payload_async(&plugin, record.kind, &event, form_object, &settings)
            .await
        {
            Ok(payload) => payload,
            Err(PluginError::Missing(name)) => return Err(NotSent::PluginMissing(name)),
            Err(error) => {
                return Err(NotSent::Failed(DeliveryError::PluginFailed {
                    reason: error.to_string(),
                }));
            }
        };
        let request = match payload {
            Payload::Send(request) => request,
            Payload::Nothing => return Err(NotSent::Nothing),
        };
        let mut url = connection_url(connection).map_err(NotSent::Failed)?;
        if !request.query.is_empty() {
            let mut query = url.query_pairs_mut();
            for pair in &request.query {
                query.append_pair(&pair.name, &pair.value);
            }
        }
        let mut headers = HeaderMap::new();
        // Every header is tried; the last invalid one is reported.
        let mut header_problem = None;
        let mut put = |name: &str, value: &str| {
            if let Err(error) = put_header(&mut headers, name, value) {
                header_problem = Some(error);
            }
        };
        put("content-type", &request.content_type);
        for pair in &request.headers {
            put(&pair.name, &pair.value);
        }
        for (name, value) in &connection.headers {
            put(name, value);
        }
        put("idempotency-key", record_id);
        if let Some(error) = header_problem {
            return Err(NotSent::Failed(error));
        }
        let method = match repeater.method {
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
        };
        Ok(PreparedRequest {
            method,
            url,
            headers,
            body: request.body,
        })
    }

    /// Sends a prepared exchange with the connection's authentication and
    /// classifies the answer.
    async fn attempt(
        &self,
        record_id: &str,
        exchange: &Exchange<'_>,
        repeater: &RepeaterSpec,
        connection: &ConnectionSpec,
    ) -> SendResult {
        let started_at = self.clock.now_micros();
        let started = self.clock.instant();
        let result = self
            .exchange_with_auth(exchange, &connection.auth, record_id)
            .await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
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
                let excerpt = response_excerpt(&answer.body);
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
                let outcome = record::classify_failure(&error);
                attempt.error = Some(error.to_string());
                outcome
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
    ) -> Result<Answer, DeliveryError> {
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
                let challenge = auth::parse_digest_challenge(challenge).map_err(auth_failure)?;
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
                    return Err(DeliveryError::AuthSchemeFailed {
                        reason: format!("auth plugin \"{plugin}\" is not loaded"),
                    });
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
                    unix_time: u64::try_from(self.clock.now_micros() / 1_000_000).unwrap_or(0),
                };
                let settings: Vec<(String, String)> = settings
                    .iter()
                    .map(|(name, value)| (name.clone(), value.expose().to_owned()))
                    .collect();
                let added = self
                    .plugins
                    .sign_async(&loaded, &request, &settings)
                    .await
                    .map_err(|error| DeliveryError::AuthSchemeFailed {
                        reason: error.to_string(),
                    })?;
                exchange.run_with(&added).await
            }
        }
    }
}

impl Delivery {
    /// An OAuth2 access token, fetched over the connection's own client (so
    /// the token URL is held to the same egress policy and TLS settings:
    /// `ca_file`, the client certificate and `skip_cert_verify` apply to it too).
    async fn oauth2_token(
        &self,
        exchange: &Exchange<'_>,
        auth_spec: &AuthSpec,
    ) -> Result<String, DeliveryError> {
        if let (
            Some(policy),
            AuthSpec::Oauth2ClientCredentials { token_url, .. }
            | AuthSpec::Oauth2Password { token_url, .. },
        ) = (exchange.guard, auth_spec)
        {
            policy.check_url_text(token_url).map_err(|refused| {
                DeliveryError::TokenEndpointFailed {
                    url: token_url.clone(),
                    problem: refused.to_string(),
                }
            })?;
        }
        self.tokens
            .token(&exchange.client, auth_spec)
            .await
            .map_err(auth_failure)
    }
}

/// An auth scheme's failure, as a delivery error.
fn auth_failure(error: AuthError) -> DeliveryError {
    match error {
        AuthError::TokenAnswered {
            url,
            status,
            excerpt,
        } => DeliveryError::TokenEndpointAnswered {
            url,
            status,
            excerpt,
        },
        AuthError::Token { url, problem } => DeliveryError::TokenEndpointFailed { url, problem },
        error @ (AuthError::Challenge(_) | AuthError::NotOauth2(_)) => {
            DeliveryError::AuthSchemeFailed {
                reason: error.to_string(),
            }
        }
    }
}

/// A request as [`Delivery::prepare`] builds it: what would go to the remote,
/// less the authentication added when it is sent.
#[derive(Debug)]
pub struct PreparedRequest {
    pub method: reqwest::Method,
    pub url: reqwest::Url,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Why [`Delivery::prepare`] built no request.
#[derive(Debug)]
pub enum NotSent {
    /// The repeater's format plugin is not loaded.
    PluginMissing(String),
    /// The format plugin decided there is nothing to send (`empty`).
    Nothing,
    /// Building the request failed.
    Failed(DeliveryError),
}

/// An attempt that ended before anything was sent.
fn failed(error: DeliveryError) -> SendResult {
    SendResult::Done {
        outcome: record::classify_failure(&error),
        attempt: None,
    }
}

/// The connection's URL, or why it is not one.
fn connection_url(connection: &ConnectionSpec) -> Result<reqwest::Url, DeliveryError> {
    reqwest::Url::parse(&connection.url).map_err(|error| DeliveryError::RequestInvalid {
        reason: format!("connection url {}: {error}", connection.url),
    })
}

/// Sets one request header, or says that it is not a valid HTTP header.
fn put_header(headers: &mut HeaderMap, name: &str, value: &str) -> Result<(), DeliveryError> {
    match (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        (Ok(name), Ok(value)) => {
            headers.insert(name, value);
            Ok(())
        }
        _ => Err(DeliveryError::RequestInvalid {
            reason: format!("header {name:?} is not a valid HTTP header"),
        }),
    }
}

/// One prepared HTTP request, sendable more than once.
struct Exchange<'a> {
    client: reqwest::Client,
    /// Set for connections made with a domain token.
    guard: Option<&'a EgressPolicy>,
    method: reqwest::Method,
    url: reqwest::Url,
    headers: HeaderMap,
    body: Vec<u8>,
    timeout: Duration,
    clock: Clock,
}

/// What the remote answered.
struct Answer {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<Duration>,
    digest_challenge: Option<String>,
}

impl Exchange<'_> {
    async fn run(&self, auth_header: Option<(String, String)>) -> Result<Answer, DeliveryError> {
        let extra: Vec<(String, String)> = auth_header.into_iter().collect();
        self.run_with(&extra).await
    }

    async fn run_with(&self, extra_headers: &[(String, String)]) -> Result<Answer, DeliveryError> {
        if let Some(policy) = self.guard {
            policy
                .check_url(&self.url)
                .map_err(|refused| DeliveryError::EgressRefused {
                    reason: refused.to_string(),
                })?;
        }
        let mut headers = self.headers.clone();
        for (name, value) in extra_headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                DeliveryError::AuthSchemeFailed {
                    reason: format!("auth header name {name:?} is not valid"),
                }
            })?;
            let value =
                HeaderValue::from_str(value).map_err(|_| DeliveryError::AuthSchemeFailed {
                    reason: format!("auth header {name} has an invalid value"),
                })?;
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
            .and_then(|value| parse_retry_after(value, self.clock.now_micros()));
        let digest_challenge = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.trim_start().to_ascii_lowercase().starts_with("digest"))
            .map(str::to_owned);
        // Only the excerpt is read: the rest of a longer body is never
        // taken off the socket, and dropping `response` closes the
        // connection. The request's timeout covers this reading too, so a
        // body that trickles ends as a timeout.
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
                Err(error) if error.is_timeout() => {
                    return Err(DeliveryError::Timeout {
                        after: self.timeout,
                    });
                }
                // An answer that breaks off is no answer: the remote may not
                // have finished with the payload, and the record's
                // Idempotency-Key makes sending it again safe.
                Err(error) => {
                    return Err(DeliveryError::AnswerBrokeOff {
                        status,
                        causes: auth::causes(&error),
                    });
                }
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

/// A network error, typed by what went wrong.
fn describe_error(error: &reqwest::Error, timeout: Duration) -> DeliveryError {
    if error.is_timeout() {
        return DeliveryError::Timeout { after: timeout };
    }
    if let Some(refused) = egress::refusal_in(error) {
        return DeliveryError::EgressRefused {
            reason: refused.to_string(),
        };
    }
    let causes = auth::causes(error);
    // Before the connect/request split: under TLS 1.3 a remote refuses a
    // missing client certificate after the client's side of the handshake,
    // so the refusal arrives with the answer.
    if let Some(tls_error) = tls_failure_in(error) {
        let causes = match tls_hint(tls_error) {
            Some(hint) => format!(": {hint}{causes}"),
            None => causes,
        };
        return DeliveryError::Tls { causes };
    }
    if error.is_connect() {
        DeliveryError::Connect { causes }
    } else {
        DeliveryError::Request { causes }
    }
}

/// The rustls error among the causes (a certificate or handshake failure).
fn tls_failure_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(tls_error) = rustls_error(cause) {
            return Some(tls_error);
        }
        current = cause.source();
    }
    None
}

/// rustls hands its error up inside an `io::Error` (sometimes inside another),
/// whose `source` skips it, so each `io::Error` is looked into.
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls_error) = error.downcast_ref::<rustls::Error>() {
        return Some(tls_error);
    }
    error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
        .and_then(|inner| rustls_error(inner))
}

/// What a TLS failure means for the operator, and the connection key that
/// usually fixes it (rustls' own words follow in the causes).
fn tls_hint(error: &rustls::Error) -> Option<&'static str> {
    use rustls::{AlertDescription, CertificateError};
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Some(
            "the remote's certificate is not trusted (unknown issuer); set ca_file to the CA that signed it",
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => Some("the remote's certificate is not valid for the connection's host name"),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => Some("the remote's certificate has expired"),
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            Some("the remote requires a client certificate; set client_cert and client_key")
        }
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate,
        ) => Some("the remote refused the client certificate"),
        _ => None,
    }
}

/// `Retry-After` as delta-seconds or an HTTP date, read at `now`. Any number
/// of seconds is taken (too many for a `Duration` saturate; the caller caps
/// the wait at the repeater's `max_wait`); a date in the past means now;
/// anything else (a negative number, a fraction, garbage) is no `Retry-After`.
pub fn parse_retry_after(value: &str, now: i64) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = crate::time::parse_http_date(value)?;
    Some(crate::clock::between(now, at))
}

/// The kept excerpt of a response body as text: invalid UTF-8 replaced,
/// and still no longer than [`RESPONSE_EXCERPT_BYTES`] (a replacement
/// character is wider than the byte it stands for).
fn response_excerpt(body: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    let mut end = text.len().min(RESPONSE_EXCERPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
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

    const NOW: i64 = 1_445_412_480_000_000; // 2015-10-21T07:28:00Z

    #[test]
    fn retry_after_reads_seconds_of_any_size() {
        assert_eq!(
            parse_retry_after("120", NOW),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", NOW), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("18446744073709551615", NOW),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999999999999", NOW),
            Some(Duration::from_secs(u64::MAX)),
            "more seconds than fit saturate"
        );
    }

    #[test]
    fn retry_after_reads_http_dates_past_and_far() {
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:30 GMT", NOW),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", NOW),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        let far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", NOW).unwrap();
        assert!(far > Duration::from_secs(7_000 * 365 * 86_400), "{far:?}");
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", i64::MIN),
            Some(Duration::from_micros(i64::MAX as u64)),
            "saturates rather than wraps"
        );
    }

    #[test]
    fn retry_after_garbage_is_ignored() {
        for garbage in ["", "soon", "-5", "+5", "1.5", "12 s", "0x10", "\u{661}"] {
            assert_eq!(parse_retry_after(garbage, NOW), None, "{garbage:?}");
        }
    }

    fn connection(url: &str) -> ConnectionSpec {
        ConnectionSpec::from_json(serde_json::json!({ "name": "remote", "url": url })).unwrap()
    }

    /// A remote that answers a TLS handshake with plain text.
    async fn not_tls() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/in", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                use tokio::io::AsyncWriteExt as _;
                let _ = socket
                    .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\nnot tls\r\n")
                    .await;
            }
        });
        url
    }

    #[tokio::test]
    async fn network_failures_are_typed_by_what_went_wrong() {
        let client = egress::client_for(&connection("https://127.0.0.1:1/in"), None).unwrap();
        let timeout = Duration::from_secs(5);
        let tls = client.get(not_tls().await).send().await.unwrap_err();
        let failure = describe_error(&tls, timeout);
        assert!(
            matches!(&failure, DeliveryError::Tls { causes } if !causes.is_empty()),
            "{failure:?}"
        );
        assert!(
            failure.to_string().starts_with("connection failed: "),
            "{failure}"
        );

        // Nothing listens on a port just released.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let refused = client
            .get(format!("http://127.0.0.1:{port}/in"))
            .send()
            .await
            .unwrap_err();
        let failure = describe_error(&refused, timeout);
        assert!(
            matches!(failure, DeliveryError::Connect { .. }),
            "{failure:?}"
        );
        assert!(matches!(
            record::classify_failure(&failure),
            Outcome::Retryable { status: None, .. }
        ));
    }

    #[test]
    fn the_kept_excerpt_never_passes_its_limit() {
        let mut body = vec![b'x'; RESPONSE_EXCERPT_BYTES - 1];
        body.push(0xff);
        let excerpt = response_excerpt(&body);
        assert!(excerpt.len() <= RESPONSE_EXCERPT_BYTES, "{}", excerpt.len());
        assert!(excerpt.starts_with("xxx"));
        assert_eq!(response_excerpt("é".as_bytes()), "é");
    }

    #[test]
    fn passwords_never_show_in_urls() {
        let url = reqwest::Url::parse("https://u:secret@example.org/in?x=1").unwrap();
        assert_eq!(redact_url(&url), "https://u:********@example.org/in?x=1");
    }
}
