//! Unit tests of the config module: every rule, with the exact message a user sees.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::connection::AuthSpec;
use crate::egress::IpNet;
use crate::email::SmtpTls;
use crate::record::RetryOverride;
use crate::repeater::{CaseEvents, HttpMethod, PayloadKind};

fn no_env(_name: &str) -> Option<String> {
    None
}

/// The keys a serde struct reads, as its derived `Deserialize` names them.
fn keys_of<T: serde::de::DeserializeOwned>() -> Vec<&'static str> {
    /// A deserializer that answers every request with an error, noting the
    /// field names of the struct that asked.
    struct Probe<'a>(&'a mut Vec<&'static str>);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("probe"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.extend_from_slice(fields);
            Err(de::Error::custom("probe"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut keys = Vec::new();
    let _ = T::deserialize(Probe(&mut keys));
    assert!(
        !keys.is_empty(),
        "{} names no keys",
        std::any::type_name::<T>()
    );
    keys
}

const SOURCE: &str = "repeatd.toml";

/// One domain with one connection and one case repeater.
const BASE: &str = r#"
[[domains]]
name = "demo"

[[connections]]
domain = "demo"
name = "receiver"
url = "http://127.0.0.1:9000/in"

[[repeaters]]
domain = "demo"
name = "cases"
kind = "case"
connection = "receiver"
format = "case-json"
"#;

fn env_with(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    }
}

fn parse_ok(text: &str) -> Config {
    parse_with_env(text, SOURCE, &no_env).unwrap_or_else(|error| panic!("{error}"))
}

fn error_of(text: &str) -> String {
    parse_with_env(text, SOURCE, &no_env)
        .expect_err("the config should be refused")
        .to_string()
}

/// `BASE` with `extra` appended to the repeater's table.
fn repeater_error(extra: &str) -> String {
    error_of(&format!("{BASE}{extra}\n"))
}

/// A config whose only connection has `extra` lines.
fn connection_error(extra: &str) -> String {
    error_of(&format!(
        "[[domains]]\nname = \"demo\"\n[[connections]]\ndomain = \"demo\"\nname = \"c\"\nurl = \"http://example.org/\"\n{extra}\n"
    ))
}

fn first_connection(text: &str) -> ConnectionSpec {
    parse_ok(text).connections.remove(0).spec
}

// --- defaults and whole files ---

#[test]
fn empty_file_gives_the_embedded_defaults() {
    let config = parse_ok("");
    assert_eq!(config, Config::default());
    assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.data_dir, PathBuf::from("repeatd-data"));
    assert_eq!(config.plugin_dir, PathBuf::from("plugins.d"));
    assert_eq!(config.admin_token, None);
    assert_eq!(config.smtp, None);
    assert_eq!(
        config.retry,
        RetryPolicy {
            max_attempts: 6,
            min_wait: Duration::from_secs(60),
            max_wait: Duration::from_secs(7 * 24 * 3600),
            factor: 3.0
        }
    );
    assert_eq!(config.plugins.timeout, Duration::from_millis(100));
    assert_eq!(config.plugins.memory, 64 * 1024 * 1024);
    assert_eq!(config.delivery.max_in_flight, 256);
    assert_eq!(config.delivery.default_timeout, Duration::from_secs(30));
    assert!(config.delivery.allowed_networks.is_empty());
    assert_eq!(config.ingest.max_body_bytes, 10_000_000);
    assert!(
        config.domains.is_empty() && config.connections.is_empty() && config.repeaters.is_empty()
    );
}

#[test]
fn load_without_a_file_uses_defaults_and_the_admin_token_variable() {
    assert_eq!(load_with_env(None, &no_env).unwrap(), Config::default());
    let config = load_with_env(None, &env_with(&[(ADMIN_TOKEN_ENV, "from-env")])).unwrap();
    assert_eq!(config.admin_token, Some(Secret::new("from-env")));
    let error = load_with_env(None, &env_with(&[(ADMIN_TOKEN_ENV, "")])).unwrap_err();
    assert_eq!(
        error.to_string(),
        "environment: REPEATD_ADMIN_TOKEN: is set but empty"
    );
}

#[test]
fn load_reads_the_file_and_the_variable_overrides_its_admin_token() {
    let directory =
        std::env::temp_dir().join(format!("repeatd-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("repeatd.toml");
    std::fs::write(
        &path,
        "admin_token = \"from-file\"\nlisten = \"127.0.0.1:9999\"\n",
    )
    .unwrap();
    let config = load_with_env(Some(&path), &no_env).unwrap();
    assert_eq!(config.admin_token, Some(Secret::new("from-file")));
    assert_eq!(config.listen.port(), 9999);
    let config = load_with_env(Some(&path), &env_with(&[(ADMIN_TOKEN_ENV, "from-env")])).unwrap();
    assert_eq!(config.admin_token, Some(Secret::new("from-env")));
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn load_names_a_missing_file() {
    let error = load_with_env(Some(Path::new("/nonexistent/repeatd.toml")), &no_env).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/repeatd.toml: cannot read the config file: "),
        "{error}"
    );
}

#[test]
fn the_example_file_parses_and_documents_every_key() {
    let text = include_str!("../../../examples/repeatd.toml");
    let config = parse_ok(text);
    assert_eq!(
        config.admin_token,
        Some(Secret::new("change-me-admin-token"))
    );
    let smtp = config.smtp.as_ref().unwrap();
    assert_eq!(
        (smtp.host.as_str(), smtp.port, smtp.tls),
        ("127.0.0.1", 2525, SmtpTls::None)
    );
    assert_eq!(config.ingest.max_body_bytes, 10_000_000);
    assert!(!config.metrics.public);
    assert_eq!(config.delivery.allowed_networks.len(), 2);
    assert_eq!(config.api_tokens.len(), 1);
    assert_eq!(config.submitters.len(), 1);
    let connection = &config.connections[0].spec;
    assert_eq!(connection.url, "http://127.0.0.1:9000/in");
    assert_eq!(connection.auth.type_name(), "basic");
    let kinds: Vec<_> = config
        .repeaters
        .iter()
        .map(|repeater| repeater.spec.kind)
        .collect();
    assert_eq!(kinds, PayloadKind::ALL);
    assert_eq!(config.repeaters[0].spec.retry_codes_add, [404]);
    assert_eq!(config.repeaters[1].spec.case_types, ["mscase"]);
    assert_eq!(config.repeaters[3].spec.method, HttpMethod::Put);

    let keys_in_example: BTreeSet<&str> = text
        .lines()
        .map(|line| line.trim_start_matches(['#', ' ']))
        .filter_map(|line| line.split_once(" = ").map(|(key, _)| key.trim()))
        .collect();
    // Every key each section reads, from the types themselves: a key added
    // to a struct must be documented in the example.
    assert!(keys_in_example.contains("admin_token_env"));
    let sections = [
        keys_of::<Config>(),
        keys_of::<SmtpConfig>(),
        keys_of::<crate::tls::ServeTls>(),
        keys_of::<RetryPolicy>(),
        keys_of::<PluginLimits>(),
        keys_of::<DeliveryConfig>(),
        keys_of::<IngestConfig>(),
        keys_of::<MetricsConfig>(),
        keys_of::<crate::retention::RetentionConfig>(),
        keys_of::<StoreConfig>(),
        keys_of::<ApiTokenConfig>(),
        keys_of::<SubmitterConfig>(),
        keys_of::<ConnectionSpec>(),
        keys_of::<RepeaterSpec>(),
    ];
    for key in sections.iter().flatten().filter(|key| {
        ![
            "smtp",
            "tls",
            "retry",
            "plugins",
            "delivery",
            "ingest",
            "metrics",
            "retention",
            "store",
            "domains",
            "api_tokens",
            "submitters",
            "connections",
            "repeaters",
        ]
        .contains(key)
    }) {
        assert!(
            keys_in_example.contains(key),
            "the example does not show {key:?}"
        );
    }
    for auth_type in crate::connection::AUTH_TYPES {
        assert!(
            text.contains(&format!("type = \"{auth_type}\"")),
            "the example does not show auth {auth_type}"
        );
    }
}

#[test]
fn every_commented_auth_alternative_in_the_example_parses() {
    let text = include_str!("../../../examples/repeatd.toml");
    let mut alternatives = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# auth = ") {
            if !current.is_empty() {
                alternatives.push(std::mem::take(&mut current));
            }
            current = rest.to_owned();
        } else if !current.is_empty() && line.starts_with("#  ") {
            current.push(' ');
            current.push_str(line.trim_start_matches(['#', ' ']));
        } else if !current.is_empty() {
            alternatives.push(std::mem::take(&mut current));
        }
    }
    // Every type but `basic`, which is the live line.
    assert_eq!(alternatives.len(), 7);
    let env = env_with(&[("RECEIVER_PASSWORD", "p"), ("HMAC_SECRET", "s")]);
    for auth in alternatives {
        let text = format!(
            "[[domains]]\nname = \"demo\"\n[[connections]]\ndomain = \"demo\"\nname = \"c\"\nurl = \"http://example.org/\"\nauth = {auth}\n"
        );
        if let Err(error) = parse_with_env(&text, SOURCE, &env) {
            panic!("{auth}: {error}");
        }
    }
}

