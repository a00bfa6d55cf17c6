//! Retention's side of the store: the index of records in a final state by
//! the time they entered it (`FINAL_RECORDS`, with `FINAL_SINCE` to find a
//! record's entry), moved by `track` in the transaction that changes the
//! record's state, and the deletions `crate::retention` decides on: records
//! that became final at or before a cutoff, with their attempts and every
//! index entry that names them; forms older than a cutoff that no open record
//! needs, with their XML and listing entries. One function per table below
//! takes a deleted record or form out of it, so a table that changes shape
//! changes one function. Cases are never deleted.

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::data_index::{self, FormScope};
use super::encoding::decode;
use super::tables::{
    ATTEMPTS, DOMAIN_RECORDS, DUE, FINAL_RECORDS, FINAL_SINCE, FORM_LISTING, FORM_XML, FORMS, META,
    PAYLOAD_RECORDS, RECORDS,
};
use super::{StoreError, state_index, stats};
use crate::model::StoredForm;
use crate::record::{PayloadRef, RecordState, RepeatRecord};

/// Set in META once every final record of the store is in `FINAL_RECORDS`.
const INDEXED_KEY: &str = "final_records_indexed";

/// What one `retain_forms` batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedForms {
    pub deleted: usize,
    /// Where the next batch of this domain starts (the `indexed_on` after
    /// the last form looked at), or `None` when every form up to the cutoff
    /// was looked at.
    pub resume_at: Option<u64>,
}

/// The oldest of what retention keeps: per final state, since when its
/// oldest record has been in it; the oldest form of any domain (Unix micros).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OldestKept {
    pub records: Vec<(RecordState, Option<i64>)>,
    pub form: Option<i64>,
}

fn is_final(state: RecordState) -> bool {
    !state.is_queued()
}

/// Keeps `FINAL_RECORDS` in step with a record written at `now`: a record
/// that enters a final state (or moves between two) is indexed from `now`;
/// one that leaves it (resent, requeued) is taken out.
pub(super) fn track(
    txn: &WriteTransaction,
    before: Option<&RepeatRecord>,
    record: &RepeatRecord,
    now: i64,
) -> Result<(), StoreError> {
    let was_final = before.is_some_and(|b| is_final(b.state));
    if was_final && before.is_some_and(|b| b.state == record.state) {
        return Ok(());
    }
    if let Some(b) = before.filter(|b| is_final(b.state)) {
        unindex_final(txn, b)?;
    }
    if is_final(record.state) {
        let since = now.max(0) as u64;
        txn.open_table(FINAL_RECORDS)?
            .insert((record.state.as_str(), since, record.seq), ())?;
        txn.open_table(FINAL_SINCE)?.insert(record.seq, since)?;
    }
    Ok(())
}

fn unindex_final(txn: &WriteTransaction, record: &RepeatRecord) -> Result<(), StoreError> {
    if let Some(since) = txn.open_table(FINAL_SINCE)?.remove(record.seq)? {
        let since = since.value();
        txn.open_table(FINAL_RECORDS)?
            .remove((record.state.as_str(), since, record.seq))?;
    }
    Ok(())
}

/// Indexes every final record of a store written before `FINAL_RECORDS`
/// existed, from its last attempt (or its registration); does nothing once
/// done. Returns how many records it indexed.
pub(super) fn backfill(txn: &WriteTransaction) -> Result<u64, StoreError> {
    if txn.open_table(META)?.get(INDEXED_KEY)?.is_some() {
        return Ok(0);
    }
    let records = txn.open_table(RECORDS)?;
    let mut index = txn.open_table(FINAL_RECORDS)?;
    let mut since_table = txn.open_table(FINAL_SINCE)?;
    let mut indexed = 0;
    for entry in records.iter()? {
        let (key, value) = entry?;
        let seq = key.value();
        let record: RepeatRecord = decode(value.value(), || format!("record {seq}"))?;
        if is_final(record.state) {
            let since = record
                .last_attempt_at
                .unwrap_or(record.registered_at)
                .max(0) as u64;
            index.insert((record.state.as_str(), since, seq), ())?;
            since_table.insert(seq, since)?;
            indexed += 1;
        }
    }
    txn.open_table(META)?.insert(INDEXED_KEY, 1)?;
    Ok(indexed)
}

