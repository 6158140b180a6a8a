//! The `forge` fault: a service's NATS credential used to lie about another service's events.
//!
//! NATS permissions say which *subjects* a service's user may publish to, not what it may say
//! there. So each service's own user (its real credentials of this deployment, never the
//! administrator) publishes, on every subject it may publish to that another service consumes,
//! an envelope of every event type another service owns, for real orders of the run (one
//! completed, one still open); and one envelope of its own type whose `aggregate_id` is not
//! its payload's order. Every receiving consumer must dead-letter each as `misrouted`; when the
//! fault is lifted the dead letters are looked up by message id through each service's admin
//! API, checked and discarded, and the run's exact audit proves nothing was applied.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, message::PublishMessage};
use platform::envelope::TraceContext;
use platform::events::{
    Event, FailureReason, OrderCreated, PaymentCompleted, PaymentFailed, Source, StockRejected,
    StockReleased, StockReserved,
};
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;
use uuid::Uuid;

use super::inject::{FaultContext, Refuted};
use crate::deploy::admin::Resolution;
use crate::deploy::{self, Credentials};
use crate::infra;
use crate::plan::faults::subscriptions_of;

/// The dead-letter kind a consumer gives an event that did not come from its publisher.
pub const MISROUTED: &str = "misrouted";
/// How long after the lift the forged messages may still take to be dead-lettered (a consumer
/// reads them within milliseconds; the fault's duration is the real allowance).
const DEAD_LETTER_GRACE: Duration = Duration::from_secs(5);
/// How many of the newest accepted orders are looked at to find a completed and an open one.
const RECENT_ORDERS: usize = 5_000;

/// Every event type, by name: [`forged_event`] builds each.
const EVENT_TYPES: [&str; 6] = [
    "OrderCreated",
    "StockReserved",
    "StockRejected",
    "StockReleased",
    "PaymentCompleted",
    "PaymentFailed",
];

/// One event type as the system declares it: which service publishes it, in which stream, on
/// which subject (below the deployment prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractEntry {
    pub event_type: &'static str,
    pub publisher: &'static str,
    pub stream: Source,
    pub subject_suffix: &'static str,
}

/// The streams a service (binary name) publishes to, as the service itself declares them.
fn publishes_of(service: &str) -> &'static [Source] {
    match service {
        "order-service" => &order_service::events::PUBLISHES,
        "inventory-service" => &inventory_service::events::PUBLISHES,
        "payment-service" => &payment_service::events::PUBLISHES,
        _ => &[],
    }
}

/// Who owns every event type. The ONE place ownership is derived (from
/// `Event::source` / `Event::subject_suffix` and each service's `PUBLISHES`); when the platform
/// declares its event contract, this reads it instead.
pub fn event_contract() -> Vec<ContractEntry> {
    let sample = OrderFacts::sample();
    EVENT_TYPES
        .iter()
        .map(|event_type| {
            let event = forged_event(event_type, &sample);
            let stream = event.source();
            let publisher = deploy::SERVICES
                .iter()
                .map(|(service, _)| *service)
                .find(|service| publishes_of(service).contains(&stream))
                .unwrap_or("nobody");
            ContractEntry {
                event_type: event.type_name(),
                publisher,
                stream,
                subject_suffix: event.subject_suffix(),
            }
        })
        .collect()
}

/// What one forged message is: who publishes it, where, claiming which type, and which
/// durable consumers receive it (each must dead-letter it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgery {
    pub publisher: &'static str,
    pub subject_suffix: String,
    pub event_type: &'static str,
    pub receivers: Vec<String>,
    /// The envelope's `aggregate_id` is another order than its payload's (of the publisher's
    /// own type, on its own subject: only that disagreement betrays it).
    pub mismatched_aggregate: bool,
}

