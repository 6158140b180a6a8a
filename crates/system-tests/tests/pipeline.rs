//! The order → stock → payment pipeline end to end, against real PostgreSQL and NATS.

use platform::events::Source;
use system_tests::{Options, TestSystem};

#[tokio::test]
async fn an_order_completes_and_is_charged_once() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;

    let id = system.accepted_order(7, 1, 2).await;
    assert_eq!(system.order(7, &id).await["status"], "PENDING");
    system.settle().await;

    let order = system.order(7, &id).await;
    assert_eq!(order["status"], "COMPLETED");
    assert_eq!(order["amount_cents"], 2_000);
    assert!(order["finalized_at"].is_string());
    assert_eq!(system.stock(1).await, 8);
    assert_eq!(system.balance(7).await, 98_000);
    let charges = TestSystem::count(
        &system.payment.pool,
        "SELECT count(*) FROM charges WHERE status = 'SUCCEEDED'",
    )
    .await;
    assert_eq!(charges, 1);
    for pool in [
        &system.order.pool,
        &system.inventory.pool,
        &system.payment.pool,
    ] {
        assert_eq!(
            TestSystem::count(pool, "SELECT count(*) FROM outbox").await,
            0,
            "outbox drained"
        );
    }
}

#[tokio::test]
async fn a_sold_out_order_fails_cleanly_and_leaves_stock_alone() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 1).await;
    system.open_account(7, 100_000).await;

    let too_many = system.accepted_order(7, 1, 2).await;
    let unknown = system.accepted_order(7, 99, 1).await;
    system.settle().await;

    let order = system.order(7, &too_many).await;
    assert_eq!(order["status"], "FAILED");
    assert_eq!(order["failure_reason"], "OUT_OF_STOCK");
    let order = system.order(7, &unknown).await;
    assert_eq!(order["failure_reason"], "UNKNOWN_PRODUCT");
    assert_eq!(system.stock(1).await, 1);
    assert_eq!(system.balance(7).await, 100_000);
    assert_eq!(
        TestSystem::count(&system.payment.pool, "SELECT count(*) FROM charges").await,
        0
    );
    assert_eq!(
        TestSystem::count(&system.inventory.pool, "SELECT count(*) FROM reservations").await,
        0
    );
}

#[tokio::test]
async fn a_declined_payment_restores_the_stock_and_charges_nothing() {
    let system = TestSystem::start(Options {
        decline_rate: 1.0,
        ..Options::default()
    })
    .await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;

    let id = system.accepted_order(7, 1, 3).await;
    system.settle().await;

    let order = system.order(7, &id).await;
    assert_eq!(order["status"], "FAILED");
    assert_eq!(order["failure_reason"], "PAYMENT_DECLINED");
    assert_eq!(system.stock(1).await, 10, "compensation put the units back");
    assert_eq!(system.balance(7).await, 100_000);
    let released = TestSystem::count(
        &system.inventory.pool,
        "SELECT count(*) FROM reservations WHERE status = 'RELEASED'",
    )
    .await;
    assert_eq!(released, 1);
    let failed = TestSystem::count(
        &system.payment.pool,
        "SELECT count(*) FROM charges WHERE status = 'FAILED'",
    )
    .await;
    assert_eq!(failed, 1);
    // Every outcome reached the order service (reserved, declined, released), and it published
    // nothing in reply: its only event is the order's `OrderCreated`, which is why its consumers
    // need not wake the outbox relay (`OrderOutcomes::writes_outbox`).
    assert_eq!(system.stream_messages(Source::Order).await, 1);
}

#[tokio::test]
async fn insufficient_funds_and_unknown_accounts_fail_with_their_reason() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 500).await;

    let poor = system.accepted_order(7, 1, 1).await;
    let stranger = system.accepted_order(8, 1, 1).await;
    system.settle().await;

    assert_eq!(
        system.order(7, &poor).await["failure_reason"],
        "INSUFFICIENT_FUNDS"
    );
    assert_eq!(
        system.order(8, &stranger).await["failure_reason"],
        "UNKNOWN_ACCOUNT"
    );
    assert_eq!(system.stock(1).await, 10);
    assert_eq!(system.balance(7).await, 500);
}

/// 500 concurrent orders for 10 units, with three consumers racing on the hot stock row.
#[tokio::test]
async fn a_storm_of_orders_sells_exactly_the_stock() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    for user in 1..=50 {
        system.open_account(user, 1_000_000).await;
    }

    let requests = (0..500).map(|n| system.place_order(n % 50 + 1, 1, 1));
    let responses = futures::future::join_all(requests).await;
    assert!(responses.iter().all(|r| r.status() == 202));

    system
        .order
        .driver
        .relay
        .publish_all_pending()
        .await
        .unwrap();
    let consumer = &system.inventory.driver.consumers[0];
    let racers = (0..3).map(|_| consumer.process_available());
    for result in futures::future::join_all(racers).await {
        result.unwrap();
    }
    system.settle().await;

    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status || coalesce(':' || failure_reason, ''), count(*) FROM orders GROUP BY 1 ORDER BY 1")
            .fetch_all(&system.order.pool)
            .await
            .unwrap();
    assert_eq!(
        by_status,
        vec![
            ("COMPLETED".to_string(), 10),
            ("FAILED:OUT_OF_STOCK".to_string(), 490)
        ]
    );
    assert_eq!(system.stock(1).await, 0);
    let charges = TestSystem::count(
        &system.payment.pool,
        "SELECT count(*) FROM charges WHERE status = 'SUCCEEDED'",
    )
    .await;
    assert_eq!(charges, 10);
    let total: i64 = sqlx::query_scalar("SELECT sum(balance_cents)::bigint FROM accounts")
        .fetch_one(&system.payment.pool)
        .await
        .unwrap();
    assert_eq!(total, 50 * 1_000_000 - 10 * 1_000);
}
