//! The PostgreSQL backend of the store (`[store] backend = "postgres"`):
//! several nodes share one database. This file holds the connection (a
//! deadpool pool, the schema migrations applied at connect), the
//! per-database nonce behind record ids, and the cluster-wide pieces that do
//! not touch records: configured objects (with `NOTIFY repeatd_catalog`),
//! notification states, repeater ids, repeater health and singleton locks.
//! The schema and what each column means are in `schema`; the hand-over of
//! error-e-mail observations to the node that owns the e-mails is in `email`.

mod email;
mod events;
pub mod import;
mod queue;
mod reads;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Pool, Runtime};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::NoTls;

use super::encoding::{decode, encode_json};
use super::{ObjectChange, StoreError, StoredNotification, WriteFailure};
use crate::clock::Clock;
pub use events::ClusterEvent;

/// How many connections the pool keeps at most.
const POOL_SIZE: usize = 16;

/// A store on one PostgreSQL database; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The URL without its password, for messages.
    url: String,
    /// The URL as given, to open the lock connection.
    full_url: String,
    nonce: u64,
    node_id: String,
    lease: Duration,
    clock: Clock,
    write_failure: Arc<Mutex<Option<WriteFailure>>>,
    /// The group-commit writer task's queue (`queue::run_writer`).
    writer: tokio::sync::mpsc::Sender<queue::Job>,
    /// Cluster events heard on this node's `LISTEN` connection (`events`).
    events: Arc<tokio::sync::broadcast::Sender<ClusterEvent>>,
    /// The connection that holds this node's session advisory locks
    /// (`hold_lock`), kept for the life of the store.
    lock_client: Arc<tokio::sync::Mutex<Option<LockConnection>>>,
}

/// The connection of `hold_lock` and the locks it holds.
struct LockConnection {
    client: tokio_postgres::Client,
    held: std::collections::HashSet<String>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.url).finish()
    }
}

/// `url` with its password replaced, for messages.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

fn sql_error(what: &str, error: tokio_postgres::Error) -> StoreError {
    StoreError::Storage(format!("{what}: {error}"))
}

fn pool_error(url: &str, error: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Storage(format!("PostgreSQL {}: {error}", redacted(url)))
}

/// The `meta` key of a repeater's id (names may hold any character but
/// the domain's cannot hold a newline).
fn repeater_id_key(domain: &str, name: &str) -> String {
    format!("repeater_id\n{domain}\n{name}")
}

/// Keeps `failure` in step with the last write's `result`.
fn note_write(failure: &Mutex<Option<WriteFailure>>, result: Result<(), &StoreError>) {
    let mut failure = match failure.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    *failure = result.err().map(|error| WriteFailure {
        reason: error.to_string(),
    });
}

/// Random bits, for the nonce and the node id.
fn random_u64() -> Result<u64, StoreError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Storage(format!("no randomness: {e}")))?;
    Ok(u64::from_le_bytes(bytes))
}

impl PgStore {
    /// Connects to `url`, applies the schema migrations this build has and
    /// the database lacks, and reads (or makes) the database's nonce.
    pub async fn connect(url: &str, lease: Duration, clock: Clock) -> Result<PgStore, StoreError> {
        PgStore::connect_as(url, lease, clock, None).await
    }

