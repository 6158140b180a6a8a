//! Shutdown leaves nothing half-done: the order service, stopped through its shutdown signal
//! while orders keep coming, answers the requests in flight and lets every worker finish its
//! round; every order it accepted is written with its `OrderCreated` (still in the outbox, or
//! published and answered), and once it runs again every order reaches a final status with
//! stock and money exact.

use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use system_tests::{Options, TestSystem};
use tokio_util::sync::CancellationToken;

const PRODUCTS: i64 = 3;
const STOCK: i64 = 40;
const PRICE_CENTS: i64 = 100;
const BUYERS: i64 = 20;
const BALANCE_CENTS: i64 = 1_000;

/// Orders accepted (`202`) by the service, by id.
type Accepted = Arc<Mutex<Vec<String>>>;

/// Places orders one after another until told to stop; keeps the ids of those accepted. Any
/// other answer, or no answer (the service is stopping), is not an accepted order.
async fn place_orders(
    http: reqwest::Client,
    base_url: String,
    tokens: Vec<String>,
    lane: i64,
    accepted: Accepted,
    stop: CancellationToken,
) {
    let mut n = lane;
    while !stop.is_cancelled() {
        n += 1;
        let buyer = (n % BUYERS) as usize;
        let product = n % PRODUCTS + 1;
        let sent = http
            .post(format!("{base_url}/orders"))
            .bearer_auth(&tokens[buyer])
            .json(&json!({ "product_id": product, "quantity": 1 }))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let Ok(response) = sent else {
            // Refused: the listener is closed. Keep asking until the test says stop.
            tokio::task::yield_now().await;
            continue;
        };
        if response.status() == 202 {
            if let Ok(body) = response.json::<serde_json::Value>().await {
                if let Some(id) = body["id"].as_str() {
                    accepted.lock().unwrap().push(id.to_owned());
                }
            }
        }
    }
}

#[tokio::test]
async fn a_service_stopped_mid_load_leaves_nothing_half_done() {
    let mut system = TestSystem::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    for product in 1..=PRODUCTS {
        system.create_product(product, PRICE_CENTS, STOCK).await;
    }
    for buyer in 1..=BUYERS {
        system.open_account(buyer, BALANCE_CENTS).await;
    }
    let tokens: Vec<String> = (0..BUYERS).map(|i| system.token(i + 1)).collect();

    let accepted: Accepted = Arc::default();
    let stop_load = CancellationToken::new();
    let lanes: Vec<_> = (0..8)
        .map(|lane| {
            tokio::spawn(place_orders(
                system.http.clone(),
                system.order.base_url.clone(),
                tokens.clone(),
                lane * 1_000,
                accepted.clone(),
                stop_load.clone(),
            ))
        })
        .collect();

    // Mid-load: some orders accepted, more coming.
    let loaded = platform::testing::eventually(Duration::from_secs(30), || async {
        (accepted.lock().unwrap().len() >= 60).then_some(())
    })
    .await;
    assert!(loaded.is_some(), "orders were accepted within 30 s");
    system.order.stop().await;
    stop_load.cancel();
    for lane in lanes {
        lane.await.expect("load lane");
    }
    let accepted = accepted.lock().unwrap().clone();

    // While it is down: every accepted order is written, and its OrderCreated is either still in
    // the outbox or was published (inventory, still running, decides on it).
    for id in &accepted {
        let written: Option<String> =
            sqlx::query_scalar("SELECT status FROM orders WHERE id = $1::uuid")
                .bind(id)
                .fetch_optional(&system.order.pool)
                .await
                .unwrap();
        assert!(written.is_some(), "order {id} was accepted but not written");
    }
    let unaccounted = platform::testing::eventually(Duration::from_secs(30), || async {
        let mut missing = Vec::new();
        for id in &accepted {
            let in_outbox: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM outbox
                                WHERE strpos(convert_from(envelope, 'UTF8'), $1) > 0)",
            )
            .bind(id)
            .fetch_one(&system.order.pool)
            .await
            .unwrap();
            let decided: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM reservations WHERE order_id = $1::uuid)
                     OR EXISTS (SELECT 1 FROM stock_rejections WHERE order_id = $1::uuid)",
            )
            .bind(id)
            .fetch_one(&system.inventory.pool)
            .await
            .unwrap();
            if !in_outbox && !decided {
                missing.push(id.clone());
            }
        }
        missing.is_empty().then_some(())
    })
    .await;
    assert!(
        unaccounted.is_some(),
        "an accepted order's OrderCreated is neither in the outbox nor published"
    );

    // Running again, every order (accepted or not answered in time) reaches a final status.
    system.restart_order().await;
    let settled = platform::testing::eventually(Duration::from_secs(90), || async {
        let open = TestSystem::count(
            &system.order.pool,
            "SELECT count(*) FROM orders WHERE status NOT IN ('COMPLETED', 'FAILED')",
        )
        .await;
        (open == 0).then_some(())
    })
    .await;
    assert!(settled.is_some(), "every order reached a final status");

    // Stock exact: what is left plus what completed orders took is what there was.
    for product in 1..=PRODUCTS {
        let sold: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(quantity), 0)::bigint FROM orders
             WHERE product_id = $1 AND status = 'COMPLETED'",
        )
        .bind(product)
        .fetch_one(&system.order.pool)
        .await
        .unwrap();
        assert_eq!(
            system.stock(product).await + sold,
            STOCK,
            "product {product}: stock left + sold"
        );
    }
    // Paid at most once, and only for completed orders: each buyer's balance is what they
    // deposited less their completed orders.
    for buyer in 1..=BUYERS {
        let spent: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(quantity), 0)::bigint * $2 FROM orders
             WHERE user_id = $1 AND status = 'COMPLETED'",
        )
        .bind(buyer)
        .bind(PRICE_CENTS)
        .fetch_one(&system.order.pool)
        .await
        .unwrap();
        assert_eq!(
            system.balance(buyer).await,
            BALANCE_CENTS - spent,
            "buyer {buyer}: balance"
        );
    }
    let accepted_final = TestSystem::count(
        &system.order.pool,
        "SELECT count(*) FROM orders WHERE status IN ('COMPLETED', 'FAILED')",
    )
    .await;
    assert!(accepted_final >= accepted.len() as i64);
}
