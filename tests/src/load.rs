//! The load and benchmark harness behind `repeatd-load` (issue 8) and its CI
//! smoke test (`tests/load_smoke.rs`).
//!
//! It loads the gateway the way a user would: the built `repeatd` binary runs
//! as its own process on loopback with a generated config; a fast receiver in
//! this process (hyper, HTTP/1.1, answers 200) counts and timestamps what
//! arrives and finds the form or case id in each payload; generated forms
//! (meta with a unique `instanceID`, one to three case blocks with unique case
//! ids) are submitted over keep-alive connections at a given concurrency. It
//! reports accepted forms/s, delivered payloads/s, submission-to-arrival
//! latency, the gateway's CPU per 1,000 forms (from `/proc/PID/stat`) and its
//! peak RSS (`VmHWM`).
//!
//! Every run also measures two ceilings on the same machine, just before the
//! gateway runs: the receiver's own rate (this process posting straight to its
//! receiver, at the concurrency the gateway delivers with) and a minimal hyper
//! server's rate for the submit path (answers 201, stores nothing, at the
//! submission concurrency). Gateway rates are reported as ratios to them:
//! these machines are noisy, ratios hold.
//!
//! A run fails (an entry in [`Report::failures`]) only on functional problems:
//! a form refused, a payload missing or unrecognisable, a queue that does not
//! hold what it should, a gateway that does not stop cleanly. Timing never
//! fails a run.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

mod mixed;
pub mod postgres;
pub mod profile;

use crate::daemon::cpu_seconds;
use crate::http;
use crate::{ADMIN_TOKEN, Daemon, Launch, TempDir, config_head, demo_config, repeater, wait_for};
use postgres::{DatabaseCounters, PgServer};

/// The submitter every generated config declares (`danny:pw`), as a header.
const SUBMITTER_AUTHORIZATION: &str = "Basic ZGFubnk6cHc=";
/// The app id submissions carry (`/a/demo/receiver/{app}`).
const APP_ID: &str = "7a1e6b5c0ad0400080004c6f61640001";
/// Default `max_workers` of a repeater (see `config.rs`).
const DEFAULT_MAX_WORKERS: usize = 8;
/// Default `[delivery] max_in_flight`.
const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// A submission not answered in this long is a failure (the gateway hangs).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// No new payload for this long while some are missing: they are missing.
const STALL: Duration = Duration::from_secs(60);

// ---- scenarios and options ----------------------------------------------------------

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// One form-xml, one case-json and one form-stub repeater.
    Steady,
    /// Ten repeaters (form-xml, case-json and form-stub in turn).
    Fanout,
    /// The steady three while forms arrive open-loop at a fixed rate: the
    /// highest rate whose p99 submission-to-arrival stays under 1 s.
    Mixed,
    /// The steady three plus a form-xml repeater whose remote refuses connections.
    DeadRemote,
    /// A queue filled by paused repeaters, SIGTERM, start again, resume.
    Restart,
    /// The built-in payload plugins, called in this process.
    Plugin,
    /// PostgreSQL only: one node, then two on one database, draining a
    /// backlog to a remote that answers in 20 ms (issue 15).
    Scaleout,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Steady,
        Scenario::Mixed,
        Scenario::Fanout,
        Scenario::DeadRemote,
        Scenario::Restart,
        Scenario::Plugin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Mixed => "mixed",
            Scenario::Fanout => "fanout",
            Scenario::DeadRemote => "dead-remote",
            Scenario::Restart => "restart",
            Scenario::Plugin => "plugin",
            Scenario::Scaleout => "scaleout",
        }
    }

    pub fn parse(text: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .chain([Scenario::Scaleout])
            .find(|scenario| scenario.name() == text)
            .ok_or_else(|| format!("unknown scenario \"{text}\" (steady, mixed, fanout, dead-remote, restart, plugin, scaleout, all)"))
    }

    /// Whether the scenario runs on the store `--store` names (the others
    /// run on redb whatever it says; scaleout always on PostgreSQL).
    pub fn follows_store_option(self) -> bool {
        matches!(self, Scenario::Steady | Scenario::Fanout)
    }

    /// The scenario's name in the tables: `steady` on redb, `steady on
    /// postgres` on PostgreSQL.
    pub fn label(self, backend: StoreBackend) -> &'static str {
        match (self, backend) {
            (_, StoreBackend::Redb) => self.name(),
            (Scenario::Steady, StoreBackend::Postgres) => "steady on postgres",
            (Scenario::Fanout, StoreBackend::Postgres) => "fanout on postgres",
            (Scenario::Scaleout, StoreBackend::Postgres) => "scaleout",
            (_, StoreBackend::Postgres) => "on postgres",
        }
    }
}

/// Where a scenario's gateways store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    Redb,
    Postgres,
}

/// `--store`: which backends the steady and fan-out scenarios run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChoice {
    Redb,
    Postgres,
    /// Both in the same invocation, redb first; the report sets them side by side.
    Both,
}

impl StoreChoice {
    pub fn parse(text: &str) -> Result<StoreChoice, String> {
        match text {
            "redb" => Ok(StoreChoice::Redb),
            "postgres" => Ok(StoreChoice::Postgres),
            "both" => Ok(StoreChoice::Both),
            other => Err(format!(
                "--store: \"{other}\" is not redb, postgres or both"
            )),
        }
    }

    pub fn backends(self) -> Vec<StoreBackend> {
        match self {
            StoreChoice::Redb => vec![StoreBackend::Redb],
            StoreChoice::Postgres => vec![StoreBackend::Postgres],
            StoreChoice::Both => vec![StoreBackend::Redb, StoreBackend::Postgres],
        }
    }
}

/// How a load run is set up. [`Options::smoke`] and [`Options::full`] give the
/// two presets; the command line overrides single fields.
#[derive(Debug, Clone)]
pub struct Options {
    /// The gateway binary to start.
    pub gateway: PathBuf,
    pub scenarios: Vec<Scenario>,
    pub smoke: bool,
    /// Forms per phase (steady, fanout, dead-remote).
    pub forms: u64,
    /// Forms of the unsaturated latency phase, and their rate.
    pub latency_forms: u64,
    pub latency_rate: f64,
    /// Requests per ceiling measurement.
    pub ceiling_requests: u64,
    /// Submissions under way at once.
    pub concurrency: usize,
    /// Records queued before the restart (spread over the paused repeaters).
    pub queued: u64,
    pub paused_repeaters: u64,
    /// How long to watch delivery after the restart; `None` waits for all of it.
    pub drain_window: Option<Duration>,
    /// How long the dead-remote gateway is watched while idle.
    pub idle: Duration,
    /// Plugin calls per format.
    pub plugin_calls: u64,
    /// `max_workers` for every repeater (the gateway's default when `None`).
    pub max_workers: Option<usize>,
    /// Each scenario this many times; figures are medians.
    pub runs: usize,
    /// Keep the temp dirs (configs, data, gateway logs).
    pub keep: bool,
    /// `--forms` was given: every scenario uses `forms`.
    pub explicit_forms: bool,
    /// The mixed scenario's search: the first rate tried (forms/s), how long
    /// each tried rate runs, how many rates at most, the highest rate tried.
    pub mixed_rate: f64,
    pub mixed_step: Duration,
    pub mixed_steps: usize,
    pub mixed_max_rate: f64,
    /// How long the run at the rate found lasts.
    pub mixed_duration: Duration,
    /// Open submissions at most in the mixed scenario (its workers).
    pub mixed_concurrency: usize,
    /// Profile the gateway with `perf` during this phase.
    pub profile: Option<profile::Phase>,
    /// Where profiles are written.
    pub profile_dir: PathBuf,
    /// Which backends steady and fan-out run on.
    pub store: StoreChoice,
    /// The PostgreSQL server to make databases on (a role that may CREATE
    /// DATABASE); `None`: a throwaway cluster of `.ci/postgres`.
    pub pg_url: Option<String>,
    /// The scaleout scenario: how long its receiver takes to answer, and
    /// sends in flight per node.
    pub scaleout_answer_after: Duration,
    pub scaleout_in_flight: usize,
}

impl Options {
    /// The full-size runs of BENCHMARKS.md.
    pub fn full(gateway: PathBuf) -> Options {
        Options {
            gateway,
            scenarios: vec![Scenario::Steady],
            smoke: false,
            forms: 20_000,
            latency_forms: 2_000,
            latency_rate: 200.0,
            ceiling_requests: 20_000,
            concurrency: 128,
            queued: 1_000_000,
            paused_repeaters: 4,
            drain_window: Some(Duration::from_secs(10)),
            idle: Duration::from_secs(10),
            plugin_calls: 20_000,
            max_workers: None,
            runs: 1,
            keep: false,
            explicit_forms: false,
            mixed_rate: 1_000.0,
            mixed_step: Duration::from_secs(5),
            mixed_steps: 7,
            mixed_max_rate: 32_000.0,
            mixed_duration: Duration::from_secs(10),
            mixed_concurrency: 512,
            profile: None,
            profile_dir: PathBuf::from("repeatd-load-profiles"),
            store: StoreChoice::Redb,
            pg_url: None,
            scaleout_answer_after: Duration::from_millis(20),
            scaleout_in_flight: 64,
        }
    }

    /// A few hundred forms through every scenario; for CI, where only the
    /// functional checks count.
    pub fn smoke(gateway: PathBuf) -> Options {
        Options {
            scenarios: Scenario::ALL.to_vec(),
            smoke: true,
            forms: 150,
            latency_forms: 50,
            latency_rate: 200.0,
            ceiling_requests: 200,
            concurrency: 16,
            queued: 400,
            drain_window: None,
            idle: Duration::from_secs(1),
            plugin_calls: 100,
            mixed_rate: 200.0,
            mixed_step: Duration::from_millis(500),
            mixed_steps: 2,
            mixed_duration: Duration::from_secs(1),
            mixed_concurrency: 32,
            ..Options::full(gateway)
        }
    }

    /// Fan-out and dead-remote default to other sizes than steady.
    fn forms_for(&self, scenario: Scenario) -> u64 {
        if self.explicit_forms || self.smoke {
            return self.forms;
        }
        match scenario {
            Scenario::Fanout => 10_000,
            Scenario::DeadRemote => 100_000,
            // Two payloads each: 12.5 s for one node at its ceiling (64
            // sends in 20 ms: 3,200/s).
            Scenario::Scaleout => 20_000,
            _ => self.forms,
        }
    }

