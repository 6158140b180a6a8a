use crate::config::Settings;
use crate::events::{subscriptions, Cashier};
use crate::routes::{self, AppState};
use platform::app::{Application, Infrastructure, StartupError};
use platform::http::AdminToken;
use std::sync::Arc;

pub async fn build(settings: &Settings) -> Result<Application, StartupError> {
    let infra = Infrastructure::connect(&settings.common, sqlx::migrate!()).await?;
    let handler = Arc::new(Cashier {
        topology: infra.topology.clone(),
        decline_rate: settings.payment.decline_rate,
    });
    let mut consumers = Vec::new();
    for subscription in subscriptions() {
        consumers.push(infra.consumer(&subscription, handler.clone()).await?);
    }
    let state = AppState {
        pool: infra.pool.clone(),
        admin: AdminToken(Arc::from(settings.common.auth.admin_token.as_str())),
    };
    Application::new(&infra, routes::router(state), consumers).await
}
