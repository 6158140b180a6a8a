//! Connection pools and migrations, the proof that a connection can write, and what a database
//! error means (`errors`).

pub mod errors;

use crate::config::DatabaseSettings;
use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// What a query function that checks what it read can fail with.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The rows broke an invariant the code relies on (a row changed under a lock, a value no
    /// version of the code writes): never the client's doing.
    #[error("invariant broken: {0}")]
    Invariant(String),
}

/// A service's two pools: HTTP handlers cannot take the connections the workers need.
#[derive(Debug, Clone)]
pub struct Pools {
    pub http: PgPool,
    pub workers: PgPool,
}

/// Connection options with the session limits every connection of a service carries: no
/// statement runs, no lock is waited for and no transaction sits idle longer than configured
/// (an idle transaction of a paused process is ended by the server, releasing its row locks),
/// and the server probes the connection so that a peer that vanished is noticed.
fn session_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, sqlx::Error> {
    let ms = |value: Duration| format!("{}ms", value.as_millis());
    Ok(
        PgConnectOptions::from_str(settings.url.expose_secret())?.options([
            ("statement_timeout", ms(settings.statement_timeout)),
            ("lock_timeout", ms(settings.lock_timeout)),
            (
                "idle_in_transaction_session_timeout",
                ms(settings.idle_in_transaction_timeout),
            ),
            ("tcp_keepalives_idle", "10".to_owned()),
            ("tcp_keepalives_interval", "5".to_owned()),
            ("tcp_keepalives_count", "3".to_owned()),
        ]),
    )
}

pub async fn connect(settings: &DatabaseSettings) -> Result<Pools, sqlx::Error> {
    let options = session_options(settings)?;
    let pool = |size: u32| {
        PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(options.clone())
    };
    let pools = Pools {
        http: pool(settings.http_connections),
        workers: pool(settings.worker_connections),
    };
    // Fail at start, not at the first request, when the database is unreachable.
    sqlx::query("SELECT 1").execute(&pools.workers).await?;
    Ok(pools)
}

/// Writes a row and rolls it back: proof that this connection's database takes writes now, not
/// only reads (a read-only database — `default_transaction_read_only`, a standby — fails with
/// 25006; a role without the right to write, or a database out of resources, fails too). Costs a
/// transaction id and a dead tuple that vacuum removes; nothing stays.
pub async fn prove_writable(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("INSERT INTO readiness_probe (checked_at) VALUES (now())")
        .execute(&mut *tx)
        .await?;
    tx.rollback().await
}

/// Applies the shared messaging migrations, then the service's own (`sqlx::migrate!()` in the
/// service crate). Both share the `_sqlx_migrations` table, so each ignores the other's versions.
/// Runs on a connection of its own, without the session limits: building an index on a large
/// table may take longer than any request should.
pub async fn migrate(
    settings: &DatabaseSettings,
    mut service: Migrator,
) -> Result<(), sqlx::migrate::MigrateError> {
    let mut conn = PgConnectOptions::from_str(settings.url.expose_secret())?
        .connect()
        .await?;
    let mut messaging = sqlx::migrate!("./migrations");
    messaging.set_ignore_missing(true);
    messaging.run(&mut conn).await?;
    service.set_ignore_missing(true);
    service.run(&mut conn).await
}
