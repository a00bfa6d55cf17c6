//! Records by state: the per-repeater state counts (`STATE_COUNTS`) and the
//! listing index (`STATE_RECORDS`, keyed (domain, state, repeater, seq)) move
//! together, in `move_record` (and `remove_record`, when retention deletes a
//! record), the only places either is written after a store is opened. A
//! listing filtered by state reads the index instead of walking the
//! domain's records: with a repeater, one range read; without
//! one, a merge by seq of one range per repeater the index holds for the
//! state, so a state that only a few old records are in costs as little as
//! any other. A listing of every state merges the ranges of all states: the
//! index holds each record once, so no other index of a domain's records is
//! kept.
//!
//! The index is keyed by the repeater's name, as the listing filter is, so
//! that records of a deleted repeater (whose id the catalog no longer knows)
//! are still listed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Bound;

use redb::{ReadTransaction, ReadableTable};

use super::StoreError;
use super::encoding::decode_record;
use super::tables::STATE_RECORDS;
use super::write_tables::WriteTables;
use crate::record::{RecordState, RepeatRecord};

/// Set in META once every record of the store is in `STATE_RECORDS`.
const INDEXED_KEY: &str = "state_records_indexed";

/// Moves a record from the state it had (`before`; `None` for a new record)
/// to the one it has now, in the state counts (summed for the group commit)
/// and the state index alike.
pub(super) fn move_record(
    tables: &mut WriteTables<'_>,
    before: Option<&RepeatRecord>,
    record: &RepeatRecord,
) -> Result<(), StoreError> {
    let same = before.is_some_and(|b| {
        b.state == record.state
            && b.repeater_id == record.repeater_id
            && b.repeater == record.repeater
            && b.domain == record.domain
    });
    if same {
        return Ok(());
    }
    if let Some(b) = before {
        tables.count_state(b.repeater_id, b.state, -1);
        tables.state_records.remove((
            b.domain.as_str(),
            b.state.as_str(),
            b.repeater.as_str(),
            b.seq,
        ))?;
    }
    tables.count_state(record.repeater_id, record.state, 1);
    tables.state_records.insert(
        (
            record.domain.as_str(),
            record.state.as_str(),
            record.repeater.as_str(),
            record.seq,
        ),
        (),
    )?;
    Ok(())
}

/// Takes a deleted record (retention) out of the state counts (summed for
/// the group commit) and the index.
pub(super) fn remove_record(
    tables: &mut WriteTables<'_>,
    record: &RepeatRecord,
) -> Result<(), StoreError> {
    tables.count_state(record.repeater_id, record.state, -1);
    tables.state_records.remove((
        record.domain.as_str(),
        record.state.as_str(),
        record.repeater.as_str(),
        record.seq,
    ))?;
    Ok(())
}

/// Puts every record of a store written before the state index existed into
/// it; does nothing once done. Returns how many records it indexed.
pub(super) fn backfill(tables: &mut WriteTables<'_>) -> Result<u64, StoreError> {
    if tables.meta.get(INDEXED_KEY)?.is_some() {
        return Ok(0);
    }
    let mut indexed = 0;
    for entry in tables.records.iter()? {
        let (key, value) = entry?;
        let seq = key.value();
        let record = decode_record(seq, value.value())?;
        tables.state_records.insert(
            (
                record.domain.as_str(),
                record.state.as_str(),
                record.repeater.as_str(),
                seq,
            ),
            (),
        )?;
        indexed += 1;
    }
    tables.meta.insert(INDEXED_KEY, 1)?;
    Ok(indexed)
}

/// Up to `limit` seqs below `upper` of a domain's records in `state` (in
/// any state, without one; of `repeater` only, if given), newest first. The
/// index holds every record once, so this is also how a domain's records
/// are listed without a state.
pub(super) fn newest(
    txn: &ReadTransaction,
    domain: &str,
    state: Option<RecordState>,
    repeater: Option<&str>,
    upper: u64,
    limit: usize,
) -> Result<Vec<u64>, StoreError> {
    let index = txn.open_table(STATE_RECORDS)?;
    let states = match state {
        Some(state) => vec![state],
        None => RecordState::ALL.to_vec(),
    };
    let mut keys: Vec<(&str, String)> = Vec::new();
    for state in states {
        let state = state.as_str();
        match repeater {
            Some(name) => keys.push((state, name.to_owned())),
            None => {
                for name in repeaters_in_state(&index, domain, state)? {
                    keys.push((state, name));
                }
            }
        }
    }
    let mut ranges = Vec::with_capacity(keys.len());
    for (state, name) in &keys {
        let range = index
            .range((domain, *state, name.as_str(), 0)..(domain, *state, name.as_str(), upper))?;
        ranges.push(range.rev().map(|entry| entry.map(|(key, _)| key.value().3)));
    }
    // A merge by seq, the largest first.
    let mut heads = BinaryHeap::new();
    for (i, range) in ranges.iter_mut().enumerate() {
        if let Some(seq) = range.next() {
            heads.push((seq?, Reverse(i)));
        }
    }
    let mut seqs = Vec::new();
    while seqs.len() < limit {
        let Some((seq, Reverse(i))) = heads.pop() else {
            break;
        };
        seqs.push(seq);
        if let Some(next) = ranges[i].next() {
            heads.push((next?, Reverse(i)));
        }
    }
    Ok(seqs)
}

/// The names of the repeaters the index holds records of in `state`, one
/// seek per name.
fn repeaters_in_state(
    index: &redb::ReadOnlyTable<(&'static str, &'static str, &'static str, u64), ()>,
    domain: &str,
    state: &str,
) -> Result<Vec<String>, StoreError> {
    let mut names: Vec<String> = Vec::new();
    loop {
        let mut range = match names.last() {
            None => index.range((domain, state, "", 0)..)?,
            Some(last) => index.range::<(&str, &str, &str, u64)>((
                Bound::Excluded((domain, state, last.as_str(), u64::MAX)),
                Bound::Unbounded,
            ))?,
        };
        let Some(entry) = range.next() else {
            break;
        };
        let (key, _) = entry?;
        let (found_domain, found_state, name, _) = key.value();
        if found_domain != domain || found_state != state {
            break;
        }
        names.push(name.to_owned());
    }
    Ok(names)
}
