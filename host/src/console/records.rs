//! Repeat Records: the filtered, paged listing (from the store's indexes,
//! newest first), per-record and bulk Resend / Cancel / Requeue (bulk after a
//! confirmation that says how many records it touches, counted from the
//! state counters), and a record's page: every attempt and the payload as it
//! would be sent now.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use crate::api;
use crate::record::{OperatorAction, RecordState, RepeatRecord};
use crate::store::RecordFilter;

use super::layout::{ConsoleError, Page, state_badge, when};
use super::{Console, DomainAnd, Form, Shared, encode};

/// Rows on one page of the listing.
const PAGE_SIZE: usize = 50;
/// How much of a last error a row shows.
const ERROR_EXCERPT_CHARS: usize = 140;

/// The listing's query: its filter and where the page starts.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    repeater: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    payload_id: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    action: String,
}

impl ListQuery {
    fn from_form(form: &Form) -> ListQuery {
        ListQuery {
            repeater: form.get("repeater").unwrap_or_default(),
            state: form.get("state").unwrap_or_default(),
            payload_id: form.get("payload_id").unwrap_or_default(),
            cursor: String::new(),
            action: form.get("action").unwrap_or_default(),
        }
    }

    fn filter(&self) -> Result<RecordFilter, ConsoleError> {
        Ok(api::parse_filter(
            Some(&self.state),
            Some(self.repeater.clone()),
            Some(self.payload_id.trim().to_owned()),
        )?)
    }

    /// The filter as a query string.
    fn query(&self) -> String {
        format!(
            "repeater={}&state={}&payload_id={}",
            encode(&self.repeater),
            encode(&self.state),
            encode(self.payload_id.trim())
        )
    }

    /// The filter as hidden fields of a form.
    fn hidden_fields(&self) -> Markup {
        html! {
            input type="hidden" name="repeater" value=(self.repeater);
            input type="hidden" name="state" value=(self.state);
            input type="hidden" name="payload_id" value=(self.payload_id.trim());
        }
    }

    /// The filter in words.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.repeater.is_empty() {
            parts.push(format!("repeater {}", self.repeater));
        }
        if !self.state.is_empty() {
            parts.push(format!("state {}", self.state));
        }
        if !self.payload_id.trim().is_empty() {
            parts.push(format!("payload id {}", self.payload_id.trim()));
        }
        if parts.is_empty() {
            "every record of this project space".to_owned()
        } else {
            format!("every record with {}", parts.join(", "))
        }
    }
}

fn parse_action(text: &str) -> Result<OperatorAction, ConsoleError> {
    text.parse::<OperatorAction>().map_err(|problem| {
        ConsoleError::Api(crate::endpoint::ApiError::bad_request("action", problem))
    })
}

/// "Resend", "Cancel", "Requeue".
fn action_label(action: OperatorAction) -> &'static str {
    match action {
        OperatorAction::Resend => "Resend",
        OperatorAction::Cancel => "Cancel",
        OperatorAction::Requeue => "Requeue",
    }
}

/// "resent", "cancelled", "requeued".
fn action_done(action: OperatorAction) -> &'static str {
    match action {
        OperatorAction::Resend => "resent",
        OperatorAction::Cancel => "cancelled",
        OperatorAction::Requeue => "requeued",
    }
}

const ACTIONS: [(&str, OperatorAction); 3] = [
    ("resend", OperatorAction::Resend),
    ("cancel", OperatorAction::Cancel),
    ("requeue", OperatorAction::Requeue),
];

