//! The order API's contract: problem+json for every bad input with nothing written, buyer
//! identity from the token only, idempotency keys, OpenAPI and operational endpoints.

use platform::auth::TokenKeys;
use proptest::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use system_tests::{Options, TestSystem, JWT_SECRET};

async fn nothing_written(system: &TestSystem) {
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM orders").await,
        0
    );
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM outbox").await,
        0
    );
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM idempotency_keys").await,
        0
    );
}

async fn expect_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["status"], status);
    assert!(body["type"].is_string() && body["title"].is_string());
    body
}

#[tokio::test]
async fn every_bad_request_gets_its_problem_and_writes_nothing() {
    let system = TestSystem::start(Options {
        max_quantity: 10,
        ..Options::default()
    })
    .await;
    let url = format!("{}/orders", system.order.base_url);
    let token = system.token(7);
    let post = |body: &'static str| {
        system
            .http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    expect_problem(post("{\"product_id\": 1,").await.unwrap(), 400).await;
    expect_problem(
        post("{\"product_id\": 1, \"quantity\": 0}").await.unwrap(),
        422,
    )
    .await;
    expect_problem(
        post("{\"product_id\": 1, \"quantity\": -3}").await.unwrap(),
        422,
    )
    .await;
    expect_problem(
        post("{\"product_id\": 1, \"quantity\": 11}").await.unwrap(),
        422,
    )
    .await;
    expect_problem(
        post("{\"product_id\": 0, \"quantity\": 1}").await.unwrap(),
        422,
    )
    .await;
    expect_problem(
        post("{\"product_id\": \"one\", \"quantity\": 1}")
            .await
            .unwrap(),
        422,
    )
    .await;
    expect_problem(
        post("{\"product_id\": 1, \"quantity\": 1, \"user_id\": 2}")
            .await
            .unwrap(),
        422,
    )
    .await;
    expect_problem(post("[]").await.unwrap(), 422).await;

    let big = format!(
        "{{\"product_id\": 1, \"quantity\": 1, \"pad\": \"{}\"}}",
        "x".repeat(64 * 1024)
    );
    let response = system
        .http
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    expect_problem(response, 413).await;

    let response = system
        .http
        .post(&url)
        .bearer_auth(&token)
        .body("{\"product_id\": 1, \"quantity\": 1}")
        .send()
        .await
        .unwrap();
    expect_problem(response, 415).await;

    let body = json!({ "product_id": 1, "quantity": 1 });
    let response = system.http.post(&url).json(&body).send().await.unwrap();
    let problem = expect_problem(response, 401).await;
    assert_eq!(problem["detail"], "missing bearer token");
    let forged = TokenKeys::with_secret("not-the-secret")
        .mint(7, Duration::from_secs(60))
        .unwrap();
    expect_problem(
        system
            .http
            .post(&url)
            .bearer_auth(forged)
            .json(&body)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    expect_problem(
        system
            .http
            .post(&url)
            .bearer_auth("garbage")
            .json(&body)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let response = system
        .http
        .post(&url)
        .header("authorization", "Basic dXNlcjpwYXNz")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_problem(response, 401).await;

    let response = system
        .http
        .post(&url)
        .bearer_auth(&token)
        .header("idempotency-key", "")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_problem(response, 400).await;

    let orders = format!("{}/orders/not-a-uuid", system.order.base_url);
    expect_problem(
        system
            .http
            .get(&orders)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    let missing = format!("{}/orders/{}", system.order.base_url, uuid::Uuid::now_v7());
    expect_problem(
        system
            .http
            .get(&missing)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    expect_problem(
        system
            .http
            .get(format!("{}/nowhere", system.order.base_url))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    expect_problem(
        system
            .http
            .delete(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;

    nothing_written(&system).await;
}

#[tokio::test]
async fn expired_tokens_are_rejected() {
    let system = TestSystem::start(Options::default()).await;
    // Issued two hours ago with a one-minute lifetime.
    let expired = TokenKeys::with_secret(JWT_SECRET)
        .mint_at(7, Duration::from_secs(60), -7200)
        .unwrap();
    let response = system
        .http
        .post(format!("{}/orders", system.order.base_url))
        .bearer_auth(expired)
        .json(&json!({ "product_id": 1, "quantity": 1 }))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(response, 401).await;
    assert_eq!(problem["detail"], "token expired");
    nothing_written(&system).await;
}

#[tokio::test]
async fn a_buyer_cannot_read_another_buyers_order() {
    let system = TestSystem::start(Options::default()).await;
    let id = system.accepted_order(7, 1, 1).await;
    let response = system
        .http
        .get(format!("{}/orders/{id}", system.order.base_url))
        .bearer_auth(system.token(8))
        .send()
        .await
        .unwrap();
    expect_problem(response, 404).await;
    assert_eq!(system.order(7, &id).await["user_id"], 7);
}

#[tokio::test]
async fn idempotency_keys_replay_reject_reuse_and_survive_a_concurrent_burst() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(1, 1_000, 100).await;
    system.open_account(7, 1_000_000).await;
    let url = format!("{}/orders", system.order.base_url);
    let send = |key: &'static str, quantity: i64| {
        system
            .http
            .post(&url)
            .bearer_auth(system.token(7))
            .header("idempotency-key", key)
            .json(&json!({ "product_id": 1, "quantity": quantity }))
            .send()
    };

    let first: Value = send("key-1", 2).await.unwrap().json().await.unwrap();
    let replay = send("key-1", 2).await.unwrap();
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    assert_eq!(replay.headers().get("idempotent-replayed").unwrap(), "true");
    let replayed: Value = replay.json().await.unwrap();
    assert_eq!(replayed["id"], first["id"]);
    expect_problem(send("key-1", 3).await.unwrap(), 422).await;

    // Another buyer's identical key is a different key.
    let other = system
        .http
        .post(&url)
        .bearer_auth(system.token(8))
        .header("idempotency-key", "key-1")
        .json(&json!({ "product_id": 1, "quantity": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::ACCEPTED);
    assert!(other.headers().get("idempotent-replayed").is_none());

    let burst = futures::future::join_all((0..30).map(|_| send("key-burst", 1))).await;
    let mut ids = std::collections::HashSet::new();
    for response in burst {
        let response = response.unwrap();
        match response.status().as_u16() {
            202 => {
                let body: Value = response.json().await.unwrap();
                ids.insert(body["id"].as_str().unwrap().to_owned());
            }
            409 => {
                expect_problem(response, 409).await;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ids.len(), 1, "one order for the burst");
    system.settle().await;

    let orders = TestSystem::count(
        &system.order.pool,
        "SELECT count(*) FROM orders WHERE user_id = 7",
    )
    .await;
    assert_eq!(orders, 2, "key-1 and key-burst");
    let charges = TestSystem::count(
        &system.payment.pool,
        "SELECT count(*) FROM charges WHERE user_id = 7",
    )
    .await;
    assert_eq!(charges, 2);
}

#[tokio::test]
async fn the_openapi_document_and_operational_endpoints_are_served() {
    let system = TestSystem::start(Options::default()).await;
    let doc: Value = system
        .http
        .get(format!("{}/openapi.json", system.order.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/orders"]["post"].is_object());
    assert!(doc["paths"]["/orders/{id}"]["get"].is_object());

    let _ = system.accepted_order(7, 1, 1).await;
    for service in [&system.order, &system.inventory, &system.payment] {
        for path in ["/health", "/ready"] {
            let response = system
                .http
                .get(format!("{}{path}", service.base_url))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
        let metrics = system
            .http
            .get(format!("{}/metrics", service.admin_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("http_requests_total"), "{metrics}");
    }
}

fn arbitrary_body() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,64}",
        (any::<i64>(), any::<i64>())
            .prop_map(|(p, q)| format!("{{\"product_id\": {p}, \"quantity\": {q}}}")),
        (any::<f64>(), ".{0,8}")
            .prop_map(|(p, q)| format!("{{\"product_id\": {p}, \"quantity\": \"{q}\"}}")),
        (-2i64..5, -2i64..13)
            .prop_map(|(p, q)| format!("{{\"product_id\": {p}, \"quantity\": {q}}}")),
        Just("null".to_string()),
        Just("{\"product_id\": 1}".to_string()),
    ]
}

fn arbitrary_token() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        "[a-zA-Z0-9._-]{0,40}".prop_map(Some),
        Just(Some("valid".to_string()))
    ]
}

/// Generated bodies, tokens, keys and ids: every answer is 202 (and then the order exists) or a
/// problem+json client error, and nothing else is ever written.
#[test]
fn generated_requests_get_an_order_or_a_problem_and_nothing_else() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let system = runtime.block_on(TestSystem::start(Options {
        max_quantity: 10,
        ..Options::default()
    }));
    let config = ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(body in arbitrary_body(), token in arbitrary_token(), key in proptest::option::of(".{0,300}"), id in ".{0,40}")| {
        runtime.block_on(async {
            let mut request = system.http.request(Method::POST, format!("{}/orders", system.order.base_url))
                .header("content-type", "application/json").body(body.clone());
            match token.as_deref() {
                Some("valid") => request = request.bearer_auth(system.token(7)),
                Some(t) => request = request.bearer_auth(t),
                None => {}
            }
            if let Some(key) = &key {
                if let Ok(value) = reqwest::header::HeaderValue::from_str(key) {
                    request = request.header("idempotency-key", value);
                }
            }
            let before = TestSystem::count(&system.order.pool, "SELECT count(*) FROM orders").await;
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let after = TestSystem::count(&system.order.pool, "SELECT count(*) FROM orders").await;
            let outbox = TestSystem::count(&system.order.pool, "SELECT count(*) FROM outbox").await;
            if status == 202 {
                let body: Value = response.json().await.unwrap();
                let replayed = after == before;
                prop_assert!(after == before + 1 || replayed, "202 without an order");
                prop_assert!(body["id"].is_string());
                prop_assert_eq!(outbox, after, "one OrderCreated per order");
            } else {
                prop_assert!((400..500).contains(&status), "status {} for body {:?}", status, body);
                let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_owned());
                prop_assert_eq!(content_type.as_deref(), Some("application/problem+json"));
                prop_assert_eq!(after, before, "a rejected request wrote an order");
            }
            let path = format!("{}/orders/{}", system.order.base_url, id.replace(['/', '?', '#'], ""));
            let read = system.http.get(path).bearer_auth(system.token(7)).send().await.unwrap();
            prop_assert!(matches!(read.status().as_u16(), 200 | 400 | 404 | 405), "GET status {}", read.status());
            Ok(())
        })?;
    });
}
