//! Answers that tell the truth (issue 21, item 2): what `POST /orders` answers must match what
//! the orders database kept, also when the connection is lost around a COMMIT. A `503` means
//! nothing was written; a written order is answered `202`; when nobody can tell, the answer is
//! `500 /problems/outcome-unknown` naming the order, so the client looks instead of guessing.
//! Keyed requests go through the same group commit (replay, reuse, in progress), and a buyer's
//! rate limit is checked before the body is read.
//!
//! The order service runs alone here, its database behind a wire-protocol proxy
//! (`system_tests::pg_proxy`) that loses a COMMIT's answer, or the COMMIT itself, on cue.

use platform::auth::TokenKeys;
use platform::testing::unique_token;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use system_tests::pg_proxy::PgProxy;
use system_tests::{fresh_database, nats_url};
use system_tests::{ADMIN_TOKEN, JWT_SECRET};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct OrderService {
    base_url: String,
    /// The service's database connections go through it.
    proxy: PgProxy,
    /// The test's own connection to the orders database (not through the proxy).
    pool: PgPool,
    http: reqwest::Client,
}

/// The order service on port 0, its database behind a proxy, its background workers off (no
/// relay: the outbox rows stay where the intake wrote them).
async fn start(extra: &str) -> OrderService {
    let database = fresh_database("orders").await;
    let proxy = PgProxy::start(&database).await;
    let prefix = format!("t{}", unique_token());
    let base = format!(
        r#"
[http]
port = 0
[database]
url = "{url}"
acquire_timeout = "5s"
[nats]
url = "{nats}"
prefix = "{prefix}"
stream_max_bytes = -1
[auth]
jwt_secret = "{JWT_SECRET}"
admin_token = "{ADMIN_TOKEN}"
[workers]
enabled = false
[orders]
writers = 2
max_batch = 64
commit_deadline = "1500ms"
[fair_use]
orders_per_second = 100000
burst = 100000
max_open_orders = 100000
"#,
        url = proxy.url,
        nats = nats_url().await,
    );
    let settings =
        <order_service::config::Settings as platform::config::ServiceSettings>::overridden(&[
            &base, extra,
        ])
        .expect("order service settings");
    let app = order_service::startup::build(&settings)
        .await
        .expect("order service starts");
    let base_url = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run(std::future::pending()));
    let pool = PgPool::connect(&database).await.expect("connect to orders");
    OrderService {
        base_url,
        proxy,
        pool,
        http: reqwest::Client::new(),
    }
}

fn token(user_id: i64) -> String {
    TokenKeys::with_secret(JWT_SECRET)
        .mint(user_id, Duration::from_secs(3600))
        .expect("mint token")
}

impl OrderService {
    async fn place(&self, user_id: i64, key: Option<&str>, quantity: i64) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/orders", self.base_url))
            .bearer_auth(token(user_id))
            .json(&json!({ "product_id": 1, "quantity": quantity }));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.expect("send order")
    }

    async fn get(&self, user_id: i64, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(token(user_id))
            .send()
            .await
            .expect("get order")
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    async fn order_exists(&self, id: &str) -> bool {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orders WHERE id = $1::uuid)")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("order lookup")
    }
}

/// What one `POST /orders` was answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    replayed: bool,
    body: Value,
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header("retry-after");
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    if status >= 400 {
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/problem+json"),
            "status {status}"
        );
    }
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        replayed,
        body,
    }
}

/// The order an outcome-unknown answer names: its id, checked against its URL.
fn unknown_order(answer: &Answer) -> String {
    assert_eq!(answer.status, 500, "{answer:?}");
    assert_eq!(
        answer.body["type"], "/problems/outcome-unknown",
        "{answer:?}"
    );
    let id = answer.body["order_id"]
        .as_str()
        .expect("order_id in an outcome-unknown answer")
        .to_owned();
    assert_eq!(
        answer.body["order_url"],
        format!("/orders/{id}"),
        "{answer:?}"
    );
    id
}

