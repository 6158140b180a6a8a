//! The event contract enforced on receipt (issue 21, items 1, 6 and the third point of 7): an
//! event is applied only if it came on the subject its type is published on, in its publisher's
//! stream, about the order its envelope names; anything else is parked as `misrouted` and never
//! applied (nor replayed). A durable consumer altered under a service is put back and misses
//! nothing; a redelivered message does not park the same event twice.

use async_nats::jetstream::message::PublishMessage;
use platform::app::Infrastructure;
use platform::consumer::{EventHandler, HandlerError, Incoming};
use platform::envelope::{Envelope, TraceContext};
use platform::events::{
    Event, FailureReason, OrderCreated, PaymentCompleted, PaymentFailed, Source,
};
use platform::testing::{eventually, unique_token};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use system_tests::{fresh_database, nats_url};
use system_tests::{Options, Service, TestSystem, ADMIN_TOKEN};
use uuid::Uuid;

async fn publish_raw(system: &TestSystem, subject: &str, msg_id: &str, payload: Vec<u8>) {
    system
        .jetstream()
        .await
        .send_publish(
            system.subject(subject),
            PublishMessage::build()
                .payload(payload.into())
                .message_id(msg_id),
        )
        .await
        .expect("publish")
        .await
        .expect("publish ack");
}

fn envelope(event: &Event) -> Envelope {
    event.into_envelope(TraceContext::default()).unwrap()
}

/// Publishes `event` on `subject` (below the prefix), whatever its type says.
async fn publish_on(system: &TestSystem, subject: &str, event: &Event) -> Envelope {
    let envelope = envelope(event);
    publish_raw(
        system,
        subject,
        &envelope.id.to_string(),
        envelope.encode().unwrap(),
    )
    .await;
    envelope
}

