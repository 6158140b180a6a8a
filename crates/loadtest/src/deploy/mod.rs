//! The system as the CLI deploys it: the three services (replicas, instance names, ports, each
//! one's environment) started on the stack, and their streams.
//!
//! Whoever starts the services (`loadtest up` or `loadtest run`) generates the deployment's
//! credentials (`stack::deployment::credentials`): each service gets its own PostgreSQL role and
//! NATS user. Those names, ports and databases are the stack's, re-exported here.

use anyhow::{bail, Context, Result};
use platform::broker::Topology;
use platform::events::Source;
use stack::StateDir;

use services::ServiceSpec;

pub mod admin;
pub mod services;

pub use stack::deployment::{
    base_url, credentials_file, database_role, default_admin_url, nats_user, nats_users,
    prepare_databases, recorded_credentials, recorded_prefix, Credentials, DatabaseUrls,
    AUDIT_ROLE, INVENTORY_DB, INVENTORY_PORT, ORDERS_DB, ORDER_PORT, PAYMENTS_DB, PAYMENT_PORT,
    SERVICES,
};

/// The subject and stream prefix `up` uses.
pub const DEFAULT_PREFIX: &str = "shop";
/// The decline rate `up` uses unless `ORDERSYS_DECLINE_RATE` says otherwise.
pub const DEFAULT_DECLINE_RATE: f64 = 0.05;

/// An HTTP client for the services that keeps idle connections 4 s, below the services' idle
/// connection close (their header read timeout, 10 s by default): a request sent on a pooled
/// connection the server is just closing fails, and a POST or PUT cannot be retried.
pub fn http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(std::time::Duration::from_secs(4))
}

/// The admin listener's port (`/metrics`, `/admin/*`) of the instance whose public port is
/// `port`: the services' default, public port + 1000 (order 19080, inventory 19081, payment
/// 19082; replicas 19090, …), which the CLI also passes explicitly.
pub fn admin_port(port: u16) -> u16 {
    port + platform::config::HttpSettings::ADMIN_PORT_OFFSET
}

/// `http://127.0.0.1:<admin port>` of the instance whose public port is `port`.
pub fn admin_url(port: u16) -> String {
    base_url(admin_port(port))
}

/// Everything the three services are started with.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The URLs each service logs in with (its own role).
    pub databases: DatabaseUrls,
    /// The NATS server, as the CLI reaches it (with the administrator's credentials, if any).
    pub nats_url: String,
    /// Whether the NATS server is ours, so each service gets its own restricted user on it;
    /// otherwise the services use `nats_url` as it is.
    pub nats_users: bool,
    pub prefix: String,
    pub credentials: Credentials,
    pub decline_rate: f64,
    /// The hosts topology: every instance on the host named after it (else all on 127.0.0.1).
    pub placement: Option<stack::netns::HostNetwork>,
    /// Replicas of each stream the services create (3 on a three-node cluster).
    pub stream_replicas: u32,
}

