//! What a service may do on NATS: publish its own events — exactly the subjects the event
//! contract gives the types it publishes — manage its own stream, and read and acknowledge
//! through its own durable consumers; nothing else. Derived from the service's declaration in the
//! contract (`contract::ServiceSpec`), which it also runs with, so the permissions cannot drift
//! from the code.
//! Deployment tools render it into the server's configuration (one user per service).

use crate::broker::{inbox_prefix, Topology};
use crate::contract::ServiceSpec;

/// Subjects a NATS user may publish to and subscribe to (everything else is denied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerPermissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

impl BrokerPermissions {
    /// The permissions of user `user` of `service`: its own events and stream, its own durable
    /// consumers.
    pub fn for_service(topology: &Topology, service: &ServiceSpec, user: &str) -> Self {
        let stream = topology.stream_name(service.source);
        let mut publish: Vec<String> = service
            .publishes()
            .map(|spec| topology.subject(spec.subject_suffix))
            .collect();
        for action in ["INFO", "CREATE", "UPDATE"] {
            publish.push(format!("$JS.API.STREAM.{action}.{stream}"));
        }
        for subscription in service.subscriptions {
            let stream = topology.stream_name(subscription.stream());
            let durable = subscription.durable_name();
            publish.extend([
                format!("$JS.API.CONSUMER.INFO.{stream}.{durable}"),
                // Created (or updated) with several filter subjects: no filter token follows.
                format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}"),
                format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}.>"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"),
                // Its own durable only: one whose filter was changed is created again from a
                // position known to be safe (`consumer/durable.rs`). Deleting it gives the
                // service no power over its deliveries that its CREATE right does not.
                format!("$JS.API.CONSUMER.DELETE.{stream}.{durable}"),
                format!("$JS.ACK.{stream}.{durable}.>"),
            ]);
        }
        BrokerPermissions {
            publish,
            // Replies (publish acks, fetched messages, API answers) come to the user's own inbox.
            subscribe: vec![format!("{}.>", inbox_prefix(user))],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{self, PAYMENT_SERVICE, SERVICES};

    fn payment() -> BrokerPermissions {
        BrokerPermissions::for_service(&Topology::new("shop"), &PAYMENT_SERVICE, "shop-payment")
    }

    #[test]
    fn a_service_may_publish_only_its_own_events_and_use_only_its_own_consumers() {
        let p = payment();
        assert!(p
            .publish
            .contains(&"$JS.API.STREAM.CREATE.SHOP_PAYMENT".to_string()));
        assert!(p.publish.contains(
            &"$JS.API.CONSUMER.MSG.NEXT.SHOP_INVENTORY.payment-service-reservations".to_string()
        ));
        assert!(!p.publish.iter().any(|s| s.starts_with("shop.inventory")
            || s.contains("STREAM.DELETE")
            || s.contains("STREAM.PURGE")
            || s.contains("SHOP_ORDER")
            || s.ends_with("STREAM.CREATE.SHOP_INVENTORY")));
        assert_eq!(p.subscribe, vec!["_INBOX_shop-payment.>".to_string()]);
    }

    /// The event subjects a service may publish on are exactly those of its types in the
    /// contract: no wildcard under its token that would let it invent a subject.
    #[test]
    fn the_event_subjects_granted_are_the_contracts() {
        let topology = Topology::new("shop");
        for service in SERVICES {
            let source = service.source;
            let p = BrokerPermissions::for_service(&topology, &service, "u");
            let mut granted: Vec<&str> = p
                .publish
                .iter()
                .map(String::as_str)
                .filter(|s| !s.starts_with('$'))
                .collect();
            granted.sort();
            let mut declared: Vec<String> = contract::published_by(source)
                .map(|spec| topology.subject(spec.subject_suffix))
                .collect();
            declared.sort();
            assert_eq!(granted, declared, "{source:?}");
        }
        assert!(payment()
            .publish
            .iter()
            .all(|s| !s.contains('>') || s.starts_with("$JS.")));
    }
}
