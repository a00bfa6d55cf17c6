//! The admin API (SPEC section 9): JSON over HTTP with `Authorization:
//! Bearer <token>`. The admin token reaches every domain; a domain token only
//! its own, and any other domain answers 404 as if it did not exist. Secrets
//! are never returned: a placeholder stands in their place, and sending the
//! placeholder back keeps the stored secret.

// Handlers answer with a ready `Response`, error or not; boxing the error
// side of the helpers that return one would buy nothing.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::catalog::{CatalogError, Origin};
use crate::config::{ConnectionSpec, RepeaterSpec};
use crate::record::{OperatorAction, RecordState, RepeatRecord};
use crate::store::RecordFilter;

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Admin,
    Domain,
}

/// A JSON error naming the field (or thing) at fault.
pub fn error(status: StatusCode, field: &str, message: &str) -> Response {
    (status, Json(json!({ "error": message, "field": field }))).into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": what }))).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks the caller's token against `domain`.
pub fn authorize(app: &AppState, headers: &HeaderMap, domain: &str) -> Result<Access, Response> {
    let access = authenticate(app, headers)?;
    let snapshot = app.catalog.snapshot();
    match access {
        (Access::Admin, _) if snapshot.domain(domain).is_some() => Ok(Access::Admin),
        (Access::Domain, Some(own)) if own == domain => Ok(Access::Domain),
        _ => Err(not_found(&format!("no project space \"{domain}\""))),
    }
}

fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<(Access, Option<String>), Response> {
    let unauthorized = || {
        let mut response = (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "this endpoint needs Authorization: Bearer <token> with a valid admin or domain token" })),
        )
            .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer realm=\"repeatd\"".parse().expect("static header"),
        );
        response
    };
    let token = bearer(headers).ok_or_else(unauthorized)?;
    let digest = crate::secrets::token_digest(token);
    if crate::secrets::digests_equal(&digest, &app.admin_token_digest) {
        return Ok((Access::Admin, None));
    }
    match app.catalog.snapshot().domain_of_token(token) {
        Some(domain) => Ok((Access::Domain, Some(domain.to_owned()))),
        None => Err(unauthorized()),
    }
}

fn catalog_error(error: CatalogError) -> Response {
    match &error {
        CatalogError::NoDomain(_) | CatalogError::NotFound { .. } => not_found(&error.to_string()),
        CatalogError::Exists { .. } | CatalogError::Conflict(_) => {
            error_json(StatusCode::CONFLICT, &error)
        }
        CatalogError::Invalid { field, problem } => {
            crate::api::error(StatusCode::UNPROCESSABLE_ENTITY, field, problem)
        }
        _ => {
            tracing::error!(%error, "admin API change failed");
            error_json(StatusCode::INTERNAL_SERVER_ERROR, &error)
        }
    }
}

fn error_json(status: StatusCode, error: &dyn std::fmt::Display) -> Response {
    (status, Json(json!({ "error": error.to_string() }))).into_response()
}

fn store_error(error: crate::store::StoreError) -> Response {
    tracing::error!(%error, "admin API read failed");
    error_json(StatusCode::INTERNAL_SERVER_ERROR, &error)
}

/// A connection or repeater body, read by the config reader so that errors
/// name their field (`retry.min_wait`, `auth.type`); an error about the body
/// as a whole names `body`.
fn parse_spec<T>(
    body: &Bytes,
    read: fn(Value) -> Result<T, crate::config::FieldError>,
) -> Result<T, Response> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "body",
            &format!("not valid JSON: {e}"),
        )
    })?;
    read(value).map_err(|problem| {
        let field = if problem.field.is_empty() {
            "body"
        } else {
            problem.field.as_str()
        };
        error(StatusCode::UNPROCESSABLE_ENTITY, field, &problem.problem)
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        // serde names the field in its message ("unknown field `x`", "missing field `y`").
        error(StatusCode::UNPROCESSABLE_ENTITY, "body", &e.to_string())
    })
}