#[test]
fn the_spec_example_parses() {
    let config = parse_ok(
        r#"
listen = "127.0.0.1:8080"
data_dir = "repeatd-data"
plugin_dir = "plugins.d"
admin_token = "secret"

[smtp]
url = "smtp://127.0.0.1:2525"
from = "repeatd <repeatd@localhost>"

[retry]
max_attempts = 6
min_wait = "1m"
max_wait = "7d"
factor = 3.0

[[domains]]
name = "demo"

[[api_tokens]]
domain = "demo"
token = "demo-token"

[[submitters]]
domain = "demo"
username = "danny"
password = "pw"

[[connections]]
domain = "demo"
name = "receiver"
url = "http://127.0.0.1:9000/in"
notify = ["ops@example.org"]
auth = { type = "basic", username = "u", password = "p" }

[[repeaters]]
domain = "demo"
name = "cases"
kind = "case"
connection = "receiver"
format = "case-json"
case_types = ["mscase"]
paused = true
method = "PUT"
max_workers = 4
retry = { max_attempts = 3, min_wait = "1s", factor = 2.0, max_wait = "1h" }
retry_codes_add = [404]
retry_codes_remove = [409]
"#,
    );
    let repeater = &config.repeaters[0];
    assert_eq!(repeater.domain, "demo");
    let spec = &repeater.spec;
    assert_eq!(
        (spec.kind, spec.method, spec.max_workers, spec.paused),
        (PayloadKind::Case, HttpMethod::Put, 4, true)
    );
    assert_eq!(
        spec.retry.unwrap().resolve(&config.retry),
        RetryPolicy {
            max_attempts: 3,
            min_wait: Duration::from_secs(1),
            max_wait: Duration::from_secs(3600),
            factor: 2.0
        }
    );
    assert_eq!(
        config.connections[0].spec.auth,
        AuthSpec::Basic {
            username: "u".into(),
            password: Secret::new("p")
        }
    );
    assert_eq!(config.submitters[0].password.expose(), "pw");
}

#[test]
fn repeater_defaults() {
    let spec = parse_ok(BASE).repeaters.remove(0).spec;
    assert_eq!(
        spec,
        RepeaterSpec::new("cases", PayloadKind::Case, "receiver", "case-json")
    );
    assert!(!spec.paused);
    assert_eq!(spec.method, HttpMethod::Post);
    assert_eq!(spec.max_workers, 8);
    assert!(spec.include_app_id_param);
    assert_eq!(spec.case_events, CaseEvents::Any);
    assert_eq!(spec.retry, None);
}

// --- syntax, unknown keys, types ---

#[test]
fn syntax_errors_keep_line_and_column() {
    let error = parse_with_env(
        "listen = \"127.0.0.1:8080\"\ndata_dir = \n",
        SOURCE,
        &no_env,
    )
    .unwrap_err();
    assert!(matches!(error, ConfigError::Syntax { .. }));
    assert_eq!(
        error.to_string(),
        "repeatd.toml:2:12: string values must be quoted, expected literal string\n 2 | data_dir = \n   |            ^"
    );
}

#[test]
fn unknown_keys_are_named() {
    assert_eq!(
        error_of("lisen = \"x\""),
        "repeatd.toml:1:1: unknown key \"lisen\"; did you mean \"listen\"?"
    );
    assert_eq!(
        repeater_error("max_attemps = 3"),
        "repeatd.toml:16:1: repeaters[0]: unknown key \"max_attemps\"; expected one of name, kind, connection, format, paused, method, max_workers, retry, retry_codes_add, retry_codes_remove, include_app_id_param, xmlns, user_blocklist, case_types, case_events, settings"
    );
    assert_eq!(
        repeater_error("retry = { max_attemps = 3 }"),
        "repeatd.toml:16:11: repeaters[0].retry: unknown key \"max_attemps\"; did you mean \"max_attempts\"?"
    );
    assert_eq!(
        error_of("[retry]\nfactr = 2.0"),
        "repeatd.toml:2:1: retry: unknown key \"factr\"; did you mean \"factor\"?"
    );
    assert_eq!(
        error_of("[smtp]\nurl = \"smtp://h\"\nfrom = \"a@b\"\nport = 25"),
        "repeatd.toml:4:1: smtp: unknown key \"port\"; expected one of url, from, quiet_period, username, password"
    );
    assert_eq!(
        error_of("[plugins]\nfuel = 1"),
        "repeatd.toml:2:1: plugins: unknown key \"fuel\"; expected one of timeout, memory"
    );
    assert_eq!(
        error_of("[delivery]\nworkers = 1"),
        "repeatd.toml:2:1: delivery: unknown key \"workers\"; expected one of max_in_flight, default_timeout, allowed_networks"
    );
    assert_eq!(
        error_of("[ingest]\nmax_body = 1"),
        "repeatd.toml:2:1: ingest: unknown key \"max_body\"; did you mean \"max_body_bytes\"?"
    );
    assert_eq!(
        error_of("[[domains]]\nname = \"a\"\ntitle = \"A\""),
        "repeatd.toml:3:1: domains[0]: unknown key \"title\"; expected \"name\""
    );
    assert_eq!(
        connection_error(
            "auth = { type = \"basic\", username = \"u\", password = \"p\", realm = \"r\" }"
        ),
        "repeatd.toml:7:8: connections[0].auth: unknown key \"realm\"; expected one of username, password"
    );
    assert_eq!(
        connection_error("auth = { type = \"none\", token = \"t\" }"),
        "repeatd.toml:7:8: connections[0].auth: unknown key \"token\""
    );
}

#[test]
fn plugin_auth_and_settings_take_any_keys() {
    let spec = first_connection(&format!(
        "{BASE}\n[connections.auth]\ntype = \"plugin\"\nplugin = \"hmac-sign\"\nkey_id = \"k1\"\nrounds = 3\nstrict = true\nscopes = [\"a\", \"b\"]\n"
    ));
    let AuthSpec::Plugin { plugin, settings } = spec.auth else {
        panic!("expected plugin auth, found {:?}", spec.auth)
    };
    assert_eq!(plugin, "hmac-sign");
    let settings: BTreeMap<_, _> = settings
        .iter()
        .map(|(key, value)| (key.as_str(), value.expose()))
        .collect();
    assert_eq!(
        settings,
        BTreeMap::from([
            ("key_id", "k1"),
            ("rounds", "3"),
            ("scopes", "[\"a\",\"b\"]"),
            ("strict", "true")
        ])
    );

    let config = parse_ok(&format!(
        "{BASE}settings = {{ pretty = true, indent = 2, style = \"compact\" }}\n"
    ));
    assert_eq!(
        config.repeaters[0].spec.settings,
        BTreeMap::from([
            ("indent".to_owned(), "2".to_owned()),
            ("pretty".to_owned(), "true".to_owned()),
            ("style".to_owned(), "compact".to_owned())
        ])
    );
}

#[test]
fn plugin_auth_settings_may_come_from_the_environment() {
    let text = "[[domains]]\nname = \"demo\"\n[[connections]]\ndomain = \"demo\"\nname = \"c\"\nurl = \"http://example.org/\"\nauth = { type = \"plugin\", plugin = \"hmac\", secret_env = \"HMAC_SECRET\" }\n";
    let config = parse_with_env(text, SOURCE, &env_with(&[("HMAC_SECRET", "s3")])).unwrap();
    let AuthSpec::Plugin { settings, .. } = &config.connections[0].spec.auth else {
        panic!()
    };
    assert_eq!(settings["secret"].expose(), "s3");
    assert_eq!(
        error_of(text),
        "repeatd.toml:7:57: connections[0].auth.secret_env: environment variable \"HMAC_SECRET\" is not set"
    );
    let both = text.replace("secret_env", "secret = \"x\", secret_env");
    assert_eq!(
        parse_with_env(&both, SOURCE, &env_with(&[("HMAC_SECRET", "s3")]))
            .unwrap_err()
            .to_string(),
        "repeatd.toml:7:58: connections[0].auth: give either \"secret\" or \"secret_env\", not both"
    );
}

#[test]
fn wrong_types_are_named() {
    assert_eq!(
        error_of("listen = 8080"),
        "repeatd.toml:1:10: listen: expected an address like \"127.0.0.1:8080\", found integer `8080`"
    );
    assert_eq!(
        error_of("listen = \"localhost:8080\""),
        "repeatd.toml:1:10: listen: expected an address like \"127.0.0.1:8080\", found \"localhost:8080\""
    );
    assert_eq!(
        error_of("data_dir = \"\""),
        "repeatd.toml:1:12: data_dir: must not be empty"
    );
    assert_eq!(
        error_of("smtp = 1"),
        "repeatd.toml:1:8: smtp: expected a table, found integer `1`"
    );
    assert_eq!(
        error_of("[retry]\nmin_wait = 60"),
        "repeatd.toml:2:12: retry.min_wait: expected a duration string like \"90s\", found integer `60`"
    );
    assert_eq!(
        error_of("[retry]\nfactor = \"3\""),
        "repeatd.toml:2:10: retry.factor: expected a number, found string \"3\""
    );
    assert_eq!(
        error_of("[retry]\nmax_attempts = -1"),
        "repeatd.toml:2:16: retry.max_attempts: expected an integer from 0 to 4294967295, found integer `-1`"
    );
    assert_eq!(
        repeater_error("paused = \"yes\""),
        "repeatd.toml:16:10: repeaters[0].paused: expected true or false, found string \"yes\""
    );
    assert_eq!(
        repeater_error("case_types = \"mscase\""),
        "repeatd.toml:16:14: repeaters[0].case_types: expected an array, found string \"mscase\""
    );
    assert_eq!(
        repeater_error("case_types = [\"a\", 2]"),
        "repeatd.toml:16:20: repeaters[0].case_types[1]: expected a string, found integer `2`"
    );
    assert_eq!(
        repeater_error("retry_codes_add = [\"404\"]"),
        "repeatd.toml:16:20: repeaters[0].retry_codes_add[0]: expected an integer from 0 to 65535, found string \"404\""
    );
    assert_eq!(
        error_of("domains = { name = \"demo\" }"),
        "repeatd.toml:1:11: domains: expected an array of tables, found a table"
    );
    assert_eq!(
        connection_error("headers = { X-Count = 1 }"),
        "repeatd.toml:7:23: connections[0].headers.X-Count: expected a string, found integer `1`"
    );
    assert_eq!(
        connection_error("auth = \"basic\""),
        "repeatd.toml:7:8: connections[0].auth: expected a table, found string \"basic\""
    );
    assert_eq!(
        connection_error("timeout = 1979-05-27"),
        "repeatd.toml:7:11: connections[0].timeout: expected a duration string like \"90s\", found datetime 1979-05-27"
    );
}

