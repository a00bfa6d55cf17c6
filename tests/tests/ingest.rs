//! Issue 3, "Form submission and the case store", end to end: every test form
//! of `tests/fixtures/forms` submitted raw and as OpenRosa multipart builds the
//! case states CommCare HQ builds (`commcare_fixtures.rs` checks HQ's own
//! fixtures the same way); duplicates and bad input leave no trace; device logs
//! are kept but not forwarded; acknowledged forms survive a `kill -9` of the
//! real binary and are delivered after the restart; group commit holds under load.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use repeatd_tests::fixture_session::*;
use repeatd_tests::*;
use serde_json::{Value, json};

// ---- the case states the project's forms build ---------------------------------------

/// `tests/fixtures/case_states.json` says, form by form, what every case must
/// look like afterwards (the format: `fixture_session::check_case_states`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_test_form_raw_and_multipart_builds_commcare_case_states() {
    check_case_states(&fixture(""), &fixture("case_states.json")).await;
}

// ---- duplicates ------------------------------------------------------------------

const HOUSEHOLD: &str = "hh-7d2c4a10-3e5f-4b6a-9c8d-0e1f2a3b4c5d";
const CHIDI: &str = "mb-1c9a8b7d-6e5f-4a3b-2c1d-0e9f8a7b6c51";
const ADA: &str = "mb-2d0b9c8e-7f6a-4b5c-3d2e-1f0a9b8c7d62";
const REGISTER: &str = "0f6c2d1e-8a4b-4c3d-9e2f-1a0b3c4d5e61";
const MEMBERS: &str = "1a7e3f20-9b5c-4d4e-8f30-2b1c4d5e6f72";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_form_id_is_answered_201_and_not_processed_again() {
    let receiver = Receiver::start().await;
    let gateway = Gateway::start(&project("demo", &receiver, "")).await;
    let mut session = Session::new(&gateway, &receiver, "demo", Mode::Raw, &fixture("forms"));
    session
        .submit("household_register.xml", Some(REGISTER), &[HOUSEHOLD])
        .await;
    session
        .submit(
            "household_members.xml",
            Some(MEMBERS),
            &[HOUSEHOLD, CHIDI, ADA],
        )
        .await;
    let records_before = gateway.records("demo", "").await;
    let mut cases_before = Vec::new();
    for case_id in [HOUSEHOLD, CHIDI, ADA] {
        cases_before.push(get_case(&gateway, "demo", case_id).await.1);
    }
    let (_, form_before) = get_form(&gateway, "demo", REGISTER).await;

    // The same instanceID again: raw, as multipart, and with different content
    // (a changed update and a new case) — none of it is applied. (The same
    // XML with a new attachment is a later part of a split submission:
    // tests/tests/openrosa.rs.)
    let reg1 = String::from_utf8(read_fixture("forms/household_register.xml")).unwrap();
    let altered = reg1
        .replace("<n1:visit_kind>register</n1:visit_kind>", "<n1:visit_kind>changed</n1:visit_kind>")
        .replace(
            "<consent>yes</consent>",
            "<n9:case xmlns:n9=\"http://commcarehq.org/case/transaction/v2\" case_id=\"sneaked-in\"><n9:create><n9:case_type>x</n9:case_type></n9:create></n9:case><consent>yes</consent>",
        );
    assert_ne!(altered, reg1);
    let (multipart_body, multipart_type) = multipart(&[(
        "xml_submission_file",
        "xform.xml",
        "text/xml",
        reg1.as_bytes(),
    )]);
    let client = reqwest::Client::new();
    let url = gateway.url("/a/demo/receiver");
    let attempts = [
        (reg1.clone().into_bytes(), "text/xml".to_owned()),
        (multipart_body, multipart_type),
        (altered.into_bytes(), "application/xml".to_owned()),
    ];
    for (n, (body, content_type)) in attempts.into_iter().enumerate() {
        let reply = post(&client, &url, body, &content_type).await;
        assert_eq!(reply.status, 201, "duplicate {n}: {}", reply.body);
        assert!(reply.body.starts_with(OPENROSA_SUCCESS), "{}", reply.body);
        assert!(
            reply.body.contains("already received"),
            "the answer says it is a duplicate: {}",
            reply.body
        );
        let (status, form) = get_form(&gateway, "demo", REGISTER).await;
        assert_eq!(status, 200);
        assert_eq!(form["n_duplicates"], n + 1, "{form}");
        assert!(
            is_timestamp(form["last_duplicate_on"].as_str().unwrap_or_default()),
            "{form}"
        );
    }

    let (_, form_after) = get_form(&gateway, "demo", REGISTER).await;
    for field in ["received_on", "case_ids", "attachments", "xmlns", "user_id"] {
        assert_eq!(
            form_after[field], form_before[field],
            "the original form's {field} is kept"
        );
    }
    assert_eq!(
        gateway.records("demo", "").await,
        records_before,
        "no new records"
    );
    for (case_id, before) in [HOUSEHOLD, CHIDI, ADA].iter().zip(&cases_before) {
        let (_, after) = get_case(&gateway, "demo", case_id).await;
        assert_eq!(&after, before, "case {case_id} is unchanged");
    }
    assert_eq!(get_case(&gateway, "demo", "sneaked-in").await.0, 404);
    // Nothing more reaches the remote: the records are all settled, and the
    // receiver saw exactly the two original forms.
    assert_eq!(receiver.requests("/demo/forms").len(), 2);
    gateway.stop().await;
}

