//! How payment reacts: a stock reservation is charged to the buyer, once.

use crate::decline::is_declined;
use crate::ledger::{self, ChargeRequest, ChargeResult};
use platform::broker::Topology;
use platform::consumer::{EventHandler, HandlerError, Incoming};
use platform::events::{Event, PaymentCompleted, PaymentFailed};
use platform::outbox;
use sqlx::{Postgres, Transaction};

pub struct Cashier {
    pub topology: Topology,
    pub decline_rate: f64,
}

impl EventHandler for Cashier {
    async fn handle_batch(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        events: &[Incoming],
    ) -> Result<(), HandlerError> {
        let mut requests = Vec::with_capacity(events.len());
        for incoming in events {
            let Event::StockReserved(reserved) = &incoming.event else {
                return Err(HandlerError::Permanent(format!(
                    "payment does not handle {}",
                    incoming.envelope.event_type
                )));
            };
            if reserved.amount_cents < 0 {
                return Err(HandlerError::Permanent(format!(
                    "order {} has a negative amount",
                    reserved.order_id
                )));
            }
            requests.push(ChargeRequest {
                order_id: reserved.order_id,
                user_id: reserved.user_id,
                amount_cents: reserved.amount_cents,
                declined: is_declined(reserved.order_id, self.decline_rate),
            });
        }
        // An order charged before is answered from its recorded charge, never charged again.
        let charges = ledger::charge(tx, &requests).await?;
        let mut replies = Vec::with_capacity(events.len());
        for ((request, charge), incoming) in requests.iter().zip(charges).zip(events) {
            let trace = &incoming.envelope.trace;
            let request_id = trace.request_id.as_deref().unwrap_or("-");
            let reply = match charge.result {
                ChargeResult::Succeeded => {
                    tracing::info!(order_id = %request.order_id, request_id, user_id = charge.user_id, amount_cents = charge.amount_cents, "payment completed");
                    Event::PaymentCompleted(PaymentCompleted {
                        order_id: request.order_id,
                        user_id: charge.user_id,
                        amount_cents: charge.amount_cents,
                    })
                }
                ChargeResult::Failed(reason) => {
                    tracing::info!(order_id = %request.order_id, request_id, reason = reason.as_str(), "payment failed");
                    Event::PaymentFailed(PaymentFailed {
                        order_id: request.order_id,
                        user_id: charge.user_id,
                        amount_cents: charge.amount_cents,
                        reason,
                    })
                }
            };
            replies.push((reply, trace.clone()));
        }
        outbox::enqueue_all(tx, &self.topology, &replies).await?;
        Ok(())
    }
}
