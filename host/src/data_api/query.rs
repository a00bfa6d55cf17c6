//! Reading a Data API query string (SPEC section 11): pages (`limit`,
//! `offset`), filters and `order_by`, each refused with a 400 that names the
//! parameter; and writing it back with another offset for `next`/`previous`.
//! Parameters it does not know are kept in the links and otherwise ignored,
//! as tastypie does.

use crate::endpoint::ApiError;
use crate::model::{Case, StoredForm};
use crate::store::ListingRange;

/// `limit` when none is given.
const DEFAULT_LIMIT: usize = 20;
/// The largest `limit` of a form listing.
pub const MAX_FORM_LIMIT: usize = 1_000;
/// The largest `limit` of a case listing.
pub const MAX_CASE_LIMIT: usize = 5_000;

/// The query's parameters, in their order.
#[derive(Debug, Clone, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(raw: Option<&str>) -> Params {
        Params(
            url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(found, _)| found == name)
            .map(|(_, value)| value.as_str())
    }

    /// The same query with this page.
    pub fn with_page(&self, limit: usize, offset: usize) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in &self.0 {
            if name != "limit" && name != "offset" {
                query.append_pair(name, value);
            }
        }
        query.append_pair("limit", &limit.to_string());
        query.append_pair("offset", &offset.to_string());
        query.finish()
    }

    fn text(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_owned)
    }

    /// `{prefix}_start` (inclusive) and `{prefix}_end` (exclusive).
    fn range(&self, prefix: &str) -> Result<ListingRange, ApiError> {
        let bound = |suffix: &str| -> Result<Option<i64>, ApiError> {
            let name = format!("{prefix}_{suffix}");
            self.get(&name)
                .map(|raw| {
                    crate::time::parse_timestamp(raw).ok_or_else(|| {
                        ApiError::bad_request(
                            &name,
                            format!(
                                "{name} \"{raw}\" is not a date (YYYY-MM-DD) or a time (YYYY-MM-DDTHH:MM:SS[.ffffff][Z])"
                            ),
                        )
                    })
                })
                .transpose()
        };
        Ok(ListingRange {
            start: bound("start")?,
            end: bound("end")?,
            descending: false,
        })
    }

    fn page(&self, max_limit: usize) -> Result<Page, ApiError> {
        let number = |name: &str, default: usize, min: usize, max: usize| {
            let Some(raw) = self.get(name) else {
                return Ok(default);
            };
            raw.parse::<usize>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        name,
                        format!("{name} \"{raw}\" must be a whole number from {min} to {max}"),
                    )
                })
        };
        Ok(Page {
            limit: number("limit", DEFAULT_LIMIT, 1, max_limit)?,
            offset: number("offset", 0, 0, usize::MAX)?,
        })
    }

    /// `order_by` among `allowed` (a leading `-` reverses it): the field
    /// and whether it is reversed.
    fn order<'a>(&self, allowed: &[&'a str]) -> Result<(&'a str, bool), ApiError> {
        let Some(raw) = self.get("order_by") else {
            return Ok((allowed[0], false));
        };
        let (field, descending) = match raw.strip_prefix('-') {
            Some(field) => (field, true),
            None => (raw, false),
        };
        match allowed.iter().find(|allowed| **allowed == field) {
            Some(field) => Ok((field, descending)),
            None => Err(ApiError::bad_request(
                "order_by",
                format!(
                    "order_by \"{raw}\" is not one of {} (or one of them after a \"-\")",
                    allowed.join(", ")
                ),
            )),
        }
    }
}

/// Which objects of the list to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: usize,
    pub offset: usize,
}

/// How a form listing is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormOrder {
    /// `indexed_on`, and `server_modified_on` (a stored form is not modified
    /// afterwards, so the two are the same time).
    IndexedOn,
    ReceivedOn,
}

/// A form listing's query.
#[derive(Debug, Clone)]
pub struct FormQuery {
    pub page: Page,
    pub xmlns: Option<String>,
    pub app_id: Option<String>,
    pub case_id: Option<String>,
    pub received_on: ListingRange,
    pub indexed_on: ListingRange,
    pub order: FormOrder,
    pub descending: bool,
}

impl FormQuery {
    pub fn parse(params: &Params) -> Result<FormQuery, ApiError> {
        let (order, descending) =
            params.order(&["indexed_on", "received_on", "server_modified_on"])?;
        Ok(FormQuery {
            page: params.page(MAX_FORM_LIMIT)?,
            xmlns: params.text("xmlns"),
            app_id: params.text("app_id"),
            case_id: params.text("case_id"),
            received_on: params.range("received_on")?,
            indexed_on: params.range("indexed_on")?,
            order: if order == "received_on" {
                FormOrder::ReceivedOn
            } else {
                FormOrder::IndexedOn
            },
            descending,
        })
    }

    /// Whether a form passes every filter (`case_id` aside).
    pub fn matches(&self, form: &StoredForm, indexed_on: i64) -> bool {
        self.xmlns.as_ref().is_none_or(|xmlns| &form.xmlns == xmlns)
            && self
                .app_id
                .as_ref()
                .is_none_or(|app_id| form.app_id.as_ref() == Some(app_id))
            && in_range(&self.indexed_on, Some(indexed_on))
            && in_range(
                &self.received_on,
                crate::time::parse_timestamp(&form.received_on),
            )
    }
}

fn in_range(range: &ListingRange, at: Option<i64>) -> bool {
    if range.is_whole() {
        return true;
    }
    at.is_some_and(|at| {
        range.start.is_none_or(|start| at >= start) && range.end.is_none_or(|end| at < end)
    })
}

