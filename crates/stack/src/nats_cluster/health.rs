//! Whether a cluster of ours is whole, and who leads: each node's monitoring endpoints
//! (`/healthz`, `/jsz`) and the JetStream API.

use super::{node_pid, require_record, NodeSpec, LOG_TAIL_LINES};
use crate::process;
use crate::StateDir;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Is something accepting TCP connections at `addr`?
pub(super) async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

pub(super) fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building an HTTP client")
}

/// Waits until every node is healthy (`/healthz`: its JetStream is current with the cluster's),
/// accepts clients, and names the same meta leader (`/jsz`), and the leader sees every other
/// node as a current peer. Fails at once when a node is not running.
pub async fn wait_cluster_ready(state: &StateDir, timeout: Duration) -> Result<()> {
    let record = require_record(state)?;
    let http = http_client()?;
    let deadline = Instant::now() + timeout;
    loop {
        for node in &record.nodes {
            if node_pid(state, &node.name).is_none() {
                let log = state.log_file(&node.name);
                bail!(
                    "NATS node {} is not running; last lines of {}:\n{}",
                    node.name,
                    log.display(),
                    process::tail_file(&log, LOG_TAIL_LINES)
                );
            }
        }
        let why = match cluster_state(&http, &record.nodes).await {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            bail!("the NATS cluster was not ready within {timeout:?}: {why}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `Ok` when the cluster is ready, else what is missing.
async fn cluster_state(http: &reqwest::Client, nodes: &[NodeSpec]) -> Result<(), String> {
    let mut leaders = Vec::with_capacity(nodes.len());
    let mut leader_peers = None;
    for node in nodes {
        let health = http
            .get(format!("{}/healthz", node.monitor_url()))
            .send()
            .await;
        match health {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => return Err(format!("{} /healthz answered {}", node.name, r.status())),
            Err(e) => return Err(format!("{} /healthz: {e}", node.name)),
        }
        if !accepts(SocketAddr::from((node.addr, node.client_port))).await {
            return Err(format!("{} does not accept clients yet", node.name));
        }
        if nodes.len() == 1 {
            // A single server: no meta group to wait for.
            return Ok(());
        }
        let meta = jsz_meta(http, node).await?;
        let leader = meta["leader"].as_str().unwrap_or_default().to_string();
        if leader.is_empty() {
            return Err(format!("{} knows no meta leader", node.name));
        }
        if leader == node.name {
            leader_peers = Some(meta["replicas"].as_array().cloned().unwrap_or_default());
        }
        leaders.push(leader);
    }
    if leaders.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!(
            "the nodes name different meta leaders: {leaders:?}"
        ));
    }
    let Some(peers) = leader_peers else {
        return Err(format!(
            "the meta leader {} is none of the nodes",
            leaders[0]
        ));
    };
    let current = peers.iter().filter(|p| p["current"] == true).count();
    if current + 1 < nodes.len() {
        return Err(format!(
            "the meta leader {} sees {current} of {} other nodes current",
            leaders[0],
            nodes.len() - 1
        ));
    }
    Ok(())
}

/// `meta_cluster` of a node's `/jsz`.
async fn jsz_meta(http: &reqwest::Client, node: &NodeSpec) -> Result<Value, String> {
    let url = format!("{}/jsz", node.monitor_url());
    let body: Value = http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    Ok(body["meta_cluster"].clone())
}

/// The node that leads the cluster's JetStream metadata (stream and consumer assignments), as
/// the first running node that knows one says (`/jsz`).
pub async fn meta_leader(state: &StateDir) -> Result<String> {
    let record = require_record(state)?;
    let http = http_client()?;
    let mut why = Vec::new();
    for node in &record.nodes {
        if node_pid(state, &node.name).is_none() {
            continue;
        }
        match jsz_meta(&http, node).await {
            Ok(meta) => match meta["leader"].as_str().filter(|l| !l.is_empty()) {
                Some(leader) => return Ok(leader.to_string()),
                None => why.push(format!("{} knows none", node.name)),
            },
            Err(e) => why.push(e),
        }
    }
    bail!("no NATS node names a meta leader ({})", why.join("; "))
}

/// The node (`server_name`) that leads `stream`, from the JetStream API
/// (`$JS.API.STREAM.INFO.<stream>` → `cluster.leader`), asked through `nats_url` (any node or
/// all of them, comma-separated, with credentials that may read the stream: [`Cluster::admin_url`]).
/// Errors while the stream has no leader (an election) and on a single server (no cluster).
pub async fn stream_leader(nats_url: &str, stream: &str) -> Result<String> {
    let client = platform::broker::connect_url(nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let found = js
        .get_stream(stream)
        .await
        .with_context(|| format!("stream {stream}"))?;
    found
        .cached_info()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .filter(|leader| !leader.is_empty())
        .with_context(|| format!("stream {stream} has no leader now"))
}
