//! Accounts and charges in the database. Query functions take a connection; callers own the
//! transaction.

use platform::db::QueryError;
use platform::events::FailureReason;
use serde::Serialize;
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
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

/// What a deposit did.
#[derive(Debug, Clone)]
pub enum Deposited {
    Done(Account),
    NotFound,
    /// The account would have been paid more than `max_cents` in all.
    OverCap,
}

/// Adds money to an account, up to `max_cents` deposited in all (so no sum can overflow:
/// the balance never exceeds what was deposited).
pub async fn deposit(
    conn: &mut PgConnection,
    user_id: i64,
    cents: i64,
    max_cents: i64,
) -> Result<Deposited, sqlx::Error> {
    let updated: Option<Account> = sqlx::query_as(
        "UPDATE accounts SET balance_cents = balance_cents + $2, deposited_cents = deposited_cents + $2
         WHERE user_id = $1 AND deposited_cents <= $3 - $2
         RETURNING user_id, balance_cents, deposited_cents",
    )
    .bind(user_id)
    .bind(cents)
    .bind(max_cents)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match updated {
        Some(account) => Deposited::Done(account),
        None if find_account(conn, user_id).await?.is_some() => Deposited::OverCap,
        None => Deposited::NotFound,
    })
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

/// One order's charge to make: who pays how much, and whether the card network declined it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeRequest {
    pub order_id: Uuid,
    pub user_id: i64,
    pub amount_cents: i64,
    pub declined: bool,
}

/// Decides, in arrival order, which charges the balances cover; `balances` is left holding the
/// balances after the batch (what one conditional debit per charge, in order, would do).
pub fn settle(requests: &[ChargeRequest], balances: &mut HashMap<i64, i64>) -> Vec<ChargeResult> {
    requests
        .iter()
        .map(|request| {
            if request.declined {
                return ChargeResult::Failed(FailureReason::PaymentDeclined);
            }
            match balances.get_mut(&request.user_id) {
                None => ChargeResult::Failed(FailureReason::UnknownAccount),
                Some(balance) if *balance >= request.amount_cents => {
                    *balance -= request.amount_cents;
                    ChargeResult::Succeeded
                }
                Some(_) => ChargeResult::Failed(FailureReason::InsufficientFunds),
            }
        })
        .collect()
}

/// A charge as recorded: the answer for its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub user_id: i64,
    pub amount_cents: i64,
    pub result: ChargeResult,
}