    /// Like `connect`, as the node `node_id` (`None`: a new one). A node
    /// that restarts under its id takes back at once the records it held
    /// when it stopped, rather than wait for their leases to end.
    pub async fn connect_as(
        url: &str,
        lease: Duration,
        clock: Clock,
        node_id: Option<String>,
    ) -> Result<PgStore, StoreError> {
        let mut config = deadpool_postgres::Config::new();
        config.url = Some(url.to_owned());
        config.pool = Some(deadpool_postgres::PoolConfig::new(POOL_SIZE));
        let pool = config
            .create_pool(Some(Runtime::Tokio1), NoTls)
            .map_err(|e| StoreError::Storage(format!("PostgreSQL {}: {e}", redacted(url))))?;
        let mut client = pool.get().await.map_err(|e| pool_error(url, e))?;
        migrate(&mut client).await?;
        let nonce = {
            let txn = client
                .transaction()
                .await
                .map_err(|e| sql_error("starting a transaction", e))?;
            let candidate = (random_u64()? >> 1) as i64;
            txn.execute(
                "INSERT INTO meta (key, value) VALUES ('nonce', $1) ON CONFLICT (key) DO NOTHING",
                &[&candidate],
            )
            .await
            .map_err(|e| sql_error("storing the nonce", e))?;
            let row = txn
                .query_one("SELECT value FROM meta WHERE key = 'nonce'", &[])
                .await
                .map_err(|e| sql_error("reading the nonce", e))?;
            txn.commit()
                .await
                .map_err(|e| sql_error("committing the nonce", e))?;
            row.get::<_, i64>(0) as u64
        };
        let node_id = match node_id {
            Some(node_id) => {
                client
                    .execute(
                        "UPDATE records SET leased_until = NULL, leased_by = NULL
                         WHERE leased_by = $1",
                        &[&node_id],
                    )
                    .await
                    .map_err(|e| sql_error("taking back this node's records", e))?;
                node_id
            }
            None => format!("{:016x}", random_u64()?),
        };
        let write_failure = Arc::new(Mutex::new(None));
        let (writer, jobs) = tokio::sync::mpsc::channel(queue::WRITER_QUEUE);
        tokio::spawn(queue::run_writer(
            queue::WriterHandle {
                pool: pool.clone(),
                url: redacted(url),
                node_id: node_id.clone(),
                write_failure: write_failure.clone(),
            },
            jobs,
        ));
        let events = events::listen(url, redacted(url)).await?;
        Ok(PgStore {
            pool,
            url: redacted(url),
            full_url: url.to_owned(),
            nonce,
            node_id,
            lease,
            clock,
            write_failure,
            writer,
            events,
            lock_client: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    /// This node's id, as `leased_by` names it.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// How long a claim holds a record.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        let client = self.pool.get().await.map_err(|e| {
            let error = pool_error(&self.url, e);
            self.note_write(Err(&error));
            error
        })?;
        Ok(client)
    }

    /// Keeps `write_failure` in step with the last write.
    fn note_write(&self, result: Result<(), &StoreError>) {
        note_write(&self.write_failure, result);
    }

