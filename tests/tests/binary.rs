//! The built `repeatd` binary, run as an operator runs it: secrets given in
//! every way (in the file, through `*_env`, through the API) never appear in
//! clear in the data directory, the debug log or the API; a connection made
//! with a domain token is held to the egress policy the gateway restarts with;
//! and a bad config stops start-up with a message naming the key.
//!
//! Build the binary first: `cargo build -p repeatd` (`cargo test --workspace`
//! builds it too).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use repeatd_tests::remote::{Remote, Reply, digest_params, form_fields};
use repeatd_tests::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// `repeatd serve` on a config file, logging at debug level, with `env` set.
async fn start(config: &Path, env: &[(&str, &str)]) -> Daemon {
    env.iter()
        .fold(
            Launch::new(config).log_level("debug"),
            |launch, (name, value)| launch.env(name, value),
        )
        .start()
        .await
        .expect("starting repeatd")
}

/// Submits `xml` as danny with `password`; the status.
async fn submit(daemon: &Daemon, xml: &[u8], password: &str) -> u16 {
    daemon
        .submit_as("demo", xml, None, ("danny", password), "text/xml")
        .await
        .0
}

/// `GET path` with `token`, which must answer 200 with JSON.
async fn json(daemon: &Daemon, token: &str, path: &str) -> Value {
    let (status, text) = daemon.api_text_as(token, "GET", path, None).await;
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).expect("a JSON answer")
}

/// Waits until the repeater has `n` records in `state`, as `token` sees them.
async fn settled(
    daemon: &Daemon,
    token: &str,
    repeater: &str,
    n: usize,
    state: &str,
) -> Vec<Value> {
    let query = format!("repeater={repeater}");
    eventually(
        &format!("{n} {state} records of repeater {repeater}"),
        WAIT,
        || async {
            let records = daemon.records_as(token, "demo", &query).await;
            if records.len() == n && records.iter().all(|r| r["state"] == state) {
                Ok(records)
            } else {
                Err(Value::from(records))
            }
        },
    )
    .await
}

