//! Supervision of background workers (relay, consumers, re-drive, retention, intake writers).
//!
//! A worker is one thing: a *round* — the work waiting now, at most a batch of it — and a way to
//! wait for the next one ([`Worker::idle`]). Production runs rounds under the supervisor: paced
//! (`crate::pacing`), one after another while more is waiting, with a wait between them when
//! nothing is, and a growing pause after a failed round. Tests run the very same rounds until one
//! finds nothing to do ([`run_until_idle`]). The supervisor runs each worker in its own task,
//! catches its panics, restarts it with a growing backoff, and aborts and restarts a worker that
//! has been busy with one unit of work for longer than the hang limit (a query or a broker
//! request that never returns). At shutdown each worker finishes the round it is in — its
//! transaction committed and its acks sent, or the round not begun — and stops.
//!
//! Every worker reports its health through a [`WorkerStatus`], which `/ready` and the metrics
//! read: a worker that is not running, whose rounds have all failed for a while, or that has
//! work waiting and has made no progress for a while, makes the service not ready.

use crate::config::WorkerSettings;
use crate::pacing::RoundPacer;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub type WorkerError = Box<dyn std::error::Error + Send + Sync>;

/// A background worker of a service, seen as its rounds.
pub trait Worker: Send + Sync + 'static {
    fn status(&self) -> &WorkerStatus;

    /// One round: does the work waiting now (at most one batch of it) and says how much it did
    /// and whether more is waiting. It never waits for work to arrive. A failed round is retried
    /// after [`Worker::retry_after`]; a panic restarts the worker.
    fn round(&self) -> BoxFuture<'_, Result<Round, WorkerError>>;

    /// After a round that left nothing waiting: resolves when the next round is due (a wake-up,
    /// a poll interval, a message arriving). Dropped at shutdown, so what it has taken by then it
    /// keeps for the next round.
    fn idle(&self) -> BoxFuture<'_, ()>;

    /// The least time between the starts of two rounds (`crate::pacing`); a round that follows
    /// a full one goes at once.
    fn round_interval(&self) -> Duration {
        Duration::ZERO
    }

    /// How long to wait before the next try after `failures` failed rounds in a row: 100 ms,
    /// doubling up to 5 s.
    fn retry_after(&self, failures: u32) -> Duration {
        let exponent = failures.clamp(1, 7) - 1;
        (Duration::from_millis(100) * (1 << exponent)).min(Duration::from_secs(5))
    }
}

/// What a round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Round {
    /// Units of work done (events published or handled, orders written, rows pruned); 0 when
    /// nothing was waiting.
    pub done: usize,
    /// More is known to be waiting (the batch was full): the next round starts at once.
    pub more: bool,
}

impl Round {
    /// `done` units of work, out of a batch that holds `batch`: a full batch means more waits.
    pub fn of(done: usize, batch: usize) -> Self {
        Round {
            done,
            more: done > 0 && done >= batch,
        }
    }
}

/// Runs the worker's rounds until one finds nothing to do: how tests drive background work, by
/// the same rounds production runs. Returns the work done; a failed round is reported on the
/// worker's status, as under the supervisor, and returned.
pub async fn run_until_idle<W: Worker + ?Sized>(worker: &W) -> Result<usize, WorkerError> {
    let mut total = 0;
    loop {
        match worker.round().await {
            Ok(round) if round.done == 0 => return Ok(total),
            Ok(round) => total += round.done,
            Err(error) => {
                worker.status().report_error(error.to_string());
                return Err(error);
            }
        }
    }
}

/// What a worker reports about itself; cheap to clone and to update once per unit of work.
#[derive(Clone)]
pub struct WorkerStatus(Arc<StatusInner>);

struct StatusInner {
    name: String,
    state: Mutex<State>,
    progress_gauge: metrics::Gauge,
    backlog_gauge: metrics::Gauge,
    up_gauge: metrics::Gauge,
    restarts_counter: metrics::Counter,
}

struct State {
    running: bool,
    /// Set by the worker itself while it is alive but cannot do its job (e.g. its durable
    /// consumer is gone and is being created again).
    down: Option<String>,
    last_error: Option<String>,
    last_progress: Instant,
    /// Since when every round has failed (set by the first failure after progress, cleared by
    /// progress): a worker with nothing waiting that cannot do its rounds — the re-drive or
    /// retention against a read-only database — is as broken as one with a backlog.
    failing_since: Option<Instant>,
    busy_since: Option<Instant>,
    backlog: u64,
    restarts: u64,
}

/// Why a worker makes its service not ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unhealthy {
    pub worker: String,
    /// What is wrong, with the error behind it when there is one: for operators (the admin
    /// listener's `/ready`, logs), never for the public listener.
    pub reason: String,
    /// The same without any error text (which may name databases, servers or rows): what the
    /// public listener's `/ready` says.
    #[serde(skip)]
    pub summary: String,
}

