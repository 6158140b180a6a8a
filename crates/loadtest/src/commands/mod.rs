//! The commands that start, stop, seed and audit the stack by hand (the load modes are in
//! `modes`): what `main` dispatches to once clap has parsed the line.

pub mod access;
pub mod dead_letters;
pub mod saga;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::audit;
use crate::deploy::{self, services, Credentials, Deployment};
use crate::observe::baseline::{self, BaselineSettings};
use crate::plan::limits::FairUseLimits;
use crate::plan::scenario::Scenario;
use crate::seed;
use stack::StateDir;

/// `loadtest up`: PostgreSQL, NATS and the three services with the dev credentials.
pub async fn up(
    fresh: bool,
    decline_rate: f64,
    prefix: String,
    scenario: Option<&Path>,
) -> Result<()> {
    if !(0.0..=1.0).contains(&decline_rate) {
        bail!("--decline-rate must be within 0..=1 (got {decline_rate})");
    }
    let limits = match scenario {
        Some(path) => Some(FairUseLimits::of(&Scenario::from_file(resolve(path)?)?)),
        None => None,
    };
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        bail!("--prefix may only hold a-z, 0-9 and _ (got {prefix:?})");
    }
    deploy::check_binaries()?;
    let state = StateDir::locate()?;
    let infra = stack::ensure_infra(&state).await?;
    // Restart rather than reuse: running services may carry another run's prefix or credentials.
    deploy::stop_services(&state).await?;
    let credentials = Credentials::random_or_from_env();
    let databases =
        deploy::prepare_databases(&infra.admin_database_url, fresh, &credentials).await?;
    if fresh {
        let removed = deploy::remove_streams(&infra.nats_url, &prefix).await?;
        println!("fresh: databases recreated, {removed} NATS stream(s) of prefix {prefix} removed");
    }
    let deployment = Deployment {
        databases,
        nats_url: infra.nats_url.clone(),
        nats_users: infra.manages_nats_users(),
        prefix: prefix.clone(),
        credentials: credentials.clone(),
        decline_rate,
        placement: None,
        stream_replicas: 1,
    };
    let replication = deploy::Replication {
        extra_env: limits.as_ref().map(FairUseLimits::env).unwrap_or_default(),
        ..deploy::Replication::default()
    };
    let started = deploy::start_instances(&state, &deployment, &replication).await?;
    for (name, pid) in &started {
        let port = deploy::SERVICES
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, port)| *port);
        println!(
            "{name:<18} {}  admin {}  (pid {pid})",
            deploy::base_url(port),
            deploy::admin_url(port)
        );
    }
    println!(
        "postgres           {}",
        stack::redact(&infra.admin_database_url)
    );
    println!(
        "nats               {}  (prefix {prefix})",
        stack::redact(&infra.nats_url)
    );
    println!("decline rate       {decline_rate}");
    if let Some(limits) = &limits {
        println!("fair use           {}", limits.describe());
    }
    println!(
        "credentials        {}  (mode 0600: JWT secret, admin token, the services' passwords)",
        deploy::credentials_file(&state).display()
    );
    println!("logs               {}", state.logs_dir().display());
    Ok(())
}

/// `loadtest down`: the services, PostgreSQL and NATS that we started.
pub async fn down() -> Result<()> {
    let state = StateDir::locate()?;
    let stopped_services = deploy::stop_services(&state).await;
    let stopped_infra = stack::stop_infra(&state).await;
    let stopped_hosts = stack::hosts::down(&stack::hosts::state_dir()?).await;
    stopped_services?;
    stopped_infra?;
    stopped_hosts.context("removing a hosts topology left running")?;
    println!("stopped the services, PostgreSQL and NATS we started");
    Ok(())
}

/// `loadtest infra-up`: prints export lines for the URLs.
pub async fn infra_up() -> Result<()> {
    let state = StateDir::locate()?;
    let infra = stack::ensure_infra(&state).await?;
    println!("export ORDERSYS_DATABASE_URL={}", infra.admin_database_url);
    println!("export ORDERSYS_NATS_URL={}", infra.nats_url);
    if infra.manages_nats_users() {
        // Our instances also take TLS from clients that ask (`sslmode=verify-full`,
        // `nats.tls_ca_file`), verified against this authority.
        println!(
            "export ORDERSYS_TLS_CA={}",
            stack::tls::ensure(&state)?.ca.display()
        );
    }
    Ok(())
}

pub async fn infra_down() -> Result<()> {
    let state = StateDir::locate()?;
    let running = services::running_services(&state);
    if !running.is_empty() {
        eprintln!(
            "note: services still running ({}); `loadtest down` stops them too",
            names(&running)
        );
    }
    stack::stop_infra(&state).await?;
    // A hosts-topology run kept with --keep-running (or interrupted hard): its hosts too.
    stack::hosts::down(&stack::hosts::state_dir()?)
        .await
        .context("removing a hosts topology left running")?;
    println!("stopped PostgreSQL and NATS");
    Ok(())
}

