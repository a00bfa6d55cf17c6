//! `GET /metrics` as Prometheus reads it (SPEC section 9): on a live gateway,
//! after real deliveries, a failure, a plugin trap, a plugin timeout and an
//! error e-mail (one failed try while the SMTP server is down, then one
//! sent), the text is checked by Prometheus' own parsers — `promtool check
//! metrics` (Debian's `prometheus`) and `prometheus_client`'s text parser
//! (PyPI, run by `tests/prometheus_parse.py`) — and the values are read back
//! from what the Python parser made of it. Every series starts at 0; the
//! endpoint needs the admin token unless `[metrics] public = true`.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use repeatd_tests::smtp::{SmtpSink, free_port};
use repeatd_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const DOMAIN_TOKEN: &str = "demo-metrics-token";

/// Each sample, as `prometheus_client` parsed it: name, labels, value.
struct Parsed {
    families: HashMap<String, String>,
    samples: Vec<(String, HashMap<String, String>, f64)>,
}

impl Parsed {
    /// The value of sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(sample, found, _)| {
                sample == name
                    && labels
                        .iter()
                        .all(|(key, value)| found.get(*key).map(String::as_str) == Some(value))
            })
            .map(|(_, _, value)| *value)
    }

    fn expect(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    /// The largest finite `le` of a histogram's buckets.
    fn largest_bucket(&self, histogram: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(sample, _, _)| *sample == format!("{histogram}_bucket"))
            .filter_map(|(_, labels, _)| labels.get("le")?.parse::<f64>().ok())
            .filter(|bound| bound.is_finite())
            .fold(0.0, f64::max)
    }
}

/// Runs `program args` with `input` on stdin; its stdout, or a panic with
/// everything it said.
fn pipe(program: &str, args: &[&str], input: &str) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("{program} is needed (installed by .ci/setup-test-deps): {error}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?} refused the metrics ({}):\n{}{}\n--- the text:\n{input}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The text checked by promtool, then parsed by `prometheus_client`.
fn parse_with_prometheus(text: &str) -> Parsed {
    pipe("promtool", &["check", "metrics"], text);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("prometheus_parse.py");
    let json: Value =
        serde_json::from_str(&pipe("python3", &[script.to_str().unwrap()], text)).unwrap();
    Parsed {
        families: json["families"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, kind)| (name.clone(), kind.as_str().unwrap().to_owned()))
            .collect(),
        samples: json["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sample| {
                let labels = sample[1]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(key, value)| (key.clone(), value.as_str().unwrap().to_owned()))
                    .collect();
                (
                    sample[0].as_str().unwrap().to_owned(),
                    labels,
                    sample[2].as_f64().unwrap(),
                )
            })
            .collect(),
    }
}

async fn scrape(gateway: &Gateway) -> Parsed {
    let (status, text) = gateway
        .api_text_as(ADMIN_TOKEN, "GET", "/metrics", None)
        .await;
    assert_eq!(status, 200, "{text}");
    parse_with_prometheus(&text)
}

/// Scrapes until `check` finds what it waits for in the parsed metrics.
async fn scrape_until(gateway: &Gateway, what: &str, check: impl Fn(&Parsed) -> bool) -> Parsed {
    eventually(what, WAIT, || async {
        let parsed = scrape(gateway).await;
        if check(&parsed) {
            Ok(parsed)
        } else {
            Err("not yet".to_owned())
        }
    })
    .await
}

