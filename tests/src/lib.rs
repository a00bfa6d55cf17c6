//! The end-to-end test kit: the real gateway on loopback (in-process, or the
//! built binary for crash tests), a real HTTP receiver whose answers a test
//! can script, and helpers to submit forms and call the admin API. Only
//! loopback addresses are used.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes_shim::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub mod load;
pub mod remote;
pub mod virtual_time;

mod bytes_shim {
    pub use hyper::body::Bytes;
}

pub const SEED_FORM: &[u8] = include_bytes!("../../../shared/acceptance/seed_form.xml");
pub const SEED_APP_ID: &str = "db9f874f0219444ee7848ddd023e292e";
pub const SEED_FORM_ID: &str = "afcb3026-c4b3-463f-85ec-0cb9a2737fc5";
pub const SEED_CASE_ID: &str = "b0916685-7247-4c44-b712-633d3d64e0c0";

/// The path of a CommCare fixture.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/commcare")
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
    arrived: Arc<tokio::sync::Notify>,
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
            arrived: Arc::new(tokio::sync::Notify::new()),
        };
        let serving = receiver.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let receiver = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let receiver = receiver.clone();
                        async move { receiver.handle(request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
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
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        let path = parts.uri.path().to_owned();
        let received = Received {
            method: parts.method.to_string(),
            path: path.clone(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
            at: Instant::now(),
        };
        let answer = {
            let mut state = self.state.lock().unwrap();
            state.requests.push(received);
            match state.plans.get_mut(&path) {
                Some(plan) if plan.len() > 1 => plan.pop_front().unwrap(),
                Some(plan) => plan.front().cloned().unwrap_or(Answer::Status(200)),
                None => Answer::Status(200),
            }
        };
        self.arrived.notify_waiters();
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

    /// Waits until `path` got at least `n` requests (or `timeout` passes).
    pub async fn wait(&self, path: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            let got = self.requests(path);
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            let _ = tokio::time::timeout(
                Duration::from_millis(50).min(deadline - Instant::now()),
                notified,
            )
            .await;
        }
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
    client: reqwest::Client,
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
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
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

    /// Submits a form as `danny:pw` (raw XML).
    pub async fn submit(&self, domain: &str, xml: &[u8], app_id: Option<&str>) -> (u16, String) {
        self.submit_as(domain, xml, app_id, ("danny", "pw"), "text/xml")
            .await
    }

    pub async fn submit_as(
        &self,
        domain: &str,
        xml: &[u8],
        app_id: Option<&str>,
        user: (&str, &str),
        content_type: &str,
    ) -> (u16, String) {
        let path = match app_id {
            Some(app) => format!("/a/{domain}/receiver/{app}"),
            None => format!("/a/{domain}/receiver"),
        };
        let response = self
            .client
            .post(self.url(&path))
            .basic_auth(user.0, Some(user.1))
            .header("content-type", content_type)
            .body(xml.to_vec())
            .send()
            .await
            .expect("submitting");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Calls the admin API with the admin token.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_as(ADMIN_TOKEN, method, path, body).await
    }

    pub async fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method.parse().expect("method"), self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).expect("JSON body"));
        }
        let response = request.send().await.expect("calling the API");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The domain's records (all of them, up to 10,000).
    pub async fn records(&self, domain: &str, query: &str) -> Vec<Value> {
        let (status, body) = self
            .api(
                "GET",
                &format!("/api/v1/domains/{domain}/records?limit=10000&{query}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "listing records: {body}");
        body["records"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until every record of the domain matching `query` is in `state`
    /// and there are `n` of them; returns them.
    pub async fn wait_records(
        &self,
        domain: &str,
        query: &str,
        n: usize,
        state: &str,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records(domain, query).await;
            let done = records.len() == n && records.iter().all(|r| r["state"] == state);
            if done || Instant::now() >= deadline {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
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
