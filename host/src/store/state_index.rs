//! Records by state: the per-repeater state counts (`STATE_COUNTS`) and the
//! listing index (`STATE_RECORDS`, keyed (domain, state, repeater, seq)) move
//! together, in `move_record`, the only place either is written after a
//! store is opened. A listing filtered by state reads the index instead of
//! walking the domain's records: with a repeater, one range read; without
//! one, a merge by seq of one range per repeater the index holds for the
//! state, so a state that only a few old records are in costs as little as
//! any other.
//!
//! The index is keyed by the repeater's name, as the listing filter is, so
//! that records of a deleted repeater (whose id the catalog no longer knows)
//! are still listed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Bound;

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::StoreError;
use super::encoding::decode;
use super::tables::{META, RECORDS, STATE_COUNTS, STATE_RECORDS};
use crate::record::{RecordState, RepeatRecord};

/// Set in META once every record of the store is in `STATE_RECORDS`.
const INDEXED_KEY: &str = "state_records_indexed";

/// Moves a record from the state it had (`before`; `None` for a new record)
/// to the one it has now, in the state counts and the state index alike.
pub(super) fn move_record(
    txn: &WriteTransaction,
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
    let mut counts = txn.open_table(STATE_COUNTS)?;
    let mut index = txn.open_table(STATE_RECORDS)?;
    if let Some(b) = before {
        let key = (b.repeater_id, b.state.as_str());
        let n = counts.get(key)?.map_or(0, |v| v.value());
        counts.insert(key, n.saturating_sub(1))?;
        index.remove((
            b.domain.as_str(),
            b.state.as_str(),
            b.repeater.as_str(),
            b.seq,
        ))?;
    }
    let key = (record.repeater_id, record.state.as_str());
    let n = counts.get(key)?.map_or(0, |v| v.value());
    counts.insert(key, n + 1)?;
    index.insert(
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

/// Takes a deleted record (retention) out of the state counts and the index.
pub(super) fn remove_record(
    txn: &WriteTransaction,
    record: &RepeatRecord,
) -> Result<(), StoreError> {
    let mut counts = txn.open_table(STATE_COUNTS)?;
    let key = (record.repeater_id, record.state.as_str());
    let n = counts.get(key)?.map_or(0, |v| v.value());
    counts.insert(key, n.saturating_sub(1))?;
    txn.open_table(STATE_RECORDS)?.remove((
        record.domain.as_str(),
        record.state.as_str(),
        record.repeater.as_str(),
        record.seq,
    ))?;
    Ok(())
}

/// Puts every record of a store written before the state index existed into
/// it; does nothing once done. Returns how many records it indexed.
pub(super) fn backfill(txn: &WriteTransaction) -> Result<u64, StoreError> {
    if txn.open_table(META)?.get(INDEXED_KEY)?.is_some() {
        return Ok(0);
    }
    let records = txn.open_table(RECORDS)?;
    let mut index = txn.open_table(STATE_RECORDS)?;
    let mut indexed = 0;
    for entry in records.iter()? {
        let (key, value) = entry?;
        let seq = key.value();
        let record: RepeatRecord = decode(value.value(), || format!("record {seq}"))?;
        index.insert(
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
    txn.open_table(META)?.insert(INDEXED_KEY, 1)?;
    Ok(indexed)
}

/// Up to `limit` seqs below `upper` of a domain's records in `state` (of
/// `repeater` only, if given), newest first.
pub(super) fn newest_in_state(
    txn: &ReadTransaction,
    domain: &str,
    state: RecordState,
    repeater: Option<&str>,
    upper: u64,
    limit: usize,
) -> Result<Vec<u64>, StoreError> {
    let index = txn.open_table(STATE_RECORDS)?;
    let state = state.as_str();
    let names = match repeater {
        Some(name) => vec![name.to_owned()],
        None => repeaters_in_state(&index, domain, state)?,
    };
    let mut ranges = Vec::with_capacity(names.len());
    for name in &names {
        let range = index
            .range((domain, state, name.as_str(), 0)..(domain, state, name.as_str(), upper))?;
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
