//! The stack the system runs on, brought up on this machine: install what is missing, start
//! private PostgreSQL and NATS instances (or a NATS cluster, or hosts in network namespaces) as
//! detached background processes, give them TLS, roles and databases, and stop exactly what we
//! started, by PID. `deployment` holds what a deployment needs before its services start (their
//! databases, NATS users and credentials). The load-test CLI starts the services on it
//! (`loadtest::deploy`); the system tests find (or start) their PostgreSQL and NATS here.
//!
//! Layout of the state directory (default `<workspace>/.run`, overridden by
//! `ORDERSYS_STATE_DIR`):
//!
//! ```text
//! .run/
//!   lock                    flock held while infrastructure starts/stops
//!   logs/<name>.log         stdout+stderr of everything we start
//!   pids/<name>.pid         pidfiles (pid=, binary=, port=)
//!   postgres.json, nats.json  how our instances were configured (for restarts)
//!   pg/data, pg/socket      PostgreSQL cluster (or /tmp/ordersys-<hash>/pg when
//!                           the postgres user cannot traverse into .run)
//!   nats/nats.conf, nats/jetstream
//! ```

pub mod deployment;
pub mod hosts;
mod nats;
pub mod nats_cluster;
mod nats_users;
pub mod netns;
pub mod otlp;
mod pg_databases;
mod pg_roles;
mod pg_settings;
mod postgres;
pub mod process;
pub mod run_lock;
pub mod tls;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PG_PORT: u16 = platform::dev::POSTGRES_PORT;
pub const DEFAULT_NATS_PORT: u16 = platform::dev::NATS_PORT;
pub const DEFAULT_NATS_MONITOR_PORT: u16 = platform::dev::NATS_MONITOR_PORT;

/// How long infrastructure start/stop waits for another CLI holding the lock
/// (an install of PostgreSQL can take a while).
const LOCK_TIMEOUT: Duration = Duration::from_secs(900);

/// The directory holding pidfiles, logs, configs and data of what we start.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// `ORDERSYS_STATE_DIR` if set, else `<workspace root>/.run`; created if missing.
    pub fn locate() -> Result<StateDir> {
        match std::env::var_os("ORDERSYS_STATE_DIR") {
            Some(dir) if !dir.is_empty() => StateDir::at(PathBuf::from(dir)),
            _ => StateDir::at(workspace_root()?.join(".run")),
        }
    }

    /// A state directory at an explicit path (created if missing, made absolute).
    pub fn at(path: impl Into<PathBuf>) -> Result<StateDir> {
        let path = path.into();
        let path = if path.is_absolute() {
            path
        } else {
            std::env::current_dir()
                .context("reading the current directory")?
                .join(path)
        };
        for dir in [path.clone(), path.join("logs"), path.join("pids")] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating state directory {}", dir.display()))?;
        }
        Ok(StateDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.path.join("logs")
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{name}.log"))
    }

    pub fn pids_dir(&self) -> PathBuf {
        self.path.join("pids")
    }

    pub fn pid_file(&self, name: &str) -> PathBuf {
        self.pids_dir().join(format!("{name}.pid"))
    }

    fn lock_file(&self) -> PathBuf {
        self.path.join("lock")
    }

    async fn lock(&self) -> Result<process::FileLock> {
        process::FileLock::acquire(
            &self.lock_file(),
            LOCK_TIMEOUT,
            "another loadtest is starting or stopping the stack",
        )
        .await
    }
}

/// The workspace root: the directory with the `[workspace]` Cargo.toml. The
/// one this crate was compiled in is preferred; else walk up from the cwd.
pub fn workspace_root() -> Result<PathBuf> {
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(root) = compiled.ancestors().find(|d| is_workspace_root(d)) {
        return Ok(root.to_path_buf());
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    if let Some(root) = cwd.ancestors().find(|d| is_workspace_root(d)) {
        return Ok(root.to_path_buf());
    }
    bail!(
        "cannot find the workspace root (a Cargo.toml with [workspace]) above {} or {}; set ORDERSYS_STATE_DIR",
        compiled.display(),
        cwd.display()
    )
}

fn is_workspace_root(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .map(|t| t.lines().any(|l| l.trim() == "[workspace]"))
        .unwrap_or(false)
}

/// Where the infrastructure is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Infra {
    /// URL of the `postgres` database as a superuser; create per-run databases from it.
    pub admin_database_url: String,
    pub nats_url: String,
    /// `http://127.0.0.1:<port>` of NATS monitoring, when we run NATS ourselves (then we also
    /// manage its users: [`set_nats_users`]).
    pub nats_monitor_url: Option<String>,
}

impl Infra {
    /// Whether the NATS server is ours, so that deployments get users of their own on it.
    pub fn manages_nats_users(&self) -> bool {
        self.nats_monitor_url.is_some()
    }
}

/// Ports of our private instances, or existing servers to use instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfraOptions {
    pub pg_port: u16,
    pub nats_port: u16,
    pub nats_monitor_port: u16,
    /// An existing PostgreSQL (admin URL): then we start none and only create databases there.
    pub database_url: Option<String>,
    /// An existing NATS server: then we start none.
    pub nats_url: Option<String>,
}