#[tokio::test]
async fn a_commit_whose_answer_was_lost_is_answered_by_what_the_database_kept() {
    let service = start("").await;
    // The next COMMIT is executed and its answer lost: the writer's connection is cut while
    // the orders of its batch are in the database.
    service.proxy.lose_next_commit_answer();
    let service = &service;
    let answers = futures::future::join_all(
        (0..16).map(|n| async move { answer(service.place(7 + n % 3, None, 1).await).await }),
    )
    .await;
    assert_eq!(service.proxy.cuts(), 1, "the proxy cut one COMMIT's answer");

    let stored = service.count("SELECT count(*) FROM orders").await;
    let told_not_written = answers.iter().filter(|a| a.status == 503).count();
    let accepted: Vec<&str> = answers
        .iter()
        .filter(|a| a.status == 202)
        .map(|a| a.body["id"].as_str().expect("accepted order id"))
        .collect();
    assert!(
        told_not_written == 0 || stored == accepted.len() as i64,
        "{told_not_written} orders answered 503 (\"nothing was written\") while {stored} orders \
         are stored and only {} were answered 202: a 503 hid a written order",
        accepted.len()
    );
    for id in &accepted {
        assert!(
            service.order_exists(id).await,
            "order {id} answered 202 is not stored"
        );
    }
    // Every order of this test was written: the lost answer was found out, not guessed.
    assert_eq!(accepted.len(), 16, "{answers:?}");
    assert_eq!(stored, 16);
    assert_eq!(
        service.count("SELECT count(*) FROM outbox").await,
        16,
        "each order's OrderCreated is in the outbox"
    );

    // The same with a key: the key's row committed with the order, so a retry replays it.
    service.proxy.lose_next_commit_answer();
    let first = answer(service.place(7, Some("lost-answer"), 2).await).await;
    assert_eq!(service.proxy.cuts(), 2);
    assert_eq!(first.status, 202, "{first:?}");
    let again = answer(service.place(7, Some("lost-answer"), 2).await).await;
    assert_eq!(again.status, 202, "{again:?}");
    assert!(again.replayed);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(service.count("SELECT count(*) FROM orders").await, 17);
}

#[tokio::test]
async fn a_commit_that_never_reached_the_database_is_answered_503_and_nothing_is_written() {
    let service = start("").await;
    service.proxy.drop_next_commit();
    let refused = answer(service.place(7, Some("dropped"), 1).await).await;
    assert_eq!(service.proxy.cuts(), 1);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.body["type"], "/problems/unavailable");
    assert!(refused.retry_after.is_some(), "503 comes with Retry-After");
    for table in ["orders", "outbox", "idempotency_keys"] {
        assert_eq!(
            service
                .count(&format!("SELECT count(*) FROM {table}"))
                .await,
            0,
            "{table}: a 503 means nothing was written"
        );
    }
    // Retrying with the same key places the order once.
    let retried = answer(service.place(7, Some("dropped"), 1).await).await;
    assert_eq!(retried.status, 202, "{retried:?}");
    assert!(!retried.replayed);
    assert_eq!(service.count("SELECT count(*) FROM orders").await, 1);
}

#[tokio::test]
async fn an_outcome_nobody_can_tell_names_the_order_and_a_retry_with_the_key_makes_one_order() {
    let service = start("").await;

    // Committed, the answer lost, and the database unreachable until the request's deadline:
    // the writer cannot find out.
    service.proxy.lose_next_commit_answer();
    service.proxy.refuse_connections_after_the_cut();
    let unknown = answer(service.place(7, Some("unknown-committed"), 1).await).await;
    assert_eq!(service.proxy.cuts(), 1);
    let id = unknown_order(&unknown);
    service.proxy.refuse_connections(false);
    // The client looks the order up instead of retrying blind: it was written.
    let looked_up = answer(service.get(7, &format!("/orders/{id}")).await).await;
    assert_eq!(looked_up.status, 200, "{looked_up:?}");
    assert_eq!(looked_up.body["id"], id.as_str());
    // Or it retries with the same key: the original order, replayed.
    let retried = answer(service.place(7, Some("unknown-committed"), 1).await).await;
    assert_eq!(retried.status, 202, "{retried:?}");
    assert!(retried.replayed);
    assert_eq!(retried.body["id"], id.as_str());
    assert_eq!(service.count("SELECT count(*) FROM orders").await, 1);

    // Not committed (the COMMIT never arrived), and again nobody can tell in time.
    service.proxy.drop_next_commit();
    service.proxy.refuse_connections_after_the_cut();
    let unknown = answer(service.place(7, Some("unknown-aborted"), 1).await).await;
    assert_eq!(service.proxy.cuts(), 2);
    let id = unknown_order(&unknown);
    service.proxy.refuse_connections(false);
    let looked_up = answer(service.get(7, &format!("/orders/{id}")).await).await;
    assert_eq!(looked_up.status, 404, "{looked_up:?}");
    let retried = answer(service.place(7, Some("unknown-aborted"), 1).await).await;
    assert_eq!(retried.status, 202, "{retried:?}");
    assert!(!retried.replayed, "nothing was written the first time");
    assert_eq!(service.count("SELECT count(*) FROM orders").await, 2);
    assert_eq!(
        service.count("SELECT count(*) FROM idempotency_keys").await,
        2
    );
}

