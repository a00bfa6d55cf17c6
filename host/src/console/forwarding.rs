//! Data Forwarding (every repeater with its per-state counts, Pause and
//! Resume) and Connection Settings (every connection, the repeaters using
//! it, Test connection), and the editor both kinds share: the object as the
//! JSON the admin API takes, every setting and filter present, secrets
//! masked. Saving goes through `api::save_object`, so the console checks
//! exactly what the API checks; a masked secret sent back unchanged keeps
//! the stored one, as it does there.
//!
//! The counts come from the store's per-repeater state counters, not from
//! reading records.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{self, CatalogObject};
use crate::catalog::StoredConnection;
use crate::connection::ConnectionSpec;
use crate::endpoint::{ApiError, DomainAccess};
use crate::record::RecordState;
use crate::repeater::RepeaterSpec;
use crate::submission::RepeaterRef;

use super::layout::{ConsoleError, Page};
use super::{Console, DomainAnd, Shared, Visit, encode};

/// A kind of object the console edits as JSON.
trait Editable: CatalogObject {
    /// The tab that lists them.
    const TAB: &'static str;
    /// What a new one starts as.
    fn blank() -> Value;
    /// One as its editor shows it: the body a PUT takes, secrets masked.
    fn editable(stored: &Self::Stored) -> Value;
}

impl Editable for RepeaterSpec {
    const TAB: &'static str = "forwarding";

    fn blank() -> Value {
        let spec = RepeaterSpec::from_json(json!({
            "name": "new-repeater", "kind": "form", "connection": "", "format": "form-xml"
        }))
        .expect("the blank repeater reads");
        serde_json::to_value(spec).expect("repeaters serialize")
    }

    fn editable(stored: &RepeaterRef) -> Value {
        serde_json::to_value(&*stored.spec).expect("repeaters serialize")
    }
}

impl Editable for ConnectionSpec {
    const TAB: &'static str = "connections";

    fn blank() -> Value {
        let spec = ConnectionSpec::from_json(json!({
            "name": "new-connection", "url": "https://remote.example/receiver"
        }))
        .expect("the blank connection reads");
        serde_json::to_value(spec).expect("connections serialize")
    }

    fn editable(stored: &Arc<StoredConnection>) -> Value {
        serde_json::to_value(stored.spec.redacted()).expect("connections serialize")
    }
}

pub async fn forwarding(
    State(console): Shared,
    headers: HeaderMap,
    Path(domain): Path<String>,
) -> Result<Response, ConsoleError> {
    let (visit, access) = console.domain_visit(&headers, &domain)?;
    let counts = console
        .app
        .store
        .state_counts()
        .await
        .map_err(ApiError::from)?;
    let snapshot = console.app.catalog.snapshot();
    let repeaters: Vec<&RepeaterRef> = snapshot
        .domain(&access.domain)
        .map(|objects| objects.repeaters.values().collect())
        .unwrap_or_default();
    let page = console.page(&visit, Some(&access.domain), "Data Forwarding");
    let content = html! {
        p.lead { "Every repeater of this project space and its records by state. A count opens the records behind it." }
        p { a.button-link.primary href={ (page.link("edit/repeaters")) } { "Add a repeater" } }
        @if repeaters.is_empty() {
            p.empty { "No repeater yet." }
        } @else {
            div.table-wrap { table.forwarding {
                thead { tr {
                    th { "Repeater" } th { "Kind" } th { "Format" } th { "Connection" } th { "Status" }
                    @for state in RecordState::ALL { th.num { (state.as_str()) } }
                    th { "Actions" }
                } }
                tbody {
                    @for repeater in &repeaters {
                        @let spec = &repeater.spec;
                        tr {
                            td { strong { (spec.name) } }
                            td { (spec.kind.as_str()) }
                            td.mono { (spec.format) }
                            td { a href=(page.link("connections")) { (spec.connection) } }
                            td { @if spec.paused { span.badge.paused { "paused" } } @else { span.badge.active { "active" } } }
                            @for state in RecordState::ALL {
                                @let count = counts.get(&(repeater.id, state)).copied().unwrap_or(0);
                                td.num {
                                    a class={ "count state-" (state.as_str()) @if count == 0 { " zero" } }
                                        href={ (page.link("records")) "?repeater=" (encode(&spec.name)) "&state=" (state.as_str()) }
                                        aria-label={ (spec.name) " " (state.as_str()) } { (count) }
                                }
                            }
                            td.actions {
                                form.inline method="post" action=(page.link(&format!("repeaters/{}/{}", encode(&spec.name), if spec.paused { "resume" } else { "pause" }))) {
                                    (page.csrf_field())
                                    button.small type="submit" { @if spec.paused { "Resume" } @else { "Pause" } }
                                }
                                a.button-link.small href={ (page.link("edit/repeaters")) "?name=" (encode(&spec.name)) } { "Edit" }
                                a.button-link.small.danger href=(page.link(&format!("delete/repeaters/{}", encode(&spec.name)))) { "Delete" }
                            }
                        }
                    }
                }
            } }
        }
    };
    Ok(page.render(content))
}

