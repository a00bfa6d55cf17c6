//! Submissions, the queue, attempts and operator actions on PostgreSQL.
//!
//! Submissions and attempt outcomes go through one writer task per node
//! (`run_writer`) that takes every job waiting and commits them in one
//! transaction (group commit), as the redb store's writer does: a form, its
//! cases and its records are durable together, before the 201, and many
//! forms share one commit under load. A batch first locks the
//! `domain_counters` rows of its domains, in name order, so that submissions
//! of one domain commit one after another across nodes (`indexed_on` strictly
//! increasing, and visible in that order) and two batches never wait on each
//! other in a cycle. Reads and decodes of a job come before its writes: a job
//! that fails without an SQL error has written nothing, and an SQL error
//! fails the whole batch (tried again once when PostgreSQL broke a deadlock).
//!
//! Sending is claimed: `due_records` leases records to this node
//! (`leased_until`, `leased_by`) under a per-repeater advisory lock that also
//! caps the leases of all nodes at the repeater's `max_workers`; committing an
//! outcome ends the lease; a node that dies leaves its leases to run out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use deadpool_postgres::Transaction;
use tokio::sync::{mpsc, oneshot};

use super::{PgStore, sql_error};
use crate::record::{self, AppChange, OperatorAction, RecordState, RepeatRecord, Verdict};
use crate::store::data_index::order_key;
use crate::store::encoding::{
    self, decode_case, decode_form, decode_record, encode, stamp_indexed_on,
};
use crate::store::writes::settle_attempt;
use crate::store::{
    AttemptResult, CommittedAttempt, IngestResult, RecordFilter, RepeaterRef, StoreError,
    Submission,
};
use crate::submission::{self, LaterPost, PlannedRecord};

/// How many jobs may wait for the writer before submitters wait to hand
/// theirs over.
pub(super) const WRITER_QUEUE: usize = 4_096;
/// How many jobs one group commit takes at most.
const MAX_JOBS_PER_COMMIT: usize = 512;
/// How many records one transaction of a bulk change touches at most.
const RECORDS_PER_TRANSACTION: usize = 1_000;
/// The first key of the per-repeater advisory locks of claims.
const CLAIM_LOCK: i32 = 0x7270_6474; // "rpdt"

/// Which records a claim takes.
enum Claim<'a> {
    /// The repeater's due records, oldest due first, but these.
    Due(&'a HashSet<u64>),
    /// These records, when queued (due or not).
    Only(&'a [u64]),
}

/// A write waiting for the next group commit.
pub(super) enum Job {
    Submission {
        submission: Submission,
        compressed_xml: Vec<u8>,
        now: i64,
        reply: oneshot::Sender<Result<IngestResult, StoreError>>,
    },
    AppChange {
        repeaters: Arc<Vec<RepeaterRef>>,
        app_id: String,
        change: AppChange,
        build_id: Option<String>,
        now: i64,
        reply: oneshot::Sender<Result<Vec<(u64, i64)>, StoreError>>,
    },
    Attempts {
        results: Vec<AttemptResult>,
        now: i64,
        reply: oneshot::Sender<Result<Vec<CommittedAttempt>, StoreError>>,
    },
}

/// What a job came to, before its batch commits.
enum Answer {
    Submission(Result<IngestResult, StoreError>),
    AppChange(Result<Vec<(u64, i64)>, StoreError>),
    Attempts(Result<Vec<CommittedAttempt>, StoreError>),
}

impl Job {
    fn domain(&self) -> Option<&str> {
        match self {
            Job::Submission { submission, .. } => Some(&submission.form.domain),
            Job::AppChange { .. } | Job::Attempts { .. } => None,
        }
    }

    /// Hands the job its answer, or `error` for all of it.
    fn answer(self, answer: Result<Answer, StoreError>) {
        match (self, answer) {
            (Job::Submission { reply, .. }, Ok(Answer::Submission(result))) => {
                let _ = reply.send(result);
            }
            (Job::AppChange { reply, .. }, Ok(Answer::AppChange(result))) => {
                let _ = reply.send(result);
            }
            (Job::Attempts { reply, .. }, Ok(Answer::Attempts(result))) => {
                let _ = reply.send(result);
            }
            (job, answer) => {
                let error = match answer {
                    Err(error) => error,
                    Ok(_) => StoreError::Storage("a write job got another job's answer".into()),
                };
                let again = || copy_of(&error);
                match job {
                    Job::Submission { reply, .. } => {
                        let _ = reply.send(Err(again()));
                    }
                    Job::AppChange { reply, .. } => {
                        let _ = reply.send(Err(again()));
                    }
                    Job::Attempts { reply, .. } => {
                        let _ = reply.send(Err(again()));
                    }
                }
            }
        }
    }
}

/// The writer task: commits whatever jobs wait, a batch at a time, until
/// every `PgStore` handle is gone.
pub(super) async fn run_writer(store: WriterHandle, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut answers = store.commit_batch(&batch).await;
        if answers.as_ref().is_err_and(is_deadlock) {
            answers = store.commit_batch(&batch).await;
        }
        store.note_write(answers.as_ref().map(|_| ()));
        match answers {
            Ok(answers) => {
                for (job, answer) in batch.into_iter().zip(answers) {
                    job.answer(Ok(answer));
                }
            }
            Err(error) => {
                for job in batch {
                    job.answer(Err(copy_of(&error)));
                }
            }
        }
    }
}

