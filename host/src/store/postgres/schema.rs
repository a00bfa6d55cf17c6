//! The PostgreSQL store's schema, as numbered migrations. Each entry of
//! [`MIGRATIONS`] is applied once, in its own transaction, under
//! `pg_advisory_xact_lock(MIGRATION_LOCK)` so that two nodes starting
//! together do not race, and recorded in `schema_migrations`.
//!
//! Values are `bytea` in the redb store's encodings (`store::encoding`:
//! `encode_form` with its LZ4-compressed XML and stamped `indexed_on`,
//! `encode_case`, `encode_record`, `encode` for attempts, `encode_json` for
//! notification states), so that `repeatd migrate` copies redb values as they
//! are. Only what a query filters or orders by is a column of its own; those
//! columns are derived from the value and must agree with it.
//!
//! For the import (`repeatd migrate`), every table takes rows as they are:
//! - `meta`: `('nonce', <nonce>)`; the next seq is the sequence `record_seq`
//!   and the next repeater id the sequence `repeater_id_seq`: set them with
//!   `SELECT setval('record_seq', <last seq>)` and
//!   `SELECT setval('repeater_id_seq', <last allocated id>)` (both start at 1
//!   when never set, as redb does).
//! - `forms`: `indexed_on` is the value's stamped `indexed_on`,
//!   `received_key` the `received_on` order key (Unix micros, the
//!   `indexed_on` when unparsable, as `data_index::order_key`), `xml_bytes`
//!   the length of the XML as submitted.
//! - `cases`: `modified_key` is the `server_date_modified` order key.
//! - `domain_counters`: one row per domain that has stored a form or case,
//!   `last_indexed_on` the largest `indexed_on` handed out in it.
//! - `records`: `due` is `next_attempt_at` while the record is queued
//!   (`NULL` when final), `final_since` when it entered its final state
//!   (redb's `final_since` table; `NULL` while queued), `payload_id` what
//!   `PayloadRef::payload_id` answers; no lease (`leased_until` `NULL`).
//! - `attempts`, `objects`, `notifications`: key columns and the value.
//! - `email_observations`: nothing to import; redb has no such table (its
//!   one node owns the error e-mails and hands itself observations in memory).

/// The advisory lock (`pg_advisory_xact_lock`) migrations are applied under.
pub(super) const MIGRATION_LOCK: i64 = 0x7265_7065_6174_6401; // "repeatd" 1

/// Creates the table of applied migrations; run before [`MIGRATIONS`].
pub(super) const MIGRATIONS_TABLE: &str = "
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Migration 1: every table of the store.
const V1: &str = "
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value bigint NOT NULL
);

CREATE SEQUENCE record_seq AS bigint MINVALUE 1 START 1;
CREATE SEQUENCE repeater_id_seq AS bigint MINVALUE 1 START 1;

CREATE TABLE domain_counters (
    domain          text PRIMARY KEY,
    last_indexed_on bigint NOT NULL
);

CREATE TABLE forms (
    domain       text   NOT NULL,
    form_id      text   NOT NULL,
    indexed_on   bigint NOT NULL,
    received_key bigint NOT NULL,
    xmlns        text   NOT NULL,
    app_id       text,
    xml_bytes    bigint NOT NULL,
    value        bytea  NOT NULL,
    PRIMARY KEY (domain, form_id)
);
CREATE INDEX forms_by_indexed_on ON forms (domain, indexed_on);
CREATE INDEX forms_by_xmlns ON forms (domain, xmlns, indexed_on);
CREATE INDEX forms_by_app ON forms (domain, app_id, indexed_on) WHERE app_id IS NOT NULL;
CREATE INDEX forms_by_received ON forms (domain, received_key, indexed_on);

CREATE TABLE cases (
    domain       text   NOT NULL,
    case_id      text   NOT NULL,
    indexed_on   bigint NOT NULL,
    case_type    text   NOT NULL,
    modified_key bigint NOT NULL,
    value        bytea  NOT NULL,
    PRIMARY KEY (domain, case_id)
);
CREATE INDEX cases_by_indexed_on ON cases (domain, indexed_on);
CREATE INDEX cases_by_type ON cases (domain, case_type, indexed_on);
CREATE INDEX cases_by_modified ON cases (domain, modified_key, indexed_on);

CREATE TABLE records (
    seq          bigint PRIMARY KEY,
    domain       text   NOT NULL,
    repeater     text   NOT NULL,
    repeater_id  bigint NOT NULL,
    payload_id   text   NOT NULL,
    state        text   NOT NULL,
    due          bigint,
    final_since  bigint,
    leased_until bigint,
    leased_by    text,
    value        bytea  NOT NULL
);
CREATE INDEX records_due ON records (repeater_id, due, seq) WHERE due IS NOT NULL;
CREATE INDEX records_leased ON records (repeater_id, leased_until) WHERE leased_until IS NOT NULL;
CREATE INDEX records_by_state ON records (domain, state, repeater, seq);
CREATE INDEX records_by_domain ON records (domain, seq);
CREATE INDEX records_by_payload ON records (domain, payload_id, seq);
CREATE INDEX records_final ON records (state, final_since, seq) WHERE final_since IS NOT NULL;
CREATE INDEX records_by_repeater_state ON records (repeater_id, state);

CREATE TABLE attempts (
    seq    bigint  NOT NULL REFERENCES records (seq) ON DELETE CASCADE,
    number integer NOT NULL,
    value  bytea   NOT NULL,
    PRIMARY KEY (seq, number)
);

CREATE TABLE objects (
    kind   text  NOT NULL,
    domain text  NOT NULL,
    name   text  NOT NULL,
    value  bytea NOT NULL,
    PRIMARY KEY (kind, domain, name)
);

CREATE TABLE notifications (
    domain     text  NOT NULL,
    connection text  NOT NULL,
    value      bytea NOT NULL,
    PRIMARY KEY (domain, connection)
);

CREATE TABLE repeater_health (
    repeater_id          bigint  PRIMARY KEY,
    consecutive_failures integer NOT NULL,
    backoff_until        bigint,
    updated_at           bigint  NOT NULL
);
";

/// Migration 2: observations of attempts (`email::Observation`, as
/// `encode_json`) made on a node that does not own the error e-mails, waiting
/// for the node that does (`postgres::email`); taken in `id` order.
const V2: &str = "
CREATE TABLE email_observations (
    id    bigserial PRIMARY KEY,
    value bytea     NOT NULL
);
";

/// Every migration, as (version, SQL), in the order they are applied.
pub(super) const MIGRATIONS: &[(i32, &str)] = &[(1, V1), (2, V2)];
