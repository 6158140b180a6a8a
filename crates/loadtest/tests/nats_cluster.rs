//! A three-node NATS cluster of our own (`stack::nats_cluster`) on loopback, each node on ports
//! of its own in a temporary state directory: streams the platform creates with three replicas
//! get them and a leader, and the three real services (the in-process `system-tests` harness,
//! workers running, on the PostgreSQL of `loadtest infra-up`: `ORDERSYS_DATABASE_URL`) ride
//! through the death and the pause of the order stream's leader while orders flow: every order
//! ends final, stock is exact, nothing is paid twice (the load test's audit).
//!
//! One more test runs the nodes as the hosts topology does, each in a network namespace of its
//! own (needs root, as CI has).
//!
//! Every node is stopped by its PID when a test ends, also when it panics.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use loadtest::audit::{audit, Check};
use loadtest::observe::database::Databases;
use platform::broker::{self, Topology};
use platform::config::NatsSettings;
use platform::events::Source;
use stack::nats_cluster::{self, Cluster, NodeSpec};
use stack::netns::HostNetwork;
use stack::StateDir;
use system_tests::{Options, TestSystem};
use tokio::time::Instant;

const NODES: [&str; 3] = ["nats-1", "nats-2", "nats-3"];
const USER: i64 = 11;
const PRODUCT: i64 = 1;
const STOCK: i64 = 10_000;
/// Orders placed one after the other, a fault striking after the first [`FAULT_AFTER`].
const ORDERS: usize = 60;
const FAULT_AFTER: usize = 10;
const ORDER_GAP: Duration = Duration::from_millis(100);
/// Inventory's durable consumer of the order service's stream.
const INVENTORY_ON_ORDERS: &str = "inventory-service-orders";

