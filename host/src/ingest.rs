//! The front door: `POST /a/{domain}/receiver[/{app_id}]` takes XForm
//! submissions from devices (raw XML or OpenRosa multipart), and
//! `POST /api/v1/domains/{domain}/apps/{app_id}/events` takes app changes.
//!
//! The receiver speaks OpenRosa 1.0 as ODK Collect and CommCare do: every
//! answer carries `X-OpenRosa-Version` and `X-OpenRosa-Accept-Content-Length`
//! (the body size limit, [`routes`]); `HEAD` checks credentials exactly as
//! `POST` does, before a device uploads a large body; a submission split over
//! several POSTs (`*isIncomplete*`) adds each later part's attachments to the
//! form the first part stored.
//!
//! A submission is authenticated, read within the size limit, parsed and
//! checked completely before anything is stored; then the form, its case
//! changes and its repeat records are committed together and only then is
//! the OpenRosa `201` sent. Ingest never sends anything itself: it tells the
//! scheduler what it registered.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;

use crate::AppState;
use crate::catalog::DomainObjects;
use crate::endpoint::{ApiError, DomainAccess};
use crate::model::Attachment;
use crate::record::AppChange;
use crate::store::IngestResult;
use crate::submission::{self, Submission};
use crate::xform;

const OPENROSA_VERSION: &str = "1.0";

/// The multipart part by which a device says more POSTs of this submission
/// follow (OpenRosa; ODK Collect sends it as `yes`).
const INCOMPLETE_PART: &str = "*isIncomplete*";

/// Argon2 password checks under way at once. Each takes about 19 MiB and tens
/// of milliseconds: unbounded, a burst of devices whose credentials are not
/// cached yet (after a start or a password change), or a flood of wrong
/// passwords, runs hundreds at once and the gateway's memory grows with them.
static PASSWORD_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// The receiver routes, `POST` and `HEAD` on `/a/{domain}/receiver` and
/// `/a/{domain}/receiver/{app_id}`; every answer they give (successes,
/// refusals, a method they do not take) carries the OpenRosa headers.
pub fn routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/a/{domain}/receiver", post(receive).head(receiver_head))
        .route(
            "/a/{domain}/receiver/{app_id}",
            post(receive_for_app).head(receiver_head_for_app),
        )
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            |State(app): State<Arc<AppState>>, response: Response| async move {
                with_openrosa_headers(response, app.config.ingest.max_body_bytes)
            },
        ))
}

/// `response` with the headers OpenRosa 1.0 asks of every answer: the
/// version, and the largest body this receiver takes (Collect splits a
/// submission whose attachments would exceed it over several POSTs).
fn with_openrosa_headers(mut response: Response, accept_content_length: u64) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        "x-openrosa-version",
        HeaderValue::from_static(OPENROSA_VERSION),
    );
    headers.insert(
        "x-openrosa-accept-content-length",
        HeaderValue::from(accept_content_length),
    );
    response
}

/// An OpenRosa response: what CommCare and ODK Collect expect back.
fn openrosa(status: StatusCode, nature: &str, message: &str) -> Response {
    let body = format!(
        "<OpenRosaResponse xmlns=\"http://openrosa.org/http/response\"><message nature=\"{nature}\">{}</message></OpenRosaResponse>",
        xml_escape(message)
    );
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    response
}

/// The `Retry-After` of a 503: the store re-tries writing every second, so
/// a device that waits this long finds it writing again if it can.
const NOT_STORED_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a submission is not taken, answered in OpenRosa's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 404: the URL names no project space.
    NoDomain(String),
    /// 401 with a Basic challenge for the domain.
    Unauthorized { domain: String, problem: String },
    /// 413: the body is over `[ingest] max_body_bytes`.
    TooLarge { limit: usize },
    /// 4xx: the body is not a form this gateway takes.
    Unreadable { status: StatusCode, problem: String },
    /// 503: the store failed; nothing was kept.
    NotStored,
}

