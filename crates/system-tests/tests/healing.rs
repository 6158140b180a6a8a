//! Liveness outside the faults the chaos suite chose: a poison input, a deleted durable
//! consumer, a deleted stream, a lost compensation. Each time every order must still reach a
//! final status, with `/ready` telling the truth meanwhile.

use inventory_service::events::StockKeeper;
use platform::app::Infrastructure;
use platform::events::Source;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use system_tests::{Options, TestSystem, ADMIN_TOKEN};

const DEADLINE: Duration = Duration::from_secs(30);

/// The reproduction from the issue: a price that overflowed `price * quantity` made the
/// inventory consumer panic and every later order stay PENDING. The API now refuses the price,
/// and a product that already has such a price (entered before the cap) fails the order with a
/// reason instead of panicking; the order after it completes.
#[tokio::test]
async fn an_overflowing_price_neither_panics_nor_stops_the_pipeline() {
    let system = TestSystem::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let refused = system
        .http
        .post(format!("{}/products", system.inventory.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"id": 777001, "name": "poison", "price_cents": 100_000_000_000_000_000i64, "stock": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    // The same product, as it could exist from before the cap.
    sqlx::query(
        "INSERT INTO products (id, name, price_cents, stock, received) VALUES (777001, 'poison', 100000000000000000, 1000, 1000)",
    )
    .execute(&system.inventory.pool)
    .await
    .unwrap();
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 1_000_000).await;

    let poison = system.accepted_order(7, 777001, 93).await;
    let after = system.accepted_order(7, 1, 1).await;

    let failed = system.wait_for_status(7, &poison, "FAILED", DEADLINE).await;
    assert_eq!(failed["failure_reason"], "AMOUNT_TOO_LARGE");
    system
        .wait_for_status(7, &after, "COMPLETED", DEADLINE)
        .await;
    assert_eq!(system.stock(777001).await, 1000, "no stock taken");
    assert_eq!(system.stock(1).await, 9);
    assert_eq!(system.ready(&system.inventory).await.0, 200);
    assert_eq!(
        TestSystem::count(&system.inventory.pool, "SELECT count(*) FROM dead_letters").await,
        0
    );
}

/// The second reproduction, driven step by step so the test sees each state: the durable
/// consumer is deleted, the consumer notices on its next fetch and reports itself down
/// (`/ready` 503 naming it), then creates the durable consumer again and the order completes.
#[tokio::test]
async fn a_deleted_durable_consumer_is_reported_and_created_again() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let first = system.accepted_order(7, 1, 1).await;
    system.settle().await;
    assert_eq!(system.order(7, &first).await["status"], "COMPLETED");

    system
        .delete_consumer(Source::Order, "inventory-service-orders")
        .await;
    let second = system.accepted_order(7, 1, 1).await;
    let (_, errors) = system.step_tolerant().await;
    assert!(
        errors.iter().any(|e| e.contains("JetStream")),
        "the inventory consumer should fail to fetch: {errors:?}"
    );
    let (status, body) = system.ready(&system.inventory).await;
    assert_eq!(status, 503, "{body}");
    let workers = body["workers"].to_string();
    assert!(
        workers.contains("consumer:inventory-service-orders"),
        "{body}"
    );

    system.settle().await;
    assert_eq!(system.order(7, &second).await["status"], "COMPLETED");
    assert_eq!(system.ready(&system.inventory).await.0, 200);
    assert_eq!(
        system.stock(1).await,
        8,
        "the replayed first order is not applied twice"
    );
}

