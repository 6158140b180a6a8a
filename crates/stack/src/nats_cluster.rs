//! A NATS cluster of our own: a few nodes (three for the hosts topology) of the same
//! nats-server (>= 2.12) as the single server of `nats.rs`, each with its own JetStream file
//! store fsynced on every write, routes to every other node, and the single server's users
//! (`nats_users`: the administrator and each deployment's services). Every node runs detached,
//! inside its host's network namespace when it has one, and is stopped, killed, paused,
//! resumed and restarted by the PID in its pidfile.
//!
//! In the state directory:
//!
//! ```text
//! nats-cluster.json               the nodes and the binary (for restarts and for `stop`)
//! nats-cluster/<node>/nats.conf   its configuration (mode 0600: it holds the passwords)
//! nats-cluster/<node>/jetstream/  its store
//! pids/<node>.pid, logs/<node>.log
//! ```
//!
//! Clients connect plain: the certificate of `tls.rs` names only `localhost` and `127.0.0.1`.
//! Routes are plain and unauthenticated: they carry only traffic between the nodes, on the
//! run's private network.

use super::nats_users::{self, NatsUser, Users, ADMIN_USER};
use super::process::{self, DetachedSpec, PidFile};
use super::StateDir;
use anyhow::{bail, Context, Result};
use health::{accepts, http_client};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod health;
pub use health::{meta_leader, stream_leader, wait_cluster_ready};

/// `cluster { name }` of every node.
const CLUSTER_NAME: &str = "ordersys";
/// How long a cluster (or one node started again) may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 30;

/// One node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Its `server_name` (what the JetStream API calls a leader), and the name of its pidfile,
    /// log and store: `nats-1`, `nats-2`, ...
    pub name: String,
    /// The address it listens on, for clients, routes and monitoring.
    pub addr: Ipv4Addr,
    pub client_port: u16,
    pub cluster_port: u16,
    pub monitor_port: u16,
    /// The network namespace it runs in (`None`: ours).
    pub netns: Option<String>,
}

impl NodeSpec {
    pub const CLIENT_PORT: u16 = 4222;
    pub const CLUSTER_PORT: u16 = 6222;
    pub const MONITOR_PORT: u16 = 8222;

    /// A node alone on a host of the hosts topology: NATS's usual ports, in the host's namespace.
    pub fn on_host(name: &str, addr: Ipv4Addr, netns: &str) -> NodeSpec {
        NodeSpec {
            name: name.to_string(),
            addr,
            client_port: Self::CLIENT_PORT,
            cluster_port: Self::CLUSTER_PORT,
            monitor_port: Self::MONITOR_PORT,
            netns: Some(netns.to_string()),
        }
    }

    /// A node on this machine's loopback with ports of its own (tests).
    pub fn on_loopback(name: &str, client_port: u16, cluster_port: u16, monitor_port: u16) -> Self {
        NodeSpec {
            name: name.to_string(),
            addr: Ipv4Addr::LOCALHOST,
            client_port,
            cluster_port,
            monitor_port,
            netns: None,
        }
    }

    /// `nats://<addr>:<client port>`, without credentials.
    pub fn client_url(&self) -> String {
        format!("nats://{}:{}", self.addr, self.client_port)
    }

    /// `http://<addr>:<monitor port>`.
    pub fn monitor_url(&self) -> String {
        format!("http://{}:{}", self.addr, self.monitor_port)
    }

    fn route_url(&self) -> String {
        format!("nats-route://{}:{}", self.addr, self.cluster_port)
    }
}

/// Where a running cluster is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub nodes: Vec<NodeSpec>,
    /// Every node's client URL with the administrator's credentials, comma-separated: what
    /// `platform::broker::connect_url` and a service's `nats.url` take.
    pub admin_url: String,
    /// The first node's monitoring URL (each node's: [`NodeSpec::monitor_url`]).
    pub monitor_url: String,
}

impl Cluster {
    fn new(nodes: Vec<NodeSpec>, admin_password: &str) -> Cluster {
        Cluster {
            admin_url: urls_as(&nodes, Some((ADMIN_USER, admin_password))),
            monitor_url: nodes.first().map(NodeSpec::monitor_url).unwrap_or_default(),
            nodes,
        }
    }