impl WorkerStatus {
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let labels = [("worker", name.clone())];
        WorkerStatus(Arc::new(StatusInner {
            progress_gauge: metrics::gauge!("worker_last_progress_timestamp_seconds", &labels),
            backlog_gauge: metrics::gauge!("worker_backlog", &labels),
            up_gauge: metrics::gauge!("worker_up", &labels),
            // Registered now, so the series reads 0 from the start (an alert's `increase()`
            // sees the first restart, and the metric exists before anything went wrong).
            restarts_counter: metrics::counter!("worker_restarts_total", &labels),
            name,
            state: Mutex::new(State {
                running: false,
                down: None,
                last_error: None,
                last_progress: Instant::now(),
                failing_since: None,
                busy_since: None,
                backlog: 0,
                restarts: 0,
            }),
        }))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the plain fields inconsistent.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker did useful work (processed a batch, published rows, found nothing to do while
    /// nothing was waiting). A round that failed is not progress: report it with
    /// [`WorkerStatus::report_error`].
    pub fn progress(&self) {
        let mut state = self.state();
        state.last_progress = Instant::now();
        state.last_error = None;
        state.failing_since = None;
        drop(state);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.0.progress_gauge.set(now.as_secs_f64());
    }

    /// Marks one unit of work in progress until the guard is dropped (also when the future
    /// holding it is aborted).
    pub fn busy(&self) -> BusyGuard<'_> {
        self.state().busy_since = Some(Instant::now());
        BusyGuard(self)
    }

    /// Work known to be waiting for this worker (consumer lag, outbox rows).
    pub fn set_backlog(&self, backlog: u64) {
        let mut state = self.state();
        if state.backlog == 0 && backlog > 0 {
            // Waiting starts now: a worker idle for an hour has not been stalled for an hour.
            state.last_progress = Instant::now();
        }
        state.backlog = backlog;
        drop(state);
        self.0.backlog_gauge.set(backlog as f64);
    }

    /// The worker cannot do its job until it reports [`WorkerStatus::report_up`].
    pub fn report_down(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let mut state = self.state();
        state.last_error = Some(reason.clone());
        state.down = Some(reason);
    }

    pub fn report_up(&self) {
        self.state().down = None;
    }

    /// A round failed; the worker retries by itself. Rounds failing, with no progress between
    /// them, for longer than the stall limit make the worker unhealthy.
    pub fn report_error(&self, error: impl Into<String>) {
        let mut state = self.state();
        state.last_error = Some(error.into());
        state.failing_since.get_or_insert_with(Instant::now);
    }

    /// Whether the last round failed (no progress since).
    pub fn is_failing(&self) -> bool {
        self.state().failing_since.is_some()
    }

    pub fn backlog(&self) -> u64 {
        self.state().backlog
    }

    pub fn restarts(&self) -> u64 {
        self.state().restarts
    }

    fn started(&self) {
        let mut state = self.state();
        state.running = true;
        state.down = None;
        state.busy_since = None;
        state.last_progress = Instant::now();
        drop(state);
        self.0.up_gauge.set(1.0);
    }

    fn stopped(&self, reason: String) {
        let mut state = self.state();
        state.running = false;
        state.busy_since = None;
        state.last_error = Some(reason);
        // A life that ended in an error is a failed round: a worker that keeps failing at start
        // is failing, not healthy between its restarts.
        state.failing_since.get_or_insert_with(Instant::now);
        state.restarts += 1;
        drop(state);
        self.0.up_gauge.set(0.0);
        self.0.restarts_counter.increment(1);
    }

    /// Stopped at shutdown, after its last round.
    fn retired(&self) {
        let mut state = self.state();
        state.running = false;
        state.busy_since = None;
        drop(state);
        self.0.up_gauge.set(0.0);
    }

    fn busy_for(&self) -> Option<Duration> {
        self.state().busy_since.map(|since| since.elapsed())
    }

    /// `None` when healthy; otherwise why not. `supervised` is false when tests drive the
    /// workers by hand (then "not running" is expected and only stalls count).
    pub fn unhealthy(&self, stall_after: Duration, supervised: bool) -> Option<Unhealthy> {
        let state = self.state();
        let (summary, detail) = if supervised && !state.running {
            (
                "not running".to_owned(),
                Some(format!(
                    "restarting after: {}",
                    state.last_error.as_deref().unwrap_or("not started yet")
                )),
            )
        } else if let Some(down) = &state.down {
            // The worker's own words say what is down and why; shown as they are.
            return Some(Unhealthy {
                worker: self.0.name.clone(),
                reason: down.clone(),
                summary: "down".to_owned(),
            });
        } else if let Some(failing) = state
            .failing_since
            .map(|since| since.elapsed())
            .filter(|failing| *failing > stall_after)
        {
            // Before the busy check: a failing worker is busy during each retry, and must not
            // look healthy then.
            (
                format!("failing for {:.0} s", failing.as_secs_f64()),
                Some(
                    state
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "no error recorded".to_owned()),
                ),
            )
        } else if let Some(busy) = state.busy_since.map(|s| s.elapsed()) {
            if busy <= stall_after {
                return None;
            }
            (
                format!("busy with one unit of work for {:.0} s", busy.as_secs_f64()),
                None,
            )
        } else if state.backlog > 0 && state.last_progress.elapsed() > stall_after {
            (
                format!(
                    "{} waiting and no progress for {:.0} s",
                    state.backlog,
                    state.last_progress.elapsed().as_secs_f64()
                ),
                state
                    .last_error
                    .as_ref()
                    .map(|error| format!("last error: {error}")),
            )
        } else {
            return None;
        };
        let reason = match detail {
            Some(detail) => format!("{summary} ({detail})"),
            None => summary.clone(),
        };
        Some(Unhealthy {
            worker: self.0.name.clone(),
            reason,
            summary,
        })
    }
}

