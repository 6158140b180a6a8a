//! Delivery faults: duplicates, a relay crash between publish and delete, events out of order,
//! poison messages. Each must leave exactly one effect and nothing lost.

use async_nats::jetstream::message::PublishMessage;
use platform::envelope::{Envelope, TraceContext};
use platform::events::{
    Event, FailureReason, PaymentCompleted, PaymentFailed, StockReleased, StockReserved,
};
use system_tests::{Options, TestSystem};
use uuid::Uuid;

async fn publish(system: &TestSystem, subject: &str, msg_id: &str, payload: Vec<u8>) {
    let js = system.jetstream().await;
    let ack = js
        .send_publish(
            system.subject(subject),
            PublishMessage::build()
                .payload(payload.into())
                .message_id(msg_id),
        )
        .await
        .expect("publish");
    ack.await.expect("publish ack");
}

async fn pending_outbox(system: &TestSystem, pool: &sqlx::PgPool) -> Vec<(String, Vec<u8>)> {
    let _ = system;
    sqlx::query_as("SELECT subject, envelope FROM outbox ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_same_event_delivered_twice_has_one_effect() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let id = system.accepted_order(7, 1, 1).await;

    // Capture the OrderCreated envelope before the relay publishes and deletes it.
    let rows = pending_outbox(&system, &system.order.pool).await;
    assert_eq!(rows.len(), 1);
    system.settle().await;
    // A re-publish after the broker's dedupe window: new Nats-Msg-Id, same event id.
    publish(
        &system,
        "order.created",
        &Uuid::new_v4().to_string(),
        rows[0].1.clone(),
    )
    .await;
    system.settle().await;

    assert_eq!(system.order(7, &id).await["status"], "COMPLETED");
    assert_eq!(system.stock(1).await, 9, "stock deducted once");
    assert_eq!(
        TestSystem::count(&system.inventory.pool, "SELECT count(*) FROM reservations").await,
        1
    );
    assert_eq!(
        TestSystem::count(&system.payment.pool, "SELECT count(*) FROM charges").await,
        1
    );
    assert_eq!(system.balance(7).await, 99_000);
}

#[tokio::test]
async fn a_relay_crash_between_publish_and_delete_republishes_without_a_second_effect() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let id = system.accepted_order(7, 1, 1).await;

    // The relay published the row (same Nats-Msg-Id it always uses) and died before deleting it.
    let (event_id, subject, envelope): (Uuid, String, Vec<u8>) =
        sqlx::query_as("SELECT event_id, subject, envelope FROM outbox")
            .fetch_one(&system.order.pool)
            .await
            .unwrap();
    let suffix = subject
        .strip_prefix(&format!("{}.", system.prefix))
        .unwrap()
        .to_owned();
    publish(&system, &suffix, &event_id.to_string(), envelope).await;
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM outbox").await,
        1
    );

    // The restarted relay publishes it again; the broker reports the duplicate, the inbox absorbs any.
    system.settle().await;

    assert_eq!(system.order(7, &id).await["status"], "COMPLETED");
    assert_eq!(system.stock(1).await, 9);
    assert_eq!(
        TestSystem::count(&system.payment.pool, "SELECT count(*) FROM charges").await,
        1
    );
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM outbox").await,
        0
    );
}

fn envelope_bytes(event: &Event) -> (String, Vec<u8>) {
    let envelope = event.into_envelope(TraceContext::default()).unwrap();
    (envelope.id.to_string(), envelope.encode().unwrap())
}

