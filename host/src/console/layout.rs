//! The console's frame: the page around every view (title, project-space
//! switcher, tabs, sign-out), the embedded stylesheet, the sign-in page, and
//! refusals and failures rendered as pages. Views are maud markup; maud
//! escapes every value spliced into it, and nothing here opts out of that.

use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};

use crate::endpoint::ApiError;
use crate::record::RecordState;

use super::encode;

const STYLESHEET: &str = include_str!("assets/console.css");

pub async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
        .into_response()
}

/// The frame of one page.
#[derive(Debug)]
pub struct Page<'a> {
    pub title: &'a str,
    /// The project space the page belongs to.
    pub domain: Option<&'a str>,
    /// The project spaces the session may see.
    pub domains: Vec<String>,
    pub csrf: &'a str,
    pub admin: bool,
    pub notice: Option<String>,
}

/// The tabs of a project space: (path under the domain, label).
const TABS: [(&str, &str); 4] = [
    ("", "Overview"),
    ("forwarding", "Data Forwarding"),
    ("connections", "Connection Settings"),
    ("records", "Repeat Records"),
];

impl Page<'_> {
    /// The hidden anti-forgery field every form of the page carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }

    /// `/console/d/{domain}/{path}`.
    pub fn link(&self, path: &str) -> String {
        format!(
            "/console/d/{}/{path}",
            encode(self.domain.unwrap_or_default())
        )
    }

    /// The whole page around `content`.
    pub fn render(&self, content: Markup) -> Response {
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                (head(self.title))
                body {
                    header.top {
                        a.brand href="/console/" { "repeatd" }
                        @if let Some(domain) = self.domain {
                            span.space { "Project space " strong { (domain) } }
                        }
                        nav.spaces {
                            @if self.domains.len() > 1 || self.domain.is_none() {
                                @for name in &self.domains {
                                    a href={ "/console/d/" (encode(name)) "/forwarding" }
                                        class=[(Some(name.as_str()) == self.domain).then_some("current")] { (name) }
                                }
                            }
                            @if self.admin {
                                a href="/console/plugins" { "Plugins" }
                            }
                        }
                        form.sign-out method="post" action="/console/sign-out" {
                            (self.csrf_field())
                            button type="submit" { "Sign out" }
                        }
                    }
                    @if self.domain.is_some() {
                        nav.tabs {
                            @for (path, label) in TABS {
                                a href=(self.link(path)) class=[(label == self.title).then_some("current")] { (label) }
                            }
                        }
                    }
                    main {
                        @if let Some(notice) = &self.notice {
                            p.notice role="status" { (notice) }
                        }
                        h1 { (self.title) }
                        (content)
                    }
                }
            }
        };
        Html(body.into_string()).into_response()
    }
}

/// Every page's `<head>`.
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · repeatd" }
            link rel="stylesheet" href="/console/console.css";
        }
    }
}

/// The sign-in page, with what went wrong last time.
pub fn sign_in(problem: Option<&str>) -> Response {
    let status = if problem.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body.sign-in {
                main {
                    h1 { "repeatd" }
                    p { "Sign in with the admin token or a project space's API token." }
                    @if let Some(problem) = problem {
                        p.error role="alert" { (problem) }
                    }
                    form method="post" action="/console/sign-in" {
                        label for="token" { "Token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button.primary type="submit" { "Sign in" }
                    }
                }
            }
        }
    };
    (status, Html(body.into_string())).into_response()
}

/// The admin's list of project spaces.
pub fn domain_list(domains: &[String]) -> Markup {
    html! {
        @if domains.is_empty() {
            p.empty { "No project space is configured yet." }
        } @else {
            ul.spaces-list {
                @for name in domains {
                    li { a href={ "/console/d/" (encode(name)) "/forwarding" } { (name) } }
                }
            }
        }
    }
}

/// A record state as a coloured badge.
pub fn state_badge(state: RecordState) -> Markup {
    html! { span class={ "state state-" (state.as_str()) } { (state.as_str()) } }
}

/// A timestamp as the console shows it (UTC, to the second).
pub fn when(micros: Option<i64>) -> String {
    match micros {
        Some(at) => {
            let text = crate::time::format_utc(at);
            match text.split_once('.') {
                Some((seconds, _)) => format!("{}Z", seconds.replace('T', " ")),
                None => text.replace('T', " "),
            }
        }
        None => "—".to_owned(),
    }
}

/// Why a console request was not served.
#[derive(Debug)]
pub enum ConsoleError {
    /// No live session: go and sign in.
    SignIn,
    /// A POST without the session's anti-forgery token.
    Forbidden,
    /// What the shared operations refused.
    Api(ApiError),
}

impl ConsoleError {
    /// What a refusal of the shared operations says, in one line: the field
    /// at fault first.
    pub fn describe(error: &ApiError) -> String {
        match error {
            ApiError::Unauthenticated => "sign in first".to_owned(),
            ApiError::NotFound(message)
            | ApiError::Conflict(message)
            | ApiError::Internal(message) => message.clone(),
            ApiError::BadRequest { field, problem }
            | ApiError::Invalid { field, problem }
            | ApiError::Unavailable { field, problem } => format!("{field}: {problem}"),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ConsoleError::SignIn => return Redirect::to("/console/sign-in").into_response(),
            ConsoleError::Forbidden => (
                StatusCode::FORBIDDEN,
                "this form is missing its anti-forgery token or it is not this session's: nothing was changed; reload the page and try again".to_owned(),
            ),
            ConsoleError::Api(error) => {
                if let ApiError::Internal(problem) = &error {
                    tracing::error!(%problem, "console request failed");
                }
                (error.status(), ConsoleError::describe(&error))
            }
        };
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                (head(&status.as_u16().to_string()))
                body {
                    header.top { a.brand href="/console/" { "repeatd" } }
                    main {
                        h1 { (status.canonical_reason().unwrap_or("Error")) }
                        p.error role="alert" { (message) }
                        p { a href="/console/" { "Back to the console" } }
                    }
                }
            }
        };
        (status, Html(body.into_string())).into_response()
    }
}
