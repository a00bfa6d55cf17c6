//! Bringing a store written by an earlier repeatd up to `SCHEMA_VERSION`,
//! once, in the transaction that opens it (so a crash part-way leaves the
//! old file as it was).
//!
//! Schema 1 → 2: every form's JSON value, its XML (table `form_xml`) and its
//! `indexed_on` (table `form_indexed_on`) become one binary value of `forms`;
//! every case's JSON value and its `indexed_on` (`case_indexed_on`) one of
//! `cases`; the three tables are deleted. A store from before the Data API
//! had no `indexed_on`: its objects get 0 here and their real one from
//! `data_index::backfill`, which runs next. `domain_records` is deleted: the
//! state index (backfilled next, where it is missing) lists a domain's
//! records. Records, attempts and
//! notification states keep their JSON values, which `encoding` still reads:
//! rewriting a million records would make the first start slow for nothing.

use std::ops::Bound;

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use super::StoreError;
use super::encoding::{self, decode};
use crate::model::{Case, StoredForm};

/// (domain, form id) → the submitted XML, byte for byte (schema 1).
pub(super) const FORM_XML_1: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("form_xml");
/// (domain, form id) → the form's `indexed_on` (schema 1).
pub(super) const FORM_INDEXED_ON_1: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("form_indexed_on");
/// (domain, seq): a domain's records (schema 1; `state_index` lists them).
pub(super) const DOMAIN_RECORDS_1: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("domain_records");
/// (domain, case id) → the case's `indexed_on` (schema 1).
pub(super) const CASE_INDEXED_ON_1: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("case_indexed_on");

/// How many values are read before they are written back, so that a large
/// store is not held in memory whole.
const VALUES_PER_STEP: usize = 1_000;

type Objects<'txn> = Table<'txn, (&'static str, &'static str), &'static [u8]>;

/// Rewrites a schema-1 store's forms and cases as schema 2 has them; returns
/// how many it rewrote.
pub(super) fn from_schema_1(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut rewritten = 0;
    {
        let xml = txn.open_table(FORM_XML_1)?;
        let indexed_on = txn.open_table(FORM_INDEXED_ON_1)?;
        let mut forms = txn.open_table(super::tables::FORMS)?;
        rewritten += rewrite(&mut forms, |(domain, form_id), json| {
            let form: StoredForm = decode(json, || format!("form {form_id}"))?;
            let Some(form_xml) = xml.get((domain, form_id))? else {
                return Err(StoreError::Corrupt {
                    what: format!("form {form_id}"),
                    problem: "its XML is not in the store".into(),
                });
            };
            let compressed = encoding::compress_xml(form_xml.value());
            let mut value = encoding::encode_form(&form, &compressed);
            let stamp = indexed_on.get((domain, form_id))?.map_or(0, |v| v.value());
            encoding::stamp_indexed_on(&mut value, stamp);
            Ok(value)
        })?;
    }
    {
        let indexed_on = txn.open_table(CASE_INDEXED_ON_1)?;
        let mut cases = txn.open_table(super::tables::CASES)?;
        rewritten += rewrite(&mut cases, |(domain, case_id), json| {
            let case: Case = decode(json, || format!("case {case_id}"))?;
            let mut value = encoding::encode_case(&case);
            let stamp = indexed_on.get((domain, case_id))?.map_or(0, |v| v.value());
            encoding::stamp_indexed_on(&mut value, stamp);
            Ok(value)
        })?;
    }
    txn.delete_table(FORM_XML_1)?;
    txn.delete_table(FORM_INDEXED_ON_1)?;
    txn.delete_table(CASE_INDEXED_ON_1)?;
    txn.delete_table(DOMAIN_RECORDS_1)?;
    Ok(rewritten)
}

/// Replaces every value of `table` by what `convert` makes of its key and
/// old value, a step of keys at a time.
fn rewrite(
    table: &mut Objects<'_>,
    mut convert: impl FnMut((&str, &str), &[u8]) -> Result<Vec<u8>, StoreError>,
) -> Result<u64, StoreError> {
    let mut after: Option<(String, String)> = None;
    let mut rewritten = 0;
    loop {
        let mut step: Vec<((String, String), Vec<u8>)> = Vec::with_capacity(VALUES_PER_STEP);
        {
            let start = match &after {
                Some((domain, id)) => Bound::Excluded((domain.as_str(), id.as_str())),
                None => Bound::Unbounded,
            };
            for entry in table.range::<(&str, &str)>((start, Bound::Unbounded))? {
                let (key, value) = entry?;
                let (domain, id) = key.value();
                let converted = convert((domain, id), value.value())?;
                step.push(((domain.to_owned(), id.to_owned()), converted));
                if step.len() >= VALUES_PER_STEP {
                    break;
                }
            }
        }
        let done = step.len() < VALUES_PER_STEP;
        for ((domain, id), value) in &step {
            table.insert((domain.as_str(), id.as_str()), value.as_slice())?;
            rewritten += 1;
        }
        after = step.pop().map(|(key, _)| key);
        if done || after.is_none() {
            return Ok(rewritten);
        }
    }
}
