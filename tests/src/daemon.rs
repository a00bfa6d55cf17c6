//! The built `repeatd` binary in a process of its own, run as an operator
//! runs it: `repeatd serve --config FILE`, started once it answers `/healthz`,
//! stopped with SIGTERM (a graceful stop) or SIGKILL (a crash), started again
//! over the same data directory, its stdout and stderr kept as its log. The
//! crash, shutdown and CLI tests and the load tool all run it through here.
//!
//! A [`Launch`] says how to start it and can start it again; a [`Daemon`] is
//! one running process, and hands out a [`Client`] (by `Deref`) for the API.
//! Errors are `anyhow` so that the load tool can report them; tests unwrap.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::client::Client;
use crate::wait::wait_for;
use crate::{TempDir, config_head, repeatd_binary};

/// How long start-up (to `/healthz` 200) and a stop may take before they
/// count as failed: generous, since a cold start on a loaded 2-core machine
/// compiles every built-in plugin.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(120);

/// What the binary prints once it accepts connections.
const LISTENING: &str = "listening on http://";

/// How to start the binary: which config, log level and environment. Kept
/// after a start, so that the same gateway can be started again.
#[derive(Debug, Clone)]
pub struct Launch {
    /// `None`: the `repeatd` built beside the running test.
    binary: Option<PathBuf>,
    config: PathBuf,
    log_level: String,
    /// Environment changes: a value to set, or `None` to remove the variable.
    env: Vec<(OsString, Option<OsString>)>,
    /// A file that receives a copy of the log as it is written.
    log_file: Option<PathBuf>,
}

impl Launch {
    /// `repeatd serve --config config` with the built binary, logging at
    /// `info`, without the admin token and secret key of the caller's
    /// environment.
    pub fn new(config: impl Into<PathBuf>) -> Launch {
        Launch {
            binary: None,
            config: config.into(),
            log_level: "info".to_owned(),
            env: vec![
                ("REPEATD_ADMIN_TOKEN".into(), None),
                ("REPEATD_SECRET_KEY".into(), None),
            ],
            log_file: None,
        }
    }

    /// Writes the test config head for `dir` followed by `config_body` to
    /// `dir/repeatd.toml`, and launches that.
    ///
    /// With `REPEATD_TEST_STORE=postgres`, the gateway runs on the database
    /// of `dir` as an in-process [`crate::Gateway`] over the same directory
    /// does ([`crate::pg::store_switch`]), so that a test may crash the
    /// binary and start the gateway again in its own process.
    pub fn in_dir(dir: &TempDir, config_body: &str) -> Launch {
        let config = dir.path().join("repeatd.toml");
        let store = {
            // On a thread of its own: callers may or may not be inside a
            // runtime, and a runtime cannot be entered from within one.
            let (path, body) = (dir.path().to_owned(), config_body.to_owned());
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the store switch")
                    .block_on(crate::pg::store_switch(&path, &body))
            })
            .join()
            .expect("the store switch")
        };
        std::fs::write(
            &config,
            format!("{}{config_body}{store}", config_head(dir.path())),
        )
        .unwrap_or_else(|error| panic!("writing {}: {error}", config.display()));
        Launch::new(config)
    }

    /// Runs another build of the binary.
    pub fn binary(mut self, binary: impl Into<PathBuf>) -> Launch {
        self.binary = Some(binary.into());
        self
    }

    /// Sets `RUST_LOG`.
    pub fn log_level(mut self, level: &str) -> Launch {
        level.clone_into(&mut self.log_level);
        self
    }

    /// Sets an environment variable for the process.
    pub fn env(mut self, name: &str, value: &str) -> Launch {
        self.env.push((name.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable for the process.
    pub fn env_remove(mut self, name: &str) -> Launch {
        self.env.push((name.into(), None));
        self
    }

    /// Copies the log to `path` too (created afresh at each start).
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Launch {
        self.log_file = Some(path.into());
        self
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Starts the process without waiting for anything: for configs that
    /// must stop start-up, see [`Daemon::wait_exit`].
    pub fn spawn(&self) -> anyhow::Result<Daemon> {
        let binary = self.binary.clone().unwrap_or_else(repeatd_binary);
        let mut command = Command::new(&binary);
        command
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", &self.log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in &self.env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let log = Log::new(self.log_file.as_deref())?;
        let readers = vec![
            log.copy(child.stdout.take().expect("stdout is piped")),
            log.copy(child.stderr.take().expect("stderr is piped")),
        ];
        Ok(Daemon {
            client: None,
            child,
            log,
            readers,
            launch: self.clone(),
        })
    }

    /// Starts the process and waits until it listens and `/healthz` answers 200.
    pub async fn start(&self) -> anyhow::Result<Daemon> {
        let mut daemon = self.spawn()?;
        let listening = wait_for(LIFECYCLE_TIMEOUT, || {
            let listening = daemon.listening_address();
            let exited = daemon.child.try_wait();
            async move {
                match (listening, exited) {
                    (Some(addr), _) => Ok(Ok(addr)),
                    (None, Ok(Some(status))) => Ok(Err(status)),
                    (None, _) => Err(()),
                }
            }
        })
        .await;
        let addr = match listening {
            Ok(Ok(addr)) => addr,
            Ok(Err(status)) => {
                daemon.join_readers().await;
                anyhow::bail!(
                    "repeatd exited ({status}) before it listened; its log:\n{}",
                    daemon.log()
                );
            }
            Err(()) => anyhow::bail!(
                "repeatd did not say where it listens within {LIFECYCLE_TIMEOUT:?}; its log:\n{}",
                daemon.log()
            ),
        };
        let client = Client::new(addr);
        let healthy = wait_for(LIFECYCLE_TIMEOUT, || async {
            match client.http().get(client.url("/healthz")).send().await {
                Ok(response) if response.status() == 200 => Ok(()),
                Ok(response) => Err(format!("/healthz answered {}", response.status())),
                Err(error) => Err(format!("/healthz: {error}")),
            }
        })
        .await;
        if let Err(last_seen) = healthy {
            anyhow::bail!(
                "repeatd did not get healthy within {LIFECYCLE_TIMEOUT:?} ({last_seen}); its log:\n{}",
                daemon.log()
            );
        }
        daemon.client = Some(client);
        Ok(daemon)
    }
}

/// The log of one process: every line of its stdout and stderr, in the
/// order they were read, optionally copied to a file.
#[derive(Debug, Clone)]
struct Log {
    text: Arc<Mutex<String>>,
    file: Option<Arc<Mutex<std::fs::File>>>,
}

impl Log {
    fn new(file: Option<&Path>) -> anyhow::Result<Log> {
        let file = match file {
            Some(path) => Some(Arc::new(Mutex::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ))),
            None => None,
        };
        Ok(Log {
            text: Arc::default(),
            file,
        })
    }

    /// Copies `pipe` line by line into the log until it closes.
    fn copy(&self, pipe: impl Read + Send + 'static) -> JoinHandle<()> {
        let log = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(file) = &log.file {
                    let _ = writeln!(file.lock().unwrap(), "{line}");
                }
                let mut text = log.text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        })
    }
}

