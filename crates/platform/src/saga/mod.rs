//! One order's saga as each service tells it (`GET /admin/sagas/{order_id}` on every admin
//! listener; `loadtest saga` merges the three): the service's own records of the order, and what
//! its messaging tables hold about it — events still waiting in its outbox, the events its
//! consumers took (the inbox), and dead letters with what operators did about them. The
//! messaging lookups are the same in every service and written here once; each service reads
//! its own records ([`SagaRecords`]). The wire types are declared here once too, so the services
//! and the CLI that reads them cannot disagree.
//!
//! Nothing here writes: the story is read in one read-only snapshot of the service's database,
//! from rows the pipeline writes anyway.

mod routes;

pub use routes::{routes, ApiDoc};

use crate::dead_letters::DeadLetter;
use crate::desk::Action;
use crate::envelope::Envelope;
use chrono::{DateTime, Utc};
pub use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

/// The most rows of one kind a part holds (an order has a handful; a runaway re-drive loop or a
/// poison order parked again and again should not make the answer unbounded).
pub const MAX_ROWS: i64 = 1000;

/// What one service tells about one order.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SagaPart {
    /// `order`, `inventory` or `payment`.
    pub service: String,
    pub order_id: Uuid,
    /// When the service read it (its database's clock).
    pub read_at: DateTime<Utc>,
    /// The service's own rows about the order.
    pub records: Records,
    /// The order's events still waiting in this service's outbox (not yet acknowledged by the
    /// broker), oldest first.
    pub outbox: Vec<WaitingEvent>,
    /// The order's events this service's consumers took, when (the inbox; the order service
    /// keeps none: its outcomes are applied idempotently).
    pub inbox: Vec<ReceivedEvent>,
    /// Dead letters that concern the order, with every replay or discard of them.
    pub dead_letters: Vec<OrderDeadLetter>,
}

/// A service's own rows about an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Records {
    /// The order service's row (none: it does not know the order).
    Order { order: Option<OrderRecord> },
    /// Inventory's answer: a reservation or a rejection (neither: not asked yet).
    Inventory {
        reservation: Option<ReservationRecord>,
        rejection: Option<RejectionRecord>,
    },
    /// Payment's charge (none: not charged yet).
    Payment { charge: Option<ChargeRecord> },
}

/// The order as the order service keeps it. Its status history is in its timestamps: created
/// (`PENDING`), final (`finalized_at`), stock confirmed back after a failed payment
/// (`stock_released_at`); `updated_at` is the last change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OrderRecord {
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub status: String,
    pub failure_reason: Option<String>,
    pub amount_cents: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
    pub stock_released_at: Option<DateTime<Utc>>,
    /// How often the re-drive asked the order's next step again, and when last.
    pub redrive_count: i32,
    pub redriven_at: Option<DateTime<Utc>>,
    /// Whether the saga is open, by the orders database's one rule (`order_saga_open`).
    pub open: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ReservationRecord {
    pub product_id: i64,
    pub quantity: i32,
    pub amount_cents: i64,
    /// `ACTIVE` or `RELEASED`.
    pub status: String,
    pub reserved_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RejectionRecord {
    pub product_id: i64,
    pub reason: String,
    pub rejected_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ChargeRecord {
    pub amount_cents: i64,
    /// `SUCCEEDED` or `FAILED`.
    pub status: String,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// An open saga as the order service lists it (`GET /admin/sagas`, the `open_sagas` view).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OpenSaga {
    pub order_id: Uuid,
    pub status: String,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub redrive_count: i32,
    pub redriven_at: Option<DateTime<Utc>>,
}

/// An event of the order still in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WaitingEvent {
    pub seq: i64,
    pub event_id: Uuid,
    /// The envelope's `type` (`?` if the row does not decode).
    pub event_type: String,
    pub subject: String,
    pub created_at: DateTime<Utc>,
}

/// An event of the order a consumer took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ReceivedEvent {
    /// The durable consumer (the contract says which event types it takes).
    pub consumer: String,
    pub event_id: Uuid,
    pub processed_at: DateTime<Utc>,
}

/// A dead letter that concerns the order, and what operators did about it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderDeadLetter {
    pub letter: DeadLetter,
    pub actions: Vec<Action>,
}

impl Records {
    /// The service that tells them: `order`, `inventory` or `payment`.
    pub fn service(&self) -> &'static str {
        match self {
            Records::Order { .. } => "order",
            Records::Inventory { .. } => "inventory",
            Records::Payment { .. } => "payment",
        }
    }
}

/// A service's own rows about an order, read in the caller's transaction.
pub trait SagaRecords: Send + Sync + 'static {
    fn records<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        order_id: Uuid,
    ) -> BoxFuture<'a, Result<Records, sqlx::Error>>;
}

