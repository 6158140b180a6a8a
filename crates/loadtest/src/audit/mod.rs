//! The exact audit run after a load test has drained (and on demand by `loadtest verify`).
//!
//! Everything is read from the three service databases. Each database is read inside one
//! `REPEATABLE READ READ ONLY` transaction, so the rows of one database are a consistent
//! snapshot; the three snapshots are taken one after the other, which is exact once the
//! system is quiet (the audit runs after the drain). Cross-database relations are joined in
//! memory with `HashMap`s: a run has at most a few hundred thousand orders.
//!
//! Checks (stable names, in this order):
//!
//! | name | what |
//! | --- | --- |
//! | `stock` | per product: stock ≥ 0, stock == received − Σ ACTIVE reserved, Σ ACTIVE reserved == Σ COMPLETED qty |
//! | `completed orders` | each COMPLETED order has an ACTIVE reservation (same product, qty, user) and a SUCCEEDED charge of the right amount |
//! | `failed orders` | each FAILED order has no ACTIVE reservation, no SUCCEEDED charge, and the trail its failure reason implies |
//! | `paid once` | no order has more than one SUCCEEDED charge |
//! | `money conserved` | per account and in total: balance + Σ SUCCEEDED charges == deposited |
//! | `released reservations` | each RELEASED reservation belongs to an order FAILED for a payment reason with a FAILED charge, released once |
//! | `orphans` | reservations or charges whose order does not exist in the orders DB |
//! | `orders final` | no order left PENDING, no failed payment without a confirmed stock release (each such order named, up to 20 of each kind) |
//! | `outbox drained` | no outbox row left in any of the three DBs |
//! | `dead letters` | dead-letter records in the three DBs (expected zero) |
//! | `http p95` | p95 HTTP response time < threshold (or "not measured") |
//! | `http error rate` | HTTP error rate ≤ allowed (or "not measured") |

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

pub mod accepted;
pub mod answers;
pub mod check;
pub mod drain;
mod invariants;

use invariants::{dead_letters, http_checks, outbox_drained, Rows};

use crate::observe::database::Databases;
pub use check::Check;

/// Check names, as they appear in [`Check::name`].
pub const CHECK_STOCK: &str = "stock";
pub const CHECK_COMPLETED_ORDERS: &str = "completed orders";
pub const CHECK_FAILED_ORDERS: &str = "failed orders";
pub const CHECK_PAID_ONCE: &str = "paid once";
pub const CHECK_MONEY_CONSERVED: &str = "money conserved";
pub const CHECK_RELEASED_RESERVATIONS: &str = "released reservations";
pub const CHECK_ORPHANS: &str = "orphans";
pub const CHECK_ORDERS_FINAL: &str = "orders final";
pub const CHECK_OUTBOX_DRAINED: &str = "outbox drained";
pub const CHECK_DEAD_LETTERS: &str = "dead letters";
pub const CHECK_HTTP_P95: &str = "http p95";
pub const CHECK_HTTP_ERROR_RATE: &str = "http error rate";

/// All check names, in the order [`audit`] returns them.
pub const CHECK_NAMES: [&str; 12] = [
    CHECK_STOCK,
    CHECK_COMPLETED_ORDERS,
    CHECK_FAILED_ORDERS,
    CHECK_PAID_ONCE,
    CHECK_MONEY_CONSERVED,
    CHECK_RELEASED_RESERVATIONS,
    CHECK_ORPHANS,
    CHECK_ORDERS_FINAL,
    CHECK_OUTBOX_DRAINED,
    CHECK_DEAD_LETTERS,
    CHECK_HTTP_P95,
    CHECK_HTTP_ERROR_RATE,
];

/// Failure reasons meaning stock was never taken: no reservation at all, no charge.
const STOCK_REASONS: [&str; 3] = ["OUT_OF_STOCK", "UNKNOWN_PRODUCT", "AMOUNT_TOO_LARGE"];
/// Failure reasons meaning payment failed: a FAILED charge, reservation (if any) RELEASED.
const PAYMENT_REASONS: [&str; 3] = ["PAYMENT_DECLINED", "INSUFFICIENT_FUNDS", "UNKNOWN_ACCOUNT"];

/// How many offending items a detail line names before summarising the rest.
const MAX_EXAMPLES: usize = 5;
/// How many open orders `orders final` names, per kind: after the drain an order still open is
/// a lost one, and its id is what an operator needs to chase it.
const MAX_OPEN_ORDERS_NAMED: usize = 20;
/// How many per-product lines the stock detail shows.
const MAX_PRODUCTS_SHOWN: usize = 10;

/// HTTP figures measured by the caller (the load generator).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HttpFigures {
    pub p95_ms: f64,
    pub p95_threshold_ms: f64,
    /// Fraction of requests that errored, 0.0 ..= 1.0.
    pub error_rate: f64,
    /// Largest allowed fraction, 0.0 ..= 1.0.
    pub max_error_rate: f64,
}

// ---------------------------------------------------------------------------------------------
// Rows loaded for the audit.

#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    user_id: i64,
    product_id: i64,
    quantity: i32,
    status: String,
    failure_reason: Option<String>,
    amount_cents: Option<i64>,
    /// The order's saga is still open, as the order service defines it (`order_saga_open`):
    /// not final, or a failed payment whose stock release inventory has not confirmed.
    saga_open: bool,
}

