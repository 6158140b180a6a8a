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
//! | `orders final` | no order left PENDING or RESERVED |
//! | `outbox drained` | no outbox row left in any of the three DBs |
//! | `dead letters` | dead-letter records in the three DBs (expected zero) |
//! | `http p95` | p95 HTTP response time < threshold (or "not measured") |
//! | `http error rate` | HTTP error rate ≤ allowed (or "not measured") |

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

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

fn is_payment_failure(order: &OrderRow) -> bool {
    order
        .failure_reason
        .as_deref()
        .is_some_and(|reason| PAYMENT_REASONS.contains(&reason))
}

/// How many offending items a detail line names before summarising the rest.
const MAX_EXAMPLES: usize = 5;
/// How many per-product lines the stock detail shows.
const MAX_PRODUCTS_SHOWN: usize = 10;

/// Connections to the three service databases.
#[derive(Clone, Debug)]
pub struct Databases {
    pub orders: PgPool,
    pub inventory: PgPool,
    pub payments: PgPool,
}

impl Databases {
    /// Connects to the three databases (small pools: the audit is read-only and sequential
    /// per database, progress polling uses a few connections at most).
    pub async fn connect(
        orders_url: &str,
        inventory_url: &str,
        payments_url: &str,
    ) -> anyhow::Result<Self> {
        async fn pool(url: &str, what: &str) -> anyhow::Result<PgPool> {
            PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .with_context(|| format!("connecting to the {what} database"))
        }
        let (orders, inventory, payments) = tokio::try_join!(
            pool(orders_url, "orders"),
            pool(inventory_url, "inventory"),
            pool(payments_url, "payments"),
        )?;
        Ok(Self {
            orders,
            inventory,
            payments,
        })
    }

    /// Closes the three pools.
    pub async fn close(&self) {
        tokio::join!(
            self.orders.close(),
            self.inventory.close(),
            self.payments.close()
        );
    }
}

/// The outcome of one check: its name, pass/fail, and its numbers on one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    fn new(name: &str, passed: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            passed,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.passed { "PASS" } else { "FAIL" };
        write!(f, "[{mark}] {}: {}", self.name, self.detail)
    }
}

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

/// A cheap snapshot of how far a run has got, for polling during the run and the drain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Orders PENDING or RESERVED.
    pub non_final_orders: i64,
    /// Outbox rows not yet published, summed over the three DBs.
    pub outbox_backlog: i64,
    /// "PENDING", "RESERVED", "COMPLETED", "FAILED:OUT_OF_STOCK", … → count.
    pub orders_by_status: BTreeMap<String, i64>,
    /// Product id → units on hand.
    pub stock: BTreeMap<i64, i64>,
    /// Dead-letter records, summed over the three DBs.
    pub dead_letters: i64,
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
    /// Inventory confirmed the stock of a failed payment went back (the saga is closed).
    stock_released: bool,
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

async fn load_orders(pool: &PgPool) -> anyhow::Result<OrdersSnapshot> {
    let mut tx = snapshot_tx(pool).await?;
    let orders = sqlx::query_as(
        "SELECT id, user_id, product_id, quantity, status, failure_reason, amount_cents, \
         stock_released_at IS NOT NULL AS stock_released FROM orders",
    )
    .fetch_all(&mut *tx)
    .await?;
    let outbox = count_outbox(&mut tx).await?;
    let dead_letters = dead_letter_groups(&mut tx).await?;
    tx.commit().await?;
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
    let outbox = count_outbox(&mut tx).await?;
    let dead_letters = dead_letter_groups(&mut tx).await?;
    tx.commit().await?;
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
    let outbox = count_outbox(&mut tx).await?;
    let dead_letters = dead_letter_groups(&mut tx).await?;
    tx.commit().await?;
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
    let world = World::new(&o, &i, &p);
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

/// The loaded rows, indexed for the joins.
struct World<'a> {
    orders: &'a [OrderRow],
    order_by_id: HashMap<Uuid, &'a OrderRow>,
    products: &'a [ProductRow],
    reservations: &'a [ReservationRow],
    reservation_by_order: HashMap<Uuid, &'a ReservationRow>,
    accounts: &'a [AccountRow],
    charges: &'a [ChargeRow],
    /// All charge rows of an order (the primary key makes it at most one; the audit does not
    /// rely on that).
    charges_by_order: HashMap<Uuid, Vec<&'a ChargeRow>>,
}

