//! The seed form reaches each kind of repeater exactly as SPEC section 5 says.

use std::time::Duration;

use repeatd_tests::*;

const WAIT: Duration = Duration::from_secs(10);

async fn five_repeaters(receiver: &Receiver) -> Gateway {
    let mut repeaters = String::new();
    let mut connections = Vec::new();
    let urls: Vec<(String, String)> = ["form", "casex", "casej", "stub", "app"]
        .iter()
        .map(|path| (format!("c-{path}"), receiver.url(&format!("/{path}"))))
        .collect();
    for (name, url) in &urls {
        connections.push((name.as_str(), url.as_str()));
    }
    for (name, kind, connection, format) in [
        ("forms", "form", "c-form", "form-xml"),
        ("casesx", "case", "c-casex", "case-xml"),
        ("casesj", "case", "c-casej", "case-json"),
        ("stubs", "form-stub", "c-stub", "form-stub"),
        ("apps", "app-schema", "c-app", "app-schema"),
    ] {
        repeaters.push_str(&repeater(name, kind, connection, format, ""));
    }
    Gateway::start(&demo_config(&connections, &repeaters)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_form_reaches_every_kind_of_repeater() {
    let receiver = Receiver::start().await;
    let gateway = five_repeaters(&receiver).await;

    let (status, body) = gateway.submit("demo", SEED_FORM, Some(SEED_APP_ID)).await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body.contains("OpenRosaResponse") && body.contains("submit_success"),
        "{body}"
    );

    let forms = receiver.wait("/form", 1, WAIT).await;
    assert_eq!(forms.len(), 1);
    let form = &forms[0];
    assert_eq!(form.method, "POST");
    assert_eq!(form.body, SEED_FORM, "the form is forwarded byte for byte");
    assert_eq!(form.header("content-type"), Some("text/xml"));
    assert!(
        is_timestamp(form.header("received-on").unwrap()),
        "{:?}",
        form.header("received-on")
    );
    assert_eq!(form.query, format!("app_id={SEED_APP_ID}"));
    let key = form
        .header("idempotency-key")
        .expect("Idempotency-Key")
        .to_owned();

    let cases = receiver.wait("/casex", 1, WAIT).await;
    assert_eq!(cases.len(), 1);
    let xml = cases[0].text();
    assert!(xml.starts_with(&format!(
        "<case case_id=\"{SEED_CASE_ID}\" date_modified=\"2015-04-17T20:04:54.950000Z\" user_id=\"3a9f1c07e2b84d65a0c7f2e91b4d8c36\" xmlns=\"http://commcarehq.org/case/transaction/v2\">"
    )), "{xml}");
    assert!(xml.contains("<create><case_type>mscase</case_type><case_name>Baobab</case_name><owner_id>3a9f1c07e2b84d65a0c7f2e91b4d8c36</owner_id></create>"), "{xml}");
    assert_eq!(cases[0].header("content-type"), Some("text/xml"));
    assert!(is_timestamp(cases[0].header("server-modified-on").unwrap()));

    let json_cases = receiver.wait("/casej", 1, WAIT).await;
    assert_eq!(json_cases.len(), 1);
    let case = json_cases[0].json();
    assert_eq!(
        json_cases[0].header("content-type"),
        Some("application/json")
    );
    assert_eq!(case["case_id"], SEED_CASE_ID);
    assert_eq!(case["closed"], false);
    assert_eq!(case["date_closed"], serde_json::Value::Null);
    assert_eq!(case["domain"], "demo");
    assert_eq!(case["version"], "2.0");
    assert_eq!(case["properties"]["case_name"], "Baobab");
    assert_eq!(case["properties"]["case_type"], "mscase");
    assert_eq!(
        case["properties"]["owner_id"],
        "3a9f1c07e2b84d65a0c7f2e91b4d8c36"
    );
    assert_eq!(case["xform_ids"], serde_json::json!([SEED_FORM_ID]));

    let stubs = receiver.wait("/stub", 1, WAIT).await;
    assert_eq!(stubs.len(), 1);
    let stub = stubs[0].json();
    assert_eq!(stub["form_id"], SEED_FORM_ID);
    assert_eq!(stub["case_ids"], serde_json::json!([SEED_CASE_ID]));
    assert_eq!(stubs[0].header("received-on"), stub["received_on"].as_str());

    let (status, _) = gateway
        .api(
            "POST",
            &format!("/api/v1/domains/demo/apps/{SEED_APP_ID}/events"),
            Some(serde_json::json!({"event": "saved"})),
        )
        .await;
    assert_eq!(status, 202);
    let (status, _) = gateway
        .api(
            "POST",
            &format!("/api/v1/domains/demo/apps/{SEED_APP_ID}/events"),
            Some(serde_json::json!({"event": "built", "build_id": "193b28e58f335f165cb3e2bbe02b3ed8"})),
        )
        .await;
    assert_eq!(status, 202);
    let apps = receiver.wait("/app", 2, WAIT).await;
    let mut bodies: Vec<String> = apps.iter().map(|r| r.text()).collect();
    bodies.sort();
    assert_eq!(
        bodies,
        vec![
            "193b28e58f335f165cb3e2bbe02b3ed8".to_owned(),
            SEED_APP_ID.to_owned()
        ]
    );

    // Every record succeeded; the form record's id is the Idempotency-Key.
    let records = gateway.wait_records("demo", "", 6, "succeeded", WAIT).await;
    assert_eq!(records.len(), 6, "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| r["state"] == "succeeded" && r["n_attempts"] == 1),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["id"] == key.as_str() && r["repeater"] == "forms")
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitters_must_authenticate_for_their_own_domain() {
    let receiver = Receiver::start().await;
    let config = format!(
        "{}\n[[domains]]\nname = \"other\"\n",
        demo_config(
            &[("rx", &receiver.url("/rx"))],
            &repeater("forms", "form", "rx", "form-xml", "")
        )
    );
    let gateway = Gateway::start(&config).await;
    let (status, _) = gateway
        .submit_as("demo", SEED_FORM, None, ("danny", "nope"), "text/xml")
        .await;
    assert_eq!(status, 401);
    let (status, _) = gateway
        .submit_as("demo", SEED_FORM, None, ("nobody", "pw"), "text/xml")
        .await;
    assert_eq!(status, 401);
    let (status, _) = gateway.submit("other", SEED_FORM, None).await;
    assert_eq!(status, 401, "a submitter of demo cannot post to other");
    assert!(
        gateway.records("demo", "").await.is_empty(),
        "nothing refused is queued"
    );
    gateway.stop().await;
}
