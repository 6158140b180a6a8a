//! One load-test run from nothing to a verified report: infrastructure, fresh databases and
//! stream prefix, the three services, seed data, the open-model load, the drain, the audit, the
//! report files, and stopping what the run started.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::admin::AdminClient;
use crate::deploy::{self, Credentials, Deployment, ORDER_PORT};
use crate::drain::{self, Broker, DrainOutcome, DrainStatus};
use crate::driver::{self, LoadPlan, LoadState};
use crate::faults;
use crate::monitor::{self, MonitorContext, Phase, ProgressSample, Samples};
use crate::report::{CheckResult, Report, SecondRow};
use crate::scenario::{format_duration, Scenario};
use crate::schedule::Schedule;
use crate::seed;
use crate::stack::{self, StateDir};
use crate::stats::{latency_summary_from_millis, per_second_percentiles, LatencySummary, RunStats};
use crate::verify::{self, Databases, HttpFigures, Progress};

/// The name of the check this runner adds to the audit's.
pub const CHECK_DRAINED: &str = "drained";

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Leave the services (and infrastructure) running after the run.
    pub keep_running: bool,
    /// Where `<timestamp>-<scenario>/` goes; default `<workspace>/results`.
    pub results_dir: Option<PathBuf>,
}

/// Runs `scenario` end to end and returns its report (also written to the results folder and
/// printed). Stops what it started unless `keep_running`, also when the run fails or is
/// interrupted with Ctrl-C.
pub async fn run_scenario(scenario: &Scenario, options: &RunOptions) -> Result<Report> {
    deploy::check_binaries()?;
    let _lock = stack::run_lock::acquire()?;
    let state = StateDir::locate()?;
    let postgres_before = stack::pid_of(&state, "postgres").is_some();
    let nats_before = stack::pid_of(&state, "nats").is_some();

    println!("▶ starting PostgreSQL and NATS (installing them if missing)…");
    let infra = stack::ensure_infra(&state).await?;

    let result = tokio::select! {
        result = run(scenario, options, &state, &infra) => result,
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
        deploy::finish_run(&state, &infra.nats_url).await;
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

async fn run(
    scenario: &Scenario,
    options: &RunOptions,
    state: &StateDir,
    infra: &stack::Infra,
) -> Result<Report> {
    let fault_plan = faults::plan(scenario)
        .map_err(|problems| anyhow!("invalid fault schedule: {}", problems.join("; ")))?;
    let Prepared {
        started_at,
        prefix,
        deployment,
        replication,
        services,
        dbs,
        broker,
        schedule,
        product_ids,
        load_plan: plan,
        buyer_token,
        ..
    } = prepare(scenario, state, infra).await?;
    let specs = deploy::instance_specs(&deployment, &replication);
    let admin = AdminClient::new(&deployment.credentials.admin_token)?;
    faults::preflight(state, &fault_plan, &specs, &admin).await?;
    let load_state = LoadState::new(&plan);
    let phase = Arc::new(Mutex::new(Phase::Load));
    let drain_status = Arc::new(Mutex::new(DrainStatus::default()));
    let watched_product = product_ids[0];

    let tracked = monitor::tracked_processes(state, &services);

    println!(
        "▶ load: {} over {} ({:.0} requests planned, at most {} in flight); Ctrl-C stops the run",
        scenario.name,
        format_duration(schedule.total_duration()),
        schedule.expected_requests(),
        scenario.load.max_in_flight
    );
    let start = Instant::now();
    let start_utc = Utc::now();
    let (stop_monitor, stop_signal) = watch::channel(false);
    let monitor = monitor::spawn(
        MonitorContext {
            dbs: dbs.clone(),
            load: load_state.clone(),
            schedule: schedule.clone(),
            start,
            phase: phase.clone(),
            drain_status: drain_status.clone(),
            processes: tracked,
            watched_product,
            terminal: std::io::stdout().is_terminal(),
        },
        stop_signal,
    );

    let (stop_probe, probe_signal) = watch::channel(false);
    let chaos = (!fault_plan.is_empty()).then(|| {
        let targets = faults::ProbeTargets {
            instances: specs
                .iter()
                .map(|s| (s.name.clone(), deploy::base_url(s.port)))
                .collect(),
        };
        let probe = faults::spawn_probe(
            dbs.clone(),
            infra.nats_url.clone(),
            prefix.clone(),
            targets,
            start,
            probe_signal,
        );
        let run = faults::spawn(
            faults::FaultContext {
                state: state.clone(),
                specs,
                start,
                load: load_state.clone(),
                admin,
                buyer_token,
                nats_url: infra.nats_url.clone(),
                prefix: prefix.clone(),
                inventory_db: deployment.databases.inventory.clone(),
                hot_product: watched_product,
            },
            fault_plan.clone(),
        );
        (probe, run)
    });

    let generated = driver::generate(plan, load_state.clone(), start).await;
    let load_elapsed = start.elapsed();
    if let Err(e) = generated {
        let _ = stop_monitor.send(true);
        return Err(e);
    }
    let chaos = match chaos {
        Some((probe, run)) => {
            if fault_plan.last().is_some_and(|f| f.end() > start.elapsed()) {
                println!("▶ load done; waiting for the fault schedule to finish…");
            }
            Some((probe, run.finish().await?))
        }
        None => None,
    };

    let drain_timeout = scenario.checks.drain_timeout;
    *phase.lock().unwrap_or_else(|e| e.into_inner()) = Phase::Drain {
        since: Instant::now(),
        timeout: drain_timeout,
    };
    let drained = drain::drain(&dbs, &broker, drain_timeout, &drain_status).await;
    if let Some((_, executed)) = &chaos {
        let wait = faults::probe_time_needed(executed, start.elapsed().as_secs_f64());
        tokio::time::sleep(wait).await;
    }
    let _ = stop_monitor.send(true);
    let _ = stop_probe.send(true);
    let samples = monitor.await.context("the monitor task panicked")?;
    println!("▶ drain: {}", drained.detail(drain_timeout));
    let chaos = match chaos {
        Some((probe, executed)) => {
            let health = probe.await.context("the fault probe panicked")?;
            Some((executed, health))
        }
        None => None,
    };
    let fault_outcome = chaos
        .as_ref()
        .map(|(executed, health)| faults::records(executed, health));

    println!("▶ verifying the three databases…");
    let stats = load_state.stats_snapshot();
    let http = HttpFigures {
        p95_ms: stats.summary().p95_ms,
        p95_threshold_ms: scenario.checks.p95_ms as f64,
        error_rate: stats.error_rate(),
        max_error_rate: scenario.checks.max_error_rate,
    };
    let audit = verify::audit(&dbs, Some(&http)).await?;
    let final_progress = verify::progress(&dbs).await?;
    let e2e = verify::e2e_latencies(&dbs).await?;
    dbs.close().await;

    let mut checks = checks(audit, &drained, drain_timeout);
    if let Some((_, check)) = &fault_outcome {
        checks.push(check.clone());
    }
    let mut report = build_report(ReportInputs {
        scenario,
        started_at,
        start_utc,
        schedule: &schedule,
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
    if let Some((executed, health)) = &chaos {
        faults::write_timeline(&dir, executed, health)?;
    }
    println!("{}", report.terminal_summary());
    println!("  report: {}\n          {}", json.display(), html.display());
    Ok(report)
}

pub(crate) fn checks(
    audit: Vec<verify::Check>,
    drained: &DrainOutcome,
    timeout: Duration,
) -> Vec<CheckResult> {
    let mut checks = vec![CheckResult::new(
        CHECK_DRAINED,
        drained.drained,
        drained.detail(timeout),
    )];
    checks.extend(
        audit
            .into_iter()
            .map(|c| CheckResult::new(c.name, c.passed, c.detail)),
    );
    checks
}

pub(crate) struct ReportInputs<'a> {
    pub(crate) scenario: &'a Scenario,
    pub(crate) started_at: DateTime<Utc>,
    /// Wall-clock time of the schedule's t = 0.
    pub(crate) start_utc: DateTime<Utc>,
    pub(crate) schedule: &'a Schedule,
    pub(crate) load_elapsed: Duration,
    pub(crate) stats: &'a RunStats,
    pub(crate) samples: Samples,
    pub(crate) final_progress: &'a Progress,
    /// (created_at, ms to the final status) of every final order.
    pub(crate) e2e: &'a [(DateTime<Utc>, f64)],
    pub(crate) watched_product: i64,
    pub(crate) checks: Vec<CheckResult>,
}

pub(crate) fn build_report(inputs: ReportInputs<'_>) -> Report {
    let ReportInputs {
        scenario,
        started_at,
        start_utc,
        schedule,
        load_elapsed,
        stats,
        samples,
        final_progress,
        e2e,
        watched_product,
        checks,
    } = inputs;

    let e2e_by_second: BTreeMap<u64, LatencySummary> = per_second_percentiles(
        e2e.iter()
            .map(|(created, ms)| (second_after(start_utc, *created), *ms)),
    )
    .into_iter()
    .collect();
    let e2e_latency =
        (!e2e.is_empty()).then(|| latency_summary_from_millis(e2e.iter().map(|(_, ms)| *ms)));

    let buckets = stats.per_second();
    let last_sample_second = samples.progress.last().map_or(0, |s| s.at_s.floor() as u64);
    let last_second = (buckets.len() as u64)
        .saturating_sub(1)
        .max(last_sample_second)
        .max(schedule.total_duration().as_secs().saturating_sub(1));
    let progress_at = progress_by_second(&samples.progress);

    let per_second = (0..=last_second)
        .map(|second| {
            let from = Duration::from_secs(second);
            let bucket = buckets.get(second as usize);
            let e2e = e2e_by_second.get(&second);
            let progress = progress_at.get(&second);
            SecondRow {
                second,
                target_rps: schedule.expected_requests_between(from, from + Duration::from_secs(1)),
                achieved_rps: bucket.map_or(0.0, |b| b.started as f64),
                http_p50_ms: bucket.and_then(|b| b.p50_ms),
                http_p95_ms: bucket.and_then(|b| b.p95_ms),
                http_p99_ms: bucket.and_then(|b| b.p99_ms),
                e2e_p50_ms: e2e.map(|s| s.p50_ms),
                e2e_p95_ms: e2e.map(|s| s.p95_ms),
                e2e_p99_ms: e2e.map(|s| s.p99_ms),
                stock: progress.map(|p| p.stock.values().sum()),
                outbox_backlog: progress.map(|p| p.outbox_backlog),
                orders_pending: progress.map(|p| p.non_final_orders.max(0) as u64),
                orders_completed: progress.map(|p| count_of(p, |k| k == "COMPLETED")),
                orders_failed: progress.map(|p| count_of(p, |k| k.starts_with("FAILED"))),
            }
        })
        .collect();

    let sold_out_after_s = samples
        .progress
        .iter()
        .find(|s| s.progress.stock.get(&watched_product) == Some(&0))
        .map(|s| s.at_s);

    let load_seconds = schedule
        .total_duration()
        .as_secs_f64()
        .max(load_elapsed.as_secs_f64());
    Report {
        scenario: scenario.name.clone(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: machine(),
        duration_s: load_seconds,
        requests: stats.sent(),
        // Over the planned duration, as k6 reports its rate.
        achieved_rps: stats.sent() as f64 / schedule.total_duration().as_secs_f64().max(1e-9),
        target_requests: schedule.expected_requests(),
        http_latency: stats.summary(),
        dropped: stats.dropped(),
        outcomes: stats.counts_by_outcome(),
        error_rate: stats.error_rate(),
        orders_by_status: final_progress
            .orders_by_status
            .iter()
            .map(|(k, v)| (k.clone(), (*v).max(0) as u64))
            .collect(),
        e2e_latency,
        sold_out_after_s,
        per_second,
        checks,
        faults: Vec::new(),
        processes: samples.processes,
    }
}

fn count_of(progress: &Progress, key: impl Fn(&str) -> bool) -> u64 {
    progress
        .orders_by_status
        .iter()
        .filter(|(k, _)| key(k))
        .map(|(_, v)| (*v).max(0) as u64)
        .sum()
}

/// The last sample taken in each second.
fn progress_by_second(samples: &[ProgressSample]) -> BTreeMap<u64, Progress> {
    samples
        .iter()
        .map(|s| (s.at_s.floor() as u64, s.progress.clone()))
        .collect()
}

/// Whole seconds from `start` to `at` (0 when `at` is earlier).
fn second_after(start: DateTime<Utc>, at: DateTime<Utc>) -> u64 {
    (at - start).num_milliseconds().max(0) as u64 / 1000
}

/// E.g. "2 cores, 24 GiB".
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or("unknown memory".to_string(), |kib| {
            format!("{:.0} GiB", kib / 1024.0 / 1024.0)
        });
    format!("{cores} cores, {memory}")
}

pub(crate) fn file_safe(name: &str) -> String {
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

/// What every run sets up before its load starts.
pub(crate) struct Prepared {
    pub started_at: DateTime<Utc>,
    pub prefix: String,
    pub deployment: Deployment,
    pub replication: deploy::Replication,
    pub services: Vec<(String, u32)>,
    pub dbs: Databases,
    pub broker: Broker,
    pub schedule: Schedule,
    pub product_ids: Vec<i64>,
    pub load_plan: LoadPlan,
    /// The token of user 1, for requests of the run's own (faults).
    pub buyer_token: String,
}

/// Fresh databases and NATS prefix, the services (with `[deploy]` replicas), seed data, one
/// token per user, connections for the monitor and the drain, and the load plan.
pub(crate) async fn prepare(
    scenario: &Scenario,
    state: &StateDir,
    infra: &stack::Infra,
) -> Result<Prepared> {
    let started_at = Utc::now();
    let prefix = deploy::run_prefix();
    let credentials = Credentials::random();

    println!("▶ fresh databases and NATS prefix {prefix}; starting the services…");
    deploy::stop_services(state)
        .await
        .context("stopping services left from before")?;
    let databases = deploy::prepare_databases(&infra.admin_database_url, true).await?;
    let deployment = Deployment {
        databases: databases.clone(),
        nats_url: infra.nats_url.clone(),
        prefix: prefix.clone(),
        credentials: credentials.clone(),
        decline_rate: scenario.payment.decline_rate,
    };
    let replication = faults::replication(scenario);
    if replication.replicas > 1 {
        println!(
            "  {} instances of each service (order at {})",
            replication.replicas,
            deploy::order_urls(replication.replicas).join(", ")
        );
    }
    let services = deploy::start_instances(state, &deployment, &replication).await?;

    let data = &scenario.data;
    println!(
        "▶ seeding {} product(s) and {} accounts ({} with a low balance)…",
        data.products.len(),
        data.users,
        data.low_balance_users
    );
    let seeded = seed::seed(scenario, &credentials).await?;
    if seeded.products_existing + seeded.accounts_existing > 0 {
        bail!("the fresh databases already held seed data: {seeded:?}");
    }
    let token_ttl =
        scenario.load_duration() + scenario.checks.drain_timeout + Duration::from_secs(3600);
    let tokens = seed::mint_tokens(&credentials.jwt_secret, data.users, token_ttl)?;

    let dbs =
        Databases::connect(&databases.orders, &databases.inventory, &databases.payments).await?;
    let broker = Broker::connect(&infra.nats_url, &prefix).await?;

    let schedule = Schedule::from_profile(&scenario.load);
    let product_ids: Vec<i64> = data.products.iter().map(|p| p.id).collect();
    let plan = LoadPlan::new(
        schedule.clone(),
        format!("{}/orders", deploy::base_url(ORDER_PORT)),
        &tokens,
        &product_ids,
        scenario.load.quantity,
        scenario.load.max_in_flight,
        scenario.load.request_timeout,
    )?
    .with_urls(&deploy::order_urls(replication.replicas));
    Ok(Prepared {
        started_at,
        prefix,
        deployment,
        replication,
        services,
        dbs,
        broker,
        schedule,
        product_ids,
        load_plan: plan,
        buyer_token: tokens[0].clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ProcessUsage;
    use crate::stats::Outcome;

    fn scenario() -> Scenario {
        Scenario::from_file(
            stack::workspace_root()
                .expect("root")
                .join("scenarios/ci-short.toml"),
        )
        .expect("ci-short parses")
    }

    fn progress(stock: i64, completed: i64, failed: i64, pending: i64) -> Progress {
        Progress {
            non_final_orders: pending,
            outbox_backlog: 0,
            orders_by_status: [
                ("COMPLETED".to_string(), completed),
                ("FAILED:OUT_OF_STOCK".to_string(), failed),
                ("PENDING".to_string(), pending),
            ]
            .into_iter()
            .collect(),
            stock: [(1, stock)].into_iter().collect(),
            dead_letters: 0,
        }
    }

    #[test]
    fn report_rows_combine_schedule_stats_samples_and_e2e() {
        let scenario = scenario();
        let schedule = Schedule::from_profile(&scenario.load);
        let mut stats = RunStats::new(60);
        stats.record(
            Duration::from_millis(500),
            Duration::from_millis(8),
            Outcome::Status(202),
        );
        stats.record(
            Duration::from_millis(1500),
            Duration::from_millis(4),
            Outcome::Status(202),
        );
        stats.record_dropped(Duration::from_millis(1600));
        let start_utc = Utc::now();
        let samples = Samples {
            progress: vec![
                ProgressSample {
                    at_s: 0.01,
                    progress: progress(3000, 0, 0, 0),
                },
                ProgressSample {
                    at_s: 1.02,
                    progress: progress(2999, 1, 0, 1),
                },
                ProgressSample {
                    at_s: 2.0,
                    progress: progress(0, 1, 1, 0),
                },
            ],
            processes: vec![ProcessUsage {
                name: "x".into(),
                ..ProcessUsage::default()
            }],
        };
        let e2e = vec![
            (start_utc + chrono::Duration::milliseconds(600), 40.0),
            (start_utc + chrono::Duration::milliseconds(1700), 90.0),
        ];
        let report = build_report(ReportInputs {
            scenario: &scenario,
            started_at: start_utc,
            start_utc,
            schedule: &schedule,
            load_elapsed: Duration::from_secs(60),
            stats: &stats,
            samples,
            final_progress: &progress(0, 1, 1, 0),
            e2e: &e2e,
            watched_product: 1,
            checks: vec![CheckResult::new("x", true, "")],
        });
        assert_eq!(report.requests, 2);
        assert_eq!(report.dropped, 1);
        assert_eq!(report.per_second.len(), 60);
        let row = |s: usize| &report.per_second[s];
        assert_eq!(row(0).achieved_rps, 1.0);
        assert_eq!(row(0).stock, Some(3000));
        assert_eq!(row(1).orders_pending, Some(1));
        assert_eq!(row(2).orders_failed, Some(1));
        assert_eq!(row(0).e2e_p50_ms, Some(40.0));
        assert_eq!(row(1).e2e_p99_ms, Some(90.0));
        assert_eq!(row(3).stock, None);
        // 0 → 200 RPS over 10 s: the first second expects 10 requests.
        assert!((row(0).target_rps - 10.0).abs() < 1e-9);
        assert_eq!(report.sold_out_after_s, Some(2.0));
        assert_eq!(report.e2e_latency.map(|s| s.count), Some(2));
        assert_eq!(report.orders_by_status.get("COMPLETED"), Some(&1));
        assert!(report.passed());
    }

    #[test]
    fn the_drained_check_comes_first_and_can_fail() {
        let outcome = DrainOutcome {
            drained: false,
            elapsed: Duration::from_secs(1),
            status: DrainStatus::default(),
        };
        let checks = checks(
            vec![verify::Check {
                name: "stock".into(),
                passed: true,
                detail: "ok".into(),
            }],
            &outcome,
            Duration::from_secs(1),
        );
        assert_eq!(checks[0].name, CHECK_DRAINED);
        assert!(!checks[0].passed);
        assert_eq!(checks[1].name, "stock");
    }

    #[test]
    fn machine_names_cores_and_memory() {
        let text = machine();
        assert!(text.contains("cores, ") && text.ends_with("GiB"), "{text}");
    }

    #[test]
    fn file_safe_names() {
        assert_eq!(file_safe("seed hot/1"), "seed_hot_1");
        assert_eq!(file_safe("ci-short"), "ci-short");
    }
}