/// The subjects `publisher` may publish to (`<prefix>.<its stream>.>`) that another service's
/// durable consumers read, with those consumers.
fn subjects_read_by_others(publisher: &str) -> BTreeMap<String, Vec<String>> {
    let mut subjects: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (service, _) in deploy::SERVICES.iter().filter(|(s, _)| *s != publisher) {
        for subscription in subscriptions_of(service) {
            if !publishes_of(publisher).contains(&subscription.stream) {
                continue;
            }
            for suffix in &subscription.subject_suffixes {
                subjects
                    .entry(suffix.to_string())
                    .or_default()
                    .push(subscription.durable_name.clone());
            }
        }
    }
    subjects
}

/// The own event type each publisher forges with a mismatched aggregate: the one whose
/// application would do visible harm (stock released for a paid order, an open order failed,
/// stock reserved for an order that does not exist).
const MISMATCHED: [(&str, &str); 3] = [
    ("payment-service", "PaymentFailed"),
    ("inventory-service", "StockRejected"),
    ("order-service", "OrderCreated"),
];

/// What the `publishers`' users forge: on each subject they may publish to that others read,
/// every event type another service owns; and each one envelope of its own type, on its own
/// subject, whose aggregate is not its payload's order ([`MISMATCHED`]).
pub fn forge_plan(publishers: &[&'static str]) -> Vec<Forgery> {
    let contract = event_contract();
    let mut plan = Vec::new();
    for &publisher in publishers {
        for (subject, receivers) in subjects_read_by_others(publisher) {
            for entry in contract.iter().filter(|e| e.publisher != publisher) {
                plan.push(Forgery {
                    publisher,
                    subject_suffix: subject.clone(),
                    event_type: entry.event_type,
                    receivers: receivers.clone(),
                    mismatched_aggregate: false,
                });
            }
        }
        let own = MISMATCHED.iter().find(|(p, _)| *p == publisher);
        let entry = own.and_then(|(_, t)| contract.iter().find(|e| e.event_type == *t));
        if let Some(entry) = entry {
            let receivers = subjects_read_by_others(publisher)
                .remove(entry.subject_suffix)
                .unwrap_or_default();
            plan.push(Forgery {
                publisher,
                subject_suffix: entry.subject_suffix.to_string(),
                event_type: entry.event_type,
                receivers,
                mismatched_aggregate: true,
            });
        }
    }
    plan
}

/// What a forged event says about a real order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFacts {
    pub id: Uuid,
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub amount_cents: i64,
    pub status: String,
}

impl OrderFacts {
    fn sample() -> OrderFacts {
        OrderFacts {
            id: Uuid::nil(),
            user_id: 1,
            product_id: 1,
            quantity: 1,
            amount_cents: 1,
            status: "COMPLETED".into(),
        }
    }
}

/// An event of `event_type` about `order`, as its real publisher would word it: the most
/// harmful thing the type can say (a failed payment releases stock, a rejection fails the
/// order, a completed payment completes it).
fn forged_event(event_type: &str, order: &OrderFacts) -> Event {
    let order_id = order.id;
    match event_type {
        "OrderCreated" => Event::OrderCreated(OrderCreated {
            order_id,
            user_id: order.user_id,
            product_id: order.product_id,
            quantity: order.quantity,
        }),
        "StockReserved" => Event::StockReserved(StockReserved {
            order_id,
            user_id: order.user_id,
            product_id: order.product_id,
            quantity: order.quantity,
            amount_cents: order.amount_cents,
        }),
        "StockRejected" => Event::StockRejected(StockRejected {
            order_id,
            product_id: order.product_id,
            reason: FailureReason::OutOfStock,
        }),
        "StockReleased" => Event::StockReleased(StockReleased {
            order_id,
            product_id: order.product_id,
            quantity: order.quantity,
        }),
        "PaymentCompleted" => Event::PaymentCompleted(PaymentCompleted {
            order_id,
            user_id: order.user_id,
            amount_cents: order.amount_cents,
        }),
        _ => Event::PaymentFailed(PaymentFailed {
            order_id,
            user_id: order.user_id,
            amount_cents: order.amount_cents,
            reason: FailureReason::PaymentDeclined,
        }),
    }
}

