//! `repeatd migrate` end to end: a gateway on the embedded redb store
//! delivers for a while and stops; the built binary copies its data
//! directory into a fresh PostgreSQL database; a gateway on that database,
//! over the same data directory (its secret.key), carries on: the same
//! records with the same ids, states and attempts, the same forms and cases
//! in the Data API, the connection made through the API still opens its
//! sealed password, and the records still queued are delivered.
//!
//! Needs `REPEATD_TEST_PG_URL`, and the `[store]` config with the
//! PostgreSQL backend behind it.

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use repeatd_tests::remote::{Remote, Reply};
use repeatd_tests::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const FAST_RETRY: &str = "retry = { min_wait = \"100ms\", factor = 1.0, max_attempts = 3 }";
/// The password of the connection made through the API, sealed in the store.
const PASSWORD: &str = "s3cret: pw";

/// Domain demo with a Data API token, a remote that accepts (`/up`) and one
/// that refuses the payload (`/reject`), a form repeater on each; `store`
/// is the `[store]` table.
fn config(remote: &Remote, store: &str) -> String {
    let repeaters = format!(
        "{}{}",
        repeater("to-up", "form", "up", "form-xml", FAST_RETRY),
        repeater("to-reject", "form", "reject", "form-xml", FAST_RETRY)
    );
    let mut text = demo_config(
        &[
            ("up", &remote.url("/up")),
            ("reject", &remote.url("/reject")),
        ],
        &repeaters,
    );
    text.push_str("\n[[api_tokens]]\ndomain = \"demo\"\ntoken = \"demo-token\"\n");
    text.push_str(store);
    text
}

/// Every record of the domain with its attempts, by id.
async fn records(gateway: &Gateway) -> Vec<Value> {
    let mut full = Vec::new();
    for record in gateway.records("demo", "").await {
        let id = record["id"].as_str().expect("record id");
        full.push(gateway.record("demo", id).await);
    }
    full.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    full
}

/// The objects of a Data API listing, with the gateway's address taken out
/// (the restarted gateway listens on another port).
async fn data_api(gateway: &Gateway, path: &str) -> String {
    let response = gateway
        .http()
        .get(gateway.url(path))
        .header("authorization", "ApiKey danny:demo-token")
        .send()
        .await
        .expect("calling the Data API");
    assert_eq!(response.status().as_u16(), 200, "{path}");
    let text = response.text().await.expect("a listing");
    let body: Value = serde_json::from_str(&text).expect("a JSON listing");
    let objects = &body["objects"];
    assert!(objects.is_array(), "{path}: {body}");
    objects
        .to_string()
        .replace(&gateway.addr.to_string(), "GATEWAY")
}

/// Runs the built `repeatd migrate` with `args`, the database URL in the
/// environment variable `REPEATD_MIGRATE_TO`.
async fn run_migrate(args: Vec<String>, url: &str) -> Output {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(repeatd_binary())
            .arg("migrate")
            .args(args)
            .env("REPEATD_MIGRATE_TO", url)
            .env("RUST_LOG", "warn")
            .output()
            .expect("running repeatd migrate")
    })
    .await
    .expect("the migrate process")
}

