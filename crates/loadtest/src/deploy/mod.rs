//! The system as the CLI deploys it: database names, ports, credentials and the three services
//! started against our infrastructure.
//!
//! Whoever starts the services (`loadtest up` or `loadtest run`) writes the credentials in use to
//! `<state>/credentials.env` (shell syntax), so `loadtest token`, `loadtest seed` and a k6 script
//! can sign tokens the running services accept.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use platform::broker::Topology;
use platform::events::Source;

use crate::infra::{self, StateDir};
use services::ServiceSpec;

pub mod admin;
pub mod services;

pub const ORDERS_DB: &str = "ordersys_orders";
pub const INVENTORY_DB: &str = "ordersys_inventory";
pub const PAYMENTS_DB: &str = "ordersys_payments";

pub const ORDER_PORT: u16 = platform::dev::ORDER_PORT;
pub const INVENTORY_PORT: u16 = platform::dev::INVENTORY_PORT;
pub const PAYMENT_PORT: u16 = platform::dev::PAYMENT_PORT;

/// The services' built-in development credentials.
pub const DEV_JWT_SECRET: &str = platform::dev::JWT_SECRET;
pub const DEV_ADMIN_TOKEN: &str = platform::dev::ADMIN_TOKEN;
/// The subject and stream prefix `up` uses.
pub const DEFAULT_PREFIX: &str = "shop";
/// The decline rate `up` uses unless `ORDERSYS_DECLINE_RATE` says otherwise.
pub const DEFAULT_DECLINE_RATE: f64 = 0.05;

/// The three services: (instance name = binary name, port).
pub const SERVICES: [(&str, u16); 3] = [
    ("order-service", ORDER_PORT),
    ("inventory-service", INVENTORY_PORT),
    ("payment-service", PAYMENT_PORT),
];

pub fn base_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
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

/// The secret signing buyers' tokens and the admin bearer token of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub jwt_secret: String,
    pub admin_token: String,
}

impl Credentials {
    /// The development defaults, overridable by `ORDERSYS_JWT_SECRET` / `ORDERSYS_ADMIN_TOKEN`.
    pub fn dev() -> Credentials {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        Credentials {
            jwt_secret: var("ORDERSYS_JWT_SECRET", DEV_JWT_SECRET),
            admin_token: var("ORDERSYS_ADMIN_TOKEN", DEV_ADMIN_TOKEN),
        }
    }

