//! The order API's routes and the state they share (every order is written by the intake), and
//! the order service's admin routes (`sagas`).

mod openapi;
mod orders;
mod sagas;

use crate::config::Settings;
use crate::fair_use::BuyerRateLimit;
use crate::intake::OrderIntake;
use axum::extract::FromRef;
use axum::routing::{get, post};
use axum::Router;
use platform::app::Infrastructure;
use platform::auth::TokenKeys;
use sqlx::PgPool;
use std::sync::Arc;

pub use openapi::ApiDoc;
pub use sagas::{admin_routes, Saga};

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub tokens: TokenKeys,
    pub max_quantity: i32,
    pub intake: OrderIntake,
    /// Per-buyer token bucket of `POST /orders`.
    pub rate_limit: Arc<BuyerRateLimit>,
}

impl AppState {
    pub fn new(
        infra: &Infrastructure,
        settings: &Settings,
        intake: OrderIntake,
        rate_limit: BuyerRateLimit,
    ) -> Self {
        AppState {
            pool: infra.pools.http.clone(),
            tokens: settings.common.auth.token_keys(),
            max_quantity: settings.orders.max_quantity,
            intake,
            rate_limit: Arc::new(rate_limit),
        }
    }
}

impl FromRef<AppState> for TokenKeys {
    fn from_ref(state: &AppState) -> Self {
        state.tokens.clone()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(orders::create_order))
        .route("/orders/{id}", get(orders::get_order))
        .route("/openapi.json", get(openapi::serve))
        .with_state(state)
}