/// The count `repeatd migrate` printed for `kind` (`records: 9`).
fn printed_count(stdout: &str, kind: &str) -> u64 {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{kind}: ")))
        .unwrap_or_else(|| panic!("no count of {kind} in: {stdout}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("the count of {kind}: {e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_store_carries_on_in_postgres() {
    let expected_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("ann:{PASSWORD}"))
    );
    let down_is_fixed = Arc::new(AtomicBool::new(false));
    let fixed = down_is_fixed.clone();
    let remote = Remote::start(move |request| match request.path.as_str() {
        "/up" => Reply::ok(),
        "/reject" => Reply::status(400),
        "/down" if request.header("authorization") != Some(expected_basic.as_str()) => {
            Reply::status(401)
        }
        "/down" if fixed.load(Ordering::SeqCst) => Reply::ok(),
        _ => Reply::status(503),
    })
    .await;

    // On redb (also when the suites run on PostgreSQL).
    let dir = Arc::new(TempDir::new("migrate"));
    let gateway = Gateway::start_in(
        dir.clone(),
        &config(&remote, "\n[store]\nbackend = \"redb\"\n"),
    )
    .await;
    // A connection and a repeater made through the API: objects in the
    // store, the password sealed with the data directory's key. The
    // repeater waits an hour after a failure, so its records stay queued.
    let (status, body) = gateway
        .api(
            "POST",
            "/api/v1/domains/demo/connections",
            Some(json!({"name": "down", "url": remote.url("/down"),
                        "auth": {"type": "basic", "username": "ann", "password": PASSWORD}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = gateway
        .api(
            "POST",
            "/api/v1/domains/demo/repeaters",
            Some(json!({"name": "to-down", "kind": "form", "connection": "down", "format": "form-xml",
                        "retry": {"min_wait": "1h", "max_wait": "1h", "factor": 1.0, "max_attempts": 5}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for n in 1..=3 {
        let form = generated_form(
            &format!("mig-form-{n}"),
            &format!("mig-case-{n}"),
            "household",
        );
        let (status, body) = gateway.submit("demo", &form, None).await;
        assert_eq!(status, 201, "{body}");
    }
    settled_on(&gateway, "to-up", 3, "succeeded").await;
    settled_on(&gateway, "to-reject", 3, "rejected").await;
    eventually("to-down's records to fail once each", WAIT, || async {
        let records = gateway.records("demo", "repeater=to-down").await;
        if records.len() == 3 && records.iter().all(|r| r["n_attempts"] == 1) {
            Ok(())
        } else {
            Err(format!("{records:#?}"))
        }
    })
    .await;
    let records_before = records(&gateway).await;
    let forms_before = data_api(&gateway, "/a/demo/api/v0.5/form/").await;
    let cases_before = data_api(&gateway, "/a/demo/api/v0.5/case/").await;
    gateway.stop().await;

    // Migrate with the built binary; the URL only in the environment.
    let data_dir = dir.path().join("data");
    let url = pg::fresh_database_url().await;
    let from = vec![
        "--from".to_owned(),
        data_dir.display().to_string(),
        "--to-env".to_owned(),
        "REPEATD_MIGRATE_TO".to_owned(),
    ];
    let output = run_migrate(from.clone(), &url).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "migrate failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(printed_count(&stdout, "forms"), 3, "{stdout}");
    assert_eq!(printed_count(&stdout, "cases"), 3, "{stdout}");
    assert_eq!(printed_count(&stdout, "records"), 9, "{stdout}");
    assert_eq!(printed_count(&stdout, "attempts"), 9, "{stdout}");
    assert!(printed_count(&stdout, "objects") >= 2, "{stdout}");
    assert_eq!(printed_count(&stdout, "notifications"), 0, "{stdout}");

    // A second run finds the database full and changes nothing; a
    // directory without a store is refused before any database is reached.
    let again = run_migrate(from, &url).await;
    let again_stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "a second migrate must fail");
    assert!(again_stderr.contains("is not empty"), "{again_stderr}");
    assert!(
        !again_stderr.contains(":repeatd@"),
        "no password: {again_stderr}"
    );
    let empty = TempDir::new("migrate-none");
    let none = run_migrate(
        vec![
            "--from".to_owned(),
            empty.path().display().to_string(),
            "--to".to_owned(),
            "postgres://u:p@127.0.0.1:1/none".to_owned(),
        ],
        &url,
    )
    .await;
    let none_stderr = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success());
    assert!(
        none_stderr.contains("holds no repeatd.redb"),
        "{none_stderr}"
    );

    // On PostgreSQL, over the same data directory.
    let gateway = Gateway::start_in(dir.clone(), &config(&remote, &pg::store_table(&url))).await;
    assert_eq!(records(&gateway).await, records_before);
    assert_eq!(
        data_api(&gateway, "/a/demo/api/v0.5/form/").await,
        forms_before
    );
    assert_eq!(
        data_api(&gateway, "/a/demo/api/v0.5/case/").await,
        cases_before
    );

    // The queued records go out once resent, through the sealed password.
    down_is_fixed.store(true, Ordering::SeqCst);
    let queued: Vec<String> = records_before
        .iter()
        .filter(|record| record["repeater"] == "to-down")
        .map(|record| record["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(queued.len(), 3);
    for id in &queued {
        let (status, body) = gateway
            .api(
                "POST",
                &format!("/api/v1/domains/demo/records/{id}/resend"),
                None,
            )
            .await;
        assert_eq!(status, 200, "resend {id}: {body}");
    }
    settled_on(&gateway, "to-down", 3, "succeeded").await;
    let delivered = remote.requests("/down");
    for id in &queued {
        let arrivals: Vec<_> = delivered
            .iter()
            .filter(|r| r.header("idempotency-key") == Some(id.as_str()))
            .collect();
        assert_eq!(
            arrivals.len(),
            2,
            "record {id}: once failed, once delivered"
        );
        let record = gateway.record("demo", id).await;
        assert_eq!(record["n_attempts"], 2, "{record}");
    }

    // New records carry on the sequence, under the same nonce.
    let form = generated_form("mig-form-4", "mig-case-4", "household");
    let (status, body) = gateway.submit("demo", &form, None).await;
    assert_eq!(status, 201, "{body}");
    settled_on(&gateway, "to-up", 4, "succeeded").await;
    let old_ids: Vec<&str> = records_before
        .iter()
        .map(|record| record["id"].as_str().expect("id"))
        .collect();
    let nonce = &old_ids[0][..16];
    for record in gateway.records("demo", "").await {
        let id = record["id"].as_str().expect("id");
        assert_eq!(&id[..16], nonce, "{id}");
        if !old_ids.contains(&id) {
            assert!(
                old_ids.iter().all(|old| *old < id),
                "a new record's id {id} follows the migrated ones"
            );
        }
    }
    gateway.stop().await;
}

/// Waits until `repeater` has `n` records, all in `state`.
async fn settled_on(gateway: &Gateway, repeater: &str, n: usize, state: &str) {
    let records = gateway
        .wait_records("demo", &format!("repeater={repeater}"), n, state, WAIT)
        .await;
    assert!(
        records.len() == n && records.iter().all(|r| r["state"] == state),
        "{repeater}: expected {n} {state}, found {records:#?}"
    );
}
