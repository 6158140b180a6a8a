//! The three service databases as the harness reads them while a run goes on: progress
//! (orders by status, stock, outbox rows, dead letters), the oldest open saga, and after the
//! run the final orders' timestamps.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};

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

/// A cheap snapshot of how far a run has got, for polling during the run and the drain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Orders not final (PENDING).
    pub non_final_orders: i64,
    /// Outbox rows not yet published, summed over the three DBs.
    pub outbox_backlog: i64,
    /// "PENDING", "COMPLETED", "FAILED:OUT_OF_STOCK", … → count.
    pub orders_by_status: BTreeMap<String, i64>,
    /// Product id → units on hand.
    pub stock: BTreeMap<i64, i64>,
    /// Dead-letter records, summed over the three DBs.
    pub dead_letters: i64,
}

/// How much of the orders table a progress sample reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every order, by status and failure reason (a full scan: fine for the seed run's
    /// quarter million orders, the audit and the drain).
    AllOrders,
    /// Only the non-final orders, through the `orders_open` partial index, so a sample stays
    /// cheap on a table of millions of rows (capacity runs); `orders_by_status` then holds
    /// PENDING only.
    OpenOrders,
}

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// A snapshot for polling once a second: COUNT / GROUP BY queries only.
pub async fn progress(dbs: &Databases, scope: Scope) -> anyhow::Result<Progress> {
    const DEAD: &str = "SELECT count(*) FROM dead_letters WHERE status = 'open'";
    // Both queries imply the predicate of the orders_open partial index where they filter.
    let by_status_sql = match scope {
        Scope::AllOrders => {
            "SELECT status, failure_reason, count(*) FROM orders GROUP BY status, failure_reason"
        }
        Scope::OpenOrders => {
            "SELECT status, NULL::text, count(*) FROM orders \
             WHERE status = 'PENDING' GROUP BY status"
        }
    };
    let (by_status, stock, outbox_backlog, dead_o, dead_i, dead_p) = tokio::try_join!(
        async {
            Ok::<Vec<(String, Option<String>, i64)>, anyhow::Error>(
                sqlx::query_as(by_status_sql).fetch_all(&dbs.orders).await?,
            )
        },
        async {
            Ok::<Vec<(i64, i64)>, anyhow::Error>(
                sqlx::query_as("SELECT id, stock FROM products")
                    .fetch_all(&dbs.inventory)
                    .await?,
            )
        },
        outbox_rows(dbs),
        count(&dbs.orders, DEAD),
        count(&dbs.inventory, DEAD),
        count(&dbs.payments, DEAD),
    )?;
    let mut orders_by_status = BTreeMap::new();
    let mut non_final_orders = 0;
    for (status, reason, n) in by_status {
        if status == "PENDING" {
            non_final_orders += n;
        }
        let key = match reason {
            Some(r) => format!("{status}:{r}"),
            None => status,
        };
        *orders_by_status.entry(key).or_default() += n;
    }
    Ok(Progress {
        non_final_orders,
        outbox_backlog,
        orders_by_status,
        stock: stock.into_iter().collect(),
        dead_letters: dead_o + dead_i + dead_p,
    })
}

/// Outbox rows not yet published, summed over the three databases.
pub async fn outbox_rows(dbs: &Databases) -> anyhow::Result<i64> {
    const OUTBOX: &str = "SELECT count(*) FROM outbox";
    let (o, i, p) = tokio::try_join!(
        count(&dbs.orders, OUTBOX),
        count(&dbs.inventory, OUTBOX),
        count(&dbs.payments, OUTBOX),
    )?;
    Ok(o + i + p)
}

/// Seconds since the oldest open saga began (0 when none is open), as the order service
/// defines one (its `open_sagas` view). An index lookup (`orders_open`).
pub async fn oldest_open_order_s(dbs: &Databases) -> anyhow::Result<f64> {
    let age: f64 = sqlx::query_scalar(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 FROM open_sagas",
    )
    .fetch_one(&dbs.orders)
    .await?;
    Ok(age.max(0.0))
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

/// Every final order: its id, its status as `orders_by_status` keys it (`FAILED:<reason>`), and
/// its end-to-end latency (created → final) in ms.
pub async fn final_orders(dbs: &Databases) -> anyhow::Result<Vec<(uuid::Uuid, String, f64)>> {
    sqlx::query_as(
        "SELECT id, status || COALESCE(':' || failure_reason, ''), \
                (EXTRACT(EPOCH FROM (finalized_at - created_at)) * 1000)::float8 \
         FROM orders WHERE finalized_at IS NOT NULL",
    )
    .fetch_all(&dbs.orders)
    .await
    .context("reading the final orders")
}

/// (created_at, finalized_at, COMPLETED?) of every final order.
pub async fn finalized_orders(
    dbs: &Databases,
) -> anyhow::Result<Vec<(DateTime<Utc>, DateTime<Utc>, bool)>> {
    sqlx::query_as(
        "SELECT created_at, finalized_at, status = 'COMPLETED' FROM orders \
         WHERE finalized_at IS NOT NULL",
    )
    .fetch_all(&dbs.orders)
    .await
    .context("reading finalized orders")
}

/// PostgreSQL's durability settings in force, e.g. `fsync=on, synchronous_commit=on`.
pub async fn durability(dbs: &Databases) -> String {
    let show = |name: &'static str| async move {
        sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
            .fetch_one(&dbs.orders)
            .await
            .unwrap_or_else(|_| "?".into())
    };
    let (fsync, synchronous_commit) = tokio::join!(show("fsync"), show("synchronous_commit"));
    format!("PostgreSQL fsync={fsync}, synchronous_commit={synchronous_commit}")
}