impl<'a> World<'a> {
    fn new(o: &'a OrdersSnapshot, i: &'a InventorySnapshot, p: &'a PaymentsSnapshot) -> Self {
        let order_by_id = o.orders.iter().map(|r| (r.id, r)).collect();
        let reservation_by_order = i.reservations.iter().map(|r| (r.order_id, r)).collect();
        let mut charges_by_order: HashMap<Uuid, Vec<&ChargeRow>> = HashMap::new();
        for c in &p.charges {
            charges_by_order.entry(c.order_id).or_default().push(c);
        }
        Self {
            orders: &o.orders,
            order_by_id,
            products: &i.products,
            reservations: &i.reservations,
            reservation_by_order,
            accounts: &p.accounts,
            charges: &p.charges,
            charges_by_order,
        }
    }

    fn charges_of(&self, order: Uuid) -> &[&'a ChargeRow] {
        self.charges_by_order
            .get(&order)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Check 1: stock == received − Σ ACTIVE reserved == received − Σ COMPLETED qty, stock ≥ 0.
    fn stock(&self) -> Check {
        let mut active: HashMap<i64, i64> = HashMap::new();
        for r in self.reservations.iter().filter(|r| r.status == "ACTIVE") {
            *active.entry(r.product_id).or_default() += i64::from(r.quantity);
        }
        let mut completed: BTreeMap<i64, i64> = BTreeMap::new();
        for o in self.orders.iter().filter(|o| o.status == "COMPLETED") {
            *completed.entry(o.product_id).or_default() += i64::from(o.quantity);
        }
        let mut bad = Vec::new();
        let mut good = Vec::new();
        for p in self.products {
            let act = active.get(&p.id).copied().unwrap_or(0);
            let done = completed.remove(&p.id).unwrap_or(0);
            let ok = p.stock >= 0 && p.stock == p.received - act && act == done;
            let eq = if p.stock == p.received - act {
                "=="
            } else {
                "!="
            };
            let line = format!(
                "product {}: stock {} {eq} received {} − active reserved {act}; COMPLETED qty {done}{}{}",
                p.id,
                p.stock,
                p.received,
                if act == done {
                    ""
                } else {
                    " (≠ active reserved)"
                },
                if p.stock < 0 { " (negative stock)" } else { "" },
            );
            if ok {
                good.push(line);
            } else {
                bad.push(line);
            }
        }
        // COMPLETED orders for products the inventory does not know.
        for (product, qty) in completed {
            bad.push(format!(
                "product {product}: unknown to inventory; COMPLETED qty {qty}"
            ));
        }
        let total = bad.len() + good.len();
        let passed = bad.is_empty();
        let mut detail = if passed {
            format!("{total} products consistent")
        } else {
            format!("{} of {total} products inconsistent", bad.len())
        };
        let shown: Vec<&String> = bad.iter().chain(good.iter()).collect();
        for line in shown.iter().take(MAX_PRODUCTS_SHOWN) {
            let _ = write!(detail, " | {line}");
        }
        if shown.len() > MAX_PRODUCTS_SHOWN {
            let _ = write!(detail, " | … {} more", shown.len() - MAX_PRODUCTS_SHOWN);
        }
        Check::new(CHECK_STOCK, passed, detail)
    }

    /// Check 2a: each COMPLETED order has an ACTIVE reservation matching it and a SUCCEEDED
    /// charge of the right amount (the order's amount, or the reservation's when the order has
    /// none).
    fn completed_orders(&self) -> Check {
        let mut n = 0usize;
        let mut no_active = Problems::default();
        let mut res_mismatch = Problems::default();
        let mut no_success = Problems::default();
        let mut wrong_amount = Problems::default();
        for o in self.orders.iter().filter(|o| o.status == "COMPLETED") {
            n += 1;
            let res = self.reservation_by_order.get(&o.id).copied();
            match res {
                Some(r) if r.status == "ACTIVE" => {
                    if r.product_id != o.product_id
                        || r.quantity != o.quantity
                        || r.user_id != o.user_id
                        || o.amount_cents.is_some_and(|a| a != r.amount_cents)
                    {
                        res_mismatch.add(o.id);
                    }
                }
                _ => no_active.add(o.id),
            }
            let expected = o.amount_cents.or(res.map(|r| r.amount_cents));
            let succeeded: Vec<_> = self
                .charges_of(o.id)
                .iter()
                .filter(|c| c.status == "SUCCEEDED")
                .collect();
            if succeeded.is_empty() {
                no_success.add(o.id);
            } else if succeeded
                .iter()
                .any(|c| Some(c.amount_cents) != expected || c.user_id != o.user_id)
            {
                wrong_amount.add(o.id);
            }
        }
        let passed = no_active.is_empty()
            && res_mismatch.is_empty()
            && no_success.is_empty()
            && wrong_amount.is_empty();
        let detail = format!(
            "{n} COMPLETED: {} without an ACTIVE reservation{}, {} reservation not matching the order{}, \
             {} without a SUCCEEDED charge{}, {} charged the wrong amount or user{}",
            no_active.count,
            no_active.examples(),
            res_mismatch.count,
            res_mismatch.examples(),
            no_success.count,
            no_success.examples(),
            wrong_amount.count,
            wrong_amount.examples(),
        );
        Check::new(CHECK_COMPLETED_ORDERS, passed, detail)
    }

    /// Check 2b: each FAILED order has no ACTIVE reservation and no SUCCEEDED charge; for a stock
    /// reason no reservation and no charge at all; for a payment reason a FAILED charge.
    fn failed_orders(&self) -> Check {
        let mut n = 0usize;
        let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
        let mut active = Problems::default();
        let mut succeeded = Problems::default();
        let mut stock_reason_trail = Problems::default();
        let mut payment_no_failed_charge = Problems::default();
        let mut unknown_reason = Problems::default();
        for o in self.orders.iter().filter(|o| o.status == "FAILED") {
            n += 1;
            let reason = o.failure_reason.as_deref().unwrap_or("");
            *by_reason.entry(reason).or_default() += 1;
            let res = self.reservation_by_order.get(&o.id).copied();
            let charges = self.charges_of(o.id);
            if res.is_some_and(|r| r.status == "ACTIVE") {
                active.add(o.id);
            }
            if charges.iter().any(|c| c.status == "SUCCEEDED") {
                succeeded.add(o.id);
            }
            if STOCK_REASONS.contains(&reason) {
                if res.is_some() || !charges.is_empty() {
                    stock_reason_trail.add(o.id);
                }
            } else if PAYMENT_REASONS.contains(&reason) {
                if !charges.iter().any(|c| c.status == "FAILED") {
                    payment_no_failed_charge.add(o.id);
                }
            } else {
                unknown_reason.add(o.id);
            }
        }
        let passed = active.is_empty()
            && succeeded.is_empty()
            && stock_reason_trail.is_empty()
            && payment_no_failed_charge.is_empty()
            && unknown_reason.is_empty();
        let reasons = if by_reason.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = by_reason.iter().map(|(r, c)| format!("{r} {c}")).collect();
            format!(" ({})", list.join(", "))
        };
        let detail = format!(
            "{n} FAILED{reasons}: {} with an ACTIVE reservation{}, {} with a SUCCEEDED charge{}, \
             {} stock failures with a reservation or charge{}, {} payment failures without a FAILED charge{}, \
             {} with an unknown reason{}",
            active.count,
            active.examples(),
            succeeded.count,
            succeeded.examples(),
            stock_reason_trail.count,
            stock_reason_trail.examples(),
            payment_no_failed_charge.count,
            payment_no_failed_charge.examples(),
            unknown_reason.count,
            unknown_reason.examples(),
        );
        Check::new(CHECK_FAILED_ORDERS, passed, detail)
    }

