//! `loadtest`: run load-test scenarios against the order system, and start, stop, seed and
//! audit the stack by hand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{ArgGroup, Parser, Subcommand};

use loadtest::chaos::network::{delayer, DelaySettings};
use loadtest::commands::saga::story::Endpoints;
use loadtest::commands::{self, dead_letters, saga};
use loadtest::deploy::admin::{AdminClient, Resolution};
use loadtest::deploy::{self, Credentials};
use loadtest::modes;
use loadtest::observe::baseline::{self, BaselineSettings};
use loadtest::plan::{self, duration};
use loadtest::session::SessionOptions;
use stack::StateDir;

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
        #[arg(long, alias = "scenario", default_value = plan::DEFAULT_CAPACITY_PLAN)]
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
        /// Deploy the fair-use limits this scenario's `loadtest run` would (set or derived from
        /// its peak rate per buyer), e.g. before driving its plan with k6; default: the
        /// services' own limits.
        #[arg(long)]
        scenario: Option<PathBuf>,
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
    /// One order's whole story across the three services — status history, inventory's answer,
    /// the charge, events still in an outbox, the events each consumer took, dead letters and
    /// re-drives, in time order — with a verdict (final, waiting for which service since when,
    /// stuck on which dead letter) and the command that would unstick it; `--stuck` gives the
    /// verdict of every open saga older than a threshold. Exits non-zero when the saga is not
    /// final (with `--stuck`: when there is one). Uses the running stack's admin credentials.
    #[command(group(ArgGroup::new("which").required(true).args(["order_id", "stuck"])))]
    Saga {
        /// The order's id.
        order_id: Option<uuid::Uuid>,
        /// List the open sagas older than `--older-than` instead, with their verdicts.
        #[arg(long)]
        stuck: bool,
        /// With `--stuck`: only sagas placed longer ago than this (default 30s).
        #[arg(long)]
        older_than: Option<String>,
        /// With `--stuck`: at most this many, oldest first (default 100).
        #[arg(long)]
        limit: Option<u32>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print, with fresh random passwords, the PostgreSQL roles (SQL), NATS users (an
    /// `authorization` block with each service's permissions) and service environment of a
    /// least-privilege deployment on servers you run yourself.
    Access {
        /// The deployment's subject and stream prefix.
        #[arg(long, default_value = deploy::DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Print a buyer's JWT (`--user N`), or comma-separated JWTs of users 1..=N (`--users N`).
    #[command(group(ArgGroup::new("who").required(true).args(["user", "users"])))]
    Token {
        #[arg(long)]
        user: Option<i64>,
        #[arg(long)]
        users: Option<u32>,
        /// Signing secret (default: the one the running services use, from the credentials file).
        #[arg(long)]
        secret: Option<String>,
        /// Validity in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
    /// (Internal) Hold every packet of an NFQUEUE queue for a delay, then let it go on: the
    /// process behind the `delay` network fault, started inside a host's namespace.
    #[command(hide = true)]
    NetDelay {
        #[arg(long)]
        queue: u16,
        #[arg(long)]
        delay_ms: f64,
        #[arg(long, default_value_t = 0.0)]
        jitter_ms: f64,
        /// Written once the queue is bound.
        #[arg(long)]
        ready_file: Option<PathBuf>,
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
        dead_letters::resolve(
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
    // Thousands of connections need thousands of descriptors; the services we start inherit it.
    platform::fd_limit::raise_to_hard_limit();
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
    let done = |result: Result<()>| result.map(|()| true);
    match command {
        Command::Run {
            scenario,
            keep_running,
            results_dir,
        } => {
            let plan = plan::RunPlan::scenario(&commands::resolve(&scenario)?)?;
            modes::run::run(&plan, &SessionOptions::new(keep_running, results_dir)).await
        }
        Command::Capacity {
            plan,
            results_dir,
            skip_baseline,
        } => {
            let plan = plan::RunPlan::capacity(&commands::resolve(&plan)?)?;
            let options = SessionOptions::new(false, results_dir);
            modes::capacity::run(&plan, &options, skip_baseline).await
        }
        Command::Baseline {
            concurrency,
            duration,
        } => {
            let settings = BaselineSettings {
                concurrency: baseline::parse_concurrency(&concurrency)?,
                duration: duration::parse(&duration)?,
            };
            done(commands::baseline(&settings).await)
        }
        Command::Up {
            fresh,
            decline_rate,
            prefix,
            scenario,
        } => done(commands::up(fresh, decline_rate, prefix, scenario.as_deref()).await),
        Command::Down => done(commands::down().await),
        Command::InfraUp => done(commands::infra_up().await),
        Command::InfraDown => done(commands::infra_down().await),
        Command::Status { infra_running } => done(commands::status(infra_running)),
        Command::Seed { scenario } => done(commands::seed(&scenario).await),
        Command::Verify {
            orders_db,
            inventory_db,
            payments_db,
        } => commands::verify(orders_db, inventory_db, payments_db).await,
        Command::DeadLetters { action } => {
            let credentials = deploy::recorded_credentials(&StateDir::locate()?)?;
            match action {
                DeadLetterAction::List {
                    service,
                    status,
                    reason,
                } => {
                    dead_letters::list(&credentials, service.as_deref(), &status, reason.as_deref())
                        .await
                        .map(|open| open == 0)
                }
                DeadLetterAction::Replay(which) => {
                    which.resolve(&credentials, Resolution::Replay).await
                }
                DeadLetterAction::Discard(which) => {
                    which.resolve(&credentials, Resolution::Discard).await
                }
            }
        }
        Command::Saga {
            order_id,
            stuck,
            older_than,
            limit,
            json,
        } => {
            if order_id.is_some() && (older_than.is_some() || limit.is_some()) {
                anyhow::bail!("--older-than and --limit go with --stuck");
            }
            let credentials = deploy::recorded_credentials(&StateDir::locate()?)?;
            let admin = AdminClient::new(&credentials.admin_token)?;
            let endpoints = Endpoints::deployment();
            match order_id {
                Some(order_id) if !stuck => saga::show(&admin, &endpoints, order_id, json).await,
                _ => {
                    let older_than = duration::parse(older_than.as_deref().unwrap_or("30s"))?;
                    let limit = limit.unwrap_or(100).max(1);
                    let listed =
                        saga::show_stuck(&admin, &endpoints, older_than, limit, json).await?;
                    Ok(listed == 0)
                }
            }
        }
        Command::Access { prefix } => {
            commands::access::print(&prefix);
            Ok(true)
        }
        Command::Token {
            user,
            users,
            secret,
            hours,
        } => done(commands::token(user, users, secret, hours)),
        Command::NetDelay {
            queue,
            delay_ms,
            jitter_ms,
            ready_file,
        } => {
            let millis = |ms: f64| {
                Duration::try_from_secs_f64(ms / 1000.0)
                    .map_err(|e| anyhow::anyhow!("{ms} ms: {e}"))
            };
            let settings = DelaySettings {
                queue,
                delay: millis(delay_ms)?,
                jitter: millis(jitter_ms)?,
            };
            // The delayer's loop blocks (it polls a netlink socket): off the runtime's workers.
            tokio::task::spawn_blocking(move || delayer::run(settings, ready_file.as_deref()))
                .await??;
            Ok(true)
        }
    }
}
