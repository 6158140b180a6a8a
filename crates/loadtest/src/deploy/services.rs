//! The services as detached processes: spawn, pidfile, wait for `/ready`,
//! stop by PID.

use anyhow::{bail, Context, Result};
use stack::process::{self, DetachedSpec, PidFile};
use stack::StateDir;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 30;
/// Names used by the infrastructure's own pidfiles.
const RESERVED: [&str; 2] = ["postgres", "nats"];
/// … and the prefixes of the hosts topology's (NATS nodes, network delayers).
const RESERVED_PREFIXES: [&str; 2] = ["nats-", "netdelay-"];

fn is_infrastructure(name: &str) -> bool {
    RESERVED.contains(&name) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// One service instance to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Instance name, e.g. "order-service" or "order-service-2": names the pidfile and log.
    pub name: String,
    /// The executable, e.g. [`service_binary`]`("order-service")`.
    pub binary: PathBuf,
    /// Extra environment on top of ours.
    pub env: Vec<(String, String)>,
    /// The address both its listeners are on: 127.0.0.1, or its host's in the hosts topology.
    pub host: String,
    /// Its HTTP port (for `/ready`).
    pub port: u16,
    /// Its admin listener's port (`/metrics`, `/admin/*`), if it has one.
    pub admin_port: Option<u16>,
    /// Its host's network namespace in the hosts topology.
    pub netns: Option<String>,
}

impl ServiceSpec {
    /// `http://<host>:<port>`: its public API.
    pub fn base_url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// `http://<host>:<admin port>`: `/metrics` and `/admin/*`.
    pub fn admin_url(&self) -> String {
        let port = self
            .admin_port
            .unwrap_or_else(|| super::admin_port(self.port));
        format!("http://{}:{port}", self.host)
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if !ok {
        bail!("invalid service name {name:?} (letters, digits, '-', '_', '.')");
    }
    if is_infrastructure(name) {
        bail!("{name:?} is reserved for the infrastructure");
    }
    Ok(())
}

/// The service executable next to our own, whatever profile built us (`target/release/`,
/// `target/debug/`, …); from a test binary in `deps/`, the directory above it.
pub fn service_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|d| d == "deps") {
        dir.pop();
    }
    dir.join(name)
}