    /// Fresh random values, for one load-test run.
    pub fn random() -> Credentials {
        Credentials {
            jwt_secret: format!("run-secret-{}", uuid::Uuid::new_v4().simple()),
            admin_token: format!("run-admin-{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

/// Where the three services' databases are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseUrls {
    pub orders: String,
    pub inventory: String,
    pub payments: String,
}

impl DatabaseUrls {
    /// The URLs of our three databases on the server of `admin_url` (nothing is created).
    pub fn on(admin_url: &str) -> DatabaseUrls {
        DatabaseUrls {
            orders: infra::database_url(admin_url, ORDERS_DB),
            inventory: infra::database_url(admin_url, INVENTORY_DB),
            payments: infra::database_url(admin_url, PAYMENTS_DB),
        }
    }
}

/// The admin URL of the stack's PostgreSQL without starting anything: `ORDERSYS_DATABASE_URL`,
/// else our own instance on `ORDERSYS_PG_PORT` (default 55432).
pub fn default_admin_url() -> String {
    let options = infra::InfraOptions::default();
    options
        .database_url
        .unwrap_or_else(|| format!("postgres://postgres@127.0.0.1:{}/postgres", options.pg_port))
}

/// Creates the three databases; with `fresh`, drops them first so nothing of an earlier run
/// remains.
pub async fn prepare_databases(admin_url: &str, fresh: bool) -> Result<DatabaseUrls> {
    for name in [ORDERS_DB, INVENTORY_DB, PAYMENTS_DB] {
        if fresh {
            infra::drop_database(admin_url, name)
                .await
                .with_context(|| format!("dropping database {name}"))?;
        }
        infra::create_database(admin_url, name)
            .await
            .with_context(|| format!("creating database {name}"))?;
    }
    Ok(DatabaseUrls::on(admin_url))
}

/// Everything the three services are started with.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub databases: DatabaseUrls,
    pub nats_url: String,
    pub prefix: String,
    pub credentials: Credentials,
    pub decline_rate: f64,
}

/// Errors unless the three service binaries exist.
pub fn check_binaries() -> Result<()> {
    let missing: Vec<String> = SERVICES
        .iter()
        .map(|(name, _)| services::service_binary(name))
        .filter(|path| !infra::process::is_executable(path))
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

/// How many instances of each service to run, and extra environment for all of them.
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

/// The HTTP port of replica `replica` (1-based) of the service whose first port is `base`.
pub fn instance_port(base: u16, replica: u32) -> u16 {
    base + 10 * (replica.max(1) - 1) as u16
}

/// `http://127.0.0.1:<port>/orders` of every order-service replica, replica 1 first.
pub fn order_urls(replicas: u32) -> Vec<String> {
    (1..=replicas.max(1))
        .map(|r| format!("{}/orders", base_url(instance_port(ORDER_PORT, r))))
        .collect()
}

/// What every instance is started with: replica 1 of each service in [`SERVICES`] order, then
/// replica 2 of each, and so on.
pub fn instance_specs(deployment: &Deployment, replication: &Replication) -> Vec<ServiceSpec> {
    let replicas = replication.replicas.clamp(1, MAX_REPLICAS);
    (1..=replicas)
        .flat_map(|replica| {
            SERVICES
                .iter()
                .map(move |&(name, port)| (replica, name, port))
        })
        .map(|(replica, name, base_port)| {
            let port = instance_port(base_port, replica);
            let database = match name {
                "order-service" => &deployment.databases.orders,
                "inventory-service" => &deployment.databases.inventory,
                _ => &deployment.databases.payments,
            };
            let mut env = vec![
                ("APP_HTTP__PORT".to_string(), port.to_string()),
                ("APP_HTTP__ADMIN_PORT".to_string(), admin_port(port).to_string()),
                ("APP_DATABASE__URL".to_string(), database.clone()),
                ("APP_NATS__URL".to_string(), deployment.nats_url.clone()),
                ("APP_NATS__PREFIX".to_string(), deployment.prefix.clone()),
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
            if name == "payment-service" {
                env.push((
                    "APP_PAYMENT__DECLINE_RATE".to_string(),
                    deployment.decline_rate.to_string(),
                ));
            }
            env.extend(replication.extra_env.iter().cloned());
            ServiceSpec {
                name: instance_name(name, replica, replicas),
                binary: services::service_binary(name),
                env,
                port,
                admin_port: Some(admin_port(port)),
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
    write_credentials(state, deployment)?;
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
    infra::process::remove_file_if_exists(&credentials_file(state)).ok();
    result
}

pub fn credentials_file(state: &StateDir) -> PathBuf {
    state.path().join("credentials.env")
}

fn write_credentials(state: &StateDir, deployment: &Deployment) -> Result<()> {
    let text = format!(
        "# Written by `loadtest` when it started the services; source it with `set -a; . {}`.\n\
         ORDERSYS_JWT_SECRET={}\nORDERSYS_ADMIN_TOKEN={}\nORDERSYS_NATS_PREFIX={}\n\
         ORDERSYS_ORDER_URL={}\nORDERSYS_INVENTORY_URL={}\nORDERSYS_PAYMENT_URL={}\n",
        credentials_file(state).display(),
        deployment.credentials.jwt_secret,
        deployment.credentials.admin_token,
        deployment.prefix,
        base_url(ORDER_PORT),
        base_url(INVENTORY_PORT),
        base_url(PAYMENT_PORT),
    );
    infra::process::write_atomic(&credentials_file(state), text.as_bytes())
}

/// The credentials of the running services (from `credentials.env`), or `None`.
pub fn read_credentials(state: &StateDir) -> Option<Credentials> {
    let text = std::fs::read_to_string(credentials_file(state)).ok()?;
    let value = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().to_string())
    };
    Some(Credentials {
        jwt_secret: value("ORDERSYS_JWT_SECRET")?,
        admin_token: value("ORDERSYS_ADMIN_TOKEN")?,
    })
}

/// The credentials to use against whatever runs now: the recorded ones, else the dev defaults.
pub fn current_credentials(state: &StateDir) -> Credentials {
    read_credentials(state).unwrap_or_else(Credentials::dev)
}

/// The NATS prefix recorded by whoever started the services.
pub fn recorded_prefix(state: &StateDir) -> Option<String> {
    let text = std::fs::read_to_string(credentials_file(state)).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("ORDERSYS_NATS_PREFIX="))
        .map(|v| v.trim().to_string())
}

/// After a load-test run: stops its services and deletes its streams (a run's prefix is its
/// own, see [`run_prefix`]; the `up` stack's streams are kept). Problems are warnings: the run's
/// result stands.
pub async fn finish_run(state: &StateDir, nats_url: &str) {
    let prefix = recorded_prefix(state);
    if let Err(e) = stop_services(state).await {
        eprintln!("warning: stopping the services: {e:#}");
    }
    if let Some(prefix) = prefix.filter(|p| p.starts_with("run")) {
        if let Err(e) = remove_streams(nats_url, &prefix).await {
            eprintln!("warning: deleting the run's streams: {e:#}");
        }
    }
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
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {nats_url}"))?;
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
    fn credentials_round_trip_through_the_file() {
        let dir = std::env::temp_dir().join(format!("ordersys-deploy-unit-{}", std::process::id()));
        let state = StateDir::at(&dir).expect("state dir");
        assert_eq!(read_credentials(&state), None);
        let deployment = Deployment {
            databases: DatabaseUrls::on("postgres://postgres@127.0.0.1:1/postgres"),
            nats_url: "nats://127.0.0.1:2".into(),
            prefix: "run42".into(),
            credentials: Credentials::random(),
            decline_rate: 0.1,
        };
        write_credentials(&state, &deployment).expect("written");
        assert_eq!(
            read_credentials(&state),
            Some(deployment.credentials.clone())
        );
        assert_eq!(recorded_prefix(&state).as_deref(), Some("run42"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn database_urls_share_the_server() {
        let urls = DatabaseUrls::on("postgres://postgres@127.0.0.1:55432/postgres");
        assert_eq!(
            urls.orders,
            "postgres://postgres@127.0.0.1:55432/ordersys_orders"
        );
        assert_eq!(
            urls.payments,
            "postgres://postgres@127.0.0.1:55432/ordersys_payments"
        );
    }
}
