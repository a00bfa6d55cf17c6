//! The scheduler: one task that decides what is sent when.
//!
//! Each repeater is a lane over its slice of the store's due index (ordered
//! by due time, then registration), so first attempts and retries share one
//! queue and neither starves the other. The task sleeps until the earliest
//! due record of a lane that may send, or until it is woken: a record was
//! registered, a send finished, an operator acted, the catalog or the plugins
//! changed.
//!
//! A lane sends up to `max_workers` records at once (all lanes together at
//! most `[delivery] max_in_flight`, and no lane more than an equal share of
//! it, so that one slow remote cannot take every slot). A lane whose remote keeps failing backs
//! off as a whole: no new sends until its back-off ends, then one probe at a
//! time; a success restores full speed. A paused lane, or one whose format
//! plugin is not loaded, sends nothing and costs nothing: its records stay
//! queued in the store.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::catalog::Catalog;
use crate::delivery::{Delivery, SendResult};
use crate::email::Notifier;
use crate::metrics::Metrics;
use crate::plugins::PluginHost;
use crate::record::RetryPolicy;
use crate::record::{self, Outcome, Verdict};
use crate::store::{AttemptResult, RepeaterRef, Store};

/// Consecutive retryable failures that put a lane into back-off.
const FAILURES_BEFORE_BACKOFF: u32 = 3;
/// Records fetched from the due index per lane at a time.
const FETCH_BATCH: usize = 256;

/// What a lane knows about its remote's health.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub consecutive_failures: u32,
    /// How many back-offs in a row (grows the wait like a record's).
    pub backoff_level: u32,
    /// No sends before this (micros); then one probe at a time.
    pub backoff_until: Option<i64>,
}

impl Health {
    /// Applies one outcome; returns true when it changes the lane's pace.
    pub fn observe(
        &mut self,
        outcome: &Outcome,
        policy: &RetryPolicy,
        now: i64,
        jitter_unit: f64,
    ) -> bool {
        match outcome {
            Outcome::Success { .. } => {
                let was_backing_off = self.backoff_until.is_some();
                *self = Health::default();
                was_backing_off
            }
            Outcome::Retryable { retry_after, .. } => {
                self.consecutive_failures += 1;
                if let Some(until) = self.backoff_until.filter(|until| *until > now) {
                    // A send that started before this back-off began: it
                    // confirms the back-off but does not grow it (parallel
                    // sends failing together are one failure of the remote),
                    // except to honour a longer Retry-After.
                    let asked_until = retry_after.map(|asked| now + asked.as_micros() as i64);
                    return match asked_until {
                        Some(asked_until) if asked_until > until => {
                            self.backoff_until = Some(asked_until);
                            true
                        }
                        _ => false,
                    };
                }
                if retry_after.is_some() || self.consecutive_failures >= FAILURES_BEFORE_BACKOFF {
                    self.backoff_level += 1;
                    let computed = record::retry_wait(policy, self.backoff_level, jitter_unit);
                    let wait =
                        retry_after.map_or(computed, |asked| asked.max(Duration::from_millis(1)));
                    self.backoff_until = Some(now + wait.as_micros() as i64);
                    true
                } else {
                    false
                }
            }
            Outcome::Rejected { .. } | Outcome::Empty => false,
        }
    }

    pub fn is_backing_off(&self) -> bool {
        self.backoff_until.is_some()
    }
}

struct Lane {
    repeater: RepeaterRef,
    in_flight: HashSet<u64>,
    /// Due records fetched but not yet sent.
    buffer: VecDeque<u64>,
    /// The earliest due time not in `buffer`/`in_flight`, when known.
    next_due: Option<i64>,
    health: Health,
}

impl Lane {
    fn new(repeater: RepeaterRef) -> Lane {
        Lane {
            repeater,
            in_flight: HashSet::new(),
            buffer: VecDeque::new(),
            next_due: Some(i64::MIN),
            health: Health::default(),
        }
    }
}