    pub const USAGE: &'static str = "\
usage: repeatd-load [--scenario steady|mixed|fanout|dead-remote|restart|plugin|scaleout|all]...
                    [--store redb|postgres|both] [--pg-url URL]
                    [--smoke] [--gateway PATH] [--runs N] [--forms N] [--concurrency N]
                    [--latency-forms N] [--rate FORMS_PER_S] [--ceiling-requests N]
                    [--queued N] [--paused-repeaters N] [--drain-window SECONDS|all]
                    [--idle SECONDS] [--plugin-calls N] [--max-workers N] [--keep]
                    [--mixed-rate FORMS_PER_S] [--mixed-step SECONDS] [--mixed-steps N]
                    [--mixed-max-rate FORMS_PER_S] [--mixed-duration SECONDS]
                    [--mixed-concurrency N] [--scaleout-answer-after MS]
                    [--scaleout-in-flight N]
                    [--profile live|ingest|delivery|mixed|fill|drain] [--profile-dir DIR]

Starts the gateway binary (default: `repeatd` next to this program) on loopback,
loads it and prints one markdown table row per figure, then the rows that have
a target of issue 14 again as a table of their own. Exits 1 on a functional
failure (a form refused, a payload missing), never because of timing.

mixed: forms arrive open-loop at a fixed rate while the steady scenario's three
repeaters deliver; starting at --mixed-rate, each rate runs --mixed-step and the
rate doubles while p99 submission-to-arrival stays under 1 s, then bisects
(--mixed-steps rates at most); the rate found runs --mixed-duration and is the
figure. Pass --mixed-steps 0 to run --mixed-rate only.

--profile PHASE records the gateway with `perf record -e cpu-clock` while that
phase runs (live: steady/fan-out submitting and delivering at once; ingest:
delivery paused; delivery: draining the backlog; mixed: the run at the rate
found; fill and drain: restart's) and prints its top functions by inclusive and
self cost; the perf data and reports stay in --profile-dir.

--store postgres runs steady and fan-out on PostgreSQL (the other scenarios
stay on redb), --store both on redb and then on PostgreSQL, with a table of
the two side by side. Each gateway start gets a fresh database on --pg-url, or
without it on a throwaway cluster that .ci/postgres makes and that is removed
at the end. CPU per 1,000 on PostgreSQL is the gateway's plus the server's
(its processes in /proc; not counted with --pg-url, whose processes the tool
cannot see), with the database's commits, write transactions, WAL fsyncs and
WAL bytes per 1,000.

scaleout (PostgreSQL, not part of `all`): two form-xml repeaters to a receiver
that answers after --scaleout-answer-after ms (20), --scaleout-in-flight sends
per node ([delivery] max_in_flight, 64; each repeater's max_workers, which
holds for the whole cluster, is that too, at most 64); --forms forms (20,000,
two payloads each) queued while paused, then drained by one node, then (on a
fresh database) by two nodes sharing it; the figure is the two-node rate over
the one-node rate, and every payload must arrive once (forms and
Idempotency-Key counted).";

    /// Parses the command line (without the program name).
    pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<(Options, bool), String> {
        let args: Vec<String> = args.into_iter().collect();
        let smoke = args.iter().any(|a| a == "--smoke");
        let default_gateway = crate::repeatd_beside_this_program();
        let mut options = if smoke {
            Options::smoke(default_gateway)
        } else {
            Options::full(default_gateway)
        };
        let mut scenarios = Vec::new();
        let mut explicit_forms = false;
        let mut iter = args.into_iter();
        fn value(iter: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, String> {
            iter.next().ok_or_else(|| format!("{flag} needs a value"))
        }
        fn number<T: std::str::FromStr>(text: String, flag: &str) -> Result<T, String> {
            text.replace('_', "")
                .parse()
                .map_err(|_| format!("{flag}: \"{text}\" is not a number"))
        }
        while let Some(arg) = iter.next() {
            match arg.as_str() {
                "--smoke" => {}
                "--keep" => options.keep = true,
                "-h" | "--help" => return Ok((options, true)),
                "--scenario" => {
                    let text = value(&mut iter, &arg)?;
                    if text == "all" {
                        scenarios.extend(Scenario::ALL);
                    } else {
                        scenarios.push(Scenario::parse(&text)?);
                    }
                }
                "--gateway" => options.gateway = PathBuf::from(value(&mut iter, &arg)?),
                "--runs" => options.runs = number::<usize>(value(&mut iter, &arg)?, &arg)?.max(1),
                "--forms" => {
                    options.forms = number(value(&mut iter, &arg)?, &arg)?;
                    explicit_forms = true;
                }
                "--concurrency" => {
                    options.concurrency = number::<usize>(value(&mut iter, &arg)?, &arg)?.max(1)
                }
                "--latency-forms" => options.latency_forms = number(value(&mut iter, &arg)?, &arg)?,
                "--rate" => options.latency_rate = number(value(&mut iter, &arg)?, &arg)?,
                "--ceiling-requests" => {
                    options.ceiling_requests = number::<u64>(value(&mut iter, &arg)?, &arg)?.max(1)
                }
                "--queued" => options.queued = number(value(&mut iter, &arg)?, &arg)?,
                "--paused-repeaters" => {
                    options.paused_repeaters =
                        number::<u64>(value(&mut iter, &arg)?, &arg)?.clamp(1, 64)
                }
                "--drain-window" => {
                    let text = value(&mut iter, &arg)?;
                    options.drain_window = if text == "all" {
                        None
                    } else {
                        Some(Duration::from_secs_f64(number(text, &arg)?))
                    };
                }
                "--idle" => {
                    options.idle = Duration::from_secs_f64(number(value(&mut iter, &arg)?, &arg)?)
                }
                "--plugin-calls" => {
                    options.plugin_calls = number::<u64>(value(&mut iter, &arg)?, &arg)?.max(1)
                }
                "--max-workers" => {
                    options.max_workers = Some(number(value(&mut iter, &arg)?, &arg)?)
                }
                "--mixed-rate" => {
                    options.mixed_rate = number::<f64>(value(&mut iter, &arg)?, &arg)?.max(1.0)
                }
                "--mixed-step" => {
                    options.mixed_step =
                        Duration::from_secs_f64(number(value(&mut iter, &arg)?, &arg)?)
                }
                "--mixed-steps" => options.mixed_steps = number(value(&mut iter, &arg)?, &arg)?,
                "--mixed-max-rate" => {
                    options.mixed_max_rate = number::<f64>(value(&mut iter, &arg)?, &arg)?.max(1.0)
                }
                "--mixed-duration" => {
                    options.mixed_duration =
                        Duration::from_secs_f64(number(value(&mut iter, &arg)?, &arg)?)
                }
                "--mixed-concurrency" => {
                    options.mixed_concurrency =
                        number::<usize>(value(&mut iter, &arg)?, &arg)?.max(1)
                }
                "--profile" => {
                    options.profile = Some(profile::Phase::parse(&value(&mut iter, &arg)?)?)
                }
                "--profile-dir" => options.profile_dir = PathBuf::from(value(&mut iter, &arg)?),
                "--store" => options.store = StoreChoice::parse(&value(&mut iter, &arg)?)?,
                "--pg-url" => options.pg_url = Some(value(&mut iter, &arg)?),
                "--scaleout-answer-after" => {
                    options.scaleout_answer_after =
                        Duration::from_secs_f64(number::<f64>(value(&mut iter, &arg)?, &arg)? / 1e3)
                }
                "--scaleout-in-flight" => {
                    options.scaleout_in_flight =
                        number::<usize>(value(&mut iter, &arg)?, &arg)?.max(1)
                }
                other => {
                    return Err(format!(
                        "unknown argument \"{other}\"\n\n{}",
                        Options::USAGE
                    ));
                }
            }
        }
        if !scenarios.is_empty() {
            scenarios.dedup();
            options.scenarios = scenarios;
        }
        if explicit_forms {
            options.explicit_forms = true;
        }
        Ok((options, false))
    }
}

// ---- figures and reports -------------------------------------------------------------

/// A row of issue 14's target table: its text, and the bound a figure is held
/// against to say whether it is met.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub text: &'static str,
    pub bound: Bound,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    AtLeast(f64),
    AtMost(f64),
    Below(f64),
}

impl Target {
    const fn at_least(text: &'static str, value: f64) -> Target {
        Target {
            text,
            bound: Bound::AtLeast(value),
        }
    }

    const fn at_most(text: &'static str, value: f64) -> Target {
        Target {
            text,
            bound: Bound::AtMost(value),
        }
    }

    const fn below(text: &'static str, value: f64) -> Target {
        Target {
            text,
            bound: Bound::Below(value),
        }
    }

    pub fn met(&self, value: f64) -> bool {
        match self.bound {
            Bound::AtLeast(bound) => value >= bound,
            Bound::AtMost(bound) => value <= bound,
            Bound::Below(bound) => value < bound,
        }
    }
}

/// The targets of issue 14 ("Throughput: three times the forms and payloads
/// per core"), one per row of its table.
pub mod targets {
    use super::Target;

    pub const INGEST_FORMS: Target = Target::at_least("≥ 20,000", 20_000.0);
    pub const INGEST_CPU: Target = Target::at_most("≤ 0.060 CPU s", 0.060);
    pub const DRAIN_PAYLOADS: Target = Target::at_least("≥ 20,000", 20_000.0);
    pub const DELIVERY_CPU: Target = Target::at_most("≤ 0.060 CPU s", 0.060);
    pub const MIXED_FORMS: Target = Target::at_least("≥ 4,000 with p99 < 1 s", 4_000.0);
    pub const MIXED_PAYLOADS: Target = Target::at_least("≥ 16,000", 16_000.0);
    pub const MIXED_P99: Target = Target::below("< 1,000 ms", 1_000.0);
    pub const MIXED_DELIVERED: Target = Target::at_least("100 %", 100.0);
    pub const FANOUT_INGEST_FORMS: Target = Target::at_least("≥ 10,000", 10_000.0);
    pub const P50_UNSATURATED: Target = Target::at_most("≤ 2.5 ms", 2.5);
    pub const PEAK_RSS: Target = Target::below("< 256 MiB", 256.0);
    pub const DISK_PER_FORM: Target = Target::at_most("≤ 5 KB", 5.0);
    pub const RESTART: Target = Target::below("< 0.1 s", 0.1);
    /// Issue 8's, still in force.
    pub const PLUGIN_CALL: Target = Target::below("< 20 µs", 20.0);
    /// Issue 15's: two nodes deliver at least 1.8 times what one does when
    /// the remote is the limit.
    pub const SCALEOUT: Target = Target::at_least("≥ 1.8", 1.8);
}

/// One measured figure of one run.
#[derive(Debug, Clone)]
pub struct Figure {
    pub scenario: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// The same-run ceiling this figure is compared with.
    pub ceiling: Option<f64>,
    pub target: Option<Target>,
}

impl Figure {
    fn new(scenario: Scenario, name: impl Into<String>, value: f64, unit: &'static str) -> Figure {
        Figure {
            scenario: scenario.name(),
            name: name.into(),
            value,
            unit,
            ceiling: None,
            target: None,
        }
    }

    fn ceiling(mut self, ceiling: f64) -> Figure {
        self.ceiling = Some(ceiling);
        self
    }

    fn target(mut self, target: Target) -> Figure {
        self.target = Some(target);
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.ceiling.filter(|c| *c > 0.0).map(|c| self.value / c)
    }
}

/// A figure over several runs.
#[derive(Debug, Clone)]
pub struct Summary {
    pub scenario: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub median_ceiling: Option<f64>,
    /// The median of the per-run ratios.
    pub median_ratio: Option<f64>,
    pub target: Option<Target>,
    pub runs: usize,
}

impl Summary {
    /// "yes" or "no" for a figure with a target (its median against it).
    pub fn met(&self) -> &'static str {
        match self.target {
            Some(target) if target.met(self.median) => "yes",
            Some(_) => "no",
            None => "",
        }
    }

    fn range(&self) -> String {
        if self.runs > 1 {
            format!("{} – {}", format_number(self.min), format_number(self.max))
        } else {
            String::new()
        }
    }

    fn ratio_text(&self) -> String {
        self.median_ratio
            .map_or(String::new(), |ratio| format!("{ratio:.2}"))
    }
}

/// What a load run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Every run's figures, in order.
    pub figures: Vec<Figure>,
    /// Functional failures; empty when everything was accepted and delivered.
    pub failures: Vec<String>,
    /// Forms submitted to a gateway, and how many it answered 201.
    pub forms_submitted: u64,
    pub forms_accepted: u64,
    /// Payloads the receiver should have got, and the distinct ones it got.
    pub payloads_expected: u64,
    pub payloads_delivered: u64,
    /// `--profile`'s recordings, and their reports in markdown.
    pub profiles: Vec<profile::Profile>,
    pub profile_reports: Vec<String>,
    /// What a reader of the figures must know (what was not counted).
    pub notes: Vec<String>,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

impl Report {
    /// Medians per (scenario, figure), in the order figures first appeared.
    pub fn summaries(&self) -> Vec<Summary> {
        let mut keys: Vec<(&'static str, String)> = Vec::new();
        for figure in &self.figures {
            let key = (figure.scenario, figure.name.clone());
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys.into_iter()
            .map(|(scenario, name)| {
                let same: Vec<&Figure> = self
                    .figures
                    .iter()
                    .filter(|f| f.scenario == scenario && f.name == name)
                    .collect();
                let mut values: Vec<f64> = same.iter().map(|f| f.value).collect();
                let mut ceilings: Vec<f64> = same.iter().filter_map(|f| f.ceiling).collect();
                let mut ratios: Vec<f64> = same.iter().filter_map(|f| f.ratio()).collect();
                let min = values.iter().copied().fold(f64::INFINITY, f64::min);
                let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                Summary {
                    scenario,
                    unit: same[0].unit,
                    target: same[0].target,
                    runs: same.len(),
                    median: median(&mut values),
                    min,
                    max,
                    median_ceiling: (!ceilings.is_empty()).then(|| median(&mut ceilings)),
                    median_ratio: (!ratios.is_empty()).then(|| median(&mut ratios)),
                    name,
                }
            })
            .collect()
    }

    /// The figures as a markdown table: one row per figure.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| scenario | figure | median | min – max | ceiling (same run) | ratio | target | met | runs |\n|---|---|--:|--:|--:|--:|---|---|--:|\n",
        );
        for summary in self.summaries() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                summary.scenario,
                summary.name,
                format_value(summary.median, summary.unit),
                summary.range(),
                summary
                    .median_ceiling
                    .map_or(String::new(), |c| format_value(c, summary.unit)),
                summary.ratio_text(),
                summary.target.map_or("", |t| t.text),
                summary.met(),
                summary.runs
            );
        }
        out
    }

    /// Each figure measured on PostgreSQL beside the same figure on redb
    /// (`--store both`), with postgres / redb; CPU on PostgreSQL is the
    /// gateway's plus the database's. Empty when not both ran.
    pub fn comparison_markdown(&self) -> String {
        let summaries = self.summaries();
        let mut rows = String::new();
        for on_postgres in &summaries {
            let Some(scenario) = Scenario::ALL
                .into_iter()
                .find(|s| s.label(StoreBackend::Postgres) == on_postgres.scenario)
            else {
                continue;
            };
            let redb_name = on_postgres
                .name
                .replace("gateway + database CPU", "gateway CPU");
            let Some(on_redb) = summaries
                .iter()
                .find(|s| s.scenario == scenario.name() && s.name == redb_name)
            else {
                continue;
            };
            let with_database = on_postgres
                .name
                .replace("gateway CPU", "gateway + database CPU");
            if with_database != on_postgres.name
                && summaries
                    .iter()
                    .any(|s| s.scenario == on_postgres.scenario && s.name == with_database)
            {
                // The sum is what compares with redb; the gateway alone is
                // a row of the full table.
                continue;
            }
            let _ = writeln!(
                rows,
                "| {} | {} | {} | {} | {} | {} | {} |",
                scenario.name(),
                on_postgres.name,
                format_value(on_redb.median, on_redb.unit),
                on_redb.range(),
                format_value(on_postgres.median, on_postgres.unit),
                on_postgres.range(),
                if on_redb.median != 0.0 {
                    format!("{:.2}", on_postgres.median / on_redb.median)
                } else {
                    String::new()
                }
            );
        }
        if rows.is_empty() {
            return rows;
        }
        format!(
            "| scenario | figure | redb | min – max | postgres | min – max | postgres / redb |\n|---|---|--:|--:|--:|--:|--:|\n{rows}"
        )
    }

    /// Only the figures that have a target, as the target table of
    /// BENCHMARKS.md shows them.
    pub fn targets_markdown(&self) -> String {
        let mut out = String::from(
            "| target | scenario | median | min – max | ratio to ceiling | target | met |\n|---|---|--:|--:|--:|---|---|\n",
        );
        for summary in self.summaries() {
            let Some(target) = summary.target else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                summary.name,
                summary.scenario,
                format_value(summary.median, summary.unit),
                summary.range(),
                summary.ratio_text(),
                target.text,
                summary.met()
            );
        }
        out
    }
}

