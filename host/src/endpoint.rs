//! What the JSON endpoints of `api`, `data_api` and `ingest` share: the error
//! answers of SPEC section 9 as one type ([`ApiError`], rendered by
//! `IntoResponse`), and the check of the caller's token (`Bearer <token>`, or
//! CommCare's `ApiKey <username>:<token>` for the Data API, schemes in any case): the extractor [`DomainAccess`]
//! ("this token may act on the `{domain}` of the URL"), and [`Caller`] for
//! the endpoints any valid token may use. A domain token asking for another domain is answered 404,
//! exactly as a domain that does not exist.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;
use crate::catalog::CatalogError;
use crate::store::StoreError;

/// Why a JSON endpoint refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No bearer token, or not one the gateway knows: 401 with
    /// `WWW-Authenticate: Bearer`.
    Unauthenticated,
    /// 404: the domain, object, record or action does not exist (or the
    /// token may not see it).
    NotFound(String),
    /// 400: the request is malformed; `field` names the part at fault.
    BadRequest { field: String, problem: String },
    /// 422: the request is well-formed but a field's value is refused.
    Invalid { field: String, problem: String },
    /// 409: the change would clash with what exists.
    Conflict(String),
    /// 503: nothing was kept; the caller should try again later.
    Unavailable { field: String, problem: String },
    /// 500: the gateway failed (logged).
    Internal(String),
}

impl ApiError {
    pub fn bad_request(field: impl Into<String>, problem: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::Unauthenticated => json!({
                "error": "this endpoint needs Authorization: Bearer <token> with a valid admin or domain token"
            }),
            ApiError::NotFound(message)
            | ApiError::Conflict(message)
            | ApiError::Internal(message) => json!({ "error": message }),
            ApiError::BadRequest { field, problem }
            | ApiError::Invalid { field, problem }
            | ApiError::Unavailable { field, problem } => {
                json!({ "error": problem, "field": field })
            }
        };
        if let ApiError::Internal(error) = &self {
            tracing::error!(%error, "admin API request failed");
        }
        let mut response = (status, Json(body)).into_response();
        if self == ApiError::Unauthenticated {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"repeatd\""),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::Internal(error.to_string())
    }
}

impl From<CatalogError> for ApiError {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::NoDomain(_) | CatalogError::NotFound { .. } => {
                ApiError::NotFound(error.to_string())
            }
            CatalogError::Exists { .. } | CatalogError::Conflict(_) => {
                ApiError::Conflict(error.to_string())
            }
            CatalogError::Invalid { field, problem } => ApiError::Invalid { field, problem },
            CatalogError::Store(_) | CatalogError::Secret(_) | CatalogError::Corrupt { .. } => {
                ApiError::Internal(error.to_string())
            }
        }
    }
}

/// Whose token is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Admin,
    Domain,
}

/// A caller with a valid token: the admin, or a domain's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub access: Access,
    /// The domain of a domain token.
    pub own_domain: Option<String>,
}

impl Caller {
    /// The caller of a request with these headers.
    pub fn from_headers(app: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = bearer(headers).ok_or(ApiError::Unauthenticated)?;
        let digest = crate::secrets::token_digest(token);
        if crate::secrets::digests_equal(&digest, &app.admin_token_digest) {
            return Ok(Caller {
                access: Access::Admin,
                own_domain: None,
            });
        }
        match app.catalog.snapshot().domain_of_token(token) {
            Some(domain) => Ok(Caller {
                access: Access::Domain,
                own_domain: Some(domain.to_owned()),
            }),
            None => Err(ApiError::Unauthenticated),
        }
    }
}

/// The token of `Authorization: Bearer <token>`, or of CommCare's
/// `ApiKey <username>:<token>` (the username is not checked: the token alone
/// says who calls). Schemes in any case.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(credentials.trim())
    } else if scheme.eq_ignore_ascii_case("apikey") {
        credentials.trim().split_once(':').map(|(_, key)| key)
    } else {
        None
    }
}

/// The caller's token may act on the domain the URL names as `{domain}`: the
/// admin token on any existing domain, a domain token on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainAccess {
    pub domain: String,
    pub access: Access,
}

impl DomainAccess {
    /// Checks `caller` against `domain`.
    pub fn check(app: &AppState, caller: Caller, domain: &str) -> Result<DomainAccess, ApiError> {
        let allowed = match caller.access {
            Access::Admin => app.catalog.snapshot().domain(domain).is_some(),
            Access::Domain => caller.own_domain.as_deref() == Some(domain),
        };
        if allowed {
            Ok(DomainAccess {
                domain: domain.to_owned(),
                access: caller.access,
            })
        } else {
            Err(ApiError::NotFound(format!("no project space \"{domain}\"")))
        }
    }
}

impl FromRequestParts<Arc<AppState>> for DomainAccess {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        // The token is checked first: without one, even a malformed URL is 401.
        let caller = Caller::from_headers(app, &parts.headers)?;
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, app)
            .await
            .map_err(|rejection| ApiError::NotFound(rejection.body_text()))?;
        let domain = params
            .get("domain")
            .ok_or_else(|| ApiError::Internal("a domain route without {domain}".into()))?;
        DomainAccess::check(app, caller, domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn an_unauthenticated_caller_is_told_how_to_authenticate() {
        let response = ApiError::Unauthenticated.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"repeatd\""
        );
        assert_eq!(
            body_of(response).await,
            json!({ "error": "this endpoint needs Authorization: Bearer <token> with a valid admin or domain token" })
        );
    }

    #[tokio::test]
    async fn field_errors_name_their_field_and_others_only_say_what() {
        let response = ApiError::invalid("retry.min_wait", "must be positive").into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            body_of(response).await,
            json!({ "error": "must be positive", "field": "retry.min_wait" })
        );
        let response = ApiError::bad_request("limit", "too big").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let response = ApiError::NotFound("no record \"x\"".into()).into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert_eq!(
            body_of(response).await,
            json!({ "error": "no record \"x\"" })
        );
    }

    #[test]
    fn catalog_errors_keep_their_status() {
        let status = |error: CatalogError| ApiError::from(error).status();
        assert_eq!(
            status(CatalogError::NoDomain("d".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(CatalogError::Exists {
                kind: "repeater",
                domain: "d".into(),
                name: "r".into()
            }),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(CatalogError::Conflict("in use".into())),
            StatusCode::CONFLICT
        );
        assert_eq!(
            ApiError::from(CatalogError::Invalid {
                field: "connection".into(),
                problem: "no connection".into()
            }),
            ApiError::invalid("connection", "no connection")
        );
        assert_eq!(
            status(CatalogError::Corrupt {
                what: "w".into(),
                problem: "p".into()
            }),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
