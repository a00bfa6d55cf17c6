//! Submissions, the queue, attempts and operator actions on PostgreSQL.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::PgStore;
use crate::record::{AppChange, OperatorAction, RecordState, RepeatRecord, Verdict};
use crate::store::{
    AttemptResult, CommittedAttempt, IngestResult, RecordFilter, RepeaterRef, StoreError,
    Submission,
};

impl PgStore {
    pub async fn commit_submission(
        &self,
        submission: Submission,
    ) -> Result<IngestResult, StoreError> {
        todo!()
    }

    pub async fn register_app_change(
        &self,
        repeaters: Arc<Vec<RepeaterRef>>,
        app_id: String,
        change: AppChange,
        build_id: Option<String>,
    ) -> Result<Vec<(u64, i64)>, StoreError> {
        todo!()
    }

    /// Claims up to `limit` due records of a repeater for this node (a
    /// lease), no more than `max_workers` leased by all nodes together.
    pub async fn due_records(
        &self,
        repeater_id: u64,
        now: i64,
        limit: usize,
        max_workers: usize,
        skip: &HashSet<u64>,
    ) -> Result<Vec<u64>, StoreError> {
        todo!()
    }

    pub async fn earliest_due(
        &self,
        repeater_id: u64,
        skip: &HashSet<u64>,
    ) -> Result<Option<i64>, StoreError> {
        todo!()
    }

    /// Extends this node's leases of `seqs` (records still being sent).
    pub async fn renew_leases(&self, seqs: &[u64]) -> Result<(), StoreError> {
        todo!()
    }

    /// Gives up this node's leases of `seqs` (claimed, not sent).
    pub async fn release_leases(&self, seqs: &[u64]) -> Result<(), StoreError> {
        todo!()
    }

    pub async fn state_counts(&self) -> Result<BTreeMap<(u64, RecordState), u64>, StoreError> {
        todo!()
    }

    pub async fn oldest_due(&self) -> Result<Option<i64>, StoreError> {
        todo!()
    }

    pub async fn commit_attempt(
        &self,
        result: AttemptResult,
    ) -> Result<(RepeatRecord, Verdict), StoreError> {
        todo!()
    }

    pub async fn commit_attempts(
        &self,
        results: Vec<AttemptResult>,
    ) -> Result<Vec<CommittedAttempt>, StoreError> {
        todo!()
    }

    pub async fn operator_action(
        &self,
        seq: u64,
        action: OperatorAction,
    ) -> Result<RepeatRecord, StoreError> {
        todo!()
    }

    pub async fn bulk_action(
        &self,
        domain: String,
        filter: RecordFilter,
        action: OperatorAction,
    ) -> Result<Vec<RepeatRecord>, StoreError> {
        todo!()
    }

    pub async fn cancel_repeater_records(&self, repeater_id: u64) -> Result<u64, StoreError> {
        todo!()
    }
}
