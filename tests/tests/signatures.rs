//! The example auth plugin's signatures (examples/auth-plugin), checked by
//! the Standard Webhooks reference library itself (PyPI `standardwebhooks`,
//! run by `tests/standard_webhooks_verify.py`) on real requests the gateway
//! sent: an XML form (verified with `json_parse=False`, as
//! examples/README.md tells integrators) and a JSON form stub (verified and
//! parsed). A body changed by one byte fails verification.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use repeatd_tests::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
/// The secret of the Standard Webhooks specification's own example.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the library says of `body` with `headers`.
fn verify(received: &Received, body: &[u8], json_parse: bool) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("standard_webhooks_verify.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed (see .ci/setup-test-deps)");
    let request = json!({
        "secret": SECRET,
        "headers": received.headers,
        "body_base64": base64::engine::general_purpose::STANDARD.encode(body),
        "json_parse": json_parse,
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the verifier failed (is standardwebhooks installed? .ci/setup-test-deps): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn tampered(body: &[u8]) -> Vec<u8> {
    let mut changed = body.to_vec();
    let middle = changed.len() / 2;
    changed[middle] ^= 0x01;
    changed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_webhooks_library_verifies_our_xml_and_json_requests() {
    let receiver = Receiver::start().await;
    let dir = TempDir::new("signatures");
    let plugin_dir = dir.path().join("plugins.d");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    std::fs::copy(
        wasm::STANDARD_WEBHOOKS_EXAMPLE,
        plugin_dir.join("standard-webhooks.wasm"),
    )
    .unwrap();
    let mut config = demo_config(&[], "");
    for (name, path) in [("xml", "/xml"), ("json", "/json")] {
        config.push_str(&format!(
            "\n[[connections]]\ndomain = \"demo\"\nname = \"{name}\"\nurl = \"{}\"\nauth = {{ type = \"plugin\", plugin = \"standard-webhooks\", secret = \"{SECRET}\" }}\n",
            receiver.url(path)
        ));
    }
    config.push_str(&repeater("forms", "form", "xml", "form-xml", ""));
    config.push_str(&repeater("stubs", "form-stub", "json", "form-stub", ""));
    let gateway = Gateway::start_in(Arc::new(dir), &config).await;
    let (status, body) = gateway.submit("demo", SEED_FORM, None).await;
    assert_eq!(status, 201, "{body}");

    let xml = receiver.wait("/xml", 1, WAIT).await;
    assert_eq!(xml.len(), 1, "one form request");
    let xml = &xml[0];
    assert_eq!(xml.body, SEED_FORM, "the form, byte for byte");
    assert_eq!(
        verify(xml, &xml.body, false),
        json!({"verified": true, "payload": null}),
        "an XML body verifies with json_parse=False"
    );
    assert_eq!(
        verify(xml, &tampered(&xml.body), false),
        json!({"verified": false, "error": "No matching signature found"})
    );

    let stub = receiver.wait("/json", 1, WAIT).await;
    assert_eq!(stub.len(), 1, "one stub request");
    let stub = &stub[0];
    assert_eq!(stub.json()["form_id"], SEED_FORM_ID);
    assert_eq!(
        verify(stub, &stub.body, true),
        json!({"verified": true, "payload": stub.json()}),
        "a JSON body verifies and parses"
    );
    assert_eq!(
        verify(stub, &tampered(&stub.body), true),
        json!({"verified": false, "error": "No matching signature found"})
    );
    gateway.stop().await;
}
