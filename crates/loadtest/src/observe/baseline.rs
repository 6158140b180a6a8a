//! The naive baseline: what one PostgreSQL does when every order is one transaction that updates
//! the same hot stock row.
//!
//! On the same server as the system under test, in a fresh database `ordersys_baseline`, with a
//! `products` row holding a large stock and an `orders` table shaped like the order service's,
//! `N` connections each loop for a fixed time over
//!
//! ```sql
//! BEGIN;
//! UPDATE products SET stock = stock - 1 WHERE id = 1 AND stock >= 1;
//! INSERT INTO orders (id, user_id, product_id, quantity, status, amount_cents) VALUES (…);
//! COMMIT;
//! ```
//!
//! one round trip per statement, as a naive service would. Every committed transaction is one
//! order; the figure is committed transactions per second for each concurrency, and the best of
//! them is what the capacity report divides our end-to-end completed rate by. Afterwards the
//! stock and the order count are checked against the commits, so the figure is of correct work.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;

pub use crate::plan::capacity::BaselineSettings;

/// The database the baseline creates (and drops first) on the stack's PostgreSQL.
pub const BASELINE_DB: &str = "ordersys_baseline";
/// Units the hot row starts with: far more than any run can sell.
const INITIAL_STOCK: i64 = 1_000_000_000;
const PRODUCT_ID: i64 = 1;
const PRICE_CENTS: i64 = 1000;

/// One concurrency level's result.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BaselineRun {
    pub concurrency: usize,
    /// Committed transactions (= orders).
    pub transactions: u64,
    /// Transactions that failed (none expected).
    pub errors: u64,
    /// From the common start until the last connection finished its last transaction.
    pub seconds: f64,
    pub tps: f64,
    /// Latency of one whole transaction (BEGIN … COMMIT), milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Stock taken == orders inserted == commits.
    pub consistent: bool,
}

/// Every level, the best, and what the server was running with.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BaselineReport {
    pub runs: Vec<BaselineRun>,
    pub best_tps: f64,
    pub best_concurrency: usize,
    /// `SHOW server_version`, `fsync`, `synchronous_commit`, so the figure says what it measured.
    pub server_version: String,
    pub fsync: String,
    pub synchronous_commit: String,
}

impl BaselineReport {
    /// The level with the most transactions per second.
    fn with_best(mut self) -> BaselineReport {
        if let Some(best) = self.runs.iter().max_by(|a, b| a.tps.total_cmp(&b.tps)) {
            self.best_tps = best.tps;
            self.best_concurrency = best.concurrency;
        }
        self
    }

    /// A plain-text table for the terminal and the docs.
    pub fn table(&self) -> String {
        let mut out = format!(
            "  naive baseline (PostgreSQL {}, fsync={}, synchronous_commit={}): one transaction per order, \
             UPDATE of one hot stock row + INSERT\n  {:>11}  {:>8}  {:>9}  {:>8}  {:>8}  {}\n",
            self.server_version,
            self.fsync,
            self.synchronous_commit,
            "connections",
            "tps",
            "commits",
            "p50 ms",
            "p99 ms",
            "consistent"
        );
        for run in &self.runs {
            out.push_str(&format!(
                "  {:>11}  {:>8.0}  {:>9}  {:>8.2}  {:>8.2}  {}\n",
                run.concurrency,
                run.tps,
                run.transactions,
                run.p50_ms,
                run.p99_ms,
                if run.consistent { "yes" } else { "NO" }
            ));
        }
        out.push_str(&format!(
            "  best: {:.0} tps with {} connection(s)\n",
            self.best_tps, self.best_concurrency
        ));
        out
    }
}

/// Drops and recreates [`BASELINE_DB`] on the server of `admin_url`, measures every concurrency
/// of `settings` one after the other, and drops the database again.
pub async fn measure(admin_url: &str, settings: &BaselineSettings) -> Result<BaselineReport> {
    if settings.concurrency.is_empty() || settings.concurrency.contains(&0) {
        bail!("the baseline needs concurrencies >= 1");
    }
    stack::drop_database(admin_url, BASELINE_DB).await?;
    let url = stack::create_database(admin_url, BASELINE_DB).await?;
    let result = measure_in(&url, settings).await;
    if let Err(e) = stack::drop_database(admin_url, BASELINE_DB).await {
        eprintln!("warning: dropping {BASELINE_DB}: {e:#}");
    }
    result
}

