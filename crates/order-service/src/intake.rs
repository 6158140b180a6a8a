//! Order intake with group commit: concurrent `POST /orders` requests are written together, one
//! transaction (and one WAL flush) for many orders, each order with its `OrderCreated` outbox
//! row. A request is answered only after the transaction holding its order committed.
//!
//! Several writers share one queue: while one commits, the next collects the requests that
//! arrive meanwhile, so batches grow with load and a lone request is written at once.
//!
//! Load shedding: a request that no writer has taken within the commit deadline (a slow or
//! stalled database) is answered `503` with `Retry-After`, and its order is never written — a
//! writer skips a request that was given up on, and a request, once taken, waits for its
//! transaction (bounded by the statement timeout). When a batch fails because the database
//! cannot be reached (or a lock wait timed out), the requests queued behind it are answered
//! `503` at once. So waiting requests and their memory are bounded by rate × deadline, and
//! nothing is half-written.
//!
//! Fair use: each batch counts its buyers' open orders in its own transaction and writes only
//! the orders that fit under `max_open_orders`; the others are answered `429` (see
//! `fair_use.rs` for how exact that is).

use crate::error::OrderError;
use crate::fair_use::{self, Limited};
use crate::orders::{self, NewOrder, Order};
use futures::future::BoxFuture;
use platform::broker::Topology;
use platform::envelope::TraceContext;
use platform::events::{Event, OrderCreated};
use platform::outbox::{self, OutboxSignal};
use platform::pacing::RoundPacer;
use platform::supervisor::{Worker, WorkerError, WorkerStatus};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Where a request is: waiting in the queue, taken into a batch, or given up on by its caller.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

struct Request {
    order: NewOrder,
    trace: TraceContext,
    reply: oneshot::Sender<Result<Order, OrderError>>,
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

struct Writer {
    pool: PgPool,
    topology: Topology,
    outbox_signal: OutboxSignal,
    max_batch: usize,
    max_open_orders: u32,
    round_interval: Duration,
    receiver: Arc<Mutex<mpsc::Receiver<Request>>>,
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
                    status: WorkerStatus::new(format!("intake-writer-{n}")),
                }) as Arc<dyn Worker>
            })
            .collect();
        let intake = OrderIntake {
            queue,
            deadline: settings.commit_deadline,
        };
        (intake, workers)
    }

    /// Writes the order (and its `OrderCreated` event) and returns it once committed.
    pub async fn place(&self, order: NewOrder, trace: TraceContext) -> Result<Order, OrderError> {
        let deadline = tokio::time::Instant::now() + self.deadline;
        let (reply, mut answer) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let request = Request {
            order,
            trace,
            reply,
            state: state.clone(),
        };
        match tokio::time::timeout_at(deadline, self.queue.send(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(OrderError::Unavailable),
            Err(_) => return Err(shed()),
        }
        tokio::select! {
            answer = &mut answer => return answer.map_err(|_| OrderError::Unavailable)?,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        if state
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Err(shed());
        }
        // Already in a transaction: its outcome is the answer.
        answer.await.map_err(|_| OrderError::Unavailable)?
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
    async fn run(&self) -> Result<(), WorkerError> {
        let mut pacer = RoundPacer::new(self.round_interval);
        loop {
            let batch = {
                let mut receiver = self.receiver.lock().await;
                let first = if self.status.is_failing() {
                    match tokio::time::timeout(IDLE_CHECK_AFTER, receiver.recv()).await {
                        Ok(first) => first,
                        Err(_) => {
                            drop(receiver);
                            self.check_database().await;
                            continue;
                        }
                    }
                } else {
                    receiver.recv().await
                };
                let Some(first) = first else {
                    // Every sender is gone: the service is shutting down.
                    return Ok(());
                };
                // The requests that arrive until this writer's round is due join the batch.
                pacer.start_round().await;
                let mut batch = Vec::with_capacity(self.max_batch);
                take(&mut batch, first);
                while batch.len() < self.max_batch {
                    match receiver.try_recv() {
                        Ok(request) => take(&mut batch, request),
                        Err(_) => break,
                    }
                }
                batch
            };
            // A batch whose requests were all given up on is neither progress nor failure.
            if !batch.is_empty() {
                match self.write(batch).await {
                    Ok(()) => self.status.progress(),
                    Err(error) => self.status.report_error(error),
                }
            }
        }
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
        match self.commit(&batch).await {
            Ok(answers) => {
                self.outbox_signal.notify();
                for (request, answer) in batch.into_iter().zip(answers) {
                    if let Ok(order) = &answer {
                        let request_id = request.trace.request_id.as_deref().unwrap_or("-");
                        tracing::info!(order_id = %order.id, request_id, user_id = order.user_id, product_id = order.product_id, quantity = order.quantity, "order created");
                    }
                    let _ = request.reply.send(answer);
                }
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, orders = batch.len(), "order batch not written");
                let unavailable = matches!(
                    OrderError::from_batch_failure(&error),
                    OrderError::Unavailable
                );
                for request in batch {
                    let _ = request
                        .reply
                        .send(Err(OrderError::from_batch_failure(&error)));
                }
                if unavailable {
                    self.refuse_queued().await;
                }
                Err(format!("order batch not written: {error}"))
            }
        }
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

    /// Writes the batch's orders that fit under the open-orders cap; returns each request's
    /// answer, in the batch's order.
    async fn commit(
        &self,
        batch: &[Request],
    ) -> Result<Vec<Result<Order, OrderError>>, OrderError> {
        let buyers: Vec<i64> = batch.iter().map(|r| r.order.user_id).collect();
        let mut tx = self.pool.begin().await?;
        let open = orders::open_orders_by_buyer(&mut tx, &buyers).await?;
        let admitted = fair_use::admit(&buyers, &open, self.max_open_orders);
        let written: Vec<&Request> = batch
            .iter()
            .zip(&admitted)
            .filter(|(_, admitted)| **admitted)
            .map(|(request, _)| request)
            .collect();
        if written.is_empty() {
            tx.rollback().await?;
            return Ok(self.answers(&admitted, Vec::new()));
        }
        let new_orders: Vec<NewOrder> = written.iter().map(|r| r.order).collect();
        let orders = orders::insert_orders(&mut tx, &new_orders).await?;
        let events: Vec<(Event, TraceContext)> = orders
            .iter()
            .zip(&written)
            .map(|(order, request)| {
                let event = Event::OrderCreated(OrderCreated {
                    order_id: order.id,
                    user_id: order.user_id,
                    product_id: order.product_id,
                    quantity: order.quantity,
                });
                (event, request.trace.clone())
            })
            .collect();
        outbox::enqueue_all(&mut tx, &self.topology, &events).await?;
        tx.commit().await?;
        Ok(self.answers(&admitted, orders))
    }

    /// Each request's answer: its written order, or the cap's refusal (counted).
    fn answers(&self, admitted: &[bool], orders: Vec<Order>) -> Vec<Result<Order, OrderError>> {
        let mut written = orders.into_iter();
        admitted
            .iter()
            .map(|admitted| {
                if *admitted {
                    written.next().ok_or(OrderError::Internal)
                } else {
                    Limited::OpenOrders.count();
                    Err(OrderError::TooManyOpenOrders {
                        cap: self.max_open_orders,
                    })
                }
            })
            .collect()
    }
}

impl Worker for Writer {
    fn status(&self) -> &WorkerStatus {
        &self.status
    }

    fn run(&self) -> BoxFuture<'_, Result<(), WorkerError>> {
        Box::pin(Writer::run(self))
    }
}