#[test]
fn missing_keys_are_named() {
    for (error, expected) in [
        (
            error_of("[[domains]]"),
            "repeatd.toml:1:1: domains[0]: missing key \"name\"",
        ),
        (
            error_of(
                "[[domains]]\nname = \"demo\"\n[[connections]]\ndomain = \"demo\"\nname = \"c\"",
            ),
            "repeatd.toml:3:1: connections[0]: missing key \"url\"",
        ),
        (
            error_of(&BASE.replace("format = \"case-json\"", "")),
            "repeatd.toml:10:1: repeaters[0]: missing key \"format\"",
        ),
        (
            error_of(&BASE.replace("kind = \"case\"", "")),
            "repeatd.toml:10:1: repeaters[0]: missing key \"kind\"",
        ),
        (
            connection_error("auth = { type = \"basic\", username = \"u\" }"),
            "repeatd.toml:7:8: connections[0].auth: missing key \"password\" (or \"password_env\")",
        ),
        (
            connection_error("auth = { username = \"u\" }"),
            "repeatd.toml:7:8: connections[0].auth: missing key \"type\"",
        ),
        (
            error_of("[smtp]\nurl = \"smtp://h\""),
            "repeatd.toml:1:1: smtp: missing key \"from\"",
        ),
    ] {
        assert_eq!(error, expected);
    }
}

// --- secrets ---

#[test]
fn secrets_may_come_from_the_environment() {
    let text = r#"
admin_token_env = "ADMIN"
[smtp]
url = "smtp://mail.example.org?tls=starttls"
from = "a@example.org"
username = "mailer"
password_env = "SMTP_PW"
[[domains]]
name = "demo"
[[api_tokens]]
domain = "demo"
token_env = "DEMO_TOKEN"
[[submitters]]
domain = "demo"
username = "danny"
password_env = "DANNY_PW"
[[connections]]
domain = "demo"
name = "a"
url = "https://example.org/"
auth = { type = "oauth2_password", token_url = "https://example.org/token", client_id = "id", client_secret_env = "CS", username = "u", password_env = "PW" }
[[connections]]
domain = "demo"
name = "b"
url = "https://example.org/"
auth = { type = "api_key", header = "X-Key", key_env = "KEY" }
[[connections]]
domain = "demo"
name = "c"
url = "https://example.org/"
auth = { type = "bearer", token_env = "BEARER" }
"#;
    let env = env_with(&[
        ("ADMIN", "admin"),
        ("SMTP_PW", "smtp-pw"),
        ("DEMO_TOKEN", "demo-token"),
        ("DANNY_PW", "danny-pw"),
        ("CS", "client-secret"),
        ("PW", "user-pw"),
        ("KEY", "api-key"),
        ("BEARER", "bearer-token"),
    ]);
    let config = parse_with_env(text, SOURCE, &env).unwrap();
    assert_eq!(config.admin_token.unwrap().expose(), "admin");
    assert_eq!(config.smtp.unwrap().password.unwrap().expose(), "smtp-pw");
    assert_eq!(config.api_tokens[0].token.expose(), "demo-token");
    assert_eq!(config.submitters[0].password.expose(), "danny-pw");
    assert_eq!(
        config.connections[0].spec.auth,
        AuthSpec::Oauth2Password {
            token_url: "https://example.org/token".into(),
            client_id: "id".into(),
            client_secret: Secret::new("client-secret"),
            scope: None,
            username: "u".into(),
            password: Secret::new("user-pw"),
        }
    );
    assert_eq!(
        config.connections[1].spec.auth,
        AuthSpec::ApiKey {
            header: "X-Key".into(),
            key: Secret::new("api-key")
        }
    );
    assert_eq!(
        config.connections[2].spec.auth,
        AuthSpec::Bearer {
            token: Secret::new("bearer-token")
        }
    );
}

#[test]
fn unset_empty_or_doubled_environment_secrets_are_refused() {
    assert_eq!(
        error_of("admin_token_env = \"NOPE\""),
        "repeatd.toml:1:19: admin_token_env: environment variable \"NOPE\" is not set"
    );
    assert_eq!(
        parse_with_env(
            "admin_token_env = \"EMPTY\"",
            SOURCE,
            &env_with(&[("EMPTY", "")])
        )
        .unwrap_err()
        .to_string(),
        "repeatd.toml:1:19: admin_token_env: environment variable \"EMPTY\" is empty"
    );
    assert_eq!(
        error_of("admin_token = \"a\"\nadmin_token_env = \"A\""),
        "repeatd.toml:2:1: give either \"admin_token\" or \"admin_token_env\", not both"
    );
    assert_eq!(
        connection_error(
            "auth = { type = \"basic\", username = \"u\", password = \"p\", password_env = \"P\" }"
        ),
        "repeatd.toml:7:58: connections[0].auth: give either \"password\" or \"password_env\", not both"
    );
    assert_eq!(
        error_of(
            "[[domains]]\nname = \"demo\"\n[[submitters]]\ndomain = \"demo\"\nusername = \"danny\"\npassword_env = \"DANNY_PW\""
        ),
        "repeatd.toml:6:16: submitters[0].password_env: environment variable \"DANNY_PW\" is not set"
    );
    assert_eq!(
        connection_error("auth = { type = \"bearer\", token_env = \"\" }"),
        "repeatd.toml:7:39: connections[0].auth.token_env: must name an environment variable"
    );
}

#[test]
fn secrets_never_print() {
    let secret = Secret::new("hunter2");
    assert_eq!(format!("{secret}"), Secret::PLACEHOLDER);
    assert_eq!(format!("{secret:?}"), "********");
    assert_eq!(secret.expose(), "hunter2");
    let config = parse_ok(
        "admin_token = \"hunter2\"\n[[domains]]\nname = \"demo\"\n[[submitters]]\ndomain = \"demo\"\nusername = \"d\"\npassword = \"hunter3\"",
    );
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter"), "{debug}");
    assert_eq!(serde_json::to_string(&secret).unwrap(), "\"hunter2\"");
}

#[test]
fn empty_secrets_are_refused() {
    assert_eq!(
        error_of("admin_token = \"\""),
        "repeatd.toml:1:15: admin_token: must not be empty"
    );
    assert_eq!(
        connection_error("auth = { type = \"basic\", username = \"u\", password = \"\" }"),
        "repeatd.toml:7:53: connections[0].auth.password: must not be empty"
    );
    assert_eq!(
        error_of("[[domains]]\nname = \"demo\"\n[[api_tokens]]\ndomain = \"demo\"\ntoken = \"\""),
        "repeatd.toml:5:9: api_tokens[0].token: must not be empty"
    );
}

// --- durations and sizes ---

#[test]
fn bad_durations_name_the_key() {
    assert_eq!(
        error_of("[retry]\nmin_wait = \"5 minutes\""),
        "repeatd.toml:2:12: retry.min_wait: invalid duration \"5 minutes\": unknown unit \" minutes\"; use ms, s, m, h or d"
    );
}

#[test]
fn retention_takes_durations_or_off() {
    let defaults = parse_ok("");
    assert_eq!(
        defaults.retention,
        crate::retention::RetentionConfig::default()
    );
    let config = parse_ok(
        "[retention]\nsucceeded = \"2s\"\nempty = \"off\"\ncancelled = \"1h\"\nrejected = \"7d\"\nforms = \"30d\"",
    );
    assert_eq!(config.retention.succeeded, Some(Duration::from_secs(2)));
    assert_eq!(config.retention.empty, None);
    assert_eq!(config.retention.cancelled, Some(Duration::from_secs(3600)));
    assert_eq!(
        config.retention.rejected,
        Some(Duration::from_secs(7 * 86_400))
    );
    assert_eq!(
        config.retention.forms,
        Some(Duration::from_secs(30 * 86_400))
    );
    assert_eq!(
        error_of("[retention]\nsucceeded = \"soon\""),
        "repeatd.toml:2:13: retention.succeeded: invalid duration \"soon\": expected a number and a unit, like \"90s\" (or \"off\" to keep for ever)"
    );
    assert_eq!(
        error_of("[retention]\nforms = \"0s\""),
        "repeatd.toml:2:9: retention.forms: must be longer than zero (or \"off\" to keep for ever)"
    );
    assert_eq!(
        error_of("[retention]\nforms = 30"),
        "repeatd.toml:2:9: retention.forms: expected a duration like \"30d\", or \"off\", found integer `30`"
    );
    assert!(
        error_of("[retention]\nsuceeded = \"1d\"").contains("did you mean"),
        "{}",
        error_of("[retention]\nsuceeded = \"1d\"")
    );
}

#[test]
fn sizes_are_read_from_numbers_and_text() {
    let config =
        parse_ok("[plugins]\nmemory = 1048576\ntimeout = \"1s\"\n[ingest]\nmax_body_bytes = 5000");
    assert_eq!(config.plugins.memory, 1 << 20);
    assert_eq!(config.plugins.timeout, Duration::from_secs(1));
    assert_eq!(config.ingest.max_body_bytes, 5000);
    assert_eq!(
        error_of("[plugins]\nmemory = \"1KiB\""),
        "repeatd.toml:2:10: plugins.memory: must be at least 64KiB, found 1024 bytes"
    );
    assert_eq!(
        error_of("[plugins]\nmemory = true"),
        "repeatd.toml:2:10: plugins.memory: expected a size like \"64MiB\" or a number of bytes, found boolean `true`"
    );
    assert_eq!(
        error_of("[plugins]\ntimeout = \"0s\""),
        "repeatd.toml:2:11: plugins.timeout: must be longer than zero"
    );
    assert_eq!(
        error_of("[ingest]\nmax_body_bytes = 0"),
        "repeatd.toml:2:18: ingest.max_body_bytes: must be at least 1"
    );
}

