//! The consumer loop: durable JetStream pull consumers, inbox-deduplicated handling in one
//! database transaction per batch, acks only after commit, dead letters for poison messages.

use crate::broker::Topology;
use crate::config::ConsumerSettings;
use crate::envelope::{Envelope, EnvelopeError};
use crate::events::{Event, Source};
use crate::outbox::{OutboxError, OutboxSignal};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, AckKind};
use futures::StreamExt;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use uuid::Uuid;

/// An event this consumer has not processed before, with the envelope it came in.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub envelope: Envelope,
    pub event: Event,
}

/// A service's reaction to events. It runs inside the consumer's transaction: the effects, the
/// inbox records and any outbox rows of the whole batch commit together or not at all. Batches
/// let a handler use one set-based statement where one statement per event would be needed.
pub trait EventHandler: Send + Sync + 'static {
    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        events: &'a [Incoming],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The message can never succeed (e.g. an event this consumer does not expect).
    #[error("{0}")]
    Permanent(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

impl HandlerError {
    /// Constraint and data errors will fail the same way on every retry; others (connection
    /// loss, serialization failure) may pass later.
    fn is_permanent(&self) -> bool {
        match self {
            HandlerError::Permanent(_) => true,
            HandlerError::Database(e) | HandlerError::Outbox(OutboxError::Database(e)) => e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|code| code.starts_with("23") || code.starts_with("22")),
            HandlerError::Outbox(OutboxError::Encode(_)) => true,
            HandlerError::Outbox(OutboxError::Publish(_)) => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("JetStream error: {0}")]
    JetStream(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Which events a consumer receives: a durable name and the subjects it filters on one stream.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub durable_name: String,
    pub stream: Source,
    pub subject_suffixes: Vec<&'static str>,
}

pub struct EventConsumer<H> {
    name: String,
    consumer: jetstream::consumer::PullConsumer,
    pool: PgPool,
    handler: Arc<H>,
    signal: OutboxSignal,
    settings: ConsumerSettings,
}

impl<H: EventHandler> EventConsumer<H> {
    pub async fn create(
        js: &jetstream::Context,
        topology: &Topology,
        subscription: &Subscription,
        pool: PgPool,
        handler: Arc<H>,
        signal: OutboxSignal,
        settings: ConsumerSettings,
    ) -> Result<Self, ConsumerError> {
        let stream = js
            .get_stream(topology.stream_name(subscription.stream))
            .await
            .map_err(|e| ConsumerError::JetStream(e.to_string()))?;
        let config = pull::Config {
            durable_name: Some(subscription.durable_name.clone()),
            filter_subjects: subscription
                .subject_suffixes
                .iter()
                .map(|s| topology.subject(s))
                .collect(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(settings.ack_wait_secs),
            max_ack_pending: settings.max_ack_pending,
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&subscription.durable_name, config)
            .await
            .map_err(|e| ConsumerError::JetStream(e.to_string()))?;
        Ok(EventConsumer {
            name: subscription.durable_name.clone(),
            consumer,
            pool,
            handler,
            signal,
            settings,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Processes whatever is waiting now and returns how many messages it took (tests drive
    /// consumers with this instead of sleeping).
    pub async fn process_available(&self) -> Result<usize, ConsumerError> {
        let mut total = 0;
        loop {
            let mut batch = self
                .consumer
                .fetch()
                .max_messages(self.settings.batch_size)
                .messages()
                .await
                .map_err(|e| ConsumerError::JetStream(e.to_string()))?;
            let mut messages = Vec::new();
            while let Some(message) = batch.next().await {
                messages.push(message.map_err(|e| ConsumerError::JetStream(e.to_string()))?);
            }
            if messages.is_empty() {
                return Ok(total);
            }
            total += messages.len();
            self.process_batch(messages).await;
        }
    }

    /// Runs until the task is dropped. A broken message stream (broker restart, consumer
    /// deleted) is re-created after a pause rather than ending the loop.
    pub async fn run(&self) {
        let mut pause = Duration::from_millis(200);
        let mut last_prune = tokio::time::Instant::now();
        loop {
            let stream = self
                .consumer
                .stream()
                .max_messages_per_batch(self.settings.batch_size * 2)
                // A short heartbeat: after a broker restart the stream is re-created as soon as
                // a heartbeat is missed, so consumers resume within seconds.
                .heartbeat(Duration::from_secs(2))
                .expires(Duration::from_secs(30))
                .messages()
                .await;
            let stream = match stream {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(consumer = %self.name, %error, "cannot open message stream; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let mut chunks = stream.ready_chunks(self.settings.batch_size);
            while let Some(chunk) = chunks.next().await {
                let mut messages = Vec::with_capacity(chunk.len());
                let mut broken = false;
                for item in chunk {
                    match item {
                        Ok(message) => messages.push(message),
                        Err(error) => {
                            tracing::warn!(consumer = %self.name, %error, "message stream error");
                            broken = true;
                        }
                    }
                }
                if !messages.is_empty() {
                    pause = Duration::from_millis(200);
                    self.process_batch(messages).await;
                }
                if broken {
                    break;
                }
                if last_prune.elapsed() > Duration::from_secs(600) {
                    last_prune = tokio::time::Instant::now();
                    if let Err(error) =
                        prune_inbox(&self.pool, Duration::from_secs(7 * 24 * 3600)).await
                    {
                        tracing::warn!(%error, "inbox pruning failed");
                    }
                }
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Handles the messages taken together: their events are applied in one transaction, or one
    /// by one if that fails, so one bad event cannot hold back the others. A message is acked
    /// once every event in it was applied, found to be a duplicate, or dead-lettered; a message
    /// with an event that failed transiently is nak'ed and comes back (the inbox absorbs the
    /// events of it that were applied).
    async fn process_batch(&self, messages: Vec<jetstream::Message>) {
        let mut items = Vec::with_capacity(messages.len());
        let mut retry: HashSet<usize> = HashSet::new();
        for (index, message) in messages.iter().enumerate() {
            for decoded in decode_message(&message.payload) {
                match decoded {
                    Ok((envelope, event)) => items.push(Decoded {
                        message: index,
                        envelope,
                        event,
                    }),
                    Err((bytes, error)) => {
                        if !self.dead_letter(message, &bytes, &error.to_string()).await {
                            retry.insert(index);
                        }
                    }
                }
            }
        }
        if !items.is_empty() {
            if let Err(error) = self.apply(&items).await {
                if items.len() > 1 {
                    tracing::warn!(consumer = %self.name, %error, size = items.len(), "batch failed; retrying its events one by one");
                }
                for (position, item) in items.iter().enumerate() {
                    if let Err(error) = self.apply(std::slice::from_ref(item)).await {
                        let message = &messages[item.message];
                        let deliveries = message.info().map(|i| i.delivered).unwrap_or(1);
                        if error.is_permanent() || deliveries >= self.settings.max_deliveries {
                            let reason = format!(
                                "{} (after {deliveries} deliveries): {error}",
                                item.envelope.event_type
                            );
                            let bytes = item.envelope.encode().unwrap_or_default();
                            if !self.dead_letter(message, &bytes, &reason).await {
                                retry.insert(item.message);
                            }
                        } else {
                            // A transient failure (database or broker away) would most likely hit
                            // every event after it too: redeliver them all later instead of
                            // waiting out one timeout per event now.
                            tracing::warn!(consumer = %self.name, order_id = %item.envelope.aggregate_id, %error, deliveries, "event failed; it and the rest of the batch will be redelivered");
                            retry.extend(items[position..].iter().map(|rest| rest.message));
                            break;
                        }
                    }
                }
            }
        }
        for (index, message) in messages.iter().enumerate() {
            let deliveries = message.info().map(|i| i.delivered).unwrap_or(1);
            if deliveries > 1 {
                metrics::counter!("consumer_redelivered_total", "consumer" => self.name.clone())
                    .increment(1);
            }
            // A lost ack or nak only causes a redelivery, which the inbox absorbs.
            let sent = if retry.contains(&index) {
                message
                    .ack_with(AckKind::Nak(Some(retry_delay(deliveries))))
                    .await
            } else {
                message.ack().await
            };
            if let Err(error) = sent {
                tracing::warn!(consumer = %self.name, %error, "ack failed");
            }
        }
    }

    async fn apply(&self, batch: &[Decoded]) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<Uuid> = batch.iter().map(|d| d.envelope.id).collect();
        let fresh: HashSet<Uuid> = sqlx::query_scalar(
            "INSERT INTO inbox (consumer, message_id) SELECT $1, unnest($2::uuid[])
             ON CONFLICT DO NOTHING RETURNING message_id",
        )
        .bind(&self.name)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let mut applied = HashSet::with_capacity(fresh.len());
        let mut incoming = Vec::with_capacity(fresh.len());
        for item in batch {
            let id = item.envelope.id;
            if !fresh.contains(&id) || !applied.insert(id) {
                metrics::counter!("consumer_duplicates_total", "consumer" => self.name.clone())
                    .increment(1);
                tracing::debug!(consumer = %self.name, event_id = %id, "duplicate event ignored");
                continue;
            }
            incoming.push(Incoming {
                envelope: item.envelope.clone(),
                event: item.event.clone(),
            });
        }
        if !incoming.is_empty() {
            let span = tracing::info_span!("events", consumer = %self.name, batch = incoming.len());
            self.handler
                .handle_batch(&mut tx, &incoming)
                .instrument(span)
                .await?;
        }
        tx.commit().await?;
        self.signal.notify();
        metrics::counter!("consumer_processed_total", "consumer" => self.name.clone())
            .increment(batch.len() as u64);
        Ok(())
    }

    /// Parks an event (or an undecodable message) with its reason. Returns false if the record
    /// could not be written: the message is then not acked and comes back, so a poison message
    /// is never silently dropped.
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        payload: &[u8],
        reason: &str,
    ) -> bool {
        let deliveries = message.info().map(|i| i.delivered).unwrap_or(1);
        let message_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned());
        let recorded = sqlx::query(
            "INSERT INTO dead_letters (consumer, subject, message_id, deliveries, reason, payload)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&self.name)
        .bind(message.subject.as_str())
        .bind(message_id)
        .bind(deliveries)
        .bind(reason)
        .bind(payload)
        .execute(&self.pool)
        .await;
        match recorded {
            Ok(_) => {
                metrics::counter!("consumer_dead_lettered_total", "consumer" => self.name.clone())
                    .increment(1);
                tracing::error!(consumer = %self.name, subject = %message.subject, reason, "event dead-lettered");
                true
            }
            Err(error) => {
                tracing::warn!(consumer = %self.name, %error, "cannot record dead letter; message will be redelivered");
                false
            }
        }
    }
}

struct Decoded {
    /// Index of the broker message the event came in.
    message: usize,
    envelope: Envelope,
    event: Event,
}

type Undecodable = (Vec<u8>, EnvelopeError);

/// The events of one broker message: a single envelope, or a JSON array of envelopes packed by
/// the relay. Each element decodes (or fails) on its own, so one bad event does not take its
/// neighbours down with it.
fn decode_message(payload: &[u8]) -> Vec<Result<(Envelope, Event), Undecodable>> {
    let decode_one = |bytes: &[u8]| {
        Envelope::decode(bytes)
            .and_then(|envelope| Event::from_envelope(&envelope).map(|event| (envelope, event)))
            .map_err(|error| (bytes.to_vec(), error))
    };
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'[') {
        return vec![decode_one(payload)];
    }
    match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(payload) {
        Ok(elements) => elements
            .into_iter()
            .map(|raw| decode_one(raw.get().as_bytes()))
            .collect(),
        Err(error) => vec![Err((payload.to_vec(), EnvelopeError::Malformed(error)))],
    }
}

/// Redelivery delay growing with the number of deliveries: 100 ms, 200 ms, … up to 30 s.
pub fn retry_delay(deliveries: i64) -> Duration {
    let exponent = deliveries.clamp(1, 20) as u32 - 1;
    Duration::from_millis(100u64.saturating_mul(1 << exponent.min(16))).min(Duration::from_secs(30))
}

/// Inbox rows must outlive the broker's duplicate window and any redelivery; after that they go.
pub async fn prune_inbox(pool: &PgPool, older_than: Duration) -> Result<u64, sqlx::Error> {
    let seconds = older_than.as_secs_f64();
    let done =
        sqlx::query("DELETE FROM inbox WHERE processed_at < now() - make_interval(secs => $1)")
            .bind(seconds)
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}

/// A dead letter as an operator sees it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub consumer: String,
    pub subject: String,
    pub message_id: Option<String>,
    pub deliveries: i64,
    pub reason: String,
    pub failed_at: chrono::DateTime<chrono::Utc>,
}

pub async fn list_dead_letters(pool: &PgPool, limit: i64) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, consumer, subject, message_id, deliveries, reason, failed_at
         FROM dead_letters ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope_json(order: u8) -> String {
        let event = Event::OrderCreated(crate::events::OrderCreated {
            order_id: Uuid::from_bytes([order; 16]),
            user_id: 1,
            product_id: 1,
            quantity: 1,
        });
        String::from_utf8(
            event
                .into_envelope(Default::default())
                .unwrap()
                .encode()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_packed_message_yields_each_event_and_isolates_a_bad_one() {
        let payload = format!(
            "[{}, {{\"id\": 1}}, {}]",
            envelope_json(1),
            envelope_json(2)
        );
        let decoded = decode_message(payload.as_bytes());
        assert_eq!(decoded.len(), 3);
        assert!(decoded[0].is_ok() && decoded[2].is_ok());
        let (bytes, error) = decoded[1].as_ref().unwrap_err();
        assert_eq!(bytes, b"{\"id\": 1}");
        assert!(matches!(error, EnvelopeError::Malformed(_)));
    }

    #[test]
    fn a_single_envelope_and_garbage_decode_as_one_item() {
        assert!(decode_message(envelope_json(3).as_bytes())[0].is_ok());
        let garbage = decode_message(b"[not json");
        assert_eq!(garbage.len(), 1);
        assert!(garbage[0].is_err());
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert_eq!(retry_delay(1), Duration::from_millis(100));
        assert_eq!(retry_delay(2), Duration::from_millis(200));
        assert_eq!(retry_delay(4), Duration::from_millis(800));
        assert_eq!(retry_delay(50), Duration::from_secs(30));
        assert_eq!(retry_delay(0), Duration::from_millis(100));
    }
}

/// A consumer seen without its handler type, so an application can hold several and tests can
/// drive them.
pub trait BackgroundConsumer: Send + Sync {
    fn name(&self) -> &str;
    fn process_available(&self) -> futures::future::BoxFuture<'_, Result<usize, ConsumerError>>;
    fn run(self: Arc<Self>) -> futures::future::BoxFuture<'static, ()>;
}

impl<H: EventHandler> BackgroundConsumer for EventConsumer<H> {
    fn name(&self) -> &str {
        &self.name
    }

    fn process_available(&self) -> futures::future::BoxFuture<'_, Result<usize, ConsumerError>> {
        Box::pin(EventConsumer::process_available(self))
    }

    fn run(self: Arc<Self>) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move { EventConsumer::run(&self).await })
    }
}