// ---- bad input -------------------------------------------------------------------

const MAX_BODY_BYTES: usize = 4_000;

/// A well-formed form with an instance id that updates `existing` and creates `new-{form_id}`.
fn form_touching_cases(form_id: &str, extra: &str) -> String {
    format!(
        r#"<?xml version='1.0' ?>
<data xmlns="http://openrosa.org/formdesigner/bad-input">
  <n0:case xmlns:n0="http://commcarehq.org/case/transaction/v2" case_id="existing" date_modified="2024-02-01T10:00:00.000000Z" user_id="u2"><n0:update><n0:visit>{form_id}</n0:visit></n0:update></n0:case>
  <n0:case xmlns:n0="http://commcarehq.org/case/transaction/v2" case_id="new-{form_id}" date_modified="2024-02-01T10:00:00.000000Z" user_id="u2"><n0:create><n0:case_type>t</n0:case_type><n0:case_name>n</n0:case_name></n0:create></n0:case>
  {extra}
  <n1:meta xmlns:n1="http://openrosa.org/jr/xforms"><n1:userID>u2</n1:userID><n1:instanceID>{form_id}</n1:instanceID></n1:meta>
</data>"#
    )
}

/// One refused submission: where it goes, what it is, what the answer must say.
struct BadSubmission {
    what: &'static str,
    target: String,
    body: Vec<u8>,
    content_type: String,
    status: u16,
    /// Phrases the message must contain.
    phrases: Vec<&'static str>,
    /// The form id it carries ("" for none): it must not be stored.
    form_id: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_naming_the_problem_and_leaves_no_trace() {
    let receiver = Receiver::start().await;
    let config = format!(
        "[ingest]\nmax_body_bytes = {MAX_BODY_BYTES}\n{}",
        project("demo", &receiver, "")
    );
    let gateway = Gateway::start(&config).await;
    let client = reqwest::Client::new();
    let url = gateway.url("/a/demo/receiver");

    // HEAD: what OpenRosa clients ask before submitting (as a submitter;
    // `openrosa.rs` has the refusals).
    for path in ["/a/demo/receiver", "/a/demo/receiver/some-app"] {
        let response = client
            .head(gateway.url(path))
            .basic_auth("danny", Some("pw"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 204, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            header("x-openrosa-version").as_deref(),
            Some("1.0"),
            "{path}"
        );
        assert_eq!(
            header("x-openrosa-accept-content-length"),
            Some(MAX_BODY_BYTES.to_string()),
            "{path}"
        );
    }

    // One good form first: the case that bad forms would change, and the records.
    let good = form_touching_cases("good", "");
    let reply = post(&client, &url, good.clone().into_bytes(), "text/xml").await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let existing_before = get_case(&gateway, "demo", "existing").await.1;
    assert_eq!(existing_before["properties"]["visit"], "good");
    let records_before = gateway.wait_records("demo", "", 3, "succeeded", WAIT).await;
    assert_eq!(
        records_before.len(),
        3,
        "one form and two case records: {records_before:?}"
    );

    let padded = form_touching_cases(
        "bad-too-big",
        &format!("<notes>{}</notes>", "x".repeat(MAX_BODY_BYTES)),
    );
    assert!(padded.len() > MAX_BODY_BYTES);
    let just_fits = form_touching_cases(
        "fits",
        &format!(
            "<notes>{}</notes>",
            "x".repeat(MAX_BODY_BYTES - form_touching_cases("fits", "<notes></notes>").len())
        ),
    );
    assert_eq!(just_fits.len(), MAX_BODY_BYTES);
    let (no_xml_part, no_xml_part_type) = multipart(&[
        (
            "xml_file",
            "xform.xml",
            "text/xml",
            form_touching_cases("bad-no-xml-part", "").as_bytes(),
        ),
        ("a.jpg", "a.jpg", "image/jpeg", &photo(100)),
    ]);
    let (broken_xml_part, broken_xml_part_type) = multipart(&[(
        "xml_submission_file",
        "xform.xml",
        "text/xml",
        form_touching_cases("bad-broken-part", "<open>").as_bytes(),
    )]);
    let not_well_formed = "<?xml version='1.0' ?>\n<data xmlns=\"urn:bad\">\n  <meta><instanceID>bad-not-well-formed</instanceID></meta>\n  <item>open\n</data>\n";
    let unknown_encoding = form_touching_cases("bad-unknown-encoding", "").replacen(
        "<?xml version='1.0' ?>",
        "<?xml version='1.0' encoding='klingon' ?>",
        1,
    );
    let no_case_id = form_touching_cases(
        "bad-no-case-id",
        r#"<n0:case xmlns:n0="http://commcarehq.org/case/transaction/v2" date_modified="2024-02-01T10:00:00.000000Z" user_id="u2"><n0:close/></n0:case>"#,
    );

    let cases = vec![
        BadSubmission {
            what: "not XML",
            target: url.clone(),
            body: b"name=Ad&instanceID=bad-not-xml".to_vec(),
            content_type: "text/xml".into(),
            status: 400,
            phrases: vec!["not well-formed", "line 1, column 1"],
            form_id: "bad-not-xml",
        },
        BadSubmission {
            what: "not well-formed",
            target: url.clone(),
            body: not_well_formed.as_bytes().to_vec(),
            content_type: "text/xml".into(),
            status: 400,
            phrases: vec!["not well-formed XML at line 5, column 1", "</data>"],
            form_id: "bad-not-well-formed",
        },
        BadSubmission {
            what: "empty body",
            target: url.clone(),
            body: Vec::new(),
            content_type: "text/xml".into(),
            status: 400,
            phrases: vec!["empty body"],
            form_id: "",
        },
        BadSubmission {
            what: "whitespace only",
            target: url.clone(),
            body: b"  \r\n\t ".to_vec(),
            content_type: "text/xml".into(),
            status: 400,
            phrases: vec!["empty body"],
            form_id: "",
        },
        BadSubmission {
            what: "no root",
            target: url.clone(),
            body: b"<?xml version='1.0' ?>\n<!-- bad-no-root -->\n".to_vec(),
            content_type: "text/xml".into(),
            status: 400,
            phrases: vec!["no root element"],
            form_id: "",
        },
        BadSubmission {
            what: "unknown XML encoding",
            target: url.clone(),
            body: unknown_encoding.into_bytes(),
            content_type: "text/xml".into(),
            status: 400,
            phrases: vec!["unknown XML encoding \"klingon\""],
            form_id: "bad-unknown-encoding",
        },
        BadSubmission {
            what: "case block without case_id",
            target: url.clone(),
            body: no_case_id.into_bytes(),
            content_type: "text/xml".into(),
            status: 400,
            phrases: vec!["case block 3 has no case_id"],
            form_id: "bad-no-case-id",
        },
        BadSubmission {
            what: "body over the size limit",
            target: url.clone(),
            body: padded.into_bytes(),
            content_type: "text/xml".into(),
            status: 413,
            phrases: vec!["larger than the limit of 4000 bytes"],
            form_id: "bad-too-big",
        },
        BadSubmission {
            what: "form-encoded",
            target: url.clone(),
            body: form_touching_cases("bad-form-encoded", "").into_bytes(),
            content_type: "application/x-www-form-urlencoded".into(),
            status: 415,
            phrases: vec![
                "application/x-www-form-urlencoded",
                "text/xml",
                "multipart/form-data",
            ],
            form_id: "bad-form-encoded",
        },
        BadSubmission {
            what: "multipart without xml_submission_file",
            target: url.clone(),
            body: no_xml_part,
            content_type: no_xml_part_type,
            status: 400,
            phrases: vec!["no part named xml_submission_file"],
            form_id: "bad-no-xml-part",
        },
        BadSubmission {
            what: "multipart whose XML is not well-formed",
            target: url.clone(),
            body: broken_xml_part,
            content_type: broken_xml_part_type,
            status: 400,
            phrases: vec!["not well-formed XML at line 7"],
            form_id: "bad-broken-part",
        },
        BadSubmission {
            what: "multipart without a boundary",
            target: url.clone(),
            body: form_touching_cases("bad-no-boundary", "").into_bytes(),
            content_type: "multipart/form-data".into(),
            status: 400,
            phrases: vec!["boundary"],
            form_id: "bad-no-boundary",
        },
        BadSubmission {
            what: "unknown domain",
            target: gateway.url("/a/nowhere/receiver"),
            body: form_touching_cases("bad-unknown-domain", "").into_bytes(),
            content_type: "text/xml".into(),
            status: 404,
            phrases: vec!["no project space \"nowhere\""],
            form_id: "bad-unknown-domain",
        },
    ];

    for BadSubmission {
        what,
        target,
        body,
        content_type,
        status,
        phrases,
        form_id,
    } in cases
    {
        let reply = post(&client, &target, body, &content_type).await;
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert!(
            reply.body.starts_with(OPENROSA_ERROR),
            "{what}: an OpenRosa error: {}",
            reply.body
        );
        assert_eq!(reply.header("x-openrosa-version"), Some("1.0"), "{what}");
        assert_eq!(
            reply.header("x-openrosa-accept-content-length"),
            Some(MAX_BODY_BYTES.to_string().as_str()),
            "{what}"
        );
        for phrase in phrases {
            let phrase = phrase
                .replace('"', "&quot;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            assert!(
                reply.body.contains(&phrase),
                "{what}: the message names the problem ({phrase}): {}",
                reply.body
            );
        }
        if !form_id.is_empty() {
            let (status, body) = get_form(&gateway, "demo", form_id).await;
            assert_eq!(status, 404, "{what}: no form {form_id}: {body}");
            let (status, body) = get_case(&gateway, "demo", &format!("new-{form_id}")).await;
            assert_eq!(status, 404, "{what}: no new case: {body}");
        }
        assert_eq!(
            get_case(&gateway, "demo", "existing").await.1,
            existing_before,
            "{what}: no case change"
        );
        assert_eq!(
            gateway.records("demo", "").await,
            records_before,
            "{what}: nothing queued"
        );
    }

    // The limit is the limit: a body of exactly max_body_bytes is accepted.
    let reply = post(&client, &url, just_fits.into_bytes(), "text/xml").await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(
        get_case(&gateway, "demo", "existing").await.1["properties"]["visit"],
        "fits"
    );
    assert_eq!(gateway.records("demo", "").await.len(), 6);
    gateway.stop().await;
}

// ---- device reports ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_reports_are_stored_but_never_forwarded() {
    let receiver = Receiver::start().await;
    let stubs = "\n[[repeaters]]\ndomain = \"demo\"\nname = \"stubs\"\nkind = \"form-stub\"\nconnection = \"forms-rx\"\nformat = \"form-stub\"\n";
    let gateway = Gateway::start(&format!("{}{stubs}", project("demo", &receiver, ""))).await;
    let client = reqwest::Client::new();
    // A device log, with a case block HQ would never look for.
    let report = String::from_utf8(read_fixture("device_report.xml")).unwrap();
    for (n, mode) in [Mode::Raw, Mode::Multipart].into_iter().enumerate() {
        let xml = report.replace("device-log-1", &format!("device-log-{n}"));
        let (body, content_type) = match mode {
            Mode::Raw => (xml.into_bytes(), "text/xml".to_owned()),
            Mode::Multipart => {
                multipart(&[("xml_submission_file", "log.xml", "text/xml", xml.as_bytes())])
            }
        };
        let reply = post(
            &client,
            &gateway.url("/a/demo/receiver"),
            body,
            &content_type,
        )
        .await;
        assert_eq!(reply.status, 201, "{mode:?}: {}", reply.body);
        assert!(reply.body.starts_with(OPENROSA_SUCCESS), "{}", reply.body);
        let (status, form) = get_form(&gateway, "demo", &format!("device-log-{n}")).await;
        assert_eq!(status, 200, "{mode:?}: the device log is stored: {form}");
        assert_eq!(form["is_device_report"], true);
        assert_eq!(form["xmlns"], "http://code.javarosa.org/devicereport");
        assert_eq!(form["case_ids"], json!([]));
    }
    assert_eq!(
        get_case(&gateway, "demo", "from-a-device-log").await.0,
        404,
        "no case from a device log"
    );
    assert!(
        gateway.records("demo", "").await.is_empty(),
        "no record for a device log"
    );

    // An ordinary form right after is forwarded: the repeaters were live.
    let (status, body) = gateway
        .submit("demo", &read_fixture("forms/plain_meta.xml"), None)
        .await;
    assert_eq!(status, 201, "{body}");
    let records = gateway.wait_records("demo", "", 3, "succeeded", WAIT).await;
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| !r["payload_id"].as_str().unwrap().starts_with("device-log"))
    );
    assert_eq!(
        receiver.requests("/demo/forms").len(),
        2,
        "the form and its stub, no device log"
    );
    gateway.stop().await;
}

