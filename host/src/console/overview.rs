//! The Overview (deliveries, failures and queue depth over the last hour, as
//! server-rendered SVG charts) and the admin's Plugins page.
//!
//! The history is a small in-memory series per project space, one point a
//! minute for the last hour: a sampler task reads the attempt totals that
//! `metrics` keeps where outcomes are recorded, and the queue depth from the
//! store's state counters (no record is read). The page adds the minute
//! under way, so the charts are current. The history starts empty with each
//! process: it is a view, not a record.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{Markup, html};

use crate::AppState;
use crate::endpoint::{Access, ApiError};

use super::layout::ConsoleError;
use super::{Console, Shared};

/// Points kept per project space: one hour of minutes.
const MINUTES_KEPT: usize = 60;
const SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// One minute of one project space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    /// Attempts that succeeded during the minute.
    pub deliveries: u64,
    /// Attempts that failed during the minute.
    pub failures: u64,
    /// Records queued (pending or failed) at its end.
    pub queued: u64,
}

/// Every project space's last hour.
#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Series>,
}

#[derive(Debug, Default)]
struct Series {
    minutes: BTreeMap<String, VecDeque<Minute>>,
    /// The attempt totals at the last sample, per domain.
    totals_then: BTreeMap<String, (u64, u64)>,
}

/// Per domain, the queued records now.
async fn queued_now(app: &AppState) -> Result<BTreeMap<String, u64>, ApiError> {
    let counts = app.store.state_counts().await?;
    let snapshot = app.catalog.snapshot();
    let domain_of: BTreeMap<u64, &str> = snapshot
        .repeaters()
        .map(|repeater| (repeater.id, repeater.domain.as_str()))
        .collect();
    let mut queued = BTreeMap::new();
    for ((repeater_id, state), count) in counts {
        if let Some(domain) = domain_of.get(&repeater_id) {
            let entry: &mut u64 = queued.entry((*domain).to_owned()).or_default();
            if state.is_queued() {
                *entry += count;
            }
        }
    }
    Ok(queued)
}

impl History {
    /// Closes a minute: what happened since the last sample, and the queue.
    async fn sample(&self, app: &AppState) -> Result<(), ApiError> {
        let totals = app.metrics.attempt_totals();
        let queued = queued_now(app).await?;
        let mut series = self.inner.lock().expect("history lock");
        let domains: Vec<String> = queued.keys().chain(totals.keys()).cloned().collect();
        for domain in domains {
            let now = totals.get(&domain).copied().unwrap_or_default();
            let then = series.totals_then.get(&domain).copied().unwrap_or_default();
            let minute = Minute {
                deliveries: now.0.saturating_sub(then.0),
                failures: now.1.saturating_sub(then.1),
                queued: queued.get(&domain).copied().unwrap_or_default(),
            };
            let minutes = series.minutes.entry(domain).or_default();
            minutes.push_back(minute);
            while minutes.len() > MINUTES_KEPT {
                minutes.pop_front();
            }
        }
        series.totals_then = totals;
        Ok(())
    }

    /// The domain's closed minutes and the one under way, oldest first.
    async fn last_hour(&self, app: &AppState, domain: &str) -> Result<Vec<Minute>, ApiError> {
        let now = app
            .metrics
            .attempt_totals()
            .get(domain)
            .copied()
            .unwrap_or_default();
        let queued = queued_now(app)
            .await?
            .get(domain)
            .copied()
            .unwrap_or_default();
        let series = self.inner.lock().expect("history lock");
        let then = series.totals_then.get(domain).copied().unwrap_or_default();
        let mut minutes: Vec<Minute> = series
            .minutes
            .get(domain)
            .map(|minutes| minutes.iter().copied().collect())
            .unwrap_or_default();
        minutes.push(Minute {
            deliveries: now.0.saturating_sub(then.0),
            failures: now.1.saturating_sub(then.1),
            queued,
        });
        let skip = minutes.len().saturating_sub(MINUTES_KEPT);
        Ok(minutes.split_off(skip))
    }
}

/// Samples every minute while the console lives.
pub fn start_sampling(console: Weak<Console>) {
    let Some(clock) = console.upgrade().map(|console| console.app.clock) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            clock.sleep(SAMPLE_EVERY).await;
            let Some(console) = console.upgrade() else {
                return;
            };
            if let Err(error) = console.history.sample(&console.app).await {
                tracing::warn!(?error, "console history sample failed");
            }
        }
    });
}

pub async fn overview(
    State(console): Shared,
    headers: HeaderMap,
    Path(domain): Path<String>,
) -> Result<Response, ConsoleError> {
    let (visit, access) = console.domain_visit(&headers, &domain)?;
    let minutes = console
        .history
        .last_hour(&console.app, &access.domain)
        .await?;
    let kept = kept(&console.app, &access.domain).await?;
    let total = |pick: fn(&Minute) -> u64| minutes.iter().map(pick).sum::<u64>();
    let queued_now = minutes.last().map(|m| m.queued).unwrap_or(0);
    let page = console.page(&visit, Some(&access.domain), "Overview");
    let content = html! {
        p.lead { "The last hour, a point a minute (the last point is the minute under way)." }
        div.charts {
            (chart("Deliveries", "deliveries", total(|m| m.deliveries), &minutes, |m| m.deliveries))
            (chart("Failures", "failures", total(|m| m.failures), &minutes, |m| m.failures))
            (chart("Queue depth", "queued", queued_now, &minutes, |m| m.queued))
        }
        (kept)
    };
    Ok(page.render(content))
}