    /// Every node's client URL, comma-separated, with `login` (user, password) if given.
    pub fn url_as(&self, login: Option<(&str, &str)>) -> String {
        urls_as(&self.nodes, login)
    }
}

fn urls_as(nodes: &[NodeSpec], login: Option<(&str, &str)>) -> String {
    let userinfo = login.map_or(String::new(), |(user, password)| {
        format!("{user}:{password}@")
    });
    nodes
        .iter()
        .map(|n| format!("nats://{userinfo}{}:{}", n.addr, n.client_port))
        .collect::<Vec<_>>()
        .join(",")
}

/// What `nats-cluster.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Recorded {
    binary: PathBuf,
    nodes: Vec<NodeSpec>,
}

fn record_path(state: &StateDir) -> PathBuf {
    state.path().join("nats-cluster.json")
}

fn node_dir(state: &StateDir, node: &str) -> PathBuf {
    state.path().join("nats-cluster").join(node)
}

fn load_record(state: &StateDir) -> Result<Option<Recorded>> {
    let path = record_path(state);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is corrupt", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn require_record(state: &StateDir) -> Result<Recorded> {
    load_record(state)?.with_context(|| {
        format!(
            "no NATS cluster was set up in {} (no nats-cluster.json)",
            state.path().display()
        )
    })
}

fn find<'a>(record: &'a Recorded, node: &str) -> Result<&'a NodeSpec> {
    record
        .nodes
        .iter()
        .find(|n| n.name == node)
        .with_context(|| format!("the NATS cluster has no node {node:?}"))
}

/// Whether a cluster was set up in `state` (its users are then the cluster's to change).
pub(super) fn is_recorded(state: &StateDir) -> bool {
    record_path(state).is_file()
}

/// The cluster recorded in `state`, if any, whether or not its nodes run.
pub fn recorded(state: &StateDir) -> Result<Option<Cluster>> {
    let Some(record) = load_record(state)? else {
        return Ok(None);
    };
    let users = nats_users::load(state)?;
    Ok(Some(Cluster::new(record.nodes, &users.admin_password)))
}

/// The PID of `node` if it runs and is still the process we started.
pub fn node_pid(state: &StateDir, node: &str) -> Option<u32> {
    PidFile::read(&state.pid_file(node))
        .filter(PidFile::is_running)
        .map(|p| p.pid)
}

/// The configuration of `node` of `nodes`: the single server's (`nats::server_text`, users),
/// and a `cluster` block with routes to every other node — none for a "cluster" of one node,
/// which is a single server (JetStream refuses to start clustered without routes).
fn config_text(nodes: &[NodeSpec], node: &NodeSpec, store: &Path, users: &Users) -> String {
    let mut text = super::nats::server_text(
        &node.name,
        &node.addr.to_string(),
        node.client_port,
        node.monitor_port,
        store,
    );
    let routes: Vec<String> = nodes
        .iter()
        .filter(|other| other.name != node.name)
        .map(|other| format!("    \"{}\"", other.route_url()))
        .collect();
    if !routes.is_empty() {
        text.push_str(&format!(
            "cluster {{\n  name: \"{CLUSTER_NAME}\"\n  listen: \"{}:{}\"\n  routes: [\n{}\n  ]\n}}\n",
            node.addr,
            node.cluster_port,
            routes.join(",\n")
        ));
    }
    text.push_str(&nats_users::authorization_text(users));
    text
}

