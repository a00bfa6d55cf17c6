//! The indexes behind the Data API (SPEC section 11): every form and case
//! gets an `indexed_on` when it is stored or changed, strictly increasing
//! within its domain (the last one handed out is kept per domain; a new one is
//! the later of now and that plus one microsecond), written in the same
//! transaction as the submission that caused it. Because the store has one
//! writer and a group commit becomes visible at once, a reader that has seen
//! `indexed_on` = t has also seen everything below t: paging by
//! `indexed_on_start` misses nothing while forms arrive.
//!
//! Listings are key ranges of `FORM_LISTING` and `CASE_LISTING`, keyed
//! (domain, scope, order key, indexed_on). A scope is one way of narrowing
//! the list that has its own entries: all forms, forms of one `xmlns`, of one
//! `app_id`, all forms by `received_on`; all cases, cases of one type, all
//! cases by `server_date_modified`. A page is a range read from the requested
//! start: its cost depends on the page size, not on how deep it is, when the
//! client pages by `indexed_on_start` (commcare-export does). An `offset`
//! skips index keys without decoding their objects. `total_count` of a whole
//! scope is one read of `LISTING_COUNTS`; of a time range it counts the
//! range's keys (no object is decoded). Other filters (forms: `case_id`
//! aside, which the API answers from the case's `xform_ids`; cases:
//! `owner_id`, `user_id`, `closed`, `date_modified`) are checked on each
//! object of the scope's range, so their cost grows with the objects they
//! skip; the range filters narrow that scan.
//!
//! Stores written before these indexes existed are indexed once when they
//! are opened (`backfill`): forms in `received_on` order, cases in
//! `server_date_modified` order, each from its own time, made strictly
//! increasing per domain.

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, TableDefinition};

use super::encoding::{decode_case, decode_form, stamp_indexed_on};
use super::tables::LISTING_COUNTS;
use super::write_tables::{ListingKind, WriteTables};
use super::{Listed, StoreError};
use crate::model::{Case, StoredForm};

/// The `META` key saying that every form and case has its `indexed_on`.
const INDEXED_KEY: &str = "data_api_indexed";

/// A set of forms with entries of its own, ordered by the key it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormScope {
    /// Every form, by `indexed_on`.
    All,
    /// Forms of one `xmlns`, by `indexed_on`.
    Xmlns(String),
    /// Forms of one app, by `indexed_on`.
    AppId(String),
    /// Every form, by `received_on`.
    ByReceivedOn,
}

impl FormScope {
    pub(super) fn key(&self) -> String {
        match self {
            FormScope::All => "form".into(),
            FormScope::Xmlns(xmlns) => format!("form/xmlns/{xmlns}"),
            FormScope::AppId(app_id) => format!("form/app/{app_id}"),
            FormScope::ByReceivedOn => "form/received".into(),
        }
    }
}

/// A set of cases with entries of its own, ordered by the key it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseScope {
    /// Every case, by `indexed_on`.
    All,
    /// Cases of one type, by `indexed_on`.
    Type(String),
    /// Every case, by `server_date_modified`.
    ByServerDateModified,
}

impl CaseScope {
    pub(super) fn key(&self) -> String {
        match self {
            CaseScope::All => "case".into(),
            CaseScope::Type(case_type) => format!("case/type/{case_type}"),
            CaseScope::ByServerDateModified => "case/modified".into(),
        }
    }
}

/// Unix micros of a stored server time, as an order key.
pub(super) fn order_key(timestamp: &str, fallback: u64) -> u64 {
    crate::time::parse_timestamp(timestamp).map_or(fallback, |micros| micros.max(0) as u64)
}

fn form_entries(form: &StoredForm, indexed_on: u64) -> Vec<(String, u64)> {
    let mut entries = vec![
        (FormScope::All.key(), indexed_on),
        (FormScope::Xmlns(form.xmlns.clone()).key(), indexed_on),
        (
            FormScope::ByReceivedOn.key(),
            order_key(&form.received_on, indexed_on),
        ),
    ];
    if let Some(app_id) = &form.app_id {
        entries.push((FormScope::AppId(app_id.clone()).key(), indexed_on));
    }
    entries
}

fn case_entries(case: &Case, indexed_on: u64) -> Vec<(String, u64)> {
    vec![
        (CaseScope::All.key(), indexed_on),
        (CaseScope::Type(case.case_type.clone()).key(), indexed_on),
        (
            CaseScope::ByServerDateModified.key(),
            order_key(&case.server_date_modified, indexed_on),
        ),
    ]
}

/// Where an object stands in its listings: its `indexed_on` and the
/// (scope, order key) of each of its entries.
pub(super) struct ListedEntries {
    indexed_on: u64,
    entries: Vec<(String, u64)>,
}

/// Where a stored case stands in the listings, to move it when it changes.
pub(super) fn case_listed(case: &Case, indexed_on: u64) -> ListedEntries {
    ListedEntries {
        indexed_on,
        entries: case_entries(case, indexed_on),
    }
}

