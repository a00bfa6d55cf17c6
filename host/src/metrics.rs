//! Counters and histograms for `GET /metrics`, rendered as Prometheus text.
//! Record counts by state come from the store (which keeps them per
//! transition); what happens in memory (submissions, attempts, send latency)
//! is counted here.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the send-latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub forms_accepted: AtomicU64,
    pub forms_duplicate: AtomicU64,
    pub forms_refused: AtomicU64,
    /// (domain, repeater, outcome) → attempts.
    attempts: Mutex<BTreeMap<(String, String, &'static str), u64>>,
    latency: Mutex<Histogram>,
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn observe_send(
        &self,
        domain: &str,
        repeater: &str,
        outcome: &'static str,
        took: Duration,
    ) {
        *self
            .attempts
            .lock()
            .expect("metrics lock")
            .entry((domain.to_owned(), repeater.to_owned(), outcome))
            .or_default() += 1;
        let seconds = took.as_secs_f64();
        let mut histogram = self.latency.lock().expect("metrics lock");
        for (bucket, bound) in histogram.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum_seconds += seconds;
    }

    /// Per domain, the attempts so far that succeeded and those that failed
    /// (retryable or rejected), for the console's Overview.
    pub fn attempt_totals(&self) -> BTreeMap<String, (u64, u64)> {
        let attempts = self.attempts.lock().expect("metrics lock");
        let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for ((domain, _, outcome), count) in attempts.iter() {
            let entry = totals.entry(domain.clone()).or_default();
            match *outcome {
                "success" => entry.0 += count,
                "retryable" | "rejected" => entry.1 += count,
                _ => {}
            }
        }
        totals
    }

    /// Renders everything. `records` are (domain, repeater, state, count);
    /// `queued` and `oldest_due_age` describe the queue as a whole.
    pub fn render(
        &self,
        records: &[(String, String, &'static str, u64)],
        queued: u64,
        oldest_due_age: Option<Duration>,
    ) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
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

        let _ = writeln!(
            out,
            "# HELP repeatd_records Repeat records by state.\n# TYPE repeatd_records gauge"
        );
        for (domain, repeater, state, count) in records {
            let _ = writeln!(
                out,
                "repeatd_records{{domain=\"{}\",repeater=\"{}\",state=\"{state}\"}} {count}",
                escape_label(domain),
                escape_label(repeater)
            );
        }
        let _ = writeln!(
            out,
            "# HELP repeatd_queue_depth Records pending or failed, waiting to be sent.\n# TYPE repeatd_queue_depth gauge\nrepeatd_queue_depth {queued}"
        );
        let _ = writeln!(
            out,
            "# HELP repeatd_oldest_queued_seconds How long the longest-due queued record has been due.\n# TYPE repeatd_oldest_queued_seconds gauge\nrepeatd_oldest_queued_seconds {}",
            oldest_due_age.map_or(0.0, |age| age.as_secs_f64())
        );

        let _ = writeln!(
            out,
            "# HELP repeatd_attempts_total Delivery attempts by outcome.\n# TYPE repeatd_attempts_total counter"
        );
        for ((domain, repeater, outcome), count) in
            self.attempts.lock().expect("metrics lock").iter()
        {
            let _ = writeln!(
                out,
                "repeatd_attempts_total{{domain=\"{}\",repeater=\"{}\",outcome=\"{outcome}\"}} {count}",
                escape_label(domain),
                escape_label(repeater)
            );
        }
        let histogram = self.latency.lock().expect("metrics lock");
        let _ = writeln!(
            out,
            "# HELP repeatd_send_duration_seconds Time from sending a request to its answer.\n# TYPE repeatd_send_duration_seconds histogram"
        );
        for (bound, count) in LATENCY_BUCKETS.iter().zip(histogram.buckets) {
            let _ = writeln!(
                out,
                "repeatd_send_duration_seconds_bucket{{le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "repeatd_send_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            histogram.count
        );
        let _ = writeln!(
            out,
            "repeatd_send_duration_seconds_sum {}",
            histogram.sum_seconds
        );
        let _ = writeln!(
            out,
            "repeatd_send_duration_seconds_count {}",
            histogram.count
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.forms_accepted.fetch_add(3, Ordering::Relaxed);
        metrics.observe_send("demo", "cases", "success", Duration::from_millis(3));
        let text = metrics.render(&[("demo".into(), "cases".into(), "succeeded", 1)], 0, None);
        assert!(text.contains("repeatd_forms_accepted_total 3\n"));
        assert!(text.contains(
            "repeatd_records{domain=\"demo\",repeater=\"cases\",state=\"succeeded\"} 1\n"
        ));
        assert!(text.contains(
            "repeatd_attempts_total{domain=\"demo\",repeater=\"cases\",outcome=\"success\"} 1\n"
        ));
        assert!(text.contains("repeatd_send_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("repeatd_send_duration_seconds_bucket{le=\"0.001\"} 0\n"));
    }
}
