//! Hostile remotes, over bare sockets (`repeatd_tests::raw_remote`): answers
//! an HTTP library would never send, written byte by byte. None of them may
//! make the gateway panic, hang, wrap a wait around into the past or hold
//! more than the 64 KiB of an answer it keeps. Each test runs the in-process
//! gateway (the 50 MB one the built binary, whose memory it reads) on the
//! wall clock against a real remote on loopback, and checks
//! what an operator would: the record's state, its attempt's status, error
//! and response, when it will be tried again, and what the remote saw.
//!
//! Every repeater retries on a slow policy (`min_wait` 10 minutes, at most 3
//! attempts), so a second request within a test would be a hot loop.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use repeatd_tests::load::status_mib;
use repeatd_tests::raw_remote::{RawRemote, Step};
use repeatd_tests::virtual_time::micros;
use repeatd_tests::{Client, Daemon, Gateway, Receiver, SEED_FORM, TempDir, eventually, repeater};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const RETRY: &str =
    "retry = { max_attempts = 3, min_wait = \"10m\", max_wait = \"1h\", factor = 2.0 }";
const MINUTE: i64 = 60_000_000;
const MAX_WAIT: i64 = 60 * MINUTE;

/// The config of one form repeater per (name, url), each over its own
/// connection with `timeout` and the slow retry policy.
fn config_for(remotes: &[(&str, String)], timeout: &str) -> String {
    let mut config = String::from(
        "[[domains]]\nname = \"demo\"\n\n[[submitters]]\ndomain = \"demo\"\nusername = \"danny\"\npassword = \"pw\"\n",
    );
    for (name, url) in remotes {
        config.push_str(&format!(
            "\n[[connections]]\ndomain = \"demo\"\nname = \"{name}\"\nurl = \"{url}\"\ntimeout = \"{timeout}\"\nauth = {{ type = \"none\" }}\n"
        ));
        config.push_str(&repeater(name, "form", name, "form-xml", RETRY));
    }
    config
}

