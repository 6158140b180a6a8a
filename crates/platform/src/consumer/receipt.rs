//! The check every event passes on receipt, before anything applies it. NATS permissions say
//! which subjects a service's user may publish on, not what it may claim in an envelope: the
//! order service may publish on `order.created`, and nothing on the broker stops it putting an
//! envelope typed `PaymentFailed` there. So a consumer accepts an event only if
//! - the message came on the subject the contract publishes the event's type on,
//! - in the stream of the type's publisher (a stream can store a message under any subject a
//!   subject transform gives it, so the subject alone does not say which service sent it),
//! - the consumer takes that type, and
//! - the envelope's `aggregate_id` is the order the event is about.
//!
//! Anything else is misrouted: parked for the operator, counted, never applied, never replayed.
//! The expected subjects and streams are built once per consumer; the check itself compares
//! strings and allocates only to explain a refusal.

use crate::broker::Topology;
use crate::contract::{EventType, Subscription};
use crate::envelope::Envelope;
use crate::events::Event;

/// What one consumer accepts.
pub(super) struct ReceiptCheck {
    durable: &'static str,
    /// Per event type (indexed by `EventType as usize`): the subject it is published on.
    subjects: Vec<String>,
    /// Per event type: its publisher's stream.
    streams: Vec<String>,
    /// Per event type: whether this consumer takes it.
    takes: Vec<bool>,
}

impl ReceiptCheck {
    pub(super) fn new(subscription: &Subscription, topology: &Topology) -> Self {
        ReceiptCheck {
            durable: subscription.durable_name(),
            subjects: EventType::ALL
                .iter()
                .map(|&t| topology.subject_of_type(t))
                .collect(),
            streams: EventType::ALL
                .iter()
                .map(|&t| topology.stream_of_type(t))
                .collect(),
            takes: EventType::ALL
                .iter()
                .map(|&t| subscription.takes(t))
                .collect(),
        }
    }

    /// Whether `event` (in `envelope`) may be applied, having come on `subject` in `stream`.
    /// `stream` is `None` for a dead letter an operator replays: only its subject was recorded,
    /// and the event was checked in full when it came in. `Err` says why not.
    pub(super) fn check(
        &self,
        subject: &str,
        stream: Option<&str>,
        envelope: &Envelope,
        event: &Event,
    ) -> Result<(), String> {
        let event_type = event.event_type();
        let index = event_type as usize;
        let (expected_subject, expected_stream) = (&self.subjects[index], &self.streams[index]);
        let name = event_type.name();
        let arrived = || match stream {
            Some(stream) => format!("{subject} (stream {stream})"),
            None => subject.to_owned(),
        };
        if subject != expected_subject || stream.is_some_and(|s| s != expected_stream) {
            return Err(format!(
                "{name} claimed on {}: {name} is published by {} on {expected_subject} (stream {expected_stream})",
                arrived(),
                event_type.publisher().token(),
            ));
        }
        if !self.takes[index] {
            return Err(format!(
                "{name} on {}: consumer {} does not take {name}",
                arrived(),
                self.durable
            ));
        }
        let order_id = event.order_id();
        if envelope.aggregate_id != order_id {
            return Err(format!(
                "{name} on {}: its envelope names order {} but the event is about order {order_id}",
                arrived(),
                envelope.aggregate_id
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::TraceContext;
    use crate::events::{OrderCreated, PaymentFailed};
    use uuid::Uuid;

    const ORDERS: Subscription = Subscription::new("inventory-orders", &[EventType::OrderCreated]);

    fn check() -> ReceiptCheck {
        ReceiptCheck::new(&ORDERS, &Topology::new("shop"))
    }

    fn created() -> Event {
        Event::OrderCreated(OrderCreated {
            order_id: Uuid::now_v7(),
            user_id: 1,
            product_id: 1,
            quantity: 1,
        })
    }

    fn sealed(event: &Event) -> Envelope {
        event.into_envelope(TraceContext::default()).unwrap()
    }

    #[test]
    fn an_event_on_its_own_subject_and_stream_is_accepted() {
        let event = created();
        let envelope = sealed(&event);
        let check = check();
        assert_eq!(
            check.check("shop.order.created", Some("SHOP_ORDER"), &envelope, &event),
            Ok(())
        );
        assert_eq!(
            check.check("shop.order.created", None, &envelope, &event),
            Ok(()),
            "a replay has no stream to compare"
        );
    }

    #[test]
    fn a_foreign_type_on_a_subject_its_publisher_may_use_is_refused() {
        let forged = Event::PaymentFailed(PaymentFailed {
            order_id: Uuid::now_v7(),
            user_id: 1,
            amount_cents: 1,
            reason: crate::events::FailureReason::PaymentDeclined,
        });
        let reason = check()
            .check(
                "shop.order.created",
                Some("SHOP_ORDER"),
                &sealed(&forged),
                &forged,
            )
            .unwrap_err();
        assert_eq!(
            reason,
            "PaymentFailed claimed on shop.order.created (stream SHOP_ORDER): PaymentFailed is \
             published by payment on shop.payment.failed (stream SHOP_PAYMENT)"
        );
    }

    #[test]
    fn the_right_subject_in_another_stream_is_refused() {
        let event = created();
        let reason = check()
            .check(
                "shop.order.created",
                Some("SHOP_PAYMENT"),
                &sealed(&event),
                &event,
            )
            .unwrap_err();
        assert!(reason.contains("stream SHOP_PAYMENT"), "{reason}");
    }

    #[test]
    fn a_type_this_consumer_does_not_take_is_refused() {
        const PAYMENTS: Subscription = Subscription::new("p", &[EventType::PaymentFailed]);
        let check = ReceiptCheck::new(&PAYMENTS, &Topology::new("shop"));
        let event = created();
        let reason = check
            .check(
                "shop.order.created",
                Some("SHOP_ORDER"),
                &sealed(&event),
                &event,
            )
            .unwrap_err();
        assert!(reason.contains("does not take OrderCreated"), "{reason}");
    }

    #[test]
    fn an_envelope_naming_another_order_is_refused() {
        let event = created();
        let mut envelope = sealed(&event);
        envelope.aggregate_id = Uuid::now_v7();
        let reason = check()
            .check("shop.order.created", Some("SHOP_ORDER"), &envelope, &event)
            .unwrap_err();
        assert!(
            reason.contains(&envelope.aggregate_id.to_string())
                && reason.contains(&event.order_id().to_string()),
            "{reason}"
        );
    }
}
