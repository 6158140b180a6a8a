//! One batch of messages: decoded, checked against the event contract (`receipt.rs`), applied
//! in one transaction through the inbox and the service's handler (a panic caught), retried in
//! halves when that fails, and each message acked or nak'ed; what can never succeed is
//! dead-lettered.

use super::{
    decode_message, retry_delay, EventConsumer, EventHandler, Failure, HandlerError, Incoming,
    ReplayError,
};
use crate::dead_letters::{self, DeadLetterKind};
use crate::envelope::Envelope;
use crate::events::Event;
use crate::supervisor::panic_message;
use crate::telemetry::spans::{self, Link};
use async_nats::jetstream::{self, AckKind};
use futures::FutureExt;
use sqlx::{Postgres, Transaction};
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use tracing::{Instrument, Span};
use uuid::Uuid;

/// An event as it came in.
pub(super) struct Decoded {
    /// Index of the broker message the event came in.
    pub(super) message: usize,
    pub(super) envelope: Envelope,
    pub(super) event: Event,
    /// Its handling, traced: a consumer span whose parent is the event's context.
    pub(super) span: Span,
}

/// A delivery without its payload: the durable consumer was switched to headers only (a change
/// `durable.rs` undoes). The server marks such a delivery with the size of what it left out.
fn payload_withheld(message: &jetstream::Message) -> bool {
    message
        .headers
        .as_ref()
        .is_some_and(|headers| headers.get("Nats-Msg-Size").is_some())
}

impl<H: EventHandler> EventConsumer<H> {
    /// Handles the messages taken together: their events are applied in one transaction, or in
    /// halves if that fails, so one bad event cannot hold back the others. A message is acked
    /// once every event in it was applied, found to be a duplicate, or dead-lettered; a message
    /// with an event that failed otherwise is nak'ed and comes back (the inbox absorbs the events
    /// of it that were applied). Returns how many messages were acked.
    pub(super) async fn process_batch(&self, messages: Vec<jetstream::Message>) -> usize {
        let _busy = self.status.busy();
        let mut items = Vec::with_capacity(messages.len());
        let mut retry: HashSet<usize> = HashSet::new();
        for (index, message) in messages.iter().enumerate() {
            if payload_withheld(message) {
                // Not the event: it comes back with its payload once the settings are restored.
                tracing::warn!(consumer = self.name(), subject = %message.subject, "message delivered without its payload (headers only); it will be redelivered");
                retry.insert(index);
                continue;
            }
            let stream = message.info().ok().map(|info| info.stream);
            for decoded in decode_message(&message.payload) {
                match decoded {
                    Ok((envelope, event)) => {
                        let span = self.span_of(&envelope);
                        match self.admit(message, stream, &envelope, &event) {
                            Ok(()) => items.push(Decoded {
                                message: index,
                                envelope,
                                event,
                                span,
                            }),
                            Err(reason) => {
                                spans::event(&span, "misrouted", vec![("reason", reason.clone())]);
                                if !self.misrouted(message, &envelope, reason).await {
                                    retry.insert(index);
                                }
                            }
                        }
                    }
                    Err((bytes, error)) => {
                        let letter = dead_letters::NewDeadLetter {
                            kind: DeadLetterKind::Undecodable,
                            event_id: None,
                            reason: error.to_string(),
                            payload: &bytes,
                        };
                        if !self.dead_letter(message, letter).await {
                            retry.insert(index);
                        }
                    }
                }
            }
        }
        if !items.is_empty() {
            if let Err(error) = self.apply(&items).await {
                if error.failure() == Failure::Unavailable {
                    tracing::warn!(consumer = self.name(), %error, "database unavailable; the batch will be redelivered");
                    self.status
                        .report_error(format!("database unavailable: {error}"));
                    retry.extend(items.iter().map(|item| item.message));
                } else if let [item] = &items[..] {
                    self.failed_alone(&messages[item.message], item, &error, &mut retry)
                        .await;
                } else {
                    tracing::warn!(consumer = self.name(), %error, size = items.len(), "batch failed; retrying it in halves");
                    self.apply_bisecting(&messages, &items, &mut retry).await;
                }
            }
        }
        let mut acked = 0;
        for (index, message) in messages.iter().enumerate() {
            let deliveries = message.info().map(|i| i.delivered).unwrap_or(1);
            if deliveries > 1 {
                metrics::counter!("consumer_redelivered_total", "consumer" => self.name().to_owned())
                    .increment(1);
            }
            // A lost ack or nak only causes a redelivery, which the inbox absorbs.
            let sent = if retry.contains(&index) {
                message
                    .ack_with(AckKind::Nak(Some(retry_delay(deliveries))))
                    .await
            } else {
                acked += 1;
                message.ack().await
            };
            if let Err(error) = sent {
                tracing::warn!(consumer = self.name(), %error, "ack failed");
            }
        }
        if acked > 0 {
            self.status.progress();
        }
        acked
    }

