//! The audit can see a loss (issue 12): with the re-drive switched off, a stream purged while
//! it holds messages nobody has consumed loses those orders for good, and the audit — the code
//! a load run and `loadtest verify` run — fails, naming exactly those orders. Afterwards the
//! broker and the outboxes are as quiet as after a good run, so an audit that looked only at
//! them (or only counted) would pass: this test keeps it from going blind unnoticed.
//!
//! The three real services run in-process (the `system-tests` harness) against the PostgreSQL
//! and NATS of `loadtest infra-up` (`ORDERSYS_DATABASE_URL`, `ORDERSYS_NATS_URL`); the test
//! drives their background work, so it decides when inventory fetches.

use std::collections::BTreeSet;

use loadtest::audit::{audit, Check, CHECK_ORDERS_FINAL};
use loadtest::observe::broker::{Broker, ConsumerState};
use loadtest::observe::database::{Databases, Scope};
use loadtest::observe::SystemProbe;
use platform::events::Source;
use system_tests::{nats_url, Options, TestSystem};
use uuid::Uuid;

/// The re-drive switched off: an open order would be asked about again only after a day (the
/// pause is the smaller of the two).
const REDRIVE_OFF: &str = "[redrive]\nafter = \"1d\"\nmax_pause = \"1d\"\n";
/// Inventory's durable consumer of the order service's stream.
const INVENTORY_ON_ORDERS: &str = "inventory-service-orders";
const USER: i64 = 7;
const PRODUCT: i64 = 1;
/// Orders that go the whole way before the loss and after it.
const BEFORE: usize = 3;
const AFTER: usize = 4;
/// Orders whose `OrderCreated` is purged: more than the five examples other checks show.
const LOST: usize = 8;

async fn place(system: &TestSystem, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let id = system.accepted_order(USER, PRODUCT, 1).await;
        ids.push(id.parse().expect("an order id is a UUID"));
    }
    ids
}

/// Every UUID in a text.
fn uuids_in(text: &str) -> BTreeSet<Uuid> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .filter_map(|word| Uuid::parse_str(word).ok())
        .collect()
}

fn failing(checks: &[Check]) -> Vec<&str> {
    checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect()
}

async fn statuses(system: &TestSystem) -> Vec<(Uuid, String, i64)> {
    sqlx::query_as("SELECT id, status, redrive_count::bigint FROM orders")
        .fetch_all(&system.order.pool)
        .await
        .expect("orders")
}

#[tokio::test]
async fn a_purged_stream_fails_the_audit_with_the_lost_orders_named() {
    let system = TestSystem::start(Options {
        extra: REDRIVE_OFF,
        ..Options::default()
    })
    .await;
    system.create_product(PRODUCT, 1_000, 100).await;
    system.open_account(USER, 1_000_000).await;
    let dbs = Databases {
        orders: system.order.pool.clone(),
        inventory: system.inventory.pool.clone(),
        payments: system.payment.pool.clone(),
    };
    let probe = SystemProbe::connect(dbs.clone(), &nats_url().await, &system.prefix)
        .await
        .expect("probe");
    let broker = Broker::connect(&nats_url().await, &system.prefix)
        .await
        .expect("broker");

    // A good start: the audit passes.
    let before = place(&system, BEFORE).await;
    system.settle().await;
    let checks = audit(&dbs, None).await.expect("audit");
    assert!(failing(&checks).is_empty(), "{checks:#?}");

    // The loss: the order service publishes the next orders' `OrderCreated`, and before
    // inventory fetches them the stream is purged.
    let lost = place(&system, LOST).await;
    let published = system
        .order
        .driver
        .relay
        .publish_all_pending()
        .await
        .expect("publish");
    assert_eq!(published, LOST);
    let stream = system.stream_name(Source::Order);
    let waiting = |consumers: Vec<ConsumerState>| {
        consumers
            .into_iter()
            .find(|c| c.name == format!("{stream}/{INVENTORY_ON_ORDERS}"))
            .map(|c| c.pending)
    };
    // The relay packs several events into one message: at least one waits, unconsumed.
    let (_, consumers) = broker.consumers().await.expect("consumers");
    let unconsumed = waiting(consumers).expect("inventory's durable consumer");
    assert!(unconsumed >= 1, "nothing waiting for inventory");
    let purged = system
        .jetstream()
        .await
        .get_stream(&stream)
        .await
        .expect("the order stream")
        .purge()
        .await
        .expect("purge");
    assert!(purged.success && purged.purged >= unconsumed, "{purged:?}");
    let (_, consumers) = broker.consumers().await.expect("consumers");
    assert_eq!(waiting(consumers), Some(0), "gone with the purge");

    // The rest goes on and drains.
    let after = place(&system, AFTER).await;
    system.settle().await;

    // The database holds the truth: the lost orders stay PENDING, never re-driven.
    let lost_set: BTreeSet<Uuid> = lost.iter().copied().collect();
    for (id, status, redriven) in statuses(&system).await {
        let expected = if lost_set.contains(&id) {
            "PENDING"
        } else {
            "COMPLETED"
        };
        assert_eq!(status, expected, "order {id}");
        assert_eq!(redriven, 0, "order {id} re-driven: the re-drive is off");
    }
    // The broker and the outboxes look like a good run's end; only the open orders keep the
    // run's drain from calling the system quiet.
    let state = probe.state(Scope::AllOrders).await;
    let (progress, backlog) = (
        state.progress.as_ref().expect("progress"),
        state.backlog.expect("backlog"),
    );
    assert!(backlog.is_idle(), "{backlog:?}");
    assert_eq!(progress.outbox_backlog, 0);
    assert_eq!(progress.non_final_orders, LOST as i64);
    assert!(!state.is_quiet());

    // The audit fails on that, and only on that, naming exactly the lost orders.
    let checks = audit(&dbs, None).await.expect("audit");
    for c in &checks {
        eprintln!("{c}");
    }
    assert_eq!(failing(&checks), [CHECK_ORDERS_FINAL], "{checks:#?}");
    let orders_final = checks
        .iter()
        .find(|c| c.name == CHECK_ORDERS_FINAL)
        .expect("orders final");
    let total = BEFORE + LOST + AFTER;
    assert!(
        orders_final
            .detail
            .starts_with(&format!("{total} orders: {LOST} PENDING (")),
        "{}",
        orders_final.detail
    );
    assert_eq!(
        uuids_in(&orders_final.detail),
        lost_set,
        "the lost orders, all of them and no other: {}",
        orders_final.detail
    );
    for id in before.iter().chain(&after) {
        assert!(!orders_final.detail.contains(&id.to_string()));
    }
}