#[test]
fn delivery_settings() {
    let config = parse_ok(
        "[delivery]\nmax_in_flight = 4\ndefault_timeout = \"5s\"\nallowed_networks = [\"10.0.0.0/8\", \"127.0.0.1\", \"fd00::/8\"]",
    );
    assert_eq!(config.delivery.max_in_flight, 4);
    assert_eq!(config.delivery.default_timeout, Duration::from_secs(5));
    let networks = &config.delivery.allowed_networks;
    assert_eq!(
        networks.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]
    );
    assert!(networks[0].contains("10.1.2.3".parse().unwrap()));
    assert!(networks[0].contains("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!networks[0].contains("11.0.0.1".parse().unwrap()));
    assert!(networks[1].contains("127.0.0.1".parse().unwrap()));
    assert!(!networks[1].contains("127.0.0.2".parse().unwrap()));
    assert!(networks[2].contains("fd12::1".parse().unwrap()));
    assert!(!networks[2].contains("10.0.0.1".parse().unwrap()));
    assert!(
        "0.0.0.0/0"
            .parse::<IpNet>()
            .unwrap()
            .contains("8.8.8.8".parse().unwrap())
    );
    assert_eq!(
        error_of("[delivery]\nallowed_networks = [\"10.0.0.0/33\"]"),
        "repeatd.toml:2:21: delivery.allowed_networks[0]: invalid network \"10.0.0.0/33\": the prefix length must be at most 32"
    );
    assert_eq!(
        error_of("[delivery]\nallowed_networks = [\"intranet\"]"),
        "repeatd.toml:2:21: delivery.allowed_networks[0]: invalid network \"intranet\": expected a CIDR like \"10.0.0.0/8\" or an IP address"
    );
    assert_eq!(
        error_of("[delivery]\nmax_in_flight = 0"),
        "repeatd.toml:2:17: delivery.max_in_flight: must be at least 1"
    );
    assert_eq!(
        error_of("[delivery]\ndefault_timeout = \"0ms\""),
        "repeatd.toml:2:19: delivery.default_timeout: must be longer than zero"
    );
}

// --- smtp ---

#[test]
fn smtp_urls() {
    let smtp = |url: &str| {
        parse_ok(&format!(
            "[smtp]\nurl = \"{url}\"\nfrom = \"a@example.org\""
        ))
        .smtp
        .unwrap()
    };
    let plain = smtp("smtp://127.0.0.1:2525");
    assert_eq!(
        (
            plain.url.as_str(),
            plain.host.as_str(),
            plain.port,
            plain.tls
        ),
        ("smtp://127.0.0.1:2525", "127.0.0.1", 2525, SmtpTls::None)
    );
    assert_eq!(plain.quiet_period, Duration::from_secs(15 * 60));
    let starttls = smtp("smtp://mail.example.org?tls=starttls");
    assert_eq!((starttls.port, starttls.tls), (587, SmtpTls::StartTls));
    let implicit = smtp("smtps://mailer:p%40ss@[::1]");
    assert_eq!(
        (implicit.host.as_str(), implicit.port, implicit.tls),
        ("::1", 465, SmtpTls::Implicit)
    );
    assert_eq!(implicit.username.as_deref(), Some("mailer"));
    assert_eq!(implicit.password.as_ref().map(Secret::expose), Some("p@ss"));
    assert_eq!(implicit.url, "smtps://[::1]");
    assert_eq!(smtp("smtp://h").port, 25);

    let error = |url: &str| {
        error_of(&format!(
            "[smtp]\nurl = \"{url}\"\nfrom = \"a@example.org\""
        ))
    };
    assert_eq!(
        error("http://h"),
        "repeatd.toml:2:7: smtp.url: unsupported scheme \"http\"; use smtp:// or smtps://"
    );
    assert_eq!(
        error("smtp://h?tls=yes"),
        "repeatd.toml:2:7: smtp.url: unknown tls mode \"yes\"; use tls=starttls or tls=none"
    );
    assert_eq!(
        error("smtps://h?tls=starttls"),
        "repeatd.toml:2:7: smtp.url: smtps:// always uses TLS; drop the tls parameter"
    );
    assert_eq!(
        error("smtp://h?auth=plain"),
        "repeatd.toml:2:7: smtp.url: unknown parameter \"auth\"; only \"tls\" is understood"
    );
    assert_eq!(
        error("smtp://h/x"),
        "repeatd.toml:2:7: smtp.url: unexpected path \"/x\""
    );
    assert_eq!(error("smtp:"), "repeatd.toml:2:7: smtp.url: has no host");
    assert_eq!(
        error("nope"),
        "repeatd.toml:2:7: smtp.url: invalid url: relative URL without a base"
    );
    assert_eq!(
        error_of("[smtp]\nurl = \"smtp://u:p@h\"\nfrom = \"a@b\"\nusername = \"v\""),
        "repeatd.toml:2:7: smtp.url: carries credentials and so do smtp.username or smtp.password; keep one"
    );
    assert_eq!(
        error_of("[smtp]\nurl = \"smtp://h\"\nfrom = \"a@b\"\npassword = \"p\""),
        "repeatd.toml:4:12: smtp.password: given without a username"
    );
    assert_eq!(
        error_of("[smtp]\nurl = \"smtp://h\"\nfrom = \"repeatd\""),
        "repeatd.toml:3:8: smtp.from: \"repeatd\" is not an e-mail address (use \"addr@host\" or \"Name <addr@host>\")"
    );
    assert_eq!(smtp("smtp://h").from, "a@example.org");
    assert_eq!(
        error_of("[smtp]\nurl = \"smtp://h\"\nfrom = \"a@b\"\nquiet_period = \"soon\""),
        "repeatd.toml:4:16: smtp.quiet_period: invalid duration \"soon\": expected a number and a unit, like \"90s\""
    );
}

// --- domains, names, duplicates, references ---

#[test]
fn domain_names_are_slugs() {
    for good in ["demo", "a", "0-project", &"a".repeat(63)] {
        parse_ok(&format!("[[domains]]\nname = \"{good}\""));
    }
    for bad in ["Demo", "-demo", "de_mo", "", &"a".repeat(64)] {
        assert_eq!(
            error_of(&format!("[[domains]]\nname = \"{bad}\"")),
            format!(
                "repeatd.toml:2:8: domains[0].name: invalid domain \"{bad}\": use 1 to 63 lowercase letters, digits and '-', starting with a letter or digit"
            )
        );
    }
}

#[test]
fn duplicates_are_refused() {
    assert_eq!(
        error_of("[[domains]]\nname = \"demo\"\n[[domains]]\nname = \"demo\""),
        "repeatd.toml:4:8: domains[1].name: duplicate domain \"demo\""
    );
    assert_eq!(
        error_of(&format!(
            "{BASE}[[connections]]\ndomain = \"demo\"\nname = \"receiver\"\nurl = \"http://example.org/\"\n"
        )),
        "repeatd.toml:18:8: connections[1].name: duplicate connection \"receiver\" in domain \"demo\""
    );
    assert_eq!(
        error_of(&format!(
            "{BASE}[[repeaters]]\ndomain = \"demo\"\nname = \"cases\"\nkind = \"form\"\nconnection = \"receiver\"\nformat = \"form-xml\"\n"
        )),
        "repeatd.toml:18:8: repeaters[1].name: duplicate repeater \"cases\" in domain \"demo\""
    );
    assert_eq!(
        error_of(
            "[[domains]]\nname = \"demo\"\n[[submitters]]\ndomain = \"demo\"\nusername = \"danny\"\npassword = \"a\"\n[[submitters]]\ndomain = \"demo\"\nusername = \"danny\"\npassword = \"b\""
        ),
        "repeatd.toml:9:12: submitters[1].username: duplicate submitter \"danny\" in domain \"demo\""
    );
    // The same names in another domain are fine.
    parse_ok(&format!(
        "{BASE}[[domains]]\nname = \"other\"\n[[connections]]\ndomain = \"other\"\nname = \"receiver\"\nurl = \"http://example.org/\"\n[[repeaters]]\ndomain = \"other\"\nname = \"cases\"\nkind = \"case\"\nconnection = \"receiver\"\nformat = \"case-xml\"\n"
    ));
}

#[test]
fn api_tokens_must_be_distinct() {
    let two = |first: &str, second: &str| {
        format!(
            "admin_token = \"admin\"\n[[domains]]\nname = \"a\"\n[[domains]]\nname = \"b\"\n[[api_tokens]]\ndomain = \"a\"\ntoken = \"{first}\"\n[[api_tokens]]\ndomain = \"b\"\ntoken = \"{second}\""
        )
    };
    parse_ok(&two("t1", "t2"));
    assert_eq!(
        error_of(&two("t1", "t1")),
        "repeatd.toml:11:9: api_tokens[1].token: the same token as api_tokens[0]"
    );
    assert_eq!(
        error_of(&two("admin", "t2")),
        "repeatd.toml:8:9: api_tokens[0].token: must differ from the admin token"
    );
}

#[test]
fn objects_must_name_a_declared_domain() {
    assert_eq!(
        error_of("[[api_tokens]]\ndomain = \"demo\"\ntoken = \"t\""),
        "repeatd.toml:2:10: api_tokens[0].domain: no domain \"demo\" declared in [[domains]]"
    );
    assert_eq!(
        error_of("[[submitters]]\ndomain = \"demo\"\nusername = \"u\"\npassword = \"p\""),
        "repeatd.toml:2:10: submitters[0].domain: no domain \"demo\" declared in [[domains]]"
    );
    assert_eq!(
        error_of(&BASE.replacen(
            "domain = \"demo\"\nname = \"receiver\"",
            "domain = \"dmeo\"\nname = \"receiver\"",
            1
        )),
        "repeatd.toml:6:10: connections[0].domain: no domain \"dmeo\" declared in [[domains]]"
    );
    assert_eq!(
        error_of(&BASE.replacen(
            "domain = \"demo\"\nname = \"cases\"",
            "domain = \"dmeo\"\nname = \"cases\"",
            1
        )),
        "repeatd.toml:11:10: repeaters[0].domain: no domain \"dmeo\" declared in [[domains]]"
    );
}

#[test]
fn a_repeater_names_a_connection_of_its_domain() {
    let text = format!(
        "{BASE}[[repeaters]]\ndomain = \"demo\"\nname = \"a\"\nkind = \"form\"\nconnection = \"receiver\"\nformat = \"form-xml\"\n[[repeaters]]\ndomain = \"demo\"\nname = \"b\"\nkind = \"form\"\nconnection = \"rx\"\nformat = \"form-xml\"\n"
    );
    assert_eq!(
        error_of(&text),
        "repeatd.toml:26:14: repeaters[2].connection: no connection \"rx\" in domain \"demo\""
    );
    let other_domain = format!(
        "{BASE}[[domains]]\nname = \"other\"\n[[repeaters]]\ndomain = \"other\"\nname = \"a\"\nkind = \"form\"\nconnection = \"receiver\"\nformat = \"form-xml\"\n"
    );
    assert_eq!(
        error_of(&other_domain),
        "repeatd.toml:22:14: repeaters[1].connection: no connection \"receiver\" in domain \"other\""
    );
}

#[test]
fn object_names_are_checked() {
    for bad in ["", "a b", "ü", &"a".repeat(65)] {
        assert_eq!(
            error_of(&BASE.replace("name = \"receiver\"", &format!("name = \"{bad}\""))),
            format!(
                "repeatd.toml:7:8: connections[0].name: invalid name \"{bad}\": use 1 to 64 letters, digits, '_', '.' and '-'"
            )
        );
        assert_eq!(
            error_of(&BASE.replace("name = \"cases\"", &format!("name = \"{bad}\""))),
            format!(
                "repeatd.toml:12:8: repeaters[0].name: invalid name \"{bad}\": use 1 to 64 letters, digits, '_', '.' and '-'"
            )
        );
    }
    parse_ok(&BASE.replace("name = \"cases\"", "name = \"Cases_v2.1-x\""));
}

#[test]
fn submitter_usernames_are_checked() {
    let submitter = |username: &str| {
        format!(
            "[[domains]]\nname = \"demo\"\n[[submitters]]\ndomain = \"demo\"\nusername = \"{username}\"\npassword = \"p\""
        )
    };
    assert_eq!(
        error_of(&submitter("")),
        "repeatd.toml:5:12: submitters[0].username: must not be empty"
    );
    assert_eq!(
        error_of(&submitter("a:b")),
        "repeatd.toml:5:12: submitters[0].username: must not contain ':', spaces or control characters"
    );
    parse_ok(&submitter("danny@example.org"));
}

// --- connections ---

#[test]
fn connection_urls_are_absolute_http() {
    let url_error = |url: &str| {
        error_of(&format!(
            "[[domains]]\nname = \"demo\"\n[[connections]]\ndomain = \"demo\"\nname = \"c\"\nurl = \"{url}\""
        ))
    };
    assert_eq!(
        url_error("/in"),
        "repeatd.toml:6:7: connections[0].url: invalid url \"/in\": relative URL without a base"
    );
    assert_eq!(
        url_error("ftp://example.org/"),
        "repeatd.toml:6:7: connections[0].url: url \"ftp://example.org/\" must start with http:// or https://"
    );
    assert_eq!(
        url_error("http://"),
        "repeatd.toml:6:7: connections[0].url: invalid url \"http://\": empty host"
    );
    assert_eq!(
        url_error("file:///etc/passwd"),
        "repeatd.toml:6:7: connections[0].url: url \"file:///etc/passwd\" must start with http:// or https://"
    );
    assert_eq!(
        url_error("https://user:secret@example.org/"),
        "repeatd.toml:6:7: connections[0].url: must not carry a username or password; put them in auth"
    );
    for good in [
        "https://example.org",
        "http://[::1]:9000/in?x=1",
        "http://10.0.0.1/a/b",
    ] {
        parse_ok(&format!(
            "[[domains]]\nname = \"demo\"\n[[connections]]\ndomain = \"demo\"\nname = \"c\"\nurl = \"{good}\""
        ));
    }
}

#[test]
fn notify_entries_are_email_addresses() {
    let spec = first_connection(&format!("{BASE}notify = [\"ops@example.org\", \"dev+x@localhost\"]\n").replace(
        "format = \"case-json\"\nnotify",
        "format = \"case-json\"\n[[connections]]\ndomain = \"demo\"\nname = \"n\"\nurl = \"http://example.org/\"\nnotify",
    ));
    assert_eq!(spec.name, "receiver");
    assert_eq!(
        connection_error("notify = [\"ops@example.org\", \"ops\"]"),
        "repeatd.toml:7:30: connections[0].notify[1]: \"ops\" is not an e-mail address"
    );
    for bad in [
        "@example.org",
        "ops@",
        "ops@exa mple.org",
        "Ops <ops@example.org>",
        "ops@example..org",
    ] {
        assert_eq!(
            connection_error(&format!("notify = [\"{bad}\"]")),
            format!(
                "repeatd.toml:7:11: connections[0].notify[0]: \"{bad}\" is not an e-mail address"
            )
        );
    }
    let config = parse_ok(
        "[[domains]]\nname = \"demo\"\n[[connections]]\ndomain = \"demo\"\nname = \"c\"\nurl = \"http://example.org/\"\nnotify = [\"ops@example.org\", \"dev+x@localhost\"]",
    );
    assert_eq!(
        config.connections[0].spec.notify,
        ["ops@example.org", "dev+x@localhost"]
    );
}

#[test]
fn headers_are_valid_http() {
    let spec = first_connection(
        "[[domains]]\nname = \"demo\"\n[[connections]]\ndomain = \"demo\"\nname = \"c\"\nurl = \"http://example.org/\"\nheaders = { \"X-Source\" = \"repeatd\", Accept = \"*/*\" }\ntimeout = \"5s\"\nskip_cert_verify = true",
    );
    assert_eq!(spec.headers["X-Source"], "repeatd");
    assert_eq!(spec.timeout, Some(Duration::from_secs(5)));
    assert!(spec.skip_cert_verify);
    assert_eq!(
        connection_error("headers = { \"X Bad\" = \"v\" }"),
        "repeatd.toml:7:23: connections[0].headers.\"X Bad\": invalid header name \"X Bad\""
    );
    assert_eq!(
        connection_error("headers = { X-Multi = \"a\\nb\" }"),
        "repeatd.toml:7:23: connections[0].headers.X-Multi: invalid header value (use printable ASCII, no line breaks)"
    );
    assert_eq!(
        connection_error("headers = { Host = \"evil\" }"),
        "repeatd.toml:7:20: connections[0].headers.Host: header \"Host\" is set by repeatd and cannot be configured"
    );
    assert_eq!(
        connection_error("headers = { idempotency-key = \"x\" }"),
        "repeatd.toml:7:31: connections[0].headers.idempotency-key: header \"idempotency-key\" is set by repeatd and cannot be configured"
    );
    assert_eq!(
        connection_error("headers = { X-A = \"1\", x-a = \"2\" }"),
        "repeatd.toml:7:30: connections[0].headers.x-a: given twice (header names ignore case)"
    );
    assert_eq!(
        connection_error("timeout = \"0s\""),
        "repeatd.toml:7:11: connections[0].timeout: must be longer than zero"
    );
}

#[test]
fn auth_values_are_checked() {
    assert_eq!(
        connection_error("auth = { type = \"kerberos\" }"),
        "repeatd.toml:7:17: connections[0].auth.type: unknown auth type \"kerberos\"; expected none, basic, digest, bearer, api_key, oauth2_client_credentials, oauth2_password or plugin"
    );
    assert_eq!(
        connection_error("auth = { type = \"basic\", username = \"a:b\", password = \"p\" }"),
        "repeatd.toml:7:37: connections[0].auth.username: must not contain ':'"
    );
    assert_eq!(
        connection_error("auth = { type = \"digest\", username = \"\", password = \"p\" }"),
        "repeatd.toml:7:38: connections[0].auth.username: must not be empty"
    );
    assert_eq!(
        connection_error("auth = { type = \"bearer\", token = \"a\\nb\" }"),
        "repeatd.toml:7:35: connections[0].auth.token: must be printable ASCII to fit in a header"
    );
    assert_eq!(
        connection_error("auth = { type = \"api_key\", header = \"X Key\", key = \"k\" }"),
        "repeatd.toml:7:37: connections[0].auth.header: invalid header name \"X Key\""
    );
    assert_eq!(
        connection_error(
            "auth = { type = \"oauth2_client_credentials\", token_url = \"/token\", client_id = \"i\", client_secret = \"s\" }"
        ),
        "repeatd.toml:7:58: connections[0].auth.token_url: invalid url \"/token\": relative URL without a base"
    );
    assert_eq!(
        connection_error(
            "auth = { type = \"oauth2_password\", token_url = \"ftp://x/token\", client_id = \"i\", client_secret = \"s\", username = \"u\", password = \"p\" }"
        ),
        "repeatd.toml:7:48: connections[0].auth.token_url: url \"ftp://x/token\" must start with http:// or https://"
    );
    assert_eq!(
        connection_error(
            "auth = { type = \"oauth2_client_credentials\", token_url = \"https://x/token\", client_id = \"\", client_secret = \"s\" }"
        ),
        "repeatd.toml:7:89: connections[0].auth.client_id: must not be empty"
    );
    assert_eq!(
        connection_error("auth = { type = \"plugin\", plugin = \"HMAC\" }"),
        "repeatd.toml:7:36: connections[0].auth.plugin: invalid plugin name \"HMAC\": use lowercase letters, digits, '_' and '-', starting with a letter or digit"
    );
    let spec = first_connection(
        "[[domains]]\nname = \"demo\"\n[[connections]]\ndomain = \"demo\"\nname = \"c\"\nurl = \"http://example.org/\"\nauth = { type = \"oauth2_client_credentials\", token_url = \"https://x/token\", client_id = \"i\", client_secret = \"s\", scope = \"a b\" }",
    );
    assert_eq!(
        spec.auth,
        AuthSpec::Oauth2ClientCredentials {
            token_url: "https://x/token".into(),
            client_id: "i".into(),
            client_secret: Secret::new("s"),
            scope: Some("a b".into())
        }
    );
}

// --- repeaters ---

#[test]
fn retry_policy_rules() {
    assert_eq!(
        error_of("[retry]\nfactor = 0.5"),
        "repeatd.toml:2:10: retry.factor: must be a number of at least 1.0, found 0.5"
    );
    assert_eq!(
        error_of("[retry]\nfactor = inf"),
        "repeatd.toml:2:10: retry.factor: must be a number of at least 1.0, found inf"
    );
    assert_eq!(
        error_of("[retry]\nmax_attempts = 0"),
        "repeatd.toml:2:16: retry.max_attempts: must be at least 1"
    );
    assert_eq!(
        error_of("[retry]\nmin_wait = \"2h\"\nmax_wait = \"1h\""),
        "repeatd.toml:2:12: retry.min_wait: must not be longer than max_wait (2h > 1h)"
    );
    assert_eq!(
        error_of("[retry]\nmin_wait = \"8d\""),
        "repeatd.toml:2:12: retry.min_wait: must not be longer than max_wait (8d > 7d)"
    );
    assert_eq!(parse_ok("[retry]\nfactor = 2").retry.factor, 2.0);

    assert_eq!(
        repeater_error("retry = { factor = 0.9 }"),
        "repeatd.toml:16:20: repeaters[0].retry.factor: must be a number of at least 1.0, found 0.9"
    );
    assert_eq!(
        repeater_error("retry = { max_attempts = 0 }"),
        "repeatd.toml:16:26: repeaters[0].retry.max_attempts: must be at least 1"
    );
    assert_eq!(
        repeater_error("retry = { min_wait = \"1h\", max_wait = \"1m\" }"),
        "repeatd.toml:16:22: repeaters[0].retry.min_wait: must not be longer than max_wait (1h > 1m)"
    );
    // Checked against the defaults too: 10d is longer than the default max_wait.
    assert_eq!(
        repeater_error("retry = { min_wait = \"10d\" }"),
        "repeatd.toml:16:22: repeaters[0].retry.min_wait: must not be longer than max_wait (10d > 7d)"
    );
}

#[test]
fn retry_override_resolves_over_defaults() {
    let defaults = RetryPolicy::default();
    assert_eq!(RetryOverride::default().resolve(&defaults), defaults);
    let partial = RetryOverride {
        max_attempts: Some(2),
        factor: Some(1.5),
        ..RetryOverride::default()
    };
    assert_eq!(
        partial.resolve(&defaults),
        RetryPolicy {
            max_attempts: 2,
            factor: 1.5,
            ..defaults
        }
    );
    let config = parse_ok(&format!(
        "[retry]\nmax_attempts = 9\n{BASE}retry = {{ min_wait = \"5s\" }}\n"
    ));
    assert_eq!(
        config.repeaters[0]
            .spec
            .retry
            .unwrap()
            .resolve(&config.retry),
        RetryPolicy {
            max_attempts: 9,
            min_wait: Duration::from_secs(5),
            ..RetryPolicy::default()
        }
    );
}

#[test]
fn retry_codes_are_status_codes() {
    let config = parse_ok(&format!(
        "{BASE}retry_codes_add = [404, 400]\nretry_codes_remove = [409]\n"
    ));
    assert_eq!(config.repeaters[0].spec.retry_codes_add, [404, 400]);
    assert_eq!(config.repeaters[0].spec.retry_codes_remove, [409]);
    assert_eq!(
        repeater_error("retry_codes_add = [404, 600]"),
        "repeatd.toml:16:25: repeaters[0].retry_codes_add[1]: must be an HTTP status code from 100 to 599, found 600"
    );
    assert_eq!(
        repeater_error("retry_codes_remove = [99]"),
        "repeatd.toml:16:23: repeaters[0].retry_codes_remove[0]: must be an HTTP status code from 100 to 599, found 99"
    );
    assert_eq!(
        repeater_error("retry_codes_add = [201]"),
        "repeatd.toml:16:20: repeaters[0].retry_codes_add[0]: 201 is a success and cannot be retried"
    );
    assert_eq!(
        repeater_error("retry_codes_add = [404]\nretry_codes_remove = [404]"),
        "repeatd.toml:17:23: repeaters[0].retry_codes_remove[0]: 404 is also in retry_codes_add"
    );
    let mut spec = RepeaterSpec::new("r", PayloadKind::Form, "c", "form-xml");
    spec.retry_codes_add = vec![700];
    assert_eq!(
        spec.validate().unwrap_err().to_string(),
        "retry_codes_add[0]: must be an HTTP status code from 100 to 599, found 700"
    );
}

#[test]
fn max_workers_is_between_1_and_64() {
    assert_eq!(
        parse_ok(&format!("{BASE}max_workers = 1\n")).repeaters[0]
            .spec
            .max_workers,
        1
    );
    assert_eq!(
        parse_ok(&format!("{BASE}max_workers = 64\n")).repeaters[0]
            .spec
            .max_workers,
        64
    );
    assert_eq!(
        repeater_error("max_workers = 0"),
        "repeatd.toml:16:15: repeaters[0].max_workers: must be between 1 and 64, found 0"
    );
    assert_eq!(
        repeater_error("max_workers = 65"),
        "repeatd.toml:16:15: repeaters[0].max_workers: must be between 1 and 64, found 65"
    );
}

#[test]
fn method_kind_format_and_events_are_known_words() {
    for (text, method) in [
        ("POST", HttpMethod::Post),
        ("put", HttpMethod::Put),
        ("PUT", HttpMethod::Put),
        ("post", HttpMethod::Post),
    ] {
        assert_eq!(
            parse_ok(&format!("{BASE}method = \"{text}\"\n")).repeaters[0]
                .spec
                .method,
            method
        );
    }
    assert_eq!(
        repeater_error("method = \"GET\""),
        "repeatd.toml:16:10: repeaters[0].method: unknown method \"GET\"; expected POST or PUT"
    );
    assert_eq!(
        error_of(&BASE.replace("kind = \"case\"", "kind = \"cases\"")),
        "repeatd.toml:13:8: repeaters[0].kind: unknown payload kind \"cases\"; expected form, case, form-stub or app-schema; did you mean \"case\"?"
    );
    assert_eq!(
        error_of(&BASE.replace("format = \"case-json\"", "format = \"Case JSON\"")),
        "repeatd.toml:15:10: repeaters[0].format: invalid plugin name \"Case JSON\": use lowercase letters, digits, '_' and '-', starting with a letter or digit"
    );
    parse_ok(&BASE.replace("format = \"case-json\"", "format = \"my_format-2\""));
    assert_eq!(
        repeater_error("case_events = \"close\""),
        "repeatd.toml:16:15: repeaters[0].case_events: unknown case event \"close\"; expected any, create or update"
    );
    assert_eq!(
        parse_ok(&format!("{BASE}case_events = \"create\"\n")).repeaters[0]
            .spec
            .case_events,
        CaseEvents::Create
    );
    for kind in PayloadKind::ALL {
        assert_eq!(kind.to_string().parse::<PayloadKind>(), Ok(kind));
    }
    assert_eq!(
        "form-stub".parse::<PayloadKind>(),
        Ok(PayloadKind::FormStub)
    );
    assert_eq!(PayloadKind::AppSchema.to_string(), "app-schema");
}

#[test]
fn filters_must_fit_the_kind() {
    let form = |extra: &str| {
        error_of(&format!(
            "{}{extra}\n",
            BASE.replace("kind = \"case\"", "kind = \"form\"")
                .replace("case-json", "form-xml")
        ))
    };
    assert_eq!(
        form("case_types = [\"mscase\"]"),
        "repeatd.toml:16:14: repeaters[0].case_types: only applies to case repeaters, not to kind \"form\""
    );
    assert_eq!(
        form("case_events = \"create\""),
        "repeatd.toml:16:15: repeaters[0].case_events: only applies to case repeaters, not to kind \"form\""
    );
    assert_eq!(
        repeater_error("xmlns = [\"http://x\"]"),
        "repeatd.toml:16:9: repeaters[0].xmlns: only applies to form and form-stub repeaters, not to kind \"case\""
    );
    assert_eq!(
        repeater_error("include_app_id_param = false"),
        "repeatd.toml:16:24: repeaters[0].include_app_id_param: only applies to form repeaters, not to kind \"case\""
    );
    let app_schema = BASE
        .replace("kind = \"case\"", "kind = \"app-schema\"")
        .replace("case-json", "app-schema");
    assert_eq!(
        error_of(&format!("{app_schema}user_blocklist = [\"u1\"]\n")),
        "repeatd.toml:16:18: repeaters[0].user_blocklist: only applies to form, form-stub and case repeaters, not to kind \"app-schema\""
    );
    assert_eq!(
        repeater_error("case_types = [\"\"]"),
        "repeatd.toml:16:15: repeaters[0].case_types[0]: must not be empty"
    );

    let config = parse_ok(&format!(
        "{}xmlns = [\"http://openrosa.org/formdesigner/x\"]\nuser_blocklist = [\"u1\"]\ninclude_app_id_param = false\n",
        BASE.replace("kind = \"case\"", "kind = \"form\"")
            .replace("case-json", "form-xml")
    ));
    let spec = &config.repeaters[0].spec;
    assert_eq!(spec.xmlns, ["http://openrosa.org/formdesigner/x"]);
    assert_eq!(spec.user_blocklist, ["u1"]);
    assert!(!spec.include_app_id_param);
}

// --- the admin API's JSON ---

#[test]
fn connection_json_round_trips_with_every_auth_type() {
    let auths = [
        AuthSpec::None,
        AuthSpec::Basic {
            username: "u".into(),
            password: Secret::new("p"),
        },
        AuthSpec::Digest {
            username: "u".into(),
            password: Secret::new("p"),
        },
        AuthSpec::Bearer {
            token: Secret::new("t"),
        },
        AuthSpec::ApiKey {
            header: "X-Key".into(),
            key: Secret::new("k"),
        },
        AuthSpec::Oauth2ClientCredentials {
            token_url: "https://x/token".into(),
            client_id: "i".into(),
            client_secret: Secret::new("s"),
            scope: None,
        },
        AuthSpec::Oauth2Password {
            token_url: "https://x/token".into(),
            client_id: "i".into(),
            client_secret: Secret::new("s"),
            scope: Some("read".into()),
            username: "u".into(),
            password: Secret::new("p"),
        },
        AuthSpec::Plugin {
            plugin: "hmac".into(),
            settings: BTreeMap::from([
                ("secret".into(), Secret::new("s")),
                ("key_id".into(), Secret::new("1")),
            ]),
        },
    ];
    for auth in auths {
        let spec = ConnectionSpec {
            name: "receiver".into(),
            url: "http://127.0.0.1:9000/in".into(),
            notify: vec!["ops@example.org".into()],
            auth,
            headers: BTreeMap::from([("X-Source".into(), "repeatd".into())]),
            timeout: Some(Duration::from_secs(90)),
            skip_cert_verify: false,
            ca_file: None,
            client_cert: None,
            client_key: None,
        };
        spec.validate().unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["auth"]["type"], spec.auth.type_name());
        assert_eq!(json["timeout"], "1m30s");
        let back: ConnectionSpec = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, spec, "{json}");
    }
}

