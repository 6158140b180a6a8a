//! Fault injection for chaos scenarios: a schedule of faults executed by PID against the
//! processes this CLI started, a probe that watches the system catch up, and the recovery time
//! of every fault.
//!
//! A scenario lists its faults as `[[faults]]` tables (`at`, `kind`, `target`, `duration`):
//!
//! | kind | target | what happens |
//! | --- | --- | --- |
//! | `kill` | a service or one instance | `kill -9`; after `duration` started again (same env and port) |
//! | `pause` | a service or one instance | `SIGSTOP`; after `duration` `SIGCONT` |
//! | `kill-nats` | `nats` | `kill -9` of nats-server; after `duration` restarted on the same store |
//! | `stop-postgres` | `postgres` | immediate-mode stop (no checkpoint); after `duration` started again (crash recovery) |
//! | `broker-unreachable` | `nats` | nats-server `SIGSTOP`ped: connections stay open, nothing answers; after `duration` `SIGCONT` |
//!
//! A service target is `order`, `inventory`, `payment` (or `order-service`, …) for every
//! instance of that service, or `order-service-2` (etc.) for one replica; see
//! [`crate::deploy::Replication`] for how replicas are named. Faults run one at a time: each
//! must start after the previous one has been lifted. They may outlast the load; the drain
//! starts when the last one is lifted.
//!
//! **Recovery.** A probe samples the system once a second: the outbox backlog (rows over the
//! three databases), the JetStream consumer backlog (messages not yet delivered plus delivered
//! and unacknowledged, over every durable consumer of the run) and the age of the oldest order
//! that is not final. The system has *caught up* when, in [`RECOVERY_SAMPLES`] samples in a row,
//! the outbox holds at most [`RECOVERY_MAX_OUTBOX`] rows, the consumers at most
//! [`RECOVERY_MAX_CONSUMER_BACKLOG`] messages, and no unfinished order is older than
//! [`RECOVERY_MAX_OLDEST_UNFINISHED_S`] seconds. A fault's recovery time runs from the moment it
//! was lifted (process restarted and ready, `SIGCONT` sent) to the first sample of that run of
//! caught-up samples. The last condition is the decisive one: an order accepted during an
//! outage stays unfinished until every hop it needs works again.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::jetstream;
use futures::TryStreamExt;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::deploy::{self, Replication, MAX_REPLICAS, SERVICES};
use crate::drain;
use crate::driver::LoadState;
use crate::report::{CheckResult, FaultRecord};
use crate::scenario::{format_duration, Scenario};
use crate::stack::{self, ServiceSpec, StateDir};
use crate::verify::Databases;

/// The name of the check the runner adds when a scenario has faults.
pub const CHECK_FAULTS: &str = "faults";

/// Caught up: at most this many outbox rows (one relay batch) …
pub const RECOVERY_MAX_OUTBOX: i64 = 500;
/// … at most this many messages waiting in or delivered by the consumers (about one second of
/// events at the seed plan's peak rate) …
pub const RECOVERY_MAX_CONSUMER_BACKLOG: u64 = 2000;
/// … no unfinished order older than this (the seed run's e2e p99 is well under a second) …
pub const RECOVERY_MAX_OLDEST_UNFINISHED_S: f64 = 5.0;
/// … in this many probe samples (one a second) in a row.
pub const RECOVERY_SAMPLES: usize = 3;
/// How often the probe samples.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one probe query may take; slower counts as "no sample" (not caught up).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a killed process may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The kinds of fault, as written in scenario files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FaultKind {
    Kill,
    Pause,
    KillNats,
    StopPostgres,
    BrokerUnreachable,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::KillNats,
        FaultKind::StopPostgres,
        FaultKind::BrokerUnreachable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::KillNats => "kill-nats",
            FaultKind::StopPostgres => "stop-postgres",
            FaultKind::BrokerUnreachable => "broker-unreachable",
        }
    }

    pub fn parse(text: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == text.trim())
    }

    /// The only target an infrastructure fault accepts; `None` for service faults.
    fn infra_target(self) -> Option<&'static str> {
        match self {
            FaultKind::Kill | FaultKind::Pause => None,
            FaultKind::KillNats | FaultKind::BrokerUnreachable => Some("nats"),
            FaultKind::StopPostgres => Some("postgres"),
        }
    }
}

/// One validated fault of the schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub at: Duration,
    pub kind: FaultKind,
    /// As written in the scenario.
    pub target: String,
    /// The service instances it hits (`kill`, `pause`); empty for infrastructure faults.
    pub instances: Vec<String>,
    pub duration: Duration,
}

impl Fault {
    /// When the fault is planned to be lifted.
    pub fn end(&self) -> Duration {
        self.at + self.duration
    }
}