struct Shared {
    store: Store,
    catalog: Arc<Catalog>,
    delivery: Arc<Delivery>,
    plugins: Arc<PluginHost>,
    metrics: Arc<Metrics>,
    notifier: Notifier,
    retry_defaults: RetryPolicy,
    wake: Notify,
    lanes: Mutex<HashMap<u64, Lane>>,
    permits: Arc<Semaphore>,
    /// The number of `permits`.
    max_in_flight: usize,
    stopping: std::sync::atomic::AtomicBool,
    sends: tokio_util_like::TaskCounter,
    /// The scheduling task, awaited at shutdown so that it has let go of the
    /// store (and a restart in the same process can open it).
    run_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A handle on the running scheduler.
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

/// A lane's state, for the API and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LaneStatus {
    pub in_flight: usize,
    pub consecutive_failures: u32,
    pub backing_off_until: Option<String>,
}

impl Scheduler {
    /// Starts the scheduling task.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        store: Store,
        catalog: Arc<Catalog>,
        delivery: Arc<Delivery>,
        plugins: Arc<PluginHost>,
        metrics: Arc<Metrics>,
        notifier: Notifier,
        retry_defaults: RetryPolicy,
        max_in_flight: usize,
    ) -> Scheduler {
        let shared = Arc::new(Shared {
            store,
            catalog,
            delivery,
            plugins: plugins.clone(),
            metrics,
            notifier,
            retry_defaults,
            wake: Notify::new(),
            lanes: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            max_in_flight: max_in_flight.max(1),
            stopping: std::sync::atomic::AtomicBool::new(false),
            sends: tokio_util_like::TaskCounter::default(),
            run_task: Mutex::new(None),
        });
        let scheduler = Scheduler { shared };
        // Weak: the plugin host outlives the scheduler (its watcher thread
        // runs for good), and must not keep the store open after shutdown.
        let on_plugins = Arc::downgrade(&scheduler.shared);
        plugins.on_change(Box::new(move || {
            if let Some(shared) = on_plugins.upgrade() {
                shared.wake.notify_one();
            }
        }));
        let running = scheduler.clone();
        let run_task = tokio::spawn(async move { running.run().await });
        *scheduler.shared.run_task.lock().expect("run task lock") = Some(run_task);
        scheduler
    }

    /// Wakes the task: something may be due.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Records were registered (or made due again): `(repeater id, due)`.
    pub fn registered(&self, items: &[(u64, i64)]) {
        if items.is_empty() {
            return;
        }
        {
            let mut lanes = self.shared.lanes.lock().expect("lanes lock");
            for (repeater_id, due) in items {
                if let Some(lane) = lanes.get_mut(repeater_id) {
                    lane.next_due = Some(lane.next_due.map_or(*due, |known| known.min(*due)));
                }
            }
        }
        self.wake();
    }

    /// An operator made records due now (resend, requeue), given as
    /// `(repeater id, seq, due)`: they go next, ahead of their lane's queue,
    /// and at once even when their repeater is backing off, as its next probe
    /// (one probe at a time still holds until a success).
    pub fn operator_released(&self, items: &[(u64, u64, i64)]) {
        {
            let now = crate::time::now_micros();
            let mut lanes = self.shared.lanes.lock().expect("lanes lock");
            for (repeater_id, seq, _) in items.iter().take(FETCH_BATCH).rev() {
                if let Some(lane) = lanes.get_mut(repeater_id)
                    && !lane.in_flight.contains(seq)
                {
                    lane.buffer.retain(|queued| queued != seq);
                    lane.buffer.push_front(*seq);
                }
            }
            for (repeater_id, _, _) in items {
                if let Some(lane) = lanes.get_mut(repeater_id)
                    && lane.health.backoff_until.is_some_and(|until| until > now)
                {
                    lane.health.backoff_until = Some(now);
                }
            }
        }
        let due: Vec<(u64, i64)> = items
            .iter()
            .map(|(repeater_id, _, at)| (*repeater_id, *at))
            .collect();
        self.registered(&due);
    }

    /// Forgets what a lane knows of its due records (after bulk changes).
    pub fn refresh(&self, repeater_id: Option<u64>) {
        {
            let mut lanes = self.shared.lanes.lock().expect("lanes lock");
            for lane in lanes.values_mut() {
                if repeater_id.is_none_or(|id| id == lane.repeater.id) {
                    lane.buffer.clear();
                    lane.next_due = Some(i64::MIN);
                }
            }
        }
        self.wake();
    }

    pub fn lane_status(&self, repeater_id: u64) -> Option<LaneStatus> {
        let lanes = self.shared.lanes.lock().expect("lanes lock");
        lanes.get(&repeater_id).map(|lane| LaneStatus {
            in_flight: lane.in_flight.len(),
            consecutive_failures: lane.health.consecutive_failures,
            backing_off_until: lane.health.backoff_until.map(crate::time::format_utc),
        })
    }

    /// Stops sending new records and waits (up to `grace`) for the sends
    /// under way to finish and be committed.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake();
        if tokio::time::timeout(grace, self.shared.sends.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = self.shared.sends.count(),
                "sends still under way at shutdown; their records will be sent again after restart"
            );
        }
        let run_task = self.shared.run_task.lock().expect("run task lock").take();
        if let Some(run_task) = run_task {
            let _ = run_task.await;
        }
    }

    fn sync_lanes(&self) {
        let snapshot = self.shared.catalog.snapshot();
        let mut lanes = self.shared.lanes.lock().expect("lanes lock");
        let mut present = HashSet::new();
        for repeater in snapshot.repeaters() {
            present.insert(repeater.id);
            match lanes.get_mut(&repeater.id) {
                Some(lane) => lane.repeater = repeater.clone(),
                None => {
                    lanes.insert(repeater.id, Lane::new(repeater.clone()));
                }
            }
        }
        lanes.retain(|id, lane| present.contains(id) || !lane.in_flight.is_empty());
        for (id, lane) in lanes.iter_mut() {
            if !present.contains(id) {
                lane.buffer.clear();
                lane.next_due = None;
            }
        }
    }

    async fn run(&self) {
        let mut catalog_changes = self.shared.catalog.subscribe();
        // `changed()` below marks a change as seen when it wakes us, so the
        // change is remembered here rather than asked of the channel again.
        let mut catalog_changed = true;
        let mut catalog_open = true;
        loop {
            if self
                .shared
                .stopping
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return;
            }
            if catalog_changed || catalog_changes.has_changed().unwrap_or(false) {
                catalog_changes.mark_unchanged();
                catalog_changed = false;
                self.sync_lanes();
            }
            let next_wake = match self.dispatch_due() {
                Ok(next_wake) => next_wake,
                Err(error) => {
                    tracing::error!(%error, "scheduler could not read the queue; trying again in a second");
                    Some(crate::time::now_micros() + 1_000_000)
                }
            };
            let sleep = match next_wake {
                Some(at) => {
                    let wait = (at - crate::time::now_micros()).max(0) as u64;
                    Duration::from_micros(wait.min(3_600_000_000))
                }
                None => Duration::from_secs(3_600),
            };
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                changed = catalog_changes.changed(), if catalog_open => match changed {
                    Ok(()) => catalog_changed = true,
                    // The catalog is gone (shutting down): stop listening
                    // rather than wake on the closed channel in a loop.
                    Err(_) => catalog_open = false,
                },
            }
        }
    }

    /// Sends whatever is due and may be sent; returns when to look again.
    fn dispatch_due(&self) -> Result<Option<i64>, crate::store::StoreError> {
        let now = crate::time::now_micros();
        let snapshot = self.shared.catalog.snapshot();
        let mut next_wake: Option<i64> = None;
        let mut wake_at = |at: i64| next_wake = Some(next_wake.map_or(at, |w: i64| w.min(at)));
        let mut lanes = self.shared.lanes.lock().expect("lanes lock");
        // No lane takes more than an equal share of the global slots, so a
        // slow remote cannot hold every one while a healthy one waits.
        let sending_lanes = lanes
            .values()
            .filter(|lane| {
                !lane.repeater.spec.paused
                    && self.shared.plugins.is_loaded(&lane.repeater.spec.format)
            })
            .count();
        let fair_share = (self.shared.max_in_flight / sending_lanes.max(1)).max(1);
        for lane in lanes.values_mut() {
            let spec = lane.repeater.spec.clone();
            if spec.paused || !self.shared.plugins.is_loaded(&spec.format) {
                continue;
            }
            let Some(domain) = snapshot.domain(&lane.repeater.domain) else {
                continue;
            };
            let Some(connection) = domain.connections.get(&spec.connection).cloned() else {
                continue;
            };
            let capacity = match lane.health.backoff_until {
                Some(until) if until > now => {
                    wake_at(until);
                    continue;
                }
                Some(_) => 1,
                None => spec.max_workers.max(1).min(fair_share),
            };
            while lane.in_flight.len() < capacity {
                if lane.buffer.is_empty() {
                    match lane.next_due {
                        Some(at) if at <= now => {}
                        Some(at) => {
                            wake_at(at);
                            break;
                        }
                        None => break,
                    }
                    let mut skip = lane.in_flight.clone();
                    skip.extend(lane.buffer.iter().copied());
                    let due =
                        self.shared
                            .store
                            .due_records(lane.repeater.id, now, FETCH_BATCH, &skip)?;
                    let fetched_all = due.len() < FETCH_BATCH;
                    lane.buffer.extend(due);
                    if fetched_all {
                        let mut skip = lane.in_flight.clone();
                        skip.extend(lane.buffer.iter().copied());
                        lane.next_due = self.shared.store.earliest_due(lane.repeater.id, &skip)?;
                        // Anything earlier than now that was skipped is in flight.
                        if lane.next_due.is_some_and(|at| at <= now) && lane.buffer.is_empty() {
                            lane.next_due = None;
                        }
                    }
                    if lane.buffer.is_empty() {
                        if let Some(at) = lane.next_due {
                            wake_at(at);
                        }
                        break;
                    }
                }
                let Ok(permit) = self.shared.permits.clone().try_acquire_owned() else {
                    // Every global slot is busy; a finishing send wakes us.
                    break;
                };
                let Some(seq) = lane.buffer.pop_front() else {
                    break;
                };
                lane.in_flight.insert(seq);
                let task = SendTask {
                    scheduler: self.clone(),
                    repeater: lane.repeater.clone(),
                    connection: connection.spec.clone(),
                    connection_origin: connection.origin,
                    seq,
                    guard: self.shared.sends.enter(),
                };
                let scheduler = self.clone();
                let repeater_id = lane.repeater.id;
                tokio::spawn(async move {
                    use futures_util::FutureExt as _;
                    // A bug in a send must not hold the lane's slot forever:
                    // the record is released and tried again a second later.
                    if std::panic::AssertUnwindSafe(task.run())
                        .catch_unwind()
                        .await
                        .is_err()
                    {
                        tracing::error!(
                            repeater_id,
                            seq,
                            "a send panicked; its record will be tried again"
                        );
                        let retry_at = crate::time::now_micros() + 1_000_000;
                        let policy = scheduler.shared.retry_defaults;
                        scheduler.finished(repeater_id, seq, None, Some(retry_at), &policy);
                    }
                    drop(permit);
                });
            }
        }
        Ok(next_wake)
    }

    fn finished(
        &self,
        repeater_id: u64,
        seq: u64,
        outcome: Option<&Outcome>,
        retry_at: Option<i64>,
        policy: &RetryPolicy,
    ) {
        let mut lanes = self.shared.lanes.lock().expect("lanes lock");
        if let Some(lane) = lanes.get_mut(&repeater_id) {
            lane.in_flight.remove(&seq);
            if let Some(outcome) = outcome {
                let now = crate::time::now_micros();
                if lane
                    .health
                    .observe(outcome, policy, now, fastrand::f64() * 2.0 - 1.0)
                    && lane.health.is_backing_off()
                {
                    tracing::warn!(
                        domain = %lane.repeater.domain,
                        repeater = %lane.repeater.spec.name,
                        failures = lane.health.consecutive_failures,
                        "remote keeps failing; repeater backs off"
                    );
                }
            }
            if let Some(at) = retry_at {
                lane.next_due = Some(lane.next_due.map_or(at, |known| known.min(at)));
            }
        }
        drop(lanes);
        self.wake();
    }
}

