//! Our private PostgreSQL: find (or apt-install) the server binaries (`install`), initdb a
//! cluster of our own (`cluster`), run the postmaster detached as the `postgres` user when
//! we are root, wait for it, stop it by PID.

mod cluster;
mod install;

use crate::process::{self, DetachedSpec, PidFile};
use crate::StateDir;
use anyhow::{bail, Context, Result};
use cluster::{choose_root, hba_text, initdb, prepare_root, write_hba, write_settings};
use install::{check_major_version, ensure_bins, server_user};
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(90);
const LOG_TAIL_LINES: usize = 30;

/// How our cluster was set up; persisted so restarts reuse the same cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct PgConfig {
    pub port: u16,
    /// Directory holding initdb, pg_ctl and postgres.
    pub bin_dir: PathBuf,
    /// Holds `data/` (PGDATA) and `socket/`.
    pub root: PathBuf,
    /// On a host of the hosts topology instead of 127.0.0.1.
    #[serde(default)]
    pub placement: Option<PgPlacement>,
}

/// Where a PostgreSQL of the hosts topology runs: inside its host's namespace, listening on the
/// host's address, taking clients (over TCP only) from the hosts' subnet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PgPlacement {
    pub addr: std::net::Ipv4Addr,
    pub netns: String,
    /// The clients' network, e.g. `10.213.1.0/24`.
    pub clients: String,
}

impl PgConfig {
    /// The address it listens on.
    fn listen(&self) -> String {
        self.placement
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_string(), |p| p.addr.to_string())
    }
    fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    fn socket_dir(&self) -> PathBuf {
        self.root.join("socket")
    }
    fn postgres_bin(&self) -> PathBuf {
        self.bin_dir.join("postgres")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopMode {
    /// SIGINT: abort sessions, checkpoint, exit (pg_ctl -m fast).
    Fast,
    /// SIGQUIT: exit without checkpoint; crash recovery at next start (pg_ctl -m immediate).
    Immediate,
}

pub(super) fn admin_url(port: u16, password: &str) -> String {
    admin_url_at("127.0.0.1", port, password)
}

fn admin_url_at(host: &str, port: u16, password: &str) -> String {
    format!("postgres://postgres:{password}@{host}:{port}/postgres")
}

/// The admin URL clients should use: the unix socket when the server has one (a round trip over
/// it costs the kernel much less than one over loopback TCP — measured in docs/performance.md),
/// else TCP. On a host of the hosts topology always TCP: clients cross the network.
fn client_url(cfg: &PgConfig, password: &str) -> String {
    if cfg.placement.is_some() {
        return admin_url_at(&cfg.listen(), cfg.port, password);
    }
    match socket_path(cfg) {
        Some(dir) if dir.to_str().is_some_and(is_plain_path) => format!(
            "postgres://postgres:{password}@localhost:{}/postgres?host={}",
            cfg.port,
            dir.display()
        ),
        _ => admin_url(cfg.port, password),
    }
}

/// The superuser's password, generated once per cluster, readable by root only.
fn superuser_password(state: &StateDir) -> Result<String> {
    let path = state.path().join("postgres-password");
    match fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        _ => {
            let password = process::random_secret();
            process::write_private(&path, password.as_bytes())?;
            Ok(password)
        }
    }
}

/// Brings a running cluster's access rules and settings to ours and has it re-read them (both
/// are reloadable). A cluster made before passwords were required (its `pg_hba.conf` says
/// `trust`) first gets the superuser's password, while `trust` still lets us in. A no-op when
/// nothing differs.
async fn apply_config(
    state: &StateDir,
    cfg: &PgConfig,
    user: Option<(u32, u32)>,
    password: &str,
) -> Result<()> {
    let hba = cfg.data().join("pg_hba.conf");
    let hba_is_ours = fs::read_to_string(&hba).is_ok_and(|text| text == hba_text(cfg));
    let settings_changed = write_settings(state, cfg, user)?;
    if hba_is_ours && !settings_changed {
        return Ok(());
    }
    let mut conn = connect(&client_url(cfg, password)).await?;
    if !hba_is_ours {
        let sql = format!("ALTER ROLE postgres PASSWORD {}", quote_literal(password));
        sqlx::query(&sql)
            .execute(&mut conn)
            .await
            .context("setting the superuser's password")?;
        write_hba(cfg, user)?;
        tracing::info!("PostgreSQL now requires passwords (pg_hba.conf: scram-sha-256)");
    }
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut conn)
        .await
        .context("reloading the configuration")?;
    conn.close().await.ok();
    Ok(())
}

/// A path that goes into a URL query as it is.
fn is_plain_path(path: &str) -> bool {
    path.starts_with('/')
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
}

/// The socket directory, if the socket's path fits the kernel's limit (107 bytes).
fn socket_path(cfg: &PgConfig) -> Option<PathBuf> {
    let dir = cfg.socket_dir();
    let socket_len = dir.as_os_str().len() + format!("/.s.PGSQL.{}", cfg.port).len();
    (socket_len < 100).then_some(dir)
}

