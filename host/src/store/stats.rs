//! What a domain keeps, in figures (`GET /api/v1/domains/{domain}/stats`
//! and `/metrics`): records per state and the bytes of its forms' XML, kept
//! in `DOMAIN_COUNTS` and moved in the same group commit as the record or
//! form they count (summed in memory by `WriteTables`, written once); forms
//! and cases are the Data API's listing counts (`LISTING_COUNTS`), so every
//! figure costs one read. Stores written before these counts existed are
//! counted once when opened (`backfill`).

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable};
use serde::Serialize;

use super::StoreError;
use super::data_index::{CaseScope, FormScope};
use super::encoding::{decode_form, decode_record};
use super::tables::{DOMAIN_COUNTS, LISTING_COUNTS};
use super::write_tables::{DomainFigure, WriteTables};
use crate::record::{RecordState, RepeatRecord};

/// Set in META once every record and form of the store is counted.
const COUNTED_KEY: &str = "domain_counts_counted";

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

/// Moves a record from the state it had (`before`; `None` for a new
/// record) to the one it has now; summed for the group commit.
pub(super) fn move_record(
    tables: &mut WriteTables<'_>,
    before: Option<&RepeatRecord>,
    record: &RepeatRecord,
) {
    if before.is_some_and(|b| b.state == record.state && b.domain == record.domain) {
        return;
    }
    if let Some(b) = before {
        tables.count_domain(&b.domain, DomainFigure::Records(b.state), -1);
    }
    tables.count_domain(&record.domain, DomainFigure::Records(record.state), 1);
}

/// A record deleted (by retention).
pub(super) fn remove_record(tables: &mut WriteTables<'_>, record: &RepeatRecord) {
    tables.count_domain(&record.domain, DomainFigure::Records(record.state), -1);
}

/// A form's XML (`bytes` long as submitted) stored (`bytes` > 0) or
/// deleted (`bytes` < 0).
pub(super) fn add_form_xml(tables: &mut WriteTables<'_>, domain: &str, bytes: i64) {
    tables.count_domain(domain, DomainFigure::FormXmlBytes, bytes);
}

/// Counts every record and form of a store written before these counts
/// existed (a new store, or one migrated from schema 1, which had none);
/// does nothing once done. Returns how many it counted.
pub(super) fn backfill(tables: &mut WriteTables<'_>) -> Result<u64, StoreError> {
    if tables.meta.get(COUNTED_KEY)?.is_some() {
        return Ok(0);
    }
    let mut figures: BTreeMap<(String, DomainFigure), i64> = BTreeMap::new();
    let mut counted = 0;
    for entry in tables.records.iter()? {
        let (key, value) = entry?;
        let seq = key.value();
        let record = decode_record(seq, value.value())?;
        *figures
            .entry((record.domain, DomainFigure::Records(record.state)))
            .or_default() += 1;
        counted += 1;
    }
    for entry in tables.forms.iter()? {
        let (key, value) = entry?;
        let (domain, form_id) = key.value();
        let form = decode_form(domain, form_id, value.value())?;
        *figures
            .entry((domain.to_owned(), DomainFigure::FormXmlBytes))
            .or_default() += form.xml_len()? as i64;
        counted += 1;
    }
    for ((domain, figure), n) in figures {
        tables.count_domain(&domain, figure, n);
    }
    tables.meta.insert(COUNTED_KEY, 1)?;
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
        records.insert(state, figure(&DomainFigure::Records(state).key())?);
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
        form_xml_bytes: figure(&DomainFigure::FormXmlBytes.key())?,
    })
}
