//! The order service as a process: the intake's group-commit writers, its consumers of
//! inventory's and payment's outcomes, the re-drive, and the order API, wired by the platform.

use crate::config::Settings;
use crate::events::OrderOutcomes;
use crate::fair_use::{BuyerRateLimit, Limited};
use crate::intake::{IntakeSettings, OrderIntake};
use crate::redrive::Redrive;
use crate::routes;
use platform::app::{Application, Background, Infrastructure, Routes, StartupError};
use platform::contract::ORDER_SERVICE;
use platform::retention::RetentionRule;
use std::sync::Arc;

pub async fn build(settings: &Settings) -> Result<Application, StartupError> {
    let rate_limit = BuyerRateLimit::new(&settings.fair_use).map_err(StartupError::Config)?;
    let infra =
        Infrastructure::connect(&settings.common, sqlx::migrate!(), &[ORDER_SERVICE.source])
            .await?;
    // After `connect`, which installs the metrics recorder.
    Limited::register_all();
    let handler = Arc::new(OrderOutcomes);
    let consumers = infra
        .consumers(ORDER_SERVICE.subscriptions, handler)
        .await?;
    // New orders are written by background writers, on the workers' pool: a flood of reads
    // cannot keep orders from being taken.
    let (intake, writers) = OrderIntake::new(
        infra.pools.workers.clone(),
        infra.topology.clone(),
        infra.outbox_signal.clone(),
        IntakeSettings {
            writers: settings.orders.writers,
            max_batch: settings.orders.max_batch,
            commit_deadline: settings.orders.commit_deadline,
            max_open_orders: settings.fair_use.max_open_orders,
            round_interval: settings.orders.round_interval,
        },
    );
    let redrive = Arc::new(Redrive::new(
        infra.pools.workers.clone(),
        infra.topology.clone(),
        infra.outbox_signal.clone(),
        settings.redrive,
    ));
    let routes = Routes {
        public: routes::router(routes::AppState::new(&infra, settings, intake, rate_limit)),
        saga: Arc::new(routes::Saga),
        admin: Some(routes::admin_routes(infra.admin_state())),
    };
    let background = Background {
        consumers,
        workers: vec![redrive],
        serving: writers,
        retention: vec![RetentionRule {
            table: "idempotency_keys",
            column: "created_at",
            condition: "true",
            max_age: settings.orders.idempotency_key_retention,
        }],
    };
    Application::new(&infra, routes, background).await
}
