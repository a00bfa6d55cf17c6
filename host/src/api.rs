//! The admin API (SPEC section 9): JSON over HTTP with `Authorization:
//! Bearer <token>`. The admin token reaches every domain; a domain token only
//! its own, and any other domain answers 404 as if it did not exist (both
//! checked by the `DomainAccess` extractor of `endpoint`, whose `ApiError`
//! renders every refusal). Secrets are never returned: a placeholder stands
//! in their place, and sending the placeholder back keeps the stored secret.
//!
//! Connections and repeaters are served by one set of handlers over the
//! [`CatalogObject`] trait; what differs between them (how one is shown,
//! what is checked before saving, what deleting one does) is its impl.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::catalog::{DomainObjects, Origin, StoredConnection};
use crate::connection::ConnectionSpec;
use crate::endpoint::{Access, ApiError, Caller, DomainAccess};
use crate::field::FieldError;
use crate::record::{OperatorAction, RecordState, RepeatRecord};
use crate::repeater::RepeaterSpec;
use crate::store::{RecordFilter, RecordPage};
use crate::submission::RepeaterRef;

fn field_error(problem: FieldError) -> ApiError {
    ApiError::invalid(problem.field, problem.problem)
}

/// A connection or repeater body, read by the config reader so that errors
/// name their field (`retry.min_wait`, `auth.type`); an error about the body
/// as a whole names `body`.
fn parse_spec<T>(body: &[u8], read: fn(Value) -> Result<T, FieldError>) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("body", format!("not valid JSON: {e}")))?;
    read(value).map_err(|problem| {
        let field = if problem.field.is_empty() {
            "body".to_owned()
        } else {
            problem.field
        };
        ApiError::invalid(field, problem.problem)
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    // serde names the field in its message ("unknown field `x`", "missing field `y`").
    serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", e.to_string()))
}

// ---- health and metrics -------------------------------------------------------

/// `GET /healthz`: 200 while the gateway can take submissions; 503, saying
/// why, while its store cannot write (it recovers by itself).
pub async fn healthz(State(app): State<Arc<AppState>>) -> Response {
    match app.store.write_failure() {
        None => Json(json!({ "status": "ok" })).into_response(),
        Some(failure) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "store": {
                    "writable": false,
                    "problem": failure.reason,
                },
            })),
        )
            .into_response(),
    }
}

/// `GET /api/v1/domains/{domain}/stats`: what the domain keeps. Records per
/// state, forms, cases, and the bytes the store can tell: the forms' XML of
/// this domain; with the admin token also the store's whole file.
pub async fn domain_stats(
    State(app): State<Arc<AppState>>,
    access: DomainAccess,
) -> Result<Json<Value>, ApiError> {
    let stats = app.store.domain_stats(&access.domain).await?;
    let records: serde_json::Map<String, Value> = stats
        .records
        .iter()
        .map(|(state, n)| (state.as_str().to_owned(), json!(n)))
        .collect();
    let mut bytes = json!({ "form_xml": stats.form_xml_bytes });
    if access.access == Access::Admin {
        bytes["store_file"] = json!(app.store.file_bytes());
    }
    Ok(Json(json!({
        "domain": access.domain,
        "records": records,
        "forms": stats.forms,
        "cases": stats.cases,
        "bytes": bytes,
    })))
}

