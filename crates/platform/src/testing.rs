//! Support for integration tests that run against real PostgreSQL and NATS: where they are,
//! a fresh database per test, a unique subject/stream prefix per test.

use sqlx::{Connection, PgConnection};
use std::future::Future;
use std::time::Duration;

/// Admin URL of the PostgreSQL the tests use: `ORDERSYS_DATABASE_URL`, or the project's private
/// instance that `make test` / `loadtest infra-up` start.
pub fn admin_database_url() -> String {
    std::env::var("ORDERSYS_DATABASE_URL").unwrap_or_else(|_| crate::dev::admin_database_url())
}

pub fn nats_url() -> String {
    std::env::var("ORDERSYS_NATS_URL").unwrap_or_else(|_| crate::dev::nats_url())
}

/// Replaces the database name (the URL's path) of a PostgreSQL URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{database}?{q}"),
        None => format!("{root}/{database}"),
    }
}

/// A short unique token for names (databases, stream prefixes).
pub fn unique_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database(label: &str) -> String {
    let name = format!("{label}_{}", unique_token());
    let admin = admin_database_url();
    let mut conn = PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {admin} ({e}); run `make test` or set ORDERSYS_DATABASE_URL"));
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .expect("create test database");
    with_database(&admin, &name)
}

/// Polls `check` until it returns `Some` or the deadline passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:1/postgres", "x"),
            "postgres://u@h:1/x"
        );
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
        assert_eq!(
            with_database("postgres://u@h:1/a?sslmode=disable", "x"),
            "postgres://u@h:1/x?sslmode=disable"
        );
    }
}