/// Gives a newly stored form its `indexed_on` (stamped into its encoded
/// `value`) and its listing entries; returns the `indexed_on`.
pub(super) fn index_form(
    tables: &mut WriteTables<'_>,
    form: &StoredForm,
    value: &mut [u8],
    now: i64,
) -> Result<u64, StoreError> {
    let indexed_on = tables.next_indexed_on(&form.domain, now)?;
    stamp_indexed_on(value, indexed_on);
    let entries = form_entries(form, indexed_on);
    tables.list(
        ListingKind::Forms,
        &form.domain,
        &form.form_id,
        entries,
        indexed_on,
    )?;
    Ok(indexed_on)
}

/// Gives a stored form that changed (a later part's attachments) a new
/// `indexed_on` in place of `previous` and moves its listing entries, so
/// that a client paging by `indexed_on_start` sees it again. Returns the new
/// `indexed_on`, for the caller to stamp into the form's value.
pub(super) fn reindex_form(
    tables: &mut WriteTables<'_>,
    form: &StoredForm,
    previous: u64,
    now: i64,
) -> Result<u64, StoreError> {
    tables.unlist(
        ListingKind::Forms,
        &form.domain,
        form_entries(form, previous),
        previous,
    )?;
    let indexed_on = tables.next_indexed_on(&form.domain, now)?;
    let entries = form_entries(form, indexed_on);
    tables.list(
        ListingKind::Forms,
        &form.domain,
        &form.form_id,
        entries,
        indexed_on,
    )?;
    Ok(indexed_on)
}

/// Takes a deleted form (retention), stored under `indexed_on`, out of
/// every listing and its counts.
pub(super) fn unindex_form(
    tables: &mut WriteTables<'_>,
    form: &StoredForm,
    indexed_on: u64,
) -> Result<(), StoreError> {
    tables.unlist(
        ListingKind::Forms,
        &form.domain,
        form_entries(form, indexed_on),
        indexed_on,
    )
}

/// Gives a case that a form created or changed a new `indexed_on` (stamped
/// into its encoded `value`) and moves its listing entries; `before` is
/// where the case as stored was listed.
pub(super) fn index_case(
    tables: &mut WriteTables<'_>,
    before: Option<ListedEntries>,
    case: &Case,
    value: &mut [u8],
    now: i64,
) -> Result<(), StoreError> {
    let domain = case.domain.as_str();
    let indexed_on = tables.next_indexed_on(domain, now)?;
    stamp_indexed_on(value, indexed_on);
    if let Some(before) = before {
        tables.unlist(
            ListingKind::Cases,
            domain,
            before.entries,
            before.indexed_on,
        )?;
    }
    let entries = case_entries(case, indexed_on);
    tables.list(
        ListingKind::Cases,
        domain,
        &case.case_id,
        entries,
        indexed_on,
    )
}

/// Indexes every form and case of a store written before the Data API's
/// indexes existed (their values carry `indexed_on` 0 since `migration`);
/// does nothing once done. Returns how many objects it indexed.
pub(super) fn backfill(tables: &mut WriteTables<'_>) -> Result<u64, StoreError> {
    if tables.meta.get(INDEXED_KEY)?.is_some() {
        return Ok(0);
    }
    // Per domain, (time, object, value) in the order the objects were
    // stored in.
    let mut forms: BTreeMap<String, Vec<(u64, StoredForm, Vec<u8>)>> = BTreeMap::new();
    for entry in tables.forms.iter()? {
        let (key, value) = entry?;
        let (domain, form_id) = key.value();
        let form = decode_form(domain, form_id, value.value())?.form;
        let at = order_key(&form.received_on, 0);
        forms
            .entry(domain.to_owned())
            .or_default()
            .push((at, form, value.value().to_vec()));
    }
    let mut cases: BTreeMap<String, Vec<(u64, Case, Vec<u8>)>> = BTreeMap::new();
    for entry in tables.cases.iter()? {
        let (key, value) = entry?;
        let (domain, case_id) = key.value();
        let (case, _) = decode_case(value.value(), case_id)?;
        let at = order_key(&case.server_date_modified, 0);
        cases
            .entry(domain.to_owned())
            .or_default()
            .push((at, case, value.value().to_vec()));
    }
    let mut indexed = 0;
    for (_, mut domain_forms) in forms {
        domain_forms.sort_by(|a, b| (a.0, &a.1.form_id).cmp(&(b.0, &b.1.form_id)));
        for (at, form, mut value) in domain_forms {
            index_form(tables, &form, &mut value, at as i64)?;
            let key = (form.domain.as_str(), form.form_id.as_str());
            tables.forms.insert(key, value.as_slice())?;
            indexed += 1;
        }
    }
    for (_, mut domain_cases) in cases {
        domain_cases.sort_by(|a, b| (a.0, &a.1.case_id).cmp(&(b.0, &b.1.case_id)));
        for (at, case, mut value) in domain_cases {
            index_case(tables, None, &case, &mut value, at as i64)?;
            let key = (case.domain.as_str(), case.case_id.as_str());
            tables.cases.insert(key, value.as_slice())?;
            indexed += 1;
        }
    }
    tables.meta.insert(INDEXED_KEY, 1)?;
    Ok(indexed)
}

