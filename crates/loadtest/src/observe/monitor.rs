//! Once a second during the run and the drain: sample progress from the databases and CPU/memory
//! of our processes, and show a live status (a rewritten block on a terminal, a plain line every
//! five seconds otherwise).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use serde::{Deserialize, Serialize};

use crate::loadgen::LoadState;
use crate::observe::database::{self, Databases, Progress, Scope};
use crate::observe::{procfs, SystemState};
use crate::plan::duration;
use crate::plan::schedule::Schedule;
use stack::StateDir;

/// How long one progress query may take before the sample is skipped.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(3);
/// Plain output (not a terminal): one line this often.
const PLAIN_EVERY: u64 = 5;

/// A process to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub name: String,
    pub pid: u32,
    /// Include the children (PostgreSQL: the postmaster and its backends).
    pub with_children: bool,
    /// Where the process's current pid is recorded: a process restarted during the run (a
    /// fault, a crash) is followed to its new pid. `None`: the pid never changes (ourselves).
    pub pid_file: Option<PathBuf>,
}

/// The phase the run is in, for the display.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    Load,
    Drain { since: Instant, timeout: Duration },
}

/// One progress sample, taken `at` seconds after the run started.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressSample {
    pub at_s: f64,
    pub progress: Progress,
}

/// CPU and memory of one process over the run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProcessUsage {
    pub name: String,
    pub peak_rss_mib: f64,
    pub cpu_seconds: f64,
    #[serde(default)]
    pub series: Vec<ProcessSample>,
}

/// One second of a process: CPU (% of one core) and resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ProcessSample {
    pub second: u64,
    pub cpu_pct: f64,
    pub rss_mib: f64,
}

/// Everything the monitor collected.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub progress: Vec<ProgressSample>,
    pub processes: Vec<ProcessUsage>,
}

/// What the monitor needs.
pub struct MonitorContext {
    pub dbs: Databases,
    pub load: Arc<LoadState>,
    pub schedule: Schedule,
    pub start: Instant,
    pub phase: Arc<Mutex<Phase>>,
    pub drain_status: Arc<Mutex<SystemState>>,
    /// How much of the orders table each sample reads: a capacity run samples the open orders
    /// only, so the monitor does not take CPU from the system it measures.
    pub scope: Scope,
    pub processes: Vec<Tracked>,
    /// Shown in the status line: the stock of this product.
    pub watched_product: i64,
    /// Rewrite a block on a terminal instead of printing plain lines.
    pub terminal: bool,
}

/// Runs until `stop` turns true; returns the samples.
pub fn spawn(context: MonitorContext, mut stop: watch::Receiver<bool>) -> JoinHandle<Samples> {
    tokio::spawn(async move {
        let mut monitor = Monitor::new(context);
        let mut ticks = tokio::time::interval_at(monitor.context.start, Duration::from_secs(1));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticks.tick() => monitor.tick().await,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
            }
        }
        monitor.finish()
    })
}

struct ProcessSeries {
    tracked: Tracked,
    /// CPU seconds of the earlier lives of a restarted process.
    earlier_lives_cpu_s: f64,
    first_cpu_s: Option<f64>,
    last: Option<(f64, f64)>, // (at_s, cpu_s)
    peak_rss_mib: f64,
    samples: Vec<ProcessSample>,
}

impl ProcessSeries {
    fn current_life_cpu_s(&self) -> f64 {
        match (self.first_cpu_s, self.last) {
            (Some(first), Some((_, last))) => (last - first).max(0.0),
            _ => 0.0,
        }
    }

    /// If the process was restarted under a new pid, closes the old life and follows the new one.
    fn follow_restart(&mut self) {
        let Some(current) = self
            .tracked
            .pid_file
            .as_deref()
            .and_then(stack::process::PidFile::read)
        else {
            return;
        };
        if current.pid != self.tracked.pid {
            self.earlier_lives_cpu_s += self.current_life_cpu_s();
            self.first_cpu_s = None;
            self.last = None;
            self.tracked.pid = current.pid;
        }
    }
}

struct Monitor {
    context: MonitorContext,
    progress: Vec<ProgressSample>,
    processes: Vec<ProcessSeries>,
    last_started: (f64, u64),
    lines_shown: usize,
    ticks: u64,
}

