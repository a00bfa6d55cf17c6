//! `--profile PHASE`: what the gateway spends its CPU on while one phase of a
//! scenario runs, so that BENCHMARKS.md can say what limits each figure.
//!
//! The gateway runs as its own process, so the profile is `perf record` of
//! that process (`-p PID`) with the software `cpu-clock` event (hardware
//! counters are not available in every VM; the clock always is) at 499 Hz,
//! with DWARF call graphs (the release profile has line tables but no frame
//! pointers). When the phase ends, perf is stopped with SIGINT and `perf
//! report` is asked twice: sorted by inclusive cost (children) and by self
//! cost. The top functions of both are printed and written beside the perf
//! data in `--profile-dir`, where `perf report -i` can read them again.
//!
//! Recording costs CPU on the same machine: figures of a profiled run are
//! not the ones to report.

use std::process::Stdio;

use super::*;

/// Rows of each ordering printed.
const TOP: usize = 30;

/// A phase of a scenario that can be profiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// steady/fanout: submitting while delivering.
    Live,
    /// steady/fanout: ingest alone, every repeater paused.
    Ingest,
    /// steady/fanout: delivery alone, draining the backlog.
    Delivery,
    /// mixed: the run at the rate found.
    Mixed,
    /// restart: filling the queue.
    Fill,
    /// restart: the drain window after the restart.
    Drain,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Live,
        Phase::Ingest,
        Phase::Delivery,
        Phase::Mixed,
        Phase::Fill,
        Phase::Drain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Live => "live",
            Phase::Ingest => "ingest",
            Phase::Delivery => "delivery",
            Phase::Mixed => "mixed",
            Phase::Fill => "fill",
            Phase::Drain => "drain",
        }
    }

    pub fn parse(text: &str) -> Result<Phase, String> {
        Phase::ALL
            .into_iter()
            .find(|phase| phase.name() == text)
            .ok_or_else(|| {
                format!(
                    "--profile: unknown phase \"{text}\" (live, ingest, delivery, mixed, fill, drain)"
                )
            })
    }
}

/// `perf record` attached to the gateway.
pub(super) struct Recording {
    perf: tokio::process::Child,
    data: PathBuf,
    /// perf's own messages.
    log: PathBuf,
    /// `{scenario}-{phase}-{n}`: the files' stem and the report's title.
    label: String,
}

impl Recording {
    /// Starts recording `pid` if `options` asks for a profile of `phase`.
    pub(super) async fn start(
        options: &Options,
        scenario: Scenario,
        phase: Phase,
        pid: &str,
    ) -> anyhow::Result<Option<Recording>> {
        if options.profile != Some(phase) {
            return Ok(None);
        }
        let dir = &options.profile_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut n = 1;
        let label = loop {
            let label = format!("{}-{}-{n}", scenario.name(), phase.name());
            if !dir.join(format!("{label}.perf.data")).exists() {
                break label;
            }
            n += 1;
        };
        let data = dir.join(format!("{label}.perf.data"));
        let log = dir.join(format!("{label}.perf-record.log"));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let perf = tokio::process::Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "499"])
            .args(["--call-graph", "dwarf,16384", "-p", pid, "-o"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .context("starting `perf record` for --profile (perf is the `linux-perf` package)")?;
        // perf attaches to every thread of the process before it samples.
        tokio::time::sleep(Duration::from_millis(300)).await;
        eprintln!("repeatd-load: profiling {label} into {}", data.display());
        Ok(Some(Recording {
            perf,
            data,
            log,
            label,
        }))
    }

    /// Stops recording (SIGINT, perf writes its file and exits).
    pub(super) async fn stop(mut self) -> anyhow::Result<Profile> {
        let pid = self.perf.id().ok_or_else(|| {
            anyhow::anyhow!("perf record exited early; see {}", self.log.display())
        })?;
        let status = tokio::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -INT {pid} (perf record) failed");
        let exited = self.perf.wait().await.context("waiting for perf record")?;
        anyhow::ensure!(
            exited.success() || exited.code().is_none(),
            "perf record failed ({exited}); see {}",
            self.log.display()
        );
        Ok(Profile {
            data: self.data,
            label: self.label,
        })
    }
}

/// A finished recording, reported once every scenario has run (`perf
/// report` takes a while and must not run inside a measured phase).
#[derive(Debug, Clone)]
pub struct Profile {
    pub data: PathBuf,
    pub label: String,
}