/// A counter's value on the test process's recorder (other tests of this file only add to it).
async fn counter(system: &TestSystem, service: &Service, name: &str, consumer: &str) -> u64 {
    let page = system
        .http
        .get(format!("{}/metrics", service.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("{name}{{consumer=\"{consumer}\"}} ");
    page.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().unwrap())
}

#[derive(Debug, sqlx::FromRow)]
struct Letter {
    id: i64,
    consumer: String,
    subject: String,
    kind: String,
    reason: String,
    event_id: Option<Uuid>,
}

async fn letters(pool: &PgPool) -> Vec<Letter> {
    sqlx::query_as(
        "SELECT id, consumer, subject, kind, reason, event_id FROM dead_letters
         WHERE status = 'open' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn reservation_status(system: &TestSystem, order: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM reservations WHERE order_id = $1")
        .bind(Uuid::parse_str(order).unwrap())
        .fetch_optional(&system.inventory.pool)
        .await
        .unwrap()
}

async fn admin_post(system: &TestSystem, service: &Service, path: &str) -> (u16, Value) {
    let response = system
        .http
        .post(format!("{}{path}", service.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A completed order and the forged event the issue names: the order service's NATS user may
/// publish on its own `order.created`; it puts there an envelope typed `PaymentFailed` for the
/// paid order. Inventory must not release the sold stock (it would be sold twice).
#[tokio::test]
async fn a_payment_failure_forged_on_the_order_subject_releases_nothing() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let order = system.accepted_order(7, 1, 1).await;
    system.settle().await;
    assert_eq!(system.order(7, &order).await["status"], "COMPLETED");
    let misrouted_before = counter(
        &system,
        &system.inventory,
        "consumer_misrouted_total",
        "inventory-service-orders",
    )
    .await;

    let forged = publish_on(
        &system,
        "order.created",
        &Event::PaymentFailed(PaymentFailed {
            order_id: Uuid::parse_str(&order).unwrap(),
            user_id: 7,
            amount_cents: 1_000,
            reason: FailureReason::PaymentDeclined,
        }),
    )
    .await;
    system.settle().await;

    assert_eq!(system.stock(1).await, 9, "the paid unit stays sold");
    assert_eq!(
        reservation_status(&system, &order).await.as_deref(),
        Some("ACTIVE")
    );
    assert_eq!(system.order(7, &order).await["status"], "COMPLETED");
    let parked = letters(&system.inventory.pool).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    let letter = &parked[0];
    assert_eq!(letter.kind, "misrouted");
    assert_eq!(letter.consumer, "inventory-service-orders");
    assert_eq!(letter.event_id, Some(forged.id));
    assert_eq!(letter.subject, system.subject("order.created"));
    for named in [
        "PaymentFailed".to_string(),
        system.subject("order.created"),
        system.subject("payment.failed"),
        system.stream_name(Source::Order),
    ] {
        assert!(letter.reason.contains(&named), "{named}: {}", letter.reason);
    }
    assert!(
        counter(
            &system,
            &system.inventory,
            "consumer_misrouted_total",
            "inventory-service-orders",
        )
        .await
            > misrouted_before,
        "counted"
    );

    // The desk is no way around the check: a misrouted letter cannot be replayed, only discarded.
    let (status, problem) = admin_post(
        &system,
        &system.inventory,
        &format!("/admin/dead-letters/{}/replay", letter.id),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["type"], "/problems/misrouted", "{problem}");
    assert_eq!(system.stock(1).await, 9, "the replay applied nothing");
    let (status, body) = admin_post(
        &system,
        &system.inventory,
        &format!("/admin/dead-letters/{}/discard", letter.id),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// The inventory service's NATS user may publish on `inventory.stock_rejected`; an envelope
/// typed `PaymentCompleted` there must not complete an order nobody paid for.
#[tokio::test]
async fn a_payment_completion_forged_on_an_inventory_subject_completes_nothing() {
    let system = TestSystem::start(Options::default()).await;
    let order = system.accepted_order(7, 1, 1).await;
    let forged = Event::PaymentCompleted(PaymentCompleted {
        order_id: Uuid::parse_str(&order).unwrap(),
        user_id: 7,
        amount_cents: 1_000,
    });
    publish_on(&system, "inventory.stock_rejected", &forged).await;
    for consumer in &system.order.driver.consumers {
        consumer.process_available().await.unwrap();
    }

    assert_eq!(system.order(7, &order).await["status"], "PENDING");
    let parked = letters(&system.order.pool).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].kind, "misrouted");
    assert_eq!(parked[0].consumer, "order-service-inventory");
    assert!(
        parked[0].reason.contains("PaymentCompleted")
            && parked[0]
                .reason
                .contains(&system.subject("inventory.stock_rejected")),
        "{}",
        parked[0].reason
    );
}

/// An envelope about one order carrying another order's event is not applied.
#[tokio::test]
async fn an_event_whose_envelope_names_another_order_is_misrouted() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    let order = system.accepted_order(7, 1, 1).await;
    // The order's own OrderCreated, taken from the outbox before the relay sends it.
    let bytes: Vec<u8> = sqlx::query_scalar("DELETE FROM outbox RETURNING envelope")
        .fetch_one(&system.order.pool)
        .await
        .unwrap();
    let mut envelope = Envelope::decode(&bytes).unwrap();
    envelope.aggregate_id = Uuid::now_v7();
    publish_raw(
        &system,
        "order.created",
        &envelope.id.to_string(),
        envelope.encode().unwrap(),
    )
    .await;
    system.settle().await;

    assert_eq!(system.stock(1).await, 10, "nothing reserved");
    assert_eq!(reservation_status(&system, &order).await, None);
    let parked = letters(&system.inventory.pool).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].kind, "misrouted");
    assert!(
        parked[0]
            .reason
            .contains(&envelope.aggregate_id.to_string())
            && parked[0].reason.contains(&order),
        "{}",
        parked[0].reason
    );
}

/// A packed message is checked event by event: the good one is applied, the forged one parked.
#[tokio::test]
async fn a_packed_message_applies_its_good_event_and_parks_the_misrouted_one() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let paid = system.accepted_order(7, 1, 1).await;
    system.settle().await;
    let fresh = system.accepted_order(7, 1, 1).await;
    let good: Vec<u8> = sqlx::query_scalar("DELETE FROM outbox RETURNING envelope")
        .fetch_one(&system.order.pool)
        .await
        .unwrap();
    let forged = envelope(&Event::PaymentFailed(PaymentFailed {
        order_id: Uuid::parse_str(&paid).unwrap(),
        user_id: 7,
        amount_cents: 1_000,
        reason: FailureReason::PaymentDeclined,
    }));
    let mut packed = b"[".to_vec();
    packed.extend(&good);
    packed.push(b',');
    packed.extend(forged.encode().unwrap());
    packed.push(b']');
    publish_raw(&system, "order.created", "packed-forgery", packed).await;
    system.settle().await;

    assert_eq!(system.order(7, &fresh).await["status"], "COMPLETED");
    assert_eq!(system.stock(1).await, 8, "two sold, none given back");
    assert_eq!(
        reservation_status(&system, &paid).await.as_deref(),
        Some("ACTIVE")
    );
    let parked = letters(&system.inventory.pool).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].kind, "misrouted");
    assert_eq!(parked[0].event_id, Some(forged.id));
}