/// The scenario's fault schedule, validated and ordered by start time.
pub fn plan(scenario: &Scenario) -> Result<Vec<Fault>, Vec<String>> {
    let replicas = scenario.deploy.replicas;
    let mut problems = Vec::new();
    let mut faults: Vec<(usize, Fault)> = Vec::new();
    for (i, spec) in scenario.faults.iter().enumerate() {
        let Some(kind) = FaultKind::parse(&spec.kind) else {
            let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            problems.push(format!(
                "faults[{i}]: unknown kind {:?} (one of {})",
                spec.kind,
                known.join(", ")
            ));
            continue;
        };
        let duration = match spec.duration {
            Some(d) if !d.is_zero() => d,
            _ => {
                problems.push(format!(
                    "faults[{i}] ({}): needs a duration > 0 (how long until it is lifted)",
                    kind.name()
                ));
                continue;
            }
        };
        let target = spec.target.trim();
        let instances = match kind.infra_target() {
            Some(expected) if target == expected => Vec::new(),
            Some(expected) => {
                problems.push(format!(
                    "faults[{i}] ({}): target must be {expected:?} (got {target:?})",
                    kind.name()
                ));
                continue;
            }
            None => match resolve_target(target, replicas) {
                Ok(instances) => instances,
                Err(problem) => {
                    problems.push(format!("faults[{i}] ({}): {problem}", kind.name()));
                    continue;
                }
            },
        };
        faults.push((
            i,
            Fault {
                at: spec.at,
                kind,
                target: target.to_string(),
                instances,
                duration,
            },
        ));
    }
    faults.sort_by_key(|(_, f)| f.at);
    for pair in faults.windows(2) {
        let ((i, earlier), (j, later)) = (&pair[0], &pair[1]);
        if later.at < earlier.end() {
            problems.push(format!(
                "faults[{j}] ({} at {}) starts before faults[{i}] ({} at {} for {}) is lifted; faults run one at a time",
                later.kind.name(),
                format_duration(later.at),
                earlier.kind.name(),
                format_duration(earlier.at),
                format_duration(earlier.duration)
            ));
        }
    }
    if problems.is_empty() {
        Ok(faults.into_iter().map(|(_, f)| f).collect())
    } else {
        Err(problems)
    }
}

/// What is wrong with the scenario's `[deploy]` section and fault schedule (for the scenario
/// parser, so every problem is reported when the file is loaded).
pub fn problems(scenario: &Scenario) -> Vec<String> {
    let mut problems = Vec::new();
    let replicas = scenario.deploy.replicas;
    if !(1..=MAX_REPLICAS).contains(&replicas) {
        problems.push(format!(
            "deploy.replicas must be within 1..={MAX_REPLICAS} (got {replicas})"
        ));
        return problems;
    }
    if let Some(wait) = scenario.deploy.consumer_ack_wait {
        if wait < Duration::from_secs(1) {
            problems.push(format!(
                "deploy.consumer_ack_wait must be at least 1s (got {})",
                format_duration(wait)
            ));
        }
    }
    if let Err(more) = plan(scenario) {
        problems.extend(more);
    }
    problems
}

/// The service (binary name) a user-facing name stands for: `order`, `order-service`, ….
fn service_named(name: &str) -> Option<&'static str> {
    SERVICES
        .iter()
        .map(|(service, _)| *service)
        .find(|service| *service == name || service.strip_suffix("-service") == Some(name))
}

/// The instances `target` names: every instance of a service, or one replica
/// (`order-service-2`, `order-2`; replica numbers start at 1).
pub fn resolve_target(target: &str, replicas: u32) -> Result<Vec<String>, String> {
    if let Some(service) = service_named(target) {
        return Ok((1..=replicas)
            .map(|r| deploy::instance_name(service, r, replicas))
            .collect());
    }
    if let Some((name, number)) = target.rsplit_once('-') {
        if let (Some(service), Ok(replica)) = (service_named(name), number.parse::<u32>()) {
            if (1..=replicas).contains(&replica) {
                return Ok(vec![deploy::instance_name(service, replica, replicas)]);
            }
            return Err(format!(
                "target {target:?}: replica {replica} does not exist (deploy.replicas = {replicas})"
            ));
        }
    }
    Err(format!(
        "unknown target {target:?}: a service (order, inventory, payment) or one replica (e.g. payment-service-2)"
    ))
}

/// The replicas and extra environment the scenario asks for.
pub fn replication(scenario: &Scenario) -> Replication {
    let mut extra_env = Vec::new();
    if let Some(wait) = scenario.deploy.consumer_ack_wait {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        extra_env.push((
            "APP_CONSUMER__ACK_WAIT_SECS".to_string(),
            seconds.to_string(),
        ));
    }
    Replication {
        replicas: scenario.deploy.replicas,
        extra_env,
    }
}