    /// Check 3a: No order has more than one SUCCEEDED charge.
    fn paid_once(&self) -> Check {
        let mut paid_orders = 0usize;
        let mut successes = 0usize;
        let mut twice = Problems::default();
        for (order, charges) in &self.charges_by_order {
            let s = charges.iter().filter(|c| c.status == "SUCCEEDED").count();
            successes += s;
            if s > 0 {
                paid_orders += 1;
            }
            if s > 1 {
                twice.add(*order);
            }
        }
        let passed = twice.is_empty();
        let detail = format!(
            "{successes} SUCCEEDED charges over {paid_orders} orders; {} orders paid more than once{}",
            twice.count,
            twice.examples()
        );
        Check::new(CHECK_PAID_ONCE, passed, detail)
    }

    /// Check 3b: Per account and in total: balance + Σ SUCCEEDED charges == deposited.
    fn money_conserved(&self) -> Check {
        let mut charged: HashMap<i64, i64> = HashMap::new();
        let mut total_charged = 0i64;
        for c in self.charges.iter().filter(|c| c.status == "SUCCEEDED") {
            *charged.entry(c.user_id).or_default() += c.amount_cents;
            total_charged += c.amount_cents;
        }
        let mut total_balance = 0i64;
        let mut total_deposited = 0i64;
        let mut off = Vec::new();
        for a in self.accounts {
            total_balance += a.balance_cents;
            total_deposited += a.deposited_cents;
            let ch = charged.remove(&a.user_id).unwrap_or(0);
            if a.balance_cents + ch != a.deposited_cents {
                off.push(format!(
                    "user {}: {} + {ch} != {}",
                    a.user_id, a.balance_cents, a.deposited_cents
                ));
            }
        }
        // Successful charges on users without an account.
        let mut no_account: Vec<(i64, i64)> = charged.into_iter().collect();
        no_account.sort_unstable();
        for (user, ch) in &no_account {
            off.push(format!("user {user}: no account, charged {ch}"));
        }
        let total_ok = total_balance + total_charged == total_deposited;
        let passed = total_ok && off.is_empty();
        let mut detail = format!(
            "Σ balance {total_balance} + Σ SUCCEEDED charges {total_charged} {} Σ deposited {total_deposited}; \
             {} of {} accounts off",
            if total_ok { "==" } else { "!=" },
            off.len() - no_account.len(),
            self.accounts.len(),
        );
        if !no_account.is_empty() {
            let _ = write!(
                detail,
                "; {} users charged without an account",
                no_account.len()
            );
        }
        if !off.is_empty() {
            let shown: Vec<&str> = off.iter().take(MAX_EXAMPLES).map(String::as_str).collect();
            let _ = write!(detail, " (e.g. {})", shown.join(", "));
        }
        Check::new(CHECK_MONEY_CONSERVED, passed, detail)
    }

