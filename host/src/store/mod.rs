//! The durable store: forms, cases, repeat records, their attempts and the
//! configured objects. Callers use `Store` (`backend`), which is either
//! `RedbStore`, one redb file (this file and the modules beside it), or
//! `PgStore`, a PostgreSQL database several nodes share (`postgres`). Only
//! this module knows redb or PostgreSQL.
//!
//! The store decides nothing about the product: it persists what others
//! decided, through named operations (commit a submission as
//! `submission::plan` plans it, or add a later part's attachments to its
//! form; commit an attempt outcome, apply an operator action, put objects,
//! put notification states), and answers reads.
//!
//! On redb, writes go through one writer thread (`writer`) that groups
//! whatever jobs are waiting into a single write transaction committed with
//! `Durability::Immediate` (group commit): a form, its case changes and its
//! repeat records are one job, so they become durable together, and many
//! forms share one fsync under load. A job's result is handed back only after
//! its transaction is durable. Reads use their own read transactions and never
//! wait for the writer. Tables are in `tables`, value encodings in `encoding`,
//! what each write does inside its transaction in `writes`, the records by
//! state (counts and listing index) in `state_index`.
//!
//! Records are keyed by a sequence number; their public id (also the
//! `Idempotency-Key`) is that number prefixed with a random per-store nonce,
//! so two data directories never hand out the same id.

mod backend;
mod data_index;
mod database;
mod encoding;
mod export;
mod migration;
pub mod postgres;
mod retention;
mod state_index;
mod stats;
mod tables;
mod write_tables;
mod writer;
mod writes;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod data_index_tests;
#[cfg(test)]
mod migration_tests;
#[cfg(test)]
mod retention_tests;
#[cfg(test)]
mod state_index_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;

