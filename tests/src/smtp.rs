//! A real SMTP server on loopback for the tests that check e-mails: aiosmtpd,
//! run by `tests/smtp_sink.py`, writing each message it accepts to a
//! directory that [`SmtpSink::mails`] reads back as [`Mail`]s.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::{TempDir, wait_for};

/// How long the server may take to start.
const WAIT: Duration = Duration::from_secs(20);

/// Installs aiosmtpd when it is missing (as `.ci/setup-test-deps` does), and
/// fails loudly when it still cannot be imported.
pub fn ensure_aiosmtpd() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let importable = || {
            Command::new("python3")
                .args(["-c", "import aiosmtpd"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        if !importable() {
            let install = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "aiosmtpd",
                ])
                .status();
            assert!(
                importable(),
                "the e-mail tests need Python's aiosmtpd and it cannot be imported even after \
                 `python3 -m pip install aiosmtpd` ({install:?}); run .ci/setup-test-deps"
            );
        }
    });
}

/// A loopback port nobody listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("finding a free port")
        .port()
}

/// One e-mail as the SMTP server received it, parsed by Python's `email`.
#[derive(Debug, Clone)]
pub struct Mail {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub headers: Vec<(String, String)>,
    pub subject: String,
    pub content_type: String,
    pub body: String,
}

impl Mail {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(found, _)| found.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn lines(&self) -> Vec<&str> {
        self.body
            .lines()
            .map(|line| line.trim_end_matches('\r'))
            .collect()
    }

    pub fn assert_line(&self, expected: &str) {
        assert!(
            self.lines().contains(&expected),
            "the e-mail has no line {expected:?}:\n{}",
            self.body
        );
    }
}

/// aiosmtpd on 127.0.0.1, writing each message it accepts to a directory.
pub struct SmtpSink {
    pub port: u16,
    dir: TempDir,
    _child: tokio::process::Child,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        SmtpSink::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> SmtpSink {
        ensure_aiosmtpd();
        let dir = TempDir::new("smtp");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp_sink.py");
        let errors =
            std::fs::File::create(dir.path().join("stderr")).expect("creating the sink's log");
        let mut child = tokio::process::Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(dir.path().join("mail"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(errors)
            .kill_on_drop(true)
            .spawn()
            .expect("starting python3 smtp_sink.py");
        let stdout = child.stdout.take().expect("the sink's stdout");
        let mut first_line = String::new();
        let ready = tokio::time::timeout(
            WAIT,
            tokio::io::BufReader::new(stdout).read_line(&mut first_line),
        )
        .await;
        if !matches!(ready, Ok(Ok(_))) || first_line.trim() != "ready" {
            let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
            panic!(
                "the SMTP server did not start on port {port} ({ready:?}, {first_line:?}):\n{log}"
            );
        }
        SmtpSink {
            port,
            dir,
            _child: child,
        }
    }

    pub fn mails(&self) -> Vec<Mail> {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("mail")) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).expect("reading a received e-mail");
                let json: Value = serde_json::from_str(&text).expect("the sink writes JSON");
                Mail {
                    mail_from: json["mail_from"].as_str().unwrap().to_owned(),
                    rcpt_tos: json["rcpt_tos"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|to| to.as_str().unwrap().to_owned())
                        .collect(),
                    headers: json["headers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|pair| {
                            (
                                pair[0].as_str().unwrap().to_owned(),
                                pair[1].as_str().unwrap().to_owned(),
                            )
                        })
                        .collect(),
                    subject: json["subject"].as_str().unwrap().to_owned(),
                    content_type: json["content_type"].as_str().unwrap().to_owned(),
                    body: json["body"].as_str().unwrap_or_default().to_owned(),
                }
            })
            .collect()
    }

    /// Waits until at least `n` e-mails arrived; returns them (those that
    /// came when `timeout` passes first).
    pub async fn wait_mails(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        let arrived = wait_for(timeout, || async {
            let mails = self.mails();
            if mails.len() >= n {
                Ok(mails)
            } else {
                Err(mails)
            }
        })
        .await;
        arrived.unwrap_or_else(|so_far| so_far)
    }
}