    /// After a failed batch: applies its halves, and their halves, until each failing event
    /// stands alone (one bad event among N costs about 2·log₂N transactions, not N), keeping
    /// the events' order. A lone failing event is dead-lettered if its failure is permanent (or
    /// it panicked on its last allowed delivery), else its message is redelivered later; when
    /// the database is unavailable, everything not yet applied is redelivered later.
    async fn apply_bisecting(
        &self,
        messages: &[jetstream::Message],
        items: &[Decoded],
        retry: &mut HashSet<usize>,
    ) {
        let half = items.len() / 2;
        let mut pending = vec![half..items.len(), 0..half];
        while let Some(range) = pending.pop() {
            let part = &items[range.clone()];
            if part.is_empty() {
                continue;
            }
            let Err(error) = self.apply(part).await else {
                continue;
            };
            if error.failure() == Failure::Unavailable {
                tracing::warn!(consumer = self.name(), %error, "database unavailable; the rest of the batch will be redelivered");
                self.status
                    .report_error(format!("database unavailable: {error}"));
                retry.extend(part.iter().map(|item| item.message));
                for rest in pending.drain(..) {
                    retry.extend(items[rest].iter().map(|item| item.message));
                }
                return;
            }
            if let [item] = part {
                self.failed_alone(&messages[item.message], item, &error, retry)
                    .await;
                continue;
            }
            let mid = range.start + part.len() / 2;
            pending.push(mid..range.end);
            pending.push(range.start..mid);
        }
    }

    /// The check on receipt (`receipt.rs`) of one event of `message`, which came in `stream`.
    fn admit(
        &self,
        message: &jetstream::Message,
        stream: Option<&str>,
        envelope: &Envelope,
        event: &Event,
    ) -> Result<(), String> {
        let subject = message.subject.as_str();
        let Some(stream) = stream else {
            return Err(format!(
                "{} on {subject}: not delivered by a JetStream consumer (no stream)",
                envelope.event_type
            ));
        };
        self.receipt.check(subject, Some(stream), envelope, event)
    }

    /// Parks an event that did not come the way the contract says its type travels; it is never
    /// applied. Returns false if the record could not be written (the message comes back).
    async fn misrouted(
        &self,
        message: &jetstream::Message,
        envelope: &Envelope,
        reason: String,
    ) -> bool {
        metrics::counter!("consumer_misrouted_total", "consumer" => self.name().to_owned())
            .increment(1);
        let bytes = envelope.encode().unwrap_or_default();
        let letter = dead_letters::NewDeadLetter {
            kind: DeadLetterKind::Misrouted,
            event_id: Some(envelope.id),
            reason,
            payload: &bytes,
        };
        self.dead_letter(message, letter).await
    }

    /// One event that failed on its own: dead-lettered or redelivered later.
    async fn failed_alone(
        &self,
        message: &jetstream::Message,
        item: &Decoded,
        error: &HandlerError,
        retry: &mut HashSet<usize>,
    ) {
        let deliveries = message.info().map(|i| i.delivered).unwrap_or(1);
        let kind = match error.failure() {
            Failure::Permanent => Some(DeadLetterKind::Rejected),
            Failure::Panic if deliveries >= self.settings.max_deliveries => {
                Some(DeadLetterKind::Panic)
            }
            Failure::Panic | Failure::Transient | Failure::Unavailable => None,
        };
        let Some(kind) = kind else {
            metrics::counter!("consumer_retried_total", "consumer" => self.name().to_owned())
                .increment(1);
            tracing::warn!(consumer = self.name(), order_id = %item.envelope.aggregate_id, %error, deliveries, "event failed; it will be redelivered");
            retry.insert(item.message);
            return;
        };
        let reason = format!(
            "{} (after {deliveries} deliveries): {error}",
            item.envelope.event_type
        );
        spans::event(
            &item.span,
            "dead-lettered",
            vec![
                ("kind", kind.as_str().to_owned()),
                ("reason", reason.clone()),
            ],
        );
        let bytes = item.envelope.encode().unwrap_or_default();
        let letter = dead_letters::NewDeadLetter {
            kind,
            event_id: Some(item.envelope.id),
            reason,
            payload: &bytes,
        };
        if !self.dead_letter(message, letter).await {
            retry.insert(item.message);
        }
    }

    /// The consumer span of an event (none when traces are off).
    fn span_of(&self, envelope: &Envelope) -> Span {
        spans::consumer(
            self.name(),
            &envelope.event_type,
            envelope.aggregate_id,
            envelope.trace.traceparent.as_deref(),
        )
    }

    async fn apply(&self, batch: &[Decoded]) -> Result<(), HandlerError> {
        // The transaction serves every event of the batch: a span linked to each one's.
        let span = spans::linked(
            "consumer transaction",
            "internal",
            batch.iter().map(|item| Link::Span(&item.span)),
        );
        spans::attribute(&span, "consumer", self.name());
        let transaction = async {
            let mut tx = self.pool.begin().await?;
            self.apply_in(&mut tx, batch).await?;
            tx.commit().await?;
            Ok::<(), HandlerError>(())
        };
        transaction.instrument(span).await?;
        if self.handler.writes_outbox() {
            self.signal.notify();
        }
        metrics::counter!("consumer_processed_total", "consumer" => self.name().to_owned())
            .increment(batch.len() as u64);
        Ok(())
    }