pub async fn connections(
    State(console): Shared,
    headers: HeaderMap,
    Path(domain): Path<String>,
) -> Result<Response, ConsoleError> {
    let (visit, access) = console.domain_visit(&headers, &domain)?;
    let snapshot = console.app.catalog.snapshot();
    let objects = snapshot.domain(&access.domain);
    let page = console.page(&visit, Some(&access.domain), "Connection Settings");
    let content = html! {
        p.lead { "Where this project space's data goes, and how the gateway signs in there." }
        p { a.button-link.primary href=(page.link("edit/connections")) { "Add a connection" } }
        @match objects.filter(|objects| !objects.connections.is_empty()) {
            None => p.empty { "No connection yet." },
            Some(objects) => div.table-wrap { table.connections {
                thead { tr { th { "Name" } th { "URL" } th { "Notify" } th { "Auth" } th { "Used by" } th { "Actions" } } }
                tbody {
                    @for (name, stored) in &objects.connections {
                        @let users: Vec<&str> = objects.repeaters.values().filter(|r| r.spec.connection == *name).map(|r| r.spec.name.as_str()).collect();
                        tr {
                            td { strong { (name) } }
                            td.mono { (stored.spec.url) }
                            td { (stored.spec.notify.join(", ")) }
                            td { (stored.spec.auth.type_name()) }
                            td { @if users.is_empty() { span.muted { "no repeater" } } @else { (users.join(", ")) } }
                            td.actions {
                                form.inline method="post" action=(page.link(&format!("connections/{}/test", encode(name)))) {
                                    (page.csrf_field())
                                    button.small type="submit" { "Test connection" }
                                }
                                a.button-link.small href={ (page.link("edit/connections")) "?name=" (encode(name)) } { "Edit" }
                                a.button-link.small.danger href=(page.link(&format!("delete/connections/{}", encode(name)))) { "Delete" }
                            }
                        }
                    }
                }
            } },
        }
    };
    Ok(page.render(content))
}

pub async fn repeater_action(
    State(console): Shared,
    headers: HeaderMap,
    Path((domain, name, action)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (visit, access, _) = console.posted(&headers, Some(&domain), &body)?;
    let access = access.expect("a domain was checked");
    let paused = api::pauses(&action)?;
    api::set_paused(&console.app, &access.domain, &name, paused).await?;
    console.sessions.notify(
        &visit.session_id,
        format!(
            "Repeater {name} {}.",
            if paused { "paused" } else { "resumed" }
        ),
    );
    Ok(Redirect::to(&format!("/console/d/{}/forwarding", encode(&access.domain))).into_response())
}

pub async fn test_connection(
    State(console): Shared,
    headers: HeaderMap,
    Path((domain, name)): DomainAnd,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (visit, access, _) = console.posted(&headers, Some(&domain), &body)?;
    let access = access.expect("a domain was checked");
    let snapshot = console.app.catalog.snapshot();
    let stored = snapshot
        .domain(&access.domain)
        .and_then(|objects| objects.connections.get(&name))
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no connection \"{name}\" in domain \"{}\"",
                access.domain
            ))
        })?;
    let result = console
        .app
        .delivery
        .test_connection(&stored.spec, stored.origin)
        .await;
    let title = format!("Test of {name}");
    let page = console.page(&visit, Some(&access.domain), &title);
    let content = html! {
        p { "One GET to " span.mono { (stored.spec.url) } " with the connection's headers and authentication." }
        @match &result {
            Ok((status, answer)) => {
                p.test-result { "The remote answered " span class={ "http http-" (status / 100) } { "HTTP " (status) } }
                h2 { "Start of the answer" }
                pre.body { (answer.chars().take(2000).collect::<String>()) }
            }
            Err(error) => {
                p.test-result { span.http.http-none { "no answer" } }
                p.error-text { (error.to_string()) }
            }
        }
        p { a.button-link href=(page.link("connections")) { "Back to Connection Settings" } }
    };
    Ok(page.render(content))
}

