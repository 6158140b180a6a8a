//! The targets and options of the faults that cross the system's trust boundaries (issue 21):
//! which services' own NATS users forge events (`forge`), and how many slow clients hold
//! connections to which order instances (`slow-clients`). `read-only-db`, `commit-unknown` and
//! `alter-consumer` name a service or a durable consumer and resolve with the others in
//! `faults`.

use crate::deploy::SERVICES;
use crate::plan::fault_kind::{FaultKind, Hits};
use crate::plan::scenario::FaultSpec;
use crate::plan::targets::{resolve_target, service_named};

/// The `forge` target that makes every service's user forge.
pub const ALL_PUBLISHERS: &str = "all";
/// Connections of a `slow-clients` fault unless `connections` says otherwise.
pub const DEFAULT_SLOW_CONNECTIONS: u32 = 2_000;
/// The most a scenario may ask for: the CLI and the services run with 20,000 descriptors, and
/// the load and the pools need theirs; the fault shows a service bounding slow clients, not a
/// host running out of descriptors.
pub const MAX_SLOW_CONNECTIONS: u32 = 10_000;

/// The services (binary names) whose NATS users forge: `all`, or one service.
pub fn publishers(target: &str) -> Result<Vec<&'static str>, String> {
    if target == ALL_PUBLISHERS {
        return Ok(SERVICES.iter().map(|(service, _)| *service).collect());
    }
    service_named(target).map(|s| vec![s]).ok_or(format!(
        "unknown publisher {target:?}: {ALL_PUBLISHERS:?} or a service (order, inventory, payment)"
    ))
}

/// A `slow-clients` fault's order instances and connections.
pub fn slow_clients(target: &str, spec: &FaultSpec, replicas: u32) -> Result<Hits, String> {
    let instances = resolve_target(target, replicas)?;
    if !instances.iter().all(|i| i.starts_with("order-service")) {
        return Err(format!(
            "target must be \"order\" or one order-service replica (got {target:?})"
        ));
    }
    let connections = spec.connections.unwrap_or(DEFAULT_SLOW_CONNECTIONS);
    if !(1..=MAX_SLOW_CONNECTIONS).contains(&connections) {
        return Err(format!(
            "connections must be within 1..={MAX_SLOW_CONNECTIONS} (got {connections})"
        ));
    }
    Ok(Hits::SlowClients {
        instances,
        connections,
    })
}

/// Options only some kinds take: anything else given is a mistake, said at once.
pub fn check_options(kind: FaultKind, spec: &FaultSpec) -> Result<(), String> {
    if spec.connections.is_some() && kind != FaultKind::SlowClients {
        return Err("connections is an option of slow-clients only".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fault_kind::Hits;
    use crate::plan::RunPlan;
    use platform::events::Source;

    const BASE: &str = r#"
        name = "boundaries-unit"
        [load]
        stages = [{ duration = "60s", target = 10 }]
        [data]
        users = 2
        initial_balance_cents = 1000
        products = [{ id = 1, stock = 10, price_cents = 100 }]
        [deploy]
        replicas = 2
    "#;

    fn fault(at: &str, kind: &str, target: &str, more: &str) -> String {
        format!(
            "[[faults]]\nat = \"{at}\"\nkind = \"{kind}\"\ntarget = \"{target}\"\nduration = \"2s\"\n{more}\n"
        )
    }

    fn faults(text: &str) -> Result<Vec<crate::plan::faults::Fault>, String> {
        RunPlan::from_scenario_toml(&format!("{BASE}\n{text}"))
            .map(|plan| plan.faults)
            .map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn the_boundary_faults_resolve_their_targets() {
        let text = [
            fault("1s", "forge", "all", ""),
            fault("4s", "forge", "inventory-service", ""),
            fault("7s", "read-only-db", "order", ""),
            fault("10s", "commit-unknown", "order", ""),
            fault("13s", "slow-clients", "order", ""),
            fault("16s", "slow-clients", "order-2", "connections = 300"),
            fault("19s", "alter-consumer", "inventory-service-orders", ""),
            fault("22s", "read-only-db", "inventory", ""),
        ]
        .concat();
        let faults = faults(&text).expect("valid");
        assert_eq!(
            faults[0].hits,
            Hits::Publishers(vec![
                "order-service",
                "inventory-service",
                "payment-service"
            ])
        );
        assert_eq!(faults[1].hits, Hits::Publishers(vec!["inventory-service"]));
        assert_eq!(
            faults[2].hits,
            Hits::Service {
                name: "order-service",
                instances: vec!["order-service-1".into(), "order-service-2".into()]
            }
        );
        assert!(matches!(
            faults[3].hits,
            Hits::Service {
                name: "order-service",
                ..
            }
        ));
        assert_eq!(
            faults[4].hits,
            Hits::SlowClients {
                instances: vec!["order-service-1".into(), "order-service-2".into()],
                connections: DEFAULT_SLOW_CONNECTIONS
            }
        );
        assert_eq!(
            faults[5].hits,
            Hits::SlowClients {
                instances: vec!["order-service-2".into()],
                connections: 300
            }
        );
        assert_eq!(
            faults[6].hits,
            Hits::Consumers(vec![(Source::Order, "inventory-service-orders".into())])
        );
        assert_eq!(
            faults[7].hits.instances(),
            ["inventory-service-1", "inventory-service-2"]
        );
        // Acting as PostgreSQL's superuser needs our own server, as stopping it does.
        assert_eq!(faults[2].kind.needs_own(), Some("postgres"));
        assert_eq!(faults[3].kind.needs_own(), Some("postgres"));
        assert_eq!(faults[0].kind.needs_own(), None);
    }

    #[test]
    fn the_boundary_faults_refuse_targets_and_options_they_cannot_take() {
        let text = [
            fault("1s", "forge", "shipping", ""),
            fault("4s", "read-only-db", "postgres", ""),
            fault("7s", "commit-unknown", "payment", ""),
            fault("10s", "slow-clients", "inventory", ""),
            fault("13s", "slow-clients", "order", "connections = 0"),
            fault("16s", "slow-clients", "order", "connections = 10001"),
            fault("19s", "alter-consumer", "payment-service-orders", ""),
            fault("22s", "kill", "order", "connections = 5"),
        ]
        .concat();
        let message = faults(&text).expect_err("invalid");
        for expected in [
            "faults[0] (forge): unknown publisher \"shipping\"",
            "faults[1] (read-only-db): unknown service \"postgres\"",
            "faults[2] (commit-unknown): target must be \"order\" (got \"payment\")",
            "faults[3] (slow-clients): target must be \"order\" or one order-service replica",
            "faults[4] (slow-clients): connections must be within 1..=10000 (got 0)",
            "faults[5] (slow-clients): connections must be within 1..=10000 (got 10001)",
            "faults[6] (alter-consumer): unknown durable consumer \"payment-service-orders\"",
            "faults[7] (kill): connections is an option of slow-clients only",
        ] {
            assert!(message.contains(expected), "{message} lacks {expected}");
        }
    }
}
