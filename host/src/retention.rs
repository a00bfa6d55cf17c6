//! Retention (SPEC section 13): how long records in a final state and forms
//! are kept, and the task that deletes what has passed its time.
//!
//! What is due is decided here, without I/O: [`Cutoffs::at`] turns
//! `[retention]` and "now" into one cutoff per final state (and one for
//! forms), and [`form_may_go`] says whether a form past its cutoff may go.
//! The store only does the deleting, through a few operations any backend
//! can implement: delete up to N records of a state that became final at or
//! before a cutoff, with their attempts and every index entry that names
//! them (`Store::retain_records`); delete up to N forms of a domain older
//! than a cutoff that no `pending` or `failed` record needs, with their XML
//! and listing entries (`Store::retain_forms`); and say what the oldest kept
//! is (`Store::oldest_kept`). Cases are never deleted; `pending` and `failed`
//! records never are either (they have no cutoff).
//!
//! The task ([`Retention::start`]) wakes every [`PASS_INTERVAL`] and deletes
//! in transactions of at most [`BATCH`] records or forms, going back to the
//! writer between batches, so ingest and delivery jobs are committed between
//! two of its batches and never wait behind a long deletion. Everything past
//! its duration is gone within one interval plus the batches it takes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};

use crate::clock::Clock;
use crate::record::RecordState;
use crate::store::{Store, StoreError};
use crate::units;

/// How often the task looks for what is due: well inside the 15 s SPEC
/// section 13 allows.
pub const PASS_INTERVAL: Duration = Duration::from_secs(5);

/// How many records (or forms) one transaction deletes at most: a few
/// milliseconds of writing, so that a submission waits at most that long.
pub const BATCH: usize = 256;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// `[retention]`: how long each final state's records are kept (`None`:
/// `"off"`, for ever), and forms (`None` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(with = "retention_duration")]
    pub succeeded: Option<Duration>,
    #[serde(with = "retention_duration")]
    pub empty: Option<Duration>,
    #[serde(with = "retention_duration")]
    pub cancelled: Option<Duration>,
    #[serde(with = "retention_duration")]
    pub rejected: Option<Duration>,
    #[serde(with = "retention_duration")]
    pub forms: Option<Duration>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            succeeded: Some(30 * DAY),
            empty: Some(30 * DAY),
            cancelled: Some(90 * DAY),
            rejected: Some(90 * DAY),
            forms: None,
        }
    }
}

impl RetentionConfig {
    /// How long records in `state` are kept once they are in it; `None` for
    /// `pending` and `failed` (never deleted) and for a state set `"off"`.
    pub fn kept_for(&self, state: RecordState) -> Option<Duration> {
        match state {
            RecordState::Pending | RecordState::Failed => None,
            RecordState::Succeeded => self.succeeded,
            RecordState::Empty => self.empty,
            RecordState::Cancelled => self.cancelled,
            RecordState::Rejected => self.rejected,
        }
    }
}

/// A retention duration: `"30d"` like every duration, or `"off"`.
mod retention_duration {
    use super::*;

    pub fn serialize<S: Serializer>(
        kept: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match kept {
            Some(duration) => units::duration::serialize(duration, serializer),
            None => serializer.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        units::deserialize_text(deserializer, "a duration like \"30d\", or \"off\"", parse)
    }

    fn parse(text: &str) -> Result<Option<Duration>, String> {
        if text == "off" {
            return Ok(None);
        }
        let duration = units::parse_duration(text)
            .map_err(|problem| format!("{problem} (or \"off\" to keep for ever)"))?;
        if duration.is_zero() {
            return Err("must be longer than zero (or \"off\" to keep for ever)".to_owned());
        }
        Ok(Some(duration))
    }
}

/// What is due at one instant: a record in a final state goes when it has
/// been in that state since `records[state]` or earlier; a form when it was
/// stored at `forms` or earlier (and [`form_may_go`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cutoffs {
    pub records: Vec<(RecordState, i64)>,
    pub forms: Option<i64>,
}

impl Cutoffs {
    /// The cutoffs of `config` at `now` (Unix micros).
    pub fn at(config: &RetentionConfig, now: i64) -> Cutoffs {
        let before = |kept: Duration| now.saturating_sub(crate::clock::micros(kept));
        Cutoffs {
            records: RecordState::ALL
                .into_iter()
                .filter_map(|state| config.kept_for(state).map(|kept| (state, before(kept))))
                .collect(),
            forms: config.forms.map(before),
        }
    }
}

/// Whether a form stored at `stored_at` may be deleted at `cutoff`: it is
/// old enough and no record that is `pending` or `failed` needs it (the
/// states of its records are `record_states`).
pub fn form_may_go(stored_at: i64, cutoff: i64, record_states: &[RecordState]) -> bool {
    stored_at <= cutoff && !record_states.iter().any(|state| state.is_queued())
}

/// What retention has done since start-up, for `/metrics` and the console.
#[derive(Debug, Default)]
pub struct RetentionProgress {
    /// Records deleted, per final state.
    records_deleted: BTreeMap<RecordState, AtomicU64>,
    forms_deleted: AtomicU64,
    passes: AtomicU64,
}

impl RetentionProgress {
    fn new() -> RetentionProgress {
        RetentionProgress {
            records_deleted: RecordState::ALL
                .into_iter()
                .filter(|state| !state.is_queued())
                .map(|state| (state, AtomicU64::new(0)))
                .collect(),
            ..RetentionProgress::default()
        }
    }

