//! Errors: [`Error`] for start-up, [`ApiError`] for HTTP answers.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Database unreachable, bad URL or migration failure.
    #[error("database {url}: {source}")]
    Database {
        /// The URL with any password removed.
        url: String,
        /// Cause.
        #[source]
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Unsupported database URL scheme.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    DatabaseScheme(String),
    /// Signing key file or variable unusable.
    #[error("signing key: {0}")]
    SigningKey(String),
    /// TLS certificate or key unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// SMTP URL unusable.
    #[error("SMTP relay URL: {0}")]
    Smtp(String),
    /// Could not listen.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An operator command got a bad value.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Other I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// An HTTP error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<i64>,
    /// Extra machine-readable context merged into the error object.
    pub details: Option<serde_json::Value>,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            details: None,
        }
    }
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing, invalid or expired access token; sign in again or refresh the session",
        )
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    pub fn too_many(code: &'static str, retry_after: i64, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            code,
            message: message.into(),
            retry_after: Some(retry_after.max(1)),
            details: None,
        }
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error");
        Self::internal()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = serde_json::json!({"code": self.code, "message": self.message});
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (self.details, err.as_object_mut())
        {
            obj.extend(extra);
        }
        let body = serde_json::json!({ "error": err });
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}