/// Errors unless every process the schedule needs is one we started (we signal only our own
/// PIDs, never another PostgreSQL or NATS).
pub fn preflight(state: &StateDir, faults: &[Fault], specs: &[ServiceSpec]) -> Result<()> {
    for fault in faults {
        match fault.kind.infra_target() {
            Some(name) => {
                if stack::pid_of(state, name).is_none() {
                    bail!(
                        "fault {} needs our own {name} (started by this CLI), but none runs; unset ORDERSYS_DATABASE_URL / ORDERSYS_NATS_URL for chaos runs",
                        fault.kind.name()
                    );
                }
            }
            None => {
                for instance in &fault.instances {
                    if !specs.iter().any(|s| &s.name == instance) {
                        bail!(
                            "fault {} targets {instance}, which this run did not start",
                            fault.kind.name()
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------- execution

/// What the fault task needs.
pub struct FaultContext {
    pub state: StateDir,
    /// Every service instance as it was started (restarts use the same spec).
    pub specs: Vec<ServiceSpec>,
    /// The run's t = 0.
    pub start: Instant,
    pub load: Arc<LoadState>,
}

/// One fault as it was executed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Executed {
    pub kind: FaultKind,
    pub target: String,
    pub planned_at_s: f64,
    pub planned_duration_s: f64,
    /// When it was injected, seconds after t = 0.
    pub injected_s: f64,
    /// When it was lifted (restarted and ready, or continued); `None`: lifting failed.
    pub lifted_s: Option<f64>,
    /// What was done, in order.
    pub actions: Vec<String>,
    pub error: Option<String>,
    /// Requests refused by a dead replica and sent to another one while the fault lasted.
    pub failovers: u64,
}

/// The running fault schedule. Dropping it stops the schedule and continues whatever it had
/// stopped with `SIGSTOP`.
pub struct FaultRun {
    handle: Option<JoinHandle<Vec<Executed>>>,
    stopped: Arc<Mutex<Vec<u32>>>,
}

impl FaultRun {
    /// Waits until every fault has been injected and lifted.
    pub async fn finish(mut self) -> Result<Vec<Executed>> {
        let handle = self
            .handle
            .take()
            .context("fault schedule already finished")?;
        handle.await.context("the fault task panicked")
    }
}

impl Drop for FaultRun {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
        for pid in self
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = stack::signal_process(pid, libc::SIGCONT);
        }
    }
}

/// Starts executing `faults` (ordered by start) relative to `context.start`.
pub fn spawn(context: FaultContext, faults: Vec<Fault>) -> FaultRun {
    let stopped = Arc::new(Mutex::new(Vec::new()));
    let handle = {
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let mut executed = Vec::with_capacity(faults.len());
            for fault in faults {
                tokio::time::sleep_until(context.start + fault.at).await;
                executed.push(execute(&context, &fault, &stopped).await);
            }
            executed
        })
    };
    FaultRun {
        handle: Some(handle),
        stopped,
    }
}

fn seconds_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

async fn execute(context: &FaultContext, fault: &Fault, stopped: &Mutex<Vec<u32>>) -> Executed {
    let failovers_before = context.load.failovers.load(Ordering::Relaxed);
    let mut record = Executed {
        kind: fault.kind,
        target: fault.target.clone(),
        planned_at_s: fault.at.as_secs_f64(),
        planned_duration_s: fault.duration.as_secs_f64(),
        injected_s: seconds_since(context.start),
        lifted_s: None,
        actions: Vec::new(),
        error: None,
        failovers: 0,
    };
    println!(
        "▶ fault at {:.1} s: {} {} for {}",
        record.injected_s,
        fault.kind.name(),
        fault.target,
        format_duration(fault.duration)
    );
    let result = match inject(context, fault, stopped, &mut record.actions).await {
        Ok(undo) => {
            record.injected_s = seconds_since(context.start);
            tokio::time::sleep_until(context.start + fault.end()).await;
            let lifted = lift(context, undo, stopped, &mut record.actions).await;
            if lifted.is_ok() {
                record.lifted_s = Some(seconds_since(context.start));
            }
            lifted
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!(
            "▶ fault {} {} failed: {e:#}",
            fault.kind.name(),
            fault.target
        );
        record.error = Some(format!("{e:#}"));
    } else {
        println!(
            "▶ fault {} {} lifted at {:.1} s",
            fault.kind.name(),
            fault.target,
            record.lifted_s.unwrap_or_default()
        );
    }
    record.failovers = context
        .load
        .failovers
        .load(Ordering::Relaxed)
        .saturating_sub(failovers_before);
    record
}

/// How to lift an injected fault.
enum Undo {
    Restart(Vec<String>),
    Continue(Vec<(String, u32)>),
    RestartNats,
    StartPostgres,
}

async fn inject(
    context: &FaultContext,
    fault: &Fault,
    stopped: &Mutex<Vec<u32>>,
    actions: &mut Vec<String>,
) -> Result<Undo> {
    let state = &context.state;
    match fault.kind {
        FaultKind::Kill => {
            for instance in &fault.instances {
                let pid = stack::signal_named(state, instance, libc::SIGKILL)?;
                if !stack::process::wait_gone(pid, KILL_WAIT).await {
                    bail!("{instance} (pid {pid}) still alive {KILL_WAIT:?} after SIGKILL");
                }
                actions.push(format!("kill -9 {instance} (pid {pid})"));
            }
            Ok(Undo::Restart(fault.instances.clone()))
        }
        FaultKind::Pause => {
            let mut paused = Vec::new();
            for instance in &fault.instances {
                let pid = stack::signal_named(state, instance, libc::SIGSTOP)?;
                stopped.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
                actions.push(format!("SIGSTOP {instance} (pid {pid})"));
                paused.push((instance.clone(), pid));
            }
            Ok(Undo::Continue(paused))
        }
        FaultKind::KillNats => {
            let pid = stack::pid_of(state, "nats").context("our nats-server is not running")?;
            stack::kill_nats(state).await?;
            actions.push(format!("kill -9 nats-server (pid {pid})"));
            Ok(Undo::RestartNats)
        }
        FaultKind::StopPostgres => {
            let pid = stack::pid_of(state, "postgres").context("our PostgreSQL is not running")?;
            stack::stop_postgres_immediate(state).await?;
            actions.push(format!(
                "immediate-mode stop of PostgreSQL (SIGQUIT to postmaster pid {pid})"
            ));
            Ok(Undo::StartPostgres)
        }
        FaultKind::BrokerUnreachable => {
            let pid = stack::signal_named(state, "nats", libc::SIGSTOP)?;
            stopped.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
            actions.push(format!("SIGSTOP nats-server (pid {pid})"));
            Ok(Undo::Continue(vec![("nats-server".into(), pid)]))
        }
    }
}

async fn lift(
    context: &FaultContext,
    undo: Undo,
    stopped: &Mutex<Vec<u32>>,
    actions: &mut Vec<String>,
) -> Result<()> {
    let state = &context.state;
    let began = Instant::now();
    match undo {
        Undo::Restart(instances) => {
            let specs: Vec<_> = instances
                .iter()
                .map(|name| {
                    context
                        .specs
                        .iter()
                        .find(|s| &s.name == name)
                        .with_context(|| format!("no start specification for {name}"))
                })
                .collect::<Result<_>>()?;
            let started = futures::future::join_all(
                specs.iter().map(|spec| stack::start_service(state, spec)),
            )
            .await;
            for (spec, result) in specs.iter().zip(started) {
                let pid = result.with_context(|| format!("restarting {}", spec.name))?;
                actions.push(format!(
                    "restarted {} as pid {pid} (ready after {:.1} s)",
                    spec.name,
                    began.elapsed().as_secs_f64()
                ));
            }
        }
        Undo::Continue(paused) => {
            for (name, pid) in paused {
                stack::signal_process(pid, libc::SIGCONT)
                    .with_context(|| format!("SIGCONT {name} (pid {pid})"))?;
                stopped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|p| *p != pid);
                actions.push(format!("SIGCONT {name} (pid {pid})"));
            }
        }
        Undo::RestartNats => {
            stack::restart_nats(state).await?;
            let pid = stack::pid_of(state, "nats").unwrap_or_default();
            actions.push(format!(
                "restarted nats-server on the same store as pid {pid} (ready after {:.1} s)",
                began.elapsed().as_secs_f64()
            ));
        }
        Undo::StartPostgres => {
            stack::start_postgres(state).await?;
            let pid = stack::pid_of(state, "postgres").unwrap_or_default();
            actions.push(format!(
                "started PostgreSQL again as pid {pid} (crash recovery; accepting connections after {:.1} s)",
                began.elapsed().as_secs_f64()
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------- probe

/// How far behind the system is at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Health {
    /// Outbox rows over the three databases.
    pub outbox: i64,
    /// Messages not yet delivered plus delivered and unacknowledged, over every consumer.
    pub consumer_backlog: u64,
    /// Age of the oldest PENDING or RESERVED order (0 when there is none).
    pub oldest_unfinished_s: f64,
}

impl Health {
    pub fn caught_up(&self) -> bool {
        self.outbox <= RECOVERY_MAX_OUTBOX
            && self.consumer_backlog <= RECOVERY_MAX_CONSUMER_BACKLOG
            && self.oldest_unfinished_s <= RECOVERY_MAX_OLDEST_UNFINISHED_S
    }

    /// The larger of each figure.
    fn max(self, other: Health) -> Health {
        Health {
            outbox: self.outbox.max(other.outbox),
            consumer_backlog: self.consumer_backlog.max(other.consumer_backlog),
            oldest_unfinished_s: self.oldest_unfinished_s.max(other.oldest_unfinished_s),
        }
    }
}

/// One probe sample; `health` is `None` when a part could not be read (database or broker
/// down, or slower than the probe timeout).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthSample {
    pub at_s: f64,
    pub health: Option<Health>,
    /// Per durable consumer (`<stream>/<consumer>`): pending + unacknowledged, for the record.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<(String, u64)>,
}

/// Seconds from `lifted_s` to the first sample (at or after it) that starts
/// [`RECOVERY_SAMPLES`] caught-up samples in a row; `None` when that never happened.
pub fn recovered_after(samples: &[HealthSample], lifted_s: f64) -> Option<f64> {
    let mut run_start: Option<f64> = None;
    let mut run = 0;
    for sample in samples.iter().filter(|s| s.at_s >= lifted_s) {
        if sample.health.is_some_and(|h| h.caught_up()) {
            run_start.get_or_insert(sample.at_s);
            run += 1;
            if run >= RECOVERY_SAMPLES {
                return run_start.map(|at| at - lifted_s);
            }
        } else {
            run_start = None;
            run = 0;
        }
    }
    None
}

/// The worst of each figure over the samples taken in `from_s..=to_s`, and how many samples
/// in that window could not be taken.
pub fn worst_between(samples: &[HealthSample], from_s: f64, to_s: f64) -> (Option<Health>, usize) {
    let window = samples.iter().filter(|s| (from_s..=to_s).contains(&s.at_s));
    let mut worst: Option<Health> = None;
    let mut missing = 0;
    for sample in window {
        match sample.health {
            Some(h) => worst = Some(worst.map_or(h, |w| w.max(h))),
            None => missing += 1,
        }
    }
    (worst, missing)
}

/// How long the probe must still run after `now_s` so that every lifted fault has
/// [`RECOVERY_SAMPLES`] samples after it (a fault lifted just before the drain ends would
/// otherwise count as "never caught up" for want of samples).
pub fn probe_time_needed(executed: &[Executed], now_s: f64) -> Duration {
    let last_lift = executed
        .iter()
        .filter_map(|e| e.lifted_s)
        .fold(f64::NEG_INFINITY, f64::max);
    let until = last_lift + (RECOVERY_SAMPLES as f64 + 1.0) * PROBE_EVERY.as_secs_f64();
    Duration::from_secs_f64((until - now_s).max(0.0))
}

/// Samples the system's [`Health`] every second from `start` until `stop` turns true.
pub fn spawn_probe(
    dbs: Databases,
    nats_url: String,
    prefix: String,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Vec<HealthSample>> {
    let streams = drain::stream_names(&prefix);
    tokio::spawn(async move {
        let mut broker: Option<jetstream::Context> = None;
        let mut samples = Vec::new();
        let mut ticks = tokio::time::interval_at(start, PROBE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                    continue;
                }
            }
            let at_s = seconds_since(start);
            if broker.is_none() {
                broker = tokio::time::timeout(PROBE_TIMEOUT, async_nats::connect(&nats_url))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(jetstream::new);
            }
            let measured = match &broker {
                Some(broker) => tokio::time::timeout(PROBE_TIMEOUT, health(&dbs, broker, &streams))
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => None,
            };
            let (health, consumers) = match measured {
                Some((health, consumers)) => (Some(health), consumers),
                None => (None, Vec::new()),
            };
            samples.push(HealthSample {
                at_s,
                health,
                consumers,
            });
        }
        samples
    })
}

async fn health(
    dbs: &Databases,
    broker: &jetstream::Context,
    streams: &[String],
) -> Result<(Health, Vec<(String, u64)>)> {
    async fn count(pool: &sqlx::PgPool) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await?)
    }
    let (o, i, p, oldest, backlog) = tokio::try_join!(
        count(&dbs.orders),
        count(&dbs.inventory),
        count(&dbs.payments),
        async {
            // An index lookup: orders_unfinished is on created_at for exactly these statuses.
            Ok::<f64, anyhow::Error>(
                sqlx::query_scalar(
                    "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 \
                     FROM orders WHERE status IN ('PENDING', 'RESERVED')",
                )
                .fetch_one(&dbs.orders)
                .await?,
            )
        },
        consumer_backlogs(broker, streams),
    )?;
    let health = Health {
        outbox: o + i + p,
        consumer_backlog: backlog.iter().map(|(_, n)| n).sum(),
        oldest_unfinished_s: oldest.max(0.0),
    };
    Ok((health, backlog))
}

/// `(<stream>/<consumer>, pending + unacknowledged)` of every consumer of the run's streams.
async fn consumer_backlogs(
    broker: &jetstream::Context,
    streams: &[String],
) -> Result<Vec<(String, u64)>> {
    let mut backlogs = Vec::new();
    for name in streams {
        let stream = broker
            .get_stream(name)
            .await
            .with_context(|| format!("reading stream {name}"))?;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers
            .try_next()
            .await
            .with_context(|| format!("listing the consumers of {name}"))?
        {
            backlogs.push((
                format!("{name}/{}", info.name),
                info.num_pending + info.num_ack_pending as u64,
            ));
        }
    }
    Ok(backlogs)
}

// --------------------------------------------------------------------------------- report

/// The report's fault records and the `faults` check.
pub fn records(executed: &[Executed], samples: &[HealthSample]) -> (Vec<FaultRecord>, CheckResult) {
    let mut records = Vec::with_capacity(executed.len());
    let mut worst_recovery: Option<f64> = None;
    let mut problems = Vec::new();
    for (i, e) in executed.iter().enumerate() {
        let recovered = e
            .lifted_s
            .and_then(|lifted| recovered_after(samples, lifted));
        let next_injected = executed.get(i + 1).map(|next| next.injected_s);
        let mut note = e.actions.join("; ");
        if let Some(error) = &e.error {
            note.push_str(&format!("; FAILED: {error}"));
            problems.push(format!("{} {} failed", e.kind.name(), e.target));
        }
        let window_end = e
            .lifted_s
            .map_or(f64::INFINITY, |l| l + recovered.unwrap_or(0.0));
        let (worst, missing) = worst_between(samples, e.injected_s, window_end);
        if let Some(w) = worst {
            note.push_str(&format!(
                "; until caught up: outbox ≤ {}, consumer backlog ≤ {}, oldest unfinished order {:.1} s",
                w.outbox, w.consumer_backlog, w.oldest_unfinished_s
            ));
        }
        if missing > 0 {
            note.push_str(&format!(" ({missing} probe samples unavailable)"));
        }
        if let (Some(lifted), Some(r), Some(next)) = (e.lifted_s, recovered, next_injected) {
            if lifted + r > next {
                note.push_str(
                    "; the next fault began before the system had caught up, so this time includes it",
                );
            }
        }
        if e.failovers > 0 {
            note.push_str(&format!(
                "; {} requests refused by a dead replica were sent to another one",
                e.failovers
            ));
        }
        match (e.lifted_s, recovered) {
            (Some(_), Some(r)) => worst_recovery = Some(worst_recovery.map_or(r, |w| w.max(r))),
            (Some(_), None) => {
                problems.push(format!("{} {} never caught up", e.kind.name(), e.target))
            }
            (None, _) => {}
        }
        records.push(FaultRecord {
            at_s: e.injected_s,
            kind: e.kind.name().to_string(),
            target: e.target.clone(),
            recovered_after_s: recovered,
            note,
        });
    }
    let passed = problems.is_empty() && !executed.is_empty();
    let detail = if passed {
        format!(
            "{} faults injected and lifted; caught up after each within {:.1} s (outbox ≤ {RECOVERY_MAX_OUTBOX}, consumer backlog ≤ {RECOVERY_MAX_CONSUMER_BACKLOG}, no unfinished order older than {RECOVERY_MAX_OLDEST_UNFINISHED_S} s, {RECOVERY_SAMPLES} samples in a row)",
            executed.len(),
            worst_recovery.unwrap_or(0.0)
        )
    } else if executed.is_empty() {
        "no fault was executed".to_string()
    } else {
        problems.join("; ")
    };
    (records, CheckResult::new(CHECK_FAULTS, passed, detail))
}

/// Writes `faults.json` next to the report: every fault as executed and every probe sample,
/// the evidence behind the recovery times.
pub fn write_timeline(
    dir: &std::path::Path,
    executed: &[Executed],
    samples: &[HealthSample],
) -> Result<std::path::PathBuf> {
    #[derive(Serialize)]
    struct Timeline<'a> {
        recovery_criteria: serde_json::Value,
        faults: &'a [Executed],
        probe: &'a [HealthSample],
    }
    let timeline = Timeline {
        recovery_criteria: serde_json::json!({
            "max_outbox": RECOVERY_MAX_OUTBOX,
            "max_consumer_backlog": RECOVERY_MAX_CONSUMER_BACKLOG,
            "max_oldest_unfinished_s": RECOVERY_MAX_OLDEST_UNFINISHED_S,
            "samples_in_a_row": RECOVERY_SAMPLES,
        }),
        faults: executed,
        probe: samples,
    };
    let path = dir.join("faults.json");
    let text = serde_json::to_string_pretty(&timeline).context("serialising the fault timeline")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    const BASE: &str = r#"
        name = "chaos-unit"
        [load]
        stages = [{ duration = "60s", target = 10 }]
        [data]
        users = 2
        initial_balance_cents = 1000
        products = [{ id = 1, stock = 10, price_cents = 100 }]
        [deploy]
        replicas = 2
        consumer_ack_wait = "10s"
    "#;

    fn with_faults(faults: &str) -> Result<Scenario, crate::scenario::ScenarioError> {
        Scenario::from_toml_str(&format!("{BASE}\n{faults}"))
    }

    fn fault(at: &str, kind: &str, target: &str, duration: &str) -> String {
        format!(
            "[[faults]]\nat = \"{at}\"\nkind = \"{kind}\"\ntarget = \"{target}\"\nduration = \"{duration}\"\n"
        )
    }

    #[test]
    fn parses_every_kind_and_orders_by_start() {
        let text = [
            fault("40s", "broker-unreachable", "nats", "5s"),
            fault("5s", "kill", "order-service-2", "3s"),
            fault("30s", "stop-postgres", "postgres", "4s"),
            fault("10s", "pause", "payment", "12s"),
            fault("25s", "kill-nats", "nats", "2s"),
        ]
        .concat();
        let scenario = with_faults(&text).expect("valid");
        let faults = plan(&scenario).expect("valid plan");
        let order: Vec<(u64, FaultKind)> =
            faults.iter().map(|f| (f.at.as_secs(), f.kind)).collect();
        assert_eq!(
            order,
            vec![
                (5, FaultKind::Kill),
                (10, FaultKind::Pause),
                (25, FaultKind::KillNats),
                (30, FaultKind::StopPostgres),
                (40, FaultKind::BrokerUnreachable),
            ]
        );
        assert_eq!(faults[0].instances, vec!["order-service-2"]);
        assert_eq!(
            faults[1].instances,
            vec!["payment-service-1", "payment-service-2"]
        );
        assert!(faults[2].instances.is_empty());
        assert_eq!(faults[1].end(), Duration::from_secs(22));
    }

    #[test]
    fn rejects_unknown_kinds_targets_missing_durations_and_overlaps() {
        let text = [
            fault("1s", "explode", "order", "1s"),
            fault("2s", "kill", "order-service-3", "1s"),
            fault("3s", "kill", "shipping", "1s"),
            fault("4s", "kill-nats", "postgres", "1s"),
            "[[faults]]\nat = \"5s\"\nkind = \"pause\"\ntarget = \"order\"\n".to_string(),
            fault("10s", "kill", "payment-1", "10s"),
            fault("15s", "stop-postgres", "postgres", "2s"),
        ]
        .concat();
        let message = with_faults(&text).expect_err("invalid").to_string();
        for expected in [
            "unknown kind \"explode\"",
            "replica 3 does not exist",
            "unknown target \"shipping\"",
            "target must be \"nats\"",
            "needs a duration",
            "starts before faults[5]",
        ] {
            assert!(message.contains(expected), "{message} lacks {expected}");
        }
    }

    #[test]
    fn rejects_bad_replicas_and_ack_wait() {
        let too_many = BASE.replace("replicas = 2", "replicas = 9");
        let message = Scenario::from_toml_str(&too_many)
            .expect_err("9 replicas")
            .to_string();
        assert!(message.contains("deploy.replicas"), "{message}");
        let short = BASE.replace("\"10s\"", "\"500ms\"");
        let message = Scenario::from_toml_str(&short)
            .expect_err("short ack wait")
            .to_string();
        assert!(message.contains("consumer_ack_wait"), "{message}");
    }

    #[test]
    fn targets_resolve_to_instances() {
        assert_eq!(
            resolve_target("inventory", 2),
            Ok(vec![
                "inventory-service-1".to_string(),
                "inventory-service-2".to_string()
            ])
        );
        assert_eq!(
            resolve_target("order-2", 3),
            Ok(vec!["order-service-2".to_string()])
        );
        // One replica: the instance is named after its service.
        assert_eq!(
            resolve_target("payment-service-1", 1),
            Ok(vec!["payment-service".to_string()])
        );
        assert_eq!(
            resolve_target("payment-service", 1),
            Ok(vec!["payment-service".to_string()])
        );
        assert!(resolve_target("payment-service-0", 2).is_err());
        assert!(resolve_target("nats", 2).is_err());
    }

    #[test]
    fn replication_carries_replicas_and_ack_wait() {
        let scenario = with_faults("").expect("valid");
        let replication = replication(&scenario);
        assert_eq!(replication.replicas, 2);
        assert_eq!(
            replication.extra_env,
            vec![("APP_CONSUMER__ACK_WAIT_SECS".to_string(), "10".to_string())]
        );
    }

    #[test]
    fn instances_get_their_own_names_and_ports_and_share_the_rest() {
        let deployment = deploy::Deployment {
            databases: deploy::DatabaseUrls::on("postgres://postgres@127.0.0.1:1/postgres"),
            nats_url: "nats://127.0.0.1:2".into(),
            prefix: "run1".into(),
            credentials: deploy::Credentials::random(),
            decline_rate: 0.05,
        };
        let specs = deploy::instance_specs(
            &deployment,
            &Replication {
                replicas: 2,
                extra_env: vec![("APP_CONSUMER__ACK_WAIT_SECS".into(), "10".into())],
            },
        );
        let names: Vec<(&str, u16)> = specs.iter().map(|s| (s.name.as_str(), s.port)).collect();
        assert_eq!(
            names,
            vec![
                ("order-service-1", 18080),
                ("inventory-service-1", 18081),
                ("payment-service-1", 18082),
                ("order-service-2", 18090),
                ("inventory-service-2", 18091),
                ("payment-service-2", 18092),
            ]
        );
        let env = |spec: &stack::ServiceSpec, key: &str| {
            spec.env
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(env(&specs[3], "APP_HTTP__PORT").as_deref(), Some("18090"));
        assert_eq!(
            env(&specs[0], "APP_DATABASE__URL"),
            env(&specs[3], "APP_DATABASE__URL")
        );
        assert!(specs[3].binary.ends_with("debug/order-service"));
        assert!(specs
            .iter()
            .all(|s| env(s, "APP_CONSUMER__ACK_WAIT_SECS").as_deref() == Some("10")));
        assert_eq!(
            deploy::order_urls(2),
            vec![
                "http://127.0.0.1:18080/orders".to_string(),
                "http://127.0.0.1:18090/orders".to_string()
            ]
        );
        let single = deploy::instance_specs(&deployment, &Replication::default());
        let names: Vec<&str> = single.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["order-service", "inventory-service", "payment-service"]
        );
    }

    fn sample(at_s: f64, outbox: i64, backlog: u64, oldest: f64) -> HealthSample {
        HealthSample {
            at_s,
            health: Some(Health {
                outbox,
                consumer_backlog: backlog,
                oldest_unfinished_s: oldest,
            }),
            consumers: Vec::new(),
        }
    }

    fn gap(at_s: f64) -> HealthSample {
        HealthSample {
            at_s,
            health: None,
            consumers: Vec::new(),
        }
    }

    #[test]
    fn recovery_is_the_start_of_the_first_caught_up_streak_after_the_lift() {
        let samples = vec![
            sample(10.0, 0, 0, 0.1), // before the fault: healthy
            gap(11.0),               // fault: nothing readable
            gap(12.0),
            sample(13.0, 9000, 0, 3.0), // lifted at 12.5: backlog
            sample(14.0, 100, 5000, 4.0),
            sample(15.0, 0, 10, 9.0), // an old order still unfinished
            sample(16.0, 0, 10, 0.5), // caught up …
            sample(17.0, 0, 10, 0.4),
            gap(18.0), // … but a missing sample breaks the streak
            sample(19.0, 0, 0, 0.2),
            sample(20.0, 0, 0, 0.2),
            sample(21.0, 0, 0, 0.2),
            sample(22.0, 0, 0, 0.2),
        ];
        assert_eq!(recovered_after(&samples, 12.5), Some(19.0 - 12.5));
        // Lifted when everything was already fine: recovered at the first sample.
        assert_eq!(recovered_after(&samples, 19.0), Some(0.0));
        // Not enough caught-up samples after the lift.
        assert_eq!(recovered_after(&samples, 20.5), None);
        assert_eq!(recovered_after(&[], 0.0), None);
    }

    #[test]
    fn recovery_thresholds_are_inclusive() {
        let at_limit = |at| {
            sample(
                at,
                RECOVERY_MAX_OUTBOX,
                RECOVERY_MAX_CONSUMER_BACKLOG,
                RECOVERY_MAX_OLDEST_UNFINISHED_S,
            )
        };
        let samples: Vec<_> = (0..RECOVERY_SAMPLES).map(|i| at_limit(i as f64)).collect();
        assert_eq!(recovered_after(&samples, 0.0), Some(0.0));
        let over: Vec<_> = (0..5)
            .map(|i| sample(i as f64, RECOVERY_MAX_OUTBOX + 1, 0, 0.0))
            .collect();
        assert_eq!(recovered_after(&over, 0.0), None);
    }

    #[test]
    fn worst_figures_and_missing_samples_in_a_window() {
        let samples = vec![
            sample(1.0, 5, 1, 0.1),
            sample(2.0, 700, 20, 2.0),
            gap(3.0),
            sample(4.0, 10, 900, 7.5),
            sample(9.0, 99_999, 99_999, 99.0),
        ];
        let (worst, missing) = worst_between(&samples, 1.5, 4.0);
        assert_eq!(
            worst,
            Some(Health {
                outbox: 700,
                consumer_backlog: 900,
                oldest_unfinished_s: 7.5
            })
        );
        assert_eq!(missing, 1);
    }

    fn executed(kind: FaultKind, injected: f64, lifted: Option<f64>) -> Executed {
        Executed {
            kind,
            target: "payment".into(),
            planned_at_s: injected,
            planned_duration_s: 2.0,
            injected_s: injected,
            lifted_s: lifted,
            actions: vec!["kill -9 payment-service (pid 7)".into()],
            error: lifted.is_none().then(|| "restart failed".to_string()),
            failovers: 3,
        }
    }

    #[test]
    fn records_and_check_summarise_every_fault() {
        let samples: Vec<_> = (0..40)
            .map(|s| {
                let s = s as f64;
                if (10.0..20.0).contains(&s) {
                    sample(s, 2000, 0, 8.0)
                } else {
                    sample(s, 0, 0, 0.1)
                }
            })
            .collect();
        let ok = [executed(FaultKind::Kill, 8.0, Some(12.0))];
        let (recorded, check) = records(&ok, &samples);
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].kind, "kill");
        assert_eq!(recorded[0].recovered_after_s, Some(8.0));
        assert!(
            recorded[0].note.contains("outbox ≤ 2000"),
            "{}",
            recorded[0].note
        );
        assert!(
            recorded[0].note.contains("3 requests refused"),
            "{}",
            recorded[0].note
        );
        assert!(check.passed, "{}", check.detail);
        assert_eq!(check.name, CHECK_FAULTS);

        let failed = [
            executed(FaultKind::Kill, 8.0, Some(12.0)),
            executed(FaultKind::StopPostgres, 25.0, None),
        ];
        let (recorded, check) = records(&failed, &samples);
        assert_eq!(recorded[1].recovered_after_s, None);
        assert!(recorded[1].note.contains("FAILED: restart failed"));
        assert!(!check.passed);
        assert!(
            check.detail.contains("stop-postgres payment failed"),
            "{}",
            check.detail
        );

        let overlapping = [
            executed(FaultKind::Kill, 8.0, Some(12.0)),
            executed(FaultKind::KillNats, 15.0, Some(17.0)),
        ];
        let (recorded, _) = records(&overlapping, &samples);
        assert!(
            recorded[0].note.contains("includes it"),
            "{}",
            recorded[0].note
        );
        assert!(
            !recorded[1].note.contains("includes it"),
            "{}",
            recorded[1].note
        );

        let never = [executed(FaultKind::Pause, 30.0, Some(39.5))];
        let (_, check) = records(&never, &samples);
        assert!(!check.passed);
        assert!(check.detail.contains("never caught up"), "{}", check.detail);

        let (_, check) = records(&[], &samples);
        assert!(!check.passed);
    }

    #[test]
    fn the_probe_outlives_the_last_lift() {
        let lifted = [
            executed(FaultKind::Kill, 8.0, Some(12.0)),
            executed(FaultKind::Pause, 100.0, Some(119.0)),
        ];
        let needed = (RECOVERY_SAMPLES as f64 + 1.0) * PROBE_EVERY.as_secs_f64();
        assert_eq!(
            probe_time_needed(&lifted, 120.0),
            Duration::from_secs_f64(119.0 + needed - 120.0)
        );
        assert_eq!(probe_time_needed(&lifted, 200.0), Duration::ZERO);
        assert_eq!(probe_time_needed(&[], 5.0), Duration::ZERO);
    }

    #[test]
    fn kinds_round_trip() {
        for kind in FaultKind::ALL {
            assert_eq!(FaultKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(FaultKind::parse("restart"), None);
    }
}
