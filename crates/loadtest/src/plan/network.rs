//! The faults only a network (and a clustered broker) can make, as a scenario writes them —
//! hosts topology only (`[deploy] topology = "hosts"`):
//!
//! ```toml
//! [[faults]]                      # the order stream's leader cut from the other NATS nodes
//! at = "20s"
//! kind = "partition"
//! target = "leader:order"
//! peers = "nats"                  # default: every other host
//! one_way = false                 # true: only target → peers is dropped
//! duration = "10s"
//!
//! [[faults]]
//! kind = "delay"                  # the target's outgoing packets wait delay ± jitter
//! target = "inventory"
//! delay = "50ms"
//! jitter = "10ms"
//!
//! [[faults]]
//! kind = "loss"                   # the target drops this share of its outgoing packets
//! target = "payment"
//! loss_percent = 5
//!
//! [[faults]]
//! kind = "kill-nats-node"         # or pause-nats-node: SIGKILL (restart) / SIGSTOP (SIGCONT)
//! target = "leader:order"         # or nats-2
//! ```
//!
//! A host list is comma-separated: `postgres`, `nats` (every node), `nats-2`, `leader:<stream>`
//! (the node leading that stream when the fault starts, found through the JetStream API), a
//! service (every instance) or one instance (`inventory-service-1`).

use std::time::Duration;

use platform::events::Source;

use crate::plan::scenario::{FaultSpec, Topology};
use crate::plan::targets::resolve_target;

/// One host of a network fault's target or peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRef {
    /// A host by name (its process's: `postgres`, `nats-1`, `order-service-2`).
    Named(String),
    /// The NATS node leading this stream's raft group when the fault starts.
    StreamLeader(Source),
}

/// What a network fault does to its hosts' traffic.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkEffect {
    /// The hosts cannot send to `peers` (none: every other host) and, both ways, not receive
    /// from them either; packets vanish, nothing is refused.
    Partition {
        peers: Vec<HostRef>,
        both_ways: bool,
    },
    Delay {
        delay: Duration,
        jitter: Duration,
    },
    Loss {
        percent: f64,
    },
}

/// The hosts a list names, checked against the planned network.
pub fn resolve_hosts(text: &str, replicas: u32, nats_nodes: u32) -> Result<Vec<HostRef>, String> {
    let mut hosts = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "postgres" {
            hosts.push(HostRef::Named(item.to_string()));
        } else if item == "nats" {
            hosts.extend((1..=nats_nodes).map(|i| HostRef::Named(format!("nats-{i}"))));
        } else if let Some(stream) = item.strip_prefix("leader:") {
            let source = Source::ALL
                .into_iter()
                .find(|s| s.token() == stream)
                .ok_or(format!(
                    "leader:{stream}: no stream {stream:?} (order, inventory, payment)"
                ))?;
            hosts.push(HostRef::StreamLeader(source));
        } else if let Some(n) = item.strip_prefix("nats-") {
            match n.parse::<u32>() {
                Ok(n) if (1..=nats_nodes).contains(&n) => {
                    hosts.push(HostRef::Named(item.to_string()))
                }
                _ => {
                    return Err(format!(
                        "{item}: no such NATS node (deploy.nats_nodes = {nats_nodes})"
                    ))
                }
            }
        } else {
            hosts.extend(
                resolve_target(item, replicas)?
                    .into_iter()
                    .map(HostRef::Named),
            );
        }
    }
    if hosts.is_empty() {
        return Err("names no host".to_string());
    }
    hosts.dedup();
    Ok(hosts)
}

/// The effect a network fault's table asks for, or what is wrong with it.
pub fn effect(
    kind: &str,
    spec: &FaultSpec,
    replicas: u32,
    nats_nodes: u32,
) -> Result<NetworkEffect, String> {
    match kind {
        "partition" => Ok(NetworkEffect::Partition {
            peers: match &spec.peers {
                Some(peers) => {
                    resolve_hosts(peers, replicas, nats_nodes).map_err(|e| format!("peers: {e}"))?
                }
                None => Vec::new(),
            },
            both_ways: !spec.one_way.unwrap_or(false),
        }),
        "delay" => {
            let delay = spec.delay.ok_or("needs `delay` (e.g. \"50ms\")")?;
            let jitter = spec.jitter.unwrap_or_default();
            if delay.is_zero() || jitter > delay || delay > Duration::from_secs(5) {
                return Err(format!(
                    "delay must be within (0, 5s] and jitter at most the delay (got {delay:?} ± {jitter:?})"
                ));
            }
            Ok(NetworkEffect::Delay { delay, jitter })
        }
        "loss" => {
            let percent = spec.loss_percent.ok_or("needs `loss_percent` (e.g. 5)")?;
            if !(percent > 0.0 && percent < 100.0) {
                return Err(format!(
                    "loss_percent must be within (0, 100) (got {percent})"
                ));
            }
            Ok(NetworkEffect::Loss { percent })
        }
        other => Err(format!("{other} is not a network fault")),
    }
}

/// Errors unless the scenario runs on hosts (a network fault needs a network).
pub fn require_hosts(topology: Topology, kind: &str) -> Result<(), String> {
    if topology == Topology::Hosts {
        Ok(())
    } else {
        Err(format!("{kind} needs [deploy] topology = \"hosts\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FaultSpec {
        FaultSpec {
            duration: Some(Duration::from_secs(1)),
            ..FaultSpec::default()
        }
    }

    #[test]
    fn host_lists_expand_services_nodes_and_leaders() {
        let hosts = resolve_hosts("leader:order, nats, inventory, postgres", 2, 3).unwrap();
        let named = |s: &str| HostRef::Named(s.to_string());
        assert_eq!(
            hosts,
            vec![
                HostRef::StreamLeader(Source::Order),
                named("nats-1"),
                named("nats-2"),
                named("nats-3"),
                named("inventory-service-1"),
                named("inventory-service-2"),
                named("postgres"),
            ]
        );
        assert!(resolve_hosts("nats-4", 1, 3).is_err());
        assert!(resolve_hosts("leader:shipping", 1, 3).is_err());
        assert!(resolve_hosts(" , ", 1, 3).is_err());
    }

    #[test]
    fn effects_are_checked() {
        let mut s = spec();
        assert!(matches!(
            effect("partition", &s, 1, 3),
            Ok(NetworkEffect::Partition { both_ways: true, ref peers }) if peers.is_empty()
        ));
        s.one_way = Some(true);
        s.peers = Some("nats".into());
        assert!(matches!(
            effect("partition", &s, 1, 3),
            Ok(NetworkEffect::Partition { both_ways: false, ref peers }) if peers.len() == 3
        ));
        assert!(effect("delay", &s, 1, 3).is_err());
        s.delay = Some(Duration::from_millis(50));
        s.jitter = Some(Duration::from_millis(60));
        assert!(effect("delay", &s, 1, 3).is_err());
        s.jitter = Some(Duration::from_millis(10));
        assert!(effect("delay", &s, 1, 3).is_ok());
        s.loss_percent = Some(100.0);
        assert!(effect("loss", &s, 1, 3).is_err());
        s.loss_percent = Some(5.0);
        assert_eq!(
            effect("loss", &s, 1, 3),
            Ok(NetworkEffect::Loss { percent: 5.0 })
        );
        assert!(require_hosts(Topology::Local, "loss").is_err());
    }
}