    /// Records the events in the inbox and lets the handler apply the new ones, in the caller's
    /// transaction. A panic in the handler is caught here and becomes an error of this batch.
    async fn apply_in(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        batch: &[Decoded],
    ) -> Result<(), HandlerError> {
        let ids: Vec<Uuid> = batch.iter().map(|d| d.envelope.id).collect();
        // A handler that may answer keeps its inbox whatever it says: a copy would be answered
        // again.
        let skip_inbox = self.handler.idempotent() && !self.handler.writes_outbox();
        let fresh: HashSet<Uuid> = if skip_inbox {
            ids.iter().copied().collect()
        } else {
            // The order each event concerns goes with it: an order's story reads it
            // (`crate::saga`).
            let orders: Vec<Uuid> = batch.iter().map(|d| d.envelope.aggregate_id).collect();
            sqlx::query_scalar(
                "INSERT INTO inbox (consumer, message_id, aggregate_id)
                 SELECT $1, unnest($2::uuid[]), unnest($3::uuid[])
                 ON CONFLICT DO NOTHING RETURNING message_id",
            )
            .bind(self.name())
            .bind(&ids)
            .bind(&orders)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect()
        };
        let mut applied = HashSet::with_capacity(fresh.len());
        let mut incoming = Vec::with_capacity(fresh.len());
        for item in batch {
            let id = item.envelope.id;
            if !fresh.contains(&id) || !applied.insert(id) {
                metrics::counter!("consumer_duplicates_total", "consumer" => self.name().to_owned())
                    .increment(1);
                tracing::debug!(consumer = self.name(), event_id = %id, "duplicate event ignored");
                continue;
            }
            let mut envelope = item.envelope.clone();
            // Traced, what the handler writes continues this event's consumer span.
            if let Some(traceparent) = spans::traceparent(&item.span) {
                envelope.trace.traceparent = Some(traceparent);
            }
            incoming.push(Incoming {
                envelope,
                event: item.event.clone(),
            });
        }
        if incoming.is_empty() {
            return Ok(());
        }
        let span = tracing::info_span!("events", consumer = self.name(), batch = incoming.len());
        let handled = async {
            #[cfg(feature = "fault-injection")]
            crate::fault_hooks::before_handle(incoming.iter().map(|i| &i.event));
            self.handler.handle_batch(tx, &incoming).await
        };
        match AssertUnwindSafe(handled.instrument(span))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(panic) => {
                metrics::counter!("consumer_panics_total", "consumer" => self.name().to_owned())
                    .increment(1);
                Err(HandlerError::Panicked(panic_message(panic.as_ref())))
            }
        }
    }

    /// Parks an event (or an undecodable message) with its reason. Returns false if the record
    /// could not be written: the message is then not acked and comes back, so a poison message
    /// is never silently dropped.
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        letter: dead_letters::NewDeadLetter<'_>,
    ) -> bool {
        let deliveries = message.info().map(|i| i.delivered).unwrap_or(1);
        let message_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned());
        let recorded = dead_letters::record(
            &self.pool,
            self.name(),
            message.subject.as_str(),
            message_id.as_deref(),
            deliveries,
            &letter,
        )
        .await;
        match recorded {
            Ok(true) => {
                metrics::counter!("consumer_dead_lettered_total", "consumer" => self.name().to_owned(), "kind" => letter.kind.as_str())
                    .increment(1);
                tracing::error!(consumer = self.name(), subject = %message.subject, reason = letter.reason, kind = letter.kind.as_str(), "event dead-lettered");
                true
            }
            // A redelivery (its message came back for another event's sake): parked before.
            Ok(false) => {
                tracing::debug!(consumer = self.name(), subject = %message.subject, kind = letter.kind.as_str(), "already dead-lettered");
                true
            }
            Err(error) => {
                tracing::warn!(consumer = self.name(), %error, "cannot record dead letter; message will be redelivered");
                false
            }
        }
    }

    /// Applies a dead letter's payload again, in the caller's transaction (which also marks the
    /// dead letter resolved), if the contract lets it travel on `subject`, the subject it was
    /// recorded with (a letter parked before receipts were checked is checked now). The inbox
    /// makes a second replay, or a replay of an event that was applied meanwhile, a no-op.
    pub(super) async fn replay_in(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        subject: &str,
        payload: &[u8],
    ) -> Result<(), ReplayError> {
        let mut items = Vec::new();
        for decoded in decode_message(payload) {
            let (envelope, event) =
                decoded.map_err(|(_, error)| HandlerError::Permanent(error.to_string()))?;
            self.receipt
                .check(subject, None, &envelope, &event)
                .map_err(ReplayError::Misrouted)?;
            let span = self.span_of(&envelope);
            spans::event(&span, "replayed", vec![("subject", subject.to_owned())]);
            items.push(Decoded {
                message: 0,
                envelope,
                event,
                span,
            });
        }
        Ok(self.apply_in(tx, &items).await?)
    }
}