/// The same error again, for each job of a batch that failed.
fn copy_of(error: &StoreError) -> StoreError {
    match error {
        StoreError::Storage(message) => StoreError::Storage(message.clone()),
        StoreError::NoRecord(id) => StoreError::NoRecord(id.clone()),
        StoreError::WriterGone => StoreError::WriterGone,
        other => StoreError::Storage(other.to_string()),
    }
}

fn is_deadlock(error: &StoreError) -> bool {
    matches!(error, StoreError::Storage(message) if message.contains("deadlock"))
}

/// The per-domain `indexed_on` counters a batch hands out from.
struct Counters {
    last: HashMap<String, i64>,
    changed: BTreeSet<String>,
}

impl Counters {
    /// The next `indexed_on` of `domain`: the later of now and the last one
    /// plus a microsecond.
    fn next(&mut self, domain: &str, now: i64) -> i64 {
        let last = self.last.get(domain).copied().unwrap_or(0);
        let next = now.max(0).max(last + 1);
        self.last.insert(domain.to_owned(), next);
        self.changed.insert(domain.to_owned());
        next
    }
}

/// The parts of `PgStore` the writer task needs, without the writer's own
/// sender (which would keep the task alive for good).
pub(super) struct WriterHandle {
    pub(super) pool: deadpool_postgres::Pool,
    pub(super) url: String,
    pub(super) node_id: String,
    pub(super) write_failure: Arc<std::sync::Mutex<Option<crate::store::WriteFailure>>>,
}

impl WriterHandle {
    fn note_write(&self, result: Result<(), &StoreError>) {
        super::note_write(&self.write_failure, result);
    }

    async fn commit_batch(&self, batch: &[Job]) -> Result<Vec<Answer>, StoreError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| super::pool_error(&self.url, e))?;
        let txn = client
            .transaction()
            .await
            .map_err(|e| sql_error("starting a transaction", e))?;
        let domains: Vec<String> = batch
            .iter()
            .filter_map(Job::domain)
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut counters = Counters {
            last: HashMap::new(),
            changed: BTreeSet::new(),
        };
        if !domains.is_empty() {
            txn.execute(
                "INSERT INTO domain_counters (domain, last_indexed_on)
                 SELECT unnest($1::text[]), 0 ON CONFLICT (domain) DO NOTHING",
                &[&domains],
            )
            .await
            .map_err(|e| sql_error("adding domain counters", e))?;
            let rows = txn
                .query(
                    "SELECT domain, last_indexed_on FROM domain_counters
                     WHERE domain = ANY($1) ORDER BY domain FOR UPDATE",
                    &[&domains],
                )
                .await
                .map_err(|e| sql_error("locking domain counters", e))?;
            for row in rows {
                counters.last.insert(row.get(0), row.get(1));
            }
        }
        let mut answers = Vec::with_capacity(batch.len());
        let mut woken: BTreeMap<u64, i64> = BTreeMap::new();
        for job in batch {
            let answer = match job {
                Job::Submission {
                    submission,
                    compressed_xml,
                    now,
                    ..
                } => {
                    let result =
                        commit_submission(&txn, &mut counters, submission, compressed_xml, *now)
                            .await;
                    if let Ok(IngestResult::Accepted { registered }) = &result {
                        wake_at(&mut woken, registered);
                    }
                    fail_batch_on_sql(&result)?;
                    Answer::Submission(result)
                }
                Job::AppChange {
                    repeaters,
                    app_id,
                    change,
                    build_id,
                    now,
                    ..
                } => {
                    let planned = submission::plan_app_change(
                        repeaters,
                        app_id,
                        *change,
                        build_id.as_deref(),
                    );
                    let result = register(&txn, &planned, *now).await;
                    if let Ok(registered) = &result {
                        wake_at(&mut woken, registered);
                    }
                    fail_batch_on_sql(&result)?;
                    Answer::AppChange(result)
                }
                Job::Attempts { results, now, .. } => {
                    let result = commit_attempts(&txn, &self.node_id, results, *now).await;
                    if let Ok(committed) = &result {
                        for (record, verdict) in committed.iter().flatten() {
                            if let Verdict::RetryAt(at) = verdict {
                                wake_at(&mut woken, &[(record.repeater_id, *at)]);
                            }
                        }
                    }
                    fail_batch_on_sql(&result)?;
                    Answer::Attempts(result)
                }
            };
            answers.push(answer);
        }
        if !counters.changed.is_empty() {
            let (names, lasts): (Vec<String>, Vec<i64>) = counters
                .changed
                .iter()
                .map(|domain| (domain.clone(), counters.last[domain]))
                .unzip();
            txn.execute(
                "UPDATE domain_counters SET last_indexed_on = c.last
                 FROM unnest($1::text[], $2::bigint[]) AS c(domain, last)
                 WHERE domain_counters.domain = c.domain",
                &[&names, &lasts],
            )
            .await
            .map_err(|e| sql_error("updating domain counters", e))?;
        }
        notify_wake(&txn, &woken).await?;
        txn.commit()
            .await
            .map_err(|e| sql_error("committing a group of writes", e))?;
        Ok(answers)
    }
}