/// Errors unless the three service binaries exist.
pub fn check_binaries() -> Result<()> {
    let missing: Vec<String> = SERVICES
        .iter()
        .map(|(name, _)| services::service_binary(name))
        .filter(|path| !stack::process::is_executable(path))
        .map(|path| path.display().to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "service binaries missing: {}; build them with this loadtest, in the same profile \
             (`cargo build --release --workspace --bins`, or `make build`)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Starts the three services (in parallel) and waits until each answers `/ready`; returns
/// (name, pid) in [`SERVICES`] order. Records the deployment's credentials for `token`.
pub async fn start_services(
    state: &StateDir,
    deployment: &Deployment,
) -> Result<Vec<(String, u32)>> {
    start_instances(state, deployment, &Replication::default()).await
}

/// The most instances of one service a run may start (ports `base + 10 × (replica − 1)`).
pub const MAX_REPLICAS: u32 = 8;

/// How many instances of each service to run, and extra environment for all of them (but the
/// order service's own sections, [`ORDER_SECTIONS`], for it alone: a service refuses a
/// setting it does not have).
///
/// With one replica the instances are named after their service (`order-service`) on the base
/// ports; with more, `order-service-1`, `order-service-2`, … on ports base, base + 10, … (order
/// 18080, 18090; inventory 18081, 18091; payment 18082, 18092). Replicas of a service share its
/// database and its durable consumer names, so they share the work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    pub replicas: u32,
    pub extra_env: Vec<(String, String)>,
}

/// The variables of the order service's own settings sections.
pub const ORDER_SECTIONS: [&str; 3] = ["APP_ORDERS__", "APP_FAIR_USE__", "APP_REDRIVE__"];

impl Default for Replication {
    fn default() -> Self {
        Replication {
            replicas: 1,
            extra_env: Vec::new(),
        }
    }
}

/// The instance name (pidfile and log name) of `service`'s replica `replica` (1-based).
pub fn instance_name(service: &str, replica: u32, replicas: u32) -> String {
    if replicas <= 1 {
        service.to_string()
    } else {
        format!("{service}-{replica}")
    }
}

/// The instance names of a deployment with `replicas` of each service, in start order.
pub fn instance_names(replicas: u32) -> Vec<String> {
    let replicas = replicas.clamp(1, MAX_REPLICAS);
    (1..=replicas)
        .flat_map(|r| {
            SERVICES
                .iter()
                .map(move |(s, _)| instance_name(s, r, replicas))
        })
        .collect()
}

/// The HTTP port of replica `replica` (1-based) of the service whose first port is `base`.
pub fn instance_port(base: u16, replica: u32) -> u16 {
    base + 10 * (replica.max(1) - 1) as u16
}

/// Whether `spec` is an instance of `service` ("order-service", "order-service-2", …).
pub fn is_instance_of(spec: &ServiceSpec, service: &str) -> bool {
    spec.name
        .strip_prefix(service)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// `<base URL>/orders` of every order-service instance of `specs`, replica 1 first.
pub fn order_urls(specs: &[ServiceSpec]) -> Vec<String> {
    specs
        .iter()
        .filter(|s| is_instance_of(s, "order-service"))
        .map(|s| format!("{}/orders", s.base_url()))
        .collect()
}

/// The base URL of the first instance of `service` in `specs`.
pub fn first_url(specs: &[ServiceSpec], service: &str) -> Result<String> {
    specs
        .iter()
        .find(|s| is_instance_of(s, service))
        .map(ServiceSpec::base_url)
        .with_context(|| format!("no instance of {service} is deployed"))
}

/// What every instance is started with: replica 1 of each service in [`SERVICES`] order, then
/// replica 2 of each, and so on.
pub fn instance_specs(deployment: &Deployment, replication: &Replication) -> Vec<ServiceSpec> {
    let replicas = replication.replicas.clamp(1, MAX_REPLICAS);
    // With users of their own, the services get the server's address without ours.
    let nats_url = if deployment.nats_users {
        without_credentials(&deployment.nats_url)
    } else {
        deployment.nats_url.clone()
    };
    (1..=replicas)
        .flat_map(|replica| {
            SERVICES
                .iter()
                .map(move |&(name, port)| (replica, name, port))
        })
        .map(|(replica, name, base_port)| {
            let port = instance_port(base_port, replica);
            let instance = instance_name(name, replica, replicas);
            let host = deployment
                .placement
                .as_ref()
                .and_then(|net| net.host(&instance));
            let database = match name {
                "order-service" => &deployment.databases.orders,
                "inventory-service" => &deployment.databases.inventory,
                _ => &deployment.databases.payments,
            };
            let mut env = vec![
                ("APP_HTTP__PORT".to_string(), port.to_string()),
                (
                    "APP_HTTP__ADMIN_PORT".to_string(),
                    admin_port(port).to_string(),
                ),
                ("APP_DATABASE__URL".to_string(), database.clone()),
                ("APP_NATS__URL".to_string(), nats_url.clone()),
                ("APP_NATS__PREFIX".to_string(), deployment.prefix.clone()),
                (
                    "APP_NATS__STREAM_REPLICAS".to_string(),
                    deployment.stream_replicas.max(1).to_string(),
                ),
                (
                    "APP_AUTH__JWT_SECRET".to_string(),
                    deployment.credentials.jwt_secret.clone(),
                ),
                (
                    "APP_AUTH__ADMIN_TOKEN".to_string(),
                    deployment.credentials.admin_token.clone(),
                ),
                (
                    "RUST_LOG".to_string(),
                    std::env::var("ORDERSYS_SERVICE_LOG").unwrap_or_else(|_| "info".into()),
                ),
            ];
            if deployment.nats_users {
                env.push((
                    "APP_NATS__USER".to_string(),
                    nats_user(&deployment.prefix, name),
                ));
                env.push((
                    "APP_NATS__PASSWORD".to_string(),
                    deployment.credentials.nats_password(name).to_string(),
                ));
            }
            if name == "payment-service" {
                env.push((
                    "APP_PAYMENT__DECLINE_RATE".to_string(),
                    deployment.decline_rate.to_string(),
                ));
            }
            let address = host.map_or_else(|| "127.0.0.1".to_string(), |h| h.addr.to_string());
            if host.is_some() {
                // The admin listener defaults to loopback, which the CLI cannot reach in a host's
                // namespace: it is bound to the host's address explicitly.
                env.push(("APP_HTTP__HOST".to_string(), address.clone()));
                env.push(("APP_HTTP__ADMIN_HOST".to_string(), address.clone()));
            }
            env.extend(
                replication
                    .extra_env
                    .iter()
                    .filter(|(variable, _)| {
                        name == "order-service"
                            || !ORDER_SECTIONS.iter().any(|s| variable.starts_with(s))
                    })
                    .cloned(),
            );
            ServiceSpec {
                name: instance,
                binary: services::service_binary(name),
                env,
                host: address,
                port,
                admin_port: Some(admin_port(port)),
                netns: host.map(|h| h.netns.clone()),
            }
        })
        .collect()
}

/// Starts every instance of [`instance_specs`] and waits until each answers `/ready`: the
/// first replica of each service (in parallel) before the others, so database migrations,
/// streams and durable consumers are created once. Returns (instance name, pid) in that order.
pub async fn start_instances(
    state: &StateDir,
    deployment: &Deployment,
    replication: &Replication,
) -> Result<Vec<(String, u32)>> {
    check_binaries()?;
    if deployment.nats_users {
        stack::set_nats_users(
            state,
            &deployment.prefix,
            nats_users(&deployment.prefix, &deployment.credentials),
        )
        .await
        .context("creating the services' NATS users")?;
    }
    stack::deployment::write_credentials(state, &deployment.prefix, &deployment.credentials)?;
    let specs = instance_specs(deployment, replication);
    let (first, rest) = specs.split_at(SERVICES.len().min(specs.len()));
    let mut started = Vec::new();
    let mut errors = Vec::new();
    for group in [first, rest] {
        let pids = futures::future::join_all(
            group
                .iter()
                .map(|spec| services::start_service(state, spec)),
        )
        .await;
        for (spec, result) in group.iter().zip(pids) {
            match result {
                Ok(pid) => started.push((spec.name.clone(), pid)),
                Err(e) => errors.push(format!("{}: {e:#}", spec.name)),
            }
        }
        if !errors.is_empty() {
            // Leave nothing half-started behind.
            services::stop_all_services(state).await.ok();
            bail!("starting the services failed:\n{}", errors.join("\n"));
        }
    }
    Ok(started)
}

/// Stops every service of ours and forgets the credentials they ran with.
pub async fn stop_services(state: &StateDir) -> Result<()> {
    let result = services::stop_all_services(state).await;
    stack::process::remove_file_if_exists(&credentials_file(state)).ok();
    result
}

/// After a load-test run: stops its services and deletes its streams (a run's prefix is its
/// own, see [`run_prefix`]; the `up` stack's streams are kept). Problems are warnings: the run's
/// result stands.
pub async fn finish_run(state: &StateDir, infra: &stack::Infra) {
    let prefix = recorded_prefix(state);
    if let Err(e) = stop_services(state).await {
        eprintln!("warning: stopping the services: {e:#}");
    }
    if let Some(prefix) = prefix.filter(|p| p.starts_with("run")) {
        if let Err(e) = remove_streams(&infra.nats_url, &prefix).await {
            eprintln!("warning: deleting the run's streams: {e:#}");
        }
        if infra.manages_nats_users() {
            if let Err(e) = stack::set_nats_users(state, &prefix, Vec::new()).await {
                eprintln!("warning: removing the run's NATS users: {e:#}");
            }
        }
    }
}

/// `nats://user:password@host:port` → `nats://host:port`.
/// The URL (or each URL of a comma-separated list: a NATS cluster's nodes) without its
/// `user:password@`.
fn without_credentials(url: &str) -> String {
    url.split(',')
        .map(|one| without_credentials_one(one.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

fn without_credentials_one(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{host}")
        }
        None => url
            .rsplit_once('@')
            .map_or(url, |(_, host)| host)
            .to_string(),
    }
}

/// One line per stream of `prefix`: its replicas and where they are, as the cluster reports
/// them (so a run shows that its streams really have the copies it asked for).
pub async fn describe_streams(nats_url: &str, prefix: &str) -> Result<Vec<String>> {
    let client = platform::broker::connect_url(nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let mut lines = Vec::new();
    for name in stream_names(prefix) {
        let mut stream = js
            .get_stream(&name)
            .await
            .with_context(|| format!("stream {name}"))?;
        let info = stream
            .info()
            .await
            .with_context(|| format!("stream {name}"))?;
        let (leader, peers) = info.cluster.as_ref().map_or((None, Vec::new()), |c| {
            let peers = c
                .replicas
                .iter()
                .map(|r| format!("{}{}", r.name, if r.current { "" } else { " (behind)" }))
                .collect();
            (c.leader.clone(), peers)
        });
        lines.push(format!(
            "{name}: {} replica(s), leader {}, followers [{}]",
            info.config.num_replicas,
            leader.unwrap_or_else(|| "none".into()),
            peers.join(", ")
        ));
    }
    Ok(lines)
}

/// The three stream names of a prefix (`<PREFIX>_ORDER`, …).
pub fn stream_names(prefix: &str) -> Vec<String> {
    let topology = Topology::new(prefix);
    Source::ALL
        .iter()
        .map(|&source| topology.stream_name(source))
        .collect()
}

/// Deletes the streams of a prefix with their durable consumers: a run's once it is over
/// (JetStream reserves each stream's `max_bytes` on the server, and a run's messages are of no
/// use afterwards), or `up --fresh`'s, whose consumers would otherwise replay every old event
/// into the fresh databases. Returns how many streams were deleted.
pub async fn remove_streams(nats_url: &str, prefix: &str) -> Result<usize> {
    let client = platform::broker::connect_url(nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", stack::redact(nats_url)))?;
    let js = async_nats::jetstream::new(client);
    let mut deleted = 0;
    for name in stream_names(prefix) {
        if js.delete_stream(&name).await.is_ok() {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// The NATS durability setting of the server we started, for the report.
pub fn nats_durability(state: &StateDir) -> String {
    if std::env::var("ORDERSYS_NATS_URL").is_ok_and(|v| !v.trim().is_empty()) {
        return "external NATS (sync setting unknown)".to_string();
    }
    std::fs::read_to_string(state.path().join("nats/nats.conf"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.trim_start().starts_with("sync_interval"))
                .map(|l| format!("NATS JetStream file store {}", l.trim()))
        })
        .unwrap_or_else(|| "NATS sync setting unknown".to_string())
}

/// A prefix unique to this run: `run` + unix seconds (only `[a-z0-9_]`).
pub fn run_prefix() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("run{seconds}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_uppercased_per_source() {
        assert_eq!(
            stream_names("run123"),
            vec!["RUN123_ORDER", "RUN123_INVENTORY", "RUN123_PAYMENT"]
        );
    }

    #[test]
    fn run_prefix_is_a_valid_subject_token() {
        let prefix = run_prefix();
        assert!(prefix.starts_with("run"));
        assert!(prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }

    #[test]
    fn services_get_the_server_without_the_administrators_credentials() {
        assert_eq!(
            without_credentials("nats://ordersys-admin:pw@127.0.0.1:54222"),
            "nats://127.0.0.1:54222"
        );
        assert_eq!(
            without_credentials("nats://127.0.0.1:1"),
            "nats://127.0.0.1:1"
        );
        assert_eq!(
            without_credentials("nats://a:pw@10.0.0.1:4222,nats://a:pw@10.0.0.2:4222"),
            "nats://10.0.0.1:4222,nats://10.0.0.2:4222"
        );
        let deployment = Deployment {
            databases: DatabaseUrls::on("postgres://postgres@127.0.0.1:1/postgres"),
            nats_url: "nats://ordersys-admin:pw@127.0.0.1:2".into(),
            nats_users: true,
            prefix: "run42".into(),
            credentials: Credentials::random(),
            decline_rate: 0.1,
            placement: None,
            stream_replicas: 1,
        };
        let specs = instance_specs(&deployment, &Replication::default());
        let env = |spec: &ServiceSpec, key: &str| {
            spec.env
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            env(&specs[1], "APP_NATS__URL").as_deref(),
            Some("nats://127.0.0.1:2")
        );
        assert_eq!(
            env(&specs[1], "APP_NATS__USER").as_deref(),
            Some("run42-inventory")
        );
        assert_eq!(
            env(&specs[1], "APP_NATS__PASSWORD").as_deref(),
            Some(deployment.credentials.nats_password("inventory-service"))
        );
    }

    /// On a host of its own, an instance's admin listener (which defaults to loopback) is bound
    /// to the host's address, where the CLI reaches it (`ServiceSpec::admin_url`).
    #[test]
    fn on_hosts_of_their_own_both_listeners_are_on_the_hosts_address() {
        let network = stack::netns::HostNetwork::plan(
            "t",
            1,
            &["order-service", "inventory-service", "payment-service"],
        )
        .expect("a network plan");
        let deployment = Deployment {
            databases: DatabaseUrls::on("postgres://postgres@10.213.1.20:5432/postgres"),
            nats_url: "nats://10.213.1.21:4222".into(),
            nats_users: false,
            prefix: "run42".into(),
            credentials: Credentials::random(),
            decline_rate: 0.0,
            placement: Some(network.clone()),
            stream_replicas: 1,
        };
        let specs = instance_specs(&deployment, &Replication::default());
        assert_eq!(specs.len(), 3);
        for spec in &specs {
            let env = |key: &str| {
                spec.env
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            };
            let address = network.host(&spec.name).expect("its host").addr.to_string();
            assert_eq!(env("APP_HTTP__HOST").as_deref(), Some(address.as_str()));
            assert_eq!(
                env("APP_HTTP__ADMIN_HOST").as_deref(),
                Some(address.as_str()),
                "{}",
                spec.name
            );
            assert!(spec.admin_url().starts_with(&format!("http://{address}:")));
        }
    }
}