impl Refusal {
    fn bad(problem: String) -> Refusal {
        Refusal::Unreadable {
            status: StatusCode::BAD_REQUEST,
            problem,
        }
    }

    /// Whether the device sent something wrong (counted as refused), not
    /// the gateway failing.
    fn is_the_senders(&self) -> bool {
        !matches!(self, Refusal::NotStored)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            Refusal::NoDomain(domain) => (
                StatusCode::NOT_FOUND,
                format!("no project space \"{domain}\""),
            ),
            Refusal::Unauthorized { problem, .. } => (StatusCode::UNAUTHORIZED, problem.clone()),
            Refusal::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is larger than the limit of {limit} bytes"),
            ),
            Refusal::Unreadable { status, problem } => (*status, problem.clone()),
            Refusal::NotStored => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway could not store the form; nothing was kept, submit it again later"
                    .to_owned(),
            ),
        };
        let mut response = openrosa(status, "submit_error", &message);
        if let Refusal::NotStored = &self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(NOT_STORED_RETRY_AFTER.as_secs()),
            );
        }
        if let Refusal::Unauthorized { domain, .. } = &self {
            let challenge = format!("Basic realm=\"repeatd {domain}\", charset=\"UTF-8\"");
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            other => out.push(other),
        }
    }
    out
}

/// The username and password of an HTTP Basic `Authorization` header.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (username, password) = text.split_once(':')?;
    Some((username.to_owned(), password.to_owned()))
}

/// `HEAD /a/{domain}/receiver`: OpenRosa clients ask before they submit.
/// The same checks as a `POST` ([`authenticate`]): 404, 401 or 204.
async fn receiver_head(
    State(app): State<Arc<AppState>>,
    Path(domain): Path<String>,
    headers: HeaderMap,
) -> Response {
    head(&app, domain, &headers).await
}