/// An SQL error aborts the transaction, and with it every job of the batch.
fn fail_batch_on_sql<T>(result: &Result<T, StoreError>) -> Result<(), StoreError> {
    match result {
        Err(StoreError::Storage(message)) => Err(StoreError::Storage(message.clone())),
        _ => Ok(()),
    }
}

fn wake_at(woken: &mut BTreeMap<u64, i64>, items: &[(u64, i64)]) {
    for &(repeater_id, at) in items {
        woken
            .entry(repeater_id)
            .and_modify(|known| *known = (*known).min(at))
            .or_insert(at);
    }
}

/// Tells every node (on commit) which repeaters have records due when.
async fn notify_wake(txn: &Transaction<'_>, woken: &BTreeMap<u64, i64>) -> Result<(), StoreError> {
    if woken.is_empty() {
        return Ok(());
    }
    for payload in super::events::wake_payloads(woken) {
        txn.execute("SELECT pg_notify('repeatd_wake', $1)", &[&payload])
            .await
            .map_err(|e| sql_error("notifying other nodes", e))?;
    }
    Ok(())
}

/// Stores a new form, its cases and records, or adds a later part to a
/// stored form, as the redb store's `writes::commit_submission` does.
async fn commit_submission(
    txn: &Transaction<'_>,
    counters: &mut Counters,
    submission: &Submission,
    compressed_xml: &[u8],
    now: i64,
) -> Result<IngestResult, StoreError> {
    let form = &submission.form;
    let domain = form.domain.as_str();
    let existing = txn
        .query_opt(
            &prepared(
                txn,
                "SELECT value FROM forms WHERE domain = $1 AND form_id = $2",
            )
            .await?,
            &[&domain, &form.form_id],
        )
        .await
        .map_err(|e| sql_error("reading a form", e))?;
    if let Some(existing) = existing {
        let value: Vec<u8> = existing.get(0);
        return add_to_stored_form(txn, counters, &value, submission, now).await;
    }
    let case_ids: Vec<&str> = submission::case_ids(&submission.case_blocks);
    let mut stored_cases = BTreeMap::new();
    if !case_ids.is_empty() {
        let rows = txn
            .query(
                &prepared(
                    txn,
                    "SELECT case_id, value FROM cases WHERE domain = $1 AND case_id = ANY($2)",
                )
                .await?,
                &[&domain, &case_ids],
            )
            .await
            .map_err(|e| sql_error("reading cases", e))?;
        for row in rows {
            let case_id: String = row.get(0);
            let value: Vec<u8> = row.get(1);
            let (case, _) = decode_case(&value, &case_id)?;
            stored_cases.insert(case_id, case);
        }
    }
    let plan = submission::plan(
        form.clone(),
        &submission.case_blocks,
        stored_cases,
        &submission.repeaters,
    );
    let form = &plan.form;
    let mut form_value = encoding::encode_form(form, compressed_xml);
    let indexed_on = counters.next(domain, now);
    stamp_indexed_on(&mut form_value, indexed_on as u64);
    let mut case_rows = CaseRows::default();
    for case in &plan.cases {
        let mut value = encoding::encode_case(case);
        let case_indexed_on = counters.next(domain, now);
        stamp_indexed_on(&mut value, case_indexed_on as u64);
        case_rows.push(case, case_indexed_on, value);
    }
    txn.execute(
        &prepared(
            txn,
            "INSERT INTO forms
                 (domain, form_id, indexed_on, received_key, xmlns, app_id, xml_bytes, value)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?,
        &[
            &domain,
            &form.form_id,
            &indexed_on,
            &(order_key(&form.received_on, indexed_on as u64) as i64),
            &form.xmlns,
            &form.app_id,
            &(submission.xml.len() as i64),
            &form_value,
        ],
    )
    .await
    .map_err(|e| sql_error("storing a form", e))?;
    case_rows.upsert(txn, domain).await?;
    let received_micros = crate::time::parse_timestamp(&form.received_on).unwrap_or(now);
    let registered = register(txn, &plan.records, received_micros).await?;
    Ok(IngestResult::Accepted { registered })
}

/// A POST of a form the domain has: a later part's attachments, or a
/// duplicate counted (`submission::later_post`).
async fn add_to_stored_form(
    txn: &Transaction<'_>,
    counters: &mut Counters,
    stored_value: &[u8],
    later: &Submission,
    now: i64,
) -> Result<IngestResult, StoreError> {
    let mut stored = decode_form(&later.form.domain, &later.form.form_id, stored_value)?;
    let stored_xml = stored.xml()?;
    let result = submission::later_post(&mut stored.form, &stored_xml, &later.form, &later.xml);
    if let LaterPost::AttachmentsAdded(_) = result {
        stored.indexed_on = counters.next(&stored.form.domain, now) as u64;
    }
    let indexed_on = stored.indexed_on as i64;
    txn.execute(
        &prepared(
            txn,
            "UPDATE forms SET value = $3, indexed_on = $4, received_key = $5
             WHERE domain = $1 AND form_id = $2",
        )
        .await?,
        &[
            &stored.form.domain,
            &stored.form.form_id,
            &stored.reencode(),
            &indexed_on,
            &(order_key(&stored.form.received_on, stored.indexed_on) as i64),
        ],
    )
    .await
    .map_err(|e| sql_error("updating a form", e))?;
    Ok(match result {
        LaterPost::AttachmentsAdded(n_added) => IngestResult::AttachmentsAdded { n_added },
        LaterPost::Duplicate => IngestResult::Duplicate,
    })
}

/// The cases a submission writes, as columns for one statement.
#[derive(Default)]
struct CaseRows {
    ids: Vec<String>,
    indexed_on: Vec<i64>,
    types: Vec<String>,
    modified: Vec<i64>,
    values: Vec<Vec<u8>>,
}

impl CaseRows {
    fn push(&mut self, case: &crate::model::Case, indexed_on: i64, value: Vec<u8>) {
        self.ids.push(case.case_id.clone());
        self.indexed_on.push(indexed_on);
        self.types.push(case.case_type.clone());
        self.modified
            .push(order_key(&case.server_date_modified, indexed_on as u64) as i64);
        self.values.push(value);
    }

    async fn upsert(&self, txn: &Transaction<'_>, domain: &str) -> Result<(), StoreError> {
        if self.ids.is_empty() {
            return Ok(());
        }
        txn.execute(
            &prepared(
                txn,
                "INSERT INTO cases (domain, case_id, indexed_on, case_type, modified_key, value)
                 SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::text[], $5::bigint[],
                                          $6::bytea[])
                 ON CONFLICT (domain, case_id) DO UPDATE SET
                     indexed_on = EXCLUDED.indexed_on, case_type = EXCLUDED.case_type,
                     modified_key = EXCLUDED.modified_key, value = EXCLUDED.value",
            )
            .await?,
            &[
                &domain,
                &self.ids,
                &self.indexed_on,
                &self.types,
                &self.modified,
                &self.values,
            ],
        )
        .await
        .map_err(|e| sql_error("storing cases", e))?;
        Ok(())
    }
}

