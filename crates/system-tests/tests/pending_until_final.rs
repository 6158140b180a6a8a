//! The seed's own flow (issue 24): an order is `PENDING` until it is `COMPLETED` or `FAILED`.
//! The order service hears only an order's outcome — the stock reservation goes to payment alone
//! — so no intermediate status is ever written; an order an older version left `RESERVED` is
//! turned back into a `PENDING` one that its payment answer finishes; and a deployment's durable
//! consumer that still filters the reservation is brought to the new filter without losing the
//! answers waiting in its stream.

use async_nats::jetstream::message::PublishMessage;
use platform::contract::ORDER_SERVICE;
use platform::envelope::TraceContext;
use platform::events::{Event, Source, StockReserved};
use sqlx::migrate::Migrate as _;
use sqlx::{Connection as _, PgConnection};
use system_tests::{fresh_database, Options, TestSystem};
use uuid::Uuid;

/// The migration that dropped `RESERVED` (`order-service/migrations`).
const PENDING_UNTIL_FINAL: i64 = 20261207000700;

/// The filter subjects of durable consumer `durable` on the stream of `source`, sorted.
async fn filters(system: &TestSystem, source: Source, durable: &str) -> Vec<String> {
    let js = system.jetstream().await;
    let stream = js.get_stream(system.stream_name(source)).await.unwrap();
    let info = stream.consumer_info(durable).await.unwrap();
    let mut filters = info.config.filter_subjects.clone();
    if !info.config.filter_subject.is_empty() {
        filters.push(info.config.filter_subject.clone());
    }
    filters.sort();
    filters
}

async fn order_status(system: &TestSystem, order_id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1::uuid")
        .bind(order_id)
        .fetch_one(&system.order.pool)
        .await
        .unwrap()
}

/// Every consumer of the order service on the broker filters only outcomes and releases; an
/// order placed through the real services is seen, after every single batch any consumer of any
/// service handles, only as `PENDING` and then `COMPLETED`. (Before issue 24 the order service's
/// inventory consumer set `RESERVED` in a batch of its own, which this sampling would see.)
#[tokio::test]
async fn an_order_goes_from_pending_straight_to_completed() {
    let system = TestSystem::start(Options::default()).await;
    for subscription in ORDER_SERVICE.subscriptions {
        let found = filters(&system, subscription.stream(), subscription.durable_name()).await;
        assert!(
            !found.contains(&system.subject("inventory.stock_reserved")),
            "{}: {found:?}",
            subscription.durable_name()
        );
    }
    assert_eq!(
        filters(&system, Source::Inventory, "order-service-inventory").await,
        [
            system.subject("inventory.stock_rejected"),
            system.subject("inventory.stock_released")
        ]
    );

    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let id = system.accepted_order(7, 1, 2).await;
    let mut seen = vec![order_status(&system, &id).await];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen.last().map(String::as_str) == Some("PENDING") {
        assert!(tokio::time::Instant::now() < deadline, "seen: {seen:?}");
        for service in [&system.order, &system.inventory, &system.payment] {
            service.driver.relay.publish_all_pending().await.unwrap();
            for consumer in &service.driver.consumers {
                consumer.process_available().await.unwrap();
                let status = order_status(&system, &id).await;
                if seen.last() != Some(&status) {
                    seen.push(status);
                }
            }
        }
    }
    assert_eq!(seen, ["PENDING", "COMPLETED"]);
    let order = system.order(7, &id).await;
    assert_eq!(order["status"], "COMPLETED");
    assert_eq!(order["amount_cents"], 2_000);
    system.settle().await;
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM dead_letters").await,
        0
    );
}

/// An orders database as the version before issue 24 left it: every migration up to (not
/// including) the one that dropped `RESERVED`, applied as the service applies them.
async fn orders_database_before_issue_24() -> String {
    let url = fresh_database("orders").await;
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let mut messaging = sqlx::migrate!("../platform/migrations");
    messaging.set_ignore_missing(true);
    messaging.run(&mut conn).await.unwrap();
    let orders = sqlx::migrate!("../order-service/migrations");
    assert!(orders.version_exists(PENDING_UNTIL_FINAL));
    conn.ensure_migrations_table().await.unwrap();
    for migration in orders.iter().filter(|m| m.version < PENDING_UNTIL_FINAL) {
        conn.apply(migration).await.unwrap();
    }
    conn.close().await.unwrap();
    url
}