    /// Check 4: Each RELEASED reservation: its order FAILED for a payment reason with a FAILED
    /// charge, released once (released_at set, not before reserved_at). A second release of the
    /// same units would show as surplus stock in the `stock` check.
    fn released_reservations(&self) -> Check {
        let mut n = 0usize;
        let mut wrong_order = Problems::default();
        let mut no_failed_charge = Problems::default();
        let mut bad_release = Problems::default();
        for r in self.reservations.iter().filter(|r| r.status == "RELEASED") {
            n += 1;
            match self.order_by_id.get(&r.order_id) {
                Some(o)
                    if o.status == "FAILED"
                        && o.failure_reason
                            .as_deref()
                            .is_some_and(|f| PAYMENT_REASONS.contains(&f)) => {}
                _ => wrong_order.add(r.order_id),
            }
            if !self
                .charges_of(r.order_id)
                .iter()
                .any(|c| c.status == "FAILED")
            {
                no_failed_charge.add(r.order_id);
            }
            if r.released_at.is_none_or(|t| t < r.reserved_at) {
                bad_release.add(r.order_id);
            }
        }
        let passed =
            wrong_order.is_empty() && no_failed_charge.is_empty() && bad_release.is_empty();
        let detail = format!(
            "{n} RELEASED: {} whose order is not FAILED for a payment reason{}, {} without a FAILED charge{}, \
             {} with a bad release time{}",
            wrong_order.count,
            wrong_order.examples(),
            no_failed_charge.count,
            no_failed_charge.examples(),
            bad_release.count,
            bad_release.examples(),
        );
        Check::new(CHECK_RELEASED_RESERVATIONS, passed, detail)
    }

    /// Reservations or charges whose order does not exist in the orders DB.
    fn orphans(&self) -> Check {
        let mut res = Problems::default();
        for r in self.reservations {
            if !self.order_by_id.contains_key(&r.order_id) {
                res.add(r.order_id);
            }
        }
        let mut charges = Problems::default();
        for c in self.charges {
            if !self.order_by_id.contains_key(&c.order_id) {
                charges.add(c.order_id);
            }
        }
        let passed = res.is_empty() && charges.is_empty();
        let detail = format!(
            "{} of {} reservations and {} of {} charges have no order{}{}",
            res.count,
            self.reservations.len(),
            charges.count,
            self.charges.len(),
            res.examples(),
            charges.examples(),
        );
        Check::new(CHECK_ORPHANS, passed, detail)
    }