/// A letter parked before the check existed (a forged outcome rejected for another reason) is
/// checked against the subject it was recorded with when an operator replays it.
#[tokio::test]
async fn a_replay_checks_the_event_against_the_subject_it_came_on() {
    let system = TestSystem::start(Options::default()).await;
    let order = system.accepted_order(7, 1, 1).await;
    let forged = envelope(&Event::PaymentCompleted(PaymentCompleted {
        order_id: Uuid::parse_str(&order).unwrap(),
        user_id: 7,
        amount_cents: 1_000,
    }));
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO dead_letters (consumer, subject, event_id, kind, deliveries, reason, payload)
         VALUES ('order-service-inventory', $1, $2, 'rejected', 1, 'order does not exist', $3)
         RETURNING id",
    )
    .bind(system.subject("inventory.stock_rejected"))
    .bind(forged.id)
    .bind(forged.encode().unwrap())
    .fetch_one(&system.order.pool)
    .await
    .unwrap();

    let (status, problem) = admin_post(
        &system,
        &system.order,
        &format!("/admin/dead-letters/{id}/replay"),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["type"], "/problems/misrouted", "{problem}");
    assert_eq!(system.order(7, &order).await["status"], "PENDING");
}

/// `consumer_drift_total{consumer}` on the inventory service.
async fn drift_total(system: &TestSystem, durable: &str) -> u64 {
    counter(system, &system.inventory, "consumer_drift_total", durable).await
}

/// What an operator (or anyone holding the service's CREATE right) can change in a durable
/// consumer through the JetStream API.
enum Alteration {
    /// A filter that matches nothing, and another ack wait.
    Filter,
    /// A delivery limit (a nak'ed event would never come back), payloads left out, another ack
    /// wait: the filter stays.
    Limits,
}

async fn alter_consumer(system: &TestSystem, source: Source, durable: &str, how: Alteration) {
    let js = system.jetstream().await;
    let stream = js.get_stream(system.stream_name(source)).await.unwrap();
    let info = stream.consumer_info(durable).await.unwrap();
    let mut altered = info.config.clone();
    match how {
        Alteration::Filter => {
            altered.filter_subject = String::new();
            altered.filter_subjects = vec![system.subject("order.nothing")];
            altered.ack_wait = Duration::from_secs(7);
        }
        Alteration::Limits => {
            altered.max_deliver = 2;
            altered.headers_only = true;
            altered.ack_wait = Duration::from_secs(9);
        }
    }
    stream
        .update_consumer(altered)
        .await
        .expect("consumer altered");
}

/// Filter subjects, ack wait, delivery limit, headers only.
type Settings = (Vec<String>, Duration, i64, bool);