/// Registers planned records due at `now`; returns (repeater id, due) of each.
async fn register(
    txn: &Transaction<'_>,
    planned: &[PlannedRecord<'_>],
    now: i64,
) -> Result<Vec<(u64, i64)>, StoreError> {
    if planned.is_empty() {
        return Ok(Vec::new());
    }
    let seqs = txn
        .query(
            &prepared(
                txn,
                "SELECT nextval('record_seq') FROM generate_series(1, $1::bigint)",
            )
            .await?,
            &[&(planned.len() as i64)],
        )
        .await
        .map_err(|e| sql_error("numbering records", e))?;
    let mut rows = RecordRows::default();
    let mut registered = Vec::with_capacity(planned.len());
    for (plan, seq) in planned.iter().zip(seqs) {
        let seq: i64 = seq.get(0);
        let record = RepeatRecord::new(
            seq as u64,
            plan.domain,
            plan.repeater,
            plan.repeater_id,
            plan.kind,
            plan.payload.clone(),
            now,
        );
        rows.push(&record, None);
        registered.push((plan.repeater_id, now));
    }
    txn.execute(
        &prepared(
            txn,
            "INSERT INTO records
                 (seq, domain, repeater, repeater_id, payload_id, state, due, final_since, value)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[],
                                  $5::text[], $6::text[], $7::bigint[], $8::bigint[],
                                  $9::bytea[])",
        )
        .await?,
        &[
            &rows.seqs,
            &rows.domains,
            &rows.repeaters,
            &rows.repeater_ids,
            &rows.payload_ids,
            &rows.states,
            &rows.due,
            &rows.final_since,
            &rows.values,
        ],
    )
    .await
    .map_err(|e| sql_error("registering records", e))?;
    Ok(registered)
}

