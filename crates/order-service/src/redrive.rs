//! The re-drive: the order service owns the saga, so it notices an order that has waited too
//! long for its next step and asks again. Messages can be lost outside our control (a stream
//! deleted or purged, a broker store lost, an event dead-lettered and fixed later); the re-drive
//! is what brings such an order to a final status without an operator.
//!
//! The question asked again is the order's `OrderCreated`, published with a new event id (so no
//! inbox swallows it). Every service answers it from its own records — inventory with the
//! reservation or rejection it recorded, payment with the charge it recorded — so a re-drive
//! never applies anything twice; it only makes the answers travel again, up to the step that
//! was missing. It works in bounded batches at a bounded rate, and each order waits longer
//! before every further re-drive, so a long outage ends in a steady catch-up, not a storm.

use crate::config::RedriveSettings;
use crate::orders;
use futures::future::BoxFuture;
use platform::broker::Topology;
use platform::envelope::TraceContext;
use platform::events::Event;
use platform::outbox::{self, OutboxError, OutboxSignal};
use platform::supervisor::{Round, Worker, WorkerError, WorkerStatus};
use platform::telemetry::spans::{self, Link};
use sqlx::PgPool;
use std::time::Duration;
use tracing::Span;

#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

pub struct Redrive {
    pool: PgPool,
    topology: Topology,
    signal: OutboxSignal,
    settings: RedriveSettings,
    status: WorkerStatus,
}

impl Redrive {
    pub fn new(
        pool: PgPool,
        topology: Topology,
        signal: OutboxSignal,
        settings: RedriveSettings,
    ) -> Self {
        Redrive {
            pool,
            topology,
            signal,
            settings,
            status: WorkerStatus::new("redrive"),
        }
    }

    /// Re-drives one batch of the orders that are due; returns how many.
    pub async fn redrive_due(&self) -> Result<usize, RedriveError> {
        let _busy = self.status.busy();
        let mut tx = self.pool.begin().await?;
        let stalled = orders::claim_stalled(
            &mut tx,
            self.settings.after,
            self.settings.max_pause,
            self.settings.batch_size,
        )
        .await?;
        if stalled.is_empty() {
            return Ok(0);
        }
        // Each question starts a new trace, linked to the order's first one: the answers it
        // brings travel in the new trace, and the first one stays as it was.
        let questions: Vec<Span> = stalled
            .iter()
            .map(|order| {
                spans::linked(
                    "redrive",
                    "producer",
                    [Link::Traceparent(order.traceparent.as_deref())],
                )
            })
            .collect();
        let events: Vec<(Event, TraceContext)> = stalled
            .iter()
            .zip(&questions)
            .map(|(order, question)| {
                let asked = orders::NewOrder {
                    user_id: order.user_id,
                    product_id: order.product_id,
                    quantity: order.quantity,
                };
                let trace = TraceContext {
                    request_id: Some("redrive".into()),
                    traceparent: spans::traceparent(question),
                };
                spans::attribute(question, "order_id", order.id);
                (orders::order_created(order.id, asked), trace)
            })
            .collect();
        outbox::enqueue_all(&mut tx, &self.topology, &events).await?;
        tx.commit().await?;
        self.signal.notify();
        metrics::counter!("orders_redriven_total").increment(stalled.len() as u64);
        tracing::warn!(
            orders = stalled.len(),
            first = %stalled[0].id,
            "open orders waited too long; asked their next step again"
        );
        Ok(stalled.len())
    }

    /// Gauges the open sagas: `orders_open_saga_oldest_age_seconds` and
    /// `orders_open_sagas_overdue` (open for longer than the re-drive allows:
    /// [`RedriveSettings::overdue_after`]), which the alert rules read. Every instance reports
    /// the same database.
    pub async fn gauge_open_sagas(&self) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let (oldest, overdue) =
            orders::open_saga_ages(&mut conn, self.settings.overdue_after(), OVERDUE_CAP).await?;
        metrics::gauge!("orders_open_saga_oldest_age_seconds").set(oldest);
        metrics::gauge!("orders_open_sagas_overdue").set(overdue as f64);
        Ok(())
    }
}

/// Overdue sagas are counted up to this many: enough to tell a few from a flood, and the count
/// stays one short index walk however many there are.
const OVERDUE_CAP: i64 = 10_000;

/// A round re-drives one batch of the orders that are due; between rounds the re-drive waits its
/// interval, also after a full batch: the rate is bounded (`RedriveSettings::batch_size`).
impl Worker for Redrive {
    fn status(&self) -> &WorkerStatus {
        &self.status
    }

    fn round(&self) -> BoxFuture<'_, Result<Round, WorkerError>> {
        Box::pin(async move {
            let redriven = self.redrive_due().await?;
            self.gauge_open_sagas().await?;
            self.status.progress();
            Ok(Round {
                done: redriven,
                more: false,
            })
        })
    }

    fn idle(&self) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(
            self.settings.interval.max(Duration::from_millis(1)),
        ))
    }
}
