//! The tables of one write transaction, opened once for every job of a group
//! commit rather than by each job for each value, and the counters jobs move
//! (records per state, entries per listing, the last `indexed_on` of each
//! domain, a domain's figures for the stats): summed in memory while the
//! jobs run and written once, by
//! [`WriteTables::finish`], just before the transaction commits. A batch
//! that is rolled back drops its sums with its writes.

use std::collections::HashMap;

use redb::{ReadableTable, Table, WriteTransaction};

use super::StoreError;
use super::tables::*;
use crate::record::RecordState;

/// A figure of a domain's `DOMAIN_COUNTS` (see `stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum DomainFigure {
    /// How many of the domain's records are in the state.
    Records(RecordState),
    /// The bytes of the domain's forms' XML, as submitted.
    FormXmlBytes,
}

impl DomainFigure {
    /// Its key in `DOMAIN_COUNTS`.
    pub fn key(self) -> String {
        match self {
            DomainFigure::Records(state) => format!("records/{}", state.as_str()),
            DomainFigure::FormXmlBytes => "form_xml_bytes".into(),
        }
    }
}

type Pair = (&'static str, &'static str);
type Listing = (&'static str, &'static str, u64, u64);

pub(super) struct WriteTables<'txn> {
    pub meta: Table<'txn, &'static str, u64>,
    pub forms: Table<'txn, Pair, &'static [u8]>,
    pub cases: Table<'txn, Pair, &'static [u8]>,
    pub records: Table<'txn, u64, &'static [u8]>,
    pub due: Table<'txn, (u64, u64, u64), ()>,
    pub attempts: Table<'txn, (u64, u32), &'static [u8]>,
    pub payload_records: Table<'txn, (&'static str, &'static str, u64), ()>,
    pub state_records: Table<'txn, (&'static str, &'static str, &'static str, u64), ()>,
    pub objects: Table<'txn, (&'static str, &'static str, &'static str), &'static [u8]>,
    pub notifications: Table<'txn, Pair, &'static [u8]>,
    pub final_records: Table<'txn, (&'static str, u64, u64), ()>,
    pub final_since: Table<'txn, u64, u64>,
    /// Read by retention to find old forms; written through `list`/`unlist`.
    pub form_listing: Table<'txn, Listing, &'static str>,
    case_listing: Table<'txn, Listing, &'static str>,
    state_counts: Table<'txn, (u64, &'static str), u64>,
    listing_counts: Table<'txn, Pair, u64>,
    last_indexed_on: Table<'txn, &'static str, u64>,
    domain_counts: Table<'txn, Pair, u64>,
    state_count_changes: HashMap<(u64, RecordState), i64>,
    listing_count_changes: HashMap<(String, String), i64>,
    /// Per domain (looked up by `&str`, so that a record written costs no
    /// allocation once its domain is in the batch).
    domain_count_changes: HashMap<String, HashMap<DomainFigure, i64>>,
    /// The last `indexed_on` handed out per domain, as it stands in this batch.
    indexed_on_so_far: HashMap<String, u64>,
}