/// One raw remote per (repeater, steps), a gateway with a repeater to each
/// (connection `timeout`), and the seed form submitted; the remotes in order.
async fn remotes_with_form(
    scripts: Vec<(&'static str, Vec<Step>)>,
    timeout: &str,
) -> (Vec<RawRemote>, Gateway) {
    let mut remotes = Vec::new();
    let mut urls = Vec::new();
    for (name, steps) in scripts {
        let remote = RawRemote::start(steps).await;
        urls.push((name, remote.url("/in")));
        remotes.push(remote);
    }
    let gateway = Gateway::start(&config_for(&urls, timeout)).await;
    submit_seed(&gateway).await;
    (remotes, gateway)
}

/// Submits the seed form and waits until the record of `repeater` has had
/// its first attempt and left `pending`; returns it with its attempts.
async fn first_attempt(gateway: &Client, repeater: &str) -> Value {
    let listed = eventually(
        &format!("a first attempt for repeater {repeater}"),
        WAIT,
        || async {
            let records = gateway
                .records("demo", &format!("repeater={repeater}"))
                .await;
            match records.first() {
                Some(record) if record["n_attempts"] == 1 && record["state"] != "pending" => {
                    Ok(record.clone())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    gateway
        .record("demo", listed["id"].as_str().expect("a record id"))
        .await
}

async fn submit_seed(gateway: &Client) {
    let (status, body) = gateway.submit("demo", SEED_FORM, None).await;
    assert_eq!(status, 201, "{body}");
}

fn now_micros() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_micros()).unwrap()
}

fn answer_503_retry_after(value: &str) -> Vec<Step> {
    vec![Step::text(&format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {value}\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy"
    ))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_after_sends_a_record_to_the_past_or_past_max_wait() {
    // (repeater, Retry-After, the shortest and longest wait it may give).
    let computed = (8 * MINUTE, 12 * MINUTE); // min_wait ± 20%
    let cases = [
        ("huge", "9300000000000", (MAX_WAIT, MAX_WAIT)),
        ("negative", "-120", computed),
        (
            "far-date",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            (MAX_WAIT, MAX_WAIT),
        ),
        ("garbage", "soon, maybe", computed),
    ];
    let scripts = cases
        .iter()
        .map(|(name, value, _)| (*name, answer_503_retry_after(value)))
        .collect();
    let (remotes, gateway) = remotes_with_form(scripts, "5s").await;

    for ((name, value, (shortest, longest)), remote) in cases.iter().zip(&remotes) {
        let record = first_attempt(&gateway, name).await;
        assert_eq!(record["state"], "failed", "Retry-After {value:?}: {record}");
        let attempt = &record["attempts"][0];
        assert_eq!(attempt["status"], 503, "{record}");
        let attempted_at = micros(&attempt["at"]);
        let next = micros(&record["next_attempt_at"]);
        assert!(
            next > now_micros(),
            "Retry-After {value:?}: the next attempt is in the past: {record}"
        );
        // The wait counts from when the outcome was committed, a little
        // after the attempt started.
        let waited = next - attempted_at;
        let slack =
            i64::try_from(attempt["duration_ms"].as_u64().unwrap()).unwrap() * 1_000 + 10_000_000;
        assert!(
            waited >= *shortest && waited <= *longest + slack,
            "Retry-After {value:?}: waits {waited} µs, not within [{shortest}, {longest}] (max_wait {MAX_WAIT}): {record}"
        );
        assert_eq!(remote.exchanges().len(), 1, "{name}");
    }
    // A hot loop would hit a remote again (and cancel its record after 3
    // attempts) within this second; nothing may happen in it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for ((name, value, _), remote) in cases.iter().zip(&remotes) {
        assert_eq!(
            remote.exchanges().len(),
            1,
            "Retry-After {value:?}: the remote was hit again"
        );
        let records = gateway.records("demo", &format!("repeater={name}")).await;
        assert_eq!(records[0]["state"], "failed", "{records:?}");
        assert_eq!(records[0]["n_attempts"], 1, "{records:?}");
    }
    gateway.stop().await;
}

/// The gateway's resident memory, and its peak since the last
/// [`reset_peak_memory`], in MiB (from `/proc`).
fn memory_mib(pid: u32) -> (f64, f64) {
    let pid = pid.to_string();
    let read = |field| status_mib(&pid, field).expect("reading /proc/PID/status");
    (read("VmRSS:"), read("VmHWM:"))
}

/// Starts a new peak for `VmHWM` (Linux: `5` in `/proc/PID/clear_refs`).
fn reset_peak_memory(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("resetting the peak RSS");
}

/// Run against the built binary, so that the gateway's own memory can be
/// read: its peak may not grow by more than a fraction of the 50 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_a_50_mb_error_body_only_the_first_64_kib_is_read_and_kept() {
    const FIFTY_MB: u64 = 50 * 1024 * 1024;
    const KEPT: usize = 64 * 1024;
    let error_answer = |n_bytes: u64| {
        vec![
            Step::text(&format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: {n_bytes}\r\n\r\n"
            )),
            Step::Flood(n_bytes),
        ]
    };
    // A first, small answer warms the gateway up (plugin instance, store,
    // client pool); the resend of the same record then gets the 50 MB.
    let remote = RawRemote::start_in_turn(vec![error_answer(10), error_answer(FIFTY_MB)]).await;
    let dir = TempDir::new("flood");
    let gateway = Daemon::start_in(&dir, &config_for(&[("flood", remote.url("/in"))], "60s")).await;
    submit_seed(&gateway).await;
    let warm_up = first_attempt(&gateway, "flood").await;
    assert_eq!(warm_up["attempts"][0]["response"], "xxxxxxxxxx");

    reset_peak_memory(gateway.pid());
    let (resident_before, _) = memory_mib(gateway.pid());
    let id = warm_up["id"].as_str().unwrap();
    let (status, body) = gateway
        .api(
            "POST",
            &format!("/api/v1/domains/demo/records/{id}/resend"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let record = eventually("the resend's attempt", WAIT, || async {
        let record = gateway.record("demo", id).await;
        if record["attempts"].as_array().map_or(0, Vec::len) == 2 {
            Ok(record)
        } else {
            Err(record.to_string())
        }
    })
    .await;
    // Memory does not grow with the body.
    let (_, peak) = memory_mib(gateway.pid());
    assert!(
        peak - resident_before < 16.0,
        "the gateway's memory peaked at {peak:.1} MiB, from {resident_before:.1} MiB"
    );
    assert_eq!(record["state"], "failed", "{}", record["state"]);
    let attempt = &record["attempts"][1];
    assert_eq!(attempt["status"], 500);
    let response = attempt["response"].as_str().expect("a kept response");
    assert_eq!(
        response.len(),
        KEPT,
        "the kept response is the first 64 KiB"
    );
    assert!(response.bytes().all(|byte| byte == b'x'));
    // The gateway stopped reading and hung up: the remote could write no
    // more than what the sockets' buffers hold, far from 50 MB.
    let exchange = eventually("the remote to see the gateway hang up", WAIT, || async {
        match remote.exchanges().get(1) {
            Some(exchange) if exchange.finished => Ok(exchange.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(exchange.hung_up, "the remote wrote all 50 MB: {exchange:?}");
    assert!(
        exchange.written < FIFTY_MB / 4,
        "the remote wrote {} bytes before the gateway hung up",
        exchange.written
    );
    gateway.stop().await.expect("stopping the gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_trickles_times_out_at_the_connections_timeout() {
    let (_remotes, gateway) = remotes_with_form(
        vec![
            (
                "body",
                vec![
                    Step::text("HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n"),
                    Step::Trickle(vec![b'.'; 60], Duration::from_secs(1)),
                ],
            ),
            (
                "head",
                vec![Step::Trickle(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                    Duration::from_secs(1),
                )],
            ),
        ],
        "3s",
    )
    .await;

    for name in ["body", "head"] {
        let record = first_attempt(&gateway, name).await;
        assert_eq!(record["state"], "failed", "{name}: {record}");
        let attempt = &record["attempts"][0];
        assert_eq!(
            attempt["error"], "timed out after 3000 ms",
            "{name}: {record}"
        );
        let took = attempt["duration_ms"].as_u64().unwrap();
        assert!(
            (3_000..6_000).contains(&took),
            "{name}: the whole exchange is bounded by the 3 s timeout, took {took} ms"
        );
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_mid_answer_or_bytes_that_are_not_http_fail_the_attempt() {
    // (repeater, what the remote writes before closing, how the error starts).
    let cases = [
        (
            "mid-head",
            "HTTP/1.1 200 OK\r\nContent-Len",
            "request failed: ",
        ),
        (
            "mid-body",
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it",
            "remote answered 200, then the answer broke off: ",
        ),
        (
            "not-http",
            "SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n",
            "request failed: ",
        ),
    ];
    let scripts = cases
        .iter()
        .map(|(name, bytes, _)| (*name, vec![Step::text(bytes)]))
        .collect();
    let (_remotes, gateway) = remotes_with_form(scripts, "5s").await;

    for (name, _, error) in &cases {
        let record = first_attempt(&gateway, name).await;
        assert_eq!(record["state"], "failed", "{name}: {record}");
        assert!(
            record["next_attempt_at"].is_string(),
            "{name}: retried later: {record}"
        );
        let attempt = &record["attempts"][0];
        assert_eq!(attempt["status"], Value::Null, "{name}: {record}");
        let text = attempt["error"].as_str().expect("an error");
        assert!(text.starts_with(error), "{name}: {text}");
    }
    gateway.stop().await;
}

/// SPEC section 6 counts only 2xx as success and names the codes that are
/// retried; a 3xx is neither, so it is classified with "other 4xx":
/// `rejected`, kept until an operator fixes the URL and requeues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_and_the_record_is_rejected() {
    let elsewhere = Receiver::start().await;
    let redirect = format!(
        "HTTP/1.1 302 Found\r\nLocation: {}\r\nContent-Length: 5\r\n\r\nmoved",
        elsewhere.url("/elsewhere")
    );
    let (remotes, gateway) =
        remotes_with_form(vec![("moved", vec![Step::text(&redirect)])], "5s").await;
    let remote = &remotes[0];

    let record = first_attempt(&gateway, "moved").await;
    assert_eq!(record["state"], "rejected", "{record}");
    assert_eq!(record["next_attempt_at"], Value::Null, "{record}");
    let attempt = &record["attempts"][0];
    assert_eq!(attempt["status"], 302, "{record}");
    assert_eq!(attempt["response"], "moved");
    assert_eq!(attempt["error"], "remote answered 302: moved");
    assert!(
        elsewhere.requests("/elsewhere").is_empty(),
        "the redirect was followed"
    );
    assert_eq!(remote.exchanges().len(), 1);
    assert!(
        remote.exchanges()[0].request_line().starts_with("POST /in"),
        "{}",
        remote.exchanges()[0].request_line()
    );
    gateway.stop().await;
}