/// `12,345` for big numbers, three significant digits for small ones.
pub fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".into();
    }
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        let rounded = value.round() as i64;
        let digits = rounded.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if rounded < 0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else if magnitude == 0.0 {
        "0".into()
    } else {
        format!("{value:.3}")
    }
}

fn format_value(value: f64, unit: &str) -> String {
    if unit.is_empty() {
        format_number(value)
    } else {
        format!("{} {unit}", format_number(value))
    }
}

// ---- generated forms -------------------------------------------------------------------

/// A 64-bit mix, so that the shape of form `index` looks random but is fixed.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const FORM_ID_PREFIX: &[u8] = b"f0ad0000-0000-4000-8000-";
const CASE_ID_PREFIX: &[u8] = b"ca5e000";
const CASE_ID_MIDDLE: &[u8] = b"-0000-4000-8000-";

/// The `instanceID` of form `index`: a UUID whose last group is the index.
pub fn load_form_id(index: u64) -> String {
    format!("f0ad0000-0000-4000-8000-{index:012x}")
}

/// The id of case `k` (0, 1 or 2) of form `index`.
pub fn load_case_id(index: u64, k: u64) -> String {
    format!("ca5e000{k}-0000-4000-8000-{index:012x}")
}

/// How many case blocks form `index` has: one to three.
pub fn cases_in(index: u64) -> u64 {
    1 + mix(index) % 3
}

/// Form `index`: a household visit as a CommCare app would submit it, with a
/// `meta` block and one household case plus zero to two member cases indexed
/// to it: 1.6 to 3 KB.
pub fn load_form(index: u64) -> Vec<u8> {
    let shape = mix(index);
    let user = shape % 50;
    let user_id = format!("{:032x}", mix(user + 1_000_000) as u128 * 0x1_0000_0001);
    let form_id = load_form_id(index);
    let n_cases = cases_in(index);
    let household = load_case_id(index, 0);
    let day = 1 + (index / 86_400) % 28;
    let seconds = index % 86_400;
    let (hour, minute, second) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let time_start = format!("2024-03-{day:02}T{hour:02}:{minute:02}:{second:02}.000000Z");
    let time_end = format!(
        "2024-03-{day:02}T{hour:02}:{minute:02}:{:02}.500000Z",
        second.max(1) - 1
    );
    let mut xml = String::with_capacity(3_000);
    let _ = write!(
        xml,
        r#"<?xml version='1.0' ?>
<data xmlns:jrm="http://dev.commcarehq.org/jr/xforms" xmlns="http://openrosa.org/formdesigner/7A1E6B5C-10AD-4000-8000-H0USEH0LDV1S" uiVersion="1" version="42" name="Household visit">
  <household>
    <head_name>Head of household {index}</head_name>
    <village>Village {village}</village>
    <visit_date>2024-03-{day:02}</visit_date>
    <members>{n_cases}</members>
    <water_source>{water}</water_source>
    <notes>Routine visit; everyone present. Follow up on the water filter next month.</notes>
  </household>
  <n0:case case_id="{household}" date_modified="{time_end}" user_id="{user_id}" xmlns:n0="http://commcarehq.org/case/transaction/v2">
    <n0:create><n0:case_name>Household {index}</n0:case_name><n0:owner_id>{user_id}</n0:owner_id><n0:case_type>household</n0:case_type></n0:create>
    <n0:update><n0:village>Village {village}</n0:village><n0:members>{n_cases}</n0:members><n0:water_source>{water}</n0:water_source><n0:last_visit>2024-03-{day:02}</n0:last_visit></n0:update>
  </n0:case>
"#,
        village = shape % 97,
        water = ["borehole", "river", "piped", "rain"][(shape >> 8) as usize % 4],
    );
    for k in 1..n_cases {
        let _ = write!(
            xml,
            r#"  <member>
    <name>Member {k} of household {index}</name>
    <age>{age}</age>
    <n0:case case_id="{member}" date_modified="{time_end}" user_id="{user_id}" xmlns:n0="http://commcarehq.org/case/transaction/v2">
      <n0:create><n0:case_name>Member {k} of household {index}</n0:case_name><n0:owner_id>{user_id}</n0:owner_id><n0:case_type>member</n0:case_type></n0:create>
      <n0:update><n0:age>{age}</n0:age><n0:sex>{sex}</n0:sex><n0:vaccinated>yes</n0:vaccinated></n0:update>
      <n0:index><n0:parent case_type="household">{household}</n0:parent></n0:index>
    </n0:case>
  </member>
"#,
            member = load_case_id(index, k),
            age = (shape >> (16 + 8 * k)) % 90,
            sex = if (shape >> (20 + k)) & 1 == 0 {
                "f"
            } else {
                "m"
            },
        );
    }
    let _ = write!(
        xml,
        r#"  <n1:meta xmlns:n1="http://openrosa.org/jr/xforms">
    <n1:deviceID>358240051111{device:03}</n1:deviceID>
    <n1:timeStart>{time_start}</n1:timeStart>
    <n1:timeEnd>{time_end}</n1:timeEnd>
    <n1:username>worker{user}</n1:username>
    <n1:userID>{user_id}</n1:userID>
    <n1:instanceID>{form_id}</n1:instanceID>
    <n2:appVersion xmlns:n2="http://commcarehq.org/xforms">CommCare Android, version "2.53.1"(463451). App v42. CommCare Version 2.53.1. Build 463451</n2:appVersion>
  </n1:meta>
</data>
"#,
        device = user,
    );
    xml.into_bytes()
}

/// The mean size of the generated forms `indices`, in bytes.
pub fn mean_form_bytes(indices: Range<u64>) -> f64 {
    let n = (indices.end - indices.start).max(1) as f64;
    indices.map(|i| load_form(i).len() as f64).sum::<f64>() / n
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.len() != 12 {
        return None;
    }
    let mut value = 0u64;
    for &digit in digits {
        let nibble = (digit as char).to_digit(16)?;
        value = value << 4 | nibble as u64;
    }
    Some(value)
}

/// The index of the generated form a form or form-stub payload carries (its
/// first `instanceID`-shaped id).
pub fn form_index_in(body: &[u8]) -> Option<u64> {
    let at = find(body, FORM_ID_PREFIX)? + FORM_ID_PREFIX.len();
    parse_hex(body.get(at..at + 12)?)
}

/// (form index, case number) of the case a case payload carries: the first
/// generated case id in it (the payload's own id comes before its indices in
/// both case-xml and case-json).
pub fn case_key_in(body: &[u8]) -> Option<(u64, u64)> {
    let at = find(body, CASE_ID_PREFIX)? + CASE_ID_PREFIX.len();
    let k = (*body.get(at)? as char).to_digit(10)? as u64;
    let middle = body.get(at + 1..at + 1 + CASE_ID_MIDDLE.len())?;
    if middle != CASE_ID_MIDDLE || k > 2 {
        return None;
    }
    let digits = at + 1 + CASE_ID_MIDDLE.len();
    Some((parse_hex(body.get(digits..digits + 12)?)?, k))
}

// ---- the receiver's tally ----------------------------------------------------------------

/// What identifies a payload on one receiver path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdKind {
    /// One payload per form (form-xml, form-stub): keyed by the form id.
    Form,
    /// One payload per case: keyed by the case id.
    Case,
}

impl IdKind {
    fn of(kind: &str) -> IdKind {
        if kind == "case" {
            IdKind::Case
        } else {
            IdKind::Form
        }
    }

    fn expected(self, forms: Range<u64>) -> u64 {
        match self {
            IdKind::Form => forms.end - forms.start,
            IdKind::Case => forms.map(cases_in).sum(),
        }
    }
}

struct LaneTally {
    id_kind: IdKind,
    /// One bit per key seen (form index, or form index x 3 + case number).
    seen: Vec<AtomicU64>,
}

#[derive(Debug, Clone, Copy)]
struct Arrival {
    form_index: u64,
    at_nanos: u64,
}

/// Counts and timestamps what arrives; knows when each form was submitted.
struct Tally {
    epoch: Instant,
    submitted_at: Vec<AtomicU64>,
    lanes: Vec<LaneTally>,
    arrivals: Mutex<Vec<Arrival>>,
    unique: AtomicU64,
    duplicates: AtomicU64,
    unrecognised: AtomicU64,
    ceiling_hits: AtomicU64,
    /// How many times each `Idempotency-Key` (the record id) arrived, when
    /// counted; and payloads that came without one.
    idempotency_keys: Option<Mutex<HashMap<Bytes, u32>>>,
    keys_missing: AtomicU64,
}

/// What the `Idempotency-Key` counts say.
#[derive(Debug, Clone, Copy, Default)]
struct KeyCounts {
    distinct: u64,
    /// Keys that arrived more than once.
    repeated: u64,
    missing: u64,
}

impl Tally {
    fn new(capacity: u64, lanes: &[IdKind], count_keys: bool) -> Tally {
        let words = (capacity as usize * 3).div_ceil(64);
        Tally {
            epoch: Instant::now(),
            submitted_at: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            lanes: lanes
                .iter()
                .map(|&id_kind| LaneTally {
                    id_kind,
                    seen: (0..words).map(|_| AtomicU64::new(0)).collect(),
                })
                .collect(),
            arrivals: Mutex::new(Vec::new()),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            unrecognised: AtomicU64::new(0),
            ceiling_hits: AtomicU64::new(0),
            idempotency_keys: count_keys.then(|| Mutex::new(HashMap::new())),
            keys_missing: AtomicU64::new(0),
        }
    }

