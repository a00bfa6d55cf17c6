//! The durable store: forms, cases, repeat records, their attempts and the
//! configured objects, in one redb file. Only this module knows redb.
//!
//! Writes go through one writer thread that groups whatever jobs are waiting
//! into a single write transaction committed with `Durability::Immediate`
//! (group commit): a form, its case changes and its repeat records are one job,
//! so they become durable together, and many forms share one fsync under load.
//! A job's result is handed back only after its transaction is durable.
//! Reads use their own read transactions and never wait for the writer.
//!
//! Records are keyed by a sequence number; their public id (also the
//! `Idempotency-Key`) is that number prefixed with a random per-store nonce,
//! so two data directories never hand out the same id.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cases::{self, FormContext};
use crate::config::{PayloadKind, RepeaterSpec, RetryPolicy};
use crate::filters;
use crate::model::{Case, StoredForm};
use crate::record::{
    self, AppChange, Attempt, OperatorAction, Outcome, PayloadRef, RecordState, RepeatRecord,
    Verdict,
};
use crate::xform::CaseBlock;

/// Bumped when an encoding below changes incompatibly.
const SCHEMA_VERSION: u64 = 1;
/// The first byte of every encoded value.
const ENCODING_VERSION: u8 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (domain, form id) → `StoredForm`.
const FORMS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("forms");
/// (domain, form id) → the submitted XML, byte for byte.
const FORM_XML: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("form_xml");
/// (domain, case id) → `Case`.
const CASES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("cases");
/// seq → `RepeatRecord`.
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// (repeater id, due micros, seq): every queued record, in the order it is due.
const DUE: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("due");
/// (seq, attempt number) → `Attempt`.
const ATTEMPTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("attempts");
/// (domain, seq): a domain's records, for listings.
const DOMAIN_RECORDS: TableDefinition<(&str, u64), ()> = TableDefinition::new("domain_records");
/// (domain, payload id, seq): records by form, case or app id.
const PAYLOAD_RECORDS: TableDefinition<(&str, &str, u64), ()> =
    TableDefinition::new("payload_records");
/// (repeater id, state) → how many records are in that state.
const STATE_COUNTS: TableDefinition<(u64, &str), u64> = TableDefinition::new("state_counts");
/// (kind, domain, name) → an object declared in the config or through the API.
const OBJECTS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("objects");
/// (domain, connection) → what the connection's contacts are still owed an
/// e-mail about (see `email`).
const NOTIFICATIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("notifications");

/// redb's page cache. Its default (1 GiB) would let a large queue grow the
/// process far past what a gateway should hold; the working set (the due
/// index's head, recent forms and cases) fits easily in this.
const CACHE_BYTES: usize = 64 << 20;

/// How many jobs one group commit takes at most.
const MAX_JOBS_PER_COMMIT: usize = 2_048;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    #[error("store: {0}")]
    Storage(String),
    #[error("store: {what} is not readable: {problem}")]
    Corrupt { what: String, problem: String },
    #[error("store {path} has schema version {found}; this repeatd reads version {SCHEMA_VERSION}")]
    SchemaVersion { path: PathBuf, found: u64 },
    #[error("no record {0}")]
    NoRecord(String),
    #[error("the store's writer has stopped")]
    WriterGone,
}

macro_rules! storage_error_from {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                StoreError::Storage(error.to_string())
            }
        }
    )*};
}
storage_error_from!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

type Completion = Box<dyn FnOnce(Result<(), Arc<String>>) + Send>;
/// A job returns its completion and whether it may have left partial writes
/// behind (a storage error part-way): then the whole batch is abandoned.
type Job = Box<dyn FnOnce(&WriteTransaction) -> (Completion, bool) + Send>;

/// A form ready to be committed: parsed, authenticated, not yet stored.
#[derive(Debug)]
pub struct Submission {
    pub form: StoredForm,
    pub xml: Vec<u8>,
    pub case_blocks: Vec<CaseBlock>,
    /// The domain's repeaters when the form arrived.
    pub repeaters: Arc<Vec<RepeaterRef>>,
}

/// A repeater as the store needs it: its key in the due index and its spec.
#[derive(Debug, Clone)]
pub struct RepeaterRef {
    pub id: u64,
    pub domain: String,
    pub spec: Arc<RepeaterSpec>,
}

/// What committing a submission did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestResult {
    Accepted {
        /// (repeater id, due micros) of every record registered.
        registered: Vec<(u64, i64)>,
    },
    Duplicate,
}

/// A record listing's filter (SPEC section 9).
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    pub state: Option<RecordState>,
    pub repeater: Option<String>,
    pub payload_id: Option<String>,
}

