//! The one storage interface the rest of the gateway uses: `Store`, either
//! the embedded redb file (`RedbStore`) or a PostgreSQL database several
//! nodes share (`PgStore`), as `[store] backend` says.
//!
//! Every operation that reads or writes is `async` here, whichever the
//! backend: PostgreSQL answers over the network. redb's reads are quick
//! enough to run on the caller's task as they always did; its writes go to
//! its writer thread. What only a cluster needs (leases on claimed records,
//! events from other nodes, shared health, cluster-wide locks) is a no-op or
//! a fixed answer on redb, where one process holds everything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::encoding::{decode, encode_json};
use super::postgres::{ClusterEvent, PgStore};
use super::{
    AttemptResult, CaseScope, CommittedAttempt, DomainStats, FormScope, IngestResult, Keep, Listed,
    ListedForm, ListingRange, ObjectChange, OldestKept, RecordFilter, RecordPage, RedbStore,
    RepeaterRef, RetainedForms, SendSource, StoreError, StoredNotification, Submission,
    WriteFailure,
};
use crate::clock::Clock;
use crate::model::{Case, StoredForm};
use crate::record::{AppChange, Attempt, OperatorAction, RecordState, RepeatRecord, Verdict};

/// The store of this gateway, on the backend the config names; cheap to
/// clone.
#[derive(Clone, Debug)]
pub enum Store {
    /// One file in `data_dir`, one process.
    Redb(RedbStore),
    /// A PostgreSQL database, any number of nodes.
    Postgres(PgStore),
}

/// A repeater's health as every node sees it: (consecutive failures,
/// backing off until, updated at), times in Unix micros.
pub type SharedHealth = (u32, Option<i64>, i64);

