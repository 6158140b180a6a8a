//! The inventory service as a process: its consumers (the contract's subscriptions, one handler)
//! and its admin routes, wired by the platform.

use crate::config::Settings;
use crate::events::StockKeeper;
use crate::routes;
use platform::app::{Application, Routes, StartupError};
use platform::contract::INVENTORY_SERVICE;
use std::sync::Arc;

pub async fn build(settings: &Settings) -> Result<Application, StartupError> {
    Application::consuming(
        &settings.common,
        sqlx::migrate!(),
        &INVENTORY_SERVICE,
        |infra| StockKeeper {
            topology: infra.topology.clone(),
        },
        |admin| Routes {
            public: routes::router(routes::AppState {
                admin,
                caps: settings.inventory,
            }),
            saga: Arc::new(routes::Saga),
            admin: None,
        },
    )
    .await
}
