//! The transactional outbox: events are written in the transaction of the state change they
//! announce, and a relay publishes them to JetStream, deleting rows only after the broker's ack.
//!
//! A crash between publish and delete re-publishes the same event id (deduplicated by the
//! broker's `Nats-Msg-Id` window and by the consumers' inbox); it never loses one.

use crate::broker::{self, Topology};
use crate::config::OutboxSettings;
use crate::envelope::{EnvelopeError, TraceContext};
use crate::events::Event;
use crate::supervisor::{Round, Worker, WorkerError, WorkerStatus};
use crate::telemetry::{self, spans, spans::Link};
use async_nats::jetstream::{self, message::PublishMessage};
use futures::future::{try_join_all, BoxFuture};
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
    let ids = enqueue_all(tx, topology, &[(event.clone(), trace.clone())]).await?;
    Ok(ids[0])
}

/// Writes several events into the outbox with one statement, in order. Each row carries the
/// order its event concerns (`aggregate_id`), so the order service can tell which orders still
/// have an event waiting here (its re-drive skips them).
pub async fn enqueue_all(
    tx: &mut Transaction<'_, Postgres>,
    topology: &Topology,
    events: &[(Event, TraceContext)],
) -> Result<Vec<Uuid>, OutboxError> {
    let mut ids = Vec::with_capacity(events.len());
    let mut subjects = Vec::with_capacity(events.len());
    let mut envelopes = Vec::with_capacity(events.len());
    let mut aggregates = Vec::with_capacity(events.len());
    for (event, trace) in events {
        let envelope = event.into_envelope(trace.clone())?;
        ids.push(envelope.id);
        subjects.push(topology.subject_of(event));
        aggregates.push(envelope.aggregate_id);
        envelopes.push(envelope.encode()?);
    }
    if ids.is_empty() {
        return Ok(ids);
    }
    // WITH ORDINALITY keeps the events' order in `seq`, so the relay publishes them in order.
    sqlx::query(
        "INSERT INTO outbox (event_id, subject, envelope, aggregate_id)
         SELECT e.id, e.subject, e.envelope, e.aggregate_id
         FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::uuid[])
              WITH ORDINALITY AS e(id, subject, envelope, aggregate_id, n)
         ORDER BY e.n",
    )
    .bind(&ids)
    .bind(&subjects)
    .bind(&envelopes)
    .bind(&aggregates)
    .execute(&mut **tx)
    .await?;
    Ok(ids)
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

/// How often an idle relay makes sure its streams exist.
const STREAM_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Publishes pending outbox rows in batches. Safe with several instances on one database:
/// rows are claimed with `FOR UPDATE SKIP LOCKED`, so each row is in flight in one relay at a time.
#[derive(Clone)]
pub struct OutboxRelay {
    pool: PgPool,
    jetstream: jetstream::Context,
    topology: Topology,
    signal: OutboxSignal,
    batch_size: i64,
    events_per_message: usize,
    poll_interval: Duration,
    round_interval: Duration,
    status: WorkerStatus,
    /// When the streams and the backlog were last looked at (shared by the relay's clones).
    checks: Arc<std::sync::Mutex<Checks>>,
}

/// The relay's periodic looks beside its rounds.
#[derive(Default)]
struct Checks {
    /// When the streams were last ensured; `None`: not yet, or a publish failed since.
    streams: Option<tokio::time::Instant>,
    backlog: Option<tokio::time::Instant>,
}

impl OutboxRelay {
    pub fn new(
        pool: PgPool,
        jetstream: jetstream::Context,
        topology: Topology,
        signal: OutboxSignal,
        settings: &OutboxSettings,
    ) -> Self {
        OutboxRelay {
            pool,
            jetstream,
            topology,
            signal,
            batch_size: settings.batch_size,
            events_per_message: settings.events_per_message.max(1),
            poll_interval: settings.poll_interval,
            round_interval: settings.round_interval,
            status: WorkerStatus::new("outbox-relay"),
            checks: Arc::default(),
        }
    }

