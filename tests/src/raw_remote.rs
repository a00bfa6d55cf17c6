//! A hostile remote: a bare TCP listener on loopback that reads each request
//! and then writes whatever bytes a test scripts, by hand, at the pace it
//! scripts — answers no HTTP library would send (a body that trickles, an
//! answer cut off mid-way, bytes that are not HTTP, 50 MB of error text).
//! Every connection is kept: what was asked, how much was written and
//! whether the gateway hung up first.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One thing the remote does once it has read a request.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes at once.
    Write(Vec<u8>),
    /// Write these bytes one at a time, `pause` apart.
    Trickle(Vec<u8>, Duration),
    /// Write `n_bytes` of `x`, 64 KiB at a time, as fast as the peer reads.
    Flood(u64),
}

impl Step {
    pub fn text(text: &str) -> Step {
        Step::Write(text.as_bytes().to_vec())
    }
}

/// What happened on one connection.
#[derive(Debug, Clone)]
pub struct RawExchange {
    /// When the request had been read.
    pub at: Instant,
    /// The request as it arrived: head and body.
    pub request: Vec<u8>,
    /// Bytes of the answer written before the script ended or the gateway
    /// hung up.
    pub written: u64,
    /// Set when a write failed because the gateway closed the connection.
    pub hung_up: bool,
    /// Set once the script is done with this connection (it is then closed).
    pub finished: bool,
}

impl RawExchange {
    /// The request's first line, e.g. `POST /in?app_id=… HTTP/1.1`.
    pub fn request_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.request);
        text.lines().next().unwrap_or_default().to_owned()
    }
}

/// A loopback TCP server answering each connection with a script of steps,
/// then closing it.
#[derive(Clone)]
pub struct RawRemote {
    pub addr: SocketAddr,
    exchanges: Arc<Mutex<Vec<RawExchange>>>,
}

impl RawRemote {
    /// Every connection gets `steps`.
    pub async fn start(steps: Vec<Step>) -> RawRemote {
        RawRemote::start_in_turn(vec![steps]).await
    }

    /// The n-th connection gets `scripts[n]`; the last script repeats.
    pub async fn start_in_turn(scripts: Vec<Vec<Step>>) -> RawRemote {
        assert!(!scripts.is_empty(), "a raw remote needs a script");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the raw remote");
        let remote = RawRemote {
            addr: listener.local_addr().expect("raw remote address"),
            exchanges: Arc::new(Mutex::new(Vec::new())),
        };
        let exchanges = remote.exchanges.clone();
        let scripts: Vec<Arc<Vec<Step>>> = scripts.into_iter().map(Arc::new).collect();
        tokio::spawn(async move {
            let mut n_accepted = 0;
            while let Ok((stream, _)) = listener.accept().await {
                let steps = scripts[n_accepted.min(scripts.len() - 1)].clone();
                n_accepted += 1;
                tokio::spawn(answer(stream, steps, exchanges.clone()));
            }
        });
        remote
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every connection that sent a request, in order.
    pub fn exchanges(&self) -> Vec<RawExchange> {
        self.exchanges.lock().unwrap().clone()
    }
}

/// Reads one request (head, then as many body bytes as `Content-Length`
/// says), runs the steps and closes the connection.
async fn answer(
    mut stream: TcpStream,
    steps: Arc<Vec<Step>>,
    exchanges: Arc<Mutex<Vec<RawExchange>>>,
) {
    let _ = stream.set_nodelay(true);
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let index = {
        let mut exchanges = exchanges.lock().unwrap();
        exchanges.push(RawExchange {
            at: Instant::now(),
            request,
            written: 0,
            hung_up: false,
            finished: false,
        });
        exchanges.len() - 1
    };
    let wrote = |n: usize| exchanges.lock().unwrap()[index].written += n as u64;
    let mut hung_up = false;
    'steps: for step in steps.iter() {
        match step {
            Step::Write(bytes) => {
                if stream.write_all(bytes).await.is_err() {
                    hung_up = true;
                    break 'steps;
                }
                wrote(bytes.len());
            }
            Step::Trickle(bytes, pause) => {
                for byte in bytes {
                    if stream.write_all(&[*byte]).await.is_err() {
                        hung_up = true;
                        break 'steps;
                    }
                    wrote(1);
                    tokio::time::sleep(*pause).await;
                }
            }
            Step::Flood(n_bytes) => {
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = *n_bytes;
                while left > 0 {
                    let size = left.min(chunk.len() as u64) as usize;
                    match stream.write(&chunk[..size]).await {
                        Ok(0) | Err(_) => {
                            hung_up = true;
                            break 'steps;
                        }
                        Ok(n) => {
                            wrote(n);
                            left -= n as u64;
                        }
                    }
                }
            }
        }
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    let mut exchanges = exchanges.lock().unwrap();
    exchanges[index].hung_up = hung_up;
    exchanges[index].finished = true;
}

async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut request = Vec::new();
    let mut buffer = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&buffer[..n]);
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..n]);
    }
    Some(request)
}