/// `GET /metrics`: the admin token only (the series name every domain and
/// repeater), unless `[metrics] public = true`.
pub async fn metrics(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !app.config.metrics.public {
        let caller = Caller::from_headers(&app, &headers)?;
        if caller.access != Access::Admin {
            return Err(ApiError::Unauthenticated);
        }
    }
    let counts = app.store.state_counts().await?;
    let snapshot = app.catalog.snapshot();
    let mut scrape = crate::metrics::Scrape::default();
    for ((_, state), count) in &counts {
        if state.is_queued() {
            scrape.queued += count;
        }
    }
    for repeater in snapshot.repeaters() {
        let key = (repeater.domain.clone(), repeater.spec.name.clone());
        for state in RecordState::ALL {
            let count = counts.get(&(repeater.id, state)).copied().unwrap_or(0);
            scrape
                .records
                .push((key.0.clone(), key.1.clone(), state.as_str(), count));
        }
        scrape.repeaters.push(key);
    }
    scrape.oldest_due_age = app
        .store
        .oldest_due()
        .await
        .ok()
        .flatten()
        .map(|at| crate::clock::between(at, app.clock.now_micros()));
    scrape.plugins = app
        .plugins
        .status()
        .into_iter()
        .filter(|plugin| plugin.kind.is_some())
        .map(|plugin| plugin.name)
        .collect();
    scrape.lifecycle = lifecycle(&app, &snapshot).await?;
    let text = app.metrics.render(
        &scrape,
        app.plugins.call_metrics(),
        app.notifier.email_counts(),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// What `/metrics` shows of the data lifecycle: every domain's figures,
/// retention's progress and the oldest it keeps, the store's health.
async fn lifecycle(
    app: &AppState,
    snapshot: &crate::catalog::Snapshot,
) -> Result<crate::metrics::Lifecycle, ApiError> {
    let mut domains = Vec::new();
    for name in snapshot.domains.keys() {
        domains.push((name.clone(), app.store.domain_stats(name).await?));
    }
    let now = app.clock.now_micros();
    let age = |at: Option<i64>| at.map(|at| crate::clock::between(at, now));
    let oldest = app.store.oldest_kept().await?;
    let mut oldest_kept: Vec<(&'static str, Option<std::time::Duration>)> = oldest
        .records
        .iter()
        .map(|(state, since)| (state.as_str(), age(*since)))
        .collect();
    oldest_kept.push(("form", age(oldest.form)));
    let progress = &app.retention.progress;
    Ok(crate::metrics::Lifecycle {
        domains,
        records_deleted: progress
            .records_deleted()
            .into_iter()
            .map(|(state, n)| (state.as_str(), n))
            .collect(),
        forms_deleted: progress.forms_deleted(),
        oldest_kept,
        store_file_bytes: app.store.file_bytes(),
        store_writable: app.store.write_failure().is_none(),
    })
}

// ---- connections and repeaters ---------------------------------------------------

/// A kind of configured object that the API lists, shows, creates, replaces
/// and deletes the same way.
pub trait CatalogObject: Sized + Send + 'static {
    /// The object's name in messages: "connection", "repeater".
    const KIND: &'static str;
    /// The key of a listing: "connections", "repeaters".
    const LISTING: &'static str;

    /// Reads a request body, naming the field at fault.
    fn read(value: Value) -> Result<Self, FieldError>;
    fn validate(&self) -> Result<(), FieldError>;
    /// Refuses what `access` may not set, before anything else is checked.
    fn check_access(&self, _access: Access) -> Result<(), ApiError> {
        Ok(())
    }
    fn name_mut(&mut self) -> &mut String;
    /// How the catalog holds one.
    type Stored;
    /// A domain's objects of this kind, by name.
    fn stored_in(objects: &DomainObjects) -> &BTreeMap<String, Self::Stored>;
    /// One, as the API shows it.
    fn show(app: &AppState, stored: &Self::Stored) -> Value;
    /// Checks what only this kind checks and saves the object; returns it as
    /// the API shows it.
    fn save(self, put: Put<'_>) -> impl Future<Output = Result<Option<Value>, ApiError>> + Send;
    /// Deletes one; returns what the API answers (`None`: nothing, 204).
    fn delete(
        app: &AppState,
        domain: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Value>, ApiError>> + Send;
}

/// A create or replace request, as `CatalogObject::save` gets it.
#[derive(Debug, Clone, Copy)]
pub struct Put<'a> {
    pub app: &'a AppState,
    pub access: &'a DomainAccess,
    /// Replace an existing object (PUT), or create a new one (POST).
    pub replace: bool,
}

/// The routes of one kind of object under `path` (`…/connections`): list
/// and create there, get, replace and delete at `path/{name}`.
pub fn object_routes<K: CatalogObject>(
    routes: Router<Arc<AppState>>,
    path: &str,
) -> Router<Arc<AppState>> {
    let by_name = get(get_object::<K>)
        .put(replace_object::<K>)
        .delete(delete_object::<K>);
    routes
        .route(path, get(list_objects::<K>).post(create_object::<K>))
        .route(&format!("{path}/{{name}}"), by_name)
}

pub async fn list_objects<K: CatalogObject>(
    State(app): State<Arc<AppState>>,
    access: DomainAccess,
) -> Json<Value> {
    let snapshot = app.catalog.snapshot();
    let list: Vec<Value> = snapshot
        .domain(&access.domain)
        .map(|objects| {
            K::stored_in(objects)
                .values()
                .map(|stored| K::show(&app, stored))
                .collect()
        })
        .unwrap_or_default();
    Json(json!({ K::LISTING: list }))
}

pub async fn get_object<K: CatalogObject>(
    State(app): State<Arc<AppState>>,
    access: DomainAccess,
    Path((_, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = app.catalog.snapshot();
    snapshot
        .domain(&access.domain)
        .and_then(|objects| K::stored_in(objects).get(&name))
        .map(|stored| Json(K::show(&app, stored)))
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no {} \"{name}\" in domain \"{}\"",
                K::KIND,
                access.domain
            ))
        })
}

pub async fn create_object<K: CatalogObject>(
    State(app): State<Arc<AppState>>,
    access: DomainAccess,
    body: Bytes,
) -> Result<Response, ApiError> {
    put_object::<K>(&app, &access, &body, None).await
}

pub async fn replace_object<K: CatalogObject>(
    State(app): State<Arc<AppState>>,
    access: DomainAccess,
    Path((_, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    put_object::<K>(&app, &access, &body, Some(&name)).await
}

pub async fn delete_object<K: CatalogObject>(
    State(app): State<Arc<AppState>>,
    access: DomainAccess,
    Path((_, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(match K::delete(&app, &access.domain, &name).await? {
        Some(answer) => Json(answer).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

async fn put_object<K: CatalogObject>(
    app: &AppState,
    access: &DomainAccess,
    body: &Bytes,
    url_name: Option<&str>,
) -> Result<Response, ApiError> {
    let shown = save_object::<K>(app, access, body, url_name).await?;
    let replace = url_name.is_some();
    let status = if replace {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(match shown {
        Some(shown) => (status, Json(shown)).into_response(),
        None => status.into_response(),
    })
}

/// Creates (`url_name` `None`) or replaces the object the JSON `body`
/// describes, after every check; returns it as the API shows it. The API's
/// POST and PUT and the console's editor both save through this.
pub async fn save_object<K: CatalogObject>(
    app: &AppState,
    access: &DomainAccess,
    body: &[u8],
    url_name: Option<&str>,
) -> Result<Option<Value>, ApiError> {
    let mut object = parse_spec(body, K::read)?;
    take_name_from_url(object.name_mut(), url_name)?;
    object.check_access(access.access)?;
    object.validate().map_err(field_error)?;
    let put = Put {
        app,
        access,
        replace: url_name.is_some(),
    };
    object.save(put).await
}

/// A body may leave out `name` on PUT (the URL names the object); if it
/// gives one, it must be the URL's.
fn take_name_from_url(spec_name: &mut String, url_name: Option<&str>) -> Result<(), ApiError> {
    let Some(url_name) = url_name else {
        return Ok(());
    };
    if spec_name.is_empty() {
        *spec_name = url_name.to_owned();
        Ok(())
    } else if spec_name != url_name {
        Err(ApiError::invalid(
            "name",
            format!("is \"{spec_name}\" but the URL names \"{url_name}\""),
        ))
    } else {
        Ok(())
    }
}

/// The items of `CatalogObject` that read the same for both spec types:
/// they have the same inherent `from_json`, `validate` and `name`.
macro_rules! spec_basics {
    ($kind:literal, $listing:literal, $field:ident: $stored:ty) => {
        const KIND: &'static str = $kind;
        const LISTING: &'static str = $listing;
        type Stored = $stored;

        fn stored_in(objects: &DomainObjects) -> &BTreeMap<String, Self::Stored> {
            &objects.$field
        }

        fn read(value: Value) -> Result<Self, FieldError> {
            Self::from_json(value)
        }

        fn validate(&self) -> Result<(), FieldError> {
            Self::validate(self)
        }

        fn name_mut(&mut self) -> &mut String {
            &mut self.name
        }
    };
}

impl CatalogObject for ConnectionSpec {
    spec_basics!("connection", "connections", connections: Arc<StoredConnection>);

    fn show(_: &AppState, stored: &Self::Stored) -> Value {
        let mut shown = stored.spec.clone();
        shown.auth = shown.auth.redacted();
        let mut value = serde_json::to_value(&shown).expect("connections serialize");
        value["origin"] = json!(stored.origin);
        value
    }

    /// The TLS files name files on the gateway's host: a domain token may not
    /// point at them (nor learn, from the check, which files exist there).
    fn check_access(&self, access: Access) -> Result<(), ApiError> {
        if access == Access::Domain
            && let Some(key) = self.tls_file_keys().next()
        {
            return Err(ApiError::invalid(
                key,
                "names a file on the gateway's host; only the config file or the admin token may set it",
            ));
        }
        Ok(())
    }

    async fn save(self, put: Put<'_>) -> Result<Option<Value>, ApiError> {
        let (app, access) = (put.app, put.access);
        check_connection_reach(app, access.access, &self)?;
        self.warn_if_unverified(&access.domain);
        let origin = match access.access {
            Access::Admin => Origin::Admin,
            Access::Domain => Origin::Domain,
        };
        let domain = access.domain.as_str();
        app.catalog
            .put_connection(domain, self.clone(), origin, put.replace)
            .await?;
        tracing::info!(domain, connection = %self.name, ?origin, url = %self.url, auth = ?self.auth, "connection saved");
        let snapshot = app.catalog.snapshot();
        Ok(snapshot
            .domain(domain)
            .and_then(|objects| objects.connections.get(&self.name))
            .map(|stored| Self::show(app, stored)))
    }

    async fn delete(app: &AppState, domain: &str, name: &str) -> Result<Option<Value>, ApiError> {
        app.catalog.delete_connection(domain, name).await?;
        Ok(None)
    }
}

/// What can be refused before anything is stored: an auth plugin that is not
/// loaded, and for a domain token an IP-literal URL the egress policy refuses
/// (names are checked when they are resolved, at send time).
fn check_connection_reach(
    app: &AppState,
    access: Access,
    spec: &ConnectionSpec,
) -> Result<(), ApiError> {
    use crate::connection::AuthSpec;
    if let AuthSpec::Plugin { plugin, .. } = &spec.auth {
        match app.plugins.get(plugin) {
            Some(loaded) if matches!(loaded.kind, crate::plugins::PluginKind::Auth { .. }) => {}
            Some(loaded) => {
                return Err(ApiError::invalid(
                    "auth.plugin",
                    format!(
                        "plugin \"{plugin}\" is a {}, not an auth plugin",
                        loaded.kind.label()
                    ),
                ));
            }
            None => {
                return Err(ApiError::invalid(
                    "auth.plugin",
                    format!("no auth plugin \"{plugin}\" is loaded"),
                ));
            }
        }
    }
    if access == Access::Domain {
        let policy = app.delivery.egress();
        let refused = |field: &str| {
            let field = field.to_owned();
            move |refused: crate::egress::AddressRefused| {
                ApiError::invalid(field, refused.to_string())
            }
        };
        policy.check_url_text(&spec.url).map_err(refused("url"))?;
        if let AuthSpec::Oauth2ClientCredentials { token_url, .. }
        | AuthSpec::Oauth2Password { token_url, .. } = &spec.auth
        {
            policy
                .check_url_text(token_url)
                .map_err(refused("auth.token_url"))?;
        }
    }
    Ok(())
}

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

impl CatalogObject for RepeaterSpec {
    spec_basics!("repeater", "repeaters", repeaters: RepeaterRef);

    fn show(app: &AppState, stored: &Self::Stored) -> Value {
        repeater_json(app, stored.id, &stored.spec)
    }

    async fn save(self, put: Put<'_>) -> Result<Option<Value>, ApiError> {
        check_format(put.app, &self)?;
        let id = put
            .app
            .catalog
            .put_repeater(&put.access.domain, self.clone(), put.replace)
            .await?;
        put.app.scheduler.refresh(Some(id));
        Ok(Some(repeater_json(put.app, id, &self)))
    }

    async fn delete(app: &AppState, domain: &str, name: &str) -> Result<Option<Value>, ApiError> {
        let id = app.catalog.delete_repeater(domain, name).await?;
        let cancelled = app.store.cancel_repeater_records(id).await?;
        Ok(Some(
            json!({ "deleted": name, "records_cancelled": cancelled }),
        ))
    }
}

/// A repeater's format must be a loaded payload format plugin that builds
/// the repeater's kind.
fn check_format(app: &AppState, spec: &RepeaterSpec) -> Result<(), ApiError> {
    let problem = match app
        .plugins
        .get(&spec.format)
        .map(|loaded| loaded.kind.clone())
    {
        None => format!("no payload format plugin \"{}\" is loaded", spec.format),
        Some(crate::plugins::PluginKind::Format { kinds, .. }) if !kinds.contains(&spec.kind) => {
            format!(
                "plugin \"{}\" does not build {} payloads (it builds {})",
                spec.format,
                spec.kind,
                kinds
                    .iter()
                    .map(|kind| kind.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Some(crate::plugins::PluginKind::Format { .. }) => return Ok(()),
        Some(other) => format!(
            "plugin \"{}\" is an {} plugin, not a payload format",
            spec.format,
            other.label()
        ),
    };
    Err(ApiError::invalid("format", problem))
}

pub async fn repeater_action(
    State(app): State<Arc<AppState>>,
    access: DomainAccess,
    Path((_, name, action)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let paused = pauses(&action)?;
    set_paused(&app, &access.domain, &name, paused).await?;
    Ok(Json(json!({ "repeater": name, "paused": paused })))
}

/// Whether a repeater action (`pause`, `resume`) pauses.
pub fn pauses(action: &str) -> Result<bool, ApiError> {
    match action {
        "pause" => Ok(true),
        "resume" => Ok(false),
        other => Err(ApiError::NotFound(format!(
            "no repeater action \"{other}\" (pause, resume)"
        ))),
    }
}

/// Pauses or resumes a repeater and lets the scheduler see it.
pub async fn set_paused(
    app: &AppState,
    domain: &str,
    name: &str,
    paused: bool,
) -> Result<(), ApiError> {
    app.catalog.set_paused(domain, name, paused).await?;
    app.scheduler.wake();
    Ok(())
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

/// A record filter from its query text; an empty value filters nothing.
pub fn parse_filter(
    state: Option<&str>,
    repeater: Option<String>,
    payload_id: Option<String>,
) -> Result<RecordFilter, ApiError> {
    let state = match state.filter(|s| !s.is_empty()) {
        Some(text) => Some(
            text.parse::<RecordState>()
                .map_err(|problem| ApiError::bad_request("state", problem))?,
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
    access: DomainAccess,
    Query(query): Query<RecordQuery>,
) -> Result<Json<Value>, ApiError> {
    let filter = parse_filter(query.state.as_deref(), query.repeater, query.payload_id)?;
    let limit = match query.limit.as_deref().map(str::parse::<usize>) {
        None => 100,
        Some(Ok(limit)) if (1..=10_000).contains(&limit) => limit,
        Some(_) => {
            return Err(ApiError::bad_request(
                "limit",
                "must be a whole number from 1 to 10000",
            ));
        }
    };
    let cursor = parse_cursor(query.cursor.as_deref())?;
    let page = list_matching(&app, &access.domain, &filter, limit, cursor).await?;
    Ok(Json(json!({
        "records": page.records.iter().map(|r| record_json(&app, r)).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor.map(|c| c.to_string()),
    })))
}

/// A listing's `cursor` parameter: the `next_cursor` of an earlier page.
pub fn parse_cursor(text: Option<&str>) -> Result<Option<u64>, ApiError> {
    match text.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(text) => text
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request("cursor", "is not a cursor this API handed out")),
    }
}

/// One page of a domain's records that `filter` matches, newest first (a
/// filter by state reads only matching records, from the store's state
/// index).
pub async fn list_matching(
    app: &AppState,
    domain: &str,
    filter: &RecordFilter,
    limit: usize,
    cursor: Option<u64>,
) -> Result<RecordPage, ApiError> {
    Ok(app
        .store
        .list_records(domain, filter, limit, cursor)
        .await?)
}

/// How many of a domain's records `filter` matches, from the store's
/// per-repeater state counters (a payload id narrows through its index).
pub async fn count_matching(
    app: &AppState,
    domain: &str,
    filter: &RecordFilter,
) -> Result<u64, ApiError> {
    if filter.payload_id.is_some() {
        let page = app
            .store
            .list_records(domain, filter, 100_000, None)
            .await?;
        return Ok(page.records.len() as u64);
    }
    let snapshot = app.catalog.snapshot();
    let Some(objects) = snapshot.domain(domain) else {
        return Ok(0);
    };
    let ids: Vec<u64> = objects
        .repeaters
        .values()
        .filter(|r| {
            filter
                .repeater
                .as_deref()
                .is_none_or(|name| r.spec.name == name)
        })
        .map(|r| r.id)
        .collect();
    let counts = app.store.state_counts().await?;
    Ok(counts
        .iter()
        .filter(|((id, state), _)| {
            ids.contains(id) && filter.state.is_none_or(|wanted| wanted == *state)
        })
        .map(|(_, count)| count)
        .sum())
}

/// A domain's record by its public id (404 for another domain's).
pub async fn find_record(app: &AppState, domain: &str, id: &str) -> Result<RepeatRecord, ApiError> {
    let missing = || ApiError::NotFound(format!("no record \"{id}\" in domain \"{domain}\""));
    let seq = app.store.parse_record_id(id).ok_or_else(missing)?;
    match app.store.record(seq).await? {
        Some(record) if record.domain == domain => Ok(record),
        _ => Err(missing()),
    }
}

pub async fn get_record(
    State(app): State<Arc<AppState>>,
    access: DomainAccess,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let record = find_record(&app, &access.domain, &id).await?;
    let attempts = app.store.attempts(record.seq).await?;
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
    Ok(Json(value))
}

pub async fn record_action(
    State(app): State<Arc<AppState>>,
    access: DomainAccess,
    Path((_, id, action)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let action: OperatorAction = action.parse().map_err(ApiError::NotFound)?;
    let record = act_on_record(&app, &access.domain, &id, action).await?;
    Ok(Json(record_json(&app, &record)))
}

/// Resends, cancels or requeues one record and wakes the scheduler for it.
pub async fn act_on_record(
    app: &AppState,
    domain: &str,
    id: &str,
    action: OperatorAction,
) -> Result<RepeatRecord, ApiError> {
    let record = find_record(app, domain, id).await?;
    let record = app.store.operator_action(record.seq, action).await?;
    if let Some(at) = record.next_attempt_at {
        app.scheduler
            .operator_released(&[(record.repeater_id, record.seq, at)]);
    }
    Ok(record)
}

/// Resends, cancels or requeues every record of `domain` that `filter`
/// matches; returns how many changed.
pub async fn act_on_matching(
    app: &AppState,
    domain: &str,
    filter: RecordFilter,
    action: OperatorAction,
) -> Result<usize, ApiError> {
    let changed = app
        .store
        .bulk_action(domain.to_owned(), filter, action)
        .await?;
    let due: Vec<(u64, u64, i64)> = changed
        .iter()
        .filter_map(|r| r.next_attempt_at.map(|at| (r.repeater_id, r.seq, at)))
        .collect();
    app.scheduler.operator_released(&due);
    Ok(changed.len())
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
    access: DomainAccess,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: BulkBody = parse_json(&body)?;
    let action: OperatorAction = body
        .action
        .parse()
        .map_err(|problem: String| ApiError::bad_request("action", problem))?;
    let filter = parse_filter(
        body.filter.state.as_deref(),
        body.filter.repeater,
        body.filter.payload_id,
    )?;
    let changed = act_on_matching(&app, &access.domain, filter, action).await?;
    Ok(Json(json!({ "action": body.action, "changed": changed })))
}

// ---- forms, cases, plugins ----------------------------------------------------------

pub async fn get_form(
    State(app): State<Arc<AppState>>,
    access: DomainAccess,
    Path((_, form_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let domain = &access.domain;
    match app.store.form(domain, &form_id).await? {
        Some(form) => Ok(Json(form).into_response()),
        None => Err(ApiError::NotFound(format!(
            "no form \"{form_id}\" in domain \"{domain}\""
        ))),
    }
}

pub async fn get_case(
    State(app): State<Arc<AppState>>,
    access: DomainAccess,
    Path((_, case_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let domain = &access.domain;
    match app.store.case(domain, &case_id).await? {
        Some(case) => Ok(Json(case_json(&case))),
        None => Err(ApiError::NotFound(format!(
            "no case \"{case_id}\" in domain \"{domain}\""
        ))),
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

pub async fn list_plugins(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    Caller::from_headers(&app, &headers)?;
    Ok(Json(json!({ "plugins": app.plugins.status() })))
}