/// Which entries of a listing to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListingRange {
    /// Inclusive lower bound on the scope's order key (Unix micros).
    pub start: Option<i64>,
    /// Exclusive upper bound.
    pub end: Option<i64>,
    /// Newest first.
    pub descending: bool,
}

impl ListingRange {
    fn bounds(&self) -> Option<(u64, u64)> {
        let start = self.start.map_or(0, |at| at.max(0) as u64);
        let end = self.end.map_or(u64::MAX, |at| at.max(0) as u64);
        (start < end).then_some((start, end))
    }

    /// Neither bound is set.
    pub fn is_whole(&self) -> bool {
        self.start.is_none() && self.end.is_none()
    }
}

/// One page of a listing: (id, indexed_on) of the objects on it, and how many
/// objects match in all.
#[derive(Debug)]
struct ListedIds {
    pub ids: Vec<(String, u64)>,
    pub total_count: u64,
}

/// Which objects of a listing to keep, given each one and its `indexed_on`
/// (`None`: every object of the range).
pub type Keep<'a, T> = Option<&'a (dyn Fn(&T, i64) -> bool + Sync)>;

/// Which entries to keep, given (id, indexed_on); it reads the object.
type KeepEntry<'a> = Option<&'a mut dyn FnMut(&str, u64) -> Result<bool, StoreError>>;

/// A listing's tables: the objects ((domain, id) → encoded value) and its
/// entries, and how an object is read from (domain, id, value).
pub(super) struct Listing<T> {
    pub objects: TableDefinition<'static, (&'static str, &'static str), &'static [u8]>,
    pub entries: TableDefinition<'static, (&'static str, &'static str, u64, u64), &'static str>,
    pub decode: fn(&str, &str, &[u8]) -> Result<T, StoreError>,
}

impl<T> Listing<T> {
    /// One page of `scope`: the objects `keep` keeps, with their
    /// `indexed_on`, and how many match in all.
    pub(super) fn page(
        &self,
        txn: &ReadTransaction,
        domain: &str,
        scope: &str,
        range: &ListingRange,
        page: (usize, usize),
        keep: Keep<'_, T>,
    ) -> Result<Listed<(T, i64)>, StoreError> {
        let objects = txn.open_table(self.objects)?;
        let read = |id: &str| -> Result<Option<T>, StoreError> {
            match objects.get((domain, id))? {
                Some(bytes) => Ok(Some((self.decode)(domain, id, bytes.value())?)),
                None => Ok(None),
            }
        };
        let mut test = |id: &str, indexed_on: u64| -> Result<bool, StoreError> {
            Ok(read(id)?
                .is_some_and(|object| keep.is_some_and(|keep| keep(&object, indexed_on as i64))))
        };
        let listed = list(
            &txn.open_table(self.entries)?,
            &txn.open_table(LISTING_COUNTS)?,
            domain,
            scope,
            range,
            page,
            keep.is_some()
                .then_some(&mut test as &mut dyn FnMut(&str, u64) -> _),
        )?;
        let mut found = Vec::with_capacity(listed.ids.len());
        for (id, indexed_on) in listed.ids {
            if let Some(object) = read(&id)? {
                found.push((object, indexed_on as i64));
            }
        }
        Ok(Listed {
            objects: found,
            total_count: listed.total_count,
        })
    }
}

/// Reads a page of a listing. `keep` decides on each candidate (id,
/// indexed_on): it reads and tests the object; without it every entry of the range matches, and
/// objects are never read here.
fn list(
    listing: &impl ReadableTable<(&'static str, &'static str, u64, u64), &'static str>,
    counts: &impl ReadableTable<(&'static str, &'static str), u64>,
    domain: &str,
    scope: &str,
    range: &ListingRange,
    (offset, limit): (usize, usize),
    mut keep: KeepEntry<'_>,
) -> Result<ListedIds, StoreError> {
    let Some((start, end)) = range.bounds() else {
        return Ok(ListedIds {
            ids: Vec::new(),
            total_count: 0,
        });
    };
    let entries = listing.range((domain, scope, start, 0)..(domain, scope, end, 0))?;
    let entries: Box<dyn Iterator<Item = _>> = if range.descending {
        Box::new(entries.rev())
    } else {
        Box::new(entries)
    };
    let mut ids = Vec::new();
    let mut matched = 0usize;
    let counted_apart = keep.is_none() && range.is_whole();
    for entry in entries {
        let (key, value) = entry?;
        let id = value.value();
        let indexed_on = key.value().3;
        if let Some(keep) = keep.as_mut()
            && !keep(id, indexed_on)?
        {
            continue;
        }
        if matched >= offset && ids.len() < limit {
            ids.push((id.to_owned(), indexed_on));
        }
        matched += 1;
        if counted_apart && ids.len() >= limit {
            break;
        }
    }
    let total_count = if counted_apart {
        counts.get((domain, scope))?.map_or(0, |v| v.value())
    } else {
        matched as u64
    };
    Ok(ListedIds { ids, total_count })
}
