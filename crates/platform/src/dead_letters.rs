//! The dead-letter store: messages a consumer parked because they can never succeed as they
//! are — recorded once however often they come back, and listed for operators. It sits below the
//! consumer, which writes into it; replaying and discarding them is the operator's desk
//! (`crate::desk`), above the consumer.

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterKind {
    /// Not an event envelope, or an unknown type or payload shape.
    Undecodable,
    /// The handler rejected it for good (a constraint, a value out of range, an unknown order).
    Rejected,
    /// Handling it panicked on every delivery.
    Panic,
    /// It did not come the way the event contract says its type travels (another subject or
    /// stream, another order in its envelope, a type the consumer does not take): never
    /// applied, and never replayed — an operator can only discard it.
    Misrouted,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Undecodable => "undecodable",
            DeadLetterKind::Rejected => "rejected",
            DeadLetterKind::Panic => "panic",
            DeadLetterKind::Misrouted => "misrouted",
        }
    }
}

/// What a consumer parks.
pub struct NewDeadLetter<'a> {
    pub kind: DeadLetterKind,
    /// The event's id when the message decoded (a packed message parks each event on its own).
    pub event_id: Option<Uuid>,
    pub reason: String,
    pub payload: &'a [u8],
}

/// Parks a letter; returns false if the same one is already open. A message comes back whole
/// when any of its events failed transiently, and an event of it that can never succeed (or an
/// undecodable element) fails again at every delivery: it stays one open letter (by its event
/// id, or for an element without one by the message id and its bytes; the unique indexes of
/// migration 20261207000100).
pub async fn record(
    pool: &PgPool,
    consumer: &str,
    subject: &str,
    message_id: Option<&str>,
    deliveries: i64,
    letter: &NewDeadLetter<'_>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO dead_letters (consumer, subject, message_id, event_id, kind, deliveries, reason, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(subject)
    .bind(message_id)
    .bind(letter.event_id)
    .bind(letter.kind.as_str())
    .bind(deliveries)
    .bind(&letter.reason)
    .bind(letter.payload)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted > 0)
}

/// A dead letter as an operator sees it.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    pub consumer: String,
    pub subject: String,
    pub message_id: Option<String>,
    pub event_id: Option<Uuid>,
    pub kind: String,
    pub deliveries: i64,
    pub reason: String,
    pub status: String,
    pub failed_at: chrono::DateTime<chrono::Utc>,
    pub resolved_at: Option<chrono::DateTime<chrono::Utc>>,
    pub resolved_by: Option<String>,
}

/// Which dead letters to list.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListFilter {
    /// `open` (the default), `replayed`, `discarded` or `all`.
    pub status: Option<String>,
    /// Only those whose reason contains this text.
    pub reason: Option<String>,
    pub limit: Option<i64>,
}

pub async fn list(pool: &PgPool, filter: &ListFilter) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let status = filter.status.as_deref().unwrap_or("open");
    sqlx::query_as(
        "SELECT id, consumer, subject, message_id, event_id, kind, deliveries, reason, status,
                failed_at, resolved_at, resolved_by
         FROM dead_letters
         WHERE ($1 = 'all' OR status = $1) AND strpos(reason, $2) > 0
         ORDER BY id DESC LIMIT $3",
    )
    .bind(status)
    .bind(filter.reason.as_deref().unwrap_or(""))
    .bind(filter.limit.unwrap_or(1000).clamp(1, 10_000))
    .fetch_all(pool)
    .await
}

/// How many of `consumer`'s letters are open (waiting for an operator): what the consumer
/// reports as `dead_letters_open`. Counted through the partial index of open letters.
pub async fn count_open(conn: &mut PgConnection, consumer: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE status = 'open' AND consumer = $1")
        .bind(consumer)
        .fetch_one(conn)
        .await
}