fn excerpt(text: &str, chars: usize) -> String {
    let mut cut: String = text.chars().take(chars).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

pub async fn list(
    State(console): Shared,
    headers: HeaderMap,
    Path(domain): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ConsoleError> {
    let (visit, access) = console.domain_visit(&headers, &domain)?;
    let filter = query.filter()?;
    let cursor = api::parse_cursor(Some(&query.cursor))?;
    let page_of_records =
        api::list_matching(&console.app, &access.domain, &filter, PAGE_SIZE, cursor).await?;
    let snapshot = console.app.catalog.snapshot();
    let repeater_names: Vec<String> = snapshot
        .domain(&access.domain)
        .map(|objects| objects.repeaters.keys().cloned().collect())
        .unwrap_or_default();
    let page = console.page(&visit, Some(&access.domain), "Repeat Records");
    let content = html! {
        form.filters method="get" action=(page.link("records")) {
            label { "Repeater "
                select name="repeater" {
                    option value="" { "any" }
                    @for name in &repeater_names {
                        option value=(name) selected[*name == query.repeater] { (name) }
                    }
                }
            }
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for state in RecordState::ALL {
                        option value=(state.as_str()) selected[state.as_str() == query.state] { (state.as_str()) }
                    }
                }
            }
            label { "Payload id "
                input type="search" name="payload_id" value=(query.payload_id.trim()) placeholder="form, case or app id";
            }
            button type="submit" { "Filter" }
            a.button-link href=(page.link("records")) { "Clear" }
        }
        div.bulk {
            span { "For " (query.describe()) ": " }
            @for (name, action) in ACTIONS {
                a.button-link href={ (page.link("records/bulk")) "?" (query.query()) "&action=" (name) } { (action_label(action)) " all…" }
            }
        }
        @if page_of_records.records.is_empty() {
            p.empty { "No record matches." }
        } @else {
            form method="post" action=(page.link("records/act")) {
                (page.csrf_field())
                (query.hidden_fields())
                div.ticked {
                    span { "Ticked rows: " }
                    @for (name, action) in ACTIONS {
                        button type="submit" name="action" value=(name) { (action_label(action)) }
                    }
                }
                div.table-wrap {
                    table.records {
                        thead { tr {
                            th { span.visually-hidden { "Tick" } }
                            th { "State" } th { "Repeater" } th { "Payload id" } th.num { "Attempts" }
                            th { "Last attempt" } th { "Next attempt" } th { "Last error" } th { "Actions" }
                        } }
                        tbody {
                            @for record in &page_of_records.records {
                                (row(&console, &page, record))
                            }
                        }
                    }
                }
            }
        }
        nav.pager {
            @if cursor.is_some() {
                a href={ (page.link("records")) "?" (query.query()) } { "« First page" }
            }
            @if let Some(next) = page_of_records.next_cursor {
                a href={ (page.link("records")) "?" (query.query()) "&cursor=" (next) } { "Next page »" }
            }
        }
    };
    Ok(page.render(content))
}

fn row(console: &Console, page: &Page<'_>, record: &RepeatRecord) -> Markup {
    let id = console.app.store.record_id(record.seq);
    html! {
        tr {
            td { input type="checkbox" name="id" value=(id) aria-label={ "tick record " (id) }; }
            td { (state_badge(record.state)) }
            td { (record.repeater) }
            td.mono { a href=(page.link(&format!("records/{}", encode(&id)))) { (record.payload.payload_id()) } }
            td.num { (record.n_attempts) }
            td.when { (when(record.last_attempt_at)) }
            td.when { (when(record.next_attempt_at)) }
            td.error-text { (record.last_error.as_deref().map(|e| excerpt(e, ERROR_EXCERPT_CHARS)).unwrap_or_default()) }
            td.actions {
                @for (name, action) in ACTIONS {
                    button.small type="submit" name="one" value={ (id) " " (name) } { (action_label(action)) }
                }
            }
        }
    }
}

/// The listing's form: one row's button acts at once; the ticked rows'
/// buttons ask for a confirmation first.
pub async fn act(
    State(console): Shared,
    headers: HeaderMap,
    Path(domain): Path<String>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (visit, access, form) = console.posted(&headers, Some(&domain), &body)?;
    let access = access.expect("a domain was checked");
    let query = ListQuery::from_form(&form);
    let back = format!(
        "/console/d/{}/records?{}",
        encode(&access.domain),
        query.query()
    );
    if let Some(one) = form.get("one") {
        let (id, action) = one.split_once(' ').unwrap_or((&one, ""));
        let action = parse_action(action)?;
        let record = api::act_on_record(&console.app, &access.domain, id, action).await?;
        console.sessions.notify(
            &visit.session_id,
            format!(
                "Record {id} {}: it is now {}.",
                action_done(action),
                record.state.as_str()
            ),
        );
        return Ok(Redirect::to(&back).into_response());
    }
    let action = parse_action(&query.action)?;
    let ids = form.all("id");
    if ids.is_empty() {
        console.sessions.notify(
            &visit.session_id,
            "No row was ticked: nothing was changed.".to_owned(),
        );
        return Ok(Redirect::to(&back).into_response());
    }
    if form.get("confirmed").as_deref() == Some("yes") {
        for id in &ids {
            api::act_on_record(&console.app, &access.domain, id, action).await?;
        }
        console.sessions.notify(
            &visit.session_id,
            format!("{} {} record(s).", action_label(action), ids.len()),
        );
        return Ok(Redirect::to(&back).into_response());
    }
    let page = console.page(&visit, Some(&access.domain), "Confirm");
    let content = html! {
        p.confirm { (action_label(action)) " " strong { (ids.len()) " ticked record(s)" } "?" }
        (confirm_form(&page, "records/act", &query, action, ids.len() as u64, &back, html! {
            input type="hidden" name="confirmed" value="yes";
            @for id in &ids { input type="hidden" name="id" value=(id); }
        }))
    };
    Ok(page.render(content))
}

