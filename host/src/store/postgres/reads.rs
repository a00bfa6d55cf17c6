//! Reads, the Data API's listings, retention and figures on PostgreSQL.
//!
//! Listings are index range scans of `forms` and `cases` in the order of
//! the scope's column (`indexed_on`, `received_key`, `modified_key`), as the
//! redb store's listing entries are: a page by `indexed_on_start` costs its
//! size. Without a filter on the objects, `offset` and `limit` are the
//! query's and `total_count` one `count(*)` of the range; with one, the
//! range's rows are streamed and each object is decoded and tested, as redb
//! does. Figures (`domain_stats`, `state_counts`) are counted by queries over
//! indexes rather than kept in counter rows, which every node would
//! otherwise contend for on each record it writes.

use std::collections::BTreeMap;
use std::pin::pin;

use futures_util::TryStreamExt as _;
use tokio_postgres::types::ToSql;

use super::{PgStore, sql_error};
use crate::model::{Case, StoredForm};
use crate::record::{Attempt, PayloadRef, RecordState, RepeatRecord};
use crate::store::encoding::{decode, decode_case, decode_form, decode_record};
use crate::store::{
    CaseScope, DomainStats, FormScope, Keep, Listed, ListedForm, ListingRange, OldestKept,
    RecordFilter, RecordPage, RetainedForms, SendSource, StoreError,
};

/// A listing's query: its table, the scope's condition and order column.
struct ListingQuery {
    /// The columns read, then `FROM` and the scope's own condition
    /// (parameter `$4`, when it has one).
    from: &'static str,
    order: &'static str,
    scope_value: Option<String>,
}

impl ListingQuery {
    fn forms(scope: &FormScope) -> ListingQuery {
        let from = "FROM forms WHERE domain = $1";
        match scope {
            FormScope::All => ListingQuery {
                from,
                order: "indexed_on",
                scope_value: None,
            },
            FormScope::Xmlns(xmlns) => ListingQuery {
                from: "FROM forms WHERE domain = $1 AND xmlns = $4",
                order: "indexed_on",
                scope_value: Some(xmlns.clone()),
            },
            FormScope::AppId(app_id) => ListingQuery {
                from: "FROM forms WHERE domain = $1 AND app_id = $4",
                order: "indexed_on",
                scope_value: Some(app_id.clone()),
            },
            FormScope::ByReceivedOn => ListingQuery {
                from,
                order: "received_key",
                scope_value: None,
            },
        }
    }

    fn cases(scope: &CaseScope) -> ListingQuery {
        let from = "FROM cases WHERE domain = $1";
        match scope {
            CaseScope::All => ListingQuery {
                from,
                order: "indexed_on",
                scope_value: None,
            },
            CaseScope::Type(case_type) => ListingQuery {
                from: "FROM cases WHERE domain = $1 AND case_type = $4",
                order: "indexed_on",
                scope_value: Some(case_type.clone()),
            },
            CaseScope::ByServerDateModified => ListingQuery {
                from,
                order: "modified_key",
                scope_value: None,
            },
        }
    }

    /// `SELECT <what>` of the range, in listing order, with `tail` after.
    fn sql(&self, what: &str, descending: bool, tail: &str) -> String {
        let order = self.order;
        let direction = if descending { "DESC" } else { "ASC" };
        format!(
            "SELECT {what} {} AND {order} >= $2 AND {order} < $3
             ORDER BY {order} {direction}, indexed_on {direction} {tail}",
            self.from
        )
    }

    fn count_sql(&self) -> String {
        let order = self.order;
        format!(
            "SELECT count(*) {} AND {order} >= $2 AND {order} < $3",
            self.from
        )
    }
}

/// The listing's parameters: domain, range, scope value (when any), then
/// `extra`.
fn listing_params<'a>(
    domain: &'a &'a str,
    bounds: &'a (i64, i64),
    query: &'a ListingQuery,
    extra: &[&'a (dyn ToSql + Sync)],
) -> Vec<&'a (dyn ToSql + Sync)> {
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![domain, &bounds.0, &bounds.1];
    if let Some(value) = &query.scope_value {
        params.push(value);
    }
    params.extend_from_slice(extra);
    params
}

