//! What the store's write operations do inside a write transaction. Each
//! function here persists a decision made elsewhere (a submission plan, an
//! attempt's outcome through `record`, an operator's action) and keeps the
//! indexes in step: the due index, the state counts and the state index
//! move with every record written, in the same transaction.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::ReadableTable;
use serde::Serialize;

use super::encoding::{self, decode_case, decode_form, decode_record, encode, encode_json};
use super::write_tables::WriteTables;
use super::{AttemptResult, IngestResult, ObjectChange, RecordFilter, StoreError};
use super::{data_index, retention, state_index, stats};
use crate::record::{self, Attempt, OperatorAction, Outcome, RecordState, RepeatRecord, Verdict};
use crate::submission::{self, LaterPost, PlannedRecord, Submission};

/// Stores a new form as `submission::plan` says, or counts a duplicate.
/// `compressed_xml` is the form's XML as compressed before the job reached
/// the writer (`encoding::compress_xml`).
pub(super) fn commit_submission(
    tables: &mut WriteTables<'_>,
    next_seq: &AtomicU64,
    submission: Submission,
    compressed_xml: &[u8],
    now: i64,
) -> Result<IngestResult, StoreError> {
    let Submission {
        form,
        xml,
        case_blocks,
        repeaters,
    } = submission;
    let key = (form.domain.as_str(), form.form_id.as_str());
    let existing = tables.forms.get(key)?.map(|v| v.value().to_vec());
    if let Some(existing) = existing {
        return add_to_stored_form(tables, &existing, &form, &xml, now);
    }

    let mut stored_cases = BTreeMap::new();
    // Per case as stored: its indexed_on and listing entries, to move.
    let mut listed_before = BTreeMap::new();
    for case_id in submission::case_ids(&case_blocks) {
        if let Some(bytes) = tables.cases.get((form.domain.as_str(), case_id))? {
            let (case, indexed_on) = decode_case(bytes.value(), case_id)?;
            listed_before.insert(
                case_id.to_owned(),
                data_index::case_listed(&case, indexed_on),
            );
            stored_cases.insert(case_id.to_owned(), case);
        }
    }
    let plan = submission::plan(form, &case_blocks, stored_cases, &repeaters);
    let form = &plan.form;
    let key = (form.domain.as_str(), form.form_id.as_str());
    let mut form_value = encoding::encode_form(form, compressed_xml);
    data_index::index_form(tables, form, &mut form_value, now)?;
    for case in &plan.cases {
        let mut value = encoding::encode_case(case);
        data_index::index_case(
            tables,
            listed_before.remove(&case.case_id),
            case,
            &mut value,
            now,
        )?;
        tables.cases.insert(
            (form.domain.as_str(), case.case_id.as_str()),
            value.as_slice(),
        )?;
    }
    tables.forms.insert(key, form_value.as_slice())?;
    stats::add_form_xml(tables, &form.domain, xml.len() as i64);
    let received_micros = crate::time::parse_timestamp(&form.received_on).unwrap_or(now);
    let registered = register(tables, next_seq, &plan.records, received_micros)?;
    Ok(IngestResult::Accepted { registered })
}

/// A POST of a form the domain has (its value `stored_value`): adds a later
/// part's attachments to the stored form, or counts a duplicate, as
/// `submission::later_post` says; no case and no record is touched.
fn add_to_stored_form(
    tables: &mut WriteTables<'_>,
    stored_value: &[u8],
    later: &crate::model::StoredForm,
    later_xml: &[u8],
    now: i64,
) -> Result<IngestResult, StoreError> {
    let mut stored = decode_form(&later.domain, &later.form_id, stored_value)?;
    let stored_xml = stored.xml()?;
    let result = submission::later_post(&mut stored.form, &stored_xml, later, later_xml);
    if let LaterPost::AttachmentsAdded(_) = result {
        stored.indexed_on = data_index::reindex_form(tables, &stored.form, stored.indexed_on, now)?;
    }
    let key = (stored.form.domain.as_str(), stored.form.form_id.as_str());
    tables.forms.insert(key, stored.reencode().as_slice())?;
    Ok(match result {
        LaterPost::AttachmentsAdded(n_added) => IngestResult::AttachmentsAdded { n_added },
        LaterPost::Duplicate => IngestResult::Duplicate,
    })
}

/// Registers planned records due at `now`; returns (repeater id, due micros)
/// of each.
pub(super) fn register(
    tables: &mut WriteTables<'_>,
    next_seq: &AtomicU64,
    planned: &[PlannedRecord],
    now: i64,
) -> Result<Vec<(u64, i64)>, StoreError> {
    let mut registered = Vec::with_capacity(planned.len());
    for plan in planned {
        let seq = next_seq.fetch_add(1, Ordering::Relaxed);
        let record = RepeatRecord::new(
            seq,
            plan.domain,
            plan.repeater,
            plan.repeater_id,
            plan.kind,
            plan.payload.clone(),
            now,
        );
        tables
            .payload_records
            .insert((plan.domain, record.payload.payload_id(), seq), ())?;
        write_record(tables, None, &record, now)?;
        registered.push((plan.repeater_id, now));
    }
    Ok(registered)
}

/// Commits one attempt's outcome; returns the record as committed.
pub(super) fn commit_attempt(
    tables: &mut WriteTables<'_>,
    result: AttemptResult,
    now: i64,
) -> Result<(RepeatRecord, Verdict), StoreError> {
    let before = read_record(tables, result.seq)?;
    let now = result.attempt.as_ref().map_or(now, |a| a.at);
    let (record, verdict, attempt) = settle_attempt(&before, result, now);
    if let Some(attempt) = attempt {
        tables
            .attempts
            .insert((record.seq, attempt.number), encode(&attempt).as_slice())?;
    }
    write_record(tables, Some(&before), &record, now)?;
    Ok((record, verdict))
}