    /// Why the store cannot write now (`None`: it can).
    pub fn write_failure(&self) -> Option<WriteFailure> {
        match self.write_failure.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A database has no file of its own to measure.
    pub fn file_bytes(&self) -> Option<u64> {
        None
    }

    /// The public id of a record.
    pub fn record_id(&self, seq: u64) -> String {
        super::record_id(self.nonce, seq)
    }

    /// The sequence number behind a public record id of this database.
    pub fn parse_record_id(&self, id: &str) -> Option<u64> {
        super::parse_record_id(self.nonce, id)
    }

    /// Whether the database holds no form, case, record, object or
    /// notification state (what `repeatd migrate` requires of its target).
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT NOT (EXISTS (SELECT 1 FROM forms) OR EXISTS (SELECT 1 FROM cases)
                   OR EXISTS (SELECT 1 FROM records) OR EXISTS (SELECT 1 FROM objects)
                   OR EXISTS (SELECT 1 FROM notifications))",
                &[],
            )
            .await
            .map_err(|e| sql_error("checking whether the database is empty", e))?;
        Ok(row.get(0))
    }

    // ---- configured objects ------------------------------------------------

    /// Every stored object of one kind, as (domain, name, bytes).
    pub async fn objects(&self, kind: &str) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT domain, name, value FROM objects WHERE kind = $1 ORDER BY domain, name",
                &[&kind],
            )
            .await
            .map_err(|e| sql_error("reading objects", e))?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }

    /// Writes several objects (and deletions, as `None`) in one transaction,
    /// telling every node (`NOTIFY repeatd_catalog`).
    pub async fn put_objects(&self, changes: Vec<ObjectChange>) -> Result<(), StoreError> {
        let result = self.put_objects_in(&changes).await;
        self.note_write(result.as_ref().map(|_| ()));
        result
    }

    async fn put_objects_in(&self, changes: &[ObjectChange]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let txn = client
            .transaction()
            .await
            .map_err(|e| sql_error("starting a transaction", e))?;
        for change in changes {
            let kind = change.kind;
            match &change.value {
                Some(value) => txn
                    .execute(
                        "INSERT INTO objects (kind, domain, name, value) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (kind, domain, name) DO UPDATE SET value = EXCLUDED.value",
                        &[&kind, &change.domain, &change.name, value],
                    )
                    .await
                    .map_err(|e| sql_error("writing an object", e))?,
                None => txn
                    .execute(
                        "DELETE FROM objects WHERE kind = $1 AND domain = $2 AND name = $3",
                        &[&kind, &change.domain, &change.name],
                    )
                    .await
                    .map_err(|e| sql_error("deleting an object", e))?,
            };
        }
        txn.execute("NOTIFY repeatd_catalog", &[])
            .await
            .map_err(|e| sql_error("notifying the catalog change", e))?;
        txn.commit()
            .await
            .map_err(|e| sql_error("committing objects", e))
    }

    // ---- pending error e-mails ---------------------------------------------

    /// Every connection's pending notification state.
    pub async fn notifications<T: DeserializeOwned>(
        &self,
    ) -> Result<Vec<StoredNotification<T>>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT domain, connection, value FROM notifications ORDER BY domain, connection",
                &[],
            )
            .await
            .map_err(|e| sql_error("reading notification states", e))?;
        Ok(rows
            .iter()
            .map(|row| {
                let domain: String = row.get(0);
                let connection: String = row.get(1);
                let value: Vec<u8> = row.get(2);
                let decoded = decode(&value, || {
                    format!("notification state of connection {domain}/{connection}")
                });
                (domain, connection, decoded)
            })
            .collect())
    }

    /// Writes (or, for `None`, removes) several connections' notification
    /// states in one transaction.
    pub async fn put_notifications<T: Serialize + Send + 'static>(
        &self,
        changes: Vec<(String, String, Option<T>)>,
    ) -> Result<(), StoreError> {
        let result = self.put_notifications_in(&changes).await;
        self.note_write(result.as_ref().map(|_| ()));
        result
    }

    async fn put_notifications_in<T: Serialize>(
        &self,
        changes: &[(String, String, Option<T>)],
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let txn = client
            .transaction()
            .await
            .map_err(|e| sql_error("starting a transaction", e))?;
        for (domain, connection, value) in changes {
            match value {
                Some(value) => txn
                    .execute(
                        "INSERT INTO notifications (domain, connection, value) VALUES ($1, $2, $3)
                         ON CONFLICT (domain, connection) DO UPDATE SET value = EXCLUDED.value",
                        &[domain, connection, &encode_json(value)],
                    )
                    .await
                    .map_err(|e| sql_error("writing a notification state", e))?,
                None => txn
                    .execute(
                        "DELETE FROM notifications WHERE domain = $1 AND connection = $2",
                        &[domain, connection],
                    )
                    .await
                    .map_err(|e| sql_error("deleting a notification state", e))?,
            };
        }
        txn.commit()
            .await
            .map_err(|e| sql_error("committing notification states", e))
    }

    /// A fresh id for a repeater, unique in this database.
    pub async fn allocate_repeater_id(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT nextval('repeater_id_seq')", &[])
            .await
            .map_err(|e| sql_error("allocating a repeater id", e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// The id of repeater `name` of `domain` when it is new: the same on
    /// every node that asks before it is deleted, so that nodes starting
    /// together on one config (each adding its repeaters) agree, and no
    /// record is registered under an id the catalog then drops.
    pub async fn repeater_id_for(&self, domain: &str, name: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let key = repeater_id_key(domain, name);
        // Two statements: the second's snapshot sees a row another node's
        // insert committed while this one waited on it.
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ($1, nextval('repeater_id_seq'))
                 ON CONFLICT (key) DO NOTHING",
                &[&key],
            )
            .await
            .map_err(|e| sql_error("allocating a repeater id", e))?;
        let row = client
            .query_one("SELECT value FROM meta WHERE key = $1", &[&key])
            .await
            .map_err(|e| sql_error("reading a repeater id", e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Forgets the id of a deleted repeater: one made again with its name
    /// gets a fresh one, as on redb.
    pub async fn forget_repeater_id(&self, domain: &str, name: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM meta WHERE key = $1",
                &[&repeater_id_key(domain, name)],
            )
            .await
            .map_err(|e| sql_error("forgetting a repeater id", e))?;
        Ok(())
    }

    // ---- the cluster ---------------------------------------------------------

    /// Records a repeater's back-off for every node.
    pub async fn put_health(
        &self,
        repeater_id: u64,
        consecutive_failures: u32,
        backoff_until: Option<i64>,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let now = self.clock.now_micros();
        client
            .execute(
                "INSERT INTO repeater_health
                     (repeater_id, consecutive_failures, backoff_until, updated_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (repeater_id) DO UPDATE SET
                     consecutive_failures = EXCLUDED.consecutive_failures,
                     backoff_until = EXCLUDED.backoff_until,
                     updated_at = EXCLUDED.updated_at",
                &[
                    &(repeater_id as i64),
                    &(consecutive_failures as i32),
                    &backoff_until,
                    &now,
                ],
            )
            .await
            .map_err(|e| sql_error("writing a repeater's health", e))?;
        Ok(())
    }

    /// Every repeater's (consecutive failures, back-off until, updated at).
    pub async fn cluster_health(
        &self,
    ) -> Result<HashMap<u64, (u32, Option<i64>, i64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT repeater_id, consecutive_failures, backoff_until, updated_at
                 FROM repeater_health",
                &[],
            )
            .await
            .map_err(|e| sql_error("reading the repeaters' health", e))?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get::<_, i64>(0) as u64,
                    (
                        row.get::<_, i32>(1).max(0) as u32,
                        row.get::<_, Option<i64>>(2),
                        row.get::<_, i64>(3),
                    ),
                )
            })
            .collect())
    }

    /// Tries to take (or confirms this node holds) the cluster-wide lock
    /// `name`, on a connection kept for the life of the store: true while
    /// this node holds it. A node that dies drops its connection, and so the
    /// lock; a broken connection is replaced and the lock asked for again.
    pub async fn hold_lock(&self, name: &str) -> Result<bool, StoreError> {
        let mut slot = self.lock_client.lock().await;
        if slot.as_ref().is_some_and(|held| held.client.is_closed()) {
            *slot = None;
        }
        if slot.is_none() {
            let (client, connection) = tokio_postgres::connect(&self.full_url, NoTls)
                .await
                .map_err(|e| StoreError::Storage(format!("PostgreSQL {}: {e}", self.url)))?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(%error, "the connection holding cluster locks broke");
                }
            });
            *slot = Some(LockConnection {
                client,
                held: Default::default(),
            });
        }
        let Some(locks) = slot.as_mut() else {
            return Err(StoreError::Storage(
                "no connection for cluster locks".into(),
            ));
        };
        if locks.held.contains(name) {
            return Ok(true);
        }
        let row = locks
            .client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&name],
            )
            .await
            .map_err(|e| sql_error("taking a cluster lock", e))?;
        let taken: bool = row.get(0);
        if taken {
            locks.held.insert(name.to_owned());
        }
        Ok(taken)
    }
}

