//! Order intake with group commit: concurrent `POST /orders` requests are written together, one
//! transaction (and one WAL flush) for many orders, each order with its `OrderCreated` outbox
//! row. Every order goes through it, with or without an Idempotency-Key (`batch.rs` is the one
//! transaction: the keys' locks, replays and rejections, the open-orders cap, the insert).
//!
//! Several writers share one queue: while one commits, the next collects the requests that
//! arrive meanwhile, so batches grow with load and a lone request is written at once.
//!
//! Answers tell the truth. A request's order id is chosen before the insert. `202` means the
//! order is committed; `503` (and `429`, `409`, `422`) means nothing was written for the
//! request. When the COMMIT (or anything after the first write) fails with the connection lost,
//! the server may have committed: the writer asks on a fresh connection (`outcome.rs`) and
//! answers `202` if it did, `503` if not, and `500 /problems/outcome-unknown` naming the order
//! when it cannot find out in time.
//!
//! Load shedding: a request that no writer has taken within the commit deadline (a slow or
//! stalled database) is answered `503` with `Retry-After`, and its order is never written — a
//! writer skips a request that was given up on, and a request, once taken, waits for its
//! transaction (bounded by the statement timeout). When a batch fails because the database
//! cannot be reached (or a lock wait timed out), the requests queued behind it are answered
//! `503` at once. So waiting requests and their memory are bounded by rate × deadline, and
//! nothing is half-written.

mod batch;
mod outcome;

use crate::error::OrderError;
use crate::orders::{NewOrder, Order};
use futures::future::BoxFuture;
use outcome::CommitOutcome;
use platform::broker::Topology;
use platform::envelope::TraceContext;
use platform::outbox::OutboxSignal;
use platform::supervisor::{Round, Worker, WorkerError, WorkerStatus};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex, OwnedMutexGuard};
use tokio::time::Instant;
use uuid::Uuid;

/// Where a request is: waiting in the queue, taken into a batch, or given up on by its caller.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// An order placed: the one written for this request, or (`replayed`) the one an earlier
/// request with the same Idempotency-Key wrote.
#[derive(Debug, Clone)]
pub struct Placed {
    pub order: Order,
    pub replayed: bool,
}

type Answer = Result<Placed, OrderError>;

struct Request {
    /// The order's id, chosen before it is written.
    id: Uuid,
    order: NewOrder,
    key: Option<String>,
    trace: TraceContext,
    /// Until when the caller waits to be taken into a batch; a commit in doubt is looked into
    /// until then too.
    deadline: Instant,
    reply: oneshot::Sender<Answer>,
    state: Arc<AtomicU8>,
}

#[derive(Clone)]
pub struct OrderIntake {
    queue: mpsc::Sender<Request>,
    deadline: Duration,
}

/// What the intake is built from.
pub struct IntakeSettings {
    pub writers: usize,
    pub max_batch: usize,
    pub commit_deadline: Duration,
    /// Orders of one buyer that may be open at once.
    pub max_open_orders: u32,
    /// A writer's transactions start at least this far apart (`platform::pacing`).
    pub round_interval: Duration,
}

/// A request taken from the queue, and the queue, held until the writer's round is due.
type Held = (Request, OwnedMutexGuard<mpsc::Receiver<Request>>);

struct Writer {
    pool: PgPool,
    topology: Topology,
    outbox_signal: OutboxSignal,
    max_batch: usize,
    max_open_orders: u32,
    round_interval: Duration,
    receiver: Arc<Mutex<mpsc::Receiver<Request>>>,
    /// The request [`Worker::idle`] received, for the next round, and the queue held till then.
    first: std::sync::Mutex<Option<Held>>,
    status: WorkerStatus,
}

