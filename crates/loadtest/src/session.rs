//! The one executor every mode runs through: the run lock, the infrastructure, fresh databases
//! and stream prefix, the services, seed data, the open-model load (with the fault schedule and
//! whatever the mode runs beside it), the drain, the audit, the report files, and stopping what
//! the run started — also when it fails or is interrupted with Ctrl-C.
//!
//! A mode says what differs through [`Mode`]: what it runs while the load runs (the capacity
//! controller), which part of the run the HTTP checks judge, and what it adds to the report.

use std::collections::HashMap;
use std::future::Future;
use std::io::IsTerminal as _;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::audit::drain::{self, DrainOutcome};
use crate::audit::{self, Check, HttpFigures};
use crate::chaos;
use crate::deploy::admin::AdminClient;
use crate::deploy::{self, Credentials, Deployment};
use crate::loadgen::stats::RunStats;
use crate::loadgen::{self, LoadPlan, LoadState};
use crate::observe::database::{self, Databases, Scope};
use crate::observe::monitor::{self, MonitorContext, Phase, Samples};
use crate::observe::traces::TraceSink;
use crate::observe::{SystemProbe, SystemState};
use crate::plan::scenario::Topology;
use crate::plan::schedule::Schedule;
use crate::plan::{duration, RunPlan};
use crate::report::build::{build_report, ReportInputs};
use crate::report::hops::{self, FinalOrder, WhereTimeGoes};
use crate::report::Report;
use crate::seed;
use stack::{Infra, StateDir};

/// The name of the check the session adds to the audit's.
pub const CHECK_DRAINED: &str = "drained";

#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Leave the services (and infrastructure) running after the run.
    pub keep_running: bool,
    /// Where `<timestamp>-<scenario>/` goes; default `<workspace>/results`.
    pub results_dir: Option<PathBuf>,
}

impl SessionOptions {
    pub fn new(keep_running: bool, results_dir: Option<PathBuf>) -> Self {
        SessionOptions {
            keep_running,
            results_dir,
        }
    }
}

/// What the load is doing, for a mode that runs beside it.
pub struct DuringLoad<'a> {
    pub plan: &'a RunPlan,
    pub load: Arc<LoadState>,
    pub probe: &'a SystemProbe,
    /// The schedule's t = 0.
    pub start: Instant,
}

/// What the run has measured once it drained, for a mode's additions to the report.
pub struct Finished<'a> {
    pub plan: &'a RunPlan,
    pub state: &'a StateDir,
    pub infra: &'a Infra,
    pub dbs: &'a Databases,
    pub stats: &'a RunStats,
    pub start_utc: DateTime<Utc>,
}

/// What a mode adds to the session.
pub trait Mode {
    /// What [`Mode::during_load`] found.
    type Outcome;

    /// How much of the orders table the monitor reads each second.
    fn monitor_scope(&self) -> Scope {
        Scope::AllOrders
    }

    /// Before the load starts (the services are up and seeded).
    fn before_load(&self, _plan: &RunPlan) -> impl Future<Output = ()> {
        async {}
    }