/// A case listing's query.
#[derive(Debug, Clone)]
pub struct CaseQuery {
    pub page: Page,
    pub case_type: Option<String>,
    pub owner_id: Option<String>,
    pub user_id: Option<String>,
    pub closed: Option<bool>,
    pub indexed_on: ListingRange,
    pub server_date_modified: ListingRange,
    pub date_modified: ListingRange,
    pub by_server_date_modified: bool,
    pub descending: bool,
}

impl CaseQuery {
    pub fn parse(params: &Params) -> Result<CaseQuery, ApiError> {
        let (order, descending) = params.order(&["indexed_on", "server_date_modified"])?;
        let closed = match params.get("closed") {
            None => None,
            Some(raw) if raw.eq_ignore_ascii_case("true") => Some(true),
            Some(raw) if raw.eq_ignore_ascii_case("false") => Some(false),
            Some(raw) => {
                return Err(ApiError::bad_request(
                    "closed",
                    format!("closed \"{raw}\" must be true or false"),
                ));
            }
        };
        Ok(CaseQuery {
            page: params.page(MAX_CASE_LIMIT)?,
            case_type: params.text("type"),
            owner_id: params.text("owner_id"),
            user_id: params.text("user_id"),
            closed,
            indexed_on: params.range("indexed_on")?,
            server_date_modified: params.range("server_date_modified")?,
            date_modified: params.range("date_modified")?,
            by_server_date_modified: order == "server_date_modified",
            descending,
        })
    }

    /// Whether filters remain that the chosen listing does not answer.
    pub fn needs_check(&self) -> bool {
        let outside_listing = if self.by_server_date_modified {
            self.case_type.is_some() || !self.indexed_on.is_whole()
        } else {
            !self.server_date_modified.is_whole()
        };
        outside_listing
            || self.owner_id.is_some()
            || self.user_id.is_some()
            || self.closed.is_some()
            || !self.date_modified.is_whole()
    }

    /// Whether a case passes every filter.
    pub fn matches(&self, case: &Case, indexed_on: i64) -> bool {
        self.case_type
            .as_ref()
            .is_none_or(|case_type| &case.case_type == case_type)
            && self
                .owner_id
                .as_ref()
                .is_none_or(|owner| &case.owner_id == owner)
            && self
                .user_id
                .as_ref()
                .is_none_or(|user| &case.user_id == user)
            && self.closed.is_none_or(|closed| case.closed == closed)
            && in_range(&self.indexed_on, Some(indexed_on))
            && in_range(
                &self.server_date_modified,
                crate::time::parse_timestamp(&case.server_date_modified),
            )
            && in_range(
                &self.date_modified,
                crate::time::parse_timestamp(&case.date_modified),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(raw: &str) -> Params {
        Params::parse(Some(raw))
    }

    fn refusal(error: ApiError) -> (String, String) {
        match error {
            ApiError::BadRequest { field, problem } => (field, problem),
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn pages_default_and_are_bounded() {
        let query = FormQuery::parse(&params("")).unwrap();
        assert_eq!(
            query.page,
            Page {
                limit: 20,
                offset: 0
            }
        );
        assert_eq!(
            FormQuery::parse(&params("limit=1000")).unwrap().page.limit,
            1000
        );
        assert_eq!(
            CaseQuery::parse(&params("limit=5000")).unwrap().page.limit,
            5000
        );
        let (field, problem) = refusal(FormQuery::parse(&params("limit=1001")).unwrap_err());
        assert_eq!(field, "limit");
        assert_eq!(
            problem,
            "limit \"1001\" must be a whole number from 1 to 1000"
        );
        let (field, _) = refusal(CaseQuery::parse(&params("limit=5001")).unwrap_err());
        assert_eq!(field, "limit");
        let (field, _) = refusal(FormQuery::parse(&params("limit=0")).unwrap_err());
        assert_eq!(field, "limit");
        let (field, problem) = refusal(FormQuery::parse(&params("offset=-3")).unwrap_err());
        assert_eq!(field, "offset");
        assert!(
            problem.starts_with("offset \"-3\" must be a whole number"),
            "{problem}"
        );
    }

    #[test]
    fn dates_and_orders_are_checked() {
        let query = FormQuery::parse(&params(
            "indexed_on_start=2026-01-02T03:04:05.5&order_by=-received_on",
        ))
        .unwrap();
        assert_eq!(
            query.indexed_on.start,
            crate::time::parse_timestamp("2026-01-02T03:04:05.500000Z")
        );
        assert_eq!(query.order, FormOrder::ReceivedOn);
        assert!(query.descending);
        let (field, problem) =
            refusal(FormQuery::parse(&params("received_on_end=yesterday")).unwrap_err());
        assert_eq!(field, "received_on_end");
        assert!(
            problem.starts_with("received_on_end \"yesterday\" is not a date"),
            "{problem}"
        );
        let (field, problem) = refusal(CaseQuery::parse(&params("order_by=name")).unwrap_err());
        assert_eq!(field, "order_by");
        assert_eq!(
            problem,
            "order_by \"name\" is not one of indexed_on, server_date_modified (or one of them after a \"-\")"
        );
        let (field, _) = refusal(CaseQuery::parse(&params("closed=maybe")).unwrap_err());
        assert_eq!(field, "closed");
    }

    #[test]
    fn links_keep_the_query_with_another_offset() {
        let params = params("xmlns=http%3A%2F%2Fx.org%2Ff&offset=40&limit=20&order_by=indexed_on");
        assert_eq!(
            params.with_page(20, 60),
            "xmlns=http%3A%2F%2Fx.org%2Ff&order_by=indexed_on&limit=20&offset=60"
        );
    }
}
