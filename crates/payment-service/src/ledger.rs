//! Accounts and charges in the database. Query functions take a connection; callers own the
//! transaction.

use platform::events::FailureReason;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Account {
    pub user_id: i64,
    pub balance_cents: i64,
    pub deposited_cents: i64,
}

pub async fn open_account(
    conn: &mut PgConnection,
    user_id: i64,
    balance_cents: i64,
) -> Result<Account, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO accounts (user_id, balance_cents, deposited_cents) VALUES ($1, $2, $2)
         RETURNING user_id, balance_cents, deposited_cents",
    )
    .bind(user_id)
    .bind(balance_cents)
    .fetch_one(conn)
    .await
}

pub async fn deposit(
    conn: &mut PgConnection,
    user_id: i64,
    cents: i64,
) -> Result<Option<Account>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE accounts SET balance_cents = balance_cents + $2, deposited_cents = deposited_cents + $2
         WHERE user_id = $1 RETURNING user_id, balance_cents, deposited_cents",
    )
    .bind(user_id)
    .bind(cents)
    .fetch_optional(conn)
    .await
}

pub async fn find_account(
    conn: &mut PgConnection,
    user_id: i64,
) -> Result<Option<Account>, sqlx::Error> {
    sqlx::query_as(
        "SELECT user_id, balance_cents, deposited_cents FROM accounts WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeResult {
    Succeeded,
    Failed(FailureReason),
}

/// Debits the user's balance if it covers the amount (a conditional UPDATE: never negative,
/// no read-then-write race).
pub async fn debit(
    conn: &mut PgConnection,
    user_id: i64,
    amount_cents: i64,
) -> Result<ChargeResult, sqlx::Error> {
    let debited = sqlx::query("UPDATE accounts SET balance_cents = balance_cents - $2 WHERE user_id = $1 AND balance_cents >= $2")
        .bind(user_id)
        .bind(amount_cents)
        .execute(&mut *conn)
        .await?;
    if debited.rows_affected() == 1 {
        return Ok(ChargeResult::Succeeded);
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE user_id = $1)")
            .bind(user_id)
            .fetch_one(&mut *conn)
            .await?;
    Ok(ChargeResult::Failed(if exists {
        FailureReason::InsufficientFunds
    } else {
        FailureReason::UnknownAccount
    }))
}

/// Records the one charge attempt an order may have. The primary key on `order_id` rejects a
/// second one (the transaction then rolls back, debit included): an order is never paid twice.
pub async fn record_charge(
    conn: &mut PgConnection,
    order_id: Uuid,
    user_id: i64,
    amount_cents: i64,
    result: ChargeResult,
) -> Result<(), sqlx::Error> {
    let (status, reason) = match result {
        ChargeResult::Succeeded => ("SUCCEEDED", None),
        ChargeResult::Failed(reason) => ("FAILED", Some(reason.as_str())),
    };
    sqlx::query(
        "INSERT INTO charges (order_id, user_id, amount_cents, status, failure_reason) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(order_id)
    .bind(user_id)
    .bind(amount_cents)
    .bind(status)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}