// ---- health and metrics -------------------------------------------------------

pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let counts = match app.store.state_counts() {
        Ok(counts) => counts,
        Err(error) => return store_error(error),
    };
    let snapshot = app.catalog.snapshot();
    let names: std::collections::HashMap<u64, (String, String)> = snapshot
        .repeaters()
        .map(|r| (r.id, (r.domain.clone(), r.spec.name.clone())))
        .collect();
    let mut rows = Vec::new();
    let mut queued = 0;
    for ((repeater_id, state), count) in counts {
        if state.is_queued() {
            queued += count;
        }
        if let Some((domain, name)) = names.get(&repeater_id) {
            rows.push((domain.clone(), name.clone(), state.as_str(), count));
        }
    }
    let oldest = app
        .store
        .oldest_due()
        .ok()
        .flatten()
        .map(|at| crate::clock::between(at, app.clock.now_micros()));
    let text = app.metrics.render(&rows, queued, oldest);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

// ---- connections ----------------------------------------------------------------

fn connection_json(spec: &ConnectionSpec, origin: Origin) -> Value {
    let mut shown = spec.clone();
    shown.auth = shown.auth.redacted();
    let mut value = serde_json::to_value(&shown).expect("connections serialize");
    value["origin"] = json!(origin);
    value
}

pub async fn list_connections(
    State(app): State<Arc<AppState>>,
    Path(domain): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&app, &headers, &domain) {
        return response;
    }
    let snapshot = app.catalog.snapshot();
    let list: Vec<Value> = snapshot
        .domain(&domain)
        .map(|d| {
            d.connections
                .values()
                .map(|c| connection_json(&c.spec, c.origin))
                .collect()
        })
        .unwrap_or_default();
    Json(json!({ "connections": list })).into_response()
}

pub async fn get_connection(
    State(app): State<Arc<AppState>>,
    Path((domain, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&app, &headers, &domain) {
        return response;
    }
    let snapshot = app.catalog.snapshot();
    match snapshot
        .domain(&domain)
        .and_then(|d| d.connections.get(&name))
    {
        Some(connection) => {
            Json(connection_json(&connection.spec, connection.origin)).into_response()
        }
        None => not_found(&format!("no connection \"{name}\" in domain \"{domain}\"")),
    }
}

async fn put_connection(
    app: &AppState,
    domain: &str,
    access: Access,
    body: &Bytes,
    name: Option<&str>,
) -> Response {
    let mut spec: ConnectionSpec = match parse_spec(body, ConnectionSpec::from_json) {
        Ok(spec) => spec,
        Err(response) => return response,
    };
    if let Err(response) = take_name_from_url(&mut spec.name, name) {
        return response;
    }
    if let Err(problem) = spec.validate() {
        return invalid(&problem);
    }
    if let Err(response) = check_connection_reach(app, access, &spec) {
        return response;
    }
    let origin = match access {
        Access::Admin => Origin::Admin,
        Access::Domain => Origin::Domain,
    };
    match app
        .catalog
        .put_connection(domain, spec.clone(), origin, name.is_some())
        .await
    {
        Ok(()) => {
            tracing::info!(domain, connection = %spec.name, ?origin, url = %spec.url, auth = ?spec.auth, "connection saved");
            let status = if name.is_some() {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let stored = app
                .catalog
                .snapshot()
                .domain(domain)
                .and_then(|d| d.connections.get(&spec.name).cloned());
            match stored {
                Some(connection) => (
                    status,
                    Json(connection_json(&connection.spec, connection.origin)),
                )
                    .into_response(),
                None => status.into_response(),
            }
        }
        Err(error) => catalog_error(error),
    }
}

/// What can be refused before anything is stored: an auth plugin that is not
/// loaded, and for a domain token an IP-literal URL the egress policy refuses
/// (names are checked when they are resolved, at send time).
fn check_connection_reach(
    app: &AppState,
    access: Access,
    spec: &ConnectionSpec,
) -> Result<(), Response> {
    use crate::config::AuthSpec;
    if let AuthSpec::Plugin { plugin, .. } = &spec.auth {
        match app.plugins.get(plugin) {
            Some(loaded) if matches!(loaded.kind, crate::plugins::PluginKind::Auth { .. }) => {}
            Some(loaded) => {
                return Err(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "auth.plugin",
                    &format!(
                        "plugin \"{plugin}\" is a {}, not an auth plugin",
                        loaded.kind.label()
                    ),
                ));
            }
            None => {
                return Err(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "auth.plugin",
                    &format!("no auth plugin \"{plugin}\" is loaded"),
                ));
            }
        }
    }
    if access == Access::Domain {
        let policy = app.delivery.egress();
        policy.check_url_text(&spec.url).map_err(|refused| {
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "url",
                &refused.to_string(),
            )
        })?;
        if let AuthSpec::Oauth2ClientCredentials { token_url, .. }
        | AuthSpec::Oauth2Password { token_url, .. } = &spec.auth
        {
            policy.check_url_text(token_url).map_err(|refused| {
                error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "auth.token_url",
                    &refused.to_string(),
                )
            })?;
        }
    }
    Ok(())
}

