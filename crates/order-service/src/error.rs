//! The order service's errors and their one mapping to problem+json responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::http::{database_problem, on_constraint, Problem};
use platform::outbox::OutboxError;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("{0}")]
    Invalid(String),
    #[error("order not found")]
    NotFound,
    #[error("Idempotency-Key is malformed: {0}")]
    BadIdempotencyKey(&'static str),
    #[error("a request with this Idempotency-Key is still in progress")]
    IdempotencyInProgress,
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyKeyReused,
    #[error("the order could not be written now")]
    Unavailable,
    #[error("too many orders are waiting to be written")]
    Overloaded,
    #[error("this buyer places orders faster than fair use allows")]
    RateLimited { retry_after_secs: u32 },
    #[error("this buyer has {cap} orders that are not final yet")]
    TooManyOpenOrders { cap: u32 },
    /// The connection was lost while the order was being committed, and whether it was
    /// written could not be found out in time.
    #[error("whether order {order_id} was written is not known")]
    OutcomeUnknown { order_id: Uuid },
    #[error("the order could not be written")]
    Internal,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

impl OrderError {
    /// What to tell each request of a group-commit batch that failed as a whole.
    pub fn from_batch_failure(error: &OrderError) -> OrderError {
        match error {
            OrderError::Database(e) if platform::http::is_retryable(e) => OrderError::Unavailable,
            OrderError::Outbox(platform::outbox::OutboxError::Database(e))
                if platform::http::is_retryable(e) =>
            {
                OrderError::Unavailable
            }
            OrderError::Unavailable => OrderError::Unavailable,
            _ => OrderError::Internal,
        }
    }
}

impl IntoResponse for OrderError {
    fn into_response(self) -> Response {
        let problem = match &self {
            OrderError::Invalid(detail) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-order",
                "The order is not valid",
            )
            .with_detail(detail),
            OrderError::NotFound => {
                Problem::new(StatusCode::NOT_FOUND, "order-not-found", "No such order")
            }
            OrderError::BadIdempotencyKey(why) => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-idempotency-key",
                "Invalid Idempotency-Key",
            )
            .with_detail(*why),
            OrderError::IdempotencyInProgress => Problem::new(
                StatusCode::CONFLICT,
                "idempotency-key-in-progress",
                "A request with this Idempotency-Key is in progress",
            ),
            OrderError::IdempotencyKeyReused => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "This Idempotency-Key was used with a different request",
            ),
            OrderError::Unavailable => {
                Problem::unavailable("the order could not be written now, retry later")
            }
            OrderError::Overloaded => {
                let mut problem = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "Too many orders are waiting to be written",
                )
                .with_detail("the order was not written; retry later");
                problem.retry_after_secs = Some(1);
                problem
            }
            OrderError::RateLimited { retry_after_secs } => {
                let mut problem = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Too many orders from this buyer",
                )
                .with_detail("the order was not written; retry after Retry-After seconds");
                problem.retry_after_secs = Some(*retry_after_secs);
                problem
            }
            OrderError::TooManyOpenOrders { cap } => {
                let mut problem = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-open-orders",
                    "Too many orders of this buyer are not final yet",
                )
                .with_detail(format!(
                    "at most {cap} orders may be open at once; the order was not written, retry once one is final"
                ));
                problem.retry_after_secs = Some(1);
                problem
            }
            OrderError::OutcomeUnknown { order_id } => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "outcome-unknown",
                "Whether the order was written is not known",
            )
            .with_detail(
                "the connection to the database was lost while the order was being committed; \
                 look the order up at order_url (404: it was not written), or retry with the same \
                 Idempotency-Key",
            )
            .with_extension("order_id", order_id.to_string())
            .with_extension("order_url", format!("/orders/{order_id}")),
            OrderError::Internal => Problem::internal(),
            OrderError::Database(error) => on_constraint(error, constraint_problem),
            // The outbox row is written in the order's transaction: its database failing is
            // the database failing (503 while unavailable), not the outbox.
            OrderError::Outbox(OutboxError::Database(error)) => database_problem(error),
            OrderError::Outbox(error) => {
                tracing::error!(%error, "outbox error");
                Problem::internal()
            }
        };
        problem.into_response()
    }
}

/// The `500` answers of `POST /orders`, for the OpenAPI document: a problem, and for
/// `/problems/outcome-unknown` the order it is about (RFC 9457 extension members); any other
/// 500 (`/problems/internal`) comes without them.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // Only its schema is used; the answer is a `Problem` with extensions.
pub struct OutcomeUnknownProblem {
    #[serde(flatten)]
    problem: Problem,
    /// The id the order has if it was written.
    order_id: Option<Uuid>,
    /// `/orders/{order_id}`: `200` if the order was written, `404` if not.
    order_url: Option<String>,
}

/// The order API's constraints, by name.
fn constraint_problem(constraint: &str) -> Option<Problem> {
    let detail = match constraint {
        "orders_quantity_check" => "quantity must be positive",
        "idempotency_keys_pkey" => {
            return Some(Problem::new(
                StatusCode::CONFLICT,
                "idempotency-key-in-progress",
                "A request with this Idempotency-Key is in progress",
            ))
        }
        _ => return None,
    };
    Some(
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-order",
            "The order is not valid",
        )
        .with_detail(detail),
    )
}