pub struct BusyGuard<'a>(&'a WorkerStatus);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.state().busy_since = None;
    }
}

/// Runs workers' rounds, restarting a worker after it panics or hangs. [`Supervisor::shutdown`]
/// lets each finish its round in progress; dropping the supervisor aborts them.
pub struct Supervisor {
    tasks: JoinSet<()>,
    statuses: Vec<WorkerStatus>,
    policy: RestartPolicy,
    stop: CancellationToken,
}

#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// A worker busy with one unit of work for longer than this is aborted and restarted.
    pub hang_after: Duration,
}

impl RestartPolicy {
    pub fn from_settings(settings: &WorkerSettings) -> Self {
        RestartPolicy {
            first_backoff: settings.restart_backoff,
            max_backoff: settings.max_restart_backoff,
            hang_after: settings.hang_after,
        }
    }

    /// A life longer than this counts as healthy: the next failure starts the backoff over.
    fn healthy_life(&self) -> Duration {
        self.max_backoff.max(Duration::from_secs(10))
    }
}

impl Supervisor {
    pub fn new(policy: RestartPolicy) -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            statuses: Vec::new(),
            policy,
            stop: CancellationToken::new(),
        }
    }

    pub fn spawn(&mut self, worker: Arc<dyn Worker>) {
        self.statuses.push(worker.status().clone());
        let policy = self.policy;
        let stop = self.stop.clone();
        self.tasks
            .spawn(async move { supervise(&*worker, policy, &stop).await });
    }

    pub fn statuses(&self) -> &[WorkerStatus] {
        &self.statuses
    }

    /// Stops every worker once the round it is in is over (its transaction committed and its
    /// acks sent, or not begun), and returns when all have stopped.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

enum End {
    Stopped,
    Panicked(String),
    Hung(Duration),
}

async fn supervise(worker: &dyn Worker, policy: RestartPolicy, stop: &CancellationToken) {
    let status = worker.status();
    let mut backoff = policy.first_backoff;
    loop {
        status.started();
        let began = Instant::now();
        let end = tokio::select! {
            result = AssertUnwindSafe(run_rounds(worker, stop)).catch_unwind() => match result {
                Ok(()) => End::Stopped,
                Err(panic) => End::Panicked(panic_message(panic.as_ref())),
            },
            busy = hang_watch(status, policy.hang_after) => End::Hung(busy),
        };
        let reason = match end {
            End::Stopped => {
                tracing::info!(worker = status.name(), "worker stopped");
                status.retired();
                return;
            }
            End::Panicked(message) => format!("panicked: {message}"),
            End::Hung(busy) => format!(
                "hung: one unit of work took longer than {:.0} s; aborted",
                busy.as_secs_f64()
            ),
        };
        if began.elapsed() > policy.healthy_life() {
            backoff = policy.first_backoff;
        }
        tracing::error!(worker = status.name(), %reason, restart_in_ms = backoff.as_millis() as u64, "worker stopped; restarting");
        status.stopped(reason);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}

/// The production loop of one worker: its rounds, paced, one after another while more is
/// waiting, then [`Worker::idle`] until the next is due; after a failed round, a pause. Returns
/// when asked to stop — between rounds, never inside one.
async fn run_rounds(worker: &dyn Worker, stop: &CancellationToken) {
    let status = worker.status();
    let mut pacer = RoundPacer::new(worker.round_interval());
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let pause = match worker.round().await {
            Ok(round) if round.more => {
                failures = 0;
                pacer.start_round_now();
                continue;
            }
            Ok(_) => {
                failures = 0;
                None
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let pause = worker.retry_after(failures);
                tracing::warn!(worker = status.name(), %error, retry_in_ms = pause.as_millis() as u64, "round failed; will retry");
                status.report_error(error.to_string());
                Some(pause)
            }
        };
        let wait = async {
            match pause {
                None => {
                    worker.idle().await;
                    pacer.start_round().await;
                }
                Some(pause) => {
                    tokio::time::sleep(pause).await;
                    pacer.start_round_now();
                }
            }
        };
        tokio::select! {
            () = wait => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Resolves when the worker has been busy with one unit of work for longer than `limit`.
async fn hang_watch(status: &WorkerStatus, limit: Duration) -> Duration {
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(limit));
    loop {
        tick.tick().await;
        if let Some(busy) = status.busy_for().filter(|busy| *busy > limit) {
            return busy;
        }
    }
}

/// The text of a panic payload (`panic!("...")` carries a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests;
