//! The faults the system must heal from by itself, or with an operator's tools: broker state
//! deleted, poison messages, a handler bug, a flood of reads, a row lock held from outside.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, message::PublishMessage};
use platform::broker::Topology;
use platform::envelope::TraceContext;
use platform::events::{Event, OrderCreated, PaymentCompleted, Source, StockReserved};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::context::FaultContext;
use crate::deploy;
use crate::deploy::admin::Resolution;
use crate::loadgen::answers::{FinalAnswer, RequestLog, RequestRecord};

/// The product of the `panic` fault (outside the seed data), and how many orders it places.
pub const PANIC_PRODUCT: i64 = 990_001;
const PANIC_ORDERS: usize = 10;
/// Poison messages of each kind (undecodable, unprocessable) per `poison` fault.
const POISON_EACH: usize = 3;
/// Connections of a `pool-starve` flood.
const FLOOD_CONNECTIONS: usize = 128;

async fn jetstream(context: &FaultContext) -> Result<jetstream::Context> {
    let client = platform::broker::connect_url(&context.nats_url)
        .await
        .with_context(|| {
            format!(
                "connecting to NATS at {}",
                platform::config::redact_url(&context.nats_url)
            )
        })?;
    Ok(jetstream::new(client))
}

fn topology(context: &FaultContext) -> Topology {
    Topology::new(context.prefix.clone())
}

/// The start specification of an instance this run started.
fn spec<'a>(
    context: &'a FaultContext,
    instance: &str,
) -> Result<&'a deploy::services::ServiceSpec> {
    context
        .specs
        .iter()
        .find(|s| s.name == instance)
        .with_context(|| format!("no start specification for {instance}"))
}

/// The public API of an instance this run started.
fn base_url(context: &FaultContext, instance: &str) -> Result<String> {
    spec(context, instance).map(|s| s.base_url())
}

/// The admin listener of an instance this run started (dead letters, fault hooks).
fn admin_url(context: &FaultContext, instance: &str) -> Result<String> {
    spec(context, instance).map(|s| s.admin_url())
}

/// The admin URL of the first instance of each service, whose admin API serves the whole
/// service's database.
pub(super) fn service_admin_urls(context: &FaultContext) -> Vec<(String, String)> {
    deploy::SERVICES
        .iter()
        .filter_map(|(service, _)| {
            let spec = context.specs.iter().find(|s| s.name.starts_with(service))?;
            Some((service.to_string(), spec.admin_url()))
        })
        .collect()
}

pub async fn delete_consumers(
    context: &FaultContext,
    consumers: &[(Source, String)],
    actions: &mut Vec<String>,
) -> Result<()> {
    let js = jetstream(context).await?;
    for (source, durable) in consumers {
        let name = topology(context).stream_name(*source);
        let stream = js
            .get_stream(&name)
            .await
            .with_context(|| format!("reading stream {name}"))?;
        let info = stream.consumer_info(durable).await.ok();
        stream
            .delete_consumer(durable)
            .await
            .with_context(|| format!("deleting consumer {durable} of {name}"))?;
        actions.push(format!(
            "deleted durable consumer {durable} of {name} ({} pending, {} unacknowledged)",
            info.as_ref().map_or(0, |i| i.num_pending),
            info.as_ref().map_or(0, |i| i.num_ack_pending),
        ));
    }
    Ok(())
}

pub async fn delete_stream(
    context: &FaultContext,
    source: Source,
    actions: &mut Vec<String>,
) -> Result<()> {
    let js = jetstream(context).await?;
    let name = topology(context).stream_name(source);
    let messages = match js.get_stream(&name).await {
        Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    };
    js.delete_stream(&name)
        .await
        .with_context(|| format!("deleting stream {name}"))?;
    actions.push(format!(
        "deleted stream {name} with its {messages} messages"
    ));
    Ok(())
}

/// An event the `service` consumes that it must reject for good, on a subject no other service
/// would act on with a real effect.
fn unprocessable(service: &str) -> Result<Event> {
    Ok(match service {
        "inventory-service" => Event::OrderCreated(OrderCreated {
            order_id: Uuid::now_v7(),
            user_id: 1,
            product_id: 1,
            quantity: 0,
        }),
        "payment-service" => Event::StockReserved(StockReserved {
            order_id: Uuid::now_v7(),
            user_id: 1,
            product_id: 1,
            quantity: 1,
            amount_cents: -1,
        }),
        "order-service" => Event::PaymentCompleted(PaymentCompleted {
            order_id: Uuid::now_v7(),
            user_id: 1,
            amount_cents: 1,
        }),
        other => bail!("no poison for {other}"),
    })
}