/// One record being sent.
struct SendTask {
    scheduler: Scheduler,
    repeater: RepeaterRef,
    connection: crate::connection::ConnectionSpec,
    /// Who made the connection (the egress policy depends on it).
    connection_origin: crate::catalog::Origin,
    seq: u64,
    guard: tokio_util_like::TaskGuard,
}

impl SendTask {
    async fn run(self) {
        let shared = &self.scheduler.shared;
        let spec = &self.repeater.spec;
        let policy = spec.retry.as_ref().map_or_else(
            || shared.retry_defaults,
            |over| over.resolve(&shared.retry_defaults),
        );
        let loaded = shared.store.load_for_send(self.seq);
        let (record, source) = match loaded {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.scheduler
                    .finished(self.repeater.id, self.seq, None, None, &policy);
                return;
            }
            Err(error) => {
                tracing::error!(%error, seq = self.seq, "cannot read a record to send");
                self.scheduler.finished(
                    self.repeater.id,
                    self.seq,
                    None,
                    Some(crate::time::now_micros() + 1_000_000),
                    &policy,
                );
                return;
            }
        };
        // Stale entries (an operator acted since it was fetched) are skipped.
        if !record.state.is_queued()
            || record
                .next_attempt_at
                .is_none_or(|at| at > crate::time::now_micros())
        {
            self.scheduler.finished(
                self.repeater.id,
                self.seq,
                None,
                record.next_attempt_at,
                &policy,
            );
            return;
        }
        let record_id = shared.store.record_id(self.seq);
        let started = std::time::Instant::now();
        let result = shared
            .delivery
            .send(
                &record_id,
                &record,
                source,
                spec,
                &self.connection,
                self.connection_origin,
            )
            .await;
        let (outcome, attempt) = match result {
            SendResult::Done { outcome, attempt } => (outcome, attempt),
            SendResult::PluginMissing(name) => {
                tracing::warn!(plugin = %name, repeater = %spec.name, "format plugin not loaded; records wait for it");
                self.scheduler.finished(
                    self.repeater.id,
                    self.seq,
                    None,
                    Some(crate::time::now_micros()),
                    &policy,
                );
                return;
            }
        };
        if attempt.is_some() {
            shared.metrics.observe_send(
                &self.repeater.domain,
                &spec.name,
                outcome.label(),
                started.elapsed(),
            );
        }
        let attempted_url = attempt.as_ref().map(|attempt| attempt.url.clone());
        let committed = shared
            .store
            .commit_attempt(AttemptResult {
                seq: self.seq,
                outcome: outcome.clone(),
                attempt,
                policy,
                jitter_unit: fastrand::f64() * 2.0 - 1.0,
            })
            .await;
        if let Ok((committed_record, _)) = &committed {
            // Error e-mails (and "recovered" ones); never waits.
            shared.notifier.observe(
                &self.repeater.domain,
                &self.connection,
                committed_record,
                &outcome,
                attempted_url.as_deref(),
            );
        }
        let retry_at = match committed {
            Ok((_, Verdict::RetryAt(at))) => Some(at),
            Ok((_, Verdict::Final(_))) => None,
            Err(error) => {
                tracing::error!(%error, seq = self.seq, "cannot commit an attempt; the record will be sent again");
                Some(crate::time::now_micros() + 1_000_000)
            }
        };
        self.scheduler.finished(
            self.repeater.id,
            self.seq,
            Some(&outcome),
            retry_at,
            &policy,
        );
        // The scheduler handle goes before the guard, so that a finished
        // shutdown holds nothing of the store.
        let SendTask {
            scheduler, guard, ..
        } = self;
        drop(scheduler);
        drop(guard);
    }
}