impl<'txn> WriteTables<'txn> {
    /// Opens (creating what a new file lacks) every table a job may write.
    pub fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(WriteTables {
            meta: txn.open_table(META)?,
            forms: txn.open_table(FORMS)?,
            cases: txn.open_table(CASES)?,
            records: txn.open_table(RECORDS)?,
            due: txn.open_table(DUE)?,
            attempts: txn.open_table(ATTEMPTS)?,
            payload_records: txn.open_table(PAYLOAD_RECORDS)?,
            state_records: txn.open_table(STATE_RECORDS)?,
            objects: txn.open_table(OBJECTS)?,
            notifications: txn.open_table(NOTIFICATIONS)?,
            final_records: txn.open_table(FINAL_RECORDS)?,
            final_since: txn.open_table(FINAL_SINCE)?,
            form_listing: txn.open_table(FORM_LISTING)?,
            case_listing: txn.open_table(CASE_LISTING)?,
            state_counts: txn.open_table(STATE_COUNTS)?,
            listing_counts: txn.open_table(LISTING_COUNTS)?,
            last_indexed_on: txn.open_table(LAST_INDEXED_ON)?,
            domain_counts: txn.open_table(DOMAIN_COUNTS)?,
            state_count_changes: HashMap::new(),
            listing_count_changes: HashMap::new(),
            domain_count_changes: HashMap::new(),
            indexed_on_so_far: HashMap::new(),
        })
    }

    /// One more (or, negative, fewer) record of a repeater in `state`.
    pub fn count_state(&mut self, repeater_id: u64, state: RecordState, delta: i64) {
        *self
            .state_count_changes
            .entry((repeater_id, state))
            .or_default() += delta;
    }

    /// Adds `delta` to a figure of `domain` (see `stats`).
    pub fn count_domain(&mut self, domain: &str, figure: DomainFigure, delta: i64) {
        if !self.domain_count_changes.contains_key(domain) {
            self.domain_count_changes
                .insert(domain.to_owned(), HashMap::new());
        }
        if let Some(figures) = self.domain_count_changes.get_mut(domain) {
            *figures.entry(figure).or_default() += delta;
        }
    }

    /// One more (or fewer) entry in a listing scope of a domain.
    fn count_listing(&mut self, domain: &str, scope: String, delta: i64) {
        *self
            .listing_count_changes
            .entry((domain.to_owned(), scope))
            .or_default() += delta;
    }

    /// The next `indexed_on` of `domain`: later than every one before it,
    /// and `now` unless that would not be.
    pub fn next_indexed_on(&mut self, domain: &str, now: i64) -> Result<u64, StoreError> {
        let previous = match self.indexed_on_so_far.get(domain) {
            Some(previous) => *previous,
            None => self.last_indexed_on.get(domain)?.map_or(0, |v| v.value()),
        };
        let next = (now.max(0) as u64).max(previous + 1);
        self.indexed_on_so_far.insert(domain.to_owned(), next);
        Ok(next)
    }

    /// Writes what the jobs counted; the transaction may commit after it.
    pub fn finish(mut self) -> Result<(), StoreError> {
        for ((repeater_id, state), delta) in self.state_count_changes.drain() {
            if delta == 0 {
                continue;
            }
            let key = (repeater_id, state.as_str());
            let n = self.state_counts.get(key)?.map_or(0, |v| v.value());
            self.state_counts
                .insert(key, n.saturating_add_signed(delta))?;
        }
        for ((domain, scope), delta) in self.listing_count_changes.drain() {
            if delta == 0 {
                continue;
            }
            let key = (domain.as_str(), scope.as_str());
            let n = self.listing_counts.get(key)?.map_or(0, |v| v.value());
            self.listing_counts
                .insert(key, n.saturating_add_signed(delta))?;
        }
        for (domain, figures) in self.domain_count_changes.drain() {
            for (figure, delta) in figures {
                if delta == 0 {
                    continue;
                }
                let figure = figure.key();
                let key = (domain.as_str(), figure.as_str());
                let n = self.domain_counts.get(key)?.map_or(0, |v| v.value());
                self.domain_counts
                    .insert(key, n.saturating_add_signed(delta))?;
            }
        }
        for (domain, last) in self.indexed_on_so_far.drain() {
            self.last_indexed_on.insert(domain.as_str(), last)?;
        }
        Ok(())
    }
}

/// The Data API's two listings.
#[derive(Debug, Clone, Copy)]
pub(super) enum ListingKind {
    Forms,
    Cases,
}

impl WriteTables<'_> {
    /// Puts an object's listing entries ((scope, order key) each) under
    /// `indexed_on` into its listing, and counts them.
    pub fn list(
        &mut self,
        kind: ListingKind,
        domain: &str,
        id: &str,
        entries: Vec<(String, u64)>,
        indexed_on: u64,
    ) -> Result<(), StoreError> {
        for (scope, order_key) in entries {
            let key = (domain, scope.as_str(), order_key, indexed_on);
            match kind {
                ListingKind::Forms => self.form_listing.insert(key, id)?,
                ListingKind::Cases => self.case_listing.insert(key, id)?,
            };
            self.count_listing(domain, scope, 1);
        }
        Ok(())
    }

    /// Takes an object's listing entries under `indexed_on` out of its
    /// listing, and uncounts them.
    pub fn unlist(
        &mut self,
        kind: ListingKind,
        domain: &str,
        entries: Vec<(String, u64)>,
        indexed_on: u64,
    ) -> Result<(), StoreError> {
        for (scope, order_key) in entries {
            let key = (domain, scope.as_str(), order_key, indexed_on);
            match kind {
                ListingKind::Forms => self.form_listing.remove(key)?,
                ListingKind::Cases => self.case_listing.remove(key)?,
            };
            self.count_listing(domain, scope, -1);
        }
        Ok(())
    }
}
