//! How inventory reacts: new orders reserve stock; failed payments release it. Every answer
//! comes from inventory's own records, so an order asked about again (a re-drive by the order
//! service, an event published twice) is told the same thing and nothing is applied twice.

use crate::stock::{self, Decision, OrderLine};
use platform::broker::Topology;
use platform::consumer::{EventHandler, HandlerError, Incoming};
use platform::envelope::TraceContext;
use platform::events::{Event, StockRejected, StockReleased, StockReserved};
use platform::outbox;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

pub struct StockKeeper {
    pub topology: Topology,
}

fn order_line(event: &platform::events::OrderCreated) -> Result<OrderLine, HandlerError> {
    if event.quantity < 1 || event.product_id < 1 {
        return Err(HandlerError::Permanent(format!(
            "order {} asks for {} units of product {}: quantity and product must be positive",
            event.order_id, event.quantity, event.product_id
        )));
    }
    Ok(OrderLine {
        order_id: event.order_id,
        user_id: event.user_id,
        product_id: event.product_id,
        quantity: event.quantity,
    })
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
                Event::OrderCreated(order) => {
                    lines.push((order_line(order)?, &incoming.envelope.trace))
                }
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
            let decisions = stock::reserve_stock(tx, &order_lines).await?;
            for ((line, trace), decision) in lines.into_iter().zip(decisions) {
                replies.push((reply_to_order(&line, decision, trace), trace.clone()));
            }
        }
        if !failed_payments.is_empty() {
            let order_ids: Vec<Uuid> = failed_payments.iter().map(|(id, _)| *id).collect();
            let released = stock::release_reservations(tx, &order_ids).await?;
            for (order_id, trace) in failed_payments {
                let request_id = trace.request_id.as_deref().unwrap_or("-");
                let Some(release) = released.iter().find(|r| r.order_id == order_id) else {
                    tracing::warn!(%order_id, request_id, "payment failed for an order with no reservation");
                    continue;
                };
                if release.now {
                    tracing::info!(%order_id, request_id, product_id = release.product_id, quantity = release.quantity, "stock released (compensation)");
                } else {
                    tracing::debug!(%order_id, request_id, "stock was released before; reported again");
                }
                replies.push((
                    Event::StockReleased(StockReleased {
                        order_id,
                        product_id: release.product_id,
                        quantity: release.quantity,
                    }),
                    trace.clone(),
                ));
            }
        }
        outbox::enqueue_all(tx, &self.topology, &replies).await?;
        Ok(())
    }
}

fn reply_to_order(line: &OrderLine, decision: Decision, trace: &TraceContext) -> Event {
    let request_id = trace.request_id.as_deref().unwrap_or("-");
    match decision {
        Decision::Reserved(reserved) => {
            tracing::info!(order_id = %line.order_id, request_id, product_id = reserved.product_id, quantity = reserved.quantity, "stock reserved");
            Event::StockReserved(StockReserved {
                order_id: line.order_id,
                user_id: reserved.user_id,
                product_id: reserved.product_id,
                quantity: reserved.quantity,
                amount_cents: reserved.amount_cents,
            })
        }
        Decision::Rejected(reason) => {
            tracing::info!(order_id = %line.order_id, request_id, reason = reason.as_str(), "stock rejected");
            Event::StockRejected(StockRejected {
                order_id: line.order_id,
                product_id: line.product_id,
                reason,
            })
        }
    }
}