impl Default for InfraOptions {
    /// From `ORDERSYS_PG_PORT`, `ORDERSYS_NATS_PORT`, `ORDERSYS_NATS_MONITOR_PORT`,
    /// `ORDERSYS_DATABASE_URL`, `ORDERSYS_NATS_URL`; else 55432/54222/58222, our own servers.
    fn default() -> Self {
        fn port(var: &str, default: u16) -> u16 {
            std::env::var(var)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        }
        fn url(var: &str) -> Option<String> {
            std::env::var(var).ok().filter(|v| !v.trim().is_empty())
        }
        InfraOptions {
            pg_port: port("ORDERSYS_PG_PORT", DEFAULT_PG_PORT),
            nats_port: port("ORDERSYS_NATS_PORT", DEFAULT_NATS_PORT),
            nats_monitor_port: port("ORDERSYS_NATS_MONITOR_PORT", DEFAULT_NATS_MONITOR_PORT),
            database_url: url("ORDERSYS_DATABASE_URL"),
            nats_url: url("ORDERSYS_NATS_URL"),
        }
    }
}

/// Install what is missing and start what is not running, with [`InfraOptions::default`].
pub async fn ensure_infra(state: &StateDir) -> Result<Infra> {
    ensure_infra_with(state, &InfraOptions::default()).await
}

/// Install what is missing and start what is not running; reuses our running instances.
pub async fn ensure_infra_with(state: &StateDir, opts: &InfraOptions) -> Result<Infra> {
    let _lock = state.lock().await?;
    let admin_database_url = match &opts.database_url {
        Some(url) => {
            postgres::check_connect(url)
                .await
                .with_context(|| format!("connecting to ORDERSYS_DATABASE_URL {}", redact(url)))?;
            url.clone()
        }
        None => postgres::ensure(state, opts.pg_port).await?,
    };
    let (nats_url, nats_monitor_url) = match &opts.nats_url {
        Some(url) if !nats::is_ours(state, url) => (url.clone(), None),
        _ => {
            let (url, monitor) =
                nats::ensure(state, opts.nats_port, opts.nats_monitor_port).await?;
            (url, Some(monitor))
        }
    };
    Ok(Infra {
        admin_database_url,
        nats_url,
        nats_monitor_url,
    })
}

/// Stop our PostgreSQL and NATS (only those whose pidfiles we wrote). Services
/// are left alone (the load-test CLI stops them: `loadtest::deploy::services`).
pub async fn stop_infra(state: &StateDir) -> Result<()> {
    let _lock = state.lock().await?;
    let nats = nats::stop(state).await;
    let pg = postgres::stop(state, postgres::StopMode::Fast).await;
    nats.context("stopping NATS")?;
    pg.context("stopping PostgreSQL")?;
    Ok(())
}

pub use nats_users::NatsUser;

/// A NATS `authorization` block granting `users` (one deployment's), for a server we do not run.
pub fn nats_authorization_text(prefix: &str, users: &[NatsUser]) -> String {
    nats_users::deployment_authorization_text(prefix, users)
}

/// Gives deployment `prefix` exactly these users on our NATS server (an empty list removes
/// them), and waits until the server accepts them: on the NATS cluster of `state` when one was
/// set up there (`nats_cluster`), else on the single server.
pub async fn set_nats_users(state: &StateDir, prefix: &str, users: Vec<NatsUser>) -> Result<()> {
    if nats_cluster::is_recorded(state) {
        return nats_cluster::set_users(state, prefix, users).await;
    }
    nats::set_users(state, prefix, users).await
}

/// `CREATE DATABASE` unless it exists; returns the URL of that database.
pub async fn create_database(admin_url: &str, name: &str) -> Result<String> {
    pg_databases::create_database(admin_url, name).await?;
    Ok(database_url(admin_url, name))
}

/// Makes login role `role` (password `password`, no other rights) the owner of `database`
/// (created if missing) and the only non-superuser that may connect to it; returns the URL the
/// role connects with.
pub async fn provision_service_database(
    admin_url: &str,
    database: &str,
    role: &str,
    password: &str,
) -> Result<String> {
    pg_roles::provision_owner(admin_url, database, role, password).await?;
    Ok(database_url_as(admin_url, database, role, password))
}

/// Makes login role `role` a reader of every table of `databases` that can write nothing.
pub async fn provision_reader(
    admin_url: &str,
    role: &str,
    password: &str,
    databases: &[&str],
) -> Result<()> {
    pg_roles::provision_reader(admin_url, role, password, databases).await
}

/// `DROP DATABASE IF EXISTS ... WITH (FORCE)`.
pub async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    pg_databases::drop_database(admin_url, name).await
}

/// The URL of database `db` on the same server (and with the same credentials
/// and query parameters) as `admin_url`.
pub fn database_url(admin_url: &str, db: &str) -> String {
    let (scheme_end, rest) = match admin_url.find("://") {
        Some(i) => (i + 3, &admin_url[i + 3..]),
        None => (0, admin_url),
    };
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let after_authority = &rest[authority_len..];
    let suffix = match after_authority.find(['?', '#']) {
        Some(i) => &after_authority[i..],
        None => "",
    };
    format!(
        "{}{}/{}{}",
        &admin_url[..scheme_end],
        &rest[..authority_len],
        percent_encode_path(db),
        suffix
    )
}

