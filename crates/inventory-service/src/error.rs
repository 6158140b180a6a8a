//! The inventory service's errors and their one mapping to problem+json responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::http::{on_constraint, Problem};

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{0}")]
    Invalid(String),
    /// Valid on its own, but past a cap on the total (which depends on what came before).
    #[error("{0}")]
    OverCap(String),
    #[error("product not found")]
    NotFound,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl IntoResponse for InventoryError {
    fn into_response(self) -> Response {
        let problem = match &self {
            InventoryError::Invalid(detail) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-product",
                "The product is not valid",
            )
            .with_detail(detail),
            InventoryError::OverCap(detail) => Problem::new(
                StatusCode::CONFLICT,
                "over-cap",
                "A product may receive at most the cap on units in all",
            )
            .with_detail(detail),
            InventoryError::NotFound => Problem::new(
                StatusCode::NOT_FOUND,
                "product-not-found",
                "No such product",
            ),
            InventoryError::Database(error) => on_constraint(error, |name| match name {
                "products_pkey" => Some(Problem::new(
                    StatusCode::CONFLICT,
                    "product-exists",
                    "A product with this id already exists",
                )),
                "products_stock_check"
                | "products_price_cents_check"
                | "products_received_check" => Some(
                    Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid-product",
                        "The product is not valid",
                    )
                    .with_detail(format!("violates {name}")),
                ),
                _ => None,
            }),
        };
        problem.into_response()
    }
}
