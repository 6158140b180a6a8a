//! The faults of the hosts topology: network faults between hosts (`network`) and a NATS node
//! killed or paused — the current leader of a stream when the target says `leader:<stream>`,
//! looked up through the JetStream API when the fault starts.

use std::time::Duration;

use anyhow::{Context, Result};
use platform::broker::Topology;

use super::context::FaultContext;
use super::network;
use crate::plan::network::{HostRef, NetworkEffect};
use stack::nats_cluster;
use stack::netns::HostNetwork;

/// How long a fault waits for a stream to have a leader.
const LEADER_WAIT: Duration = Duration::from_secs(20);

fn hosts_of(context: &FaultContext) -> Result<&HostNetwork> {
    context
        .hosts
        .as_ref()
        .context("this fault needs the hosts topology")
}

/// The host a reference names now.
pub async fn resolve(context: &FaultContext, host: &HostRef) -> Result<String> {
    match host {
        HostRef::Named(name) => Ok(name.clone()),
        HostRef::StreamLeader(source) => {
            // Right after another fault the stream may be between leaders: wait for one.
            let stream = Topology::new(context.prefix.clone()).stream_name(*source);
            let deadline = tokio::time::Instant::now() + LEADER_WAIT;
            loop {
                match nats_cluster::stream_leader(&context.nats_url, &stream).await {
                    Ok(leader) => return Ok(leader),
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        return Err(e).with_context(|| {
                            format!(
                                "finding the leader of stream {stream} (waited {LEADER_WAIT:?})"
                            )
                        })
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
    }
}

async fn resolve_all(context: &FaultContext, hosts: &[HostRef]) -> Result<Vec<String>> {
    let mut names = Vec::with_capacity(hosts.len());
    for host in hosts {
        let name = resolve(context, host).await?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Applies a network fault; returns the hosts it hit (for the record).
pub async fn apply(
    context: &FaultContext,
    hosts: &[HostRef],
    effect: &NetworkEffect,
    actions: &mut Vec<String>,
) -> Result<()> {
    let net = hosts_of(context)?;
    let targets = resolve_all(context, hosts).await?;
    let names: Vec<&str> = targets.iter().map(String::as_str).collect();
    match effect {
        NetworkEffect::Partition { peers, both_ways } => {
            let peers = if peers.is_empty() {
                net.hosts
                    .iter()
                    .map(|h| h.name.clone())
                    .filter(|h| !targets.contains(h))
                    .collect()
            } else {
                // "nats" as the peers of a NATS node: the other nodes.
                let mut peers = resolve_all(context, peers).await?;
                peers.retain(|p| !targets.contains(p));
                peers
            };
            let peer_names: Vec<&str> = peers.iter().map(String::as_str).collect();
            network::partition(net, &names, &peer_names, *both_ways).await?;
            actions.push(format!(
                "partition {} {} {}",
                names.join(", "),
                if *both_ways { "<-/->" } else { "-/->" },
                peer_names.join(", ")
            ));
        }
        NetworkEffect::Delay { delay, jitter } => {
            let program = std::env::current_exe().context("locating the loadtest binary")?;
            for host in &names {
                network::delay(net, host, *delay, *jitter, &context.state, &program).await?;
            }
            actions.push(format!(
                "delay {delay:?} ± {jitter:?} on what {} send(s)",
                names.join(", ")
            ));
        }
        NetworkEffect::Loss { percent } => {
            for host in &names {
                network::loss(net, host, *percent).await?;
            }
            actions.push(format!(
                "drop {percent} % of what {} send(s)",
                names.join(", ")
            ));
        }
    }
    Ok(())
}

/// Lifts every network fault (the schedule runs one at a time, so that is this one's).
pub async fn heal(context: &FaultContext, actions: &mut Vec<String>) -> Result<()> {
    network::heal(hosts_of(context)?, &context.state).await?;
    actions.push("healed the network (our firewall chains flushed, delayers stopped)".into());
    Ok(())
}

/// A NATS node by reference: its name now.
pub async fn node(context: &FaultContext, node: &HostRef) -> Result<String> {
    hosts_of(context)?;
    resolve(context, node).await
}
