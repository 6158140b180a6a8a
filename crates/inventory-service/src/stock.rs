//! Products, stock and reservations in the database. Query functions take a connection; callers
//! own the transaction.
//!
//! Inventory's answer for an order is unique by construction: before a batch decides anything
//! it takes a transaction-scoped advisory lock per order ([`lock_orders`]), so two deliveries of
//! one order (a re-drive copy, a replica's delivery, a replayed dead letter) decide one after the
//! other, and the second finds the first one's answer. Product row locks alone do not do this:
//! an order for a product that does not exist yet has no row to lock, so a delivery that found
//! no product and one that came after the product was created could both decide — a rejection
//! and a reservation, the order FAILED while payment charges it. An order-keyed lock was chosen
//! over one decisions table keyed by order id because it writes nothing (one statement per
//! batch, no extra row or index per order), and `reservations` and `stock_rejections` keep the
//! shapes the audit reads. The locks live in PostgreSQL's shared lock table, sized
//! `max_locks_per_transaction` × (`max_connections` + `max_prepared_transactions`) for the whole
//! server (12,800 with 64 × 200); a batch holds at most `consumer.batch_size` of them (256 by
//! default) until it commits, one batch per inventory instance at a time.

use platform::db::QueryError;
use platform::events::FailureReason;
use serde::Serialize;
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
    pub stock: i64,
    pub received: i64,
}

pub async fn create_product(
    conn: &mut PgConnection,
    id: i64,
    name: &str,
    price_cents: i64,
    stock: i64,
) -> Result<Product, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO products (id, name, price_cents, stock, received) VALUES ($1, $2, $3, $4, $4)
         RETURNING id, name, price_cents, stock, received",
    )
    .bind(id)
    .bind(name)
    .bind(price_cents)
    .bind(stock)
    .fetch_one(conn)
    .await
}

pub async fn find_product(
    conn: &mut PgConnection,
    id: i64,
) -> Result<Option<Product>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, price_cents, stock, received FROM products WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// What a restock did.
#[derive(Debug, Clone)]
pub enum Restocked {
    Done(Product),
    NotFound,
    /// The product would hold more than `max_units` ever received.
    OverCap,
}

/// Adds units to a product (a delivery); both the stock and the audit total grow, up to
/// `max_units` received in all (so neither can overflow).
pub async fn restock(
    conn: &mut PgConnection,
    id: i64,
    units: i64,
    max_units: i64,
) -> Result<Restocked, sqlx::Error> {
    let updated: Option<Product> = sqlx::query_as(
        "UPDATE products SET stock = stock + $2, received = received + $2
         WHERE id = $1 AND received <= $3 - $2
         RETURNING id, name, price_cents, stock, received",
    )
    .bind(id)
    .bind(units)
    .bind(max_units)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match updated {
        Some(product) => Restocked::Done(product),
        None if find_product(conn, id).await?.is_some() => Restocked::OverCap,
        None => Restocked::NotFound,
    })
}

/// Inventory's answer about one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Reserved(Reserved),
    Rejected(FailureReason),
}

/// A reservation as recorded: what the payment step needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    pub product_id: i64,
    pub user_id: i64,
    pub quantity: i32,
    pub amount_cents: i64,
}

/// One order's request for units of a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderLine {
    pub order_id: Uuid,
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i32,
}

/// Decides, in arrival order, which lines the stock on hand covers. Each line is served if the
/// units left after the lines before it cover it (exactly what one conditional
/// `UPDATE … WHERE stock >= quantity` per line, run in this order, would do). A line whose
/// amount (price × quantity) does not fit in the money type is turned down, not computed.
/// `on_hand` maps product id → (stock, price); it is left holding the stock after the batch.
pub fn allocate(lines: &[OrderLine], on_hand: &mut HashMap<i64, (i64, i64)>) -> Vec<Decision> {
    lines
        .iter()
        .map(|line| {
            let Some((stock, price)) = on_hand.get_mut(&line.product_id) else {
                return Decision::Rejected(FailureReason::UnknownProduct);
            };
            let quantity = i64::from(line.quantity);
            let Some(amount_cents) = price.checked_mul(quantity) else {
                return Decision::Rejected(FailureReason::AmountTooLarge);
            };
            if *stock < quantity {
                return Decision::Rejected(FailureReason::OutOfStock);
            }
            *stock -= quantity;
            Decision::Reserved(Reserved {
                product_id: line.product_id,
                user_id: line.user_id,
                quantity: line.quantity,
                amount_cents,
            })
        })
        .collect()
}