    /// Claims one batch, publishes it with all acks awaited together, then deletes it.
    /// Returns how many events were published.
    pub async fn publish_batch(&self) -> Result<usize, OutboxError> {
        let _busy = self.status.busy();
        let mut tx = self.pool.begin().await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT seq, event_id, subject, envelope FROM outbox
             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let messages = pack_messages(&rows, self.events_per_message);
        // Traced, each event's context (written with its row) goes along in the message's
        // headers, and the publish is a producer span linked to every one of them.
        let contexts: Vec<Option<String>> = if telemetry::traces_enabled() {
            rows.iter()
                .map(|row| envelope_traceparent(&row.3))
                .collect()
        } else {
            Vec::new()
        };
        let span = spans::linked(
            "outbox publish",
            "producer",
            contexts.iter().map(|cx| Link::Traceparent(cx.as_deref())),
        );
        let mut acks = Vec::with_capacity(messages.len());
        for message in &messages {
            let mut publish = PublishMessage::build().payload(message.payload.clone().into());
            if !contexts.is_empty() {
                let mut headers = async_nats::HeaderMap::new();
                for cx in message.rows.iter().filter_map(|&i| contexts[i].as_deref()) {
                    headers.append(spans::TRACEPARENT, cx);
                }
                publish = publish.headers(headers);
            }
            let publish = publish.message_id(&message.message_id);
            let ack = self
                .jetstream
                .send_publish(message.subject.clone(), publish)
                .await
                .map_err(|e| OutboxError::Publish(e.to_string()))?;
            acks.push(ack.into_future());
        }
        // Dropping the transaction on error rolls back: the rows stay and are published again.
        // A `duplicate` ack is as good as a fresh one: a message id names exactly the events the
        // message carries, so the broker already holds these events.
        let acked = try_join_all(acks)
            .await
            .map_err(|e| OutboxError::Publish(e.to_string()))?;
        // The broker holds them: the publish is over.
        drop(span);
        let duplicates = acked.iter().filter(|a| a.duplicate).count();
        let seqs: Vec<i64> = rows.iter().map(|(seq, ..)| *seq).collect();
        sqlx::query("DELETE FROM outbox WHERE seq = ANY($1)")
            .bind(&seqs)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        metrics::counter!("outbox_published_total").increment(rows.len() as u64);
        metrics::counter!("outbox_messages_total").increment(messages.len() as u64);
        if duplicates > 0 {
            metrics::counter!("outbox_republished_total").increment(duplicates as u64);
        }
        Ok(rows.len())
    }

    /// Publishes until the outbox is empty: the relay's rounds until one finds nothing (tests
    /// drive the relay with this instead of sleeping).
    pub async fn publish_all_pending(&self) -> Result<usize, OutboxError> {
        let mut total = 0;
        loop {
            let round = self.publish_round().await?;
            total += round.done;
            if round.done == 0 {
                return Ok(total);
            }
        }
    }

