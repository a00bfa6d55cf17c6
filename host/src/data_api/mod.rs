//! The CommCare HQ compatible Data API (SPEC section 11), so that
//! commcare-export and other tools built for HQ read forms and cases from
//! repeatd: `/a/{domain}/api/{v0.4|v0.5|v0.6}/form/[{id}/]` and `…/case/…`,
//! with or without the trailing slash, answered in tastypie's envelope.
//!
//! Credentials are `endpoint`'s (`ApiKey user:key` or `Bearer`, one rule for
//! every JSON endpoint). The query is read here (`query`), the objects are
//! made by `form_object` and `case_object`, and the pages come from the
//! store's listing indexes (`store::data_index` says what each filter costs).
//! A form filtered by `case_id` is looked up through that case's `xform_ids`:
//! at most the forms of one case are read.

pub mod case_object;
pub mod form_object;
mod query;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::AppState;
use crate::endpoint::{ApiError, Caller, DomainAccess};
use crate::model::{Case, StoredForm};
use crate::store::{CaseScope, FormScope, Keep, ListingRange, Store};
use form_object::ObjectContext;
use query::{CaseQuery, FormOrder, FormQuery, Page, Params};

/// The API versions answered, all in the same shape.
const VERSIONS: [&str; 3] = ["v0.4", "v0.5", "v0.6"];

/// The Data API's routes, to be merged into the gateway's router.
pub fn routes() -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for slash in ["", "/"] {
        router = router
            .route(
                &format!("/a/{{domain}}/api/{{version}}/form{slash}"),
                get(list_forms),
            )
            .route(
                &format!("/a/{{domain}}/api/{{version}}/form/{{id}}{slash}"),
                get(get_form),
            )
            .route(
                &format!("/a/{{domain}}/api/{{version}}/case{slash}"),
                get(list_cases),
            )
            .route(
                &format!("/a/{{domain}}/api/{{version}}/case/{{id}}{slash}"),
                get(get_case),
            );
    }
    router.route(
        "/a/{domain}/api/form/attachment/{id}/{name}",
        get(get_form_attachment),
    )
}

/// The caller may read `domain` through API `version`.
fn access(
    app: &AppState,
    headers: &HeaderMap,
    domain: &str,
    version: &str,
) -> Result<DomainAccess, ApiError> {
    let caller = Caller::from_headers(app, headers)?;
    let access = DomainAccess::check(app, caller, domain)?;
    if !VERSIONS.contains(&version) {
        return Err(ApiError::NotFound(format!(
            "no Data API version \"{version}\" (there are {})",
            VERSIONS.join(", ")
        )));
    }
    Ok(access)
}

/// Runs a listing off the async runtime (it reads and converts up to a
/// thousand objects); `work` drives the store's futures to completion on its
/// blocking-pool thread with [`block_on`].
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ApiError::Internal(format!("a Data API listing failed: {error}")))?
}

/// Drives a store future on the blocking-pool thread of [`blocking`] (a
/// runtime thread must never block on one).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(future)
}

/// tastypie's list envelope; `next`/`previous` repeat the query with another
/// offset.
fn envelope(
    uri: &Uri,
    params: &Params,
    page: Page,
    total_count: u64,
    objects: Vec<Value>,
) -> Value {
    let link = |offset: usize| {
        let query = params.with_page(page.limit, offset);
        format!("{}?{query}", uri.path())
    };
    let next =
        (((page.offset + page.limit) as u64) < total_count).then(|| link(page.offset + page.limit));
    let previous = (page.offset > 0).then(|| link(page.offset.saturating_sub(page.limit)));
    json!({
        "meta": {
            "limit": page.limit,
            "next": next,
            "offset": page.offset,
            "previous": previous,
            "total_count": total_count,
        },
        "objects": objects,
    })
}

/// A list request the caller may make: its domain, API version, path and
/// query.
struct ListRequest {
    domain: String,
    version: String,
    uri: Uri,
    params: Params,
}

