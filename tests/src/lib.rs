//! The end-to-end test kit: the real gateway on loopback (in-process, or the
//! built binary for crash tests), a real HTTP receiver whose answers a test
//! can script, and helpers to submit forms and call the admin API. Only
//! loopback addresses are used.
//!
//! # Layout
//! - this file: the scriptable [`Receiver`], the in-process [`Gateway`] and
//!   config snippets;
//! - [`browser`]: headless Chromium over WebDriver, for the console;
//! - [`client`]: HTTP calls to a running gateway (submit, admin API, records);
//! - [`daemon`]: the built binary in its own process ([`Daemon`], [`Launch`]);
//! - [`wait`]: [`eventually`], waiting on a condition rather than a clock;
//! - [`remote`]: a remote whose every answer a closure decides;
//! - [`tls`]: a private CA made per test and an HTTPS remote that may
//!   require a client certificate;
//! - [`raw_remote`]: a hostile remote writing bytes by hand over bare TCP;
//! - [`smtp`]: a real SMTP server (aiosmtpd) that keeps what it accepts;
//! - [`load`]: the load harness behind `repeatd-load`;
//! - [`pg`]: a fresh PostgreSQL database per test, for the cluster tests.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use serde_json::Value;

pub mod browser;
pub mod client;
pub mod daemon;
pub mod fixture_session;
mod http;
pub mod load;
pub mod pg;
pub mod raw_remote;
pub mod remote;
pub mod size_bench;
pub mod smtp;
pub mod tls;
pub mod virtual_time;
pub mod wait;

/// The paths of the test and example plugins `build.rs` built to components
/// (`TRAPPING`, `LOOPING`, `STANDARD_WEBHOOKS_EXAMPLE`, …).
pub mod wasm {
    include!(concat!(env!("OUT_DIR"), "/wasm_components.rs"));
}

pub use client::Client;
pub use daemon::{Daemon, Launch, Stopped};
pub use wait::{eventually, wait_for};

/// The project's seed form (`tests/fixtures/seed_form.xml`): one case created,
/// namespaced meta, device times with an offset.
pub const SEED_FORM: &[u8] = include_bytes!("../fixtures/seed_form.xml");
pub const SEED_APP_ID: &str = "db9f874f0219444ee7848ddd023e292e";
pub const SEED_FORM_ID: &str = "e4b1f7a2-3c58-4d0e-9f61-7a2b8c4d5e90";
pub const SEED_CASE_ID: &str = "5d0c2a7e-81f4-4b39-a6d2-9e3c70b1f4a8";

/// The path of a file under the project's own `tests/fixtures/` (see the README there).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

pub fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("repeatd-test-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- the receiver -------------------------------------------------------------

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    /// A status with extra headers (e.g. `Retry-After`).
    WithHeaders(u16, Vec<(String, String)>),
    /// Wait this long, then answer the status.
    Slow(Duration, u16),
    /// Close the connection without answering.
    Drop,
}

impl Answer {
    /// `status` with a `Retry-After: {retry_after}` header.
    pub fn retry_after(status: u16, retry_after: &str) -> Answer {
        Answer::WithHeaders(status, vec![("Retry-After".into(), retry_after.into())])
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct ReceiverState {
    requests: Vec<Received>,
    /// Per path: answers to give in turn; the last one repeats.
    plans: HashMap<String, VecDeque<Answer>>,
}

/// A real HTTP receiver on loopback that records what arrives and answers as
/// told (200 unless a plan says otherwise).
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let receiver = Receiver {
            addr,
            state: Arc::new(Mutex::new(ReceiverState::default())),
        };
        let serving = receiver.clone();
        http::serve(listener, move |request| {
            let receiver = serving.clone();
            async move { receiver.handle(request).await }
        });
        receiver
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers for `path`, in turn; the last one repeats.
    pub fn plan(&self, path: &str, answers: Vec<Answer>) {
        self.state
            .lock()
            .unwrap()
            .plans
            .insert(path.to_owned(), answers.into_iter().collect());
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let received = Received::read(request).await;
        let path = received.path.clone();
        let answer = {
            let mut state = self.state.lock().unwrap();
            state.requests.push(received);
            match state.plans.get_mut(&path) {
                Some(plan) if plan.len() > 1 => plan.pop_front().unwrap(),
                Some(plan) => plan.front().cloned().unwrap_or(Answer::Status(200)),
                None => Answer::Status(200),
            }
        };
        let (status, headers) = match answer {
            Answer::Status(status) => (status, Vec::new()),
            Answer::WithHeaders(status, headers) => (status, headers),
            Answer::Slow(wait, status) => {
                tokio::time::sleep(wait).await;
                (status, Vec::new())
            }
            Answer::Drop => {
                return Err(std::io::Error::other("dropping the connection as planned"));
            }
        };
        let text = if (200..300).contains(&status) {
            "ok".to_owned()
        } else {
            format!("remote says no: error {status}")
        };
        let mut response = Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(name, value);
        }
        Ok(response.body(Full::new(Bytes::from(text))).unwrap())
    }