/// Records as columns, for one statement.
#[derive(Default)]
struct RecordRows {
    seqs: Vec<i64>,
    domains: Vec<String>,
    repeaters: Vec<String>,
    repeater_ids: Vec<i64>,
    payload_ids: Vec<String>,
    states: Vec<String>,
    due: Vec<Option<i64>>,
    final_since: Vec<Option<i64>>,
    values: Vec<Vec<u8>>,
}

impl RecordRows {
    fn push(&mut self, record: &RepeatRecord, final_since: Option<i64>) {
        self.seqs.push(record.seq as i64);
        self.domains.push(record.domain.clone());
        self.repeaters.push(record.repeater.clone());
        self.repeater_ids.push(record.repeater_id as i64);
        self.payload_ids
            .push(record.payload.payload_id().to_owned());
        self.states.push(record.state.as_str().to_owned());
        self.due.push(record.next_attempt_at);
        self.final_since.push(final_since);
        self.values.push(encoding::encode_record(record));
    }

    /// Writes changed records over the stored ones; `end_lease_of` ends the
    /// leases this node holds on them (their outcome is committed).
    async fn update(
        &self,
        txn: &Transaction<'_>,
        end_lease_of: Option<&str>,
    ) -> Result<(), StoreError> {
        if self.seqs.is_empty() {
            return Ok(());
        }
        txn.execute(
            &prepared(
                txn,
                "UPDATE records SET state = r.state, due = r.due, final_since = r.final_since,
                     value = r.value,
                     leased_until = CASE WHEN records.leased_by = $6 THEN NULL
                                         ELSE records.leased_until END,
                     leased_by = CASE WHEN records.leased_by = $6 THEN NULL
                                      ELSE records.leased_by END
                 FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bytea[])
                     AS r(seq, state, due, final_since, value)
                 WHERE records.seq = r.seq",
            )
            .await?,
            &[
                &self.seqs,
                &self.states,
                &self.due,
                &self.final_since,
                &self.values,
                &end_lease_of,
            ],
        )
        .await
        .map_err(|e| sql_error("writing records", e))?;
        Ok(())
    }
}

/// When a record written at `now` has been in its final state since, as
/// the redb store's retention index keeps it: unchanged while it stays in
/// the same final state, `now` when it enters one, none while queued.
fn final_since(
    before: &RepeatRecord,
    before_since: Option<i64>,
    after: &RepeatRecord,
    now: i64,
) -> Option<i64> {
    if after.state.is_queued() {
        None
    } else if !before.state.is_queued() && before.state == after.state {
        before_since.or(Some(now))
    } else {
        Some(now.max(0))
    }
}

/// The records `seqs` as stored, locked for this transaction: seq →
/// (record, final_since).
async fn lock_records(
    txn: &Transaction<'_>,
    seqs: &[i64],
) -> Result<HashMap<u64, (RepeatRecord, Option<i64>)>, StoreError> {
    let rows = txn
        .query(
            &prepared(
                txn,
                "SELECT seq, value, final_since FROM records WHERE seq = ANY($1)
                 ORDER BY seq FOR UPDATE",
            )
            .await?,
            &[&seqs],
        )
        .await
        .map_err(|e| sql_error("reading records", e))?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let seq = row.get::<_, i64>(0) as u64;
        let value: Vec<u8> = row.get(1);
        found.insert(seq, (decode_record(seq, &value)?, row.get(2)));
    }
    Ok(found)
}

/// Commits attempt outcomes, each as the redb store does (`settle_attempt`).
async fn commit_attempts(
    txn: &Transaction<'_>,
    node_id: &str,
    results: &[AttemptResult],
    now: i64,
) -> Result<Vec<CommittedAttempt>, StoreError> {
    let seqs: Vec<i64> = results.iter().map(|result| result.seq as i64).collect();
    let mut stored = lock_records(txn, &seqs).await?;
    let mut rows = RecordRows::default();
    let mut attempt_seqs = Vec::new();
    let mut attempt_numbers = Vec::new();
    let mut attempt_values = Vec::new();
    let mut committed = Vec::with_capacity(results.len());
    for result in results {
        let seq = result.seq;
        let Some((before, before_since)) = stored.remove(&seq) else {
            committed.push(Err(StoreError::NoRecord(seq.to_string())));
            continue;
        };
        let (record, verdict, attempt) = settle_attempt(&before, result.clone(), now);
        let at = result.attempt.as_ref().map_or(now, |a| a.at);
        if let Some(attempt) = attempt {
            attempt_seqs.push(seq as i64);
            attempt_numbers.push(attempt.number as i32);
            attempt_values.push(encode(&attempt));
        }
        rows.push(&record, final_since(&before, before_since, &record, at));
        // A second outcome of the same record in one batch reads this one.
        stored.insert(
            seq,
            (record.clone(), rows.final_since.last().copied().flatten()),
        );
        committed.push(Ok((record, verdict)));
    }
    if !attempt_seqs.is_empty() {
        txn.execute(
            &prepared(
                txn,
                "INSERT INTO attempts (seq, number, value)
                 SELECT * FROM unnest($1::bigint[], $2::integer[], $3::bytea[])
                 ON CONFLICT (seq, number) DO UPDATE SET value = EXCLUDED.value",
            )
            .await?,
            &[&attempt_seqs, &attempt_numbers, &attempt_values],
        )
        .await
        .map_err(|e| sql_error("storing attempts", e))?;
    }
    rows.update(txn, Some(node_id)).await?;
    Ok(committed)
}

