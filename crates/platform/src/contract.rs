//! The event contract, declared once: for every event type, the service that publishes it and
//! the subject it is published on (below the deployment prefix, inside its publisher's stream).
//! Everything else reads this table — the outbox's subjects, each consumer's stream and filter
//! subjects, the check every consumer makes on receipt, and each service's NATS permissions — so
//! that none of them can disagree with another.

/// The service whose outbox publishes an event; each has its own stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Order,
    Inventory,
    Payment,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Order, Source::Inventory, Source::Payment];

    pub const fn token(self) -> &'static str {
        match self {
            Source::Order => "order",
            Source::Inventory => "inventory",
            Source::Payment => "payment",
        }
    }
}

/// Every kind of event the services exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    OrderCreated,
    StockReserved,
    StockRejected,
    StockReleased,
    PaymentCompleted,
    PaymentFailed,
}

/// Where one event type comes from and travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSpec {
    pub event_type: EventType,
    /// The envelope's `type`.
    pub name: &'static str,
    /// The only service that may publish it; its stream is the publisher's.
    pub publisher: Source,
    /// The subject below the deployment prefix. It begins with the publisher's token, which is
    /// what puts it in the publisher's stream (`<prefix>.<token>.>`).
    pub subject_suffix: &'static str,
}

/// The contract, in [`EventType`] order (`EventType::spec` indexes it; a test checks the order).
pub const CONTRACT: [EventSpec; 6] = [
    EventSpec {
        event_type: EventType::OrderCreated,
        name: "OrderCreated",
        publisher: Source::Order,
        subject_suffix: "order.created",
    },
    EventSpec {
        event_type: EventType::StockReserved,
        name: "StockReserved",
        publisher: Source::Inventory,
        subject_suffix: "inventory.stock_reserved",
    },
    EventSpec {
        event_type: EventType::StockRejected,
        name: "StockRejected",
        publisher: Source::Inventory,
        subject_suffix: "inventory.stock_rejected",
    },
    EventSpec {
        event_type: EventType::StockReleased,
        name: "StockReleased",
        publisher: Source::Inventory,
        subject_suffix: "inventory.stock_released",
    },
    EventSpec {
        event_type: EventType::PaymentCompleted,
        name: "PaymentCompleted",
        publisher: Source::Payment,
        subject_suffix: "payment.completed",
    },
    EventSpec {
        event_type: EventType::PaymentFailed,
        name: "PaymentFailed",
        publisher: Source::Payment,
        subject_suffix: "payment.failed",
    },
];

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::OrderCreated,
        EventType::StockReserved,
        EventType::StockRejected,
        EventType::StockReleased,
        EventType::PaymentCompleted,
        EventType::PaymentFailed,
    ];

    pub const fn spec(self) -> &'static EventSpec {
        &CONTRACT[self as usize]
    }

    pub const fn name(self) -> &'static str {
        self.spec().name
    }

    pub const fn publisher(self) -> Source {
        self.spec().publisher
    }

    pub const fn subject_suffix(self) -> &'static str {
        self.spec().subject_suffix
    }

    /// The type an envelope's `type` names, if the contract has it.
    pub fn named(name: &str) -> Option<EventType> {
        spec_named(name).map(|spec| spec.event_type)
    }
}

/// The declaration of the type an envelope's `type` names.
pub fn spec_named(name: &str) -> Option<&'static EventSpec> {
    CONTRACT.iter().find(|spec| spec.name == name)
}

/// The event types `source` publishes (and no other service may).
pub fn published_by(source: Source) -> impl Iterator<Item = &'static EventSpec> {
    CONTRACT.iter().filter(move |spec| spec.publisher == source)
}

/// The one publisher of all of `types`; `None` if they have several, or there are none.
pub const fn common_publisher(types: &[EventType]) -> Option<Source> {
    let Some(first) = types.first() else {
        return None;
    };
    let publisher = first.publisher();
    let mut i = 1;
    while i < types.len() {
        if types[i].publisher() as u8 != publisher as u8 {
            return None;
        }
        i += 1;
    }
    Some(publisher)
}

/// A durable consumer: its name and the event types it takes. Its stream is their publisher's
/// and its filter subjects are theirs, both read from the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    durable_name: &'static str,
    stream: Source,
    events: &'static [EventType],
}

