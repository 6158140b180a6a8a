//! Orders in the database. Query functions take a connection; callers own the transaction.

use crate::domain::{OrderStatus, Outcome};
use chrono::{DateTime, Utc};
use platform::events::{Event, OrderCreated};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub status: OrderStatus,
    /// Set when the status is FAILED: OUT_OF_STOCK, UNKNOWN_PRODUCT, AMOUNT_TOO_LARGE,
    /// PAYMENT_DECLINED, INSUFFICIENT_FUNDS or UNKNOWN_ACCOUNT.
    pub failure_reason: Option<String>,
    /// Known once payment answered: the amount charged, or the one it failed to charge.
    pub amount_cents: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, user_id, product_id, quantity, status, failure_reason, amount_cents, created_at, updated_at, finalized_at";

/// An order to create: who buys what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewOrder {
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i32,
}

/// The `OrderCreated` event that announces order `id`. Built here only: the intake writes it
/// with the order, the re-drive writes it again for an order that waits too long.
pub fn order_created(id: Uuid, order: NewOrder) -> Event {
    Event::OrderCreated(OrderCreated {
        order_id: id,
        user_id: order.user_id,
        product_id: order.product_id,
        quantity: order.quantity,
    })
}

/// An order to write: its id (chosen before the insert, so its request knows it whatever
/// becomes of the transaction), what it buys, and the Idempotency-Key it was placed with.
#[derive(Debug, Clone, Copy)]
pub struct OrderToWrite<'a> {
    pub id: Uuid,
    pub order: NewOrder,
    pub key: Option<&'a str>,
    /// The context of the request that placed it: a re-drive's span links to it.
    pub traceparent: Option<&'a str>,
}

/// What [`insert_orders`] wrote: the orders, in the order given, and the id of the writing
/// transaction (`pg_current_xact_id()`), which tells later whether it committed.
#[derive(Debug)]
pub struct Written {
    pub orders: Vec<Order>,
    pub xid: i64,
}

#[derive(sqlx::FromRow)]
struct WrittenRow {
    #[sqlx(flatten)]
    order: Order,
    xid: i64,
}

/// Inserts orders and the Idempotency-Keys of those placed with one, with one statement; returns
/// the orders in the order given and the transaction's id (read in the same statement, so it
/// costs no round trip). `orders` must not be empty.
pub async fn insert_orders(
    conn: &mut PgConnection,
    orders: &[OrderToWrite<'_>],
) -> Result<Written, sqlx::Error> {
    let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
    let (keyed_ids, keys): (Vec<Uuid>, Vec<&str>) = orders
        .iter()
        .filter_map(|o| o.key.map(|key| (o.id, key)))
        .unzip();
    let rows: Vec<WrittenRow> = sqlx::query_as(&format!(
        "WITH new AS (
             INSERT INTO orders (id, user_id, product_id, quantity, status, traceparent)
             SELECT o.id, o.user_id, o.product_id, o.quantity, 'PENDING', o.traceparent
             FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::int[], $7::text[])
                  AS o(id, user_id, product_id, quantity, traceparent)
             RETURNING {COLUMNS}
         ), keys AS (
             INSERT INTO idempotency_keys (user_id, key, product_id, quantity, order_id)
             SELECT new.user_id, k.key, new.product_id, new.quantity, new.id
             FROM unnest($5::uuid[], $6::text[]) AS k(id, key) JOIN new ON new.id = k.id
         )
         SELECT new.*, pg_current_xact_id()::text::bigint AS xid FROM new"
    ))
    .bind(&ids)
    .bind(orders.iter().map(|o| o.order.user_id).collect::<Vec<_>>())
    .bind(
        orders
            .iter()
            .map(|o| o.order.product_id)
            .collect::<Vec<_>>(),
    )
    .bind(orders.iter().map(|o| o.order.quantity).collect::<Vec<_>>())
    .bind(&keyed_ids)
    .bind(&keys)
    .bind(orders.iter().map(|o| o.traceparent).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    let xid = rows
        .first()
        .map(|r| r.xid)
        .ok_or(sqlx::Error::RowNotFound)?;
    // RETURNING promises no order; put the rows back in the order of the input.
    let mut by_id: std::collections::HashMap<Uuid, Order> =
        rows.into_iter().map(|r| (r.order.id, r.order)).collect();
    let orders = ids
        .iter()
        .map(|id| by_id.remove(id).ok_or(sqlx::Error::RowNotFound))
        .collect::<Result<_, _>>()?;
    Ok(Written { orders, xid })
}