impl FromRequestParts<Arc<AppState>> for ListRequest {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let Path((domain, version)) = Path::<(String, String)>::from_request_parts(parts, app)
            .await
            .map_err(|rejection| ApiError::NotFound(rejection.body_text()))?;
        access(app, &parts.headers, &domain, &version)?;
        Ok(ListRequest {
            domain,
            version,
            params: Params::parse(parts.uri.query()),
            uri: parts.uri.clone(),
        })
    }
}

async fn list_forms(
    State(app): State<Arc<AppState>>,
    request: ListRequest,
) -> Result<Json<Value>, ApiError> {
    let ListRequest {
        domain,
        version,
        uri,
        params,
    } = request;
    let query = FormQuery::parse(&params)?;
    let store = app.store.clone();
    let body = blocking(move || {
        let (listed, total_count) = block_on(form_page(&store, &domain, &query))?;
        let context = |indexed_on| ObjectContext {
            indexed_on,
            api_version: &version,
        };
        let objects = listed
            .iter()
            .map(|(form, xml, indexed_on)| {
                form_object::form_object(form, xml, context(*indexed_on))
                    .map_err(|error| ApiError::Internal(error.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(envelope(&uri, &params, query.page, total_count, objects))
    })
    .await?;
    Ok(Json(body))
}

type FormRow = (StoredForm, Vec<u8>, i64);

/// The forms of one page and how many match.
async fn form_page(
    store: &Store,
    domain: &str,
    query: &FormQuery,
) -> Result<(Vec<FormRow>, u64), ApiError> {
    if let Some(case_id) = &query.case_id {
        return forms_of_case(store, domain, case_id, query).await;
    }
    let (scope, range) = match query.order {
        FormOrder::ReceivedOn => (FormScope::ByReceivedOn, query.received_on.clone()),
        FormOrder::IndexedOn => {
            let scope = match (&query.xmlns, &query.app_id) {
                (Some(xmlns), _) => FormScope::Xmlns(xmlns.clone()),
                (None, Some(app_id)) => FormScope::AppId(app_id.clone()),
                (None, None) => FormScope::All,
            };
            (scope, query.indexed_on.clone())
        }
    };
    let range = ListingRange {
        descending: query.descending,
        ..range
    };
    let check = |form: &StoredForm, indexed_on: i64| query.matches(form, indexed_on);
    // What the scope and its range leave unchecked.
    let needs_check = match &scope {
        FormScope::ByReceivedOn => {
            query.xmlns.is_some() || query.app_id.is_some() || !query.indexed_on.is_whole()
        }
        FormScope::Xmlns(_) => query.app_id.is_some() || !query.received_on.is_whole(),
        FormScope::AppId(_) | FormScope::All => !query.received_on.is_whole(),
    };
    let keep: Keep<'_, StoredForm> =
        needs_check.then_some(&check as &(dyn Fn(&StoredForm, i64) -> bool + Sync));
    let listed = store
        .list_forms(
            domain,
            &scope,
            &range,
            (query.page.offset, query.page.limit),
            keep,
        )
        .await?;
    let rows = listed
        .objects
        .into_iter()
        .map(|listed| (listed.form, listed.xml, listed.indexed_on))
        .collect();
    Ok((rows, listed.total_count))
}

/// The forms of one case that match, in the requested order.
async fn forms_of_case(
    store: &Store,
    domain: &str,
    case_id: &str,
    query: &FormQuery,
) -> Result<(Vec<FormRow>, u64), ApiError> {
    let Some(case) = store.case(domain, case_id).await? else {
        return Ok((Vec::new(), 0));
    };
    let mut rows = Vec::new();
    for form_id in &case.xform_ids {
        let (Some(form), Some(xml), Some(indexed_on)) = (
            store.form(domain, form_id).await?,
            store.form_xml(domain, form_id).await?,
            store.form_indexed_on(domain, form_id).await?,
        ) else {
            continue;
        };
        if query.matches(&form, indexed_on) {
            rows.push((form, xml, indexed_on));
        }
    }
    match query.order {
        FormOrder::IndexedOn => rows.sort_by_key(|row| row.2),
        FormOrder::ReceivedOn => {
            rows.sort_by(|a, b| (&a.0.received_on, a.2).cmp(&(&b.0.received_on, b.2)))
        }
    }
    if query.descending {
        rows.reverse();
    }
    let total_count = rows.len() as u64;
    let page = rows
        .into_iter()
        .skip(query.page.offset)
        .take(query.page.limit)
        .collect();
    Ok((page, total_count))
}

async fn get_form(
    State(app): State<Arc<AppState>>,
    Path((domain, version, form_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    access(&app, &headers, &domain, &version)?;
    let store = &app.store;
    let (Some(form), Some(xml), Some(indexed_on)) = (
        store.form(&domain, &form_id).await?,
        store.form_xml(&domain, &form_id).await?,
        store.form_indexed_on(&domain, &form_id).await?,
    ) else {
        return Err(ApiError::NotFound(format!(
            "no form \"{form_id}\" in domain \"{domain}\""
        )));
    };
    let context = ObjectContext {
        indexed_on,
        api_version: &version,
    };
    let object = form_object::form_object(&form, &xml, context)
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    Ok(Json(object))
}

/// A form's attachment: only `form.xml` (the other parts' content is not
/// kept, SPEC section 4).
async fn get_form_attachment(
    State(app): State<Arc<AppState>>,
    Path((domain, form_id, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    access(&app, &headers, &domain, "v0.5")?;
    let xml = app
        .store
        .form_xml(&domain, &form_id)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!("no form \"{form_id}\" in domain \"{domain}\""))
        })?;
    if name != "form.xml" {
        return Err(ApiError::NotFound(format!(
            "the content of attachment \"{name}\" of form \"{form_id}\" is not kept"
        )));
    }
    Ok(([(header::CONTENT_TYPE, "text/xml")], xml).into_response())
}

async fn list_cases(
    State(app): State<Arc<AppState>>,
    request: ListRequest,
) -> Result<Json<Value>, ApiError> {
    let ListRequest {
        domain,
        version,
        uri,
        params,
    } = request;
    let query = CaseQuery::parse(&params)?;
    let store = app.store.clone();
    let body = blocking(move || {
        let (scope, range) = query.scope_and_range();
        let check = |case: &Case, indexed_on: i64| query.matches(case, indexed_on);
        let keep: Keep<'_, Case> = query
            .needs_check()
            .then_some(&check as &(dyn Fn(&Case, i64) -> bool + Sync));
        let listed = block_on(store.list_cases(
            &domain,
            &scope,
            &range,
            (query.page.offset, query.page.limit),
            keep,
        ))?;
        let objects = listed
            .objects
            .iter()
            .map(|(case, indexed_on)| case_object::case_object(case, *indexed_on, &version))
            .collect();
        Ok(envelope(
            &uri,
            &params,
            query.page,
            listed.total_count,
            objects,
        ))
    })
    .await?;
    Ok(Json(body))
}

async fn get_case(
    State(app): State<Arc<AppState>>,
    Path((domain, version, case_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    access(&app, &headers, &domain, &version)?;
    let (Some(case), Some(indexed_on)) = (
        app.store.case(&domain, &case_id).await?,
        app.store.case_indexed_on(&domain, &case_id).await?,
    ) else {
        return Err(ApiError::NotFound(format!(
            "no case \"{case_id}\" in domain \"{domain}\""
        )));
    };
    Ok(Json(case_object::case_object(&case, indexed_on, &version)))
}

impl CaseQuery {
    /// The listing that narrows this query best, and its range.
    fn scope_and_range(&self) -> (CaseScope, ListingRange) {
        let (scope, range) = if self.by_server_date_modified {
            (
                CaseScope::ByServerDateModified,
                self.server_date_modified.clone(),
            )
        } else {
            let scope = match &self.case_type {
                Some(case_type) => CaseScope::Type(case_type.clone()),
                None => CaseScope::All,
            };
            (scope, self.indexed_on.clone())
        };
        (
            scope,
            ListingRange {
                descending: self.descending,
                ..range
            },
        )
    }
}