/// What a service tells about `order_id`: its records and its messaging rows, read on `conn`
/// (the caller's transaction: one snapshot for all of them).
pub async fn tell(
    conn: &mut PgConnection,
    order_id: Uuid,
    records: &dyn SagaRecords,
) -> Result<SagaPart, sqlx::Error> {
    let read_at: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *conn)
        .await?;
    let records = records.records(&mut *conn, order_id).await?;
    Ok(SagaPart {
        service: records.service().to_owned(),
        order_id,
        read_at,
        records,
        outbox: waiting_events(&mut *conn, order_id).await?,
        inbox: received_events(&mut *conn, order_id).await?,
        dead_letters: dead_letters(&mut *conn, order_id).await?,
    })
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    seq: i64,
    event_id: Uuid,
    subject: String,
    envelope: Vec<u8>,
    created_at: DateTime<Utc>,
}

/// The order's events still in the outbox, by `aggregate_id` (indexed in the order service's
/// outbox; the other services' outboxes are empty unless their relay is behind).
async fn waiting_events(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Vec<WaitingEvent>, sqlx::Error> {
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT seq, event_id, subject, envelope, created_at FROM outbox
         WHERE aggregate_id = $1 ORDER BY seq LIMIT $2",
    )
    .bind(order_id)
    .bind(MAX_ROWS)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| WaitingEvent {
            seq: row.seq,
            event_id: row.event_id,
            event_type: Envelope::decode(&row.envelope)
                .map(|e| e.event_type)
                .unwrap_or_else(|_| "?".to_owned()),
            subject: row.subject,
            created_at: row.created_at,
        })
        .collect())
}

/// How long before an order's creation an event about it may be recorded by a host whose clock
/// is behind: generous, it only widens the walk over `inbox_processed_at`.
const CLOCK_SKEW: chrono::Duration = chrono::Duration::hours(1);

/// When the order was created, by its id: order ids are UUIDv7 (a millisecond timestamp). Any
/// other id: the beginning of the inbox.
fn created_by_id(order_id: Uuid) -> DateTime<Utc> {
    order_id
        .get_timestamp()
        .and_then(|ts| {
            let (secs, nanos) = ts.to_unix();
            DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
        })
        .map(|at| at - CLOCK_SKEW)
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// The order's events the consumers took. The inbox has no index by order (it would cost every
/// event a write): the walk goes through `inbox_processed_at` from the order's creation on.
async fn received_events(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Vec<ReceivedEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT consumer, message_id AS event_id, processed_at FROM inbox
         WHERE aggregate_id = $1 AND processed_at >= $2
         ORDER BY processed_at, consumer LIMIT $3",
    )
    // Planned for the bound given: a generic plan does not know it is recent.
    .persistent(false)
    .bind(order_id)
    .bind(created_by_id(order_id))
    .bind(MAX_ROWS)
    .fetch_all(conn)
    .await
}

/// Dead letters whose payload names the order (its envelope's `aggregate_id`, or anywhere in
/// an undecodable one). A scan: dead letters are few, and kept 30 days once resolved.
async fn dead_letters(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Vec<OrderDeadLetter>, sqlx::Error> {
    let letters: Vec<DeadLetter> = sqlx::query_as(
        "SELECT id, consumer, subject, message_id, event_id, kind, deliveries, reason, status,
                failed_at, resolved_at, resolved_by
         FROM dead_letters WHERE position($1::bytea IN payload) > 0
         ORDER BY id LIMIT $2",
    )
    .bind(order_id.to_string().into_bytes())
    .bind(MAX_ROWS)
    .fetch_all(&mut *conn)
    .await?;
    let ids: Vec<i64> = letters.iter().map(|l| l.id).collect();
    let mut actions: Vec<Action> = sqlx::query_as(
        "SELECT id, dead_letter_id, action, actor, succeeded, detail, at
         FROM dead_letter_actions WHERE dead_letter_id = ANY($1) ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    Ok(letters
        .into_iter()
        .map(|letter| {
            let (own, rest) = actions
                .drain(..)
                .partition(|a| a.dead_letter_id == letter.id);
            actions = rest;
            OrderDeadLetter {
                letter,
                actions: own,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_id_tells_when_it_was_made_and_any_other_id_tells_nothing() {
        let made = Uuid::now_v7();
        let at = created_by_id(made) + CLOCK_SKEW;
        assert!((Utc::now() - at).num_seconds().abs() < 5, "{at}");
        assert_eq!(created_by_id(Uuid::new_v4()), DateTime::UNIX_EPOCH);
    }
}