/// The charges already recorded for these orders.
async fn earlier_charges(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
) -> Result<HashMap<Uuid, Charge>, QueryError> {
    let rows: Vec<(Uuid, i64, i64, Option<String>)> = sqlx::query_as(
        "SELECT order_id, user_id, amount_cents, failure_reason FROM charges WHERE order_id = ANY($1)",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await?;
    let mut charges = HashMap::with_capacity(rows.len());
    for (order_id, user_id, amount_cents, reason) in rows {
        let result = match reason {
            None => ChargeResult::Succeeded,
            Some(reason) => {
                ChargeResult::Failed(FailureReason::parse(&reason).ok_or_else(|| {
                    QueryError::Invariant(format!("unknown charge failure reason {reason:?}"))
                })?)
            }
        };
        charges.insert(
            order_id,
            Charge {
                user_id,
                amount_cents,
                result,
            },
        );
    }
    Ok(charges)
}

/// Charges a batch of orders: locks the payers' accounts (in id order, so concurrent batches
/// cannot deadlock), answers an order charged before with its recorded charge, decides every new
/// charge, debits each account once with a checked conditional update (never below zero), and
/// records one charge row per order. The primary key on `order_id` makes a second charge for an
/// order impossible; a row recorded concurrently (only possible without an account row to lock)
/// rolls the batch back, and the retry answers from the record. Returns one charge per request.
pub async fn charge(
    conn: &mut PgConnection,
    requests: &[ChargeRequest],
) -> Result<Vec<Charge>, QueryError> {
    let mut users: Vec<i64> = requests
        .iter()
        .filter(|r| !r.declined)
        .map(|r| r.user_id)
        .collect();
    users.sort_unstable();
    users.dedup();
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT user_id, balance_cents FROM accounts WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE")
            .bind(&users)
            .fetch_all(&mut *conn)
            .await?;
    let order_ids: Vec<Uuid> = requests.iter().map(|r| r.order_id).collect();
    let mut answered = earlier_charges(conn, &order_ids).await?;

    let mut seen = HashSet::new();
    let new_requests: Vec<ChargeRequest> = requests
        .iter()
        .filter(|r| !answered.contains_key(&r.order_id) && seen.insert(r.order_id))
        .copied()
        .collect();
    let before: HashMap<i64, i64> = rows.iter().copied().collect();
    let mut balances: HashMap<i64, i64> = rows.into_iter().collect();
    let results = settle(&new_requests, &mut balances);

    let (mut debited_users, mut debits) = (Vec::new(), Vec::new());
    for (user, balance) in &balances {
        let debit = before[user] - balance;
        if debit > 0 {
            debited_users.push(*user);
            debits.push(debit);
        }
    }
    if !debited_users.is_empty() {
        let updated = sqlx::query(
            "UPDATE accounts SET balance_cents = accounts.balance_cents - d.cents
             FROM unnest($1::bigint[], $2::bigint[]) AS d(user_id, cents)
             WHERE accounts.user_id = d.user_id AND accounts.balance_cents >= d.cents",
        )
        .bind(&debited_users)
        .bind(&debits)
        .execute(&mut *conn)
        .await?;
        if updated.rows_affected() != debited_users.len() as u64 {
            // Impossible while the rows are locked; refuse rather than record charges.
            return Err(QueryError::Invariant(
                "balance changed under a row lock".into(),
            ));
        }
    }

    if !new_requests.is_empty() {
        let (statuses, reasons): (Vec<&str>, Vec<Option<&str>>) = results
            .iter()
            .map(|result| match result {
                ChargeResult::Succeeded => ("SUCCEEDED", None),
                ChargeResult::Failed(reason) => ("FAILED", Some(reason.as_str())),
            })
            .unzip();
        let inserted = sqlx::query(
            "INSERT INTO charges (order_id, user_id, amount_cents, status, failure_reason)
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::text[])
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(new_requests.iter().map(|r| r.order_id).collect::<Vec<_>>())
        .bind(new_requests.iter().map(|r| r.user_id).collect::<Vec<_>>())
        .bind(
            new_requests
                .iter()
                .map(|r| r.amount_cents)
                .collect::<Vec<_>>(),
        )
        .bind(&statuses)
        .bind(&reasons)
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() != new_requests.len() as u64 {
            return Err(QueryError::Invariant(
                "a charge for one of these orders was recorded concurrently".into(),
            ));
        }
    }
    for (request, result) in new_requests.iter().zip(results) {
        answered.insert(
            request.order_id,
            Charge {
                user_id: request.user_id,
                amount_cents: request.amount_cents,
                result,
            },
        );
    }
    requests
        .iter()
        .map(|r| {
            answered
                .get(&r.order_id)
                .copied()
                .ok_or_else(|| QueryError::Invariant(format!("no charge for order {}", r.order_id)))
        })
        .collect()
}

/// Payment's charge of one order, for its story (`GET /admin/sagas/{order_id}`); none when the
/// order was not charged yet.
pub async fn saga_records(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<platform::saga::Records, sqlx::Error> {
    let charge = sqlx::query_as(
        "SELECT amount_cents, status, failure_reason, created_at FROM charges WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(platform::saga::Records::Payment { charge })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(user_id: i64, amount_cents: i64, declined: bool) -> ChargeRequest {
        ChargeRequest {
            order_id: Uuid::now_v7(),
            user_id,
            amount_cents,
            declined,
        }
    }

    #[test]
    fn charges_are_settled_in_order_while_money_lasts() {
        let mut balances = HashMap::from([(1, 250)]);
        let requests = [
            request(1, 100, false),
            request(1, 100, true),
            request(1, 100, false),
            request(1, 100, false),
            request(2, 1, false),
        ];
        assert_eq!(
            settle(&requests, &mut balances),
            vec![
                ChargeResult::Succeeded,
                ChargeResult::Failed(FailureReason::PaymentDeclined),
                ChargeResult::Succeeded,
                ChargeResult::Failed(FailureReason::InsufficientFunds),
                ChargeResult::Failed(FailureReason::UnknownAccount),
            ]
        );
        assert_eq!(balances[&1], 50);
    }

    proptest::proptest! {
        /// Money is conserved and no balance goes negative.
        #[test]
        fn settlement_conserves_money(start in 0i64..1_000, amounts in proptest::collection::vec((1i64..300, proptest::bool::ANY), 0..30)) {
            let mut balances = HashMap::from([(1, start)]);
            let requests: Vec<ChargeRequest> = amounts.iter().map(|(a, d)| request(1, *a, *d)).collect();
            let results = settle(&requests, &mut balances);
            let charged: i64 = requests.iter().zip(&results)
                .filter(|(_, r)| **r == ChargeResult::Succeeded).map(|(q, _)| q.amount_cents).sum();
            proptest::prop_assert!(balances[&1] >= 0);
            proptest::prop_assert_eq!(balances[&1] + charged, start);
        }
    }
}