    pub fn requests(&self, path: &str) -> Vec<Received> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got at least `n` requests; returns them (those
    /// that came when `timeout` passes first).
    pub async fn wait(&self, path: &str, n: usize, timeout: Duration) -> Vec<Received> {
        http::wait_requests(n, timeout, || self.requests(path)).await
    }
}

// ---- the gateway ------------------------------------------------------------------

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The real gateway, in this process, on `127.0.0.1:0`.
pub struct Gateway {
    pub addr: SocketAddr,
    pub state: Arc<repeatd::AppState>,
    pub dir: Arc<TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    client: Client,
}

/// The config head every test gateway uses: its own data and plugin dirs.
pub fn config_head(dir: &Path) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nplugin_dir = \"{}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n",
        dir.join("data").display(),
        dir.join("plugins.d").display()
    )
}

impl Gateway {
    pub async fn start(config_body: &str) -> Gateway {
        Gateway::start_in(Arc::new(TempDir::new("gw")), config_body).await
    }

    /// Starts on an existing directory (to restart over the same data).
    pub async fn start_in(dir: Arc<TempDir>, config_body: &str) -> Gateway {
        Gateway::launch(dir, config_body, repeatd::clock::Clock::system()).await
    }

    /// Starts with every "now" and sleep of the gateway on `clock` (one made
    /// with `Clock::starting_at` under `tokio::time::pause` moves only as
    /// the test advances time).
    pub async fn start_with_clock(config_body: &str, clock: repeatd::clock::Clock) -> Gateway {
        Gateway::launch(Arc::new(TempDir::new("gw")), config_body, clock).await
    }

    async fn launch(dir: Arc<TempDir>, config_body: &str, clock: repeatd::clock::Clock) -> Gateway {
        let text = format!("{}{config_body}", config_head(dir.path()));
        let config = repeatd::config::parse(&text, "test.toml")
            .unwrap_or_else(|e| panic!("test config: {e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (state, _) = repeatd::start_with_clock(config, clock)
            .await
            .unwrap_or_else(|e| panic!("gateway start: {e:#}"));
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let serving = state.clone();
        let task = tokio::spawn(async move {
            repeatd::serve(serving, listener, async move {
                let _ = stop.await;
            })
            .await
        });
        Gateway {
            addr,
            state,
            dir,
            shutdown: Some(shutdown),
            task: Some(task),
            client: Client::new(addr),
        }
    }

    /// Stops serving and lets sends under way finish.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Deref for Gateway {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// The config of one domain "demo" with submitter danny:pw, a connection
/// per (name, url) and the given repeaters section.
pub fn demo_config(connections: &[(&str, &str)], repeaters: &str) -> String {
    let mut text = String::from(
        "[[domains]]\nname = \"demo\"\n\n[[submitters]]\ndomain = \"demo\"\nusername = \"danny\"\npassword = \"pw\"\n",
    );
    for (name, url) in connections {
        text.push_str(&format!(
            "\n[[connections]]\ndomain = \"demo\"\nname = \"{name}\"\nurl = \"{url}\"\nauth = {{ type = \"none\" }}\n"
        ));
    }
    text.push('\n');
    text.push_str(repeaters);
    text
}

/// A repeater section.
pub fn repeater(name: &str, kind: &str, connection: &str, format: &str, extra: &str) -> String {
    format!(
        "\n[[repeaters]]\ndomain = \"demo\"\nname = \"{name}\"\nkind = \"{kind}\"\nconnection = \"{connection}\"\nformat = \"{format}\"\n{extra}\n"
    )
}

/// The built `repeatd` binary (nextest and cargo test build it with the workspace).
pub fn repeatd_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let binary = dir.join(format!("repeatd{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        binary.display()
    );
    binary
}

/// `repeatd` beside the running program: where cargo puts a workspace's
/// binaries, so a benchmark binary (`target/release/repeatd-load`) finds the
/// gateway built with it (`repeatd` on the PATH when that cannot be told).
/// Test binaries, one directory further down, use [`repeatd_binary`].
pub fn repeatd_beside_this_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.parent()
                .map(|dir| dir.join(format!("repeatd{}", std::env::consts::EXE_SUFFIX)))
        })
        .unwrap_or_else(|| PathBuf::from("repeatd"))
}

/// Whether `text` is a timestamp as the gateway writes them:
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds), every digit a digit.
pub fn is_timestamp(text: &str) -> bool {
    const SHAPE: &[u8; 27] = b"dddd-dd-ddTdd:dd:dd.ddddddZ";
    text.len() == SHAPE.len()
        && text.bytes().zip(SHAPE).all(|(byte, &want)| match want {
            b'd' => byte.is_ascii_digit(),
            _ => byte == want,
        })
}

/// A form with a fresh instance id and one case block, for load tests.
pub fn generated_form(form_id: &str, case_id: &str, case_type: &str) -> Vec<u8> {
    format!(
        r#"<?xml version='1.0' ?>
<data xmlns="http://openrosa.org/formdesigner/generated" name="Generated">
  <n0:case case_id="{case_id}" date_modified="2024-01-01T10:00:00.000000Z" user_id="u1" xmlns:n0="http://commcarehq.org/case/transaction/v2"><n0:create><n0:case_name>case {case_id}</n0:case_name><n0:owner_id>u1</n0:owner_id><n0:case_type>{case_type}</n0:case_type></n0:create><n0:update><n0:visit>1</n0:visit></n0:update></n0:case>
  <n1:meta xmlns:n1="http://openrosa.org/jr/xforms"><n1:userID>u1</n1:userID><n1:username>danny</n1:username><n1:instanceID>{form_id}</n1:instanceID></n1:meta>
</data>"#
    )
    .into_bytes()
}
