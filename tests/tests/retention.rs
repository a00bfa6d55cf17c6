//! Retention (SPEC section 13) with durations of seconds, in virtual time:
//! the in-process gateway on a clock that only the test moves. Exactly the
//! records that have been in a final state for longer than their state's
//! duration go, with their attempts; pending, failed and young ones stay; a
//! form goes once it is old enough and no open record needs it; the API
//! answers 404 for what went, and the stats endpoint and `/metrics` agree.

use std::time::Duration;

use repeatd::clock::Clock;
use repeatd_tests::virtual_time::*;
use repeatd_tests::{ADMIN_TOKEN, Answer, Gateway, Receiver, generated_form, repeater};
use serde_json::Value;

const HELD_XMLNS: &str = "http://example.org/held";

fn config(receiver: &Receiver) -> String {
    format!(
        "[retention]\nsucceeded = \"10s\"\nrejected = \"10s\"\ncancelled = \"off\"\nforms = \"10s\"\n\n\
         [[domains]]\nname = \"demo\"\n\n[[domains]]\nname = \"other\"\n\n\
         [[api_tokens]]\ndomain = \"other\"\ntoken = \"other-token\"\n\n\
         [[submitters]]\ndomain = \"demo\"\nusername = \"danny\"\npassword = \"pw\"\n\n\
         [[connections]]\ndomain = \"demo\"\nname = \"remote\"\nurl = \"{}\"\nauth = {{ type = \"none\" }}\n\n{}\n{}",
        receiver.url("/in"),
        repeater(
            "forms",
            "form",
            "remote",
            "form-xml",
            "retry = { min_wait = \"1h\", max_attempts = 5 }"
        ),
        repeater(
            "held",
            "form",
            "remote",
            "form-xml",
            &format!("paused = true\nxmlns = [\"{HELD_XMLNS}\"]")
        ),
    )
}

/// Form `name` (its id and its case's id derive from it); `held` forms
/// also get a record of the paused repeater "held", which stays pending.
fn form(name: &str, held: bool) -> Vec<u8> {
    let xml = String::from_utf8(generated_form(
        &format!("form-{name}"),
        &format!("case-{name}"),
        "visit",
    ))
    .unwrap();
    let xml = if held {
        xml.replace("http://openrosa.org/formdesigner/generated", HELD_XMLNS)
    } else {
        xml
    };
    xml.into_bytes()
}

/// Submits form `name` and waits until its "forms" record is in `state`;
/// returns that record's id.
async fn submitted(gateway: &Gateway, name: &str, held: bool, state: &str) -> String {
    let (status, body) = gateway.submit("demo", &form(name, held), None).await;
    assert_eq!(status, 201, "{body}");
    let id = until(&format!("form {name}: {state}"), || async {
        let records = gateway
            .records("demo", &format!("payload_id=form-{name}&repeater=forms"))
            .await;
        records
            .first()
            .filter(|record| record["state"] == state)
            .and_then(|record| record["id"].as_str().map(str::to_owned))
    })
    .await;
    sends_settled(gateway, "forms").await;
    id
}

async fn status_of(gateway: &Gateway, path: &str) -> u16 {
    gateway.get(path).await.0
}

async fn stats(gateway: &Gateway) -> Value {
    let (status, stats) = gateway.get("/api/v1/domains/demo/stats").await;
    assert_eq!(status, 200, "{stats}");
    stats
}

