//! Timing, deterministically: the in-process gateway runs on a clock that
//! follows tokio's paused time, and the test alone moves that time. Every
//! wait the product promises (growing retry waits, `Retry-After` holding a
//! repeater back, a paused repeater sending nothing) is checked to the
//! millisecond in virtual time, however slow the machine, instead of with
//! seconds of real sleeping and generous margins.
//!
//! Time is paused from the start and frozen (`repeatd_tests::virtual_time`),
//! so the only moves are the test's `advance` calls; waiting for the gateway
//! to act is real waiting, bounded by `REAL_WAIT`.

use std::time::Duration;

use repeatd::clock::Clock;
use repeatd_tests::virtual_time::*;
use repeatd_tests::{Answer, Gateway, Receiver, generated_form, repeater};
use serde_json::Value;

/// Repeater "forms" over connection "remote" to the receiver's `/in`, with
/// `settings` (TOML lines) on the repeater.
fn config(receiver: &Receiver, settings: &str) -> String {
    format!(
        "[[domains]]\nname = \"demo\"\n\n[[submitters]]\ndomain = \"demo\"\nusername = \"danny\"\npassword = \"pw\"\n\n\
         [[connections]]\ndomain = \"demo\"\nname = \"remote\"\nurl = \"{}\"\nauth = {{ type = \"none\" }}\n\n{}",
        receiver.url("/in"),
        repeater("forms", "form", "remote", "form-xml", settings),
    )
}

/// Everything a test needs: time frozen, the gateway on a clock that follows
/// it, and a receiver at `/in` answering `answers` in turn (the last repeats).
struct Setup {
    _frozen: FrozenTime,
    clock: Clock,
    receiver: Receiver,
    gateway: Gateway,
}

async fn setup(answers: Vec<Answer>, settings: &str) -> Setup {
    let frozen = freeze_time();
    let clock = Clock::starting_at(START);
    let receiver = Receiver::start().await;
    receiver.plan("/in", answers);
    let gateway = Gateway::start_with_clock(&config(&receiver, settings), clock).await;
    Setup {
        _frozen: frozen,
        clock,
        receiver,
        gateway,
    }
}

/// Submits form 0 and waits for its first attempt to fail; returns the
/// record and when that attempt was made.
async fn first_attempt_failed(gateway: &Gateway) -> (Value, i64) {
    submit(gateway, 0).await;
    let record = settled(gateway, 0, 1, "failed").await;
    let at = micros(&record["attempts"][0]["at"]);
    (record, at)
}

async fn submit(gateway: &Gateway, n: usize) {
    let form_id = format!("clocked-form-{n}");
    let xml = generated_form(&form_id, &format!("clocked-case-{n}"), "visit");
    let (status, body) = gateway.submit("demo", &xml, None).await;
    assert_eq!(status, 201, "{body}");
}

/// The one record of form `n`, with its attempts.
async fn record_of(gateway: &Gateway, n: usize) -> Value {
    let listed = gateway
        .records("demo", &format!("payload_id=clocked-form-{n}"))
        .await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0]["id"].as_str().expect("a record id");
    gateway.record("demo", id).await
}

/// A gateway whose remote answers `throttle` (a Retry-After) once and then
/// 200, under the retry policy `retry`; checks that the record then waits
/// `expected_wait` µs (`what` says why) and returns the set-up and when the
/// throttled attempt was made.
async fn throttled_once(
    throttle: Answer,
    retry: &str,
    expected_wait: i64,
    what: &str,
) -> (Setup, i64) {
    let test = setup(vec![throttle, Answer::Status(200)], retry).await;
    let (throttled, throttled_at) = first_attempt_failed(&test.gateway).await;
    assert_eq!(
        micros(&throttled["next_attempt_at"]),
        throttled_at + expected_wait,
        "{what}"
    );
    (test, throttled_at)
}

/// Advances the clock to a millisecond before `due` and checks that the
/// receiver still has only its `n_sent` requests (`what` says why no more may
/// come), then advances past `due`.
async fn nothing_sent_until(test: &Setup, due: i64, n_sent: usize, what: &str) {
    advance_to(&test.clock, due - MILLISECOND).await;
    real_sleep(REAL_QUIET).await;
    assert_eq!(test.receiver.requests("/in").len(), n_sent, "{what}");
    tokio::time::advance(Duration::from_millis(2)).await;
}

/// Waits until the record of form `n` has `n_attempts` attempts and is in
/// `state`; returns it.
async fn settled(gateway: &Gateway, n: usize, n_attempts: usize, state: &str) -> Value {
    let record = until(
        &format!("form {n}: {n_attempts} attempts, {state}"),
        || async {
            let record = record_of(gateway, n).await;
            (record["n_attempts"] == n_attempts && record["state"] == state).then_some(record)
        },
    )
    .await;
    sends_settled(gateway, "forms").await;
    record
}