#[test]
fn connection_json_shape() {
    let spec = ConnectionSpec::from_json(json!({
        "name": "receiver",
        "url": "http://127.0.0.1:9000/in",
        "auth": {"type": "basic", "username": "u", "password": "p"},
        "timeout": null,
    }))
    .unwrap();
    assert_eq!(
        serde_json::to_value(&spec).unwrap(),
        json!({
            "name": "receiver",
            "url": "http://127.0.0.1:9000/in",
            "notify": [],
            "auth": {"type": "basic", "username": "u", "password": "p"},
            "headers": {},
            "skip_cert_verify": false,
        })
    );
    assert_eq!(
        serde_json::to_value(spec.redacted()).unwrap()["auth"],
        json!({"type": "basic", "username": "u", "password": "********"})
    );
}

#[test]
fn redacted_hides_every_secret() {
    let spec = ConnectionSpec::from_json(json!({
        "name": "c",
        "url": "https://example.org/",
        "auth": {"type": "oauth2_password", "token_url": "https://x/t", "client_id": "i", "client_secret": "cs", "username": "u", "password": "pw"},
    }))
    .unwrap();
    let text = serde_json::to_string(&spec.redacted()).unwrap();
    assert!(
        !text.contains("\"cs\"") && !text.contains("\"pw\""),
        "{text}"
    );
    let plugin = AuthSpec::Plugin {
        plugin: "p".into(),
        settings: BTreeMap::from([("a".into(), Secret::new("x"))]),
    };
    assert_eq!(
        plugin.redacted(),
        AuthSpec::Plugin {
            plugin: "p".into(),
            settings: BTreeMap::from([("a".into(), Secret::new(Secret::PLACEHOLDER))])
        }
    );
}