/// Stops the cluster's nodes by PID and removes the state directory when dropped (a panic
/// included): SIGCONT first, as a paused node would otherwise stay paused, then SIGKILL.
struct ClusterGuard {
    state: StateDir,
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        for node in NODES {
            if let Some(pid) = nats_cluster::node_pid(&self.state, node) {
                let _ = stack::signal_process(pid, libc::SIGCONT);
                let _ = stack::signal_process(pid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(self.state.path());
    }
}

/// `n` ports nobody listens on now (held together, so they are distinct).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

async fn start_cluster(tag: &str) -> (ClusterGuard, Cluster) {
    let dir = std::env::temp_dir().join(format!("ordersys-cluster-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let guard = ClusterGuard {
        state: StateDir::at(&dir).expect("state directory"),
    };
    let ports = free_ports(3 * NODES.len());
    let nodes: Vec<NodeSpec> = NODES
        .iter()
        .zip(ports.chunks(3))
        .map(|(name, p)| NodeSpec::on_loopback(name, p[0], p[1], p[2]))
        .collect();
    let cluster = nats_cluster::start(&guard.state, &nodes)
        .await
        .expect("the cluster starts");
    (guard, cluster)
}

fn nats_settings(cluster: &Cluster, prefix: &str, replicas: usize) -> NatsSettings {
    NatsSettings {
        url: cluster.admin_url.clone().into(),
        user: String::new(),
        password: "".into(),
        tls_ca_file: String::new(),
        prefix: prefix.to_string(),
        stream_max_age: Duration::from_secs(600),
        stream_max_bytes: -1,
        stream_replicas: replicas,
    }
}

async fn stream_info(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> async_nats::jetstream::stream::Info {
    js.get_stream(name)
        .await
        .expect("the stream")
        .info()
        .await
        .expect("stream info")
        .clone()
}

/// Polls until `stream` has a leader and every replica is current; returns the leader.
async fn settled_leader(js: &async_nats::jetstream::Context, stream: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = stream_info(js, stream).await;
        let cluster = info.cluster.clone().unwrap_or_default();
        if let Some(leader) = cluster.leader.filter(|l| !l.is_empty()) {
            if cluster.replicas.len() + 1 == info.config.num_replicas
                && cluster.replicas.iter().all(|r| r.current)
            {
                return leader;
            }
        }
        assert!(Instant::now() < deadline, "stream {stream}: {info:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_platform_creates_streams_with_three_replicas_and_a_leader() {
    let (guard, cluster) = start_cluster("streams").await;
    let meta = nats_cluster::meta_leader(&guard.state)
        .await
        .expect("meta leader");
    assert!(NODES.contains(&meta.as_str()), "{meta}");

    let prefix = format!("r3{}", std::process::id());
    let client = broker::connect(&nats_settings(&cluster, &prefix, 3))
        .await
        .expect("connect to the cluster");
    let js = broker::jetstream(client);
    // A stream made with one replica, as before the cluster, is brought to three.
    let one = Topology::from_settings(&nats_settings(&cluster, &prefix, 1));
    broker::ensure_stream(&js, &one, Source::Order)
        .await
        .expect("an R1 stream");
    let three = Topology::from_settings(&nats_settings(&cluster, &prefix, 3));
    broker::ensure_streams(&js, &three)
        .await
        .expect("ensure_streams");
    for source in Source::ALL {
        let name = three.stream_name(source);
        let info = stream_info(&js, &name).await;
        assert_eq!(info.config.num_replicas, 3, "{name}");
        let leader = settled_leader(&js, &name).await;
        assert!(NODES.contains(&leader.as_str()), "{name}: {leader}");
        assert_eq!(
            nats_cluster::stream_leader(&cluster.admin_url, &name)
                .await
                .expect("stream leader"),
            leader
        );
    }
    // More replicas than nodes: an existing stream keeps its three (a warning says why); a new
    // one is refused.
    let five = Topology::from_settings(&nats_settings(&cluster, &prefix, 5));
    broker::ensure_stream(&js, &five, Source::Order)
        .await
        .expect("the existing stream is kept");
    let order = stream_info(&js, &three.stream_name(Source::Order)).await;
    assert_eq!(order.config.num_replicas, 3);
    let other = Topology::from_settings(&nats_settings(&cluster, &format!("{prefix}x"), 5));
    assert!(broker::ensure_stream(&js, &other, Source::Order)
        .await
        .is_err());
    nats_cluster::stop(&guard.state).await.expect("stop");
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL the order stream's leader, start it again once a new leader is elected.
    KillLeader,
    /// SIGSTOP the order stream's leader for five seconds, then SIGCONT.
    PauseLeader,
}

/// Places [`ORDERS`] orders one after the other, counting them in `placed`.
async fn place_orders(system: &TestSystem, placed: &AtomicUsize) -> Vec<String> {
    let mut ids = Vec::with_capacity(ORDERS);
    for _ in 0..ORDERS {
        ids.push(system.accepted_order(USER, PRODUCT, 1).await);
        placed.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(ORDER_GAP).await;
    }
    ids
}

async fn until_placed(placed: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while placed.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "{n} orders not placed in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Strikes the order stream's leader once the first orders are in; returns the node it hit.
async fn strike(
    fault: Fault,
    state: &StateDir,
    cluster: &Cluster,
    stream: &str,
    placed: &AtomicUsize,
) -> String {
    until_placed(placed, FAULT_AFTER).await;
    let leader = nats_cluster::stream_leader(&cluster.admin_url, stream)
        .await
        .expect("the order stream's leader");
    match fault {
        Fault::KillLeader => {
            nats_cluster::kill_node(state, &leader)
                .await
                .expect("kill the leader");
            // The other two elect a new leader while orders keep coming.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match nats_cluster::stream_leader(&cluster.admin_url, stream).await {
                    Ok(new) if new != leader => break,
                    _ => assert!(Instant::now() < deadline, "no new leader within 30 s"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            nats_cluster::restart_node(state, &leader)
                .await
                .expect("restart the old leader");
        }
        Fault::PauseLeader => {
            nats_cluster::pause_node(state, &leader).expect("pause the leader");
            // The fault itself lasts five seconds; nothing is being waited for.
            tokio::time::sleep(Duration::from_secs(5)).await;
            nats_cluster::resume_node(state, &leader).expect("resume the leader");
        }
    }
    nats_cluster::wait_cluster_ready(state, Duration::from_secs(60))
        .await
        .expect("the cluster is whole again");
    leader
}

/// Polls until no order is open and every outbox is empty.
async fn until_drained(system: &TestSystem) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let open = TestSystem::count(
            &system.order.pool,
            "SELECT count(*) FROM orders WHERE status NOT IN ('COMPLETED', 'FAILED')",
        )
        .await;
        let mut outbox = 0;
        for service in [&system.order, &system.inventory, &system.payment] {
            outbox += TestSystem::count(&service.pool, "SELECT count(*) FROM outbox").await;
        }
        if open == 0 && outbox == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not drained within 180 s: {open} orders open, {outbox} outbox rows"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn failing(checks: &[Check]) -> Vec<&Check> {
    checks.iter().filter(|c| !c.passed).collect()
}

async fn the_pipeline_survives(fault: Fault, tag: &str) {
    let (guard, cluster) = start_cluster(tag).await;
    let system = TestSystem::start(Options {
        workers: true,
        nats_url: Some(cluster.admin_url.clone()),
        extra: "[nats]\nstream_replicas = 3\n",
        ..Options::default()
    })
    .await;
    system.create_product(PRODUCT, 100, STOCK).await;
    system.open_account(USER, 1_000_000_000).await;
    let stream = system.stream_name(Source::Order);
    let js = system.jetstream().await;

    // One order the whole way first: the streams and durable consumers exist, with three
    // replicas each (consumers follow their stream's).
    let first = system.accepted_order(USER, PRODUCT, 1).await;
    system
        .wait_for_status(USER, &first, "COMPLETED", Duration::from_secs(60))
        .await;
    settled_leader(&js, &stream).await;
    let consumer = js
        .get_stream(&stream)
        .await
        .expect("the order stream")
        .consumer_info(INVENTORY_ON_ORDERS)
        .await
        .expect("inventory's durable consumer")
        .clone();
    let replicas = consumer.cluster.map(|c| c.replicas.len());
    assert_eq!(replicas, Some(2), "the consumer has two more copies");

    let placed = AtomicUsize::new(0);
    let (ids, struck) = tokio::join!(
        place_orders(&system, &placed),
        strike(fault, &guard.state, &cluster, &stream, &placed)
    );
    eprintln!("{fault:?} hit {struck}; {} orders placed", ids.len());
    until_drained(&system).await;

    let completed = TestSystem::count(
        &system.order.pool,
        "SELECT count(*) FROM orders WHERE status = 'COMPLETED'",
    )
    .await;
    assert_eq!(completed, ORDERS as i64 + 1, "every order completed");
    assert_eq!(system.stock(PRODUCT).await, STOCK - completed);
    let dbs = Databases {
        orders: system.order.pool.clone(),
        inventory: system.inventory.pool.clone(),
        payments: system.payment.pool.clone(),
    };
    let checks = audit(&dbs, None).await.expect("audit");
    for check in &checks {
        eprintln!("{check}");
    }
    assert!(failing(&checks).is_empty(), "{:#?}", failing(&checks));
    drop(system);
    nats_cluster::stop(&guard.state).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipeline_survives_the_order_stream_leaders_death() {
    the_pipeline_survives(Fault::KillLeader, "kill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipeline_survives_a_paused_order_stream_leader() {
    the_pipeline_survives(Fault::PauseLeader, "pause").await;
}

/// Removes a hosts network when dropped (a panic included); the nodes' guard, declared after
/// it, is dropped first.
struct NetworkGuard(HostNetwork);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let net = self.0.clone();
        // Drop cannot await: the removal gets a runtime of its own on a thread of its own.
        let removed = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .expect("a runtime")
                .block_on(net.destroy())
        })
        .join();
        if !matches!(removed, Ok(Ok(()))) {
            eprintln!("removing the test's hosts network failed: {removed:?}");
        }
    }
}

#[tokio::test]
async fn a_cluster_on_hosts_of_its_own_elects_a_new_leader_when_one_dies() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the hosts network needs root"
    );
    let net = NetworkGuard(HostNetwork::plan("tnc", 251, &NODES).expect("plan"));
    net.0.create().await.expect("create the network");
    let dir = std::env::temp_dir().join(format!("ordersys-cluster-hosts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let guard = ClusterGuard {
        state: StateDir::at(&dir).expect("state directory"),
    };
    let nodes: Vec<NodeSpec> = net
        .0
        .hosts
        .iter()
        .map(|h| NodeSpec::on_host(&h.name, h.addr, &h.netns))
        .collect();
    let cluster = nats_cluster::start(&guard.state, &nodes)
        .await
        .expect("the cluster starts on its hosts");
    assert!(
        cluster.admin_url.contains("10.213.251.10:4222"),
        "{}",
        cluster.admin_url
    );

    let prefix = format!("h{}", std::process::id());
    let client = broker::connect(&nats_settings(&cluster, &prefix, 3))
        .await
        .expect("the workstation reaches the cluster");
    let js = broker::jetstream(client);
    let topology = Topology::from_settings(&nats_settings(&cluster, &prefix, 3));
    broker::ensure_stream(&js, &topology, Source::Order)
        .await
        .expect("an R3 stream");
    let stream = topology.stream_name(Source::Order);
    let leader = settled_leader(&js, &stream).await;
    nats_cluster::kill_node(&guard.state, &leader)
        .await
        .expect("kill the leader");
    let deadline = Instant::now() + Duration::from_secs(30);
    let successor = loop {
        match nats_cluster::stream_leader(&cluster.admin_url, &stream).await {
            Ok(new) if new != leader => break new,
            _ => assert!(Instant::now() < deadline, "no new leader within 30 s"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{leader} killed, {successor} leads {stream}");
    nats_cluster::restart_node(&guard.state, &leader)
        .await
        .expect("restart the old leader");
    nats_cluster::wait_cluster_ready(&guard.state, Duration::from_secs(60))
        .await
        .expect("the cluster is whole again");
    let back = settled_leader(&js, &stream).await;
    assert!(NODES.contains(&back.as_str()), "{back}");
    nats_cluster::stop(&guard.state).await.expect("stop");
}