#[derive(Debug, Deserialize)]
pub struct EditQuery {
    name: Option<String>,
}

/// The editor of a new object, or of the one `?name=` names.
pub async fn editor(
    State(console): Shared,
    headers: HeaderMap,
    Path((domain, kind)): DomainAnd,
    Query(query): Query<EditQuery>,
) -> Result<Response, ConsoleError> {
    let (visit, access) = console.domain_visit(&headers, &domain)?;
    match kind.as_str() {
        RepeaterSpec::LISTING => show_editor::<RepeaterSpec>(&console, &visit, &access, query.name),
        ConnectionSpec::LISTING => {
            show_editor::<ConnectionSpec>(&console, &visit, &access, query.name)
        }
        other => Err(ApiError::NotFound(format!("no kind of object \"{other}\"")).into()),
    }
}

fn show_editor<K: Editable>(
    console: &Console,
    visit: &Visit,
    access: &DomainAccess,
    name: Option<String>,
) -> Result<Response, ConsoleError> {
    let text = match &name {
        None => K::blank(),
        Some(name) => {
            let snapshot = console.app.catalog.snapshot();
            let stored = snapshot
                .domain(&access.domain)
                .and_then(|objects| K::stored_in(objects).get(name))
                .ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "no {} \"{name}\" in domain \"{}\"",
                        K::KIND,
                        access.domain
                    ))
                })?;
            K::editable(stored)
        }
    };
    let text = serde_json::to_string_pretty(&text).expect("JSON prints");
    Ok(render_editor::<K>(
        console,
        visit,
        access,
        name.as_deref(),
        &text,
        None,
    ))
}

