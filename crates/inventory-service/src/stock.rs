//! Products, stock and reservations in the database. Query functions take a connection; callers
//! own the transaction.

use serde::Serialize;
use sqlx::PgConnection;
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

/// Deducts stock for an order and records the reservation. The conditional UPDATE is the
/// concurrency control: it takes the row lock, re-checks `stock >= quantity` on the latest
/// version, and can never drive stock below zero (the CHECK constraint backs it up).
pub async fn reserve_stock(
    conn: &mut PgConnection,
    order_id: Uuid,
    user_id: i64,
    product_id: i64,
    quantity: i32,
) -> Result<Reservation, sqlx::Error> {
    let price: Option<i64> = sqlx::query_scalar(
        "UPDATE products SET stock = stock - $2 WHERE id = $1 AND stock >= $2 RETURNING price_cents",
    )
    .bind(product_id)
    .bind(i64::from(quantity))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(price) = price else {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM products WHERE id = $1)")
                .bind(product_id)
                .fetch_one(&mut *conn)
                .await?;
        return Ok(if exists {
            Reservation::OutOfStock
        } else {
            Reservation::UnknownProduct
        });
    };
    let amount_cents = price * i64::from(quantity);
    // The primary key on order_id makes a second reservation for one order impossible.
    sqlx::query(
        "INSERT INTO reservations (order_id, product_id, user_id, quantity, amount_cents, status)
         VALUES ($1, $2, $3, $4, $5, 'ACTIVE')",
    )
    .bind(order_id)
    .bind(product_id)
    .bind(user_id)
    .bind(quantity)
    .bind(amount_cents)
    .execute(&mut *conn)
    .await?;
    Ok(Reservation::Reserved { amount_cents })
}

/// Releases an order's active reservation and returns its units to stock. Returns the product
/// and quantity released, or `None` if there was nothing active (already released, or never
/// reserved): the ACTIVE -> RELEASED transition happens at most once.
pub async fn release_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<(i64, i32)>, sqlx::Error> {
    let released: Option<(i64, i32)> = sqlx::query_as(
        "UPDATE reservations SET status = 'RELEASED', released_at = now()
         WHERE order_id = $1 AND status = 'ACTIVE' RETURNING product_id, quantity",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((product_id, quantity)) = released {
        sqlx::query("UPDATE products SET stock = stock + $2 WHERE id = $1")
            .bind(product_id)
            .bind(i64::from(quantity))
            .execute(&mut *conn)
            .await?;
    }
    Ok(released)
}
