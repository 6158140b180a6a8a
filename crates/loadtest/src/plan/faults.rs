//! The fault schedule of a scenario (`[[faults]]`, see `chaos` for what each kind does),
//! validated once: every fault resolved to what it hits, ordered, one at a time; and the
//! replicas and service settings the scenario's `[deploy]` section asks for.

use std::time::Duration;

use platform::events::Source;
use serde::Serialize;

use crate::deploy::{self, Replication, MAX_REPLICAS, SERVICES};
use crate::plan::boundaries;
use crate::plan::duration;
use crate::plan::network::{self, HostRef, NetworkEffect};
use crate::plan::scenario::{Scenario, Topology};
use crate::plan::targets::{consumers_named, service_named, source_named};
pub use crate::plan::targets::{resolve_target, subscriptions_of};

/// The kinds of fault, as written in scenario files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FaultKind {
    Kill,
    Pause,
    KillNats,
    StopPostgres,
    BrokerUnreachable,
    DeleteConsumer,
    DeleteStream,
    Poison,
    Panic,
    PoolStarve,
    LockHold,
    Partition,
    Delay,
    Loss,
    KillNatsNode,
    PauseNatsNode,
    Forge,
    ReadOnlyDb,
    CommitUnknown,
    SlowClients,
    AlterConsumer,
}

impl FaultKind {
    pub const ALL: [FaultKind; 21] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::KillNats,
        FaultKind::StopPostgres,
        FaultKind::BrokerUnreachable,
        FaultKind::DeleteConsumer,
        FaultKind::DeleteStream,
        FaultKind::Poison,
        FaultKind::Panic,
        FaultKind::PoolStarve,
        FaultKind::LockHold,
        FaultKind::Partition,
        FaultKind::Delay,
        FaultKind::Loss,
        FaultKind::KillNatsNode,
        FaultKind::PauseNatsNode,
        FaultKind::Forge,
        FaultKind::ReadOnlyDb,
        FaultKind::CommitUnknown,
        FaultKind::SlowClients,
        FaultKind::AlterConsumer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::KillNats => "kill-nats",
            FaultKind::StopPostgres => "stop-postgres",
            FaultKind::BrokerUnreachable => "broker-unreachable",
            FaultKind::DeleteConsumer => "delete-consumer",
            FaultKind::DeleteStream => "delete-stream",
            FaultKind::Poison => "poison",
            FaultKind::Panic => "panic",
            FaultKind::PoolStarve => "pool-starve",
            FaultKind::LockHold => "lock-hold",
            FaultKind::Partition => "partition",
            FaultKind::Delay => "delay",
            FaultKind::Loss => "loss",
            FaultKind::KillNatsNode => "kill-nats-node",
            FaultKind::PauseNatsNode => "pause-nats-node",
            FaultKind::Forge => "forge",
            FaultKind::ReadOnlyDb => "read-only-db",
            FaultKind::CommitUnknown => "commit-unknown",
            FaultKind::SlowClients => "slow-clients",
            FaultKind::AlterConsumer => "alter-consumer",
        }
    }

    /// The process of ours it needs to act on as its owner (we signal, or act as superuser
    /// on, only what this CLI started), if any.
    pub fn needs_own(self) -> Option<&'static str> {
        match self {
            FaultKind::KillNats | FaultKind::BrokerUnreachable => Some("nats"),
            FaultKind::StopPostgres | FaultKind::ReadOnlyDb | FaultKind::CommitUnknown => {
                Some("postgres")
            }
            _ => None,
        }
    }

    /// Whether it needs the hosts topology (a network, a cluster).
    pub fn needs_hosts(self) -> bool {
        matches!(
            self,
            FaultKind::Partition
                | FaultKind::Delay
                | FaultKind::Loss
                | FaultKind::KillNatsNode
                | FaultKind::PauseNatsNode
        )
    }

    pub fn parse(text: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == text.trim())
    }
}