/// What the project space keeps and what retention has deleted (the
/// figures of its stats endpoint), and a warning while the store cannot write.
async fn kept(app: &AppState, domain: &str) -> Result<Markup, ApiError> {
    let stats = app.store.domain_stats(domain).await?;
    let records: u64 = stats.records.values().sum();
    let progress = &app.retention.progress;
    let records_deleted: u64 = progress.records_deleted().iter().map(|(_, n)| n).sum();
    let failure = app.store.write_failure();
    Ok(html! {
        @if let Some(failure) = failure {
            p.warning.store-failing {
                "The store cannot write: submissions get 503 and delivery waits until a write succeeds ("
                (failure.reason) ")."
            }
        }
        p.retention {
            "Kept: " strong { (records) } " records, " strong { (stats.forms) } " forms, "
            strong { (stats.cases) } " cases (" (stats.form_xml_bytes) " bytes of form XML). "
            "Retention has deleted " strong { (records_deleted) } " records and "
            strong { (progress.forms_deleted()) } " forms since start-up (all project spaces)."
        }
    })
}

/// One chart: a headline figure and the hour as a bar chart.
fn chart(
    title: &str,
    class: &str,
    headline: u64,
    minutes: &[Minute],
    pick: fn(&Minute) -> u64,
) -> Markup {
    const WIDTH: u64 = 600;
    const HEIGHT: u64 = 120;
    let bar = WIDTH / MINUTES_KEPT as u64;
    let highest = minutes.iter().map(pick).max().unwrap_or(0).max(1);
    let offset = MINUTES_KEPT - minutes.len().min(MINUTES_KEPT);
    html! {
        figure class={ "chart chart-" (class) } {
            figcaption { span.title { (title) } " " strong.figure { (headline) } }
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT + 16) } role="img" aria-label={ (title) " over the last hour" } {
                line.axis x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) {}
                @for (index, minute) in minutes.iter().enumerate() {
                    @let value = pick(minute);
                    @let height = if value == 0 { 0 } else { (value * HEIGHT / highest).max(2) };
                    rect.bar x=(((offset + index) as u64) * bar + 1) y=(HEIGHT - height) width=(bar - 2) height=(height) {
                        title { (value) }
                    }
                }
                text.tick x="0" y=(HEIGHT + 14) { "−60 min" }
                text.tick x=(WIDTH) y=(HEIGHT + 14) text-anchor="end" { "now" }
                text.tick x="2" y="12" { "max " (highest) }
            }
        }
    }
}

/// Plugins: admin sessions only; for others it does not exist.
pub async fn plugins(State(console): Shared, headers: HeaderMap) -> Result<Response, ConsoleError> {
    let visit = console.visit(&headers)?;
    if visit.session.caller.access != Access::Admin {
        return Err(ApiError::NotFound("no page \"plugins\"".to_owned()).into());
    }
    let plugins = console.app.plugins.status();
    let page = console.page(&visit, None, "Plugins");
    let dash = || "—".to_owned();
    let content = html! {
        div.table-wrap { table.plugins {
            thead { tr { th { "Name" } th { "Kind" } th { "Source" } th { "Content hash" } th { "Loaded at" } th { "Last error" } } }
            tbody {
                @for plugin in &plugins {
                    tr {
                        td { strong { (plugin.name) } }
                        td { (plugin.kind.clone().unwrap_or_else(dash)) @if !plugin.kinds.is_empty() { " (" (plugin.kinds.join(", ")) ")" } }
                        td.mono { (plugin.source.clone().unwrap_or_else(dash)) }
                        td.mono.hash { (plugin.hash.clone().unwrap_or_else(dash)) }
                        td.when { (plugin.loaded_at.clone().unwrap_or_else(dash)) }
                        td.error-text { (plugin.last_error.clone().unwrap_or_default()) }
                    }
                }
            }
        } }
    };
    Ok(page.render(content))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_draws_one_bar_a_minute_scaled_to_the_busiest() {
        let minutes = [
            Minute {
                deliveries: 0,
                failures: 0,
                queued: 0,
            },
            Minute {
                deliveries: 5,
                failures: 0,
                queued: 0,
            },
            Minute {
                deliveries: 10,
                failures: 0,
                queued: 0,
            },
        ];
        let svg = chart("Deliveries", "deliveries", 15, &minutes, |m| m.deliveries).into_string();
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(
            svg.contains("height=\"120\""),
            "the busiest minute fills the chart: {svg}"
        );
        assert!(
            svg.contains("height=\"60\""),
            "half as busy, half as tall: {svg}"
        );
        assert!(
            svg.contains("<strong class=\"figure\">15</strong>"),
            "{svg}"
        );
    }
}