async fn receiver_head_for_app(
    State(app): State<Arc<AppState>>,
    Path((domain, _app_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    head(&app, domain, &headers).await
}

async fn head(app: &AppState, domain: String, headers: &HeaderMap) -> Response {
    match authenticate(app, domain, headers).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn receive(
    State(app): State<Arc<AppState>>,
    Path(domain): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive_form(app, domain, None, headers, body).await
}

async fn receive_for_app(
    State(app): State<Arc<AppState>>,
    Path((domain, app_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive_form(app, domain, Some(app_id), headers, body).await
}

/// What a submission's body held.
struct Received {
    xml: Vec<u8>,
    attachments: Vec<Attachment>,
    /// The device said more POSTs of this submission follow.
    more_parts_follow: bool,
}

async fn receive_form(
    app: Arc<AppState>,
    domain: String,
    app_id: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match take_form(&app, domain, app_id, &headers, body).await {
        Ok(response) => response,
        Err(refusal) => {
            if refusal.is_the_senders() {
                app.metrics
                    .forms_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            refusal.into_response()
        }
    }
}

/// The project space `domain`, when `headers` carry HTTP Basic credentials
/// of one of its submitters: the one check of `POST` and `HEAD`.
async fn authenticate(
    app: &AppState,
    domain: String,
    headers: &HeaderMap,
) -> Result<Arc<DomainObjects>, Refusal> {
    let snapshot = app.catalog.snapshot();
    let Some(objects) = snapshot.domain(&domain) else {
        return Err(Refusal::NoDomain(domain));
    };
    let unauthorized = |problem: &str| Refusal::Unauthorized {
        domain: domain.clone(),
        problem: problem.to_owned(),
    };
    let Some((username, password)) = basic_credentials(headers) else {
        return Err(unauthorized(
            "this receiver needs HTTP Basic credentials of a submitter of the project space",
        ));
    };
    let verified = if app
        .catalog
        .submitter_known_good(&domain, &username, &password)
    {
        true
    } else {
        // Once through the gate, `verify_submitter` looks in the cache again:
        // requests that waited behind one with the same credentials skip argon2.
        let _turn = PASSWORD_CHECKS.acquire().await.ok();
        let catalog = app.catalog.clone();
        let (d, u, p) = (domain.clone(), username.clone(), password);
        tokio::task::spawn_blocking(move || catalog.verify_submitter(&d, &u, &p))
            .await
            .unwrap_or(false)
    };
    if !verified {
        return Err(unauthorized(
            "wrong username or password for this project space",
        ));
    }
    Ok(objects.clone())
}

/// Authenticates, reads, parses and commits one submission.
async fn take_form(
    app: &AppState,
    domain: String,
    app_id: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let objects = authenticate(app, domain.clone(), headers).await?;
    // A store that cannot write refuses at once (it said why in the log,
    // once); nothing of the submission is read or kept.
    if app.store.write_failure().is_some() {
        return Err(Refusal::NotStored);
    }

    let limit = app.config.ingest.max_body_bytes as usize;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Refusal::TooLarge { limit })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let received = read_body(&content_type, bytes).await?;
    let parsed = xform::parse_form(&received.xml)
        .map_err(|error| Refusal::bad(format!("the form is not accepted: {error}")))?;
    let received_on = crate::time::format_utc(app.clock.now_micros());
    let (mut form, case_blocks) =
        submission::new_form(parsed, &domain, generate_form_id, received_on);
    form.app_id = app_id;
    form.attachments = received.attachments;
    form.awaiting_parts = received.more_parts_follow;
    let submission = Submission {
        form,
        xml: received.xml,
        case_blocks,
        repeaters: objects.repeater_list.clone(),
    };
    let committed = app.store.commit_submission(submission).await;
    match committed.map_err(|error| {
        // A failed write is logged once by the store, not once per request.
        if app.store.write_failure().is_none() {
            tracing::error!(%error, domain, "could not store a submission");
        }
        Refusal::NotStored
    })? {
        IngestResult::Accepted { registered } => {
            app.metrics
                .forms_accepted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            app.scheduler.registered(&registered);
            Ok(openrosa(StatusCode::CREATED, "submit_success", "   √   "))
        }
        IngestResult::AttachmentsAdded { n_added } => {
            let attachments = if n_added == 1 {
                "attachment"
            } else {
                "attachments"
            };
            Ok(openrosa(
                StatusCode::CREATED,
                "submit_success",
                &format!(
                    "   √   ({n_added} {attachments} added to the form received before; it was not processed again)"
                ),
            ))
        }
        IngestResult::Duplicate => {
            app.metrics
                .forms_duplicate
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(openrosa(
                StatusCode::CREATED,
                "submit_success",
                "   √   (a form with this id was already received; it was not processed again)",
            ))
        }
    }
}

async fn read_body(content_type: &str, bytes: Bytes) -> Result<Received, Refusal> {
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "" | "text/xml" | "application/xml" => Ok(Received {
            xml: bytes.to_vec(),
            attachments: Vec::new(),
            more_parts_follow: false,
        }),
        "multipart/form-data" => read_multipart(content_type, bytes).await,
        other => Err(Refusal::Unreadable {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            problem: format!(
                "Content-Type {other} is not accepted; send the form as text/xml, application/xml or multipart/form-data"
            ),
        }),
    }
}

async fn read_multipart(content_type: &str, bytes: Bytes) -> Result<Received, Refusal> {
    let bad = Refusal::bad;
    let boundary = multer::parse_boundary(content_type)
        .map_err(|error| bad(format!("multipart body without a usable boundary: {error}")))?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(bytes) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut xml = None;
    let mut attachments = Vec::new();
    let mut more_parts_follow = false;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) => return Err(bad(format!("multipart body is malformed: {error}"))),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let part_type = field
            .content_type()
            .map(|m| m.to_string())
            .unwrap_or_default();
        let content = field
            .bytes()
            .await
            .map_err(|error| bad(format!("multipart part \"{name}\" is malformed: {error}")))?;
        if name == "xml_submission_file" {
            if xml.is_some() {
                return Err(bad(
                    "multipart body has more than one xml_submission_file part".into(),
                ));
            }
            xml = Some(content.to_vec());
        } else if name == INCOMPLETE_PART {
            more_parts_follow = content.trim_ascii().eq_ignore_ascii_case(b"yes");
        } else {
            attachments.push(Attachment {
                name: file_name.unwrap_or(name),
                content_type: part_type,
                size: content.len() as u64,
            });
        }
    }
    let xml =
        xml.ok_or_else(|| bad("multipart body has no part named xml_submission_file".into()))?;
    Ok(Received {
        xml,
        attachments,
        more_parts_follow,
    })
}

/// A random form id, for forms that carry none (32 hex digits, as CommCare's).
fn generate_form_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppEventBody {
    event: String,
    build_id: Option<String>,
}

/// `POST /api/v1/domains/{domain}/apps/{app_id}/events`.
pub async fn app_event(
    State(app): State<Arc<AppState>>,
    access: DomainAccess,
    Path((_, app_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let parsed: AppEventBody = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request("body", format!("not a JSON app event: {error}")))?;
    let (change, build_id) = match (parsed.event.as_str(), parsed.build_id) {
        ("saved", None) => (AppChange::Saved, None),
        ("saved", Some(_)) => {
            return Err(ApiError::bad_request(
                "build_id",
                "only a \"built\" event has a build_id",
            ));
        }
        ("built", Some(build_id)) if !build_id.trim().is_empty() => {
            (AppChange::Built, Some(build_id))
        }
        ("built", _) => {
            return Err(ApiError::bad_request(
                "build_id",
                "a \"built\" event needs a build_id",
            ));
        }
        (other, _) => {
            return Err(ApiError::bad_request(
                "event",
                format!("unknown event \"{other}\" (one of saved, built)"),
            ));
        }
    };
    let domain = access.domain;
    let repeaters = app
        .catalog
        .snapshot()
        .domain(&domain)
        .map(|d| d.repeater_list.clone())
        .unwrap_or_default();
    let registered = app
        .store
        .register_app_change(repeaters, app_id, change, build_id)
        .await
        .map_err(|error| {
            tracing::error!(%error, domain, "could not store an app event");
            ApiError::Unavailable {
                field: "store".into(),
                problem: "the gateway could not store the event; send it again later".into(),
            }
        })?;
    app.scheduler.registered(&registered);
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "registered": registered.len() })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(refusal: Refusal) -> (StatusCode, HeaderMap, String) {
        let response = with_openrosa_headers(refusal.into_response(), 10_000_000);
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    fn message(text: &str) -> String {
        format!(
            "<OpenRosaResponse xmlns=\"http://openrosa.org/http/response\"><message nature=\"submit_error\">{text}</message></OpenRosaResponse>"
        )
    }

    #[tokio::test]
    async fn a_refusal_is_an_openrosa_submit_error() {
        let (status, headers, body) = answer(Refusal::TooLarge { limit: 10 }).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body, message("body is larger than the limit of 10 bytes"));
        assert_eq!(headers[header::CONTENT_TYPE], "text/xml; charset=utf-8");
        assert_eq!(headers["x-openrosa-version"], OPENROSA_VERSION);
        assert_eq!(headers["x-openrosa-accept-content-length"], "10000000");
        assert!(headers.get(header::WWW_AUTHENTICATE).is_none());

        let (status, _, body) = answer(Refusal::NoDomain("a<b".into())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, message("no project space &quot;a&lt;b&quot;"));

        let (status, _, _) = answer(Refusal::bad("the form is not accepted".into())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = answer(Refusal::NotStored).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!Refusal::NotStored.is_the_senders());
        assert!(Refusal::TooLarge { limit: 1 }.is_the_senders());
    }

    #[tokio::test]
    async fn an_unauthorized_submission_is_challenged_for_its_domain() {
        let refusal = Refusal::Unauthorized {
            domain: "demo".into(),
            problem: "wrong username or password for this project space".into(),
        };
        let (status, headers, body) = answer(refusal).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            "Basic realm=\"repeatd demo\", charset=\"UTF-8\""
        );
        assert_eq!(
            body,
            message("wrong username or password for this project space")
        );
    }
}
