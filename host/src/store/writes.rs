//! What the store's write operations do inside a write transaction. Each
//! function here persists a decision made elsewhere (a submission plan, an
//! attempt's outcome through `record`, an operator's action) and keeps the
//! indexes in step: the due index, the state counts and the state index
//! move with every record written, in the same transaction.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{ReadableTable, WriteTransaction};
use serde::Serialize;

use super::encoding::{decode, encode};
use super::tables::{
    ATTEMPTS, CASES, DOMAIN_RECORDS, DUE, FORM_XML, FORMS, META, NOTIFICATIONS, OBJECTS,
    PAYLOAD_RECORDS, RECORDS,
};
use super::{AttemptResult, IngestResult, ObjectChange, RecordFilter, StoreError};
use super::{data_index, retention, state_index, stats};
use crate::model::{Case, StoredForm};
use crate::record::{self, OperatorAction, Outcome, RecordState, RepeatRecord, Verdict};
use crate::submission::{self, LaterPost, PlannedRecord, Submission};

/// Stores a new form as `submission::plan` says, or counts a duplicate.
pub(super) fn commit_submission(
    txn: &WriteTransaction,
    next_seq: &AtomicU64,
    submission: Submission,
    now: i64,
) -> Result<IngestResult, StoreError> {
    let Submission {
        form,
        xml,
        case_blocks,
        repeaters,
    } = submission;
    let key = (form.domain.as_str(), form.form_id.as_str());
    let mut forms = txn.open_table(FORMS)?;
    let existing = forms.get(key)?.map(|v| v.value().to_vec());
    if let Some(existing) = existing {
        let mut stored: StoredForm = decode(&existing, || format!("form {}", form.form_id))?;
        return add_to_stored_form(txn, &mut forms, &mut stored, &form, &xml, now);
    }

    let mut cases = txn.open_table(CASES)?;
    let mut stored_cases = BTreeMap::new();
    for case_id in submission::case_ids(&case_blocks) {
        if let Some(bytes) = cases.get((form.domain.as_str(), case_id))? {
            let case: Case = decode(bytes.value(), || format!("case {case_id}"))?;
            stored_cases.insert(case_id.to_owned(), case);
        }
    }
    let cases_before = stored_cases.clone();
    let plan = submission::plan(form, &case_blocks, stored_cases, &repeaters);
    let form = &plan.form;
    let key = (form.domain.as_str(), form.form_id.as_str());
    data_index::index_form(txn, form, now)?;
    for case in &plan.cases {
        data_index::index_case(txn, cases_before.get(&case.case_id), case, now)?;
        cases.insert(
            (form.domain.as_str(), case.case_id.as_str()),
            encode(case).as_slice(),
        )?;
    }
    forms.insert(key, encode(form).as_slice())?;
    txn.open_table(FORM_XML)?.insert(key, xml.as_slice())?;
    stats::add_form_xml(txn, &form.domain, xml.len() as i64)?;
    let received_micros = crate::time::parse_timestamp(&form.received_on).unwrap_or(now);
    let registered = register(txn, next_seq, &plan.records, received_micros)?;
    Ok(IngestResult::Accepted { registered })
}

/// A POST of a form the domain has: adds a later part's attachments to the
/// stored form, or counts a duplicate, as `submission::later_post` says; no
/// case and no record is touched.
fn add_to_stored_form(
    txn: &WriteTransaction,
    forms: &mut redb::Table<(&str, &str), &[u8]>,
    stored: &mut StoredForm,
    later: &StoredForm,
    later_xml: &[u8],
    now: i64,
) -> Result<IngestResult, StoreError> {
    let key = (stored.domain.as_str(), stored.form_id.as_str());
    let xml_table = txn.open_table(FORM_XML)?;
    let stored_xml = xml_table.get(key)?;
    let stored_xml = stored_xml.as_ref().map_or(&[][..], |bytes| bytes.value());
    let result = submission::later_post(stored, stored_xml, later, later_xml);
    if let LaterPost::AttachmentsAdded(_) = result {
        data_index::reindex_form(txn, stored, now)?;
    }
    forms.insert(
        (stored.domain.as_str(), stored.form_id.as_str()),
        encode(&*stored).as_slice(),
    )?;
    Ok(match result {
        LaterPost::AttachmentsAdded(n_added) => IngestResult::AttachmentsAdded { n_added },
        LaterPost::Duplicate => IngestResult::Duplicate,
    })
}

