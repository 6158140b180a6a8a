//! The consumer: durable JetStream pull consumers, inbox-deduplicated handling in one database
//! transaction per batch, acks only after commit, dead letters for messages that can never
//! succeed. It is a worker (`crate::supervisor`): a round takes what is waiting, up to a batch,
//! and processes it; between rounds it waits on a pull request for the next message.
//!
//! What stops a consumer, and what brings it back:
//! - its durable consumer or stream is deleted (or lost with the broker's store): a fetch fails
//!   or the once-a-second sample says "not found"; the consumer reports itself down and attaches
//!   again at its next round, creating the durable consumer with its configured settings;
//! - its durable consumer's settings are changed (a filter that matches nothing reads nothing
//!   and reports no lag): the once-a-second sample finds it and restores them (`durable.rs`);
//! - an event that did not come the way the contract says it travels (a forged type on a
//!   subject its publisher may use, another stream, another order): parked as misrouted,
//!   never applied (`receipt.rs`);
//! - a handler panics: the panic is caught per batch, the batch is retried in halves until the
//!   panicking event stands alone, and an event that keeps panicking is dead-lettered with the
//!   panic message;
//! - the database is away or unavailable (read-only, out of disk, memory or connections: see
//!   `crate::db::errors`), a deadlock, a lock or statement timeout: the events are redelivered
//!   later, without limit and never dead-lettered;
//! - anything else that makes the task end or hang is the supervisor's (`supervisor.rs`).

use crate::broker::Topology;
use crate::config::ConsumerSettings;
use crate::envelope::{Envelope, EnvelopeError};
use crate::events::Event;
use crate::outbox::{OutboxError, OutboxSignal};
use crate::supervisor::{run_until_idle, Round, Worker, WorkerError, WorkerStatus};
use async_nats::jetstream::{self, consumer::PullConsumer, context::ConsumerInfoErrorKind};
use futures::future::BoxFuture;
use futures::StreamExt;
use sqlx::{PgPool, Postgres, Transaction};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

mod batch;
mod durable;
mod receipt;

pub use crate::contract::Subscription;

/// An event this consumer has not processed before, with the envelope it came in (traced, its
/// `trace.traceparent` is this consumer's span for the event: what the handler's replies continue).
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

    /// Whether handling events may write outbox rows. After each batch the consumer wakes the
    /// relay only if so: a handler that never replies would otherwise cost an empty claim
    /// transaction per batch. A `false` that is wrong loses nothing — the relay's poll finds
    /// the rows — it only delays them.
    fn writes_outbox(&self) -> bool {
        true
    }

    /// Whether applying an event again — a redelivery, a duplicate publish — changes nothing,
    /// by the effect's own keys and guards. Such a handler gets every event of a batch (each
    /// event id once) and the consumer writes no inbox row for it: one statement, one row and
    /// its pruning less per event. Honoured only for a handler that emits nothing
    /// ([`EventHandler::writes_outbox`] false): one that answers would answer a copy again, and
    /// the inbox is what stops that.
    fn idempotent(&self) -> bool {
        false
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event can never succeed (e.g. a type this consumer does not expect, a quantity out
    /// of range).
    #[error("{0}")]
    Permanent(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("handler panicked: {0}")]
    Panicked(String),
    /// What the handler read broke an invariant: retried like an unknown error, since another
    /// instance may be mid-change; one that lasts shows as a consumer making no progress.
    #[error("invariant broken: {0}")]
    Invariant(String),
}

impl From<crate::db::QueryError> for HandlerError {
    fn from(error: crate::db::QueryError) -> Self {
        match error {
            crate::db::QueryError::Database(e) => HandlerError::Database(e),
            crate::db::QueryError::Invariant(what) => HandlerError::Invariant(what),
        }
    }
}

/// Why an operator's replay of a dead letter applied nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The event did not come the way the contract says its type travels: never applied.
    #[error("{0}")]
    Misrouted(String),
    #[error(transparent)]
    Failed(#[from] HandlerError),
}

/// What a failed event gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Dead-lettered now: retrying cannot help.
    Permanent,
    /// A bug: retried a few times (it may depend on state), then dead-lettered.
    Panic,
    /// The database cannot be reached: this event and the rest of its batch come back later.
    Unavailable,
    /// Retried later without limit (deadlock, lock or statement timeout, anything unknown).
    Transient,
}