impl RecordFilter {
    fn matches(&self, record: &RepeatRecord) -> bool {
        self.state.is_none_or(|state| record.state == state)
            && self
                .repeater
                .as_deref()
                .is_none_or(|name| record.repeater == name)
            && self
                .payload_id
                .as_deref()
                .is_none_or(|id| record.payload.payload_id() == id)
    }
}

/// One page of a listing.
#[derive(Debug)]
pub struct RecordPage {
    pub records: Vec<RepeatRecord>,
    pub next_cursor: Option<u64>,
}

/// The result of one attempt, to be committed.
#[derive(Debug)]
pub struct AttemptResult {
    pub seq: u64,
    pub outcome: Outcome,
    /// `None` when no HTTP request was made (the plugin had nothing to send
    /// or failed).
    pub attempt: Option<Attempt>,
    pub policy: RetryPolicy,
    pub jitter_unit: f64,
}

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writer: mpsc::Sender<Job>,
    nonce: u64,
    next_seq: Arc<AtomicU64>,
    path: PathBuf,
    /// Where "now" comes from for the times the store stamps.
    clock: crate::clock::Clock,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![ENCODING_VERSION];
    serde_json::to_writer(&mut bytes, value).expect("store values serialize");
    bytes
}

fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&ENCODING_VERSION, json)) => {
            serde_json::from_slice(json).map_err(|error| StoreError::Corrupt {
                what: what(),
                problem: error.to_string(),
            })
        }
        Some((version, _)) => Err(StoreError::Corrupt {
            what: what(),
            problem: format!("unknown encoding version {version}"),
        }),
        None => Err(StoreError::Corrupt {
            what: what(),
            problem: "empty value".into(),
        }),
    }
}