/// The config head: loopback, the test's own data and plugin directories.
fn head(dir: &Path) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nplugin_dir = \"{}\"\n",
        dir.join("data").display(),
        dir.join("plugins.d").display()
    )
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("repeatd.toml");
    std::fs::write(&path, text).expect("writing the config");
    path
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("reading a directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

// ---- secrets ---------------------------------------------------------------------

const ADMIN_SECRET: &str = "admin-tok-Q7x9Lm2a";
const DOMAIN_SECRET: &str = "domain-tok-R4vB8n5c";
const SUBMITTER_SECRET: &str = "submit-pw-K2c8Jd7e";
const BASIC_SECRET: &str = "basic-pw-M3n5Zt1g";
const DIGEST_SECRET: &str = "digest-pw-W8q2Hs4h";
const BEARER_SECRET: &str = "bearer-tok-P6y1Fx9j";
const API_KEY_SECRET: &str = "apikey-K9r4Tb3k";
const CC_SECRET: &str = "cc-secret-V5u7Gw2m";
const PW_CLIENT_SECRET: &str = "pw-client-secret-D3k8Lq6n";
const PW_USER_SECRET: &str = "pw-user-pw-N1j6Ys8p";
const PLUGIN_SECRET: &str = "plugin-setting-B2h7Ra0q";
const PLUGIN_ENV_SECRET: &str = "plugin-env-C4m9Ue5r";
const API_BEARER_SECRET: &str = "api-made-tok-E6t3Wp7s";
const API_BASIC_SECRET: &str = "api-basic-pw-G8s1Kv4t";
const ACCESS_TOKEN_PREFIX: &str = "access-tok-Z5";

/// A remote that checks every credential of the secrets test.
async fn checking_remote() -> Remote {
    Remote::start(|request| {
        let authorization = request.header("authorization").unwrap_or_default();
        let basic = |user: &str, password: &str| {
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
        };
        let accepted = match request.path.as_str() {
            "/token" => {
                let fields = form_fields(&request.body);
                let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
                let valid = match field("grant_type") {
                    "client_credentials" => field("client_secret") == CC_SECRET,
                    "password" => field("client_secret") == PW_CLIENT_SECRET && field("password") == PW_USER_SECRET,
                    _ => false,
                };
                return if valid {
                    Reply::json(200, json!({"access_token": format!("{ACCESS_TOKEN_PREFIX}-{}", field("grant_type")), "expires_in": 3600}))
                } else {
                    Reply::json(401, json!({"error": "invalid_client"}))
                };
            }
            "/basic" => authorization == basic("ann", BASIC_SECRET),
            "/api-basic" => authorization == basic("bob", API_BASIC_SECRET),
            "/digest" => {
                if digest_params(authorization).is_some_and(|params| params.get("username").is_some_and(|u| u == "dora")) {
                    true
                } else {
                    return Reply::status(401)
                        .header("www-authenticate", "Digest realm=\"r\", nonce=\"n1\", qop=\"auth\"");
                }
            }
            "/bearer" => authorization == format!("Bearer {BEARER_SECRET}"),
            "/api-bearer" => authorization == format!("Bearer {API_BEARER_SECRET}"),
            "/apikey" => request.header("x-key") == Some(API_KEY_SECRET),
            "/cc" => authorization == format!("Bearer {ACCESS_TOKEN_PREFIX}-client_credentials"),
            "/pw" => authorization == format!("Bearer {ACCESS_TOKEN_PREFIX}-password"),
            _ => false,
        };
        if accepted { Reply::ok() } else { Reply::status(401).body("no") }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_clear_in_the_data_directory_the_log_or_the_api() {
    let remote = checking_remote().await;
    let dir = TempDir::new("secrets");
    let token_url = remote.url("/token");
    let repeaters: String = ["basic", "digest", "bearer", "apikey", "cc", "pw", "signed"]
        .iter()
        .map(|name| {
            format!(
                "\n[[repeaters]]\ndomain = \"demo\"\nname = \"to-{name}\"\nkind = \"form\"\nconnection = \"{name}\"\nformat = \"form-xml\"\nretry = {{ min_wait = \"100ms\", factor = 1.0, max_attempts = 1 }}\n"
            )
        })
        .collect();
    let config = format!(
        r#"{head}
[[domains]]
name = "demo"

[[api_tokens]]
domain = "demo"
token_env = "T_DOMAIN_TOKEN"

[[submitters]]
domain = "demo"
username = "danny"
password_env = "T_SUBMITTER_PASSWORD"

[[connections]]
domain = "demo"
name = "basic"
url = "{basic}"
auth = {{ type = "basic", username = "ann", password_env = "T_BASIC_PASSWORD" }}

[[connections]]
domain = "demo"
name = "digest"
url = "{digest}"
auth = {{ type = "digest", username = "dora", password = "{DIGEST_SECRET}" }}

[[connections]]
domain = "demo"
name = "bearer"
url = "{bearer}"
auth = {{ type = "bearer", token_env = "T_BEARER_TOKEN" }}

[[connections]]
domain = "demo"
name = "apikey"
url = "{apikey}"
auth = {{ type = "api_key", header = "X-Key", key = "{API_KEY_SECRET}" }}

[[connections]]
domain = "demo"
name = "cc"
url = "{cc}"
auth = {{ type = "oauth2_client_credentials", token_url = "{token_url}", client_id = "gw", client_secret_env = "T_CC_SECRET" }}

[[connections]]
domain = "demo"
name = "pw"
url = "{pw}"
auth = {{ type = "oauth2_password", token_url = "{token_url}", client_id = "gw", client_secret = "{PW_CLIENT_SECRET}", username = "alice", password_env = "T_PW_PASSWORD" }}

[[connections]]
domain = "demo"
name = "signed"
url = "{signed}"
auth = {{ type = "plugin", plugin = "hmac-signer", key = "{PLUGIN_SECRET}", other_env = "T_PLUGIN_SECRET" }}
{repeaters}"#,
        head = head(dir.path()),
        basic = remote.url("/basic"),
        digest = remote.url("/digest"),
        bearer = remote.url("/bearer"),
        apikey = remote.url("/apikey"),
        cc = remote.url("/cc"),
        pw = remote.url("/pw"),
        signed = remote.url("/signed"),
    );
    let config_path = write_config(dir.path(), &config);
    let env = [
        ("REPEATD_ADMIN_TOKEN", ADMIN_SECRET),
        ("T_DOMAIN_TOKEN", DOMAIN_SECRET),
        ("T_SUBMITTER_PASSWORD", SUBMITTER_SECRET),
        ("T_BASIC_PASSWORD", BASIC_SECRET),
        ("T_BEARER_TOKEN", BEARER_SECRET),
        ("T_CC_SECRET", CC_SECRET),
        ("T_PW_PASSWORD", PW_USER_SECRET),
        ("T_PLUGIN_SECRET", PLUGIN_ENV_SECRET),
    ];
    let daemon = start(&config_path, &env).await;

    assert_eq!(
        submit(&daemon, &generated_form("secret-1", "c-1", "t"), "wrong").await,
        401
    );
    assert_eq!(
        submit(
            &daemon,
            &generated_form("secret-1", "c-1", "t"),
            SUBMITTER_SECRET
        )
        .await,
        201
    );
    for name in ["basic", "digest", "bearer", "apikey", "cc", "pw"] {
        settled(&daemon, ADMIN_SECRET, &format!("to-{name}"), 1, "succeeded").await;
    }
    // The auth plugin is not loaded: a failed attempt that names it, not a leak.
    let signed = settled(&daemon, ADMIN_SECRET, "to-signed", 1, "cancelled").await;
    assert!(
        signed[0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("hmac-signer"),
        "{signed:#?}"
    );

    // Secrets given through the API (admin and domain token).
    let connections = "/api/v1/domains/demo/connections";
    let (status, body) = daemon
        .api_text_as(
            DOMAIN_SECRET,
            "POST",
            connections,
            Some(json!({"name": "api-bearer", "url": format!("http://localhost:{}/api-bearer", remote.addr.port()), "auth": {"type": "bearer", "token": API_BEARER_SECRET}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = daemon
        .api_text_as(
            ADMIN_SECRET,
            "POST",
            connections,
            Some(json!({"name": "api-basic", "url": remote.url("/api-basic"), "auth": {"type": "basic", "username": "bob", "password": API_BASIC_SECRET}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        !body.contains(API_BASIC_SECRET) && body.contains("\"password\":\"********\""),
        "{body}"
    );

    // Sending the placeholder back keeps the secret; it is never a new secret.
    let (status, body) = daemon
        .api_text_as(
            ADMIN_SECRET,
            "PUT",
            &format!("{connections}/api-basic"),
            Some(json!({"url": remote.url("/api-basic"), "notify": ["ops@example.org"], "auth": {"type": "basic", "username": "bob", "password": "********"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = daemon
        .api_text_as(
            ADMIN_SECRET,
            "PUT",
            &format!("{connections}/api-basic"),
            Some(json!({"url": remote.url("/api-basic"), "auth": {"type": "bearer", "token": "********"}})),
        )
        .await;
    assert_eq!(
        status, 422,
        "a placeholder for a secret of another auth type: {body}"
    );
    assert!(body.contains("auth.token"), "{body}");
    let (status, body) = daemon
        .api_text_as(
            ADMIN_SECRET,
            "POST",
            "/api/v1/domains/demo/repeaters",
            Some(json!({"name": "to-api-basic", "kind": "form", "connection": "api-basic", "format": "form-xml"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        submit(
            &daemon,
            &generated_form("secret-2", "c-2", "t"),
            SUBMITTER_SECRET
        )
        .await,
        201
    );
    let records = settled(&daemon, ADMIN_SECRET, "to-api-basic", 1, "succeeded").await;
    assert_eq!(
        records[0]["n_attempts"], 1,
        "the kept password still authenticates: {records:#?}"
    );
    assert_eq!(remote.requests("/api-basic").len(), 1);

    // The API shows placeholders only, to the admin and to the domain.
    for token in [ADMIN_SECRET, DOMAIN_SECRET] {
        let list = json(&daemon, token, connections).await;
        let text = list.to_string();
        let shown = list["connections"].as_array().unwrap();
        assert_eq!(shown.len(), 9, "{list:#}");
        for connection in shown {
            let auth = connection["auth"].as_object().unwrap();
            for (key, value) in auth {
                if ["password", "token", "key", "client_secret", "other"].contains(&key.as_str()) {
                    assert_eq!(value, "********", "{connection:#}");
                }
            }
        }
        for single in ["signed", "pw", "api-bearer"] {
            let one = json(&daemon, token, &format!("{connections}/{single}"))
                .await
                .to_string();
            assert!(one.contains("********"), "{one}");
            for secret in all_secrets() {
                assert!(!one.contains(secret), "GET {single} shows {secret}: {one}");
            }
        }
        for secret in all_secrets() {
            assert!(!text.contains(secret), "the API shows {secret}: {text}");
        }
    }

    let Stopped {
        status: exit, log, ..
    } = daemon.stop().await.expect("stopping repeatd");
    assert!(exit.success(), "{exit:?}\n{log}");
    assert!(
        !log.contains('\u{1b}'),
        "a log written to a pipe carries no ANSI colour codes:\n{log}"
    );
    // The log did see every connection, attempt and API change (with placeholders).
    for expected in [
        "DEBUG",
        "configuration",
        "connection saved",
        "\"oauth2_password\"",
        "Bearer { token: ******** }",
        "attempt",
        "********",
    ] {
        assert!(
            log.contains(expected),
            "the debug log mentions {expected:?}:\n{log}"
        );
    }

    let mut needles: Vec<(String, Vec<u8>)> = all_secrets()
        .iter()
        .map(|s| (s.to_string(), s.as_bytes().to_vec()))
        .collect();
    needles.push((
        "an OAuth2 access token".into(),
        ACCESS_TOKEN_PREFIX.as_bytes().to_vec(),
    ));
    for (user, password) in [
        ("ann", BASIC_SECRET),
        ("bob", API_BASIC_SECRET),
        ("danny", SUBMITTER_SECRET),
    ] {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        needles.push((format!("Basic credentials of {user}"), encoded.into_bytes()));
    }
    let data = dir.path().join("data");
    let files = files_under(&data);
    assert!(files.iter().any(|f| f.ends_with("secret.key")), "{files:?}");
    assert!(files.len() >= 2, "{files:?}");
    // The search can find things: the forms and connection names are stored as they are.
    let store = std::fs::read(data.join("repeatd.redb")).expect("reading the store");
    assert!(
        contains(&store, b"secret-2") && contains(&store, b"api-basic"),
        "the grep reads the store's bytes"
    );
    for file in &files {
        let bytes = std::fs::read(file).expect("reading a data file");
        for (name, needle) in &needles {
            assert!(
                !contains(&bytes, needle),
                "{} holds {name} in clear",
                file.display()
            );
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "secret.key is private");
    }
    for (name, needle) in &needles {
        assert!(
            !contains(log.as_bytes(), needle),
            "the log shows {name}:\n{log}"
        );
    }
}

fn all_secrets() -> [&'static str; 14] {
    [
        ADMIN_SECRET,
        DOMAIN_SECRET,
        SUBMITTER_SECRET,
        BASIC_SECRET,
        DIGEST_SECRET,
        BEARER_SECRET,
        API_KEY_SECRET,
        CC_SECRET,
        PW_CLIENT_SECRET,
        PW_USER_SECRET,
        PLUGIN_SECRET,
        PLUGIN_ENV_SECRET,
        API_BEARER_SECRET,
        API_BASIC_SECRET,
    ]
}

// ---- the egress policy across restarts ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrower_policy_after_restart_refuses_stored_connections_at_send_time() {
    let remote = Remote::start(|_| Reply::ok()).await;
    let dir = TempDir::new("narrowed");
    let base = format!(
        "{}\n[[domains]]\nname = \"demo\"\n\n[[api_tokens]]\ndomain = \"demo\"\ntoken = \"{DOMAIN_SECRET}\"\n\n[[submitters]]\ndomain = \"demo\"\nusername = \"danny\"\npassword = \"pw\"\n",
        head(dir.path())
    );
    let open = base.replace(
        "\n[[domains]]",
        "\n[delivery]\nallowed_networks = [\"127.0.0.0/8\"]\n\n[[domains]]",
    );
    let daemon = start(
        &write_config(dir.path(), &open),
        &[("REPEATD_ADMIN_TOKEN", ADMIN_SECRET)],
    )
    .await;
    let (status, body) = daemon
        .api_text_as(
            DOMAIN_SECRET,
            "POST",
            "/api/v1/domains/demo/connections",
            Some(json!({"name": "literal", "url": remote.url("/in")})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = daemon
        .api_text_as(
            DOMAIN_SECRET,
            "POST",
            "/api/v1/domains/demo/repeaters",
            Some(json!({"name": "to-literal", "kind": "form", "connection": "literal", "format": "form-xml", "retry": {"min_wait": "100ms", "factor": 1.0, "max_attempts": 2}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        submit(&daemon, &generated_form("open-1", "c", "t"), "pw").await,
        201
    );
    settled(&daemon, DOMAIN_SECRET, "to-literal", 1, "succeeded").await;
    let Stopped {
        status: exit, log, ..
    } = daemon.stop().await.expect("stopping repeatd");
    assert!(exit.success(), "{log}");
    assert_eq!(remote.requests("/in").len(), 1);

    // Restarted without allowed_networks: the same stored connection is refused.
    let daemon = start(
        &write_config(dir.path(), &base),
        &[("REPEATD_ADMIN_TOKEN", ADMIN_SECRET)],
    )
    .await;
    assert_eq!(
        submit(&daemon, &generated_form("closed-1", "c", "t"), "pw").await,
        201
    );
    let record = eventually("the record to be cancelled", WAIT, || async {
        let body = json(
            &daemon,
            DOMAIN_SECRET,
            "/api/v1/domains/demo/records?repeater=to-literal&state=cancelled",
        )
        .await;
        match body["records"].as_array().and_then(|r| r.first()).cloned() {
            Some(record) => Ok(record),
            None => Err(body),
        }
    })
    .await;
    let detail = json(
        &daemon,
        DOMAIN_SECRET,
        &format!(
            "/api/v1/domains/demo/records/{}",
            record["id"].as_str().unwrap()
        ),
    )
    .await;
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{detail:#}");
    for attempt in attempts {
        assert_eq!(
            attempt["error"],
            "address 127.0.0.1 is not allowed for connections created with a domain token; see [delivery] allowed_networks"
        );
    }
    assert_eq!(
        remote.requests("/in").len(),
        1,
        "nothing more reached the remote"
    );
    let Stopped {
        status: exit, log, ..
    } = daemon.stop().await.expect("stopping repeatd");
    assert!(exit.success(), "{log}");
}

// ---- bad configs ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_stop_start_up_with_a_message_naming_the_key() {
    let dir = TempDir::new("badconfig");
    let domain = "\n[[domains]]\nname = \"demo\"\n";
    let connection =
        "\n[[connections]]\ndomain = \"demo\"\nname = \"rx\"\nurl = \"http://127.0.0.1:9/in\"\n";
    let cases = [
        (
            format!("lisen = \"127.0.0.1:0\"\n{domain}"),
            "unknown key \"lisen\"",
        ),
        (
            format!(
                "{domain}{connection}\n[[repeaters]]\ndomain = \"demo\"\nname = \"r\"\nkind = \"form\"\nconnection = \"nope\"\nformat = \"form-xml\"\n"
            ),
            "repeaters[0].connection: no connection \"nope\" in domain \"demo\"",
        ),
        (
            format!("[retry]\nmin_wait = \"soon\"\n{domain}"),
            "retry.min_wait: ",
        ),
        (
            format!(
                "{domain}\n[[connections]]\ndomain = \"demo\"\nname = \"rx\"\nurl = \"http://127.0.0.1:9/in\"\nauth = {{ type = \"basic\", username = \"u\", password_env = \"REPEATD_TEST_NEVER_SET\" }}\n"
            ),
            "connections[0].auth.password_env: ",
        ),
        (
            format!(
                "{domain}\n[[connections]]\ndomain = \"demo\"\nname = \"rx\"\nurl = \"http://127.0.0.1:9/in\"\nauth = {{ type = \"kerberos\" }}\n"
            ),
            "connections[0].auth.type: unknown auth type \"kerberos\"",
        ),
        (
            format!(
                "{domain}{connection}\n[[repeaters]]\ndomain = \"demo\"\nname = \"r\"\nkind = \"form\"\nconnection = \"rx\"\nformat = \"csv\"\n"
            ),
            "no payload format plugin \"csv\"",
        ),
    ];
    for (body, expected) in cases {
        let path = write_config(dir.path(), &format!("{}{body}", head(dir.path())));
        let mut daemon = Launch::new(&path)
            .env_remove("REPEATD_TEST_NEVER_SET")
            .env("REPEATD_ADMIN_TOKEN", ADMIN_SECRET)
            .spawn()
            .expect("starting repeatd");
        let status = daemon.wait_exit(WAIT).await.unwrap_or_else(|error| {
            panic!("repeatd kept running on a bad config:\n{body}\n{error:#}")
        });
        let stderr = daemon.log();
        assert!(
            !status.success(),
            "exit status {status:?} for:\n{body}\n{stderr}"
        );
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
        assert!(
            stderr.contains(&path.display().to_string()) || expected.contains("csv"),
            "names the file:\n{stderr}"
        );
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
}