/// Registers planned records due at `now`; returns (repeater id, due micros)
/// of each.
pub(super) fn register(
    txn: &WriteTransaction,
    next_seq: &AtomicU64,
    planned: &[PlannedRecord],
    now: i64,
) -> Result<Vec<(u64, i64)>, StoreError> {
    let mut domain_records = txn.open_table(DOMAIN_RECORDS)?;
    let mut payload_records = txn.open_table(PAYLOAD_RECORDS)?;
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
        domain_records.insert((plan.domain, seq), ())?;
        payload_records.insert((plan.domain, record.payload.payload_id(), seq), ())?;
        write_record(txn, None, &record, now)?;
        registered.push((plan.repeater_id, now));
    }
    Ok(registered)
}

/// Commits one attempt's outcome; returns the record as committed.
pub(super) fn commit_attempt(
    txn: &WriteTransaction,
    result: AttemptResult,
    now: i64,
) -> Result<(RepeatRecord, Verdict), StoreError> {
    let before = read_record(txn, result.seq)?;
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
    if let Some(mut attempt) = result.attempt {
        attempt.number = record.n_attempts;
        txn.open_table(ATTEMPTS)?
            .insert((record.seq, attempt.number), encode(&attempt).as_slice())?;
    }
    write_record(txn, Some(&before), &record, now)?;
    Ok((record, verdict))
}

/// Applies `action` to each record of `seqs` that still matches `filter`
/// (every record, without one); returns the records it changed.
pub(super) fn apply_operator(
    txn: &WriteTransaction,
    seqs: &[u64],
    filter: Option<&RecordFilter>,
    action: OperatorAction,
    now: i64,
) -> Result<Vec<RepeatRecord>, StoreError> {
    let mut changed = Vec::new();
    for &seq in seqs {
        let before = read_record(txn, seq)?;
        if filter.is_some_and(|filter| !filter.matches(&before)) {
            continue;
        }
        let mut record = before.clone();
        if record::apply_operator(&mut record, action, now) {
            write_record(txn, Some(&before), &record, now)?;
            changed.push(record);
        }
    }
    Ok(changed)
}

/// Up to `limit` queued records of a repeater, oldest due first.
pub(super) fn queued_of_repeater(
    txn: &WriteTransaction,
    repeater_id: u64,
    limit: usize,
) -> Result<Vec<u64>, StoreError> {
    let due = txn.open_table(DUE)?;
    let mut seqs = Vec::new();
    for entry in due.range((repeater_id, 0, 0)..=(repeater_id, u64::MAX, u64::MAX))? {
        seqs.push(entry?.0.value().2);
        if seqs.len() >= limit {
            break;
        }
    }
    Ok(seqs)
}

pub(super) fn allocate_repeater_id(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(META)?;
    let next = meta.get("next_repeater_id")?.map_or(1, |v| v.value());
    meta.insert("next_repeater_id", next + 1)?;
    Ok(next)
}

pub(super) fn put_objects(
    txn: &WriteTransaction,
    changes: &[ObjectChange],
) -> Result<(), StoreError> {
    let mut table = txn.open_table(OBJECTS)?;
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
    txn: &WriteTransaction,
    changes: &[(String, String, Option<T>)],
) -> Result<(), StoreError> {
    let mut table = txn.open_table(NOTIFICATIONS)?;
    for (domain, connection, value) in changes {
        let key = (domain.as_str(), connection.as_str());
        match value {
            Some(value) => table.insert(key, encode(value).as_slice())?,
            None => table.remove(key)?,
        };
    }
    Ok(())
}

pub(super) fn read_record(txn: &WriteTransaction, seq: u64) -> Result<RepeatRecord, StoreError> {
    let table = txn.open_table(RECORDS)?;
    let bytes = table
        .get(seq)?
        .ok_or_else(|| StoreError::NoRecord(seq.to_string()))?;
    decode(bytes.value(), || format!("record {seq}"))
}

/// Writes a record and keeps the due index, the state counts, the state
/// index, the domain's counts and retention's index of final records in step
/// with it. `before` is the record as stored (`None` for a new one); `now`
/// is when it is written.
fn write_record(
    txn: &WriteTransaction,
    before: Option<&RepeatRecord>,
    record: &RepeatRecord,
    now: i64,
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
    state_index::move_record(txn, before, record)?;
    stats::move_record(txn, before, record)?;
    retention::track(txn, before, record, now)
}
