//! The operator console (SPEC section 10): server-rendered pages under
//! `/console/` over the same operations as the admin API. Each page handler
//! checks the session, calls the function the JSON handler of `api` calls
//! (saving objects, pausing, record actions, listings, counts) and renders
//! the answer with maud, which escapes everything it is given: nothing a
//! remote, a submitter or a plugin wrote can become markup.
//!
//! Every change is a POSTed form carrying the session's anti-forgery token;
//! a POST without it is refused with 403 before anything happens. Every
//! answer carries a `Content-Security-Policy` that allows no script at all
//! (the console needs none), no framing, and styles only from the one
//! embedded stylesheet.
//!
//! - `session`: server-side sessions, the cookie, the sign-in throttle.
//! - `layout`: the page frame, the stylesheet, errors as pages.
//! - `forwarding`: Data Forwarding and Connection Settings, and the JSON
//!   editor both kinds of object share.
//! - `records`: Repeat Records, bulk actions, a record's page.
//! - `overview`: the per-minute history and its charts; Plugins.

mod forwarding;
mod layout;
mod overview;
mod records;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::AppState;
use crate::endpoint::{Access, ApiError, Caller, DomainAccess};
use layout::{ConsoleError, Page};
use session::{Session, Sessions};

/// What the console's handlers share.
#[derive(Debug)]
pub struct Console {
    pub app: Arc<AppState>,
    pub sessions: Sessions,
    pub history: overview::History,
}

type Shared = State<Arc<Console>>;

/// The console's routes, under `/console`. Starts the Overview's sampler,
/// which ends when the gateway's state is dropped.
pub fn routes(app: Arc<AppState>) -> Router {
    let console = Arc::new(Console {
        sessions: Sessions::new(app.clock),
        history: overview::History::default(),
        app,
    });
    overview::start_sampling(Arc::downgrade(&console));
    let domain = "/console/d/{domain}";
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(home))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/console.css", get(layout::stylesheet))
        .route("/console/plugins", get(overview::plugins))
        .route(&format!("{domain}/"), get(overview::overview))
        .route(&format!("{domain}/forwarding"), get(forwarding::forwarding))
        .route(
            &format!("{domain}/connections"),
            get(forwarding::connections),
        )
        .route(
            &format!("{domain}/repeaters/{{name}}/{{action}}"),
            post(forwarding::repeater_action),
        )
        .route(
            &format!("{domain}/connections/{{name}}/test"),
            post(forwarding::test_connection),
        )
        .route(
            &format!("{domain}/edit/{{kind}}"),
            get(forwarding::editor).post(forwarding::save),
        )
        .route(
            &format!("{domain}/delete/{{kind}}/{{name}}"),
            get(forwarding::confirm_delete).post(forwarding::delete),
        )
        .route(&format!("{domain}/records"), get(records::list))
        .route(&format!("{domain}/records/act"), post(records::act))
        .route(
            &format!("{domain}/records/bulk"),
            get(records::confirm_bulk).post(records::bulk),
        )
        .route(&format!("{domain}/records/{{id}}"), get(records::record))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

/// What every console answer carries: no script, no framing, no sniffing,
/// no caching of pages that show a project's data.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::CACHE_CONTROL, "no-store");
    response
}

/// A signed-in request: its session and its id.
#[derive(Debug, Clone)]
pub struct Visit {
    pub session_id: String,
    pub session: Session,
}

impl Console {
    /// The request's session, or a redirect to the sign-in page.
    fn visit(&self, headers: &HeaderMap) -> Result<Visit, ConsoleError> {
        self.sessions
            .find(headers)
            .map(|(session_id, session)| Visit {
                session_id,
                session,
            })
            .ok_or(ConsoleError::SignIn)
    }

    /// The session, checked against the domain of the URL exactly as the API
    /// checks a token: another domain's pages are "no project space".
    fn domain_visit(
        &self,
        headers: &HeaderMap,
        domain: &str,
    ) -> Result<(Visit, DomainAccess), ConsoleError> {
        let visit = self.visit(headers)?;
        let access = DomainAccess::check(&self.app, visit.session.caller.clone(), domain)?;
        Ok((visit, access))
    }