/// The statement `sql`, prepared once per connection.
async fn prepared(
    txn: &Transaction<'_>,
    sql: &str,
) -> Result<tokio_postgres::Statement, StoreError> {
    txn.prepare_cached(sql)
        .await
        .map_err(|e| sql_error("preparing a statement", e))
}

impl PgStore {
    /// Hands `job` to the writer and waits for its commit.
    async fn write<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(job(reply))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Stores a form, its case changes and its records in one transaction
    /// (shared with whatever else waits: group commit), or adds a later
    /// part to a stored form, or counts a duplicate.
    pub async fn commit_submission(
        &self,
        submission: Submission,
    ) -> Result<IngestResult, StoreError> {
        let now = self.clock.now_micros();
        let compressed_xml = encoding::compress_xml(&submission.xml);
        self.write(|reply| Job::Submission {
            submission,
            compressed_xml,
            now,
            reply,
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
        let now = self.clock.now_micros();
        self.write(|reply| Job::AppChange {
            repeaters,
            app_id,
            change,
            build_id,
            now,
            reply,
        })
        .await
    }

    /// Claims up to `limit` due records of a repeater for this node (a
    /// lease until now + `lease`), oldest due first, no more than
    /// `max_workers` leased by all nodes together, skipping `skip` and any
    /// record another node holds.
    pub async fn due_records(
        &self,
        repeater_id: u64,
        now: i64,
        limit: usize,
        max_workers: usize,
        skip: &HashSet<u64>,
    ) -> Result<Vec<u64>, StoreError> {
        self.claim(repeater_id, now, limit, max_workers, Claim::Due(skip))
            .await
    }

    /// Claims the records `seqs` of a repeater that are queued and no node
    /// holds, within `max_workers` across the nodes (an operator made them
    /// due now: they go before the repeater's queue).
    pub async fn claim_records(
        &self,
        repeater_id: u64,
        now: i64,
        seqs: &[u64],
        max_workers: usize,
    ) -> Result<Vec<u64>, StoreError> {
        self.claim(repeater_id, now, seqs.len(), max_workers, Claim::Only(seqs))
            .await
    }

    async fn claim(
        &self,
        repeater_id: u64,
        now: i64,
        limit: usize,
        max_workers: usize,
        which: Claim<'_>,
    ) -> Result<Vec<u64>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let txn = client
            .transaction()
            .await
            .map_err(|e| sql_error("starting a transaction", e))?;
        let repeater = repeater_id as i64;
        // A claim need not survive a crash of the database: a lost lease
        // leaves the record claimable, as the end of a lease does. Not
        // waiting for its WAL flush halves the fsyncs per payload.
        txn.batch_execute("SET LOCAL synchronous_commit TO off")
            .await
            .map_err(|e| sql_error("starting a claim", e))?;
        txn.execute(
            &prepared(&txn, "SELECT pg_advisory_xact_lock($1, $2)").await?,
            &[&CLAIM_LOCK, &(repeater_id as i32)],
        )
        .await
        .map_err(|e| sql_error("locking a repeater's claims", e))?;
        let live: i64 = txn
            .query_one(
                &prepared(
                    &txn,
                    "SELECT count(*) FROM records WHERE repeater_id = $1 AND leased_until > $2",
                )
                .await?,
                &[&repeater, &now],
            )
            .await
            .map_err(|e| sql_error("counting leases", e))?
            .get(0);
        let free = (max_workers as i64 - live).max(0).min(limit as i64);
        if free == 0 {
            return Ok(Vec::new());
        }
        let lease_end = now.saturating_add(self.lease.as_micros() as i64);
        let (sql, seqs) = match which {
            Claim::Due(skip) => (
                "UPDATE records SET leased_until = $5, leased_by = $6
                 WHERE seq IN (
                     SELECT seq FROM records
                     WHERE repeater_id = $1 AND due IS NOT NULL AND due <= $2
                       AND (leased_until IS NULL OR leased_until <= $2)
                       AND seq <> ALL($3)
                     ORDER BY due, seq LIMIT $4 FOR UPDATE SKIP LOCKED)
                 RETURNING seq, due",
                skip.iter().map(|seq| *seq as i64).collect::<Vec<i64>>(),
            ),
            Claim::Only(only) => (
                "UPDATE records SET leased_until = $5, leased_by = $6
                 WHERE seq IN (
                     SELECT seq FROM records
                     WHERE repeater_id = $1 AND due IS NOT NULL
                       AND (leased_until IS NULL OR leased_until <= $2)
                       AND seq = ANY($3)
                     ORDER BY due, seq LIMIT $4 FOR UPDATE SKIP LOCKED)
                 RETURNING seq, due",
                only.iter().map(|seq| *seq as i64).collect::<Vec<i64>>(),
            ),
        };
        let rows = txn
            .query(
                &prepared(&txn, sql).await?,
                &[&repeater, &now, &seqs, &free, &lease_end, &self.node_id],
            )
            .await
            .map_err(|e| sql_error("claiming due records", e))?;
        txn.commit()
            .await
            .map_err(|e| sql_error("committing a claim", e))?;
        let mut claimed: Vec<(i64, u64)> = rows
            .iter()
            .map(|row| (row.get::<_, i64>(1), row.get::<_, i64>(0) as u64))
            .collect();
        claimed.sort_unstable();
        Ok(claimed.into_iter().map(|(_, seq)| seq).collect())
    }

    /// When a record of the repeater not in `skip` may next be claimed: the
    /// earliest due of those no node holds, or the earliest end of another
    /// node's lease (should that node die).
    pub async fn earliest_due(
        &self,
        repeater_id: u64,
        skip: &HashSet<u64>,
    ) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let repeater = repeater_id as i64;
        let now = self.clock.now_micros();
        let skip: Vec<i64> = skip.iter().map(|seq| *seq as i64).collect();
        let free = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT due FROM records
                         WHERE repeater_id = $1 AND due IS NOT NULL
                           AND (leased_until IS NULL OR leased_until <= $2)
                           AND seq <> ALL($3)
                         ORDER BY due, seq LIMIT 1",
                    )
                    .await
                    .map_err(|e| sql_error("preparing a statement", e))?,
                &[&repeater, &now, &skip],
            )
            .await
            .map_err(|e| sql_error("reading the next due record", e))?
            .map(|row| row.get::<_, i64>(0));
        let leased = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT min(leased_until) FROM records
                         WHERE repeater_id = $1 AND leased_until > $2 AND seq <> ALL($3)",
                    )
                    .await
                    .map_err(|e| sql_error("preparing a statement", e))?,
                &[&repeater, &now, &skip],
            )
            .await
            .map_err(|e| sql_error("reading the next lease to end", e))?
            .get::<_, Option<i64>>(0);
        Ok(match (free, leased) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Extends this node's leases of `seqs` (records still being sent).
    pub async fn renew_leases(&self, seqs: &[u64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let seqs: Vec<i64> = seqs.iter().map(|seq| *seq as i64).collect();
        let lease_end = self
            .clock
            .now_micros()
            .saturating_add(self.lease.as_micros() as i64);
        client
            .execute(
                "UPDATE records SET leased_until = $2 WHERE seq = ANY($1) AND leased_by = $3",
                &[&seqs, &lease_end, &self.node_id],
            )
            .await
            .map_err(|e| sql_error("renewing leases", e))?;
        Ok(())
    }

    /// Gives up this node's leases of `seqs` (claimed, not sent).
    pub async fn release_leases(&self, seqs: &[u64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let seqs: Vec<i64> = seqs.iter().map(|seq| *seq as i64).collect();
        client
            .execute(
                "UPDATE records SET leased_until = NULL, leased_by = NULL
                 WHERE seq = ANY($1) AND leased_by = $2",
                &[&seqs, &self.node_id],
            )
            .await
            .map_err(|e| sql_error("releasing leases", e))?;
        Ok(())
    }

    /// Record counts by (repeater id, state).
    pub async fn state_counts(&self) -> Result<BTreeMap<(u64, RecordState), u64>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT repeater_id, state, count(*) FROM records GROUP BY repeater_id, state",
                &[],
            )
            .await
            .map_err(|e| sql_error("counting records", e))?;
        let mut counts = BTreeMap::new();
        for row in rows {
            let state: String = row.get(1);
            if let Ok(state) = state.parse::<RecordState>() {
                counts.insert(
                    (row.get::<_, i64>(0) as u64, state),
                    row.get::<_, i64>(2) as u64,
                );
            }
        }
        Ok(counts)
    }

    /// The oldest due time among all queued records.
    pub async fn oldest_due(&self) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT min(due) FROM records WHERE due IS NOT NULL", &[])
            .await
            .map_err(|e| sql_error("reading the oldest due record", e))?;
        Ok(row.get(0))
    }

    /// Commits one attempt's outcome (in the next group commit).
    pub async fn commit_attempt(
        &self,
        result: AttemptResult,
    ) -> Result<(RepeatRecord, Verdict), StoreError> {
        let mut committed = self.commit_attempts(vec![result]).await?;
        committed
            .pop()
            .unwrap_or_else(|| Err(StoreError::Storage("an attempt went uncommitted".into())))
    }

    /// Commits the outcomes of many attempts in one job of the next group
    /// commit, ending this node's leases of their records.
    pub async fn commit_attempts(
        &self,
        results: Vec<AttemptResult>,
    ) -> Result<Vec<CommittedAttempt>, StoreError> {
        let now = self.clock.now_micros();
        self.write(|reply| Job::Attempts {
            results,
            now,
            reply,
        })
        .await
    }

    /// Applies `action` to the records `seqs` that still match `filter`,
    /// in one transaction; returns those it changed.
    async fn apply_operator(
        &self,
        seqs: &[u64],
        filter: Option<&RecordFilter>,
        action: OperatorAction,
    ) -> Result<(Vec<RepeatRecord>, Vec<RepeatRecord>), StoreError> {
        let now = self.clock.now_micros();
        let mut client = self.client().await?;
        let txn = client
            .transaction()
            .await
            .map_err(|e| sql_error("starting a transaction", e))?;
        let wanted: Vec<i64> = seqs.iter().map(|seq| *seq as i64).collect();
        let mut stored = lock_records(&txn, &wanted).await?;
        let mut rows = RecordRows::default();
        let mut changed = Vec::new();
        let mut unchanged = Vec::new();
        for seq in seqs {
            let Some((before, before_since)) = stored.remove(seq) else {
                continue;
            };
            if filter.is_some_and(|filter| !filter.matches(&before)) {
                continue;
            }
            let mut record = before.clone();
            if record::apply_operator(&mut record, action, now) {
                rows.push(&record, final_since(&before, before_since, &record, now));
                changed.push(record);
            } else {
                unchanged.push(record);
            }
        }
        rows.update(&txn, None).await?;
        let mut woken = BTreeMap::new();
        for record in &changed {
            if let Some(at) = record.next_attempt_at {
                wake_at(&mut woken, &[(record.repeater_id, at)]);
            }
        }
        notify_wake(&txn, &woken).await?;
        let committed = txn
            .commit()
            .await
            .map_err(|e| sql_error("committing an operator's action", e));
        self.note_write(committed.as_ref().map(|_| ()));
        committed?;
        Ok((changed, unchanged))
    }

    /// Applies an operator's action to one record; returns it after.
    pub async fn operator_action(
        &self,
        seq: u64,
        action: OperatorAction,
    ) -> Result<RepeatRecord, StoreError> {
        let (mut changed, mut unchanged) = self.apply_operator(&[seq], None, action).await?;
        changed
            .pop()
            .or_else(|| unchanged.pop())
            .ok_or_else(|| StoreError::NoRecord(seq.to_string()))
    }

    /// Applies an action to every record of a domain that matches `filter`,
    /// oldest first, a thousand records a transaction.
    pub async fn bulk_action(
        &self,
        domain: String,
        filter: RecordFilter,
        action: OperatorAction,
    ) -> Result<Vec<RepeatRecord>, StoreError> {
        let seqs: Vec<u64> = {
            let client = self.client().await?;
            let state = filter.state.map(|state| state.as_str());
            let rows = client
                .query(
                    "SELECT seq FROM records
                     WHERE domain = $1 AND ($2::text IS NULL OR state = $2)
                       AND ($3::text IS NULL OR repeater = $3)
                       AND ($4::text IS NULL OR payload_id = $4)
                     ORDER BY seq",
                    &[&domain, &state, &filter.repeater, &filter.payload_id],
                )
                .await
                .map_err(|e| sql_error("finding records", e))?;
            rows.iter().map(|row| row.get::<_, i64>(0) as u64).collect()
        };
        let mut changed = Vec::new();
        for chunk in seqs.chunks(RECORDS_PER_TRANSACTION) {
            let (mut done, _) = self.apply_operator(chunk, Some(&filter), action).await?;
            changed.append(&mut done);
        }
        Ok(changed)
    }

    /// Cancels every queued record of a repeater (it was deleted); returns
    /// how many.
    pub async fn cancel_repeater_records(&self, repeater_id: u64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let seqs: Vec<u64> = {
                let client = self.client().await?;
                client
                    .query(
                        "SELECT seq FROM records WHERE repeater_id = $1 AND due IS NOT NULL
                         ORDER BY due, seq LIMIT $2",
                        &[&(repeater_id as i64), &(RECORDS_PER_TRANSACTION as i64)],
                    )
                    .await
                    .map_err(|e| sql_error("finding a repeater's records", e))?
                    .iter()
                    .map(|row| row.get::<_, i64>(0) as u64)
                    .collect()
            };
            if seqs.is_empty() {
                return Ok(total);
            }
            let (cancelled, _) = self
                .apply_operator(&seqs, None, OperatorAction::Cancel)
                .await?;
            if cancelled.is_empty() {
                return Ok(total);
            }
            total += cancelled.len() as u64;
        }
    }
}
