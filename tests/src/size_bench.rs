//! The store-size benchmark behind `repeatd-size` (issue 16): does the redb
//! file stop growing once retention removes as much as arrives?
//!
//! The built binary runs as its own process (through [`Launch`], as the load
//! tool runs it) with a short `[retention]` (`succeeded` and `forms` both
//! `--retention`), one form repeater to a receiver in this process that
//! answers 200, and forms submitted at a steady `--rate` for `--seconds`.
//! Every `--sample` seconds it notes the file size of `repeatd.redb`, the
//! records and forms kept (the stats endpoint), what retention has deleted
//! and the gateway's CPU time. The forms carry no case block: cases are kept
//! for ever (SPEC section 13), so a project that opens new cases grows by
//! its cases, whatever retention does; this measures everything else.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::{Answer, Launch, Receiver, TempDir, repeater};

/// What a run does.
#[derive(Debug, Clone)]
pub struct SizeOptions {
    /// Forms submitted per second.
    pub rate: u64,
    /// How long forms are submitted.
    pub seconds: u64,
    /// `[retention] succeeded` and `forms`, in seconds.
    pub retention: u64,
    /// Seconds between two samples.
    pub sample: u64,
    /// The gateway binary to start.
    pub gateway: PathBuf,
}

impl Default for SizeOptions {
    fn default() -> Self {
        SizeOptions {
            rate: 100,
            seconds: 300,
            retention: 30,
            sample: 15,
            gateway: crate::repeatd_beside_this_program(),
        }
    }
}

impl SizeOptions {
    pub const USAGE: &'static str = "usage: repeatd-size [--rate FORMS_PER_S] [--seconds N] [--retention SECONDS] [--sample SECONDS] [--gateway PATH]\n\
        defaults: --rate 100 --seconds 300 --retention 30 --sample 15 --gateway (repeatd next to this program)";

    /// Reads the command line (without the program name); `true` asks for help.
    pub fn parse_args(
        args: impl IntoIterator<Item = String>,
    ) -> Result<(SizeOptions, bool), String> {
        let mut options = SizeOptions::default();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Ok((options, true));
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            if flag == "--gateway" {
                options.gateway = PathBuf::from(value);
                continue;
            }
            let number: u64 = value
                .parse()
                .map_err(|_| format!("{flag}: expected a whole number, found \"{value}\""))?;
            if number == 0 {
                return Err(format!("{flag}: must be at least 1"));
            }
            match flag.as_str() {
                "--rate" => options.rate = number,
                "--seconds" => options.seconds = number,
                "--retention" => options.retention = number,
                "--sample" => options.sample = number,
                other => return Err(format!("unknown option {other}\n{}", SizeOptions::USAGE)),
            }
        }
        Ok((options, false))
    }
}

/// One sample of a run.
#[derive(Debug, Clone)]
pub struct SizeSample {
    pub at: Duration,
    pub forms_accepted: u64,
    pub file_bytes: u64,
    pub records_kept: u64,
    pub forms_kept: u64,
    pub records_deleted: u64,
    pub cpu: Duration,
    pub load_average: String,
}