async fn arrivals_after(receiver: &Receiver, n: usize) -> usize {
    until(&format!("{n} requests at the remote"), || async {
        let got = receiver.requests("/in").len();
        (got >= n).then_some(got)
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn waits_grow_by_factor_within_jitter_each_attempt_comes_when_due_then_the_record_is_cancelled()
 {
    let test = setup(
        vec![Answer::Status(503)],
        "retry = { min_wait = \"10s\", factor = 2.0, max_attempts = 4, max_wait = \"1h\" }",
    )
    .await;
    submit(&test.gateway, 0).await;

    let mut waits = Vec::new();
    for (n_attempts, expected) in (1..=3).zip([10 * SECOND, 20 * SECOND, 40 * SECOND]) {
        let record = settled(&test.gateway, 0, n_attempts, "failed").await;
        let attempts = record["attempts"].as_array().expect("attempts");
        let last_at = micros(&attempts[n_attempts - 1]["at"]);
        let due = micros(&record["next_attempt_at"]);
        let wait = due - last_at;
        assert!(
            wait >= expected * 8 / 10 && wait <= expected * 12 / 10,
            "wait {wait} µs after attempt {n_attempts} is not {expected} µs ±20%"
        );
        waits.push(wait);

        // Not a millisecond early ...
        nothing_sent_until(
            &test,
            due,
            n_attempts,
            "nothing is sent before the record is due",
        )
        .await;
        // ... and at once when due.
        arrivals_after(&test.receiver, n_attempts + 1).await;
        let record = settled(
            &test.gateway,
            0,
            n_attempts + 1,
            if n_attempts < 3 {
                "failed"
            } else {
                "cancelled"
            },
        )
        .await;
        let sent_at = micros(&record["attempts"][n_attempts]["at"]);
        assert!(
            sent_at >= due && sent_at <= due + 2 * MILLISECOND,
            "attempt {} at {sent_at}, due at {due}",
            n_attempts + 1
        );
    }
    assert!(
        waits[0] < waits[1] && waits[1] < waits[2],
        "the waits grow: {waits:?}"
    );

    let record = settled(&test.gateway, 0, 4, "cancelled").await;
    assert_eq!(record["next_attempt_at"], Value::Null);
    // Nothing more is sent once it is cancelled, however long one waits.
    tokio::time::advance(Duration::from_secs(7 * 86_400)).await;
    real_sleep(REAL_QUIET).await;
    assert_eq!(test.receiver.requests("/in").len(), 4, "max_attempts = 4");
    test.gateway.stop().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_holds_the_whole_repeater_back_exactly_as_long_as_asked() {
    let (test, throttled_at) = throttled_once(
        Answer::retry_after(429, "30"),
        "retry = { min_wait = \"1s\", factor = 2.0, max_attempts = 5 }",
        30 * SECOND,
        "the record waits as long as the remote asked",
    )
    .await;
    let backing_off_until = until("the repeater backs off", || async {
        let (_, repeater) = test
            .gateway
            .get("/api/v1/domains/demo/repeaters/forms")
            .await;
        let until = &repeater["status"]["backing_off_until"];
        until.is_string().then(|| micros(until))
    })
    .await;
    assert_eq!(backing_off_until, throttled_at + 30 * SECOND);

    // A form registered during the Retry-After waits for it too.
    submit(&test.gateway, 1).await;
    nothing_sent_until(
        &test,
        throttled_at + 30 * SECOND,
        1,
        "nothing is sent to the remote during its Retry-After",
    )
    .await;
    let first = settled(&test.gateway, 0, 2, "succeeded").await;
    let second = settled(&test.gateway, 1, 1, "succeeded").await;
    for sent in [&first["attempts"][1], &second["attempts"][0]] {
        assert!(
            micros(&sent["at"]) >= throttled_at + 30 * SECOND,
            "sent before the Retry-After ended: {sent}"
        );
    }
    assert_eq!(
        test.receiver.requests("/in").len(),
        3,
        "one 429, then each form once"
    );
    test.gateway.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_max_wait_holds_back_only_max_wait() {
    let (test, throttled_at) = throttled_once(
        Answer::retry_after(503, "99999999999999999999999"),
        "retry = { min_wait = \"1s\", factor = 2.0, max_attempts = 5, max_wait = \"1m\" }",
        60 * SECOND,
        "Retry-After is honoured up to max_wait",
    )
    .await;
    advance_to(&test.clock, throttled_at + 60 * SECOND + MILLISECOND).await;
    settled(&test.gateway, 0, 2, "succeeded").await;
    test.gateway.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_paused_repeater_sends_nothing_however_long_it_stays_paused() {
    let test = setup(
        vec![Answer::Status(200)],
        "retry = { min_wait = \"1s\", factor = 2.0, max_attempts = 5 }",
    )
    .await;
    let (status, body) = test
        .gateway
        .api("POST", "/api/v1/domains/demo/repeaters/forms/pause", None)
        .await;
    assert_eq!(status, 200, "{body}");
    for n in 0..3 {
        submit(&test.gateway, n).await;
    }
    for step in [
        Duration::from_secs(1),
        Duration::from_secs(3_600),
        Duration::from_secs(30 * 86_400),
    ] {
        tokio::time::advance(step).await;
        real_sleep(REAL_QUIET).await;
        assert_eq!(
            test.receiver.requests("/in").len(),
            0,
            "nothing is sent while paused"
        );
    }
    let held = test.gateway.records("demo", "state=pending").await;
    assert_eq!(held.len(), 3, "{held:?}");

    let (status, body) = test
        .gateway
        .api("POST", "/api/v1/domains/demo/repeaters/forms/resume", None)
        .await;
    assert_eq!(status, 200, "{body}");
    arrivals_after(&test.receiver, 3).await;
    for n in 0..3 {
        settled(&test.gateway, n, 1, "succeeded").await;
    }
    test.gateway.stop().await;
}

/// The repeater's lane as the API shows it: (in flight, backing off until).
async fn lane(gateway: &Gateway) -> (u64, Option<i64>) {
    let (status, repeater) = gateway.get("/api/v1/domains/demo/repeaters/forms").await;
    assert_eq!(status, 200, "{repeater}");
    let lane = &repeater["status"];
    let until = &lane["backing_off_until"];
    (
        lane["in_flight"].as_u64().expect("in_flight"),
        until.is_string().then(|| micros(until)),
    )
}

#[tokio::test(start_paused = true)]
async fn a_failing_remote_gets_one_probe_per_back_off_and_a_success_resumes_full_speed() {
    let test = setup(
        vec![Answer::Status(503)],
        // Four sends at once, so several fail together.
        "max_workers = 4\nretry = { min_wait = \"10s\", factor = 2.0, max_wait = \"1h\", max_attempts = 100 }",
    )
    .await;
    for n in 0..8 {
        submit(&test.gateway, n).await;
    }
    let backing_off_until = until("the repeater backs off with nothing in flight", || async {
        match lane(&test.gateway).await {
            (0, Some(until)) => Some(until),
            _ => None,
        }
    })
    .await;
    let first_wave = test.receiver.requests("/in").len();
    assert!(
        (3..8).contains(&first_wave),
        "three failures in a row stop the lane: {first_wave} sent"
    );
    // Failures of sends under way together are one failure of the remote:
    // one back-off of min_wait ±20%, not one per failure.
    assert!(
        (START + 8 * SECOND..=START + 12 * SECOND).contains(&backing_off_until),
        "backing off until {backing_off_until}"
    );
    nothing_sent_until(
        &test,
        backing_off_until,
        first_wave,
        "nothing is sent while backing off",
    )
    .await;
    // When it ends, one probe, and only one; it fails, and the back-off grows.
    let next_until = until("the probe fails and the lane backs off again", || async {
        match lane(&test.gateway).await {
            (0, Some(until)) if until > backing_off_until => Some(until),
            _ => None,
        }
    })
    .await;
    assert_eq!(
        test.receiver.requests("/in").len(),
        first_wave + 1,
        "one probe at a time"
    );
    let probe_at = backing_off_until;
    let grown = next_until - probe_at;
    assert!(
        (16 * SECOND..=24 * SECOND + 2 * MILLISECOND).contains(&grown),
        "the second back-off is factor x the first, ±20%: {grown} µs"
    );

    // The remote recovers: the next probe succeeds and everything due goes
    // at once, with no further wait. (A record whose own retry wait is not
    // over yet goes when it is.)
    test.receiver.plan("/in", vec![Answer::Status(200)]);
    advance_to(&test.clock, next_until + MILLISECOND).await;
    let recovered_at = test.clock.now_micros();
    let mut not_yet_due = Vec::new();
    for n in 0..8 {
        let record = until(&format!("form {n} succeeds or waits its turn"), || async {
            let record = record_of(&test.gateway, n).await;
            let waits =
                record["state"] == "failed" && micros(&record["next_attempt_at"]) > recovered_at;
            (record["state"] == "succeeded" || waits).then_some(record)
        })
        .await;
        if record["state"] == "failed" {
            not_yet_due.push((n, micros(&record["next_attempt_at"])));
            continue;
        }
        let attempts = record["attempts"].as_array().expect("attempts");
        let last_at = micros(&attempts[attempts.len() - 1]["at"]);
        assert!(
            last_at >= next_until && last_at <= recovered_at,
            "form {n} was sent at {last_at}, not at once after the recovery"
        );
    }
    assert!(
        not_yet_due.len() <= 1,
        "only the probed record can be: {not_yet_due:?}"
    );
    for (n, due) in not_yet_due {
        advance_to(&test.clock, due + MILLISECOND).await;
        settled(&test.gateway, n, 3, "succeeded").await;
    }
    assert_eq!(
        lane(&test.gateway).await.1,
        None,
        "no back-off after a success"
    );
    test.gateway.stop().await;
}