/// What a fault hits, resolved from its target.
#[derive(Debug, Clone, PartialEq)]
pub enum Hits {
    /// Service instances (`kill`, `pause`).
    Instances(Vec<String>),
    Nats,
    Postgres,
    /// Durable consumers: (stream, durable name).
    Consumers(Vec<(Source, String)>),
    /// A stream, and the instances paused while its messages pile up.
    Stream {
        source: Source,
        paused: Vec<String>,
    },
    /// A whole service (binary name) and its instances.
    Service {
        name: &'static str,
        instances: Vec<String>,
    },
    /// Hosts whose traffic a network fault changes.
    Network {
        hosts: Vec<HostRef>,
        effect: NetworkEffect,
    },
    /// One NATS node of the cluster.
    NatsNode(HostRef),
    /// The services (binary names) whose own NATS users publish forged events (`forge`).
    Publishers(Vec<&'static str>),
    /// The order-service instances slow clients connect to, and how many connections at once.
    SlowClients {
        instances: Vec<String>,
        connections: u32,
    },
}

impl Hits {
    /// The service instances the fault signals or talks to.
    pub fn instances(&self) -> &[String] {
        match self {
            Hits::Instances(instances)
            | Hits::Stream {
                paused: instances, ..
            }
            | Hits::Service { instances, .. }
            | Hits::SlowClients { instances, .. } => instances,
            Hits::Nats
            | Hits::Postgres
            | Hits::Consumers(_)
            | Hits::Network { .. }
            | Hits::NatsNode(_)
            | Hits::Publishers(_) => &[],
        }
    }
}

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
mod tests {
    use super::*;
    use crate::plan::RunPlan;

    const BASE: &str = r#"
        name = "chaos-unit"
        [load]
        stages = [{ duration = "60s", target = 10 }]
        [data]
        users = 2
        initial_balance_cents = 1000
        products = [{ id = 1, stock = 10, price_cents = 100 }]
        [deploy]
        replicas = 2
        consumer_ack_wait = "10s"
    "#;

    fn with_faults(faults: &str) -> anyhow::Result<Scenario> {
        RunPlan::from_scenario_toml(&format!("{BASE}\n{faults}")).map(|plan| plan.scenario)
    }

    fn fault(at: &str, kind: &str, target: &str, duration: &str) -> String {
        format!(
            "[[faults]]\nat = \"{at}\"\nkind = \"{kind}\"\ntarget = \"{target}\"\nduration = \"{duration}\"\n"
        )
    }

    #[test]
    fn parses_every_kind_and_orders_by_start() {
        let text = [
            fault("40s", "broker-unreachable", "nats", "5s"),
            fault("5s", "kill", "order-service-2", "3s"),
            fault("30s", "stop-postgres", "postgres", "4s"),
            fault("10s", "pause", "payment", "12s"),
            fault("25s", "kill-nats", "nats", "2s"),
        ]
        .concat();
        let scenario = with_faults(&text).expect("valid");
        let faults = schedule(&scenario).expect("valid plan");
        let order: Vec<(u64, FaultKind)> =
            faults.iter().map(|f| (f.at.as_secs(), f.kind)).collect();
        assert_eq!(
            order,
            vec![
                (5, FaultKind::Kill),
                (10, FaultKind::Pause),
                (25, FaultKind::KillNats),
                (30, FaultKind::StopPostgres),
                (40, FaultKind::BrokerUnreachable),
            ]
        );
        assert_eq!(faults[0].hits.instances(), ["order-service-2"]);
        assert_eq!(
            faults[1].hits.instances(),
            ["payment-service-1", "payment-service-2"]
        );
        assert!(faults[2].hits.instances().is_empty());
        assert_eq!(faults[1].end(), Duration::from_secs(22));
    }

