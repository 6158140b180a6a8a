//! Connection pools and migrations.

use crate::config::DatabaseSettings;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(&settings.url)?;
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .connect_with(options)
        .await
}

/// Applies the shared messaging migrations, then the service's own (`sqlx::migrate!()` in the
/// service crate). Both share the `_sqlx_migrations` table, so each ignores the other's versions.
pub async fn migrate(
    pool: &PgPool,
    mut service: Migrator,
) -> Result<(), sqlx::migrate::MigrateError> {
    let mut messaging = sqlx::migrate!("./migrations");
    messaging.set_ignore_missing(true);
    messaging.run(pool).await?;
    service.set_ignore_missing(true);
    service.run(pool).await
}