#[test]
fn repeater_json_round_trips() {
    let mut spec = RepeaterSpec::new("cases", PayloadKind::Case, "receiver", "case-json");
    spec.paused = true;
    spec.method = HttpMethod::Put;
    spec.max_workers = 1;
    spec.retry = Some(RetryOverride {
        max_attempts: Some(3),
        min_wait: Some(Duration::from_secs(1)),
        max_wait: None,
        factor: Some(2.0),
    });
    spec.retry_codes_add = vec![404];
    spec.case_types = vec!["mscase".into()];
    spec.case_events = CaseEvents::Update;
    spec.settings = BTreeMap::from([("pretty".into(), "true".into())]);
    spec.validate().unwrap();
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["kind"], "case");
    assert_eq!(json["method"], "PUT");
    assert_eq!(json["case_events"], "update");
    assert_eq!(
        json["retry"],
        json!({"max_attempts": 3, "min_wait": "1s", "factor": 2.0})
    );
    let back: RepeaterSpec = serde_json::from_value(json).unwrap();
    assert_eq!(back, spec);

    let minimal = RepeaterSpec::from_json(
        json!({"name": "f", "kind": "form-stub", "connection": "c", "format": "form-stub"}),
    )
    .unwrap();
    assert_eq!(
        minimal,
        RepeaterSpec::new("f", PayloadKind::FormStub, "c", "form-stub")
    );
}

