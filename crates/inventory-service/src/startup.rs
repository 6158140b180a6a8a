//! The inventory service as a process: its consumers (the contract's subscriptions, one handler)
//! and its admin routes, wired by the platform.

use crate::config::Settings;
use crate::events::StockKeeper;
use crate::routes;
use platform::app::{Application, StartupError};
use platform::contract::INVENTORY_SERVICE;

pub async fn build(settings: &Settings) -> Result<Application, StartupError> {
    Application::consuming(
        &settings.common,
        sqlx::migrate!(),
        &INVENTORY_SERVICE,
        |infra| StockKeeper {
            topology: infra.topology.clone(),
        },
        |admin| {
            routes::router(routes::AppState {
                admin,
                caps: settings.inventory,
            })
        },
    )
    .await
}