#[derive(Debug, sqlx::FromRow)]
struct ProductRow {
    id: i64,
    stock: i64,
    received: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct ReservationRow {
    order_id: Uuid,
    product_id: i64,
    user_id: i64,
    quantity: i32,
    amount_cents: i64,
    status: String,
    reserved_at: DateTime<Utc>,
    released_at: Option<DateTime<Utc>>,
}

#[derive(Debug, sqlx::FromRow)]
struct AccountRow {
    user_id: i64,
    balance_cents: i64,
    deposited_cents: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct ChargeRow {
    order_id: Uuid,
    user_id: i64,
    amount_cents: i64,
    status: String,
}

#[derive(Debug, sqlx::FromRow)]
struct DeadLetterGroup {
    consumer: String,
    subject: String,
    reason: String,
    n: i64,
}

struct OrdersSnapshot {
    orders: Vec<OrderRow>,
    outbox: i64,
    dead_letters: Vec<DeadLetterGroup>,
}

struct InventorySnapshot {
    products: Vec<ProductRow>,
    reservations: Vec<ReservationRow>,
    outbox: i64,
    dead_letters: Vec<DeadLetterGroup>,
}

struct PaymentsSnapshot {
    accounts: Vec<AccountRow>,
    charges: Vec<ChargeRow>,
    outbox: i64,
    dead_letters: Vec<DeadLetterGroup>,
}

async fn snapshot_tx(pool: &PgPool) -> anyhow::Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn count_outbox(conn: &mut PgConnection) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(conn)
        .await?)
}

async fn dead_letter_groups(conn: &mut PgConnection) -> anyhow::Result<Vec<DeadLetterGroup>> {
    Ok(sqlx::query_as(
        "SELECT consumer, subject, reason, count(*) AS n FROM dead_letters WHERE status = 'open' \
         GROUP BY consumer, subject, reason ORDER BY n DESC, consumer, subject, reason",
    )
    .fetch_all(conn)
    .await?)
}

/// The outbox rows and dead letters of a database, read in its snapshot, which then ends.
async fn finish_snapshot(
    mut tx: Transaction<'static, Postgres>,
) -> anyhow::Result<(i64, Vec<DeadLetterGroup>)> {
    let outbox = count_outbox(&mut tx).await?;
    let dead_letters = dead_letter_groups(&mut tx).await?;
    tx.commit().await?;
    Ok((outbox, dead_letters))
}

async fn load_orders(pool: &PgPool) -> anyhow::Result<OrdersSnapshot> {
    let mut tx = snapshot_tx(pool).await?;
    let orders = sqlx::query_as(
        "SELECT id, user_id, product_id, quantity, status, failure_reason, amount_cents, \
         order_saga_open(status, failure_reason, stock_released_at) AS saga_open FROM orders",
    )
    .fetch_all(&mut *tx)
    .await?;
    let (outbox, dead_letters) = finish_snapshot(tx).await?;
    Ok(OrdersSnapshot {
        orders,
        outbox,
        dead_letters,
    })
}

async fn load_inventory(pool: &PgPool) -> anyhow::Result<InventorySnapshot> {
    let mut tx = snapshot_tx(pool).await?;
    let products = sqlx::query_as("SELECT id, stock, received FROM products ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    let reservations = sqlx::query_as(
        "SELECT order_id, product_id, user_id, quantity, amount_cents, status, reserved_at, \
         released_at FROM reservations",
    )
    .fetch_all(&mut *tx)
    .await?;
    let (outbox, dead_letters) = finish_snapshot(tx).await?;
    Ok(InventorySnapshot {
        products,
        reservations,
        outbox,
        dead_letters,
    })
}

async fn load_payments(pool: &PgPool) -> anyhow::Result<PaymentsSnapshot> {
    let mut tx = snapshot_tx(pool).await?;
    let accounts = sqlx::query_as("SELECT user_id, balance_cents, deposited_cents FROM accounts")
        .fetch_all(&mut *tx)
        .await?;
    let charges = sqlx::query_as("SELECT order_id, user_id, amount_cents, status FROM charges")
        .fetch_all(&mut *tx)
        .await?;
    let (outbox, dead_letters) = finish_snapshot(tx).await?;
    Ok(PaymentsSnapshot {
        accounts,
        charges,
        outbox,
        dead_letters,
    })
}

// ---------------------------------------------------------------------------------------------
// The audit.

/// Runs every check against the three databases. `http`: the figures the load generator
/// measured, or `None` to report the two HTTP checks as "not measured" (they then pass).
///
/// Errors only when a database cannot be read; a broken invariant is a failed [`Check`].
pub async fn audit(dbs: &Databases, http: Option<&HttpFigures>) -> anyhow::Result<Vec<Check>> {
    let (o, i, p) = tokio::try_join!(
        async {
            load_orders(&dbs.orders)
                .await
                .context("reading the orders database")
        },
        async {
            load_inventory(&dbs.inventory)
                .await
                .context("reading the inventory database")
        },
        async {
            load_payments(&dbs.payments)
                .await
                .context("reading the payments database")
        },
    )?;
    let world = Rows::new(&o, &i, &p);
    let mut checks = vec![
        world.stock(),
        world.completed_orders(),
        world.failed_orders(),
        world.paid_once(),
        world.money_conserved(),
        world.released_reservations(),
        world.orphans(),
        world.orders_final(),
        outbox_drained(o.outbox, i.outbox, p.outbox),
        dead_letters(&o.dead_letters, &i.dead_letters, &p.dead_letters),
    ];
    checks.extend(http_checks(http));
    Ok(checks)
}