    /// Records deleted so far, per final state (every final state, from 0).
    pub fn records_deleted(&self) -> Vec<(RecordState, u64)> {
        self.records_deleted
            .iter()
            .map(|(state, n)| (*state, n.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn forms_deleted(&self) -> u64 {
        self.forms_deleted.load(Ordering::Relaxed)
    }

    /// Completed passes (each deletes everything due when it started).
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }
}

/// The retention task's handle: its progress, and how to stop it.
#[derive(Debug, Clone)]
pub struct Retention {
    pub config: RetentionConfig,
    pub progress: Arc<RetentionProgress>,
    stop: Arc<tokio::sync::Notify>,
    done: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Retention {
    /// Starts the task on `store`, with every "now" and sleep from `clock`.
    pub fn start(store: Store, config: RetentionConfig, clock: Clock) -> Retention {
        let progress = Arc::new(RetentionProgress::new());
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = {
            let progress = progress.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut form_starts: BTreeMap<String, u64> = BTreeMap::new();
                loop {
                    if let Err(error) =
                        pass(&store, &config, clock, &progress, &mut form_starts).await
                    {
                        // A store that cannot write says so itself (once); the
                        // next pass tries again.
                        tracing::debug!(%error, "retention pass stopped early");
                    }
                    tokio::select! {
                        _ = stop.notified() => return,
                        _ = clock.sleep(PASS_INTERVAL) => {}
                    }
                }
            })
        };
        Retention {
            config,
            progress,
            stop,
            done: Arc::new(tokio::sync::Mutex::new(Some(task))),
        }
    }

    /// Stops the task and waits for it (a batch under way is finished), so
    /// that it holds the store no longer.
    pub async fn shutdown(&self) {
        self.stop.notify_one();
        if let Some(task) = self.done.lock().await.take() {
            let _ = task.await;
        }
    }
}

/// One pass: every due record, state by state, then every domain's due
/// forms, in batches. `form_starts` remembers per domain where the last
/// pass stopped among forms that are old enough but still needed, so that
/// a pass never reads the same needed forms again and again.
async fn pass(
    store: &Store,
    config: &RetentionConfig,
    clock: Clock,
    progress: &RetentionProgress,
    form_starts: &mut BTreeMap<String, u64>,
) -> Result<(), StoreError> {
    let cutoffs = Cutoffs::at(config, clock.now_micros());
    // A read first, so that a pass with nothing due writes nothing.
    let oldest = store.oldest_kept().await?;
    for &(state, cutoff) in &cutoffs.records {
        let oldest_since = oldest
            .records
            .iter()
            .find(|(found, _)| *found == state)
            .and_then(|(_, since)| *since);
        if oldest_since.is_none_or(|since| since > cutoff) {
            continue;
        }
        loop {
            let deleted = store.retain_records(state, cutoff, BATCH).await?;
            if let Some(counter) = progress.records_deleted.get(&state) {
                counter.fetch_add(deleted as u64, Ordering::Relaxed);
            }
            if deleted < BATCH {
                break;
            }
        }
    }
    if let Some(cutoff) = cutoffs
        .forms
        .filter(|cutoff| oldest.form.is_some_and(|at| at <= *cutoff))
    {
        for domain in store.form_domains().await? {
            let mut start = form_starts.get(&domain).copied().unwrap_or(0);
            loop {
                let retained = store.retain_forms(&domain, cutoff, start, BATCH).await?;
                progress
                    .forms_deleted
                    .fetch_add(retained.deleted as u64, Ordering::Relaxed);
                match retained.resume_at {
                    Some(next) => start = next,
                    None => {
                        // The end of what is old enough: the next pass looks
                        // at the needed ones again from the oldest.
                        start = 0;
                        break;
                    }
                }
            }
            form_starts.insert(domain, start);
        }
    }
    progress.passes.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_specs() {
        let config = RetentionConfig::default();
        assert_eq!(config.kept_for(RecordState::Succeeded), Some(30 * DAY));
        assert_eq!(config.kept_for(RecordState::Empty), Some(30 * DAY));
        assert_eq!(config.kept_for(RecordState::Cancelled), Some(90 * DAY));
        assert_eq!(config.kept_for(RecordState::Rejected), Some(90 * DAY));
        assert_eq!(config.kept_for(RecordState::Pending), None);
        assert_eq!(config.kept_for(RecordState::Failed), None);
        assert_eq!(config.forms, None);
    }

    #[test]
    fn cutoffs_leave_out_queued_states_and_what_is_off() {
        let config = RetentionConfig {
            succeeded: Some(Duration::from_secs(10)),
            empty: None,
            cancelled: Some(Duration::from_secs(1)),
            rejected: None,
            forms: Some(Duration::from_secs(20)),
        };
        let now = 100_000_000;
        let cutoffs = Cutoffs::at(&config, now);
        assert_eq!(
            cutoffs.records,
            [
                (RecordState::Succeeded, now - 10_000_000),
                (RecordState::Cancelled, now - 1_000_000)
            ]
        );
        assert_eq!(cutoffs.forms, Some(now - 20_000_000));
        // The start of time does not wrap.
        let early = Cutoffs::at(&config, i64::MIN + 1);
        assert_eq!(early.records[0].1, i64::MIN);
    }

    #[test]
    fn a_form_goes_only_when_old_enough_and_not_needed() {
        use RecordState::*;
        assert!(form_may_go(5, 10, &[]));
        assert!(form_may_go(
            10,
            10,
            &[Succeeded, Rejected, Cancelled, Empty]
        ));
        assert!(!form_may_go(11, 10, &[]));
        assert!(!form_may_go(5, 10, &[Succeeded, Pending]));
        assert!(!form_may_go(5, 10, &[Failed]));
    }
}