/// The answers already given about these orders.
async fn earlier_decisions(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
) -> Result<HashMap<Uuid, Decision>, QueryError> {
    let rows: Vec<(Uuid, i64, i64, i32, i64, Option<String>)> = sqlx::query_as(
        "SELECT order_id, product_id, user_id, quantity, amount_cents, NULL::text
         FROM reservations WHERE order_id = ANY($1)
         UNION ALL
         SELECT order_id, product_id, 0, 0, 0, reason
         FROM stock_rejections WHERE order_id = ANY($1)",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await?;
    let mut decisions = HashMap::with_capacity(rows.len());
    for (order_id, product_id, user_id, quantity, amount_cents, reason) in rows {
        let decision = match reason {
            None => Decision::Reserved(Reserved {
                product_id,
                user_id,
                quantity,
                amount_cents,
            }),
            Some(reason) => Decision::Rejected(FailureReason::parse(&reason).ok_or_else(|| {
                QueryError::Invariant(format!("unknown rejection reason {reason:?}"))
            })?),
        };
        decisions.insert(order_id, decision);
    }
    Ok(decisions)
}

/// The advisory lock key of an order's decision: the two halves of its id folded into 64 bits.
/// Two orders may share a key (they then decide one after the other; nothing else changes).
/// No other advisory lock is taken in inventory's database, so the keys cannot meet another's.
fn decision_lock_key(order_id: Uuid) -> i64 {
    let (high, low) = order_id.as_u64_pair();
    i64::from_ne_bytes((high ^ low).to_ne_bytes())
}

/// Takes the decision lock of every order, held until the transaction ends: a delivery of one
/// of these orders in another transaction waits here until this one has recorded its answer,
/// then reads it. The keys are taken in ascending order, in one statement (`unnest` yields the
/// array in order), so two batches sharing orders cannot deadlock on them.
async fn lock_orders(conn: &mut PgConnection, order_ids: &[Uuid]) -> Result<(), sqlx::Error> {
    let mut keys: Vec<i64> = order_ids.iter().copied().map(decision_lock_key).collect();
    keys.sort_unstable();
    keys.dedup();
    sqlx::query("SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k")
        .bind(&keys)
        .execute(conn)
        .await?;
    Ok(())
}

/// Answers a batch of orders: an order asked about before gets the answer it got then; the new
/// ones get stock deducted and a reservation, or a recorded rejection. One statement per step
/// instead of one per order. The orders' decision locks are taken first ([`lock_orders`]), so
/// two deliveries of one order in two transactions cannot both decide; then the products' rows
/// (`FOR UPDATE`, in id order so concurrent batches cannot deadlock), before earlier answers
/// are read and the allocation is decided. Every batch takes its locks in that order (orders,
/// then products), so neither kind can close a cycle. The deduction is conditional and checked,
/// and `CHECK (stock >= 0)` backs it: stock can never go below zero. Returns one decision per
/// line, in order.
pub async fn reserve_stock(
    conn: &mut PgConnection,
    lines: &[OrderLine],
) -> Result<Vec<Decision>, QueryError> {
    let order_ids: Vec<Uuid> = lines.iter().map(|l| l.order_id).collect();
    lock_orders(conn, &order_ids).await?;
    let mut product_ids: Vec<i64> = lines.iter().map(|l| l.product_id).collect();
    product_ids.sort_unstable();
    product_ids.dedup();
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT id, stock, price_cents FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&product_ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut decided = earlier_decisions(conn, &order_ids).await?;

    // Each order not answered before is decided once, at its first line in this batch.
    let mut seen = HashSet::new();
    let new_lines: Vec<OrderLine> = lines
        .iter()
        .filter(|l| !decided.contains_key(&l.order_id) && seen.insert(l.order_id))
        .copied()
        .collect();
    let before: HashMap<i64, i64> = rows.iter().map(|(id, stock, _)| (*id, *stock)).collect();
    let mut on_hand: HashMap<i64, (i64, i64)> = rows
        .into_iter()
        .map(|(id, stock, price)| (id, (stock, price)))
        .collect();
    let decisions = allocate(&new_lines, &mut on_hand);

    let (mut ids, mut units) = (Vec::new(), Vec::new());
    for (id, (left, _)) in &on_hand {
        let taken = before[id] - left;
        if taken > 0 {
            ids.push(*id);
            units.push(taken);
        }
    }
    if !ids.is_empty() {
        let updated = sqlx::query(
            "UPDATE products SET stock = products.stock - d.units
             FROM unnest($1::bigint[], $2::bigint[]) AS d(id, units)
             WHERE products.id = d.id AND products.stock >= d.units",
        )
        .bind(&ids)
        .bind(&units)
        .execute(&mut *conn)
        .await?;
        if updated.rows_affected() != ids.len() as u64 {
            // Impossible while the rows are locked; refuse rather than record reservations.
            return Err(QueryError::Invariant(
                "stock changed under a row lock".into(),
            ));
        }
    }

    let mut reserved = Vec::new();
    let mut rejected = Vec::new();
    for (line, decision) in new_lines.iter().zip(&decisions) {
        match decision {
            Decision::Reserved(r) => reserved.push((line.order_id, *r)),
            Decision::Rejected(reason) => rejected.push((line, reason.as_str())),
        }
        decided.insert(line.order_id, *decision);
    }
    if !reserved.is_empty() {
        // The primary key on order_id makes a second reservation for one order impossible.
        sqlx::query(
            "INSERT INTO reservations (order_id, product_id, user_id, quantity, amount_cents, status)
             SELECT r.order_id, r.product_id, r.user_id, r.quantity, r.amount_cents, 'ACTIVE'
             FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::int[], $5::bigint[])
                  AS r(order_id, product_id, user_id, quantity, amount_cents)",
        )
        .bind(reserved.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(reserved.iter().map(|(_, r)| r.product_id).collect::<Vec<_>>())
        .bind(reserved.iter().map(|(_, r)| r.user_id).collect::<Vec<_>>())
        .bind(reserved.iter().map(|(_, r)| r.quantity).collect::<Vec<_>>())
        .bind(reserved.iter().map(|(_, r)| r.amount_cents).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    if !rejected.is_empty() {
        // Under the orders' decision locks nobody else is recording these orders: a conflict
        // on the primary key would be a defect, and fails the batch rather than being ignored.
        sqlx::query(
            "INSERT INTO stock_rejections (order_id, product_id, reason)
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[])",
        )
        .bind(rejected.iter().map(|(l, _)| l.order_id).collect::<Vec<_>>())
        .bind(
            rejected
                .iter()
                .map(|(l, _)| l.product_id)
                .collect::<Vec<_>>(),
        )
        .bind(
            rejected
                .iter()
                .map(|(_, reason)| *reason)
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    }
    lines
        .iter()
        .map(|line| {
            decided.get(&line.order_id).copied().ok_or_else(|| {
                QueryError::Invariant(format!("no decision for order {}", line.order_id))
            })
        })
        .collect()
}

/// A reservation given back: which order, product and units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Release {
    pub order_id: Uuid,
    pub product_id: i64,
    pub quantity: i32,
    /// False when it had been released before (the release is reported again, not repeated).
    pub now: bool,
}

/// Releases the orders' active reservations and returns their units to stock; also returns
/// the reservations of these orders released before, so the release is reported again. Only
/// ACTIVE reservations move to RELEASED, so each is released at most once; orders with no
/// reservation are absent from the result.
///
/// The products are locked first, in id order, as `reserve_stock` locks them: otherwise the
/// update takes product locks in whatever order its plan visits them, and a compensation batch
/// and a reservation batch over the same products can deadlock.
pub async fn release_reservations(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
) -> Result<Vec<Release>, sqlx::Error> {
    sqlx::query(
        "SELECT id FROM products WHERE id IN (
             SELECT product_id FROM reservations WHERE order_id = ANY($1) AND status = 'ACTIVE')
         ORDER BY id FOR UPDATE",
    )
    .bind(order_ids)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as(
        "WITH released AS (
             UPDATE reservations SET status = 'RELEASED', released_at = now()
             WHERE order_id = ANY($1) AND status = 'ACTIVE'
             RETURNING order_id, product_id, quantity
         ), restored AS (
             UPDATE products SET stock = products.stock + r.units
             FROM (SELECT product_id, sum(quantity)::bigint AS units FROM released GROUP BY product_id) AS r
             WHERE products.id = r.product_id
         )
         SELECT order_id, product_id, quantity, true AS now FROM released
         UNION ALL
         SELECT order_id, product_id, quantity, false FROM reservations
         WHERE order_id = ANY($1) AND status = 'RELEASED' AND order_id NOT IN (SELECT order_id FROM released)",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await
}

/// Inventory's answer about one order, for its story (`GET /admin/sagas/{order_id}`): its
/// reservation or its rejection, or neither when inventory was not asked yet.
pub async fn saga_records(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<platform::saga::Records, sqlx::Error> {
    let reservation = sqlx::query_as(
        "SELECT product_id, quantity, amount_cents, status, reserved_at, released_at
         FROM reservations WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?;
    let rejection = sqlx::query_as(
        "SELECT product_id, reason, rejected_at FROM stock_rejections WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(platform::saga::Records::Inventory {
        reservation,
        rejection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(product_id: i64, quantity: i32) -> OrderLine {
        OrderLine {
            order_id: Uuid::now_v7(),
            user_id: 1,
            product_id,
            quantity,
        }
    }

    #[test]
    fn lines_are_served_in_arrival_order_while_stock_lasts() {
        let mut on_hand = HashMap::from([(1, (3, 100))]);
        let lines = [line(1, 2), line(1, 2), line(1, 1), line(2, 1), line(1, 1)];
        let outcomes = allocate(&lines, &mut on_hand);
        let amounts: Vec<Result<i64, FailureReason>> = outcomes
            .iter()
            .map(|d| match d {
                Decision::Reserved(r) => Ok(r.amount_cents),
                Decision::Rejected(reason) => Err(*reason),
            })
            .collect();
        assert_eq!(
            amounts,
            vec![
                Ok(200),
                Err(FailureReason::OutOfStock),
                Ok(100),
                Err(FailureReason::UnknownProduct),
                Err(FailureReason::OutOfStock),
            ]
        );
        assert_eq!(on_hand[&1].0, 0);
    }

    /// The price that made the consumer panic before (`price * quantity` overflowing) is turned
    /// down with a reason, and takes no stock.
    #[test]
    fn an_amount_that_does_not_fit_is_rejected_not_computed() {
        let mut on_hand = HashMap::from([(777_001, (1_000, 100_000_000_000_000_000))]);
        let outcomes = allocate(&[line(777_001, 93)], &mut on_hand);
        assert_eq!(
            outcomes,
            vec![Decision::Rejected(FailureReason::AmountTooLarge)]
        );
        assert_eq!(on_hand[&777_001].0, 1_000);
    }

    proptest::proptest! {
        /// Never more units than on hand; the reserved units are exactly the stock taken.
        #[test]
        fn allocation_never_oversells(stock in 0i64..50, quantities in proptest::collection::vec(1i32..6, 0..40)) {
            let mut on_hand = HashMap::from([(1, (stock, 10))]);
            let lines: Vec<OrderLine> = quantities.iter().map(|q| line(1, *q)).collect();
            let outcomes = allocate(&lines, &mut on_hand);
            let reserved: i64 = lines.iter().zip(&outcomes)
                .filter(|(_, o)| matches!(o, Decision::Reserved(_)))
                .map(|(l, _)| i64::from(l.quantity)).sum();
            proptest::prop_assert!(on_hand[&1].0 >= 0);
            proptest::prop_assert_eq!(stock - on_hand[&1].0, reserved);
            // A rejected line really did not fit at its turn: replaying sequentially agrees.
            let mut left = stock;
            for (l, o) in lines.iter().zip(&outcomes) {
                let fits = left >= i64::from(l.quantity);
                proptest::prop_assert_eq!(fits, matches!(o, Decision::Reserved(_)));
                if fits { left -= i64::from(l.quantity); }
            }
        }
    }
}