impl Monitor {
    fn new(context: MonitorContext) -> Monitor {
        let processes = context
            .processes
            .iter()
            .map(|tracked| ProcessSeries {
                tracked: tracked.clone(),
                earlier_lives_cpu_s: 0.0,
                first_cpu_s: None,
                last: None,
                peak_rss_mib: 0.0,
                samples: Vec::new(),
            })
            .collect();
        Monitor {
            context,
            progress: Vec::new(),
            processes,
            last_started: (0.0, 0),
            lines_shown: 0,
            ticks: 0,
        }
    }

    async fn tick(&mut self) {
        let at = self.context.start.elapsed().as_secs_f64();
        let second = at.floor() as u64;
        for series in &mut self.processes {
            series.follow_restart();
            let usage = if series.tracked.with_children {
                procfs::tree_usage(series.tracked.pid)
            } else {
                procfs::process_usage(series.tracked.pid)
            };
            let Some((cpu_s, rss_mib)) = usage else {
                continue;
            };
            let cpu_pct = match series.last {
                Some((last_at, last_cpu)) if at > last_at => {
                    ((cpu_s - last_cpu) / (at - last_at) * 100.0).max(0.0)
                }
                _ => 0.0,
            };
            series.first_cpu_s.get_or_insert(cpu_s);
            series.last = Some((at, cpu_s));
            series.peak_rss_mib = series.peak_rss_mib.max(rss_mib);
            series.samples.push(ProcessSample {
                second,
                cpu_pct,
                rss_mib,
            });
        }
        let dbs = &self.context.dbs;
        let progress = tokio::time::timeout(
            PROGRESS_TIMEOUT,
            database::progress(dbs, self.context.scope),
        )
        .await;
        if let Ok(Ok(progress)) = progress {
            self.progress.push(ProgressSample { at_s: at, progress });
        }
        self.show(at);
        self.ticks += 1;
    }

    fn show(&mut self, at: f64) {
        let lines = self.status_lines(at);
        let mut out = std::io::stdout().lock();
        if self.context.terminal {
            let mut text = String::new();
            if self.lines_shown > 0 {
                // Back to the first line of the previous block.
                let _ = write!(text, "\x1b[{}F", self.lines_shown);
            }
            for line in &lines {
                let _ = writeln!(text, "\x1b[2K{line}");
            }
            let _ = out.write_all(text.as_bytes());
            self.lines_shown = lines.len();
        } else if self.ticks.is_multiple_of(PLAIN_EVERY) {
            let _ = writeln!(out, "{}", lines.join(" | "));
        }
        let _ = out.flush();
    }

    fn status_lines(&mut self, at: f64) -> Vec<String> {
        let load = &self.context.load;
        // Read the counter and the clock together: sampling before this took a while.
        let started = load.started.load(Ordering::Relaxed);
        let now = self.context.start.elapsed().as_secs_f64();
        let (last_at, last_started) = self.last_started;
        let achieved = if now > last_at {
            (started - last_started) as f64 / (now - last_at)
        } else {
            0.0
        };
        self.last_started = (now, started);
        let (p95, sent, errors, dropped) = {
            let stats = load.stats.lock().unwrap_or_else(|e| e.into_inner());
            (
                stats.summary().p95_ms,
                stats.sent(),
                stats.errors(),
                stats.dropped(),
            )
        };
        let elapsed = Duration::from_secs_f64(at);
        let schedule = &self.context.schedule;
        let phase = *self.context.phase.lock().unwrap_or_else(|e| e.into_inner());
        let head = match phase {
            Phase::Load => {
                let stage = schedule
                    .stage_at(elapsed)
                    .map_or("end".to_string(), |i| format!("{}", i + 1));
                format!(
                    "stage {stage}/{}  {} / {}  target {:.0}/s  achieved {:.0}/s  in flight {}",
                    self.context.schedule_stages(),
                    clock(elapsed),
                    clock(schedule.total_duration()),
                    // Over the last second, like the achieved rate next to it.
                    schedule.expected_requests_between(
                        elapsed.saturating_sub(Duration::from_secs(1)),
                        elapsed
                    ),
                    achieved,
                    load.in_flight()
                )
            }
            Phase::Drain { since, timeout } => {
                let status = self
                    .context
                    .drain_status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let mut text = format!(
                    "draining {} / timeout {}",
                    clock(since.elapsed()),
                    duration::format(timeout)
                );
                if let Some(b) = status.backlog {
                    let _ = write!(
                        text,
                        "  consumers: {} pending, {} unacked",
                        b.pending, b.ack_pending
                    );
                }
                if load.in_flight() > 0 {
                    let _ = write!(text, "  in flight {}", load.in_flight());
                }
                text
            }
        };
        let requests =
            format!("requests {sent}  p95 {p95:.1} ms  errors {errors}  dropped {dropped}");
        let orders = match self.progress.last() {
            Some(sample) => {
                let p = &sample.progress;
                let stock = p
                    .stock
                    .get(&self.context.watched_product)
                    .map_or("?".to_string(), |s| s.to_string());
                format!(
                    "orders {}  stock {stock}  outbox {}",
                    counts(&p.orders_by_status),
                    p.outbox_backlog
                )
            }
            None => "orders (no sample yet)".to_string(),
        };
        vec![head, requests, orders]
    }

