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
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;
use uuid::Uuid;

use super::context::{FaultContext, Refuted};
use super::forge_plan::{forge_plan, forged_event, OrderFacts};
use crate::deploy::admin::Resolution;
use crate::deploy::{self, Credentials};

/// The dead-letter kind a consumer gives an event that did not come from its publisher.
pub const MISROUTED: &str = "misrouted";
/// How long after the lift the forged messages may still take to be dead-lettered (a consumer
/// reads them within milliseconds; the fault's duration is the real allowance).
const DEAD_LETTER_GRACE: Duration = Duration::from_secs(5);
/// How many of the newest accepted orders are looked at to find a completed and an open one.
const RECENT_ORDERS: usize = 5_000;

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
        let requests = context
            .load
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // In request order: the last ones are the newest.
        let accepted = requests.accepted();
        accepted.iter().rev().take(RECENT_ORDERS).copied().collect()
    };
    let Some(newest) = recent.first().copied() else {
        bail!("no order of the run was accepted yet: schedule forge later in the load");
    };
    let orders_url = stack::database_url(&context.admin_database_url, deploy::ORDERS_DB);
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
         WHERE status = 'PENDING' ORDER BY created_at DESC LIMIT 1",
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