fn config_path(state: &StateDir) -> PathBuf {
    state.path().join("postgres.json")
}

fn load_config(state: &StateDir) -> Option<PgConfig> {
    let text = fs::read_to_string(config_path(state)).ok()?;
    serde_json::from_str(&text).ok()
}

fn save_config(state: &StateDir, cfg: &PgConfig) -> Result<()> {
    let text = serde_json::to_string_pretty(cfg).context("serialising postgres.json")?;
    process::write_atomic(&config_path(state), text.as_bytes())
}

/// PID of our running postmaster: from `postmaster.pid` in our data directory
/// or our own pidfile, alive and running our `postgres` binary.
pub(super) fn running_pid(state: &StateDir) -> Option<u32> {
    let cfg = load_config(state)?;
    running_pid_with(state, &cfg)
}

fn running_pid_with(state: &StateDir, cfg: &PgConfig) -> Option<u32> {
    let bin = cfg.postgres_bin();
    [
        PidFile::read(&cfg.data().join("postmaster.pid")),
        PidFile::read(&state.pid_file("postgres")),
    ]
    .into_iter()
    .flatten()
    .map(|p| p.pid)
    .find(|pid| process::is_alive(*pid) && process::is_ours(*pid, &bin))
}

/// Make sure our PostgreSQL runs on `port`; returns its admin URL.
pub(super) async fn ensure(state: &StateDir, port: u16) -> Result<String> {
    ensure_on(state, port, None).await
}

/// [`ensure`], on a host of the hosts topology when `placement` says so.
pub(super) async fn ensure_on(
    state: &StateDir,
    port: u16,
    placement: Option<PgPlacement>,
) -> Result<String> {
    if let Some(cfg) = load_config(state).filter(|cfg| cfg.placement == placement) {
        if let Some(pid) = running_pid_with(state, &cfg) {
            if cfg.port != port {
                bail!(
                    "our PostgreSQL (pid {pid}, state {}) already runs on port {}, not the requested {port}; stop it first",
                    state.path().display(),
                    cfg.port
                );
            }
            let password = superuser_password(state)?;
            wait_ready(state, &cfg, pid, &password).await?;
            apply_config(state, &cfg, server_user().await?, &password).await?;
            tracing::info!(pid, port, "reusing our running PostgreSQL");
            return Ok(client_url(&cfg, &password));
        }
    }
    let bin_dir = ensure_bins().await?;
    let user = server_user().await?;
    let root = choose_root(state, user)?;
    let cfg = PgConfig {
        port,
        bin_dir,
        root,
        placement,
    };
    let password = start(state, &cfg, user).await?;
    Ok(client_url(&cfg, &password))
}

/// Start again with the persisted configuration (no-op when running).
pub(super) async fn restart(state: &StateDir) -> Result<String> {
    let Some(cfg) = load_config(state) else {
        bail!(
            "no PostgreSQL was set up in {} (no postgres.json); run ensure_infra first",
            state.path().display()
        );
    };
    let user = server_user().await?;
    if let Some(pid) = running_pid_with(state, &cfg) {
        let password = superuser_password(state)?;
        wait_ready(state, &cfg, pid, &password).await?;
        apply_config(state, &cfg, user, &password).await?;
        return Ok(client_url(&cfg, &password));
    }
    let password = start(state, &cfg, user).await?;
    Ok(client_url(&cfg, &password))
}

/// Starts the cluster (made first if missing); returns the superuser's password.
async fn start(state: &StateDir, cfg: &PgConfig, user: Option<(u32, u32)>) -> Result<String> {
    let log = state.log_file("postgres");
    let password = superuser_password(state)?;
    prepare_root(cfg, user)?;
    let data = cfg.data();
    if !data.join("PG_VERSION").is_file() {
        if data.exists() {
            // A half-made cluster from an interrupted initdb: it only ever held our data.
            fs::remove_dir_all(&data)
                .with_context(|| format!("removing incomplete cluster {}", data.display()))?;
        }
        initdb(cfg, user, &log, &password).await?;
        write_hba(cfg, user)?;
    } else {
        check_major_version(cfg).await?;
    }
    write_settings(state, cfg, user)?;

    let bin = cfg.postgres_bin();
    let postmaster_pid = data.join("postmaster.pid");
    if let Some(stale) = PidFile::read(&postmaster_pid) {
        if !(process::is_alive(stale.pid) && process::is_ours(stale.pid, &bin)) {
            process::remove_file_if_exists(&postmaster_pid)?;
        }
    }
    if cfg.placement.is_none() && process::port_open(cfg.port).await {
        bail!(
            "127.0.0.1:{} is already in use by a process we did not start; choose another port (ORDERSYS_PG_PORT) or set ORDERSYS_DATABASE_URL",
            cfg.port
        );
    }
    let data_s = data.to_string_lossy().into_owned();
    let pid = process::spawn_recorded(
        &DetachedSpec {
            program: &bin,
            args: vec!["-D".to_string(), data_s],
            env: vec![],
            log: &log,
            cwd: Some(&cfg.root),
            user,
            netns: cfg.placement.as_ref().map(|p| p.netns.as_str()),
        },
        &state.pid_file("postgres"),
        cfg.port,
    )?;
    save_config(state, cfg)?;
    tracing::info!(pid, port = cfg.port, data = %data.display(), "started PostgreSQL");
    wait_ready(state, cfg, pid, &password).await?;
    apply_config(state, cfg, user, &password).await?;
    Ok(password)
}