async fn consumer_settings(system: &TestSystem, source: Source, durable: &str) -> Settings {
    let js = system.jetstream().await;
    let stream = js.get_stream(system.stream_name(source)).await.unwrap();
    let info = stream.consumer_info(durable).await.unwrap();
    let mut filters = info.config.filter_subjects.clone();
    if !info.config.filter_subject.is_empty() {
        filters.push(info.config.filter_subject.clone());
    }
    (
        filters,
        info.config.ack_wait,
        info.config.max_deliver,
        info.config.headers_only,
    )
}

fn configured(system: &TestSystem) -> Settings {
    (
        vec![system.subject("order.created")],
        Duration::from_secs(30),
        -1,
        false,
    )
}

/// While the filter is wrong, a pull (the running consumer always has one waiting) moves the
/// consumer past the order placed meanwhile; putting the filter back would not bring it back.
/// The consumer's next round finds the change, creates the consumer again from where it was
/// last seen right, and the order completes (without the re-drive, which this test never runs).
#[tokio::test]
async fn a_durable_consumer_whose_filter_was_changed_is_restored_and_misses_nothing() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let earlier = system.accepted_order(7, 1, 1).await;
    system.settle().await;
    let durable = "inventory-service-orders";
    let before = drift_total(&system, durable).await;

    alter_consumer(&system, Source::Order, durable, Alteration::Filter).await;
    let order = system.accepted_order(7, 1, 1).await;
    system
        .order
        .driver
        .relay
        .publish_all_pending()
        .await
        .unwrap();
    let js = system.jetstream().await;
    let stream = js
        .get_stream(system.stream_name(Source::Order))
        .await
        .unwrap();
    let altered: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(durable).await.unwrap();
    let mut pulled = altered
        .fetch()
        .max_messages(10)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    use futures::StreamExt as _;
    assert!(
        pulled.next().await.is_none(),
        "the wrong filter matches nothing"
    );
    system.settle_after_fault().await;

    assert_eq!(system.order(7, &order).await["status"], "COMPLETED");
    assert_eq!(system.order(7, &earlier).await["status"], "COMPLETED");
    assert_eq!(system.stock(1).await, 8, "each order sold once");
    assert_eq!(
        consumer_settings(&system, Source::Order, durable).await,
        configured(&system)
    );
    assert!(drift_total(&system, durable).await > before, "counted");
}

/// With the real workers: the once-a-second check finds both kinds of change and restores the
/// consumer; an order placed while the filter was wrong completes without the re-drive (set far
/// off here).
#[tokio::test]
async fn the_running_consumer_restores_its_durable_consumer_within_seconds() {
    let system = TestSystem::start(Options {
        workers: true,
        extra: "[redrive]\nafter = \"1h\"\n",
        ..Options::default()
    })
    .await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let first = system.accepted_order(7, 1, 1).await;
    system
        .wait_for_status(7, &first, "COMPLETED", Duration::from_secs(30))
        .await;
    let durable = "inventory-service-orders";
    let restored = || async {
        eventually(Duration::from_secs(10), || async {
            (consumer_settings(&system, Source::Order, durable).await == configured(&system))
                .then_some(())
        })
        .await
        .is_some()
    };

    for how in [Alteration::Filter, Alteration::Limits] {
        let before = drift_total(&system, durable).await;
        alter_consumer(&system, Source::Order, durable, how).await;
        let order = system.accepted_order(7, 1, 1).await;
        system
            .wait_for_status(7, &order, "COMPLETED", Duration::from_secs(30))
            .await;
        assert!(restored().await, "the consumer's settings are restored");
        assert!(drift_total(&system, durable).await > before, "counted");
    }
    assert_eq!(system.stock(1).await, 7);
    let parked = letters(&system.inventory.pool).await;
    assert!(
        parked.is_empty(),
        "a delivery without its payload is not an undecodable event: {parked:?}"
    );
}

/// Fails `bad` for good; fails `slow` transiently while `stuck`; records what it applied.
struct OneBadOneSlow {
    bad: Uuid,
    slow: Uuid,
    stuck: AtomicBool,
    slow_attempts: AtomicUsize,
}