impl Store {
    /// Opens (or creates) the redb store of `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        RedbStore::open(data_dir).map(Store::Redb)
    }

    /// Connects to the PostgreSQL database at `url` (migrating its schema);
    /// a claimed record is this node's for `lease`; `clock` stamps times.
    pub async fn connect_postgres(
        url: &str,
        lease: Duration,
        clock: Clock,
        node_id: Option<String>,
    ) -> Result<Store, StoreError> {
        PgStore::connect_as(url, lease, clock, node_id)
            .await
            .map(Store::Postgres)
    }

    /// This store, stamping times by `clock`. A PostgreSQL store took its
    /// clock when it connected and is handed back as it is.
    pub fn with_clock(self, clock: Clock) -> Store {
        match self {
            Store::Redb(store) => Store::Redb(store.with_clock(clock)),
            Store::Postgres(store) => Store::Postgres(store),
        }
    }

    /// The redb file (`None` on PostgreSQL).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Store::Redb(store) => Some(store.path()),
            Store::Postgres(_) => None,
        }
    }

    /// Whether other nodes may share this store (records are claimed with
    /// leases, objects change under this node).
    pub fn is_clustered(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// How long a claim holds a record (`None`: claims are not leases).
    pub fn lease(&self) -> Option<Duration> {
        match self {
            Store::Redb(_) => None,
            Store::Postgres(store) => Some(store.lease()),
        }
    }

    /// What other nodes do from now on (`None`: there are none).
    pub fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<ClusterEvent>> {
        match self {
            Store::Redb(_) => None,
            Store::Postgres(store) => Some(store.subscribe()),
        }
    }

    /// The public id of a record.
    pub fn record_id(&self, seq: u64) -> String {
        match self {
            Store::Redb(store) => store.record_id(seq),
            Store::Postgres(store) => store.record_id(seq),
        }
    }

    /// The sequence number behind a public record id of this store.
    pub fn parse_record_id(&self, id: &str) -> Option<u64> {
        match self {
            Store::Redb(store) => store.parse_record_id(id),
            Store::Postgres(store) => store.parse_record_id(id),
        }
    }

    /// Why the store cannot write now (`None`: it can).
    pub fn write_failure(&self) -> Option<WriteFailure> {
        match self {
            Store::Redb(store) => store.write_failure(),
            Store::Postgres(store) => store.write_failure(),
        }
    }

    /// The size of the store's file, in bytes (`None` when it cannot be
    /// read, or there is no file).
    pub fn file_bytes(&self) -> Option<u64> {
        match self {
            Store::Redb(store) => store.file_bytes(),
            Store::Postgres(store) => store.file_bytes(),
        }
    }

    // ---- ingest ------------------------------------------------------------

    /// Stores a form, its case changes and its repeat records as
    /// `submission::plan` planned them (or a later part, or a duplicate),
    /// atomically.
    pub async fn commit_submission(
        &self,
        submission: Submission,
    ) -> Result<IngestResult, StoreError> {
        match self {
            Store::Redb(store) => store.commit_submission(submission).await,
            Store::Postgres(store) => store.commit_submission(submission).await,
        }
    }

    /// Registers one `app-schema` record per app-schema repeater of the domain.
    pub async fn register_app_change(
        &self,
        repeaters: Arc<Vec<RepeaterRef>>,
        app_id: String,
        change: AppChange,
        build_id: Option<String>,
    ) -> Result<Vec<(u64, i64)>, StoreError> {
        match self {
            Store::Redb(store) => {
                store
                    .register_app_change(repeaters, app_id, change, build_id)
                    .await
            }
            Store::Postgres(store) => {
                store
                    .register_app_change(repeaters, app_id, change, build_id)
                    .await
            }
        }
    }

    // ---- the queue ---------------------------------------------------------

    /// Up to `limit` records of one repeater due at `now` or earlier, oldest
    /// due first, skipping `skip` (those already being sent). On PostgreSQL
    /// they are claimed for this node (leases), and no more than
    /// `max_workers` are leased by all nodes together; redb has one node,
    /// whose scheduler counts its own workers.
    pub async fn due_records(
        &self,
        repeater_id: u64,
        now: i64,
        limit: usize,
        max_workers: usize,
        skip: &HashSet<u64>,
    ) -> Result<Vec<u64>, StoreError> {
        match self {
            Store::Redb(store) => store.due_records(repeater_id, now, limit, skip),
            Store::Postgres(store) => {
                store
                    .due_records(repeater_id, now, limit, max_workers, skip)
                    .await
            }
        }
    }

    /// When the earliest queued record of a repeater that is not in `skip` is due.
    pub async fn earliest_due(
        &self,
        repeater_id: u64,
        skip: &HashSet<u64>,
    ) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Redb(store) => store.earliest_due(repeater_id, skip),
            Store::Postgres(store) => store.earliest_due(repeater_id, skip).await,
        }
    }

    /// Claims the records `seqs` of a repeater that are queued and no node
    /// holds, within `max_workers` across the nodes; returns those claimed.
    /// Only a clustered store is asked (the scheduler sends redb's records
    /// straight from its buffer): redb hands `seqs` back as they are.
    pub async fn claim_records(
        &self,
        repeater_id: u64,
        now: i64,
        seqs: &[u64],
        max_workers: usize,
    ) -> Result<Vec<u64>, StoreError> {
        match self {
            Store::Redb(_) => Ok(seqs.to_vec()),
            Store::Postgres(store) => {
                store
                    .claim_records(repeater_id, now, seqs, max_workers)
                    .await
            }
        }
    }

    /// Extends this node's leases of `seqs` (records still being sent).
    pub async fn renew_leases(&self, seqs: &[u64]) -> Result<(), StoreError> {
        match self {
            // One process holds its records in memory (the scheduler's in
            // flight set): there is no lease to renew.
            Store::Redb(_) => Ok(()),
            Store::Postgres(store) => store.renew_leases(seqs).await,
        }
    }

    /// Gives up this node's leases of `seqs` (claimed, not sent).
    pub async fn release_leases(&self, seqs: &[u64]) -> Result<(), StoreError> {
        match self {
            // As for `renew_leases`: nothing outside this process to release.
            Store::Redb(_) => Ok(()),
            Store::Postgres(store) => store.release_leases(seqs).await,
        }
    }

    /// Record counts by (repeater id, state).
    pub async fn state_counts(&self) -> Result<BTreeMap<(u64, RecordState), u64>, StoreError> {
        match self {
            Store::Redb(store) => store.state_counts(),
            Store::Postgres(store) => store.state_counts().await,
        }
    }

    /// The oldest due time among all queued records (for the oldest-pending metric).
    pub async fn oldest_due(&self) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Redb(store) => store.oldest_due(),
            Store::Postgres(store) => store.oldest_due().await,
        }
    }

    /// Commits one attempt's outcome. Returns the record as committed.
    pub async fn commit_attempt(
        &self,
        result: AttemptResult,
    ) -> Result<(RepeatRecord, Verdict), StoreError> {
        match self {
            Store::Redb(store) => store.commit_attempt(result).await,
            Store::Postgres(store) => store.commit_attempt(result).await,
        }
    }

    /// Commits the outcomes of many attempts together: for each, in order,
    /// the record as committed or why that one was not. A storage failure
    /// fails them all.
    pub async fn commit_attempts(
        &self,
        results: Vec<AttemptResult>,
    ) -> Result<Vec<CommittedAttempt>, StoreError> {
        match self {
            Store::Redb(store) => store.commit_attempts(results).await,
            Store::Postgres(store) => store.commit_attempts(results).await,
        }
    }

    /// Applies an operator's action to one record. Returns the record after it.
    pub async fn operator_action(
        &self,
        seq: u64,
        action: OperatorAction,
    ) -> Result<RepeatRecord, StoreError> {
        match self {
            Store::Redb(store) => store.operator_action(seq, action).await,
            Store::Postgres(store) => store.operator_action(seq, action).await,
        }
    }

    /// Applies an action to every record of a domain that matches `filter`.
    /// Returns the records changed.
    pub async fn bulk_action(
        &self,
        domain: String,
        filter: RecordFilter,
        action: OperatorAction,
    ) -> Result<Vec<RepeatRecord>, StoreError> {
        match self {
            Store::Redb(store) => store.bulk_action(domain, filter, action).await,
            Store::Postgres(store) => store.bulk_action(domain, filter, action).await,
        }
    }

    /// Cancels every queued record of a repeater (when it is deleted).
    pub async fn cancel_repeater_records(&self, repeater_id: u64) -> Result<u64, StoreError> {
        match self {
            Store::Redb(store) => store.cancel_repeater_records(repeater_id).await,
            Store::Postgres(store) => store.cancel_repeater_records(repeater_id).await,
        }
    }

    // ---- reads -------------------------------------------------------------

    pub async fn record(&self, seq: u64) -> Result<Option<RepeatRecord>, StoreError> {
        match self {
            Store::Redb(store) => store.record(seq),
            Store::Postgres(store) => store.record(seq).await,
        }
    }

    pub async fn attempts(&self, seq: u64) -> Result<Vec<Attempt>, StoreError> {
        match self {
            Store::Redb(store) => store.attempts(seq),
            Store::Postgres(store) => store.attempts(seq).await,
        }
    }

    pub async fn form(
        &self,
        domain: &str,
        form_id: &str,
    ) -> Result<Option<StoredForm>, StoreError> {
        match self {
            Store::Redb(store) => store.form(domain, form_id),
            Store::Postgres(store) => store.form(domain, form_id).await,
        }
    }

    pub async fn form_xml(
        &self,
        domain: &str,
        form_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Redb(store) => store.form_xml(domain, form_id),
            Store::Postgres(store) => store.form_xml(domain, form_id).await,
        }
    }

    pub async fn case(&self, domain: &str, case_id: &str) -> Result<Option<Case>, StoreError> {
        match self {
            Store::Redb(store) => store.case(domain, case_id),
            Store::Postgres(store) => store.case(domain, case_id).await,
        }
    }

    /// Everything a send needs, read together: the record and what its
    /// payload refers to.
    pub async fn load_for_send(
        &self,
        seq: u64,
    ) -> Result<Option<(RepeatRecord, SendSource)>, StoreError> {
        match self {
            Store::Redb(store) => store.load_for_send(seq),
            Store::Postgres(store) => store.load_for_send(seq).await,
        }
    }

    /// One page of a domain's records, newest first. `cursor` is the
    /// `next_cursor` of the previous page.
    pub async fn list_records(
        &self,
        domain: &str,
        filter: &RecordFilter,
        limit: usize,
        cursor: Option<u64>,
    ) -> Result<RecordPage, StoreError> {
        match self {
            Store::Redb(store) => store.list_records(domain, filter, limit, cursor),
            Store::Postgres(store) => store.list_records(domain, filter, limit, cursor).await,
        }
    }

    // ---- the Data API --------------------------------------------------------

    /// A form's `indexed_on` (Unix micros).
    pub async fn form_indexed_on(
        &self,
        domain: &str,
        form_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Redb(store) => store.form_indexed_on(domain, form_id),
            Store::Postgres(store) => store.form_indexed_on(domain, form_id).await,
        }
    }

    /// A case's `indexed_on` (Unix micros).
    pub async fn case_indexed_on(
        &self,
        domain: &str,
        case_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Redb(store) => store.case_indexed_on(domain, case_id),
            Store::Postgres(store) => store.case_indexed_on(domain, case_id).await,
        }
    }

    /// One page of a domain's forms in `scope` (SPEC section 11): the forms
    /// kept by `keep`, skipping `page.0`, at most `page.1`, each with its XML
    /// and `indexed_on`; and how many match.
    pub async fn list_forms(
        &self,
        domain: &str,
        scope: &FormScope,
        range: &ListingRange,
        page: (usize, usize),
        keep: Keep<'_, StoredForm>,
    ) -> Result<Listed<ListedForm>, StoreError> {
        match self {
            Store::Redb(store) => store.list_forms(domain, scope, range, page, keep),
            Store::Postgres(store) => store.list_forms(domain, scope, range, page, keep).await,
        }
    }

    /// One page of a domain's cases in `scope`, as `list_forms`.
    pub async fn list_cases(
        &self,
        domain: &str,
        scope: &CaseScope,
        range: &ListingRange,
        page: (usize, usize),
        keep: Keep<'_, Case>,
    ) -> Result<Listed<(Case, i64)>, StoreError> {
        match self {
            Store::Redb(store) => store.list_cases(domain, scope, range, page, keep),
            Store::Postgres(store) => store.list_cases(domain, scope, range, page, keep).await,
        }
    }

    // ---- retention and stats ------------------------------------------------

    /// Deletes up to `limit` records in the final `state` since `cutoff`
    /// (Unix micros) or earlier, with their attempts; returns how many.
    pub async fn retain_records(
        &self,
        state: RecordState,
        cutoff: i64,
        limit: usize,
    ) -> Result<usize, StoreError> {
        match self {
            Store::Redb(store) => store.retain_records(state, cutoff, limit).await,
            Store::Postgres(store) => store.retain_records(state, cutoff, limit).await,
        }
    }

    /// Looks at up to `limit` forms of `domain` stored from `start` to
    /// `cutoff` and deletes those no `pending` or `failed` record needs.
    pub async fn retain_forms(
        &self,
        domain: &str,
        cutoff: i64,
        start: u64,
        limit: usize,
    ) -> Result<RetainedForms, StoreError> {
        match self {
            Store::Redb(store) => store.retain_forms(domain, cutoff, start, limit).await,
            Store::Postgres(store) => store.retain_forms(domain, cutoff, start, limit).await,
        }
    }

    /// Every domain that has stored a form.
    pub async fn form_domains(&self) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Redb(store) => store.form_domains(),
            Store::Postgres(store) => store.form_domains().await,
        }
    }

    /// The oldest of what retention keeps.
    pub async fn oldest_kept(&self) -> Result<OldestKept, StoreError> {
        match self {
            Store::Redb(store) => store.oldest_kept(),
            Store::Postgres(store) => store.oldest_kept().await,
        }
    }

    /// A domain's figures: records per state, forms, cases, XML bytes.
    pub async fn domain_stats(&self, domain: &str) -> Result<DomainStats, StoreError> {
        match self {
            Store::Redb(store) => store.domain_stats(domain),
            Store::Postgres(store) => store.domain_stats(domain).await,
        }
    }

    // ---- configured objects ------------------------------------------------

    /// Every stored object of one kind, as (domain, name, bytes).
    pub async fn objects(&self, kind: &str) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        match self {
            Store::Redb(store) => store.objects(kind),
            Store::Postgres(store) => store.objects(kind).await,
        }
    }

    /// Writes several objects (and deletions, as `None`) in one transaction;
    /// on PostgreSQL every node hears of it.
    pub async fn put_objects(&self, changes: Vec<ObjectChange>) -> Result<(), StoreError> {
        match self {
            Store::Redb(store) => store.put_objects(changes).await,
            Store::Postgres(store) => store.put_objects(changes).await,
        }
    }

    /// A fresh id for a repeater, unique in this store.
    pub async fn allocate_repeater_id(&self) -> Result<u64, StoreError> {
        match self {
            Store::Redb(store) => store.allocate_repeater_id().await,
            Store::Postgres(store) => store.allocate_repeater_id().await,
        }
    }

    /// The id of a repeater about to be stored for the first time. On
    /// PostgreSQL every node asking for the same (domain, name) gets the
    /// same id until `forget_repeater_id`; on redb one process holds the
    /// catalog's change lock, and a fresh id is simply allocated.
    pub async fn repeater_id_for(&self, domain: &str, name: &str) -> Result<u64, StoreError> {
        match self {
            Store::Redb(store) => store.allocate_repeater_id().await,
            Store::Postgres(store) => store.repeater_id_for(domain, name).await,
        }
    }

    /// A repeater was deleted: its name gets a fresh id when made again
    /// (nothing to do on redb, which never keeps one).
    pub async fn forget_repeater_id(&self, domain: &str, name: &str) -> Result<(), StoreError> {
        match self {
            Store::Redb(_) => Ok(()),
            Store::Postgres(store) => store.forget_repeater_id(domain, name).await,
        }
    }

    // ---- pending error e-mails ---------------------------------------------

    /// Every connection's pending notification state.
    pub async fn notifications<T: DeserializeOwned>(
        &self,
    ) -> Result<Vec<StoredNotification<T>>, StoreError> {
        match self {
            Store::Redb(store) => store.notifications(),
            Store::Postgres(store) => store.notifications().await,
        }
    }

    /// Writes (or, for `None`, removes) several connections' notification
    /// states in one transaction.
    pub async fn put_notifications<T: Serialize + Send + 'static>(
        &self,
        changes: Vec<(String, String, Option<T>)>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Redb(store) => store.put_notifications(changes).await,
            Store::Postgres(store) => store.put_notifications(changes).await,
        }
    }

    /// Queues observations for the node that owns the error e-mails (the
    /// holder of the lock "email"). On redb the only node owns them and
    /// hands its observations to itself in memory, so it never calls this;
    /// were it to, there is nobody else to queue for.
    pub async fn push_email_observations<T: Serialize>(
        &self,
        observations: &[T],
    ) -> Result<(), StoreError> {
        match self {
            Store::Redb(_) => Ok(()),
            Store::Postgres(store) => {
                let encoded = observations.iter().map(encode_json).collect();
                store.push_email_observations(encoded).await
            }
        }
    }

    /// Takes (and removes) up to `limit` observations other nodes queued,
    /// oldest first; one that cannot be read is an `Err` in its place. On
    /// redb nobody queues any.
    pub async fn take_email_observations<T: DeserializeOwned>(
        &self,
        limit: usize,
    ) -> Result<Vec<Result<T, StoreError>>, StoreError> {
        match self {
            Store::Redb(_) => Ok(Vec::new()),
            Store::Postgres(store) => Ok(store
                .take_email_observations(limit)
                .await?
                .iter()
                .map(|value| decode(value, || "an error-e-mail observation".to_owned()))
                .collect()),
        }
    }

    // ---- the cluster ---------------------------------------------------------

    /// Records a repeater's back-off for every node (redb: the scheduler's
    /// own memory is all there is, so nothing is written).
    pub async fn put_health(
        &self,
        repeater_id: u64,
        consecutive_failures: u32,
        backoff_until: Option<i64>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Redb(_) => Ok(()),
            Store::Postgres(store) => {
                store
                    .put_health(repeater_id, consecutive_failures, backoff_until)
                    .await
            }
        }
    }

    /// Every repeater's health as the nodes recorded it (redb: none).
    pub async fn cluster_health(&self) -> Result<HashMap<u64, SharedHealth>, StoreError> {
        match self {
            Store::Redb(_) => Ok(HashMap::new()),
            Store::Postgres(store) => store.cluster_health().await,
        }
    }

    /// Takes (or confirms this node holds) the cluster-wide lock `name`:
    /// true while this node holds it. On redb the only node always does.
    pub async fn hold_lock(&self, name: &str) -> Result<bool, StoreError> {
        match self {
            Store::Redb(_) => Ok(true),
            Store::Postgres(store) => store.hold_lock(name).await,
        }
    }
}
