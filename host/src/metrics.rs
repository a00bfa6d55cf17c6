//! Counters and histograms for `GET /metrics`, rendered as Prometheus text
//! (format 0.0.4). Record counts by state come from the store (which keeps
//! them per transition); what happens in memory (submissions, attempts, send
//! durations, time from registration to success, plugin calls, e-mails) is
//! counted here. Every series an operator graphs exists from the moment its
//! subject does: the state gauges and per-repeater families of every
//! repeater the catalog holds, the plugin families of every loaded plugin,
//! all at 0 before their first event.
//!
//! Why hand-written rather than the `prometheus-client` crate: that crate
//! writes OpenMetrics only (a counter's family is named without `_total`,
//! the text ends with `# EOF`), which `promtool check metrics` reads as
//! untyped series without help and refuses; and half of what is shown is
//! read from the store and the catalog at scrape time, not kept in a
//! registry. The text is small and checked by Prometheus' own parsers
//! (`promtool` and `prometheus_client`'s, in `tests/tests/metrics.rs`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the send-duration histogram, in seconds: well past the
/// 30 s default timeout, up to the 5 minutes a slow connection may be given.
const SEND_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Upper bounds of the registration-to-success histogram, in seconds: from
/// a send at once to the days a record may wait under back-off (`max_wait`
/// defaults to 7 days).
const REGISTRATION_BUCKETS: &[f64] = &[
    0.1,
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    1_800.0,
    3_600.0,
    10_800.0,
    21_600.0,
    43_200.0,
    86_400.0,
    172_800.0,
    604_800.0,
    2_592_000.0,
];

/// Upper bounds of the plugin-call histogram, in seconds: around the 100 ms
/// default CPU limit, and past it for calls that wait on the host.
const PLUGIN_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The outcomes an attempt that reached the network is counted under.
const ATTEMPT_OUTCOMES: [&str; 3] = ["success", "retryable", "rejected"];

/// One histogram series: cumulative counts per upper bound.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<u64>,
    count: u64,
    sum_seconds: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: vec![0; bounds.len()],
            count: 0,
            sum_seconds: 0.0,
        }
    }

    fn observe(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (bucket, bound) in self.buckets.iter_mut().zip(self.bounds) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }

    /// The series' lines; `labels` is `a="x",b="y"` or empty.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |labels: &str| {
            if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum_seconds);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

fn family_head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn repeater_labels((domain, repeater): &(String, String)) -> String {
    format!(
        "domain=\"{}\",repeater=\"{}\"",
        escape_label(domain),
        escape_label(repeater)
    )
}

/// A repeater as metrics name it: (domain, repeater).
pub type RepeaterKey = (String, String);

/// What one scrape reads from outside this module.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Every repeater the catalog holds now.
    pub repeaters: Vec<RepeaterKey>,
    /// (domain, repeater, state, count): every state of every repeater.
    pub records: Vec<(String, String, &'static str, u64)>,
    /// Records pending or failed.
    pub queued: u64,
    /// How long the longest-due queued record has been due.
    pub oldest_due_age: Option<Duration>,
    /// Every plugin loaded now.
    pub plugins: Vec<String>,
    /// What the store keeps and what retention has deleted.
    pub lifecycle: Lifecycle,
}

