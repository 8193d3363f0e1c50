//! The edge's one error type, mapped to HTTP in one place:
//! `{"error": {"code": "...", "message": "..."}}` with the matching status.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use revo_events::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::identity::{AuthError, IdentityError};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `Retry-After` seconds (429, 503).
    pub retry_after: Option<u64>,
    /// `Allow` (405).
    pub allow: Option<String>,
    /// `budget_exceeded`: what the budget has left, in dollars.
    pub remaining_usd: Option<String>,
    /// `x-should-retry: false`: the official SDKs then do not retry.
    pub no_retry: bool,
    /// Each problem of a refused definition or input, with its path (boxed: errors travel
    /// in every handler's `Result`).
    #[allow(clippy::box_collection)]
    pub problems: Option<Box<Vec<Problem>>>,
}

/// One problem of a refused document: where (a JSON path from its root) and what.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// e.g. `$.steps[2].prompt`.
    pub path: String,
    /// `unknown_step`, `cycle`, `unknown_variable`, `bad_type`, `unknown_host`,
    /// `missing_field`, `unknown_field`, `duplicate_step`, `invalid_value`.
    pub code: String,
    pub message: String,
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: e.g. `token_expired`, `rate_limited`, `invalid_body`.
    pub code: String,
    /// For people; may change between versions.
    pub message: String,
    /// `budget_exceeded` only: what the budget has left in its period, in dollars.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub remaining_usd: Option<String>,
    /// A refused workflow definition or run input: every problem, with its path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<Problem>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
            remaining_usd: None,
            no_retry: false,
            problems: None,
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn unavailable(why: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why)
    }

    pub fn forbidden(code: &'static str, why: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, why)
    }

    pub fn bad_request(code: &'static str, why: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, why)
    }

    pub fn unprocessable(code: &'static str, why: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, why)
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with_allow(mut self, methods: String) -> Self {
        self.allow = Some(methods);
        self
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Internal(m) => {
                tracing::error!(error = %m, "authentication error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
            AuthError::Unavailable => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string())
                    .with_retry_after(1)
            }
            e => Self::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // The store's own message names hosts and drivers: logged, not shown.
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "store unavailable");
                Self::unavailable("the event store is unavailable; try again shortly")
                    .with_retry_after(1)
            }
            StoreError::CommitUnknown(_) => {
                tracing::warn!(error = %e, "commit outcome unknown");
                Self::unavailable(
                    "the store lost its connection during the change, which may or may not \
                     have been made; check before retrying",
                )
                .with_retry_after(1)
            }
            StoreError::ShuttingDown => Self::unavailable(e.to_string()).with_retry_after(1),
            e => {
                tracing::error!(error = %e, "store error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the event store refused the change",
                )
            }
        }
    }
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        let msg = e.to_string();
        match e {
            IdentityError::Auth(a) => a.into(),
            IdentityError::InvalidCredentials => {
                Self::new(StatusCode::UNAUTHORIZED, "invalid_credentials", msg)
            }
            IdentityError::Busy => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", msg).with_retry_after(1)
            }
            IdentityError::LoginThrottled(secs) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "login_throttled", msg)
                    .with_retry_after(secs)
            }
            IdentityError::Invalid { code, .. } => Self::unprocessable(code, msg),
            IdentityError::NotFound(_) => Self::not_found(msg),
            IdentityError::Conflict { code, .. } => Self::new(StatusCode::CONFLICT, code, msg),
            IdentityError::Forbidden(_) => Self::forbidden("forbidden", msg),
            IdentityError::Store(s) => s.into(),
            IdentityError::Internal(m) => {
                tracing::error!(error = %m, "identity error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if let Some(allow) = &self.allow {
            res.insert_header((header::ALLOW, allow.clone()));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if self.no_retry {
            res.insert_header(("x-should-retry", "false"));
        }
        res.json(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
                remaining_usd: self.remaining_usd.clone(),
                problems: self.problems.as_deref().cloned(),
            },
        })
    }
}

pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::not_found(format!("no route for {} {}", req.method(), req.path())).error_response()
}