/// Spawn the service detached (own session, output to `logs/<name>.log`),
/// record its pidfile and wait until `GET /ready` answers 200. If the same
/// instance already runs (same binary and port), returns its PID. If it does
/// not get ready, it is stopped and the error carries its log's last lines.
pub async fn start_service(state: &StateDir, spec: &ServiceSpec) -> Result<u32> {
    check_name(&spec.name)?;
    let binary = if spec.binary.is_absolute() {
        spec.binary.clone()
    } else {
        std::env::current_dir()
            .context("reading the current directory")?
            .join(&spec.binary)
    };
    let pidfile = state.pid_file(&spec.name);
    let log = state.log_file(&spec.name);
    if let Some(existing) = PidFile::read(&pidfile) {
        if existing.is_running() {
            if existing.binary.as_deref() == Some(binary.as_path())
                && existing.port == Some(spec.port)
            {
                wait_ready(spec, existing.pid, &log).await?;
                return Ok(existing.pid);
            }
            bail!(
                "service {} already runs as pid {} ({:?}, port {:?}); stop it first",
                spec.name,
                existing.pid,
                existing.binary,
                existing.port
            );
        }
        process::remove_file_if_exists(&pidfile)?;
    }
    if !process::is_executable(&binary) {
        bail!(
            "service binary {} not found or not executable; build it first (cargo build --workspace --bins)",
            binary.display()
        );
    }
    // A process just killed may still hold its ports for a moment (its leader is a zombie
    // while the other threads close the shared file table). A host of its own has no one else.
    let ports = spec.netns.is_none().then_some(spec.port);
    for port in ports
        .into_iter()
        .chain(spec.admin_port.filter(|_| spec.netns.is_none()))
    {
        let free_by = Instant::now() + Duration::from_secs(5);
        while process::port_open(port).await && Instant::now() < free_by {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if process::port_open(port).await {
            bail!(
                "127.0.0.1:{port} is already in use by another process (wanted by {})",
                spec.name
            );
        }
    }
    let pid = process::spawn_recorded(
        &DetachedSpec {
            program: &binary,
            args: vec![],
            env: spec.env.clone(),
            log: &log,
            cwd: None,
            user: None,
            netns: spec.netns.as_deref(),
        },
        &pidfile,
        spec.port,
    )?;
    tracing::info!(name = %spec.name, pid, port = spec.port, "started service");
    if let Err(e) = wait_ready(spec, pid, &log).await {
        if let Err(stop_err) = process::terminate(pid, &binary, libc::SIGTERM, STOP_GRACE).await {
            tracing::warn!(name = %spec.name, pid, "stopping the unready service failed: {stop_err:#}");
        } else {
            process::remove_file_if_exists(&pidfile).ok();
        }
        return Err(e);
    }
    Ok(pid)
}

async fn wait_ready(spec: &ServiceSpec, pid: u32, log: &Path) -> Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building an HTTP client")?;
    let (name, port) = (&spec.name, spec.port);
    let url = format!("{}/ready", spec.base_url());
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let last = match client.get(&url).send().await {
            Ok(r) if r.status().as_u16() == 200 => return Ok(()),
            Ok(r) => format!("/ready answered {}", r.status()),
            Err(e) => format!("/ready: {e}"),
        };
        process::ensure_alive(pid, name, log)?;
        if Instant::now() >= deadline {
            bail!(
                "{name} (pid {pid}) not ready on port {port} within {READY_TIMEOUT:?} ({last}); last lines of {}:\n{}",
                log.display(),
                process::tail_file(log, LOG_TAIL_LINES)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM the instance we started under `name`, SIGKILL after 10 s; remove
/// its pidfile. No pidfile: nothing to do.
pub async fn stop_service(state: &StateDir, name: &str) -> Result<()> {
    check_name(name)?;
    let pidfile = state.pid_file(name);
    if let Some(pf) = PidFile::read(&pidfile) {
        if let Some(bin) = &pf.binary {
            process::terminate(pf.pid, bin, libc::SIGTERM, STOP_GRACE).await?;
            tracing::info!(name, pid = pf.pid, "stopped service");
        }
    }
    process::remove_file_if_exists(&pidfile)
}

fn service_pidfiles(state: &StateDir) -> Vec<(String, PidFile)> {
    let mut out: Vec<(String, PidFile)> = fs::read_dir(state.pids_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file_name = e.file_name().to_string_lossy().into_owned();
            let name = file_name.strip_suffix(".pid")?.to_string();
            // The hosts topology keeps NATS nodes (`nats-1`) and network delayers in the same
            // directory: they are not services.
            if RESERVED.contains(&name.as_str()) || is_infrastructure(&name) {
                return None;
            }
            Some((name, PidFile::read(&e.path())?))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Services we started that are still running: (name, pid), sorted by name.
pub fn running_services(state: &StateDir) -> Vec<(String, u32)> {
    service_pidfiles(state)
        .into_iter()
        .filter(|(_, pf)| pf.is_running())
        .map(|(name, pf)| (name, pf.pid))
        .collect()
}

/// Stop every service that has a pidfile (in parallel).
pub async fn stop_all_services(state: &StateDir) -> Result<()> {
    let names: Vec<String> = service_pidfiles(state)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let results = futures::future::join_all(names.iter().map(|n| stop_service(state, n))).await;
    let errors: Vec<String> = names
        .iter()
        .zip(results)
        .filter_map(|(n, r)| r.err().map(|e| format!("{n}: {e:#}")))
        .collect();
    if !errors.is_empty() {
        bail!("stopping services failed: {}", errors.join("; "));
    }
    Ok(())
}

/// Stop every service we started, then our infrastructure.
pub async fn stop_all(state: &StateDir) -> Result<()> {
    let services = stop_all_services(state).await;
    let infra = stack::stop_infra(state).await;
    services?;
    infra
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("order-service").is_ok());
        assert!(check_name("order-service-2").is_ok());
        assert!(check_name("postgres").is_err());
        assert!(check_name("nats").is_err());
        assert!(check_name("../x").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
    }

    #[test]
    fn binary_path_in_target_debug() {
        let p = service_binary("order-service");
        assert!(p.ends_with("debug/order-service"));
        assert!(p.is_absolute());
    }
}
