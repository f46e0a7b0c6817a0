//! The one error type handlers return. Refusals become their status with a JSON body
//! `{"error":{"code","message"}}`; unexpected errors are logged and answered with a generic 500.

use airlock_core::refusal::{Refusal, RefusalKind};
use airlock_store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::log::RefusalNote;

/// A handler error.
#[derive(Debug)]
pub enum ApiError {
    /// A refusal the caller can act on.
    Refused(Refusal),
    /// Something broke; details go to the log only.
    Internal(String),
}

impl ApiError {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> ApiError {
        ApiError::Refused(Refusal::new(kind, message))
    }

    /// Whether this is a body-size refusal (413).
    pub fn is_too_large(&self) -> bool {
        matches!(self, ApiError::Refused(r) if r.kind == RefusalKind::TooLarge)
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError::Refused(r)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::new(RefusalKind::NotFound, m),
            StoreError::Conflict(m) => ApiError::new(RefusalKind::Conflict, m),
            StoreError::LimitReached(m) => ApiError::new(RefusalKind::TooManyRequests, m),
            StoreError::Forbidden(m) => ApiError::new(RefusalKind::Forbidden, m),
            StoreError::Purged(m) => ApiError::new(RefusalKind::Gone, m),
            StoreError::Invalid(m) => ApiError::new(RefusalKind::BadRequest, m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

pub fn status_of(kind: RefusalKind) -> StatusCode {
    match kind {
        RefusalKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        RefusalKind::Forbidden => StatusCode::FORBIDDEN,
        RefusalKind::BadRequest => StatusCode::BAD_REQUEST,
        RefusalKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        RefusalKind::NotFound => StatusCode::NOT_FOUND,
        RefusalKind::Locked => StatusCode::LOCKED,
        RefusalKind::Conflict => StatusCode::CONFLICT,
        RefusalKind::UnknownStack => StatusCode::UNPROCESSABLE_ENTITY,
        RefusalKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        RefusalKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        RefusalKind::Gone => StatusCode::GONE,
    }
}

pub(crate) fn code_of(kind: RefusalKind) -> &'static str {
    match kind {
        RefusalKind::Unauthenticated => "unauthenticated",
        RefusalKind::Forbidden => "forbidden",
        RefusalKind::BadRequest => "bad_request",
        RefusalKind::TooLarge => "too_large",
        RefusalKind::NotFound => "not_found",
        RefusalKind::Locked => "locked",
        RefusalKind::Conflict => "conflict",
        RefusalKind::UnknownStack => "unknown_stack",
        RefusalKind::MethodNotAllowed => "method_not_allowed",
        RefusalKind::TooManyRequests => "too_many_requests",
        RefusalKind::Gone => "gone",
    }
}

pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Basic realm=\"airlock\", Bearer"),
        );
    }
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Refused(r) => {
                let code = code_of(r.kind);
                let mut resp = error_response(status_of(r.kind), code, &r.message);
                resp.extensions_mut().insert(RefusalNote {
                    code,
                    reason: r.message,
                });
                resp
            }
            ApiError::Internal(detail) => {
                crate::log::emit(&format!(
                    "{} level=error event=internal detail={}",
                    airlock_core::time::rfc3339(airlock_store::now_ms()),
                    crate::log::quote(&detail)
                ));
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal server error; see the server log",
                )
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
