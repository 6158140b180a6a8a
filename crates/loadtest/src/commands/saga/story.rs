//! One order's story: what the three services tell about it (`GET /admin/sagas/{order_id}` on
//! each admin listener), held together, and its timeline in time order.

use chrono::{DateTime, Utc};
use platform::contract::SERVICES;
use platform::saga::{
    ChargeRecord, OrderDeadLetter, OrderRecord, Records, RejectionRecord, ReservationRecord,
    SagaPart, WaitingEvent,
};
use serde::Serialize;
use uuid::Uuid;

use crate::deploy::admin::AdminClient;
use crate::deploy::{self};

/// A service of the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Order,
    Inventory,
    Payment,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Order, Service::Inventory, Service::Payment];

    /// `order`, `inventory`, `payment`: what `loadtest dead-letters --service` takes.
    pub fn name(self) -> &'static str {
        match self {
            Service::Order => "order",
            Service::Inventory => "inventory",
            Service::Payment => "payment",
        }
    }
}

/// The admin listeners' URLs of the three services.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub order: String,
    pub inventory: String,
    pub payment: String,
}

impl Endpoints {
    /// The deployment `loadtest up` or `run` started (the first replica of each service: they
    /// share their service's database).
    pub fn deployment() -> Endpoints {
        Endpoints {
            order: deploy::admin_url(deploy::ORDER_PORT),
            inventory: deploy::admin_url(deploy::INVENTORY_PORT),
            payment: deploy::admin_url(deploy::PAYMENT_PORT),
        }
    }

    pub fn of(&self, service: Service) -> &str {
        match service {
            Service::Order => &self.order,
            Service::Inventory => &self.inventory,
            Service::Payment => &self.payment,
        }
    }
}

/// What a service told, or why it did not.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Told {
    Part(Box<SagaPart>),
    Unanswered(String),
}

/// The order's story as the three services tell it.
#[derive(Debug, Clone, Serialize)]
pub struct Story {
    pub order_id: Uuid,
    pub order: Told,
    pub inventory: Told,
    pub payment: Told,
}

impl Story {
    /// Asks the three services at once; one that does not answer is noted, not fatal.
    pub async fn fetch(admin: &AdminClient, endpoints: &Endpoints, order_id: Uuid) -> Story {
        let ask = |service: Service| async move {
            match admin.saga_part(endpoints.of(service), order_id).await {
                Ok(part) => Told::Part(Box::new(part)),
                Err(error) => Told::Unanswered(format!("{error:#}")),
            }
        };
        let (order, inventory, payment) = tokio::join!(
            ask(Service::Order),
            ask(Service::Inventory),
            ask(Service::Payment)
        );
        Story {
            order_id,
            order,
            inventory,
            payment,
        }
    }

    pub fn told(&self, service: Service) -> &Told {
        match service {
            Service::Order => &self.order,
            Service::Inventory => &self.inventory,
            Service::Payment => &self.payment,
        }
    }

    pub fn part(&self, service: Service) -> Option<&SagaPart> {
        match self.told(service) {
            Told::Part(part) => Some(part),
            Told::Unanswered(_) => None,
        }
    }

    pub fn order_record(&self) -> Option<&OrderRecord> {
        match self.part(Service::Order).map(|p| &p.records) {
            Some(Records::Order { order }) => order.as_ref(),
            _ => None,
        }
    }

    pub fn reservation(&self) -> Option<&ReservationRecord> {
        match self.part(Service::Inventory).map(|p| &p.records) {
            Some(Records::Inventory { reservation, .. }) => reservation.as_ref(),
            _ => None,
        }
    }

    pub fn rejection(&self) -> Option<&RejectionRecord> {
        match self.part(Service::Inventory).map(|p| &p.records) {
            Some(Records::Inventory { rejection, .. }) => rejection.as_ref(),
            _ => None,
        }
    }

    pub fn charge(&self) -> Option<&ChargeRecord> {
        match self.part(Service::Payment).map(|p| &p.records) {
            Some(Records::Payment { charge }) => charge.as_ref(),
            _ => None,
        }
    }

    /// The oldest event of `event_type` still in `service`'s outbox.
    pub fn waiting(&self, service: Service, event_type: &str) -> Option<&WaitingEvent> {
        self.part(service)?
            .outbox
            .iter()
            .filter(|e| e.event_type == event_type)
            .min_by_key(|e| e.seq)
    }

    /// Every dead letter that concerns the order, with the service that holds it.
    pub fn dead_letters(&self) -> impl Iterator<Item = (Service, &OrderDeadLetter)> {
        Service::ALL.into_iter().flat_map(move |service| {
            self.part(service)
                .into_iter()
                .flat_map(move |part| part.dead_letters.iter().map(move |l| (service, l)))
        })
    }

