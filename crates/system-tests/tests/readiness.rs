//! Readiness that sees every path: a service whose database turned read-only (a replica promoted
//! the wrong way, `default_transaction_read_only`, a full disk) answers `503` with `Retry-After`
//! (never `500`) and writes nothing, its `/ready` says so — the database check proves a write
//! through the workers' pool, and workers whose rounds fail (the intake writers, the re-drive)
//! count as not progressing — and everything comes back once the database is writable again.

use platform::testing::eventually;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use std::time::Duration;
use system_tests::admin_database_url;
use system_tests::{Options, Service, TestSystem};

/// How long `/ready` may take to notice, or to recover (the checks are cached for about 1 s).
const NOTICE: Duration = Duration::from_secs(15);

/// Turns the service's database read-only (or back) the way an operator or a wrong failover
/// would, and ends its sessions so that every pool reconnects with the new default.
async fn set_read_only(service: &Service, read_only: bool) {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&service.pool)
        .await
        .expect("database name");
    let mut admin = PgConnection::connect(&admin_database_url().await)
        .await
        .expect("admin connection");
    let value = if read_only { "on" } else { "off" };
    sqlx::query(&format!(
        "ALTER DATABASE \"{database}\" SET default_transaction_read_only = {value}"
    ))
    .execute(&mut admin)
    .await
    .expect("alter database");
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&database)
    .execute(&mut admin)
    .await
    .expect("end the database's sessions");
}

async fn post_order(system: &TestSystem, buyer: i64, key: Option<&str>) -> reqwest::Response {
    let mut request = system
        .http
        .post(format!("{}/orders", system.order.base_url))
        .bearer_auth(system.token(buyer))
        .json(&json!({ "product_id": 1, "quantity": 1 }));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.expect("send order")
}

async fn orders_written(system: &TestSystem) -> i64 {
    TestSystem::count(&system.order.pool, "SELECT count(*) FROM orders").await
}

/// `/ready` of the service once it answers 503 (its body), or `None` after the deadline.
async fn not_ready(system: &TestSystem, service: &Service) -> Option<Value> {
    eventually(NOTICE, || async {
        let (status, body) = system.ready(service).await;
        (status == 503).then_some(body)
    })
    .await
}

/// `service_ready` on the service's admin `/metrics`: what the `ServiceNotReady` alert reads.
async fn service_ready_metric(system: &TestSystem, service: &Service) -> Option<f64> {
    let page = system
        .http
        .get(format!("{}/metrics", service.admin_url))
        .send()
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .expect("the exposition");
    page.lines()
        .find_map(|line| line.strip_prefix("service_ready "))
        .map(|value| value.trim().parse().expect("a number"))
}

async fn ready_again(system: &TestSystem, service: &Service) {
    let ready = eventually(NOTICE, || async {
        (system.ready(service).await.0 == 200).then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "/ready not 200 again within {NOTICE:?} of the database turning writable: {:?}",
        system.ready(service).await
    );
}

/// A worker named in `/ready`'s 503, with its reason.
fn named_worker<'a>(body: &'a Value, prefix: &str) -> Option<&'a str> {
    body["workers"]
        .as_array()?
        .iter()
        .find(|w| w["worker"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .and_then(|w| w["reason"].as_str())
}

#[tokio::test]
async fn a_read_only_orders_database_is_unavailable_not_an_error_and_ready_says_so() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1000, 10).await;
    system.open_account(7, 100_000).await;
    assert_eq!(system.ready(&system.order).await.0, 200);
    let before = orders_written(&system).await;

    set_read_only(&system.order, true).await;
    for key in [None, Some("read-only-1")] {
        let response = post_order(&system, 7, key).await;
        let status = response.status();
        let retry_after = response.headers().get("retry-after").cloned();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(
            status, 503,
            "an order to a read-only database (key {key:?}) must be 503, not {status}: {body}"
        );
        assert!(retry_after.is_some(), "503 without Retry-After: {body}");
        assert_eq!(body["type"], "/problems/unavailable", "{body}");
    }
    assert_eq!(
        orders_written(&system).await,
        before,
        "nothing is half-done"
    );
    let body = not_ready(&system, &system.order)
        .await
        .expect("/ready stayed 200 while the orders database was read-only");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("database") && detail.contains("read-only"),
        "/ready must name the read-only database: {body}"
    );
    assert_eq!(
        service_ready_metric(&system, &system.order).await,
        Some(0.0),
        "/metrics must say what /ready says"
    );

    set_read_only(&system.order, false).await;
    ready_again(&system, &system.order).await;
    assert_eq!(
        service_ready_metric(&system, &system.order).await,
        Some(1.0)
    );
    let order = system.accepted_order(7, 1, 1).await;
    system.settle().await;
    assert_eq!(system.order(7, &order).await["status"], "COMPLETED");
}

