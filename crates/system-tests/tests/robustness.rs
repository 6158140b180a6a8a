//! Single faults that used to stop or corrupt the pipeline: a message id that did not name its
//! contents, a held row lock, a paused peer, a flood of reads, a stalled database, lock order,
//! numbers that overflow. Each test fails on the code before the fix.

use platform::testing::eventually;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use system_tests::{Options, TestSystem, ADMIN_TOKEN};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(30);

/// Two relay claims with the same first and last event and count but another event in between
/// (a crash after publish, a row that committed late): the broker must not call the second a
/// duplicate, or the relay deletes a row whose event never reached it.
#[tokio::test]
async fn a_claim_with_the_same_ends_but_another_middle_event_is_still_delivered() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    for _ in 0..3 {
        system.accepted_order(7, 1, 1).await;
    }
    let rows: Vec<(Uuid, String, Vec<u8>)> =
        sqlx::query_as("SELECT event_id, subject, envelope FROM outbox ORDER BY seq")
            .fetch_all(&system.order.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 3);
    // The relay publishes the three as one packed message and deletes them.
    system
        .order
        .driver
        .relay
        .publish_all_pending()
        .await
        .unwrap();

    // A later order's event lands between the first and last of the earlier claim, which is
    // published again (as after a crash between publish and delete).
    let late = system.accepted_order(7, 1, 1).await;
    let (late_event, late_subject, late_envelope): (Uuid, String, Vec<u8>) =
        sqlx::query_as("SELECT event_id, subject, envelope FROM outbox")
            .fetch_one(&system.order.pool)
            .await
            .unwrap();
    sqlx::query("DELETE FROM outbox")
        .execute(&system.order.pool)
        .await
        .unwrap();
    for (event_id, subject, envelope) in [
        rows[0].clone(),
        (late_event, late_subject, late_envelope),
        rows[2].clone(),
    ] {
        sqlx::query("INSERT INTO outbox (event_id, subject, envelope) VALUES ($1, $2, $3)")
            .bind(event_id)
            .bind(subject)
            .bind(envelope)
            .execute(&system.order.pool)
            .await
            .unwrap();
    }
    system.settle().await;

    assert_eq!(system.order(7, &late).await["status"], "COMPLETED");
    assert_eq!(system.stock(1).await, 6, "four orders, each applied once");
}

/// An outside session holds the hot product's row lock and never lets go. Inventory's lock wait
/// times out (instead of blocking its consumer forever), the event is retried — past
/// `max_deliveries`, and never dead-lettered — orders for other products go through, `/ready`
/// reports the stall, and once the lock goes the waiting order completes.
#[tokio::test]
async fn a_held_row_lock_stalls_one_product_not_the_consumer_and_dead_letters_nothing() {
    let system = TestSystem::start(Options {
        workers: true,
        extra: "[database]\nlock_timeout = \"300ms\"\n[consumer]\nmax_deliveries = 2\n[workers]\nstall_after = \"2s\"\n",
        ..Options::default()
    })
    .await;
    system.create_product(1, 1_000, 10).await;
    system.create_product(2, 1_000, 10).await;
    system.open_account(7, 100_000).await;

    let mut holder = system.inventory.pool.begin().await.unwrap();
    sqlx::query("SELECT * FROM products WHERE id = 1 FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let blocked = system.accepted_order(7, 1, 1).await;
    let free = system.accepted_order(7, 2, 1).await;
    system
        .wait_for_status(7, &free, "COMPLETED", DEADLINE)
        .await;

    let stalled = eventually(DEADLINE, || async {
        let (status, body) = system.ready(&system.inventory).await;
        (status == 503).then_some(body)
    })
    .await
    .expect("/ready reports the stalled consumer");
    assert!(
        stalled["workers"]
            .to_string()
            .contains("consumer:inventory-service-orders"),
        "{stalled}"
    );
    let redelivered = eventually(DEADLINE, || async {
        let deliveries = consumer_redeliveries(&system).await;
        (deliveries > 2).then_some(deliveries)
    })
    .await;
    assert!(redelivered.is_some(), "retried past max_deliveries");
    assert_eq!(system.order(7, &blocked).await["status"], "PENDING");
    assert_eq!(
        TestSystem::count(&system.inventory.pool, "SELECT count(*) FROM dead_letters").await,
        0,
        "a lock timeout is transient"
    );

    holder.rollback().await.unwrap();
    system
        .wait_for_status(7, &blocked, "COMPLETED", Duration::from_secs(60))
        .await;
    let ready = eventually(DEADLINE, || async {
        (system.ready(&system.inventory).await.0 == 200).then_some(())
    })
    .await;
    assert!(ready.is_some());
}

/// Deliveries of the inventory consumer's first unacknowledged message so far.
async fn consumer_redeliveries(system: &TestSystem) -> u64 {
    let js = system.jetstream().await;
    let stream = js
        .get_stream(system.stream_name(platform::events::Source::Order))
        .await
        .unwrap();
    let info = stream
        .consumer_info("inventory-service-orders")
        .await
        .unwrap();
    info.num_redelivered as u64 + info.num_ack_pending as u64
}

/// A paused peer (here: a transaction of the inventory service's own pool that stops halfway,
/// holding the product's row lock) is ended by the server after the idle-in-transaction
/// timeout, so the lock goes and the pipeline carries on.
#[tokio::test]
async fn a_transaction_left_idle_by_a_paused_process_is_ended_and_its_locks_released() {
    let system = TestSystem::start(Options {
        workers: true,
        extra: "[database]\nidle_in_transaction_timeout = \"500ms\"\nlock_timeout = \"300ms\"\n",
        ..Options::default()
    })
    .await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;

    let mut paused = system.inventory.pools.workers.begin().await.unwrap();
    sqlx::query("SELECT * FROM products WHERE id = 1 FOR UPDATE")
        .execute(&mut *paused)
        .await
        .unwrap();
    let id = system.accepted_order(7, 1, 1).await;
    system.wait_for_status(7, &id, "COMPLETED", DEADLINE).await;
    let after = sqlx::query("SELECT 1").execute(&mut *paused).await;
    assert!(after.is_err(), "the server ended the idle transaction");
}

/// Every connection of the order service's HTTP pool is taken (a flood of reads). Reads answer
/// 503 quickly; orders are still taken (the intake writes on the workers' pool) and complete.
#[tokio::test]
async fn a_flood_of_reads_cannot_starve_the_workers_or_the_intake() {
    let system = TestSystem::start(Options {
        extra: "[database]\nhttp_connections = 2\nacquire_timeout = \"300ms\"\n",
        ..Options::default()
    })
    .await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let held = [
        system.order.pools.http.acquire().await.unwrap(),
        system.order.pools.http.acquire().await.unwrap(),
    ];

    let read = system
        .http
        .get(format!(
            "{}/orders/{}",
            system.order.base_url,
            Uuid::now_v7()
        ))
        .bearer_auth(system.token(7))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 503);
    let id = system.accepted_order(7, 1, 1).await;
    system.settle().await;
    drop(held);
    assert_eq!(system.order(7, &id).await["status"], "COMPLETED");
}

