//! Every redb table of the store, in one place, with what its keys and values
//! are. Values are encoded by `encoding`; keys are plain redb types.

use redb::TableDefinition;

/// Bumped when an encoding or a table below changes incompatibly; a store
/// of an earlier version is brought up to this one when opened (`migration`).
/// 2: forms carry their XML and `indexed_on`, cases their `indexed_on`, in
/// binary values (`encoding`); `form_xml`, `form_indexed_on`,
/// `case_indexed_on` and `domain_records` (the state index lists a domain's
/// records) are gone.
pub(super) const SCHEMA_VERSION: u64 = 2;

/// "schema_version", "nonce", "next_repeater_id" → their value.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (domain, form id) → the `StoredForm`, its `indexed_on` and the submitted
/// XML (compressed; byte for byte once decompressed): `encoding::encode_form`.
pub(super) const FORMS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("forms");
/// (domain, case id) → the `Case` and its `indexed_on` (of its latest
/// change): `encoding::encode_case`.
pub(super) const CASES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("cases");
/// seq → `RepeatRecord`.
pub(super) const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// (repeater id, due micros, seq): every queued record, in the order it is due.
pub(super) const DUE: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("due");
/// (seq, attempt number) → `Attempt`.
pub(super) const ATTEMPTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("attempts");
/// (domain, payload id, seq): records by form, case or app id.
pub(super) const PAYLOAD_RECORDS: TableDefinition<(&str, &str, u64), ()> =
    TableDefinition::new("payload_records");
/// (repeater id, state) → how many records are in that state.
pub(super) const STATE_COUNTS: TableDefinition<(u64, &str), u64> =
    TableDefinition::new("state_counts");
/// (domain, state, repeater name, seq): a domain's records by state, for
/// listings filtered by state; moves with `STATE_COUNTS` (see `state_index`).
pub(super) const STATE_RECORDS: TableDefinition<(&str, &str, &str, u64), ()> =
    TableDefinition::new("state_records");
/// (kind, domain, name) → an object declared in the config or through the API.
pub(super) const OBJECTS: TableDefinition<(&str, &str, &str), &[u8]> =
    TableDefinition::new("objects");
/// (domain, connection) → what the connection's contacts are still owed an
/// e-mail about (see `email`).
pub(super) const NOTIFICATIONS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("notifications");
/// domain → the last `indexed_on` (Unix micros) handed out in it: every form
/// and case change gets a larger one (see `data_index`).
pub(super) const LAST_INDEXED_ON: TableDefinition<&str, u64> =
    TableDefinition::new("last_indexed_on");
/// (domain, scope, order key, indexed_on) → form id: the Data API's form
/// listings, one key range per scope (see `data_index::FormScope`).
pub(super) const FORM_LISTING: TableDefinition<(&str, &str, u64, u64), &str> =
    TableDefinition::new("form_listing");
/// (domain, scope, order key, indexed_on) → case id, as `FORM_LISTING`.
pub(super) const CASE_LISTING: TableDefinition<(&str, &str, u64, u64), &str> =
    TableDefinition::new("case_listing");
/// (domain, listing scope) → how many entries the scope has, so that an
/// unfiltered `total_count` costs one read.
pub(super) const LISTING_COUNTS: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("listing_counts");
/// (final state, since micros, seq): the records in a final state, oldest
/// first, for retention (see `store::retention`).
pub(super) const FINAL_RECORDS: TableDefinition<(&str, u64, u64), ()> =
    TableDefinition::new("final_records");
/// seq → since when (micros) the record has been in its final state: the
/// other half of `FINAL_RECORDS`, to find a record's entry there.
pub(super) const FINAL_SINCE: TableDefinition<u64, u64> = TableDefinition::new("final_since");
/// (domain, figure) → its value: records per state (`records/<state>`) and
/// the bytes of the forms' XML (`form_xml_bytes`), for the stats (see
/// `store::stats`).
pub(super) const DOMAIN_COUNTS: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("domain_counts");