impl EventHandler for OneBadOneSlow {
    async fn handle_batch(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        events: &[Incoming],
    ) -> Result<(), HandlerError> {
        for incoming in events {
            let id = incoming.event.order_id();
            if id == self.bad {
                return Err(HandlerError::Permanent(format!("order {id} is hopeless")));
            }
            if id == self.slow {
                self.slow_attempts.fetch_add(1, Ordering::SeqCst);
                if self.stuck.load(Ordering::SeqCst) {
                    return Err(HandlerError::Invariant(format!("order {id} is busy")));
                }
            }
            sqlx::query("INSERT INTO applied (order_id) VALUES ($1)")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    fn writes_outbox(&self) -> bool {
        false
    }
}

fn created(order_id: Uuid) -> Envelope {
    envelope(&Event::OrderCreated(OrderCreated {
        order_id,
        user_id: 1,
        product_id: 1,
        quantity: 1,
    }))
}

/// Item 7, third point: a message with one permanently bad event (and one undecodable element)
/// next to an event that fails transiently comes back until the latter succeeds; the bad event
/// and the undecodable element are parked once, not once per delivery.
#[tokio::test]
async fn a_redelivered_message_does_not_park_the_same_event_twice() {
    let prefix = format!("t{}", unique_token());
    let database = fresh_database("contract").await;
    let overrides = format!(
        "[http]\nport = 0\n[database]\nurl = \"{database}\"\n[nats]\nurl = \"{}\"\nprefix = \"{prefix}\"\nstream_max_bytes = -1\n",
        nats_url().await
    );
    let settings: platform::config::CommonSettings =
        platform::config::load_overridden(0, &[&overrides]).unwrap();
    let infra = Infrastructure::connect(&settings, sqlx::migrate::Migrator::DEFAULT, &Source::ALL)
        .await
        .unwrap();
    let pool = infra.pools.workers.clone();
    sqlx::query("CREATE TABLE applied (order_id UUID NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let handler = Arc::new(OneBadOneSlow {
        bad: Uuid::now_v7(),
        slow: Uuid::now_v7(),
        stuck: AtomicBool::new(true),
        slow_attempts: AtomicUsize::new(0),
    });
    let consumer = infra
        .consumer(
            &platform::contract::INVENTORY_SERVICE.subscriptions[0],
            handler.clone(),
        )
        .await
        .unwrap();

    let bad = created(handler.bad);
    let mut packed = b"[".to_vec();
    packed.extend(bad.encode().unwrap());
    packed.extend(b",{\"not\":\"an event\"},");
    packed.extend(created(handler.slow).encode().unwrap());
    packed.push(b']');
    infra
        .jetstream
        .send_publish(
            format!("{prefix}.order.created"),
            PublishMessage::build()
                .payload(packed.into())
                .message_id("bad-and-slow"),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    // Three deliveries while the slow event keeps failing.
    let delivered = eventually(Duration::from_secs(20), || async {
        consumer.process_available().await.unwrap();
        (handler.slow_attempts.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    assert!(delivered.is_some(), "the message came back");
    handler.stuck.store(false, Ordering::SeqCst);
    let applied = eventually(Duration::from_secs(20), || async {
        consumer.process_available().await.unwrap();
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM applied")
            .fetch_one(&pool)
            .await
            .unwrap();
        (applied == 1).then_some(())
    })
    .await;
    assert!(applied.is_some(), "the slow event is applied at last");

    let parked: Vec<(String, Option<Uuid>)> = sqlx::query_as(
        "SELECT kind, event_id FROM dead_letters WHERE status = 'open' ORDER BY kind",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        parked,
        vec![
            ("rejected".to_string(), Some(bad.id)),
            ("undecodable".to_string(), None)
        ],
        "each parked once over {} deliveries",
        handler.slow_attempts.load(Ordering::SeqCst)
    );
}
