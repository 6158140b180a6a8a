//! Traces across every hop: the three services run as processes of their own (a process has one
//! tracer provider, and a trace must show three `service.name`s), exporting to a test OTLP
//! receiver (`stack::otlp`) with every trace sampled. One order placed with a client's
//! `traceparent` must come back as one trace holding the spans of all three services, each hop
//! the child of the one before, and the spans that serve many orders at once (the intake's
//! commit, the relays' publishes, the consumers' transactions) linked to the order's spans; an
//! order re-driven must get a new trace linked to its first.

use serde_json::{json, Value};
use stack::otlp::{Kind, OtlpReceiver, ReceivedSpan};
use std::path::PathBuf;
use std::time::Duration;
use system_tests::{fresh_database, nats_url, ADMIN_TOKEN, JWT_SECRET};
use tokio::process::{Child, Command};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(60);

/// One service process; killed when dropped.
struct Process {
    base_url: String,
    child: Child,
}

/// What the three processes share.
struct Deployment {
    prefix: String,
    nats: String,
    otlp: String,
}

impl Deployment {
    async fn spawn(&self, service: &str, database: &str, extra: &[(&str, &str)]) -> Process {
        let binary = service_binary(service);
        assert!(
            binary.exists(),
            "{} is not built (cargo build --workspace --bins)",
            binary.display()
        );
        let (port, admin_port) = (free_port(), free_port());
        let mut command = Command::new(&binary);
        command
            .env_clear()
            .env("APP_HTTP__PORT", port.to_string())
            .env("APP_HTTP__ADMIN_PORT", admin_port.to_string())
            .env("APP_DATABASE__URL", database)
            .env("APP_NATS__URL", &self.nats)
            .env("APP_NATS__PREFIX", &self.prefix)
            .env("APP_NATS__STREAM_MAX_BYTES", "-1")
            .env("APP_AUTH__JWT_SECRET", JWT_SECRET)
            .env("APP_AUTH__ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &self.otlp)
            .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
            .env("OTEL_TRACES_SAMPLER_ARG", "1.0")
            // Exported within a tenth of a second, so the test waits little.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .kill_on_drop(true);
        for (name, value) in extra {
            command.env(name, value);
        }
        let child = command.spawn().expect("spawn the service");
        Process {
            base_url: format!("http://127.0.0.1:{port}"),
            child,
        }
    }
}

impl Process {
    /// Waits until it answers `/ready` (a consumer is ready once the stream it reads exists,
    /// which its publisher creates: the three start together).
    async fn ready(self) -> Process {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = http
                .get(format!("{}/ready", self.base_url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return self;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became ready",
                self.base_url
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The service executable beside the test's (`target/<profile>/`).
fn service_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let mut dir = exe.parent().expect("its directory").to_path_buf();
    if dir.file_name().is_some_and(|d| d == "deps") {
        dir.pop();
    }
    dir.join(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn token(user_id: i64) -> String {
    platform::auth::TokenKeys::with_secret(JWT_SECRET)
        .mint(user_id, Duration::from_secs(3600))
        .expect("mint token")
}

async fn admin_post(url: String, body: Value) {
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("admin request");
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
}

/// Places an order with the client's `traceparent`; returns its id.
async fn place(order: &Process, user_id: i64, traceparent: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/orders", order.base_url))
        .bearer_auth(token(user_id))
        .header("traceparent", traceparent)
        .json(&json!({ "product_id": 1, "quantity": 1 }))
        .send()
        .await
        .expect("place the order");
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("order body");
    body["id"].as_str().expect("order id").to_owned()
}

async fn wait_until_final(order: &Process, user_id: i64, id: &str) -> String {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let body: Value = http
            .get(format!("{}/orders/{id}", order.base_url))
            .bearer_auth(token(user_id))
            .send()
            .await
            .expect("read the order")
            .json()
            .await
            .expect("order body");
        let status = body["status"].as_str().unwrap_or_default().to_owned();
        if status == "COMPLETED" || status == "FAILED" {
            return status;
        }
        assert!(Instant::now() < deadline, "order {id} still {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the received spans until `check` finds what it looks for (`Ok`), or fails with what
/// it last said was missing.
async fn spans_until<T>(
    receiver: &OtlpReceiver,
    check: impl Fn(&[ReceivedSpan]) -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let spans = receiver.spans();
        match check(&spans) {
            Ok(found) => return found,
            Err(missing) if Instant::now() >= deadline => {
                panic!("{missing}; received {} spans: {spans:#?}", spans.len())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    test: impl Fn(&ReceivedSpan) -> bool,
) -> Result<&'a ReceivedSpan, String> {
    spans
        .iter()
        .find(|s| test(s))
        .ok_or_else(|| format!("no {what}"))
}

/// The spans of one order's saga, each found by its relation to the one before.
struct Saga {
    server: ReceivedSpan,
    inventory: ReceivedSpan,
    payment: ReceivedSpan,
    outcome: ReceivedSpan,
}

fn consumer_of<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    event_type: &str,
    parent: &ReceivedSpan,
) -> Result<&'a ReceivedSpan, String> {
    one(
        spans,
        &format!(
            "{service} consumer span of {event_type} under {}",
            parent.name
        ),
        |s| {
            s.service == service
                && s.kind == Kind::Consumer
                && s.attribute("event_type") == Some(event_type)
                && s.is_child_of(parent)
        },
    )
}

/// Each hop's span and the spans linked to it, checked as the module doc says.
fn saga(spans: &[ReceivedSpan], client_trace: &str, client_span: &str) -> Result<Saga, String> {
    let server = one(spans, "POST /orders server span", |s| {
        s.service == "order-service"
            && s.kind == Kind::Server
            && s.name == "POST /orders"
            && s.trace_id == client_trace
            && s.parent_span_id.as_deref() == Some(client_span)
    })?;
    one(spans, "intake commit linked to the request", |s| {
        s.service == "order-service" && s.name == "intake commit" && s.is_linked_to(server)
    })?;
    let inventory = consumer_of(spans, "inventory-service", "OrderCreated", server)?;
    let payment = consumer_of(spans, "payment-service", "StockReserved", inventory)?;
    let outcome = consumer_of(spans, "order-service", "PaymentCompleted", payment)?;
    // Each publish is a producer span linked to the context its event was written with, and
    // each consumer transaction is linked to the consumer span of every event in it.
    for (service, written_in) in [
        ("order-service", server),
        ("inventory-service", inventory),
        ("payment-service", payment),
    ] {
        one(
            spans,
            &format!("{service} publish linked to {}", written_in.name),
            |s| s.service == service && s.kind == Kind::Producer && s.is_linked_to(written_in),
        )?;
    }
    for consumed in [inventory, payment, outcome] {
        one(
            spans,
            &format!("transaction linked to {}", consumed.name),
            |s| {
                s.service == consumed.service
                    && s.name == "consumer transaction"
                    && s.is_linked_to(consumed)
            },
        )?;
    }
    Ok(Saga {
        server: server.clone(),
        inventory: inventory.clone(),
        payment: payment.clone(),
        outcome: outcome.clone(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn one_order_is_one_trace_across_the_three_services_and_a_redrive_links_to_it() {
    let receiver = OtlpReceiver::start().await.expect("the OTLP receiver");
    let deployment = Deployment {
        prefix: format!("t{}", platform::testing::unique_token()),
        nats: nats_url().await,
        otlp: receiver.endpoint(),
    };
    let (orders_db, inventory_db, payments_db) = (
        fresh_database("orders").await,
        fresh_database("inventory").await,
        fresh_database("payments").await,
    );
    let inventory = deployment
        .spawn("inventory-service", &inventory_db, &[])
        .await;
    let payment = deployment
        .spawn(
            "payment-service",
            &payments_db,
            &[("APP_PAYMENT__DECLINE_RATE", "0")],
        )
        .await;
    let order = deployment
        .spawn(
            "order-service",
            &orders_db,
            &[
                ("APP_REDRIVE__AFTER", "1s"),
                ("APP_REDRIVE__INTERVAL", "200ms"),
            ],
        )
        .await;
    let (inventory, payment, order) = (
        inventory.ready().await,
        payment.ready().await,
        order.ready().await,
    );
    admin_post(
        format!("{}/products", inventory.base_url),
        json!({ "id": 1, "name": "product 1", "price_cents": 100, "stock": 10 }),
    )
    .await;
    admin_post(
        format!("{}/accounts", payment.base_url),
        json!({ "user_id": 7, "balance_cents": 100_000 }),
    )
    .await;

    // One order, placed with the client's context.
    let (trace, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let id = place(&order, 7, &format!("00-{trace}-{client_span}-01")).await;
    assert_eq!(wait_until_final(&order, 7, &id).await, "COMPLETED");
    let saga = spans_until(&receiver, |spans| saga(spans, trace, client_span)).await;
    let spans = receiver.spans();
    let services: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.trace_id == trace)
        .map(|s| s.service.as_str())
        .collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        ["inventory-service", "order-service", "payment-service"],
        "one trace holds the spans of the three services"
    );
    for hop in [&saga.inventory, &saga.payment, &saga.outcome] {
        assert_eq!(hop.trace_id, saga.server.trace_id);
    }

    // A second order waits for an inventory that is down: the re-drive asks again, in a new
    // trace linked to the order's first.
    let mut inventory = inventory;
    inventory.child.kill().await.expect("stop inventory");
    let (trace, client_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let id = place(&order, 7, &format!("00-{trace}-{client_span}-01")).await;
    let redrive = spans_until(&receiver, |spans| {
        let server = one(spans, "second order's server span", |s| {
            s.kind == Kind::Server && s.trace_id == trace
        })?;
        let redrive = one(spans, "re-drive span linked to the first trace", |s| {
            s.name == "redrive" && s.is_linked_to(server)
        })?;
        Ok(redrive.clone())
    })
    .await;
    assert_ne!(
        redrive.trace_id, trace,
        "a re-drive starts a trace of its own"
    );
    assert_eq!(redrive.attribute("order_id"), Some(id.as_str()));
    let _inventory = deployment
        .spawn("inventory-service", &inventory_db, &[])
        .await
        .ready()
        .await;
    assert_eq!(wait_until_final(&order, 7, &id).await, "COMPLETED");
    // The question asked again is answered in the re-drive's trace.
    spans_until(&receiver, |spans| {
        consumer_of(spans, "inventory-service", "OrderCreated", &redrive).map(|_| ())
    })
    .await;
}