/// How many orders that are not final (`PENDING`) each of `buyers` has; buyers
/// without any are left out. Reads the partial index `orders_unfinished_by_user`: a few entries
/// per buyer (at most the open-orders cap and the orders written past it concurrently).
pub async fn open_orders_by_buyer(
    conn: &mut PgConnection,
    buyers: &[i64],
) -> Result<std::collections::HashMap<i64, i64>, sqlx::Error> {
    let mut distinct = buyers.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT user_id, count(*) FROM orders
         WHERE user_id = ANY($1) AND status = 'PENDING'
         GROUP BY user_id",
    )
    // Planned for each call: a plan cached while the table was small could scan the table.
    .persistent(false)
    .bind(&distinct)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The order, if it exists and belongs to `user_id` (another user's order is not found).
pub async fn find_order(
    conn: &mut PgConnection,
    id: Uuid,
    user_id: i64,
) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM orders WHERE id = $1 AND user_id = $2"
    ))
    .bind(id)
    .bind(user_id)
    .fetch_optional(conn)
    .await
}

/// Applies outcomes to their orders where each order's current status allows it, with one
/// statement. The check and the write are one statement, so concurrent consumers cannot move an
/// order backwards. Returns the orders that changed, with their new status.
///
/// Two consumers (inventory and payment outcomes) update overlapping orders at once. The rows
/// are visited in the order of the arrays (a nested loop over the primary key), so sending them
/// sorted by id makes both take their row locks in one global order and not deadlock (each
/// deadlock costs `deadlock_timeout` and a retry; docs/performance.md has the measurement). A
/// different plan could only bring a retry back, never a wrong result.
pub async fn apply_outcomes(
    conn: &mut PgConnection,
    outcomes: &[(Uuid, Outcome)],
) -> Result<Vec<(Uuid, OrderStatus)>, sqlx::Error> {
    let mut outcomes = outcomes.to_vec();
    outcomes.sort_by_key(|(id, _)| *id);
    let ids: Vec<Uuid> = outcomes.iter().map(|(id, _)| *id).collect();
    let targets: Vec<&str> = outcomes.iter().map(|(_, o)| o.target().as_str()).collect();
    let finals: Vec<bool> = outcomes
        .iter()
        .map(|(_, o)| o.target().is_final())
        .collect();
    let reasons: Vec<Option<&str>> = outcomes
        .iter()
        .map(|(_, o)| o.failure_reason().map(|r| r.as_str()))
        .collect();
    let amounts: Vec<Option<i64>> = outcomes.iter().map(|(_, o)| o.amount_cents()).collect();
    // The statuses each outcome may move an order from come from the domain, not from SQL.
    let allowed: Vec<String> = outcomes
        .iter()
        .map(|(_, o)| {
            o.allowed_from()
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    sqlx::query_as(
        "UPDATE orders
         SET status = d.target, failure_reason = d.reason, amount_cents = COALESCE(d.amount, orders.amount_cents),
             updated_at = now(), finalized_at = CASE WHEN d.is_final THEN now() ELSE NULL END
         FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::text[], $5::bigint[], $6::text[])
              AS d(id, target, is_final, reason, amount, allowed)
         WHERE orders.id = d.id AND orders.status = ANY(string_to_array(d.allowed, ','))
         RETURNING orders.id, orders.status",
    )
    // Planned for each call, not once per connection: a plan cached while the table was small
    // (a sequential scan) stays until autovacuum analyzes the table (docs/performance.md).
    .persistent(false)
    .bind(&ids)
    .bind(&targets)
    .bind(&finals)
    .bind(&reasons)
    .bind(&amounts)
    .bind(&allowed)
    .fetch_all(conn)
    .await
}

/// Locks these orders' rows in id order (the order every batch update takes them in).
pub async fn lock_in_id_order(conn: &mut PgConnection, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM orders WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Notes that inventory confirmed these orders' stock went back (their payment failed), which
/// closes their saga. Returns the orders that exist.
pub async fn mark_stock_released(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    sqlx::query_scalar(
        "UPDATE orders SET stock_released_at = COALESCE(stock_released_at, now())
         WHERE id = ANY($1) RETURNING id",
    )
    .bind(&ids)
    .fetch_all(conn)
    .await
}

/// An open order to ask about again.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Stalled {
    pub id: Uuid,
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    /// The context of the request that placed it (`None` if it had none).
    #[sqlx(default)]
    pub traceparent: Option<String>,
}

/// Claims up to `limit` open orders that have waited longer than their pause: `after` since the
/// last change or re-drive, doubled with each re-drive up to `max_pause`. Claimed rows stay
/// locked (`SKIP LOCKED`, so several instances share the work) and are marked re-driven.
///
/// An order whose event still waits in the outbox (its `OrderCreated`, or an earlier re-drive's
/// copy) is not claimed: a copy would only queue behind it, and a broker outage would end in a
/// storm of copies. Nor is an order younger than the oldest waiting event: the relay publishes
/// in outbox order, so while that event waits, no copy would get past it either; the order is
/// claimed once the backlog has drained past it. That bound is what keeps a round cheap during
/// an outage: the walk over open orders stops where the backlog begins instead of probing every
/// waiting order (300,000 waiting orders: 0.2 ms a round instead of 0.7-1.4 s).
pub async fn claim_stalled(
    conn: &mut PgConnection,
    after: std::time::Duration,
    max_pause: std::time::Duration,
    limit: i64,
) -> Result<Vec<Stalled>, sqlx::Error> {
    // `open_sagas` is the orders_open index's predicate (migration open_sagas), so only open
    // orders are visited, oldest first, up to the oldest waiting event (an index condition);
    // each candidate is then looked up in the outbox through outbox_by_order.
    let mut stalled: Vec<Stalled> = sqlx::query_as(
        "SELECT id, user_id, product_id, quantity FROM open_sagas AS orders
         WHERE GREATEST(updated_at, redriven_at)
               < now() - make_interval(secs => LEAST($1 * power(2, LEAST(redrive_count, 20)), $2))
           AND created_at < COALESCE((SELECT created_at FROM outbox ORDER BY seq LIMIT 1), 'infinity')
           AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.aggregate_id = orders.id)
         ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED",
    )
    .bind(after.as_secs_f64())
    .bind(max_pause.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    if !stalled.is_empty() {
        let ids: Vec<Uuid> = stalled.iter().map(|o| o.id).collect();
        // The first contexts come back with the update, for the re-drive's links.
        let traces: std::collections::HashMap<Uuid, Option<String>> = sqlx::query_as(
            "UPDATE orders SET redrive_count = redrive_count + 1, redriven_at = now()
             WHERE id = ANY($1) RETURNING id, traceparent",
        )
        .bind(&ids)
        .fetch_all(conn)
        .await?
        .into_iter()
        .collect();
        for order in &mut stalled {
            order.traceparent = traces.get(&order.id).cloned().flatten();
        }
    }
    Ok(stalled)
}

/// Which of these orders exist.
pub async fn existing_orders(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM orders WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(conn)
        .await
}

/// The order as its story tells it (`GET /admin/sagas/{order_id}`), with whether its saga is
/// open by the database's one rule (`order_saga_open`).
pub async fn saga_record(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<platform::saga::OrderRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT user_id, product_id, quantity, status, failure_reason, amount_cents, created_at,
                updated_at, finalized_at, stock_released_at, redrive_count, redriven_at,
                order_saga_open(status, failure_reason, stock_released_at) AS open
         FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Up to `limit` open sagas created more than `older_than` ago, oldest first (the `open_sagas`
/// view, through the `orders_open` index).
pub async fn open_sagas(
    conn: &mut PgConnection,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<Vec<platform::saga::OpenSaga>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id AS order_id, status, failure_reason, created_at, updated_at, redrive_count,
                redriven_at
         FROM open_sagas WHERE created_at < now() - make_interval(secs => $1)
         ORDER BY created_at LIMIT $2",
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The open sagas, for the re-drive's gauges: the age in seconds of the oldest (0 when none is
/// open), and how many began more than `overdue_after` ago, counted up to `cap`. Both walk the
/// `orders_open` index only, the count only its overdue end (none while all is well).
pub async fn open_saga_ages(
    conn: &mut PgConnection,
    overdue_after: std::time::Duration,
    cap: i64,
) -> Result<(f64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8,
                (SELECT count(*) FROM (SELECT 1 FROM open_sagas
                                       WHERE created_at < now() - make_interval(secs => $1)
                                       LIMIT $2) AS overdue)
         FROM open_sagas",
    )
    .bind(overdue_after.as_secs_f64())
    .bind(cap)
    .fetch_one(conn)
    .await
}