/// Publishes undecodable and unprocessable messages straight to a subject `service` consumes;
/// returns their message ids.
pub async fn publish_poison(
    context: &FaultContext,
    service: &str,
    actions: &mut Vec<String>,
) -> Result<Vec<String>> {
    let js = jetstream(context).await?;
    let subject = topology(context).subject_of(&unprocessable(service)?);
    let mut ids = Vec::with_capacity(2 * POISON_EACH);
    for n in 0..2 * POISON_EACH {
        let id = format!("poison-{}", Uuid::new_v4());
        let payload = if n < POISON_EACH {
            format!("not an event #{n}").into_bytes()
        } else {
            unprocessable(service)?
                .into_envelope(TraceContext::default())?
                .encode()?
        };
        js.send_publish(
            subject.clone(),
            PublishMessage::build()
                .payload(payload.into())
                .message_id(&id),
        )
        .await
        .with_context(|| format!("publishing poison to {subject}"))?
        .await
        .with_context(|| format!("publishing poison to {subject}"))?;
        ids.push(id);
    }
    actions.push(format!(
        "published {POISON_EACH} undecodable and {POISON_EACH} unprocessable messages to {subject}"
    ));
    Ok(ids)
}

/// Every poison message must have been parked by a consumer; the dead letters are discarded.
pub async fn discard_poison(
    context: &FaultContext,
    ids: &[String],
    actions: &mut Vec<String>,
) -> Result<()> {
    let mut parked = BTreeMap::new();
    for (service, url) in service_admin_urls(context) {
        for letter in context.admin.dead_letters(&url, "open", None).await? {
            let Some(id) = letter.message_id.as_ref().filter(|id| ids.contains(id)) else {
                continue;
            };
            context
                .admin
                .resolve(&url, letter.id, Resolution::Discard)
                .await?;
            *parked.entry(id.clone()).or_insert(0) += 1;
            actions.push(format!(
                "{service} had parked {id} ({}); discarded",
                letter.kind
            ));
        }
    }
    let missing: Vec<&String> = ids.iter().filter(|id| !parked.contains_key(*id)).collect();
    if !missing.is_empty() {
        bail!("poison messages not dead-lettered: {missing:?}");
    }
    Ok(())
}

/// Arms the panic hook on every inventory instance and places orders that hit it.
pub async fn arm_panic(
    context: &FaultContext,
    instances: &[String],
    actions: &mut Vec<String>,
) -> Result<()> {
    let inventory = base_url(context, &instances[0])?;
    crate::seed::create(
        &context.admin,
        &format!("{inventory}/products"),
        &json!({"id": PANIC_PRODUCT, "name": "panic hook product", "price_cents": 100, "stock": 100_000}),
    )
    .await?;
    for instance in instances {
        context
            .admin
            .set_panic_hook(&admin_url(context, instance)?, Some(PANIC_PRODUCT))
            .await?;
    }
    actions.push(format!(
        "armed the panic hook for product {PANIC_PRODUCT} on {}",
        instances.join(", ")
    ));
    let order_url = format!(
        "{}/orders",
        deploy::first_url(&context.specs, "order-service")?
    );
    let http = deploy::http_client()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let mut accepted = 0;
    for n in 0..PANIC_ORDERS {
        // Placed with a key of the run and recorded like the generator's requests, so the
        // audit knows these orders.
        let name = format!("panic-{n}");
        let key = lock_requests(context).key_of_named(&name);
        let response = http
            .post(&order_url)
            .bearer_auth(&context.buyer_token)
            .header("idempotency-key", key)
            .json(&json!({"product_id": PANIC_PRODUCT, "quantity": 1}))
            .send()
            .await;
        let (status, body) = match response {
            Ok(response) => (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            ),
            Err(error) => {
                record_panic_order(context, &name, FinalAnswer::NoAnswer);
                return Err(error).with_context(|| format!("POST {order_url}"));
            }
        };
        let order = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["id"].as_str().and_then(|id| Uuid::parse_str(id).ok()));
        record_panic_order(
            context,
            &name,
            crate::loadgen::answers::classify(status, false, order),
        );
        if status != 202 {
            bail!("an order for the panic product answered {status}: {body}");
        }
        accepted += 1;
    }
    actions.push(format!(
        "placed {accepted} orders for product {PANIC_PRODUCT}"
    ));
    Ok(())
}