    #[test]
    fn rejects_unknown_kinds_targets_missing_durations_and_overlaps() {
        let text = [
            fault("1s", "explode", "order", "1s"),
            fault("2s", "kill", "order-service-3", "1s"),
            fault("3s", "kill", "shipping", "1s"),
            fault("4s", "kill-nats", "postgres", "1s"),
            "[[faults]]\nat = \"5s\"\nkind = \"pause\"\ntarget = \"order\"\n".to_string(),
            fault("10s", "kill", "payment-1", "10s"),
            fault("15s", "stop-postgres", "postgres", "2s"),
        ]
        .concat();
        let message = with_faults(&text).expect_err("invalid").to_string();
        for expected in [
            "unknown kind \"explode\"",
            "replica 3 does not exist",
            "unknown target \"shipping\"",
            "target must be \"nats\"",
            "needs a duration",
            "starts before faults[5]",
        ] {
            assert!(message.contains(expected), "{message} lacks {expected}");
        }
    }

    #[test]
    fn rejects_bad_replicas_and_ack_wait() {
        let too_many = BASE.replace("replicas = 2", "replicas = 9");
        let message = RunPlan::from_scenario_toml(&too_many)
            .expect_err("9 replicas")
            .to_string();
        assert!(message.contains("deploy.replicas"), "{message}");
        let short = BASE.replace("\"10s\"", "\"500ms\"");
        let message = RunPlan::from_scenario_toml(&short)
            .expect_err("short ack wait")
            .to_string();
        assert!(message.contains("consumer_ack_wait"), "{message}");
    }

    #[test]
    fn replication_carries_replicas_and_ack_wait() {
        let scenario = with_faults("").expect("valid");
        let replication = replication(&scenario);
        assert_eq!(replication.replicas, 2);
        assert_eq!(
            replication.extra_env,
            vec![("APP_CONSUMER__ACK_WAIT".to_string(), "10s".to_string())]
        );
    }

    #[test]
    fn instances_get_their_own_names_and_ports_and_share_the_rest() {
        let deployment = deploy::Deployment {
            databases: deploy::DatabaseUrls::on("postgres://postgres@127.0.0.1:1/postgres"),
            nats_url: "nats://127.0.0.1:2".into(),
            nats_users: false,
            prefix: "run1".into(),
            credentials: deploy::Credentials::random(),
            decline_rate: 0.05,
            placement: None,
            stream_replicas: 1,
        };
        let specs = deploy::instance_specs(
            &deployment,
            &Replication {
                replicas: 2,
                extra_env: vec![
                    ("APP_CONSUMER__ACK_WAIT".into(), "10s".into()),
                    ("APP_REDRIVE__AFTER".into(), "2s".into()),
                ],
            },
        );
        let names: Vec<(&str, u16)> = specs.iter().map(|s| (s.name.as_str(), s.port)).collect();
        assert_eq!(
            names,
            vec![
                ("order-service-1", 18080),
                ("inventory-service-1", 18081),
                ("payment-service-1", 18082),
                ("order-service-2", 18090),
                ("inventory-service-2", 18091),
                ("payment-service-2", 18092),
            ]
        );
        let env = |spec: &deploy::services::ServiceSpec, key: &str| {
            spec.env
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(env(&specs[3], "APP_HTTP__PORT").as_deref(), Some("18090"));
        assert_eq!(
            env(&specs[0], "APP_DATABASE__URL"),
            env(&specs[3], "APP_DATABASE__URL")
        );
        assert!(specs[3].binary.ends_with("debug/order-service"));
        assert!(specs
            .iter()
            .all(|s| env(s, "APP_CONSUMER__ACK_WAIT").as_deref() == Some("10s")));
        assert!(
            specs.iter().all(|s| env(s, "APP_REDRIVE__AFTER").is_some()
                == deploy::is_instance_of(s, "order-service")),
            "the order service's own settings go to it alone (the others refuse them)"
        );
        assert_eq!(
            deploy::order_urls(&specs),
            vec![
                "http://127.0.0.1:18080/orders".to_string(),
                "http://127.0.0.1:18090/orders".to_string()
            ]
        );
        assert!(specs.iter().all(|s| s.netns.is_none()
            && env(s, "APP_HTTP__HOST").is_none()
            && env(s, "APP_NATS__STREAM_REPLICAS").as_deref() == Some("1")));
        let single = deploy::instance_specs(&deployment, &Replication::default());
        let names: Vec<&str> = single.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["order-service", "inventory-service", "payment-service"]
        );
    }