/// Deletes up to `limit` records that have been in `state` since `cutoff`
/// or earlier, oldest first; returns how many.
pub(super) fn delete_records(
    txn: &WriteTransaction,
    state: RecordState,
    cutoff: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    if !is_final(state) || cutoff < 0 {
        return Ok(0);
    }
    let seqs: Vec<u64> = {
        let index = txn.open_table(FINAL_RECORDS)?;
        let range =
            index.range((state.as_str(), 0, 0)..=(state.as_str(), cutoff as u64, u64::MAX))?;
        let mut seqs = Vec::with_capacity(limit);
        for entry in range.take(limit) {
            seqs.push(entry?.0.value().2);
        }
        seqs
    };
    for &seq in &seqs {
        delete_record(txn, seq)?;
    }
    Ok(seqs.len())
}

/// Deletes one record with its attempts and every index entry naming it.
fn delete_record(txn: &WriteTransaction, seq: u64) -> Result<(), StoreError> {
    let removed = txn
        .open_table(RECORDS)?
        .remove(seq)?
        .map(|bytes| decode::<RepeatRecord>(bytes.value(), || format!("record {seq}")));
    let Some(record) = removed else {
        // Only its index entries are left (they never should be).
        let since = txn.open_table(FINAL_SINCE)?.remove(seq)?.map(|v| v.value());
        if let Some(since) = since {
            let mut index = txn.open_table(FINAL_RECORDS)?;
            for state in RecordState::ALL {
                index.remove((state.as_str(), since, seq))?;
            }
        }
        return Ok(());
    };
    let record = record?;
    remove_attempts(txn, seq)?;
    remove_due(txn, &record)?;
    remove_listing_entries(txn, &record)?;
    state_index::remove_record(txn, &record)?;
    stats::remove_record(txn, &record)?;
    unindex_final(txn, &record)
}

fn remove_attempts(txn: &WriteTransaction, seq: u64) -> Result<(), StoreError> {
    txn.open_table(ATTEMPTS)?
        .retain_in((seq, 0)..=(seq, u32::MAX), |_, _| false)?;
    Ok(())
}

fn remove_due(txn: &WriteTransaction, record: &RepeatRecord) -> Result<(), StoreError> {
    if let Some(at) = record.next_attempt_at {
        txn.open_table(DUE)?
            .remove((record.repeater_id, at.max(0) as u64, record.seq))?;
    }
    Ok(())
}

/// The domain's and the payload id's record listings.
fn remove_listing_entries(txn: &WriteTransaction, record: &RepeatRecord) -> Result<(), StoreError> {
    let domain = record.domain.as_str();
    txn.open_table(DOMAIN_RECORDS)?
        .remove((domain, record.seq))?;
    txn.open_table(PAYLOAD_RECORDS)?
        .remove((domain, record.payload.payload_id(), record.seq))?;
    Ok(())
}

