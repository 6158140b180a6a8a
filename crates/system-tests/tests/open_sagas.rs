//! The one definition of an open saga (the orders database's `order_saga_open`, migration
//! `open_sagas`): what it says for every status and failure reason, and that asking it still
//! finds open orders through their partial index — the re-drive, the load test's monitor and its
//! audit all ask it.

use platform::events::FailureReason;
use system_tests::{Options, TestSystem};

/// What the saga rule must say: open until final, and a failed payment stays open until
/// inventory confirms its stock went back.
fn expected_open(status: &str, reason: Option<FailureReason>, released: bool) -> bool {
    match (status, reason) {
        ("PENDING", _) => true,
        (
            "FAILED",
            Some(
                FailureReason::PaymentDeclined
                | FailureReason::InsufficientFunds
                | FailureReason::UnknownAccount,
            ),
        ) => !released,
        _ => false,
    }
}

#[tokio::test]
async fn the_saga_rule_covers_every_status_and_reason() {
    let system = TestSystem::start(Options::default()).await;
    // Every (status, reason) an order row can hold: a reason exactly when FAILED.
    let rows = ["PENDING", "COMPLETED"]
        .map(|status| (status, None))
        .into_iter()
        .chain(FailureReason::ALL.map(|reason| ("FAILED", Some(reason))));
    let mut asked = 0;
    for (status, reason) in rows {
        {
            for released in [false, true] {
                let open: bool = sqlx::query_scalar(
                    "SELECT order_saga_open($1, $2, CASE WHEN $3 THEN now() END)",
                )
                .bind(status)
                .bind(reason.map(FailureReason::as_str))
                .bind(released)
                .fetch_one(&system.order.pool)
                .await
                .expect("ask the saga rule");
                assert_eq!(
                    open,
                    expected_open(status, reason, released),
                    "{status} {reason:?} released={released}"
                );
                asked += 1;
            }
        }
    }
    assert_eq!(asked, (2 + FailureReason::ALL.len()) * 2);
}

/// The rule is an inlined SQL function, so the view's filter and the index's predicate are the
/// same expression: the planner can answer "oldest open saga" from `orders_open` alone. (Sequential
/// scans are switched off so that a near-empty table does not hide a predicate that no longer
/// matches.)
#[tokio::test]
async fn open_sagas_are_found_through_their_index() {
    let system = TestSystem::start(Options::default()).await;
    let mut tx = system.order.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .expect("no sequential scans");
    for query in [
        "EXPLAIN SELECT min(created_at) FROM open_sagas",
        "EXPLAIN SELECT id FROM open_sagas ORDER BY created_at LIMIT 200 FOR UPDATE SKIP LOCKED",
    ] {
        let plan: Vec<String> = sqlx::query_scalar(query)
            .fetch_all(&mut *tx)
            .await
            .expect("explain");
        let plan = plan.join("\n");
        assert!(plan.contains("orders_open"), "{query}:\n{plan}");
    }
}