/// Applies every migration the database has not had, each in its own
/// transaction under the migration lock.
async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    {
        // Under the lock too: two nodes creating it at once would collide.
        let txn = client
            .transaction()
            .await
            .map_err(|e| sql_error("starting a migration", e))?;
        txn.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&schema::MIGRATION_LOCK],
        )
        .await
        .map_err(|e| sql_error("taking the migration lock", e))?;
        txn.batch_execute(schema::MIGRATIONS_TABLE)
            .await
            .map_err(|e| sql_error("creating schema_migrations", e))?;
        txn.commit()
            .await
            .map_err(|e| sql_error("creating schema_migrations", e))?;
    }
    for &(version, sql) in schema::MIGRATIONS {
        let txn = client
            .transaction()
            .await
            .map_err(|e| sql_error("starting a migration", e))?;
        txn.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&schema::MIGRATION_LOCK],
        )
        .await
        .map_err(|e| sql_error("taking the migration lock", e))?;
        let applied = txn
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&version],
            )
            .await
            .map_err(|e| sql_error("reading schema_migrations", e))?
            .is_some();
        if applied {
            continue;
        }
        txn.batch_execute(sql)
            .await
            .map_err(|e| sql_error(&format!("applying schema migration {version}"), e))?;
        txn.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(|e| sql_error("recording a schema migration", e))?;
        txn.commit()
            .await
            .map_err(|e| sql_error(&format!("committing schema migration {version}"), e))?;
        tracing::info!(version, "applied a PostgreSQL schema migration");
    }
    Ok(())
}
