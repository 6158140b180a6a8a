//! `loadtest`: run load-test scenarios against the order system, and start, stop, seed and
//! audit the stack by hand.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Parser, Subcommand};

use loadtest::admin::Resolution;
use loadtest::baseline::{self, BaselineSettings};
use loadtest::capacity::{self, CapacityOptions, CapacityPlan};
use loadtest::deploy::{self, Credentials, Deployment};
use loadtest::runner::{self, RunOptions};
use loadtest::scenario::Scenario;
use loadtest::stack::{self, StateDir};
use loadtest::{operator, seed, verify};

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    about = "Load tests for the order → stock → payment system",
    long_about = "Load tests for the order → stock → payment system.\n\n\
        `loadtest run` does everything: PostgreSQL and NATS, fresh databases, the three services, \
        seed data, the open-model load, the drain, the audit and the report (results/<time>-<scenario>/). \
        The other commands start, seed and audit the stack by hand, e.g. for k6 \
        (see scenarios/k6/seed.js)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario end to end; exits non-zero when a check fails.
    Run {
        #[arg(long, default_value = "scenarios/seed.toml")]
        scenario: PathBuf,
        /// Leave the services and infrastructure running afterwards.
        #[arg(long)]
        keep_running: bool,
        /// Where the report folder goes (default: <workspace>/results).
        #[arg(long)]
        results_dir: Option<PathBuf>,
    },
    /// Step the arrival rate up until the system stops keeping up (see scenarios/capacity/capacity.toml),
    /// then drain, audit and measure the naive baseline; exits non-zero when a check fails.
    Capacity {
        /// A capacity plan (scenarios/capacity/).
        #[arg(long, alias = "scenario", default_value = capacity::DEFAULT_PLAN)]
        plan: PathBuf,
        /// Where the report folder goes (default: <workspace>/results).
        #[arg(long)]
        results_dir: Option<PathBuf>,
        /// Do not measure the naive baseline afterwards.
        #[arg(long)]
        skip_baseline: bool,
    },
    /// The naive baseline alone: N connections each looping over one transaction per order that
    /// updates one hot stock row, on the stack's PostgreSQL (started if needed).
    Baseline {
        /// Connections, one measurement each.
        #[arg(long, default_value = "1,8,32")]
        concurrency: String,
        /// How long each measurement lasts.
        #[arg(long, default_value = "15s")]
        duration: String,
    },
    /// Start PostgreSQL, NATS and the three services (prefix `shop`, dev credentials).
    Up {
        /// Drop and recreate the three databases first, for a clean audit afterwards.
        #[arg(long)]
        fresh: bool,
        /// Share of payments the simulated provider declines.
        #[arg(long, env = "ORDERSYS_DECLINE_RATE", default_value_t = deploy::DEFAULT_DECLINE_RATE)]
        decline_rate: f64,
        /// NATS subject and stream prefix.
        #[arg(long, default_value = deploy::DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Stop the services, PostgreSQL and NATS that we started.
    Down,
    /// Start only PostgreSQL and NATS; prints export lines for their URLs.
    InfraUp,
    /// Stop PostgreSQL and NATS (the services are left alone; see `down`).
    InfraDown,
    /// What runs now.
    Status {
        /// Only print `yes` when our PostgreSQL and NATS both run, else `no` (for scripts).
        #[arg(long)]
        infra_running: bool,
    },
    /// Seed a scenario's products and accounts into the running services (for k6 runs).
    Seed {
        #[arg(long, default_value = "scenarios/seed.toml")]
        scenario: PathBuf,
    },
    /// Audit the three databases: prints every check; exits non-zero when one fails.
    Verify {
        #[arg(long, env = "ORDERSYS_ORDERS_DB")]
        orders_db: Option<String>,
        #[arg(long, env = "ORDERSYS_INVENTORY_DB")]
        inventory_db: Option<String>,
        #[arg(long, env = "ORDERSYS_PAYMENTS_DB")]
        payments_db: Option<String>,
    },
    /// The services' dead letters: list them, or replay or discard them (one, or every open one
    /// whose reason contains a text). Uses the running stack's admin credentials.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Print a buyer's JWT (`--user N`), or comma-separated JWTs of users 1..=N (`--users N`).
    #[command(group(ArgGroup::new("who").required(true).args(["user", "users"])))]
    Token {
        #[arg(long)]
        user: Option<i64>,
        #[arg(long)]
        users: Option<u32>,
        /// Signing secret (default: the one the running services use, else the dev default).
        #[arg(long)]
        secret: Option<String>,
        /// Validity in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// List dead letters (exits non-zero when there are any).
    List {
        /// order, inventory or payment (default: all three).
        #[arg(long)]
        service: Option<String>,
        /// open, replayed, discarded or all.
        #[arg(long, default_value = "open")]
        status: String,
        /// Only those whose reason contains this text.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Apply dead letters again through the consumer that parked them (once their cause is fixed).
    Replay(WhichDeadLetters),
    /// Mark dead letters as discarded (kept for the record until retention prunes them).
    Discard(WhichDeadLetters),
}

/// One dead letter (`--service S --id N`) or every open one whose reason contains a text.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("which").required(true).args(["id", "reason"])))]
struct WhichDeadLetters {
    #[arg(long)]
    service: Option<String>,
    #[arg(long)]
    id: Option<i64>,
    #[arg(long)]
    reason: Option<String>,
}

impl WhichDeadLetters {
    async fn resolve(&self, credentials: &Credentials, how: Resolution) -> Result<bool> {
        operator::resolve(
            credentials,
            self.service.as_deref(),
            self.id,
            self.reason.as_deref(),
            how,
        )
        .await
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    raise_open_file_limit();
    let cli = Cli::parse();
    match execute(cli.command).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `Ok(false)`: ran, but a check failed.
async fn execute(command: Command) -> Result<bool> {
    match command {
        Command::Run {
            scenario,
            keep_running,
            results_dir,
        } => {
            let scenario = load_scenario(&scenario)?;
            let report = runner::run_scenario(
                &scenario,
                &RunOptions {
                    keep_running,
                    results_dir,
                },
            )
            .await?;
            Ok(report.passed())
        }
        Command::Capacity {
            plan,
            results_dir,
            skip_baseline,
        } => {
            let plan = CapacityPlan::from_file(&scenario_path(&plan)?)?;
            capacity::run_capacity(
                &plan,
                &CapacityOptions {
                    results_dir,
                    skip_baseline,
                },
            )
            .await
        }
        Command::Baseline {
            concurrency,
            duration,
        } => {
            let settings = BaselineSettings {
                concurrency: baseline::parse_concurrency(&concurrency)?,
                duration: loadtest::scenario::parse_duration(&duration)?,
            };
            standalone_baseline(&settings).await.map(|_| true)
        }
        Command::Up {
            fresh,
            decline_rate,
            prefix,
        } => up(fresh, decline_rate, prefix).await.map(|_| true),
        Command::Down => {
            let state = StateDir::locate()?;
            let services = deploy::stop_services(&state).await;
            let infra = stack::stop_infra(&state).await;
            services?;
            infra?;
            println!("stopped the services, PostgreSQL and NATS we started");
            Ok(true)
        }
        Command::InfraUp => {
            let state = StateDir::locate()?;
            let infra = stack::ensure_infra(&state).await?;
            println!("export ORDERSYS_DATABASE_URL={}", infra.admin_database_url);
            println!("export ORDERSYS_NATS_URL={}", infra.nats_url);
            Ok(true)
        }
        Command::InfraDown => {
            let state = StateDir::locate()?;
            let services = stack::running_services(&state);
            if !services.is_empty() {
                eprintln!(
                    "note: services still running ({}); `loadtest down` stops them too",
                    names(&services)
                );
            }
            stack::stop_infra(&state).await?;
            println!("stopped PostgreSQL and NATS");
            Ok(true)
        }
        Command::Status { infra_running } => {
            if infra_running {
                let state = StateDir::locate()?;
                let up = stack::pid_of(&state, "postgres").is_some()
                    && stack::pid_of(&state, "nats").is_some();
                println!("{}", if up { "yes" } else { "no" });
                return Ok(true);
            }
            status().map(|_| true)
        }
        Command::Seed { scenario } => {
            let scenario = load_scenario(&scenario)?;
            let state = StateDir::locate()?;
            let summary = seed::seed(&scenario, &deploy::current_credentials(&state)).await?;
            println!(
                "products: {} created, {} existed; accounts: {} created, {} existed",
                summary.products_created,
                summary.products_existing,
                summary.accounts_created,
                summary.accounts_existing
            );
            Ok(true)
        }
        Command::Verify {
            orders_db,
            inventory_db,
            payments_db,
        } => {
            let defaults = deploy::DatabaseUrls::on(&deploy::default_admin_url());
            let dbs = verify::Databases::connect(
                &orders_db.unwrap_or(defaults.orders),
                &inventory_db.unwrap_or(defaults.inventory),
                &payments_db.unwrap_or(defaults.payments),
            )
            .await?;
            let checks = verify::audit(&dbs, None).await;
            dbs.close().await;
            let checks = checks?;
            for check in &checks {
                println!("{check}");
            }
            let failed = checks.iter().filter(|c| !c.passed).count();
            println!(
                "{}: {failed} of {} checks failed",
                if failed == 0 { "PASSED" } else { "FAILED" },
                checks.len()
            );
            Ok(failed == 0)
        }
        Command::DeadLetters { action } => {
            let credentials = deploy::current_credentials(&StateDir::locate()?);
            match action {
                DeadLetterAction::List {
                    service,
                    status,
                    reason,
                } => operator::list(&credentials, service.as_deref(), &status, reason.as_deref())
                    .await
                    .map(|open| open == 0),
                DeadLetterAction::Replay(which) => {
                    which.resolve(&credentials, Resolution::Replay).await
                }
                DeadLetterAction::Discard(which) => {
                    which.resolve(&credentials, Resolution::Discard).await
                }
            }
        }
        Command::Token {
            user,
            users,
            secret,
            hours,
        } => {
            let secret = match secret {
                Some(secret) => secret,
                None => deploy::current_credentials(&StateDir::locate()?).jwt_secret,
            };
            let ttl = Duration::from_secs(hours * 3600);
            match (user, users) {
                (Some(user), _) => println!(
                    "{}",
                    platform::auth::mint_token(&secret, user, ttl).context("signing the token")?
                ),
                (None, Some(users)) => {
                    println!("{}", seed::mint_tokens(&secret, users, ttl)?.join(","))
                }
                (None, None) => bail!("give --user N or --users N"),
            }
            Ok(true)
        }
    }
}

async fn up(fresh: bool, decline_rate: f64, prefix: String) -> Result<()> {
    if !(0.0..=1.0).contains(&decline_rate) {
        bail!("--decline-rate must be within 0..=1 (got {decline_rate})");
    }
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
    let databases = deploy::prepare_databases(&infra.admin_database_url, fresh).await?;
    let credentials = Credentials::dev();
    let deployment = Deployment {
        databases,
        nats_url: infra.nats_url.clone(),
        prefix: prefix.clone(),
        credentials: credentials.clone(),
        decline_rate,
    };
    let services = deploy::start_services(&state, &deployment).await?;
    for (name, pid) in &services {
        let port = deploy::SERVICES
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, port)| *port);
        println!("{name:<18} {}  (pid {pid})", deploy::base_url(port));
    }
    println!(
        "postgres           {}",
        stack::redact(&infra.admin_database_url)
    );
    println!("nats               {}  (prefix {prefix})", infra.nats_url);
    println!("decline rate       {decline_rate}");
    println!("JWT secret         {}", credentials.jwt_secret);
    println!("admin token        {}", credentials.admin_token);
    println!(
        "credentials        {}",
        deploy::credentials_file(&state).display()
    );
    println!("logs               {}", state.logs_dir().display());
    Ok(())
}

fn status() -> Result<()> {
    let state = StateDir::locate()?;
    println!("state directory    {}", state.path().display());
    for name in ["postgres", "nats"] {
        match stack::pid_of(&state, name) {
            Some(pid) => println!("{name:<18} running (pid {pid})"),
            None => println!("{name:<18} not running (not ours)"),
        }
    }
    let services = stack::running_services(&state);
    if services.is_empty() {
        println!("services           none running");
    }
    for (name, pid) in &services {
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

fn names(services: &[(String, u32)]) -> String {
    services
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A scenario path as given, else relative to the workspace root.
fn load_scenario(path: &Path) -> Result<Scenario> {
    Ok(Scenario::from_file(scenario_path(path)?)?)
}

fn scenario_path(path: &Path) -> Result<PathBuf> {
    Ok(if path.exists() || path.is_absolute() {
        path.to_path_buf()
    } else {
        stack::workspace_root()?.join(path)
    })
}

/// `loadtest baseline`: on our PostgreSQL (started if needed, stopped again if we started it).
async fn standalone_baseline(settings: &BaselineSettings) -> Result<()> {
    let _lock = stack::run_lock::acquire()?;
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

/// Thousands of connections need thousands of descriptors; the services we start inherit it.
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
