//! The durable consumer on the broker: found, created when missing, and kept as configured.
//! Its settings are compared with the configured ones whenever the consumer attaches, then once
//! a second while it runs and at every round a test drives: anyone with a right to the consumer
//! (an operator, or the service's own CREATE right) can change them, and a changed filter makes
//! the consumer read nothing while it reports no lag. A difference is logged, counted
//! (`consumer_drift_total`) and put right.
//!
//! Some changes lose events, not only time, and putting the setting back does not bring them
//! back: a filter that matches nothing moves the consumer past the events on its real subjects
//! (a pull that finds nothing matching moves its position to the end of the stream; measured on
//! NATS 2.15); a delivery limit ends the redeliveries of an event that was nak'ed; headers only
//! delivers events without their payloads (the batch nak's such messages, and the limit may end
//! them). An update cannot move a consumer back (its start is fixed), so a consumer with any of
//! these changes is deleted and created again, from just after its acknowledgement floor as
//! last seen with the right settings: every event it may have lost comes again, and the inbox
//! absorbs what it had already applied. With no such sample (the change was found while
//! attaching) it starts `replay_window` back, as a lost consumer does; anything older is the
//! re-drive's. A changed ack wait, ack-pending limit or inactivity threshold loses nothing and
//! is put back in place.

use super::{jetstream_error, ConsumerError, EventConsumer, EventHandler};
use async_nats::jetstream::{
    self,
    consumer::{self, pull, AckPolicy, DeliverPolicy, PullConsumer},
    context::ConsumerInfoErrorKind,
    ErrorCode,
};
use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `verified_floor` before any sample with the right settings.
pub(super) const NO_FLOOR: u64 = u64::MAX;

/// A durable consumer whose settings were put back (in place, or deleted and created again).
pub(super) struct Restored {
    pub(super) consumer: PullConsumer,
}

/// How the durable consumer on the broker differs from the configured one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Drift {
    /// The filter subjects found, when they are not the configured ones.
    filter: Option<Vec<String>>,
    /// A delivery limit: an event nak'ed that often is never delivered again.
    max_deliver: Option<i64>,
    /// Messages delivered without their payloads.
    headers_only: bool,
    ack_wait: Option<Duration>,
    max_ack_pending: Option<i64>,
    /// The durable consumer would delete itself after this long without a pull.
    inactive_threshold: Option<Duration>,
}

impl Drift {
    fn is_empty(&self) -> bool {
        *self == Drift::default()
    }

    /// Whether events may have been lost to the change (see the module's doc).
    fn may_have_lost_events(&self) -> bool {
        self.filter.is_some() || self.max_deliver.is_some() || self.headers_only
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(filter) = &self.filter {
            parts.push(format!("filter subjects {filter:?}"));
        }
        if let Some(limit) = self.max_deliver {
            parts.push(format!("max deliver {limit}"));
        }
        if self.headers_only {
            parts.push("headers only".to_owned());
        }
        if let Some(ack_wait) = self.ack_wait {
            parts.push(format!("ack wait {ack_wait:?}"));
        }
        if let Some(pending) = self.max_ack_pending {
            parts.push(format!("max ack pending {pending}"));
        }
        if let Some(threshold) = self.inactive_threshold {
            parts.push(format!("inactive threshold {threshold:?}"));
        }
        write!(f, "{}", parts.join(", "))
    }
}

/// A consumer's filter subjects as the server reports them: one filter may come back in
/// `filter_subject`, several in `filter_subjects`.
fn filters(config: &consumer::Config) -> Vec<String> {
    let mut found = config.filter_subjects.clone();
    if !config.filter_subject.is_empty() {
        found.push(config.filter_subject.clone());
    }
    found.sort();
    found
}

