//! The event envelope: what travels on the broker and sits in the outbox.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// Context carried from the HTTP request that caused an event to every event it leads to,
/// so a consumer's log lines link back to the request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// An event as published: identity (the id is the broker's `Nats-Msg-Id` and the inbox key),
/// type, the aggregate it concerns, time, trace context, and the type-specific payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub aggregate_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    #[serde(default)]
    pub trace: TraceContext,
    pub payload: Box<RawValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message is not a valid event envelope: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("payload of {event_type} does not match its schema: {source}")]
    BadPayload {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("could not encode event: {0}")]
    Encode(#[source] serde_json::Error),
}

impl Envelope {
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        serde_json::from_slice(bytes).map_err(EnvelopeError::Malformed)
    }

    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        serde_json::to_vec(self).map_err(EnvelopeError::Encode)
    }
}
