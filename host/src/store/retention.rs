//! Retention's side of the store: the index of records in a final state by
//! the time they entered it (`FINAL_RECORDS`, with `FINAL_SINCE` to find a
//! record's entry), moved by `track` in the transaction that changes the
//! record's state, and the deletions `crate::retention` decides on: records
//! that became final at or before a cutoff, with their attempts and every
//! index entry that names them; forms older than a cutoff that no open record
//! needs, with their listing entries (a form's value holds its XML). One
//! function per table below takes a deleted record or form out of it, so a
//! table that changes shape changes one function. Every write goes through
//! the group commit's tables (`WriteTables`); the counts a deletion moves
//! are summed there and written once per commit. Cases are never deleted.

use redb::{ReadTransaction, ReadableTable};

use super::data_index::{self, FormScope};
use super::encoding::{decode_form, decode_record};
use super::tables::{FINAL_RECORDS, FORM_LISTING};
use super::write_tables::WriteTables;
use super::{StoreError, state_index, stats};
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
    tables: &mut WriteTables<'_>,
    before: Option<&RepeatRecord>,
    record: &RepeatRecord,
    now: i64,
) -> Result<(), StoreError> {
    let was_final = before.is_some_and(|b| is_final(b.state));
    if was_final && before.is_some_and(|b| b.state == record.state) {
        return Ok(());
    }
    if let Some(b) = before.filter(|b| is_final(b.state)) {
        unindex_final(tables, b)?;
    }
    if is_final(record.state) {
        let since = now.max(0) as u64;
        tables
            .final_records
            .insert((record.state.as_str(), since, record.seq), ())?;
        tables.final_since.insert(record.seq, since)?;
    }
    Ok(())
}

fn unindex_final(tables: &mut WriteTables<'_>, record: &RepeatRecord) -> Result<(), StoreError> {
    let since = tables.final_since.remove(record.seq)?.map(|v| v.value());
    if let Some(since) = since {
        tables
            .final_records
            .remove((record.state.as_str(), since, record.seq))?;
    }
    Ok(())
}

/// Indexes every final record of a store written before `FINAL_RECORDS`
/// existed, from its last attempt (or its registration); does nothing once
/// done (a new store, or one migrated from schema 1, has it run once).
/// Returns how many records it indexed.
pub(super) fn backfill(tables: &mut WriteTables<'_>) -> Result<u64, StoreError> {
    if tables.meta.get(INDEXED_KEY)?.is_some() {
        return Ok(0);
    }
    let mut indexed = 0;
    for entry in tables.records.iter()? {
        let (key, value) = entry?;
        let seq = key.value();
        let record = decode_record(seq, value.value())?;
        if is_final(record.state) {
            let since = record
                .last_attempt_at
                .unwrap_or(record.registered_at)
                .max(0) as u64;
            tables
                .final_records
                .insert((record.state.as_str(), since, seq), ())?;
            tables.final_since.insert(seq, since)?;
            indexed += 1;
        }
    }
    tables.meta.insert(INDEXED_KEY, 1)?;
    Ok(indexed)
}

/// Deletes up to `limit` records that have been in `state` since `cutoff`
/// or earlier, oldest first; returns how many.
pub(super) fn delete_records(
    tables: &mut WriteTables<'_>,
    state: RecordState,
    cutoff: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    if !is_final(state) || cutoff < 0 {
        return Ok(0);
    }
    let seqs: Vec<u64> = {
        let range = tables
            .final_records
            .range((state.as_str(), 0, 0)..=(state.as_str(), cutoff as u64, u64::MAX))?;
        let mut seqs = Vec::with_capacity(limit);
        for entry in range.take(limit) {
            seqs.push(entry?.0.value().2);
        }
        seqs
    };
    for &seq in &seqs {
        delete_record(tables, seq)?;
    }
    Ok(seqs.len())
}

/// Deletes one record with its attempts and every index entry naming it.
fn delete_record(tables: &mut WriteTables<'_>, seq: u64) -> Result<(), StoreError> {
    let removed = tables
        .records
        .remove(seq)?
        .map(|bytes| decode_record(seq, bytes.value()));
    let Some(record) = removed else {
        // Only its index entries are left (they never should be).
        let since = tables.final_since.remove(seq)?.map(|v| v.value());
        if let Some(since) = since {
            for state in RecordState::ALL {
                tables.final_records.remove((state.as_str(), since, seq))?;
            }
        }
        return Ok(());
    };
    let record = record?;
    remove_attempts(tables, seq)?;
    remove_due(tables, &record)?;
    remove_listing_entries(tables, &record)?;
    state_index::remove_record(tables, &record)?;
    stats::remove_record(tables, &record);
    unindex_final(tables, &record)
}

fn remove_attempts(tables: &mut WriteTables<'_>, seq: u64) -> Result<(), StoreError> {
    tables
        .attempts
        .retain_in((seq, 0)..=(seq, u32::MAX), |_, _| false)?;
    Ok(())
}

fn remove_due(tables: &mut WriteTables<'_>, record: &RepeatRecord) -> Result<(), StoreError> {
    if let Some(at) = record.next_attempt_at {
        tables
            .due
            .remove((record.repeater_id, at.max(0) as u64, record.seq))?;
    }
    Ok(())
}

/// The payload id's record listing (the state index, which also lists a
/// domain's records, is `state_index::remove_record`'s).
fn remove_listing_entries(
    tables: &mut WriteTables<'_>,
    record: &RepeatRecord,
) -> Result<(), StoreError> {
    tables.payload_records.remove((
        record.domain.as_str(),
        record.payload.payload_id(),
        record.seq,
    ))?;
    Ok(())
}

/// Looks at up to `limit` forms of `domain` stored from `start` to `cutoff`
/// (by `indexed_on`, oldest first) and deletes those no `pending` or
/// `failed` record needs (`retention::form_may_go`).
pub(super) fn delete_forms(
    tables: &mut WriteTables<'_>,
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
        let range = tables.form_listing.range(
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
        let states = record_states(tables, domain, form_id)?;
        if crate::retention::form_may_go(*indexed_on as i64, cutoff, &states) {
            delete_form(tables, domain, form_id)?;
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
    tables: &WriteTables<'_>,
    domain: &str,
    form_id: &str,
) -> Result<Vec<RecordState>, StoreError> {
    let mut states = Vec::new();
    for entry in tables
        .payload_records
        .range((domain, form_id, 0)..=(domain, form_id, u64::MAX))?
    {
        let seq = entry?.0.value().2;
        if let Some(bytes) = tables.records.get(seq)? {
            let record = decode_record(seq, bytes.value())?;
            // A case or app id equal to the form id is not the form.
            if matches!(&record.payload, PayloadRef::Form { form_id: id } if id == form_id) {
                states.push(record.state);
            }
        }
    }
    Ok(states)
}

/// Deletes a form (its one value holds its XML) and its listing entries,
/// and uncounts its XML's bytes.
fn delete_form(
    tables: &mut WriteTables<'_>,
    domain: &str,
    form_id: &str,
) -> Result<(), StoreError> {
    let removed = tables
        .forms
        .remove((domain, form_id))?
        .map(|bytes| bytes.value().to_vec());
    let Some(value) = removed else {
        return Ok(());
    };
    let stored = decode_form(domain, form_id, &value)?;
    data_index::unindex_form(tables, &stored.form, stored.indexed_on)?;
    stats::add_form_xml(tables, domain, -(stored.xml_len()? as i64));
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