    #[test]
    fn the_healing_faults_resolve_their_targets() {
        let text = [
            fault("1s", "delete-consumer", "inventory-service-orders", "1s"),
            fault("3s", "delete-consumer", "payment", "1s"),
            fault("5s", "delete-stream", "order", "2s"),
            fault("10s", "delete-stream", "payment", "2s"),
            fault("15s", "poison", "order", "2s"),
            fault("20s", "panic", "inventory", "2s"),
            fault("25s", "pool-starve", "order", "2s"),
            fault("30s", "lock-hold", "inventory", "2s"),
        ]
        .concat();
        let faults = schedule(&with_faults(&text).expect("valid")).expect("valid plan");
        assert_eq!(
            faults[0].hits,
            Hits::Consumers(vec![(Source::Order, "inventory-service-orders".into())])
        );
        assert_eq!(
            faults[1].hits,
            Hits::Consumers(vec![(
                Source::Inventory,
                "payment-service-reservations".into()
            )])
        );
        // The order stream's consumer is inventory; the payment stream's, besides the order
        // service (which keeps taking orders), inventory too.
        for (fault, source) in [(&faults[2], Source::Order), (&faults[3], Source::Payment)] {
            assert_eq!(
                fault.hits,
                Hits::Stream {
                    source,
                    paused: vec![
                        "inventory-service-1".to_string(),
                        "inventory-service-2".to_string()
                    ]
                }
            );
        }
        assert!(matches!(
            faults[4].hits,
            Hits::Service {
                name: "order-service",
                ..
            }
        ));
        assert_eq!(
            faults[5].hits.instances(),
            ["inventory-service-1", "inventory-service-2"]
        );
        assert_eq!(
            faults[6].hits.instances(),
            ["order-service-1", "order-service-2"]
        );
    }

    #[test]
    fn the_healing_faults_refuse_targets_they_cannot_hit() {
        let text = [
            fault("1s", "delete-consumer", "shipping-orders", "1s"),
            fault("3s", "delete-stream", "orders", "1s"),
            fault("5s", "panic", "payment", "1s"),
            fault("7s", "pool-starve", "inventory", "1s"),
            fault("9s", "lock-hold", "order", "1s"),
            fault("11s", "poison", "nats", "1s"),
        ]
        .concat();
        let message = with_faults(&text).expect_err("invalid").to_string();
        for expected in [
            "unknown durable consumer \"shipping-orders\"",
            "unknown stream \"orders\"",
            "target must be \"inventory\" (got \"payment\")",
            "target must be \"order\" (got \"inventory\")",
            "target must be \"inventory\" (got \"order\")",
            "unknown service \"nats\"",
        ] {
            assert!(message.contains(expected), "{message} lacks {expected}");
        }
    }

    #[test]
    fn deploy_settings_become_service_environment() {
        let scenario = Scenario::from_toml_str(&BASE.replace(
            "consumer_ack_wait = \"10s\"",
            "consumer_ack_wait = \"10s\"\nstall_after = \"5s\"\nredrive_after = \"1500ms\"",
        ))
        .expect("valid");
        assert_eq!(
            replication(&scenario).extra_env,
            vec![
                ("APP_CONSUMER__ACK_WAIT".to_string(), "10s".to_string()),
                ("APP_WORKERS__STALL_AFTER".to_string(), "5s".to_string()),
                ("APP_REDRIVE__AFTER".to_string(), "1s500ms".to_string()),
            ]
        );
    }

    #[test]
    fn kinds_round_trip() {
        for kind in FaultKind::ALL {
            assert_eq!(FaultKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(FaultKind::parse("restart"), None);
    }
}