/// Outcome events reach the order service from two streams and may overtake each other: here
/// inventory's confirmation that a failed payment's stock went back comes before the failure
/// itself, and a stock reservation (payment's business) comes along. The order service does not
/// hear the reservation — its consumers' filters leave it out, so it is neither applied nor
/// parked — and each order goes from PENDING straight to its outcome.
#[tokio::test]
async fn outcome_events_out_of_order_still_give_the_right_final_status() {
    let system = TestSystem::start(Options::default()).await;
    let paid = system.accepted_order(7, 1, 1).await;
    let declined = system.accepted_order(7, 1, 1).await;
    let order_uuid = |s: &str| Uuid::parse_str(s).unwrap();
    let process_order_events = || async {
        for consumer in &system.order.driver.consumers {
            consumer.process_available().await.unwrap();
        }
    };

    let reserved = Event::StockReserved(StockReserved {
        order_id: order_uuid(&paid),
        user_id: 7,
        product_id: 1,
        quantity: 1,
        amount_cents: 1_000,
    });
    let released = Event::StockReleased(StockReleased {
        order_id: order_uuid(&declined),
        product_id: 1,
        quantity: 1,
    });
    for event in [&reserved, &released] {
        let (msg_id, bytes) = envelope_bytes(event);
        publish(&system, event.subject_suffix(), &msg_id, bytes).await;
    }
    process_order_events().await;
    for order in [&paid, &declined] {
        assert_eq!(system.order(7, order).await["status"], "PENDING");
    }

    let completed = Event::PaymentCompleted(PaymentCompleted {
        order_id: order_uuid(&paid),
        user_id: 7,
        amount_cents: 1_000,
    });
    let failed = Event::PaymentFailed(PaymentFailed {
        order_id: order_uuid(&declined),
        user_id: 7,
        amount_cents: 1_000,
        reason: FailureReason::PaymentDeclined,
    });
    for event in [&completed, &failed] {
        let (msg_id, bytes) = envelope_bytes(event);
        publish(&system, event.subject_suffix(), &msg_id, bytes).await;
    }
    process_order_events().await;

    let order = system.order(7, &paid).await;
    assert_eq!(order["status"], "COMPLETED");
    assert_eq!(order["amount_cents"], 1_000);
    let order = system.order(7, &declined).await;
    assert_eq!(order["status"], "FAILED");
    assert_eq!(order["failure_reason"], "PAYMENT_DECLINED");
    assert_eq!(order["amount_cents"], 1_000);
    // The release that came first closed the saga once the failure arrived.
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM open_sagas").await,
        0
    );
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM dead_letters").await,
        0,
        "the reservation was not delivered to the order service"
    );
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_do_not_block_the_ones_behind() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;

    publish(
        &system,
        "order.created",
        "garbage-1",
        b"{ not json".to_vec(),
    )
    .await;
    let mut unknown = Event::PaymentCompleted(PaymentCompleted {
        order_id: Uuid::now_v7(),
        user_id: 7,
        amount_cents: 1,
    })
    .into_envelope(TraceContext::default())
    .unwrap();
    unknown.event_type = "OrderTeleported".into();
    publish(
        &system,
        "order.created",
        "unknown-1",
        unknown.encode().unwrap(),
    )
    .await;
    let mut wrong_shape: Envelope = unknown.clone();
    wrong_shape.id = Uuid::now_v7();
    wrong_shape.event_type = "OrderCreated".into();
    publish(
        &system,
        "order.created",
        "bad-payload-1",
        wrong_shape.encode().unwrap(),
    )
    .await;
    let id = system.accepted_order(7, 1, 1).await;
    system.settle().await;

    assert_eq!(system.order(7, &id).await["status"], "COMPLETED");
    let response = system
        .http
        .get(format!("{}/admin/dead-letters", system.inventory.admin_url))
        .bearer_auth(system_tests::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let letters: serde_json::Value = response.json().await.unwrap();
    let reasons: Vec<&str> = letters
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons
        .iter()
        .any(|r| r.contains("not a valid event envelope")));
    assert!(reasons.iter().any(|r| r.contains("unknown event type")));
    assert!(reasons
        .iter()
        .any(|r| r.contains("does not match its schema")));
    let anonymous = system
        .http
        .get(format!("{}/admin/dead-letters", system.inventory.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// A packed message (several events in one broker message, as the relay sends them) with one
/// poison event: the good events take effect, the bad one is dead-lettered, nothing is redelivered.
#[tokio::test]
async fn a_packed_message_with_one_poison_event_applies_the_rest() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let first = system.accepted_order(7, 1, 1).await;
    let second = system.accepted_order(7, 1, 2).await;

    let rows: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT envelope FROM outbox ORDER BY seq")
        .fetch_all(&system.order.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM outbox")
        .execute(&system.order.pool)
        .await
        .unwrap();
    let mut payload = b"[".to_vec();
    payload.extend_from_slice(&rows[0].0);
    payload.extend_from_slice(b",{\"type\":\"OrderCreated\",\"garbage\":true},");
    payload.extend_from_slice(&rows[1].0);
    payload.push(b']');
    publish(&system, "order.created", "packed-1", payload).await;
    system.settle().await;

    assert_eq!(system.order(7, &first).await["status"], "COMPLETED");
    assert_eq!(system.order(7, &second).await["status"], "COMPLETED");
    assert_eq!(system.stock(1).await, 7);
    let letters =
        TestSystem::count(&system.inventory.pool, "SELECT count(*) FROM dead_letters").await;
    assert_eq!(letters, 1);
}
