//! The operator's dead-letter desk: a dead letter stays `open` until an operator replays it
//! (applied again through the consumer that parked it, once the cause is fixed) or discards it;
//! every replay and discard is recorded with who asked, when and what came of it. It sits above
//! the consumer (it replays through it); the letters themselves are `crate::dead_letters`'.

use crate::consumer::{BackgroundConsumer, HandlerError, ReplayError};
use crate::dead_letters::DeadLetterKind;
use crate::outbox::OutboxSignal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;

/// One recorded replay or discard.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Action {
    pub id: i64,
    pub dead_letter_id: i64,
    pub action: String,
    pub actor: String,
    pub succeeded: bool,
    pub detail: Option<String>,
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    #[error("no such dead letter")]
    NotFound,
    #[error("the dead letter is already {0}")]
    Resolved(String),
    #[error("no consumer named {0} in this service")]
    UnknownConsumer(String),
    #[error("replay failed: {0}")]
    ReplayFailed(HandlerError),
    /// The letter's event did not come the way the contract says its type travels.
    #[error("misrouted: {0}")]
    Misrouted(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The operator's desk: replays dead letters through the consumers that parked them.
#[derive(Clone)]
pub struct DeadLetterDesk {
    pub(crate) pool: PgPool,
    consumers: Vec<Arc<dyn BackgroundConsumer>>,
    signal: OutboxSignal,
}

/// What an operator does with a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Replay,
    Discard,
}

impl Resolution {
    fn action(self) -> &'static str {
        match self {
            Resolution::Replay => "replay",
            Resolution::Discard => "discard",
        }
    }

    fn status(self) -> &'static str {
        match self {
            Resolution::Replay => "replayed",
            Resolution::Discard => "discarded",
        }
    }
}

/// What a bulk replay or discard did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct BulkOutcome {
    pub matched: u64,
    pub resolved: u64,
    pub failed: Vec<BulkFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct BulkFailure {
    pub id: i64,
    pub error: String,
}

impl DeadLetterDesk {
    pub fn new(
        pool: PgPool,
        consumers: Vec<Arc<dyn BackgroundConsumer>>,
        signal: OutboxSignal,
    ) -> Self {
        DeadLetterDesk {
            pool,
            consumers,
            signal,
        }
    }

    pub async fn replay(&self, id: i64, actor: &str) -> Result<(), DeskError> {
        self.resolve(id, actor, Resolution::Replay).await
    }

    /// Replays (or discards) every open dead letter whose reason contains `reason`, oldest first.
    pub async fn resolve_matching(
        &self,
        reason: &str,
        actor: &str,
        how: Resolution,
    ) -> Result<BulkOutcome, sqlx::Error> {
        let mut outcome = BulkOutcome::default();
        let mut after = 0i64;
        loop {
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM dead_letters WHERE status = 'open' AND strpos(reason, $1) > 0
                 AND id > $2 ORDER BY id LIMIT 100",
            )
            .bind(reason)
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
            let Some(last) = ids.last() else {
                return Ok(outcome);
            };
            after = *last;
            for id in ids {
                outcome.matched += 1;
                match self.resolve(id, actor, how).await {
                    Ok(()) => outcome.resolved += 1,
                    // Resolved meanwhile by someone else: nothing left to do.
                    Err(DeskError::Resolved(_)) => {}
                    Err(DeskError::Database(error)) => return Err(error),
                    Err(error) => outcome.failed.push(BulkFailure {
                        id,
                        error: error.to_string(),
                    }),
                }
            }
        }
    }

    /// Replays or discards one dead letter. The dead letter's row is locked and its new status
    /// written in the transaction that applies the event, so a replay takes effect once however
    /// often it is asked for. Every attempt is recorded.
    pub async fn resolve(&self, id: i64, actor: &str, how: Resolution) -> Result<(), DeskError> {
        let result = self.try_resolve(id, actor, how).await;
        let detail = result.as_ref().err().map(DeskError::to_string);
        if !matches!(result, Err(DeskError::NotFound)) && result.is_err() {
            // The successful attempts are recorded inside their transaction.
            self.record_action(id, how, actor, false, detail.as_deref())
                .await?;
        }
        match &result {
            Ok(()) => {
                tracing::info!(
                    dead_letter = id,
                    actor,
                    action = how.action(),
                    "dead letter resolved"
                )
            }
            Err(error) => {
                tracing::warn!(dead_letter = id, actor, action = how.action(), %error, "dead letter not resolved")
            }
        }
        result
    }

    async fn try_resolve(&self, id: i64, actor: &str, how: Resolution) -> Result<(), DeskError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, String, String, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT consumer, status, kind, subject, reason, payload FROM dead_letters
             WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((consumer, status, kind, subject, reason, payload)) = row else {
            return Err(DeskError::NotFound);
        };
        if status != "open" {
            return Err(DeskError::Resolved(status));
        }
        if how == Resolution::Replay {
            if kind == DeadLetterKind::Misrouted.as_str() {
                return Err(DeskError::Misrouted(reason));
            }
            let consumer = self
                .consumers
                .iter()
                .find(|c| c.name() == consumer)
                .ok_or(DeskError::UnknownConsumer(consumer))?;
            consumer
                .replay(&mut tx, &subject, &payload)
                .await
                .map_err(|error| match error {
                    ReplayError::Misrouted(reason) => DeskError::Misrouted(reason),
                    ReplayError::Failed(error) => DeskError::ReplayFailed(error),
                })?;
        }
        sqlx::query(
            "UPDATE dead_letters SET status = $2, resolved_at = now(), resolved_by = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(how.status())
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO dead_letter_actions (dead_letter_id, action, actor, succeeded) VALUES ($1, $2, $3, true)",
        )
        .bind(id)
        .bind(how.action())
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.signal.notify();
        Ok(())
    }

    async fn record_action(
        &self,
        id: i64,
        how: Resolution,
        actor: &str,
        succeeded: bool,
        detail: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO dead_letter_actions (dead_letter_id, action, actor, succeeded, detail)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(how.action())
        .bind(actor)
        .bind(succeeded)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn actions(&self, limit: i64) -> Result<Vec<Action>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, dead_letter_id, action, actor, succeeded, detail, at
             FROM dead_letter_actions ORDER BY id DESC LIMIT $1",
        )
        .bind(limit.clamp(1, 10_000))
        .fetch_all(&self.pool)
        .await
    }
}

mod routes;

pub use routes::{routes, ApiDoc};
