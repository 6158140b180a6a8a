//! What the `forge` fault forges, decided from the event contract before anything
//! is published: which service owns each event type (publisher, stream, subject), which
//! subjects each service's user may publish to that another service reads, and the events it
//! claims there about real orders. Pure, so it is tested here; `forge` publishes and checks.

use std::collections::BTreeMap;

use platform::contract;
use platform::events::{
    Event, FailureReason, OrderCreated, PaymentCompleted, PaymentFailed, Source, StockRejected,
    StockReleased, StockReserved,
};
use uuid::Uuid;

use crate::deploy;
use crate::plan::faults::subscriptions_of;

/// Every event type, by name: [`forged_event`] builds each (the tests hold it against the
/// contract).
#[cfg(test)]
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

/// The stream a service (binary name) publishes to, as the event contract declares it.
fn publishes_of(service: &str) -> Option<Source> {
    contract::service_named(service).map(|spec| spec.source)
}

/// Who owns every event type: read from the platform's event contract (the one declaration the
/// services, their consumers' checks and their NATS permissions all read).
pub fn event_contract() -> Vec<ContractEntry> {
    contract::CONTRACT
        .iter()
        .map(|spec| ContractEntry {
            event_type: spec.name,
            publisher: contract::service_of(spec.publisher).name,
            stream: spec.publisher,
            subject_suffix: spec.subject_suffix,
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
            if publishes_of(publisher) != Some(subscription.stream()) {
                continue;
            }
            for suffix in subscription.subject_suffixes() {
                subjects
                    .entry(suffix.to_string())
                    .or_default()
                    .push(subscription.durable_name().to_owned());
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

/// An event of `event_type` about `order`, as its real publisher would word it: the most
/// harmful thing the type can say (a failed payment releases stock, a rejection fails the
/// order, a completed payment completes it).
pub fn forged_event(event_type: &str, order: &OrderFacts) -> Event {
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

#[cfg(test)]
mod tests {
    use super::*;
    use platform::envelope::TraceContext;
    use std::collections::BTreeSet;

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
            assert_eq!(publishes_of(entry.publisher), Some(entry.stream));
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
        // stock_reserved is read by payment only (the order service hears only outcomes).
        let reserved = plan
            .iter()
            .find(|f| f.subject_suffix == "inventory.stock_reserved")
            .expect("forged");
        assert_eq!(reserved.receivers, ["payment-service-reservations"]);
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
}
