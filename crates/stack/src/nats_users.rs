//! Who may connect to our NATS server, and what each may do: one administrator (this CLI and the
//! tests) with every right, and per deployment one user per service with only the permissions
//! its code needs (`platform::broker_access`). No anonymous access. Kept in
//! `nats/users.json` (mode 0600) and rendered into the server's configuration, which the server
//! re-reads on SIGHUP without dropping connections.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use platform::broker_access::BrokerPermissions;
use serde::{Deserialize, Serialize};

use super::process;
use super::StateDir;

/// How long a server may take to re-read its configuration.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The user with every right.
pub const ADMIN_USER: &str = "ordersys-admin";

/// One restricted user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsUser {
    pub user: String,
    pub password: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

impl NatsUser {
    pub fn new(user: &str, password: &str, permissions: BrokerPermissions) -> Self {
        NatsUser {
            user: user.to_string(),
            password: password.to_string(),
            publish: permissions.publish,
            subscribe: permissions.subscribe,
        }
    }
}

/// Everyone our server lets in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Users {
    pub admin_password: String,
    /// Per deployment prefix, its services' users.
    pub deployments: BTreeMap<String, Vec<NatsUser>>,
}

fn users_path(state: &StateDir) -> PathBuf {
    state.path().join("nats").join("users.json")
}

fn lock_path(state: &StateDir) -> PathBuf {
    state.path().join("nats").join("users.lock")
}

/// Held while a deployment's users are rewritten (one server or every node of a cluster).
pub(super) async fn lock(state: &StateDir) -> Result<process::FileLock> {
    process::FileLock::acquire(
        &lock_path(state),
        Duration::from_secs(30),
        "another loadtest is changing the NATS users",
    )
    .await
}

/// The recorded users; a first call creates the administrator's password.
pub(super) fn load(state: &StateDir) -> Result<Users> {
    let path = users_path(state);
    let mut users: Users = match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))?
        }
        Err(_) => Users::default(),
    };
    if users.admin_password.is_empty() {
        users.admin_password = process::random_secret();
        save(state, &users)?;
    }
    Ok(users)
}

/// Records exactly `deployment_users` for deployment `prefix` (none: removes it) and returns
/// every user. Callers hold [`lock_path`] and then render the users and [`reload`] each server.
pub(super) fn record_deployment(
    state: &StateDir,
    prefix: &str,
    deployment_users: Vec<NatsUser>,
) -> Result<Users> {
    let mut users = load(state)?;
    if deployment_users.is_empty() {
        users.deployments.remove(prefix);
    } else {
        users
            .deployments
            .insert(prefix.to_string(), deployment_users);
    }
    save(state, &users)?;
    Ok(users)
}

/// Has the server `pid` re-read its configuration (SIGHUP: users and permissions reload,
/// connections stay) and waits until its monitoring endpoint reports a configuration loaded
/// after the signal (`/varz` `config_load_time`). A login cannot confirm a reload: a removed
/// user is let in until the server has re-read its file.
pub(super) async fn reload(pid: u32, monitor_url: &str, server: &str) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building an HTTP client")?;
    let varz = format!("{monitor_url}/varz");
    let before = config_load_time(&http, &varz)
        .await
        .with_context(|| format!("{server}: reading {varz} before a reload"))?;
    process::send_signal(pid, libc::SIGHUP)?;
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        match config_load_time(&http, &varz).await {
            Ok(now) if !now.is_empty() && now != before => return Ok(()),
            Ok(_) if Instant::now() >= deadline => bail!(
                "{server} (pid {pid}) did not re-read its configuration within {RELOAD_TIMEOUT:?} \
                 (its log says why: a configuration it refused is not applied)"
            ),
            Err(e) if Instant::now() >= deadline => {
                bail!("{server} (pid {pid}) after a reload: {varz}: {e}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// When the server last (re-)read its configuration, as `/varz` says (RFC 3339, nanoseconds).
async fn config_load_time(http: &reqwest::Client, varz_url: &str) -> Result<String> {
    let varz: serde_json::Value = http.get(varz_url).send().await?.json().await?;
    Ok(varz["config_load_time"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

pub(super) fn save(state: &StateDir, users: &Users) -> Result<()> {
    let path = users_path(state);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(users).context("serialising users.json")?;
    process::write_private(&path, text.as_bytes())
}

/// The `authorization` block of the server's configuration.
pub(super) fn authorization_text(users: &Users) -> String {
    authorization_block(
        Some(&users.admin_password),
        users
            .deployments
            .iter()
            .map(|(p, u)| (p.as_str(), u.as_slice())),
    )
}

/// The block for one deployment's users on a server configured by someone else.
pub fn deployment_authorization_text(prefix: &str, users: &[NatsUser]) -> String {
    authorization_block(None, std::iter::once((prefix, users)))
}

fn authorization_block<'a>(
    admin_password: Option<&str>,
    deployments: impl Iterator<Item = (&'a str, &'a [NatsUser])>,
) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let list = |subjects: &[String]| {
        subjects
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = String::from(
        "authorization {\n  # no anonymous access: every client is one of these users\n  users = [\n",
    );
    if let Some(password) = admin_password {
        text.push_str(&format!(
            "    {{ user: {}, password: {} }}\n",
            quote(ADMIN_USER),
            quote(password)
        ));
    }
    for (prefix, deployment) in deployments {
        text.push_str(&format!("    # deployment {prefix}\n"));
        for user in deployment {
            text.push_str(&format!(
                "    {{ user: {}, password: {}, permissions: {{\n      \
                 publish: {{ allow: [{}] }}\n      subscribe: {{ allow: [{}] }}\n    }} }}\n",
                quote(&user.user),
                quote(&user.password),
                list(&user.publish),
                list(&user.subscribe),
            ));
        }
    }
    text.push_str("  ]\n}\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorization_block_lists_the_admin_and_each_restricted_user() {
        let mut users = Users {
            admin_password: "a1".into(),
            ..Users::default()
        };
        users.deployments.insert(
            "shop".into(),
            vec![NatsUser {
                user: "shop-order".into(),
                password: "p2".into(),
                publish: vec!["shop.order.>".into()],
                subscribe: vec!["_INBOX_shop-order.>".into()],
            }],
        );
        let text = authorization_text(&users);
        assert!(text.contains(r#"{ user: "ordersys-admin", password: "a1" }"#));
        assert!(text.contains(r#"user: "shop-order", password: "p2""#));
        assert!(text.contains(r#"publish: { allow: ["shop.order.>"] }"#));
        assert!(text.contains(r#"subscribe: { allow: ["_INBOX_shop-order.>"] }"#));
        assert!(!text.contains("no_auth_user"));
    }
}