#[test]
fn json_errors_name_the_field() {
    let repeater_error = |body: serde_json::Value| RepeaterSpec::from_json(body).unwrap_err();
    assert_eq!(
        repeater_error(
            json!({"name": "r", "kind": "case", "connection": "c", "format": "case-json", "max_attemps": 1})
        ),
        FieldError::new(
            "",
            "unknown key \"max_attemps\"; expected one of name, kind, connection, format, paused, method, max_workers, retry, retry_codes_add, retry_codes_remove, include_app_id_param, xmlns, user_blocklist, case_types, case_events, settings"
        )
    );
    assert_eq!(
        repeater_error(json!({"name": "r", "kind": "case", "connection": "c", "format": "case-json", "retry": {"min_wait": 60}})).to_string(),
        "retry.min_wait: expected a duration string like \"90s\", found integer `60`"
    );
    assert_eq!(
        repeater_error(json!({"name": "r", "kind": "case", "connection": "c", "format": "case-json", "retry": "fast"})).to_string(),
        "retry: expected an object, found string \"fast\""
    );
    assert_eq!(
        repeater_error(json!([1])).to_string(),
        "expected an object, found an array"
    );
    assert_eq!(
        repeater_error(json!({"name": "r", "kind": "case", "connection": "c", "format": "case-json", "domain": "demo"})).to_string(),
        "unknown key \"domain\"; expected one of name, kind, connection, format, paused, method, max_workers, retry, retry_codes_add, retry_codes_remove, include_app_id_param, xmlns, user_blocklist, case_types, case_events, settings"
    );
    let error = RepeaterSpec::from_json(json!({"name": "r"})).unwrap_err();
    assert_eq!(error.to_string(), "missing key \"kind\"");
    let invalid = RepeaterSpec::from_json(json!({"name": "r", "kind": "form", "connection": "c", "format": "form-xml", "case_types": ["x"]})).unwrap();
    assert_eq!(
        invalid.validate().unwrap_err(),
        FieldError::new(
            "case_types",
            "only applies to case repeaters, not to kind \"form\""
        )
    );
}

#[test]
fn json_bodies_cannot_read_the_environment() {
    let error = ConnectionSpec::from_json(json!({
        "name": "c",
        "url": "https://example.org/",
        "auth": {"type": "bearer", "token_env": "REPEATD_ADMIN_TOKEN"},
    }))
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "auth.token_env: environment variables can only be named in the config file"
    );
    let error = ConnectionSpec::from_json(json!({
        "name": "c", "url": "https://example.org/", "auth": {"type": "basic", "username": "u"},
    }))
    .unwrap_err();
    assert_eq!(error.to_string(), "auth: missing key \"password\"");
    // A plugin setting named like a reference is passed on literally.
    let spec = ConnectionSpec::from_json(json!({
        "name": "c", "url": "https://example.org/", "auth": {"type": "plugin", "plugin": "p", "secret_env": "HOME"},
    }))
    .unwrap();
    let AuthSpec::Plugin { settings, .. } = spec.auth else {
        panic!()
    };
    assert_eq!(settings["secret_env"].expose(), "HOME");
}

#[test]
fn field_errors_nest() {
    assert_eq!(
        FieldError::new("connection", "x")
            .within("repeaters[2]")
            .field,
        "repeaters[2].connection"
    );
    assert_eq!(
        FieldError::new("", "x").within("repeaters[2]").field,
        "repeaters[2]"
    );
    assert_eq!(
        FieldError::new("[1]", "x").within("notify").field,
        "notify[1]"
    );
    assert_eq!(FieldError::new("a", "x").within("").field, "a");
    assert_eq!(
        FieldError::new("", "unknown key \"a\"").to_string(),
        "unknown key \"a\""
    );
}