async fn status_without_token(gateway: &Gateway) -> u16 {
    gateway
        .http()
        .get(gateway.url("/metrics"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Repeaters: `good` (delivered), `bad` (500, one attempt, then cancelled,
/// and an e-mail to its contact), `panics` (a plugin that traps), `loops` (a
/// plugin that runs past its CPU limit) and `idle`, which nothing reaches.
fn config(receiver: &Receiver, smtp_port: u16) -> String {
    let one_attempt = "retry = { max_attempts = 1 }";
    format!(
        "[smtp]\nurl = \"smtp://127.0.0.1:{smtp_port}\"\nfrom = \"repeatd <repeatd@localhost>\"\nquiet_period = \"15m\"\n\n\
         [[domains]]\nname = \"demo\"\n\n\
         [[api_tokens]]\ndomain = \"demo\"\ntoken = \"{DOMAIN_TOKEN}\"\n\n\
         [[submitters]]\ndomain = \"demo\"\nusername = \"danny\"\npassword = \"pw\"\n\n\
         [[connections]]\ndomain = \"demo\"\nname = \"good\"\nurl = \"{}\"\nauth = {{ type = \"none\" }}\n\n\
         [[connections]]\ndomain = \"demo\"\nname = \"bad\"\nurl = \"{}\"\nnotify = [\"ops@example.org\"]\nauth = {{ type = \"none\" }}\n\
         {}{}{}{}{}",
        receiver.url("/good"),
        receiver.url("/bad"),
        repeater("good", "form", "good", "form-xml", one_attempt),
        repeater("bad", "form", "bad", "form-xml", one_attempt),
        repeater("panics", "form", "good", "trapping", one_attempt),
        repeater("loops", "form", "good", "looping", one_attempt),
        repeater(
            "idle",
            "case",
            "good",
            "case-json",
            "case_types = [\"nothing-has-this-type\"]"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_parses_metrics_that_count_what_happened_from_zero() {
    let receiver = Receiver::start().await;
    receiver.plan("/bad", vec![Answer::Status(500)]);
    let smtp_port = free_port();
    let dir = TempDir::new("metrics");
    let plugin_dir = dir.path().join("plugins.d");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    for (name, path) in [
        ("trapping.wasm", wasm::TRAPPING),
        ("looping.wasm", wasm::LOOPING),
    ] {
        std::fs::copy(path, plugin_dir.join(name)).unwrap();
    }
    let gateway = Gateway::start_in(Arc::new(dir), &config(&receiver, smtp_port)).await;

    // Who may read it: the admin token only.
    assert_eq!(status_without_token(&gateway).await, 401);
    let (status, _) = gateway
        .api_text_as(DOMAIN_TOKEN, "GET", "/metrics", None)
        .await;
    assert_eq!(status, 401, "a domain token is not enough");
    let (status, _) = gateway
        .api_text_as("wrong-token", "GET", "/metrics", None)
        .await;
    assert_eq!(status, 401);

    // Before anything happened, every series is there at 0.
    let before = scrape(&gateway).await;
    for state in [
        "pending",
        "succeeded",
        "failed",
        "cancelled",
        "empty",
        "rejected",
    ] {
        assert_eq!(
            before.value("repeatd_records", &[("repeater", "good"), ("state", state)]),
            Some(0.0),
            "{state}"
        );
    }
    for outcome in ["success", "retryable", "rejected"] {
        assert_eq!(
            before.value(
                "repeatd_attempts_total",
                &[("repeater", "good"), ("outcome", outcome)]
            ),
            Some(0.0),
            "{outcome}"
        );
    }
    for (series, labels) in [
        ("repeatd_send_duration_seconds_count", ("repeater", "good")),
        (
            "repeatd_registration_to_success_seconds_count",
            ("repeater", "good"),
        ),
        (
            "repeatd_plugin_call_duration_seconds_count",
            ("plugin", "form-xml"),
        ),
        ("repeatd_plugin_traps_total", ("plugin", "trapping")),
        ("repeatd_plugin_timeouts_total", ("plugin", "looping")),
        ("repeatd_plugin_reloads_total", ("plugin", "form-xml")),
        ("repeatd_emails_sent_total", ("", "")),
        ("repeatd_emails_failed_total", ("", "")),
    ] {
        let labels: &[(&str, &str)] = if labels.0.is_empty() { &[] } else { &[labels] };
        assert_eq!(
            before.value(series, labels),
            Some(0.0),
            "{series} {labels:?}"
        );
    }

    // One form: delivered once, failed once, trapped once, timed out once.
    let (status, body) = gateway.submit("demo", SEED_FORM, None).await;
    assert_eq!(status, 201, "{body}");
    for (repeater, state) in [
        ("good", "succeeded"),
        ("bad", "cancelled"),
        ("panics", "rejected"),
        ("loops", "rejected"),
    ] {
        gateway
            .wait_records("demo", &format!("repeater={repeater}"), 1, state, WAIT)
            .await;
    }
    // The error e-mail: refused while nothing listens on the SMTP port,
    // then sent once the server is up.
    scrape_until(&gateway, "a failed e-mail", |parsed| {
        parsed.expect("repeatd_emails_failed_total", &[]) >= 1.0
    })
    .await;
    let smtp = SmtpSink::start_on(smtp_port).await;
    assert_eq!(smtp.wait_mails(1, WAIT).await.len(), 1);
    let after = scrape_until(&gateway, "a sent e-mail", |parsed| {
        parsed.expect("repeatd_emails_sent_total", &[]) == 1.0
    })
    .await;

    let good = [("domain", "demo"), ("repeater", "good")];
    let bad = [("domain", "demo"), ("repeater", "bad")];
    let with = |labels: &[(&'static str, &'static str)], extra: (&'static str, &'static str)| {
        let mut all = labels.to_vec();
        all.push(extra);
        all
    };
    for (series, labels, value) in [
        (
            "repeatd_attempts_total",
            with(&good, ("outcome", "success")),
            1.0,
        ),
        (
            "repeatd_attempts_total",
            with(&bad, ("outcome", "retryable")),
            1.0,
        ),
        (
            "repeatd_attempts_total",
            with(&bad, ("outcome", "success")),
            0.0,
        ),
        ("repeatd_records", with(&good, ("state", "succeeded")), 1.0),
        ("repeatd_records", with(&bad, ("state", "cancelled")), 1.0),
        (
            "repeatd_records",
            vec![("repeater", "idle"), ("state", "pending")],
            0.0,
        ),
        ("repeatd_send_duration_seconds_count", good.to_vec(), 1.0),
        ("repeatd_send_duration_seconds_count", bad.to_vec(), 1.0),
        (
            "repeatd_send_duration_seconds_bucket",
            with(&good, ("le", "300")),
            1.0,
        ),
        (
            "repeatd_registration_to_success_seconds_count",
            good.to_vec(),
            1.0,
        ),
        (
            "repeatd_registration_to_success_seconds_count",
            bad.to_vec(),
            0.0,
        ),
        (
            "repeatd_attempts_total",
            vec![("repeater", "idle"), ("outcome", "success")],
            0.0,
        ),
        (
            "repeatd_plugin_traps_total",
            vec![("plugin", "trapping")],
            1.0,
        ),
        (
            "repeatd_plugin_timeouts_total",
            vec![("plugin", "trapping")],
            0.0,
        ),
        (
            "repeatd_plugin_timeouts_total",
            vec![("plugin", "looping")],
            1.0,
        ),
        (
            "repeatd_plugin_traps_total",
            vec![("plugin", "looping")],
            0.0,
        ),
        (
            "repeatd_plugin_reloads_total",
            vec![("plugin", "trapping")],
            1.0,
        ),
        (
            "repeatd_plugin_reloads_total",
            vec![("plugin", "form-xml")],
            0.0,
        ),
        (
            "repeatd_plugin_call_duration_seconds_count",
            vec![("plugin", "trapping")],
            1.0,
        ),
        (
            "repeatd_plugin_call_duration_seconds_count",
            vec![("plugin", "form-xml")],
            2.0,
        ),
        ("repeatd_forms_accepted_total", vec![], 1.0),
        ("repeatd_emails_sent_total", vec![], 1.0),
    ] {
        assert_eq!(
            after.value(series, &labels),
            Some(value),
            "{series} {labels:?}"
        );
    }
    assert!(after.expect("repeatd_emails_failed_total", &[]) >= 1.0);
    for (family, kind) in [
        ("repeatd_send_duration_seconds", "histogram"),
        ("repeatd_registration_to_success_seconds", "histogram"),
        ("repeatd_plugin_call_duration_seconds", "histogram"),
        ("repeatd_attempts", "counter"),
        ("repeatd_plugin_traps", "counter"),
        ("repeatd_plugin_timeouts", "counter"),
        ("repeatd_plugin_reloads", "counter"),
        ("repeatd_emails_sent", "counter"),
        ("repeatd_emails_failed", "counter"),
        ("repeatd_records", "gauge"),
    ] {
        assert_eq!(
            after.families.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    // Buckets reach well past the 30 s default timeout, and days for a
    // record's wait under back-off.
    assert!(after.largest_bucket("repeatd_send_duration_seconds") >= 300.0);
    assert!(after.largest_bucket("repeatd_registration_to_success_seconds") >= 7.0 * 86_400.0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_metrics_need_no_token_and_a_new_repeater_starts_at_zero() {
    let mut config = String::from("[metrics]\npublic = true\n\n");
    config.push_str(&demo_config(&[("remote", "http://127.0.0.1:9/in")], ""));
    let gateway = Gateway::start(&config).await;
    let (status, body) = gateway
        .api(
            "POST",
            "/api/v1/domains/demo/repeaters",
            Some(serde_json::json!({"name": "added", "kind": "form", "connection": "remote", "format": "form-xml"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let response = gateway
        .http()
        .get(gateway.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let parsed = parse_with_prometheus(&response.text().await.unwrap());
    let added = [("domain", "demo"), ("repeater", "added")];
    for state in ["pending", "failed", "succeeded"] {
        let mut labels = added.to_vec();
        labels.push(("state", state));
        assert_eq!(
            parsed.value("repeatd_records", &labels),
            Some(0.0),
            "{state}"
        );
    }
    assert_eq!(
        parsed.value("repeatd_send_duration_seconds_count", &added),
        Some(0.0)
    );
    gateway.stop().await;
}
