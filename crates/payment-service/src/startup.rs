//! The payment service as a process: its consumers (the contract's subscriptions, one handler)
//! and its admin routes, wired by the platform.

use crate::config::Settings;
use crate::events::Cashier;
use crate::routes;
use platform::app::{Application, Routes, StartupError};
use platform::contract::PAYMENT_SERVICE;
use std::sync::Arc;

pub async fn build(settings: &Settings) -> Result<Application, StartupError> {
    Application::consuming(
        &settings.common,
        sqlx::migrate!(),
        &PAYMENT_SERVICE,
        |infra| Cashier {
            topology: infra.topology.clone(),
            decline_rate: settings.payment.decline_rate,
        },
        |admin| Routes {
            public: routes::router(routes::AppState {
                admin,
                caps: settings.payment.max_deposited_cents,
            }),
            saga: Arc::new(routes::Saga),
            admin: None,
        },
    )
    .await
}