async fn measure_in(url: &str, settings: &BaselineSettings) -> Result<BaselineReport> {
    let mut admin = PgConnection::connect(url)
        .await
        .with_context(|| format!("connecting to {}", stack::redact(url)))?;
    sqlx::raw_sql(
        "CREATE TABLE products (
             id    BIGINT PRIMARY KEY,
             stock BIGINT NOT NULL CHECK (stock >= 0)
         );
         CREATE TABLE orders (
             id           UUID        PRIMARY KEY,
             user_id      BIGINT      NOT NULL,
             product_id   BIGINT      NOT NULL,
             quantity     INTEGER     NOT NULL,
             status       TEXT        NOT NULL,
             amount_cents BIGINT      NOT NULL,
             created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
         );",
    )
    .execute(&mut admin)
    .await
    .context("creating the baseline tables")?;
    let show = |name: &'static str| format!("SHOW {name}");
    let mut report = BaselineReport {
        server_version: sqlx::query_scalar(&show("server_version"))
            .fetch_one(&mut admin)
            .await?,
        fsync: sqlx::query_scalar(&show("fsync"))
            .fetch_one(&mut admin)
            .await?,
        synchronous_commit: sqlx::query_scalar(&show("synchronous_commit"))
            .fetch_one(&mut admin)
            .await?,
        ..BaselineReport::default()
    };
    for &concurrency in &settings.concurrency {
        // One statement each: VACUUM cannot run in the implicit transaction of a batch.
        for sql in ["TRUNCATE orders", "DELETE FROM products", "VACUUM products"] {
            sqlx::raw_sql(sql)
                .execute(&mut admin)
                .await
                .with_context(|| format!("resetting the baseline tables: {sql}"))?;
        }
        sqlx::query("INSERT INTO products (id, stock) VALUES ($1, $2)")
            .bind(PRODUCT_ID)
            .bind(INITIAL_STOCK)
            .execute(&mut admin)
            .await?;
        // Start every level from a clean checkpoint, so one level does not pay for another's
        // dirty pages (needs superuser; without it the levels just share the checkpoints).
        let _ = sqlx::raw_sql("CHECKPOINT").execute(&mut admin).await;
        let mut run = run_level(url, concurrency, settings.duration).await?;
        let (stock, orders): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT stock FROM products WHERE id = 1), (SELECT count(*) FROM orders)",
        )
        .fetch_one(&mut admin)
        .await?;
        run.consistent = INITIAL_STOCK - stock == orders && orders as u64 == run.transactions;
        println!(
            "  baseline {concurrency:>2} connection(s): {:.0} tps ({} commits in {:.1} s{})",
            run.tps,
            run.transactions,
            run.seconds,
            if run.consistent { "" } else { ", INCONSISTENT" }
        );
        report.runs.push(run);
    }
    admin.close().await.ok();
    Ok(report.with_best())
}

/// `concurrency` connections loop from a common start for `duration`.
async fn run_level(url: &str, concurrency: usize, duration: Duration) -> Result<BaselineRun> {
    let mut connections = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        connections.push(PgConnection::connect(url).await?);
    }
    // A common start a little ahead, so no connection begins while others are still connecting.
    let start = Instant::now() + Duration::from_millis(200);
    let deadline = start + duration;
    let workers: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(worker, mut conn)| {
            tokio::spawn(async move {
                tokio::time::sleep_until(start).await;
                let mut latencies_us: Vec<u64> = Vec::new();
                let mut errors = 0u64;
                let mut n = 0i64;
                while Instant::now() < deadline {
                    let began = Instant::now();
                    n += 1;
                    match one_order(&mut conn, worker as i64 * 1_000_000 + n).await {
                        Ok(()) => latencies_us.push(began.elapsed().as_micros() as u64),
                        Err(_) => errors += 1,
                    }
                }
                conn.close().await.ok();
                (latencies_us, errors, Instant::now())
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let (mut errors, mut last) = (0, start);
    for worker in workers {
        let (mut mine, failed, finished) = worker.await.context("a baseline worker panicked")?;
        latencies.append(&mut mine);
        errors += failed;
        last = last.max(finished);
    }
    let seconds = (last - start).as_secs_f64();
    let summary = crate::loadgen::stats::latency_summary_from_millis(
        latencies.iter().map(|&us| us as f64 / 1000.0),
    );
    Ok(BaselineRun {
        concurrency,
        transactions: latencies.len() as u64,
        errors,
        seconds,
        tps: tps(latencies.len() as u64, seconds),
        p50_ms: summary.p50_ms,
        p99_ms: summary.p99_ms,
        consistent: false,
    })
}

/// One naive order: four round trips, one commit, the hot row locked from the UPDATE to COMMIT.
async fn one_order(conn: &mut PgConnection, n: i64) -> Result<()> {
    let mut tx = conn.begin().await?;
    let updated = sqlx::query("UPDATE products SET stock = stock - 1 WHERE id = $1 AND stock >= 1")
        .bind(PRODUCT_ID)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if updated != 1 {
        bail!("out of stock");
    }
    sqlx::query(
        "INSERT INTO orders (id, user_id, product_id, quantity, status, amount_cents) \
         VALUES ($1, $2, $3, 1, 'COMPLETED', $4)",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(n % 1000 + 1)
    .bind(PRODUCT_ID)
    .bind(PRICE_CENTS)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

fn tps(transactions: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        transactions as f64 / seconds
    } else {
        0.0
    }
}

/// Parses `1,8,32`.
pub fn parse_concurrency(text: &str) -> Result<Vec<usize>> {
    let levels = text
        .split(',')
        .map(|part| {
            part.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n >= 1)
                .with_context(|| format!("bad concurrency {part:?} (write e.g. 1,8,32)"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_is_the_highest_tps() {
        let run = |concurrency, tps| BaselineRun {
            concurrency,
            tps,
            ..BaselineRun::default()
        };
        let report = BaselineReport {
            runs: vec![run(1, 3900.0), run(8, 4100.0), run(32, 2400.0)],
            ..BaselineReport::default()
        }
        .with_best();
        assert_eq!((report.best_tps, report.best_concurrency), (4100.0, 8));
        assert!(report
            .table()
            .contains("best: 4100 tps with 8 connection(s)"));
        assert_eq!(BaselineReport::default().with_best().best_tps, 0.0);
    }

    #[test]
    fn parses_concurrency_lists() {
        assert_eq!(parse_concurrency("1,8,32").expect("valid"), vec![1, 8, 32]);
        assert_eq!(parse_concurrency(" 4 ").expect("valid"), vec![4]);
        assert!(parse_concurrency("1,0").is_err());
        assert!(parse_concurrency("1,,2").is_err());
    }

    #[test]
    fn tps_of_nothing_is_zero() {
        assert_eq!(tps(100, 0.0), 0.0);
        assert_eq!(tps(300, 2.0), 150.0);
    }
}
