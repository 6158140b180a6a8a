use crate::config::Settings;
use crate::events::{subscriptions, OrderOutcomes};
use crate::routes;
use platform::app::{Application, Infrastructure, StartupError};
use std::sync::Arc;

pub async fn build(settings: &Settings) -> Result<Application, StartupError> {
    let infra = Infrastructure::connect(&settings.common, sqlx::migrate!()).await?;
    let handler = Arc::new(OrderOutcomes);
    let consumers = infra.consumers(&subscriptions(), handler).await?;
    let routes = routes::router(routes::AppState::new(&infra, settings));
    Application::new(&infra, routes, consumers).await
}
