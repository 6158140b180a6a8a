//! Databases on a PostgreSQL server by its admin URL: create, drop, and the quoting of names
//! and values in the statements that cannot take parameters.

use super::postgres::{connect, quote_ident};
use anyhow::{bail, Context, Result};
use sqlx::Connection;

fn check_db_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        bail!("invalid database name {name:?} (1..=63 bytes)");
    }
    Ok(())
}

pub(super) async fn create_database(admin_url: &str, name: &str) -> Result<()> {
    check_db_name(name)?;
    let mut conn = connect(admin_url).await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut conn)
        .await
        .context("looking up pg_database")?;
    if exists.is_none() {
        let sql = format!("CREATE DATABASE {}", quote_ident(name));
        match sqlx::raw_sql(&sql).execute(&mut conn).await {
            Ok(_) => {}
            // created concurrently by someone else: fine
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => return Err(e).with_context(|| format!("CREATE DATABASE {name}")),
        }
    }
    conn.close().await.ok();
    Ok(())
}

pub(super) async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    check_db_name(name)?;
    let mut conn = connect(admin_url).await?;
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
    sqlx::raw_sql(&sql)
        .execute(&mut conn)
        .await
        .with_context(|| format!("DROP DATABASE {name}"))?;
    conn.close().await.ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ident_quoting_and_names() {
        assert_eq!(quote_ident("run_1"), "\"run_1\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert!(check_db_name("").is_err());
        assert!(check_db_name(&"x".repeat(64)).is_err());
        assert!(check_db_name("ordersys_run_20250101").is_ok());
    }
}