    fn finish(mut self) -> Samples {
        if self.context.terminal && self.lines_shown > 0 {
            println!();
        }
        let processes = self
            .processes
            .drain(..)
            .map(|series| ProcessUsage {
                cpu_seconds: series.earlier_lives_cpu_s + series.current_life_cpu_s(),
                name: series.tracked.name,
                peak_rss_mib: series.peak_rss_mib,
                series: series.samples,
            })
            .collect();
        Samples {
            progress: self.progress,
            processes,
        }
    }
}

impl MonitorContext {
    fn schedule_stages(&self) -> usize {
        let mut count = 0;
        while self.schedule.stage_window(count).is_some() {
            count += 1;
        }
        count
    }
}

fn clock(duration: Duration) -> String {
    let seconds = duration.as_secs();
    format!("{}:{:02}", seconds / 60, seconds % 60)
}

fn counts(map: &BTreeMap<String, i64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The processes whose CPU and memory the monitor samples.
pub fn tracked_processes(state: &StateDir, services: &[(String, u32)]) -> Vec<Tracked> {
    let mut tracked: Vec<Tracked> = services
        .iter()
        .map(|(name, pid)| Tracked {
            name: name.clone(),
            pid: *pid,
            with_children: false,
            pid_file: Some(state.pid_file(name)),
        })
        .collect();
    for (name, with_children) in [("postgres", true), ("nats", false)] {
        if let Some(pid) = stack::pid_of(state, name) {
            tracked.push(Tracked {
                name: name.to_string(),
                pid,
                with_children,
                pid_file: Some(state.pid_file(name)),
            });
        }
    }
    // The nodes of a NATS cluster (hosts topology), each under its own name.
    if let Ok(Some(cluster)) = stack::nats_cluster::recorded(state) {
        for node in &cluster.nodes {
            if let Some(pid) = stack::nats_cluster::node_pid(state, &node.name) {
                tracked.push(Tracked {
                    name: node.name.clone(),
                    pid,
                    with_children: false,
                    pid_file: Some(state.pid_file(&node.name)),
                });
            }
        }
    }
    tracked.push(Tracked {
        name: "loadtest".into(),
        pid: std::process::id(),
        with_children: false,
        pid_file: None,
    });
    tracked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_process_is_followed_and_its_lives_add_up() {
        let dir = std::env::temp_dir().join(format!("ordersys-monitor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("svc.pid");
        std::fs::write(&pid_file, "pid=100\n").unwrap();
        let mut series = ProcessSeries {
            tracked: Tracked {
                name: "svc".into(),
                pid: 100,
                with_children: false,
                pid_file: Some(pid_file.clone()),
            },
            earlier_lives_cpu_s: 0.0,
            first_cpu_s: Some(1.0),
            last: Some((10.0, 4.0)),
            peak_rss_mib: 0.0,
            samples: Vec::new(),
        };
        series.follow_restart();
        assert_eq!(series.tracked.pid, 100, "same pid: same life");
        std::fs::write(&pid_file, "pid=200\n").unwrap();
        series.follow_restart();
        assert_eq!(series.tracked.pid, 200);
        assert_eq!(series.earlier_lives_cpu_s, 3.0);
        assert_eq!((series.first_cpu_s, series.last), (None, None));
        series.first_cpu_s = Some(0.5);
        series.last = Some((20.0, 2.5));
        assert_eq!(
            series.earlier_lives_cpu_s + series.current_life_cpu_s(),
            5.0
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clock_formats_minutes_and_seconds() {
        assert_eq!(clock(Duration::from_secs(65)), "1:05");
        assert_eq!(clock(Duration::from_secs(300)), "5:00");
    }
}