impl PgStore {
    pub async fn record(&self, seq: u64) -> Result<Option<RepeatRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached("SELECT value FROM records WHERE seq = $1")
                    .await
                    .map_err(|e| sql_error("preparing a statement", e))?,
                &[&(seq as i64)],
            )
            .await
            .map_err(|e| sql_error("reading a record", e))?;
        match row {
            Some(row) => Ok(Some(decode_record(seq, row.get(0))?)),
            None => Ok(None),
        }
    }

    pub async fn attempts(&self, seq: u64) -> Result<Vec<Attempt>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT value FROM attempts WHERE seq = $1 ORDER BY number",
                &[&(seq as i64)],
            )
            .await
            .map_err(|e| sql_error("reading attempts", e))?;
        rows.iter()
            .map(|row| decode(row.get(0), || format!("attempt of record {seq}")))
            .collect()
    }

    /// A form's stored value.
    async fn form_value(&self, domain: &str, form_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached("SELECT value FROM forms WHERE domain = $1 AND form_id = $2")
                    .await
                    .map_err(|e| sql_error("preparing a statement", e))?,
                &[&domain, &form_id],
            )
            .await
            .map_err(|e| sql_error("reading a form", e))?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn case_value(&self, domain: &str, case_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached("SELECT value FROM cases WHERE domain = $1 AND case_id = $2")
                    .await
                    .map_err(|e| sql_error("preparing a statement", e))?,
                &[&domain, &case_id],
            )
            .await
            .map_err(|e| sql_error("reading a case", e))?;
        Ok(row.map(|row| row.get(0)))
    }

    pub async fn form(
        &self,
        domain: &str,
        form_id: &str,
    ) -> Result<Option<StoredForm>, StoreError> {
        match self.form_value(domain, form_id).await? {
            Some(value) => Ok(Some(decode_form(domain, form_id, &value)?.form)),
            None => Ok(None),
        }
    }

    pub async fn form_xml(
        &self,
        domain: &str,
        form_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self.form_value(domain, form_id).await? {
            Some(value) => Ok(Some(decode_form(domain, form_id, &value)?.xml()?)),
            None => Ok(None),
        }
    }

    pub async fn case(&self, domain: &str, case_id: &str) -> Result<Option<Case>, StoreError> {
        match self.case_value(domain, case_id).await? {
            Some(value) => Ok(Some(decode_case(&value, case_id)?.0)),
            None => Ok(None),
        }
    }

    /// Everything a send needs: the record and what its payload refers to.
    pub async fn load_for_send(
        &self,
        seq: u64,
    ) -> Result<Option<(RepeatRecord, SendSource)>, StoreError> {
        let Some(record) = self.record(seq).await? else {
            return Ok(None);
        };
        let domain = record.domain.as_str();
        let source = match &record.payload {
            PayloadRef::Form { form_id } => match self.form_value(domain, form_id).await? {
                Some(value) => {
                    let stored = decode_form(domain, form_id, &value)?;
                    SendSource::Form {
                        xml: stored.xml()?,
                        indexed_on: stored.indexed_on as i64,
                        form: stored.form,
                    }
                }
                None => SendSource::Missing(format!("form {form_id} is not in the store")),
            },
            PayloadRef::Case { case_id } => match self.case_value(domain, case_id).await? {
                Some(value) => SendSource::Case(decode_case(&value, case_id)?.0),
                None => SendSource::Missing(format!("case {case_id} is not in the store")),
            },
            PayloadRef::App { .. } => SendSource::App,
        };
        Ok(Some((record, source)))
    }

    /// One page of a domain's records, newest first; `cursor` is the
    /// `next_cursor` of the previous page.
    pub async fn list_records(
        &self,
        domain: &str,
        filter: &RecordFilter,
        limit: usize,
        cursor: Option<u64>,
    ) -> Result<RecordPage, StoreError> {
        let client = self.client().await?;
        let upper = cursor.map_or(i64::MAX, |seq| seq.min(i64::MAX as u64) as i64);
        let state = filter.state.map(|state| state.as_str());
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT seq, value FROM records
                         WHERE domain = $1 AND seq < $2
                           AND ($3::text IS NULL OR state = $3)
                           AND ($4::text IS NULL OR repeater = $4)
                           AND ($5::text IS NULL OR payload_id = $5)
                         ORDER BY seq DESC LIMIT $6",
                    )
                    .await
                    .map_err(|e| sql_error("preparing a statement", e))?,
                &[
                    &domain,
                    &upper,
                    &state,
                    &filter.repeater,
                    &filter.payload_id,
                    &(limit as i64),
                ],
            )
            .await
            .map_err(|e| sql_error("listing records", e))?;
        let mut records = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in &rows {
            let seq = row.get::<_, i64>(0) as u64;
            let record = decode_record(seq, row.get(1))?;
            last = Some(seq);
            if filter.matches(&record) {
                records.push(record);
            }
        }
        Ok(RecordPage {
            records,
            next_cursor: if rows.len() >= limit {
                last.filter(|seq| *seq > 1)
            } else {
                None
            },
        })
    }

    pub async fn form_indexed_on(
        &self,
        domain: &str,
        form_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT indexed_on FROM forms WHERE domain = $1 AND form_id = $2",
                &[&domain, &form_id],
            )
            .await
            .map_err(|e| sql_error("reading a form", e))?;
        Ok(row.map(|row| row.get(0)))
    }

    pub async fn case_indexed_on(
        &self,
        domain: &str,
        case_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT indexed_on FROM cases WHERE domain = $1 AND case_id = $2",
                &[&domain, &case_id],
            )
            .await
            .map_err(|e| sql_error("reading a case", e))?;
        Ok(row.map(|row| row.get(0)))
    }

    /// One page of a listing: (value, indexed_on) of the rows on it, the
    /// objects decoded by `decode` and kept by `keep`, and how many match.
    async fn list<T>(
        &self,
        domain: &str,
        query: &ListingQuery,
        range: &ListingRange,
        (offset, limit): (usize, usize),
        decode: impl Fn(&str, &[u8]) -> Result<T, StoreError>,
        keep: Keep<'_, T>,
    ) -> Result<Listed<(T, Vec<u8>, i64)>, StoreError> {
        let Some((start, end)) = range.bounds() else {
            return Ok(Listed {
                objects: Vec::new(),
                total_count: 0,
            });
        };
        let bounds = (
            start.min(i64::MAX as u64) as i64,
            end.min(i64::MAX as u64) as i64,
        );
        let client = self.client().await?;
        let id = if query.from.contains("forms") {
            "form_id"
        } else {
            "case_id"
        };
        let what = format!("{id}, value, indexed_on");
        let mut objects = Vec::new();
        let Some(keep) = keep else {
            let (offset, limit) = (offset as i64, limit as i64);
            let extra: [&(dyn ToSql + Sync); 2] = [&limit, &offset];
            let n = if query.scope_value.is_some() { 5 } else { 4 };
            let sql = query.sql(
                &what,
                range.descending,
                &format!("LIMIT ${n} OFFSET ${}", n + 1),
            );
            let statement = client
                .prepare_cached(&sql)
                .await
                .map_err(|e| sql_error("preparing a statement", e))?;
            let rows = client
                .query(&statement, &listing_params(&domain, &bounds, query, &extra))
                .await
                .map_err(|e| sql_error("listing", e))?;
            for row in rows {
                let id: String = row.get(0);
                let value: Vec<u8> = row.get(1);
                objects.push((decode(&id, &value)?, value, row.get(2)));
            }
            let count = client
                .prepare_cached(&query.count_sql())
                .await
                .map_err(|e| sql_error("preparing a statement", e))?;
            let total: i64 = client
                .query_one(&count, &listing_params(&domain, &bounds, query, &[]))
                .await
                .map_err(|e| sql_error("counting a listing", e))?
                .get(0);
            return Ok(Listed {
                objects,
                total_count: total as u64,
            });
        };
        let statement = client
            .prepare_cached(&query.sql(&what, range.descending, ""))
            .await
            .map_err(|e| sql_error("preparing a statement", e))?;
        let params = listing_params(&domain, &bounds, query, &[]);
        let rows = client
            .query_raw(&statement, params.iter().copied())
            .await
            .map_err(|e| sql_error("listing", e))?;
        let mut rows = pin!(rows);
        let mut matched = 0usize;
        while let Some(row) = rows.try_next().await.map_err(|e| sql_error("listing", e))? {
            let id: String = row.get(0);
            let value: Vec<u8> = row.get(1);
            let indexed_on: i64 = row.get(2);
            let object = decode(&id, &value)?;
            if !keep(&object, indexed_on) {
                continue;
            }
            if matched >= offset && objects.len() < limit {
                objects.push((object, value, indexed_on));
            }
            matched += 1;
        }
        Ok(Listed {
            objects,
            total_count: matched as u64,
        })
    }

    pub async fn list_forms(
        &self,
        domain: &str,
        scope: &FormScope,
        range: &ListingRange,
        page: (usize, usize),
        keep: Keep<'_, StoredForm>,
    ) -> Result<Listed<ListedForm>, StoreError> {
        let listed = self
            .list(
                domain,
                &ListingQuery::forms(scope),
                range,
                page,
                |form_id, value| Ok(decode_form(domain, form_id, value)?.form),
                keep,
            )
            .await?;
        let mut objects = Vec::with_capacity(listed.objects.len());
        for (form, value, indexed_on) in listed.objects {
            let xml = decode_form(domain, &form.form_id, &value)?.xml()?;
            objects.push(ListedForm {
                form,
                xml,
                indexed_on,
            });
        }
        Ok(Listed {
            objects,
            total_count: listed.total_count,
        })
    }

    pub async fn list_cases(
        &self,
        domain: &str,
        scope: &CaseScope,
        range: &ListingRange,
        page: (usize, usize),
        keep: Keep<'_, Case>,
    ) -> Result<Listed<(Case, i64)>, StoreError> {
        let listed = self
            .list(
                domain,
                &ListingQuery::cases(scope),
                range,
                page,
                |case_id, value| Ok(decode_case(value, case_id)?.0),
                keep,
            )
            .await?;
        Ok(Listed {
            objects: listed
                .objects
                .into_iter()
                .map(|(case, _, indexed_on)| (case, indexed_on))
                .collect(),
            total_count: listed.total_count,
        })
    }

    /// Deletes up to `limit` records that have been in the final `state`
    /// since `cutoff` or earlier, with their attempts; returns how many.
    pub async fn retain_records(
        &self,
        state: RecordState,
        cutoff: i64,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let deleted = client
            .execute(
                "DELETE FROM records WHERE seq IN (
                     SELECT seq FROM records
                     WHERE state = $1 AND final_since IS NOT NULL AND final_since <= $2
                     ORDER BY final_since, seq LIMIT $3)",
                &[&state.as_str(), &cutoff, &(limit as i64)],
            )
            .await
            .map_err(|e| sql_error("deleting records past retention", e));
        self.note_write(deleted.as_ref().map(|_| ()));
        Ok(deleted? as usize)
    }

    /// Looks at up to `limit` forms of `domain` stored from `start` to
    /// `cutoff` and deletes those no `pending` or `failed` record needs
    /// (`retention::form_may_go`), in one transaction.
    pub async fn retain_forms(
        &self,
        domain: &str,
        cutoff: i64,
        start: u64,
        limit: usize,
    ) -> Result<RetainedForms, StoreError> {
        let done = RetainedForms {
            deleted: 0,
            resume_at: None,
        };
        if cutoff < 0 || start > cutoff as u64 {
            return Ok(done);
        }
        let mut client = self.client().await?;
        let txn = client
            .transaction()
            .await
            .map_err(|e| sql_error("starting a transaction", e))?;
        let candidates: Vec<(String, i64)> = txn
            .query(
                "SELECT form_id, indexed_on FROM forms
                 WHERE domain = $1 AND indexed_on >= $2 AND indexed_on <= $3
                 ORDER BY indexed_on LIMIT $4 FOR UPDATE",
                &[&domain, &(start as i64), &cutoff, &(limit as i64)],
            )
            .await
            .map_err(|e| sql_error("finding forms past retention", e))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let mut gone = Vec::new();
        for (form_id, indexed_on) in &candidates {
            let rows = txn
                .query(
                    "SELECT seq, value FROM records WHERE domain = $1 AND payload_id = $2
                     FOR UPDATE",
                    &[&domain, form_id],
                )
                .await
                .map_err(|e| sql_error("reading a form's records", e))?;
            let mut states = Vec::new();
            for row in rows {
                let record = decode_record(row.get::<_, i64>(0) as u64, row.get(1))?;
                // A case or app id equal to the form id is not the form.
                if matches!(&record.payload, PayloadRef::Form { form_id: id } if id == form_id) {
                    states.push(record.state);
                }
            }
            if crate::retention::form_may_go(*indexed_on, cutoff, &states) {
                gone.push(form_id.clone());
            }
        }
        if !gone.is_empty() {
            txn.execute(
                "DELETE FROM forms WHERE domain = $1 AND form_id = ANY($2)",
                &[&domain, &gone],
            )
            .await
            .map_err(|e| sql_error("deleting forms past retention", e))?;
        }
        let committed = txn
            .commit()
            .await
            .map_err(|e| sql_error("committing retention", e));
        self.note_write(committed.as_ref().map(|_| ()));
        committed?;
        Ok(RetainedForms {
            deleted: gone.len(),
            resume_at: if candidates.len() < limit {
                None
            } else {
                candidates
                    .last()
                    .map(|(_, indexed_on)| *indexed_on as u64 + 1)
            },
        })
    }

    /// Every domain that has stored a form or case.
    pub async fn form_domains(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT domain FROM domain_counters ORDER BY domain", &[])
            .await
            .map_err(|e| sql_error("listing domains", e))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// The oldest of what retention keeps.
    pub async fn oldest_kept(&self) -> Result<OldestKept, StoreError> {
        let client = self.client().await?;
        let mut records = Vec::new();
        for state in RecordState::ALL.into_iter().filter(|s| !s.is_queued()) {
            let row = client
                .query_one(
                    "SELECT min(final_since) FROM records
                     WHERE state = $1 AND final_since IS NOT NULL",
                    &[&state.as_str()],
                )
                .await
                .map_err(|e| sql_error("reading the oldest final record", e))?;
            records.push((state, row.get::<_, Option<i64>>(0)));
        }
        let form = client
            .query_one("SELECT min(indexed_on) FROM forms", &[])
            .await
            .map_err(|e| sql_error("reading the oldest form", e))?
            .get::<_, Option<i64>>(0);
        Ok(OldestKept { records, form })
    }

    /// A domain's figures: records per state, forms, cases, XML bytes.
    pub async fn domain_stats(&self, domain: &str) -> Result<DomainStats, StoreError> {
        let client = self.client().await?;
        let mut records: BTreeMap<RecordState, u64> = RecordState::ALL
            .into_iter()
            .map(|state| (state, 0))
            .collect();
        for row in client
            .query(
                "SELECT state, count(*) FROM records WHERE domain = $1 GROUP BY state",
                &[&domain],
            )
            .await
            .map_err(|e| sql_error("counting a domain's records", e))?
        {
            let state: String = row.get(0);
            if let Ok(state) = state.parse::<RecordState>() {
                records.insert(state, row.get::<_, i64>(1) as u64);
            }
        }
        let forms = client
            .query_one(
                "SELECT count(*), coalesce(sum(xml_bytes), 0)::bigint FROM forms WHERE domain = $1",
                &[&domain],
            )
            .await
            .map_err(|e| sql_error("counting a domain's forms", e))?;
        let cases: i64 = client
            .query_one("SELECT count(*) FROM cases WHERE domain = $1", &[&domain])
            .await
            .map_err(|e| sql_error("counting a domain's cases", e))?
            .get(0);
        Ok(DomainStats {
            records,
            forms: forms.get::<_, i64>(0) as u64,
            cases: cases as u64,
            form_xml_bytes: forms.get::<_, i64>(1) as u64,
        })
    }
}