impl Store {
    /// Opens (or creates) `data_dir/repeatd.redb` and starts the writer thread.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|error| {
            StoreError::Storage(format!("creating {}: {error}", data_dir.display()))
        })?;
        let path = data_dir.join("repeatd.redb");
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source: Box::new(source),
            })?;
        let txn = db.begin_write()?;
        let nonce;
        let last_seq;
        {
            let mut meta = txn.open_table(META)?;
            let found_version = meta.get("schema_version")?.map(|v| v.value());
            match found_version {
                Some(found) if found != SCHEMA_VERSION => {
                    return Err(StoreError::SchemaVersion { path, found });
                }
                Some(_) => {}
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
            }
            let existing_nonce = meta.get("nonce")?.map(|v| v.value());
            nonce = match existing_nonce {
                Some(nonce) => nonce,
                None => {
                    let mut bytes = [0u8; 8];
                    getrandom::fill(&mut bytes)
                        .map_err(|e| StoreError::Storage(format!("no randomness: {e}")))?;
                    let nonce = u64::from_le_bytes(bytes) >> 1;
                    meta.insert("nonce", nonce)?;
                    nonce
                }
            };
            // Create every table so that readers never meet a missing one.
            txn.open_table(FORMS)?;
            txn.open_table(FORM_XML)?;
            txn.open_table(CASES)?;
            txn.open_table(DUE)?;
            txn.open_table(ATTEMPTS)?;
            txn.open_table(DOMAIN_RECORDS)?;
            txn.open_table(PAYLOAD_RECORDS)?;
            txn.open_table(STATE_COUNTS)?;
            txn.open_table(OBJECTS)?;
            txn.open_table(NOTIFICATIONS)?;
            let records = txn.open_table(RECORDS)?;
            last_seq = records.last()?.map(|(key, _)| key.value()).unwrap_or(0);
        }
        txn.commit()?;
        let db = Arc::new(db);
        let (writer, jobs) = mpsc::channel::<Job>();
        // Weak: the file must close when the last `Store` is dropped, not
        // whenever the writer thread gets round to exiting (a restart in the
        // same process opens it again at once).
        let writer_db = Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run_writer(&writer_db, &jobs))
            .map_err(|error| StoreError::Storage(format!("starting the writer thread: {error}")))?;
        Ok(Store {
            db,
            writer,
            nonce,
            next_seq: Arc::new(AtomicU64::new(last_seq + 1)),
            path,
            clock: crate::clock::Clock::system(),
        })
    }

    /// This store, stamping times by `clock` instead of the wall clock.
    pub fn with_clock(self, clock: crate::clock::Clock) -> Store {
        Store { clock, ..self }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public id of a record.
    pub fn record_id(&self, seq: u64) -> String {
        format!("{:016x}{seq:016x}", self.nonce)
    }

    /// The sequence number behind a public record id of this store.
    pub fn parse_record_id(&self, id: &str) -> Option<u64> {
        if id.len() != 32 || !id.is_ascii() {
            return None;
        }
        let nonce = u64::from_str_radix(&id[..16], 16).ok()?;
        let seq = u64::from_str_radix(&id[16..], 16).ok()?;
        (nonce == self.nonce).then_some(seq)
    }

    fn allocate_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `job` inside the next group commit and returns its result once
    /// that commit is durable. A job that returns `Err` must not have written.
    pub async fn write<R, F>(&self, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.enqueue(job, move |result| {
            let _ = reply.send(result);
        })?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Like `write`, for threads outside the async runtime.
    pub fn write_blocking<R, F>(&self, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel(1);
        self.enqueue(job, move |result| {
            let _ = reply.send(result);
        })?;
        answer.recv().map_err(|_| StoreError::WriterGone)?
    }

    fn enqueue<R, F>(
        &self,
        job: F,
        reply: impl FnOnce(Result<R, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<R, StoreError> + Send + 'static,
    {
        let boxed: Job = Box::new(move |txn| {
            let result = job(txn);
            // Logical refusals (no such record) are returned before any write;
            // a storage or decoding error may strike after some.
            let poisoned = matches!(
                result,
                Err(StoreError::Storage(_) | StoreError::Corrupt { .. })
            );
            let completion: Completion = Box::new(move |commit: Result<(), Arc<String>>| {
                let result = match (result, commit) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Err(error), _) => Err(error),
                    (Ok(_), Err(commit_error)) => {
                        Err(StoreError::Storage(commit_error.to_string()))
                    }
                };
                reply(result);
            });
            (completion, poisoned)
        });
        self.writer.send(boxed).map_err(|_| StoreError::WriterGone)
    }

    // ---- ingest ------------------------------------------------------------

    /// Stores a form, applies its case blocks and registers the repeat records
    /// of every repeater that wants it, in one transaction.
    pub async fn commit_submission(
        &self,
        submission: Submission,
    ) -> Result<IngestResult, StoreError> {
        let store = self.clone();
        self.write(move |txn| store.ingest_in(txn, submission))
            .await
    }

    fn ingest_in(
        &self,
        txn: &WriteTransaction,
        submission: Submission,
    ) -> Result<IngestResult, StoreError> {
        let Submission {
            mut form,
            xml,
            case_blocks,
            repeaters,
        } = submission;
        let domain = form.domain.clone();
        let form_id = form.form_id.clone();
        let mut forms = txn.open_table(FORMS)?;
        let existing = forms
            .get((domain.as_str(), form_id.as_str()))?
            .map(|v| v.value().to_vec());
        if let Some(existing) = existing {
            let mut stored: StoredForm = decode(&existing, || format!("form {form_id}"))?;
            stored.n_duplicates += 1;
            stored.last_duplicate_on = Some(form.received_on.clone());
            forms.insert(
                (domain.as_str(), form_id.as_str()),
                encode(&stored).as_slice(),
            )?;
            return Ok(IngestResult::Duplicate);
        }

        let received_micros = crate::time::parse_timestamp(&form.received_on)
            .unwrap_or_else(|| self.clock.now_micros());
        // Apply the case blocks in document order; remember, per case, whether
        // this form created it.
        let mut touched: Vec<(String, bool)> = Vec::new();
        let mut cases_table = txn.open_table(CASES)?;
        let context = FormContext {
            domain: &domain,
            form_id: &form_id,
            received_on: &form.received_on,
            form_user_id: form.user_id.as_deref(),
            form_time_end: form.time_end.as_deref(),
        };
        let mut latest: BTreeMap<String, Case> = BTreeMap::new();
        for block in &case_blocks {
            let current = match latest.remove(&block.case_id) {
                Some(case) => Some(case),
                None => match cases_table.get((domain.as_str(), block.case_id.as_str()))? {
                    Some(bytes) => Some(decode::<Case>(bytes.value(), || {
                        format!("case {}", block.case_id)
                    })?),
                    None => None,
                },
            };
            let created_now = current.is_none();
            let updated = cases::apply_block(current, block, &context);
            match touched.iter_mut().find(|(id, _)| *id == block.case_id) {
                Some(_) => {}
                None => touched.push((block.case_id.clone(), created_now)),
            }
            latest.insert(block.case_id.clone(), updated);
        }
        for (case_id, case) in &latest {
            cases_table.insert((domain.as_str(), case_id.as_str()), encode(case).as_slice())?;
        }
        form.case_ids = touched.iter().map(|(id, _)| id.clone()).collect();
        forms.insert(
            (domain.as_str(), form_id.as_str()),
            encode(&form).as_slice(),
        )?;
        txn.open_table(FORM_XML)?
            .insert((domain.as_str(), form_id.as_str()), xml.as_slice())?;

        let mut registered = Vec::new();
        for repeater in repeaters.iter() {
            let spec = &repeater.spec;
            match spec.kind {
                PayloadKind::Form | PayloadKind::FormStub => {
                    if filters::wants_form(spec, &form) {
                        let payload = PayloadRef::Form {
                            form_id: form_id.clone(),
                        };
                        self.register_in(txn, repeater, payload, received_micros)?;
                        registered.push((repeater.id, received_micros));
                    }
                }
                PayloadKind::Case => {
                    for (case_id, created) in &touched {
                        let case = &latest[case_id];
                        if filters::wants_case(spec, case, *created, &form) {
                            let payload = PayloadRef::Case {
                                case_id: case_id.clone(),
                            };
                            self.register_in(txn, repeater, payload, received_micros)?;
                            registered.push((repeater.id, received_micros));
                        }
                    }
                }
                PayloadKind::AppSchema => {}
            }
        }
        Ok(IngestResult::Accepted { registered })
    }

    /// Registers one `app-schema` record per app-schema repeater of the domain.
    pub async fn register_app_change(
        &self,
        repeaters: Arc<Vec<RepeaterRef>>,
        app_id: String,
        change: AppChange,
        build_id: Option<String>,
    ) -> Result<Vec<(u64, i64)>, StoreError> {
        let store = self.clone();
        self.write(move |txn| {
            let now = store.clock.now_micros();
            let mut registered = Vec::new();
            for repeater in repeaters
                .iter()
                .filter(|r| r.spec.kind == PayloadKind::AppSchema)
            {
                let payload = PayloadRef::App {
                    app_id: app_id.clone(),
                    change,
                    build_id: build_id.clone(),
                };
                store.register_in(txn, repeater, payload, now)?;
                registered.push((repeater.id, now));
            }
            Ok(registered)
        })
        .await
    }

    fn register_in(
        &self,
        txn: &WriteTransaction,
        repeater: &RepeaterRef,
        payload: PayloadRef,
        now: i64,
    ) -> Result<(), StoreError> {
        let seq = self.allocate_seq();
        let record = RepeatRecord::new(
            seq,
            &repeater.domain,
            &repeater.spec.name,
            repeater.id,
            repeater.spec.kind,
            payload,
            now,
        );
        txn.open_table(DOMAIN_RECORDS)?
            .insert((record.domain.as_str(), seq), ())?;
        txn.open_table(PAYLOAD_RECORDS)?.insert(
            (record.domain.as_str(), record.payload.payload_id(), seq),
            (),
        )?;
        write_record(txn, None, &record)?;
        Ok(())
    }

    // ---- the queue ---------------------------------------------------------

    /// Up to `limit` records of one repeater due at `now` or earlier, oldest
    /// due first, skipping `skip` (those already being sent).
    pub fn due_records(
        &self,
        repeater_id: u64,
        now: i64,
        limit: usize,
        skip: &HashSet<u64>,
    ) -> Result<Vec<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let due = txn.open_table(DUE)?;
        let mut found = Vec::new();
        for entry in due.range((repeater_id, 0, 0)..=(repeater_id, now.max(0) as u64, u64::MAX))? {
            let (key, _) = entry?;
            let (_, _, seq) = key.value();
            if !skip.contains(&seq) {
                found.push(seq);
                if found.len() >= limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// When the earliest queued record of a repeater that is not in `skip` is due.
    pub fn earliest_due(
        &self,
        repeater_id: u64,
        skip: &HashSet<u64>,
    ) -> Result<Option<i64>, StoreError> {
        let txn = self.db.begin_read()?;
        let due = txn.open_table(DUE)?;
        for entry in due.range((repeater_id, 0, 0)..=(repeater_id, u64::MAX, u64::MAX))? {
            let (key, _) = entry?;
            let (_, at, seq) = key.value();
            if !skip.contains(&seq) {
                return Ok(Some(at as i64));
            }
        }
        Ok(None)
    }

    /// Record counts by (repeater id, state).
    pub fn state_counts(&self) -> Result<BTreeMap<(u64, RecordState), u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STATE_COUNTS)?;
        let mut counts = BTreeMap::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let (repeater_id, state) = key.value();
            if let Ok(state) = state.parse::<RecordState>() {
                counts.insert((repeater_id, state), value.value());
            }
        }
        Ok(counts)
    }

    /// The oldest due time among all queued records (for the oldest-pending metric).
    pub fn oldest_due(&self) -> Result<Option<i64>, StoreError> {
        let txn = self.db.begin_read()?;
        let due = txn.open_table(DUE)?;
        let mut oldest: Option<u64> = None;
        // The index is ordered by repeater first: take each repeater's head.
        let mut cursor = 0u64;
        loop {
            let mut range = due.range((cursor, 0, 0)..)?;
            let Some(entry) = range.next() else { break };
            let (key, _) = entry?;
            let (repeater_id, at, _) = key.value();
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
            match repeater_id.checked_add(1) {
                Some(next) => cursor = next,
                None => break,
            }
        }
        Ok(oldest.map(|at| at as i64))
    }

    /// Commits one attempt's outcome: the record's new state, the attempt and
    /// the due index, in one transaction. Returns the record as committed.
    pub async fn commit_attempt(
        &self,
        result: AttemptResult,
    ) -> Result<(RepeatRecord, Verdict), StoreError> {
        let clock = self.clock;
        self.write(move |txn| {
            let before = read_record(txn, result.seq)?;
            let mut record = before.clone();
            let now = result
                .attempt
                .as_ref()
                .map_or_else(|| clock.now_micros(), |a| a.at);
            // Due after the attempt began: an operator resent or requeued it
            // while it was being sent.
            let resent_meanwhile = record.state == RecordState::Pending
                && record.next_attempt_at.is_some_and(|at| at > now);
            let verdict = if resent_meanwhile {
                // Keep the attempt, and send again as the operator asked.
                record.last_attempt_at = Some(now);
                if !matches!(result.outcome, Outcome::Empty) {
                    record.n_attempts += 1;
                }
                match &result.outcome {
                    Outcome::Retryable { error, .. } | Outcome::Rejected { error, .. } => {
                        record.last_error = Some(error.clone());
                    }
                    Outcome::Success { .. } => record.last_error = None,
                    Outcome::Empty => {}
                }
                Verdict::RetryAt(record.next_attempt_at.unwrap_or(now))
            } else if record.state.is_queued() {
                record::after_attempt(
                    &mut record,
                    &result.outcome,
                    &result.policy,
                    now,
                    result.jitter_unit,
                )
            } else {
                // An operator changed the record while it was being sent: keep
                // their decision, but a success is still a success.
                record.last_attempt_at = Some(now);
                if !matches!(result.outcome, Outcome::Empty) {
                    record.n_attempts += 1;
                }
                if let Outcome::Success { .. } = result.outcome {
                    record.state = RecordState::Succeeded;
                    record.next_attempt_at = None;
                }
                Verdict::Final(record.state)
            };
            if let Some(mut attempt) = result.attempt {
                attempt.number = record.n_attempts;
                txn.open_table(ATTEMPTS)?
                    .insert((record.seq, attempt.number), encode(&attempt).as_slice())?;
            }
            write_record(txn, Some(&before), &record)?;
            Ok((record, verdict))
        })
        .await
    }

    /// Applies an operator's action to one record. Returns the record after it.
    pub async fn operator_action(
        &self,
        seq: u64,
        action: OperatorAction,
    ) -> Result<RepeatRecord, StoreError> {
        let clock = self.clock;
        self.write(move |txn| {
            let before = read_record(txn, seq)?;
            let mut record = before.clone();
            if record::apply_operator(&mut record, action, clock.now_micros()) {
                write_record(txn, Some(&before), &record)?;
            }
            Ok(record)
        })
        .await
    }

    /// Applies an action to every record of a domain that matches `filter`
    /// (and, when `repeater_ids` is given, belongs to one of them). Returns the
    /// records changed.
    pub async fn bulk_action(
        &self,
        domain: String,
        filter: RecordFilter,
        action: OperatorAction,
    ) -> Result<Vec<RepeatRecord>, StoreError> {
        let seqs: Vec<u64> = {
            let txn = self.db.begin_read()?;
            let index = txn.open_table(DOMAIN_RECORDS)?;
            let records = txn.open_table(RECORDS)?;
            let mut seqs = Vec::new();
            for entry in index.range((domain.as_str(), 0)..=(domain.as_str(), u64::MAX))? {
                let (key, _) = entry?;
                let seq = key.value().1;
                if let Some(bytes) = records.get(seq)? {
                    let record: RepeatRecord = decode(bytes.value(), || format!("record {seq}"))?;
                    if filter.matches(&record) {
                        seqs.push(seq);
                    }
                }
            }
            seqs
        };
        let mut changed = Vec::new();
        // Chunks keep each transaction small enough not to stall ingest.
        for chunk in seqs.chunks(1_000) {
            let chunk = chunk.to_vec();
            let filter = filter.clone();
            let clock = self.clock;
            let mut done = self
                .write(move |txn| {
                    let now = clock.now_micros();
                    let mut changed = Vec::new();
                    for seq in chunk {
                        let before = read_record(txn, seq)?;
                        if !filter.matches(&before) {
                            continue;
                        }
                        let mut record = before.clone();
                        if record::apply_operator(&mut record, action, now) {
                            write_record(txn, Some(&before), &record)?;
                            changed.push(record);
                        }
                    }
                    Ok(changed)
                })
                .await?;
            changed.append(&mut done);
        }
        Ok(changed)
    }

    /// Cancels every queued record of a repeater (when it is deleted).
    pub async fn cancel_repeater_records(&self, repeater_id: u64) -> Result<u64, StoreError> {
        let mut total = 0;
        let clock = self.clock;
        loop {
            let n = self
                .write(move |txn| {
                    let seqs: Vec<u64> = {
                        let due = txn.open_table(DUE)?;
                        let mut seqs = Vec::new();
                        for entry in
                            due.range((repeater_id, 0, 0)..=(repeater_id, u64::MAX, u64::MAX))?
                        {
                            seqs.push(entry?.0.value().2);
                            if seqs.len() >= 1_000 {
                                break;
                            }
                        }
                        seqs
                    };
                    for seq in &seqs {
                        let before = read_record(txn, *seq)?;
                        let mut record = before.clone();
                        record::apply_operator(
                            &mut record,
                            OperatorAction::Cancel,
                            clock.now_micros(),
                        );
                        write_record(txn, Some(&before), &record)?;
                    }
                    Ok(seqs.len() as u64)
                })
                .await?;
            total += n;
            if n == 0 {
                return Ok(total);
            }
        }
    }

    // ---- reads -------------------------------------------------------------

    pub fn record(&self, seq: u64) -> Result<Option<RepeatRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        match table.get(seq)? {
            Some(bytes) => Ok(Some(decode(bytes.value(), || format!("record {seq}"))?)),
            None => Ok(None),
        }
    }

    pub fn attempts(&self, seq: u64) -> Result<Vec<Attempt>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ATTEMPTS)?;
        let mut attempts = Vec::new();
        for entry in table.range((seq, 0)..=(seq, u32::MAX))? {
            let (_, value) = entry?;
            attempts.push(decode(value.value(), || {
                format!("attempt of record {seq}")
            })?);
        }
        Ok(attempts)
    }

    pub fn form(&self, domain: &str, form_id: &str) -> Result<Option<StoredForm>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FORMS)?;
        match table.get((domain, form_id))? {
            Some(bytes) => Ok(Some(decode(bytes.value(), || format!("form {form_id}"))?)),
            None => Ok(None),
        }
    }

    pub fn form_xml(&self, domain: &str, form_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FORM_XML)?;
        Ok(table
            .get((domain, form_id))?
            .map(|bytes| bytes.value().to_vec()))
    }

    pub fn case(&self, domain: &str, case_id: &str) -> Result<Option<Case>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CASES)?;
        match table.get((domain, case_id))? {
            Some(bytes) => Ok(Some(decode(bytes.value(), || format!("case {case_id}"))?)),
            None => Ok(None),
        }
    }

    /// Everything a send needs in one read transaction: the record and what
    /// its payload refers to.
    pub fn load_for_send(
        &self,
        seq: u64,
    ) -> Result<Option<(RepeatRecord, SendSource)>, StoreError> {
        let txn = self.db.begin_read()?;
        let records = txn.open_table(RECORDS)?;
        let Some(bytes) = records.get(seq)? else {
            return Ok(None);
        };
        let record: RepeatRecord = decode(bytes.value(), || format!("record {seq}"))?;
        let domain = record.domain.as_str();
        let source = match &record.payload {
            PayloadRef::Form { form_id } => {
                let forms = txn.open_table(FORMS)?;
                let xml = txn.open_table(FORM_XML)?;
                match (
                    forms.get((domain, form_id.as_str()))?,
                    xml.get((domain, form_id.as_str()))?,
                ) {
                    (Some(form), Some(xml)) => SendSource::Form {
                        form: decode(form.value(), || format!("form {form_id}"))?,
                        xml: xml.value().to_vec(),
                    },
                    _ => SendSource::Missing(format!("form {form_id} is not in the store")),
                }
            }
            PayloadRef::Case { case_id } => {
                let cases = txn.open_table(CASES)?;
                match cases.get((domain, case_id.as_str()))? {
                    Some(case) => {
                        SendSource::Case(decode(case.value(), || format!("case {case_id}"))?)
                    }
                    None => SendSource::Missing(format!("case {case_id} is not in the store")),
                }
            }
            PayloadRef::App { .. } => SendSource::App,
        };
        Ok(Some((record, source)))
    }

    /// One page of a domain's records, newest first. `cursor` is the
    /// `next_cursor` of the previous page.
    pub fn list_records(
        &self,
        domain: &str,
        filter: &RecordFilter,
        limit: usize,
        cursor: Option<u64>,
    ) -> Result<RecordPage, StoreError> {
        const MAX_SCANNED: usize = 100_000;
        let txn = self.db.begin_read()?;
        let records = txn.open_table(RECORDS)?;
        let upper = cursor.unwrap_or(u64::MAX);
        let mut page = Vec::new();
        let mut scanned = 0;
        let mut last_seen = None;
        let consider = |seq: u64, page: &mut Vec<RepeatRecord>| -> Result<(), StoreError> {
            if let Some(bytes) = records.get(seq)? {
                let record: RepeatRecord = decode(bytes.value(), || format!("record {seq}"))?;
                if filter.matches(&record) {
                    page.push(record);
                }
            }
            Ok(())
        };
        if let Some(payload_id) = filter.payload_id.as_deref() {
            let index = txn.open_table(PAYLOAD_RECORDS)?;
            let range = index.range((domain, payload_id, 0)..(domain, payload_id, upper))?;
            for entry in range.rev() {
                let seq = entry?.0.value().2;
                consider(seq, &mut page)?;
                last_seen = Some(seq);
                scanned += 1;
                if page.len() >= limit || scanned >= MAX_SCANNED {
                    break;
                }
            }
        } else {
            let index = txn.open_table(DOMAIN_RECORDS)?;
            let range = index.range((domain, 0)..(domain, upper))?;
            for entry in range.rev() {
                let seq = entry?.0.value().1;
                consider(seq, &mut page)?;
                last_seen = Some(seq);
                scanned += 1;
                if page.len() >= limit || scanned >= MAX_SCANNED {
                    break;
                }
            }
        }
        let exhausted = page.len() < limit && scanned < MAX_SCANNED;
        Ok(RecordPage {
            records: page,
            next_cursor: if exhausted {
                None
            } else {
                last_seen.filter(|seq| *seq > 1)
            },
        })
    }

    // ---- configured objects ------------------------------------------------

    /// Every stored object of one kind, as (domain, name, bytes).
    pub fn objects(&self, kind: &str) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OBJECTS)?;
        let mut found = Vec::new();
        for entry in table.range((kind, "", "")..)? {
            let (key, value) = entry?;
            let (found_kind, domain, name) = key.value();
            if found_kind != kind {
                break;
            }
            found.push((domain.to_owned(), name.to_owned(), value.value().to_vec()));
        }
        Ok(found)
    }

    /// Writes several objects (and deletions, as `None`) in one transaction.
    pub async fn put_objects(&self, changes: Vec<ObjectChange>) -> Result<(), StoreError> {
        self.write(move |txn| apply_object_changes(txn, &changes))
            .await
    }

    /// Like `put_objects`, for start-up.
    pub fn put_objects_blocking(&self, changes: Vec<ObjectChange>) -> Result<(), StoreError> {
        self.write_blocking(move |txn| apply_object_changes(txn, &changes))
    }

    // ---- pending error e-mails ---------------------------------------------

    /// Every connection's pending notification state.
    pub fn notifications<T: DeserializeOwned>(
        &self,
    ) -> Result<Vec<StoredNotification<T>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(NOTIFICATIONS)?;
        let mut found = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let (domain, connection) = key.value();
            let decoded = decode(value.value(), || {
                format!("notification state of connection {domain}/{connection}")
            });
            found.push((domain.to_owned(), connection.to_owned(), decoded));
        }
        Ok(found)
    }

    /// Writes (or, for `None`, removes) several connections' notification
    /// states in one transaction.
    pub async fn put_notifications<T: Serialize + Send + 'static>(
        &self,
        changes: Vec<(String, String, Option<T>)>,
    ) -> Result<(), StoreError> {
        self.write(move |txn| {
            let mut table = txn.open_table(NOTIFICATIONS)?;
            for (domain, connection, value) in &changes {
                let key = (domain.as_str(), connection.as_str());
                match value {
                    Some(value) => {
                        table.insert(key, encode(value).as_slice())?;
                    }
                    None => {
                        table.remove(key)?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// A fresh id for a repeater's due index, unique in this store.
    pub fn allocate_repeater_id_blocking(&self) -> Result<u64, StoreError> {
        self.write_blocking(allocate_repeater_id)
    }

    pub async fn allocate_repeater_id(&self) -> Result<u64, StoreError> {
        self.write(allocate_repeater_id).await
    }
}

fn allocate_repeater_id(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(META)?;
    let next = meta.get("next_repeater_id")?.map_or(1, |v| v.value());
    meta.insert("next_repeater_id", next + 1)?;
    Ok(next)
}

/// A connection's pending notification state as (domain, connection, value);
/// a value that cannot be decoded is handed back as its error.
pub type StoredNotification<T> = (String, String, Result<T, StoreError>);

/// One change to a configured object.
#[derive(Debug, Clone)]
pub struct ObjectChange {
    pub kind: &'static str,
    pub domain: String,
    pub name: String,
    /// `None` deletes it.
    pub value: Option<Vec<u8>>,
}

fn apply_object_changes(
    txn: &WriteTransaction,
    changes: &[ObjectChange],
) -> Result<(), StoreError> {
    let mut table = txn.open_table(OBJECTS)?;
    for change in changes {
        let key = (change.kind, change.domain.as_str(), change.name.as_str());
        match &change.value {
            Some(value) => {
                table.insert(key, value.as_slice())?;
            }
            None => {
                table.remove(key)?;
            }
        }
    }
    Ok(())
}

/// What a record's payload refers to, read at send time.
#[derive(Debug)]
pub enum SendSource {
    Form {
        form: StoredForm,
        xml: Vec<u8>,
    },
    Case(Case),
    App,
    /// The form or case is gone (it never should be): the record is rejected.
    Missing(String),
}

fn read_record(txn: &WriteTransaction, seq: u64) -> Result<RepeatRecord, StoreError> {
    let table = txn.open_table(RECORDS)?;
    let bytes = table
        .get(seq)?
        .ok_or_else(|| StoreError::NoRecord(seq.to_string()))?;
    decode(bytes.value(), || format!("record {seq}"))
}

/// Writes a record and keeps the due index and the state counts in step with
/// it. `before` is the record as stored (`None` for a new one).
fn write_record(
    txn: &WriteTransaction,
    before: Option<&RepeatRecord>,
    record: &RepeatRecord,
) -> Result<(), StoreError> {
    txn.open_table(RECORDS)?
        .insert(record.seq, encode(record).as_slice())?;
    let mut due = txn.open_table(DUE)?;
    if let Some(old_at) = before.and_then(|b| b.next_attempt_at) {
        due.remove((record.repeater_id, old_at.max(0) as u64, record.seq))?;
    }
    if let Some(at) = record.next_attempt_at {
        due.insert((record.repeater_id, at.max(0) as u64, record.seq), ())?;
    }
    let mut counts = txn.open_table(STATE_COUNTS)?;
    let old_state = before.map(|b| b.state);
    if old_state != Some(record.state) {
        if let Some(old) = old_state {
            let key = (record.repeater_id, old.as_str());
            let n = counts.get(key)?.map_or(0, |v| v.value());
            counts.insert(key, n.saturating_sub(1))?;
        }
        let key = (record.repeater_id, record.state.as_str());
        let n = counts.get(key)?.map_or(0, |v| v.value());
        counts.insert(key, n + 1)?;
    }
    Ok(())
}

/// The writer thread: takes every job that is waiting, runs them in one
/// transaction, commits durably, then answers each.
fn run_writer(db: &std::sync::Weak<Database>, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        // Whoever sent a job holds a `Store` until it is answered.
        let Some(db) = db.upgrade() else { break };
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
        let committed = (|| -> Result<(), StoreError> {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            let mut poisoned = false;
            for job in batch.drain(..) {
                let (completion, job_poisoned) = job(&txn);
                completions.push(completion);
                poisoned |= job_poisoned;
            }
            if poisoned {
                // Dropping the transaction discards every write of the batch,
                // so a half-applied job never becomes durable.
                txn.abort()?;
                return Err(StoreError::Storage(
                    "a job of this group commit failed part-way; the whole group was rolled back"
                        .into(),
                ));
            }
            txn.commit()?;
            Ok(())
        })()
        .map_err(|error| {
            tracing::error!(%error, "group commit failed; its jobs are refused");
            Arc::new(error.to_string())
        });
        drop(db);
        // Jobs that never ran (the transaction could not begin) are dropped:
        // their callers see `WriterGone`.
        for done in completions {
            done(committed.clone());
        }
    }
}
