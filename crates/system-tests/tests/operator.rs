//! The operator's side: dead letters listed, replayed once their cause is fixed, discarded, every
//! action recorded; and retention that prunes what is past its window and nothing else.

use async_nats::jetstream::message::PublishMessage;
use platform::envelope::TraceContext;
use platform::events::{Event, PaymentCompleted};
use serde_json::{json, Value};
use system_tests::{Options, TestSystem, ADMIN_TOKEN};
use uuid::Uuid;

async fn publish(system: &TestSystem, event: &Event) {
    let envelope = event.into_envelope(TraceContext::default()).unwrap();
    system
        .jetstream()
        .await
        .send_publish(
            system.subject(event.subject_suffix()),
            PublishMessage::build()
                .payload(envelope.encode().unwrap().into())
                .message_id(envelope.id.to_string()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn admin(
    system: &TestSystem,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = system
        .http
        .request(method, format!("{}{path}", system.order.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-operator", "alice");
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A payment outcome for an order the order service does not have is parked. Once the order
/// exists (the cause is fixed), a replay applies it; a second replay has no second effect; a
/// discard resolves another; the audit log names who did what.
#[tokio::test]
async fn dead_letters_are_replayed_once_fixed_discarded_and_audited() {
    let system = TestSystem::start(Options::default()).await;
    let (missing, unknown) = (Uuid::now_v7(), Uuid::now_v7());
    for order_id in [missing, unknown] {
        publish(
            &system,
            &Event::PaymentCompleted(PaymentCompleted {
                order_id,
                user_id: 7,
                amount_cents: 1_000,
            }),
        )
        .await;
    }
    system.settle().await;
    let (status, open) = admin(&system, reqwest::Method::GET, "/admin/dead-letters", None).await;
    assert_eq!(status, 200);
    let open = open.as_array().unwrap().clone();
    assert_eq!(open.len(), 2, "{open:?}");
    let letter = |order: Uuid| {
        open.iter()
            .find(|l| l["reason"].as_str().unwrap().contains(&order.to_string()))
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let (fixable, hopeless) = (letter(missing), letter(unknown));

    // Replaying before the cause is fixed fails, and is recorded.
    let (status, problem) = admin(
        &system,
        reqwest::Method::POST,
        &format!("/admin/dead-letters/{fixable}/replay"),
        None,
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("does not exist"));

    sqlx::query(
        "INSERT INTO orders (id, user_id, product_id, quantity, status) VALUES ($1, 7, 1, 1, 'PENDING')",
    )
    .bind(missing)
    .execute(&system.order.pool)
    .await
    .unwrap();
    let (status, body) = admin(
        &system,
        reqwest::Method::POST,
        &format!("/admin/dead-letters/{fixable}/replay"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        system.order(7, &missing.to_string()).await["status"],
        "COMPLETED"
    );
    let (status, _) = admin(
        &system,
        reqwest::Method::POST,
        &format!("/admin/dead-letters/{fixable}/replay"),
        None,
    )
    .await;
    assert_eq!(status, 409, "a second replay is refused");
    let updated_at = |system: &TestSystem| {
        let pool = system.order.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT updated_at::text FROM orders WHERE id = $1")
                .bind(missing)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let last_change = updated_at(&system).await;

    let (status, outcome) = admin(
        &system,
        reqwest::Method::POST,
        "/admin/dead-letters/discard",
        Some(json!({"reason": unknown.to_string()})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(outcome["matched"], 1);
    assert_eq!(outcome["resolved"], 1);
    let (_, open) = admin(&system, reqwest::Method::GET, "/admin/dead-letters", None).await;
    assert_eq!(open, json!([]));
    let (_, all) = admin(
        &system,
        reqwest::Method::GET,
        "/admin/dead-letters?status=all",
        None,
    )
    .await;
    let statuses: Vec<(i64, &str, &str)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["id"].as_i64().unwrap(),
                l["status"].as_str().unwrap(),
                l["resolved_by"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(statuses.contains(&(fixable, "replayed", "alice")));
    assert!(statuses.contains(&(hopeless, "discarded", "alice")));

    let (_, actions) = admin(
        &system,
        reqwest::Method::GET,
        "/admin/dead-letters/actions",
        None,
    )
    .await;
    let log: Vec<(i64, &str, bool)> = actions
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["dead_letter_id"].as_i64().unwrap(),
                a["action"].as_str().unwrap(),
                a["succeeded"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        log,
        vec![
            (hopeless, "discard", true),
            (fixable, "replay", false),
            (fixable, "replay", true),
            (fixable, "replay", false),
        ]
    );
    assert_eq!(
        updated_at(&system).await,
        last_change,
        "nothing applied by the refused replay"
    );
    let anonymous = system
        .http
        .post(format!(
            "{}/admin/dead-letters/{hopeless}/replay",
            system.order.admin_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// Pruning removes inbox rows, resolved dead letters and idempotency keys past their windows,
/// and keeps the recent ones and every open dead letter.
#[tokio::test]
async fn retention_prunes_only_what_is_past_its_window() {
    let system = TestSystem::start(Options {
        extra: "[retention]\nbatch_size = 2\n",
        ..Options::default()
    })
    .await;
    let pool = &system.order.pool;
    for age_days in [9, 9, 9, 9, 9, 1] {
        sqlx::query(
            "INSERT INTO inbox (consumer, message_id, processed_at) VALUES ('c', $1, now() - make_interval(days => $2))",
        )
        .bind(Uuid::now_v7())
        .bind(age_days)
        .execute(pool)
        .await
        .unwrap();
    }
    for (status, age_days) in [("replayed", 40), ("discarded", 1), ("open", 400)] {
        let resolved = (status != "open").then_some(age_days);
        sqlx::query(
            "INSERT INTO dead_letters (consumer, subject, deliveries, reason, payload, status, failed_at, resolved_at)
             VALUES ('c', 's', 1, 'r', '', $1, now() - make_interval(days => $2),
                     now() - make_interval(days => $3))",
        )
        .bind(status)
        .bind(age_days)
        .bind(resolved)
        .execute(pool)
        .await
        .unwrap();
    }
    let order = system.accepted_order(7, 1, 1).await;
    for (key, age_hours) in [("old", 25), ("new", 1)] {
        sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, product_id, quantity, order_id, created_at)
             VALUES (7, $1, 1, 1, $2, now() - make_interval(hours => $3))",
        )
        .bind(key)
        .bind(Uuid::parse_str(&order).unwrap())
        .bind(age_hours)
        .execute(pool)
        .await
        .unwrap();
    }

    let pruned = system.order.driver.retention.prune().await.unwrap();
    assert_eq!(
        pruned,
        vec![("inbox", 5), ("dead_letters", 1), ("idempotency_keys", 1)]
    );
    assert_eq!(
        TestSystem::count(pool, "SELECT count(*) FROM inbox").await,
        1
    );
    let kept: Vec<String> = sqlx::query_scalar("SELECT status FROM dead_letters ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(kept, vec!["discarded", "open"]);
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(keys, vec!["new"]);
}

/// `/metrics` and `/admin/*` answer only on the admin listener (still behind the admin token);
/// the public listener has the API, `/health` and `/ready`, and 404 for the operator's routes.
#[tokio::test]
async fn metrics_and_the_admin_api_are_only_on_the_admin_listener() {
    let system = TestSystem::start(Options::default()).await;
    let get = |url: String, token: Option<&'static str>| {
        let mut request = system.http.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap() }
    };
    for service in [&system.order, &system.inventory, &system.payment] {
        assert_ne!(service.base_url, service.admin_url);
        for path in ["/metrics", "/admin/dead-letters"] {
            let public = get(format!("{}{path}", service.base_url), Some(ADMIN_TOKEN)).await;
            assert_eq!(public.status(), 404, "{path} on {}", service.base_url);
            assert_eq!(public.headers()["content-type"], "application/problem+json");
        }
        let health = get(format!("{}/health", service.base_url), None).await;
        assert_eq!(health.status(), 200);
        // Served here (200, or 503 while a consumer waits for a stream another service makes).
        let ready = get(format!("{}/ready", service.base_url), None).await;
        assert!([200, 503].contains(&ready.status().as_u16()), "{ready:?}");
        let metrics = get(format!("{}/metrics", service.admin_url), None).await;
        assert_eq!(metrics.status(), 200);
        assert!(metrics
            .text()
            .await
            .unwrap()
            .contains("http_requests_total"));
        let letters = get(
            format!("{}/admin/dead-letters", service.admin_url),
            Some(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(letters.status(), 200);
        assert_eq!(letters.json::<Value>().await.unwrap(), json!([]));
        let anonymous = get(format!("{}/admin/dead-letters", service.admin_url), None).await;
        assert_eq!(anonymous.status(), 401);
        let api = get(format!("{}/health", service.admin_url), None).await;
        assert_eq!(
            api.status(),
            404,
            "the admin listener serves no public route"
        );
    }
}
