//! One group-commit transaction: every request of a batch decided and written with one
//! statement per step, whatever the batch's size.
//!
//! 1. A key's second request in the batch is `409` (the key's lock is re-entrant here).
//! 2. The keys' locks (`409` when another transaction holds one), and in the same statement
//!    the buyers' open orders; then the keys' records: a key used before with the same body
//!    replays its order, with another body is `422`.
//! 3. Fair use: only the orders that fit under `max_open_orders` are written; the others are
//!    `429`. A replay is not a new order and is not counted against the cap.
//! 4. The orders (with their keys, and the transaction's id), then their `OrderCreated` events.
//!
//! See `fair_use.rs` for how exact the cap is.

use super::outcome::CommitOutcome;
use super::{Answer, Placed, Request};
use crate::error::OrderError;
use crate::fair_use::{self, Limited};
use crate::idempotency::{self, KeyOf};
use crate::orders::{self, Order, OrderToWrite};
use platform::broker::Topology;
use platform::envelope::TraceContext;
use platform::events::Event;
use platform::outbox;
use platform::telemetry::spans::{self, Link};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use tracing::Instrument;

/// Where and under which cap a batch is written.
pub(super) struct Target<'a> {
    pub pool: &'a PgPool,
    pub topology: &'a Topology,
    pub max_open_orders: u32,
}

/// What one batch's transaction did, as far as it got.
pub(super) struct Attempt {
    /// The answers that do not depend on the commit (replays and refusals), by request.
    decided: Vec<Option<Answer>>,
    /// The orders inserted, with the index of their request.
    pub written: Vec<(usize, Order)>,
    /// The transaction's id, once it wrote.
    pub xid: Option<i64>,
    /// Why the transaction did not commit, if it did not.
    pub failure: Option<OrderError>,
}

impl Attempt {
    /// Each request's answer, in the batch's order, given what became of the commit.
    pub fn answers(self, outcome: CommitOutcome) -> Vec<Answer> {
        let mut answers = self.decided;
        for (index, order) in self.written {
            if let Some(slot) = answers.get_mut(index) {
                *slot = Some(match outcome {
                    CommitOutcome::Committed => Ok(Placed {
                        order,
                        replayed: false,
                    }),
                    CommitOutcome::Aborted => Err(refusal(self.failure.as_ref())),
                    CommitOutcome::Unknown => {
                        Err(OrderError::OutcomeUnknown { order_id: order.id })
                    }
                });
            }
        }
        // Neither decided nor written: the transaction failed before writing them.
        answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|| Err(refusal(self.failure.as_ref()))))
            .collect()
    }

    fn undecided(&self) -> Vec<usize> {
        (0..self.decided.len())
            .filter(|i| self.decided[*i].is_none())
            .collect()
    }

    fn decide(&mut self, index: usize, answer: Answer) {
        if let Some(slot) = self.decided.get_mut(index) {
            *slot = Some(answer);
        }
    }
}

/// What a request whose order was not written is told: nothing was written, and why.
fn refusal(failure: Option<&OrderError>) -> OrderError {
    failure.map_or(OrderError::Internal, OrderError::from_batch_failure)
}

/// Writes the batch in one transaction; never answers a request wrongly on failure (the
/// caller resolves a failed commit).
pub(super) async fn write(target: &Target<'_>, batch: &[Request]) -> Attempt {
    let mut attempt = Attempt {
        decided: (0..batch.len()).map(|_| None).collect(),
        written: Vec::new(),
        xid: None,
        failure: None,
    };
    // The commit serves many orders: a span of its own, linked to each request's span.
    let span = spans::linked(
        "intake commit",
        "internal",
        batch
            .iter()
            .map(|request| Link::Traceparent(request.trace.traceparent.as_deref())),
    );
    let written = transaction(target, batch, &mut attempt).instrument(span);
    if let Err(error) = written.await {
        attempt.failure = Some(error);
    }
    attempt
}

async fn transaction(
    target: &Target<'_>,
    batch: &[Request],
    attempt: &mut Attempt,
) -> Result<(), OrderError> {
    refuse_duplicate_keys(batch, attempt);
    let mut tx = target.pool.begin().await?;
    let open = replay_or_refuse_keys(&mut tx, batch, attempt).await?;
    admit(batch, attempt, &open, target.max_open_orders);
    let new = attempt.undecided();
    if new.is_empty() {
        // End the transaction explicitly: its keys' locks must not outlive the answers (a
        // dropped transaction rolls back lazily, and the client's retry would be a 409).
        tx.rollback().await?;
        return Ok(());
    }
    let rows: Vec<OrderToWrite> = new
        .iter()
        .map(|&i| OrderToWrite {
            id: batch[i].id,
            order: batch[i].order,
            key: batch[i].key.as_deref(),
            traceparent: batch[i].trace.traceparent.as_deref(),
        })
        .collect();
    let written = orders::insert_orders(&mut tx, &rows).await?;
    attempt.xid = Some(written.xid);
    attempt.written = new.into_iter().zip(written.orders).collect();
    let events: Vec<(Event, TraceContext)> = attempt
        .written
        .iter()
        .map(|(i, order)| {
            (
                orders::order_created(order.id, batch[*i].order),
                batch[*i].trace.clone(),
            )
        })
        .collect();
    outbox::enqueue_all(&mut tx, target.topology, &events).await?;
    tx.commit().await?;
    Ok(())
}

fn key_of(request: &Request) -> Option<KeyOf<'_>> {
    request.key.as_deref().map(|key| KeyOf {
        user_id: request.order.user_id,
        key,
    })
}

