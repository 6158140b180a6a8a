use crate::config::Settings;
use crate::events::{subscriptions, StockKeeper};
use crate::routes;
use platform::app::{Application, Infrastructure, StartupError};
use std::sync::Arc;

pub async fn build(settings: &Settings) -> Result<Application, StartupError> {
    let infra = Infrastructure::connect(&settings.common, sqlx::migrate!()).await?;
    let handler = Arc::new(StockKeeper {
        topology: infra.topology.clone(),
    });
    let consumers = infra.consumers(&subscriptions(), handler).await?;
    Application::new(&infra, routes::router(infra.admin_state()), consumers).await
}