/// One running `repeatd serve`, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Daemon {
    /// Set once the process listens (always, after [`Launch::start`]).
    client: Option<Client>,
    child: Child,
    log: Log,
    readers: Vec<JoinHandle<()>>,
    launch: Launch,
}

impl Daemon {
    /// Writes `config_body` under the test config head to
    /// `dir/repeatd.toml` and starts the binary on it; panics when it does
    /// not get healthy.
    pub async fn start_in(dir: &TempDir, config_body: &str) -> Daemon {
        Launch::in_dir(dir, config_body)
            .start()
            .await
            .expect("starting repeatd")
    }

    /// How this process was started; [`Launch::start`] on it starts the same
    /// gateway again (over the same data directory).
    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        self.log.text.lock().unwrap().clone()
    }

    /// Waits until the log contains `text`; panics after `timeout`.
    pub async fn wait_log(&self, text: &str, timeout: Duration) {
        let found = wait_for(timeout, || async {
            if self.log.text.lock().unwrap().contains(text) {
                Ok(())
            } else {
                Err(())
            }
        })
        .await;
        assert!(found.is_ok(), "no {text:?} in the log:\n{}", self.log());
    }

    /// The address from the "listening on" line, once it is logged.
    fn listening_address(&self) -> Option<SocketAddr> {
        let text = self.log.text.lock().unwrap();
        let (_, rest) = text.split_once(LISTENING)?;
        rest.split_whitespace().next()?.parse().ok()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `STOP`…) with `kill(1)`: the
    /// standard library sends only SIGKILL, and one signal does not justify
    /// a crate of system bindings here.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -{signal} {} failed", self.pid());
        Ok(())
    }

    /// Waits until the process exits, then until its log is complete.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = &mut self.child;
        let exited = wait_for(timeout, || {
            let status = child.try_wait();
            async move {
                match status {
                    Ok(Some(status)) => Ok(Ok(status)),
                    Ok(None) => Err(()),
                    Err(error) => Ok(Err(error)),
                }
            }
        })
        .await;
        let status = match exited {
            Ok(status) => status.context("waiting for repeatd")?,
            Err(()) => anyhow::bail!(
                "repeatd {} did not exit within {timeout:?}; its log:\n{}",
                self.pid(),
                self.log()
            ),
        };
        self.join_readers().await;
        Ok(status)
    }

    /// SIGTERM, then waits for the exit; returns the exit status, how long
    /// the stop took and the whole log.
    pub async fn stop(mut self) -> anyhow::Result<Stopped> {
        let started = Instant::now();
        self.signal("TERM")?;
        let status = self.wait_exit(LIFECYCLE_TIMEOUT).await?;
        Ok(Stopped {
            status,
            took: started.elapsed(),
            log: self.log(),
        })
    }

    /// SIGKILL, and waits until the process is gone: a crash, with nothing
    /// done at exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// User plus system CPU time the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let seconds = cpu_seconds(&self.pid().to_string())
            .unwrap_or_else(|| panic!("reading the CPU time of repeatd {}", self.pid()));
        Duration::from_secs_f64(seconds)
    }

    /// Waits for the threads copying stdout and stderr, which end when the
    /// process (and so its pipes) are gone.
    async fn join_readers(&mut self) {
        let readers = std::mem::take(&mut self.readers);
        let _ = tokio::task::spawn_blocking(move || {
            for reader in readers {
                let _ = reader.join();
            }
        })
        .await;
    }
}

impl Deref for Daemon {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the API of a repeatd that was spawned but not started")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a stopped process ended.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    /// From the signal to the exit.
    pub took: Duration,
    pub log: String,
}

/// Clock ticks per second of `/proc` CPU times.
pub(crate) fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User plus system CPU seconds of a process (all its threads) or a thread
/// (`PID/task/TID`), from `/proc/…/stat`.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3;
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_second())
}