async fn metrics(gateway: &Gateway) -> String {
    let (status, text) = gateway
        .api_text_as(ADMIN_TOKEN, "GET", "/metrics", None)
        .await;
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of one series of the metrics text.
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {name_and_labels} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn exactly_what_passed_its_duration_goes_and_the_figures_follow() {
    let _frozen = freeze_time();
    let clock = Clock::starting_at(START);
    let receiver = Receiver::start().await;
    // In turn: ok, bad, retry, held; then every later one succeeds.
    receiver.plan(
        "/in",
        vec![
            Answer::Status(200),
            Answer::Status(400),
            Answer::Status(503),
            Answer::Status(200),
        ],
    );
    let gateway = Gateway::start_with_clock(&config(&receiver), clock).await;

    let ok = submitted(&gateway, "ok", false, "succeeded").await;
    let bad = submitted(&gateway, "bad", false, "rejected").await;
    let retry = submitted(&gateway, "retry", false, "failed").await;
    let held = submitted(&gateway, "held", true, "succeeded").await;
    let before = stats(&gateway).await;
    assert_eq!(before["records"]["succeeded"], 2, "{before}");
    assert_eq!(before["records"]["pending"], 1, "{before}");
    assert_eq!(before["forms"], 4, "{before}");
    assert_eq!(before["cases"], 4, "{before}");

    tokio::time::advance(Duration::from_secs(6)).await;
    let young = submitted(&gateway, "young", false, "succeeded").await;

    // Retention looks every 5 s, so one look falls between 10 s and 15 s:
    // it finds the first four past their 10 s, and "young" (6 s) not yet.
    advance_to(&clock, START + 15 * SECOND).await;
    let record_path = |id: &str| format!("/api/v1/domains/demo/records/{id}");
    until("the old final records are gone", || async {
        (status_of(&gateway, &record_path(&ok)).await == 404
            && status_of(&gateway, &record_path(&bad)).await == 404
            && status_of(&gateway, &record_path(&held)).await == 404)
            .then_some(())
    })
    .await;
    let retried = gateway.record("demo", &retry).await;
    assert_eq!(
        retried["state"], "failed",
        "a failed record is never deleted"
    );
    assert_eq!(retried["attempts"].as_array().unwrap().len(), 1);
    let kept = gateway.record("demo", &young).await;
    assert_eq!(kept["state"], "succeeded", "a young record stays");
    let pending = gateway
        .records("demo", "payload_id=form-held&repeater=held")
        .await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["state"], "pending");

    let form_path = |name: &str| format!("/api/v1/domains/demo/forms/form-{name}");
    until("the old forms no open record needs are gone", || async {
        (status_of(&gateway, &form_path("ok")).await == 404
            && status_of(&gateway, &form_path("bad")).await == 404)
            .then_some(())
    })
    .await;
    assert_eq!(
        status_of(&gateway, &form_path("retry")).await,
        200,
        "a failed record needs its form"
    );
    assert_eq!(
        status_of(&gateway, &form_path("held")).await,
        200,
        "a pending record needs its form"
    );
    assert_eq!(status_of(&gateway, &form_path("young")).await, 200);
    assert_eq!(
        status_of(&gateway, "/api/v1/domains/demo/cases/case-ok").await,
        200,
        "cases are never deleted"
    );

    let after = stats(&gateway).await;
    assert_eq!(
        after["records"],
        serde_json::json!({"pending": 1, "succeeded": 1, "failed": 1, "cancelled": 0, "empty": 0, "rejected": 0}),
        "{after}"
    );
    assert_eq!(after["forms"], 3, "{after}");
    assert_eq!(after["cases"], 5, "{after}");
    let text = metrics(&gateway).await;
    for (state, n) in [
        ("succeeded", 1.0),
        ("pending", 1.0),
        ("failed", 1.0),
        ("rejected", 0.0),
    ] {
        assert_eq!(
            series(
                &text,
                &format!("repeatd_domain_records{{domain=\"demo\",state=\"{state}\"}}")
            ),
            n,
            "{state}"
        );
    }
    assert_eq!(series(&text, "repeatd_domain_forms{domain=\"demo\"}"), 3.0);
    assert_eq!(series(&text, "repeatd_domain_cases{domain=\"demo\"}"), 5.0);
    assert_eq!(
        series(&text, "repeatd_domain_form_xml_bytes{domain=\"demo\"}"),
        after["bytes"]["form_xml"].as_f64().unwrap()
    );
    assert_eq!(
        series(
            &text,
            "repeatd_retention_records_deleted_total{state=\"succeeded\"}"
        ),
        2.0
    );
    assert_eq!(
        series(
            &text,
            "repeatd_retention_records_deleted_total{state=\"rejected\"}"
        ),
        1.0
    );
    assert_eq!(
        series(
            &text,
            "repeatd_retention_records_deleted_total{state=\"cancelled\"}"
        ),
        0.0
    );
    assert_eq!(series(&text, "repeatd_retention_forms_deleted_total"), 2.0);
    // The oldest succeeded record kept is "young", 9 s in that state now.
    let oldest = series(
        &text,
        "repeatd_retention_oldest_kept_seconds{kept=\"succeeded\"}",
    );
    assert_eq!(oldest, 9.0);

    // A look between 17 s and 22 s finds "young" past its 10 s too, and
    // its form.
    advance_to(&clock, START + 22 * SECOND).await;
    until("the young record and its form are gone", || async {
        (status_of(&gateway, &record_path(&young)).await == 404
            && status_of(&gateway, &form_path("young")).await == 404)
            .then_some(())
    })
    .await;
    let last = stats(&gateway).await;
    assert_eq!(last["records"]["succeeded"], 0, "{last}");
    assert_eq!(last["forms"], 2, "{last}");
    gateway.stop().await;
}

#[tokio::test]
async fn a_domain_token_sees_only_its_domains_stats() {
    let receiver = Receiver::start().await;
    let gateway = Gateway::start(&config(&receiver)).await;
    let (status, own) = gateway
        .api_as("other-token", "GET", "/api/v1/domains/other/stats", None)
        .await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["forms"], 0);
    assert_eq!(own["records"]["pending"], 0);
    assert!(
        own["bytes"].get("store_file").is_none(),
        "the store's size is the admin's: {own}"
    );
    let (status, _) = gateway
        .api_as("other-token", "GET", "/api/v1/domains/demo/stats", None)
        .await;
    assert_eq!(status, 404, "another domain's stats do not exist for it");
    let (status, _) = gateway
        .api_as("wrong", "GET", "/api/v1/domains/demo/stats", None)
        .await;
    assert_eq!(status, 401);
    let (_, admin) = gateway.get("/api/v1/domains/demo/stats").await;
    assert!(
        admin["bytes"]["store_file"].as_u64().unwrap() > 0,
        "{admin}"
    );
    gateway.stop().await;
}
