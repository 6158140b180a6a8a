//! The smaller boundary defects of issue 21 (item 7): a re-drive that piles copies of an order's
//! question behind the one still waiting in the outbox, an admin listener that defaults to the
//! buyers' address, and buyer ids read leniently from a token's `sub`.

use platform::auth::TokenKeys;
use serde_json::{json, Value};
use std::time::Duration;
use system_tests::{Options, TestSystem, JWT_SECRET};

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