/// Counting the sends under way, so that shutdown can wait for them.
mod tokio_util_like {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    pub struct TaskCounter {
        inner: Arc<Inner>,
    }

    #[derive(Default)]
    struct Inner {
        count: AtomicUsize,
        idle: tokio::sync::Notify,
    }

    pub struct TaskGuard {
        inner: Arc<Inner>,
    }

    impl TaskCounter {
        pub fn enter(&self) -> TaskGuard {
            self.inner.count.fetch_add(1, Ordering::SeqCst);
            TaskGuard {
                inner: self.inner.clone(),
            }
        }

        pub fn count(&self) -> usize {
            self.inner.count.load(Ordering::SeqCst)
        }

        pub async fn wait_idle(&self) {
            loop {
                let notified = self.inner.idle.notified();
                if self.count() == 0 {
                    return;
                }
                notified.await;
            }
        }
    }

    impl Drop for TaskGuard {
        fn drop(&mut self) {
            if self.inner.count.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.inner.idle.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            min_wait: Duration::from_secs(10),
            max_wait: Duration::from_secs(100),
            factor: 2.0,
        }
    }

    fn failure() -> Outcome {
        Outcome::Retryable {
            status: Some(503),
            retry_after: None,
            error: "remote answered 503".into(),
        }
    }

