//! Order intake with group commit: concurrent `POST /orders` requests are written together, one
//! transaction (and one WAL flush) for many orders, each order with its `OrderCreated` outbox
//! row. A request is answered only after the transaction holding its order committed.
//!
//! Several writers share one queue: while one commits, the next collects the requests that
//! arrive meanwhile, so batches grow with load and a lone request is written at once.

use crate::error::OrderError;
use crate::orders::{self, NewOrder, Order};
use platform::broker::Topology;
use platform::envelope::TraceContext;
use platform::events::{Event, OrderCreated};
use platform::outbox::{self, OutboxSignal};
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

struct Request {
    order: NewOrder,
    trace: TraceContext,
    reply: oneshot::Sender<Result<Order, OrderError>>,
}

#[derive(Clone)]
pub struct OrderIntake {
    queue: mpsc::Sender<Request>,
}

#[derive(Clone)]
struct Writer {
    pool: PgPool,
    topology: Topology,
    outbox_signal: OutboxSignal,
    max_batch: usize,
}

impl OrderIntake {
    /// Starts `writers` writer tasks, each committing up to `max_batch` orders at a time.
    pub fn start(
        pool: PgPool,
        topology: Topology,
        outbox_signal: OutboxSignal,
        writers: usize,
        max_batch: usize,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(writers.max(1) * max_batch.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let writer = Writer {
            pool,
            topology,
            outbox_signal,
            max_batch: max_batch.max(1),
        };
        for _ in 0..writers.max(1) {
            tokio::spawn(writer.clone().run(receiver.clone()));
        }
        OrderIntake { queue }
    }

    /// Writes the order (and its `OrderCreated` event) and returns it once committed.
    pub async fn place(&self, order: NewOrder, trace: TraceContext) -> Result<Order, OrderError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request {
                order,
                trace,
                reply,
            })
            .await
            .map_err(|_| OrderError::Unavailable)?;
        answer.await.map_err(|_| OrderError::Unavailable)?
    }
}

impl Writer {
    async fn run(self, receiver: Arc<Mutex<mpsc::Receiver<Request>>>) {
        loop {
            let batch = {
                let mut receiver = receiver.lock().await;
                let Some(first) = receiver.recv().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < self.max_batch {
                    match receiver.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                batch
            };
            self.write(batch).await;
        }
    }

    async fn write(&self, batch: Vec<Request>) {
        metrics::histogram!("order_intake_batch_size").record(batch.len() as f64);
        match self.commit(&batch).await {
            Ok(orders) => {
                self.outbox_signal.notify();
                for (request, order) in batch.into_iter().zip(orders) {
                    let request_id = request.trace.request_id.as_deref().unwrap_or("-");
                    tracing::info!(order_id = %order.id, request_id, user_id = order.user_id, product_id = order.product_id, quantity = order.quantity, "order created");
                    let _ = request.reply.send(Ok(order));
                }
            }
            Err(error) => {
                tracing::warn!(%error, orders = batch.len(), "order batch not written");
                for request in batch {
                    let _ = request
                        .reply
                        .send(Err(OrderError::from_batch_failure(&error)));
                }
            }
        }
    }

    async fn commit(&self, batch: &[Request]) -> Result<Vec<Order>, OrderError> {
        let new_orders: Vec<NewOrder> = batch.iter().map(|r| r.order.clone()).collect();
        let mut tx = self.pool.begin().await?;
        let orders = orders::insert_orders(&mut tx, &new_orders).await?;
        let events: Vec<(Event, TraceContext)> = orders
            .iter()
            .zip(batch)
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
        Ok(orders)
    }
}
