//! Executing the fault schedule: inject each fault at its time, lift it after its duration,
//! record what was done.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::boundaries::{self, AlteredConsumers, CommitKiller};
use super::cluster;
use super::context::{FaultContext, InjectedFault, Refuted};
use super::forge::{self, Published};
use super::heal::{self, Flood};
use super::slow_clients::SlowClients;
use super::{Fault, FaultKind, Hits};
use crate::deploy;
use crate::plan::duration;
use stack::StateDir;

/// How long a killed process may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The running fault schedule. Dropping it stops the schedule and continues whatever it had
/// stopped with `SIGSTOP`.
pub struct FaultRun {
    handle: Option<JoinHandle<Vec<InjectedFault>>>,
    stopped: Arc<Mutex<Vec<u32>>>,
}

impl FaultRun {
    /// Waits until every fault has been injected and lifted.
    pub async fn finish(mut self) -> Result<Vec<InjectedFault>> {
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

async fn execute(
    context: &FaultContext,
    fault: &Fault,
    stopped: &Mutex<Vec<u32>>,
) -> InjectedFault {
    let failovers_before = context.load.failovers.load(Ordering::Relaxed);
    let mut record = InjectedFault {
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
        duration::format(fault.duration)
    );
    let result = match inject(context, fault, stopped, &mut record.actions).await {
        Ok(lift) => {
            record.injected_s = seconds_since(context.start);
            // A fault injected late (its predecessor's lift took longer than planned) still
            // lasts its whole duration.
            let end = (context.start + fault.end()).max(Instant::now() + fault.duration);
            tokio::time::sleep_until(end).await;
            let lifted = lift_fault(context, lift, stopped, &mut record.actions).await;
            // Refuted: lifted all right, but the system did not do what the fault demands;
            // when it caught up still counts.
            if lifted.as_ref().map_or_else(|e| e.is::<Refuted>(), |_| true) {
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
enum Lift {
    Restart(Vec<String>),
    Continue(Vec<(String, u32)>),
    RestartNats,
    StartPostgres,
    /// Nothing to lift: the system must heal by itself.
    Nothing,
    /// Delete the stream, then kill and restart the paused consumers: what they had taken
    /// but not applied is gone with them, as when a broker loses its store while consumers
    /// are down.
    DeleteStreamThenRestart(platform::events::Source, Vec<(String, u32)>),
    DiscardPoison(Vec<String>),
    DisarmAndReplay(Vec<String>),
    StopFlood(Flood),
    ReleaseLock(sqlx::PgConnection),
    HealNetwork,
    RestartNatsNode(String),
    CheckForgeries(Vec<Published>),
    Writable(&'static str),
    StopCommitKiller(CommitKiller),
    StopSlowClients(SlowClients),
    CheckConsumers(AlteredConsumers),
}

/// SIGSTOPs the instances, remembering them so that a dropped schedule continues them.
fn pause(
    state: &StateDir,
    instances: &[String],
    stopped: &Mutex<Vec<u32>>,
    actions: &mut Vec<String>,
) -> Result<Vec<(String, u32)>> {
    let mut paused = Vec::new();
    for instance in instances {
        let pid = stack::signal_named(state, instance, libc::SIGSTOP)?;
        stopped.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
        actions.push(format!("SIGSTOP {instance} (pid {pid})"));
        paused.push((instance.clone(), pid));
    }
    Ok(paused)
}

fn resume(
    paused: Vec<(String, u32)>,
    stopped: &Mutex<Vec<u32>>,
    actions: &mut Vec<String>,
) -> Result<()> {
    for (name, pid) in paused {
        stack::signal_process(pid, libc::SIGCONT)
            .with_context(|| format!("SIGCONT {name} (pid {pid})"))?;
        stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != pid);
        actions.push(format!("SIGCONT {name} (pid {pid})"));
    }
    Ok(())
}

async fn inject(
    context: &FaultContext,
    fault: &Fault,
    stopped: &Mutex<Vec<u32>>,
    actions: &mut Vec<String>,
) -> Result<Lift> {
    let state = &context.state;
    let instances = fault.hits.instances();
    match (fault.kind, &fault.hits) {
        (FaultKind::Kill, _) => {
            for instance in instances {
                let pid = stack::signal_named(state, instance, libc::SIGKILL)?;
                if !stack::process::wait_gone(pid, KILL_WAIT).await {
                    bail!("{instance} (pid {pid}) still alive {KILL_WAIT:?} after SIGKILL");
                }
                actions.push(format!("kill -9 {instance} (pid {pid})"));
            }
            Ok(Lift::Restart(instances.to_vec()))
        }
        (FaultKind::Pause, _) => Ok(Lift::Continue(pause(state, instances, stopped, actions)?)),
        (FaultKind::KillNats, _) => {
            let pid = stack::pid_of(state, "nats").context("our nats-server is not running")?;
            stack::kill_nats(state).await?;
            actions.push(format!("kill -9 nats-server (pid {pid})"));
            Ok(Lift::RestartNats)
        }
        (FaultKind::StopPostgres, _) => {
            let pid = stack::pid_of(state, "postgres").context("our PostgreSQL is not running")?;
            stack::stop_postgres_immediate(state).await?;
            actions.push(format!(
                "immediate-mode stop of PostgreSQL (SIGQUIT to postmaster pid {pid})"
            ));
            Ok(Lift::StartPostgres)
        }
        (FaultKind::BrokerUnreachable, _) => {
            let pid = stack::signal_named(state, "nats", libc::SIGSTOP)?;
            stopped.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
            actions.push(format!("SIGSTOP nats-server (pid {pid})"));
            Ok(Lift::Continue(vec![("nats-server".into(), pid)]))
        }
        (FaultKind::DeleteConsumer, Hits::Consumers(consumers)) => {
            heal::delete_consumers(context, consumers, actions).await?;
            Ok(Lift::Nothing)
        }
        (FaultKind::DeleteStream, Hits::Stream { source, paused }) => {
            let paused = pause(state, paused, stopped, actions)?;
            Ok(Lift::DeleteStreamThenRestart(*source, paused))
        }
        (FaultKind::Poison, Hits::Service { name, .. }) => Ok(Lift::DiscardPoison(
            heal::publish_poison(context, name, actions).await?,
        )),
        (FaultKind::Panic, _) => {
            heal::arm_panic(context, instances, actions).await?;
            Ok(Lift::DisarmAndReplay(instances.to_vec()))
        }
        (FaultKind::PoolStarve, _) => {
            let flood = Flood::start(context, instances)?;
            actions.push(format!(
                "started a flood of reads on {}",
                instances.join(", ")
            ));
            Ok(Lift::StopFlood(flood))
        }
        (FaultKind::LockHold, _) => Ok(Lift::ReleaseLock(heal::hold_lock(context, actions).await?)),
        (
            FaultKind::Partition | FaultKind::Delay | FaultKind::Loss,
            Hits::Network { hosts, effect },
        ) => {
            cluster::apply(context, hosts, effect, actions).await?;
            Ok(Lift::HealNetwork)
        }
        (FaultKind::KillNatsNode, Hits::NatsNode(node)) => {
            let name = cluster::node(context, node).await?;
            let pid = stack::nats_cluster::kill_node(state, &name).await?;
            actions.push(format!("kill -9 {name} (pid {pid})"));
            Ok(Lift::RestartNatsNode(name))
        }
        (FaultKind::PauseNatsNode, Hits::NatsNode(node)) => {
            let name = cluster::node(context, node).await?;
            Ok(Lift::Continue(pause(state, &[name], stopped, actions)?))
        }
        (FaultKind::Forge, Hits::Publishers(publishers)) => Ok(Lift::CheckForgeries(
            forge::publish_forgeries(context, publishers, actions).await?,
        )),
        (FaultKind::ReadOnlyDb, Hits::Service { name, .. }) => {
            boundaries::set_read_only(context, name, true, actions).await?;
            Ok(Lift::Writable(name))
        }
        (FaultKind::CommitUnknown, Hits::Service { name, .. }) => {
            let killer = CommitKiller::start(context, name).await?;
            actions.push(format!(
                "terminating {name}'s backends whose COMMIT is in flight, in a loop"
            ));
            Ok(Lift::StopCommitKiller(killer))
        }
        (
            FaultKind::SlowClients,
            Hits::SlowClients {
                instances,
                connections,
            },
        ) => {
            let clients = SlowClients::start(context, instances, *connections)?;
            actions.push(format!(
                "opening {connections} slow connections to {} (a 16 KiB body announced, a byte every 3 s)",
                instances.join(", ")
            ));
            Ok(Lift::StopSlowClients(clients))
        }
        (FaultKind::AlterConsumer, Hits::Consumers(consumers)) => Ok(Lift::CheckConsumers(
            boundaries::alter_consumers(context, consumers, actions).await?,
        )),
        (kind, hits) => bail!("fault {} cannot hit {hits:?}", kind.name()),
    }
}
/// Starts the instances again with their original specification and waits until each is ready.
async fn restart(
    context: &FaultContext,
    instances: &[String],
    actions: &mut Vec<String>,
) -> Result<()> {
    let state = &context.state;
    let began = Instant::now();
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
        specs
            .iter()
            .map(|spec| deploy::services::start_service(state, spec)),
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
    Ok(())
}

async fn lift_fault(
    context: &FaultContext,
    lift: Lift,
    stopped: &Mutex<Vec<u32>>,
    actions: &mut Vec<String>,
) -> Result<()> {
    let state = &context.state;
    let began = Instant::now();
    match lift {
        Lift::Restart(instances) => restart(context, &instances, actions).await?,
        Lift::Continue(paused) => resume(paused, stopped, actions)?,
        Lift::RestartNats => {
            stack::restart_nats(state).await?;
            let pid = stack::pid_of(state, "nats").unwrap_or_default();
            actions.push(format!(
                "restarted nats-server on the same store as pid {pid} (ready after {:.1} s)",
                began.elapsed().as_secs_f64()
            ));
        }
        Lift::StartPostgres => {
            stack::start_postgres(state).await?;
            let pid = stack::pid_of(state, "postgres").unwrap_or_default();
            actions.push(format!(
                "started PostgreSQL again as pid {pid} (crash recovery; accepting connections after {:.1} s)",
                began.elapsed().as_secs_f64()
            ));
        }
        Lift::Nothing => actions.push("nothing to lift: the services must heal".to_string()),
        Lift::DeleteStreamThenRestart(source, paused) => {
            let deleted = heal::delete_stream(context, source, actions).await;
            let mut names = Vec::with_capacity(paused.len());
            for (name, pid) in &paused {
                stack::signal_process(*pid, libc::SIGKILL)
                    .with_context(|| format!("kill -9 {name} (pid {pid})"))?;
                if !stack::process::wait_gone(*pid, KILL_WAIT).await {
                    bail!("{name} (pid {pid}) still alive {KILL_WAIT:?} after SIGKILL");
                }
                stopped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|p| p != pid);
                actions.push(format!("kill -9 {name} (pid {pid})"));
                names.push(name.clone());
            }
            deleted?;
            restart(context, &names, actions).await?;
        }
        Lift::DiscardPoison(ids) => heal::discard_poison(context, &ids, actions).await?,
        Lift::DisarmAndReplay(instances) => {
            heal::disarm_and_replay(context, &instances, actions).await?
        }
        Lift::StopFlood(flood) => actions.push(flood.stop().await),
        Lift::ReleaseLock(conn) => heal::release_lock(conn, actions).await?,
        Lift::HealNetwork => cluster::heal(context, actions).await?,
        Lift::CheckForgeries(published) => {
            forge::verify_and_discard(context, &published, actions).await?
        }
        Lift::Writable(service) => {
            boundaries::set_read_only(context, service, false, actions).await?
        }
        Lift::StopCommitKiller(killer) => killer.stop(actions).await?,
        Lift::StopSlowClients(clients) => actions.push(clients.stop().await),
        Lift::CheckConsumers(altered) => altered.finish(context, actions).await?,
        Lift::RestartNatsNode(name) => {
            let pid = stack::nats_cluster::restart_node(state, &name).await?;
            actions.push(format!(
                "restarted {name} on its store as pid {pid} (ready after {:.1} s)",
                began.elapsed().as_secs_f64()
            ));
        }
    }
    Ok(())
}