    /// Rows waiting and the age in seconds of the first in line (found through the key).
    pub async fn backlog(&self) -> Result<(i64, f64), sqlx::Error> {
        sqlx::query_as(
            "SELECT count(*), COALESCE((SELECT EXTRACT(EPOCH FROM now() - created_at)::float8
                                        FROM outbox ORDER BY seq LIMIT 1), 0)
             FROM outbox",
        )
        .fetch_one(&self.pool)
        .await
    }

    pub fn status(&self) -> &WorkerStatus {
        &self.status
    }

    /// Creates the relay's streams if they are missing (what the running relay does after a
    /// failed publish and every [`STREAM_CHECK_INTERVAL`]; tests driving the relay call it).
    pub async fn ensure_streams(&self) -> Result<(), OutboxError> {
        broker::ensure_streams(&self.jetstream, &self.topology)
            .await
            .map_err(|error| OutboxError::Publish(error.to_string()))
    }

    /// One round: the streams ensured when due (at the first round, after a failed publish, and
    /// every [`STREAM_CHECK_INTERVAL`] even when idle: a stream deleted or lost with the broker's
    /// store is re-created, so its consumers, which may not create it, attach again although
    /// nothing is being published), the backlog gauged once a second, and one batch published.
    async fn publish_round(&self) -> Result<Round, OutboxError> {
        let (streams_due, backlog_due) = {
            let checks = self.checks();
            let due = |at: Option<tokio::time::Instant>, every: Duration| {
                at.is_none_or(|at| at.elapsed() >= every)
            };
            (
                due(checks.streams, STREAM_CHECK_INTERVAL),
                due(checks.backlog, Duration::from_secs(1)),
            )
        };
        if streams_due {
            if let Err(error) = self.ensure_streams().await {
                tracing::debug!(%error, "cannot ensure streams yet");
            }
            self.checks().streams = Some(tokio::time::Instant::now());
        }
        if backlog_due {
            if let Ok((rows, oldest)) = self.backlog().await {
                self.status.set_backlog(rows.max(0) as u64);
                metrics::gauge!("outbox_backlog").set(rows as f64);
                metrics::gauge!("outbox_oldest_age_seconds").set(oldest);
            }
            self.checks().backlog = Some(tokio::time::Instant::now());
        }
        match self.publish_batch().await {
            Ok(n) => {
                self.status.progress();
                Ok(Round::of(n, self.batch_size.max(1) as usize))
            }
            Err(error) => {
                metrics::counter!("outbox_publish_failures_total").increment(1);
                if matches!(error, OutboxError::Publish(_)) {
                    self.checks().streams = None;
                }
                Err(error)
            }
        }
    }

    fn checks(&self) -> std::sync::MutexGuard<'_, Checks> {
        // Two instants: a panic while holding the lock cannot leave them inconsistent.
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The relay's rounds publish; between them it waits until signalled (a commit wrote rows) or
/// the poll interval passes (rows written by other instances), and paces its rounds
/// (`crate::pacing`: once signalled, a round starts no sooner than the round interval after the
/// previous one, so the commits meanwhile share one claim, one publish and one delete).
impl Worker for OutboxRelay {
    fn status(&self) -> &WorkerStatus {
        &self.status
    }

    fn round(&self) -> BoxFuture<'_, Result<Round, WorkerError>> {
        Box::pin(async move { Ok(self.publish_round().await?) })
    }

    fn idle(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = tokio::time::timeout(self.poll_interval, self.signal.notified()).await;
        })
    }

    fn round_interval(&self) -> Duration {
        self.round_interval
    }
}

/// A claimed outbox row: sequence, event id, subject, envelope.
type OutboxRow = (i64, Uuid, String, Vec<u8>);

/// One broker message: a single envelope, or a JSON array of envelopes of one subject.
#[derive(Debug, PartialEq, Eq)]
struct PackedMessage {
    subject: String,
    message_id: String,
    payload: Vec<u8>,
    /// The claimed rows it carries, by index, in order.
    rows: Vec<usize>,
}

/// The `traceparent` an envelope was written with (the context of the change it announces),
/// read without decoding the rest.
fn envelope_traceparent(envelope: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Traced {
        #[serde(default)]
        trace: TraceContext,
    }
    serde_json::from_slice::<Traced>(envelope)
        .ok()
        .and_then(|traced| traced.trace.traceparent)
}

/// Packs claimed rows into broker messages of at most `per_message` events each, one subject
/// per message, keeping each subject's events in outbox order. With durable (fsync-per-write)
/// JetStream storage the broker's cost is per message, not per event, so packing multiplies the
/// relay's throughput. A message of one event carries the plain envelope and the event id as its
/// `Nats-Msg-Id`; a packed message's id is derived from the ids of every event it carries, in
/// order ([`packed_message_id`]): the broker's duplicate answer then means it holds exactly these
/// events. A claim packed differently gets other ids and is published again; the inbox absorbs
/// the events delivered twice.
fn pack_messages(rows: &[OutboxRow], per_message: usize) -> Vec<PackedMessage> {
    let mut by_subject: Vec<(&str, Vec<(usize, &OutboxRow)>)> = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        match by_subject.iter_mut().find(|(subject, _)| *subject == row.2) {
            Some((_, group)) => group.push((index, row)),
            None => by_subject.push((&row.2, vec![(index, row)])),
        }
    }
    let mut messages = Vec::new();
    for (subject, group) in by_subject {
        for indexed in group.chunks(per_message.max(1)) {
            let chunk: Vec<&OutboxRow> = indexed.iter().map(|(_, row)| *row).collect();
            let (message_id, payload) = if let [(_, id, _, envelope)] = chunk[..] {
                (id.to_string(), envelope.clone())
            } else {
                let size = chunk.iter().map(|r| r.3.len() + 1).sum::<usize>() + 1;
                let mut payload = Vec::with_capacity(size);
                payload.push(b'[');
                for (i, row) in chunk.iter().enumerate() {
                    if i > 0 {
                        payload.push(b',');
                    }
                    payload.extend_from_slice(&row.3);
                }
                payload.push(b']');
                let ids: Vec<Uuid> = chunk.iter().map(|row| row.1).collect();
                (packed_message_id(&ids), payload)
            };
            messages.push(PackedMessage {
                subject: subject.to_owned(),
                message_id,
                payload,
                rows: indexed.iter().map(|(index, _)| *index).collect(),
            });
        }
    }
    messages
}