impl HandlerError {
    pub fn failure(&self) -> Failure {
        match self {
            HandlerError::Permanent(_) | HandlerError::Outbox(OutboxError::Encode(_)) => {
                Failure::Permanent
            }
            HandlerError::Panicked(_) => Failure::Panic,
            HandlerError::Database(e) | HandlerError::Outbox(OutboxError::Database(e)) => {
                database_failure(e)
            }
            HandlerError::Outbox(OutboxError::Publish(_)) | HandlerError::Invariant(_) => {
                Failure::Transient
            }
        }
    }
}

/// Data exceptions (22) and integrity violations (23) fail the same way on every retry; a
/// connection that cannot be had will do better later; everything else is retried, so that only
/// a failure known to be permanent ever becomes a dead letter.
fn database_failure(error: &sqlx::Error) -> Failure {
    if crate::db::errors::is_unavailable(error) {
        return Failure::Unavailable;
    }
    match error.as_database_error().and_then(|d| d.code()) {
        Some(code) if code.starts_with("22") || code.starts_with("23") => Failure::Permanent,
        _ => Failure::Transient,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("JetStream error: {0}")]
    JetStream(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

fn jetstream_error(error: impl std::fmt::Display) -> ConsumerError {
    ConsumerError::JetStream(error.to_string())
}

pub struct EventConsumer<H> {
    subscription: Subscription,
    jetstream: jetstream::Context,
    topology: Topology,
    pool: PgPool,
    handler: Arc<H>,
    signal: OutboxSignal,
    settings: ConsumerSettings,
    status: WorkerStatus,
    /// The durable consumer as last found or created; `None` after it was found missing.
    attached: tokio::sync::Mutex<Option<PullConsumer>>,
    receipt: receipt::ReceiptCheck,
    /// The stream sequence up to which the durable consumer had acknowledged everything when it
    /// was last seen with the right settings (`durable::NO_FLOOR`: not seen since attaching).
    verified_floor: AtomicU64,
    /// What [`Worker::idle`] received, for the next round.
    stash: std::sync::Mutex<Vec<jetstream::Message>>,
    /// When the durable consumer was last sampled, and whether the last round found nothing.
    sampled_at: std::sync::Mutex<Option<Instant>>,
    quiet: AtomicBool,
}

/// Everything a consumer is built from.
pub struct ConsumerParts<H> {
    pub jetstream: jetstream::Context,
    pub topology: Topology,
    pub pool: PgPool,
    pub handler: Arc<H>,
    pub signal: OutboxSignal,
    pub settings: ConsumerSettings,
}

impl<H: EventHandler> EventConsumer<H> {
    /// Builds the consumer and attaches it to its durable consumer (creating it if missing).
    pub async fn create(
        subscription: &Subscription,
        parts: ConsumerParts<H>,
    ) -> Result<Self, ConsumerError> {
        let consumer = EventConsumer {
            status: WorkerStatus::new(format!("consumer:{}", subscription.durable_name())),
            receipt: receipt::ReceiptCheck::new(subscription, &parts.topology),
            subscription: *subscription,
            jetstream: parts.jetstream,
            topology: parts.topology,
            pool: parts.pool,
            handler: parts.handler,
            signal: parts.signal,
            settings: parts.settings,
            attached: tokio::sync::Mutex::new(None),
            verified_floor: AtomicU64::new(durable::NO_FLOOR),
            stash: std::sync::Mutex::default(),
            sampled_at: std::sync::Mutex::default(),
            quiet: AtomicBool::new(false),
        };
        // Registered at 0: a misrouted event is rare and alarming, and an alert's `increase()`
        // sees the first one only if the series existed before it.
        metrics::counter!("consumer_misrouted_total", "consumer" => consumer.name().to_owned())
            .increment(0);
        // Not attached yet (the stream's publisher has not created it, or the broker is away):
        // the consumer reports down, `/ready` says so, and its worker keeps attaching.
        if let Err(error) = consumer.attached_consumer().await {
            tracing::warn!(consumer = consumer.name(), %error, "not attached at start; will retry");
        }
        Ok(consumer)
    }

    pub fn name(&self) -> &str {
        self.subscription.durable_name()
    }

    async fn attached_consumer(&self) -> Result<PullConsumer, ConsumerError> {
        let mut attached = self.attached.lock().await;
        if let Some(consumer) = attached.as_ref() {
            return Ok(consumer.clone());
        }
        match self.attach().await {
            Ok(consumer) => {
                *attached = Some(consumer.clone());
                self.status.report_up();
                Ok(consumer)
            }
            Err(error) => {
                self.status
                    .report_down(format!("cannot attach to its durable consumer: {error}"));
                Err(error)
            }
        }
    }

    /// Forgets the durable consumer handle: the next use finds or creates it again.
    async fn detach(&self, reason: String) {
        self.attached.lock().await.take();
        self.forget_position();
        tracing::warn!(consumer = self.name(), %reason, "consumer detached; attaching again");
        self.status.report_down(reason);
    }

    /// One round, the same in production and in tests: attaches if detached; samples the
    /// durable consumer's settings and lag when due; takes what is waiting — what
    /// [`Worker::idle`] received, then as much more as one batch holds, without waiting — and
    /// processes it as one batch.
    pub async fn round(&self) -> Result<Round, ConsumerError> {
        let mut consumer = self.attached_consumer().await?;
        if self.sample_due() {
            self.gauge_dead_letters().await;
            consumer = self.sample(consumer).await?;
        }
        let mut messages = std::mem::take(&mut *self.stash());
        let batch_size = self.settings.batch_size;
        if messages.len() < batch_size {
            if let Err(error) = self.fetch_into(&consumer, batch_size, &mut messages).await {
                self.detach(format!("fetch failed: {error}")).await;
                if messages.is_empty() {
                    return Err(error);
                }
            }
        }
        if messages.is_empty() {
            self.quiet.store(true, Ordering::Relaxed);
            self.status.progress();
            return Ok(Round::default());
        }
        let taken = messages.len();
        self.process_batch(messages).await;
        Ok(Round::of(taken, batch_size))
    }

    /// Adds what is waiting now, up to `batch_size` messages in all.
    async fn fetch_into(
        &self,
        consumer: &PullConsumer,
        batch_size: usize,
        messages: &mut Vec<jetstream::Message>,
    ) -> Result<(), ConsumerError> {
        // The broker answers a fetch at once; one that never answers (a paused or partitioned
        // leader) must not hold the round: what came is kept, and the consumer attaches again.
        let fetch = async {
            let mut fetched = consumer
                .fetch()
                .max_messages(batch_size - messages.len())
                .messages()
                .await
                .map_err(jetstream_error)?;
            while let Some(message) = fetched.next().await {
                messages.push(message.map_err(jetstream_error)?);
            }
            Ok(())
        };
        tokio::time::timeout(FETCH_WAIT, fetch)
            .await
            .unwrap_or_else(|_| Err(jetstream_error("the broker did not answer a fetch")))
    }

    /// A sample of the durable consumer is due a second after the last one, and at the first
    /// round after a quiet one (so every round a test drives after the system settled checks).
    fn sample_due(&self) -> bool {
        let quiet = self.quiet.swap(false, Ordering::Relaxed);
        let mut sampled = self.sampled_at.lock().unwrap_or_else(|e| e.into_inner());
        let due = quiet || sampled.is_none_or(|at| at.elapsed() >= SAMPLE_EVERY);
        if due {
            *sampled = Some(Instant::now());
        }
        due
    }

    /// Gauges the consumer's open dead letters (`dead_letters_open`: each waits for an operator).
    /// Bounded by [`DEAD_LETTERS_WAIT`] so that a busy pool never holds the round; a count
    /// that fails or times out leaves the last value (the database's trouble shows in `/ready`).
    async fn gauge_dead_letters(&self) {
        let count = async {
            let mut conn = self.pool.acquire().await?;
            crate::dead_letters::count_open(&mut conn, self.name()).await
        };
        match tokio::time::timeout(DEAD_LETTERS_WAIT, count).await {
            Ok(Ok(open)) => {
                metrics::gauge!("dead_letters_open", "consumer" => self.name().to_owned())
                    .set(open as f64);
            }
            Ok(Err(error)) => {
                tracing::debug!(consumer = self.name(), %error, "cannot count open dead letters")
            }
            Err(_) => tracing::debug!(consumer = self.name(), "counting dead letters timed out"),
        }
    }

    /// Samples the durable consumer: restores its settings if they drifted (a consumer created
    /// again replaces the one in hand), reports its lag, and notices it gone.
    async fn sample(&self, consumer: PullConsumer) -> Result<PullConsumer, ConsumerError> {
        let info = match tokio::time::timeout(SAMPLE_WAIT, consumer.get_info()).await {
            Ok(Ok(info)) => info,
            Ok(Err(error)) => {
                let gone = matches!(
                    error.kind(),
                    ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                );
                let reason = if gone {
                    format!("durable consumer is gone: {error}")
                } else {
                    format!("cannot check its durable consumer: {error}")
                };
                self.detach(reason).await;
                return Err(jetstream_error(error));
            }
            // The broker is slow: the fetch decides.
            Err(_) => return Ok(consumer),
        };
        let consumer = match self.restore_if_drifted(&info).await {
            Ok(None) => consumer,
            Ok(Some(restored)) => {
                *self.attached.lock().await = Some(restored.consumer.clone());
                restored.consumer
            }
            Err(error) => {
                self.detach(format!("cannot restore its durable consumer: {error}"))
                    .await;
                return Err(error);
            }
        };
        let backlog = info.num_pending + info.num_ack_pending as u64;
        self.status.set_backlog(backlog);
        metrics::gauge!("consumer_lag", "consumer" => self.name().to_owned()).set(backlog as f64);
        if backlog == 0 {
            self.status.progress();
        }
        Ok(consumer)
    }

    /// Between rounds: waits up to [`IDLE_WAIT`] for the next message (one pull request for
    /// one message, answered as soon as one arrives) and keeps it for the next round. Dropped
    /// at shutdown before a message came, nothing is lost: the pull request expires.
    async fn idle(&self) {
        let wait = async {
            let Ok(consumer) = self.attached_consumer().await else {
                return;
            };
            let waiting = consumer
                .batch()
                .max_messages(1)
                .expires(IDLE_WAIT)
                .messages()
                .await;
            let Ok(mut waiting) = waiting else {
                return;
            };
            if let Some(Ok(message)) = waiting.next().await {
                self.stash().push(message);
            }
        };
        // The pull request's expiry is the server's to report; a server that cannot (paused,
        // cut off) must not keep the consumer idle for good: the next round samples and fetches.
        let _ = tokio::time::timeout(IDLE_WAIT + FETCH_WAIT, wait).await;
    }

    fn stash(&self) -> std::sync::MutexGuard<'_, Vec<jetstream::Message>> {
        self.stash.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How often a running consumer samples its durable consumer's settings and lag.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How long a sample may take before the round goes on without it.
const SAMPLE_WAIT: Duration = Duration::from_secs(2);
/// How long counting the open dead letters may take (a connection and one index scan).
const DEAD_LETTERS_WAIT: Duration = Duration::from_millis(500);
/// How long an idle consumer's pull request waits for a message: also how soon an idle consumer
/// samples again.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// How long a fetch of what is waiting may go unanswered before the consumer gives up on it
/// (and attaches again), and how much longer than its expiry an idle pull request may wait.
const FETCH_WAIT: Duration = Duration::from_secs(5);

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

/// A consumer seen without its handler type, so an application can supervise several, tests
/// can drive them, and operators can replay dead letters through them.
pub trait BackgroundConsumer: Worker {
    fn name(&self) -> &str;

    /// Processes whatever is waiting now: the consumer's rounds until one finds nothing, as
    /// tests drive it. Returns how many messages it took.
    fn process_available(&self) -> BoxFuture<'_, Result<usize, WorkerError>> {
        Box::pin(run_until_idle(self))
    }

    /// Applies a dead letter recorded on `subject` again, in the caller's transaction.
    fn replay<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        subject: &'a str,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<(), ReplayError>>;
}

impl<H: EventHandler> Worker for EventConsumer<H> {
    fn status(&self) -> &WorkerStatus {
        &self.status
    }

    fn round(&self) -> BoxFuture<'_, Result<Round, WorkerError>> {
        Box::pin(async move { Ok(EventConsumer::round(self).await?) })
    }

    fn idle(&self) -> BoxFuture<'_, ()> {
        Box::pin(EventConsumer::idle(self))
    }

    fn round_interval(&self) -> Duration {
        self.settings.round_interval
    }
}

impl<H: EventHandler> BackgroundConsumer for EventConsumer<H> {
    fn name(&self) -> &str {
        EventConsumer::name(self)
    }

    fn replay<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        subject: &'a str,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<(), ReplayError>> {
        Box::pin(self.replay_in(tx, subject, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

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

    #[test]
    fn only_failures_known_to_be_permanent_are_dead_lettered() {
        assert_eq!(
            HandlerError::Permanent("bad".into()).failure(),
            Failure::Permanent
        );
        assert_eq!(
            HandlerError::Panicked("bug".into()).failure(),
            Failure::Panic
        );
        for unavailable in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::other("reset")),
        ] {
            assert_eq!(
                HandlerError::Database(unavailable).failure(),
                Failure::Unavailable
            );
        }
        // Not a database error with a code: unknown, so retried rather than parked.
        assert_eq!(
            HandlerError::Database(sqlx::Error::Protocol("odd".into())).failure(),
            Failure::Transient
        );
        assert_eq!(
            HandlerError::Outbox(OutboxError::Publish("timeout".into())).failure(),
            Failure::Transient
        );
    }
}