fn write_conf(state: &StateDir, record: &Recorded, node: &NodeSpec, users: &Users) -> Result<bool> {
    let dir = node_dir(state, &node.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = dir.join("nats.conf");
    let text = config_text(&record.nodes, node, &dir, users);
    if std::fs::read_to_string(&conf).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    process::write_private(&conf, text.as_bytes())?;
    Ok(true)
}

fn validate(nodes: &[NodeSpec]) -> Result<()> {
    if nodes.is_empty() {
        bail!("a NATS cluster needs at least one node");
    }
    for (i, node) in nodes.iter().enumerate() {
        let name_ok = !node.name.is_empty()
            && node
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !name_ok {
            bail!("NATS node name {:?}: letters, digits and '-'", node.name);
        }
        for other in &nodes[..i] {
            if other.name == node.name {
                bail!("NATS node {:?} twice", node.name);
            }
            let taken = [other.client_port, other.cluster_port, other.monitor_port];
            let wanted = [node.client_port, node.cluster_port, node.monitor_port];
            if other.addr == node.addr && wanted.iter().any(|p| taken.contains(p)) {
                bail!(
                    "NATS nodes {:?} and {:?} share an address and a port",
                    other.name,
                    node.name
                );
            }
        }
    }
    Ok(())
}

/// Starts the cluster of `nodes` (each node not running yet; stores are kept), waits until it
/// is ready ([`wait_cluster_ready`]) and returns where it is. The caller keeps other CLIs from
/// starting or stopping the same state directory meanwhile. A cluster of other nodes that
/// still runs in `state` is refused: stop it first.
pub async fn start(state: &StateDir, nodes: &[NodeSpec]) -> Result<Cluster> {
    validate(nodes)?;
    let previous = load_record(state)?;
    if let Some(previous) = &previous {
        let running: Vec<&str> = previous
            .nodes
            .iter()
            .filter(|n| node_pid(state, &n.name).is_some())
            .map(|n| n.name.as_str())
            .collect();
        if previous.nodes != nodes && !running.is_empty() {
            bail!(
                "another NATS cluster runs in {} (nodes {}); stop it first",
                state.path().display(),
                running.join(", ")
            );
        }
    }
    let cached = previous.map(|r| r.binary);
    let cached = match cached {
        Some(bin) if super::nats::binary_version(&bin).await.is_some() => Some(bin),
        _ => super::nats::load_config(state).map(|c| c.binary),
    };
    let (binary, version) = super::nats::ensure_binary(cached).await?;
    tracing::info!(binary = %binary.display(), ?version, nodes = nodes.len(), "starting a NATS cluster");
    let record = Recorded {
        binary,
        nodes: nodes.to_vec(),
    };
    let text = serde_json::to_string_pretty(&record).context("serialising nats-cluster.json")?;
    process::write_atomic(&record_path(state), text.as_bytes())?;
    let users = nats_users::load(state)?;
    // Every node first: none is ready before a quorum of them has met.
    for node in &record.nodes {
        if node_pid(state, &node.name).is_none() {
            start_node(state, &record, node, &users).await?;
        }
    }
    wait_cluster_ready(state, READY_TIMEOUT).await?;
    Ok(Cluster::new(record.nodes, &users.admin_password))
}

/// Starts one node detached (in its namespace) and waits until it serves its monitoring port.
async fn start_node(
    state: &StateDir,
    record: &Recorded,
    node: &NodeSpec,
    users: &Users,
) -> Result<u32> {
    write_conf(state, record, node, users)?;
    let pidfile = state.pid_file(&node.name);
    process::remove_file_if_exists(&pidfile)?;
    for port in [node.client_port, node.cluster_port, node.monitor_port] {
        if accepts(SocketAddr::from((node.addr, port))).await {
            bail!(
                "{}:{port} (NATS node {}) is already in use by a process we did not start",
                node.addr,
                node.name
            );
        }
    }
    let dir = node_dir(state, &node.name);
    let conf = dir.join("nats.conf");
    let log = state.log_file(&node.name);
    let pid = process::spawn_recorded(
        &DetachedSpec {
            program: &record.binary,
            args: vec!["-c".to_string(), conf.to_string_lossy().into_owned()],
            env: vec![],
            log: &log,
            cwd: Some(&dir),
            user: None,
            netns: node.netns.as_deref(),
        },
        &pidfile,
        node.client_port,
    )?;
    tracing::info!(pid, node = %node.name, addr = %node.addr, "started a NATS node");
    let http = http_client()?;
    let url = format!("{}/healthz?js-enabled-only=true", node.monitor_url());
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(pid);
        }
        process::ensure_alive(pid, &format!("NATS node {}", node.name), &log)?;
        if Instant::now() >= deadline {
            bail!(
                "NATS node {} (pid {pid}) did not serve {url} within {READY_TIMEOUT:?}; it is left running; last lines of {}:\n{}",
                node.name,
                log.display(),
                process::tail_file(&log, LOG_TAIL_LINES)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops every node of the cluster recorded in `state` (SIGTERM, SIGKILL after 10 s), by PID;
/// stores and configuration stay. Nothing to do when none was set up.
/// Removes every node's configuration and JetStream store (the nodes must be stopped): a
/// cluster started afterwards begins empty. The hosts topology does this before each run, so a
/// store left by another run — other streams, another number of nodes — cannot hold it up.
pub fn remove_stores(state: &StateDir) -> Result<()> {
    let dir = state.path().join("nats-cluster");
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

pub async fn stop(state: &StateDir) -> Result<()> {
    let Some(record) = load_record(state)? else {
        return Ok(());
    };
    let mut failed = Vec::new();
    for node in &record.nodes {
        if let Err(e) = stop_one(state, &node.name).await {
            failed.push(format!("{}: {e:#}", node.name));
        }
    }
    if !failed.is_empty() {
        bail!("stopping NATS nodes: {}", failed.join("; "));
    }
    Ok(())
}

/// Stops `node` (SIGTERM, SIGKILL after 10 s), by PID: a clean shutdown.
pub async fn stop_node(state: &StateDir, node: &str) -> Result<()> {
    find(&require_record(state)?, node)?;
    stop_one(state, node).await
}

async fn stop_one(state: &StateDir, node: &str) -> Result<()> {
    let pidfile = state.pid_file(node);
    if let Some(pf) = PidFile::read(&pidfile) {
        if let Some(bin) = &pf.binary {
            process::terminate(pf.pid, bin, libc::SIGTERM, STOP_GRACE).await?;
            tracing::info!(pid = pf.pid, node, "stopped a NATS node");
        }
    }
    process::remove_file_if_exists(&pidfile)
}

/// The PID of running `node`, or an error naming it.
fn running_pid(state: &StateDir, node: &str) -> Result<u32> {
    find(&require_record(state)?, node)?;
    node_pid(state, node).with_context(|| format!("NATS node {node} is not running"))
}

/// SIGKILL `node` (a crash) and wait until it is gone; returns its PID. Its store stays.
pub async fn kill_node(state: &StateDir, node: &str) -> Result<u32> {
    let pid = running_pid(state, node)?;
    process::send_signal(pid, libc::SIGKILL)?;
    if !process::wait_gone(pid, Duration::from_secs(10)).await {
        bail!("NATS node {node} (pid {pid}) still alive 10 s after SIGKILL");
    }
    tracing::info!(pid, node, "killed a NATS node");
    process::remove_file_if_exists(&state.pid_file(node))?;
    Ok(pid)
}

/// SIGSTOP `node`: it keeps its connections but answers nothing until [`resume_node`].
pub fn pause_node(state: &StateDir, node: &str) -> Result<u32> {
    let pid = running_pid(state, node)?;
    process::send_signal(pid, libc::SIGSTOP)?;
    Ok(pid)
}

/// SIGCONT `node` after [`pause_node`].
pub fn resume_node(state: &StateDir, node: &str) -> Result<u32> {
    let pid = running_pid(state, node)?;
    process::send_signal(pid, libc::SIGCONT)?;
    Ok(pid)
}

/// Starts `node` again with its configuration and store (after [`kill_node`] or
/// [`stop_node`]) and waits until it has caught up: its `/healthz` says its JetStream is
/// current with the cluster's. Returns its PID; a no-op when it runs. Whether every node is
/// back: [`wait_cluster_ready`].
pub async fn restart_node(state: &StateDir, node: &str) -> Result<u32> {
    let record = require_record(state)?;
    let spec = find(&record, node)?;
    let pid = match node_pid(state, node) {
        Some(pid) => pid,
        None => start_node(state, &record, spec, &nats_users::load(state)?).await?,
    };
    let http = http_client()?;
    let url = format!("{}/healthz", spec.monitor_url());
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let last = match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => return Ok(pid),
            Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        process::ensure_alive(pid, &format!("NATS node {node}"), &state.log_file(node))?;
        if Instant::now() >= deadline {
            bail!("NATS node {node} (pid {pid}) not caught up within {READY_TIMEOUT:?}; it is left running; {url}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Gives deployment `prefix` exactly `deployment_users` on every node (an empty list removes
/// them): every running node's configuration is rewritten and re-read, one node after another.
pub(super) async fn set_users(
    state: &StateDir,
    prefix: &str,
    deployment_users: Vec<NatsUser>,
) -> Result<()> {
    let _lock = nats_users::lock(state).await?;
    let record = require_record(state)?;
    let users = nats_users::record_deployment(state, prefix, deployment_users)?;
    for node in &record.nodes {
        if !write_conf(state, &record, node, &users)? {
            continue;
        }
        let Some(pid) = node_pid(state, &node.name) else {
            continue;
        };
        nats_users::reload(
            pid,
            &node.monitor_url(),
            &format!("NATS node {}", node.name),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Vec<NodeSpec> {
        (0..3u8)
            .map(|i| {
                NodeSpec::on_host(
                    &format!("nats-{}", i + 1),
                    Ipv4Addr::new(10, 213, 1, 10 + i),
                    &format!("osrun-nats-{}", i + 1),
                )
            })
            .collect()
    }

    #[test]
    fn a_node_routes_to_every_other_node_and_fsyncs_every_write() {
        let nodes = three();
        let users = Users {
            admin_password: "a1".into(),
            ..Users::default()
        };
        let text = config_text(
            &nodes,
            &nodes[1],
            Path::new("/s/nats-cluster/nats-2"),
            &users,
        );
        assert!(text.contains("server_name: \"nats-2\""));
        assert!(text.contains("listen: \"10.213.1.11:4222\""));
        assert!(text.contains("http: \"10.213.1.11:8222\""));
        assert!(text.contains("store_dir: \"/s/nats-cluster/nats-2\""));
        assert!(text.contains("sync_interval: always"));
        assert!(text.contains("name: \"ordersys\""));
        assert!(text.contains("listen: \"10.213.1.11:6222\""));
        assert!(text.contains(
            "routes: [\n    \"nats-route://10.213.1.10:6222\",\n    \"nats-route://10.213.1.12:6222\"\n  ]"
        ));
        assert!(
            !text.contains("nats-route://10.213.1.11"),
            "no route to itself"
        );
        assert!(text.contains(r#"{ user: "ordersys-admin", password: "a1" }"#));
    }

    #[test]
    fn a_cluster_of_one_is_a_single_server() {
        let one = &three()[..1];
        let text = config_text(one, &one[0], Path::new("/s"), &Users::default());
        assert!(text.contains("sync_interval: always"));
        assert!(!text.contains("cluster {"), "{text}");
    }

    #[test]
    fn urls_list_every_node() {
        let cluster = Cluster::new(three(), "pw");
        assert_eq!(
            cluster.admin_url,
            "nats://ordersys-admin:pw@10.213.1.10:4222,nats://ordersys-admin:pw@10.213.1.11:4222,nats://ordersys-admin:pw@10.213.1.12:4222"
        );
        assert_eq!(
            cluster.url_as(None),
            "nats://10.213.1.10:4222,nats://10.213.1.11:4222,nats://10.213.1.12:4222"
        );
        assert_eq!(cluster.monitor_url, "http://10.213.1.10:8222");
        assert_eq!(
            platform::broker::server_urls(&cluster.admin_url).len(),
            3,
            "the services' client reads the list"
        );
    }

    #[test]
    fn nodes_need_names_and_ports_of_their_own() {
        assert!(validate(&three()).is_ok());
        assert!(validate(&[]).is_err());
        let mut twice = three();
        twice[2].name = "nats-1".into();
        assert!(validate(&twice).is_err());
        let local = [
            NodeSpec::on_loopback("a", 1, 2, 3),
            NodeSpec::on_loopback("b", 4, 5, 1),
        ];
        assert!(
            validate(&local).is_err(),
            "client port 1 twice on 127.0.0.1"
        );
        let bad = [NodeSpec::on_loopback("a b", 1, 2, 3)];
        assert!(validate(&bad).is_err());
    }
}