use redb::{Database, ReadOnlyTable, ReadTransaction, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::Clock;
use crate::model::{Case, StoredForm};
use crate::record::RetryPolicy;
use crate::record::{
    AppChange, Attempt, OperatorAction, Outcome, PayloadRef, RecordState, RepeatRecord, Verdict,
};
use encoding::{decode, decode_case, decode_form, decode_record, indexed_on_of};
use tables::*;
use write_tables::WriteTables;

// Planning types the store's callers hand it; they live with the planner.
pub use crate::submission::{RepeaterRef, Submission};
pub use backend::{SharedHealth, Store};
pub use data_index::{CaseScope, FormScope, Keep, ListingRange};
pub use database::WriteFailure;
pub use export::{
    Export, ExportBatch, ExportCounters, ExportedAttempt, ExportedCase, ExportedForm,
    ExportedNotification, ExportedObject, ExportedRecord,
};
pub use retention::{OldestKept, RetainedForms};
pub use stats::DomainStats;

/// redb's page cache. Its default (1 GiB) would let a large queue grow the
/// process far past what a gateway should hold; the working set (the due
/// index's head, recent forms and cases) fits easily in this.
const CACHE_BYTES: usize = 64 << 20;

/// How many records one transaction of a bulk change touches at most, so
/// that it never stalls ingest for long.
const RECORDS_PER_TRANSACTION: usize = 1_000;

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

/// What committing a submission did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestResult {
    Accepted {
        /// (repeater id, due micros) of every record registered.
        registered: Vec<(u64, i64)>,
    },
    /// A later part of a submission split over several POSTs: this many
    /// attachments were added to the stored form.
    AttachmentsAdded {
        n_added: usize,
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
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub seq: u64,
    pub outcome: Outcome,
    /// `None` when no HTTP request was made (the plugin had nothing to send
    /// or failed).
    pub attempt: Option<Attempt>,
    pub policy: RetryPolicy,
    pub jitter_unit: f64,
}

/// What committing one attempt's outcome came to: the record as committed
/// and what happens to it next, or why that one was not committed.
pub type CommittedAttempt = Result<(RepeatRecord, Verdict), StoreError>;

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

/// What a record's payload refers to, read at send time.
#[derive(Debug)]
pub enum SendSource {
    Form {
        form: StoredForm,
        xml: Vec<u8>,
        /// Unix micros (SPEC section 11).
        indexed_on: i64,
    },
    Case(Case),
    App,
    /// The form or case is gone (it never should be): the record is rejected.
    Missing(String),
}

/// A page of a Data API listing and how many objects match in all.
#[derive(Debug)]
pub struct Listed<T> {
    pub objects: Vec<T>,
    pub total_count: u64,
}

/// A form of a Data API listing, with what its form object is made of.
#[derive(Debug)]
pub struct ListedForm {
    pub form: StoredForm,
    pub xml: Vec<u8>,
    pub indexed_on: i64,
}

/// A record's public id: the store's nonce, then its seq (both backends).
fn record_id(nonce: u64, seq: u64) -> String {
    format!("{nonce:016x}{seq:016x}")
}

/// The seq behind a public record id of the store with `nonce`.
fn parse_record_id(nonce: u64, id: &str) -> Option<u64> {
    if id.len() != 32 || !id.is_ascii() {
        return None;
    }
    let found = u64::from_str_radix(&id[..16], 16).ok()?;
    let seq = u64::from_str_radix(&id[16..], 16).ok()?;
    (found == nonce).then_some(seq)
}

/// The redb backend: one file, one process.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<database::SharedDatabase>,
    writer: mpsc::Sender<writer::Job>,
    nonce: u64,
    next_seq: Arc<AtomicU64>,
    path: PathBuf,
    /// Where "now" comes from for the times the store stamps.
    clock: Clock,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RedbStore {
    /// Opens (or creates) `data_dir/repeatd.redb` and starts the writer thread.
    pub fn open(data_dir: &Path) -> Result<RedbStore, StoreError> {
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
        RedbStore::start(db, path.clone(), Some(path))
    }

    /// Opens a store on another storage backend (tests: one that fails or
    /// stops part-way, to simulate a crash).
    #[cfg(test)]
    fn open_on(backend: impl redb::StorageBackend, label: &str) -> Result<RedbStore, StoreError> {
        let path = PathBuf::from(label);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source: Box::new(source),
            })?;
        RedbStore::start(db, path, None)
    }

    /// Checks the schema version, creates what a new file lacks and starts
    /// the writer thread; `reopen` is the file to open again after a failed
    /// write (`None`: the database is kept as it is).
    fn start(
        db: Database,
        path: PathBuf,
        reopen: Option<PathBuf>,
    ) -> Result<RedbStore, StoreError> {
        let txn = db.begin_write()?;
        let nonce;
        let from_schema_1;
        {
            let mut meta = txn.open_table(META)?;
            let found_version = meta.get("schema_version")?.map(|v| v.value());
            from_schema_1 = match found_version {
                None => false,
                Some(SCHEMA_VERSION) => false,
                Some(1) => true,
                Some(found) => return Err(StoreError::SchemaVersion { path, found }),
            };
            meta.insert("schema_version", SCHEMA_VERSION)?;
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
        }
        let migrated = if from_schema_1 {
            migration::from_schema_1(&txn)?
        } else {
            0
        };
        let backfilled;
        let records_indexed;
        let finals_indexed;
        let counted;
        let last_seq;
        {
            // Opening them creates every table, so that readers never meet
            // a missing one.
            let mut tables = WriteTables::open(&txn)?;
            backfilled = data_index::backfill(&mut tables)?;
            records_indexed = state_index::backfill(&mut tables)?;
            finals_indexed = retention::backfill(&mut tables)?;
            counted = stats::backfill(&mut tables)?;
            last_seq = tables
                .records
                .last()?
                .map(|(key, _)| key.value())
                .unwrap_or(0);
            tables.finish()?;
        }
        txn.commit()?;
        if migrated > 0 {
            tracing::info!(
                objects = migrated,
                "rewrote the forms and cases of a schema 1 store as schema {SCHEMA_VERSION} has them"
            );
        }
        if finals_indexed > 0 || counted > 0 {
            tracing::info!(
                records = finals_indexed,
                counted,
                "indexed the final records and counted the domains of a store from before retention"
            );
        }
        if backfilled > 0 {
            tracing::info!(
                objects = backfilled,
                "gave the forms and cases stored before the Data API their indexed_on"
            );
        }
        if records_indexed > 0 {
            tracing::info!(
                records = records_indexed,
                "indexed the records stored before the state index by state"
            );
        }
        let db = Arc::new(database::SharedDatabase::new(db, reopen));
        let writer = writer::start(&db)?;
        Ok(RedbStore {
            db,
            writer,
            nonce,
            next_seq: Arc::new(AtomicU64::new(last_seq + 1)),
            path,
            clock: Clock::system(),
        })
    }

    /// This store, stamping times by `clock` instead of the wall clock.
    pub fn with_clock(self, clock: Clock) -> RedbStore {
        RedbStore { clock, ..self }
    }

    /// One table, in a read transaction of its own.
    fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        table: TableDefinition<K, V>,
    ) -> Result<ReadOnlyTable<K, V>, StoreError> {
        Ok(self.db.begin_read()?.open_table(table)?)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public id of a record.
    pub fn record_id(&self, seq: u64) -> String {
        record_id(self.nonce, seq)
    }

    /// The sequence number behind a public record id of this store.
    pub fn parse_record_id(&self, id: &str) -> Option<u64> {
        parse_record_id(self.nonce, id)
    }

    // ---- ingest ------------------------------------------------------------

    /// Stores a form, its case changes and the repeat records of every
    /// repeater that wants it (as `submission::plan` decides), in one
    /// transaction; or, for a form id the domain has, adds a later part's
    /// attachments to the stored form or counts a duplicate (as
    /// `submission::later_post` decides), in one transaction too.
    pub async fn commit_submission(
        &self,
        submission: Submission,
    ) -> Result<IngestResult, StoreError> {
        let next_seq = self.next_seq.clone();
        // "Now" is read here, on the caller's side of the runtime: the writer
        // thread is outside it, where a clock that follows tokio's paused
        // time would read the wall's.
        let now = self.clock.now_micros();
        // The costly part of encoding the form, on the caller's task rather
        // than the writer's, which every submission waits for.
        let compressed_xml = encoding::compress_xml(&submission.xml);
        self.write(move |tables| {
            writes::commit_submission(tables, &next_seq, submission, &compressed_xml, now)
        })
        .await
    }

    /// Registers one `app-schema` record per app-schema repeater of the domain.
    pub async fn register_app_change(
        &self,
        repeaters: Arc<Vec<RepeaterRef>>,
        app_id: String,
        change: AppChange,
        build_id: Option<String>,
    ) -> Result<Vec<(u64, i64)>, StoreError> {
        let next_seq = self.next_seq.clone();
        let now = self.clock.now_micros();
        self.write(move |tables| {
            let planned = crate::submission::plan_app_change(
                &repeaters,
                &app_id,
                change,
                build_id.as_deref(),
            );
            writes::register(tables, &next_seq, &planned, now)
        })
        .await
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
        let due = self.read_table(DUE)?;
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
        let due = self.read_table(DUE)?;
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
        let table = self.read_table(STATE_COUNTS)?;
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
        let due = self.read_table(DUE)?;
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
        let now = self.clock.now_micros();
        self.write(move |tables| writes::commit_attempt(tables, result, now))
            .await
    }

    /// Commits the outcomes of many attempts in one job of the next group
    /// commit (one hand-over to the writer for the lot, not one each), and
    /// answers once that commit is durable: for each attempt, in order, the
    /// record as committed, or why that one was not (a record that is gone).
    /// A storage failure fails them all: none of them is committed.
    pub async fn commit_attempts(
        &self,
        results: Vec<AttemptResult>,
    ) -> Result<Vec<CommittedAttempt>, StoreError> {
        let now = self.clock.now_micros();
        self.write(move |tables| writes::commit_attempts(tables, results, now))
            .await
    }

    /// Applies an operator's action to one record. Returns the record after it.
    pub async fn operator_action(
        &self,
        seq: u64,
        action: OperatorAction,
    ) -> Result<RepeatRecord, StoreError> {
        let now = self.clock.now_micros();
        self.write(move |tables| {
            let mut changed = writes::apply_operator(tables, &[seq], None, action, now)?;
            match changed.pop() {
                Some(record) => Ok(record),
                // Unchanged (cancelling a record that is not queued).
                None => writes::read_record(tables, seq),
            }
        })
        .await
    }

    /// Applies an action to every record of a domain that matches `filter`.
    /// Returns the records changed.
    pub async fn bulk_action(
        &self,
        domain: String,
        filter: RecordFilter,
        action: OperatorAction,
    ) -> Result<Vec<RepeatRecord>, StoreError> {
        let seqs: Vec<u64> = {
            let txn = self.db.begin_read()?;
            let mut candidates = state_index::newest(
                &txn,
                &domain,
                filter.state,
                filter.repeater.as_deref(),
                u64::MAX,
                usize::MAX,
            )?;
            // Oldest first, as they were registered.
            candidates.reverse();
            let records = txn.open_table(RECORDS)?;
            let mut seqs = Vec::new();
            for seq in candidates {
                if let Some(bytes) = records.get(seq)? {
                    let record = decode_record(seq, bytes.value())?;
                    if filter.matches(&record) {
                        seqs.push(seq);
                    }
                }
            }
            seqs
        };
        let mut changed = Vec::new();
        for chunk in seqs.chunks(RECORDS_PER_TRANSACTION) {
            let chunk = chunk.to_vec();
            let filter = filter.clone();
            let now = self.clock.now_micros();
            let mut done = self
                .write(move |tables| {
                    writes::apply_operator(tables, &chunk, Some(&filter), action, now)
                })
                .await?;
            changed.append(&mut done);
        }
        Ok(changed)
    }

    /// Cancels every queued record of a repeater (when it is deleted).
    pub async fn cancel_repeater_records(&self, repeater_id: u64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let now = self.clock.now_micros();
            let n = self
                .write(move |tables| {
                    let seqs =
                        writes::queued_of_repeater(tables, repeater_id, RECORDS_PER_TRANSACTION)?;
                    let cancelled =
                        writes::apply_operator(tables, &seqs, None, OperatorAction::Cancel, now)?;
                    Ok(cancelled.len() as u64)
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
        let table = self.read_table(RECORDS)?;
        match table.get(seq)? {
            Some(bytes) => Ok(Some(decode_record(seq, bytes.value())?)),
            None => Ok(None),
        }
    }

    pub fn attempts(&self, seq: u64) -> Result<Vec<Attempt>, StoreError> {
        let table = self.read_table(ATTEMPTS)?;
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
        let table = self.read_table(FORMS)?;
        match table.get((domain, form_id))? {
            Some(bytes) => Ok(Some(decode_form(domain, form_id, bytes.value())?.form)),
            None => Ok(None),
        }
    }

    pub fn form_xml(&self, domain: &str, form_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let table = self.read_table(FORMS)?;
        match table.get((domain, form_id))? {
            Some(bytes) => Ok(Some(decode_form(domain, form_id, bytes.value())?.xml()?)),
            None => Ok(None),
        }
    }

    pub fn case(&self, domain: &str, case_id: &str) -> Result<Option<Case>, StoreError> {
        let table = self.read_table(CASES)?;
        match table.get((domain, case_id))? {
            Some(bytes) => Ok(Some(decode_case(bytes.value(), case_id)?.0)),
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
        let record = decode_record(seq, bytes.value())?;
        let domain = record.domain.as_str();
        let source = match &record.payload {
            PayloadRef::Form { form_id } => {
                let forms = txn.open_table(FORMS)?;
                match forms.get((domain, form_id.as_str()))? {
                    Some(value) => {
                        let stored = decode_form(domain, form_id, value.value())?;
                        SendSource::Form {
                            xml: stored.xml()?,
                            indexed_on: stored.indexed_on as i64,
                            form: stored.form,
                        }
                    }
                    None => SendSource::Missing(format!("form {form_id} is not in the store")),
                }
            }
            PayloadRef::Case { case_id } => {
                let cases = txn.open_table(CASES)?;
                match cases.get((domain, case_id.as_str()))? {
                    Some(case) => SendSource::Case(decode_case(case.value(), case_id)?.0),
                    None => SendSource::Missing(format!("case {case_id} is not in the store")),
                }
            }
            PayloadRef::App { .. } => SendSource::App,
        };
        Ok(Some((record, source)))
    }

    /// One page of a domain's records, newest first. `cursor` is the
    /// `next_cursor` of the previous page. Without a payload id the state
    /// index is read (only records of the state and repeater asked for, if
    /// any); with one, the payload id's index is walked, at most
    /// `MAX_SCANNED` entries a page.
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
        if filter.payload_id.is_none() {
            // Only matching records are read, so no cap is needed.
            let seqs = state_index::newest(
                &txn,
                domain,
                filter.state,
                filter.repeater.as_deref(),
                upper,
                limit,
            )?;
            let mut page = Vec::with_capacity(seqs.len());
            for &seq in &seqs {
                if let Some(bytes) = records.get(seq)? {
                    let record = decode_record(seq, bytes.value())?;
                    if filter.matches(&record) {
                        page.push(record);
                    }
                }
            }
            let full = seqs.len() >= limit;
            return Ok(RecordPage {
                records: page,
                next_cursor: if full {
                    seqs.last().copied().filter(|seq| *seq > 1)
                } else {
                    None
                },
            });
        }
        // The payload id's records, newest first.
        let payload_id = filter.payload_id.as_deref().unwrap_or_default();
        let payload_index = txn.open_table(PAYLOAD_RECORDS)?;
        let seqs = payload_index
            .range((domain, payload_id, 0)..(domain, payload_id, upper))?
            .rev()
            .map(|entry| entry.map(|(key, _)| key.value().2));
        let mut page = Vec::new();
        let mut scanned = 0;
        let mut last_seen = None;
        for seq in seqs {
            let seq = seq?;
            if let Some(bytes) = records.get(seq)? {
                let record = decode_record(seq, bytes.value())?;
                if filter.matches(&record) {
                    page.push(record);
                }
            }
            last_seen = Some(seq);
            scanned += 1;
            if page.len() >= limit || scanned >= MAX_SCANNED {
                break;
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

    // ---- the Data API --------------------------------------------------------

    /// A form's `indexed_on` (Unix micros).
    pub fn form_indexed_on(&self, domain: &str, form_id: &str) -> Result<Option<i64>, StoreError> {
        let table = self.read_table(FORMS)?;
        match table.get((domain, form_id))? {
            Some(value) => Ok(Some(
                indexed_on_of(value.value(), || format!("form {form_id}"))? as i64,
            )),
            None => Ok(None),
        }
    }

    /// A case's `indexed_on` (Unix micros).
    pub fn case_indexed_on(&self, domain: &str, case_id: &str) -> Result<Option<i64>, StoreError> {
        let table = self.read_table(CASES)?;
        match table.get((domain, case_id))? {
            Some(value) => Ok(Some(
                indexed_on_of(value.value(), || format!("case {case_id}"))? as i64,
            )),
            None => Ok(None),
        }
    }

    /// One page of a domain's forms in `scope` (SPEC section 11), from one
    /// read transaction: the forms kept by `keep`, skipping `offset`, at most
    /// `limit`, each with its XML and `indexed_on`; and how many match.
    pub fn list_forms(
        &self,
        domain: &str,
        scope: &FormScope,
        range: &ListingRange,
        page: (usize, usize),
        keep: Keep<'_, StoredForm>,
    ) -> Result<Listed<ListedForm>, StoreError> {
        let txn = self.db.begin_read()?;
        let listing = data_index::Listing {
            objects: FORMS,
            entries: FORM_LISTING,
            decode: |domain, form_id, value| Ok(decode_form(domain, form_id, value)?.form),
        };
        let listed = listing.page(&txn, domain, &scope.key(), range, page, keep)?;
        let forms = txn.open_table(FORMS)?;
        let mut objects = Vec::with_capacity(listed.objects.len());
        for (form, indexed_on) in listed.objects {
            if let Some(value) = forms.get((domain, form.form_id.as_str()))? {
                let xml = decode_form(domain, &form.form_id, value.value())?.xml()?;
                objects.push(ListedForm {
                    form,
                    xml,
                    indexed_on,
                });
            }
        }
        Ok(Listed {
            objects,
            total_count: listed.total_count,
        })
    }

    /// One page of a domain's cases in `scope`, as `list_forms`.
    pub fn list_cases(
        &self,
        domain: &str,
        scope: &CaseScope,
        range: &ListingRange,
        page: (usize, usize),
        keep: Keep<'_, Case>,
    ) -> Result<Listed<(Case, i64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let listing = data_index::Listing {
            objects: CASES,
            entries: CASE_LISTING,
            decode: |_, case_id, value| Ok(decode_case(value, case_id)?.0),
        };
        listing.page(&txn, domain, &scope.key(), range, page, keep)
    }

    // ---- retention and stats ------------------------------------------------

    /// Deletes up to `limit` records that have been in the final `state`
    /// since `cutoff` (Unix micros) or earlier, with their attempts and every
    /// index entry naming them, in one transaction; returns how many.
    pub async fn retain_records(
        &self,
        state: RecordState,
        cutoff: i64,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.write(move |tables| retention::delete_records(tables, state, cutoff, limit))
            .await
    }

    /// Looks at up to `limit` forms of `domain` stored from `start` to
    /// `cutoff` (by `indexed_on`) and deletes, with their XML and listing
    /// entries, those that no `pending` or `failed` record needs; one
    /// transaction.
    pub async fn retain_forms(
        &self,
        domain: &str,
        cutoff: i64,
        start: u64,
        limit: usize,
    ) -> Result<RetainedForms, StoreError> {
        let domain = domain.to_owned();
        self.write(move |tables| retention::delete_forms(tables, &domain, cutoff, start, limit))
            .await
    }

    /// Every domain that has stored a form.
    pub fn form_domains(&self) -> Result<Vec<String>, StoreError> {
        form_domains_in(&self.db.begin_read()?)
    }

    /// The oldest of what retention keeps.
    pub fn oldest_kept(&self) -> Result<OldestKept, StoreError> {
        retention::oldest_kept(&self.db.begin_read()?)
    }

    /// A domain's figures: records per state, forms, cases, XML bytes.
    pub fn domain_stats(&self, domain: &str) -> Result<DomainStats, StoreError> {
        stats::domain_stats(&self.db.begin_read()?, domain)
    }

    /// The size of the store's file, in bytes (`None` when it cannot be read).
    pub fn file_bytes(&self) -> Option<u64> {
        std::fs::metadata(&self.path).ok().map(|meta| meta.len())
    }

    /// Why the store cannot write now (`None`: it can).
    pub fn write_failure(&self) -> Option<WriteFailure> {
        self.db.write_failure()
    }

    // ---- configured objects ------------------------------------------------

    /// Every stored object of one kind, as (domain, name, bytes).
    pub fn objects(&self, kind: &str) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let table = self.read_table(OBJECTS)?;
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
        self.write(move |tables| writes::put_objects(tables, &changes))
            .await
    }

    /// Like `put_objects`, for start-up.
    pub fn put_objects_blocking(&self, changes: Vec<ObjectChange>) -> Result<(), StoreError> {
        self.write_blocking(move |tables| writes::put_objects(tables, &changes))
    }

    // ---- pending error e-mails ---------------------------------------------

    /// Every connection's pending notification state.
    pub fn notifications<T: DeserializeOwned>(
        &self,
    ) -> Result<Vec<StoredNotification<T>>, StoreError> {
        let table = self.read_table(NOTIFICATIONS)?;
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
        self.write(move |tables| writes::put_notifications(tables, &changes))
            .await
    }

    /// A fresh id for a repeater's due index, unique in this store.
    pub fn allocate_repeater_id_blocking(&self) -> Result<u64, StoreError> {
        self.write_blocking(writes::allocate_repeater_id)
    }

    pub async fn allocate_repeater_id(&self) -> Result<u64, StoreError> {
        self.write(writes::allocate_repeater_id).await
    }
}

/// Every domain that has stored a form (each has handed out an `indexed_on`).
fn form_domains_in(txn: &ReadTransaction) -> Result<Vec<String>, StoreError> {
    let table = txn.open_table(LAST_INDEXED_ON)?;
    let mut domains = Vec::new();
    for entry in table.iter()? {
        domains.push(entry?.0.value().to_owned());
    }
    Ok(domains)
}