impl Subscription {
    /// Declared in a `const` (as the services do), a subscription whose types do not share one
    /// publisher — it would need two streams — does not compile.
    pub const fn new(durable_name: &'static str, events: &'static [EventType]) -> Subscription {
        let Some(stream) = common_publisher(events) else {
            panic!("a subscription takes one or more event types of one publisher");
        };
        Subscription {
            durable_name,
            stream,
            events,
        }
    }

    pub const fn durable_name(&self) -> &'static str {
        self.durable_name
    }

    /// The publisher whose stream it reads.
    pub const fn stream(&self) -> Source {
        self.stream
    }

    pub const fn events(&self) -> &'static [EventType] {
        self.events
    }

    pub fn takes(&self, event_type: EventType) -> bool {
        self.events.contains(&event_type)
    }

    /// Its filter subjects below the deployment prefix.
    pub fn subject_suffixes(&self) -> impl Iterator<Item = &'static str> {
        self.events.iter().map(|t| t.subject_suffix())
    }
}

/// A service as the contract knows it: the publisher it is (so the stream it manages and the
/// only event types it may publish) and its durable consumers. The services run with it, their
/// NATS permissions are derived from it, and the load-test harness reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Its binary's name (and, without `-service`, its NATS user's).
    pub name: &'static str,
    pub source: Source,
    pub subscriptions: &'static [Subscription],
}

impl ServiceSpec {
    /// The event types it publishes (and no other service may).
    pub fn publishes(&self) -> impl Iterator<Item = &'static EventSpec> {
        published_by(self.source)
    }
}

/// The order service: the outcomes of an order (inventory's rejection, payment's answer) and
/// inventory's confirmation that a failed payment's stock went back. A reservation is payment's
/// business: the order stays `PENDING` until its outcome arrives.
pub const ORDER_SERVICE: ServiceSpec = ServiceSpec {
    name: "order-service",
    source: Source::Order,
    subscriptions: &[
        Subscription::new(
            "order-service-inventory",
            &[EventType::StockRejected, EventType::StockReleased],
        ),
        Subscription::new(
            "order-service-payment",
            &[EventType::PaymentCompleted, EventType::PaymentFailed],
        ),
    ],
};

/// Inventory: new orders reserve stock; failed payments release it.
pub const INVENTORY_SERVICE: ServiceSpec = ServiceSpec {
    name: "inventory-service",
    source: Source::Inventory,
    subscriptions: &[
        Subscription::new("inventory-service-orders", &[EventType::OrderCreated]),
        Subscription::new("inventory-service-payments", &[EventType::PaymentFailed]),
    ],
};

/// Payment: a stock reservation is charged.
pub const PAYMENT_SERVICE: ServiceSpec = ServiceSpec {
    name: "payment-service",
    source: Source::Payment,
    subscriptions: &[Subscription::new(
        "payment-service-reservations",
        &[EventType::StockReserved],
    )],
};

/// Every service, in [`Source::ALL`] order (`service_of` indexes it; a test checks the order).
pub const SERVICES: [ServiceSpec; 3] = [ORDER_SERVICE, INVENTORY_SERVICE, PAYMENT_SERVICE];

/// The service that publishes `source`'s events.
pub const fn service_of(source: Source) -> &'static ServiceSpec {
    &SERVICES[source as usize]
}

