//! How inventory reacts: new orders reserve stock; failed payments release it.

use crate::stock::{self, OrderLine, Reservation};
use platform::broker::Topology;
use platform::consumer::{EventHandler, HandlerError, Incoming, Subscription};
use platform::events::{Event, FailureReason, Source, StockRejected, StockReleased, StockReserved};
use platform::outbox;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

pub fn subscriptions() -> Vec<Subscription> {
    vec![
        Subscription {
            durable_name: "inventory-service-orders".into(),
            stream: Source::Order,
            subject_suffixes: vec!["order.created"],
        },
        Subscription {
            durable_name: "inventory-service-payments".into(),
            stream: Source::Payment,
            subject_suffixes: vec!["payment.failed"],
        },
    ]
}

pub struct StockKeeper {
    pub topology: Topology,
}

impl EventHandler for StockKeeper {
    async fn handle_batch(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        events: &[Incoming],
    ) -> Result<(), HandlerError> {
        let mut lines = Vec::new();
        let mut failed_payments = Vec::new();
        for incoming in events {
            match &incoming.event {
                Event::OrderCreated(order) => lines.push((
                    OrderLine {
                        order_id: order.order_id,
                        user_id: order.user_id,
                        product_id: order.product_id,
                        quantity: order.quantity,
                    },
                    &incoming.envelope.trace,
                )),
                Event::PaymentFailed(failed) => {
                    failed_payments.push((failed.order_id, &incoming.envelope.trace))
                }
                _ => {
                    return Err(HandlerError::Permanent(format!(
                        "inventory does not handle {}",
                        incoming.envelope.event_type
                    )))
                }
            }
        }

        let mut replies = Vec::with_capacity(events.len());
        if !lines.is_empty() {
            let order_lines: Vec<OrderLine> = lines.iter().map(|(line, _)| *line).collect();
            let outcomes = stock::reserve_stock(tx, &order_lines).await?;
            for ((line, trace), outcome) in lines.into_iter().zip(outcomes) {
                let reply = match outcome {
                    Reservation::Reserved { amount_cents } => {
                        tracing::info!(order_id = %line.order_id, request_id = trace.request_id.as_deref().unwrap_or("-"), product_id = line.product_id, quantity = line.quantity, "stock reserved");
                        Event::StockReserved(StockReserved {
                            order_id: line.order_id,
                            user_id: line.user_id,
                            product_id: line.product_id,
                            quantity: line.quantity,
                            amount_cents,
                        })
                    }
                    rejected => {
                        let reason = if rejected == Reservation::OutOfStock {
                            FailureReason::OutOfStock
                        } else {
                            FailureReason::UnknownProduct
                        };
                        tracing::info!(order_id = %line.order_id, request_id = trace.request_id.as_deref().unwrap_or("-"), reason = reason.as_str(), "stock rejected");
                        Event::StockRejected(StockRejected {
                            order_id: line.order_id,
                            product_id: line.product_id,
                            reason,
                        })
                    }
                };
                replies.push((reply, trace.clone()));
            }
        }
        if !failed_payments.is_empty() {
            let order_ids: Vec<Uuid> = failed_payments.iter().map(|(id, _)| *id).collect();
            let released = stock::release_reservations(tx, &order_ids).await?;
            for (order_id, trace) in failed_payments {
                match released.iter().find(|r| r.order_id == order_id) {
                    Some(release) => {
                        tracing::info!(%order_id, request_id = trace.request_id.as_deref().unwrap_or("-"), product_id = release.product_id, quantity = release.quantity, "stock released (compensation)");
                        replies.push((
                            Event::StockReleased(StockReleased {
                                order_id,
                                product_id: release.product_id,
                                quantity: release.quantity,
                            }),
                            trace.clone(),
                        ));
                    }
                    None => {
                        tracing::warn!(%order_id, "payment failed for an order with no active reservation")
                    }
                }
            }
        }
        outbox::enqueue_all(tx, &self.topology, &replies).await?;
        Ok(())
    }
}