impl OrderIntake {
    /// The intake and its writers, which the caller runs under supervision (a writer that
    /// panics is restarted; the queue outlives it).
    pub fn new(
        pool: PgPool,
        topology: Topology,
        outbox_signal: OutboxSignal,
        settings: IntakeSettings,
    ) -> (Self, Vec<Arc<dyn Worker>>) {
        let writers = settings.writers.max(1);
        let max_batch = settings.max_batch.max(1);
        let (queue, receiver) = mpsc::channel(writers * max_batch * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let workers = (1..=writers)
            .map(|n| {
                Arc::new(Writer {
                    pool: pool.clone(),
                    topology: topology.clone(),
                    outbox_signal: outbox_signal.clone(),
                    max_batch,
                    max_open_orders: settings.max_open_orders,
                    round_interval: settings.round_interval,
                    receiver: receiver.clone(),
                    first: std::sync::Mutex::default(),
                    status: WorkerStatus::new(format!("intake-writer-{n}")),
                }) as Arc<dyn Worker>
            })
            .collect();
        // Registered at 0 now: the series exist before the first order is shed or refused, so
        // an alert's `rate()` sees the first ones.
        metrics::counter!("order_intake_shed_total").increment(0);
        metrics::counter!("order_intake_refused_total").increment(0);
        let intake = OrderIntake {
            queue,
            deadline: settings.commit_deadline,
        };
        (intake, workers)
    }

    /// Places the order (with its `OrderCreated` event, and its Idempotency-Key if it has one)
    /// and returns it once committed — or the order an earlier request with the key placed.
    pub async fn place(
        &self,
        order: NewOrder,
        key: Option<String>,
        trace: TraceContext,
    ) -> Result<Placed, OrderError> {
        let deadline = Instant::now() + self.deadline;
        let id = Uuid::now_v7();
        let (reply, mut answer) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let request = Request {
            id,
            order,
            key,
            trace,
            deadline,
            reply,
            state: state.clone(),
        };
        match tokio::time::timeout_at(deadline, self.queue.send(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(OrderError::Unavailable),
            Err(_) => return Err(shed()),
        }
        tokio::select! {
            answer = &mut answer => return answer.unwrap_or_else(|_| gone(&state, id)),
            _ = tokio::time::sleep_until(deadline) => {}
        }
        if state
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Err(shed());
        }
        // Already in a transaction: its outcome is the answer.
        answer.await.unwrap_or_else(|_| gone(&state, id))
    }
}

/// The writer dropped the request without answering (it panicked, or the service is stopping).
/// Before a writer took it nothing was written; after, its transaction may have committed.
fn gone(state: &AtomicU8, id: Uuid) -> Answer {
    if state.load(Ordering::Acquire) == TAKEN {
        Err(OrderError::OutcomeUnknown { order_id: id })
    } else {
        Err(OrderError::Unavailable)
    }
}

/// Adds the request to the batch unless it was given up on (deadline passed, client gone):
/// such an order is never written.
fn take(batch: &mut Vec<Request>, request: Request) {
    let taken = request
        .state
        .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    if taken && !request.reply.is_closed() {
        batch.push(request);
    }
}

fn shed() -> OrderError {
    metrics::counter!("order_intake_shed_total").increment(1);
    OrderError::Overloaded
}

/// How long a writer whose last batch failed waits for a request before it checks the database
/// by itself: without orders arriving it would otherwise never learn that the database is back,
/// and `/ready` (which sends load balancers' traffic) would wait for traffic.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

impl Writer {
    /// One round: the request [`Worker::idle`] received and those queued behind it, up to a
    /// batch, written in one transaction; with none, and the last batch failed, a check whether
    /// the database takes a write again.
    async fn write_round(&self) -> Round {
        let mut batch = Vec::with_capacity(self.max_batch);
        let held = self.first().take();
        // Without a request of its own, the writer takes the queue only if no other writer
        // holds it: one that does is waiting for a request (none queued) or collecting its batch.
        let receiver = match held {
            Some((first, receiver)) => {
                take(&mut batch, first);
                Some(receiver)
            }
            None => self.receiver.clone().try_lock_owned().ok(),
        };
        if let Some(mut receiver) = receiver {
            while batch.len() < self.max_batch {
                match receiver.try_recv() {
                    Ok(request) => take(&mut batch, request),
                    Err(_) => break,
                }
            }
        }
        if batch.is_empty() {
            if self.status.is_failing() {
                self.check_database().await;
            }
            return Round::default();
        }
        let taken = batch.len();
        // A failed batch is a failed round for `/ready`, but its requests are answered: the
        // writer goes on with the next.
        match self.write(batch).await {
            Ok(()) => self.status.progress(),
            Err(error) => self.status.report_error(error),
        }
        Round::of(taken, self.max_batch)
    }

    /// Waits for the next request (after a failed batch, at most [`IDLE_CHECK_AFTER`]: the next
    /// round then checks the database by itself) and keeps it for the next round, with the
    /// queue: the requests that arrive until the round is due (paced) are this writer's batch.
    async fn wait_for_request(&self) {
        let mut receiver = self.receiver.clone().lock_owned().await;
        let next = if self.status.is_failing() {
            match tokio::time::timeout(IDLE_CHECK_AFTER, receiver.recv()).await {
                Ok(next) => next,
                Err(_) => return,
            }
        } else {
            receiver.recv().await
        };
        match next {
            Some(request) => *self.first() = Some((request, receiver)),
            // Every sender is gone: the service is shutting down.
            None => {
                drop(receiver);
                std::future::pending::<()>().await
            }
        }
    }

