//! The HTTP servers of the kit (the scriptable [`crate::Receiver`], the
//! closure-driven [`crate::remote::Remote`] and the load tool's receivers)
//! share how they accept connections, how a request is kept for a test to
//! look at and how a test waits for requests: [`serve`], [`Received::read`]
//! and [`wait_requests`].

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::Received;
use crate::wait::wait_for;

/// Serves HTTP/1.1 on `listener` with `handle` until the runtime stops. A
/// handler's error closes the connection without an answer.
pub fn serve<Handle, Handling, Error>(listener: tokio::net::TcpListener, handle: Handle)
where
    Handle: Fn(Request<Incoming>) -> Handling + Clone + Send + Sync + 'static,
    Handling: Future<Output = Result<Response<Full<Bytes>>, Error>> + Send + 'static,
    Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors, most likely: let some close.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
}

impl Received {
    /// Reads a whole request, stamped with the time it was read.
    pub async fn read(request: Request<Incoming>) -> Received {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        let headers: HashMap<String, String> = parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        Received {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            headers,
            body,
            at: Instant::now(),
        }
    }
}

/// Waits until `requests` lists at least `n`; returns them (those that came
/// when `timeout` passes first).
pub async fn wait_requests(
    n: usize,
    timeout: Duration,
    requests: impl Fn() -> Vec<Received>,
) -> Vec<Received> {
    let arrived = wait_for(timeout, || async {
        let got = requests();
        if got.len() >= n { Ok(got) } else { Err(got) }
    })
    .await;
    arrived.unwrap_or_else(|so_far| so_far)
}
