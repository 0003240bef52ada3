//! The one error type of the services and the HTTP layer, and the one place where an error
//! becomes a Matrix error: a status code, an `errcode` and a human-readable `error`.
//!
//! Services build errors with the short constructors below (`Error::forbidden("…")`); the HTTP
//! layer turns any `Error` into a response through [`Error::into_matrix`] and nothing else.

use http::StatusCode;
use ruma::api::{
    client::uiaa::{UiaaInfo, UiaaResponse},
    error::{ErrorBody, ErrorKind, LimitExceededErrorData, RetryAfter, StandardErrorBody, UnknownTokenErrorData},
};

use crate::storage::StorageError;

/// Result alias used across services and handlers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Anything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Matrix error with the status code the spec gives it.
    #[error("{status} {}: {message}", kind.errcode())]
    Matrix {
        /// HTTP status.
        status: StatusCode,
        /// The `errcode` and any extra fields.
        kind: ErrorKind,
        /// Human-readable explanation.
        message: String,
    },
    /// The endpoint needs (more) user-interactive authentication: 401 with the UIA state.
    #[error("user-interactive authentication required")]
    Uiaa(Box<UiaaInfo>),
    /// A failure inside the server. Logged in full; the client sees 500 `M_UNKNOWN`.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What the HTTP layer sends for an error.
pub enum MatrixError {
    /// A standard `{errcode, error}` body.
    Standard(ruma::api::error::Error),
    /// A user-interactive-authentication body.
    Uiaa(UiaaResponse),
}

impl Error {
    /// Any Matrix error.
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Error::Matrix {
            status,
            kind,
            message: message.into(),
        }
    }
    /// 403 `M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorKind::Forbidden, message)
    }
    /// 404 `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message)
    }
    /// 400 `M_BAD_JSON`.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::BadJson, message)
    }
    /// 400 `M_NOT_JSON`.
    pub fn not_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::NotJson, message)
    }
    /// 400 `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidParam, message)
    }
    /// 400 `M_MISSING_PARAM`.
    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::MissingParam, message)
    }
    /// 401 `M_MISSING_TOKEN`.
    pub fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::MissingToken,
            "Missing access token",
        )
    }
    /// 401 `M_UNKNOWN_TOKEN`, with `soft_logout` for expired refreshable tokens.
    pub fn unknown_token(soft_logout: bool) -> Self {
        let mut data = UnknownTokenErrorData::new();
        data.soft_logout = soft_logout;
        let message = if soft_logout {
            "Access token has expired"
        } else {
            "Unrecognised access token"
        };
        Self::new(StatusCode::UNAUTHORIZED, ErrorKind::UnknownToken(data), message)
    }
    /// 413 `M_TOO_LARGE`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::TooLarge, message)
    }
    /// 429 `M_LIMIT_EXCEEDED` with `retry_after_ms` and a `Retry-After` header.
    pub fn limit_exceeded(retry_after: std::time::Duration) -> Self {
        let mut data = LimitExceededErrorData::new();
        data.retry_after = Some(RetryAfter::Delay(retry_after));
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::LimitExceeded(data),
            "Too many requests",
        )
    }
    /// 404 `M_UNRECOGNIZED`: no such endpoint.
    pub fn unrecognized() -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::Unrecognized, "Unrecognized request")
    }
    /// 405 `M_UNRECOGNIZED`: the endpoint exists, the method does not.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Unrecognized,
            "Method not allowed for this endpoint",
        )
    }
    /// 400 `M_INVALID_USERNAME`.
    pub fn invalid_username(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidUsername, message)
    }
    /// 400 `M_USER_IN_USE`.
    pub fn user_in_use() -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::UserInUse, "User ID already taken")
    }
    /// 403 `M_USER_DEACTIVATED`.
    pub fn user_deactivated() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorKind::UserDeactivated,
            "This account has been deactivated",
        )
    }
    /// 500 `M_UNKNOWN`, with the detail kept for the log.
    pub fn internal(detail: impl Into<String>) -> Self {
        Error::Internal(detail.into())
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Matrix { status, .. } => *status,
            Error::Uiaa(_) => StatusCode::UNAUTHORIZED,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The errcode of this error (`M_UNKNOWN` for internal ones).
    pub fn errcode(&self) -> String {
        match self {
            Error::Matrix { kind, .. } => kind.errcode().to_string(),
            Error::Uiaa(info) => info
                .auth_error
                .as_ref()
                .map(|e| e.kind.errcode().to_string())
                .unwrap_or_default(),
            Error::Internal(_) => "M_UNKNOWN".into(),
        }
    }

    /// The single conversion from an error to what the client is sent.
    pub fn into_matrix(self) -> MatrixError {
        match self {
            Error::Matrix { status, kind, message } => MatrixError::Standard(ruma::api::error::Error::new(
                status,
                ErrorBody::Standard(StandardErrorBody::new(kind, message)),
            )),
            Error::Uiaa(info) => MatrixError::Uiaa(UiaaResponse::AuthResponse(*info)),
            Error::Internal(_) => MatrixError::Standard(ruma::api::error::Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorBody::Standard(StandardErrorBody::new(
                    ErrorKind::Unknown,
                    "Internal server error".into(),
                )),
            )),
        }
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Internal(e.to_string())
    }
}