    /// Check 5a: No order left PENDING or RESERVED, and no saga left open: every order whose
    /// payment failed had inventory confirm that its stock went back.
    fn orders_final(&self) -> Check {
        let mut pending = Problems::default();
        let mut reserved = Problems::default();
        let mut unconfirmed = Problems::default();
        for o in self.orders {
            match o.status.as_str() {
                "PENDING" => pending.add(o.id),
                "RESERVED" => reserved.add(o.id),
                "FAILED" if is_payment_failure(o) && !o.stock_released => unconfirmed.add(o.id),
                _ => {}
            }
        }
        let passed = pending.is_empty() && reserved.is_empty() && unconfirmed.is_empty();
        let detail = format!(
            "{} orders: {} PENDING{}, {} RESERVED{}, {} payment failures without a confirmed stock release{}",
            self.orders.len(),
            pending.count,
            pending.examples(),
            reserved.count,
            reserved.examples(),
            unconfirmed.count,
            unconfirmed.examples(),
        );
        Check::new(CHECK_ORDERS_FINAL, passed, detail)
    }
}

/// Check 5b: No outbox row left unpublished in any DB.
fn outbox_drained(orders: i64, inventory: i64, payments: i64) -> Check {
    let total = orders + inventory + payments;
    Check::new(
        CHECK_OUTBOX_DRAINED,
        total == 0,
        format!(
            "{total} unpublished outbox rows (orders {orders}, inventory {inventory}, payments {payments})"
        ),
    )
}

/// Check 5c: Dead letters counted and shown: expected zero.
fn dead_letters(
    orders: &[DeadLetterGroup],
    inventory: &[DeadLetterGroup],
    payments: &[DeadLetterGroup],
) -> Check {
    let sum = |g: &[DeadLetterGroup]| g.iter().map(|d| d.n).sum::<i64>();
    let (o, i, p) = (sum(orders), sum(inventory), sum(payments));
    let total = o + i + p;
    let mut detail =
        format!("{total} dead letters (orders {o}, inventory {i}, payments {p}; expected 0)");
    let groups: Vec<String> = [
        ("orders", orders),
        ("inventory", inventory),
        ("payments", payments),
    ]
    .iter()
    .flat_map(|(db, gs)| {
        gs.iter().map(move |g| {
            format!(
                "{db}: {} × consumer {} subject {} reason {:?}",
                g.n, g.consumer, g.subject, g.reason
            )
        })
    })
    .collect();
    if !groups.is_empty() {
        let shown: Vec<&str> = groups
            .iter()
            .take(MAX_EXAMPLES)
            .map(String::as_str)
            .collect();
        let _ = write!(detail, ": {}", shown.join("; "));
        if groups.len() > MAX_EXAMPLES {
            let _ = write!(detail, "; … {} more groups", groups.len() - MAX_EXAMPLES);
        }
    }
    Check::new(CHECK_DEAD_LETTERS, total == 0, detail)
}

/// Check 6: p95 latency and error rate, from the caller's figures.
fn http_checks(http: Option<&HttpFigures>) -> [Check; 2] {
    match http {
        None => [
            Check::new(CHECK_HTTP_P95, true, "not measured"),
            Check::new(CHECK_HTTP_ERROR_RATE, true, "not measured"),
        ],
        Some(h) => {
            let p95_ok = h.p95_ms < h.p95_threshold_ms;
            let err_ok = h.error_rate <= h.max_error_rate;
            [
                Check::new(
                    CHECK_HTTP_P95,
                    p95_ok,
                    format!(
                        "p95 {:.1} ms {} threshold {:.1} ms",
                        h.p95_ms,
                        if p95_ok { "<" } else { ">=" },
                        h.p95_threshold_ms
                    ),
                ),
                Check::new(
                    CHECK_HTTP_ERROR_RATE,
                    err_ok,
                    format!(
                        "error rate {:.4}% {} allowed {:.4}%",
                        h.error_rate * 100.0,
                        if err_ok { "<=" } else { ">" },
                        h.max_error_rate * 100.0
                    ),
                ),
            ]
        }
    }
}

/// Offending ids: a count and the first few for the detail line.
#[derive(Default)]
struct Problems {
    count: usize,
    first: Vec<Uuid>,
}