    fn first(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.first.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// While idle after a failed batch: whether the database takes a write again.
    async fn check_database(&self) {
        let _busy = self.status.busy();
        let checked = match self.pool.acquire().await {
            Ok(mut conn) => platform::db::prove_writable(&mut conn).await,
            Err(error) => Err(error),
        };
        match checked {
            Ok(()) => self.status.progress(),
            Err(error) => self
                .status
                .report_error(format!("the database takes no write: {error}")),
        }
    }

    /// Writes the batch and answers its requests. A batch that failed is a failed round (its
    /// error returned); one whose orders were refused for fair use was written as it should be.
    async fn write(&self, batch: Vec<Request>) -> Result<(), String> {
        let _busy = self.status.busy();
        metrics::histogram!("order_intake_batch_size").record(batch.len() as f64);
        let attempt = batch::write(
            &batch::Target {
                pool: &self.pool,
                topology: &self.topology,
                max_open_orders: self.max_open_orders,
            },
            &batch,
        )
        .await;
        let outcome = match &attempt.failure {
            None => CommitOutcome::Committed,
            Some(error) => self.outcome_of_failure(error, &attempt, &batch).await,
        };
        if !attempt.written.is_empty() && outcome == CommitOutcome::Committed {
            self.outbox_signal.notify();
        }
        let refuse_queued = outcome != CommitOutcome::Committed
            && attempt.failure.as_ref().is_some_and(|error| {
                matches!(
                    OrderError::from_batch_failure(error),
                    OrderError::Unavailable
                )
            });
        // A COMMIT whose answer was lost but which the database kept wrote what it should.
        let round = match (&attempt.failure, outcome) {
            (None, _) | (Some(_), CommitOutcome::Committed) => Ok(()),
            (Some(error), _) => Err(format!("order batch not written: {error}")),
        };
        for (request, answer) in batch.into_iter().zip(attempt.answers(outcome)) {
            if let Ok(Placed {
                order,
                replayed: false,
            }) = &answer
            {
                let request_id = request.trace.request_id.as_deref().unwrap_or("-");
                tracing::info!(order_id = %order.id, request_id, user_id = order.user_id, product_id = order.product_id, quantity = order.quantity, "order created");
            }
            let _ = request.reply.send(answer);
        }
        if refuse_queued {
            self.refuse_queued().await;
        }
        round
    }

    /// What became of the batch's orders after `error`: before the first write, or when the
    /// server itself reported the error, nothing was committed; after a lost connection, the
    /// database is asked (within the latest deadline of the batch's requests).
    async fn outcome_of_failure(
        &self,
        error: &OrderError,
        attempt: &batch::Attempt,
        batch: &[Request],
    ) -> CommitOutcome {
        tracing::warn!(%error, orders = batch.len(), "order batch failed");
        let Some(xid) = attempt.xid else {
            return CommitOutcome::Aborted;
        };
        if !outcome::in_doubt(error) {
            return CommitOutcome::Aborted;
        }
        let until = batch
            .iter()
            .map(|r| r.deadline)
            .max()
            .unwrap_or_else(Instant::now)
            .max(Instant::now() + outcome::MIN_INQUIRY);
        let found = outcome::inquire(&self.pool, xid, until).await;
        tracing::warn!(
            xid,
            orders = attempt.written.len(),
            outcome = found.as_str(),
            "the connection was lost around a COMMIT; its outcome looked up"
        );
        found
    }

    /// The database cannot take orders right now (unreachable, or a lock wait timed out): the
    /// requests queued behind the failed batch would fail the same way, so they are answered
    /// `503` at once instead of each waiting out its deadline. Later requests are tried again.
    async fn refuse_queued(&self) {
        let mut receiver = self.receiver.lock().await;
        let mut refused = 0u64;
        while let Ok(request) = receiver.try_recv() {
            let taken = request
                .state
                .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if taken {
                let _ = request.reply.send(Err(OrderError::Unavailable));
                refused += 1;
            }
        }
        if refused > 0 {
            metrics::counter!("order_intake_refused_total").increment(refused);
            tracing::warn!(
                orders = refused,
                "database unavailable; queued orders refused"
            );
        }
    }
}

/// Several writers share one queue: while one commits, the next collects the requests that
/// arrive meanwhile (`crate::intake`'s doc); the requests that arrive until a writer's round is
/// due join its batch.
impl Worker for Writer {
    fn status(&self) -> &WorkerStatus {
        &self.status
    }

    fn round(&self) -> BoxFuture<'_, Result<Round, WorkerError>> {
        Box::pin(async move { Ok(self.write_round().await) })
    }

    fn idle(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.wait_for_request())
    }

    fn round_interval(&self) -> Duration {
        self.round_interval
    }
}