#[tokio::test]
async fn keyed_orders_replay_refuse_reuse_and_wait_their_turn_in_the_group_commit() {
    let service = start("[fair_use]\nmax_open_orders = 2").await;
    let first = answer(service.place(7, Some("key-1"), 2).await).await;
    assert_eq!(first.status, 202, "{first:?}");
    assert!(!first.replayed);
    let replay = answer(service.place(7, Some("key-1"), 2).await).await;
    assert_eq!(replay.status, 202);
    assert!(replay.replayed);
    assert_eq!(replay.body, first.body, "the original order, as it is now");
    let reused = answer(service.place(7, Some("key-1"), 3).await).await;
    assert_eq!(reused.status, 422, "{reused:?}");
    assert_eq!(reused.body["type"], "/problems/idempotency-key-reused");

    // The key's lock held elsewhere (another request with it in flight): 409 at once.
    let mut holder = service.pool.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))")
        .bind("7")
        .bind("key-2")
        .execute(&mut *holder)
        .await
        .expect("hold the key's lock");
    let busy = answer(service.place(7, Some("key-2"), 1).await).await;
    assert_eq!(busy.status, 409, "{busy:?}");
    assert_eq!(busy.body["type"], "/problems/idempotency-key-in-progress");
    holder.rollback().await.expect("release the key's lock");
    let second = answer(service.place(7, Some("key-2"), 1).await).await;
    assert_eq!(second.status, 202, "{second:?}");

    // The buyer is at the cap (2 open orders): a new key is refused, a replay is not a new
    // order and is answered.
    let third = answer(service.place(7, Some("key-3"), 1).await).await;
    assert_eq!(third.status, 429, "{third:?}");
    assert_eq!(third.body["type"], "/problems/too-many-open-orders");
    let replay = answer(service.place(7, Some("key-2"), 1).await).await;
    assert_eq!(replay.status, 202, "{replay:?}");
    assert!(replay.replayed);

    // A burst with one key: one order, every other answer a replay or 409.
    let burst = futures::future::join_all(
        (0..30).map(|_| async { answer(service.place(8, Some("burst"), 1).await).await }),
    )
    .await;
    let mut ids = std::collections::HashSet::new();
    for answer in &burst {
        match answer.status {
            202 => {
                ids.insert(answer.body["id"].as_str().expect("id").to_owned());
            }
            409 => assert_eq!(answer.body["type"], "/problems/idempotency-key-in-progress"),
            other => panic!("unexpected {other}: {answer:?}"),
        }
    }
    assert_eq!(ids.len(), 1, "one order for the burst");
    assert_eq!(
        service
            .count("SELECT count(*) FROM orders WHERE user_id = 7")
            .await,
        2
    );
    assert_eq!(
        service
            .count("SELECT count(*) FROM orders WHERE user_id = 8")
            .await,
        1
    );
    assert_eq!(
        service.count("SELECT count(*) FROM idempotency_keys").await,
        3
    );
    assert_eq!(service.count("SELECT count(*) FROM outbox").await, 3);
}

/// A rate-limited buyer is answered `429` without the server waiting for the body: here the
/// head announces 16 KiB and no body follows, and the body timeout is far away.
#[tokio::test]
async fn a_rate_limited_buyer_is_refused_before_the_body_is_read() {
    let service =
        start("[fair_use]\norders_per_second = 1\nburst = 1\n[http]\nbody_read_timeout = \"120s\"")
            .await;
    let first = answer(service.place(7, None, 1).await).await;
    assert_eq!(first.status, 202, "{first:?}");

    let address = service.base_url.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let head = format!(
        "POST /orders HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 16384\r\n\r\n",
        token(7)
    );
    socket.write_all(head.as_bytes()).await.expect("send head");
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !received.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&received);
    assert!(
        read.is_ok(),
        "no answer within 10 s while the body was withheld: the server waits for the body \
         before checking the buyer's rate (received {text:?})"
    );
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after:"), "{text}");
    assert_eq!(service.count("SELECT count(*) FROM orders").await, 1);
}

/// The outcome-unknown answer is in the API's contract.
#[tokio::test]
async fn the_openapi_document_describes_the_outcome_unknown_answer() {
    let service = start("").await;
    let doc: Value = service
        .http
        .get(format!("{}/openapi.json", service.base_url))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("openapi json");
    let response = &doc["paths"]["/orders"]["post"]["responses"]["500"];
    let description = response["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("outcome-unknown"),
        "POST /orders 500: {response}"
    );
    // The 500's schema: a problem (all of `Problem`) with the order's id and URL.
    let resolve = |schema: &Value| -> Value {
        match schema["$ref"].as_str() {
            Some(reference) => {
                let name = reference.rsplit('/').next().unwrap_or_default();
                doc["components"]["schemas"][name].clone()
            }
            None => schema.clone(),
        }
    };
    let schema = resolve(&response["content"]["application/problem+json"]["schema"]);
    let parts: Vec<Value> = match schema["allOf"].as_array() {
        Some(parts) => parts.iter().map(resolve).collect(),
        None => vec![schema.clone()],
    };
    for member in ["type", "title", "status", "order_id", "order_url"] {
        assert!(
            parts
                .iter()
                .any(|part| part["properties"][member].is_object()),
            "the 500's schema has {member}: {schema}"
        );
    }
}
