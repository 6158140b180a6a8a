//! How inventory reacts: new orders reserve stock; failed payments release it.

use crate::stock::{self, Reservation};
use platform::broker::Topology;
use platform::consumer::{EventHandler, HandlerError, Subscription};
use platform::envelope::Envelope;
use platform::events::{Event, FailureReason, Source, StockRejected, StockReleased, StockReserved};
use platform::outbox;
use sqlx::{Postgres, Transaction};

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
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        envelope: &Envelope,
        event: Event,
    ) -> Result<(), HandlerError> {
        let reply = match event {
            Event::OrderCreated(order) => {
                match stock::reserve_stock(
                    tx,
                    order.order_id,
                    order.user_id,
                    order.product_id,
                    order.quantity,
                )
                .await?
                {
                    Reservation::Reserved { amount_cents } => {
                        tracing::info!(order_id = %order.order_id, product_id = order.product_id, quantity = order.quantity, "stock reserved");
                        Event::StockReserved(StockReserved {
                            order_id: order.order_id,
                            user_id: order.user_id,
                            product_id: order.product_id,
                            quantity: order.quantity,
                            amount_cents,
                        })
                    }
                    rejected => {
                        let reason = if rejected == Reservation::OutOfStock {
                            FailureReason::OutOfStock
                        } else {
                            FailureReason::UnknownProduct
                        };
                        tracing::info!(order_id = %order.order_id, reason = reason.as_str(), "stock rejected");
                        Event::StockRejected(StockRejected {
                            order_id: order.order_id,
                            product_id: order.product_id,
                            reason,
                        })
                    }
                }
            }
            Event::PaymentFailed(failed) => {
                match stock::release_reservation(tx, failed.order_id).await? {
                    Some((product_id, quantity)) => {
                        tracing::info!(order_id = %failed.order_id, product_id, quantity, "stock released (compensation)");
                        Event::StockReleased(StockReleased {
                            order_id: failed.order_id,
                            product_id,
                            quantity,
                        })
                    }
                    None => {
                        tracing::warn!(order_id = %failed.order_id, "payment failed for an order with no active reservation");
                        return Ok(());
                    }
                }
            }
            _ => {
                return Err(HandlerError::Permanent(format!(
                    "inventory does not handle {}",
                    envelope.event_type
                )));
            }
        };
        outbox::enqueue(tx, &self.topology, &reply, &envelope.trace).await?;
        Ok(())
    }
}
