//! Connections (SPEC sections 1, 3 and 9): every auth type reaches a remote
//! that checks it the way a real server does; per-connection headers and
//! timeouts apply; connections made with a domain token only reach what
//! `[delivery] allowed_networks` allows, checked on the address connected to;
//! and bad API bodies get a 4xx naming the field, with nothing half-created.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use md5::Md5;
use repeatd_tests::remote::{Remote, Reply, digest_params, form_fields};
use repeatd_tests::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(20);
const RETRY: &str = "retry = { min_wait = \"100ms\", factor = 2.0, max_attempts = 3 }";

/// A `[[connections]]` table of domain demo.
fn connection(name: &str, url: &str, extra: &str) -> String {
    format!("\n[[connections]]\ndomain = \"demo\"\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
}

/// A form repeater on `connection` with a short retry policy.
fn form_repeater(name: &str, connection: &str) -> String {
    repeater(name, "form", connection, "form-xml", RETRY)
}

/// The records of one repeater, with their attempts.
async fn records_of(gateway: &Gateway, repeater: &str) -> Vec<Value> {
    let mut full = Vec::new();
    for record in gateway
        .records("demo", &format!("repeater={repeater}"))
        .await
    {
        let id = record["id"].as_str().expect("record id");
        full.push(gateway.record("demo", id).await);
    }
    full
}

/// Waits until the repeater has `n` records, all in `state`; returns them with attempts.
async fn settled(gateway: &Gateway, repeater: &str, n: usize, state: &str) -> Vec<Value> {
    let records = gateway
        .wait_records("demo", &format!("repeater={repeater}"), n, state, WAIT)
        .await;
    assert!(
        records.len() == n && records.iter().all(|r| r["state"] == state),
        "repeater {repeater}: expected {n} record(s) {state}, found {records:#?}"
    );
    records_of(gateway, repeater).await
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- basic, bearer, api_key, headers --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_bearer_and_api_key_reach_a_remote_that_checks_them() {
    let expected_basic = format!("Basic {}", b64("ann:p@ss:wörd 1"));
    let remote = Remote::start(move |request| {
        let authorization = request.header("authorization");
        let accepted = match request.path.as_str() {
            "/basic" | "/basic-wrong" => authorization == Some(expected_basic.as_str()),
            "/bearer" => authorization == Some("Bearer tok-123.abc"),
            "/apikey" => request.header("x-api-key") == Some("k-456") && authorization.is_none(),
            _ => false,
        };
        if accepted {
            Reply::ok()
        } else {
            Reply::status(401)
                .header("www-authenticate", "Basic realm=\"remote\"")
                .body("bad credentials")
        }
    })
    .await;
    let mut config = demo_config(&[], "");
    config.push_str(&connection(
        "basic",
        &remote.url("/basic"),
        r#"auth = { type = "basic", username = "ann", password = "p@ss:wörd 1" }"#,
    ));
    config.push_str(&connection(
        "basic-wrong",
        &remote.url("/basic-wrong"),
        r#"auth = { type = "basic", username = "ann", password = "guess" }"#,
    ));
    config.push_str(&connection(
        "bearer",
        &remote.url("/bearer"),
        "auth = { type = \"bearer\", token = \"tok-123.abc\" }\nheaders = { X-Tenant = \"acme\", X-Trace = \"on\" }",
    ));
    config.push_str(&connection(
        "apikey",
        &remote.url("/apikey"),
        r#"auth = { type = "api_key", header = "X-Api-Key", key = "k-456" }"#,
    ));
    for (name, connection) in [
        ("to-basic", "basic"),
        ("to-basic-wrong", "basic-wrong"),
        ("to-bearer", "bearer"),
        ("to-apikey", "apikey"),
    ] {
        config.push_str(&form_repeater(name, connection));
    }
    let gateway = Gateway::start(&config).await;

    let (status, body) = gateway
        .submit("demo", &generated_form("f-1", "c-1", "t"), None)
        .await;
    assert_eq!(status, 201, "{body}");

    for repeater in ["to-basic", "to-bearer", "to-apikey"] {
        let records = settled(&gateway, repeater, 1, "succeeded").await;
        assert_eq!(records[0]["n_attempts"], 1, "{repeater}: {:#}", records[0]);
        assert_eq!(records[0]["attempts"][0]["status"], 200);
    }
    // The remote really checks: a wrong password is refused, and that is final.
    let wrong = settled(&gateway, "to-basic-wrong", 1, "rejected").await;
    assert_eq!(wrong[0]["attempts"][0]["status"], 401, "{:#}", wrong[0]);
    assert_eq!(wrong[0]["attempts"][0]["response"], "bad credentials");

    let bearer = remote.requests("/bearer");
    assert_eq!(bearer.len(), 1);
    assert_eq!(
        bearer[0].header("x-tenant"),
        Some("acme"),
        "per-connection headers arrive"
    );
    assert_eq!(bearer[0].header("x-trace"), Some("on"));
    assert!(
        remote.requests("/basic")[0].header("x-tenant").is_none(),
        "headers belong to their connection"
    );
    assert_eq!(bearer[0].body, generated_form("f-1", "c-1", "t"));
    gateway.stop().await;
}

// ---- digest ------------------------------------------------------------------

/// A remote that speaks HTTP Digest (RFC 7616) with qop=auth: it challenges any
/// request without a valid answer, and checks the answer's hash itself.
async fn digest_remote(user: &'static str, password: &'static str) -> Remote {
    let issued: Arc<Mutex<HashSet<String>>> = Arc::default();
    Remote::start(move |request| {
        let sha256 = request.path.starts_with("/sha");
        let algorithm = if sha256 { "SHA-256" } else { "MD5" };
        let hash = |text: String| -> String {
            if sha256 { hex(&Sha256::digest(text.as_bytes())) } else { hex(&Md5::digest(text.as_bytes())) }
        };
        let realm = "remote@test";
        let verified = request.header("authorization").and_then(digest_params).is_some_and(|answer| {
            let uri = if request.query.is_empty() {
                request.path.clone()
            } else {
                format!("{}?{}", request.path, request.query)
            };
            let get = |name: &str| answer.get(name).cloned().unwrap_or_default();
            let ha1 = hash(format!("{user}:{realm}:{password}"));
            let ha2 = hash(format!("{}:{uri}", request.method));
            let expected = hash(format!("{ha1}:{}:{}:{}:auth:{ha2}", get("nonce"), get("nc"), get("cnonce")));
            issued.lock().unwrap().contains(&get("nonce"))
                && get("username") == user
                && get("realm") == realm
                && get("uri") == uri
                && get("qop") == "auth"
                && !get("cnonce").is_empty()
                && get("opaque") == "opaque-value"
                && get("algorithm").eq_ignore_ascii_case(algorithm)
                && get("response") == expected
        });
        if verified {
            return Reply::ok();
        }
        let nonce = format!("nonce-{}", issued.lock().unwrap().len() + 1);
        issued.lock().unwrap().insert(nonce.clone());
        Reply::status(401)
            .header(
                "www-authenticate",
                &format!(
                    "Digest realm=\"{realm}\", nonce=\"{nonce}\", qop=\"auth\", opaque=\"opaque-value\", algorithm={algorithm}"
                ),
            )
            .body("digest required")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_answers_the_remotes_challenge() {
    let remote = digest_remote("Mufasa", "Circle Of Life").await;
    let mut config = demo_config(&[], "");
    let auth = r#"auth = { type = "digest", username = "Mufasa", password = "Circle Of Life" }"#;
    config.push_str(&connection("md5", &remote.url("/md5/in"), auth));
    config.push_str(&connection("sha", &remote.url("/sha/in"), auth));
    config.push_str(&connection(
        "wrong",
        &remote.url("/md5/wrong"),
        r#"auth = { type = "digest", username = "Mufasa", password = "Circle of Death" }"#,
    ));
    config.push_str(&form_repeater("to-md5", "md5"));
    config.push_str(&form_repeater("to-sha", "sha"));
    config.push_str(&form_repeater("to-wrong", "wrong"));
    let gateway = Gateway::start(&config).await;

    // The seed form has an app id: the digest uri must include the query.
    let (status, body) = gateway.submit("demo", SEED_FORM, Some(SEED_APP_ID)).await;
    assert_eq!(status, 201, "{body}");

    for (repeater, path) in [("to-md5", "/md5/in"), ("to-sha", "/sha/in")] {
        let records = settled(&gateway, repeater, 1, "succeeded").await;
        assert_eq!(records[0]["n_attempts"], 1, "{:#}", records[0]);
        let seen = remote.requests(path);
        assert_eq!(seen.len(), 2, "one challenge, one answer: {seen:?}");
        assert!(seen[0].header("authorization").is_none());
        assert!(
            seen[1]
                .header("authorization")
                .unwrap()
                .starts_with("Digest ")
        );
        assert_eq!(seen[1].query, format!("app_id={SEED_APP_ID}"));
        assert_eq!(
            seen[1].body, SEED_FORM,
            "the answer carries the payload too"
        );
    }
    let wrong = settled(&gateway, "to-wrong", 1, "rejected").await;
    assert_eq!(wrong[0]["attempts"][0]["status"], 401, "{:#}", wrong[0]);
    assert_eq!(
        remote.requests("/md5/wrong").len(),
        2,
        "a refused answer is not retried in a loop"
    );
    gateway.stop().await;
}

// ---- OAuth2 --------------------------------------------------------------------

/// The token endpoint's and the protected remote's shared state.
#[derive(Default)]
struct OAuthState {
    token_requests: Vec<String>,
    /// Tokens the remote accepts.
    valid: HashSet<String>,
    /// `expires_in` of the next tokens handed out.
    expires_in: u64,
    /// The remote refuses every token.
    refuse_all: bool,
}

fn oauth_remote(
    state: Arc<Mutex<OAuthState>>,
) -> impl Fn(&Received) -> Reply + Send + Sync + 'static {
    move |request| {
        let mut state = state.lock().unwrap();
        match request.path.as_str() {
            "/token" => {
                let fields = form_fields(&request.body);
                let field = |name: &str| fields.get(name).map(String::as_str);
                let grant = field("grant_type").unwrap_or_default().to_owned();
                let client_ok = request.header("content-type")
                    == Some("application/x-www-form-urlencoded")
                    && field("client_id") == Some("gateway-client")
                    && field("client_secret") == Some("client-s3cret")
                    && field("scope") == Some("forms:write cases");
                let grant_ok = match grant.as_str() {
                    "client_credentials" => fields.len() == 4,
                    "password" => {
                        field("username") == Some("alice")
                            && field("password") == Some("alice-pw")
                            && fields.len() == 6
                    }
                    _ => false,
                };
                if !(client_ok && grant_ok) {
                    return Reply::json(401, json!({"error": "invalid_client"}));
                }
                state.token_requests.push(grant.clone());
                let number = state.token_requests.iter().filter(|g| **g == grant).count();
                let token = format!("{grant}-{number}");
                state.valid.insert(token.clone());
                Reply::json(
                    200,
                    json!({"access_token": token, "token_type": "Bearer", "expires_in": state.expires_in}),
                )
            }
            _ => {
                let token = request
                    .header("authorization")
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default();
                if !state.refuse_all && state.valid.contains(token) {
                    Reply::ok()
                } else {
                    Reply::status(401).body("token not accepted")
                }
            }
        }
    }
}

/// The bearer tokens the remote got at `path` for form `form_id`, in order.
fn tokens_for(remote: &Remote, path: &str, form_id: &str) -> Vec<String> {
    remote
        .requests(path)
        .iter()
        .filter(|r| r.text().contains(form_id))
        .map(|r| {
            r.header("authorization")
                .unwrap_or_default()
                .trim_start_matches("Bearer ")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_cached_refreshed_and_fetched_again_after_a_401() {
    let state = Arc::new(Mutex::new(OAuthState {
        expires_in: 3600,
        ..OAuthState::default()
    }));
    let remote = Remote::start(oauth_remote(state.clone())).await;
    let token_url = remote.url("/token");
    let mut config = demo_config(&[], "");
    config.push_str(&connection(
        "cc",
        &remote.url("/cc"),
        &format!(
            r#"auth = {{ type = "oauth2_client_credentials", token_url = "{token_url}", client_id = "gateway-client", client_secret = "client-s3cret", scope = "forms:write cases" }}"#
        ),
    ));
    config.push_str(&connection(
        "pw",
        &remote.url("/pw"),
        &format!(
            r#"auth = {{ type = "oauth2_password", token_url = "{token_url}", client_id = "gateway-client", client_secret = "client-s3cret", scope = "forms:write cases", username = "alice", password = "alice-pw" }}"#
        ),
    ));
    config.push_str(&connection(
        "bad-secret",
        &remote.url("/cc-bad"),
        &format!(
            r#"auth = {{ type = "oauth2_client_credentials", token_url = "{token_url}", client_id = "gateway-client", client_secret = "wrong", scope = "forms:write cases" }}"#
        ),
    ));
    config.push_str(&form_repeater("to-cc", "cc"));
    config.push_str(&form_repeater("to-pw", "pw"));
    config.push_str(&repeater(
        "to-bad",
        "form",
        "bad-secret",
        "form-xml",
        "retry = { min_wait = \"100ms\", factor = 1.0, max_attempts = 1 }",
    ));
    let gateway = Gateway::start(&config).await;
    let fetched = |grant: &str| {
        state
            .lock()
            .unwrap()
            .token_requests
            .iter()
            .filter(|g| *g == grant)
            .count()
    };
    let submit = |n: usize| {
        let gateway = &gateway;
        async move {
            let form_id = format!("oauth-form-{n}");
            let (status, body) = gateway
                .submit(
                    "demo",
                    &generated_form(&form_id, &format!("case-{n}"), "t"),
                    None,
                )
                .await;
            assert_eq!(status, 201, "{body}");
            for repeater in ["to-cc", "to-pw"] {
                let records = settled(gateway, repeater, n, "succeeded").await;
                assert!(records.iter().all(|r| r["n_attempts"] == 1), "{records:#?}");
            }
            form_id
        }
    };

    // First send fetches a token; the second uses the cached one.
    let form = submit(1).await;
    assert_eq!(tokens_for(&remote, "/cc", &form), ["client_credentials-1"]);
    assert_eq!(tokens_for(&remote, "/pw", &form), ["password-1"]);
    let form = submit(2).await;
    assert_eq!(
        (fetched("client_credentials"), fetched("password")),
        (1, 1),
        "tokens are cached across sends"
    );
    assert_eq!(tokens_for(&remote, "/cc", &form), ["client_credentials-1"]);

    // The remote stops accepting the token: one 401, a new token, the same attempt succeeds.
    state.lock().unwrap().valid.clear();
    let form = submit(3).await;
    assert_eq!((fetched("client_credentials"), fetched("password")), (2, 2));
    let cc = tokens_for(&remote, "/cc", &form);
    assert_eq!(cc, ["client_credentials-1", "client_credentials-2"]);
    assert_eq!(
        tokens_for(&remote, "/pw", &form),
        ["password-1", "password-2"]
    );

    // Tokens that expire are fetched again before they do, without a 401
    // first: checked on the clock, in virtual time, by the unit tests of
    // `repeatd::auth` (`a_token_is_reused_until_a_margin_before_it_expires_…`).

    // A remote that refuses every token: fetched again once, then the 401 stands.
    state.lock().unwrap().refuse_all = true;
    let form_id = "oauth-form-6";
    let (status, _) = gateway
        .submit("demo", &generated_form(form_id, "case-6", "t"), None)
        .await;
    assert_eq!(status, 201);
    let records = gateway
        .wait_records("demo", "repeater=to-cc&state=rejected", 1, "rejected", WAIT)
        .await;
    assert_eq!(records.len(), 1, "{records:#?}");
    gateway
        .wait_records("demo", "repeater=to-pw&state=rejected", 1, "rejected", WAIT)
        .await;
    assert_eq!(
        (fetched("client_credentials"), fetched("password")),
        (3, 3),
        "one new token per 401, not a loop"
    );
    assert_eq!(tokens_for(&remote, "/cc", form_id).len(), 2);
    assert_eq!(tokens_for(&remote, "/pw", form_id).len(), 2);

    // A client secret the token endpoint refuses: a failed attempt that says so.
    let bad = gateway
        .wait_records("demo", "repeater=to-bad", 6, "cancelled", WAIT)
        .await;
    assert!(bad.iter().all(|r| r["state"] == "cancelled"), "{bad:#?}");
    let detail = gateway.record("demo", bad[0]["id"].as_str().unwrap()).await;
    let error = detail["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("oauth2 token request to {token_url} failed"))
            && error.contains("401"),
        "{detail:#}"
    );
    assert!(
        remote.requests("/cc-bad").is_empty(),
        "nothing is sent without a token"
    );
    gateway.stop().await;
}

// ---- timeout ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_timeout_cuts_slow_remotes_short() {
    let remote = Remote::start(|_| Reply::ok().delayed(Duration::from_secs(5))).await;
    let mut config = demo_config(&[], "");
    config.push_str(&connection(
        "slow",
        &remote.url("/slow"),
        "timeout = \"300ms\"",
    ));
    config.push_str(&repeater(
        "to-slow",
        "form",
        "slow",
        "form-xml",
        "retry = { min_wait = \"100ms\", max_attempts = 2 }",
    ));
    let gateway = Gateway::start(&config).await;
    let (status, _) = gateway
        .submit("demo", &generated_form("slow-1", "c", "t"), None)
        .await;
    assert_eq!(status, 201);
    let records = settled(&gateway, "to-slow", 1, "cancelled").await;
    let attempts = records[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{:#}", records[0]);
    for attempt in attempts {
        assert_eq!(attempt["error"], "timed out after 300 ms", "{attempt:#}");
        assert!(attempt["status"].is_null());
        let duration = attempt["duration_ms"].as_u64().unwrap();
        assert!(
            (250..3000).contains(&duration),
            "the remote waits 5 s; the attempt took {duration} ms"
        );
    }
    gateway.stop().await;
}

// ---- the egress policy -----------------------------------------------------------

const DOMAIN_TOKEN: &str = "demo-domain-token";

fn with_domain_token(config: String) -> String {
    format!("{config}\n[[api_tokens]]\ndomain = \"demo\"\ntoken = \"{DOMAIN_TOKEN}\"\n")
}

/// Creates a connection and a form repeater on it with the domain token.
async fn domain_connection(gateway: &Gateway, connection: Value, repeater: &str) {
    let (status, body) = gateway
        .api_as(
            DOMAIN_TOKEN,
            "POST",
            "/api/v1/domains/demo/connections",
            Some(connection.clone()),
        )
        .await;
    assert_eq!(status, 201, "{connection}: {body}");
    assert_eq!(body["origin"], "domain");
    let (status, body) = gateway
        .api_as(
            DOMAIN_TOKEN,
            "POST",
            "/api/v1/domains/demo/repeaters",
            Some(json!({"name": repeater, "kind": "form", "connection": connection["name"], "format": "form-xml",
                        "retry": {"min_wait": "100ms", "factor": 1.0, "max_attempts": 2}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

fn oauth_connection(name: &str, url: String, token_url: String) -> Value {
    json!({"name": name, "url": url, "auth": {"type": "oauth2_client_credentials", "token_url": token_url, "client_id": "c", "client_secret": "s"}})
}

const REFUSAL: &str =
    "is not allowed for connections created with a domain token; see [delivery] allowed_networks";

async fn token_remote() -> Remote {
    Remote::start(|request| match request.path.as_str() {
        "/token" => Reply::json(200, json!({"access_token": "t", "expires_in": 3600})),
        _ => Reply::ok(),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_token_connections_only_reach_public_addresses_by_default() {
    let remote = token_remote().await;
    let config = with_domain_token(demo_config(
        &[("from-config", &remote.url("/config"))],
        &form_repeater("to-config", "from-config"),
    ));
    let gateway = Gateway::start(&config).await;
    let connections = "/api/v1/domains/demo/connections";

    // IP literals the policy refuses are refused at once, naming the field.
    for url in [
        remote.url("/x"),
        format!("http://[::1]:{}/x", remote.addr.port()),
        format!("http://2130706433:{}/x", remote.addr.port()),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.0.0.1/".to_owned(),
    ] {
        let (status, body) = gateway
            .api_as(
                DOMAIN_TOKEN,
                "POST",
                connections,
                Some(json!({"name": "lit", "url": url})),
            )
            .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["field"], "url");
        assert!(body["error"].as_str().unwrap().ends_with(REFUSAL), "{body}");
    }
    let (status, body) = gateway
        .api_as(
            DOMAIN_TOKEN,
            "POST",
            connections,
            Some(oauth_connection(
                "lit",
                remote.named_url("/x"),
                remote.url("/token"),
            )),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("auth.token_url")),
        "{body}"
    );

    // The admin token may point anywhere.
    let (status, body) = gateway
        .api(
            "POST",
            connections,
            Some(json!({"name": "by-admin", "url": remote.url("/admin")})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["origin"], "admin");
    let (status, body) = gateway
        .api("POST", "/api/v1/domains/demo/repeaters", Some(json!({"name": "to-admin", "kind": "form", "connection": "by-admin", "format": "form-xml"})))
        .await;
    assert_eq!(status, 201, "{body}");

    // A name is accepted, and checked on the address it resolves to when sending.
    domain_connection(
        &gateway,
        json!({"name": "by-name", "url": remote.named_url("/by-name")}),
        "to-name",
    )
    .await;
    let token_url = remote.named_url("/token");
    domain_connection(
        &gateway,
        oauth_connection(
            "by-name-oauth",
            remote.named_url("/by-name-oauth"),
            token_url.clone(),
        ),
        "to-name-oauth",
    )
    .await;

    let (status, _) = gateway
        .submit("demo", &generated_form("egress-1", "c", "t"), None)
        .await;
    assert_eq!(status, 201);
    settled(&gateway, "to-config", 1, "succeeded").await;
    settled(&gateway, "to-admin", 1, "succeeded").await;
    for repeater in ["to-name", "to-name-oauth"] {
        let records = settled(&gateway, repeater, 1, "cancelled").await;
        let attempts = records[0]["attempts"].as_array().unwrap();
        assert_eq!(
            attempts.len(),
            2,
            "a refused address is a failed attempt, retried: {:#}",
            records[0]
        );
        for attempt in attempts {
            let error = attempt["error"].as_str().unwrap();
            assert!(
                error.starts_with("address ") || error.starts_with("oauth2"),
                "{error}"
            );
            assert!(
                error.ends_with(&format!("(of localhost) {REFUSAL}")),
                "{error}"
            );
            assert!(attempt["status"].is_null());
        }
        if repeater == "to-name-oauth" {
            let error = attempts[0]["error"].as_str().unwrap();
            assert!(
                error.starts_with(&format!(
                    "oauth2 token request to {token_url} failed: address "
                )),
                "{error}"
            );
        }
    }
    assert!(remote.requests("/by-name").is_empty() && remote.requests("/by-name-oauth").is_empty());
    assert!(
        remote.requests("/token").is_empty(),
        "the token endpoint is guarded too"
    );
    assert_eq!(remote.requests("/config").len(), 1);
    assert_eq!(remote.requests("/admin").len(), 1);

    // Changing a connection with a domain token puts it under the policy.
    let (status, body) = gateway
        .api_as(
            DOMAIN_TOKEN,
            "PUT",
            &format!("{connections}/by-admin"),
            Some(json!({"url": remote.url("/admin"), "notify": ["ops@example.org"]})),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("url")),
        "{body}"
    );
    let (_, body) = gateway.get(&format!("{connections}/by-admin")).await;
    assert_eq!(
        body["origin"], "admin",
        "the refused change left the connection as it was: {body}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_networks_let_domain_token_connections_reach_private_addresses() {
    let remote = token_remote().await;
    let config = with_domain_token(format!(
        "[delivery]\nallowed_networks = [\"127.0.0.0/8\", \"::1/128\"]\n\n{}",
        demo_config(&[], "")
    ));
    let gateway = Gateway::start(&config).await;
    domain_connection(
        &gateway,
        json!({"name": "literal", "url": remote.url("/literal")}),
        "to-literal",
    )
    .await;
    domain_connection(
        &gateway,
        json!({"name": "by-name", "url": remote.named_url("/by-name")}),
        "to-name",
    )
    .await;
    domain_connection(
        &gateway,
        oauth_connection(
            "by-name-oauth",
            remote.named_url("/by-name-oauth"),
            remote.named_url("/token"),
        ),
        "to-name-oauth",
    )
    .await;
    let (status, _) = gateway
        .submit("demo", &generated_form("egress-2", "c", "t"), None)
        .await;
    assert_eq!(status, 201);
    for repeater in ["to-literal", "to-name", "to-name-oauth"] {
        let records = settled(&gateway, repeater, 1, "succeeded").await;
        assert_eq!(records[0]["n_attempts"], 1, "{:#}", records[0]);
    }
    assert_eq!(remote.requests("/literal").len(), 1);
    assert_eq!(remote.requests("/by-name").len(), 1);
    assert_eq!(remote.requests("/token").len(), 1);
    assert_eq!(
        remote.requests("/by-name-oauth")[0].header("authorization"),
        Some("Bearer t")
    );
    // Other private ranges stay closed.
    let (status, body) = gateway
        .api_as(
            DOMAIN_TOKEN,
            "POST",
            "/api/v1/domains/demo/connections",
            Some(json!({"name": "lan", "url": "http://192.168.1.10/in"})),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("url")),
        "{body}"
    );
    gateway.stop().await;
}

// ---- validation ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_name_the_field_and_create_nothing() {
    let receiver = Receiver::start().await;
    let config = demo_config(
        &[("rx", &receiver.url("/rx"))],
        &repeater("forms", "form", "rx", "form-xml", ""),
    );
    let gateway = Gateway::start(&config).await;
    let connections = "/api/v1/domains/demo/connections";
    let repeaters = "/api/v1/domains/demo/repeaters";
    let url = receiver.url("/new");

    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            connections,
            json!({"name": "c", "url": "not a url"}),
            422,
            "url",
            "invalid url \"not a url\"",
        ),
        (
            connections,
            json!({"name": "c", "url": "ftp://example.org/"}),
            422,
            "url",
            "must start with http:// or https://",
        ),
        (
            connections,
            json!({"name": "c", "url": url, "auth": {"type": "kerberos"}}),
            422,
            "auth.type",
            "unknown auth type \"kerberos\"",
        ),
        (
            connections,
            json!({"name": "c", "url": url, "auth": {"type": "basic", "username": "u"}}),
            422,
            "auth",
            "missing key \"password\"",
        ),
        (
            connections,
            json!({"name": "c", "url": url, "auth": {"type": "bearer", "token": ""}}),
            422,
            "auth.token",
            "must not be empty",
        ),
        (
            connections,
            json!({"name": "c", "url": url, "auth": {"type": "bearer", "token_env": "HOME"}}),
            422,
            "auth.token_env",
            "environment variables can only be named in the config file",
        ),
        (
            connections,
            json!({"name": "c", "url": url, "auth": {"type": "plugin", "plugin": "hmac"}}),
            422,
            "auth.plugin",
            "no auth plugin \"hmac\" is loaded",
        ),
        (
            connections,
            json!({"name": "c", "url": url, "auth": {"type": "plugin", "plugin": "form-xml"}}),
            422,
            "auth.plugin",
            "not an auth plugin",
        ),
        (
            connections,
            json!({"name": "c", "url": url, "timeout": "soon"}),
            422,
            "timeout",
            "",
        ),
        (
            connections,
            json!({"name": "c", "url": url, "notify": ["ops"]}),
            422,
            "notify[0]",
            "\"ops\" is not an e-mail address",
        ),
        (
            connections,
            json!({"name": "c", "url": url, "headers": {"Host": "x"}}),
            422,
            "headers.Host",
            "set by repeatd",
        ),
        (
            connections,
            json!({"name": "c", "url": url, "colour": "blue"}),
            422,
            "body",
            "unknown key \"colour\"",
        ),
        (
            connections,
            json!({"name": "bad name!", "url": url}),
            422,
            "name",
            "invalid name",
        ),
        (
            connections,
            json!(["not", "an", "object"]),
            422,
            "body",
            "expected an object",
        ),
        (
            connections,
            json!({"name": "rx", "url": url}),
            409,
            "",
            "connection \"rx\" already exists in domain \"demo\"",
        ),
        (
            repeaters,
            json!({"name": "r", "kind": "form", "connection": "rx", "format": "form-xml", "retry": {"min_wait": "soon"}}),
            422,
            "retry.min_wait",
            "",
        ),
        (
            repeaters,
            json!({"name": "r", "kind": "form", "connection": "rx", "format": "form-xml", "retry": {"max_attempts": 0}}),
            422,
            "retry.max_attempts",
            "must be at least 1",
        ),
        (
            repeaters,
            json!({"name": "r", "kind": "sms", "connection": "rx", "format": "form-xml"}),
            422,
            "kind",
            "sms",
        ),
        (
            repeaters,
            json!({"name": "r", "kind": "form", "connection": "nowhere", "format": "form-xml"}),
            422,
            "connection",
            "no connection \"nowhere\" in domain \"demo\"",
        ),
        (
            repeaters,
            json!({"name": "r", "kind": "form", "connection": "rx", "format": "csv"}),
            422,
            "format",
            "no payload format plugin \"csv\" is loaded",
        ),
        (
            repeaters,
            json!({"name": "r", "kind": "form", "connection": "rx", "format": "case-json"}),
            422,
            "format",
            "does not build form payloads",
        ),
        (
            repeaters,
            json!({"name": "r", "kind": "form", "connection": "rx", "format": "form-xml", "max_workers": 0}),
            422,
            "max_workers",
            "must be between 1 and 64",
        ),
        (
            repeaters,
            json!({"name": "r", "kind": "form", "connection": "rx", "format": "form-xml", "case_types": ["x"]}),
            422,
            "case_types",
            "only applies to case repeaters",
        ),
        (
            repeaters,
            json!({"name": "r", "kind": "form", "connection": "rx", "format": "form-xml", "retry_codes_add": [200]}),
            422,
            "retry_codes_add[0]",
            "is a success",
        ),
        (
            repeaters,
            json!({"name": "forms", "kind": "form", "connection": "rx", "format": "form-xml"}),
            409,
            "",
            "repeater \"forms\" already exists in domain \"demo\"",
        ),
    ];
    for (path, body, status, field, message) in cases {
        let (got_status, got) = gateway.api("POST", path, Some(body.clone())).await;
        assert_eq!(got_status, status, "POST {path} {body}: {got}");
        if !field.is_empty() {
            assert_eq!(got["field"], field, "POST {path} {body}: {got}");
        }
        let error = got["error"].as_str().unwrap_or_default();
        assert!(
            !error.is_empty() && error.contains(message),
            "POST {path} {body}: {got}"
        );
    }

    // Not JSON at all.
    let response = reqwest::Client::new()
        .post(gateway.url(connections))
        .bearer_auth(ADMIN_TOKEN)
        .body("{name: c")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["field"], "body", "{body}");

    // Replacing: the name in the path wins; a missing object is 404; an unknown domain is 404.
    let (status, body) = gateway
        .api(
            "PUT",
            &format!("{connections}/rx"),
            Some(json!({"name": "other", "url": url})),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("name")),
        "{body}"
    );
    let (status, _) = gateway
        .api(
            "PUT",
            &format!("{connections}/ghost"),
            Some(json!({"url": url})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = gateway
        .api(
            "POST",
            "/api/v1/domains/nowhere/connections",
            Some(json!({"name": "c", "url": url})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("nowhere"),
        "{body}"
    );
    let (status, body) = gateway.api("PUT", &format!("{repeaters}/forms"), Some(json!({"kind": "form", "connection": "rx", "format": "form-xml", "retry": {"min_wait": "soon"}}))).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("retry.min_wait")),
        "{body}"
    );

    // Nothing was half-created or changed.
    let (_, list) = gateway.get(connections).await;
    let names: Vec<&str> = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rx"], "{list}");
    assert_eq!(list["connections"][0]["url"], receiver.url("/rx"));
    let (_, list) = gateway.get(repeaters).await;
    let names: Vec<&str> = list["repeaters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["forms"], "{list}");
    assert!(list["repeaters"][0]["retry"].is_null(), "{list}");
    let (status, _) = gateway.get("/api/v1/domains/nowhere/connections").await;
    assert_eq!(status, 404);
    gateway.stop().await;
}
