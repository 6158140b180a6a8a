//! RFC 9457 problem responses: the one error body of every HTTP answer, and the answer for a
//! database error (classified once, in `crate::db::errors`).

use crate::db::errors::is_retryable;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// An RFC 9457 problem detail, sent as `application/problem+json`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI reference naming the problem type (`/problems/{slug}`).
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Sent as the `Retry-After` header (seconds), not in the body.
    #[serde(skip)]
    pub retry_after_secs: Option<u32>,
    /// RFC 9457 extension members of a problem type (e.g. the order an answer is about); an
    /// operation that sends some documents them in its own schema.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// `slug` names the problem type (`/problems/{slug}`); `title` is its short human summary.
    pub fn new(status: StatusCode, slug: &str, title: &str) -> Self {
        Problem {
            problem_type: format!("/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            retry_after_secs: None,
            extensions: serde_json::Map::new(),
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds an extension member (RFC 9457 §3.2).
    pub fn with_extension(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extensions.insert(name.to_owned(), value.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn internal() -> Self {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
    }

    /// `503` with `Retry-After: 1`: the condition is expected to pass.
    pub fn unavailable(detail: &str) -> Self {
        let mut problem = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        )
        .with_detail(detail);
        problem.retry_after_secs = Some(1);
        problem
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after_secs;
        let mut response = (status, Json(self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The answer for a database error: the client's problem when it violated a constraint that
/// `by_name` knows (constraint violations are the client's doing: named, not a 500), else
/// [`database_problem`].
pub fn on_constraint(
    error: &sqlx::Error,
    by_name: impl FnOnce(&str) -> Option<Problem>,
) -> Problem {
    error
        .as_database_error()
        .and_then(|e| e.constraint())
        .and_then(by_name)
        .unwrap_or_else(|| database_problem(error))
}

/// The answer for a database error that is not the client's doing: 503 while it may pass if
/// retried (database unreachable, lock or statement timeout, deadlock), 500 otherwise. The
/// error text is logged, never sent.
pub fn database_problem(error: &sqlx::Error) -> Problem {
    if is_retryable(error) {
        tracing::warn!(%error, "database unavailable");
        Problem::unavailable("database unavailable, retry later")
    } else {
        tracing::error!(%error, "database error");
        Problem::internal()
    }
}
