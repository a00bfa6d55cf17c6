//! `repeatd migrate`: a redb store copied into an empty PostgreSQL database.
//! The redb side hands out every table in batches (`store::export`); this
//! side writes them with binary `COPY`, in one transaction, so that a failed
//! migration leaves the database as empty as it found it. Rows are written
//! as `schema` says an import fills each table: values as redb stored them,
//! the derived columns from the export, and the counters (the nonce, the
//! sequences behind seqs and repeater ids, each domain's last `indexed_on`)
//! set so that record ids and orders go on where redb left them. Only the
//! sequences escape the transaction (`setval` is never rolled back), so they
//! are set last, once every row is in.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use super::{PgStore, sql_error};
use crate::clock::Clock;
use crate::store::{
    Export, ExportBatch, ExportCounters, ExportedAttempt, ExportedCase, ExportedForm,
    ExportedNotification, ExportedObject, ExportedRecord, RedbStore, StoreError,
};

/// The lease a store made for the import would claim records for; it claims
/// none.
const IMPORT_LEASE: Duration = Duration::from_secs(30);

/// How many rows of each kind an import wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportCounts {
    pub forms: u64,
    pub cases: u64,
    pub records: u64,
    pub attempts: u64,
    pub objects: u64,
    pub notifications: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0} holds no repeatd.redb: not a repeatd data directory")]
    NoStore(PathBuf),
    #[error("{0} is open in another process: stop the gateway before migrating its store")]
    StoreInUse(PathBuf),
    #[error(
        "PostgreSQL {url} is not empty: repeatd migrate copies into a database without forms, cases, records, objects or notification states"
    )]
    NotEmpty { url: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies the redb store of `data_dir` (which no gateway may have open)
/// into the empty database at `url`; returns what it wrote.
pub async fn migrate(data_dir: &Path, url: &str) -> Result<ImportCounts, ImportError> {
    let path = data_dir.join("repeatd.redb");
    if !path.is_file() {
        return Err(ImportError::NoStore(data_dir.to_owned()));
    }
    let target = PgStore::connect(url, IMPORT_LEASE, Clock::system()).await?;
    let dir = data_dir.to_owned();
    let opened = tokio::task::spawn_blocking(move || RedbStore::open(&dir))
        .await
        .map_err(|e| StoreError::Storage(format!("opening {}: {e}", path.display())))?;
    let store = match opened {
        Ok(store) => store,
        Err(StoreError::Open { path, source })
            if matches!(*source, redb::DatabaseError::DatabaseAlreadyOpen) =>
        {
            return Err(ImportError::StoreInUse(path));
        }
        Err(error) => return Err(error.into()),
    };
    let mut export = store.export()?;
    target.import(&mut export).await
}

impl PgStore {
    /// Writes everything `export` hands out into this database, which must
    /// be empty ([`PgStore::is_empty`]; checked with the tables locked, so
    /// no node writes meanwhile), in one transaction. The store is consumed:
    /// its nonce is the one it connected with, not the imported one, so
    /// connect again to use the database.
    pub async fn import(self, export: &mut Export) -> Result<ImportCounts, ImportError> {
        let mut client = self.client().await?;
        let txn = client
            .transaction()
            .await
            .map_err(|e| sql_error("starting the import", e))?;
        txn.batch_execute(
            "LOCK TABLE meta, domain_counters, forms, cases, records, attempts, objects,
                 notifications IN EXCLUSIVE MODE",
        )
        .await
        .map_err(|e| sql_error("locking the tables for the import", e))?;
        // On another connection: it sees what is committed, which the locks
        // keep as it is until this transaction ends.
        if !self.is_empty().await? {
            return Err(ImportError::NotEmpty {
                url: self.url.clone(),
            });
        }
        let mut counts = ImportCounts::default();
        let mut sequences = None;
        while let Some(batch) = export.next().await? {
            match batch {
                ExportBatch::Counters(counters) => {
                    set_counters(&txn, &counters).await?;
                    sequences = Some((counters.last_seq, counters.last_repeater_id));
                }
                ExportBatch::Objects(objects) => {
                    counts.objects += copy_objects(&txn, &objects).await?
                }
                ExportBatch::Notifications(notifications) => {
                    counts.notifications += copy_notifications(&txn, &notifications).await?
                }
                ExportBatch::Forms(forms) => counts.forms += copy_forms(&txn, &forms).await?,
                ExportBatch::Cases(cases) => counts.cases += copy_cases(&txn, &cases).await?,
                ExportBatch::Records(records) => {
                    counts.records += copy_records(&txn, &records).await?
                }
                ExportBatch::Attempts(attempts) => {
                    counts.attempts += copy_attempts(&txn, &attempts).await?
                }
            }
        }
        let Some((last_seq, last_repeater_id)) = sequences else {
            return Err(StoreError::Storage("the export had no counters".into()).into());
        };
        // Last: a sequence's setval is not undone by a rollback.
        set_sequence(&txn, "record_seq", last_seq).await?;
        set_sequence(&txn, "repeater_id_seq", last_repeater_id).await?;
        txn.commit()
            .await
            .map_err(|e| sql_error("committing the import", e))?;
        tracing::info!(?counts, url = %self.url, "imported a redb store");
        Ok(counts)
    }
}

/// The nonce and each domain's last `indexed_on` (the sequences are set
/// once everything else is written).
async fn set_counters(txn: &Transaction<'_>, counters: &ExportCounters) -> Result<(), StoreError> {
    // `connect` stored a nonce of its own: the redb one replaces it.
    txn.execute(
        "INSERT INTO meta (key, value) VALUES ('nonce', $1)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&(counters.nonce as i64)],
    )
    .await
    .map_err(|e| sql_error("storing the nonce", e))?;
    for (domain, last_indexed_on) in &counters.last_indexed_on {
        txn.execute(
            // A database without forms may still have counted (its forms
            // deleted by retention): keep the larger, as indexed_on only grows.
            "INSERT INTO domain_counters (domain, last_indexed_on) VALUES ($1, $2)
             ON CONFLICT (domain) DO UPDATE SET last_indexed_on =
                 GREATEST(domain_counters.last_indexed_on, EXCLUDED.last_indexed_on)",
            &[domain, &(*last_indexed_on as i64)],
        )
        .await
        .map_err(|e| sql_error(&format!("storing the last indexed_on of {domain}"), e))?;
    }
    Ok(())
}

/// Makes the sequence `name` hand out `last + 1` next (1 when `last` is 0,
/// as on a fresh database). PostgreSQL does not undo this when the
/// transaction rolls back, so it is the import's last write.
async fn set_sequence(txn: &Transaction<'_>, name: &str, last: u64) -> Result<(), StoreError> {
    let (value, is_called) = match last {
        0 => (1, false),
        last => (last as i64, true),
    };
    txn.execute(
        "SELECT setval($1::text::regclass, $2, $3)",
        &[&name, &value, &is_called],
    )
    .await
    .map_err(|e| sql_error(&format!("setting the sequence {name}"), e))?;
    Ok(())
}

/// A binary `COPY` into `table` (with its column list) of rows of `types`.
async fn copy_into(
    txn: &Transaction<'_>,
    table: &str,
    types: &[Type],
) -> Result<Pin<Box<BinaryCopyInWriter>>, StoreError> {
    let sink = txn
        .copy_in(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
        .await
        .map_err(|e| sql_error(&format!("starting to copy into {table}"), e))?;
    Ok(Box::pin(BinaryCopyInWriter::new(sink, types)))
}

fn copy_error(table: &str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
    move |e| sql_error(&format!("copying into {table}"), e)
}

/// Ends a `COPY`; returns how many rows it wrote.
async fn finish(mut writer: Pin<Box<BinaryCopyInWriter>>, table: &str) -> Result<u64, StoreError> {
    writer.as_mut().finish().await.map_err(copy_error(table))
}

async fn copy_objects(
    txn: &Transaction<'_>,
    objects: &[ExportedObject],
) -> Result<u64, StoreError> {
    let table = "objects (kind, domain, name, value)";
    let types = [Type::TEXT, Type::TEXT, Type::TEXT, Type::BYTEA];
    let mut writer = copy_into(txn, table, &types).await?;
    for object in objects {
        writer
            .as_mut()
            .write(&[&object.kind, &object.domain, &object.name, &object.value])
            .await
            .map_err(copy_error(table))?;
    }
    finish(writer, table).await
}

async fn copy_notifications(
    txn: &Transaction<'_>,
    notifications: &[ExportedNotification],
) -> Result<u64, StoreError> {
    let table = "notifications (domain, connection, value)";
    let types = [Type::TEXT, Type::TEXT, Type::BYTEA];
    let mut writer = copy_into(txn, table, &types).await?;
    for notification in notifications {
        writer
            .as_mut()
            .write(&[
                &notification.domain,
                &notification.connection,
                &notification.value,
            ])
            .await
            .map_err(copy_error(table))?;
    }
    finish(writer, table).await
}

async fn copy_forms(txn: &Transaction<'_>, forms: &[ExportedForm]) -> Result<u64, StoreError> {
    let table =
        "forms (domain, form_id, indexed_on, received_key, xmlns, app_id, xml_bytes, value)";
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::BYTEA,
    ];
    let mut writer = copy_into(txn, table, &types).await?;
    for form in forms {
        writer
            .as_mut()
            .write(&[
                &form.domain,
                &form.form_id,
                &(form.indexed_on as i64),
                &(form.received_key as i64),
                &form.xmlns,
                &form.app_id,
                &(form.xml_bytes as i64),
                &form.value,
            ])
            .await
            .map_err(copy_error(table))?;
    }
    finish(writer, table).await
}

async fn copy_cases(txn: &Transaction<'_>, cases: &[ExportedCase]) -> Result<u64, StoreError> {
    let table = "cases (domain, case_id, indexed_on, case_type, modified_key, value)";
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::INT8,
        Type::BYTEA,
    ];
    let mut writer = copy_into(txn, table, &types).await?;
    for case in cases {
        writer
            .as_mut()
            .write(&[
                &case.domain,
                &case.case_id,
                &(case.indexed_on as i64),
                &case.case_type,
                &(case.modified_key as i64),
                &case.value,
            ])
            .await
            .map_err(copy_error(table))?;
    }
    finish(writer, table).await
}

