//! The repeat-record queue under faults (SPEC section 6): retries and their
//! waits, timeouts, dropped connections, `Retry-After`, rejections and the
//! repeater's retry codes, isolation of a slow remote, back-off and recovery,
//! ordering and pausing, the records API and metrics, PUT and the
//! `Idempotency-Key`, and what survives a SIGTERM or a SIGKILL of the binary.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use repeatd_tests::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

// ---- helpers ------------------------------------------------------------------------

/// One domain "demo" with submitter danny:pw and connections given as
/// (name, url, extra TOML lines), then `repeaters`.
fn config(connections: &[(&str, String, &str)], repeaters: &str) -> String {
    let mut text = String::from(
        "[[domains]]\nname = \"demo\"\n\n[[submitters]]\ndomain = \"demo\"\nusername = \"danny\"\npassword = \"pw\"\n",
    );
    for (name, url, extra) in connections {
        text.push_str(&format!(
            "\n[[connections]]\ndomain = \"demo\"\nname = \"{name}\"\nurl = \"{url}\"\nauth = {{ type = \"none\" }}\n{extra}\n"
        ));
    }
    text.push('\n');
    text.push_str(repeaters);
    text
}

/// A receiver that answers `answers` at `/in`, and a gateway with the
/// connection `forms` to it and the form repeater `forms` on that connection,
/// each with its extra TOML lines.
async fn forms_remote(
    answers: Vec<Answer>,
    connection_extra: &str,
    repeater_extra: &str,
) -> (Receiver, Gateway) {
    let receiver = Receiver::start().await;
    receiver.plan("/in", answers);
    let gateway = Gateway::start(&config(
        &[("forms", receiver.url("/in"), connection_extra)],
        &form_repeater("forms", repeater_extra),
    ))
    .await;
    (receiver, gateway)
}

/// A form repeater named like its connection.
fn form_repeater(name: &str, extra: &str) -> String {
    repeater(name, "form", name, "form-xml", extra)
}

fn form_id(tag: &str, n: usize) -> String {
    format!("{tag}-form-{n:04}")
}

fn form_xml(tag: &str, n: usize) -> Vec<u8> {
    generated_form(&form_id(tag, n), &format!("{tag}-case-{n:04}"), "visit")
}

/// Submits forms `range` of `tag` one after the other; each must get 201.
async fn submit_forms(gateway: &Gateway, tag: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let mut ids = Vec::new();
    for n in range {
        let (status, body) = gateway.submit("demo", &form_xml(tag, n), None).await;
        assert_eq!(status, 201, "form {n}: {body}");
        ids.push(form_id(tag, n));
    }
    ids
}

/// The form id a forwarded `form-xml` body carries.
fn instance_id(received: &Received) -> String {
    let text = received.text();
    let start = text
        .find("instanceID>")
        .map(|i| i + "instanceID>".len())
        .expect("instanceID in the body");
    let end = start + text[start..].find('<').expect("end of instanceID");
    text[start..end].to_owned()
}

fn idempotency_key(received: &Received) -> String {
    received
        .header("idempotency-key")
        .expect("every request carries Idempotency-Key")
        .to_owned()
}

/// Waits until record `id` satisfies `done` (`what` describes it); returns it.
async fn record_where(
    gateway: &Gateway,
    id: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    eventually(&format!("record {id}: {what}"), timeout, || async {
        let detail = gateway.record("demo", id).await;
        if done(&detail) {
            Ok(detail)
        } else {
            Err(detail)
        }
    })
    .await
}

async fn only_record(gateway: &Gateway, query: &str) -> Value {
    let records = gateway.records("demo", query).await;
    assert_eq!(records.len(), 1, "one record for {query:?}: {records:?}");
    gateway
        .record("demo", records[0]["id"].as_str().unwrap())
        .await
}

async fn record_action(gateway: &Gateway, id: &str, action: &str) -> Value {
    let (status, body) = gateway
        .api(
            "POST",
            &format!("/api/v1/domains/demo/records/{id}/{action}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{action} {id}: {body}");
    body
}

async fn bulk(gateway: &Gateway, action: &str, filter: Value) -> u64 {
    let (status, body) = gateway
        .api(
            "POST",
            "/api/v1/domains/demo/records/bulk",
            Some(json!({ "action": action, "filter": filter })),
        )
        .await;
    assert_eq!(status, 200, "bulk {action}: {body}");
    body["changed"].as_u64().expect("changed count")
}

/// Waits until `repeater` reports a back-off; `what` says why it should.
async fn wait_backing_off(gateway: &Gateway, repeater: &str, what: &str) {
    let path = format!("/api/v1/domains/demo/repeaters/{repeater}");
    eventually(what, WAIT, || async {
        let (_, view) = gateway.get(&path).await;
        if view["status"]["backing_off_until"].is_string() {
            Ok(())
        } else {
            Err(view)
        }
    })
    .await;
}

fn gaps(arrivals: &[Received]) -> Vec<Duration> {
    arrivals
        .windows(2)
        .map(|pair| pair[1].at.duration_since(pair[0].at))
        .collect()
}

/// Asserts that each series of `expected` has its value in the metrics `text`.
fn assert_metrics(text: &str, expected: &[(&str, Option<f64>)]) {
    for (series, value) in expected {
        assert_eq!(metric(text, series), *value, "{series} in {text}");
    }
}

async fn metrics_text(gateway: &Gateway) -> String {
    let (status, body) = gateway.get("/metrics").await;
    assert_eq!(status, 200);
    body.as_str().expect("metrics are text").to_owned()
}

/// The value of one metrics line, by its exact name and labels.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|value| value.trim().parse().expect("a metric value"))
}