#[test]
fn api_bodies_may_leave_the_name_to_the_url() {
    let spec =
        RepeaterSpec::from_json(json!({"kind": "form", "connection": "c", "format": "form-xml"}))
            .unwrap();
    assert_eq!(spec.name, "");
    assert_eq!(
        spec.validate().unwrap_err().to_string(),
        "name: invalid name \"\": use 1 to 64 letters, digits, '_', '.' and '-'"
    );
    let spec = ConnectionSpec::from_json(json!({"url": "https://example.org/"})).unwrap();
    assert_eq!(spec.name, "");
    // The file still requires it.
    assert_eq!(
        error_of(
            "[[domains]]\nname = \"demo\"\n[[connections]]\ndomain = \"demo\"\nurl = \"http://example.org/\""
        ),
        "repeatd.toml:3:1: connections[0]: missing key \"name\""
    );
}

#[test]
fn form_stub_repeaters_take_the_form_filters() {
    let stub = BASE
        .replace("kind = \"case\"", "kind = \"form-stub\"")
        .replace("case-json", "form-stub");
    let config = parse_ok(&format!(
        "{stub}xmlns = [\"http://x\"]\nuser_blocklist = [\"u1\"]\n"
    ));
    assert_eq!(config.repeaters[0].spec.xmlns, ["http://x"]);
    assert_eq!(
        error_of(&format!("{stub}include_app_id_param = false\n")),
        "repeatd.toml:16:24: repeaters[0].include_app_id_param: only applies to form repeaters, not to kind \"form-stub\""
    );
    assert_eq!(
        error_of(&format!("{stub}case_types = [\"mscase\"]\n")),
        "repeatd.toml:16:14: repeaters[0].case_types: only applies to case repeaters, not to kind \"form-stub\""
    );
}

// --- positions, near misses, causes ---

#[test]
fn errors_carry_the_line_and_column_of_the_key_or_value() {
    let text = format!(
        "{BASE}[[repeaters]]\ndomain = \"demo\"\nname = \"a\"\nkind = \"form\"\nconnection = \"receiver\"\nformat = \"form-xml\"\n[[repeaters]]\ndomain = \"demo\"\nname = \"b\"\nkind = \"form\"\nconnection = \"receiver\"\nformat = \"form-xml\"\nretry = {{ max_atempts = 3 }}\n"
    );
    let error = parse_with_env(&text, SOURCE, &no_env).unwrap_err();
    let ConfigError::Invalid {
        location: Some(location),
        error: field_error,
        ..
    } = &error
    else {
        panic!("expected a located error, found {error:?}")
    };
    assert_eq!(field_error.field, "repeaters[2].retry");
    // Line 28 is the `retry` line; column 11 is the unknown key in it.
    assert_eq!(
        text.lines().nth(location.line - 1).unwrap(),
        "retry = { max_atempts = 3 }"
    );
    assert_eq!((location.line, location.column), (28, 11));
    assert_eq!(
        error.to_string(),
        "repeatd.toml:28:11: repeaters[2].retry: unknown key \"max_atempts\"; did you mean \"max_attempts\"?"
    );
}

#[test]
fn a_rule_broken_after_reading_points_at_the_value() {
    let error = error_of(&BASE.replace("connection = \"receiver\"", "connection = \"rx\""));
    assert_eq!(
        error,
        "repeatd.toml:14:14: repeaters[0].connection: no connection \"rx\" in domain \"demo\""
    );
}

#[test]
fn unknown_keys_get_a_near_miss_or_the_keys_there_are() {
    assert_eq!(
        repeater_error("max_worker = 3"),
        "repeatd.toml:16:1: repeaters[0]: unknown key \"max_worker\"; did you mean \"max_workers\"?"
    );
    assert_eq!(
        error_of("[smtp]\nurl = \"smtp://h\"\nfrom = \"a@b\"\ntls = true"),
        "repeatd.toml:4:1: smtp: unknown key \"tls\"; expected one of url, from, quiet_period, username, password"
    );
    assert_eq!(
        connection_error("auth = { type = \"basik\", username = \"u\", password = \"p\" }"),
        "repeatd.toml:7:17: connections[0].auth.type: unknown auth type \"basik\"; expected none, basic, digest, bearer, api_key, oauth2_client_credentials, oauth2_password or plugin; did you mean \"basic\"?"
    );
    // Only secrets may come from the environment.
    assert_eq!(
        connection_error("url_env = \"URL\""),
        "repeatd.toml:7:1: connections[0]: unknown key \"url_env\"; did you mean \"url\"?"
    );
    let error = RepeaterSpec::from_json(
        json!({"name": "r", "kind": "case", "connection": "c", "format": "case-json", "max_workrs": 2}),
    )
    .unwrap_err();
    assert_eq!(
        error,
        FieldError::new(
            "",
            "unknown key \"max_workrs\"; did you mean \"max_workers\"?"
        )
    );
}

#[test]
fn a_missing_file_says_its_cause_once() {
    let error = load_with_env(Some(Path::new("/nonexistent/repeatd.toml")), &no_env).unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(error));
    assert_eq!(
        chain.matches("No such file or directory").count(),
        1,
        "{chain}"
    );
    assert_eq!(
        chain,
        "/nonexistent/repeatd.toml: cannot read the config file: No such file or directory (os error 2)"
    );
}

#[test]
fn json_errors_are_in_the_same_words() {
    let error = ConnectionSpec::from_json(json!({"url": "https://example.org/", "timeout": 5}))
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "timeout: expected a duration string like \"90s\", found integer `5`"
    );
    let error = ConnectionSpec::from_json(
        json!({"url": "https://example.org/", "auth": {"type": "basic", "username": "u", "password": 7}}),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "auth.password: expected a string, found integer `7`"
    );
    let error = ConnectionSpec::from_json(json!({"url": "https://example.org/", "headers": []}))
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "headers: expected an object, found an array"
    );
}

#[test]
fn a_table_cannot_be_given_as_an_array() {
    assert_eq!(
        error_of("retry = [3]"),
        "repeatd.toml:1:9: retry: expected a table, found an array"
    );
    assert_eq!(
        error_of("domains = [[\"demo\"]]"),
        "repeatd.toml:1:12: domains[0]: expected a table, found an array"
    );
    assert_eq!(
        repeater_error("retry = [3]"),
        "repeatd.toml:16:9: repeaters[0].retry: expected a table, found an array"
    );
    assert_eq!(
        RepeaterSpec::from_json(
            json!({"name": "r", "kind": "case", "connection": "c", "format": "case-json", "retry": [3]})
        )
        .unwrap_err()
        .to_string(),
        "retry: expected an object, found an array"
    );
}

// --- [store] ---

#[test]
fn the_store_is_redb_unless_the_file_says_postgres() {
    let config = parse_ok("");
    assert_eq!(config.store.backend, StoreBackend::Redb);
    assert_eq!(config.store.url, None);
    assert_eq!(config.store.lease, Duration::from_secs(30));

    let config = parse_ok(
        "[store]\nbackend = \"postgres\"\nurl = \"postgres://repeatd:pw@127.0.0.1/repeatd\"\nlease = \"1m\"",
    );
    assert_eq!(config.store.backend, StoreBackend::Postgres);
    assert_eq!(
        config.store.url.as_ref().map(Secret::expose),
        Some("postgres://repeatd:pw@127.0.0.1/repeatd")
    );
    assert_eq!(config.store.lease, Duration::from_secs(60));
    assert!(
        !format!("{config:?}").contains(":pw@"),
        "the URL's password never shows in the Debug output"
    );
}

#[test]
fn the_store_url_may_come_from_the_environment() {
    let text = "[store]\nbackend = \"postgres\"\nurl_env = \"REPEATD_PG\"";
    let env = env_with(&[("REPEATD_PG", "postgres://repeatd@db/repeatd")]);
    let config = parse_with_env(text, SOURCE, &env).unwrap();
    assert_eq!(
        config.store.url.as_ref().map(Secret::expose),
        Some("postgres://repeatd@db/repeatd")
    );
    assert_eq!(config.store.url_env.as_deref(), Some("REPEATD_PG"));
    assert_eq!(
        error_of(text),
        "repeatd.toml:3:11: store.url_env: environment variable \"REPEATD_PG\" is not set"
    );
    let empty = env_with(&[("REPEATD_PG", "")]);
    assert_eq!(
        parse_with_env(text, SOURCE, &empty)
            .unwrap_err()
            .to_string(),
        "repeatd.toml:3:11: store.url_env: environment variable \"REPEATD_PG\" is empty"
    );
    assert_eq!(
        error_of(&format!("{text}\nurl = \"postgres://db/repeatd\"")),
        "repeatd.toml:3:11: store.url_env: give either \"url\" or \"url_env\", not both"
    );
}

#[test]
fn store_mistakes_are_named() {
    assert_eq!(
        error_of("[store]\nbackend = \"mysql\""),
        "repeatd.toml:2:11: store.backend: unknown backend \"mysql\"; expected redb or postgres"
    );
    assert_eq!(
        error_of("[store]\nbackend = \"postgres\""),
        "repeatd.toml:1:1: store: backend \"postgres\" needs \"url\" or \"url_env\""
    );
    assert_eq!(
        error_of("[store]\nurl = \"postgres://db/repeatd\""),
        "repeatd.toml:2:7: store.url: is for backend = \"postgres\"; the backend is \"redb\" (the default)"
    );
    assert_eq!(
        error_of("[store]\nbackend = \"postgres\"\nurl = \"mysql://db/repeatd\""),
        "repeatd.toml:3:7: store.url: expected a URL like \"postgres://user:password@host/database\""
    );
    assert_eq!(
        error_of("[store]\nlease = \"0s\""),
        "repeatd.toml:2:9: store.lease: must be longer than zero"
    );
    assert_eq!(
        error_of("[store]\nlease = 30"),
        "repeatd.toml:2:9: store.lease: expected a duration string like \"90s\", found integer `30`"
    );
    assert!(
        error_of("[store]\nbakend = \"redb\"").contains("did you mean \"backend\"?"),
        "{}",
        error_of("[store]\nbakend = \"redb\"")
    );
}
