//! The fault schedule of a scenario (`[[faults]]`, see `chaos` for what each kind does),
//! validated once: every fault resolved to what it hits, ordered, one at a time; and the
//! replicas and service settings the scenario's `[deploy]` section asks for.

use std::time::Duration;

use crate::deploy::{self, Replication, MAX_REPLICAS, SERVICES};
use crate::plan::boundaries;
use crate::plan::duration;
use crate::plan::fault_kind::{FaultKind, Hits};
use crate::plan::network::{self, HostRef};
use crate::plan::scenario::{Scenario, Topology};
use crate::plan::targets::{consumers_named, service_named, source_named};
pub use crate::plan::targets::{resolve_target, subscriptions_of};

/// One validated fault of the schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub at: Duration,
    pub kind: FaultKind,
    /// As written in the scenario.
    pub target: String,
    pub hits: Hits,
    pub duration: Duration,
}

impl Fault {
    /// When the fault is planned to be lifted.
    pub fn end(&self) -> Duration {
        self.at + self.duration
    }
}

/// Resolves a fault's target into what it hits.
fn hits(kind: FaultKind, target: &str, replicas: u32) -> Result<Hits, String> {
    let exactly = |expected: &str, hits: Hits| {
        if target == expected {
            Ok(hits)
        } else {
            Err(format!("target must be {expected:?} (got {target:?})"))
        }
    };
    let service = |expected: &str| -> Result<Hits, String> {
        let name = service_named(expected).ok_or(format!("no service {expected:?}"))?;
        if service_named(target) != Some(name) {
            return Err(format!("target must be {expected:?} (got {target:?})"));
        }
        Ok(Hits::Service {
            name,
            instances: resolve_target(target, replicas)?,
        })
    };
    match kind {
        FaultKind::Kill | FaultKind::Pause => resolve_target(target, replicas).map(Hits::Instances),
        FaultKind::KillNats | FaultKind::BrokerUnreachable => exactly("nats", Hits::Nats),
        FaultKind::StopPostgres => exactly("postgres", Hits::Postgres),
        FaultKind::DeleteConsumer | FaultKind::AlterConsumer => {
            consumers_named(target).map(Hits::Consumers)
        }
        FaultKind::DeleteStream => {
            let source = source_named(target).ok_or(format!(
                "unknown stream {target:?}: order, inventory or payment"
            ))?;
            // The order service keeps taking orders: only the other consumers fall behind.
            let paused = SERVICES
                .iter()
                .map(|(service, _)| *service)
                .filter(|service| *service != "order-service")
                .filter(|service| {
                    subscriptions_of(service)
                        .iter()
                        .any(|s| s.stream() == source)
                })
                .flat_map(|service| {
                    (1..=replicas).map(move |r| deploy::instance_name(service, r, replicas))
                })
                .collect();
            Ok(Hits::Stream { source, paused })
        }
        FaultKind::Poison => {
            let name = service_named(target).ok_or(format!(
                "unknown service {target:?}: order, inventory or payment"
            ))?;
            service(name)
        }
        FaultKind::Panic | FaultKind::LockHold => service("inventory"),
        FaultKind::PoolStarve => service("order"),
        FaultKind::ReadOnlyDb => {
            let name = service_named(target).ok_or(format!(
                "unknown service {target:?}: order, inventory or payment (its database turns read-only)"
            ))?;
            Ok(Hits::Service {
                name,
                instances: resolve_target(name, replicas)?,
            })
        }
        FaultKind::CommitUnknown => service("order"),
        FaultKind::Forge => boundaries::publishers(target).map(Hits::Publishers),
        // Resolved by `boundaries::slow_clients` (it needs the fault's options).
        FaultKind::SlowClients => Err("slow-clients needs its options".to_string()),
        // Resolved by `network_hits` (they need the scenario's topology).
        FaultKind::Partition
        | FaultKind::Delay
        | FaultKind::Loss
        | FaultKind::KillNatsNode
        | FaultKind::PauseNatsNode => Err(format!("{} needs the hosts topology", kind.name())),
    }
}

/// What a network or cluster fault hits.
fn network_hits(
    kind: FaultKind,
    spec: &crate::plan::scenario::FaultSpec,
    scenario: &Scenario,
) -> Result<Hits, String> {
    let deploy = &scenario.deploy;
    network::require_hosts(deploy.topology, kind.name())?;
    let hosts = network::resolve_hosts(&spec.target, deploy.replicas, deploy.nats_nodes)?;
    match kind {
        FaultKind::KillNatsNode | FaultKind::PauseNatsNode => match hosts.as_slice() {
            [node @ HostRef::StreamLeader(_)] => Ok(Hits::NatsNode(node.clone())),
            [node @ HostRef::Named(name)] if name.starts_with("nats-") => {
                Ok(Hits::NatsNode(node.clone()))
            }
            _ => Err(format!(
                "target must be one NATS node (nats-2) or a stream's leader (leader:order), got {:?}",
                spec.target
            )),
        },
        _ => Ok(Hits::Network {
            hosts,
            effect: network::effect(kind.name(), spec, deploy.replicas, deploy.nats_nodes)?,
        }),
    }
}