impl Profile {
    /// The top functions by inclusive and by self cost, in markdown; also
    /// written to `{label}.txt` beside the data.
    pub fn report(&self) -> anyhow::Result<String> {
        let inclusive = perf_report(&self.data, true)?;
        let own = perf_report(&self.data, false)?;
        let mut text = format!(
            "### Profile: {} ({}; perf record -e cpu-clock -F 499 --call-graph dwarf)\n\n",
            self.label,
            samples_line(&own).unwrap_or("samples unknown")
        );
        for (title, report) in [("inclusive (children)", &inclusive), ("self", &own)] {
            let _ = writeln!(text, "Top {TOP} by {title} cost:\n\n```");
            for row in top_rows(report, TOP) {
                let _ = writeln!(text, "{row}");
            }
            let _ = writeln!(text, "```\n");
        }
        let path = self.data.with_file_name(format!("{}.txt", self.label));
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        Ok(text)
    }
}

/// `perf report` of `data` by symbol, without call chains: sorted by
/// inclusive cost (`children`) or by self cost.
fn perf_report(data: &Path, children: bool) -> anyhow::Result<String> {
    let output = std::process::Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--sort",
            "comm,dso,symbol",
            "-g",
            "none",
        ])
        .arg(if children {
            "--children"
        } else {
            "--no-children"
        })
        .args(["--percent-limit", "0.3", "-i"])
        .arg(data)
        .output()
        .context("running perf report")?;
    anyhow::ensure!(
        output.status.success(),
        "perf report -i {} failed: {}",
        data.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The header line saying how many samples there are.
fn samples_line(report: &str) -> Option<&str> {
    report
        .lines()
        .find(|line| line.starts_with("# Samples:"))
        .map(|line| line.trim_start_matches("# ").trim())
}

/// Frames every thread's stack starts with (thread start, closures' shims,
/// inlined copies of the frame below): inclusive cost says nothing of them.
const WRAPPER_FRAMES: [&str; 9] = [
    "(inlined)",
    "clone3",
    "start_thread",
    "thread_start",
    "__rust_begin_short_backtrace",
    "call_once",
    "catch_unwind",
    "do_call<",
    "{{vtable.shim}}",
];

/// The first `n` rows of a `perf report --stdio` listing, without its
/// header comments, blank lines and wrapper frames, with runs of spaces
/// shortened.
fn top_rows(report: &str, n: usize) -> Vec<String> {
    report
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter(|line| !WRAPPER_FRAMES.iter().any(|frame| line.contains(frame)))
        .take(n)
        .map(|line| {
            let row = line.split_whitespace().collect::<Vec<_>>().join(" ");
            row.trim_end_matches(" - -").to_owned()
        })
        .collect()
}

impl Bench<'_> {
    /// Starts a profile of `phase` if one was asked for; a profile that
    /// cannot be made is a failure of the run (it was asked for).
    pub(super) async fn profile_start(
        &mut self,
        gateway: &GatewayProcess,
        phase: Phase,
    ) -> Option<Recording> {
        match Recording::start(self.options, self.scenario, phase, &gateway.pid).await {
            Ok(recording) => recording,
            Err(error) => {
                self.fail(format!("--profile {}: {error:#}", phase.name()));
                None
            }
        }
    }

    /// Stops a profile started by [`Bench::profile_start`]; it is reported
    /// when every scenario has run.
    pub(super) async fn profile_finish(&mut self, recording: Option<Recording>) {
        let Some(recording) = recording else { return };
        match recording.stop().await {
            Ok(profile) => self.profiles.push(profile),
            Err(error) => self.fail(format!("--profile: {error:#}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_report_rows_are_read_without_the_header() {
        let report = "# To display the perf.data header info, please use --header\n#\n# Samples: 12K of event 'cpu-clock'\n# Event count (approx.): 24048096000\n#\n# Children      Self  Command  Shared Object  Symbol\n# ........  ........  .......  .............  ......\n#\n    74.18%     0.00%  store-writer  libc.so.6  [.] start_thread - -\n    74.18%     0.00%  store-writer  repeatd  [.] run (inlined) - -\n    41.20%     0.10%  store-writer  repeatd   [.] repeatd::store::writer::run - -\n    12.00%    12.00%  tokio-rt-worker  libc.so.6  [.] malloc\n\n#\n# (Tip: ...)\n";
        assert_eq!(
            samples_line(report),
            Some("Samples: 12K of event 'cpu-clock'")
        );
        assert_eq!(
            top_rows(report, 5),
            [
                "41.20% 0.10% store-writer repeatd [.] repeatd::store::writer::run",
                "12.00% 12.00% tokio-rt-worker libc.so.6 [.] malloc"
            ]
        );
        assert_eq!(top_rows(report, 1).len(), 1);
    }

    #[test]
    fn phases_are_named_on_the_command_line() {
        for phase in Phase::ALL {
            assert_eq!(Phase::parse(phase.name()), Ok(phase));
        }
        assert!(Phase::parse("warmup").unwrap_err().contains("live, ingest"));
    }
}
