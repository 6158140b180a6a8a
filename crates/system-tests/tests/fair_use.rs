//! Fair use of the order API: a flood from one buyer is answered `429` with `Retry-After` while
//! another buyer's orders go through, and a buyer cannot hold more orders that are not final
//! than the cap; nothing refused is written, and what was refused is counted.

use futures::future::join_all;
use serde_json::{json, Value};
use std::time::Instant;
use system_tests::{Options, TestSystem};

async fn expect_too_many(response: reqwest::Response, problem_type: &str) {
    assert_eq!(response.status(), 429);
    let retry_after: u32 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], problem_type, "{body}");
    assert_eq!(body["status"], 429);
}

async fn orders_of(system: &TestSystem, user_id: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&system.order.pool)
        .await
        .unwrap()
}

/// `orders_limited_total{reason}` on the order service's admin listener (the recorder is the
/// test process's: other tests' refusals add to it, never take away).
async fn limited_total(system: &TestSystem, reason: &str) -> u64 {
    let page = system
        .http
        .get(format!("{}/metrics", system.order.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("orders_limited_total{{reason=\"{reason}\"}} ");
    page.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn a_flood_from_one_buyer_is_limited_while_another_buyers_orders_go_through() {
    let system = TestSystem::start(Options {
        extra: "[fair_use]\norders_per_second = 1\nburst = 5",
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let flood = join_all((0..30).map(|_| system.place_order(7, 1, 1))).await;
    let elapsed_secs = started.elapsed().as_secs();
    let mut accepted = 0;
    let mut limited = 0;
    for response in flood {
        match response.status().as_u16() {
            202 => accepted += 1,
            _ => {
                expect_too_many(response, "/problems/rate-limited").await;
                limited += 1;
            }
        }
    }
    // The burst, and one more for each second the flood took (1 a second).
    assert!(accepted >= 5, "{accepted} accepted");
    assert!(
        accepted <= 5 + 1 + elapsed_secs,
        "{accepted} accepted in {elapsed_secs} s"
    );
    assert_eq!(accepted + limited, 30);
    assert_eq!(
        orders_of(&system, 7).await,
        accepted as i64,
        "a 429 writes nothing"
    );
    assert!(limited_total(&system, "rate").await >= limited);

    // Another buyer has a bucket of its own.
    for _ in 0..5 {
        system.accepted_order(8, 1, 1).await;
    }
    assert_eq!(orders_of(&system, 8).await, 5);
}

#[tokio::test]
async fn the_open_orders_cap_refuses_the_next_order_until_one_is_final() {
    let system = TestSystem::start(Options {
        extra: "[fair_use]\nmax_open_orders = 3",
        ..Options::default()
    })
    .await;
    system.create_product(1, 1_000, 100).await;
    system.open_account(7, 1_000_000).await;
    // The test drives the workers: until it settles, every order stays PENDING.
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(system.accepted_order(7, 1, 1).await);
    }
    expect_too_many(
        system.place_order(7, 1, 1).await,
        "/problems/too-many-open-orders",
    )
    .await;
    // The same holds for an order with an Idempotency-Key (the same group commit decides).
    let keyed = system
        .http
        .post(format!("{}/orders", system.order.base_url))
        .bearer_auth(system.token(7))
        .header("idempotency-key", "fourth")
        .json(&json!({ "product_id": 1, "quantity": 1 }))
        .send()
        .await
        .unwrap();
    expect_too_many(keyed, "/problems/too-many-open-orders").await;
    assert_eq!(
        orders_of(&system, 7).await,
        3,
        "a refused order is not written"
    );
    assert!(limited_total(&system, "open_orders").await >= 2);
    // Other buyers are not held back by buyer 7's open orders.
    system.accepted_order(8, 1, 1).await;

    system.settle().await;
    for id in &first {
        assert_eq!(system.order(7, id).await["status"], "COMPLETED");
    }
    // Once its orders are final the buyer may order again, with or without a key.
    system.accepted_order(7, 1, 1).await;
    let keyed = system
        .http
        .post(format!("{}/orders", system.order.base_url))
        .bearer_auth(system.token(7))
        .header("idempotency-key", "fourth")
        .json(&json!({ "product_id": 1, "quantity": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 202);
    assert_eq!(orders_of(&system, 7).await, 5);
}