pub async fn create_connection(
    State(app): State<Arc<AppState>>,
    Path(domain): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match authorize(&app, &headers, &domain) {
        Ok(access) => put_connection(&app, &domain, access, &body, None).await,
        Err(response) => response,
    }
}

pub async fn replace_connection(
    State(app): State<Arc<AppState>>,
    Path((domain, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match authorize(&app, &headers, &domain) {
        Ok(access) => put_connection(&app, &domain, access, &body, Some(&name)).await,
        Err(response) => response,
    }
}

pub async fn delete_connection(
    State(app): State<Arc<AppState>>,
    Path((domain, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&app, &headers, &domain) {
        return response;
    }
    match app.catalog.delete_connection(&domain, &name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => catalog_error(error),
    }
}

// ---- repeaters ------------------------------------------------------------------

fn repeater_json(app: &AppState, id: u64, spec: &RepeaterSpec) -> Value {
    let mut value = serde_json::to_value(spec).expect("repeaters serialize");
    if let Some(lane) = app.scheduler.lane_status(id) {
        value["status"] = json!({
            "in_flight": lane.in_flight,
            "consecutive_failures": lane.consecutive_failures,
            "backing_off_until": lane.backing_off_until,
            "format_loaded": app.plugins.is_loaded(&spec.format),
        });
    }
    value
}

pub async fn list_repeaters(
    State(app): State<Arc<AppState>>,
    Path(domain): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&app, &headers, &domain) {
        return response;
    }
    let snapshot = app.catalog.snapshot();
    let list: Vec<Value> = snapshot
        .domain(&domain)
        .map(|d| {
            d.repeaters
                .values()
                .map(|r| repeater_json(&app, r.id, &r.spec))
                .collect()
        })
        .unwrap_or_default();
    Json(json!({ "repeaters": list })).into_response()
}

pub async fn get_repeater(
    State(app): State<Arc<AppState>>,
    Path((domain, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&app, &headers, &domain) {
        return response;
    }
    let snapshot = app.catalog.snapshot();
    match snapshot
        .domain(&domain)
        .and_then(|d| d.repeaters.get(&name))
    {
        Some(repeater) => Json(repeater_json(&app, repeater.id, &repeater.spec)).into_response(),
        None => not_found(&format!("no repeater \"{name}\" in domain \"{domain}\"")),
    }
}

/// A body may leave out `name` on PUT (the URL names the object); if it
/// gives one, it must be the URL's.
fn take_name_from_url(spec_name: &mut String, url_name: Option<&str>) -> Result<(), Response> {
    let Some(url_name) = url_name else {
        return Ok(());
    };
    if spec_name.is_empty() {
        *spec_name = url_name.to_owned();
        Ok(())
    } else if spec_name != url_name {
        Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
            &format!("is \"{spec_name}\" but the URL names \"{url_name}\""),
        ))
    } else {
        Ok(())
    }
}

fn invalid(problem: &crate::config::FieldError) -> Response {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        &problem.field,
        &problem.problem,
    )
}