/// A stalled database: an outside session locks the orders table (its transaction is returned,
/// still holding the lock), and 20 orders are sent at once; their answers and how long it took.
async fn twenty_orders_while_the_orders_table_is_locked(
    system: &TestSystem,
) -> (
    sqlx::Transaction<'static, sqlx::Postgres>,
    Vec<reqwest::Response>,
    Duration,
) {
    let mut holder = system.order.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE orders IN EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let started = Instant::now();
    let answers = futures::future::join_all((0..20).map(|_| system.place_order(7, 1, 1))).await;
    (holder, answers, started.elapsed())
}

/// The database stalls (an outside session locks the orders table). Requests that cannot be
/// written within the commit deadline get 503 + Retry-After quickly instead of piling up, and
/// none of their orders is written later.
#[tokio::test]
async fn orders_that_cannot_be_committed_in_time_are_shed_and_never_written() {
    let system = TestSystem::start(Options {
        extra: "[orders]\ncommit_deadline = \"300ms\"\nmax_batch = 1\n[database]\nlock_timeout = \"1500ms\"\n",
        ..Options::default()
    })
    .await;
    let (holder, answers, waited) = twenty_orders_while_the_orders_table_is_locked(&system).await;
    let (mut accepted, mut shed) = (0, 0);
    for answer in answers {
        match answer.status().as_u16() {
            202 => accepted += 1,
            503 => {
                assert!(answer.headers().contains_key("retry-after"));
                assert_eq!(answer.headers()["content-type"], "application/problem+json");
                let problem: Value = answer.json().await.unwrap();
                // The few already in a transaction wait for its lock timeout (1.5 s) and fail;
                // the rest are shed at the deadline without being written.
                if problem["type"] == "/problems/overloaded" {
                    shed += 1;
                }
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(accepted, 0);
    assert!(shed >= 10, "only {shed} of 20 shed");
    assert!(
        waited < Duration::from_millis(2500),
        "answered after {waited:?}: requests queued behind a stalled transaction"
    );

    holder.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM orders").await,
        0,
        "a shed order is never written"
    );
    assert_eq!(system.place_order(7, 1, 1).await.status(), 202);
}

/// When a batch fails because the database cannot take it (here: a lock wait timed out), the
/// requests queued behind it are refused at once instead of each waiting its turn to fail.
#[tokio::test]
async fn requests_queued_behind_an_unavailable_database_are_refused_at_once() {
    let system = TestSystem::start(Options {
        extra: "[orders]\ncommit_deadline = \"10s\"\nmax_batch = 1\nwriters = 1\n[database]\nlock_timeout = \"500ms\"\n",
        ..Options::default()
    })
    .await;
    let (holder, answers, waited) = twenty_orders_while_the_orders_table_is_locked(&system).await;
    holder.rollback().await.unwrap();
    assert!(answers.iter().all(|a| a.status() == 503));
    // One batch waits out its lock timeout; the rest are refused with it, not 19 × 0.5 s later.
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM orders").await,
        0
    );
}

/// A compensation batch and a reservation batch over the same products, at the same time: both
/// must take the product locks in one order. The reservation waits on product 1 first (held by
/// an outside session); the release starts after it. Taking locks in plan order, the release
/// would hold other products while waiting for 1, and deadlock with the reservation.
#[tokio::test]
async fn compensation_and_reservation_take_product_locks_in_one_order() {
    let system = TestSystem::start(Options::default()).await;
    let products: Vec<i64> = (1..=12).collect();
    for id in &products {
        system.create_product(*id, 100, 100).await;
    }
    let pool = &system.inventory.pool;
    let mut releasing = Vec::new();
    for id in &products {
        let order = Uuid::now_v7();
        sqlx::query("UPDATE products SET stock = stock - 1 WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO reservations (order_id, product_id, user_id, quantity, amount_cents, status)
             VALUES ($1, $2, 7, 1, 100, 'ACTIVE')",
        )
        .bind(order)
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
        releasing.push(order);
    }
    let lines: Vec<inventory_service::stock::OrderLine> = products
        .iter()
        .map(|id| inventory_service::stock::OrderLine {
            order_id: Uuid::now_v7(),
            user_id: 7,
            product_id: *id,
            quantity: 1,
        })
        .collect();

    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT * FROM products WHERE id = 1 FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let reserve = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await?;
            inventory_service::stock::reserve_stock(&mut tx, &lines).await?;
            tx.commit().await?;
            Ok::<(), platform::db::QueryError>(())
        }
    });
    wait_for_lock_waiters(pool, 1).await;
    let release = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await?;
            inventory_service::stock::release_reservations(&mut tx, &releasing).await?;
            tx.commit().await
        }
    });
    wait_for_lock_waiters(pool, 2).await;
    holder.commit().await.unwrap();

    let (reserved, released) = (reserve.await.unwrap(), release.await.unwrap());
    assert!(reserved.is_ok(), "reservation: {reserved:?}");
    assert!(released.is_ok(), "release: {released:?}");
    let stock: i64 = sqlx::query_scalar("SELECT sum(stock)::bigint FROM products")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(stock, 12 * 100 - 12, "12 released, 12 reserved");
}