/// The data lifecycle as one scrape sees it: what each domain keeps (the
/// figures of `GET /api/v1/domains/{domain}/stats`), what retention has
/// deleted and the oldest it keeps, and whether the store can write.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// Every domain the catalog holds, with its figures.
    pub domains: Vec<(String, crate::store::DomainStats)>,
    /// Records deleted by retention since start-up, per final state.
    pub records_deleted: Vec<(&'static str, u64)>,
    pub forms_deleted: u64,
    /// Per final state and for forms ("form"): how old the oldest kept is.
    pub oldest_kept: Vec<(&'static str, Option<Duration>)>,
    pub store_file_bytes: Option<u64>,
    pub store_writable: bool,
}

impl Lifecycle {
    fn render(&self, out: &mut String) {
        let per_domain =
            |out: &mut String,
             name: &str,
             help: &str,
             value: &dyn Fn(&crate::store::DomainStats) -> u64| {
                family_head(out, name, "gauge", help);
                for (domain, stats) in &self.domains {
                    let _ = writeln!(
                        out,
                        "{name}{{domain=\"{}\"}} {}",
                        escape_label(domain),
                        value(stats)
                    );
                }
            };
        family_head(
            out,
            "repeatd_domain_records",
            "gauge",
            "Repeat records kept, per domain and state.",
        );
        for (domain, stats) in &self.domains {
            for (state, count) in &stats.records {
                let _ = writeln!(
                    out,
                    "repeatd_domain_records{{domain=\"{}\",state=\"{}\"}} {count}",
                    escape_label(domain),
                    state.as_str()
                );
            }
        }
        per_domain(
            out,
            "repeatd_domain_forms",
            "Forms kept, per domain.",
            &|stats| stats.forms,
        );
        per_domain(
            out,
            "repeatd_domain_cases",
            "Cases kept, per domain.",
            &|stats| stats.cases,
        );
        per_domain(
            out,
            "repeatd_domain_form_xml_bytes",
            "Bytes of the submitted XML of the forms kept, per domain.",
            &|stats| stats.form_xml_bytes,
        );
        family_head(
            out,
            "repeatd_store_file_bytes",
            "gauge",
            "Size of the store's file.",
        );
        let _ = writeln!(
            out,
            "repeatd_store_file_bytes {}",
            self.store_file_bytes.unwrap_or(0)
        );
        family_head(
            out,
            "repeatd_store_writable",
            "gauge",
            "1 while the store can write; 0 while submissions get 503 and delivery waits.",
        );
        let _ = writeln!(
            out,
            "repeatd_store_writable {}",
            u8::from(self.store_writable)
        );
        family_head(
            out,
            "repeatd_retention_records_deleted_total",
            "counter",
            "Records in a final state deleted by retention, per state.",
        );
        for (state, count) in &self.records_deleted {
            let _ = writeln!(
                out,
                "repeatd_retention_records_deleted_total{{state=\"{state}\"}} {count}"
            );
        }
        family_head(
            out,
            "repeatd_retention_forms_deleted_total",
            "counter",
            "Forms (with their XML) deleted by retention.",
        );
        let _ = writeln!(
            out,
            "repeatd_retention_forms_deleted_total {}",
            self.forms_deleted
        );
        family_head(
            out,
            "repeatd_retention_oldest_kept_seconds",
            "gauge",
            "Age of the oldest record kept per final state (since it entered it), and of the oldest form; 0 when none.",
        );
        for (kept, age) in &self.oldest_kept {
            let _ = writeln!(
                out,
                "repeatd_retention_oldest_kept_seconds{{kept=\"{kept}\"}} {}",
                age.map_or(0.0, |age| age.as_secs_f64())
            );
        }
    }
}

/// Per repeater: what its sends did.
#[derive(Debug, Clone)]
struct RepeaterSeries {
    attempts: BTreeMap<&'static str, u64>,
    send_duration: Histogram,
    registration_to_success: Histogram,
}

impl Default for RepeaterSeries {
    fn default() -> Self {
        RepeaterSeries {
            attempts: ATTEMPT_OUTCOMES
                .iter()
                .map(|outcome| (*outcome, 0))
                .collect(),
            send_duration: Histogram::new(SEND_BUCKETS),
            registration_to_success: Histogram::new(REGISTRATION_BUCKETS),
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub forms_accepted: AtomicU64,
    pub forms_duplicate: AtomicU64,
    pub forms_refused: AtomicU64,
    repeaters: Mutex<BTreeMap<RepeaterKey, RepeaterSeries>>,
}

impl Metrics {
    /// One attempt that reached (or tried to reach) the remote.
    pub fn observe_send(
        &self,
        domain: &str,
        repeater: &str,
        outcome: &'static str,
        took: Duration,
    ) {
        let mut repeaters = self.repeaters.lock().expect("metrics lock");
        let series = repeaters
            .entry((domain.to_owned(), repeater.to_owned()))
            .or_default();
        *series.attempts.entry(outcome).or_default() += 1;
        series.send_duration.observe(took);
    }

    /// A record that succeeded `waited` after it was registered.
    pub fn observe_success(&self, domain: &str, repeater: &str, waited: Duration) {
        self.repeaters
            .lock()
            .expect("metrics lock")
            .entry((domain.to_owned(), repeater.to_owned()))
            .or_default()
            .registration_to_success
            .observe(waited);
    }

    /// Per domain, the attempts so far that succeeded and those that failed
    /// (retryable or rejected), for the console's Overview.
    pub fn attempt_totals(&self) -> BTreeMap<String, (u64, u64)> {
        let repeaters = self.repeaters.lock().expect("metrics lock");
        let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for ((domain, _), series) in repeaters.iter() {
            let entry = totals.entry(domain.clone()).or_default();
            for (outcome, count) in &series.attempts {
                match *outcome {
                    "success" => entry.0 += count,
                    "retryable" | "rejected" => entry.1 += count,
                    _ => {}
                }
            }
        }
        totals
    }

    /// Renders everything; `plugins` and `emails` are the plugin host's and
    /// the notifier's counts.
    pub fn render(&self, scrape: &Scrape, plugins: &PluginCalls, emails: &EmailCounts) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            family_head(out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        };
        counter(
            &mut out,
            "repeatd_forms_accepted_total",
            "Forms accepted and stored.",
            self.forms_accepted.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "repeatd_forms_duplicate_total",
            "Forms whose id was already stored.",
            self.forms_duplicate.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "repeatd_forms_refused_total",
            "Submissions refused as bad input.",
            self.forms_refused.load(Ordering::Relaxed),
        );

        family_head(
            &mut out,
            "repeatd_records",
            "gauge",
            "Repeat records by state.",
        );
        for (domain, repeater, state, count) in &scrape.records {
            let _ = writeln!(
                out,
                "repeatd_records{{domain=\"{}\",repeater=\"{}\",state=\"{state}\"}} {count}",
                escape_label(domain),
                escape_label(repeater)
            );
        }
        family_head(
            &mut out,
            "repeatd_queue_depth",
            "gauge",
            "Records pending or failed, waiting to be sent.",
        );
        let _ = writeln!(out, "repeatd_queue_depth {}", scrape.queued);
        family_head(
            &mut out,
            "repeatd_oldest_queued_seconds",
            "gauge",
            "How long the longest-due queued record has been due.",
        );
        let _ = writeln!(
            out,
            "repeatd_oldest_queued_seconds {}",
            scrape.oldest_due_age.map_or(0.0, |age| age.as_secs_f64())
        );

        let mut repeaters = self.repeaters.lock().expect("metrics lock").clone();
        for key in &scrape.repeaters {
            repeaters.entry(key.clone()).or_default();
        }
        family_head(
            &mut out,
            "repeatd_attempts_total",
            "counter",
            "Delivery attempts by outcome.",
        );
        for (key, series) in &repeaters {
            for (outcome, count) in &series.attempts {
                let _ = writeln!(
                    out,
                    "repeatd_attempts_total{{{},outcome=\"{outcome}\"}} {count}",
                    repeater_labels(key)
                );
            }
        }
        family_head(
            &mut out,
            "repeatd_send_duration_seconds",
            "histogram",
            "Time from sending a request to its answer, per repeater.",
        );
        for (key, series) in &repeaters {
            series.send_duration.render(
                &mut out,
                "repeatd_send_duration_seconds",
                &repeater_labels(key),
            );
        }
        family_head(
            &mut out,
            "repeatd_registration_to_success_seconds",
            "histogram",
            "Time from a record's registration to its successful delivery, per repeater.",
        );
        for (key, series) in &repeaters {
            series.registration_to_success.render(
                &mut out,
                "repeatd_registration_to_success_seconds",
                &repeater_labels(key),
            );
        }

        plugins.render(&mut out, &scrape.plugins);
        emails.render(&mut out);
        scrape.lifecycle.render(&mut out);
        out
    }
}

// ---- plugin calls -------------------------------------------------------------------

/// How a plugin call ended, for its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// The plugin answered (with a result or its own error).
    Answered,
    /// It ran past its CPU-time limit and was stopped.
    TimedOut,
    /// Any other trap: a bug in the plugin, or its memory limit.
    Trapped,
}

#[derive(Debug, Clone)]
struct PluginSeries {
    duration: Histogram,
    traps: u64,
    timeouts: u64,
    reloads: u64,
}

impl Default for PluginSeries {
    fn default() -> Self {
        PluginSeries {
            duration: Histogram::new(PLUGIN_BUCKETS),
            traps: 0,
            timeouts: 0,
            reloads: 0,
        }
    }
}

/// A per-plugin counter family: name, help, and how to read it.
type PluginCounter = (&'static str, &'static str, fn(&PluginSeries) -> u64);

/// What the plugin host counts of its calls and loads, per plugin name.
#[derive(Debug, Default)]
pub struct PluginCalls {
    by_plugin: Mutex<BTreeMap<String, PluginSeries>>,
}

impl PluginCalls {
    /// One call of `plugin` that took `took` and ended as `end`.
    pub fn observe_call(&self, plugin: &str, took: Duration, end: CallEnd) {
        let mut by_plugin = self.by_plugin.lock().expect("metrics lock");
        let series = by_plugin.entry(plugin.to_owned()).or_default();
        series.duration.observe(took);
        match end {
            CallEnd::Answered => {}
            CallEnd::TimedOut => series.timeouts += 1,
            CallEnd::Trapped => series.traps += 1,
        }
    }

    /// A new version of `plugin` was loaded from `plugin_dir`.
    pub fn observe_reload(&self, plugin: &str) {
        self.by_plugin
            .lock()
            .expect("metrics lock")
            .entry(plugin.to_owned())
            .or_default()
            .reloads += 1;
    }

    fn render(&self, out: &mut String, loaded: &[String]) {
        let mut by_plugin = self.by_plugin.lock().expect("metrics lock").clone();
        for name in loaded {
            by_plugin.entry(name.clone()).or_default();
        }
        let label = |name: &str| format!("plugin=\"{}\"", escape_label(name));
        family_head(
            out,
            "repeatd_plugin_call_duration_seconds",
            "histogram",
            "Time a plugin call took, per plugin.",
        );
        for (name, series) in &by_plugin {
            series
                .duration
                .render(out, "repeatd_plugin_call_duration_seconds", &label(name));
        }
        let counters: [PluginCounter; 3] = [
            (
                "repeatd_plugin_traps_total",
                "Plugin calls stopped by a trap (a plugin bug or its memory limit), timeouts aside.",
                |series| series.traps,
            ),
            (
                "repeatd_plugin_timeouts_total",
                "Plugin calls stopped at their CPU-time limit.",
                |series| series.timeouts,
            ),
            (
                "repeatd_plugin_reloads_total",
                "New versions of a plugin loaded from plugin_dir.",
                |series| series.reloads,
            ),
        ];
        for (name, help, value) in counters {
            family_head(out, name, "counter", help);
            for (plugin, series) in &by_plugin {
                let _ = writeln!(out, "{name}{{{}}} {}", label(plugin), value(series));
            }
        }
    }
}

// ---- e-mails --------------------------------------------------------------------------

/// Error e-mails, counted per recipient by the notifier.
#[derive(Debug, Default)]
pub struct EmailCounts {
    /// Accepted by the SMTP server.
    pub sent: AtomicU64,
    /// Refused by the SMTP server, or not handed over (unreachable, broke off).
    pub failed: AtomicU64,
}

impl EmailCounts {
    fn render(&self, out: &mut String) {
        family_head(
            out,
            "repeatd_emails_sent_total",
            "counter",
            "Error e-mails the SMTP server accepted, one per recipient.",
        );
        let _ = writeln!(
            out,
            "repeatd_emails_sent_total {}",
            self.sent.load(Ordering::Relaxed)
        );
        family_head(
            out,
            "repeatd_emails_failed_total",
            "counter",
            "Error e-mails the SMTP server refused or could not be handed, one per recipient and try.",
        );
        let _ = writeln!(
            out,
            "repeatd_emails_failed_total {}",
            self.failed.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo_scrape() -> Scrape {
        Scrape {
            repeaters: vec![
                ("demo".into(), "cases".into()),
                ("demo".into(), "idle".into()),
            ],
            records: vec![("demo".into(), "cases".into(), "succeeded", 1)],
            plugins: vec!["form-xml".into()],
            ..Scrape::default()
        }
    }

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.forms_accepted.fetch_add(3, Ordering::Relaxed);
        metrics.observe_send("demo", "cases", "success", Duration::from_millis(3));
        metrics.observe_success("demo", "cases", Duration::from_secs(7_200));
        let text = metrics.render(
            &demo_scrape(),
            &PluginCalls::default(),
            &EmailCounts::default(),
        );
        assert!(text.contains("repeatd_forms_accepted_total 3\n"));
        assert!(text.contains(
            "repeatd_records{domain=\"demo\",repeater=\"cases\",state=\"succeeded\"} 1\n"
        ));
        assert!(text.contains(
            "repeatd_attempts_total{domain=\"demo\",repeater=\"cases\",outcome=\"success\"} 1\n"
        ));
        assert!(text.contains(
            "repeatd_send_duration_seconds_bucket{domain=\"demo\",repeater=\"cases\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains(
            "repeatd_send_duration_seconds_bucket{domain=\"demo\",repeater=\"cases\",le=\"300\"} 1\n"
        ));
        assert!(text.contains(
            "repeatd_registration_to_success_seconds_bucket{domain=\"demo\",repeater=\"cases\",le=\"3600\"} 0\n"
        ));
        assert!(text.contains(
            "repeatd_registration_to_success_seconds_bucket{domain=\"demo\",repeater=\"cases\",le=\"10800\"} 1\n"
        ));
    }

    #[test]
    fn every_series_starts_at_zero() {
        let text = Metrics::default().render(
            &demo_scrape(),
            &PluginCalls::default(),
            &EmailCounts::default(),
        );
        for series in [
            "repeatd_attempts_total{domain=\"demo\",repeater=\"idle\",outcome=\"retryable\"} 0\n",
            "repeatd_send_duration_seconds_count{domain=\"demo\",repeater=\"idle\"} 0\n",
            "repeatd_registration_to_success_seconds_count{domain=\"demo\",repeater=\"idle\"} 0\n",
            "repeatd_plugin_call_duration_seconds_count{plugin=\"form-xml\"} 0\n",
            "repeatd_plugin_traps_total{plugin=\"form-xml\"} 0\n",
            "repeatd_plugin_timeouts_total{plugin=\"form-xml\"} 0\n",
            "repeatd_plugin_reloads_total{plugin=\"form-xml\"} 0\n",
            "repeatd_emails_sent_total 0\n",
            "repeatd_emails_failed_total 0\n",
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
    }

    #[test]
    fn plugin_calls_count_traps_and_timeouts_apart() {
        let calls = PluginCalls::default();
        calls.observe_call("slow", Duration::from_millis(100), CallEnd::TimedOut);
        calls.observe_call("slow", Duration::from_millis(1), CallEnd::Trapped);
        calls.observe_call("slow", Duration::from_millis(1), CallEnd::Answered);
        calls.observe_reload("slow");
        let mut out = String::new();
        calls.render(&mut out, &[]);
        for series in [
            "repeatd_plugin_call_duration_seconds_count{plugin=\"slow\"} 3\n",
            "repeatd_plugin_traps_total{plugin=\"slow\"} 1\n",
            "repeatd_plugin_timeouts_total{plugin=\"slow\"} 1\n",
            "repeatd_plugin_reloads_total{plugin=\"slow\"} 1\n",
        ] {
            assert!(out.contains(series), "{series} in {out}");
        }
    }
}