/// Looks at up to `limit` forms of `domain` stored from `start` to `cutoff`
/// (by `indexed_on`, oldest first) and deletes those no `pending` or
/// `failed` record needs (`retention::form_may_go`).
pub(super) fn delete_forms(
    txn: &WriteTransaction,
    domain: &str,
    cutoff: i64,
    start: u64,
    limit: usize,
) -> Result<RetainedForms, StoreError> {
    let done = RetainedForms {
        deleted: 0,
        resume_at: None,
    };
    if cutoff < 0 || start > cutoff as u64 {
        return Ok(done);
    }
    let scope = FormScope::All.key();
    // (indexed_on, form id), read before anything is deleted.
    let candidates: Vec<(u64, String)> = {
        let listing = txn.open_table(FORM_LISTING)?;
        let range = listing.range(
            (domain, scope.as_str(), start, 0)..=(domain, scope.as_str(), cutoff as u64, u64::MAX),
        )?;
        let mut candidates = Vec::with_capacity(limit);
        for entry in range.take(limit) {
            let (key, value) = entry?;
            candidates.push((key.value().3, value.value().to_owned()));
        }
        candidates
    };
    let mut deleted = 0;
    for (indexed_on, form_id) in &candidates {
        let states = record_states(txn, domain, form_id)?;
        if crate::retention::form_may_go(*indexed_on as i64, cutoff, &states) {
            delete_form(txn, domain, form_id)?;
            deleted += 1;
        }
    }
    Ok(RetainedForms {
        deleted,
        resume_at: if candidates.len() < limit {
            None
        } else {
            candidates.last().map(|(indexed_on, _)| indexed_on + 1)
        },
    })
}

/// The states of the records that forward form `form_id`.
fn record_states(
    txn: &WriteTransaction,
    domain: &str,
    form_id: &str,
) -> Result<Vec<RecordState>, StoreError> {
    let index = txn.open_table(PAYLOAD_RECORDS)?;
    let records = txn.open_table(RECORDS)?;
    let mut states = Vec::new();
    for entry in index.range((domain, form_id, 0)..=(domain, form_id, u64::MAX))? {
        let seq = entry?.0.value().2;
        if let Some(bytes) = records.get(seq)? {
            let record: RepeatRecord = decode(bytes.value(), || format!("record {seq}"))?;
            // A case or app id equal to the form id is not the form.
            if matches!(&record.payload, PayloadRef::Form { form_id: id } if id == form_id) {
                states.push(record.state);
            }
        }
    }
    Ok(states)
}

/// Deletes a form, its XML and its listing entries.
fn delete_form(txn: &WriteTransaction, domain: &str, form_id: &str) -> Result<(), StoreError> {
    let removed = txn
        .open_table(FORMS)?
        .remove((domain, form_id))?
        .map(|bytes| decode::<StoredForm>(bytes.value(), || format!("form {form_id}")));
    let Some(form) = removed else {
        return Ok(());
    };
    let form = form?;
    data_index::unindex_form(txn, &form)?;
    remove_xml(txn, domain, form_id)
}

fn remove_xml(txn: &WriteTransaction, domain: &str, form_id: &str) -> Result<(), StoreError> {
    let removed = txn
        .open_table(FORM_XML)?
        .remove((domain, form_id))?
        .map(|xml| xml.value().len());
    if let Some(len) = removed {
        stats::add_form_xml(txn, domain, -(len as i64))?;
    }
    Ok(())
}

/// What retention keeps that is oldest.
pub(super) fn oldest_kept(txn: &ReadTransaction) -> Result<OldestKept, StoreError> {
    let index = txn.open_table(FINAL_RECORDS)?;
    let mut records = Vec::new();
    for state in RecordState::ALL
        .into_iter()
        .filter(|state| is_final(*state))
    {
        let first = index
            .range((state.as_str(), 0, 0)..=(state.as_str(), u64::MAX, u64::MAX))?
            .next()
            .transpose()?
            .map(|(key, _)| key.value().1 as i64);
        records.push((state, first));
    }
    let listing = txn.open_table(FORM_LISTING)?;
    let scope = FormScope::All.key();
    let mut form: Option<i64> = None;
    for domain in super::form_domains_in(txn)? {
        let first = listing
            .range(
                (domain.as_str(), scope.as_str(), 0, 0)
                    ..=(domain.as_str(), scope.as_str(), u64::MAX, u64::MAX),
            )?
            .next()
            .transpose()?
            .map(|(key, _)| key.value().3 as i64);
        if let Some(at) = first {
            form = Some(form.map_or(at, |known| known.min(at)));
        }
    }
    Ok(OldestKept { records, form })
}