/// Namespace of packed message ids (a fixed random UUID).
const PACKED_MESSAGES: Uuid = Uuid::from_u128(0x6b1f_2c5e_8d3a_4f70_9e21_c4a8_57d0_b3e6);

/// The `Nats-Msg-Id` of a message carrying these events in this order: a name-based (SHA-1)
/// UUID of all their ids, so two messages share an id only if they carry the same events.
pub fn packed_message_id(event_ids: &[Uuid]) -> String {
    let bytes: Vec<u8> = event_ids.iter().flat_map(|id| *id.as_bytes()).collect();
    format!("pack-{}", Uuid::new_v5(&PACKED_MESSAGES, &bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, subject: &str) -> OutboxRow {
        (
            seq,
            Uuid::now_v7(),
            subject.to_owned(),
            format!("{{\"n\":{seq}}}").into_bytes(),
        )
    }

    #[test]
    fn rows_are_packed_per_subject_in_order_and_size() {
        let rows = vec![
            row(1, "a"),
            row(2, "b"),
            row(3, "a"),
            row(4, "a"),
            row(5, "b"),
        ];
        let messages = pack_messages(&rows, 2);
        let shapes: Vec<(&str, &str)> = messages
            .iter()
            .map(|m| (m.subject.as_str(), std::str::from_utf8(&m.payload).unwrap()))
            .collect();
        assert_eq!(
            shapes,
            vec![
                ("a", "[{\"n\":1},{\"n\":3}]"),
                ("a", "{\"n\":4}"),
                ("b", "[{\"n\":2},{\"n\":5}]")
            ]
        );
        assert_eq!(
            messages[1].message_id,
            rows[3].1.to_string(),
            "a lone event keeps its own id"
        );
        assert_eq!(
            messages[0].message_id,
            packed_message_id(&[rows[0].1, rows[2].1])
        );
    }

    /// Two claims with the same first and last event and the same count but a different event
    /// in between (a hole left by SKIP LOCKED, an intake batch that committed late) must not
    /// share a message id: the broker would call the second a duplicate and the relay would
    /// delete a row whose event never reached it.
    #[test]
    fn a_message_id_names_every_event_it_carries() {
        let (first, middle, other, last) = (row(1, "a"), row(2, "a"), row(3, "a"), row(4, "a"));
        let claim = |rows: Vec<&OutboxRow>| {
            let rows: Vec<_> = rows.into_iter().cloned().collect();
            pack_messages(&rows, 10).remove(0).message_id
        };
        let one = claim(vec![&first, &middle, &last]);
        assert_ne!(one, claim(vec![&first, &other, &last]));
        assert_ne!(one, claim(vec![&first, &last, &middle]), "order counts");
        assert_eq!(
            one,
            claim(vec![&first, &middle, &last]),
            "same events, same id"
        );
    }

    #[test]
    fn one_event_per_message_is_the_plain_envelope() {
        let rows = vec![row(1, "a"), row(2, "a")];
        let messages = pack_messages(&rows, 1);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].payload, rows[0].3);
        assert_eq!(messages[0].message_id, rows[0].1.to_string());
    }
}