/// Two replicas attaching at the same moment after their stream was lost with its durable
/// consumer (`ci-heal`'s delete-stream fault restarts both inventory instances at once): both
/// look the consumer up, find none and create it, each with its own start time; the broker
/// refuses the second ("start time can not be updated", seen in a CI run), which made that
/// replica exit at startup. Both must attach to the one consumer (fails in round 0 without the
/// fix).
#[tokio::test]
async fn replicas_attaching_together_share_the_durable_consumer_they_both_create() {
    let system = TestSystem::start(Options::default()).await;
    let common = &system.inventory_settings.common;
    // Two replicas: a connection each, as two processes have.
    let connect = || {
        Infrastructure::connect(
            common,
            sqlx::migrate!("../inventory-service/migrations"),
            &[platform::events::Source::Inventory],
        )
    };
    let (one, two) = tokio::join!(connect(), connect());
    let (one, two) = (one.expect("infrastructure"), two.expect("infrastructure"));
    let handler = Arc::new(StockKeeper {
        topology: one.topology.clone(),
    });
    let subscription = &inventory_service::events::subscriptions()[0];
    for round in 0..20 {
        // As in the chaos run: the stream went with its consumers, and its publisher (the
        // order service's relay) re-created it.
        system.delete_stream(Source::Order).await;
        platform::broker::ensure_stream(&one.jetstream, &one.topology, Source::Order)
            .await
            .expect("stream re-created");
        let attach = |infra: &Infrastructure| {
            let (infra, handler, subscription) = (infra.clone(), handler.clone(), *subscription);
            tokio::spawn(async move {
                let consumer = infra.consumer(&subscription, handler).await?;
                // Attached at creation, not left for its worker to retry.
                Ok::<_, platform::app::StartupError>(
                    consumer
                        .status()
                        .unhealthy(Duration::from_secs(3600), false),
                )
            })
        };
        let (first, second) = tokio::join!(attach(&one), attach(&two));
        let (first, second) = (first.expect("task"), second.expect("task"));
        assert!(
            matches!((&first, &second), (Ok(None), Ok(None))),
            "round {round}: {:?} / {:?}",
            first.map(|u| u.map(|u| u.reason)),
            second.map(|u| u.map(|u| u.reason))
        );
    }
}

/// The same with the real supervised workers: nobody steps anything, the consumer notices by
/// itself and the next order completes.
#[tokio::test]
async fn a_running_consumer_heals_a_deleted_durable_consumer_by_itself() {
    let system = TestSystem::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let first = system.accepted_order(7, 1, 1).await;
    system
        .wait_for_status(7, &first, "COMPLETED", DEADLINE)
        .await;

    for (source, durable) in [
        (Source::Order, "inventory-service-orders"),
        (Source::Inventory, "payment-service-reservations"),
        (Source::Payment, "order-service-payment"),
    ] {
        system.delete_consumer(source, durable).await;
    }
    let second = system.accepted_order(7, 1, 1).await;
    system
        .wait_for_status(7, &second, "COMPLETED", DEADLINE)
        .await;
    assert_eq!(system.stock(1).await, 8);
    assert_eq!(
        TestSystem::count(&system.payment.pool, "SELECT count(*) FROM charges").await,
        2
    );
    for service in [&system.order, &system.inventory, &system.payment] {
        let ready = platform::testing::eventually(DEADLINE, || async {
            (system.ready(service).await.0 == 200).then_some(())
        })
        .await;
        assert!(ready.is_some(), "{} not ready again", service.base_url);
    }
}

/// A stream deleted while its publisher has nothing to publish: its consumers may not create it
/// (their NATS users may manage only their own streams) and report down, and the idle relay
/// re-creates it by itself within its periodic check, after which they attach again.
#[tokio::test]
async fn an_idle_publisher_re_creates_its_deleted_stream_and_its_consumers_attach_again() {
    let system = TestSystem::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let stream = system.stream_name(Source::Payment);
    system.delete_stream(Source::Payment).await;
    let js = system.jetstream().await;
    let back = platform::testing::eventually(DEADLINE, || async {
        js.get_stream(&stream).await.ok().map(|_| ())
    })
    .await;
    assert!(
        back.is_some(),
        "{stream} not re-created by its idle publisher"
    );
    for service in [&system.order, &system.inventory] {
        let ready = platform::testing::eventually(DEADLINE, || async {
            (system.ready(service).await.0 == 200).then_some(())
        })
        .await;
        assert!(ready.is_some(), "{} did not attach again", service.base_url);
    }
}

/// A stream deleted with a message nobody consumed yet: the relay creates the stream again and
/// the consumer its durable consumer, and the order whose `OrderCreated` was lost is
/// re-driven — asked again — and completes.
#[tokio::test]
async fn an_order_lost_with_its_stream_is_redriven_to_completion() {
    let system = TestSystem::start(Options {
        extra: "[redrive]\nafter_secs = 0\n",
        ..Options::default()
    })
    .await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let lost = system.accepted_order(7, 1, 2).await;
    // Published, then gone with the stream before inventory took it.
    system
        .order
        .driver
        .relay
        .publish_all_pending()
        .await
        .unwrap();
    system.delete_stream(Source::Order).await;

    system.settle_after_fault().await;
    let order = system.order(7, &lost).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    assert_eq!(system.stock(1).await, 8);
    let redriven: i64 = sqlx::query_scalar("SELECT redrive_count::bigint FROM orders")
        .fetch_one(&system.order.pool)
        .await
        .unwrap();
    assert!(redriven >= 1);
    assert_eq!(
        TestSystem::count(&system.payment.pool, "SELECT count(*) FROM charges").await,
        1
    );
}