fn render_editor<K: Editable>(
    console: &Console,
    visit: &Visit,
    access: &DomainAccess,
    name: Option<&str>,
    text: &str,
    problem: Option<&str>,
) -> Response {
    let title = match name {
        Some(name) => format!("Edit {} {name}", K::KIND),
        None => format!("Add a {}", K::KIND),
    };
    let page = console.page(visit, Some(&access.domain), &title);
    let content = editor_form::<K>(&page, name, text, problem);
    let mut response = page.render(content);
    if problem.is_some() {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    response
}

fn editor_form<K: Editable>(
    page: &Page<'_>,
    name: Option<&str>,
    text: &str,
    problem: Option<&str>,
) -> Markup {
    html! {
        @if let Some(problem) = problem {
            p.error role="alert" { (problem) }
        }
        p.lead {
            "Every setting of the " (K::KIND) ", as the admin API takes it (SPEC sections 3 and 5). "
            @if K::KIND == "connection" { "Secrets show as ******** and are kept when left as they are." }
        }
        form.editor method="post" action=(page.link(&format!("edit/{}", K::LISTING))) {
            (page.csrf_field())
            input type="hidden" name="original" value=(name.unwrap_or_default());
            textarea name="json" rows="24" spellcheck="false" aria-label={ (K::KIND) " settings" } { (text) }
            div.form-actions {
                button.primary type="submit" { "Save" }
                " "
                a.button-link href=(page.link(K::TAB)) { "Cancel" }
            }
        }
    }
}

pub async fn save(
    State(console): Shared,
    headers: HeaderMap,
    Path((domain, kind)): DomainAnd,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (visit, access, form) = console.posted(&headers, Some(&domain), &body)?;
    let access = access.expect("a domain was checked");
    let original = form.get("original").filter(|name| !name.is_empty());
    let text = form.get("json").unwrap_or_default();
    match kind.as_str() {
        RepeaterSpec::LISTING => {
            save_as::<RepeaterSpec>(&console, &visit, &access, original, &text).await
        }
        ConnectionSpec::LISTING => {
            save_as::<ConnectionSpec>(&console, &visit, &access, original, &text).await
        }
        other => Err(ApiError::NotFound(format!("no kind of object \"{other}\"")).into()),
    }
}

async fn save_as<K: Editable>(
    console: &Console,
    visit: &Visit,
    access: &DomainAccess,
    original: Option<String>,
    text: &str,
) -> Result<Response, ConsoleError> {
    match api::save_object::<K>(&console.app, access, text.as_bytes(), original.as_deref()).await {
        Ok(_) => {
            console
                .sessions
                .notify(&visit.session_id, format!("Saved the {}.", K::KIND));
            Ok(
                Redirect::to(&format!("/console/d/{}/{}", encode(&access.domain), K::TAB))
                    .into_response(),
            )
        }
        Err(error @ (ApiError::Internal(_) | ApiError::NotFound(_))) => Err(error.into()),
        Err(refused) => {
            let problem = ConsoleError::describe(&refused);
            Ok(render_editor::<K>(
                console,
                visit,
                access,
                original.as_deref(),
                text,
                Some(&problem),
            ))
        }
    }
}

pub async fn confirm_delete(
    State(console): Shared,
    headers: HeaderMap,
    Path((domain, kind, name)): Path<(String, String, String)>,
) -> Result<Response, ConsoleError> {
    let (visit, access) = console.domain_visit(&headers, &domain)?;
    let (what, consequence) = match kind.as_str() {
        RepeaterSpec::LISTING => (
            "repeater",
            "Its records that are still queued are cancelled.",
        ),
        ConnectionSpec::LISTING => (
            "connection",
            "A connection a repeater still uses cannot be deleted.",
        ),
        other => return Err(ApiError::NotFound(format!("no kind of object \"{other}\"")).into()),
    };
    let title = format!("Delete {what} {name}?");
    let page = console.page(&visit, Some(&access.domain), &title);
    let back = if what == "repeater" {
        "forwarding"
    } else {
        "connections"
    };
    let content = html! {
        p.confirm { (consequence) }
        form method="post" action=(page.link(&format!("delete/{kind}/{}", encode(&name)))) {
            (page.csrf_field())
            button.primary.danger type="submit" { "Delete " (name) }
            " "
            a.button-link href=(page.link(back)) { "Go back" }
        }
    };
    Ok(page.render(content))
}

pub async fn delete(
    State(console): Shared,
    headers: HeaderMap,
    Path((domain, kind, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (visit, access, _) = console.posted(&headers, Some(&domain), &body)?;
    let access = access.expect("a domain was checked");
    let (result, tab) = match kind.as_str() {
        RepeaterSpec::LISTING => (
            RepeaterSpec::delete(&console.app, &access.domain, &name).await,
            RepeaterSpec::TAB,
        ),
        ConnectionSpec::LISTING => (
            ConnectionSpec::delete(&console.app, &access.domain, &name).await,
            ConnectionSpec::TAB,
        ),
        other => return Err(ApiError::NotFound(format!("no kind of object \"{other}\"")).into()),
    };
    let notice = match result {
        Ok(Some(answer)) => format!(
            "Deleted {name}; {} queued record(s) cancelled.",
            answer["records_cancelled"].as_u64().unwrap_or(0)
        ),
        Ok(None) => format!("Deleted {name}."),
        Err(ApiError::Conflict(message)) => {
            format!("Not deleted: {message}; change those repeaters first.")
        }
        Err(error) => return Err(error.into()),
    };
    console.sessions.notify(&visit.session_id, notice);
    Ok(Redirect::to(&format!("/console/d/{}/{tab}", encode(&access.domain))).into_response())
}