/// The scenario's fault schedule, validated and ordered by start time.
pub fn schedule(scenario: &Scenario) -> Result<Vec<Fault>, Vec<String>> {
    let replicas = scenario.deploy.replicas;
    let mut problems = Vec::new();
    let mut faults: Vec<(usize, Fault)> = Vec::new();
    for (i, spec) in scenario.faults.iter().enumerate() {
        let Some(kind) = FaultKind::parse(&spec.kind) else {
            let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            problems.push(format!(
                "faults[{i}]: unknown kind {:?} (one of {})",
                spec.kind,
                known.join(", ")
            ));
            continue;
        };
        let duration = match spec.duration {
            Some(d) if !d.is_zero() => d,
            _ => {
                problems.push(format!(
                    "faults[{i}] ({}): needs a duration > 0 (how long until it is lifted)",
                    kind.name()
                ));
                continue;
            }
        };
        let target = spec.target.trim();
        if let Err(problem) = boundaries::check_options(kind, spec) {
            problems.push(format!("faults[{i}] ({}): {problem}", kind.name()));
            continue;
        }
        let resolved = if kind.needs_hosts() {
            network_hits(kind, spec, scenario)
        } else if kind == FaultKind::SlowClients {
            boundaries::slow_clients(target, spec, replicas)
        } else {
            hits(kind, target, replicas)
        };
        let hits = match resolved {
            Ok(hits) => hits,
            Err(problem) => {
                problems.push(format!("faults[{i}] ({}): {problem}", kind.name()));
                continue;
            }
        };
        faults.push((
            i,
            Fault {
                at: spec.at,
                kind,
                target: target.to_string(),
                hits,
                duration,
            },
        ));
    }
    faults.sort_by_key(|(_, f)| f.at);
    for pair in faults.windows(2) {
        let ((i, earlier), (j, later)) = (&pair[0], &pair[1]);
        if later.at < earlier.end() {
            problems.push(format!(
                "faults[{j}] ({} at {}) starts before faults[{i}] ({} at {} for {}) is lifted; faults run one at a time",
                later.kind.name(),
                duration::format(later.at),
                earlier.kind.name(),
                duration::format(earlier.at),
                duration::format(earlier.duration)
            ));
        }
    }
    if problems.is_empty() {
        Ok(faults.into_iter().map(|(_, f)| f).collect())
    } else {
        Err(problems)
    }
}

/// What is wrong with the scenario's `[deploy]` section and fault schedule, all of it at once.
pub fn problems(scenario: &Scenario) -> Vec<String> {
    let mut problems = Vec::new();
    let replicas = scenario.deploy.replicas;
    if !(1..=MAX_REPLICAS).contains(&replicas) {
        problems.push(format!(
            "deploy.replicas must be within 1..={MAX_REPLICAS} (got {replicas})"
        ));
        return problems;
    }
    if scenario.deploy.topology == Topology::Hosts && ![1, 3].contains(&scenario.deploy.nats_nodes)
    {
        problems.push(format!(
            "deploy.nats_nodes must be 1 or 3 (got {})",
            scenario.deploy.nats_nodes
        ));
    }
    if let Some(wait) = scenario.deploy.consumer_ack_wait {
        if wait < Duration::from_secs(1) {
            problems.push(format!(
                "deploy.consumer_ack_wait must be at least 1s (got {})",
                duration::format(wait)
            ));
        }
    }
    if let Err(more) = schedule(scenario) {
        problems.extend(more);
    }
    problems
}

/// The replicas and extra environment the scenario asks for.
pub fn replication(scenario: &Scenario) -> Replication {
    let mut extra_env = Vec::new();
    let settings = [
        ("APP_CONSUMER__ACK_WAIT", scenario.deploy.consumer_ack_wait),
        ("APP_WORKERS__STALL_AFTER", scenario.deploy.stall_after),
        ("APP_REDRIVE__AFTER", scenario.deploy.redrive_after),
    ];
    for (name, value) in settings {
        if let Some(value) = value {
            extra_env.push((name.to_string(), duration::format(value)));
        }
    }
    Replication {
        replicas: scenario.deploy.replicas,
        extra_env,
    }
}

#[cfg(test)]
mod tests;
