//! Products, stock and reservations in the database. Query functions take a connection; callers
//! own the transaction.

use serde::Serialize;
use sqlx::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
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

/// Adds units to a product (a delivery); both the stock and the audit total grow.
pub async fn restock(
    conn: &mut PgConnection,
    id: i64,
    units: i64,
) -> Result<Option<Product>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE products SET stock = stock + $2, received = received + $2 WHERE id = $1
         RETURNING id, name, price_cents, stock, received",
    )
    .bind(id)
    .bind(units)
    .fetch_optional(conn)
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    Reserved { amount_cents: i64 },
    OutOfStock,
    UnknownProduct,
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
/// `UPDATE … WHERE stock >= quantity` per line, run in this order, would do).
/// `on_hand` maps product id → (stock, price); it is left holding the stock after the batch.
pub fn allocate(lines: &[OrderLine], on_hand: &mut HashMap<i64, (i64, i64)>) -> Vec<Reservation> {
    lines
        .iter()
        .map(|line| match on_hand.get_mut(&line.product_id) {
            None => Reservation::UnknownProduct,
            Some((stock, price)) if *stock >= i64::from(line.quantity) => {
                *stock -= i64::from(line.quantity);
                Reservation::Reserved {
                    amount_cents: *price * i64::from(line.quantity),
                }
            }
            Some(_) => Reservation::OutOfStock,
        })
        .collect()
}

/// Deducts stock for a batch of orders and records their reservations, with one statement per
/// step instead of one per order. The products' rows are locked (`FOR UPDATE`, in id order so
/// concurrent batches cannot deadlock) before the allocation is decided, the deduction is
/// conditional and checked, and `CHECK (stock >= 0)` backs it: stock can never go below zero.
pub async fn reserve_stock(
    conn: &mut PgConnection,
    lines: &[OrderLine],
) -> Result<Vec<Reservation>, sqlx::Error> {
    let mut product_ids: Vec<i64> = lines.iter().map(|l| l.product_id).collect();
    product_ids.sort_unstable();
    product_ids.dedup();
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT id, stock, price_cents FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&product_ids)
    .fetch_all(&mut *conn)
    .await?;
    let before: HashMap<i64, i64> = rows.iter().map(|(id, stock, _)| (*id, *stock)).collect();
    let mut on_hand: HashMap<i64, (i64, i64)> = rows
        .into_iter()
        .map(|(id, stock, price)| (id, (stock, price)))
        .collect();
    let outcomes = allocate(lines, &mut on_hand);

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
            return Err(sqlx::Error::Protocol(
                "stock changed under a row lock".into(),
            ));
        }
    }

    let reserved: Vec<(&OrderLine, i64)> = lines
        .iter()
        .zip(&outcomes)
        .filter_map(|(line, outcome)| match outcome {
            Reservation::Reserved { amount_cents } => Some((line, *amount_cents)),
            _ => None,
        })
        .collect();
    if !reserved.is_empty() {
        // The primary key on order_id makes a second reservation for one order impossible.
        sqlx::query(
            "INSERT INTO reservations (order_id, product_id, user_id, quantity, amount_cents, status)
             SELECT r.order_id, r.product_id, r.user_id, r.quantity, r.amount_cents, 'ACTIVE'
             FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::int[], $5::bigint[])
                  AS r(order_id, product_id, user_id, quantity, amount_cents)",
        )
        .bind(reserved.iter().map(|(l, _)| l.order_id).collect::<Vec<_>>())
        .bind(reserved.iter().map(|(l, _)| l.product_id).collect::<Vec<_>>())
        .bind(reserved.iter().map(|(l, _)| l.user_id).collect::<Vec<_>>())
        .bind(reserved.iter().map(|(l, _)| l.quantity).collect::<Vec<_>>())
        .bind(reserved.iter().map(|(_, a)| *a).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(outcomes)
}

/// A reservation given back: which order, product and units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Release {
    pub order_id: Uuid,
    pub product_id: i64,
    pub quantity: i32,
}

/// Releases the orders' active reservations and returns their units to stock, in one statement.
/// Only ACTIVE reservations move to RELEASED, so each is released at most once; orders with
/// nothing active (already released, never reserved) are simply absent from the result.
pub async fn release_reservations(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
) -> Result<Vec<Release>, sqlx::Error> {
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
         SELECT order_id, product_id, quantity FROM released",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await
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
        assert_eq!(
            outcomes,
            vec![
                Reservation::Reserved { amount_cents: 200 },
                Reservation::OutOfStock,
                Reservation::Reserved { amount_cents: 100 },
                Reservation::UnknownProduct,
                Reservation::OutOfStock,
            ]
        );
        assert_eq!(on_hand[&1].0, 0);
    }

    proptest::proptest! {
        /// Never more units than on hand; the reserved units are exactly the stock taken.
        #[test]
        fn allocation_never_oversells(stock in 0i64..50, quantities in proptest::collection::vec(1i32..6, 0..40)) {
            let mut on_hand = HashMap::from([(1, (stock, 10))]);
            let lines: Vec<OrderLine> = quantities.iter().map(|q| line(1, *q)).collect();
            let outcomes = allocate(&lines, &mut on_hand);
            let reserved: i64 = lines.iter().zip(&outcomes)
                .filter(|(_, o)| matches!(o, Reservation::Reserved { .. }))
                .map(|(l, _)| i64::from(l.quantity)).sum();
            proptest::prop_assert!(on_hand[&1].0 >= 0);
            proptest::prop_assert_eq!(stock - on_hand[&1].0, reserved);
            // A rejected line really did not fit at its turn: replaying sequentially agrees.
            let mut left = stock;
            for (l, o) in lines.iter().zip(&outcomes) {
                let fits = left >= i64::from(l.quantity);
                proptest::prop_assert_eq!(fits, matches!(o, Reservation::Reserved { .. }));
                if fits { left -= i64::from(l.quantity); }
            }
        }
    }
}
