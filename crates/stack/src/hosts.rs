//! The hosts topology: one PostgreSQL host, one host per NATS node and one per service
//! instance, each a network namespace on the run's private network (`netns`), so that every
//! connection crosses a network the run can cut, slow down or make lossy (`chaos::network`).
//!
//! It has a state directory of its own (`<state>/hosts`: pidfiles, logs, the PostgreSQL
//! cluster, the NATS stores), so the loopback stack of `loadtest up` is left alone. [`up`]
//! removes whatever an interrupted run left first; [`down`] stops every process by its PID
//! and removes the network.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

use super::netns::HostNetwork;
use super::postgres::{self, PgPlacement};
use super::{nats_cluster, process, Infra, StateDir};

/// The network's tag and subnet: `10.213.1.0/24`, namespaces `osrun-<host>`.
const TAG: &str = "run";
const SUBNET: u8 = 1;
pub const POSTGRES_HOST: &str = "postgres";
pub const POSTGRES_PORT: u16 = 5432;
/// How long a process on a host may take to exit after SIGTERM.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The name of NATS node `i` (1-based), its host's too.
pub fn nats_host(i: u32) -> String {
    format!("nats-{i}")
}

/// `<state>/hosts`, the hosts topology's own state directory.
pub fn state_dir() -> Result<StateDir> {
    let state = StateDir::locate()?;
    StateDir::at(state.path().join("hosts"))
}

/// A running hosts topology.
#[derive(Debug, Clone)]
pub struct Hosts {
    pub network: HostNetwork,
    pub infra: Infra,
    pub nats_nodes: u32,
}

/// What [`down`] needs after a crash: the network that was made.
#[derive(Debug, Serialize, Deserialize)]
struct Recorded {
    hosts: Vec<String>,
}

fn record_path(state: &StateDir) -> std::path::PathBuf {
    state.path().join("hosts.json")
}

/// The hosts of a run: PostgreSQL, the NATS nodes, then every service instance.
pub fn plan_network(instances: &[String], nats_nodes: u32) -> Result<HostNetwork> {
    let mut names = vec![POSTGRES_HOST.to_string()];
    names.extend((1..=nats_nodes).map(nats_host));
    names.extend(instances.iter().cloned());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    HostNetwork::plan(TAG, SUBNET, &names)
}

/// The subnet every host is on, for access rules (`10.213.1.0/24`).
fn subnet_cidr(network: &HostNetwork) -> String {
    let octets = network.workstation_addr().octets();
    format!("{}/24", Ipv4Addr::new(octets[0], octets[1], octets[2], 0))
}

/// Creates the network and starts PostgreSQL and the NATS nodes on their hosts (installing
/// what is missing). The services are started by `deploy` onto the hosts named after them.
pub async fn up(state: &StateDir, instances: &[String], nats_nodes: u32) -> Result<Hosts> {
    down(state)
        .await
        .context("removing what an earlier hosts run left")?;
    // Every run has fresh databases and a prefix of its own; its broker starts empty too.
    nats_cluster::remove_stores(state)?;
    let network = plan_network(instances, nats_nodes)?;
    let recorded = Recorded {
        hosts: network.hosts.iter().map(|h| h.name.clone()).collect(),
    };
    process::write_atomic(
        &record_path(state),
        serde_json::to_string(&recorded)
            .context("serialising hosts.json")?
            .as_bytes(),
    )?;
    network.create().await?;
    let pg = network.host(POSTGRES_HOST).context("the PostgreSQL host")?;
    let admin_database_url = postgres::ensure_on(
        state,
        POSTGRES_PORT,
        Some(PgPlacement {
            addr: pg.addr,
            netns: pg.netns.clone(),
            clients: subnet_cidr(&network),
        }),
    )
    .await
    .context("starting PostgreSQL on its host")?;
    let nodes: Vec<nats_cluster::NodeSpec> = (1..=nats_nodes)
        .map(|i| {
            let host = network.host(&nats_host(i)).context("a NATS host")?;
            Ok(nats_cluster::NodeSpec::on_host(
                &host.name,
                host.addr,
                &host.netns,
            ))
        })
        .collect::<Result<_>>()?;
    let cluster = nats_cluster::start(state, &nodes)
        .await
        .context("starting the NATS nodes on their hosts")?;
    Ok(Hosts {
        network,
        infra: Infra {
            admin_database_url,
            nats_url: cluster.admin_url,
            nats_monitor_url: Some(cluster.monitor_url),
        },
        nats_nodes,
    })
}

/// Stops every process of the hosts state directory by its PID — whatever else recorded one
/// there (services, the delayers of a delay fault), then the NATS nodes and PostgreSQL — and
/// removes the network recorded there; nothing to do when there is none. (A process left in a
/// namespace whose name is gone would live on, unreachable.)
pub async fn down(state: &StateDir) -> Result<()> {
    stop_recorded_processes(state)
        .await
        .context("stopping the processes on the hosts")?;
    let nats = nats_cluster::stop(state).await;
    let pg = postgres::stop(state, postgres::StopMode::Fast).await;
    let Ok(text) = std::fs::read_to_string(record_path(state)) else {
        nats?;
        return pg;
    };
    let recorded: Recorded = serde_json::from_str(&text).context("reading hosts.json")?;
    let names: Vec<&str> = recorded.hosts.iter().map(String::as_str).collect();
    let network = HostNetwork::plan(TAG, SUBNET, &names)?;
    let removed = network.destroy().await;
    nats.context("stopping the NATS nodes")?;
    pg.context("stopping PostgreSQL")?;
    removed?;
    process::remove_file_if_exists(&record_path(state))
}

/// Every recorded process other than PostgreSQL and the NATS nodes (which stop on their own
/// terms): SIGTERM, SIGKILL after a grace period, each checked to still run its binary.
async fn stop_recorded_processes(state: &StateDir) -> Result<()> {
    let nodes: Vec<String> = nats_cluster::recorded(state)?
        .map(|c| c.nodes.into_iter().map(|n| n.name).collect())
        .unwrap_or_default();
    let mut errors = Vec::new();
    for entry in std::fs::read_dir(state.pids_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(".pid") else {
            continue;
        };
        if name == "postgres" || name == "nats" || nodes.iter().any(|n| n == name) {
            continue;
        }
        let Some(pidfile) = process::PidFile::read(&entry.path()) else {
            continue;
        };
        if let (true, Some(binary)) = (pidfile.is_running(), &pidfile.binary) {
            if let Err(e) = process::terminate(pidfile.pid, binary, libc::SIGTERM, STOP_GRACE).await
            {
                errors.push(format!("{name}: {e:#}"));
                continue;
            }
        }
        process::remove_file_if_exists(&entry.path())?;
    }
    if !errors.is_empty() {
        anyhow::bail!("stopping {}", errors.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_then_nats_then_the_services() {
        let net = plan_network(&["order-service".into(), "payment-service".into()], 3).unwrap();
        let names: Vec<_> = net.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "postgres",
                "nats-1",
                "nats-2",
                "nats-3",
                "order-service",
                "payment-service"
            ]
        );
        assert_eq!(subnet_cidr(&net), "10.213.1.0/24");
    }
}