async fn wait_ready(state: &StateDir, cfg: &PgConfig, pid: u32, password: &str) -> Result<()> {
    let url = admin_url_at(&cfg.listen(), cfg.port, password);
    let deadline = Instant::now() + READY_TIMEOUT;
    let log = state.log_file("postgres");
    loop {
        let err = match check_connect(&url).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        process::ensure_alive(pid, "PostgreSQL", &log)?;
        if Instant::now() >= deadline {
            bail!(
                "PostgreSQL (pid {pid}) did not accept connections on {}:{} within {READY_TIMEOUT:?} (last error: {err:#}); it is left running; last lines of {}:\n{}",
                cfg.listen(),
                cfg.port,
                log.display(),
                process::tail_file(&log, LOG_TAIL_LINES)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Connect and run `SELECT 1`.
pub(super) async fn check_connect(url: &str) -> Result<()> {
    let mut conn = connect(url).await?;
    sqlx::query("SELECT 1")
        .execute(&mut conn)
        .await
        .context("SELECT 1")?;
    conn.close().await.ok();
    Ok(())
}

pub(super) async fn connect(url: &str) -> Result<sqlx::PgConnection> {
    match tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e).with_context(|| format!("connecting to {}", super::redact(url))),
        Err(_) => bail!("timed out connecting to {}", super::redact(url)),
    }
}

pub(super) async fn stop(state: &StateDir, mode: StopMode) -> Result<()> {
    let Some(cfg) = load_config(state) else {
        return process::remove_file_if_exists(&state.pid_file("postgres"));
    };
    let bin = cfg.postgres_bin();
    if let Some(pid) = running_pid_with(state, &cfg) {
        match mode {
            StopMode::Fast => {
                process::send_signal(pid, libc::SIGINT)?;
                let _ = process::send_signal(pid, libc::SIGCONT);
                if !process::wait_gone(pid, Duration::from_secs(30)).await {
                    tracing::warn!(
                        pid,
                        "PostgreSQL fast shutdown took over 30 s; immediate shutdown"
                    );
                    process::terminate(pid, &bin, libc::SIGQUIT, Duration::from_secs(10)).await?;
                }
            }
            StopMode::Immediate => {
                process::terminate(pid, &bin, libc::SIGQUIT, Duration::from_secs(10)).await?;
            }
        }
        tracing::info!(pid, ?mode, "stopped PostgreSQL");
    }
    process::remove_file_if_exists(&state.pid_file("postgres"))
}

/// An SQL identifier, quoted.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal, quoted.
pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_url_format() {
        assert_eq!(
            admin_url(55432, "pw"),
            "postgres://postgres:pw@127.0.0.1:55432/postgres"
        );
    }

    fn cfg_at(root: &str) -> PgConfig {
        PgConfig {
            port: 55432,
            bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            root: PathBuf::from(root),
            placement: None,
        }
    }

    #[test]
    fn a_server_on_a_host_listens_on_its_address_and_takes_the_subnet_over_tcp() {
        let mut cfg = cfg_at("/r");
        cfg.placement = Some(PgPlacement {
            addr: std::net::Ipv4Addr::new(10, 213, 1, 10),
            netns: "osrun-postgres".into(),
            clients: "10.213.1.0/24".into(),
        });
        assert_eq!(
            client_url(&cfg, "pw"),
            "postgres://postgres:pw@10.213.1.10:55432/postgres"
        );
        assert!(cluster::hba_text(&cfg).ends_with("host all all 10.213.1.0/24 scram-sha-256\n"));
        assert!(cluster::hba_text(&cfg_at("/r")) == cluster::HBA_TEXT);
    }

    #[test]
    fn clients_use_the_socket_when_its_path_is_plain_and_short() {
        assert_eq!(
            client_url(&cfg_at("/work/main/.run/pg"), "pw"),
            "postgres://postgres:pw@localhost:55432/postgres?host=/work/main/.run/pg/socket"
        );
        // A character that would need escaping in the URL, or a path over the limit: TCP.
        assert_eq!(client_url(&cfg_at("/a b/pg"), "pw"), admin_url(55432, "pw"));
        assert_eq!(
            client_url(&cfg_at(&format!("/{}", "x".repeat(90))), "pw"),
            admin_url(55432, "pw")
        );
    }
}