    #[test]
    fn a_lane_backs_off_after_consecutive_failures_and_recovers_on_success() {
        let mut health = Health::default();
        assert!(!health.observe(&failure(), &policy(), 0, 0.0));
        assert!(!health.observe(&failure(), &policy(), 0, 0.0));
        assert!(health.observe(&failure(), &policy(), 0, 0.0));
        assert_eq!(health.backoff_until, Some(10_000_000));
        // The probe after the back-off fails too.
        health.observe(&failure(), &policy(), 10_000_000, 0.0);
        assert_eq!(
            health.backoff_until,
            Some(30_000_000),
            "back-off grows like a record's wait"
        );
        assert!(health.observe(&Outcome::Success { status: 200 }, &policy(), 0, 0.0));
        assert_eq!(health, Health::default());
    }

    #[test]
    fn sends_failing_together_back_off_once() {
        let mut health = Health::default();
        for _ in 0..3 {
            health.observe(&failure(), &policy(), 0, 0.0);
        }
        assert_eq!(health.backoff_until, Some(10_000_000));
        // Five more sends that were under way fail while it backs off.
        for at in 1..=5 {
            assert!(!health.observe(&failure(), &policy(), at, 0.0));
        }
        assert_eq!(
            health.backoff_until,
            Some(10_000_000),
            "not grown by sends started before it"
        );
        assert_eq!(health.backoff_level, 1);
        // One of them asks for longer: granted, without growing the level.
        let throttled = Outcome::Retryable {
            status: Some(429),
            retry_after: Some(Duration::from_secs(60)),
            error: "remote answered 429".into(),
        };
        assert!(health.observe(&throttled, &policy(), 6, 0.0));
        assert_eq!(health.backoff_until, Some(60_000_006));
        assert_eq!(health.backoff_level, 1);
    }

    #[test]
    fn retry_after_backs_off_at_once_for_as_long_as_asked() {
        let mut health = Health::default();
        let throttled = Outcome::Retryable {
            status: Some(429),
            retry_after: Some(Duration::from_secs(7)),
            error: "remote answered 429".into(),
        };
        assert!(health.observe(&throttled, &policy(), 1, 0.0));
        assert_eq!(health.backoff_until, Some(7_000_001));
    }

    #[test]
    fn rejections_do_not_count_as_the_remote_failing() {
        let mut health = Health::default();
        let rejected = Outcome::Rejected {
            status: Some(400),
            error: "bad".into(),
        };
        for _ in 0..10 {
            assert!(!health.observe(&rejected, &policy(), 0, 0.0));
        }
        assert_eq!(health, Health::default());
    }
}
