use crate::config::Settings;
use crate::events::{subscriptions, OrderOutcomes};
use crate::fair_use::BuyerRateLimit;
use crate::intake::{IntakeSettings, OrderIntake};
use crate::redrive::Redrive;
use crate::routes;
use platform::app::{Application, Background, Infrastructure, StartupError};
use platform::retention::RetentionRule;
use std::sync::Arc;
use std::time::Duration;

pub async fn build(settings: &Settings) -> Result<Application, StartupError> {
    let rate_limit = BuyerRateLimit::new(&settings.fair_use).map_err(StartupError::Config)?;
    let infra = Infrastructure::connect(
        &settings.common,
        sqlx::migrate!(),
        &crate::events::PUBLISHES,
    )
    .await?;
    let handler = Arc::new(OrderOutcomes);
    let consumers = infra.consumers(&subscriptions(), handler).await?;
    // New orders are written by background writers, on the workers' pool: a flood of reads
    // cannot keep orders from being taken.
    let (intake, writers) = OrderIntake::new(
        infra.pools.workers.clone(),
        infra.topology.clone(),
        infra.outbox_signal.clone(),
        IntakeSettings {
            writers: settings.orders.writers,
            max_batch: settings.orders.max_batch,
            commit_deadline: Duration::from_millis(settings.orders.commit_deadline_ms),
            max_open_orders: settings.fair_use.max_open_orders,
            round_interval: Duration::from_millis(settings.orders.round_interval_ms),
        },
    );
    let redrive = Arc::new(Redrive::new(
        infra.pools.workers.clone(),
        infra.topology.clone(),
        infra.outbox_signal.clone(),
        settings.redrive,
    ));
    let routes = routes::router(routes::AppState::new(&infra, settings, intake, rate_limit));
    let background = Background {
        consumers,
        workers: vec![redrive],
        serving: writers,
        retention: vec![RetentionRule {
            table: "idempotency_keys",
            column: "created_at",
            condition: "true",
            max_age: Duration::from_secs(settings.orders.idempotency_key_retention_secs),
        }],
    };
    Application::new(&infra, routes, background).await
}