/// One forged message as published: its message id (the envelope's id, as a relay sets it)
/// and the consumers that must dead-letter it.
#[derive(Debug, Clone)]
pub struct Published {
    pub message_id: String,
    pub subject: String,
    pub event_type: &'static str,
    pub order_id: Uuid,
    pub receivers: Vec<String>,
}

/// A completed order among the newest accepted ones, and the newest open order (it may finish
/// before the forgeries arrive; the newest accepted order stands in when none is open).
async fn real_orders(context: &FaultContext) -> Result<(OrderFacts, OrderFacts)> {
    let recent: Vec<Uuid> = {
        let accepted = context
            .load
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        accepted.iter().rev().take(RECENT_ORDERS).copied().collect()
    };
    let Some(newest) = recent.first().copied() else {
        bail!("no order of the run was accepted yet: schedule forge later in the load");
    };
    let orders_url = infra::database_url(&context.admin_database_url, deploy::ORDERS_DB);
    let mut orders = PgConnection::connect(&orders_url)
        .await
        .context("connecting to the orders database")?;
    let rows: Vec<(Uuid, i64, i64, i32, Option<i64>, String)> = sqlx::query_as(
        "SELECT id, user_id, product_id, quantity, amount_cents, status FROM orders WHERE id = ANY($1)",
    )
    .bind(&recent)
    .fetch_all(&mut orders)
    .await
    .context("reading accepted orders")?;
    // An order still on its way is most likely one not answered yet: the newest open one.
    let open_now: Option<(Uuid, i64, i64, i32, Option<i64>, String)> = sqlx::query_as(
        "SELECT id, user_id, product_id, quantity, amount_cents, status FROM orders
         WHERE status IN ('PENDING', 'RESERVED') ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_optional(&mut orders)
    .await
    .context("reading an open order")?;
    orders.close().await.ok();
    let mut inventory = PgConnection::connect(&context.inventory_db)
        .await
        .context("connecting to the inventory database")?;
    let prices: Vec<(i64, i64)> = sqlx::query_as("SELECT id, price_cents FROM products")
        .fetch_all(&mut inventory)
        .await
        .context("reading product prices")?;
    inventory.close().await.ok();
    let facts = |row: &(Uuid, i64, i64, i32, Option<i64>, String)| {
        let price = prices.iter().find(|(id, _)| *id == row.2).map(|(_, p)| *p);
        let amount = row
            .4
            .or_else(|| price.and_then(|p| p.checked_mul(i64::from(row.3))))
            .unwrap_or(0);
        OrderFacts {
            id: row.0,
            user_id: row.1,
            product_id: row.2,
            quantity: row.3,
            amount_cents: amount,
            status: row.5.clone(),
        }
    };
    let completed = rows
        .iter()
        .find(|r| r.5 == "COMPLETED")
        .map(facts)
        .context("no completed order among the accepted ones yet: schedule forge later")?;
    let open = open_now
        .as_ref()
        .or_else(|| rows.iter().find(|r| r.0 == newest))
        .map(facts)
        .context("the newest accepted order is not in the orders database")?;
    Ok((completed, open))
}

/// `nats://host:port` of `url` with `user:password@` of a service's user instead.
fn url_as(url: &str, user: &str, password: &str) -> String {
    url.split(',')
        .map(|server| {
            let server = server.trim();
            let (scheme, rest) = server.split_once("://").unwrap_or(("nats", server));
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{user}:{password}@{host}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

async fn publisher_js(
    context: &FaultContext,
    credentials: &Credentials,
    service: &str,
) -> Result<jetstream::Context> {
    let user = deploy::nats_user(&context.prefix, service);
    let url = url_as(&context.nats_url, &user, credentials.nats_password(service));
    let client = platform::broker::connect_url(&url)
        .await
        .with_context(|| format!("connecting to NATS as {user}"))?;
    Ok(jetstream::new(client))
}

/// Publishes the forgeries of `publishers` with their own users; returns what was published.
pub async fn publish_forgeries(
    context: &FaultContext,
    publishers: &[&'static str],
    actions: &mut Vec<String>,
) -> Result<Vec<Published>> {
    if !context.nats_users {
        bail!("forge needs the services' own NATS users: run against our own NATS server (unset ORDERSYS_NATS_URL)");
    }
    let (completed, open) = real_orders(context).await?;
    actions.push(format!(
        "forging for order {} ({}) and order {} ({})",
        completed.id, completed.status, open.id, open.status
    ));
    let mut published = Vec::new();
    let mut per_publisher: BTreeMap<&str, (usize, BTreeSet<String>)> = BTreeMap::new();
    for publisher in publishers {
        let js = publisher_js(context, &context.credentials, publisher).await?;
        for forgery in forge_plan(&[publisher]) {
            let orders: Vec<(OrderFacts, Uuid)> = if forgery.mismatched_aggregate {
                // The payload's order is one, the envelope's aggregate another (a real one).
                let payload = match forgery.event_type {
                    "StockRejected" => open.clone(),
                    "OrderCreated" => OrderFacts {
                        id: Uuid::now_v7(),
                        ..completed.clone()
                    },
                    _ => completed.clone(),
                };
                let aggregate = if payload.id == open.id {
                    completed.id
                } else {
                    open.id
                };
                vec![(payload, aggregate)]
            } else {
                vec![(completed.clone(), completed.id), (open.clone(), open.id)]
            };
            for (order, aggregate_id) in &orders {
                let aggregate_id = *aggregate_id;
                let mut envelope = forged_event(forgery.event_type, order)
                    .into_envelope(TraceContext::default())
                    .context("building a forged envelope")?;
                envelope.aggregate_id = aggregate_id;
                let message_id = envelope.id.to_string();
                let subject = format!("{}.{}", context.prefix, forgery.subject_suffix);
                let payload = envelope.encode().context("encoding a forged envelope")?;
                js.send_publish(
                    subject.clone(),
                    PublishMessage::build()
                        .payload(payload.into())
                        .message_id(&message_id),
                )
                .await
                .with_context(|| format!("{publisher} publishing to {subject}"))?
                .await
                .with_context(|| format!("{publisher} publishing to {subject}"))?;
                let mine = per_publisher.entry(publisher).or_default();
                mine.0 += 1;
                mine.1.insert(subject.clone());
                published.push(Published {
                    message_id,
                    subject,
                    event_type: forgery.event_type,
                    order_id: order.id,
                    receivers: forgery.receivers.clone(),
                });
            }
        }
    }
    for (publisher, (count, subjects)) in per_publisher {
        actions.push(format!(
            "{} (its own NATS user) published {count} forged envelopes on {}",
            deploy::nats_user(&context.prefix, publisher),
            subjects.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(published)
}

/// One dead letter of a forged message, as a service's admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub service: String,
    pub admin_url: String,
    pub id: i64,
    pub consumer: String,
    pub kind: String,
}

/// The open dead letters of the forged messages, over every service, by message id.
async fn parked(
    context: &FaultContext,
    ids: &BTreeSet<&str>,
) -> Result<BTreeMap<String, Vec<Parked>>> {
    let mut by_message: BTreeMap<String, Vec<Parked>> = BTreeMap::new();
    for (service, url) in super::heal::service_admin_urls(context) {
        for letter in context.admin.dead_letters(&url, "open", None).await? {
            let Some(id) = letter.message_id.filter(|id| ids.contains(id.as_str())) else {
                continue;
            };
            by_message.entry(id).or_default().push(Parked {
                service: service.clone(),
                admin_url: url.clone(),
                id: letter.id,
                consumer: letter.consumer,
                kind: letter.kind,
            });
        }
    }
    Ok(by_message)
}

/// What became of the forged deliveries (one per forged message and consumer that reads it).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub deliveries: usize,
    pub misrouted: usize,
    /// Dead-lettered as another kind: kind → consumer → how many.
    pub other_kind: BTreeMap<String, BTreeMap<String, usize>>,
    /// Never dead-lettered (applied, or not read): consumer → how many, and one example.
    pub missing: BTreeMap<String, (usize, String)>,
}

impl Verdict {
    pub fn of(published: &[Published], letters: &BTreeMap<String, Vec<Parked>>) -> Verdict {
        let mut verdict = Verdict::default();
        for forged in published {
            let mine = letters.get(&forged.message_id);
            for receiver in &forged.receivers {
                verdict.deliveries += 1;
                match mine.and_then(|l| l.iter().find(|x| &x.consumer == receiver)) {
                    Some(letter) if letter.kind == MISROUTED => verdict.misrouted += 1,
                    Some(letter) => {
                        *verdict
                            .other_kind
                            .entry(letter.kind.clone())
                            .or_default()
                            .entry(receiver.clone())
                            .or_default() += 1
                    }
                    None => {
                        let entry = verdict.missing.entry(receiver.clone()).or_insert((
                            0,
                            format!(
                                "{} on {} for order {}",
                                forged.event_type, forged.subject, forged.order_id
                            ),
                        ));
                        entry.0 += 1;
                    }
                }
            }
        }
        verdict
    }

    /// Every delivery has a dead letter of some kind (nothing more will come).
    fn settled(&self) -> bool {
        self.missing.is_empty()
    }

    fn summary(&self) -> String {
        let other: usize = self.other_kind.values().flat_map(|c| c.values()).sum();
        let missing: usize = self.missing.values().map(|(n, _)| n).sum();
        format!(
            "{} deliveries to consumers: {} dead-lettered as {MISROUTED}, {other} as another kind, {missing} not dead-lettered",
            self.deliveries, self.misrouted
        )
    }

    /// Why the fault failed, or `None` when every delivery was refused as misrouted.
    fn problem(&self) -> Option<String> {
        if self.misrouted == self.deliveries {
            return None;
        }
        let mut parts = Vec::new();
        for (kind, consumers) in &self.other_kind {
            let by: Vec<String> = consumers.iter().map(|(c, n)| format!("{c} {n}")).collect();
            parts.push(format!("dead-lettered as {kind}: {}", by.join(", ")));
        }
        for (consumer, (count, example)) in &self.missing {
            parts.push(format!(
                "not dead-lettered by {consumer} (applied, or never read): {count}, e.g. {example}"
            ));
        }
        Some(format!(
            "{} of {} forged deliveries were not refused as {MISROUTED}; {}",
            self.deliveries - self.misrouted,
            self.deliveries,
            parts.join("; ")
        ))
    }
}

/// Every forged message must have been dead-lettered as `misrouted` by each consumer that
/// received it; whatever was parked is discarded. Refuted otherwise, naming what was not.
pub async fn verify_and_discard(
    context: &FaultContext,
    published: &[Published],
    actions: &mut Vec<String>,
) -> Result<()> {
    let ids: BTreeSet<&str> = published.iter().map(|p| p.message_id.as_str()).collect();
    let deadline = Instant::now() + DEAD_LETTER_GRACE;
    // Until every receiver has parked every forgery (as anything), or the grace is over.
    let (letters, verdict) = loop {
        let letters = parked(context, &ids).await?;
        let verdict = Verdict::of(published, &letters);
        if verdict.settled() || Instant::now() >= deadline {
            break (letters, verdict);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut discarded = 0;
    for letter in letters.values().flatten() {
        context
            .admin
            .resolve(&letter.admin_url, letter.id, Resolution::Discard)
            .await
            .with_context(|| {
                format!("discarding dead letter {} of {}", letter.id, letter.service)
            })?;
        discarded += 1;
    }
    actions.push(format!(
        "{} forged messages, {}; {discarded} dead letters discarded",
        published.len(),
        verdict.summary()
    ));
    match verdict.problem() {
        Some(problem) => Err(Refuted(problem).into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_has_one_publisher_stream_and_subject() {
        let contract = event_contract();
        let owner = |t: &str| {
            let e = contract
                .iter()
                .find(|e| e.event_type == t)
                .expect("declared");
            (e.publisher, e.stream, e.subject_suffix)
        };
        assert_eq!(contract.len(), EVENT_TYPES.len());
        assert_eq!(
            owner("OrderCreated"),
            ("order-service", Source::Order, "order.created")
        );
        assert_eq!(
            owner("StockRejected"),
            (
                "inventory-service",
                Source::Inventory,
                "inventory.stock_rejected"
            )
        );
        assert_eq!(
            owner("PaymentFailed"),
            ("payment-service", Source::Payment, "payment.failed")
        );
        // Every type's name is what the envelope carries, and every subject lies in its
        // publisher's stream.
        for entry in &contract {
            assert!(EVENT_TYPES.contains(&entry.event_type));
            assert!(entry
                .subject_suffix
                .starts_with(&format!("{}.", entry.stream.token())));
            assert!(publishes_of(entry.publisher).contains(&entry.stream));
        }
    }

    #[test]
    fn each_user_forges_every_foreign_type_on_every_subject_others_read() {
        let plan = forge_plan(&["order-service"]);
        // order.created is read by inventory; five types belong to the other two services.
        let honest: Vec<&Forgery> = plan.iter().filter(|f| !f.mismatched_aggregate).collect();
        assert_eq!(honest.len(), 5);
        assert!(honest.iter().all(|f| f.subject_suffix == "order.created"
            && f.receivers == ["inventory-service-orders"]
            && f.event_type != "OrderCreated"));
        assert!(honest.iter().any(|f| f.event_type == "PaymentFailed"));
        let odd: Vec<&Forgery> = plan.iter().filter(|f| f.mismatched_aggregate).collect();
        assert_eq!(odd.len(), 1);
        assert_eq!(
            (odd[0].event_type, odd[0].subject_suffix.as_str()),
            ("OrderCreated", "order.created")
        );

        let plan = forge_plan(&["inventory-service"]);
        let subjects: BTreeSet<&str> = plan.iter().map(|f| f.subject_suffix.as_str()).collect();
        assert_eq!(
            subjects,
            BTreeSet::from([
                "inventory.stock_rejected",
                "inventory.stock_released",
                "inventory.stock_reserved"
            ])
        );
        // The example: PaymentCompleted on the inventory user's own stock_rejected.
        assert!(plan
            .iter()
            .any(|f| f.subject_suffix == "inventory.stock_rejected"
                && f.event_type == "PaymentCompleted"
                && f.receivers == ["order-service-inventory"]));
        // stock_reserved is read by payment and by the order service: both must refuse it.
        let reserved = plan
            .iter()
            .find(|f| f.subject_suffix == "inventory.stock_reserved")
            .expect("forged");
        let mut receivers = reserved.receivers.clone();
        receivers.sort();
        assert_eq!(
            receivers,
            ["order-service-inventory", "payment-service-reservations"]
        );
        // 3 subjects × 3 foreign types, and its own StockRejected with a mismatched aggregate.
        assert_eq!(plan.len(), 10);
    }

    #[test]
    fn all_publishers_forge_and_one_envelope_disagrees_with_its_aggregate() {
        let plan = forge_plan(&["order-service", "inventory-service", "payment-service"]);
        // order: 1 subject × 5, inventory: 3 × 3, payment: 2 × 4, and one mismatched each.
        assert_eq!(plan.len(), 5 + 9 + 8 + 3);
        let odd: Vec<(&str, &str, &str)> = plan
            .iter()
            .filter(|f| f.mismatched_aggregate)
            .map(|f| (f.publisher, f.event_type, f.subject_suffix.as_str()))
            .collect();
        assert_eq!(
            odd,
            [
                ("order-service", "OrderCreated", "order.created"),
                (
                    "inventory-service",
                    "StockRejected",
                    "inventory.stock_rejected"
                ),
                ("payment-service", "PaymentFailed", "payment.failed"),
            ]
        );
        // A failed payment is read by the order service and by inventory: both must refuse it.
        let failed = plan
            .iter()
            .find(|f| f.mismatched_aggregate && f.publisher == "payment-service");
        assert_eq!(failed.map(|f| f.receivers.len()), Some(2));
        let contract = event_contract();
        for forgery in plan.iter().filter(|f| !f.mismatched_aggregate) {
            let owner = contract
                .iter()
                .find(|e| e.event_type == forgery.event_type)
                .expect("declared");
            assert_ne!(owner.publisher, forgery.publisher);
            // Never a type on its own subject: the subject alone gives every forgery away.
            assert_ne!(owner.subject_suffix, forgery.subject_suffix);
        }
    }

    #[test]
    fn forged_envelopes_decode_as_the_type_they_claim() {
        let order = OrderFacts {
            id: Uuid::now_v7(),
            user_id: 7,
            product_id: 3,
            quantity: 2,
            amount_cents: 2000,
            status: "COMPLETED".into(),
        };
        for event_type in EVENT_TYPES {
            let event = forged_event(event_type, &order);
            assert_eq!(event.type_name(), event_type);
            assert_eq!(event.order_id(), order.id);
            let envelope = event.into_envelope(TraceContext::default()).expect("built");
            assert_eq!(Event::from_envelope(&envelope).expect("decodes"), event);
        }
    }

    #[test]
    fn only_a_misrouted_dead_letter_by_every_receiver_passes() {
        let forged = |id: &str, receivers: &[&str]| Published {
            message_id: id.into(),
            subject: "p.payment.failed".into(),
            event_type: "PaymentFailed",
            order_id: Uuid::nil(),
            receivers: receivers.iter().map(|r| r.to_string()).collect(),
        };
        let letter = |consumer: &str, kind: &str| Parked {
            service: "s".into(),
            admin_url: "u".into(),
            id: 1,
            consumer: consumer.into(),
            kind: kind.into(),
        };
        let published = [
            forged(
                "a",
                &["order-service-payment", "inventory-service-payments"],
            ),
            forged("b", &["inventory-service-orders"]),
        ];
        let mut letters = BTreeMap::from([(
            "a".to_string(),
            vec![
                letter("order-service-payment", MISROUTED),
                letter("inventory-service-payments", "rejected"),
            ],
        )]);
        let verdict = Verdict::of(&published, &letters);
        assert_eq!((verdict.deliveries, verdict.misrouted), (3, 1));
        assert!(!verdict.settled());
        let problem = verdict.problem().expect("not refused");
        assert!(problem.contains("2 of 3 forged deliveries"), "{problem}");
        assert!(
            problem.contains("dead-lettered as rejected: inventory-service-payments 1"),
            "{problem}"
        );
        assert!(
            problem.contains("not dead-lettered by inventory-service-orders"),
            "{problem}"
        );

        letters.insert(
            "a".into(),
            vec![
                letter("order-service-payment", MISROUTED),
                letter("inventory-service-payments", MISROUTED),
            ],
        );
        letters.insert(
            "b".into(),
            vec![letter("inventory-service-orders", MISROUTED)],
        );
        let verdict = Verdict::of(&published, &letters);
        assert!(verdict.settled());
        assert_eq!(verdict.problem(), None);
        assert!(verdict
            .summary()
            .starts_with("3 deliveries to consumers: 3 dead-lettered as misrouted"));
    }

    #[test]
    fn a_service_user_replaces_the_administrator_in_the_url() {
        assert_eq!(
            url_as("nats://admin:pw@127.0.0.1:4222", "shop-order", "s3"),
            "nats://shop-order:s3@127.0.0.1:4222"
        );
        assert_eq!(
            url_as("nats://10.0.0.1:4222, nats://a:b@10.0.0.2:4222", "u", "p"),
            "nats://u:p@10.0.0.1:4222,nats://u:p@10.0.0.2:4222"
        );
    }
}