    /// Counts the `Idempotency-Key` of a payload, when keys are counted.
    fn count_key(&self, key: Option<&hyper::header::HeaderValue>) {
        let Some(keys) = &self.idempotency_keys else {
            return;
        };
        match key {
            Some(key) => {
                let key = Bytes::copy_from_slice(key.as_bytes());
                *keys.lock().expect("keys lock").entry(key).or_default() += 1;
            }
            None => {
                self.keys_missing.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counts since the last call, forgetting them: record ids start
    /// again in each fresh database.
    fn take_key_counts(&self) -> KeyCounts {
        let Some(keys) = &self.idempotency_keys else {
            return KeyCounts::default();
        };
        let keys = std::mem::take(&mut *keys.lock().expect("keys lock"));
        KeyCounts {
            distinct: keys.len() as u64,
            repeated: keys.values().filter(|n| **n > 1).count() as u64,
            missing: self.keys_missing.swap(0, Ordering::Relaxed),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    /// Seconds from `since` to the tally time `nanos` (none if it came first).
    fn seconds_since(&self, since: Instant, nanos: u64) -> f64 {
        self.instant(nanos)
            .saturating_duration_since(since)
            .as_secs_f64()
    }

    fn submitted_at(&self, index: u64, at: Instant) {
        if let Some(slot) = self.submitted_at.get(index as usize) {
            slot.store(self.nanos(at).max(1), Ordering::Relaxed);
        }
    }

    fn arrived(&self, lane: usize, body: &[u8]) {
        let at_nanos = self.nanos(Instant::now());
        let Some(tally) = self.lanes.get(lane) else {
            self.unrecognised.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let key = match tally.id_kind {
            IdKind::Form => form_index_in(body).map(|index| (index, index)),
            IdKind::Case => case_key_in(body).map(|(index, k)| (index, index * 3 + k)),
        };
        let Some((form_index, key)) =
            key.filter(|(_, key)| (*key as usize) < tally.seen.len() * 64)
        else {
            self.unrecognised.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let bit = 1u64 << (key % 64);
        if tally.seen[key as usize / 64].fetch_or(bit, Ordering::Relaxed) & bit != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.arrivals.lock().expect("arrivals lock").push(Arrival {
            form_index,
            at_nanos,
        });
        self.unique.fetch_add(1, Ordering::Relaxed);
    }

    fn unique(&self) -> u64 {
        self.unique.load(Ordering::Relaxed)
    }

    /// Payloads every lane should get for `forms`.
    fn expected(&self, forms: Range<u64>) -> u64 {
        self.lanes
            .iter()
            .map(|lane| lane.id_kind.expected(forms.clone()))
            .sum()
    }

    /// What arrived for `forms`: count, first and last arrival, latencies.
    fn stats(&self, forms: Range<u64>) -> ArrivalStats {
        let arrivals = self.arrivals.lock().expect("arrivals lock");
        let mut stats = ArrivalStats::default();
        for arrival in arrivals.iter().filter(|a| forms.contains(&a.form_index)) {
            stats.count += 1;
            stats.first = Some(
                stats
                    .first
                    .map_or(arrival.at_nanos, |f: u64| f.min(arrival.at_nanos)),
            );
            stats.last = Some(
                stats
                    .last
                    .map_or(arrival.at_nanos, |l: u64| l.max(arrival.at_nanos)),
            );
            let submitted = self.submitted_at[arrival.form_index as usize].load(Ordering::Relaxed);
            if submitted > 0 {
                stats
                    .latencies
                    .push(arrival.at_nanos.saturating_sub(submitted));
            }
        }
        stats.latencies.sort_unstable();
        stats
    }

    /// Arrivals up to `until`.
    fn count_until(&self, until: u64) -> u64 {
        let arrivals = self.arrivals.lock().expect("arrivals lock");
        arrivals.iter().filter(|a| a.at_nanos <= until).count() as u64
    }
}

/// Where the database stood at some moment (see [`Bench::database_mark`]).
#[derive(Debug, Clone, Copy)]
struct DatabaseMark {
    cpu_seconds_before_settling: Option<f64>,
    cpu_seconds_after_settling: Option<f64>,
    counters: Option<DatabaseCounters>,
}

#[derive(Debug, Default)]
struct ArrivalStats {
    count: u64,
    first: Option<u64>,
    last: Option<u64>,
    latencies: Vec<u64>,
}

impl ArrivalStats {
    /// The `p`-th percentile latency in milliseconds (nearest rank).
    fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies, p) as f64 / 1e6
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---- servers in this process -----------------------------------------------------------

type Answer = Result<Response<Full<Bytes>>, Infallible>;

fn respond(status: u16, body: &'static [u8]) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("a valid status");
    Ok(response)
}

/// The fast receiver: `POST /p/{lane}` is a payload for lane `lane`;
/// `POST /ceiling` is the load tool measuring the receiver's own rate.
/// With `answer_after`, every request is answered that long after it
/// arrived (a remote slower than the gateway: scaleout).
async fn start_receiver(
    tally: Arc<Tally>,
    answer_after: Option<Duration>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the receiver")?;
    let addr = listener.local_addr()?;
    http::serve(listener, move |request: Request<Incoming>| {
        let tally = tally.clone();
        async move {
            let arrived = tokio::time::Instant::now();
            let path = request.uri().path().to_owned();
            let key = request.headers().get("idempotency-key").cloned();
            let Ok(body) = request.into_body().collect().await.map(|b| b.to_bytes()) else {
                return respond(400, b"unreadable body");
            };
            if path == "/ceiling" {
                // The same work as for a payload: find the id.
                std::hint::black_box(form_index_in(&body));
                tally.ceiling_hits.fetch_add(1, Ordering::Relaxed);
            } else {
                let lane = path
                    .strip_prefix("/p/")
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(usize::MAX);
                tally.arrived(lane, &body);
                tally.count_key(key.as_ref());
            }
            if let Some(answer_after) = answer_after {
                tokio::time::sleep_until(arrived + answer_after).await;
            }
            respond(200, b"ok")
        }
    });
    Ok(addr)
}

const OPENROSA_SUCCESS: &[u8] = b"<OpenRosaResponse xmlns=\"http://openrosa.org/http/response\"><message nature=\"submit_success\">   \xe2\x88\x9a   </message></OpenRosaResponse>";

/// The submit-path ceiling: reads the body, answers 201, stores nothing.
async fn start_minimal_server() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the minimal server")?;
    let addr = listener.local_addr()?;
    http::serve(listener, |request: Request<Incoming>| async move {
        match request.into_body().collect().await {
            Ok(body) => {
                std::hint::black_box(body.to_bytes());
                respond(201, OPENROSA_SUCCESS)
            }
            Err(_) => respond(400, b"unreadable body"),
        }
    });
    Ok(addr)
}

/// A port on loopback that refuses connections.
fn refusing_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

// ---- submitting ---------------------------------------------------------------------------

/// Posts generated forms `indices` to `path` over `concurrency` keep-alive
/// connections, optionally paced to `rate` per second.
struct Drive {
    addr: SocketAddr,
    path: String,
    authorization: Option<&'static str>,
    indices: Range<u64>,
    concurrency: usize,
    rate: Option<f64>,
    /// Paced open-loop: a form's submission time is when it was due, not
    /// when a free connection sent it, so that a gateway that falls behind
    /// shows in the latencies (no coordinated omission).
    open_loop: bool,
    /// Lowered to stop early: forms from here on are not sent (every form
    /// below it that a worker already took still is).
    end: Option<Arc<AtomicU64>>,
    expect: u16,
}

#[derive(Debug)]
struct Driven {
    ok: u64,
    refused: u64,
    /// The first few refusals, described.
    problems: Vec<String>,
    elapsed: Duration,
    /// Request-to-response times, in nanoseconds, sorted.
    round_trips: Vec<u64>,
}

impl Driven {
    fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn drive(drive: Drive, tally: Option<Arc<Tally>>) -> Driven {
    let end = drive
        .end
        .clone()
        .unwrap_or_else(|| Arc::new(AtomicU64::new(drive.indices.end)));
    let drive = Arc::new(drive);
    let next = Arc::new(AtomicU64::new(drive.indices.start));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..drive.concurrency {
        let (drive, next, tally, end) = (drive.clone(), next.clone(), tally.clone(), end.clone());
        workers.push(tokio::spawn(async move {
            let mut sender: Option<Sender> = None;
            let mut driven = Driven {
                ok: 0,
                refused: 0,
                problems: Vec::new(),
                elapsed: Duration::ZERO,
                round_trips: Vec::new(),
            };
            let mut last_answer = started;
            loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                if index >= drive.indices.end.min(end.load(Ordering::SeqCst)) {
                    break;
                }
                let mut due = None;
                if let Some(rate) = drive.rate {
                    let at = started
                        + Duration::from_secs_f64((index - drive.indices.start) as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                    if index >= end.load(Ordering::SeqCst) {
                        // Stopped while this form waited for its time.
                        continue;
                    }
                    due = Some(at);
                }
                let body = load_form(index);
                let mut problem = None;
                for _attempt in 0..2 {
                    if sender.as_ref().is_none_or(|s| s.is_closed()) {
                        match connect(drive.addr).await {
                            Ok(connected) => sender = Some(connected),
                            Err(error) => {
                                problem =
                                    Some(format!("cannot connect to {}: {error}", drive.addr));
                                continue;
                            }
                        }
                    }
                    let live = sender.as_mut().expect("connected");
                    let mut request = Request::post(drive.path.as_str())
                        .header(hyper::header::HOST, drive.addr.to_string())
                        .header(hyper::header::CONTENT_TYPE, "text/xml");
                    if let Some(authorization) = drive.authorization {
                        request = request.header(hyper::header::AUTHORIZATION, authorization);
                    }
                    let request = request
                        .body(Full::new(Bytes::from(body.clone())))
                        .expect("a well-formed request");
                    if live.ready().await.is_err() {
                        sender = None;
                        problem = Some("the connection closed".into());
                        continue;
                    }
                    if let Some(tally) = &tally {
                        match due {
                            Some(due) if drive.open_loop => tally.submitted_at(index, due),
                            _ => tally.submitted_at(index, Instant::now()),
                        }
                    }
                    let sent = Instant::now();
                    let answered = tokio::time::timeout(ANSWER_TIMEOUT, async {
                        let response = live.send_request(request).await?;
                        let status = response.status().as_u16();
                        let text = response.into_body().collect().await.map(|b| b.to_bytes());
                        Ok::<_, hyper::Error>((status, text.unwrap_or_default()))
                    })
                    .await;
                    let Ok(answered) = answered else {
                        // The connection may hold a late answer: do not reuse it.
                        sender = None;
                        problem = Some(format!(
                            "form {index}: no answer within {} s",
                            ANSWER_TIMEOUT.as_secs()
                        ));
                        break;
                    };
                    match answered {
                        Ok((status, text)) => {
                            last_answer = Instant::now();
                            if status == drive.expect {
                                driven
                                    .round_trips
                                    .push((last_answer - sent).as_nanos() as u64);
                                problem = None;
                            } else {
                                problem = Some(format!(
                                    "form {index} was answered {status}: {}",
                                    String::from_utf8_lossy(&text[..text.len().min(300)])
                                ));
                            }
                            break;
                        }
                        Err(error) => {
                            // A keep-alive connection closed under us: one more try.
                            sender = None;
                            problem = Some(format!("form {index}: {error}"));
                        }
                    }
                }
                match problem {
                    None => driven.ok += 1,
                    Some(problem) => {
                        driven.refused += 1;
                        if driven.problems.len() < 3 {
                            driven.problems.push(problem);
                        }
                    }
                }
            }
            driven.elapsed = last_answer - started;
            driven
        }));
    }
    let mut total = Driven {
        ok: 0,
        refused: 0,
        problems: Vec::new(),
        elapsed: Duration::ZERO,
        round_trips: Vec::new(),
    };
    for worker in workers {
        let Ok(driven) = worker.await else {
            total.refused += 1;
            total.problems.push("a submitting task panicked".into());
            continue;
        };
        total.ok += driven.ok;
        total.refused += driven.refused;
        total.problems.extend(driven.problems);
        total.elapsed = total.elapsed.max(driven.elapsed);
        total.round_trips.extend(driven.round_trips);
    }
    total.problems.truncate(5);
    total.round_trips.sort_unstable();
    total
}

// ---- the gateway process -------------------------------------------------------------------

/// A `/proc/PID/status` memory line (`VmHWM`, `VmRSS`) in MiB.
pub fn status_mib(pid: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: f64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// CPU seconds of the threads of a process named `name` (those still running).
fn thread_cpu_seconds(pid: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let tid = task.file_name().to_string_lossy().into_owned();
            let seconds = cpu_seconds(&format!("{pid}/task/{tid}"))?;
            total = Some(total.unwrap_or(0.0) + seconds);
        }
    }
    total
}

/// Where the store's writer thread stood at some moment.
#[derive(Debug, Clone, Copy)]
pub struct WriterMark {
    at: Instant,
    cpu_seconds: Option<f64>,
}

/// The machine's 1-minute load average (`/proc/loadavg`): wall-clock figures
/// are read beside it.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn own_cpu_seconds() -> f64 {
    cpu_seconds("self").unwrap_or(0.0)
}

/// The gateway binary running as a child process, and what the harness
/// measures of it.
pub struct GatewayProcess {
    daemon: Daemon,
    pid: String,
}

impl GatewayProcess {
    /// The running binary, for requests of its own.
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// Starts `binary serve --config config` with the environment
    /// variables `env`, its log copied to `log`, and waits until `/healthz`
    /// answers 200.
    pub async fn start(
        binary: &Path,
        config: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<GatewayProcess> {
        let mut launch = Launch::new(config).binary(binary).log_file(log);
        for (name, value) in env {
            launch = launch.env(name, value);
        }
        let daemon = launch.start().await?;
        Ok(GatewayProcess {
            pid: daemon.pid().to_string(),
            daemon,
        })
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let log = self.daemon.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.pid).unwrap_or(f64::NAN)
    }

    /// The store's single writer thread (`store-writer`), to tell whether it
    /// is the bottleneck: its busy share of wall time since a mark.
    pub fn writer_mark(&self) -> WriterMark {
        WriterMark {
            at: Instant::now(),
            cpu_seconds: thread_cpu_seconds(&self.pid, "store-writer"),
        }
    }

    pub fn writer_busy_percent(&self, since: WriterMark) -> Option<f64> {
        let now = thread_cpu_seconds(&self.pid, "store-writer")?;
        Some((now - since.cpu_seconds?) / since.at.elapsed().as_secs_f64().max(1e-9) * 100.0)
    }

    pub fn peak_rss_mib(&self) -> f64 {
        status_mib(&self.pid, "VmHWM:").unwrap_or(f64::NAN)
    }

    pub fn rss_mib(&self) -> f64 {
        status_mib(&self.pid, "VmRSS:").unwrap_or(f64::NAN)
    }

    /// A sample of `/metrics` (the first line starting with `name`).
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self
            .daemon
            .http()
            .get(self.daemon.url("/metrics"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .context("GET /metrics")?
            .text()
            .await?;
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|value| value.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("/metrics has no sample {name}"))
    }

    /// The records of `demo` not delivered yet, one line each (repeater,
    /// state, attempts, last error), for a failure message: why a payload is
    /// missing. At most `limit` lines.
    pub async fn undelivered(&self, limit: usize) -> String {
        let answer = async {
            self.daemon
                .http()
                .get(self.daemon.url("/api/v1/domains/demo/records?limit=10000"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await?
                .text()
                .await
        }
        .await;
        let body = match answer {
            Ok(body) => body,
            Err(error) => return format!("(listing records: {error})"),
        };
        let Ok(listing) = serde_json::from_str::<serde_json::Value>(&body) else {
            return format!("(listing records: {body})");
        };
        let records = listing["records"].as_array().cloned().unwrap_or_default();
        let lines: Vec<String> = records
            .iter()
            .filter(|record| record["state"] != "succeeded")
            .take(limit)
            .map(|record| {
                format!(
                    "{} {} {}: {}, {} attempts, next {}, last error {}",
                    record["repeater"],
                    record["payload_id"],
                    record["id"],
                    record["state"],
                    record["n_attempts"],
                    record["next_attempt_at"],
                    record["last_error"]
                )
            })
            .collect();
        if lines.is_empty() {
            "(every record succeeded)".to_owned()
        } else {
            lines.join("\n")
        }
    }

    /// `POST /api/v1/domains/demo/repeaters/{name}/{action}`.
    pub async fn repeater_action(&self, name: &str, action: &str) -> anyhow::Result<()> {
        let response = self
            .daemon
            .http()
            .post(
                self.daemon
                    .url(&format!("/api/v1/domains/demo/repeaters/{name}/{action}")),
            )
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .with_context(|| format!("{action} repeater {name}"))?;
        let status = response.status();
        anyhow::ensure!(
            status == 200,
            "{action} repeater {name}: {status} {}",
            response.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// SIGTERM, then waits for the exit; returns how long it took and
    /// whether the process exited successfully.
    pub async fn terminate(self) -> anyhow::Result<(Duration, bool)> {
        let stopped = self.daemon.stop().await?;
        Ok((stopped.took, stopped.status.success()))
    }
}

/// How much disk a directory takes: the files' apparent sizes (what `ls`
/// shows) and the blocks allocated to them (what `du` shows; a sparse or
/// preallocated file differs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub apparent_bytes: u64,
    pub allocated_bytes: u64,
}

impl DiskUsage {
    /// Every file under `path` (or `path` itself, a file).
    pub fn of(path: &Path) -> DiskUsage {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return DiskUsage::default();
        };
        if !meta.is_dir() {
            return DiskUsage {
                apparent_bytes: meta.len(),
                // st_blocks counts 512-byte units whatever the block size.
                allocated_bytes: meta.blocks() * 512,
            };
        }
        let Ok(entries) = std::fs::read_dir(path) else {
            return DiskUsage::default();
        };
        entries
            .flatten()
            .map(|entry| DiskUsage::of(&entry.path()))
            .fold(DiskUsage::default(), |total, one| DiskUsage {
                apparent_bytes: total.apparent_bytes + one.apparent_bytes,
                allocated_bytes: total.allocated_bytes + one.allocated_bytes,
            })
    }
}

const MIB: f64 = 1024.0 * 1024.0;

// ---- the generated config ---------------------------------------------------------------------

/// One repeater of a scenario.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub kind: &'static str,
    pub format: &'static str,
    /// The receiver lane it delivers to; `None`: a remote that refuses connections.
    pub lane: Option<usize>,
    pub paused: bool,
}

const FORMATS: [(&str, &str); 3] = [
    ("form", "form-xml"),
    ("case", "case-json"),
    ("form-stub", "form-stub"),
];

/// `count` repeaters: form-xml, case-json and form-stub in turn, each to
/// its own receiver lane.
pub fn healthy_plans(count: usize) -> Vec<Plan> {
    (0..count)
        .map(|i| {
            let (kind, format) = FORMATS[i % FORMATS.len()];
            Plan {
                name: format!("{format}-{i}"),
                kind,
                format,
                lane: Some(i),
                paused: false,
            }
        })
        .collect()
}

/// The gateway config of a scenario: `dir` for its data, the repeaters of
/// `plans` delivering to `receiver` (or to `dead_port`, which refuses);
/// `delivery_keys` more lines of `[delivery]`, and `store_url` a PostgreSQL
/// database to store in (a `[store]` table at the end: TOML's tables follow
/// the top-level keys and each other).
pub fn config_text(
    dir: &Path,
    receiver: SocketAddr,
    dead_port: u16,
    plans: &[Plan],
    max_workers: Option<usize>,
    delivery_keys: &str,
    store_url: Option<&str>,
) -> String {
    let urls: Vec<(String, String)> = plans
        .iter()
        .map(|plan| {
            let url = match plan.lane {
                Some(lane) => format!("http://{receiver}/p/{lane}"),
                None => format!("http://127.0.0.1:{dead_port}/dead"),
            };
            (format!("to-{}", plan.name), url)
        })
        .collect();
    let connections: Vec<(&str, &str)> =
        urls.iter().map(|(n, u)| (n.as_str(), u.as_str())).collect();
    let mut repeaters = String::new();
    for plan in plans {
        let mut extra = String::new();
        if plan.paused {
            extra.push_str("paused = true\n");
        }
        if let Some(workers) = max_workers {
            let _ = writeln!(extra, "max_workers = {workers}");
        }
        repeaters.push_str(&repeater(
            &plan.name,
            plan.kind,
            &format!("to-{}", plan.name),
            plan.format,
            &extra,
        ));
    }
    let store = store_url.map_or(String::new(), |url| {
        format!("\n[store]\nbackend = \"postgres\"\nurl = \"{url}\"\n")
    });
    format!(
        "{}\n[delivery]\nallowed_networks = [\"127.0.0.0/8\"]\n{delivery_keys}\n{}{store}",
        config_head(dir),
        demo_config(&connections, &repeaters)
    )
}

// ---- one scenario run ---------------------------------------------------------------------------

/// Everything one run of one scenario needs.
struct Bench<'a> {
    options: &'a Options,
    scenario: Scenario,
    /// The scenario's name in the tables (with its store).
    label: &'static str,
    /// The PostgreSQL server its gateways store in; `None`: redb.
    postgres: Option<&'a PgServer>,
    /// The database of the gateway(s) started next (a fresh one per start
    /// of a scenario; two nodes share one).
    database_url: Option<String>,
    /// More `[delivery]` lines of the config.
    delivery_keys: String,
    /// Environment variables every gateway gets.
    gateway_env: Vec<(&'static str, &'static str)>,
    /// The scenario's directory: config, data, gateway logs.
    path: PathBuf,
    /// Removes `path` when dropped, unless `--keep`.
    _dir: Option<TempDir>,
    tally: Arc<Tally>,
    receiver: SocketAddr,
    figures: Vec<Figure>,
    failures: Vec<String>,
    forms_submitted: u64,
    forms_accepted: u64,
    payloads_expected: u64,
    payloads_delivered: u64,
    n_starts: usize,
    profiles: Vec<profile::Profile>,
}

impl<'a> Bench<'a> {
    /// A scenario on redb with the fast receiver.
    async fn new(
        options: &'a Options,
        scenario: Scenario,
        plans: &[Plan],
        capacity: u64,
    ) -> anyhow::Result<Bench<'a>> {
        Bench::on(options, scenario, plans, capacity, None, None).await
    }

    /// A scenario storing in `postgres` (redb when `None`), with a receiver
    /// that answers after `answer_after` (at once when `None`; the slow
    /// one counts Idempotency-Keys too).
    async fn on(
        options: &'a Options,
        scenario: Scenario,
        plans: &[Plan],
        capacity: u64,
        postgres: Option<&'a PgServer>,
        answer_after: Option<Duration>,
    ) -> anyhow::Result<Bench<'a>> {
        let lanes: Vec<IdKind> = plans
            .iter()
            .filter(|p| p.lane.is_some())
            .map(|p| IdKind::of(p.kind))
            .collect();
        let tally = Arc::new(Tally::new(capacity, &lanes, answer_after.is_some()));
        let receiver = start_receiver(tally.clone(), answer_after).await?;
        let backend = if postgres.is_some() {
            StoreBackend::Postgres
        } else {
            StoreBackend::Redb
        };
        let label = scenario.label(backend);
        let dir = TempDir::new(&format!("load-{}", scenario.name()));
        let path = dir.path().to_owned();
        let dir = if options.keep {
            eprintln!("repeatd-load: keeping {}", path.display());
            std::mem::forget(dir);
            None
        } else {
            Some(dir)
        };
        Ok(Bench {
            options,
            scenario,
            label,
            postgres,
            database_url: None,
            delivery_keys: String::new(),
            gateway_env: Vec::new(),
            path,
            _dir: dir,
            tally,
            receiver,
            figures: Vec::new(),
            failures: Vec::new(),
            forms_submitted: 0,
            forms_accepted: 0,
            payloads_expected: 0,
            payloads_delivered: 0,
            n_starts: 0,
            profiles: Vec::new(),
        })
    }

    /// Records a figure under the bench's label; issue 14's targets are
    /// redb's, so a figure on PostgreSQL is held against none.
    fn figure(&mut self, mut figure: Figure) {
        figure.scenario = self.label;
        if self.postgres.is_some() && self.scenario != Scenario::Scaleout {
            figure.target = None;
        }
        self.figures.push(figure);
    }

    /// The rate at which the gateway accepted the forms of `driven`, against
    /// the submit path's ceiling.
    fn accepted_figure(
        &mut self,
        name: impl Into<String>,
        driven: &Driven,
        submit_ceiling: f64,
        target: Option<Target>,
    ) {
        let mut figure = Figure::new(self.scenario, name, driven.per_second(), "forms/s")
            .ceiling(submit_ceiling);
        figure.target = target;
        self.figure(figure);
    }

    /// `cpu_seconds` spent on `n` forms (or payloads), per 1,000 of them.
    fn cpu_per_thousand_figure(&mut self, name: &str, cpu_seconds: f64, n: f64) {
        self.cpu_per_thousand_target(name, cpu_seconds, n, None);
    }

    fn cpu_per_thousand_target(
        &mut self,
        name: &str,
        cpu_seconds: f64,
        n: f64,
        target: Option<Target>,
    ) {
        let mut figure = Figure::new(self.scenario, name, cpu_seconds / n * 1000.0, "CPU s");
        figure.target = target;
        self.figure(figure);
    }

    /// The p50 and p99 submission-to-arrival latencies of `stats` under a
    /// saturating load, their names after `prefix`.
    fn saturated_latency_figures(&mut self, prefix: &str, stats: &ArrivalStats) {
        for p in [50.0, 99.0] {
            self.figure(Figure::new(
                self.scenario,
                format!("{prefix}submission-to-arrival p{p}, saturated"),
                stats.percentile_ms(p),
                "ms",
            ));
        }
    }

    /// Submits `forms` at the full concurrency and reports how busy the
    /// store-writer thread was meanwhile as `writer_figure`; returns the drive
    /// and the gateway CPU seconds it took.
    async fn ingest(
        &mut self,
        gateway: &GatewayProcess,
        forms: Range<u64>,
        writer_figure: &str,
    ) -> (Driven, f64) {
        let cpu_before = gateway.cpu_seconds();
        let writer = gateway.writer_mark();
        let driven = self
            .submit(gateway, forms, self.options.concurrency, None)
            .await;
        let cpu_seconds = gateway.cpu_seconds() - cpu_before;
        self.writer_busy_figure(gateway, writer, writer_figure);
        (driven, cpu_seconds)
    }

    /// How busy the store-writer thread was since `writer`, as the figure
    /// `name`, where the platform tells it.
    fn writer_busy_figure(&mut self, gateway: &GatewayProcess, writer: WriterMark, name: &str) {
        if let Some(busy) = gateway.writer_busy_percent(writer) {
            self.figure(Figure::new(self.scenario, name, busy, "% of wall time"));
        }
    }

    /// What `data_dir` takes on disk for `forms` stored forms with
    /// `records_per_form` records each: the directory (allocated blocks, as
    /// `du`) per form against the target, and the redb file's allocated and
    /// apparent sizes.
    fn disk_figures(&mut self, data_dir: &Path, forms: u64, records_per_form: f64) {
        let forms = forms.max(1) as f64;
        let dir = DiskUsage::of(data_dir);
        let redb = DiskUsage::of(&data_dir.join("repeatd.redb"));
        let label = format_number(forms);
        self.figure(Figure::new(
            self.scenario,
            format!("data dir after storing {label} forms (allocated)"),
            dir.allocated_bytes as f64 / MIB,
            "MiB",
        ));
        self.figure(
            Figure::new(
                self.scenario,
                "data on disk per form (data dir, allocated)",
                dir.allocated_bytes as f64 / forms / 1000.0,
                "KB",
            )
            .target(targets::DISK_PER_FORM),
        );
        self.figure(Figure::new(
            self.scenario,
            "redb file per form, allocated",
            redb.allocated_bytes as f64 / forms / 1000.0,
            "KB",
        ));
        self.figure(Figure::new(
            self.scenario,
            "redb file per form, apparent size",
            redb.apparent_bytes as f64 / forms / 1000.0,
            "KB",
        ));
        self.figure(Figure::new(
            self.scenario,
            "records per form stored",
            records_per_form,
            "",
        ));
        self.figure(Figure::new(
            self.scenario,
            "generated form size (XML), mean",
            mean_form_bytes(0..(forms as u64).min(10_000)) / 1000.0,
            "KB",
        ));
    }

    fn fail(&mut self, problem: String) {
        self.failures.push(format!("{}: {problem}", self.label));
    }

    /// On PostgreSQL, makes the database the next config names; nothing on redb.
    async fn fresh_database(&mut self) -> anyhow::Result<()> {
        if let Some(postgres) = self.postgres {
            self.database_url = Some(postgres.fresh_database().await?);
        }
        Ok(())
    }

    fn write_config(&self, plans: &[Plan], dead_port: u16) -> anyhow::Result<PathBuf> {
        self.write_config_in(&self.path, plans, dead_port, self.options.max_workers)
    }

    /// The config of a gateway whose data is in `dir` (a node of its own).
    fn write_config_in(
        &self,
        dir: &Path,
        plans: &[Plan],
        dead_port: u16,
        max_workers: Option<usize>,
    ) -> anyhow::Result<PathBuf> {
        let path = dir.join("repeatd.toml");
        std::fs::write(
            &path,
            config_text(
                dir,
                self.receiver,
                dead_port,
                plans,
                max_workers,
                &self.delivery_keys,
                self.database_url.as_deref(),
            ),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    async fn start_gateway(&mut self, config: &Path) -> anyhow::Result<GatewayProcess> {
        self.n_starts += 1;
        let log = self.path.join(format!("gateway-{}.log", self.n_starts));
        GatewayProcess::start(&self.options.gateway, config, &log, &self.gateway_env).await
    }

    /// Where the database stands: the server's CPU (when this tool can see
    /// its processes) before and after [`postgres::STATISTICS_SETTLE`], and
    /// the database's counters after it. `None` on redb.
    async fn database_mark(&mut self) -> Option<DatabaseMark> {
        let postgres = self.postgres?;
        let url = self.database_url.clone()?;
        let cpu_seconds_before_settling = postgres.cpu_seconds();
        if !self.options.smoke {
            tokio::time::sleep(postgres::STATISTICS_SETTLE).await;
        }
        let counters = match postgres::database_counters(&url).await {
            Ok(counters) => Some(counters),
            Err(error) => {
                self.fail(format!("{error:#}"));
                None
            }
        };
        Some(DatabaseMark {
            cpu_seconds_before_settling,
            cpu_seconds_after_settling: postgres.cpu_seconds(),
            counters,
        })
    }

    /// What the database spent between two marks on `n` forms or payloads
    /// (`what`) of a phase, the figures' names ending in `phase` (as the
    /// gateway's own figure of that phase ends), beside
    /// `gateway_cpu_seconds`: its CPU
    /// and the sum with the gateway's, its commits, write transactions,
    /// WAL fsyncs per 1,000 and WAL bytes per one. Nothing on redb.
    fn database_figures(
        &mut self,
        phase: &str,
        what: &str,
        n: f64,
        gateway_cpu_seconds: f64,
        marks: (Option<DatabaseMark>, Option<DatabaseMark>),
    ) {
        let (Some(before), Some(after)) = marks else {
            return;
        };
        let n = n.max(1.0);
        let per_thousand = |value: f64| value / n * 1000.0;
        // The settling of either mark is not the phase's.
        if let (Some(from), Some(to)) = (
            before.cpu_seconds_after_settling,
            after.cpu_seconds_before_settling,
        ) {
            let database = to - from;
            self.figure(Figure::new(
                self.scenario,
                format!("database CPU per 1,000 {what}{phase}"),
                per_thousand(database),
                "CPU s",
            ));
            self.figure(Figure::new(
                self.scenario,
                format!("gateway + database CPU per 1,000 {what}{phase}"),
                per_thousand(gateway_cpu_seconds + database),
                "CPU s",
            ));
        }
        let (Some(from), Some(to)) = (before.counters, after.counters) else {
            return;
        };
        self.figure(Figure::new(
            self.scenario,
            format!("database commits per 1,000 {what}{phase}"),
            per_thousand(to.commits - from.commits),
            "",
        ));
        self.figure(Figure::new(
            self.scenario,
            format!("database write transactions per 1,000 {what}{phase}"),
            per_thousand(to.write_transactions - from.write_transactions),
            "",
        ));
        if let (Some(from), Some(to)) = (from.wal_syncs, to.wal_syncs) {
            self.figure(Figure::new(
                self.scenario,
                format!("WAL fsyncs per 1,000 {what}{phase}"),
                per_thousand(to - from),
                "",
            ));
        }
        let singular = what.trim_end_matches('s');
        self.figure(Figure::new(
            self.scenario,
            format!("WAL per {singular}{phase}"),
            (to.wal_bytes - from.wal_bytes) / n / 1000.0,
            "KB",
        ));
    }

    /// Measures and records both ceilings the scenario's figures are read
    /// against: the submit path's (forms/s) and the receiver's (payloads/s).
    async fn ceilings(&mut self, plans: &[Plan]) -> anyhow::Result<(f64, f64)> {
        let submit_ceiling = self.submit_ceiling().await?;
        let receiver_ceiling = self
            .receiver_ceiling(delivery_concurrency(plans, self.options.max_workers))
            .await?;
        self.figure(Figure::new(
            self.scenario,
            "ceiling: minimal server, submit path",
            submit_ceiling,
            "forms/s",
        ));
        self.figure(Figure::new(
            self.scenario,
            "ceiling: receiver alone",
            receiver_ceiling,
            "payloads/s",
        ));
        Ok((submit_ceiling, receiver_ceiling))
    }

    /// The submit path's ceiling: the same forms, the same concurrency, a
    /// server that answers 201 and stores nothing.
    async fn submit_ceiling(&mut self) -> anyhow::Result<f64> {
        let addr = start_minimal_server().await?;
        let drive = Drive {
            addr,
            path: format!("/a/demo/receiver/{APP_ID}"),
            authorization: Some(SUBMITTER_AUTHORIZATION),
            indices: 0..self.options.ceiling_requests,
            concurrency: self.options.concurrency,
            rate: None,
            open_loop: false,
            end: None,
            expect: 201,
        };
        Ok(self
            .ceiling(drive, |n| format!("the minimal submit server refused {n}"))
            .await)
    }

    /// The receiver's own rate, posting to it at the gateway's delivery concurrency.
    async fn receiver_ceiling(&mut self, concurrency: usize) -> anyhow::Result<f64> {
        let drive = Drive {
            addr: self.receiver,
            path: "/ceiling".into(),
            authorization: None,
            indices: 0..self.options.ceiling_requests,
            concurrency,
            rate: None,
            open_loop: false,
            end: None,
            expect: 200,
        };
        Ok(self
            .ceiling(drive, |n| {
                format!("the receiver refused {n} ceiling requests")
            })
            .await)
    }

    /// Drives `drive` untallied and returns its rate; refusals are failures,
    /// said by `refused` (given how many) and the problems.
    async fn ceiling(&mut self, drive_spec: Drive, refused: impl Fn(u64) -> String) -> f64 {
        let driven = drive(drive_spec, None).await;
        if driven.refused > 0 {
            self.fail(format!(
                "{}: {:?}",
                refused(driven.refused),
                driven.problems
            ));
        }
        driven.per_second()
    }

    /// Submits `forms` to the gateway; refusals are failures.
    async fn submit(
        &mut self,
        gateway: &GatewayProcess,
        forms: Range<u64>,
        concurrency: usize,
        rate: Option<f64>,
    ) -> Driven {
        let driven = drive(
            Drive {
                addr: gateway.daemon.addr(),
                path: format!("/a/demo/receiver/{APP_ID}"),
                authorization: Some(SUBMITTER_AUTHORIZATION),
                indices: forms.clone(),
                concurrency,
                rate,
                open_loop: false,
                end: None,
                expect: 201,
            },
            Some(self.tally.clone()),
        )
        .await;
        self.forms_submitted += forms.end - forms.start;
        self.forms_accepted += driven.ok;
        if driven.refused > 0 {
            self.fail(format!(
                "{} of {} forms were not accepted: {}",
                driven.refused,
                forms.end - forms.start,
                driven.problems.join("; ")
            ));
        }
        driven
    }

    /// Waits until every payload of `forms` arrived (all earlier ones have);
    /// a stall of [`STALL`] is a failure. Returns whether all arrived.
    async fn wait_delivered(&mut self, gateway: &GatewayProcess, forms: Range<u64>) -> bool {
        let expected_total = self.tally.expected(0..forms.end);
        let expected_here = self.tally.expected(forms.clone());
        let mut last_count = self.tally.unique();
        let mut last_progress = Instant::now();
        loop {
            let count = self.tally.unique();
            if count >= expected_total {
                break;
            }
            if count > last_count {
                last_count = count;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STALL {
                let got = self.tally.stats(forms.clone()).count;
                self.payloads_expected += expected_here;
                self.payloads_delivered += got;
                let undelivered = gateway.undelivered(20).await;
                self.fail(format!(
                    "payloads missing: {got} of {expected_here} arrived for forms {forms:?}, none for {} s; records not delivered:\n{undelivered}\ngateway log:\n{}",
                    STALL.as_secs(),
                    gateway.log_tail()
                ));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.payloads_expected += expected_here;
        self.payloads_delivered += self.tally.stats(forms).count;
        true
    }

    fn check_receiver(&mut self) {
        let unrecognised = self.tally.unrecognised.load(Ordering::Relaxed);
        if unrecognised > 0 {
            self.fail(format!(
                "{unrecognised} payloads carried no generated form or case id"
            ));
        }
        let duplicates = self.tally.duplicates.load(Ordering::Relaxed);
        self.figure(Figure::new(
            self.scenario,
            "payloads delivered twice",
            duplicates as f64,
            "",
        ));
    }

    async fn stop(&mut self, gateway: GatewayProcess) -> Option<Duration> {
        match gateway.terminate().await {
            Ok((took, true)) => Some(took),
            Ok((took, false)) => {
                self.fail(format!(
                    "the gateway exited unsuccessfully after SIGTERM ({took:?})"
                ));
                Some(took)
            }
            Err(error) => {
                self.fail(format!("{error:#}"));
                None
            }
        }
    }

    /// The end of every scenario: the gateway's peak memory, what the
    /// receiver saw, a graceful stop, and the figures into `report`.
    async fn conclude(mut self, gateway: GatewayProcess, report: &mut Report, rss_figure: &str) {
        self.figure(
            Figure::new(self.scenario, rss_figure, gateway.peak_rss_mib(), "MiB")
                .target(targets::PEAK_RSS),
        );
        if let Some(load) = load_average() {
            self.figure(Figure::new(
                self.scenario,
                "machine load average (1 min) at the end",
                load,
                "",
            ));
        }
        self.check_receiver();
        self.stop(gateway).await;
        self.finish(report);
    }

    fn finish(self, report: &mut Report) {
        report.figures.extend(self.figures);
        report.failures.extend(self.failures);
        report.forms_submitted += self.forms_submitted;
        report.forms_accepted += self.forms_accepted;
        report.payloads_expected += self.payloads_expected;
        report.payloads_delivered += self.payloads_delivered;
        report.profiles.extend(self.profiles);
    }
}

fn delivery_concurrency(plans: &[Plan], max_workers: Option<usize>) -> usize {
    let live = plans.iter().filter(|p| p.lane.is_some()).count();
    (live * max_workers.unwrap_or(DEFAULT_MAX_WORKERS)).clamp(1, DEFAULT_MAX_IN_FLIGHT)
}

/// steady and fanout: live delivery, a backlog drain, unsaturated latency;
/// stored in `postgres` (a fresh database) or, when `None`, in redb.
async fn flow(
    options: &Options,
    scenario: Scenario,
    repeaters: usize,
    postgres: Option<&PgServer>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let forms = options.forms_for(scenario);
    let plans = healthy_plans(repeaters);
    let capacity = 2 * forms + options.latency_forms;
    let mut bench = Bench::on(options, scenario, &plans, capacity, postgres, None).await?;
    let (submit_ceiling, receiver_ceiling) = bench.ceilings(&plans).await?;

    bench.fresh_database().await?;
    let config = bench.write_config(&plans, 0)?;
    let gateway = bench.start_gateway(&config).await?;

    // Phase 1: submissions and deliveries at once, as in production.
    let live = 0..forms;
    let database_before = bench.database_mark().await;
    let recording = bench.profile_start(&gateway, profile::Phase::Live).await;
    let (cpu_before, own_before) = (gateway.cpu_seconds(), own_cpu_seconds());
    let driven = bench
        .submit(&gateway, live.clone(), options.concurrency, None)
        .await;
    let delivered = bench.wait_delivered(&gateway, live.clone()).await;
    let (cpu_after, own_after) = (gateway.cpu_seconds(), own_cpu_seconds());
    bench.profile_finish(recording).await;
    let database_after = bench.database_mark().await;
    let stats = bench.tally.stats(live.clone());
    let per_form = stats.count as f64 / forms as f64;
    bench.accepted_figure(
        "accepted forms/s, delivering at once",
        &driven,
        submit_ceiling,
        None,
    );
    if delivered && let Some(last) = stats.last {
        let first_submit = bench.tally.submitted_at[live.start as usize].load(Ordering::Relaxed);
        let seconds = (last.saturating_sub(first_submit)) as f64 / 1e9;
        bench.figure(
            Figure::new(
                scenario,
                "delivered payloads/s, submitting at once",
                stats.count as f64 / seconds,
                "payloads/s",
            )
            .ceiling(receiver_ceiling),
        );
        bench.saturated_latency_figures("", &stats);
    }
    bench.figure(Figure::new(scenario, "payloads per form", per_form, ""));
    bench.cpu_per_thousand_figure(
        "gateway CPU per 1,000 forms (ingest + delivery)",
        cpu_after - cpu_before,
        forms as f64,
    );
    bench.database_figures(
        " (ingest + delivery)",
        "forms",
        forms as f64,
        cpu_after - cpu_before,
        (database_before, database_after),
    );
    bench.cpu_per_thousand_figure(
        "load tool CPU per 1,000 forms (submit + receive)",
        own_after - own_before,
        forms as f64,
    );

    // Phase 2: a backlog. Ingest alone with every repeater paused, then
    // delivery alone once they resume.
    let backlog = forms..2 * forms;
    for plan in &plans {
        gateway.repeater_action(&plan.name, "pause").await?;
    }
    let database_before = bench.database_mark().await;
    let recording = bench.profile_start(&gateway, profile::Phase::Ingest).await;
    let (driven, cpu_ingest) = bench
        .ingest(
            &gateway,
            backlog.clone(),
            "store-writer thread busy, ingest only",
        )
        .await;
    bench.profile_finish(recording).await;
    let database_after_ingest = bench.database_mark().await;
    let steady = scenario == Scenario::Steady;
    bench.accepted_figure(
        "accepted forms/s, delivery paused",
        &driven,
        submit_ceiling,
        Some(if steady {
            targets::INGEST_FORMS
        } else {
            targets::FANOUT_INGEST_FORMS
        }),
    );
    bench.cpu_per_thousand_target(
        "gateway CPU per 1,000 forms, ingest only",
        cpu_ingest,
        forms as f64,
        steady.then_some(targets::INGEST_CPU),
    );
    bench.database_figures(
        ", ingest only",
        "forms",
        driven.ok as f64,
        cpu_ingest,
        (database_before, database_after_ingest),
    );
    let recording = bench
        .profile_start(&gateway, profile::Phase::Delivery)
        .await;
    let resumed = Instant::now();
    let cpu_before = gateway.cpu_seconds();
    let writer = gateway.writer_mark();
    for plan in &plans {
        gateway.repeater_action(&plan.name, "resume").await?;
    }
    let delivered = bench.wait_delivered(&gateway, backlog.clone()).await;
    let cpu_delivery = gateway.cpu_seconds() - cpu_before;
    bench.profile_finish(recording).await;
    bench.writer_busy_figure(&gateway, writer, "store-writer thread busy, delivery only");
    let database_after_delivery = bench.database_mark().await;
    let stats = bench.tally.stats(backlog.clone());
    if delivered && let Some(last) = stats.last {
        let seconds = bench.tally.seconds_since(resumed, last);
        let mut figure = Figure::new(
            scenario,
            "delivered payloads/s, draining a backlog",
            stats.count as f64 / seconds,
            "payloads/s",
        )
        .ceiling(receiver_ceiling);
        figure.target = steady.then_some(targets::DRAIN_PAYLOADS);
        bench.figure(figure);
        bench.cpu_per_thousand_target(
            "gateway CPU per 1,000 payloads, delivery only",
            cpu_delivery,
            stats.count.max(1) as f64,
            steady.then_some(targets::DELIVERY_CPU),
        );
        bench.database_figures(
            ", delivery only",
            "payloads",
            stats.count as f64,
            cpu_delivery,
            (database_after_ingest, database_after_delivery),
        );
    }

    // Phase 3: latency when not saturated.
    let paced = 2 * forms..2 * forms + options.latency_forms;
    let driven = bench
        .submit(&gateway, paced.clone(), 8, Some(options.latency_rate))
        .await;
    if bench.wait_delivered(&gateway, paced.clone()).await {
        let stats = bench.tally.stats(paced);
        let rate = format_number(options.latency_rate);
        let mut figure = Figure::new(
            scenario,
            format!("submission-to-arrival p50 at {rate} forms/s"),
            stats.percentile_ms(50.0),
            "ms",
        );
        figure.target = steady.then_some(targets::P50_UNSATURATED);
        bench.figure(figure);
        bench.figure(Figure::new(
            scenario,
            format!("submission-to-arrival p99 at {rate} forms/s"),
            stats.percentile_ms(99.0),
            "ms",
        ));
        bench.figure(Figure::new(
            scenario,
            format!("submission round trip (201) p50 at {rate} forms/s"),
            percentile(&driven.round_trips, 50.0) as f64 / 1e6,
            "ms",
        ));
    }
    bench.conclude(gateway, report, "gateway peak RSS").await;
    Ok(())
}

/// The secret key every node of a scaleout cluster shares (SPEC section 12).
const CLUSTER_SECRET_KEY: &str = "5ca1e0a75ca1e0a75ca1e0a75ca1e0a75ca1e0a75ca1e0a75ca1e0a75ca1e0a7";
/// The most nodes scaleout runs at once.
const SCALEOUT_NODES: usize = 2;
/// How long after a phase's last payload a second send of some record
/// would still be counted.
const SECOND_SEND_LINGER: Duration = Duration::from_millis(500);

/// PostgreSQL only: a backlog of forms for two form-xml repeaters, drained
/// by one node, then (on a fresh database) by two nodes sharing it, to a
/// remote that answers after `--scaleout-answer-after`: with
/// `--scaleout-in-flight` sends per node, the remote's latency limits each
/// node, not the CPU. A repeater's `max_workers` holds for the whole
/// cluster and is at most 64, so one repeater could never have more than 64
/// sends in flight however many nodes: there is one repeater per node of
/// the largest cluster, each with `max_workers` = the sends per node. Every
/// payload must arrive once, by form id and by Idempotency-Key.
async fn scaleout(
    options: &Options,
    postgres: &PgServer,
    report: &mut Report,
) -> anyhow::Result<()> {
    let scenario = Scenario::Scaleout;
    let forms = options.forms_for(scenario);
    let in_flight = options.scaleout_in_flight;
    let answer_after = options.scaleout_answer_after;
    let plans: Vec<Plan> = (0..SCALEOUT_NODES)
        .map(|i| Plan {
            name: format!("form-xml-{i}"),
            kind: "form",
            format: "form-xml",
            lane: Some(i),
            paused: true,
        })
        .collect();
    let capacity = SCALEOUT_NODES as u64 * forms;
    let mut bench = Bench::on(
        options,
        scenario,
        &plans,
        capacity,
        Some(postgres),
        Some(answer_after),
    )
    .await?;
    bench.delivery_keys = format!("max_in_flight = {in_flight}\n");
    bench.gateway_env = vec![("REPEATD_SECRET_KEY", CLUSTER_SECRET_KEY)];
    // Together the repeaters have room for every node's sends, so that each
    // node's own max_in_flight is what limits it.
    let max_workers = options.max_workers.unwrap_or(in_flight);

    let mut rates = Vec::new();
    for n_nodes in 1..=SCALEOUT_NODES {
        let nodes_label = if n_nodes == 1 {
            "1 node".to_owned()
        } else {
            format!("{n_nodes} nodes")
        };
        let ceiling = bench.receiver_ceiling(in_flight * n_nodes).await?;
        bench.figure(Figure::new(
            scenario,
            format!(
                "ceiling: receiver alone, {} in flight ({nodes_label})",
                in_flight * n_nodes
            ),
            ceiling,
            "payloads/s",
        ));
        let phase = (n_nodes as u64 - 1) * forms..n_nodes as u64 * forms;

        bench.fresh_database().await?;
        let mut nodes = Vec::new();
        for node in 0..n_nodes {
            let dir = bench.path.join(format!("{n_nodes}-nodes-node-{node}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let config = bench.write_config_in(&dir, &plans, 0, Some(max_workers))?;
            nodes.push(bench.start_gateway(&config).await?);
        }

        // The backlog: forms submitted to every node at once, in shares.
        let queueing = Instant::now();
        let mut drives = Vec::new();
        let share = forms.div_ceil(n_nodes as u64);
        for (node, gateway) in nodes.iter().enumerate() {
            let start = phase.start + node as u64 * share;
            let indices = start..(start + share).min(phase.end);
            drives.push(tokio::spawn(drive(
                Drive {
                    addr: gateway.daemon.addr(),
                    path: format!("/a/demo/receiver/{APP_ID}"),
                    authorization: Some(SUBMITTER_AUTHORIZATION),
                    indices,
                    concurrency: options.concurrency.div_ceil(n_nodes),
                    rate: None,
                    open_loop: false,
                    end: None,
                    expect: 201,
                },
                Some(bench.tally.clone()),
            )));
        }
        let mut accepted = 0;
        for submitted in drives {
            let driven = submitted.await.context("a submitting task panicked")?;
            accepted += driven.ok;
            if driven.refused > 0 {
                bench.fail(format!(
                    "{nodes_label}: {} forms were not accepted: {}",
                    driven.refused,
                    driven.problems.join("; ")
                ));
            }
        }
        bench.forms_submitted += forms;
        bench.forms_accepted += accepted;
        bench.figure(Figure::new(
            scenario,
            format!("accepted forms/s while queueing, {nodes_label}"),
            accepted as f64 / queueing.elapsed().as_secs_f64().max(1e-9),
            "forms/s",
        ));

        // The drain: every node resumes, the way an operator's resume
        // reaches them all.
        let database_before = bench.database_mark().await;
        let cpu_before: f64 = nodes.iter().map(GatewayProcess::cpu_seconds).sum();
        let resumed = Instant::now();
        for gateway in &nodes {
            for plan in &plans {
                gateway.repeater_action(&plan.name, "resume").await?;
            }
        }
        let delivered = bench.wait_delivered(&nodes[0], phase.clone()).await;
        let cpu_seconds = nodes.iter().map(GatewayProcess::cpu_seconds).sum::<f64>() - cpu_before;
        let database_after = bench.database_mark().await;
        let stats = bench.tally.stats(phase.clone());
        if delivered && let Some(last) = stats.last {
            let rate = stats.count as f64 / bench.tally.seconds_since(resumed, last);
            rates.push(rate);
            bench.figure(
                Figure::new(
                    scenario,
                    format!("delivered payloads/s, {nodes_label}"),
                    rate,
                    "payloads/s",
                )
                .ceiling(ceiling),
            );
            bench.cpu_per_thousand_figure(
                &format!("gateway CPU per 1,000 payloads, {nodes_label}"),
                cpu_seconds,
                stats.count.max(1) as f64,
            );
            bench.database_figures(
                &format!(", {nodes_label}"),
                "payloads",
                stats.count as f64,
                cpu_seconds,
                (database_before, database_after),
            );
        }
        tokio::time::sleep(SECOND_SEND_LINGER).await;
        let keys = bench.tally.take_key_counts();
        let expected = bench.tally.expected(phase.clone());
        bench.figure(Figure::new(
            scenario,
            format!("records sent twice (Idempotency-Key), {nodes_label}"),
            keys.repeated as f64,
            "",
        ));
        if keys.distinct != expected || keys.repeated > 0 || keys.missing > 0 {
            bench.fail(format!(
                "{nodes_label}: {} distinct Idempotency-Keys of {expected} payloads, {} arrived more than once, {} payloads without one",
                keys.distinct, keys.repeated, keys.missing
            ));
        }
        for (node, gateway) in nodes.into_iter().enumerate() {
            bench.figure(Figure::new(
                scenario,
                format!("gateway peak RSS, {nodes_label}, node {node}"),
                gateway.peak_rss_mib(),
                "MiB",
            ));
            bench.stop(gateway).await;
        }
    }
    if let [one, two] = rates[..] {
        bench.figure(
            Figure::new(
                scenario,
                "delivered payloads/s, 2 nodes / 1 node",
                two / one,
                "",
            )
            .target(targets::SCALEOUT),
        );
    }
    if let Some(load) = load_average() {
        bench.figure(Figure::new(
            scenario,
            "machine load average (1 min) at the end",
            load,
            "",
        ));
    }
    bench.check_receiver();
    bench.finish(report);
    Ok(())
}

/// The steady three plus a repeater whose remote refuses connections.
async fn dead_remote(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let scenario = Scenario::DeadRemote;
    let forms = options.forms_for(scenario);
    let mut plans = healthy_plans(3);
    plans.push(Plan {
        name: "form-xml-dead".into(),
        kind: "form",
        format: "form-xml",
        lane: None,
        paused: false,
    });
    let mut bench = Bench::new(options, scenario, &plans, forms).await?;
    let (submit_ceiling, receiver_ceiling) = bench.ceilings(&plans).await?;
    let config = bench.write_config(&plans, refusing_port()?)?;
    let gateway = bench.start_gateway(&config).await?;

    let all = 0..forms;
    let cpu_before = gateway.cpu_seconds();
    let driven = bench
        .submit(&gateway, all.clone(), options.concurrency, None)
        .await;
    let delivered = bench.wait_delivered(&gateway, all.clone()).await;
    let cpu_after = gateway.cpu_seconds();
    bench.accepted_figure("accepted forms/s", &driven, submit_ceiling, None);
    let stats = bench.tally.stats(all.clone());
    if delivered && let Some(last) = stats.last {
        let first_submit = bench.tally.submitted_at[0].load(Ordering::Relaxed);
        let seconds = last.saturating_sub(first_submit) as f64 / 1e9;
        bench.figure(
            Figure::new(
                scenario,
                "healthy repeaters: delivered payloads/s",
                stats.count as f64 / seconds,
                "payloads/s",
            )
            .ceiling(receiver_ceiling),
        );
        bench.saturated_latency_figures("healthy repeaters: ", &stats);
    }
    bench.cpu_per_thousand_figure(
        "gateway CPU per 1,000 forms",
        cpu_after - cpu_before,
        forms as f64,
    );
    // A payload arrives before its success is committed: give the last
    // commits a moment before the queue must hold only the dead remote's.
    let depth = if delivered {
        wait_for(Duration::from_secs(30), || async {
            match gateway.metric("repeatd_queue_depth").await {
                Ok(depth) if depth as u64 == forms => Ok(Ok(depth)),
                Ok(depth) => Err(Ok(depth)),
                Err(error) => Ok(Err(error)),
            }
        })
        .await
        .unwrap_or_else(|last_seen| last_seen)
    } else {
        gateway.metric("repeatd_queue_depth").await
    };
    match depth {
        Ok(depth) => {
            bench.figure(Figure::new(
                scenario,
                "records queued for the dead remote",
                depth,
                "records",
            ));
            if delivered && depth as u64 != forms {
                bench.fail(format!("{depth} records queued after the healthy ones drained; expected {forms} (the dead remote's)"));
            }
        }
        Err(error) => bench.fail(format!("{error:#}")),
    }
    // The figure is CPU while idle: let the last commits and timers of the
    // busy phase pass before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_from = gateway.cpu_seconds();
    tokio::time::sleep(options.idle).await;
    let idle_cpu = (gateway.cpu_seconds() - idle_from) / options.idle.as_secs_f64();
    bench.figure(Figure::new(
        scenario,
        format!(
            "gateway CPU while idle with {} dead records queued",
            format_number(forms as f64)
        ),
        idle_cpu * 100.0,
        "% of a core",
    ));
    bench.conclude(gateway, report, "gateway peak RSS").await;
    Ok(())
}

/// A queue filled by paused repeaters; SIGTERM; start again; resume.
async fn restart(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let scenario = Scenario::Restart;
    let paused = options.paused_repeaters.max(1);
    let forms = options.queued.div_ceil(paused).max(1);
    let queued = forms * paused;
    let plans: Vec<Plan> = (0..paused as usize)
        .map(|i| {
            let format = if i % 2 == 0 { "form-xml" } else { "form-stub" };
            Plan {
                name: format!("{format}-{i}"),
                kind: if i % 2 == 0 { "form" } else { "form-stub" },
                format,
                lane: Some(i),
                paused: true,
            }
        })
        .collect();
    let mut bench = Bench::new(options, scenario, &plans, forms).await?;
    let (submit_ceiling, receiver_ceiling) = bench.ceilings(&plans).await?;
    let config = bench.write_config(&plans, 0)?;
    let gateway = bench.start_gateway(&config).await?;

    let all = 0..forms;
    let recording = bench.profile_start(&gateway, profile::Phase::Fill).await;
    let (driven, cpu_fill) = bench
        .ingest(&gateway, all.clone(), "filling: store-writer thread busy")
        .await;
    bench.profile_finish(recording).await;
    let label = format_number(queued as f64);
    bench.accepted_figure(
        format!("filling: accepted forms/s ({paused} records each)"),
        &driven,
        submit_ceiling,
        None,
    );
    bench.cpu_per_thousand_figure(
        "filling: gateway CPU per 1,000 forms",
        cpu_fill,
        forms as f64,
    );
    match gateway.metric("repeatd_queue_depth").await {
        Ok(depth) => {
            if depth as u64 != queued && driven.refused == 0 {
                bench.fail(format!("{depth} records queued; expected {queued}"));
            }
        }
        Err(error) => bench.fail(format!("{error:#}")),
    }
    bench.figure(
        Figure::new(
            scenario,
            format!("peak RSS while filling to {label} queued"),
            gateway.peak_rss_mib(),
            "MiB",
        )
        .target(targets::PEAK_RSS),
    );
    let Some(shutdown) = bench.stop(gateway).await else {
        bench.finish(report);
        return Ok(());
    };
    bench.figure(Figure::new(
        scenario,
        "SIGTERM to exit",
        shutdown.as_secs_f64(),
        "s",
    ));
    bench.disk_figures(&bench.path.join("data"), driven.ok, paused as f64);

    // The cold start over the full queue.
    let started = Instant::now();
    let gateway = bench.start_gateway(&config).await?;
    let serving = started.elapsed();
    bench.figure(
        Figure::new(
            scenario,
            format!("start to /healthz 200 with {label} queued"),
            serving.as_secs_f64(),
            "s",
        )
        .target(targets::RESTART),
    );
    bench.figure(
        Figure::new(scenario, "RSS once serving", gateway.rss_mib(), "MiB")
            .target(targets::PEAK_RSS),
    );
    match gateway.metric("repeatd_queue_depth").await {
        Ok(depth) if depth as u64 != queued && driven.refused == 0 => {
            bench.fail(format!(
                "after the restart {depth} records are queued; expected {queued}"
            ));
        }
        Ok(_) => {}
        Err(error) => bench.fail(format!("{error:#}")),
    }
    let resumed = Instant::now();
    let cpu_at_resume = gateway.cpu_seconds();
    let writer = gateway.writer_mark();
    for plan in &plans {
        gateway.repeater_action(&plan.name, "resume").await?;
    }
    let first = wait_for(STALL, || async {
        bench.tally.stats(all.clone()).first.ok_or(())
    })
    .await
    .ok();
    if first.is_none() {
        bench.fail(format!(
            "nothing delivered within {} s of resuming",
            STALL.as_secs()
        ));
    }
    if let Some(first) = first {
        let first_at = bench.tally.instant(first);
        bench.figure(Figure::new(
            scenario,
            "resume to first delivery",
            first_at.saturating_duration_since(resumed).as_secs_f64() * 1000.0,
            "ms",
        ));
        match options.drain_window {
            Some(window) => {
                let recording = bench.profile_start(&gateway, profile::Phase::Drain).await;
                tokio::time::sleep_until((first_at + window).into()).await;
                let cpu = gateway.cpu_seconds() - cpu_at_resume;
                bench.writer_busy_figure(&gateway, writer, "draining: store-writer thread busy");
                bench.profile_finish(recording).await;
                let count = bench
                    .tally
                    .count_until(bench.tally.nanos(first_at + window));
                bench.cpu_per_thousand_figure(
                    "gateway CPU per 1,000 payloads, draining after restart",
                    cpu,
                    count.max(1) as f64,
                );
                bench.figure(
                    Figure::new(
                        scenario,
                        format!(
                            "delivered payloads/s, first {} s after restart",
                            window.as_secs_f64()
                        ),
                        count as f64 / window.as_secs_f64(),
                        "payloads/s",
                    )
                    .ceiling(receiver_ceiling),
                );
            }
            None => {
                if bench.wait_delivered(&gateway, all.clone()).await
                    && let Some(last) = bench.tally.stats(all.clone()).last
                {
                    let seconds = bench.tally.seconds_since(resumed, last);
                    bench.figure(
                        Figure::new(
                            scenario,
                            "delivered payloads/s after restart",
                            queued as f64 / seconds,
                            "payloads/s",
                        )
                        .ceiling(receiver_ceiling),
                    );
                }
            }
        }
    }
    bench
        .conclude(gateway, report, "peak RSS after restart")
        .await;
    Ok(())
}

/// The built-in payload formats, called in this process through the same
/// plugin host the gateway uses.
fn plugin_cost(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    use repeatd::plugins::PluginLimits;
    use repeatd::plugins::{Payload, PluginHost};
    use repeatd::repeater::PayloadKind;
    let scenario = Scenario::Plugin;
    let compile_started = Instant::now();
    let host = PluginHost::new(PluginLimits::default())?;
    report.figures.push(Figure::new(
        scenario,
        "compiling the five built-in plugins (start-up)",
        compile_started.elapsed().as_secs_f64() * 1000.0,
        "ms",
    ));
    let app_event = br#"{"app_id": "7a1e6b5c0ad0400080004c6f61640001", "event": "saved"}"#;
    for (format, kind) in [
        ("form-xml", PayloadKind::Form),
        ("case-xml", PayloadKind::Case),
        ("case-json", PayloadKind::Case),
        ("form-stub", PayloadKind::FormStub),
        ("app-schema", PayloadKind::AppSchema),
    ] {
        let plugin = host
            .get(format)
            .ok_or_else(|| anyhow::anyhow!("the built-in plugin {format} is not loaded"))?;
        let mut events = Vec::new();
        for index in 0..16 {
            let source = if kind == PayloadKind::AppSchema {
                app_event.to_vec()
            } else {
                load_form(index)
            };
            events.extend(
                repeatd::sample::events(&source, kind, "demo")
                    .map_err(|e| anyhow::anyhow!("{format}: {e}"))?,
            );
        }
        let settings = if kind == PayloadKind::Form {
            repeatd::plugins::pairs([("include_app_id_param", "true")])
        } else {
            Vec::new()
        };
        let call = |i: usize| -> anyhow::Result<usize> {
            match host.build_payload(&plugin, kind, &events[i % events.len()], None, &settings) {
                Ok(Payload::Send(request)) if !request.body.is_empty() => Ok(request.body.len()),
                Ok(Payload::Send(_)) => anyhow::bail!("{format} built an empty body"),
                Ok(Payload::Nothing) => {
                    anyhow::bail!("{format} had nothing to send for a generated event")
                }
                Err(error) => anyhow::bail!("{format}: {error}"),
            }
        };
        let mut failed = None;
        for i in 0..(options.plugin_calls / 10).max(10) as usize {
            if let Err(error) = call(i) {
                failed = Some(error);
                break;
            }
        }
        if let Some(error) = failed {
            report.failures.push(format!("plugin: {error:#}"));
            continue;
        }
        let started = Instant::now();
        let mut bytes = 0;
        for i in 0..options.plugin_calls as usize {
            match call(i) {
                Ok(n) => bytes += n,
                Err(error) => {
                    report.failures.push(format!("plugin: {error:#}"));
                    break;
                }
            }
        }
        let micros = started.elapsed().as_secs_f64() * 1e6 / options.plugin_calls as f64;
        std::hint::black_box(bytes);
        report.figures.push(
            Figure::new(
                scenario,
                format!("{format}: time per payload"),
                micros,
                "µs",
            )
            .target(targets::PLUGIN_CALL),
        );
    }
    Ok(())
}

/// Runs every scenario of `options` `options.runs` times.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the load tool's runtime")?;
    anyhow::ensure!(
        options.gateway.exists() || options.scenarios == [Scenario::Plugin],
        "the gateway binary {} does not exist (build it: cargo build --release -p repeatd)",
        options.gateway.display()
    );
    let mut report = Report::default();
    let on_postgres = options.store != StoreChoice::Redb;
    let needs_postgres = options.scenarios.iter().any(|scenario| {
        *scenario == Scenario::Scaleout || (on_postgres && scenario.follows_store_option())
    });
    // Dropped at the end of the run, on error too: a cluster of our own
    // stops and goes.
    let postgres = if needs_postgres {
        Some(PgServer::start_or_use(options.pg_url.as_deref())?)
    } else {
        None
    };
    if postgres.as_ref().is_some_and(|pg| !pg.counts_server_cpu()) {
        report.notes.push(
            "--pg-url: the PostgreSQL server's CPU is not counted (its processes are not this tool's to see); CPU per 1,000 on PostgreSQL is the gateway's alone".into(),
        );
    }
    if on_postgres {
        let redb_only: Vec<&str> = options
            .scenarios
            .iter()
            .filter(|s| {
                !s.follows_store_option() && !matches!(s, Scenario::Scaleout | Scenario::Plugin)
            })
            .map(|s| s.name())
            .collect();
        if !redb_only.is_empty() {
            report.notes.push(format!(
                "--store applies to steady and fanout; {} ran on redb",
                redb_only.join(", ")
            ));
        }
    }
    for run in 1..=options.runs {
        for &scenario in &options.scenarios {
            let backends = if scenario.follows_store_option() {
                options.store.backends()
            } else if scenario == Scenario::Scaleout {
                vec![StoreBackend::Postgres]
            } else {
                vec![StoreBackend::Redb]
            };
            for backend in backends {
                let label = scenario.label(backend);
                eprintln!("repeatd-load: {label} run {run} of {}", options.runs);
                let before = report.figures.len();
                let server = match backend {
                    StoreBackend::Redb => None,
                    StoreBackend::Postgres => postgres.as_ref(),
                };
                let result = match (scenario, server) {
                    (Scenario::Steady, server) => {
                        runtime.block_on(flow(options, scenario, 3, server, &mut report))
                    }
                    (Scenario::Fanout, server) => {
                        runtime.block_on(flow(options, scenario, 10, server, &mut report))
                    }
                    (Scenario::Scaleout, Some(server)) => {
                        runtime.block_on(scaleout(options, server, &mut report))
                    }
                    (Scenario::Scaleout, None) => Err(anyhow::anyhow!("scaleout needs PostgreSQL")),
                    (Scenario::Mixed, _) => runtime.block_on(mixed::mixed(options, &mut report)),
                    (Scenario::DeadRemote, _) => {
                        runtime.block_on(dead_remote(options, &mut report))
                    }
                    (Scenario::Restart, _) => runtime.block_on(restart(options, &mut report)),
                    (Scenario::Plugin, _) => plugin_cost(options, &mut report),
                };
                if let Err(error) = result {
                    report.failures.push(format!("{label}: {error:#}"));
                }
                for figure in &report.figures[before..] {
                    eprintln!(
                        "  {:<58} {:>16}{}",
                        figure.name,
                        format_value(figure.value, figure.unit),
                        figure
                            .ratio()
                            .map_or(String::new(), |r| format!("  (ratio {r:.2})"))
                    );
                }
            }
        }
    }
    for profile in report.profiles.clone() {
        match profile.report() {
            Ok(text) => {
                eprintln!("{text}");
                report.profile_reports.push(text);
            }
            Err(error) => report
                .failures
                .push(format!("--profile {}: {error:#}", profile.label)),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_found_again_in_payload_bodies() {
        let form = load_form(0x1234_5678);
        assert_eq!(form_index_in(&form), Some(0x1234_5678));
        let json = format!(
            "{{\"case_id\":\"{}\",\"indices\":{{\"parent\":{{\"case_id\":\"{}\"}}}}}}",
            load_case_id(77, 2),
            load_case_id(77, 0)
        );
        assert_eq!(case_key_in(json.as_bytes()), Some((77, 2)));
        assert_eq!(form_index_in(b"<x/>"), None);
        assert_eq!(
            case_key_in(b"ca5e0009-0000-4000-8000-000000000001"),
            None,
            "case numbers run 0 to 2"
        );
    }

    #[test]
    fn forms_carry_one_to_three_cases() {
        for index in 0..300 {
            let form = String::from_utf8(load_form(index)).unwrap();
            let blocks = form.matches("<n0:case ").count() as u64;
            assert_eq!(blocks, cases_in(index));
            assert!((1..=3).contains(&blocks));
        }
        assert!((0..300).any(|i| cases_in(i) == 1) && (0..300).any(|i| cases_in(i) == 3));
    }

    #[test]
    fn postgres_figures_are_set_beside_redb_ones() {
        let figure = |scenario, name: &str, value| Figure {
            scenario,
            name: name.to_owned(),
            value,
            unit: "CPU s",
            ceiling: None,
            target: None,
        };
        let report = Report {
            figures: vec![
                figure("steady", "gateway CPU per 1,000 forms, ingest only", 0.1),
                figure(
                    "steady on postgres",
                    "gateway CPU per 1,000 forms, ingest only",
                    0.15,
                ),
                figure(
                    "steady on postgres",
                    "gateway + database CPU per 1,000 forms, ingest only",
                    0.3,
                ),
                figure("steady on postgres", "WAL per form, ingest only", 4.0),
            ],
            ..Report::default()
        };
        let table = report.comparison_markdown();
        assert!(
            table.contains(
                "| steady | gateway + database CPU per 1,000 forms, ingest only | 0.100 CPU s |  | 0.300 CPU s |  | 3.00 |"
            ),
            "{table}"
        );
        assert_eq!(table.lines().count(), 3, "header, rule, one row:\n{table}");
        assert!(Report::default().comparison_markdown().is_empty());
    }

    #[test]
    fn numbers_are_formatted_for_the_table() {
        assert_eq!(format_number(12_345.6), "12,346");
        assert_eq!(format_number(1_000_000.0), "1,000,000");
        assert_eq!(format_number(4.56789), "4.57");
        assert_eq!(format_number(0.01234), "0.012");
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), 2);
        assert_eq!(percentile(&[1, 2, 3, 4], 99.0), 4);
    }
}