// ---- concurrency ---------------------------------------------------------------------

/// Submits `forms` (form id, body) from `n_clients` concurrent clients;
/// returns the ids answered 201 and every other answer.
async fn submit_concurrently(
    url: String,
    forms: Vec<(String, Vec<u8>)>,
    n_clients: usize,
    on_accept: Arc<dyn Fn(usize) + Send + Sync>,
) -> (Vec<String>, Vec<String>) {
    let forms = Arc::new(forms);
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..n_clients {
        let (forms, next, accepted, refused, url, on_accept) = (
            forms.clone(),
            next.clone(),
            accepted.clone(),
            refused.clone(),
            url.clone(),
            on_accept.clone(),
        );
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let Some((form_id, body)) = forms.get(n) else {
                    break;
                };
                let answer = client
                    .post(&url)
                    .basic_auth("danny", Some("pw"))
                    .header("content-type", "text/xml")
                    .body(body.clone())
                    .send()
                    .await;
                match answer {
                    Ok(response) if response.status().as_u16() == 201 => {
                        let n_accepted = {
                            let mut accepted = accepted.lock().unwrap();
                            accepted.push(form_id.clone());
                            accepted.len()
                        };
                        on_accept(n_accepted);
                    }
                    Ok(response) => {
                        let status = response.status();
                        let text = response.text().await.unwrap_or_default();
                        refused
                            .lock()
                            .unwrap()
                            .push(format!("{form_id}: {status} {text}"));
                    }
                    Err(error) => refused.lock().unwrap().push(format!("{form_id}: {error}")),
                }
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a submitting client");
    }
    let accepted = accepted.lock().unwrap().clone();
    let refused = refused.lock().unwrap().clone();
    (accepted, refused)
}

