//! `answered orders`: every stored order was answered truthfully to the request that placed it.
//! `accepted orders` checks the other way (every `202` is stored); this one catches an order
//! that is stored while its client was told it was not (`503`, `429`, a refusal), which a
//! client without a key would place again, and an order no request of the run knows.
//!
//! Every order of a run is placed with an Idempotency-Key unique to the run, and the order
//! service stores the key with the order (`idempotency_keys`), so each stored order leads to
//! the request that placed it (`loadgen/answers.rs` holds each request's final answer):
//!
//! - `202` with this order, or `500 /problems/outcome-unknown` (the client was told to look):
//!   truthful;
//! - no answer (timeout, transport error) or an unclear one (another 5xx): nothing false was
//!   said; counted in the detail;
//! - `503`/`429` ("nothing was written"), another 4xx, or a `202` with another order: a
//!   violation;
//! - no key, or a key no request of the run was sent with: a violation.

use sqlx::postgres::PgPool;
use uuid::Uuid;

use super::check::name_ids as name;
use super::Check;
use crate::loadgen::answers::{FinalAnswer, RequestLog};

pub const CHECK_ANSWERED_ORDERS: &str = "answered orders";

/// The check over the orders database and the run's requests.
pub async fn answered_orders(orders: &PgPool, requests: &RequestLog) -> anyhow::Result<Check> {
    let stored: Vec<(Uuid, Option<String>)> = sqlx::query_as(
        "SELECT o.id, k.key FROM orders o LEFT JOIN idempotency_keys k ON k.order_id = o.id",
    )
    .fetch_all(orders)
    .await?;
    Ok(verdict(&stored, requests))
}

/// What each stored order's request was told, tallied; the violations by kind.
#[derive(Debug, Default)]
struct Tally {
    accepted: usize,
    outcome_unknown: usize,
    no_answer: usize,
    told_not_written: Vec<Uuid>,
    refused: Vec<Uuid>,
    other_order: Vec<Uuid>,
    no_key: Vec<Uuid>,
    unknown_key: Vec<Uuid>,
}