/// The compensation lost: payment failed, the order service heard it (the order is FAILED),
/// but inventory's copy of `PaymentFailed` went with its stream, so the stock stays reserved.
/// The order's saga is still open; the re-drive asks again, each service answers from its own
/// records (reservation, failed charge), and inventory releases the stock exactly once.
#[tokio::test]
async fn a_lost_compensation_is_redriven_and_the_stock_comes_back_once() {
    let system = TestSystem::start(Options {
        decline_rate: 1.0,
        extra: "[redrive]\nafter_secs = 0\n",
        ..Options::default()
    })
    .await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let id = system.accepted_order(7, 1, 3).await;

    // Run the pipeline by hand up to the payment's outcome, then lose inventory's copy.
    system
        .order
        .driver
        .relay
        .publish_all_pending()
        .await
        .unwrap();
    let [to_inventory, _] = &system.inventory.driver.consumers[..] else {
        panic!("inventory has two consumers");
    };
    to_inventory.process_available().await.unwrap();
    system
        .inventory
        .driver
        .relay
        .publish_all_pending()
        .await
        .unwrap();
    system.payment.driver.consumers[0]
        .process_available()
        .await
        .unwrap();
    system
        .payment
        .driver
        .relay
        .publish_all_pending()
        .await
        .unwrap();
    for consumer in &system.order.driver.consumers {
        consumer.process_available().await.unwrap();
    }
    assert_eq!(system.order(7, &id).await["status"], "FAILED");
    system.delete_stream(Source::Payment).await;
    assert_eq!(system.stock(1).await, 7, "stock still reserved");

    system.settle_after_fault().await;
    assert_eq!(system.stock(1).await, 10, "stock back");
    let order = system.order(7, &id).await;
    assert_eq!(order["status"], "FAILED");
    assert_eq!(order["failure_reason"], "PAYMENT_DECLINED");
    let released: Option<String> = sqlx::query_scalar("SELECT stock_released_at::text FROM orders")
        .fetch_one(&system.order.pool)
        .await
        .unwrap();
    assert!(released.is_some(), "the saga is closed");
    assert_eq!(
        TestSystem::count(
            &system.inventory.pool,
            "SELECT count(*) FROM reservations WHERE status = 'RELEASED'"
        )
        .await,
        1
    );
    assert_eq!(
        TestSystem::count(&system.payment.pool, "SELECT count(*) FROM charges").await,
        1
    );
}

/// Asking again is harmless: a second `OrderCreated` (a new event id, as a re-drive sends) for
/// an order that completed gets the recorded answers and changes nothing.
#[tokio::test]
async fn an_order_asked_about_again_is_answered_from_the_records() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let id = system.accepted_order(7, 1, 2).await;
    system.settle().await;
    assert_eq!(system.order(7, &id).await["status"], "COMPLETED");

    let event = platform::events::Event::OrderCreated(platform::events::OrderCreated {
        order_id: id.parse().unwrap(),
        user_id: 7,
        product_id: 1,
        quantity: 2,
    });
    let envelope = event
        .into_envelope(platform::envelope::TraceContext::default())
        .unwrap();
    let js = system.jetstream().await;
    js.send_publish(
        system.subject("order.created"),
        async_nats::jetstream::message::PublishMessage::build()
            .payload(envelope.encode().unwrap().into())
            .message_id(envelope.id.to_string()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    system.settle().await;

    assert_eq!(system.order(7, &id).await["status"], "COMPLETED");
    assert_eq!(system.stock(1).await, 8);
    assert_eq!(system.balance(7).await, 98_000);
    assert_eq!(
        TestSystem::count(&system.payment.pool, "SELECT count(*) FROM charges").await,
        1
    );
    // The answers travelled again: inventory answered two OrderCreated, payment two
    // StockReserved (each recorded in its inbox); the order service applied nothing the second
    // time and keeps no inbox (its outcomes are idempotent).
    for (pool, consumer) in [
        (&system.inventory.pool, "inventory-service-orders"),
        (&system.payment.pool, "payment-service-reservations"),
    ] {
        let handled = TestSystem::count(
            pool,
            &format!("SELECT count(*) FROM inbox WHERE consumer = '{consumer}'"),
        )
        .await;
        assert_eq!(handled, 2, "{consumer}");
    }
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM inbox").await,
        0
    );
}