// ---- retries and their waits ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_retried_and_both_attempts_are_listed() {
    let (receiver, gateway) = forms_remote(
        vec![Answer::Status(500), Answer::Status(200)],
        "",
        "retry = { min_wait = \"1s\", factor = 2.0, max_attempts = 3 }",
    )
    .await;
    submit_forms(&gateway, "r", 0..1).await;

    // After the 500 the record is `failed`, due again, with the reason.
    let first = receiver.wait("/in", 1, WAIT).await;
    assert_eq!(first.len(), 1);
    let seen_failed = eventually("the record to show as failed", WAIT, || async {
        let records = gateway.records("demo", "").await;
        if records.len() == 1 && records[0]["state"] == "failed" {
            Ok(records[0].clone())
        } else {
            Err(Value::from(records))
        }
    })
    .await;
    assert_eq!(seen_failed["n_attempts"], 1);
    assert!(seen_failed["next_attempt_at"].is_string(), "{seen_failed}");
    assert!(
        seen_failed["last_error"].as_str().unwrap().contains("500"),
        "{seen_failed}"
    );

    let records = gateway.wait_records("demo", "", 1, "succeeded", WAIT).await;
    assert_eq!(records[0]["state"], "succeeded", "{records:?}");
    // How long it waited between the attempts (min_wait ±20%) is checked
    // in virtual time by tests/clocked.rs.
    let arrivals = receiver.requests("/in");
    assert_eq!(arrivals.len(), 2);

    let detail = gateway
        .record("demo", records[0]["id"].as_str().unwrap())
        .await;
    assert_eq!(detail["n_attempts"], 2);
    assert_eq!(detail["next_attempt_at"], Value::Null);
    let attempts = detail["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{detail}");
    let url = receiver.url("/in");
    for (index, (status, response)) in [(500, "remote says no: error 500"), (200, "ok")]
        .into_iter()
        .enumerate()
    {
        let attempt = &attempts[index];
        assert_eq!(attempt["number"], index + 1, "{attempt}");
        assert_eq!(attempt["url"], url.as_str(), "{attempt}");
        assert_eq!(attempt["status"], status, "{attempt}");
        assert_eq!(attempt["response"], response, "{attempt}");
        assert!(
            attempt["duration_ms"].as_u64().is_some_and(|ms| ms < 5_000),
            "{attempt}"
        );
        assert!(
            attempt["at"]
                .as_str()
                .is_some_and(|at| at.len() == 27 && at.ends_with('Z')),
            "{attempt}"
        );
    }
    assert_eq!(
        attempts[0]["error"],
        "remote answered 500: remote says no: error 500"
    );
    assert_eq!(attempts[1]["error"], Value::Null);
    assert!(attempts[0]["at"].as_str() < attempts[1]["at"].as_str());
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_always_fails_gets_growing_waits_then_the_record_is_cancelled() {
    let (receiver, gateway) = forms_remote(
        vec![Answer::Status(503)],
        "",
        "retry = { min_wait = \"200ms\", factor = 2.0, max_attempts = 4, max_wait = \"10s\" }",
    )
    .await;
    submit_forms(&gateway, "f", 0..1).await;

    let records = gateway.wait_records("demo", "", 1, "cancelled", WAIT).await;
    assert_eq!(records[0]["state"], "cancelled", "{records:?}");
    assert_eq!(records[0]["n_attempts"], 4);
    assert_eq!(records[0]["next_attempt_at"], Value::Null);
    // The waits (each factor x the last, ±20%) and that nothing more is sent
    // after the cancel are checked in virtual time by tests/clocked.rs.
    let arrivals = receiver.requests("/in");
    assert_eq!(arrivals.len(), 4, "max_attempts = 4");

    let detail = gateway
        .record("demo", records[0]["id"].as_str().unwrap())
        .await;
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4);
    assert!(attempts.iter().all(|a| a["status"] == 503), "{detail}");
    assert_eq!(
        detail["last_error"],
        "remote answered 503: remote says no: error 503"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_hangs_past_the_connection_timeout_is_retried() {
    let (receiver, gateway) = forms_remote(
        vec![
            Answer::Slow(Duration::from_secs(5), 200),
            Answer::Status(200),
        ],
        "timeout = \"300ms\"",
        "retry = { min_wait = \"200ms\", factor = 2.0, max_attempts = 3 }",
    )
    .await;
    submit_forms(&gateway, "t", 0..1).await;

    let records = gateway.wait_records("demo", "", 1, "succeeded", WAIT).await;
    assert_eq!(records[0]["state"], "succeeded", "{records:?}");
    let arrivals = receiver.requests("/in");
    assert_eq!(arrivals.len(), 2);
    assert!(
        gaps(&arrivals)[0] < Duration::from_secs(3),
        "the gateway gave up after 300 ms, not when the remote answered: {:?}",
        gaps(&arrivals)
    );
    let detail = gateway
        .record("demo", records[0]["id"].as_str().unwrap())
        .await;
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{detail}");
    assert_eq!(attempts[0]["status"], Value::Null);
    assert_eq!(attempts[0]["response"], Value::Null);
    assert_eq!(attempts[0]["error"], "timed out after 300 ms");
    let took = attempts[0]["duration_ms"].as_u64().unwrap();
    assert!(
        (290..3_000).contains(&took),
        "the timed-out attempt took {took} ms"
    );
    assert_eq!(attempts[1]["status"], 200);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_retried_and_its_error_recorded() {
    let (receiver, gateway) = forms_remote(
        vec![Answer::Drop, Answer::Status(200)],
        "",
        "retry = { min_wait = \"200ms\", factor = 2.0, max_attempts = 3 }",
    )
    .await;
    submit_forms(&gateway, "d", 0..1).await;

    let records = gateway.wait_records("demo", "", 1, "succeeded", WAIT).await;
    assert_eq!(records[0]["state"], "succeeded", "{records:?}");
    assert_eq!(receiver.requests("/in").len(), 2);
    let detail = gateway
        .record("demo", records[0]["id"].as_str().unwrap())
        .await;
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{detail}");
    assert_eq!(attempts[0]["status"], Value::Null);
    let error = attempts[0]["error"]
        .as_str()
        .expect("the network error is kept");
    assert!(error.starts_with("request failed: "), "{error}");
    assert!(
        error.contains("connection closed before message completed"),
        "{error}"
    );
    assert_eq!(attempts[1]["status"], 200);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_holds_the_whole_repeater_back() {
    let (receiver, gateway) = forms_remote(
        vec![Answer::retry_after(429, "1"), Answer::Status(200)],
        "",
        "retry = { min_wait = \"100ms\", factor = 2.0, max_attempts = 5 }",
    )
    .await;
    submit_forms(&gateway, "ra", 0..1).await;
    let throttled = receiver.wait("/in", 1, WAIT).await;
    assert_eq!(throttled.len(), 1);
    wait_backing_off(
        &gateway,
        "forms",
        "a 429 with Retry-After holds the repeater back",
    )
    .await;
    // A second form registered during the Retry-After waits for it too.
    submit_forms(&gateway, "ra", 1..2).await;

    let records = gateway.wait_records("demo", "", 2, "succeeded", WAIT).await;
    assert!(
        records.iter().all(|r| r["state"] == "succeeded"),
        "{records:?}"
    );
    // That nothing is sent before the Retry-After ends is checked to the
    // millisecond in virtual time by tests/clocked.rs.
    let arrivals = receiver.requests("/in");
    assert_eq!(arrivals.len(), 3, "one 429, then each form once");
    let first = only_record(&gateway, &format!("payload_id={}", form_id("ra", 0))).await;
    assert_eq!(first["n_attempts"], 2);
    assert_eq!(first["attempts"][0]["status"], 429);
    let second = only_record(&gateway, &format!("payload_id={}", form_id("ra", 1))).await;
    assert_eq!(second["n_attempts"], 1);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_final_and_a_repeater_can_move_codes() {
    let receiver = Receiver::start().await;
    receiver.plan("/bad", vec![Answer::Status(400)]);
    receiver.plan("/gone", vec![Answer::Status(404), Answer::Status(200)]);
    receiver.plan("/conflict", vec![Answer::Status(409)]);
    receiver.plan("/busy", vec![Answer::Status(409), Answer::Status(200)]);
    let retry = "retry = { min_wait = \"100ms\", factor = 2.0, max_attempts = 3 }";
    let gateway = Gateway::start(&config(
        &[
            ("bad", receiver.url("/bad"), ""),
            ("gone", receiver.url("/gone"), ""),
            ("conflict", receiver.url("/conflict"), ""),
            ("busy", receiver.url("/busy"), ""),
        ],
        &[
            form_repeater("bad", retry),
            form_repeater("gone", &format!("{retry}\nretry_codes_add = [404]")),
            form_repeater("conflict", &format!("{retry}\nretry_codes_remove = [409]")),
            form_repeater("busy", retry),
        ]
        .concat(),
    ))
    .await;
    submit_forms(&gateway, "x", 0..1).await;

    let bad = gateway
        .wait_records("demo", "repeater=bad", 1, "rejected", WAIT)
        .await;
    assert_eq!(bad[0]["state"], "rejected", "{bad:?}");
    assert_eq!(bad[0]["n_attempts"], 1);
    assert_eq!(bad[0]["next_attempt_at"], Value::Null);
    assert_eq!(
        bad[0]["last_error"],
        "remote answered 400: remote says no: error 400"
    );
    let conflict = gateway
        .wait_records("demo", "repeater=conflict", 1, "rejected", WAIT)
        .await;
    assert_eq!(
        conflict[0]["state"], "rejected",
        "retry_codes_remove = [409]: {conflict:?}"
    );
    let gone = gateway
        .wait_records("demo", "repeater=gone", 1, "succeeded", WAIT)
        .await;
    assert_eq!(
        gone[0]["state"], "succeeded",
        "retry_codes_add = [404]: {gone:?}"
    );
    assert_eq!(gone[0]["n_attempts"], 2);
    let busy = gateway
        .wait_records("demo", "repeater=busy", 1, "succeeded", WAIT)
        .await;
    assert_eq!(
        busy[0]["state"], "succeeded",
        "409 is retried by default: {busy:?}"
    );
    assert_eq!(busy[0]["n_attempts"], 2);
    // Rejections are not retried: well past three retry waits, still one
    // request each. This sleep is the test: nothing may arrive during it.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(receiver.requests("/bad").len(), 1);
    assert_eq!(receiver.requests("/conflict").len(), 1);
    assert_eq!(
        gateway.records("demo", "repeater=bad").await[0]["state"],
        "rejected"
    );
    gateway.stop().await;
}

// ---- lanes: isolation, back-off, order, pause --------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_remote_does_not_hold_up_a_healthy_one() {
    slow_next_to_healthy("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_remote_does_not_take_every_global_send_slot() {
    // Fewer slots over all repeaters than the slow one's workers.
    slow_next_to_healthy("[delivery]\nmax_in_flight = 4\n").await;
}

async fn slow_next_to_healthy(head: &str) {
    let receiver = Receiver::start().await;
    receiver.plan("/slow", vec![Answer::Slow(Duration::from_secs(2), 200)]);
    let body = config(
        &[
            ("slow", receiver.url("/slow"), ""),
            ("fast", receiver.url("/fast"), ""),
        ],
        &[
            form_repeater("slow", "max_workers = 8"),
            form_repeater("fast", ""),
        ]
        .concat(),
    );
    let gateway = Gateway::start(&format!("{head}{body}")).await;
    let mut submitted = HashMap::new();
    for n in 0..50 {
        let (status, body) = gateway.submit("demo", &form_xml("s", n), None).await;
        assert_eq!(status, 201, "{body}");
        submitted.insert(form_id("s", n), Instant::now());
    }
    let fast = receiver.wait("/fast", 50, WAIT).await;
    assert_eq!(fast.len(), 50, "every form reached the healthy remote");
    let slow_so_far = receiver.requests("/slow").len();
    let slow_done = gateway
        .records("demo", "repeater=slow&state=succeeded")
        .await
        .len();
    assert!(
        slow_done < 50,
        "the healthy remote was served long before the slow one ({slow_done} slow ones done)"
    );
    assert!(slow_so_far < 50, "{slow_so_far}");
    let mut latest = Duration::ZERO;
    for arrival in &fast {
        let waited = arrival.at.duration_since(submitted[&instance_id(arrival)]);
        latest = latest.max(waited);
    }
    assert!(
        latest < Duration::from_millis(1_500),
        "a healthy send waited {latest:?} (the slow remote takes 2 s)"
    );
    // Not stopped: stopping would wait for the slow sends.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_remote_backs_off_probes_one_at_a_time_then_recovers_at_full_speed() {
    let receiver = Receiver::start().await;
    receiver.plan(
        "/flaky",
        vec![Answer::Slow(Duration::from_millis(100), 503)],
    );
    let gateway = Gateway::start(&config(
        &[("flaky", receiver.url("/flaky"), "")],
        &form_repeater(
            "flaky",
            "max_workers = 4\nretry = { min_wait = \"300ms\", factor = 2.0, max_wait = \"1s\", max_attempts = 100 }",
        ),
    ))
    .await;
    submit_forms(&gateway, "b", 0..20).await;

    // The repeater notices and backs off.
    wait_backing_off(&gateway, "flaky", "the repeater never backed off").await;
    // How little is sent while it backs off (one probe at a time, each
    // back-off factor x longer) is checked in virtual time by tests/clocked.rs.
    let queued = gateway.records("demo", "").await;
    assert!(
        queued
            .iter()
            .all(|r| r["state"] == "failed" || r["state"] == "pending"),
        "{queued:?}"
    );

    // The remote comes back (slowly): the first success restores full speed.
    let before = receiver.requests("/flaky").len();
    receiver.plan(
        "/flaky",
        vec![Answer::Slow(Duration::from_millis(300), 200)],
    );
    let records = gateway
        .wait_records("demo", "", 20, "succeeded", WAIT)
        .await;
    assert!(
        records.iter().all(|r| r["state"] == "succeeded"),
        "{records:?}"
    );
    let all = receiver.requests("/flaky");
    let successes: Vec<&Received> = all.iter().skip(before).collect();
    let overlapping = successes
        .windows(2)
        .filter(|pair| pair[1].at.duration_since(pair[0].at) < Duration::from_millis(250))
        .count();
    assert!(
        overlapping >= 3,
        "after recovery sends run in parallel again ({overlapping} overlapping pairs)"
    );
    let keys: HashSet<String> = all.iter().map(idempotency_key).collect();
    assert_eq!(keys.len(), 20, "every record was sent");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_of_parallel_sends_back_off_once_not_once_each() {
    // Eight sends fail together: one back-off of min_wait follows, not one
    // per failure from the third on (which would be 1 s x 10^5, a day).
    let receiver = Receiver::start().await;
    let failures = vec![Answer::Slow(Duration::from_millis(200), 503); 8];
    receiver.plan("/in", [failures, vec![Answer::Status(200)]].concat());
    let gateway = Gateway::start(&config(
        &[("burst", receiver.url("/in"), "")],
        &form_repeater(
            "burst",
            "max_workers = 8\npaused = true\nretry = { min_wait = \"1s\", factor = 10.0, max_wait = \"2d\", max_attempts = 10 }",
        ),
    ))
    .await;
    submit_forms(&gateway, "burst", 0..8).await;
    let (status, body) = gateway
        .api("POST", "/api/v1/domains/demo/repeaters/burst/resume", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let first_wave = receiver.wait("/in", 8, WAIT).await;
    assert_eq!(first_wave.len(), 8);
    assert!(
        first_wave
            .last()
            .unwrap()
            .at
            .duration_since(first_wave[0].at)
            < Duration::from_millis(200),
        "the eight sends ran in parallel"
    );
    wait_backing_off(&gateway, "burst", "the repeater backs off").await;
    let records = gateway
        .wait_records("demo", "", 8, "succeeded", Duration::from_secs(10))
        .await;
    let (_, repeater) = gateway.get("/api/v1/domains/demo/repeaters/burst").await;
    assert!(
        records
            .iter()
            .all(|r| r["state"] == "succeeded" && r["n_attempts"] == 2),
        "status {}: {records:?}",
        repeater["status"]
    );
    let arrivals = receiver.requests("/in");
    let probe_after = arrivals[8].at.duration_since(first_wave[7].at);
    assert!(
        probe_after >= Duration::from_millis(900),
        "the probe waited for the back-off ({probe_after:?})"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeaters_and_connections_changed_at_run_time_take_effect_at_once() {
    let receiver = Receiver::start().await;
    let gateway = Gateway::start(&config(
        &[("first", receiver.url("/first"), "")],
        &form_repeater("first", ""),
    ))
    .await;
    // A connection and a repeater added through the API.
    let (status, body) = gateway
        .api(
            "POST",
            "/api/v1/domains/demo/connections",
            Some(json!({"name": "late", "url": receiver.url("/late"), "auth": {"type": "none"}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = gateway
        .api(
            "POST",
            "/api/v1/domains/demo/repeaters",
            Some(
                json!({"name": "late", "kind": "form", "connection": "late", "format": "form-xml"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    submit_forms(&gateway, "rt", 0..1).await;
    assert_eq!(
        receiver.wait("/late", 1, WAIT).await.len(),
        1,
        "the new repeater sends"
    );
    assert_eq!(receiver.wait("/first", 1, WAIT).await.len(), 1);
    let late = gateway
        .wait_records("demo", "repeater=late", 1, "succeeded", WAIT)
        .await;
    assert_eq!(late[0]["state"], "succeeded", "{late:?}");

    // The first connection moves: the next send goes to the new URL.
    let (status, body) = gateway
        .api(
            "PUT",
            "/api/v1/domains/demo/connections/first",
            Some(json!({"name": "first", "url": receiver.url("/moved"), "auth": {"type": "none"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    submit_forms(&gateway, "rt", 1..2).await;
    let moved = receiver.wait("/moved", 1, WAIT).await;
    assert_eq!(moved.len(), 1, "sent to the connection's new URL");
    assert_eq!(instance_id(&moved[0]), form_id("rt", 1));
    assert_eq!(receiver.requests("/first").len(), 1);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_delivers_in_registration_order() {
    let receiver = Receiver::start().await;
    receiver.plan("/in", vec![Answer::Slow(Duration::from_millis(20), 200)]);
    let gateway = Gateway::start(&config(
        &[("ordered", receiver.url("/in"), "")],
        &form_repeater("ordered", "max_workers = 1\npaused = true"),
    ))
    .await;
    // Paused: registered, kept pending, nothing sent.
    let mut expected = submit_forms(&gateway, "o", 0..20).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        receiver.requests("/in").is_empty(),
        "a paused repeater sends nothing"
    );
    let records = gateway.records("demo", "").await;
    assert_eq!(records.len(), 20);
    assert!(
        records
            .iter()
            .all(|r| r["state"] == "pending" && r["n_attempts"] == 0),
        "{records:?}"
    );

    let (status, body) = gateway
        .api(
            "POST",
            "/api/v1/domains/demo/repeaters/ordered/resume",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // More forms while the backlog drains.
    expected.extend(submit_forms(&gateway, "o", 20..30).await);
    let arrivals = receiver.wait("/in", 30, WAIT).await;
    let order: Vec<String> = arrivals.iter().map(instance_id).collect();
    assert_eq!(order, expected, "max_workers = 1 keeps registration order");
    for wait in gaps(&arrivals) {
        assert!(
            wait >= Duration::from_millis(19),
            "one send at a time ({wait:?} apart; each takes 20 ms)"
        );
    }
    let records = gateway
        .wait_records("demo", "", 30, "succeeded", WAIT)
        .await;
    assert!(
        records
            .iter()
            .all(|r| r["state"] == "succeeded" && r["n_attempts"] == 1),
        "{records:?}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_a_repeater_holds_its_records_until_it_is_resumed() {
    let receiver = Receiver::start().await;
    let gateway = Gateway::start(&config(
        &[
            ("held", receiver.url("/held"), ""),
            ("other", receiver.url("/other"), ""),
        ],
        &[form_repeater("held", ""), form_repeater("other", "")].concat(),
    ))
    .await;
    submit_forms(&gateway, "p", 0..1).await;
    assert_eq!(receiver.wait("/held", 1, WAIT).await.len(), 1);

    let (status, body) = gateway
        .api("POST", "/api/v1/domains/demo/repeaters/held/pause", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, shown) = gateway.get("/api/v1/domains/demo/repeaters/held").await;
    assert_eq!(shown["paused"], true, "{shown}");
    submit_forms(&gateway, "p", 1..4).await;
    // The other repeater is not paused: its copies arrive while these wait.
    assert_eq!(receiver.wait("/other", 4, WAIT).await.len(), 4);
    // That nothing is sent however long it stays paused is checked in
    // virtual time by tests/clocked.rs.
    assert_eq!(
        receiver.requests("/held").len(),
        1,
        "nothing is sent while paused"
    );
    let held = gateway.records("demo", "repeater=held&state=pending").await;
    assert_eq!(held.len(), 3, "{held:?}");

    let (status, body) = gateway
        .api("POST", "/api/v1/domains/demo/repeaters/held/resume", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(receiver.wait("/held", 4, WAIT).await.len(), 4);
    let records = gateway
        .wait_records("demo", "repeater=held", 4, "succeeded", WAIT)
        .await;
    assert!(
        records.iter().all(|r| r["state"] == "succeeded"),
        "{records:?}"
    );
    let (status, _) = gateway
        .api("POST", "/api/v1/domains/demo/repeaters/held/hurry", None)
        .await;
    assert_eq!(status, 404, "unknown repeater actions are refused");
    gateway.stop().await;
}

// ---- the records API and metrics ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_api_filters_pages_and_operator_actions() {
    let receiver = Receiver::start().await;
    receiver.plan("/bad", vec![Answer::Status(503)]);
    let gateway = Gateway::start(&config(
        &[
            ("good", receiver.url("/good"), ""),
            ("bad", receiver.url("/bad"), ""),
        ],
        &[
            form_repeater("good", ""),
            // One retry an hour: a failed record stays failed for the test.
            form_repeater(
                "bad",
                "retry = { min_wait = \"1h\", factor = 2.0, max_attempts = 2 }",
            ),
        ]
        .concat(),
    ))
    .await;
    let forms = submit_forms(&gateway, "api", 0..6).await;
    let good = gateway
        .wait_records("demo", "repeater=good", 6, "succeeded", WAIT)
        .await;
    assert!(good.iter().all(|r| r["state"] == "succeeded"), "{good:?}");
    // The failing remote: the first records fail, then the repeater backs off
    // (for an hour) and the rest stay pending behind it.
    let bad = eventually("the failing repeater to back off", WAIT, || async {
        let (_, repeater) = gateway.get("/api/v1/domains/demo/repeaters/bad").await;
        let bad = gateway.records("demo", "repeater=bad").await;
        let settled = repeater["status"]["backing_off_until"].is_string()
            && bad.len() == 6
            && bad
                .iter()
                .all(|r| r["state"] == "pending" || r["state"] == "failed")
            && bad.iter().filter(|r| r["state"] == "failed").count() >= 3;
        if settled {
            Ok(bad)
        } else {
            Err(Value::from(bad))
        }
    })
    .await;
    let failed: Vec<String> = bad
        .iter()
        .filter(|r| r["state"] == "failed")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let n_failed = failed.len();
    assert!(
        bad.iter()
            .all(|r| r["n_attempts"] == if r["state"] == "failed" { 1 } else { 0 }),
        "{bad:?}"
    );

    // Every record has the documented fields.
    let all = gateway.records("demo", "").await;
    assert_eq!(all.len(), 12);
    for r in &all {
        for field in [
            "id",
            "repeater",
            "payload_id",
            "state",
            "n_attempts",
            "registered_at",
            "next_attempt_at",
        ] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
    }
    // Filters.
    let succeeded = gateway.records("demo", "state=succeeded").await;
    assert_eq!(succeeded.len(), 6);
    assert!(succeeded.iter().all(|r| r["repeater"] == "good"));
    assert_eq!(gateway.records("demo", "repeater=bad").await.len(), 6);
    assert_eq!(
        gateway
            .records("demo", "state=failed&repeater=good")
            .await
            .len(),
        0
    );
    let of_form = gateway
        .records("demo", &format!("payload_id={}", forms[2]))
        .await;
    let mut repeaters: Vec<&str> = of_form
        .iter()
        .map(|r| r["repeater"].as_str().unwrap())
        .collect();
    repeaters.sort();
    assert_eq!(repeaters, ["bad", "good"]);
    assert!(of_form.iter().all(|r| r["payload_id"] == forms[2].as_str()));
    let (status, body) = gateway.get("/api/v1/domains/demo/records?state=done").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("\"done\""),
        "{body}"
    );

    // Paging covers every record exactly once.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let query = match &cursor {
            Some(cursor) => format!("limit=5&cursor={cursor}"),
            None => "limit=5".to_owned(),
        };
        let (status, page) = gateway
            .get(&format!("/api/v1/domains/demo/records?{query}"))
            .await;
        assert_eq!(status, 200, "{page}");
        let records = page["records"].as_array().unwrap();
        assert!(records.len() <= 5);
        paged.extend(records.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<&String> = paged.iter().collect();
    assert_eq!(paged.len(), 12, "{paged:?}");
    assert_eq!(unique.len(), 12);
    let listed: HashSet<String> = all
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(unique.into_iter().cloned().collect::<HashSet<_>>(), listed);
    // The same with a filter.
    let (_, page) = gateway
        .get("/api/v1/domains/demo/records?repeater=bad&limit=4")
        .await;
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let (_, rest) = gateway
        .get(&format!(
            "/api/v1/domains/demo/records?repeater=bad&limit=4&cursor={cursor}"
        ))
        .await;
    assert_eq!(
        page["records"].as_array().unwrap().len() + rest["records"].as_array().unwrap().len(),
        6
    );

    let text = metrics_text(&gateway).await;
    assert_eq!(
        metric(
            &text,
            "repeatd_records{domain=\"demo\",repeater=\"good\",state=\"succeeded\"}"
        ),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "repeatd_records{domain=\"demo\",repeater=\"bad\",state=\"failed\"}"
        ),
        Some(n_failed as f64),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "repeatd_records{domain=\"demo\",repeater=\"bad\",state=\"pending\"}"
        )
        .unwrap_or(0.0),
        (6 - n_failed) as f64,
        "{text}"
    );
    assert_eq!(metric(&text, "repeatd_queue_depth"), Some(6.0), "{text}");

    // Resend a succeeded record: it goes out again now.
    let resent_id = succeeded[0]["id"].as_str().unwrap().to_owned();
    let after = record_action(&gateway, &resent_id, "resend").await;
    assert_eq!(after["state"], "pending");
    eventually("the resent record to arrive again", WAIT, || async {
        let arrivals = receiver
            .requests("/good")
            .iter()
            .filter(|r| idempotency_key(r) == resent_id)
            .count();
        if arrivals == 2 {
            Ok(())
        } else {
            Err(format!("{arrivals} arrivals"))
        }
    })
    .await;
    record_where(
        &gateway,
        &resent_id,
        WAIT,
        "succeeded after 2 attempts",
        |detail| detail["state"] == "succeeded" && detail["n_attempts"] == 2,
    )
    .await;

    // Cancel a failed record; then requeue it: a fresh budget of two attempts.
    let bad_ids = &failed;
    let cancelled = record_action(&gateway, &bad_ids[0], "cancel").await;
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["n_attempts"], 1);
    let again = record_action(&gateway, &bad_ids[0], "cancel").await;
    assert_eq!(
        again["state"], "cancelled",
        "cancelling twice changes nothing"
    );
    let requeued = record_action(&gateway, &bad_ids[0], "requeue").await;
    assert_eq!(requeued["state"], "pending");
    // Sent at once, although the repeater is backing off for an hour.
    record_where(
        &gateway,
        &bad_ids[0],
        Duration::from_secs(5),
        "a requeued record is sent at once",
        |detail| detail["n_attempts"] == 2,
    )
    .await;
    let detail = gateway.record("demo", &bad_ids[0]).await;
    assert_eq!(
        detail["state"], "failed",
        "requeue gives a fresh attempt budget: {detail}"
    );
    assert_eq!(detail["attempts"].as_array().unwrap().len(), 2);
    // Resend keeps the budget: its second failure uses the last attempt.
    record_action(&gateway, &bad_ids[1], "resend").await;
    record_where(
        &gateway,
        &bad_ids[1],
        Duration::from_secs(5),
        "cancelled after 2 attempts",
        |detail| detail["state"] == "cancelled" && detail["n_attempts"] == 2,
    )
    .await;
    let (status, _) = gateway
        .api(
            "POST",
            &format!("/api/v1/domains/demo/records/{}/forget", bad_ids[1]),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = gateway.get("/api/v1/domains/demo/records/0123").await;
    assert_eq!(status, 404);

    // Bulk: cancel the failed ones, then (remote fixed) requeue every cancelled one.
    assert_eq!(
        bulk(
            &gateway,
            "cancel",
            json!({"state": "failed", "repeater": "bad"})
        )
        .await,
        n_failed as u64 - 1
    );
    assert_eq!(
        gateway
            .records("demo", "repeater=bad&state=cancelled")
            .await
            .len(),
        n_failed
    );
    assert_eq!(
        gateway
            .records("demo", "repeater=bad&state=pending")
            .await
            .len(),
        6 - n_failed
    );
    assert_eq!(
        gateway
            .records("demo", "repeater=good&state=succeeded")
            .await
            .len(),
        6,
        "the filter is respected"
    );
    receiver.plan("/bad", vec![Answer::Status(200)]);
    assert_eq!(
        bulk(&gateway, "requeue", json!({"state": "cancelled"})).await,
        n_failed as u64
    );
    let bad = gateway
        .wait_records("demo", "repeater=bad", 6, "succeeded", WAIT)
        .await;
    assert!(bad.iter().all(|r| r["state"] == "succeeded"), "{bad:?}");
    let (status, body) = gateway
        .api(
            "POST",
            "/api/v1/domains/demo/records/bulk",
            Some(json!({"action": "explode"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // Metrics: records by state and repeater, attempts by outcome, latency, queue depth.
    let bad_requests = receiver.requests("/bad").len() as f64;
    let good_requests = receiver.requests("/good").len() as f64;
    let text = metrics_text(&gateway).await;
    assert_metrics(
        &text,
        &[
            (
                "repeatd_records{domain=\"demo\",repeater=\"bad\",state=\"succeeded\"}",
                Some(6.0),
            ),
            (
                "repeatd_records{domain=\"demo\",repeater=\"bad\",state=\"failed\"}",
                Some(0.0),
            ),
            (
                "repeatd_records{domain=\"demo\",repeater=\"good\",state=\"succeeded\"}",
                Some(6.0),
            ),
            ("repeatd_queue_depth", Some(0.0)),
            (
                "repeatd_attempts_total{domain=\"demo\",repeater=\"good\",outcome=\"success\"}",
                Some(good_requests),
            ),
            (
                "repeatd_attempts_total{domain=\"demo\",repeater=\"bad\",outcome=\"success\"}",
                Some(6.0),
            ),
            (
                "repeatd_attempts_total{domain=\"demo\",repeater=\"bad\",outcome=\"retryable\"}",
                Some(bad_requests - 6.0),
            ),
            (
                "repeatd_send_duration_seconds_count{domain=\"demo\",repeater=\"good\"}",
                Some(good_requests),
            ),
            (
                "repeatd_send_duration_seconds_count{domain=\"demo\",repeater=\"bad\"}",
                Some(bad_requests),
            ),
            (
                "repeatd_send_duration_seconds_bucket{domain=\"demo\",repeater=\"good\",le=\"+Inf\"}",
                Some(good_requests),
            ),
            (
                "repeatd_send_duration_seconds_bucket{domain=\"demo\",repeater=\"bad\",le=\"+Inf\"}",
                Some(bad_requests),
            ),
        ],
    );
    assert!(
        text.contains("# TYPE repeatd_send_duration_seconds histogram"),
        "{text}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_during_a_send_sends_again_after_it() {
    let (receiver, gateway) = forms_remote(
        vec![
            Answer::Slow(Duration::from_millis(800), 200),
            Answer::Status(200),
        ],
        "",
        "",
    )
    .await;
    submit_forms(&gateway, "again", 0..1).await;
    assert_eq!(receiver.wait("/in", 1, WAIT).await.len(), 1);
    let id = gateway.records("demo", "").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The operator resends while the first send waits for its answer.
    let resent = record_action(&gateway, &id, "resend").await;
    assert_eq!(resent["state"], "pending");
    let arrivals = receiver.wait("/in", 2, WAIT).await;
    assert_eq!(
        arrivals.len(),
        2,
        "the resend is not swallowed by the send under way"
    );
    assert!(
        arrivals[1].at.duration_since(arrivals[0].at) >= Duration::from_millis(780),
        "sent after the first one finished"
    );
    record_where(
        &gateway,
        &id,
        WAIT,
        "succeeded after 2 attempts",
        |detail| {
            detail["state"] == "succeeded"
                && detail["n_attempts"] == 2
                && detail["attempts"].as_array().unwrap().len() == 2
        },
    )
    .await;
    // Nothing more may arrive: this sleep is the test of that absence.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.requests("/in").len(), 2, "and only once more");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_repeaters_send_put_with_the_same_idempotency_key_on_every_attempt() {
    let (receiver, gateway) = forms_remote(
        vec![
            Answer::Status(500),
            Answer::Status(503),
            Answer::Status(200),
        ],
        "",
        "method = \"PUT\"\nretry = { min_wait = \"100ms\", factor = 2.0, max_attempts = 5 }",
    )
    .await;
    submit_forms(&gateway, "put", 0..1).await;
    let records = gateway.wait_records("demo", "", 1, "succeeded", WAIT).await;
    assert_eq!(records[0]["state"], "succeeded", "{records:?}");
    assert_eq!(records[0]["n_attempts"], 3);
    let arrivals = receiver.requests("/in");
    assert_eq!(arrivals.len(), 3);
    for arrival in &arrivals {
        assert_eq!(arrival.method, "PUT");
        assert_eq!(idempotency_key(arrival), records[0]["id"].as_str().unwrap());
        assert_eq!(arrival.body, form_xml("put", 0));
    }
    gateway.stop().await;
}

// ---- the binary: shutdown, crashes, idling --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_send_under_way_finish_and_commits_it() {
    let receiver = Receiver::start().await;
    receiver.plan("/slow", vec![Answer::Slow(Duration::from_secs(2), 200)]);
    let dir = Arc::new(TempDir::new("sigterm"));
    let body = config(
        &[("slow", receiver.url("/slow"), "")],
        &form_repeater("slow", ""),
    );
    let daemon = Daemon::start_in(&dir, &body).await;
    assert_eq!(
        daemon.submit("demo", &form_xml("term", 0), None).await.0,
        201
    );
    let arrived = receiver.wait("/slow", 1, WAIT).await;
    assert_eq!(arrived.len(), 1);
    let Stopped { status, log, .. } = daemon.stop().await.expect("stopping repeatd");
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        arrived[0].at.elapsed() >= Duration::from_millis(1_900),
        "repeatd waited for the answer before exiting\n{log}"
    );
    assert!(log.contains("shutting down"), "{log}");

    let gateway = Gateway::start_in(dir.clone(), &body).await;
    let records = gateway.records("demo", "").await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0]["state"], "succeeded",
        "the answer was committed before exit: {records:?}"
    );
    assert_eq!(records[0]["n_attempts"], 1);
    // Nothing may be sent again: this sleep is the test of that absence.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        receiver.requests("/slow").len(),
        1,
        "not sent again after the restart"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_sending_loses_nothing_and_duplicates_only_sends_under_way() {
    const FORMS: usize = 30;
    const WORKERS: usize = 4;
    let receiver = Receiver::start().await;
    receiver.plan("/in", vec![Answer::Slow(Duration::from_millis(300), 200)]);
    let dir = Arc::new(TempDir::new("sigkill"));
    let connections = [("forms", receiver.url("/in"), "")];
    let body = config(
        &connections,
        &form_repeater("forms", &format!("max_workers = {WORKERS}")),
    );
    // Queue everything first (paused), then let it send and kill it mid-way.
    let paused = config(
        &connections,
        &form_repeater("forms", &format!("max_workers = {WORKERS}\npaused = true")),
    );
    let mut daemon = Daemon::start_in(&dir, &paused).await;
    for n in 0..FORMS {
        let (status, _) = daemon.submit("demo", &form_xml("kill", n), None).await;
        assert_eq!(status, 201, "form {n}");
    }
    let (_, resumed) = daemon
        .api("POST", "/api/v1/domains/demo/repeaters/forms/resume", None)
        .await;
    assert_eq!(resumed["paused"], false, "{resumed}");
    assert!(receiver.wait("/in", 8, WAIT).await.len() >= 8);
    daemon.kill();
    drop(daemon);
    let before_restart = receiver.requests("/in").len();
    assert!(
        before_restart < FORMS,
        "killed while sending ({before_restart} sent)"
    );

    receiver.plan("/in", vec![Answer::Status(200)]);
    let gateway = Gateway::start_in(dir.clone(), &body).await;
    let records = gateway
        .wait_records("demo", "", FORMS, "succeeded", WAIT)
        .await;
    assert_eq!(
        records.len(),
        FORMS,
        "every form answered 201 has its record"
    );
    assert!(
        records.iter().all(|r| r["state"] == "succeeded"),
        "{records:?}"
    );
    let payloads: HashSet<&str> = records
        .iter()
        .map(|r| r["payload_id"].as_str().unwrap())
        .collect();
    assert_eq!(payloads.len(), FORMS);

    let mut per_key: HashMap<String, usize> = HashMap::new();
    for arrival in receiver.requests("/in") {
        *per_key.entry(idempotency_key(&arrival)).or_default() += 1;
    }
    for r in &records {
        assert!(
            per_key.contains_key(r["id"].as_str().unwrap()),
            "record {} never arrived",
            r["id"]
        );
    }
    // A send's slot is free once the remote has answered, and its outcome is
    // committed with others a moment later: what may arrive twice is what was
    // in flight at the kill, the sends under way (one wave of WORKERS) and
    // those answered whose outcome was not yet durable (at most the wave
    // before, 300 ms earlier), each at most twice.
    let duplicated: Vec<(&String, &usize)> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.len() <= 2 * WORKERS && duplicated.iter().all(|(_, n)| **n == 2),
        "only the records in flight at the kill may arrive twice: {duplicated:?}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_records_for_dead_or_paused_remotes_cost_no_cpu() {
    let receiver = Receiver::start().await;
    receiver.plan("/failing", vec![Answer::Status(503)]);
    let dead_url = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/in", listener.local_addr().unwrap())
    };
    let retry =
        "retry = { min_wait = \"200ms\", factor = 2.0, max_wait = \"2s\", max_attempts = 1000 }";
    let dir = TempDir::new("idle");
    let daemon = Daemon::start_in(
        &dir,
        &config(
            &[
                ("dead", dead_url, ""),
                ("failing", receiver.url("/failing"), ""),
                ("held", receiver.url("/held"), ""),
            ],
            &[
                form_repeater("dead", retry),
                form_repeater("failing", retry),
                form_repeater("held", "paused = true"),
            ]
            .concat(),
        ),
    )
    .await;
    for n in 0..20 {
        assert_eq!(
            daemon.submit("demo", &form_xml("idle", n), None).await.0,
            201
        );
    }
    eventually("both failing repeaters to back off", WAIT, || async {
        let (_, repeaters) = daemon.get("/api/v1/domains/demo/repeaters").await;
        let backing_off = repeaters["repeaters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["name"] != "held")
            .all(|r| r["status"]["backing_off_until"].is_string());
        if backing_off {
            Ok(())
        } else {
            Err(format!("{repeaters}\n{}", daemon.log()))
        }
    })
    .await;
    // Let the sends of the first wave end before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = daemon.cpu_time();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = daemon.cpu_time() - before;
    eprintln!("repeatd used {used:?} of CPU in 2 s with only dead, failing and paused remotes");
    assert!(
        used < Duration::from_millis(300),
        "repeatd used {used:?} of CPU in 2 s with nothing sendable"
    );
    let (_, records) = daemon.get("/api/v1/domains/demo/records?limit=1000").await;
    let records = records["records"].as_array().unwrap();
    assert_eq!(records.len(), 60);
    assert!(
        records
            .iter()
            .all(|r| r["state"] == "failed" || r["state"] == "pending"),
        "still queued: {records:?}"
    );
    assert!(receiver.requests("/held").is_empty());
}
