//! Idempotency-Keys in the database, a whole group-commit batch per statement: the keys' locks,
//! and what each key was first used for. A key's row is written with its order
//! (`orders::insert_orders`), in the same transaction.
//!
//! A key is locked with a transaction-scoped advisory lock on (user, key) before its row is
//! read: a second request with the same key, in another transaction (another writer, another
//! instance), finds the lock taken and is answered `409` instead of writing a second order; the
//! lock goes with the transaction that wrote (or did not write) the key's order. Within one
//! transaction the lock is re-entrant, so the intake refuses a key's second request of the same
//! batch in code ([`later_duplicates`]).

use crate::orders::Order;
use sqlx::PgConnection;
use std::collections::HashMap;

/// One request's key: whose, and the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyOf<'a> {
    pub user_id: i64,
    pub key: &'a str,
}

/// Tries each key's lock, in the order given, and — in the same statement, to spare the batch
/// a round trip — counts the open orders of `buyers` (as `orders::open_orders_by_buyer` does;
/// the count needs no lock). Returns whether each lock was taken, and the open orders by
/// buyer (buyers without any left out). The lock is `hashtextextended('<user>:<key>', 0)`: two
/// keys that share a hash share a lock, which makes a rare `409`, never a wrong order.
pub async fn try_lock_counting_open_orders(
    conn: &mut PgConnection,
    keys: &[KeyOf<'_>],
    buyers: &[i64],
) -> Result<(Vec<bool>, HashMap<i64, i64>), sqlx::Error> {
    let (users, texts) = columns(keys);
    let mut distinct = buyers.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let (locked, open_buyers, open_counts): (Vec<bool>, Vec<i64>, Vec<i64>) = sqlx::query_as(
        "WITH open AS (
             SELECT user_id, count(*) AS n FROM orders
             WHERE user_id = ANY($3) AND status = 'PENDING'
             GROUP BY user_id
         )
         SELECT ARRAY(SELECT pg_try_advisory_xact_lock(hashtextextended(k.user_id::text || ':' || k.key, 0))
                      FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS k(user_id, key, n)
                      ORDER BY k.n),
                ARRAY(SELECT user_id FROM open ORDER BY user_id),
                ARRAY(SELECT n FROM open ORDER BY user_id)",
    )
    // Planned for each call, like `orders::open_orders_by_buyer` (a plan cached while the
    // table was small could scan the table).
    .persistent(false)
    .bind(&users)
    .bind(&texts)
    .bind(&distinct)
    .fetch_one(conn)
    .await?;
    if locked.len() != keys.len() || open_buyers.len() != open_counts.len() {
        return Err(sqlx::Error::Protocol(
            "the key locks and open-order counts came back short".into(),
        ));
    }
    Ok((locked, open_buyers.into_iter().zip(open_counts).collect()))
}

/// What a key was first used for: the body it came with, and the order it made (as it is now).
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub product_id: i64,
    pub quantity: i32,
    pub order: Order,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    n: i64,
    key_product_id: i64,
    key_quantity: i32,
    #[sqlx(flatten)]
    order: Order,
}

/// Each key's record, if it was used before (one statement). Read after the keys are locked,
/// so a record committed by the lock's last holder is seen.
pub async fn find(
    conn: &mut PgConnection,
    keys: &[KeyOf<'_>],
) -> Result<Vec<Option<KeyRecord>>, sqlx::Error> {
    let (users, texts) = columns(keys);
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT k.n, i.product_id AS key_product_id, i.quantity AS key_quantity,
                o.id, o.user_id, o.product_id, o.quantity, o.status, o.failure_reason,
                o.amount_cents, o.created_at, o.updated_at, o.finalized_at
         FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS k(user_id, key, n)
         JOIN idempotency_keys i ON i.user_id = k.user_id AND i.key = k.key
         JOIN orders o ON o.id = i.order_id",
    )
    .bind(&users)
    .bind(&texts)
    .fetch_all(conn)
    .await?;
    let mut found = vec![None; keys.len()];
    for row in rows {
        if let Some(slot) = usize::try_from(row.n - 1)
            .ok()
            .and_then(|i| found.get_mut(i))
        {
            *slot = Some(KeyRecord {
                product_id: row.key_product_id,
                quantity: row.key_quantity,
                order: row.order,
            });
        }
    }
    Ok(found)
}

fn columns<'a>(keys: &[KeyOf<'a>]) -> (Vec<i64>, Vec<&'a str>) {
    keys.iter().map(|k| (k.user_id, k.key)).unzip()
}

/// For each request (its key, if any): whether an earlier request of the same batch has the
/// same key. The advisory lock cannot tell them apart (it is re-entrant within the transaction).
pub fn later_duplicates(keys: &[Option<KeyOf<'_>>]) -> Vec<bool> {
    let mut seen = std::collections::HashSet::new();
    keys.iter()
        .map(|key| key.is_some_and(|key| !seen.insert(key)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_second_request_in_one_batch_is_a_duplicate_and_other_keys_are_not() {
        let key = |user_id, key| Some(KeyOf { user_id, key });
        assert_eq!(
            later_duplicates(&[
                key(7, "a"),
                None,
                key(7, "a"),
                key(8, "a"),
                None,
                key(7, "b"),
                key(7, "a"),
            ]),
            vec![false, false, true, false, false, false, true]
        );
        assert!(later_duplicates(&[]).is_empty());
    }
}