/// The URL of database `db` on the server of `admin_url`, logging in as `user` with `password`.
pub fn database_url_as(admin_url: &str, db: &str, user: &str, password: &str) -> String {
    let url = database_url(admin_url, db);
    let Some((scheme, rest)) = url.split_once("://") else {
        return url;
    };
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!(
        "{scheme}://{}:{}@{host}",
        percent_encode_path(user),
        percent_encode_path(password)
    )
}

fn percent_encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A URL with its password replaced, for messages.
pub use platform::config::redact_url as redact;

/// The PID of `name` ("postgres", "nats", or a service name) if it is running
/// and still the process we started.
pub fn pid_of(state: &StateDir, name: &str) -> Option<u32> {
    if name == "postgres" {
        return postgres::running_pid(state);
    }
    process::PidFile::read(&state.pid_file(name))
        .filter(|p| p.is_running())
        .map(|p| p.pid)
}

/// Send a signal (SIGKILL, SIGSTOP, SIGCONT, ...) to one PID. Refuses PIDs 0
/// and 1 and our own. Prefer [`signal_named`], which checks the PID is ours.
pub fn signal_process(pid: u32, sig: i32) -> Result<()> {
    process::send_signal(pid, sig)
}

/// Send a signal to the running process we started under `name`; returns its PID.
pub fn signal_named(state: &StateDir, name: &str, sig: i32) -> Result<u32> {
    let Some(pid) = pid_of(state, name) else {
        bail!(
            "no running process of ours named {name:?} in {}",
            state.path().display()
        );
    };
    process::send_signal(pid, sig)?;
    Ok(pid)
}

/// SIGKILL our nats-server and wait until it is gone (the store stays).
pub async fn kill_nats(state: &StateDir) -> Result<()> {
    nats::kill(state).await
}

/// Start our nats-server again on the same config and store; waits for readiness.
pub async fn restart_nats(state: &StateDir) -> Result<()> {
    let _lock = state.lock().await?;
    nats::restart(state).await
}

/// Immediate shutdown of our PostgreSQL (SIGQUIT to the postmaster, as
/// `pg_ctl -m immediate stop`): no checkpoint, crash recovery at next start.
pub async fn stop_postgres_immediate(state: &StateDir) -> Result<()> {
    postgres::stop(state, postgres::StopMode::Immediate).await
}

/// Start our PostgreSQL again (same data directory and port) and wait until
/// it accepts connections. A no-op when it is running.
pub async fn start_postgres(state: &StateDir) -> Result<()> {
    let _lock = state.lock().await?;
    postgres::restart(state).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_as_replaces_the_login() {
        assert_eq!(
            database_url_as(
                "postgres://postgres:s@h:1/postgres?host=/s",
                "db",
                "r",
                "p w"
            ),
            "postgres://r:p%20w@h:1/db?host=/s"
        );
        assert_eq!(
            database_url_as("postgres://h:1/postgres", "db", "r", "p"),
            "postgres://r:p@h:1/db"
        );
    }

    #[test]
    fn database_url_replaces_path() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:55432/postgres", "run_1"),
            "postgres://postgres@127.0.0.1:55432/run_1"
        );
        assert_eq!(
            database_url("postgres://u:p%2Fw@h:5432", "orders"),
            "postgres://u:p%2Fw@h:5432/orders"
        );
        assert_eq!(
            database_url("postgresql://u@h/postgres?sslmode=disable&x=1", "db"),
            "postgresql://u@h/db?sslmode=disable&x=1"
        );
        assert_eq!(
            database_url("postgres://h:1/?application_name=a", "db"),
            "postgres://h:1/db?application_name=a"
        );
        assert_eq!(
            database_url("postgres://h:1/a/b#frag", "we ird"),
            "postgres://h:1/we%20ird#frag"
        );
    }

    #[test]
    fn redact_hides_password_only() {
        assert_eq!(
            redact("postgres://user:secret@h:5/db"),
            "postgres://user:***@h:5/db"
        );
        assert_eq!(redact("postgres://user@h:5/db"), "postgres://user@h:5/db");
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
    }

    #[test]
    fn state_dir_layout() {
        let dir =
            std::env::temp_dir().join(format!("ordersys-statedir-unit-{}", std::process::id()));
        let state = StateDir::at(&dir).expect("state dir");
        assert!(state.logs_dir().is_dir());
        assert!(state.pids_dir().is_dir());
        assert_eq!(state.log_file("nats"), dir.join("logs/nats.log"));
        assert_eq!(
            state.pid_file("order-service-2"),
            dir.join("pids/order-service-2.pid")
        );
        assert_eq!(pid_of(&state, "nothing"), None);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn workspace_root_has_workspace_manifest() {
        let root = workspace_root().expect("workspace root");
        assert!(root.join("crates/loadtest").is_dir());
    }
}
