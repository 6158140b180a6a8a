//! The payment service's errors and their one mapping to problem+json responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::http::{on_constraint, Problem};

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("{0}")]
    Invalid(String),
    /// Valid on its own, but past a cap on the total (which depends on what came before).
    #[error("{0}")]
    OverCap(String),
    #[error("account not found")]
    NotFound,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl IntoResponse for PaymentError {
    fn into_response(self) -> Response {
        let problem = match &self {
            PaymentError::Invalid(detail) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-account",
                "The account is not valid",
            )
            .with_detail(detail),
            PaymentError::OverCap(detail) => Problem::new(
                StatusCode::CONFLICT,
                "over-cap",
                "An account may be paid at most the cap in all",
            )
            .with_detail(detail),
            PaymentError::NotFound => Problem::new(
                StatusCode::NOT_FOUND,
                "account-not-found",
                "No such account",
            ),
            PaymentError::Database(error) => on_constraint(error, |name| match name {
                "accounts_pkey" => Some(Problem::new(
                    StatusCode::CONFLICT,
                    "account-exists",
                    "An account for this user already exists",
                )),
                "accounts_balance_cents_check" | "accounts_deposited_cents_check" => Some(
                    Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid-account",
                        "The account is not valid",
                    )
                    .with_detail(format!("violates {name}")),
                ),
                _ => None,
            }),
        };
        problem.into_response()
    }
}
