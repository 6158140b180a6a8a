//! Inventory's answer for an order is unique by construction (issue 21, item 3): two deliveries
//! of one order (a re-drive copy, a replica, a replayed dead letter) in two concurrent
//! transactions can never record both a rejection and a reservation, even when the product
//! appears between them — the order would FAIL while payment charges it.

use inventory_service::stock::{self, Decision, OrderLine};
use platform::events::FailureReason;
use platform::testing::eventually;
use std::time::Duration;
use system_tests::{Options, TestSystem};
use uuid::Uuid;

/// Decisions recorded for the order, in both of inventory's tables.
async fn decisions_recorded(system: &TestSystem, order_id: Uuid) -> (i64, i64) {
    let count = |table: &'static str| async move {
        sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table} WHERE order_id = $1"))
            .bind(order_id)
            .fetch_one(&system.inventory.pool)
            .await
            .expect("count decisions")
    };
    (count("stock_rejections").await, count("reservations").await)
}

/// Whether some session of the inventory database is waiting for a lock.
async fn someone_waits_for_a_lock(system: &TestSystem) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                        WHERE datname = current_database() AND wait_event_type = 'Lock')",
    )
    .fetch_one(&system.inventory.pool)
    .await
    .expect("pg_stat_activity")
}

/// The race from the issue: the first delivery finds no product and decides UNKNOWN_PRODUCT
/// (nothing to lock); the product is created; the second delivery locks the product and, not
/// seeing the first one's uncommitted rejection, would reserve. The second must wait for the
/// first and give its answer.
#[tokio::test]
async fn two_deliveries_of_one_order_around_a_new_product_get_one_decision() {
    let system = TestSystem::start(Options::default()).await;
    let product_id = 4_242;
    let line = OrderLine {
        order_id: Uuid::now_v7(),
        user_id: 7,
        product_id,
        quantity: 2,
    };

    let mut first = system.inventory.pool.begin().await.expect("begin first");
    let first_answer = stock::reserve_stock(&mut first, &[line])
        .await
        .expect("first delivery decides");
    assert_eq!(
        first_answer,
        vec![Decision::Rejected(FailureReason::UnknownProduct)]
    );

    // The product appears between the two deliveries (committed through the admin API).
    system.create_product(product_id, 1_000, 10).await;

    let pool = system.inventory.pool.clone();
    let second = tokio::spawn(async move {
        let mut tx = pool.begin().await.expect("begin second");
        let answer = stock::reserve_stock(&mut tx, &[line])
            .await
            .expect("second delivery decides");
        tx.commit().await.expect("commit second");
        answer
    });
    // The second delivery either waits for the first (one decision per order) or has already
    // decided on its own (the defect); either way, let the first commit now.
    let settled = eventually(Duration::from_secs(10), || async {
        (second.is_finished() || someone_waits_for_a_lock(&system).await).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "the second delivery neither decided nor waited"
    );
    first.commit().await.expect("commit first");
    let second_answer = second.await.expect("second delivery's task");

    assert_eq!(
        decisions_recorded(&system, line.order_id).await,
        (1, 0),
        "exactly one decision recorded: the first delivery's rejection, no reservation"
    );
    assert_eq!(
        second_answer, first_answer,
        "both deliveries give the same answer"
    );
    assert_eq!(system.stock(product_id).await, 10, "no stock taken");
}

/// Orders asked about in two batches that overlap in opposite order, all for products that do
/// not exist yet: each batch waits for the other's orders as needed, neither deadlocks, and
/// every order ends with exactly one decision.
#[tokio::test]
async fn overlapping_batches_in_opposite_order_neither_deadlock_nor_decide_twice() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 100, 1_000).await;
    let lines: Vec<OrderLine> = (0..40)
        .map(|i| OrderLine {
            order_id: Uuid::now_v7(),
            user_id: 7,
            // Half for a product that exists, half for one that does not.
            product_id: if i % 2 == 0 { 1 } else { 9_000 + i },
            quantity: 1,
        })
        .collect();
    let reversed: Vec<OrderLine> = lines.iter().rev().copied().collect();
    let run = |batch: Vec<OrderLine>| {
        let pool = system.inventory.pool.clone();
        tokio::spawn(async move {
            let mut tx = pool.begin().await.expect("begin");
            let answers = stock::reserve_stock(&mut tx, &batch)
                .await
                .expect("batch decides");
            tx.commit().await.expect("commit");
            batch
                .iter()
                .map(|l| l.order_id)
                .zip(answers)
                .collect::<std::collections::HashMap<_, _>>()
        })
    };
    let (one, other) = tokio::join!(run(lines.clone()), run(reversed));
    let (one, other) = (one.expect("first batch"), other.expect("second batch"));
    assert_eq!(one, other, "both batches give every order the same answer");
    for line in &lines {
        let (rejections, reservations) = decisions_recorded(&system, line.order_id).await;
        assert_eq!(rejections + reservations, 1, "order {}", line.order_id);
    }
    assert_eq!(system.stock(1).await, 1_000 - 20, "each reservation once");
}