/// `loadtest status`; with `infra_running`, only `yes` or `no` (for scripts).
pub fn status(infra_running: bool) -> Result<()> {
    let state = StateDir::locate()?;
    if infra_running {
        let up =
            stack::pid_of(&state, "postgres").is_some() && stack::pid_of(&state, "nats").is_some();
        println!("{}", if up { "yes" } else { "no" });
        return Ok(());
    }
    println!("state directory    {}", state.path().display());
    for name in ["postgres", "nats"] {
        match stack::pid_of(&state, name) {
            Some(pid) => println!("{name:<18} running (pid {pid})"),
            None => println!("{name:<18} not running (not ours)"),
        }
    }
    let running = services::running_services(&state);
    if running.is_empty() {
        println!("services           none running");
    }
    for (name, pid) in &running {
        println!("{name:<18} running (pid {pid})");
    }
    if let Some(prefix) = deploy::recorded_prefix(&state) {
        println!("nats prefix        {prefix}");
        println!(
            "credentials        {}",
            deploy::credentials_file(&state).display()
        );
    }
    Ok(())
}

/// `loadtest seed`: a scenario's products and accounts into the running services.
pub async fn seed(scenario: &Path) -> Result<()> {
    let scenario = Scenario::from_file(resolve(scenario)?)?;
    let state = StateDir::locate()?;
    let summary = seed::seed(
        &scenario,
        &deploy::recorded_credentials(&state)?,
        &seed::SeedTargets::local(),
    )
    .await?;
    println!(
        "products: {} created, {} existed; accounts: {} created, {} existed",
        summary.products_created,
        summary.products_existing,
        summary.accounts_created,
        summary.accounts_existing
    );
    Ok(())
}

/// `loadtest verify`: every check of the audit; `Ok(false)` when one failed.
pub async fn verify(
    orders_db: Option<String>,
    inventory_db: Option<String>,
    payments_db: Option<String>,
) -> Result<bool> {
    // Unless told otherwise: the three databases of the running stack, read through the
    // read-only audit role of its deployment.
    let defaults = || -> Result<deploy::DatabaseUrls> {
        let credentials = deploy::recorded_credentials(&StateDir::locate()?)?;
        Ok(deploy::DatabaseUrls::for_audit(
            &deploy::default_admin_url(),
            &credentials,
        ))
    };
    let (orders, inventory, payments) = match (orders_db, inventory_db, payments_db) {
        (Some(orders), Some(inventory), Some(payments)) => (orders, inventory, payments),
        (orders, inventory, payments) => {
            let defaults = defaults()?;
            (
                orders.unwrap_or(defaults.orders),
                inventory.unwrap_or(defaults.inventory),
                payments.unwrap_or(defaults.payments),
            )
        }
    };
    let dbs = crate::observe::database::Databases::connect(&orders, &inventory, &payments).await?;
    let checks = audit::audit(&dbs, None).await;
    dbs.close().await;
    let checks = checks?;
    for check in &checks {
        println!("{check}");
    }
    // Which request placed each stored order, and what it was told, only a run knows (its
    // load generator records it): without those records the check is not passed, just not made.
    println!(
        "[----] {}: not measured (verify has no record of the requests' answers; `loadtest run` \
         checks it)",
        audit::answers::CHECK_ANSWERED_ORDERS
    );
    let failed = checks.iter().filter(|c| !c.passed).count();
    println!(
        "{}: {failed} of {} checks failed",
        if failed == 0 { "PASSED" } else { "FAILED" },
        checks.len()
    );
    Ok(failed == 0)
}

/// `loadtest token`: one buyer's JWT, or comma-separated JWTs of users 1..=N.
pub fn token(
    user: Option<i64>,
    users: Option<u32>,
    secret: Option<String>,
    hours: u64,
) -> Result<()> {
    let secret = match secret {
        Some(secret) => secret,
        None => deploy::recorded_credentials(&StateDir::locate()?)?.jwt_secret,
    };
    let ttl = Duration::from_secs(hours * 3600);
    match (user, users) {
        (Some(user), _) => println!(
            "{}",
            platform::auth::TokenKeys::with_secret(&secret)
                .mint(user, ttl)
                .context("signing the token")?
        ),
        (None, Some(users)) => println!("{}", seed::mint_tokens(&secret, users, ttl)?.join(",")),
        (None, None) => bail!("give --user N or --users N"),
    }
    Ok(())
}

/// `loadtest baseline`: on our PostgreSQL (started if needed, stopped again if we started it).
pub async fn baseline(settings: &BaselineSettings) -> Result<()> {
    let _lock = stack::run_lock::acquire().await?;
    let state = StateDir::locate()?;
    let postgres_before = stack::pid_of(&state, "postgres").is_some();
    let nats_before = stack::pid_of(&state, "nats").is_some();
    let infra = stack::ensure_infra(&state).await?;
    let result = baseline::measure(&infra.admin_database_url, settings).await;
    if !postgres_before && !nats_before {
        stack::stop_infra(&state).await?;
    }
    print!("{}", result?.table());
    Ok(())
}

/// A scenario or plan path as given, else relative to the workspace root.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    Ok(if path.exists() || path.is_absolute() {
        path.to_path_buf()
    } else {
        stack::workspace_root()?.join(path)
    })
}

fn names(services: &[(String, u32)]) -> String {
    services
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