fn generated_forms(label: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let form_id = format!("{label}-form-{i:04}");
            let body = generated_form(&form_id, &format!("{label}-case-{i:04}"), "load");
            (form_id, body)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_forms_from_32_clients_are_all_stored() {
    const N: usize = 500;
    let receiver = Receiver::start().await;
    // Paused repeaters: the records stay pending and the test measures ingest.
    let gateway = Gateway::start(&project("demo", &receiver, "paused = true")).await;
    let started = Instant::now();
    let (accepted, refused) = submit_concurrently(
        gateway.url("/a/demo/receiver"),
        generated_forms("load", N),
        32,
        Arc::new(|_| {}),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(refused.is_empty(), "every form gets 201: {refused:?}");
    assert_eq!(accepted.len(), N);
    eprintln!("{N} forms from 32 clients in {elapsed:?}");

    let records = gateway.records("demo", "").await;
    assert_eq!(
        records.len(),
        2 * N,
        "one form and one case record per form"
    );
    assert!(
        records.iter().all(|r| r["state"] == "pending"),
        "paused repeaters send nothing"
    );
    let form_payloads: BTreeSet<&str> = records
        .iter()
        .filter(|r| r["repeater"] == "forms")
        .map(|r| r["payload_id"].as_str().unwrap())
        .collect();
    let case_payloads: BTreeSet<&str> = records
        .iter()
        .filter(|r| r["repeater"] == "cases")
        .map(|r| r["payload_id"].as_str().unwrap())
        .collect();
    assert_eq!(form_payloads.len(), N);
    assert_eq!(case_payloads.len(), N);
    for (form_id, _) in generated_forms("load", N) {
        assert!(form_payloads.contains(form_id.as_str()), "{form_id}");
        let case_id = form_id.replace("-form-", "-case-");
        assert!(case_payloads.contains(case_id.as_str()), "{case_id}");
        let (status, form) = get_form(&gateway, "demo", &form_id).await;
        assert_eq!(status, 200, "{form_id}: {form}");
        let (status, case) = get_case(&gateway, "demo", &case_id).await;
        assert_eq!(status, 200, "{case_id}: {case}");
        assert_eq!(case["xform_ids"], json!([form_id]));
    }
    assert!(receiver.requests("/demo/forms").is_empty());
    gateway.stop().await;
}

// ---- crash safety: kill -9 of the real binary ----------------------------------------

fn instance_id(xml: &str) -> Option<&str> {
    let start = xml.find("<n1:instanceID>")? + "<n1:instanceID>".len();
    let end = xml[start..].find("</n1:instanceID>")? + start;
    Some(&xml[start..end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_forms_survive_kill_9_and_are_delivered_after_restart() {
    const N: usize = 200;
    const SUBMITTED: usize = 260;
    let dir = TempDir::new("crash");
    let receiver = Receiver::start().await;
    // Until the crash the remote fails every request; nothing can succeed.
    receiver.plan("/demo/forms", vec![Answer::Status(503)]);
    receiver.plan("/demo/cases", vec![Answer::Status(503)]);
    let config_path = dir.path().join("repeatd.toml");
    let config = format!(
        "{}\n[delivery]\nallowed_networks = [\"127.0.0.0/8\"]\n{}",
        config_head(dir.path()),
        project(
            "demo",
            &receiver,
            "retry = { max_attempts = 1000, min_wait = \"100ms\", factor = 2.0, max_wait = \"1s\" }"
        )
    );
    std::fs::write(&config_path, config).unwrap();
    let launch = Launch::new(&config_path).log_level("warn");
    let mut process = launch.start().await.expect("starting repeatd");

    // Submit from 16 clients; kill -9 as soon as N forms are acknowledged,
    // with more submissions still under way.
    let forms = generated_forms("crash", SUBMITTED);
    let bodies: HashMap<String, Vec<u8>> = forms.iter().cloned().collect();
    let (enough_tx, enough_rx) = tokio::sync::oneshot::channel::<()>();
    let enough_tx = Mutex::new(Some(enough_tx));
    let on_accept: Arc<dyn Fn(usize) + Send + Sync> = Arc::new(move |n_accepted| {
        if n_accepted >= N
            && let Some(tx) = enough_tx.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    });
    let submitting = tokio::spawn(submit_concurrently(
        process.url("/a/demo/receiver"),
        forms,
        16,
        on_accept,
    ));
    let _ = enough_rx.await;
    process.kill();
    let (acknowledged, refused) = submitting.await.unwrap();
    eprintln!(
        "{} forms acknowledged before kill -9, {} not",
        acknowledged.len(),
        refused.len()
    );
    assert!(acknowledged.len() >= N, "{refused:?}");
    assert!(
        receiver.requests("/demo/forms").len() + receiver.requests("/demo/cases").len() > 0,
        "the gateway was trying to send before the crash"
    );

    // The remote recovers; the gateway restarts over the same data.
    let seen_before_restart = (
        receiver.requests("/demo/forms").len(),
        receiver.requests("/demo/cases").len(),
    );
    receiver.plan("/demo/forms", vec![Answer::Status(200)]);
    receiver.plan("/demo/cases", vec![Answer::Status(200)]);
    let process = launch.start().await.expect("starting repeatd again");

    // Every acknowledged form is stored with its case and both records; a form
    // that was under way at the kill is either all there or not at all.
    let records = process.records("demo", "").await;
    let mut per_payload: HashMap<String, usize> = HashMap::new();
    for record in &records {
        *per_payload
            .entry(record["payload_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let mut stored = Vec::new();
    for (form_id, _) in generated_forms("crash", SUBMITTED) {
        let case_id = form_id.replace("-form-", "-case-");
        let (form_status, _) = process
            .get(&format!("/api/v1/domains/demo/forms/{form_id}"))
            .await;
        let (case_status, case) = process
            .get(&format!("/api/v1/domains/demo/cases/{case_id}"))
            .await;
        let n_records = per_payload.get(&form_id).copied().unwrap_or(0)
            + per_payload.get(&case_id).copied().unwrap_or(0);
        if acknowledged.contains(&form_id) {
            assert_eq!(form_status, 200, "acknowledged form {form_id} is stored");
            assert_eq!(
                case_status, 200,
                "the case of acknowledged form {form_id} is stored"
            );
            assert_eq!(case["xform_ids"], json!([form_id]));
            assert_eq!(
                n_records, 2,
                "both records of acknowledged form {form_id} are kept"
            );
            stored.push(form_id);
        } else if form_status == 200 {
            assert_eq!(
                (case_status, n_records),
                (200, 2),
                "form {form_id} is stored whole"
            );
            stored.push(form_id);
        } else {
            assert_eq!(
                (case_status, n_records),
                (404, 0),
                "form {form_id} left no trace"
            );
        }
    }
    assert_eq!(records.len(), 2 * stored.len(), "no stray records");
    eprintln!(
        "after the restart: {} forms stored, {} of them committed but not acknowledged",
        stored.len(),
        stored.len() - acknowledged.len()
    );

    // Everything stored is delivered.
    let delivered = wait_for(Duration::from_secs(120), || async {
        let records = process.records("demo", "").await;
        if records.iter().all(|r| r["state"] == "succeeded") {
            Ok(records)
        } else {
            Err(records)
        }
    })
    .await;
    let records = delivered.unwrap_or_else(|last_seen| last_seen);
    let unfinished: Vec<&Value> = records
        .iter()
        .filter(|r| r["state"] != "succeeded")
        .collect();
    assert!(
        unfinished.is_empty(),
        "{} records not delivered, e.g. {:?}",
        unfinished.len(),
        unfinished.first()
    );
    let delivered_forms: BTreeSet<String> = receiver.requests("/demo/forms")
        [seen_before_restart.0..]
        .iter()
        .map(|request| {
            let text = request.text();
            let form_id = instance_id(&text)
                .unwrap_or_else(|| panic!("a form without an id: {text}"))
                .to_owned();
            assert!(
                bodies[&form_id] == request.body,
                "form {form_id} is forwarded byte for byte"
            );
            form_id
        })
        .collect();
    let delivered_cases: BTreeSet<String> = receiver.requests("/demo/cases")
        [seen_before_restart.1..]
        .iter()
        .map(|request| request.json()["case_id"].as_str().unwrap().to_owned())
        .collect();
    for form_id in &stored {
        assert!(delivered_forms.contains(form_id), "form {form_id} arrived");
        assert!(
            delivered_cases.contains(&form_id.replace("-form-", "-case-")),
            "the case of {form_id} arrived"
        );
    }
    drop(process);
}
