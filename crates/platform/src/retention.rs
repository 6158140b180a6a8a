//! Retention off the hot path: one worker per service deletes records older than their
//! configured window, in small batches, so that pruning never takes a long lock or competes with
//! a consumer's transaction. Why each window is safe: docs/architecture.md, "Retention".

use crate::config::RetentionSettings;
use crate::supervisor::{Round, Worker, WorkerError, WorkerStatus};
use futures::future::BoxFuture;
use sqlx::PgPool;
use std::time::Duration;

/// The first pause before a failed round is tried again.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Rows of `table` whose `column` is older than `max_age` (and that match `condition`, an SQL
/// predicate over the table's own columns) are deleted.
#[derive(Debug, Clone)]
pub struct RetentionRule {
    pub table: &'static str,
    pub column: &'static str,
    pub condition: &'static str,
    pub max_age: Duration,
}

impl RetentionRule {
    /// The rules every service has: the inbox, and dead letters an operator resolved.
    pub fn messaging(settings: &RetentionSettings) -> Vec<RetentionRule> {
        vec![
            RetentionRule {
                table: "inbox",
                column: "processed_at",
                condition: "true",
                max_age: settings.inbox_max_age,
            },
            RetentionRule {
                table: "dead_letters",
                column: "resolved_at",
                condition: "status <> 'open'",
                max_age: settings.resolved_dead_letters_max_age,
            },
        ]
    }

    fn delete_statement(&self) -> String {
        // One batch through the index on the time column; ctid targets exactly those rows.
        format!(
            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM {table}
                 WHERE {column} < now() - make_interval(secs => $1) AND ({condition})
                 LIMIT $2))",
            table = self.table,
            column = self.column,
            condition = self.condition,
        )
    }
}

pub struct Retention {
    pool: PgPool,
    rules: Vec<RetentionRule>,
    interval: Duration,
    batch_size: i64,
    status: WorkerStatus,
}

impl Retention {
    pub fn new(pool: PgPool, settings: &RetentionSettings, rules: Vec<RetentionRule>) -> Self {
        Retention {
            pool,
            rules,
            interval: settings.interval.max(Duration::from_secs(1)),
            batch_size: settings.batch_size.max(1),
            status: WorkerStatus::new("retention"),
        }
    }

    /// Deletes everything past its window, batch by batch; returns the rows deleted per table.
    pub async fn prune(&self) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
        let mut pruned = Vec::with_capacity(self.rules.len());
        for rule in &self.rules {
            let statement = rule.delete_statement();
            let mut total = 0;
            loop {
                let deleted = {
                    let _busy = self.status.busy();
                    sqlx::query(&statement)
                        .bind(rule.max_age.as_secs_f64())
                        .bind(self.batch_size)
                        .execute(&self.pool)
                        .await?
                        .rows_affected()
                };
                total += deleted;
                if deleted < self.batch_size as u64 {
                    break;
                }
                // Leave room for the hot path between batches.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if total > 0 {
                metrics::counter!("retention_pruned_total", "table" => rule.table).increment(total);
                tracing::info!(
                    table = rule.table,
                    rows = total,
                    "pruned records past retention"
                );
            }
            pruned.push((rule.table, total));
        }
        Ok(pruned)
    }
}

/// Prunes at once, then every interval. A failed round is tried again sooner (1 s, doubling up to
/// the interval): its failure counts against `/ready` only while it lasts, so a blip must be seen
/// to have passed before the next full interval.
impl Worker for Retention {
    fn status(&self) -> &WorkerStatus {
        &self.status
    }

    fn round(&self) -> BoxFuture<'_, Result<Round, WorkerError>> {
        Box::pin(async move {
            let pruned = self.prune().await.inspect_err(|error| {
                tracing::warn!(%error, "retention pruning failed; will retry");
            })?;
            self.status.progress();
            let rows: u64 = pruned.iter().map(|(_, rows)| rows).sum();
            // Every table pruned down to its window: nothing more is waiting until time passes.
            Ok(Round {
                done: rows as usize,
                more: false,
            })
        })
    }

    fn idle(&self) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(self.interval))
    }

    fn retry_after(&self, failures: u32) -> Duration {
        let exponent = failures.clamp(1, 20) - 1;
        FIRST_RETRY.saturating_mul(1 << exponent).min(self.interval)
    }
}
