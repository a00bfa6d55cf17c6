//! Tenancy (SPEC section 9): every admin API endpoint answers another domain's
//! token with 404, exactly as if the domain did not exist, and no or a wrong
//! token with 401; the domain's own token and the admin token get through.
//! Deleting objects keeps the catalog consistent: a connection in use cannot
//! be deleted, and deleting a repeater cancels its queued records.

use std::time::Duration;

use repeatd_tests::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const DEMO_TOKEN: &str = "demo-token-1";
const OTHER_TOKEN: &str = "other-token-2";

struct Called {
    status: u16,
    body: Value,
    www_authenticate: Option<String>,
}

/// One API call with `token` (or none).
async fn call(
    gateway: &Gateway,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Called {
    let mut request = reqwest::Client::new().request(method.parse().unwrap(), gateway.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("calling the API");
    let status = response.status().as_u16();
    let www_authenticate = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap_or_default();
    Called {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        www_authenticate,
    }
}

/// Two domains, each with a token, a connection and a repeater; demo has a
/// spare connection and repeater to delete.
fn two_domains(receiver: &Receiver) -> String {
    let mut config = demo_config(
        &[
            ("rx", &receiver.url("/demo")),
            ("spare", &receiver.url("/spare")),
        ],
        &format!(
            "{}{}",
            repeater("forms", "form", "rx", "form-xml", ""),
            repeater(
                "spare-repeater",
                "form",
                "spare",
                "form-xml",
                "paused = true"
            )
        ),
    );
    config.push_str(&format!(
        r#"
[delivery]
allowed_networks = ["127.0.0.0/8"]

[[domains]]
name = "other"

[[api_tokens]]
domain = "demo"
token = "{DEMO_TOKEN}"

[[api_tokens]]
domain = "other"
token = "{OTHER_TOKEN}"

[[connections]]
domain = "other"
name = "rx"
url = "{}"

[[repeaters]]
domain = "other"
name = "forms"
kind = "form"
connection = "rx"
format = "form-xml"
"#,
        receiver.url("/other")
    ));
    config
}

/// Every endpoint of SPEC section 9 under `/api/v1/domains/{domain}`, plus app
/// events: (method, path after the domain, body). Ordered so that running them
/// all with the domain's own token succeeds (deletions last).
fn domain_endpoints(
    record_id: &str,
    receiver: &Receiver,
) -> Vec<(&'static str, String, Option<Value>)> {
    let connection = json!({"name": "made", "url": receiver.url("/made")});
    let replacement = json!({"url": receiver.url("/demo"), "notify": ["ops@example.org"]});
    let new_repeater =
        json!({"name": "made", "kind": "form-stub", "connection": "rx", "format": "form-stub"});
    let replaced_repeater =
        json!({"kind": "form", "connection": "rx", "format": "form-xml", "max_workers": 2});
    vec![
        ("GET", "/connections".into(), None),
        ("POST", "/connections".into(), Some(connection)),
        ("GET", "/connections/rx".into(), None),
        ("PUT", "/connections/rx".into(), Some(replacement)),
        ("GET", "/repeaters".into(), None),
        ("POST", "/repeaters".into(), Some(new_repeater)),
        ("GET", "/repeaters/forms".into(), None),
        ("PUT", "/repeaters/forms".into(), Some(replaced_repeater)),
        ("POST", "/repeaters/forms/pause".into(), None),
        ("POST", "/repeaters/forms/resume".into(), None),
        ("GET", "/records".into(), None),
        (
            "GET",
            "/records?state=succeeded&repeater=forms&limit=5".into(),
            None,
        ),
        ("GET", format!("/records/{record_id}"), None),
        ("POST", format!("/records/{record_id}/cancel"), None),
        ("POST", format!("/records/{record_id}/requeue"), None),
        ("POST", format!("/records/{record_id}/resend"), None),
        (
            "POST",
            "/records/bulk".into(),
            Some(json!({"action": "requeue", "filter": {"state": "cancelled"}})),
        ),
        ("GET", format!("/forms/{SEED_FORM_ID}"), None),
        ("GET", format!("/cases/{SEED_CASE_ID}"), None),
        (
            "POST",
            format!("/apps/{SEED_APP_ID}/events"),
            Some(json!({"event": "saved"})),
        ),
        ("DELETE", "/repeaters/spare-repeater".into(), None),
        ("DELETE", "/connections/spare".into(), None),
    ]
}

/// What a domain holds, to check that refused calls changed nothing.
async fn holdings(gateway: &Gateway, domain: &str) -> Value {
    let (_, connections) = gateway
        .get(&format!("/api/v1/domains/{domain}/connections"))
        .await;
    let (_, repeaters) = gateway
        .get(&format!("/api/v1/domains/{domain}/repeaters"))
        .await;
    let records: Vec<Value> = gateway
        .records(domain, "")
        .await
        .into_iter()
        .map(|r| json!([r["id"], r["state"], r["n_attempts"]]))
        .collect();
    // Lane status (in flight, failures) moves on its own; the objects must not.
    let mut repeaters = repeaters["repeaters"].clone();
    for repeater in repeaters.as_array_mut().unwrap() {
        repeater.as_object_mut().unwrap().remove("status");
    }
    json!({"connections": connections["connections"], "repeaters": repeaters, "records": records})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_refuses_other_domains_and_missing_tokens() {
    let receiver = Receiver::start().await;
    let gateway = Gateway::start(&two_domains(&receiver)).await;
    let (status, body) = gateway.submit("demo", SEED_FORM, Some(SEED_APP_ID)).await;
    assert_eq!(status, 201, "{body}");
    let records = gateway
        .wait_records("demo", "repeater=forms", 1, "succeeded", WAIT)
        .await;
    let record_id = records[0]["id"].as_str().expect("a record id").to_owned();
    let endpoints = domain_endpoints(&record_id, &receiver);
    assert_eq!(endpoints.len(), 22);
    let demo_before = holdings(&gateway, "demo").await;
    let other_before = holdings(&gateway, "other").await;

    for (method, tail, body) in &endpoints {
        let path = format!("/api/v1/domains/demo{tail}");
        let ghost_path = format!("/api/v1/domains/ghost{tail}");

        // Another domain's token: 404, word for word what a domain that does not exist gets.
        let refused = call(&gateway, Some(OTHER_TOKEN), method, &path, body.as_ref()).await;
        assert_eq!(
            refused.status, 404,
            "{method} {path} with the other domain's token: {}",
            refused.body
        );
        let ghost = call(
            &gateway,
            Some(OTHER_TOKEN),
            method,
            &ghost_path,
            body.as_ref(),
        )
        .await;
        assert_eq!(ghost.status, 404, "{method} {ghost_path}");
        assert_eq!(
            refused.body.to_string().replace("demo", "ghost"),
            ghost.body.to_string(),
            "{method} {path}: a foreign domain looks like a missing one"
        );
        let admin_ghost = call(
            &gateway,
            Some(ADMIN_TOKEN),
            method,
            &ghost_path,
            body.as_ref(),
        )
        .await;
        assert_eq!(
            admin_ghost.status, 404,
            "{method} {ghost_path} with the admin token"
        );
        assert_eq!(admin_ghost.body, ghost.body);

        // No token, a wrong one, a malformed header: 401 with a challenge.
        for token in [None, Some("not-a-token"), Some("")] {
            let unauthorized = call(&gateway, token, method, &path, body.as_ref()).await;
            assert_eq!(
                unauthorized.status, 401,
                "{method} {path} with token {token:?}: {}",
                unauthorized.body
            );
            assert_eq!(
                unauthorized.www_authenticate.as_deref(),
                Some("Bearer realm=\"repeatd\"")
            );
            assert!(
                !unauthorized.body.to_string().contains("demo"),
                "{}",
                unauthorized.body
            );
        }
        let basic = reqwest::Client::new()
            .request(method.parse().unwrap(), gateway.url(&path))
            .basic_auth("danny", Some("pw"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            basic.status(),
            401,
            "{method} {path}: a submitter's password is not an API token"
        );
    }
    assert_eq!(
        holdings(&gateway, "demo").await,
        demo_before,
        "refused calls changed nothing"
    );

    // Objects of one domain cannot be reached through another domain's path either.
    for tail in [
        format!("/records/{record_id}"),
        format!("/forms/{SEED_FORM_ID}"),
        format!("/cases/{SEED_CASE_ID}"),
    ] {
        let path = format!("/api/v1/domains/other{tail}");
        let called = call(&gateway, Some(OTHER_TOKEN), "GET", &path, None).await;
        assert_eq!(called.status, 404, "{path}: {}", called.body);
        let called = call(&gateway, Some(ADMIN_TOKEN), "GET", &path, None).await;
        assert_eq!(
            called.status, 404,
            "{path} with the admin token: {}",
            called.body
        );
    }
    let called = call(
        &gateway,
        Some(OTHER_TOKEN),
        "POST",
        &format!("/api/v1/domains/other/records/{record_id}/cancel"),
        None,
    )
    .await;
    assert_eq!(called.status, 404);
    let called = call(
        &gateway,
        Some(OTHER_TOKEN),
        "POST",
        "/api/v1/domains/other/records/bulk",
        Some(&json!({"action": "cancel", "filter": {}})),
    )
    .await;
    assert_eq!(
        (called.status, &called.body["changed"]),
        (200, &json!(0)),
        "bulk actions stay in their domain: {}",
        called.body
    );
    assert_eq!(holdings(&gateway, "demo").await, demo_before);
    assert_eq!(holdings(&gateway, "other").await, other_before);
    let listed = call(
        &gateway,
        Some(OTHER_TOKEN),
        "GET",
        "/api/v1/domains/other/connections",
        None,
    )
    .await;
    assert_eq!(
        listed.body["connections"].as_array().unwrap().len(),
        1,
        "{}",
        listed.body
    );
    assert_eq!(listed.body["connections"][0]["url"], receiver.url("/other"));

    // Endpoints outside any domain.
    assert_eq!(
        call(&gateway, None, "GET", "/healthz", None).await.status,
        200
    );
    assert_eq!(
        call(&gateway, None, "GET", "/api/v1/plugins", None)
            .await
            .status,
        401
    );
    assert_eq!(
        call(
            &gateway,
            Some("not-a-token"),
            "GET",
            "/api/v1/plugins",
            None
        )
        .await
        .status,
        401
    );
    assert_eq!(
        call(&gateway, Some(OTHER_TOKEN), "GET", "/api/v1/plugins", None)
            .await
            .status,
        200
    );

    // The domain's own token gets through every endpoint.
    for (method, tail, body) in &endpoints {
        let path = format!("/api/v1/domains/demo{tail}");
        let allowed = call(&gateway, Some(DEMO_TOKEN), method, &path, body.as_ref()).await;
        assert!(
            (200..300).contains(&allowed.status),
            "{method} {path} with the domain's token: {} {}",
            allowed.status,
            allowed.body
        );
    }
    let (_, made) = gateway.get("/api/v1/domains/demo/connections/made").await;
    assert_eq!(made["origin"], "domain", "{made}");
    let (_, replaced) = gateway.get("/api/v1/domains/demo/repeaters/forms").await;
    assert_eq!(replaced["max_workers"], 2, "{replaced}");
    assert_eq!(
        call(
            &gateway,
            Some(DEMO_TOKEN),
            "GET",
            "/api/v1/domains/demo/connections/spare",
            None
        )
        .await
        .status,
        404
    );
    assert_eq!(
        holdings(&gateway, "other").await,
        other_before,
        "the other domain is untouched"
    );

    // The admin token reaches both domains.
    for domain in ["demo", "other"] {
        let called = call(
            &gateway,
            Some(ADMIN_TOKEN),
            "GET",
            &format!("/api/v1/domains/{domain}/repeaters/forms"),
            None,
        )
        .await;
        assert_eq!(called.status, 200, "{domain}: {}", called.body);
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_in_use_stay_and_deleted_repeaters_cancel_their_records() {
    let receiver = Receiver::start().await;
    let config = demo_config(
        &[("rx", &receiver.url("/rx"))],
        &format!(
            "{}{}",
            repeater("held", "form", "rx", "form-xml", "paused = true"),
            repeater("live", "form", "rx", "form-xml", "")
        ),
    );
    let gateway = Gateway::start(&config).await;

    let (status, body) = gateway
        .api("DELETE", "/api/v1/domains/demo/connections/rx", None)
        .await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("\"held\"") && error.contains("\"live\""),
        "names the repeaters using it: {error}"
    );
    assert_eq!(
        gateway.get("/api/v1/domains/demo/connections/rx").await.0,
        200
    );

    for n in 0..3 {
        let (status, _) = gateway
            .submit(
                "demo",
                &generated_form(&format!("held-{n}"), &format!("c-{n}"), "t"),
                None,
            )
            .await;
        assert_eq!(status, 201);
    }
    gateway
        .wait_records("demo", "repeater=live", 3, "succeeded", WAIT)
        .await;
    let held = gateway.records("demo", "repeater=held").await;
    assert_eq!(held.len(), 3);
    assert!(
        held.iter()
            .all(|r| r["state"] == "pending" && r["n_attempts"] == 0),
        "{held:#?}"
    );

    let (status, body) = gateway
        .api("DELETE", "/api/v1/domains/demo/repeaters/held", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["records_cancelled"], 3, "{body}");
    let held = gateway.records("demo", "repeater=held").await;
    assert_eq!(held.len(), 3, "the records stay, for the record");
    assert!(held.iter().all(|r| r["state"] == "cancelled"), "{held:#?}");
    assert_eq!(
        gateway.get("/api/v1/domains/demo/repeaters/held").await.0,
        404
    );
    // The delivered records of the other repeater are untouched.
    let live = gateway.records("demo", "repeater=live").await;
    assert!(live.iter().all(|r| r["state"] == "succeeded"), "{live:#?}");

    // Still used by "live"; once that goes too, the connection can be deleted.
    let (status, body) = gateway
        .api("DELETE", "/api/v1/domains/demo/connections/rx", None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        !body["error"].as_str().unwrap().contains("\"held\""),
        "{body}"
    );
    let (status, body) = gateway
        .api("DELETE", "/api/v1/domains/demo/repeaters/live", None)
        .await;
    assert_eq!(
        (status, &body["records_cancelled"]),
        (200, &json!(0)),
        "{body}"
    );
    let (status, body) = gateway
        .api("DELETE", "/api/v1/domains/demo/connections/rx", None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        gateway.get("/api/v1/domains/demo/connections/rx").await.0,
        404
    );
    assert_eq!(
        gateway
            .api("DELETE", "/api/v1/domains/demo/connections/rx", None)
            .await
            .0,
        404
    );

    // Nothing more may be sent: this sleep is the test of that absence.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.requests("/rx").len(),
        3,
        "only the live repeater's three forms were sent"
    );
    gateway.stop().await;
}