    /// Everything the services recorded about the order, oldest first.
    pub fn timeline(&self) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut add = |at: DateTime<Utc>, service: Service, what: String| {
            entries.push(Entry { at, service, what });
        };
        if let Some(order) = self.order_record() {
            add(
                order.created_at,
                Service::Order,
                format!(
                    "order placed: {} × product {} for buyer {} (PENDING)",
                    order.quantity, order.product_id, order.user_id
                ),
            );
            let changes_elsewhere = order.updated_at != order.created_at
                && Some(order.updated_at) != order.finalized_at;
            if changes_elsewhere {
                add(
                    order.updated_at,
                    Service::Order,
                    format!("status changed (now {})", order.status),
                );
            }
            if let Some(at) = order.finalized_at {
                let status = match &order.failure_reason {
                    Some(reason) => format!("{} ({reason})", order.status),
                    None => order.status.clone(),
                };
                add(at, Service::Order, format!("order final: {status}"));
            }
            if let Some(at) = order.stock_released_at {
                add(
                    at,
                    Service::Order,
                    "inventory's release of the stock noted: saga closed".to_owned(),
                );
            }
            if let Some(at) = order.redriven_at {
                add(
                    at,
                    Service::Order,
                    format!(
                        "re-driven: its next step asked again (last of {} re-drives)",
                        order.redrive_count
                    ),
                );
            }
        }
        if let Some(r) = self.reservation() {
            add(
                r.reserved_at,
                Service::Inventory,
                format!(
                    "stock reserved: {} × product {}, {} cents",
                    r.quantity, r.product_id, r.amount_cents
                ),
            );
            if let Some(at) = r.released_at {
                add(
                    at,
                    Service::Inventory,
                    "stock released (compensation)".to_owned(),
                );
            }
        }
        if let Some(r) = self.rejection() {
            add(
                r.rejected_at,
                Service::Inventory,
                format!("stock rejected: {}", r.reason),
            );
        }
        if let Some(c) = self.charge() {
            let outcome = match &c.failure_reason {
                Some(reason) => format!("{} ({reason})", c.status),
                None => c.status.clone(),
            };
            add(
                c.created_at,
                Service::Payment,
                format!("charge of {} cents: {outcome}", c.amount_cents),
            );
        }
        for service in Service::ALL {
            let Some(part) = self.part(service) else {
                continue;
            };
            for event in &part.outbox {
                add(
                    event.created_at,
                    service,
                    format!(
                        "{} written to the outbox, not published yet (event {})",
                        event.event_type, event.event_id
                    ),
                );
            }
            for received in &part.inbox {
                add(
                    received.processed_at,
                    service,
                    format!(
                        "{} took {} (event {})",
                        received.consumer,
                        consumed_types(&received.consumer),
                        received.event_id
                    ),
                );
            }
            for parked in &part.dead_letters {
                let l = &parked.letter;
                add(
                    l.failed_at,
                    service,
                    format!(
                        "dead letter #{} ({}, {}): {}",
                        l.id, l.kind, l.consumer, l.reason
                    ),
                );
                for action in &parked.actions {
                    let result = if action.succeeded { "done" } else { "failed" };
                    let detail = action
                        .detail
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default();
                    add(
                        action.at,
                        service,
                        format!(
                            "dead letter #{}: {} by {} {result}{detail}",
                            l.id, action.action, action.actor
                        ),
                    );
                }
            }
        }
        entries.sort_by_key(|e| e.at);
        entries
    }
}

/// The event types a durable consumer takes, as the contract declares them.
fn consumed_types(consumer: &str) -> String {
    SERVICES
        .iter()
        .flat_map(|s| s.subscriptions.iter())
        .find(|s| s.durable_name() == consumer)
        .map(|s| {
            s.events()
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_else(|| "an event".to_owned())
}

/// One thing that happened to the order, and where.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub at: DateTime<Utc>,
    pub service: Service,
    pub what: String,
}

/// A time as the CLI prints it: UTC to the millisecond.
pub fn clock(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// A short age: `45s`, `2m 5s`, `3h 4m`, `2d 3h`.
pub fn age(age: chrono::Duration) -> String {
    let secs = age.num_seconds().max(0);
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3_600,
        secs % 3_600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_short() {
        let secs = chrono::Duration::seconds;
        assert_eq!(age(secs(-3)), "0s");
        assert_eq!(age(secs(45)), "45s");
        assert_eq!(age(secs(125)), "2m 5s");
        assert_eq!(age(secs(3 * 3600 + 4 * 60 + 5)), "3h 4m");
        assert_eq!(age(secs(2 * 86_400 + 3 * 3600)), "2d 3h");
    }

    #[test]
    fn a_consumer_is_named_with_what_it_takes() {
        assert_eq!(
            consumed_types("payment-service-reservations"),
            "StockReserved"
        );
        assert_eq!(consumed_types("someone-else"), "an event");
    }
}
