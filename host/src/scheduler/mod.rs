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
//! it, so that one slow remote cannot take every slot). A send holds its slot
//! while it builds the payload and waits for the remote, not while its
//! outcome is committed: the outcomes of finished sends are committed
//! together, many to one job of the store's group commit
//! ([`Store::commit_attempts`]), by whichever send finished first while no
//! commit was under way. A record stays in flight (never fetched, never sent
//! again) until its outcome is durable. A lane whose remote keeps failing backs
//! off as a whole: no new sends until its back-off ends, then one probe at a
//! time; a success restores full speed. A paused lane, or one whose format
//! plugin is not loaded, sends nothing and costs nothing: its records stay
//! queued in the store.
//!
//! The decisions (back-off, probes, pause, `max_workers`, fair shares) are
//! the pure [`planner`]; this module does the I/O around them: it fetches due
//! records from the store, spawns the sends and commits their outcomes. Every
//! "now" and every sleep comes from the gateway's [`Clock`].

pub mod planner;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::delivery::{Delivery, SendResult};
use crate::email::Notifier;
use crate::metrics::Metrics;
use crate::plugins::PluginHost;
use crate::record::RetryPolicy;
use crate::record::{Outcome, RecordState, Verdict};
use crate::store::{AttemptResult, RepeaterRef, Store};

pub use planner::Health;
use planner::{LanePlan, LaneView};

/// Records fetched from the due index per lane at a time.
const FETCH_BATCH: usize = 256;
/// How long a record waits after its send broke down inside the gateway (a
/// panic, a store that could not be read or written).
const RETRY_AFTER_HOST_FAILURE: Duration = Duration::from_secs(1);
/// How soon a lane of a clustered store whose due records other nodes hold
/// (or that is at its `max_workers` across nodes) looks again.
const CLUSTER_POLL: Duration = Duration::from_secs(1);
/// The longest the task sleeps without looking again.
const LONGEST_SLEEP: Duration = Duration::from_secs(3_600);

struct Lane {
    repeater: RepeaterRef,
    /// Records not to fetch again: being sent, or sent and their outcome not
    /// yet durable.
    in_flight: HashSet<u64>,
    /// How many of `in_flight` are being sent (what `max_workers` counts).
    sending: usize,
    /// Due records fetched but not yet sent.
    buffer: VecDeque<u64>,
    /// The earliest due time not in `buffer`/`in_flight`, when known.
    next_due: Option<i64>,
    /// Records an operator made due now, to claim before the lane's queue
    /// (a clustered store: only claimed records are sent).
    wanted: VecDeque<u64>,
    /// Counts what made `next_due` earlier (records registered, released,
    /// a refresh), so that a fetch planned before one of them does not
    /// overwrite what it learnt (the fetch runs without the lanes' lock).
    due_changes: u64,
    health: Health,
}

impl Lane {
    fn new(repeater: RepeaterRef) -> Lane {
        Lane {
            repeater,
            in_flight: HashSet::new(),
            sending: 0,
            buffer: VecDeque::new(),
            next_due: Some(i64::MIN),
            wanted: VecDeque::new(),
            due_changes: 0,
            health: Health::default(),
        }
    }
}

/// What the scheduler works with, handed over at start.
pub struct Wiring {
    pub store: Store,
    pub catalog: Arc<Catalog>,
    pub delivery: Arc<Delivery>,
    pub plugins: Arc<PluginHost>,
    pub metrics: Arc<Metrics>,
    pub notifier: Notifier,
    /// `[retry]`: the policy of repeaters that set none.
    pub retry_defaults: RetryPolicy,
    pub clock: Clock,
}