async fn copy_records(
    txn: &Transaction<'_>,
    records: &[ExportedRecord],
) -> Result<u64, StoreError> {
    // No lease: `leased_until` and `leased_by` stay NULL.
    let table =
        "records (seq, domain, repeater, repeater_id, payload_id, state, due, final_since, value)";
    let types = [
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::BYTEA,
    ];
    let mut writer = copy_into(txn, table, &types).await?;
    for record in records {
        writer
            .as_mut()
            .write(&[
                &(record.seq as i64),
                &record.domain,
                &record.repeater,
                &(record.repeater_id as i64),
                &record.payload_id,
                &record.state.as_str(),
                &record.due,
                &record.final_since.map(|since| since as i64),
                &record.value,
            ])
            .await
            .map_err(copy_error(table))?;
    }
    finish(writer, table).await
}

async fn copy_attempts(
    txn: &Transaction<'_>,
    attempts: &[ExportedAttempt],
) -> Result<u64, StoreError> {
    let table = "attempts (seq, number, value)";
    let types = [Type::INT8, Type::INT4, Type::BYTEA];
    let mut writer = copy_into(txn, table, &types).await?;
    for attempt in attempts {
        writer
            .as_mut()
            .write(&[
                &(attempt.seq as i64),
                &(attempt.number as i32),
                &attempt.value,
            ])
            .await
            .map_err(copy_error(table))?;
    }
    finish(writer, table).await
}

#[cfg(test)]
mod tests;