/// An order the older version had moved to `RESERVED` (stock taken, payment's answer not yet
/// in) is `PENDING` after the upgrade, still an open saga, and completes when payment answers
/// the reservation that was on its way. `RESERVED` can no longer be written.
#[tokio::test]
async fn an_order_left_reserved_by_the_older_version_is_pending_and_completes() {
    let url = orders_database_before_issue_24().await;
    let (reserved, completed) = (Uuid::now_v7(), Uuid::now_v7());
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO orders (id, user_id, product_id, quantity, status, amount_cents, finalized_at)
         VALUES ($1, 7, 1, 2, 'RESERVED', 2000, NULL), ($2, 7, 1, 1, 'COMPLETED', 1000, now())",
    )
    .bind(reserved)
    .bind(completed)
    .execute(&mut conn)
    .await
    .expect("the older schema takes RESERVED");
    conn.close().await.unwrap();

    let system = TestSystem::start(Options {
        order_database: Some(url),
        ..Options::default()
    })
    .await;
    let order = system.order(7, &reserved.to_string()).await;
    assert_eq!(order["status"], "PENDING", "{order}");
    assert_eq!(order["amount_cents"], 2_000, "{order}");
    assert_eq!(
        system.order(7, &completed.to_string()).await["status"],
        "COMPLETED"
    );
    let open: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM open_sagas")
        .fetch_all(&system.order.pool)
        .await
        .unwrap();
    assert_eq!(open, [reserved]);
    let refused = sqlx::query("UPDATE orders SET status = 'RESERVED' WHERE id = $1")
        .bind(reserved)
        .execute(&system.order.pool)
        .await
        .expect_err("RESERVED is no status any more");
    assert_eq!(
        refused
            .as_database_error()
            .and_then(|e| e.constraint())
            .map(str::to_owned),
        Some("orders_status_check".to_owned())
    );

    // The reservation inventory had published before the upgrade reaches payment now.
    system.open_account(7, 100_000).await;
    let event = Event::StockReserved(StockReserved {
        order_id: reserved,
        user_id: 7,
        product_id: 1,
        quantity: 2,
        amount_cents: 2_000,
    });
    let envelope = event.into_envelope(TraceContext::default()).unwrap();
    system
        .jetstream()
        .await
        .send_publish(
            system.subject(event.subject_suffix()),
            PublishMessage::build()
                .payload(envelope.encode().unwrap().into())
                .message_id(envelope.id.to_string()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    system.settle().await;

    let order = system.order(7, &reserved.to_string()).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    assert_eq!(order["amount_cents"], 2_000);
    assert_eq!(system.balance(7).await, 98_000);
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM open_sagas").await,
        0
    );
}

/// `consumer_drift_total{consumer}` on the order service.
async fn drift_total(system: &TestSystem, durable: &str) -> u64 {
    let page = system
        .http
        .get(format!("{}/metrics", system.order.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("consumer_drift_total{{consumer=\"{durable}\"}} ");
    page.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// A deployment upgraded from the older version still has the order service's inventory
/// consumer filtering `stock_reserved` too. The new version attaches, finds the filter changed,
/// and creates the consumer again with its own (not refused, counted as drift); the answers that
/// waited in the stream while the service was down — a rejection, and the payment of an order
/// whose reservation the old filter would have delivered — all arrive, and the reservation is
/// neither applied nor parked.
#[tokio::test]
async fn a_durable_consumer_with_the_older_filter_is_brought_to_the_new_one() {
    let mut system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 1).await;
    system.open_account(7, 100_000).await;
    let sold = system.accepted_order(7, 1, 1).await;
    let rejected = system.accepted_order(7, 1, 5).await;
    system
        .order
        .driver
        .relay
        .publish_all_pending()
        .await
        .unwrap();
    let durable = "order-service-inventory";
    let drifts_before = drift_total(&system, durable).await;
    system.order.stop().await;

    // Sorted, as `filters` reports them.
    let older = [
        "inventory.stock_rejected",
        "inventory.stock_released",
        "inventory.stock_reserved",
    ]
    .map(|suffix| system.subject(suffix));
    let js = system.jetstream().await;
    let stream = js
        .get_stream(system.stream_name(Source::Inventory))
        .await
        .unwrap();
    let mut config = stream.consumer_info(durable).await.unwrap().config.clone();
    config.filter_subject = String::new();
    config.filter_subjects = older.to_vec();
    stream
        .update_consumer(config)
        .await
        .expect("the older version's filter");
    assert_eq!(filters(&system, Source::Inventory, durable).await, older);

    // Inventory and payment answer while the order service is down.
    let mut quiet = 0;
    while quiet < 2 {
        let mut work = 0;
        for service in [&system.inventory, &system.payment] {
            work += service.driver.step().await.unwrap();
        }
        quiet = if work == 0 { quiet + 1 } else { 0 };
    }
    assert_eq!(order_status(&system, &sold).await, "PENDING");

    system.restart_order().await;
    system.settle_after_fault().await;

    assert_eq!(
        filters(&system, Source::Inventory, durable).await,
        [
            system.subject("inventory.stock_rejected"),
            system.subject("inventory.stock_released")
        ]
    );
    assert!(
        drift_total(&system, durable).await > drifts_before,
        "counted"
    );
    assert_eq!(system.order(7, &sold).await["status"], "COMPLETED");
    let order = system.order(7, &rejected).await;
    assert_eq!(order["status"], "FAILED");
    assert_eq!(order["failure_reason"], "OUT_OF_STOCK");
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM dead_letters").await,
        0,
        "the reservation was neither applied nor parked"
    );
}