/// The form that carries out a confirmed action on `count` records: the
/// filter, the action and `extra` fields, posted to `path`.
fn confirm_form(
    page: &Page<'_>,
    path: &str,
    query: &ListQuery,
    action: OperatorAction,
    count: u64,
    back: &str,
    extra: Markup,
) -> Markup {
    html! {
        form method="post" action=(page.link(path)) {
            (page.csrf_field())
            (query.hidden_fields())
            (extra)
            button.primary type="submit" name="action" value=(query.action) { (action_label(action)) " " (count) " record(s)" }
            " "
            a.button-link href=(back) { "Go back" }
        }
    }
}

/// The confirmation before a bulk action: what it does and to how many.
pub async fn confirm_bulk(
    State(console): Shared,
    headers: HeaderMap,
    Path(domain): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ConsoleError> {
    let (visit, access) = console.domain_visit(&headers, &domain)?;
    let action = parse_action(&query.action)?;
    let filter = query.filter()?;
    let count = api::count_matching(&console.app, &access.domain, &filter).await?;
    let page = console.page(&visit, Some(&access.domain), "Confirm");
    let back = format!("{}?{}", page.link("records"), query.query());
    let content = html! {
        p.confirm {
            (action_label(action)) " " (query.describe()) ": "
            strong.count { (count) " record(s)" } " will be " (action_done(action)) "."
        }
        (confirm_form(&page, "records/bulk", &query, action, count, &back, html! {}))
    };
    Ok(page.render(content))
}

pub async fn bulk(
    State(console): Shared,
    headers: HeaderMap,
    Path(domain): Path<String>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (visit, access, form) = console.posted(&headers, Some(&domain), &body)?;
    let access = access.expect("a domain was checked");
    let query = ListQuery::from_form(&form);
    let action = parse_action(&query.action)?;
    let changed =
        api::act_on_matching(&console.app, &access.domain, query.filter()?, action).await?;
    console.sessions.notify(
        &visit.session_id,
        format!(
            "{} {changed} record(s): {}.",
            action_label(action),
            query.describe()
        ),
    );
    let back = format!(
        "/console/d/{}/records?{}",
        encode(&access.domain),
        query.query()
    );
    Ok(Redirect::to(&back).into_response())
}

/// A record's page.
pub async fn record(
    State(console): Shared,
    headers: HeaderMap,
    Path((domain, id)): DomainAnd,
) -> Result<Response, ConsoleError> {
    let (visit, access) = console.domain_visit(&headers, &domain)?;
    let record = api::find_record(&console.app, &access.domain, &id).await?;
    let attempts = console
        .app
        .store
        .attempts(record.seq)
        .await
        .map_err(crate::endpoint::ApiError::from)?;
    let preview = preview(&console, &id, &record).await;
    let title = format!("Record {id}");
    let page = console.page(&visit, Some(&access.domain), &title);
    let content = html! {
        dl.facts {
            dt { "State" } dd { (state_badge(record.state)) }
            dt { "Repeater" } dd { (record.repeater) }
            dt { "Payload" } dd.mono { (record.kind.as_str()) " " (record.payload.payload_id()) }
            dt { "Attempts" } dd { (record.n_attempts) }
            dt { "Registered" } dd { (when(Some(record.registered_at))) }
            dt { "Next attempt" } dd { (when(record.next_attempt_at)) }
        }
        form.actions method="post" action=(page.link("records/act")) {
            (page.csrf_field())
            @for (name, action) in ACTIONS {
                button type="submit" name="one" value={ (id) " " (name) } { (action_label(action)) }
            }
        }
        h2 { "Attempts" }
        @if attempts.is_empty() {
            p.empty { "No attempt yet." }
        }
        @for attempt in attempts.iter().rev() {
            section.attempt {
                h3 {
                    "Attempt " (attempt.number) " · " (when(Some(attempt.at))) " · " (attempt.duration_ms) " ms · "
                    @match attempt.status {
                        Some(status) => span class={ "http http-" (status / 100) } { "HTTP " (status) },
                        None => span.http.http-none { "no answer" },
                    }
                }
                p.mono { (attempt.url) }
                @if let Some(error) = &attempt.error {
                    p.error-text { (error) }
                }
                @if let Some(response) = &attempt.response {
                    h4 { "Response" }
                    pre.body { (response) }
                }
            }
        }
        h2 { "Payload as it would be sent now" }
        (preview)
    };
    Ok(page.render(content))
}

/// The request a send would make now, or why none would be made.
async fn preview(console: &Console, id: &str, record: &RepeatRecord) -> Markup {
    let app = &console.app;
    let snapshot = app.catalog.snapshot();
    let objects = snapshot.domain(&record.domain);
    let repeater = objects.and_then(|objects| objects.repeaters.get(&record.repeater));
    let connection = objects
        .zip(repeater)
        .and_then(|(objects, repeater)| objects.connections.get(&repeater.spec.connection));
    let (Some(repeater), Some(connection)) = (repeater, connection) else {
        return html! { p.empty { "The repeater or its connection no longer exists: nothing would be sent." } };
    };
    let source = match app.store.load_for_send(record.seq).await {
        Ok(Some((_, source))) => source,
        Ok(None) => return html! { p.empty { "The record is gone." } },
        Err(error) => return html! { p.error-text { (error.to_string()) } },
    };
    let prepared = app
        .delivery
        .prepare(id, record, source, &repeater.spec, &connection.spec)
        .await;
    match prepared {
        Ok(request) => {
            let content_type = request
                .headers
                .get("content-type")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            html! {
                p.mono.request-line { (request.method.as_str()) " " (crate::delivery::redact_url(&request.url)) }
                table.headers {
                    @for (name, value) in &request.headers {
                        tr { th { (name.as_str()) } td.mono { (value.to_str().unwrap_or("(not text)")) } }
                    }
                    @if !matches!(connection.spec.auth, crate::connection::AuthSpec::None) {
                        tr { th { "authorization" } td { "added when sent (" (connection.spec.auth.type_name()) ")" } }
                    }
                }
                pre.body { (pretty(&content_type, &request.body)) }
            }
        }
        Err(crate::delivery::NotSent::Nothing) => html! {
            p.empty { "The format plugin has nothing to send for this record (it would be empty)." }
        },
        Err(crate::delivery::NotSent::PluginMissing(name)) => html! {
            p.error-text { "The format plugin \"" (name) "\" is not loaded." }
        },
        Err(crate::delivery::NotSent::Failed(error)) => html! {
            p.error-text { (error.to_string()) }
        },
    }
}

/// A body as text, JSON and XML indented.
pub fn pretty(content_type: &str, body: &[u8]) -> String {
    if content_type.contains("json")
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
        && let Ok(text) = serde_json::to_string_pretty(&value)
    {
        return text;
    }
    if content_type.contains("xml")
        && let Some(text) = pretty_xml(body)
    {
        return text;
    }
    String::from_utf8_lossy(body).into_owned()
}

/// XML re-indented by two spaces, or `None` when it does not parse.
fn pretty_xml(body: &[u8]) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    reader.config_mut().trim_text(true);
    let mut writer = quick_xml::Writer::new_with_indent(Vec::new(), b' ', 2);
    let mut buffer = Vec::new();
    // quick-xml accepts a document that ends with elements open; a body
    // that is not whole XML is shown as sent.
    let mut open_elements = 0usize;
    loop {
        let event = reader.read_event_into(&mut buffer).ok()?;
        match &event {
            Event::Eof if open_elements == 0 => break,
            Event::Eof => return None,
            Event::Start(_) => open_elements += 1,
            Event::End(_) => open_elements = open_elements.checked_sub(1)?,
            _ => {}
        }
        writer.write_event(event).ok()?;
        buffer.clear();
    }
    String::from_utf8(writer.into_inner()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_xml_bodies_are_indented_and_others_left_as_they_are() {
        assert_eq!(
            pretty("application/json", br#"{"a":[1]}"#),
            "{\n  \"a\": [\n    1\n  ]\n}"
        );
        assert_eq!(
            pretty("text/xml", b"<a><b>x</b></a>"),
            "<a>\n  <b>x</b>\n</a>"
        );
        assert_eq!(
            pretty("text/xml", b"<a><b>"),
            "<a><b>",
            "unclosed XML stays as sent"
        );
        assert_eq!(pretty("text/plain", b"{\"a\":1}"), "{\"a\":1}");
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(excerpt("ééé", 2), "éé…");
        assert_eq!(excerpt("short", 10), "short");
    }
}
