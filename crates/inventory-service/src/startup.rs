use crate::config::Settings;
use crate::events::StockKeeper;
use crate::routes;
use platform::app::{Application, Background, Infrastructure, StartupError};
use platform::contract::INVENTORY_SERVICE;
use std::sync::Arc;

pub async fn build(settings: &Settings) -> Result<Application, StartupError> {
    let infra = Infrastructure::connect(
        &settings.common,
        sqlx::migrate!(),
        &[INVENTORY_SERVICE.source],
    )
    .await?;
    let handler = Arc::new(StockKeeper {
        topology: infra.topology.clone(),
    });
    let consumers = infra
        .consumers(INVENTORY_SERVICE.subscriptions, handler)
        .await?;
    let state = routes::AppState {
        admin: infra.admin_state(),
        caps: settings.inventory,
    };
    let background = Background {
        consumers,
        ..Background::default()
    };
    Application::new(&infra, routes::router(state), background).await
}