impl Problems {
    fn add(&mut self, id: Uuid) {
        self.count += 1;
        if self.first.len() < MAX_EXAMPLES {
            self.first.push(id);
        }
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn examples(&self) -> String {
        if self.first.is_empty() {
            return String::new();
        }
        let ids: Vec<String> = self.first.iter().map(Uuid::to_string).collect();
        let more = if self.count > self.first.len() {
            ", …"
        } else {
            ""
        };
        format!(" (e.g. {}{more})", ids.join(", "))
    }
}

// ---------------------------------------------------------------------------------------------
// Progress and latencies.

/// A cheap snapshot for polling once a second: COUNT / GROUP BY queries only.
pub async fn progress(dbs: &Databases) -> anyhow::Result<Progress> {
    async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
    }
    const OUTBOX: &str = "SELECT count(*) FROM outbox";
    const DEAD: &str = "SELECT count(*) FROM dead_letters WHERE status = 'open'";
    let (non_final_orders, by_status, stock, outbox_o, outbox_i, outbox_p, dead_o, dead_i, dead_p) =
        tokio::try_join!(
            // Implies the predicate of the orders_open partial index.
            count(
                &dbs.orders,
                "SELECT count(*) FROM orders WHERE status IN ('PENDING', 'RESERVED')"
            ),
            async {
                Ok::<Vec<(String, Option<String>, i64)>, anyhow::Error>(
                    sqlx::query_as(
                        "SELECT status, failure_reason, count(*) FROM orders \
                     GROUP BY status, failure_reason",
                    )
                    .fetch_all(&dbs.orders)
                    .await?,
                )
            },
            async {
                Ok::<Vec<(i64, i64)>, anyhow::Error>(
                    sqlx::query_as("SELECT id, stock FROM products")
                        .fetch_all(&dbs.inventory)
                        .await?,
                )
            },
            count(&dbs.orders, OUTBOX),
            count(&dbs.inventory, OUTBOX),
            count(&dbs.payments, OUTBOX),
            count(&dbs.orders, DEAD),
            count(&dbs.inventory, DEAD),
            count(&dbs.payments, DEAD),
        )?;
    let mut orders_by_status = BTreeMap::new();
    for (status, reason, n) in by_status {
        let key = match reason {
            Some(r) => format!("{status}:{r}"),
            None => status,
        };
        *orders_by_status.entry(key).or_default() += n;
    }
    Ok(Progress {
        non_final_orders,
        outbox_backlog: outbox_o + outbox_i + outbox_p,
        orders_by_status,
        stock: stock.into_iter().collect(),
        dead_letters: dead_o + dead_i + dead_p,
    })
}

/// Like [`progress`], without scanning the whole orders table: only the non-final orders are
/// counted, by status, through the `orders_open` partial index, so a sample stays cheap on
/// a table of millions of rows (capacity runs). `orders_by_status` holds PENDING and RESERVED
/// only.
pub async fn progress_light(dbs: &Databases) -> anyhow::Result<Progress> {
    async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
    }
    const OUTBOX: &str = "SELECT count(*) FROM outbox";
    const DEAD: &str = "SELECT count(*) FROM dead_letters WHERE status = 'open'";
    let (by_status, stock, outbox_o, outbox_i, outbox_p, dead_o, dead_i, dead_p) = tokio::try_join!(
        async {
            Ok::<Vec<(String, i64)>, anyhow::Error>(
                sqlx::query_as(
                    "SELECT status, count(*) FROM orders \
                     WHERE status IN ('PENDING', 'RESERVED') GROUP BY status",
                )
                .fetch_all(&dbs.orders)
                .await?,
            )
        },
        async {
            Ok::<Vec<(i64, i64)>, anyhow::Error>(
                sqlx::query_as("SELECT id, stock FROM products")
                    .fetch_all(&dbs.inventory)
                    .await?,
            )
        },
        count(&dbs.orders, OUTBOX),
        count(&dbs.inventory, OUTBOX),
        count(&dbs.payments, OUTBOX),
        count(&dbs.orders, DEAD),
        count(&dbs.inventory, DEAD),
        count(&dbs.payments, DEAD),
    )?;
    Ok(Progress {
        non_final_orders: by_status.iter().map(|(_, n)| n).sum(),
        outbox_backlog: outbox_o + outbox_i + outbox_p,
        orders_by_status: by_status.into_iter().collect(),
        stock: stock.into_iter().collect(),
        dead_letters: dead_o + dead_i + dead_p,
    })
}

/// For every final order: (created_at, milliseconds from created_at to finalized_at), ordered
/// by created_at.
pub async fn e2e_latencies(dbs: &Databases) -> anyhow::Result<Vec<(DateTime<Utc>, f64)>> {
    Ok(sqlx::query_as(
        "SELECT created_at, \
                (EXTRACT(EPOCH FROM (finalized_at - created_at)) * 1000)::float8 \
         FROM orders WHERE finalized_at IS NOT NULL ORDER BY created_at",
    )
    .fetch_all(&dbs.orders)
    .await?)
}