#[tokio::test]
async fn intake_writers_whose_batches_fail_are_not_progressing_and_heal_without_traffic() {
    let system = TestSystem::start(Options {
        extra: "[workers]\nstall_after = \"1s\"\n",
        ..Options::default()
    })
    .await;
    set_read_only(&system.order, true).await;
    // Orders keep coming for longer than `stall_after`; every batch fails.
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < until {
        let status = post_order(&system, 7, None).await.status();
        assert_ne!(status, 202, "an order was accepted by a read-only database");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = system.ready(&system.order).await.1;
    let reason = named_worker(&body, "intake-writer").unwrap_or_else(|| {
        panic!("no intake writer is named after 2.5 s of failed batches: /ready {body}")
    });
    assert!(reason.contains("failing"), "{reason}");
    // The public listener says what is wrong, not the database's error text; the admin
    // listener's `/ready` gives operators the error behind it.
    assert!(
        !body.to_string().contains("read-only transaction"),
        "the public /ready sends internal error text: {body}"
    );
    let detailed: Value = system
        .http
        .get(format!("{}/ready", system.order.admin_url))
        .send()
        .await
        .expect("admin /ready")
        .json()
        .await
        .expect("admin /ready body");
    let detailed_reason = named_worker(&detailed, "intake-writer").unwrap_or_default();
    assert!(
        detailed_reason.contains("read-only transaction"),
        "the admin /ready names the error: {detailed}"
    );

    // Back to writable with no order arriving: the writers find out by themselves.
    set_read_only(&system.order, false).await;
    ready_again(&system, &system.order).await;
    assert_eq!(post_order(&system, 7, None).await.status(), 202);
}

#[tokio::test]
async fn the_redrive_reports_its_failing_rounds_in_ready() {
    let system = TestSystem::start(Options {
        workers: true,
        extra: "[workers]\nstall_after = \"1s\"\n[redrive]\ninterval = \"100ms\"\n",
        ..Options::default()
    })
    .await;
    system.create_product(1, 1000, 10).await;
    system.open_account(7, 100_000).await;
    ready_again(&system, &system.order).await;

    set_read_only(&system.order, true).await;
    let named = eventually(NOTICE, || async {
        let (_, body) = system.ready(&system.order).await;
        named_worker(&body, "redrive").map(str::to_owned)
    })
    .await;
    let Some(reason) = named else {
        panic!(
            "the re-drive was never named in /ready while its rounds failed; last answer {:?}",
            system.ready(&system.order).await
        );
    };
    assert!(reason.contains("failing"), "{reason}");

    set_read_only(&system.order, false).await;
    ready_again(&system, &system.order).await;
    let order = system.accepted_order(7, 1, 1).await;
    system
        .wait_for_status(7, &order, "COMPLETED", Duration::from_secs(30))
        .await;
}

#[tokio::test]
async fn a_read_only_inventory_database_redelivers_and_dead_letters_nothing() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1000, 10).await;
    system.open_account(7, 100_000).await;
    let order = system.accepted_order(7, 1, 2).await;
    // The order service publishes the order; inventory has not taken it yet.
    system.order.driver.step().await.expect("order step");

    set_read_only(&system.inventory, true).await;
    for _ in 0..3 {
        for consumer in &system.inventory.driver.consumers {
            // Failures are handled inside (redelivered later); only the broker can fail this.
            consumer.process_available().await.expect("consumer round");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let pool = &system.inventory.pool;
    assert_eq!(
        TestSystem::count(pool, "SELECT count(*) FROM dead_letters").await,
        0,
        "a read-only database is unavailable, never a reason to dead-letter"
    );
    assert_eq!(
        TestSystem::count(pool, "SELECT count(*) FROM reservations").await,
        0
    );
    assert_eq!(system.stock(1).await, 10, "nothing is half-done");
    let body = not_ready(&system, &system.inventory)
        .await
        .expect("inventory /ready stayed 200 while its database was read-only");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("read-only")),
        "{body}"
    );

    set_read_only(&system.inventory, false).await;
    ready_again(&system, &system.inventory).await;
    let completed = eventually(Duration::from_secs(30), || async {
        system.step_tolerant().await;
        let status = system.order(7, &order).await["status"].clone();
        (status == "COMPLETED").then_some(())
    })
    .await;
    assert!(
        completed.is_some(),
        "the order did not complete once inventory was writable: {}",
        system.order(7, &order).await
    );
    assert_eq!(system.stock(1).await, 8);
}
