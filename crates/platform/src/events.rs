//! The events the services exchange: every event's payload, and its envelope. Who publishes each
//! type and on which subject is declared once, in `crate::contract`.

pub use crate::contract::{EventType, Source};
use crate::envelope::{Envelope, EnvelopeError, TraceContext};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// Why an order failed. Stock reasons come from inventory, payment reasons from payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureReason {
    OutOfStock,
    UnknownProduct,
    /// Price × quantity does not fit in the money type.
    AmountTooLarge,
    PaymentDeclined,
    InsufficientFunds,
    UnknownAccount,
}

impl FailureReason {
    pub const ALL: [FailureReason; 6] = [
        FailureReason::OutOfStock,
        FailureReason::UnknownProduct,
        FailureReason::AmountTooLarge,
        FailureReason::PaymentDeclined,
        FailureReason::InsufficientFunds,
        FailureReason::UnknownAccount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::OutOfStock => "OUT_OF_STOCK",
            FailureReason::UnknownProduct => "UNKNOWN_PRODUCT",
            FailureReason::AmountTooLarge => "AMOUNT_TOO_LARGE",
            FailureReason::PaymentDeclined => "PAYMENT_DECLINED",
            FailureReason::InsufficientFunds => "INSUFFICIENT_FUNDS",
            FailureReason::UnknownAccount => "UNKNOWN_ACCOUNT",
        }
    }

    pub fn parse(s: &str) -> Option<FailureReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    pub order_id: Uuid,
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub amount_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRejected {
    pub order_id: Uuid,
    pub product_id: i64,
    pub reason: FailureReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReleased {
    pub order_id: Uuid,
    pub product_id: i64,
    pub quantity: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCompleted {
    pub order_id: Uuid,
    pub user_id: i64,
    pub amount_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub order_id: Uuid,
    pub user_id: i64,
    pub amount_cents: i64,
    pub reason: FailureReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    OrderCreated(OrderCreated),
    StockReserved(StockReserved),
    StockRejected(StockRejected),
    StockReleased(StockReleased),
    PaymentCompleted(PaymentCompleted),
    PaymentFailed(PaymentFailed),
}

impl Event {
    /// Its type in the contract, which says who publishes it and where.
    pub fn event_type(&self) -> EventType {
        match self {
            Event::OrderCreated(_) => EventType::OrderCreated,
            Event::StockReserved(_) => EventType::StockReserved,
            Event::StockRejected(_) => EventType::StockRejected,
            Event::StockReleased(_) => EventType::StockReleased,
            Event::PaymentCompleted(_) => EventType::PaymentCompleted,
            Event::PaymentFailed(_) => EventType::PaymentFailed,
        }
    }

    pub fn type_name(&self) -> &'static str {
        self.event_type().name()
    }

    pub fn order_id(&self) -> Uuid {
        match self {
            Event::OrderCreated(e) => e.order_id,
            Event::StockReserved(e) => e.order_id,
            Event::StockRejected(e) => e.order_id,
            Event::StockReleased(e) => e.order_id,
            Event::PaymentCompleted(e) => e.order_id,
            Event::PaymentFailed(e) => e.order_id,
        }
    }

    /// The service that publishes it (the contract's declaration).
    pub fn source(&self) -> Source {
        self.event_type().publisher()
    }

    /// The subject below the deployment prefix, e.g. `inventory.stock_reserved`.
    pub fn subject_suffix(&self) -> &'static str {
        self.event_type().subject_suffix()
    }

    fn payload_json(&self) -> Result<Box<RawValue>, serde_json::Error> {
        let json = match self {
            Event::OrderCreated(e) => serde_json::to_string(e),
            Event::StockReserved(e) => serde_json::to_string(e),
            Event::StockRejected(e) => serde_json::to_string(e),
            Event::StockReleased(e) => serde_json::to_string(e),
            Event::PaymentCompleted(e) => serde_json::to_string(e),
            Event::PaymentFailed(e) => serde_json::to_string(e),
        }?;
        RawValue::from_string(json)
    }

    /// Wraps the event in a new envelope with a fresh, time-ordered id.
    pub fn into_envelope(&self, trace: TraceContext) -> Result<Envelope, EnvelopeError> {
        Ok(Envelope {
            id: Uuid::now_v7(),
            event_type: self.type_name().to_owned(),
            aggregate_id: self.order_id(),
            occurred_at: Utc::now(),
            trace,
            payload: self.payload_json().map_err(EnvelopeError::Encode)?,
        })
    }

    pub fn from_envelope(envelope: &Envelope) -> Result<Event, EnvelopeError> {
        fn parse<T: serde::de::DeserializeOwned>(env: &Envelope) -> Result<T, EnvelopeError> {
            serde_json::from_str(env.payload.get()).map_err(|source| EnvelopeError::BadPayload {
                event_type: env.event_type.clone(),
                source,
            })
        }
        let Some(event_type) = EventType::named(&envelope.event_type) else {
            return Err(EnvelopeError::UnknownType(envelope.event_type.clone()));
        };
        Ok(match event_type {
            EventType::OrderCreated => Event::OrderCreated(parse(envelope)?),
            EventType::StockReserved => Event::StockReserved(parse(envelope)?),
            EventType::StockRejected => Event::StockRejected(parse(envelope)?),
            EventType::StockReleased => Event::StockReleased(parse(envelope)?),
            EventType::PaymentCompleted => Event::PaymentCompleted(parse(envelope)?),
            EventType::PaymentFailed => Event::PaymentFailed(parse(envelope)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Event> {
        let order_id = Uuid::now_v7();
        vec![
            Event::OrderCreated(OrderCreated {
                order_id,
                user_id: 1,
                product_id: 2,
                quantity: 3,
            }),
            Event::StockReserved(StockReserved {
                order_id,
                user_id: 1,
                product_id: 2,
                quantity: 3,
                amount_cents: 300,
            }),
            Event::StockRejected(StockRejected {
                order_id,
                product_id: 2,
                reason: FailureReason::OutOfStock,
            }),
            Event::StockReleased(StockReleased {
                order_id,
                product_id: 2,
                quantity: 3,
            }),
            Event::PaymentCompleted(PaymentCompleted {
                order_id,
                user_id: 1,
                amount_cents: 300,
            }),
            Event::PaymentFailed(PaymentFailed {
                order_id,
                user_id: 1,
                amount_cents: 300,
                reason: FailureReason::PaymentDeclined,
            }),
        ]
    }

    #[test]
    fn every_event_survives_the_envelope_round_trip() {
        for event in samples() {
            let trace = TraceContext {
                request_id: Some("r-1".into()),
                traceparent: None,
            };
            let bytes = event
                .into_envelope(trace.clone())
                .unwrap()
                .encode()
                .unwrap();
            let envelope = Envelope::decode(&bytes).unwrap();
            assert_eq!(envelope.trace, trace);
            assert_eq!(envelope.aggregate_id, event.order_id());
            assert_eq!(Event::from_envelope(&envelope).unwrap(), event);
            assert_eq!(envelope.event_type, event.event_type().name());
            assert!(event.subject_suffix().starts_with(event.source().token()));
        }
        let mut types: Vec<EventType> = samples().iter().map(Event::event_type).collect();
        types.dedup();
        assert_eq!(types, EventType::ALL, "one sample of every type");
    }

    #[test]
    fn unknown_types_and_bad_payloads_are_told_apart() {
        let mut envelope = samples()[0].into_envelope(TraceContext::default()).unwrap();
        envelope.event_type = "OrderExploded".into();
        assert!(matches!(
            Event::from_envelope(&envelope),
            Err(EnvelopeError::UnknownType(_))
        ));
        envelope.event_type = "StockReserved".into();
        assert!(matches!(
            Event::from_envelope(&envelope),
            Err(EnvelopeError::BadPayload { .. })
        ));
        assert!(matches!(
            Envelope::decode(b"{not json"),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn failure_reasons_round_trip_through_their_names() {
        for reason in FailureReason::ALL {
            assert_eq!(FailureReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(FailureReason::parse("NOPE"), None);
    }
}
