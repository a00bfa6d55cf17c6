//! Reads, the Data API's listings, retention and figures on PostgreSQL.

use super::PgStore;
use crate::model::{Case, StoredForm};
use crate::record::{Attempt, RecordState, RepeatRecord};
use crate::store::{
    CaseScope, DomainStats, FormScope, Keep, Listed, ListedForm, ListingRange, OldestKept,
    RecordFilter, RecordPage, RetainedForms, SendSource, StoreError,
};

impl PgStore {
    pub async fn record(&self, seq: u64) -> Result<Option<RepeatRecord>, StoreError> {
        todo!()
    }
    pub async fn attempts(&self, seq: u64) -> Result<Vec<Attempt>, StoreError> {
        todo!()
    }
    pub async fn form(&self, domain: &str, form_id: &str) -> Result<Option<StoredForm>, StoreError> {
        todo!()
    }
    pub async fn form_xml(&self, domain: &str, form_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        todo!()
    }
    pub async fn case(&self, domain: &str, case_id: &str) -> Result<Option<Case>, StoreError> {
        todo!()
    }
    pub async fn load_for_send(
        &self,
        seq: u64,
    ) -> Result<Option<(RepeatRecord, SendSource)>, StoreError> {
        todo!()
    }
    pub async fn list_records(
        &self,
        domain: &str,
        filter: &RecordFilter,
        limit: usize,
        cursor: Option<u64>,
    ) -> Result<RecordPage, StoreError> {
        todo!()
    }
    pub async fn form_indexed_on(&self, domain: &str, form_id: &str) -> Result<Option<i64>, StoreError> {
        todo!()
    }
    pub async fn case_indexed_on(&self, domain: &str, case_id: &str) -> Result<Option<i64>, StoreError> {
        todo!()
    }
    pub async fn list_forms(
        &self,
        domain: &str,
        scope: &FormScope,
        range: &ListingRange,
        page: (usize, usize),
        keep: Keep<'_, StoredForm>,
    ) -> Result<Listed<ListedForm>, StoreError> {
        todo!()
    }
    pub async fn list_cases(
        &self,
        domain: &str,
        scope: &CaseScope,
        range: &ListingRange,
        page: (usize, usize),
        keep: Keep<'_, Case>,
    ) -> Result<Listed<(Case, i64)>, StoreError> {
        todo!()
    }
    pub async fn retain_records(
        &self,
        state: RecordState,
        cutoff: i64,
        limit: usize,
    ) -> Result<usize, StoreError> {
        todo!()
    }
    pub async fn retain_forms(
        &self,
        domain: &str,
        cutoff: i64,
        start: u64,
        limit: usize,
    ) -> Result<RetainedForms, StoreError> {
        todo!()
    }
    pub async fn form_domains(&self) -> Result<Vec<String>, StoreError> {
        todo!()
    }
    pub async fn oldest_kept(&self) -> Result<OldestKept, StoreError> {
        todo!()
    }
    pub async fn domain_stats(&self, domain: &str) -> Result<DomainStats, StoreError> {
        todo!()
    }
}