async fn put_repeater(app: &AppState, domain: &str, body: &Bytes, name: Option<&str>) -> Response {
    let mut spec: RepeaterSpec = match parse_spec(body, RepeaterSpec::from_json) {
        Ok(spec) => spec,
        Err(response) => return response,
    };
    if let Err(response) = take_name_from_url(&mut spec.name, name) {
        return response;
    }
    if let Err(problem) = spec.validate() {
        return invalid(&problem);
    }
    let format_problem = match app
        .plugins
        .get(&spec.format)
        .map(|loaded| loaded.kind.clone())
    {
        None => Some(format!(
            "no payload format plugin \"{}\" is loaded",
            spec.format
        )),
        Some(crate::plugins::PluginKind::Format { kinds, .. }) if !kinds.contains(&spec.kind) => {
            Some(format!(
                "plugin \"{}\" does not build {} payloads (it builds {})",
                spec.format,
                spec.kind,
                kinds
                    .iter()
                    .map(|kind| kind.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
        Some(crate::plugins::PluginKind::Format { .. }) => None,
        Some(other) => Some(format!(
            "plugin \"{}\" is an {} plugin, not a payload format",
            spec.format,
            other.label()
        )),
    };
    if let Some(problem) = format_problem {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "format", &problem);
    }
    match app
        .catalog
        .put_repeater(domain, spec.clone(), name.is_some())
        .await
    {
        Ok(id) => {
            app.scheduler.refresh(Some(id));
            let status = if name.is_some() {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, Json(repeater_json(app, id, &spec))).into_response()
        }
        Err(error) => catalog_error(error),
    }
}

pub async fn create_repeater(
    State(app): State<Arc<AppState>>,
    Path(domain): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match authorize(&app, &headers, &domain) {
        Ok(_) => put_repeater(&app, &domain, &body, None).await,
        Err(response) => response,
    }
}

pub async fn replace_repeater(
    State(app): State<Arc<AppState>>,
    Path((domain, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match authorize(&app, &headers, &domain) {
        Ok(_) => put_repeater(&app, &domain, &body, Some(&name)).await,
        Err(response) => response,
    }
}

pub async fn delete_repeater(
    State(app): State<Arc<AppState>>,
    Path((domain, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&app, &headers, &domain) {
        return response;
    }
    match app.catalog.delete_repeater(&domain, &name).await {
        Ok(id) => match app.store.cancel_repeater_records(id).await {
            Ok(cancelled) => (
                StatusCode::OK,
                Json(json!({ "deleted": name, "records_cancelled": cancelled })),
            )
                .into_response(),
            Err(error) => store_error(error),
        },
        Err(error) => catalog_error(error),
    }
}

pub async fn repeater_action(
    State(app): State<Arc<AppState>>,
    Path((domain, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&app, &headers, &domain) {
        return response;
    }
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        other => return not_found(&format!("no repeater action \"{other}\" (pause, resume)")),
    };
    match app.catalog.set_paused(&domain, &name, paused).await {
        Ok(()) => {
            app.scheduler.wake();
            Json(json!({ "repeater": name, "paused": paused })).into_response()
        }
        Err(error) => catalog_error(error),
    }
}

// ---- records ----------------------------------------------------------------------

fn record_json(app: &AppState, record: &RepeatRecord) -> Value {
    json!({
        "id": app.store.record_id(record.seq),
        "domain": record.domain,
        "repeater": record.repeater,
        "kind": record.kind,
        "payload_id": record.payload.payload_id(),
        "state": record.state,
        "n_attempts": record.n_attempts,
        "registered_at": crate::time::format_utc(record.registered_at),
        "next_attempt_at": record.next_attempt_at.map(crate::time::format_utc),
        "last_attempt_at": record.last_attempt_at.map(crate::time::format_utc),
        "last_error": record.last_error,
    })
}

#[derive(Debug, Deserialize)]
pub struct RecordQuery {
    state: Option<String>,
    repeater: Option<String>,
    payload_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn parse_filter(
    state: Option<&str>,
    repeater: Option<String>,
    payload_id: Option<String>,
) -> Result<RecordFilter, Response> {
    let state = match state.filter(|s| !s.is_empty()) {
        Some(text) => Some(
            text.parse::<RecordState>()
                .map_err(|problem| error(StatusCode::BAD_REQUEST, "state", &problem))?,
        ),
        None => None,
    };
    Ok(RecordFilter {
        state,
        repeater: repeater.filter(|s| !s.is_empty()),
        payload_id: payload_id.filter(|s| !s.is_empty()),
    })
}

pub async fn list_records(
    State(app): State<Arc<AppState>>,
    Path(domain): Path<String>,
    Query(query): Query<RecordQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&app, &headers, &domain) {
        return response;
    }
    let filter = match parse_filter(query.state.as_deref(), query.repeater, query.payload_id) {
        Ok(filter) => filter,
        Err(response) => return response,
    };
    let limit = match query.limit.as_deref().map(str::parse::<usize>) {
        None => 100,
        Some(Ok(limit)) if (1..=10_000).contains(&limit) => limit,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "limit",
                "must be a whole number from 1 to 10000",
            );
        }
    };
    let cursor = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(text) => match text.parse::<u64>() {
            Ok(cursor) => Some(cursor),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "cursor",
                    "is not a cursor this API handed out",
                );
            }
        },
    };
    match app.store.list_records(&domain, &filter, limit, cursor) {
        Ok(page) => Json(json!({
            "records": page.records.iter().map(|r| record_json(&app, r)).collect::<Vec<_>>(),
            "next_cursor": page.next_cursor.map(|c| c.to_string()),
        }))
        .into_response(),
        Err(error) => store_error(error),
    }
}

fn find_record(app: &AppState, domain: &str, id: &str) -> Result<RepeatRecord, Response> {
    let missing = || not_found(&format!("no record \"{id}\" in domain \"{domain}\""));
    let seq = app.store.parse_record_id(id).ok_or_else(missing)?;
    match app.store.record(seq) {
        Ok(Some(record)) if record.domain == domain => Ok(record),
        Ok(_) => Err(missing()),
        Err(error) => Err(store_error(error)),
    }
}

pub async fn get_record(
    State(app): State<Arc<AppState>>,
    Path((domain, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&app, &headers, &domain) {
        return response;
    }
    let record = match find_record(&app, &domain, &id) {
        Ok(record) => record,
        Err(response) => return response,
    };
    let attempts = match app.store.attempts(record.seq) {
        Ok(attempts) => attempts,
        Err(error) => return store_error(error),
    };
    let mut value = record_json(&app, &record);
    value["attempts"] = attempts
        .iter()
        .map(|a| {
            json!({
                "number": a.number,
                "at": crate::time::format_utc(a.at),
                "duration_ms": a.duration_ms,
                "url": a.url,
                "status": a.status,
                "response": a.response,
                "error": a.error,
            })
        })
        .collect();
    Json(value).into_response()
}

pub async fn record_action(
    State(app): State<Arc<AppState>>,
    Path((domain, id, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&app, &headers, &domain) {
        return response;
    }
    let action: OperatorAction = match action.parse() {
        Ok(action) => action,
        Err(problem) => return not_found(&problem),
    };
    let record = match find_record(&app, &domain, &id) {
        Ok(record) => record,
        Err(response) => return response,
    };
    match app.store.operator_action(record.seq, action).await {
        Ok(record) => {
            if let Some(at) = record.next_attempt_at {
                app.scheduler
                    .operator_released(&[(record.repeater_id, record.seq, at)]);
            }
            Json(record_json(&app, &record)).into_response()
        }
        Err(error) => store_error(error),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    action: String,
    #[serde(default)]
    filter: BulkFilter,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkFilter {
    state: Option<String>,
    repeater: Option<String>,
    payload_id: Option<String>,
}

pub async fn bulk_action(
    State(app): State<Arc<AppState>>,
    Path(domain): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = authorize(&app, &headers, &domain) {
        return response;
    }
    let body: BulkBody = match parse_json(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let action: OperatorAction = match body.action.parse() {
        Ok(action) => action,
        Err(problem) => return error(StatusCode::BAD_REQUEST, "action", &problem),
    };
    let filter = match parse_filter(
        body.filter.state.as_deref(),
        body.filter.repeater,
        body.filter.payload_id,
    ) {
        Ok(filter) => filter,
        Err(response) => return response,
    };
    match app.store.bulk_action(domain, filter, action).await {
        Ok(changed) => {
            let due: Vec<(u64, u64, i64)> = changed
                .iter()
                .filter_map(|r| r.next_attempt_at.map(|at| (r.repeater_id, r.seq, at)))
                .collect();
            app.scheduler.operator_released(&due);
            Json(json!({ "action": body.action, "changed": changed.len() })).into_response()
        }
        Err(error) => store_error(error),
    }
}

// ---- forms, cases, plugins ----------------------------------------------------------

pub async fn get_form(
    State(app): State<Arc<AppState>>,
    Path((domain, form_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&app, &headers, &domain) {
        return response;
    }
    match app.store.form(&domain, &form_id) {
        Ok(Some(form)) => Json(form).into_response(),
        Ok(None) => not_found(&format!("no form \"{form_id}\" in domain \"{domain}\"")),
        Err(error) => store_error(error),
    }
}

pub async fn get_case(
    State(app): State<Arc<AppState>>,
    Path((domain, case_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&app, &headers, &domain) {
        return response;
    }
    match app.store.case(&domain, &case_id) {
        Ok(Some(case)) => Json(case_json(&case)).into_response(),
        Ok(None) => not_found(&format!("no case \"{case_id}\" in domain \"{domain}\"")),
        Err(error) => store_error(error),
    }
}

/// A case in the JSON shape of SPEC section 5 (the `case-json` payload).
pub fn case_json(case: &crate::model::Case) -> Value {
    let mut properties = serde_json::Map::new();
    properties.insert("case_name".into(), json!(case.case_name));
    properties.insert("case_type".into(), json!(case.case_type));
    properties.insert("date_opened".into(), json!(case.date_opened));
    properties.insert("owner_id".into(), json!(case.owner_id));
    properties.insert("external_id".into(), json!(case.external_id));
    for (name, value) in &case.properties {
        properties.insert(name.clone(), json!(value));
    }
    let indices: serde_json::Map<String, Value> = case
        .indices
        .iter()
        .map(|index| {
            (
                index.identifier.clone(),
                json!({ "case_id": index.case_id, "case_type": index.case_type, "relationship": index.relationship }),
            )
        })
        .collect();
    json!({
        "case_id": case.case_id,
        "closed": case.closed,
        "date_closed": case.date_closed,
        "date_modified": case.date_modified,
        "domain": case.domain,
        "indices": indices,
        "properties": properties,
        "server_date_modified": case.server_date_modified,
        "server_date_opened": case.server_date_opened,
        "user_id": case.user_id,
        "version": "2.0",
        "xform_ids": case.xform_ids,
    })
}

pub async fn list_plugins(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(response) = authenticate(&app, &headers) {
        return response;
    }
    Json(json!({ "plugins": app.plugins.status() })).into_response()
}
