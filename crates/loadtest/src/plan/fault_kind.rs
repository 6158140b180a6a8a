//! The kinds of fault a scenario may name, and what a fault hits once its target is resolved
//! (the schedule in `faults` resolves them; the fault-specific rules in `boundaries` and
//! `network` read them).

use platform::events::Source;
use serde::Serialize;

use crate::plan::network::{HostRef, NetworkEffect};

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