async fn wait_for_lock_waiters(pool: &sqlx::PgPool, n: i64) {
    let waiting = eventually(DEADLINE, || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        (waiting >= n).then_some(())
    })
    .await;
    assert!(waiting.is_some(), "{n} sessions never waited for a lock");
}

async fn admin_post(system: &TestSystem, url: String, body: Value) -> (u16, Value) {
    let response = system
        .http
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Numbers an admin may enter that used to overflow (a 500 or a panic) are refused with a 422
/// that names the cap; within the cap but past it in total, with a 409.
#[tokio::test]
async fn numbers_that_would_overflow_are_refused_with_422() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100).await;
    let inventory = &system.inventory.base_url;
    let payment = &system.payment.base_url;
    let cases = [
        (
            format!("{inventory}/products"),
            json!({"id": 2, "name": "x", "price_cents": i64::MAX, "stock": 1}),
        ),
        (
            format!("{inventory}/products"),
            json!({"id": 2, "name": "x", "price_cents": 1, "stock": i64::MAX}),
        ),
        (
            format!("{inventory}/products/1/restock"),
            json!({"units": i64::MAX}),
        ),
        (
            format!("{payment}/accounts"),
            json!({"user_id": 8, "balance_cents": i64::MAX}),
        ),
        (
            format!("{payment}/accounts/7/deposits"),
            json!({"cents": i64::MAX}),
        ),
    ];
    for (url, body) in cases {
        let (status, problem) = admin_post(&system, url.clone(), body).await;
        assert_eq!(status, 422, "{url}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap_or("").contains("at most")
                || problem["detail"].as_str().unwrap_or("").contains("between"),
            "{problem}"
        );
    }
    // Within the caps, but summing past them over several requests.
    let cap = 1_000_000_000i64;
    let (status, _) = admin_post(
        &system,
        format!("{inventory}/products/1/restock"),
        json!({"units": cap}),
    )
    .await;
    assert_eq!(status, 409, "10 + 1e9 units exceed the cap on the total");
    assert_eq!(system.stock(1).await, 10, "nothing half-written");
}
