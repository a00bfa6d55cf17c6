//! TLS both ways (SPEC section 3, issue 12), against real TLS servers on
//! loopback with certificates each test makes (a private CA from rcgen):
//! a remote signed by a CA the gateway does not know is refused with an error
//! that says so; `ca_file` trusts that CA instead of the built-in roots;
//! `skip_cert_verify` accepts anything and is warned about; a remote that
//! requires a client certificate gets one from `client_cert`/`client_key`
//! and verifies it; each connection's client is reused and rebuilt when the
//! connection changes; bad TLS files are refused up front naming the key; and
//! `[tls]` serves HTTPS on `listen`.

use std::time::Duration;

use repeatd_tests::tls::{ClientAuth, TestPki, TlsRemote};
use repeatd_tests::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
/// One attempt, then a long wait: a failed record stays `failed`.
const ONE_TRY: &str = "retry = { min_wait = \"1h\", max_attempts = 3 }";
const DOMAIN_TOKEN: &str = "demo-domain-token";

/// A `[[connections]]` table of domain demo.
fn connection(name: &str, url: &str, extra: &str) -> String {
    format!("\n[[connections]]\ndomain = \"demo\"\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
}

fn form_repeater(name: &str, connection: &str) -> String {
    repeater(name, "form", connection, "form-xml", ONE_TRY)
}

/// `key = "path"` lines for a connection.
fn files(pairs: &[(&str, &std::path::Path)]) -> String {
    pairs
        .iter()
        .map(|(key, path)| format!("{key} = \"{}\"\n", path.display()))
        .collect()
}

/// Connection "mutual" to `remote`'s `/mutual`: trusts `pki`'s CA and
/// presents its client certificate.
fn mutual_connection(pki: &TestPki, remote: &TlsRemote) -> String {
    connection(
        "mutual",
        &remote.url("/mutual"),
        &files(&[
            ("ca_file", &pki.ca_file),
            ("client_cert", &pki.client.cert_file),
            ("client_key", &pki.client.key_file),
        ]),
    )
}

/// Waits until the repeater has one record in `state`; returns it with its attempts.
async fn settled(client: &Client, repeater: &str, state: &str) -> Value {
    let records = client
        .wait_records("demo", &format!("repeater={repeater}"), 1, state, WAIT)
        .await;
    assert!(
        records.len() == 1 && records[0]["state"] == state,
        "repeater {repeater}: expected one record {state}, found {records:#?}"
    );
    let id = records[0]["id"].as_str().expect("record id");
    client.record("demo", id).await
}

/// The error of the record's only attempt.
fn only_error(record: &Value) -> String {
    let attempts = record["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{record:#}");
    attempts[0]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("the attempt has an error: {record:#}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_ca_is_refused_and_ca_file_trusts_a_private_one() {
    let pki = TestPki::new("private");
    let other = TestPki::new("other");
    let remote = TlsRemote::start(&pki, ClientAuth::None).await;
    let mut config = demo_config(&[], "");
    config.push_str(&connection("untrusted", &remote.url("/untrusted"), ""));
    config.push_str(&connection(
        "trusted",
        &remote.named_url("/trusted"),
        &files(&[("ca_file", &pki.ca_file)]),
    ));
    config.push_str(&connection(
        "wrong-ca",
        &remote.url("/wrong-ca"),
        &files(&[("ca_file", &other.ca_file)]),
    ));
    for name in ["untrusted", "trusted", "wrong-ca"] {
        config.push_str(&form_repeater(&format!("to-{name}"), name));
    }
    let gateway = Gateway::start(&config).await;
    let (status, body) = gateway
        .submit("demo", &generated_form("tls-ca-1", "c1", "t"), None)
        .await;
    assert_eq!(status, 201, "{body}");

    let trusted = settled(&gateway, "to-trusted", "succeeded").await;
    assert_eq!(trusted["attempts"][0]["status"], 200, "{trusted:#}");
    let arrived = remote.wait("/trusted", 1, WAIT).await;
    assert_eq!(arrived.len(), 1);
    assert!(
        arrived[0].request.text().contains("tls-ca-1"),
        "the form itself arrived over TLS"
    );

    // Neither the built-in roots nor another CA's bundle trust the private CA:
    // a retryable failure whose error says why.
    for repeater in ["to-untrusted", "to-wrong-ca"] {
        let record = settled(&gateway, repeater, "failed").await;
        let error = only_error(&record);
        assert!(
            error.starts_with(
                "connection failed: the remote's certificate is not trusted (unknown issuer); set ca_file to the CA that signed it"
            ),
            "{repeater}: {error}"
        );
        assert!(
            error.contains("UnknownIssuer"),
            "rustls' words follow: {error}"
        );
        assert!(record["attempts"][0]["status"].is_null());
    }
    assert!(remote.requests("/untrusted").is_empty());
    assert!(remote.requests("/wrong-ca").is_empty());
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate_and_the_remote_verifies_it() {
    let pki = TestPki::new("mutual");
    let remote = TlsRemote::start(&pki, ClientAuth::Required).await;
    let mut config = demo_config(&[], "");
    config.push_str(&connection(
        "anonymous",
        &remote.url("/anonymous"),
        &files(&[("ca_file", &pki.ca_file)]),
    ));
    config.push_str(&mutual_connection(&pki, &remote));
    config.push_str(&form_repeater("to-anonymous", "anonymous"));
    config.push_str(&form_repeater("to-mutual", "mutual"));
    let gateway = Gateway::start(&config).await;
    let (status, _) = gateway
        .submit("demo", &generated_form("mtls-1", "c1", "t"), None)
        .await;
    assert_eq!(status, 201);

    let record = settled(&gateway, "to-mutual", "succeeded").await;
    assert_eq!(record["attempts"][0]["status"], 200, "{record:#}");
    let arrived = remote.wait("/mutual", 1, WAIT).await;
    assert_eq!(
        arrived[0].client_certificate.as_deref(),
        Some(pki.client.der.as_slice()),
        "the remote verified the gateway's client certificate"
    );

    let record = settled(&gateway, "to-anonymous", "failed").await;
    let error = only_error(&record);
    assert!(
        error.starts_with(
            "connection failed: the remote requires a client certificate; set client_cert and client_key"
        ),
        "{error}"
    );
    assert!(remote.requests("/anonymous").is_empty());
    assert!(
        remote
            .handshake_failures()
            .iter()
            .any(|failure| failure.contains("no certificates")),
        "the remote refused the handshake itself: {:?}",
        remote.handshake_failures()
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_client_is_reused_and_rebuilt_when_the_connection_changes() {
    let pki = TestPki::new("reuse");
    let remote = TlsRemote::start(&pki, ClientAuth::Required).await;
    let mut config = demo_config(&[], "");
    config.push_str(&mutual_connection(&pki, &remote));
    config.push_str(&form_repeater("to-mutual", "mutual"));
    let gateway = Gateway::start(&config).await;
    // One after the other: the second send starts once the first is done.
    for (n, form_id) in ["reuse-1", "reuse-2"].into_iter().enumerate() {
        let (status, _) = gateway
            .submit("demo", &generated_form(form_id, "c1", "t"), None)
            .await;
        assert_eq!(status, 201);
        let delivered = gateway
            .wait_records("demo", "repeater=to-mutual", n + 1, "succeeded", WAIT)
            .await;
        assert_eq!(delivered.len(), n + 1, "{delivered:#?}");
    }
    assert_eq!(
        remote.connections(),
        1,
        "both sends went over one kept-alive TLS connection"
    );

    // Another client certificate for the same connection: the next send
    // presents it.
    let renewed = pki.issue(
        "client-renewed",
        &[],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (status, body) = gateway
        .api(
            "PUT",
            "/api/v1/domains/demo/connections/mutual",
            Some(json!({
                "url": remote.url("/mutual"),
                "ca_file": pki.ca_file,
                "client_cert": renewed.cert_file,
                "client_key": renewed.key_file,
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["client_cert"], json!(renewed.cert_file), "{body}");
    let (status, _) = gateway
        .submit("demo", &generated_form("reuse-3", "c1", "t"), None)
        .await;
    assert_eq!(status, 201);
    let arrived = remote.wait("/mutual", 3, WAIT).await;
    assert_eq!(arrived.len(), 3);
    assert_eq!(
        arrived[2].client_certificate.as_deref(),
        Some(renewed.der.as_slice())
    );
    assert_eq!(
        arrived[0].client_certificate.as_deref(),
        Some(pki.client.der.as_slice())
    );

    // The files renewed in place (as certbot does): the next send reads them.
    let third = pki.issue(
        "client-third",
        &[],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    std::fs::copy(&third.cert_file, &renewed.cert_file).unwrap();
    std::fs::copy(&third.key_file, &renewed.key_file).unwrap();
    let (status, _) = gateway
        .submit("demo", &generated_form("reuse-4", "c1", "t"), None)
        .await;
    assert_eq!(status, 201);
    let arrived = remote.wait("/mutual", 4, WAIT).await;
    assert_eq!(arrived.len(), 4);
    assert_eq!(
        arrived[3].client_certificate.as_deref(),
        Some(third.der.as_slice())
    );

    // A file gone since the connection was checked fails the record (to be
    // retried) with an error naming it.
    std::fs::remove_file(&pki.ca_file).unwrap();
    let (status, _) = gateway
        .submit("demo", &generated_form("reuse-5", "c1", "t"), None)
        .await;
    assert_eq!(status, 201);
    let failed = gateway
        .wait_records("demo", "repeater=to-mutual&state=failed", 1, "failed", WAIT)
        .await;
    assert_eq!(failed.len(), 1, "{failed:#?}");
    let record = gateway
        .record("demo", failed[0]["id"].as_str().unwrap())
        .await;
    // Nothing was sent, so no attempt is kept: the record says why.
    assert_eq!(record["attempts"], json!([]), "{record:#}");
    assert_eq!(
        record["last_error"],
        format!(
            "connection failed: ca_file: cannot read {}: No such file or directory (os error 2)",
            pki.ca_file.display()
        )
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_cert_verify_accepts_any_certificate_and_is_warned_about() {
    let pki = TestPki::new("skip");
    let remote = TlsRemote::start(&pki, ClientAuth::None).await;
    let dir = TempDir::new("tls-skip");
    let mut config = demo_config(&[], "");
    config.push_str(&connection(
        "insecure",
        &remote.url("/insecure"),
        "skip_cert_verify = true",
    ));
    config.push_str(&form_repeater("to-insecure", "insecure"));
    let daemon = Daemon::start_in(&dir, &config).await;
    daemon
        .wait_log(
            "connection \"insecure\" of domain \"demo\" has skip_cert_verify = true",
            WAIT,
        )
        .await;
    let (status, _) = daemon
        .submit("demo", &generated_form("skip-1", "c1", "t"), None)
        .await;
    assert_eq!(status, 201);
    let record = settled(&daemon, "to-insecure", "succeeded").await;
    assert_eq!(record["attempts"][0]["status"], 200, "{record:#}");
    assert_eq!(remote.wait("/insecure", 1, WAIT).await.len(), 1);

    // The same warning when the admin API makes such a connection.
    let (status, body) = daemon
        .api(
            "POST",
            "/api/v1/domains/demo/connections",
            Some(json!({"name": "made-insecure", "url": remote.url("/other"), "skip_cert_verify": true})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["skip_cert_verify"], true);
    daemon
        .wait_log(
            "connection \"made-insecure\" of domain \"demo\" has skip_cert_verify = true",
            WAIT,
        )
        .await;
    let stopped = daemon.stop().await.expect("stopping");
    assert!(stopped.status.success(), "{}", stopped.log);
}

/// A `demo` config with one connection carrying `extra`.
fn config_with(extra: &str, dir: &TempDir) -> Result<repeatd::config::Config, String> {
    let text = format!(
        "{}{}",
        config_head(dir.path()),
        demo_config(&[], &connection("remote", "https://127.0.0.1:1/in", extra))
    );
    repeatd::config::parse(&text, "test.toml").map_err(|error| error.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_are_refused_up_front_naming_the_key() {
    let pki = TestPki::new("bad");
    let dir = TempDir::new("tls-bad");
    let missing = dir.path().join("missing.pem");
    let not_pem = dir.path().join("not-pem.der");
    std::fs::write(&not_pem, pki.ca_der()).unwrap();
    let cases: Vec<(String, String)> = vec![
        (
            files(&[("ca_file", &missing)]),
            format!(
                "connections[0].ca_file: cannot read {}: No such file or directory",
                missing.display()
            ),
        ),
        (
            files(&[("ca_file", &not_pem)]),
            format!(
                "connections[0].ca_file: {} is not a PEM file (no \"-----BEGIN\" line)",
                not_pem.display()
            ),
        ),
        (
            // A key is not a CA bundle.
            files(&[("ca_file", &pki.client.key_file)]),
            format!(
                "connections[0].ca_file: {} holds no certificate",
                pki.client.key_file.display()
            ),
        ),
        (
            files(&[("client_cert", &pki.client.cert_file)]),
            "connections[0].client_key: missing: client_cert needs the key that goes with it"
                .to_owned(),
        ),
        (
            files(&[("client_key", &pki.client.key_file)]),
            "connections[0].client_cert: missing: client_key needs the certificate that goes with it"
                .to_owned(),
        ),
        (
            files(&[
                ("client_cert", &pki.client.cert_file),
                ("client_key", &pki.client.cert_file),
            ]),
            format!(
                "connections[0].client_key: {} holds no private key",
                pki.client.cert_file.display()
            ),
        ),
        (
            files(&[
                ("client_cert", &pki.client.cert_file),
                ("client_key", &pki.server.key_file),
            ]),
            format!(
                "connections[0].client_key: the key does not belong to the first certificate of {}",
                pki.client.cert_file.display()
            ),
        ),
    ];
    for (extra, expected) in &cases {
        let error = config_with(extra, &dir).expect_err(extra);
        assert!(
            error.contains(expected),
            "{extra}\nexpected {expected:?}\nin {error}"
        );
    }
    config_with(
        &files(&[
            ("ca_file", &pki.ca_file),
            ("client_cert", &pki.client.cert_file),
            ("client_key", &pki.client.key_file),
        ]),
        &dir,
    )
    .expect("good files pass");

    // The admin API checks the same way; a domain token may not name files
    // on the gateway's host at all (nor learn which exist).
    let gateway = Gateway::start(&format!(
        "{}\n[[api_tokens]]\ndomain = \"demo\"\ntoken = \"{DOMAIN_TOKEN}\"\n",
        demo_config(&[], "")
    ))
    .await;
    let (status, body) = gateway
        .api(
            "POST",
            "/api/v1/domains/demo/connections",
            Some(json!({"name": "r", "url": "https://127.0.0.1:1/in", "client_cert": pki.client.cert_file})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "client_key", "{body}");
    assert_eq!(
        body["error"], "missing: client_cert needs the key that goes with it",
        "{body}"
    );
    for key in ["ca_file", "client_cert", "client_key"] {
        let (status, body) = gateway
            .api_as(
                DOMAIN_TOKEN,
                "POST",
                "/api/v1/domains/demo/connections",
                Some(json!({"name": "r", "url": "https://127.0.0.1:1/in", key: missing})),
            )
            .await;
        assert_eq!(status, 422, "{key}: {body}");
        assert_eq!(body["field"], key, "{body}");
        assert_eq!(
            body["error"],
            "names a file on the gateway's host; only the config file or the admin token may set it",
            "nothing is read: {body}"
        );
    }
    let (status, body) = gateway.get("/api/v1/domains/demo/connections").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["connections"],
        json!([]),
        "nothing was created: {body}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_on_listen() {
    let pki = TestPki::new("serve");
    let receiver = Receiver::start().await;
    let config = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n{}",
        pki.server.cert_file.display(),
        pki.server.key_file.display(),
        demo_config(
            &[("receiver", &receiver.url("/in"))],
            &form_repeater("to-receiver", "receiver")
        )
    );
    let gateway = Gateway::start(&config).await;
    let https = Client::https(gateway.addr, pki.client_trusting());
    let (status, body) = https
        .submit("demo", &generated_form("https-1", "c1", "t"), None)
        .await;
    assert_eq!(status, 201, "{body}");
    settled(&https, "to-receiver", "succeeded").await;
    let forwarded = receiver.wait("/in", 1, WAIT).await;
    assert!(forwarded[0].text().contains("https-1"));

    // Plain HTTP gets no answer from an HTTPS port.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", gateway.addr))
        .timeout(WAIT)
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // Nor does a client that does not trust the certificate.
    let untrusting = reqwest::Client::new()
        .get(https.url("/healthz"))
        .send()
        .await;
    assert!(untrusting.is_err(), "{untrusting:?}");

    // Graceful shutdown: stop returns and the port is closed.
    tokio::time::timeout(WAIT, gateway.stop())
        .await
        .expect("an HTTPS gateway stops");
    assert!(
        tokio::net::TcpStream::connect(https.addr()).await.is_err(),
        "the port is closed after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_serving_files_stop_start_up_naming_the_key() {
    let pki = TestPki::new("serve-bad");
    let dir = TempDir::new("tls-serve-bad");
    let config = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n{}",
        pki.server.cert_file.display(),
        pki.client.key_file.display(),
        demo_config(&[], "")
    );
    let mut daemon = Launch::in_dir(&dir, &config).spawn().expect("spawning");
    let status = daemon.wait_exit(WAIT).await.expect("repeatd exits");
    assert!(!status.success());
    let log = daemon.log();
    assert!(
        log.contains(&format!(
            "tls.key_file: the key does not belong to the first certificate of {}",
            pki.server.cert_file.display()
        )),
        "{log}"
    );

    let missing = dir.path().join("nothing.pem");
    let text = format!(
        "{}[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        config_head(dir.path()),
        missing.display(),
        pki.server.key_file.display()
    );
    let error = repeatd::config::parse(&text, "test.toml")
        .expect_err("a missing certificate")
        .to_string();
    assert!(
        error.contains(&format!("tls.cert_file: cannot read {}", missing.display())),
        "{error}"
    );
}
