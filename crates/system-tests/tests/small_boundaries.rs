//! The smaller boundary defects of issue 21 (item 7): a re-drive that piles copies of an order's
//! question behind the one still waiting in the outbox, an admin listener that defaults to the
//! buyers' address, and buyer ids read leniently from a token's `sub`.

use platform::auth::TokenKeys;
use serde_json::{json, Value};
use std::time::Duration;
use system_tests::{Options, TestSystem, JWT_SECRET};

async fn outbox_rows(system: &TestSystem) -> i64 {
    TestSystem::count(&system.order.pool, "SELECT count(*) FROM outbox").await
}

async fn redrive_count(system: &TestSystem, order_id: &str) -> i64 {
    sqlx::query_scalar("SELECT redrive_count::bigint FROM orders WHERE id = $1::uuid")
        .bind(order_id)
        .fetch_one(&system.order.pool)
        .await
        .expect("redrive count")
}

/// The broker is away (here: the order service's relay is simply not driven), so an order's
/// `OrderCreated` waits in the outbox while the order stalls past `redrive.after`. Asking
/// again adds nothing the waiting event will not deliver: however many re-drive rounds pass,
/// the outbox holds one row for the order, not one per round (a long outage would end in a storm
/// of copies). Once the event is published and the order still waits, a round asks again —
/// once.
#[tokio::test]
async fn an_order_whose_event_waits_in_the_outbox_is_not_redriven() {
    let system = TestSystem::start(Options {
        // Due at once, and again at every round: the pause never grows.
        extra: "[redrive]\nafter = \"0s\"\nmax_pause = \"0s\"\n",
        ..Options::default()
    })
    .await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let id = system.accepted_order(7, 1, 2).await;
    let [redrive] = &system.order.driver.workers[..] else {
        panic!("the order service has one background worker of its own: the re-drive");
    };
    assert_eq!(outbox_rows(&system).await, 1, "the order's OrderCreated");

    for round in 1..=3 {
        redrive.round().await.expect("re-drive round");
        assert_eq!(
            outbox_rows(&system).await,
            1,
            "round {round}: the event still waiting is the only one for the order"
        );
    }
    assert_eq!(redrive_count(&system, &id).await, 0, "never asked again");

    // Published; nobody answered yet (inventory not driven): the next round asks again, once.
    system
        .order
        .driver
        .relay
        .publish_all_pending()
        .await
        .expect("publish");
    assert_eq!(outbox_rows(&system).await, 0);
    for _ in 0..2 {
        redrive.round().await.expect("re-drive round");
    }
    assert_eq!(outbox_rows(&system).await, 1, "one copy asked again");
    assert_eq!(redrive_count(&system, &id).await, 1);

    system.settle().await;
    assert_eq!(system.order(7, &id).await["status"], "COMPLETED");
    assert_eq!(system.stock(1).await, 8, "reserved once");
    assert_eq!(
        TestSystem::count(&system.payment.pool, "SELECT count(*) FROM charges").await,
        1
    );
}

/// A service told to serve buyers on every address (`http.host = "0.0.0.0"`) and nothing about
/// its admin listener keeps `/metrics` and the admin desk on loopback: operators' routes reach
/// beyond the machine only when `http.admin_host` says so.
#[tokio::test]
async fn the_admin_listener_stays_on_loopback_unless_its_host_is_set() {
    let system = TestSystem::start(Options::default()).await;
    let mut settings = system.inventory_settings.clone();
    settings.common.http.host = "0.0.0.0".into();
    settings.common.http.admin_host = None;
    // Test secrets are short: the development switch lets a public listener start with them.
    settings.common.development = true;
    let app = inventory_service::startup::build(&settings)
        .await
        .expect("a second inventory instance starts");
    let admin = app.admin_address();
    assert!(
        admin.ip().is_loopback(),
        "admin listener on {admin}, beyond loopback"
    );
    let (port, admin_port) = (app.port(), app.admin_port());
    tokio::spawn(app.run(std::future::pending()));
    let metrics = system
        .http
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .expect("metrics over loopback");
    assert_eq!(metrics.status(), 200);
    let ready = system
        .http
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .expect("the public listener serves");
    assert_eq!(ready.status(), 200);

    // Set explicitly, the admin host is used as given.
    settings.common.http.admin_host = Some("0.0.0.0".into());
    let app = inventory_service::startup::build(&settings)
        .await
        .expect("a third inventory instance starts");
    assert!(app.admin_address().ip().is_unspecified());
}

/// A token's `sub` is a buyer id only when it is a canonical positive decimal integer that fits
/// i64; anything else (a sign, zero, a leading zero, spaces, an exponent, too many digits) is a
/// `401` problem and nothing is written.
#[tokio::test]
async fn a_token_whose_subject_is_not_a_canonical_positive_id_is_refused() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 10).await;
    let keys = TokenKeys::with_secret(JWT_SECRET);
    let url = format!("{}/orders", system.order.base_url);
    let body = json!({ "product_id": 1, "quantity": 1 });
    let too_big = format!("{}0", i64::MAX);
    for subject in [
        "+5",
        "0",
        "-1",
        "05",
        " 5",
        "5 ",
        "1e3",
        too_big.as_str(),
        "",
        "٥",
    ] {
        let token = keys
            .mint_subject(subject, Duration::from_secs(60))
            .expect("token");
        let response = system
            .http
            .post(&url)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("send order");
        assert_eq!(response.status(), 401, "sub {subject:?}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert_eq!(content_type, "application/problem+json", "sub {subject:?}");
        let problem: Value = response.json().await.expect("problem body");
        assert_eq!(problem["status"], 401, "sub {subject:?}");
    }
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM orders").await,
        0,
        "nothing written"
    );

    // The canonical form of the same ids is accepted.
    for subject in ["5", &i64::MAX.to_string()] {
        let token = keys
            .mint_subject(subject, Duration::from_secs(60))
            .expect("token");
        let response = system
            .http
            .post(&url)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("send order");
        assert_eq!(response.status(), 202, "sub {subject:?}");
    }
}