    /// Runs beside the load (it may stop the load early through `load.cancel`).
    fn during_load(&self, during: DuringLoad<'_>) -> impl Future<Output = Self::Outcome>;

    /// The seconds of the run the HTTP checks judge (default: all of it).
    fn http_window(&self, _outcome: &Self::Outcome) -> Option<Range<u64>> {
        None
    }

    /// The schedule that actually ran (default: all of the plan's).
    fn schedule_ran(&self, plan: &RunPlan, _outcome: &Self::Outcome) -> Schedule {
        plan.schedule.clone()
    }

    /// Adds the mode's checks and sections to the report, before the databases are closed.
    fn finish(
        &self,
        finished: Finished<'_>,
        outcome: Self::Outcome,
        report: &mut Report,
    ) -> impl Future<Output = Result<()>>;
}

/// Runs `plan` end to end with `mode` and returns its report (also written to the results
/// folder and printed). Stops what it started unless `keep_running`.
pub async fn execute<M: Mode>(
    plan: &RunPlan,
    options: &SessionOptions,
    mode: &M,
) -> Result<Report> {
    deploy::check_binaries()?;
    let _lock = stack::run_lock::acquire().await?;
    if plan.scenario.deploy.topology == Topology::Hosts {
        return execute_on_hosts(plan, options, mode).await;
    }
    let state = StateDir::locate()?;
    let postgres_before = stack::pid_of(&state, "postgres").is_some();
    let nats_before = stack::pid_of(&state, "nats").is_some();

    println!("▶ starting PostgreSQL and NATS (installing them if missing)…");
    let infra = stack::ensure_infra(&state).await?;

    let result = tokio::select! {
        result = run(plan, options, mode, &state, &infra, None) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };

    if options.keep_running {
        println!(
            "▶ --keep-running: services stay up (order {}, inventory {}, payment {}); stop with `loadtest down`",
            deploy::base_url(deploy::ORDER_PORT),
            deploy::base_url(deploy::INVENTORY_PORT),
            deploy::base_url(deploy::PAYMENT_PORT),
        );
    } else {
        println!("▶ stopping what the run started…");
        deploy::finish_run(&state, &infra).await;
        let ours_now =
            stack::pid_of(&state, "postgres").is_some() || stack::pid_of(&state, "nats").is_some();
        match (postgres_before, nats_before) {
            (false, false) if ours_now => {
                if let Err(e) = stack::stop_infra(&state).await {
                    eprintln!("warning: stopping PostgreSQL and NATS: {e:#}");
                }
            }
            (true, true) | (false, false) => {}
            _ => println!(
                "  PostgreSQL and NATS left running (one of them was up before the run); `loadtest infra-down` stops both"
            ),
        }
    }
    result
}

/// [`execute`] on the hosts topology: its own state directory (`<state>/hosts`), its own
/// network, PostgreSQL and NATS nodes, all removed at the end (also after a failure or Ctrl-C;
/// `--keep-running` leaves them for `loadtest infra-down`).
async fn execute_on_hosts<M: Mode>(
    plan: &RunPlan,
    options: &SessionOptions,
    mode: &M,
) -> Result<Report> {
    let state = stack::hosts::state_dir()?;
    let deploy = &plan.scenario.deploy;
    let instances: Vec<String> = deploy::instance_names(plan.replication.replicas);
    println!(
        "▶ hosts topology: {} service hosts, PostgreSQL and {} NATS node(s) in network namespaces (installing what is missing)…",
        instances.len(),
        deploy.nats_nodes
    );
    let started = tokio::select! {
        started = stack::hosts::up(&state, &instances, deploy.nats_nodes) => started,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let hosts = match started {
        Ok(hosts) => hosts,
        Err(e) => {
            stack::hosts::down(&state).await.ok();
            return Err(e);
        }
    };
    let result = tokio::select! {
        result = run(plan, options, mode, &state, &hosts.infra, Some(&hosts)) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    if options.keep_running {
        println!("▶ --keep-running: the hosts stay up; `loadtest infra-down` removes them");
    } else {
        println!("▶ stopping what the run started and removing its hosts…");
        deploy::finish_run(&state, &hosts.infra).await;
        if let Err(e) = stack::hosts::down(&state).await {
            eprintln!("warning: removing the hosts: {e:#}");
        }
    }
    result
}

async fn run<M: Mode>(
    plan: &RunPlan,
    options: &SessionOptions,
    mode: &M,
    state: &StateDir,
    infra: &Infra,
    hosts: Option<&stack::hosts::Hosts>,
) -> Result<Report> {
    let scenario = &plan.scenario;
    // The services trace a share of the orders to a receiver of ours, for "Where the time
    // goes". Hosts in network namespaces cannot reach the CLI's loopback: not traced.
    let traces = match hosts {
        None => {
            let ratio = scenario.traces.ratio(plan.schedule.expected_requests());
            Some(TraceSink::start(ratio).await?)
        }
        Some(_) => None,
    };
    let Deployed {
        started_at,
        deployment,
        specs,
        services,
        probe,
        load_plan,
        buyer_token,
    } = deploy_run(plan, state, infra, hosts, traces.as_ref()).await?;
    let admin = AdminClient::new(&deployment.credentials.admin_token)?;
    chaos::preflight(state, &plan.faults, &specs, &admin, deployment.nats_users).await?;
    let load_state = LoadState::new(&load_plan);
    let phase = Arc::new(Mutex::new(Phase::Load));
    let drain_status = Arc::new(Mutex::new(SystemState::default()));
    let watched_product = scenario.data.products[0].id;
    let probe = &probe;

    mode.before_load(plan).await;
    println!(
        "▶ load: {} over {} ({:.0} requests planned, at most {} in flight); Ctrl-C stops the run",
        scenario.name,
        duration::format(plan.schedule.total_duration()),
        plan.schedule.expected_requests(),
        scenario.load.max_in_flight
    );
    let start = Instant::now();
    let start_utc = Utc::now();
    let (stop_monitor, stop_signal) = watch::channel(false);
    let monitor = monitor::spawn(
        MonitorContext {
            dbs: probe.dbs.clone(),
            load: load_state.clone(),
            schedule: plan.schedule.clone(),
            start,
            phase: phase.clone(),
            drain_status: drain_status.clone(),
            scope: mode.monitor_scope(),
            processes: monitor::tracked_processes(state, &services),
            watched_product,
            terminal: std::io::stdout().is_terminal(),
        },
        stop_signal,
    );

    let (stop_probe, probe_signal) = watch::channel(false);
    let faults = (!plan.faults.is_empty()).then(|| {
        let targets = chaos::ProbeTargets {
            // The admin listener's `/ready`: the same verdict as the public one (what a load
            // balancer sees), with the errors behind each reason for the report.
            instances: specs
                .iter()
                .map(|s| (s.name.clone(), s.admin_url()))
                .collect(),
            admin: specs
                .iter()
                .map(|s| (s.name.clone(), s.admin_url()))
                .collect(),
        };
        let health = chaos::spawn_probe(
            probe.dbs.clone(),
            infra.nats_url.clone(),
            deployment.prefix.clone(),
            targets,
            start,
            probe_signal,
        );
        let run = chaos::spawn(
            chaos::FaultContext {
                state: state.clone(),
                specs,
                start,
                load: load_state.clone(),
                admin,
                buyer_token,
                nats_url: infra.nats_url.clone(),
                prefix: deployment.prefix.clone(),
                inventory_db: deployment.databases.inventory.clone(),
                hot_product: watched_product,
                hosts: hosts.map(|h| h.network.clone()),
                admin_database_url: infra.admin_database_url.clone(),
                nats_users: deployment.nats_users,
                credentials: deployment.credentials.clone(),
            },
            plan.faults.clone(),
        );
        (health, run)
    });

    let (generated, outcome) = tokio::join!(
        loadgen::generate(load_plan, load_state.clone(), start),
        mode.during_load(DuringLoad {
            plan,
            load: load_state.clone(),
            probe,
            start,
        })
    );
    let load_elapsed = start.elapsed();
    if let Err(e) = generated {
        let _ = stop_monitor.send(true);
        return Err(e);
    }
    let faults = match faults {
        Some((health, run)) => {
            if plan
                .faults
                .last()
                .is_some_and(|f| f.end() > start.elapsed())
            {
                println!("▶ load done; waiting for the fault schedule to finish…");
            }
            Some((health, run.finish().await?))
        }
        None => None,
    };

    let drain_timeout = scenario.checks.drain_timeout;
    *phase.lock().unwrap_or_else(|e| e.into_inner()) = Phase::Drain {
        since: Instant::now(),
        timeout: drain_timeout,
    };
    let drained = drain::drain(probe, drain_timeout, &drain_status).await;
    if let Some((_, executed)) = &faults {
        let wait = chaos::probe_time_needed(executed, start.elapsed().as_secs_f64());
        tokio::time::sleep(wait).await;
    }
    let _ = stop_monitor.send(true);
    let _ = stop_probe.send(true);
    let samples: Samples = monitor.await.context("the monitor task panicked")?;
    println!("▶ drain: {}", drained.detail(drain_timeout));
    let faults = match faults {
        Some((health, executed)) => {
            let health = health.await.context("the fault probe panicked")?;
            Some((executed, health))
        }
        None => None,
    };
    let stats = load_state.stats_snapshot();
    let load_figures = chaos::LoadFigures {
        stats: &stats,
        p95_threshold_ms: scenario.checks.p95_ms as f64,
        max_error_rate: scenario.checks.max_error_rate,
    };
    let fault_outcome = faults
        .as_ref()
        .map(|(executed, health)| chaos::records(executed, health, &load_figures));

    println!("▶ verifying the three databases…");
    let (p95_ms, error_rate) = match mode.http_window(&outcome) {
        Some(seconds) => {
            let judged = stats.window(seconds);
            (
                judged.latency.p95_ms,
                judged.errors as f64 / judged.sent.max(1) as f64,
            )
        }
        None => (stats.summary().p95_ms, stats.error_rate()),
    };
    let http = HttpFigures {
        p95_ms,
        p95_threshold_ms: scenario.checks.p95_ms as f64,
        error_rate,
        max_error_rate: scenario.checks.max_error_rate,
    };
    let dbs = &probe.dbs;
    let audit = audit::audit(dbs, Some(&http)).await?;
    let final_progress = database::progress(dbs, Scope::AllOrders).await?;
    let e2e = database::e2e_latencies(dbs).await?;
    let where_time_goes = where_time_goes(traces.as_ref(), dbs).await?;

    let mut checks = checks(audit, &drained, drain_timeout);
    let requests = std::mem::take(
        &mut *load_state
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    checks.push(audit::accepted::accepted_orders(&dbs.orders, &requests.accepted()).await?);
    checks.push(audit::answers::answered_orders(&dbs.orders, &requests).await?);
    if let Some((_, check)) = &fault_outcome {
        checks.push(check.clone());
    }
    let schedule_ran = mode.schedule_ran(plan, &outcome);
    let mut report = build_report(ReportInputs {
        scenario,
        started_at,
        start_utc,
        schedule: &schedule_ran,
        load_elapsed,
        stats: &stats,
        samples,
        final_progress: &final_progress,
        e2e: &e2e,
        watched_product,
        checks,
    });
    if let Some((records, _)) = fault_outcome {
        report.faults = records;
    }
    report.where_time_goes = Some(where_time_goes);
    let finished = mode
        .finish(
            Finished {
                plan,
                state,
                infra,
                dbs,
                stats: &stats,
                start_utc,
            },
            outcome,
            &mut report,
        )
        .await;
    dbs.close().await;
    finished?;

    let dir = match &options.results_dir {
        Some(dir) => dir.clone(),
        None => stack::workspace_root()?.join("results"),
    }
    .join(format!(
        "{}-{}",
        started_at.format("%Y%m%dT%H%M%SZ"),
        file_safe(&scenario.name)
    ));
    let (json, html) = report
        .write_files(&dir)
        .with_context(|| format!("writing the report into {}", dir.display()))?;
    if let Some((executed, health)) = &faults {
        chaos::write_timeline(&dir, executed, health)?;
    }
    println!("{}", report.terminal_summary());
    println!("  report: {}\n          {}", json.display(), html.display());
    Ok(report)
}

/// "Where the time goes", from the spans the run's receiver got (the last ones awaited) and
/// the final orders.
async fn where_time_goes(traces: Option<&TraceSink>, dbs: &Databases) -> Result<WhereTimeGoes> {
    let Some(traces) = traces else {
        return Ok(WhereTimeGoes {
            note: "not traced: the hosts topology's services cannot reach the CLI's OTLP receiver"
                .into(),
            ..WhereTimeGoes::default()
        });
    };
    let spans = traces.settled_spans(Duration::from_secs(15)).await;
    let orders: HashMap<String, FinalOrder> = database::final_orders(dbs)
        .await?
        .into_iter()
        .map(|(id, status, e2e_ms)| (id.to_string(), FinalOrder { status, e2e_ms }))
        .collect();
    Ok(hops::where_time_goes(&spans, &orders, traces.ratio))
}

/// The drained check first, then the audit's.
fn checks(audit: Vec<Check>, drained: &DrainOutcome, timeout: Duration) -> Vec<Check> {
    let mut checks = vec![Check::new(
        CHECK_DRAINED,
        drained.drained,
        drained.detail(timeout),
    )];
    checks.extend(audit);
    checks
}

fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What a run has deployed before its load starts.
struct Deployed {
    started_at: DateTime<Utc>,
    deployment: Deployment,
    /// What every instance was started with (where it listens).
    specs: Vec<deploy::services::ServiceSpec>,
    services: Vec<(String, u32)>,
    probe: SystemProbe,
    load_plan: LoadPlan,
    /// The token of user 1, for requests of the run's own (faults).
    buyer_token: String,
}

/// Fresh databases and NATS prefix, the services (with `[deploy]` replicas), seed data, one
/// token per user, connections for the monitor and the drain, and the load plan.
async fn deploy_run(
    plan: &RunPlan,
    state: &StateDir,
    infra: &Infra,
    hosts: Option<&stack::hosts::Hosts>,
    traces: Option<&TraceSink>,
) -> Result<Deployed> {
    let scenario = &plan.scenario;
    let started_at = Utc::now();
    let prefix = deploy::run_prefix();
    let credentials = Credentials::random();

    println!("▶ fresh databases and NATS prefix {prefix}; starting the services…");
    deploy::stop_services(state)
        .await
        .context("stopping services left from before")?;
    let databases =
        deploy::prepare_databases(&infra.admin_database_url, true, &credentials).await?;
    let deployment = Deployment {
        databases: databases.clone(),
        nats_url: infra.nats_url.clone(),
        nats_users: infra.manages_nats_users(),
        prefix: prefix.clone(),
        credentials: credentials.clone(),
        decline_rate: scenario.payment.decline_rate,
        placement: hosts.map(|h| h.network.clone()),
        stream_replicas: hosts.map_or(1, |h| h.nats_nodes),
    };
    let mut replication = plan.replication.clone();
    if let Some(traces) = traces {
        replication.extra_env.extend(traces.env());
    }
    let specs = deploy::instance_specs(&deployment, &replication);
    let order_urls = deploy::order_urls(&specs);
    if plan.replication.replicas > 1 || hosts.is_some() {
        println!(
            "  {} instance(s) of each service (order at {})",
            plan.replication.replicas,
            order_urls.join(", ")
        );
    }
    let services = deploy::start_instances(state, &deployment, &replication).await?;
    if hosts.is_some() {
        for line in deploy::describe_streams(&infra.nats_url, &prefix).await? {
            println!("  {line}");
        }
    }

    let data = &scenario.data;
    println!(
        "▶ seeding {} product(s) and {} accounts ({} with a low balance)…",
        data.products.len(),
        data.users,
        data.low_balance_users
    );
    let targets = seed::SeedTargets {
        inventory: deploy::first_url(&specs, "inventory-service")?,
        payment: deploy::first_url(&specs, "payment-service")?,
    };
    let seeded = seed::seed(scenario, &credentials, &targets).await?;
    if seeded.products_existing + seeded.accounts_existing > 0 {
        bail!("the fresh databases already held seed data: {seeded:?}");
    }
    let token_ttl =
        scenario.load_duration() + scenario.checks.drain_timeout + Duration::from_secs(3600);
    let tokens = seed::mint_tokens(&credentials.jwt_secret, data.users, token_ttl)?;

    // The monitor, the drain and the audit read through the read-only role.
    let audit = deploy::DatabaseUrls::for_audit(&infra.admin_database_url, &credentials);
    let dbs = Databases::connect(&audit.orders, &audit.inventory, &audit.payments).await?;
    let probe = SystemProbe::connect(dbs, &infra.nats_url, &prefix).await?;

    let product_ids: Vec<i64> = data.products.iter().map(|p| p.id).collect();
    let load_plan = LoadPlan::new(
        plan.schedule.clone(),
        order_urls
            .first()
            .cloned()
            .context("no order-service instance")?,
        &tokens,
        &product_ids,
        scenario.load.quantity,
        scenario.load.max_in_flight,
        scenario.load.request_timeout,
    )?
    .with_urls(&order_urls);
    Ok(Deployed {
        started_at,
        deployment,
        specs,
        services,
        probe,
        load_plan,
        buyer_token: tokens[0].clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drained_check_comes_first_and_can_fail() {
        let outcome = DrainOutcome {
            drained: false,
            elapsed: Duration::from_secs(1),
            status: SystemState::default(),
        };
        let checks = checks(
            vec![Check::new("stock", true, "ok")],
            &outcome,
            Duration::from_secs(1),
        );
        assert_eq!(checks[0].name, CHECK_DRAINED);
        assert!(!checks[0].passed);
        assert_eq!(checks[1].name, "stock");
    }

    #[test]
    fn file_safe_names() {
        assert_eq!(file_safe("seed hot/1"), "seed_hot_1");
        assert_eq!(file_safe("ci-short"), "ci-short");
    }
}
