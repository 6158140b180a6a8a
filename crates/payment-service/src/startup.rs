use crate::config::Settings;
use crate::events::Cashier;
use crate::routes;
use platform::app::{Application, Background, Infrastructure, StartupError};
use platform::contract::PAYMENT_SERVICE;
use std::sync::Arc;

pub async fn build(settings: &Settings) -> Result<Application, StartupError> {
    let infra = Infrastructure::connect(
        &settings.common,
        sqlx::migrate!(),
        &[PAYMENT_SERVICE.source],
    )
    .await?;
    let handler = Arc::new(Cashier {
        topology: infra.topology.clone(),
        decline_rate: settings.payment.decline_rate,
    });
    let consumers = infra
        .consumers(PAYMENT_SERVICE.subscriptions, handler)
        .await?;
    let state = routes::AppState {
        admin: infra.admin_state(),
        caps: settings.payment.max_deposited_cents,
    };
    let background = Background {
        consumers,
        ..Background::default()
    };
    Application::new(&infra, routes::router(state), background).await
}
