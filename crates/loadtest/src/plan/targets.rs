//! What a fault's target names, as the event contract declares it: a service by its
//! user-facing name, its instances (every replica or one), its durable consumers and their
//! streams. Shared by the fault schedule (`faults`, `boundaries`) and the network faults.

use platform::consumer::Subscription;
use platform::contract;
use platform::events::Source;

use crate::deploy::{self, SERVICES};

/// The durable consumers of a service (binary name), as the event contract declares them.
pub fn subscriptions_of(service: &str) -> &'static [Subscription] {
    contract::service_named(service).map_or(&[], |spec| spec.subscriptions)
}

pub(super) fn source_named(name: &str) -> Option<Source> {
    Source::ALL.into_iter().find(|s| s.token() == name)
}

/// The durable consumers `target` names: one by its name, or every one of a service.
pub(super) fn consumers_named(target: &str) -> Result<Vec<(Source, String)>, String> {
    let all: Vec<(&str, Subscription)> = SERVICES
        .iter()
        .flat_map(|(service, _)| {
            subscriptions_of(service)
                .iter()
                .map(move |s| (*service, *s))
        })
        .collect();
    let chosen: Vec<(Source, String)> = all
        .iter()
        .filter(|(service, s)| s.durable_name() == target || service_named(target) == Some(service))
        .map(|(_, s)| (s.stream(), s.durable_name().to_owned()))
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = all.iter().map(|(_, s)| s.durable_name()).collect();
        return Err(format!(
            "unknown durable consumer {target:?}: one of {} or a service",
            names.join(", ")
        ));
    }
    Ok(chosen)
}

/// The service (binary name) a user-facing name stands for: `order`, `order-service`, ….
pub fn service_named(name: &str) -> Option<&'static str> {
    SERVICES
        .iter()
        .map(|(service, _)| *service)
        .find(|service| *service == name || service.strip_suffix("-service") == Some(name))
}

/// The instances `target` names: every instance of a service, or one replica
/// (`order-service-2`, `order-2`; replica numbers start at 1).
pub fn resolve_target(target: &str, replicas: u32) -> Result<Vec<String>, String> {
    if let Some(service) = service_named(target) {
        return Ok((1..=replicas)
            .map(|r| deploy::instance_name(service, r, replicas))
            .collect());
    }
    if let Some((name, number)) = target.rsplit_once('-') {
        if let (Some(service), Ok(replica)) = (service_named(name), number.parse::<u32>()) {
            if (1..=replicas).contains(&replica) {
                return Ok(vec![deploy::instance_name(service, replica, replicas)]);
            }
            return Err(format!(
                "target {target:?}: replica {replica} does not exist (deploy.replicas = {replicas})"
            ));
        }
    }
    Err(format!(
        "unknown target {target:?}: a service (order, inventory, payment) or one replica (e.g. payment-service-2)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve_to_instances() {
        assert_eq!(
            resolve_target("inventory", 2),
            Ok(vec![
                "inventory-service-1".to_string(),
                "inventory-service-2".to_string()
            ])
        );
        assert_eq!(
            resolve_target("order-2", 3),
            Ok(vec!["order-service-2".to_string()])
        );
        // One replica: the instance is named after its service.
        assert_eq!(
            resolve_target("payment-service-1", 1),
            Ok(vec!["payment-service".to_string()])
        );
        assert_eq!(
            resolve_target("payment-service", 1),
            Ok(vec!["payment-service".to_string()])
        );
        assert!(resolve_target("payment-service-0", 2).is_err());
        assert!(resolve_target("nats", 2).is_err());
    }

    #[test]
    fn consumers_are_named_one_by_one_or_by_service() {
        assert_eq!(
            consumers_named("inventory-service-orders"),
            Ok(vec![(
                Source::Order,
                "inventory-service-orders".to_string()
            )])
        );
        let of_order: Vec<String> = consumers_named("order")
            .expect("the order service's")
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        assert_eq!(
            of_order,
            ["order-service-inventory", "order-service-payment"]
        );
        assert!(consumers_named("nats").is_err());
        assert_eq!(service_named("payment"), Some("payment-service"));
        assert_eq!(source_named("inventory"), Some(Source::Inventory));
    }
}
