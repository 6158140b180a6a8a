//! Least privilege on PostgreSQL: each service logs in as a role of its own that owns its own
//! database (and so whatever its migrations create there) and cannot connect to the others; the
//! audit logs in as a role that can read the three databases and change nothing.

use super::postgres::connect;
use super::postgres::{quote_ident, quote_literal};
use anyhow::{bail, Context, Result};
use sqlx::PgConnection;

/// Creates (or updates) login role `role` with `password` and no other attribute, and makes it
/// the owner of `database` (created if missing), which no other non-superuser role may connect
/// to. A database that exists with another owner was made before the services had roles; it is
/// refused rather than half-migrated (recreate it: `loadtest up --fresh`).
pub(super) async fn provision_owner(
    admin_url: &str,
    database: &str,
    role: &str,
    password: &str,
) -> Result<()> {
    let mut conn = connect(admin_url).await?;
    login_role(&mut conn, role, password).await?;
    let owner: Option<String> = sqlx::query_scalar(
        "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
    )
    .bind(database)
    .fetch_optional(&mut conn)
    .await
    .context("looking up pg_database")?;
    match owner {
        None => {
            let sql = format!(
                "CREATE DATABASE {} OWNER {}",
                quote_ident(database),
                quote_ident(role)
            );
            sqlx::raw_sql(&sql)
                .execute(&mut conn)
                .await
                .with_context(|| format!("CREATE DATABASE {database}"))?;
        }
        Some(owner) if owner == role => {}
        Some(owner) => bail!(
            "database {database} is owned by {owner}, not by the service's role {role} (it was \
             made before each service had its own role); recreate it: `loadtest up --fresh`"
        ),
    }
    let sql = format!(
        "REVOKE ALL ON DATABASE {} FROM PUBLIC",
        quote_ident(database)
    );
    sqlx::raw_sql(&sql)
        .execute(&mut conn)
        .await
        .with_context(|| format!("revoking PUBLIC's rights on {database}"))?;
    Ok(())
}

/// Creates (or updates) login role `role` that reads every table of `databases` (PostgreSQL's
/// `pg_read_all_data`) and may write none.
pub(super) async fn provision_reader(
    admin_url: &str,
    role: &str,
    password: &str,
    databases: &[&str],
) -> Result<()> {
    let mut conn = connect(admin_url).await?;
    login_role(&mut conn, role, password).await?;
    let mut sql = format!("GRANT pg_read_all_data TO {};", quote_ident(role));
    for database in databases {
        sql.push_str(&format!(
            "GRANT CONNECT ON DATABASE {} TO {};",
            quote_ident(database),
            quote_ident(role)
        ));
    }
    sqlx::raw_sql(&sql)
        .execute(&mut conn)
        .await
        .with_context(|| format!("granting {role} read access"))?;
    Ok(())
}

async fn login_role(conn: &mut PgConnection, role: &str, password: &str) -> Result<()> {
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_optional(&mut *conn)
        .await
        .context("looking up pg_roles")?;
    let verb = if exists.is_some() { "ALTER" } else { "CREATE" };
    let sql = format!(
        "{verb} ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS \
         PASSWORD {}",
        quote_ident(role),
        quote_literal(password)
    );
    match sqlx::raw_sql(&sql).execute(&mut *conn).await {
        Ok(_) => Ok(()),
        // Created by a concurrent provisioning between our lookup and our create: set ours.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42710") => {
            let sql = format!(
                "ALTER ROLE {} WITH PASSWORD {}",
                quote_ident(role),
                quote_literal(password)
            );
            sqlx::raw_sql(&sql)
                .execute(&mut *conn)
                .await
                .with_context(|| format!("ALTER ROLE {role}"))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("{verb} ROLE {role}")),
    }
}