    /// A POST's form fields, after its anti-forgery token is checked
    /// against the session's (403 and nothing done otherwise).
    fn posted(
        &self,
        headers: &HeaderMap,
        domain: Option<&str>,
        body: &Bytes,
    ) -> Result<(Visit, Option<DomainAccess>, Form), ConsoleError> {
        let visit = self.visit(headers)?;
        let form = Form::parse(body);
        let sent = form.get("csrf").unwrap_or_default();
        let expected = visit.session.csrf.as_bytes();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), expected)) {
            return Err(ConsoleError::Forbidden);
        }
        let access = match domain {
            Some(domain) => Some(DomainAccess::check(
                &self.app,
                visit.session.caller.clone(),
                domain,
            )?),
            None => None,
        };
        Ok((visit, access, form))
    }

    /// The page frame for `visit` in `domain`.
    fn page<'a>(&'a self, visit: &'a Visit, domain: Option<&'a str>, title: &'a str) -> Page<'a> {
        let domains = match visit.session.caller.access {
            Access::Admin => self
                .app
                .catalog
                .snapshot()
                .domains
                .keys()
                .cloned()
                .collect(),
            Access::Domain => visit.session.caller.own_domain.iter().cloned().collect(),
        };
        Page {
            title,
            domain,
            domains,
            csrf: &visit.session.csrf,
            admin: visit.session.caller.access == Access::Admin,
            notice: self.sessions.take_notice(&visit.session_id),
        }
    }
}

/// URL-encoded form fields, in order (a field may repeat: ticked rows).
#[derive(Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        Form(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`, if given.
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    }

    /// Every value of `name`.
    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .collect()
    }
}

/// A URL path segment or query value, percent-encoded.
pub fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn home(State(console): Shared, headers: HeaderMap) -> Result<Response, ConsoleError> {
    let visit = console.visit(&headers)?;
    if let Some(domain) = &visit.session.caller.own_domain {
        return Ok(
            Redirect::to(&format!("/console/d/{}/forwarding", encode(domain))).into_response(),
        );
    }
    let page = console.page(&visit, None, "Project spaces");
    Ok(page.render(layout::domain_list(&page.domains)))
}

async fn sign_in_page(State(console): Shared, headers: HeaderMap) -> Response {
    if console.visit(&headers).is_ok() {
        return Redirect::to("/console/").into_response();
    }
    layout::sign_in(None)
}

async fn sign_in(State(console): Shared, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let token = form.get("token").unwrap_or_default();
    let mut token_headers = HeaderMap::new();
    let caller = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
        .ok()
        .and_then(|value| {
            token_headers.insert(header::AUTHORIZATION, value);
            Caller::from_headers(&console.app, &token_headers).ok()
        });
    let Some(caller) = caller else {
        console.sessions.failed_sign_in().await;
        tracing::warn!("console sign-in with a wrong token");
        return layout::sign_in(Some(
            "that token is neither the admin token nor a project space's token",
        ));
    };
    let id = console.sessions.start(caller);
    // Served over HTTPS (`[tls]`), the cookie never travels over plain HTTP.
    let secure = console.app.config.tls.is_some();
    let mut response = Redirect::to("/console/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&Sessions::cookie(&id, secure)).expect("a cookie is ASCII"),
    );
    response
}

async fn sign_out(
    State(console): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (visit, _, _) = console.posted(&headers, None, &body)?;
    console.sessions.end(&visit.session_id);
    let mut response = Redirect::to("/console/sign-in").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&Sessions::expired_cookie()).expect("a cookie is ASCII"),
    );
    Ok(response)
}

/// `{domain}` and one more path parameter.
type DomainAnd = Path<(String, String)>;

impl From<ApiError> for ConsoleError {
    fn from(error: ApiError) -> Self {
        ConsoleError::Api(error)
    }
}