struct Shared {
    with: Wiring,
    wake: Notify,
    lanes: Mutex<HashMap<u64, Lane>>,
    permits: Arc<Semaphore>,
    /// The number of `permits`.
    max_in_flight: usize,
    stopping: std::sync::atomic::AtomicBool,
    sends: tokio_util_like::TaskCounter,
    /// Outcomes of finished sends waiting to be committed.
    committing: Mutex<CommitQueue>,
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
    /// Starts the scheduling task; at most `max_in_flight` sends at once.
    pub fn start(with: Wiring, max_in_flight: usize) -> Scheduler {
        let plugins = with.plugins.clone();
        let shared = Arc::new(Shared {
            with,
            wake: Notify::new(),
            lanes: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            max_in_flight: max_in_flight.max(1),
            stopping: std::sync::atomic::AtomicBool::new(false),
            sends: tokio_util_like::TaskCounter::default(),
            committing: Mutex::new(CommitQueue::default()),
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
                    lane.due_changes += 1;
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
            let now = self.shared.with.clock.now_micros();
            let mut lanes = self.shared.lanes.lock().expect("lanes lock");
            // In a cluster a record is sent only once claimed: the released
            // records are claimed first, at the lane's next fetch.
            let clustered = self.shared.with.store.is_clustered();
            for (repeater_id, seq, _) in items.iter().take(FETCH_BATCH).rev() {
                if let Some(lane) = lanes.get_mut(repeater_id)
                    && !lane.in_flight.contains(seq)
                {
                    if clustered {
                        lane.wanted.retain(|queued| queued != seq);
                        lane.wanted.push_front(*seq);
                    } else {
                        lane.buffer.retain(|queued| queued != seq);
                        lane.buffer.push_front(*seq);
                    }
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
                    lane.due_changes += 1;
                }
            }
        }
        self.wake();
    }

    /// The records this node holds: being sent, sent and not yet
    /// committed, or claimed and about to be sent (a clustered store's
    /// leases on them are renewed while they are held).
    pub fn held_records(&self) -> Vec<u64> {
        let lanes = self.shared.lanes.lock().expect("lanes lock");
        lanes
            .values()
            .flat_map(|lane| lane.in_flight.iter().chain(lane.buffer.iter()).copied())
            .collect()
    }

    /// Whether the scheduler is shutting down (or has).
    pub fn is_stopping(&self) -> bool {
        self.shared
            .stopping
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every lane's (repeater id, consecutive failures, backing off until).
    pub fn lane_health(&self) -> Vec<(u64, u32, Option<i64>)> {
        let lanes = self.shared.lanes.lock().expect("lanes lock");
        lanes
            .values()
            .map(|lane| {
                (
                    lane.repeater.id,
                    lane.health.consecutive_failures,
                    lane.health.backoff_until,
                )
            })
            .collect()
    }

    /// Takes on what another node of the cluster learnt of a repeater's
    /// remote: its failures in a row and its back-off.
    pub fn adopt_health(
        &self,
        repeater_id: u64,
        consecutive_failures: u32,
        backoff_until: Option<i64>,
    ) {
        {
            let mut lanes = self.shared.lanes.lock().expect("lanes lock");
            let Some(lane) = lanes.get_mut(&repeater_id) else {
                return;
            };
            lane.health.consecutive_failures = consecutive_failures;
            lane.health.backoff_until = backoff_until;
            if consecutive_failures == 0 {
                lane.health.backoff_level = 0;
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
        let snapshot = self.shared.with.catalog.snapshot();
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
        let mut catalog_changes = self.shared.with.catalog.subscribe();
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
            let next_wake = match self.dispatch_due().await {
                Ok(next_wake) => next_wake,
                Err(error) => {
                    tracing::error!(%error, "scheduler could not read the queue; trying again in a second");
                    Some(self.shared.with.clock.after(RETRY_AFTER_HOST_FAILURE))
                }
            };
            let clock = self.shared.with.clock;
            let sleep = next_wake.map_or(LONGEST_SLEEP, |at| clock.until(at).min(LONGEST_SLEEP));
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = clock.sleep(sleep) => {}
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
    ///
    /// Three steps, so that the lanes' lock is never held while the store is
    /// read: plan under the lock (and note which lanes must fetch due
    /// records, and how many); fetch without it; then, under the lock again,
    /// fill the lanes' buffers and start the sends. Only this task starts
    /// sends, so the plan still holds after the fetches (sends that finished
    /// meanwhile only free slots).
    async fn dispatch_due(&self) -> Result<Option<i64>, crate::store::StoreError> {
        let now = self.shared.with.clock.now_micros();
        let store = &self.shared.with.store;
        // A store that cannot write could not record what a send did: no
        // send starts until it writes again (records stay as they are).
        if store.write_failure().is_some() {
            return Ok(Some(self.shared.with.clock.after(RETRY_AFTER_HOST_FAILURE)));
        }
        let (starts, fetches, mut next_wake) = self.plan_sends(now);
        let mut fetched = Vec::with_capacity(fetches.len());
        let mut failure = None;
        for fetch in fetches {
            match self.fetch_due(&fetch, now).await {
                Ok(found) => fetched.push((fetch, found)),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        let unsent = self.start_sends(starts, fetched, now, &mut next_wake);
        if !unsent.is_empty()
            && let Err(error) = store.release_leases(&unsent).await
        {
            tracing::warn!(%error, records = unsent.len(), "cannot give up the leases of records not sent; they wait for their leases to end");
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(next_wake),
        }
    }

    /// The plan of one round, under the lanes' lock: how many sends each lane
    /// starts (with its connection), which lanes must fetch due records
    /// first, and when to look again.
    fn plan_sends(&self, now: i64) -> (Vec<PlannedStarts>, Vec<DueFetch>, Option<i64>) {
        let snapshot = self.shared.with.catalog.snapshot();
        let clustered = self.shared.with.store.is_clustered();
        let lanes = self.shared.lanes.lock().expect("lanes lock");
        let mut connections = Vec::with_capacity(lanes.len());
        let views: Vec<LaneView> = lanes
            .values()
            .map(|lane| {
                let spec = &lane.repeater.spec;
                let connection = snapshot
                    .domain(&lane.repeater.domain)
                    .and_then(|domain| domain.connections.get(&spec.connection))
                    .cloned();
                let view = LaneView {
                    paused: spec.paused,
                    ready: connection.is_some() && self.shared.with.plugins.is_loaded(&spec.format),
                    max_workers: spec.max_workers,
                    sending: lane.sending,
                    health: lane.health.clone(),
                    buffered: lane.buffer.len(),
                    next_due: lane.next_due,
                };
                connections.push(connection);
                view
            })
            .collect();
        let plan = planner::plan(
            &views,
            self.shared.max_in_flight,
            self.shared.permits.available_permits(),
            now,
        );
        let mut starts = Vec::new();
        let mut fetches = Vec::new();
        for ((lane, lane_plan), connection) in lanes.values().zip(plan.lanes).zip(connections) {
            let (LanePlan::Send(n_starts), Some(connection)) = (lane_plan, connection) else {
                continue;
            };
            let buffered = lane.buffer.len();
            let due_now = lane.next_due.is_some_and(|at| at <= now) || !lane.wanted.is_empty();
            if buffered < n_starts && due_now {
                // A claim on PostgreSQL is a lease: claim only what is
                // about to be sent. redb reads ahead a batch.
                let limit = if clustered {
                    n_starts - buffered
                } else {
                    FETCH_BATCH
                };
                let mut skip = lane.in_flight.clone();
                skip.extend(lane.buffer.iter().copied());
                fetches.push(DueFetch {
                    repeater_id: lane.repeater.id,
                    limit,
                    max_workers: lane.repeater.spec.max_workers,
                    first: lane.wanted.iter().take(limit).copied().collect(),
                    due_changes: lane.due_changes,
                    skip,
                });
            }
            starts.push(PlannedStarts {
                repeater_id: lane.repeater.id,
                starts: n_starts,
                connection,
            });
        }
        (starts, fetches, plan.wake_at)
    }

    /// Reads (on PostgreSQL: claims) a lane's due records, and when the
    /// earliest one not fetched is due once all that is due now was.
    async fn fetch_due(
        &self,
        fetch: &DueFetch,
        now: i64,
    ) -> Result<FetchedDue, crate::store::StoreError> {
        let store = &self.shared.with.store;
        let mut due = if fetch.first.is_empty() {
            Vec::new()
        } else {
            store
                .claim_records(fetch.repeater_id, now, &fetch.first, fetch.max_workers)
                .await?
        };
        if due.len() < fetch.limit {
            let mut skip = fetch.skip.clone();
            skip.extend(due.iter().copied());
            let more = store
                .due_records(
                    fetch.repeater_id,
                    now,
                    fetch.limit - due.len(),
                    fetch.max_workers,
                    &skip,
                )
                .await?;
            due.extend(more);
        }
        let next_due = if due.len() < fetch.limit {
            let mut skip = fetch.skip.clone();
            skip.extend(due.iter().copied());
            Some(store.earliest_due(fetch.repeater_id, &skip).await?)
        } else {
            None
        };
        Ok(FetchedDue { due, next_due })
    }

    /// Fills the lanes' buffers with what was fetched and starts the planned
    /// sends, under the lanes' lock. Returns the records claimed from a
    /// clustered store but not sent (their leases are to be given up).
    fn start_sends(
        &self,
        planned: Vec<PlannedStarts>,
        fetched: Vec<(DueFetch, FetchedDue)>,
        now: i64,
        next_wake: &mut Option<i64>,
    ) -> Vec<u64> {
        let clustered = self.shared.with.store.is_clustered();
        let mut lanes = self.shared.lanes.lock().expect("lanes lock");
        let mut claimed: HashMap<u64, HashSet<u64>> = HashMap::new();
        let mut unsent = Vec::new();
        for (fetch, found) in fetched {
            let Some(lane) = lanes.get_mut(&fetch.repeater_id) else {
                unsent.extend(found.due);
                continue;
            };
            lane.wanted.retain(|seq| !fetch.first.contains(seq));
            let fresh: Vec<u64> = found
                .due
                .into_iter()
                .filter(|seq| !lane.in_flight.contains(seq) && !lane.buffer.contains(seq))
                .collect();
            if clustered {
                claimed.insert(fetch.repeater_id, fresh.iter().copied().collect());
            }
            lane.buffer.extend(fresh);
            if let Some(next_due) = found.next_due
                && lane.due_changes != fetch.due_changes
            {
                // Something became due while the fetch ran: keep what that
                // said, and look again.
                if let Some(at) = next_due {
                    lane.next_due = Some(lane.next_due.map_or(at, |known| known.min(at)));
                }
            } else if let Some(next_due) = found.next_due {
                lane.next_due = next_due;
                // Anything earlier than now that was skipped is in flight
                // here. In a cluster it may be held by another node or past
                // the repeater's `max_workers` there: look again shortly,
                // in case that node dies (its wake-ups come as events).
                if lane.next_due.is_some_and(|at| at <= now) && lane.buffer.is_empty() {
                    lane.next_due = clustered.then(|| crate::clock::add(now, CLUSTER_POLL));
                }
            }
        }
        for planned in planned {
            let Some(lane) = lanes.get_mut(&planned.repeater_id) else {
                continue;
            };
            for _ in 0..planned.starts {
                if lane.buffer.is_empty() {
                    if let Some(at) = lane.next_due {
                        *next_wake = Some(next_wake.map_or(at, |known| known.min(at)));
                    }
                    break;
                }
                let Ok(permit) = self.shared.permits.clone().try_acquire_owned() else {
                    // Every global slot is busy; a finishing send wakes us.
                    break;
                };
                let Some(seq) = lane.buffer.pop_front() else {
                    break;
                };
                self.spawn_send(lane, &planned.connection, seq, permit);
            }
            if let Some(claimed) = claimed.remove(&planned.repeater_id) {
                lane.buffer.retain(|seq| {
                    let keep = !claimed.contains(seq);
                    if !keep {
                        unsent.push(*seq);
                    }
                    keep
                });
            }
        }
        unsent
    }

    /// Starts the send of record `seq` of `lane` on a task of its own.
    fn spawn_send(
        &self,
        lane: &mut Lane,
        connection: &Arc<crate::catalog::StoredConnection>,
        seq: u64,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        lane.in_flight.insert(seq);
        lane.sending += 1;
        let task = SendTask {
            scheduler: self.clone(),
            repeater: lane.repeater.clone(),
            connection: connection.clone(),
            seq,
            guard: self.shared.sends.enter(),
        };
        let scheduler = self.clone();
        let repeater_id = lane.repeater.id;
        // Held by the task to its very end, after its scheduler handle, so
        // that a finished shutdown holds nothing of the store.
        let task_guard = self.shared.sends.enter();
        tokio::spawn(async move {
            use futures_util::FutureExt as _;
            // A bug in a send must not hold the lane's slot forever:
            // the record is released and tried again a second later.
            let sent = std::panic::AssertUnwindSafe(task.run())
                .catch_unwind()
                .await;
            let sent = match sent {
                Ok(sent) => sent,
                Err(_) => {
                    tracing::error!(
                        repeater_id,
                        seq,
                        "a send panicked; its record will be tried again"
                    );
                    let retry_at = scheduler.shared.with.clock.after(RETRY_AFTER_HOST_FAILURE);
                    scheduler.sent(repeater_id, None, &scheduler.shared.with.retry_defaults);
                    scheduler.release_uncommitted(&[(repeater_id, seq, Some(retry_at))]);
                    None
                }
            };
            // The send's slot is free once the remote has answered; its
            // record stays in flight until its outcome is durable. The task
            // is woken only now that the global slot is free too: had it
            // looked before, with every slot taken, it would sleep with due
            // records queued.
            drop(permit);
            scheduler.wake();
            if let Some(outcome) = sent
                && scheduler.hand_over(outcome)
            {
                scheduler.commit_outcomes().await;
            }
            drop(scheduler);
            drop(task_guard);
        });
    }

    /// A send of a record of `repeater_id` is over (with `outcome`, when an
    /// attempt was made): its slot is free, and the lane's health learns
    /// from the outcome at once, before it is committed.
    fn sent(&self, repeater_id: u64, outcome: Option<&Outcome>, policy: &RetryPolicy) {
        let mut lanes = self.shared.lanes.lock().expect("lanes lock");
        if let Some(lane) = lanes.get_mut(&repeater_id) {
            lane.sending = lane.sending.saturating_sub(1);
            if let Some(outcome) = outcome {
                let now = self.shared.with.clock.now_micros();
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
        }
        // No wake here: the send still holds its global slot, and letting
        // it go wakes the task (see `spawn_send`).
    }

    /// Records no longer in flight, as `(repeater id, seq, due again at)`:
    /// their lanes may fetch them again (when due again).
    fn release(&self, records: &[(u64, u64, Option<i64>)]) {
        // In a cluster a record released may free a place under the
        // repeater's `max_workers` for all nodes: its lane claims again now
        // rather than at its next poll.
        let now = self
            .shared
            .with
            .store
            .is_clustered()
            .then(|| self.shared.with.clock.now_micros());
        let mut lanes = self.shared.lanes.lock().expect("lanes lock");
        for &(repeater_id, seq, retry_at) in records {
            if let Some(lane) = lanes.get_mut(&repeater_id) {
                lane.in_flight.remove(&seq);
                lane.due_changes += 1;
                for at in [retry_at, now].into_iter().flatten() {
                    lane.next_due = Some(lane.next_due.map_or(at, |known| known.min(at)));
                }
            }
        }
        drop(lanes);
        self.wake();
    }

    /// Like `release`, for records whose send ended without a committed
    /// outcome: on a clustered store their leases are given up too, so
    /// that they need not wait for them to run out.
    fn release_uncommitted(&self, records: &[(u64, u64, Option<i64>)]) {
        self.release(records);
        if !self.shared.with.store.is_clustered() || records.is_empty() {
            return;
        }
        let store = self.shared.with.store.clone();
        let seqs: Vec<u64> = records.iter().map(|(_, seq, _)| *seq).collect();
        tokio::spawn(async move {
            if let Err(error) = store.release_leases(&seqs).await {
                tracing::warn!(%error, records = seqs.len(), "cannot give up the leases of records not sent; they wait for their leases to end");
            }
        });
    }

    /// Queues a finished send's outcome for the next commit; true when the
    /// caller is to commit it (no commit of outcomes is under way).
    fn hand_over(&self, outcome: SentOutcome) -> bool {
        let mut queue = self.shared.committing.lock().expect("commit queue lock");
        queue.waiting.push(outcome);
        !std::mem::replace(&mut queue.committing, true)
    }

    /// Commits the outcomes waiting, in one store job, then those that came
    /// in meanwhile, until none is left. Only one caller at a time (see
    /// `hand_over`), so outcomes gather while a commit waits for its fsync.
    async fn commit_outcomes(&self) {
        let mut batch = CommitBatch {
            scheduler: self,
            outcomes: Vec::new(),
        };
        loop {
            {
                let mut queue = self.shared.committing.lock().expect("commit queue lock");
                if queue.waiting.is_empty() {
                    queue.committing = false;
                    return;
                }
                std::mem::swap(&mut queue.waiting, &mut batch.outcomes);
            }
            let results = batch
                .outcomes
                .iter_mut()
                .map(|sent| sent.result.take().expect("an outcome is committed once"))
                .collect();
            let committed = self.commit_when_writable(results).await;
            let outcomes = std::mem::take(&mut batch.outcomes);
            let mut released = Vec::with_capacity(outcomes.len());
            match committed {
                Ok(committed) => {
                    for (sent, committed) in outcomes.into_iter().zip(committed) {
                        let retry_at = self.committed(&sent, committed);
                        released.push((sent.repeater.id, sent.seq, retry_at));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, records = outcomes.len(), "cannot commit the outcomes of attempts; their records will be sent again");
                    let retry_at = self.shared.with.clock.after(RETRY_AFTER_HOST_FAILURE);
                    let uncommitted: Vec<_> = outcomes
                        .iter()
                        .map(|sent| (sent.repeater.id, sent.seq, Some(retry_at)))
                        .collect();
                    self.release_uncommitted(&uncommitted);
                }
            }
            self.release(&released);
        }
    }

    /// Commits outcomes of attempts. While the store cannot write, they are
    /// kept here and committed once it can, so that no record is sent twice
    /// (no send starts meanwhile: `dispatch_due`); only shutting down gives
    /// up (the records are then sent again after the restart, under the
    /// same `Idempotency-Key`). Each try hands the store a copy, as a failed
    /// commit consumes what it was given.
    async fn commit_when_writable(
        &self,
        results: Vec<AttemptResult>,
    ) -> Result<Vec<crate::store::CommittedAttempt>, crate::store::StoreError> {
        let shared = &self.shared;
        let stopping = || shared.stopping.load(std::sync::atomic::Ordering::SeqCst);
        loop {
            let committed = shared.with.store.commit_attempts(results.clone()).await;
            if committed.is_ok() || stopping() || shared.with.store.write_failure().is_none() {
                return committed;
            }
            while shared.with.store.write_failure().is_some() && !stopping() {
                shared.with.clock.sleep(RETRY_AFTER_HOST_FAILURE).await;
            }
        }
    }

    /// What follows one committed outcome (metrics, error e-mails); returns
    /// when its record is due again.
    fn committed(
        &self,
        sent: &SentOutcome,
        committed: crate::store::CommittedAttempt,
    ) -> Option<i64> {
        let shared = &self.shared;
        match committed {
            Ok((committed_record, verdict)) => {
                if verdict == Verdict::Final(RecordState::Succeeded) {
                    shared.with.metrics.observe_success(
                        &sent.repeater.domain,
                        &sent.repeater.spec.name,
                        crate::clock::between(
                            committed_record.registered_at,
                            shared.with.clock.now_micros(),
                        ),
                    );
                }
                // Error e-mails (and "recovered" ones); never waits.
                shared.with.notifier.observe(
                    &sent.repeater.domain,
                    &sent.connection.spec,
                    &committed_record,
                    &sent.outcome,
                    sent.attempted_url.as_deref(),
                );
                match verdict {
                    Verdict::RetryAt(at) => Some(at),
                    Verdict::Final(_) => None,
                }
            }
            Err(error) => {
                tracing::error!(%error, seq = sent.seq, "cannot commit an attempt; the record will be sent again");
                Some(shared.with.clock.after(RETRY_AFTER_HOST_FAILURE))
            }
        }
    }
}

/// Sends a lane may start this round, as planned.
struct PlannedStarts {
    repeater_id: u64,
    starts: usize,
    connection: Arc<crate::catalog::StoredConnection>,
}

/// A lane's due records to fetch before its sends start.
struct DueFetch {
    repeater_id: u64,
    /// How many at most.
    limit: usize,
    /// The lane's `max_workers` (a clustered store holds it across nodes).
    max_workers: usize,
    /// Records to claim before the others (an operator released them).
    first: Vec<u64>,
    /// The lane's `due_changes` when the fetch was planned.
    due_changes: u64,
    /// In flight or buffered already.
    skip: HashSet<u64>,
}

/// What a fetch found.
struct FetchedDue {
    due: Vec<u64>,
    /// When fewer than asked for were due: when the earliest record not
    /// fetched is due (`Some(None)`: none is queued).
    next_due: Option<Option<i64>>,
}

/// The outcomes of finished sends, waiting for a commit.
#[derive(Default)]
struct CommitQueue {
    waiting: Vec<SentOutcome>,
    /// A task is committing outcomes (and will take those waiting too).
    committing: bool,
}

/// A send whose outcome is still to be committed; its record is in flight.
struct SentOutcome {
    repeater: RepeaterRef,
    connection: Arc<crate::catalog::StoredConnection>,
    seq: u64,
    /// Taken when the commit starts.
    result: Option<AttemptResult>,
    outcome: Outcome,
    attempted_url: Option<String>,
    /// Shutdown waits until the outcome is committed.
    _guard: tokio_util_like::TaskGuard,
}

/// The outcomes one commit holds. Should the committing task fail half-way
/// (a panic), dropping the batch releases what it still holds for another
/// send a second later and lets the next finished send commit.
struct CommitBatch<'a> {
    scheduler: &'a Scheduler,
    outcomes: Vec<SentOutcome>,
}

impl Drop for CommitBatch<'_> {
    fn drop(&mut self) {
        let shared = &self.scheduler.shared;
        if !std::thread::panicking() || shared.lanes.is_poisoned() {
            return;
        }
        let mut outcomes = std::mem::take(&mut self.outcomes);
        if let Ok(mut queue) = shared.committing.lock() {
            queue.committing = false;
            outcomes.append(&mut queue.waiting);
        }
        let retry_at = shared.with.clock.after(RETRY_AFTER_HOST_FAILURE);
        let released: Vec<(u64, u64, Option<i64>)> = outcomes
            .iter()
            .map(|sent| (sent.repeater.id, sent.seq, Some(retry_at)))
            .collect();
        self.scheduler.release_uncommitted(&released);
    }
}

/// One record being sent.
struct SendTask {
    scheduler: Scheduler,
    repeater: RepeaterRef,
    connection: Arc<crate::catalog::StoredConnection>,
    seq: u64,
    guard: tokio_util_like::TaskGuard,
}

impl SendTask {
    /// Sends the record; returns its outcome, to be committed, or `None`
    /// when nothing is to be committed (the record is released already).
    async fn run(self) -> Option<SentOutcome> {
        let shared = &self.scheduler.shared;
        let spec = &self.repeater.spec;
        let policy = spec.retry.as_ref().map_or_else(
            || shared.with.retry_defaults,
            |over| over.resolve(&shared.with.retry_defaults),
        );
        let repeater_id = self.repeater.id;
        let not_sent = |retry_at: Option<i64>| {
            self.scheduler.sent(repeater_id, None, &policy);
            self.scheduler
                .release_uncommitted(&[(repeater_id, self.seq, retry_at)]);
            None
        };
        let loaded = shared.with.store.load_for_send(self.seq).await;
        let (record, source) = match loaded {
            Ok(Some(found)) => found,
            Ok(None) => return not_sent(None),
            Err(error) => {
                tracing::error!(%error, seq = self.seq, "cannot read a record to send");
                return not_sent(Some(shared.with.clock.after(RETRY_AFTER_HOST_FAILURE)));
            }
        };
        // Stale entries (an operator acted since it was fetched) are skipped.
        if !record.state.is_queued()
            || record
                .next_attempt_at
                .is_none_or(|at| at > shared.with.clock.now_micros())
        {
            return not_sent(record.next_attempt_at);
        }
        let record_id = shared.with.store.record_id(self.seq);
        let started = shared.with.clock.instant();
        let result = shared
            .with
            .delivery
            .send(
                &record_id,
                &record,
                source,
                spec,
                &self.connection.spec,
                self.connection.origin,
            )
            .await;
        let (outcome, attempt) = match result {
            SendResult::Done { outcome, attempt } => (outcome, attempt),
            SendResult::PluginMissing(name) => {
                tracing::warn!(plugin = %name, repeater = %spec.name, "format plugin not loaded; records wait for it");
                return not_sent(Some(shared.with.clock.now_micros()));
            }
        };
        if attempt.is_some() {
            shared.with.metrics.observe_send(
                &self.repeater.domain,
                &spec.name,
                outcome.label(),
                started.elapsed(),
            );
        }
        self.scheduler.sent(repeater_id, Some(&outcome), &policy);
        let attempted_url = attempt.as_ref().map(|attempt| attempt.url.clone());
        let SendTask {
            repeater,
            connection,
            seq,
            guard,
            ..
        } = self;
        Some(SentOutcome {
            repeater,
            connection,
            seq,
            result: Some(AttemptResult {
                seq,
                outcome: outcome.clone(),
                attempt,
                policy,
                jitter_unit: fastrand::f64() * 2.0 - 1.0,
            }),
            outcome,
            attempted_url,
            _guard: guard,
        })
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
