//! The hand-over of error-e-mail observations between nodes: one node at a
//! time owns the digests (the cluster lock "email", `crate::email`); every
//! other node queues what it observed in `email_observations`, and the owner
//! takes it from there. Values are opaque here (the facade encodes them).
//!
//! A push commits with `NOTIFY repeatd_email`, so an owner that listens can
//! take at once; one that polls finds the rows all the same. A take deletes
//! what it returns in the same statement and skips rows another taker has
//! locked, so each observation is taken once even by two takers at a time
//! (which happens only while ownership passes on).

use super::{PgStore, sql_error};
use crate::store::StoreError;

/// The channel a push notifies.
pub(super) const EMAIL_CHANNEL: &str = "repeatd_email";

impl PgStore {
    /// Queues `observations` (encoded) for the node that owns the error
    /// e-mails, in one transaction, in their order.
    pub async fn push_email_observations(
        &self,
        observations: Vec<Vec<u8>>,
    ) -> Result<(), StoreError> {
        if observations.is_empty() {
            return Ok(());
        }
        let result = self.push_email_observations_in(&observations).await;
        self.note_write(result.as_ref().map(|_| ()));
        result
    }

    async fn push_email_observations_in(&self, observations: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let txn = client
            .transaction()
            .await
            .map_err(|e| sql_error("starting a transaction", e))?;
        txn.execute(
            "INSERT INTO email_observations (value)
             SELECT value FROM unnest($1::bytea[]) WITH ORDINALITY AS pushed (value, n)
             ORDER BY n",
            &[&observations],
        )
        .await
        .map_err(|e| sql_error("queueing error-e-mail observations", e))?;
        txn.execute(&format!("NOTIFY {EMAIL_CHANNEL}"), &[])
            .await
            .map_err(|e| sql_error("notifying error-e-mail observations", e))?;
        txn.commit()
            .await
            .map_err(|e| sql_error("committing error-e-mail observations", e))
    }

    /// Takes (and removes) up to `limit` queued observations, oldest first.
    pub async fn take_email_observations(&self, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let result = self.take_email_observations_in(limit).await;
        self.note_write(result.as_ref().map(|_| ()));
        result
    }

    async fn take_email_observations_in(&self, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "DELETE FROM email_observations WHERE id IN (
                     SELECT id FROM email_observations ORDER BY id LIMIT $1
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, value",
                &[&limit],
            )
            .await
            .map_err(|e| sql_error("taking error-e-mail observations", e))?;
        // RETURNING follows no order of its own.
        let mut taken: Vec<(i64, Vec<u8>)> =
            rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        taken.sort_unstable_by_key(|(id, _)| *id);
        Ok(taken.into_iter().map(|(_, value)| value).collect())
    }
}
