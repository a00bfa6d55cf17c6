//! What a domain keeps, in figures (`GET /api/v1/domains/{domain}/stats`
//! and `/metrics`): records per state and the bytes of its forms' XML, kept
//! in `DOMAIN_COUNTS` and moved in the same transaction as the record or
//! form they count; forms and cases are the Data API's listing counts
//! (`LISTING_COUNTS`), so every figure costs one read. Stores written before
//! these counts existed are counted once when opened (`backfill`).

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::Serialize;

use super::StoreError;
use super::data_index::{CaseScope, FormScope};
use super::encoding::decode;
use super::tables::{DOMAIN_COUNTS, FORM_XML, LISTING_COUNTS, META, RECORDS};
use crate::record::{RecordState, RepeatRecord};

/// Set in META once every record and form of the store is counted.
const COUNTED_KEY: &str = "domain_counts_counted";
const FORM_XML_BYTES: &str = "form_xml_bytes";

/// A domain's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainStats {
    /// Every state, from 0.
    pub records: BTreeMap<RecordState, u64>,
    pub forms: u64,
    pub cases: u64,
    /// The submitted XML of the forms kept, byte for byte.
    pub form_xml_bytes: u64,
}

fn records_key(state: RecordState) -> String {
    format!("records/{}", state.as_str())
}

fn add(txn: &WriteTransaction, domain: &str, figure: &str, delta: i64) -> Result<(), StoreError> {
    let mut counts = txn.open_table(DOMAIN_COUNTS)?;
    let n = counts.get((domain, figure))?.map_or(0, |v| v.value());
    counts.insert((domain, figure), n.saturating_add_signed(delta))?;
    Ok(())
}

/// Moves a record from the state it had (`before`; `None` for a new
/// record) to the one it has now.
pub(super) fn move_record(
    txn: &WriteTransaction,
    before: Option<&RepeatRecord>,
    record: &RepeatRecord,
) -> Result<(), StoreError> {
    if before.is_some_and(|b| b.state == record.state && b.domain == record.domain) {
        return Ok(());
    }
    if let Some(b) = before {
        add(txn, &b.domain, &records_key(b.state), -1)?;
    }
    add(txn, &record.domain, &records_key(record.state), 1)
}

/// A record deleted (by retention).
pub(super) fn remove_record(
    txn: &WriteTransaction,
    record: &RepeatRecord,
) -> Result<(), StoreError> {
    add(txn, &record.domain, &records_key(record.state), -1)
}

/// A form's XML stored (`bytes` > 0) or deleted (`bytes` < 0).
pub(super) fn add_form_xml(
    txn: &WriteTransaction,
    domain: &str,
    bytes: i64,
) -> Result<(), StoreError> {
    add(txn, domain, FORM_XML_BYTES, bytes)
}

/// Counts every record and form of a store written before these counts
/// existed; does nothing once done. Returns how many it counted.
pub(super) fn backfill(txn: &WriteTransaction) -> Result<u64, StoreError> {
    if txn.open_table(META)?.get(COUNTED_KEY)?.is_some() {
        return Ok(0);
    }
    let mut figures: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut counted = 0;
    for entry in txn.open_table(RECORDS)?.iter()? {
        let (key, value) = entry?;
        let seq = key.value();
        let record: RepeatRecord = decode(value.value(), || format!("record {seq}"))?;
        *figures
            .entry((record.domain.clone(), records_key(record.state)))
            .or_default() += 1;
        counted += 1;
    }
    for entry in txn.open_table(FORM_XML)?.iter()? {
        let (key, value) = entry?;
        let (domain, _) = key.value();
        *figures
            .entry((domain.to_owned(), FORM_XML_BYTES.to_owned()))
            .or_default() += value.value().len() as u64;
        counted += 1;
    }
    let mut counts = txn.open_table(DOMAIN_COUNTS)?;
    for ((domain, figure), n) in figures {
        counts.insert((domain.as_str(), figure.as_str()), n)?;
    }
    txn.open_table(META)?.insert(COUNTED_KEY, 1)?;
    Ok(counted)
}

/// A domain's figures, from one read transaction.
pub(super) fn domain_stats(txn: &ReadTransaction, domain: &str) -> Result<DomainStats, StoreError> {
    let counts = txn.open_table(DOMAIN_COUNTS)?;
    let figure = |name: &str| -> Result<u64, StoreError> {
        Ok(counts.get((domain, name))?.map_or(0, |v| v.value()))
    };
    let mut records = BTreeMap::new();
    for state in RecordState::ALL {
        records.insert(state, figure(&records_key(state))?);
    }
    let listings = txn.open_table(LISTING_COUNTS)?;
    let listed = |scope: String| -> Result<u64, StoreError> {
        Ok(listings
            .get((domain, scope.as_str()))?
            .map_or(0, |v| v.value()))
    };
    Ok(DomainStats {
        records,
        forms: listed(FormScope::All.key())?,
        cases: listed(CaseScope::All.key())?,
        form_xml_bytes: figure(FORM_XML_BYTES)?,
    })
}