impl<H: EventHandler> EventConsumer<H> {
    pub(super) fn config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.subscription.durable_name().to_owned()),
            filter_subjects: self.topology.filter_subjects(&self.subscription),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            max_ack_pending: self.settings.max_ack_pending,
            ..Default::default()
        }
    }

    /// How `found` differs from the configured settings (`None`: it does not).
    pub(super) fn drift(&self, found: &consumer::Config) -> Option<Drift> {
        let desired = self.config();
        let mut wanted = desired.filter_subjects.clone();
        wanted.sort();
        let found_filters = filters(found);
        // Unset limits come back from the server as -1 or 0.
        let drift = Drift {
            filter: (found_filters != wanted).then_some(found_filters),
            max_deliver: (found.max_deliver > 0).then_some(found.max_deliver),
            headers_only: found.headers_only,
            ack_wait: (found.ack_wait != desired.ack_wait).then_some(found.ack_wait),
            max_ack_pending: (found.max_ack_pending != desired.max_ack_pending)
                .then_some(found.max_ack_pending),
            inactive_threshold: (!found.inactive_threshold.is_zero())
                .then_some(found.inactive_threshold),
        };
        (!drift.is_empty()).then_some(drift)
    }

    /// Finds the durable consumer, bringing its settings to the configured ones, or creates it
    /// when the broker has none. A consumer created here starts `replay_window` back in the
    /// stream; the inbox absorbs what it already processed. The stream is its publisher's to
    /// create (a missing one is re-created by the publisher's relay at its next publish): a
    /// service's NATS user may manage only its own stream.
    pub(super) async fn attach(&self) -> Result<PullConsumer, ConsumerError> {
        let stream = self
            .jetstream
            .get_stream_no_info(self.topology.stream_name(self.subscription.stream()))
            .await
            .map_err(jetstream_error)?;
        let info = match stream.consumer_info(self.name()).await {
            Ok(info) => info,
            Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => {
                let start = self.replay_start();
                return self.create_durable(&stream, start, "was missing").await;
            }
            Err(error) => return Err(jetstream_error(error)),
        };
        match self.drift(&info.config) {
            Some(drift) => self.restore(&stream, &info.config, &drift).await,
            None => Ok(PullConsumer::new(
                self.config(),
                info,
                self.jetstream.clone(),
            )),
        }
    }

    /// Where a durable consumer created without a known safe position starts.
    fn replay_start(&self) -> DeliverPolicy {
        // A window past chrono's range (centuries) starts at the stream's beginning anyway.
        let start_time = chrono::Duration::from_std(self.settings.replay_window)
            .ok()
            .and_then(|replay| chrono::Utc::now().checked_sub_signed(replay))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        DeliverPolicy::ByStartTime { start_time }
    }

    /// Restores the durable consumer's settings if `info` (sampled just now) shows they
    /// drifted, and returns how; with the right settings, remembers its acknowledgement floor
    /// as the position to start again from should its filter change later.
    pub(super) async fn restore_if_drifted(
        &self,
        info: &consumer::Info,
    ) -> Result<Option<Restored>, ConsumerError> {
        let Some(drift) = self.drift(&info.config) else {
            self.verified_floor
                .store(info.ack_floor.stream_sequence, Ordering::Relaxed);
            return Ok(None);
        };
        let stream = self
            .jetstream
            .get_stream_no_info(&info.stream_name)
            .await
            .map_err(jetstream_error)?;
        let consumer = self.restore(&stream, &info.config, &drift).await?;
        Ok(Some(Restored { consumer }))
    }

    /// Forgets the last verified position (the consumer is detached: the stream it was a
    /// position in may be gone).
    pub(super) fn forget_position(&self) {
        self.verified_floor.store(NO_FLOOR, Ordering::Relaxed);
    }

    /// Puts the configured settings back: in place when the change lost nothing, else by
    /// creating the consumer again (see the module's doc).
    async fn restore(
        &self,
        stream: &jetstream::stream::Stream<()>,
        found: &consumer::Config,
        drift: &Drift,
    ) -> Result<PullConsumer, ConsumerError> {
        metrics::counter!("consumer_drift_total", "consumer" => self.name().to_owned())
            .increment(1);
        tracing::warn!(
            consumer = self.name(),
            %drift,
            "the durable consumer's settings differ from the configured ones; restoring them"
        );
        if !drift.may_have_lost_events() {
            let mut desired = self.config();
            desired.deliver_policy = found.deliver_policy;
            let updated = stream
                .update_consumer(desired)
                .await
                .map_err(jetstream_error)?;
            return Ok(updated);
        }
        let start = match self.verified_floor.load(Ordering::Relaxed) {
            NO_FLOOR => self.replay_start(),
            floor => DeliverPolicy::ByStartSequence {
                start_sequence: floor + 1,
            },
        };
        match stream.delete_consumer(self.name()).await {
            Ok(_) => {}
            // Another instance deleted it first.
            Err(error)
                if matches!(error.kind(), jetstream::stream::ConsumerErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND) => {}
            Err(error) => return Err(jetstream_error(error)),
        }
        let created = self
            .create_durable(stream, start, "had settings that may have lost events")
            .await?;
        self.forget_position();
        Ok(created)
    }

    /// Creates the durable consumer with the configured settings, starting at `start`. When
    /// another instance created it between our lookup and our create, with its own start, which
    /// the broker will not change (two replicas starting together after it was lost), attaches
    /// to theirs if its settings are right.
    async fn create_durable(
        &self,
        stream: &jetstream::stream::Stream<()>,
        start: DeliverPolicy,
        why: &str,
    ) -> Result<PullConsumer, ConsumerError> {
        let mut config = self.config();
        config.deliver_policy = start;
        match stream.create_consumer(config).await {
            Ok(created) => {
                metrics::counter!("consumer_created_total", "consumer" => self.name().to_owned())
                    .increment(1);
                tracing::warn!(
                    consumer = self.name(),
                    ?start,
                    "durable consumer {why}; created it"
                );
                Ok(created)
            }
            Err(error) => {
                tracing::info!(
                    consumer = self.name(),
                    %error,
                    "creating the durable consumer failed; looking it up again"
                );
                let info = stream
                    .consumer_info(self.name())
                    .await
                    .map_err(|_| jetstream_error(&error))?;
                if self.drift(&info.config).is_some() {
                    return Err(jetstream_error(error));
                }
                Ok(PullConsumer::new(
                    self.config(),
                    info,
                    self.jetstream.clone(),
                ))
            }
        }
    }
}
