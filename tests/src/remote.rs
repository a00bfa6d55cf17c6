//! A scriptable remote for auth tests: a real HTTP server on loopback whose
//! answers come from a closure, so it can check credentials the way a real
//! remote does (issue a Digest challenge, verify a signature, hand out OAuth2
//! tokens) and answer accordingly. Every request is kept, as the receiver does.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

use crate::{Received, http};

/// What the remote answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn ok() -> Reply {
        Reply::status(200).body("ok")
    }

    pub fn json(status: u16, value: serde_json::Value) -> Reply {
        Reply::status(status)
            .header("content-type", "application/json")
            .body(&value.to_string())
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, text: &str) -> Reply {
        self.body = text.to_owned();
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Handler = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

/// A loopback HTTP server answering with `handler`.
#[derive(Clone)]
pub struct Remote {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Remote {
    pub async fn start(handler: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Remote {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the remote");
        let remote = Remote {
            addr: listener.local_addr().expect("remote address"),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let handler: Handler = Arc::new(handler);
        let serving = remote.clone();
        crate::http::serve(listener, move |request| {
            let remote = serving.clone();
            let handler = handler.clone();
            async move { remote.handle(request, &handler).await }
        });
        remote
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://localhost:PORT{path}`: the same server, by a name that must be resolved.
    pub fn named_url(&self, path: &str) -> String {
        format!("http://localhost:{}{path}", self.addr.port())
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
        handler: &Handler,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let received = Received::read(request).await;
        let reply = handler(&received);
        self.seen.lock().unwrap().push(received);
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let mut response = Response::builder().status(reply.status);
        for (name, value) in &reply.headers {
            response = response.header(name, value);
        }
        Ok(response.body(Full::new(Bytes::from(reply.body))).unwrap())
    }

    /// Every request to `path`, in arrival order.
    pub fn requests(&self, path: &str) -> Vec<Received> {
        self.seen
            .lock()
            .unwrap()
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

/// The parameters of an `Authorization: Digest ...` or `WWW-Authenticate:
/// Digest ...` value (names lower-cased, quotes removed), or `None` when it is
/// not Digest.
pub fn digest_params(value: &str) -> Option<std::collections::HashMap<String, String>> {
    let rest = value.trim_start().strip_prefix("Digest ")?;
    let mut params = std::collections::HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if name.is_empty() || chars.next() != Some('=') {
            break;
        }
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            let mut quoted = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => quoted.extend(chars.next()),
                    '"' => break,
                    other => quoted.push(other),
                }
            }
            quoted
        } else {
            std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_owned()
        };
        params.insert(name.trim().to_ascii_lowercase(), value);
    }
    Some(params)
}

/// The fields of an `application/x-www-form-urlencoded` body.
pub fn form_fields(body: &[u8]) -> std::collections::HashMap<String, String> {
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut index = 0;
        while index < bytes.len() {
            match bytes[index] {
                b'+' => out.push(b' '),
                b'%' => match text
                    .get(index + 1..index + 3)
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        index += 2;
                    }
                    None => out.push(b'%'),
                },
                other => out.push(other),
            }
            index += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}