fn lock_requests(context: &FaultContext) -> std::sync::MutexGuard<'_, RequestLog> {
    context
        .load
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn record_panic_order(context: &FaultContext, name: &str, answer: FinalAnswer) {
    lock_requests(context).record_named(name, RequestRecord { answer, retries: 0 });
}

/// The fix is deployed (the hook disarmed); the operator replays what the bug parked.
pub async fn disarm_and_replay(
    context: &FaultContext,
    instances: &[String],
    actions: &mut Vec<String>,
) -> Result<()> {
    for instance in instances {
        context
            .admin
            .set_panic_hook(&admin_url(context, instance)?, None)
            .await?;
    }
    actions.push("disarmed the panic hook".to_string());
    let outcome = context
        .admin
        .resolve_matching(
            &admin_url(context, &instances[0])?,
            "fault hook",
            Resolution::Replay,
        )
        .await?;
    actions.push(format!(
        "replayed the dead letters of the panics: {} matched, {} replayed, {} failed",
        outcome.matched,
        outcome.resolved,
        outcome.failed.len()
    ));
    if !outcome.failed.is_empty() {
        bail!("replays failed: {:?}", outcome.failed);
    }
    Ok(())
}

/// A flood of reads of random orders, until stopped.
pub struct Flood {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    statuses: Arc<Mutex<BTreeMap<u16, u64>>>,
    errors: Arc<AtomicU64>,
}

impl Flood {
    pub fn start(context: &FaultContext, instances: &[String]) -> Result<Flood> {
        let urls: Vec<String> = instances
            .iter()
            .map(|i| base_url(context, i))
            .collect::<Result<_>>()?;
        let http = deploy::http_client()
            .pool_max_idle_per_host(FLOOD_CONNECTIONS)
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the flood's HTTP client")?;
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(Mutex::new(BTreeMap::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let tasks = (0..FLOOD_CONNECTIONS)
            .map(|n| {
                let (http, stop, statuses, errors) =
                    (http.clone(), stop.clone(), statuses.clone(), errors.clone());
                let url = urls[n % urls.len()].clone();
                let token = context.buyer_token.clone();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let sent = http
                            .get(format!("{url}/orders/{}", Uuid::new_v4()))
                            .bearer_auth(&token)
                            .send()
                            .await;
                        match sent {
                            Ok(response) => {
                                *statuses
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .entry(response.status().as_u16())
                                    .or_insert(0) += 1;
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Ok(Flood {
            stop,
            tasks,
            statuses,
            errors,
        })
    }

    /// Stops the flood and says what it sent.
    pub async fn stop(mut self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        let statuses = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        let total: u64 = statuses.values().sum::<u64>() + self.errors.load(Ordering::Relaxed);
        let by_status: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        format!(
            "stopped the flood: {total} reads from {FLOOD_CONNECTIONS} connections ({}; errors: {})",
            by_status.join(", "),
            self.errors.load(Ordering::Relaxed)
        )
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// An outside session holding the hot product's row lock; rolled back when released or dropped.
pub async fn hold_lock(context: &FaultContext, actions: &mut Vec<String>) -> Result<PgConnection> {
    let mut conn = PgConnection::connect(&context.inventory_db)
        .await
        .context("connecting to the inventory database")?;
    sqlx::query("BEGIN").execute(&mut conn).await?;
    sqlx::query("SELECT id FROM products WHERE id = $1 FOR UPDATE")
        .bind(context.hot_product)
        .execute(&mut conn)
        .await?;
    actions.push(format!(
        "an outside session holds FOR UPDATE on product {}",
        context.hot_product
    ));
    Ok(conn)
}

pub async fn release_lock(mut conn: PgConnection, actions: &mut Vec<String>) -> Result<()> {
    sqlx::query("ROLLBACK").execute(&mut conn).await?;
    conn.close().await?;
    actions.push("the outside session rolled back".to_string());
    Ok(())
}