/// What an attempt's outcome makes of the record as stored (`before`), on
/// either backend: the record to write, what happens to it next, and the
/// attempt to keep (numbered), if a request was made. `now` is when the
/// outcome is committed; the attempt's own time wins when there is one.
pub(super) fn settle_attempt(
    before: &RepeatRecord,
    result: AttemptResult,
    now: i64,
) -> (RepeatRecord, Verdict, Option<Attempt>) {
    let mut record = before.clone();
    let now = result.attempt.as_ref().map_or(now, |a| a.at);
    // Due after the attempt began: an operator resent or requeued it
    // while it was being sent.
    let resent_meanwhile =
        record.state == RecordState::Pending && record.next_attempt_at.is_some_and(|at| at > now);
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
    let attempt = result.attempt.map(|mut attempt| {
        attempt.number = record.n_attempts;
        attempt
    });
    (record, verdict, attempt)
}

/// Commits the outcomes of many attempts, each as `commit_attempt` does. A
/// record that is gone fails only its own entry (nothing was written for
/// it); a storage or decoding failure fails the whole job, so that the
/// writer rolls the group commit back rather than keep part of an attempt.
pub(super) fn commit_attempts(
    tables: &mut WriteTables<'_>,
    results: Vec<AttemptResult>,
    now: i64,
) -> Result<Vec<super::CommittedAttempt>, StoreError> {
    let mut committed = Vec::with_capacity(results.len());
    for result in results {
        match commit_attempt(tables, result, now) {
            Err(error @ (StoreError::Storage(_) | StoreError::Corrupt { .. })) => {
                return Err(error);
            }
            answer => committed.push(answer),
        }
    }
    Ok(committed)
}

/// Applies `action` to each record of `seqs` that still matches `filter`
/// (every record, without one); returns the records it changed.
pub(super) fn apply_operator(
    tables: &mut WriteTables<'_>,
    seqs: &[u64],
    filter: Option<&RecordFilter>,
    action: OperatorAction,
    now: i64,
) -> Result<Vec<RepeatRecord>, StoreError> {
    let mut changed = Vec::new();
    for &seq in seqs {
        let before = read_record(tables, seq)?;
        if filter.is_some_and(|filter| !filter.matches(&before)) {
            continue;
        }
        let mut record = before.clone();
        if record::apply_operator(&mut record, action, now) {
            write_record(tables, Some(&before), &record, now)?;
            changed.push(record);
        }
    }
    Ok(changed)
}

/// Up to `limit` queued records of a repeater, oldest due first.
pub(super) fn queued_of_repeater(
    tables: &WriteTables<'_>,
    repeater_id: u64,
    limit: usize,
) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::new();
    for entry in tables
        .due
        .range((repeater_id, 0, 0)..=(repeater_id, u64::MAX, u64::MAX))?
    {
        seqs.push(entry?.0.value().2);
        if seqs.len() >= limit {
            break;
        }
    }
    Ok(seqs)
}

pub(super) fn allocate_repeater_id(tables: &mut WriteTables<'_>) -> Result<u64, StoreError> {
    let next = tables
        .meta
        .get("next_repeater_id")?
        .map_or(1, |v| v.value());
    tables.meta.insert("next_repeater_id", next + 1)?;
    Ok(next)
}

pub(super) fn put_objects(
    tables: &mut WriteTables<'_>,
    changes: &[ObjectChange],
) -> Result<(), StoreError> {
    let table = &mut tables.objects;
    for change in changes {
        let key = (change.kind, change.domain.as_str(), change.name.as_str());
        match &change.value {
            Some(value) => table.insert(key, value.as_slice())?,
            None => table.remove(key)?,
        };
    }
    Ok(())
}

pub(super) fn put_notifications<T: Serialize>(
    tables: &mut WriteTables<'_>,
    changes: &[(String, String, Option<T>)],
) -> Result<(), StoreError> {
    let table = &mut tables.notifications;
    for (domain, connection, value) in changes {
        let key = (domain.as_str(), connection.as_str());
        match value {
            Some(value) => table.insert(key, encode_json(value).as_slice())?,
            None => table.remove(key)?,
        };
    }
    Ok(())
}

pub(super) fn read_record(tables: &WriteTables<'_>, seq: u64) -> Result<RepeatRecord, StoreError> {
    let bytes = tables
        .records
        .get(seq)?
        .ok_or_else(|| StoreError::NoRecord(seq.to_string()))?;
    decode_record(seq, bytes.value())
}

/// Writes a record and keeps the due index, the state counts, the state
/// index, the domain's counts and retention's index of final records in step
/// with it. `before` is the record as stored (`None` for a new one); `now`
/// is when it is written.
fn write_record(
    tables: &mut WriteTables<'_>,
    before: Option<&RepeatRecord>,
    record: &RepeatRecord,
    now: i64,
) -> Result<(), StoreError> {
    tables
        .records
        .insert(record.seq, encoding::encode_record(record).as_slice())?;
    if let Some(old_at) = before.and_then(|b| b.next_attempt_at) {
        tables
            .due
            .remove((record.repeater_id, old_at.max(0) as u64, record.seq))?;
    }
    if let Some(at) = record.next_attempt_at {
        tables
            .due
            .insert((record.repeater_id, at.max(0) as u64, record.seq), ())?;
    }
    state_index::move_record(tables, before, record)?;
    stats::move_record(tables, before, record);
    retention::track(tables, before, record, now)
}