/// The service a binary name (`order-service`) names.
pub fn service_named(name: &str) -> Option<&'static ServiceSpec> {
    SERVICES.iter().find(|service| service.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_type_is_declared_once_in_its_place() {
        assert_eq!(CONTRACT.len(), EventType::ALL.len());
        for (index, event_type) in EventType::ALL.into_iter().enumerate() {
            assert_eq!(event_type as usize, index);
            assert_eq!(event_type.spec().event_type, event_type);
            assert_eq!(EventType::named(event_type.name()), Some(event_type));
        }
        let names: HashSet<&str> = CONTRACT.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), CONTRACT.len(), "names are unique");
        assert_eq!(EventType::named("OrderTeleported"), None);
    }

    #[test]
    fn subjects_are_unique_and_inside_their_publishers_stream() {
        let subjects: HashSet<&str> = CONTRACT.iter().map(|s| s.subject_suffix).collect();
        assert_eq!(subjects.len(), CONTRACT.len(), "one subject per type");
        for spec in CONTRACT {
            let (token, rest) = spec.subject_suffix.split_once('.').expect("two tokens");
            assert_eq!(token, spec.publisher.token(), "{spec:?}");
            assert!(
                !rest.is_empty() && !rest.contains(['*', '>', ' ']),
                "{spec:?}"
            );
        }
    }

    #[test]
    fn every_service_publishes_something_and_each_type_has_one_publisher() {
        for source in Source::ALL {
            assert!(published_by(source).next().is_some(), "{source:?}");
        }
        let total: usize = Source::ALL.iter().map(|&s| published_by(s).count()).sum();
        assert_eq!(total, CONTRACT.len());
        assert_eq!(
            published_by(Source::Payment)
                .map(|s| s.event_type)
                .collect::<Vec<_>>(),
            vec![EventType::PaymentCompleted, EventType::PaymentFailed]
        );
    }

    #[test]
    fn a_subscriptions_types_share_one_publisher() {
        use EventType::*;
        assert_eq!(
            common_publisher(&[StockReserved, StockReleased]),
            Some(Source::Inventory)
        );
        assert_eq!(common_publisher(&[StockReserved, PaymentFailed]), None);
        assert_eq!(common_publisher(&[]), None);
        const PAYMENTS: Subscription = Subscription::new("p", &[PaymentCompleted, PaymentFailed]);
        assert_eq!(PAYMENTS.stream(), Source::Payment);
        assert!(PAYMENTS.takes(PaymentFailed) && !PAYMENTS.takes(OrderCreated));
        assert_eq!(
            PAYMENTS.subject_suffixes().collect::<Vec<_>>(),
            vec!["payment.completed", "payment.failed"]
        );
        let mixed =
            std::panic::catch_unwind(|| Subscription::new("m", &[OrderCreated, PaymentFailed]));
        assert!(mixed.is_err(), "two publishers are refused");
    }

    #[test]
    fn services_are_in_source_order_and_named_once() {
        for (index, source) in Source::ALL.into_iter().enumerate() {
            assert_eq!(SERVICES[index].source, source);
            assert_eq!(service_of(source).source, source);
            assert_eq!(service_named(SERVICES[index].name), Some(&SERVICES[index]));
            assert_eq!(
                SERVICES[index].name.strip_suffix("-service"),
                Some(source.token())
            );
        }
        assert_eq!(service_named("nats"), None);
    }

    #[test]
    fn every_event_type_is_consumed_by_another_service() {
        for event_type in EventType::ALL {
            let consumers: Vec<&str> = SERVICES
                .iter()
                .filter(|service| service.subscriptions.iter().any(|s| s.takes(event_type)))
                .map(|service| service.name)
                .collect();
            assert!(!consumers.is_empty(), "nobody consumes {event_type:?}");
            assert!(
                !consumers.contains(&service_of(event_type.publisher()).name),
                "{event_type:?} is consumed by its own publisher"
            );
        }
    }

    /// The seed's flow (issue 24): the order service hears only an order's outcome; the stock
    /// reservation travels to payment alone.
    #[test]
    fn a_reservation_goes_to_payment_only() {
        let takers: Vec<&str> = SERVICES
            .iter()
            .filter(|service| {
                service
                    .subscriptions
                    .iter()
                    .any(|s| s.takes(EventType::StockReserved))
            })
            .map(|service| service.name)
            .collect();
        assert_eq!(takers, vec!["payment-service"]);
        let inventory_answers: Vec<&str> =
            ORDER_SERVICE.subscriptions[0].subject_suffixes().collect();
        assert_eq!(
            inventory_answers,
            vec!["inventory.stock_rejected", "inventory.stock_released"]
        );
    }

    #[test]
    fn durable_names_are_unique_and_name_their_service() {
        let mut names = HashSet::new();
        for service in SERVICES {
            assert!(!service.subscriptions.is_empty(), "{}", service.name);
            for subscription in service.subscriptions {
                assert!(
                    names.insert(subscription.durable_name()),
                    "{} twice",
                    subscription.durable_name()
                );
                assert!(subscription
                    .durable_name()
                    .starts_with(&format!("{}-", service.name)));
                // A service takes each type at most once: two durables would apply it twice.
                assert!(!subscription.events().is_empty());
            }
            let mut taken: Vec<EventType> = service
                .subscriptions
                .iter()
                .flat_map(|s| s.events().iter().copied())
                .collect();
            let count = taken.len();
            taken.sort();
            taken.dedup();
            assert_eq!(taken.len(), count, "{} takes a type twice", service.name);
        }
    }
}