/// A form of about 2 KB with no case block.
fn survey_form(index: u64) -> Vec<u8> {
    let answers: String = (0..24)
        .map(|q| {
            format!(
                "<q{q}>answer {q} of survey {index}: {}</q{q}>",
                "abcdefghij".repeat(4)
            )
        })
        .collect();
    format!(
        "<?xml version='1.0' ?>\n<data xmlns=\"http://openrosa.org/formdesigner/survey\" name=\"Survey\">{answers}\
         <n1:meta xmlns:n1=\"http://openrosa.org/jr/xforms\"><n1:userID>u1</n1:userID><n1:username>danny</n1:username>\
         <n1:instanceID>5e5e0000-0000-4000-8000-{index:012x}</n1:instanceID></n1:meta></data>"
    )
    .into_bytes()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// Runs the benchmark; the samples in order.
pub async fn run(options: &SizeOptions) -> anyhow::Result<Vec<SizeSample>> {
    let dir = TempDir::new("size-bench");
    let receiver = Receiver::start().await;
    receiver.plan("/in", vec![Answer::Status(200)]);
    let config = format!(
        "[retention]\nsucceeded = \"{r}s\"\nforms = \"{r}s\"\n\n\
         [[domains]]\nname = \"demo\"\n\n[[submitters]]\ndomain = \"demo\"\nusername = \"danny\"\npassword = \"pw\"\n\n\
         [[connections]]\ndomain = \"demo\"\nname = \"remote\"\nurl = \"{url}\"\nauth = {{ type = \"none\" }}\n\n{repeater}",
        r = options.retention,
        url = receiver.url("/in"),
        repeater = repeater("forms", "form", "remote", "form-xml", ""),
    );
    anyhow::ensure!(
        options.gateway.exists(),
        "{} is missing: build it first (cargo build --release -p repeatd), or name it with --gateway",
        options.gateway.display()
    );
    let launch = Launch::in_dir(&dir, &config).binary(options.gateway.clone());
    let daemon = Arc::new(launch.start().await.context("starting the gateway")?);
    let file = dir.path().join("data").join("repeatd.redb");
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));

    let submitting = {
        let daemon = daemon.clone();
        let accepted = accepted.clone();
        let refused = refused.clone();
        let total = options.rate * options.seconds;
        let every = Duration::from_secs(1) / options.rate as u32;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let in_flight = Arc::new(tokio::sync::Semaphore::new(16));
            for index in 0..total {
                tick.tick().await;
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let daemon = daemon.clone();
                let accepted = accepted.clone();
                let refused = refused.clone();
                tokio::spawn(async move {
                    let (status, _) = daemon.submit("demo", &survey_form(index), None).await;
                    if status == 201 {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(permit);
                });
            }
            let _ = in_flight.acquire_many(16).await;
        })
    };

    let started = Instant::now();
    let mut samples = Vec::new();
    let end = Duration::from_secs(options.seconds);
    loop {
        let at = started.elapsed();
        let (status, stats) = daemon.get("/api/v1/domains/demo/stats").await;
        anyhow::ensure!(status == 200, "stats answered {status}: {stats}");
        let (_, metrics) = daemon
            .api_text_as(crate::ADMIN_TOKEN, "GET", "/metrics", None)
            .await;
        let records_deleted = metrics
            .lines()
            .filter(|line| line.starts_with("repeatd_retention_records_deleted_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
        let records_kept = stats["records"]
            .as_object()
            .map(|states| states.values().filter_map(|n| n.as_u64()).sum())
            .unwrap_or(0);
        samples.push(SizeSample {
            at,
            forms_accepted: accepted.load(Ordering::Relaxed),
            file_bytes: std::fs::metadata(&file).map(|meta| meta.len()).unwrap_or(0),
            records_kept,
            forms_kept: stats["forms"].as_u64().unwrap_or(0),
            records_deleted,
            cpu: daemon.cpu_time(),
            load_average: load_average(),
        });
        if at >= end {
            break;
        }
        tokio::time::sleep(
            Duration::from_secs(options.sample)
                .min(end.saturating_sub(at))
                .max(Duration::from_millis(100)),
        )
        .await;
    }
    submitting.await.context("the submitting task")?;
    let n_refused = refused.load(Ordering::Relaxed);
    anyhow::ensure!(n_refused == 0, "{n_refused} submissions were refused");
    let daemon = Arc::into_inner(daemon).context("the daemon is still shared")?;
    daemon.stop().await.context("stopping the gateway")?;
    Ok(samples)
}

/// The samples as a Markdown table.
pub fn markdown(options: &SizeOptions, samples: &[SizeSample]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "`repeatd-size --rate {} --seconds {} --retention {} --sample {}`\n",
        options.rate, options.seconds, options.retention, options.sample
    );
    let _ = writeln!(
        out,
        "| t (s) | forms accepted | file (MiB) | records kept | forms kept | records deleted | CPU per 1,000 forms (s) | load |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut previous: Option<&SizeSample> = None;
    for sample in samples {
        let cpu_per_1000 = previous
            .filter(|before| sample.forms_accepted > before.forms_accepted)
            .map(|before| {
                let forms = (sample.forms_accepted - before.forms_accepted) as f64;
                format!(
                    "{:.2}",
                    (sample.cpu - before.cpu).as_secs_f64() * 1000.0 / forms
                )
            })
            .unwrap_or_else(|| "–".to_owned());
        let _ = writeln!(
            out,
            "| {:.0} | {} | {:.1} | {} | {} | {} | {} | {} |",
            sample.at.as_secs_f64(),
            sample.forms_accepted,
            sample.file_bytes as f64 / (1 << 20) as f64,
            sample.records_kept,
            sample.forms_kept,
            sample.records_deleted,
            cpu_per_1000,
            sample.load_average
        );
        previous = Some(sample);
    }
    out
}