fn verdict(stored: &[(Uuid, Option<String>)], requests: &RequestLog) -> Check {
    let mut tally = Tally::default();
    for (id, key) in stored {
        let Some(key) = key else {
            tally.no_key.push(*id);
            continue;
        };
        let Some(record) = requests.lookup(key) else {
            tally.unknown_key.push(*id);
            continue;
        };
        match record.answer {
            FinalAnswer::Accepted(answered) if answered == *id => tally.accepted += 1,
            FinalAnswer::Accepted(_) => tally.other_order.push(*id),
            FinalAnswer::OutcomeUnknown(_) => tally.outcome_unknown += 1,
            FinalAnswer::NotWritten(_) => tally.told_not_written.push(*id),
            FinalAnswer::Refused(_) => tally.refused.push(*id),
            FinalAnswer::Unclear(_) | FinalAnswer::NoAnswer => tally.no_answer += 1,
            // A request never sent cannot have placed an order.
            FinalAnswer::Dropped => tally.unknown_key.push(*id),
        }
    }
    let (retried, retries) = requests
        .records()
        .filter(|r| r.retries > 0)
        .fold((0usize, 0u64), |(n, total), r| {
            (n + 1, total + u64::from(r.retries))
        });
    let violations: Vec<String> = [
        (
            "stored although told not written (503/429)",
            &tally.told_not_written,
        ),
        ("stored although refused (4xx)", &tally.refused),
        (
            "stored while its request was answered with another order",
            &tally.other_order,
        ),
        ("stored without an Idempotency-Key", &tally.no_key),
        (
            "stored under a key no request of the run was sent with",
            &tally.unknown_key,
        ),
    ]
    .into_iter()
    .filter(|(_, ids)| !ids.is_empty())
    .map(|(what, ids)| format!("{} {what}: {}", ids.len(), name(ids)))
    .collect();
    let counts = format!(
        "{} answered 202, {} outcome-unknown, {} without an answer; {retried} requests sent again ({retries} retries)",
        tally.accepted, tally.outcome_unknown, tally.no_answer
    );
    if violations.is_empty() {
        Check::new(
            CHECK_ANSWERED_ORDERS,
            true,
            format!(
                "all {} stored orders were answered truthfully: {counts}",
                stored.len()
            ),
        )
    } else {
        Check::new(
            CHECK_ANSWERED_ORDERS,
            false,
            format!(
                "of {} stored orders, {} ({counts})",
                stored.len(),
                violations.join("; ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::answers::RequestRecord;

    fn record(answer: FinalAnswer) -> RequestRecord {
        RequestRecord { answer, retries: 0 }
    }

    fn log() -> RequestLog {
        RequestLog::new("run1-".into())
    }

    #[test]
    fn orders_answered_202_or_outcome_unknown_or_unanswered_pass() {
        let mut requests = log();
        let (a, b, c, d) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(4),
        );
        requests.record(0, record(FinalAnswer::Accepted(a)));
        requests.record(
            1,
            RequestRecord {
                answer: FinalAnswer::OutcomeUnknown(b),
                retries: 2,
            },
        );
        requests.record(2, record(FinalAnswer::NoAnswer));
        requests.record_named("panic-0", record(FinalAnswer::Accepted(d)));
        // A request told "not written" whose order is indeed not stored is fine.
        requests.record(3, record(FinalAnswer::NotWritten(503)));
        let stored = vec![
            (a, Some("run1-0".to_owned())),
            (b, Some("run1-1".to_owned())),
            (c, Some("run1-2".to_owned())),
            (d, Some("run1-panic-0".to_owned())),
        ];
        let check = verdict(&stored, &requests);
        assert!(check.passed, "{}", check.detail);
        assert!(check
            .detail
            .contains("2 answered 202, 1 outcome-unknown, 1 without an answer"));
        assert!(
            check.detail.contains("1 requests sent again (2 retries)"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn an_order_stored_while_told_not_written_or_unknown_to_the_run_fails_and_is_named() {
        let mut requests = log();
        let ids: Vec<Uuid> = (1..=6).map(Uuid::from_u128).collect();
        requests.record(0, record(FinalAnswer::NotWritten(503)));
        requests.record(1, record(FinalAnswer::Refused(422)));
        requests.record(2, record(FinalAnswer::Accepted(Uuid::from_u128(99))));
        requests.record(3, record(FinalAnswer::Dropped));
        let stored = vec![
            (ids[0], Some("run1-0".to_owned())),
            (ids[1], Some("run1-1".to_owned())),
            (ids[2], Some("run1-2".to_owned())),
            (ids[3], Some("run1-3".to_owned())),
            (ids[4], None),
            (ids[5], Some("other-run-0".to_owned())),
        ];
        let check = verdict(&stored, &requests);
        assert!(!check.passed);
        for (id, what) in [
            (ids[0], "1 stored although told not written"),
            (ids[1], "1 stored although refused"),
            (
                ids[2],
                "1 stored while its request was answered with another order",
            ),
            (ids[4], "1 stored without an Idempotency-Key"),
            (
                ids[5],
                "2 stored under a key no request of the run was sent with",
            ),
        ] {
            assert!(
                check.detail.contains(&id.to_string()),
                "{id}: {}",
                check.detail
            );
            assert!(check.detail.contains(what), "{what}: {}", check.detail);
        }
    }

    #[test]
    fn many_violations_are_named_up_to_twenty() {
        let requests = log();
        let stored: Vec<(Uuid, Option<String>)> =
            (0..25).map(|n| (Uuid::from_u128(n), None)).collect();
        let check = verdict(&stored, &requests);
        assert!(!check.passed);
        assert!(check
            .detail
            .contains("25 stored without an Idempotency-Key"));
        assert!(check.detail.contains("(and 5 more)"), "{}", check.detail);
    }
}