fn refuse_duplicate_keys(batch: &[Request], attempt: &mut Attempt) {
    let keys: Vec<Option<KeyOf>> = batch.iter().map(key_of).collect();
    for (index, duplicate) in idempotency::later_duplicates(&keys).into_iter().enumerate() {
        if duplicate {
            attempt.decide(index, Err(OrderError::IdempotencyInProgress));
        }
    }
}

/// Locks the undecided requests' keys (counting their buyers' open orders in the same
/// statement), then answers those whose key was used before. Returns the open orders by buyer.
async fn replay_or_refuse_keys(
    conn: &mut PgConnection,
    batch: &[Request],
    attempt: &mut Attempt,
) -> Result<HashMap<i64, i64>, OrderError> {
    let undecided = attempt.undecided();
    let buyers: Vec<i64> = undecided.iter().map(|&i| batch[i].order.user_id).collect();
    let keyed: Vec<(usize, KeyOf)> = undecided
        .into_iter()
        .filter_map(|i| key_of(&batch[i]).map(|key| (i, key)))
        .collect();
    if keyed.is_empty() {
        return Ok(orders::open_orders_by_buyer(conn, &buyers).await?);
    }
    let keys: Vec<KeyOf> = keyed.iter().map(|(_, key)| *key).collect();
    let (locked, open) = idempotency::try_lock_counting_open_orders(conn, &keys, &buyers).await?;
    let mut held = Vec::with_capacity(keyed.len());
    for ((index, key), locked) in keyed.into_iter().zip(locked) {
        if locked {
            held.push((index, key));
        } else {
            attempt.decide(index, Err(OrderError::IdempotencyInProgress));
        }
    }
    if held.is_empty() {
        return Ok(open);
    }
    let keys: Vec<KeyOf> = held.iter().map(|(_, key)| *key).collect();
    let records = idempotency::find(conn, &keys).await?;
    for ((index, _), record) in held.into_iter().zip(records) {
        let Some(record) = record else {
            continue;
        };
        let order = &batch[index].order;
        let answer = if record.product_id == order.product_id && record.quantity == order.quantity {
            Ok(Placed {
                order: record.order,
                replayed: true,
            })
        } else {
            Err(OrderError::IdempotencyKeyReused)
        };
        attempt.decide(index, answer);
    }
    Ok(open)
}

/// Refuses the undecided orders that do not fit under their buyer's open-orders cap (a
/// replay is decided already: it is not a new order).
fn admit(batch: &[Request], attempt: &mut Attempt, open: &HashMap<i64, i64>, cap: u32) {
    let new = attempt.undecided();
    let buyers: Vec<i64> = new.iter().map(|&i| batch[i].order.user_id).collect();
    for (index, admitted) in new.into_iter().zip(fair_use::admit(&buyers, open, cap)) {
        if !admitted {
            Limited::OpenOrders.count();
            attempt.decide(index, Err(OrderError::TooManyOpenOrders { cap }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderStatus;
    use uuid::Uuid;

    fn order(n: u128) -> Order {
        let now = chrono::Utc::now();
        Order {
            id: Uuid::from_u128(n),
            user_id: 7,
            product_id: 1,
            quantity: 1,
            status: OrderStatus::Pending,
            failure_reason: None,
            amount_cents: None,
            created_at: now,
            updated_at: now,
            finalized_at: None,
        }
    }

    /// Four requests: a replay and a 409 decided in the transaction, two orders written, the
    /// commit then lost its connection (an I/O error).
    fn attempt() -> Attempt {
        let mut attempt = Attempt {
            decided: (0..4).map(|_| None).collect(),
            written: vec![(1, order(11)), (3, order(13))],
            xid: Some(42),
            failure: Some(OrderError::Database(sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::UnexpectedEof,
            )))),
        };
        attempt.decide(
            0,
            Ok(Placed {
                order: order(10),
                replayed: true,
            }),
        );
        attempt.decide(2, Err(OrderError::IdempotencyInProgress));
        attempt
    }

    fn describe(answers: &[Answer]) -> Vec<String> {
        answers
            .iter()
            .map(|answer| match answer {
                Ok(placed) => format!(
                    "202 {} replayed={}",
                    placed.order.id.as_u128(),
                    placed.replayed
                ),
                Err(OrderError::OutcomeUnknown { order_id }) => {
                    format!("unknown {}", order_id.as_u128())
                }
                Err(error) => format!("{error:?}"),
            })
            .collect()
    }

    #[test]
    fn written_orders_are_answered_by_the_commits_outcome_and_the_others_keep_theirs() {
        assert_eq!(
            describe(&attempt().answers(CommitOutcome::Committed)),
            [
                "202 10 replayed=true",
                "202 11 replayed=false",
                "IdempotencyInProgress",
                "202 13 replayed=false"
            ]
        );
        assert_eq!(
            describe(&attempt().answers(CommitOutcome::Aborted)),
            [
                "202 10 replayed=true",
                "Unavailable",
                "IdempotencyInProgress",
                "Unavailable"
            ]
        );
        assert_eq!(
            describe(&attempt().answers(CommitOutcome::Unknown)),
            [
                "202 10 replayed=true",
                "unknown 11",
                "IdempotencyInProgress",
                "unknown 13"
            ]
        );
    }

    #[test]
    fn requests_neither_decided_nor_written_are_told_nothing_was_written() {
        let mut attempt = attempt();
        attempt.written.clear();
        attempt.xid = None;
        assert_eq!(
            describe(&attempt.answers(CommitOutcome::Aborted)),
            [
                "202 10 replayed=true",
                "Unavailable",
                "IdempotencyInProgress",
                "Unavailable"
            ]
        );
    }
}
