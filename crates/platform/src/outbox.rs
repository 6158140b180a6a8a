//! The transactional outbox: events are written in the transaction of the state change they
//! announce, and a relay publishes them to JetStream, deleting rows only after the broker's ack.
//!
//! A crash between publish and delete re-publishes the same event id (deduplicated by the
//! broker's `Nats-Msg-Id` window and by the consumers' inbox); it never loses one.

use crate::broker::Topology;
use crate::envelope::{EnvelopeError, TraceContext};
use crate::events::Event;
use async_nats::jetstream::{self, message::PublishMessage};
use futures::future::try_join_all;
use sqlx::{PgPool, Postgres, Transaction};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Encode(#[from] EnvelopeError),
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("publish to JetStream failed: {0}")]
    Publish(String),
}

/// Writes an event into the outbox. Taking a `Transaction` (not a connection or pool) makes it
/// impossible to write an event outside the transaction of the change it announces.
pub async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    topology: &Topology,
    event: &Event,
    trace: &TraceContext,
) -> Result<Uuid, OutboxError> {
    let envelope = event.into_envelope(trace.clone())?;
    let bytes = envelope.encode()?;
    sqlx::query("INSERT INTO outbox (event_id, subject, envelope) VALUES ($1, $2, $3)")
        .bind(envelope.id)
        .bind(topology.subject_of(event))
        .bind(bytes)
        .execute(&mut **tx)
        .await?;
    Ok(envelope.id)
}

/// Wakes the relay right after a commit that wrote outbox rows, so it need not poll hard.
#[derive(Debug, Clone, Default)]
pub struct OutboxSignal(Arc<Notify>);

impl OutboxSignal {
    pub fn notify(&self) {
        self.0.notify_one();
    }

    async fn notified(&self) {
        self.0.notified().await
    }
}

/// Publishes pending outbox rows in batches. Safe with several instances on one database:
/// rows are claimed with `FOR UPDATE SKIP LOCKED`, so each row is in flight in one relay at a time.
#[derive(Clone)]
pub struct OutboxRelay {
    pool: PgPool,
    jetstream: jetstream::Context,
    signal: OutboxSignal,
    batch_size: i64,
    poll_interval: Duration,
}

impl OutboxRelay {
    pub fn new(
        pool: PgPool,
        jetstream: jetstream::Context,
        signal: OutboxSignal,
        batch_size: i64,
        poll_interval: Duration,
    ) -> Self {
        OutboxRelay {
            pool,
            jetstream,
            signal,
            batch_size,
            poll_interval,
        }
    }

    /// Claims one batch, publishes it with all acks awaited together, then deletes it.
    /// Returns how many events were published.
    pub async fn publish_batch(&self) -> Result<usize, OutboxError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, Uuid, String, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, event_id, subject, envelope FROM outbox
             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut acks = Vec::with_capacity(rows.len());
        for (_, event_id, subject, envelope) in &rows {
            let message = PublishMessage::build()
                .payload(envelope.clone().into())
                .message_id(event_id.to_string());
            let ack = self
                .jetstream
                .send_publish(subject.clone(), message)
                .await
                .map_err(|e| OutboxError::Publish(e.to_string()))?;
            acks.push(ack.into_future());
        }
        // Dropping the transaction on error rolls back: the rows stay and are published again.
        let acked = try_join_all(acks)
            .await
            .map_err(|e| OutboxError::Publish(e.to_string()))?;
        let duplicates = acked.iter().filter(|a| a.duplicate).count();
        let seqs: Vec<i64> = rows.iter().map(|(seq, ..)| *seq).collect();
        sqlx::query("DELETE FROM outbox WHERE seq = ANY($1)")
            .bind(&seqs)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        metrics::counter!("outbox_published_total").increment(rows.len() as u64);
        if duplicates > 0 {
            metrics::counter!("outbox_republished_total").increment(duplicates as u64);
        }
        Ok(rows.len())
    }

    /// Publishes until the outbox is empty (tests drive the relay with this instead of sleeping).
    pub async fn publish_all_pending(&self) -> Result<usize, OutboxError> {
        let mut total = 0;
        loop {
            let n = self.publish_batch().await?;
            total += n;
            if n == 0 {
                return Ok(total);
            }
        }
    }

    pub async fn backlog(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
    }

    /// Runs until the task is dropped: publish while there is work, sleep until signalled or
    /// the poll interval passes (rows written by other instances), back off while failing.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(100);
        let mut last_gauge = tokio::time::Instant::now();
        loop {
            match self.publish_batch().await {
                Ok(n) => {
                    backoff = Duration::from_millis(100);
                    if last_gauge.elapsed() >= Duration::from_secs(1) {
                        if let Ok(backlog) = self.backlog().await {
                            metrics::gauge!("outbox_backlog").set(backlog as f64);
                        }
                        last_gauge = tokio::time::Instant::now();
                    }
                    if (n as i64) < self.batch_size {
                        let _ =
                            tokio::time::timeout(self.poll_interval, self.signal.notified()).await;
                    }
                }
                Err(error) => {
                    metrics::counter!("outbox_publish_failures_total").increment(1);
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "outbox relay failed; will retry");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
