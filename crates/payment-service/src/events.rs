//! How payment reacts: a stock reservation is charged to the buyer, once.

use crate::decline::is_declined;
use crate::ledger::{self, ChargeResult};
use platform::broker::Topology;
use platform::consumer::{EventHandler, HandlerError, Subscription};
use platform::envelope::Envelope;
use platform::events::{Event, FailureReason, PaymentCompleted, PaymentFailed, Source};
use platform::outbox;
use sqlx::{Postgres, Transaction};

pub fn subscriptions() -> Vec<Subscription> {
    vec![Subscription {
        durable_name: "payment-service-reservations".into(),
        stream: Source::Inventory,
        subject_suffixes: vec!["inventory.stock_reserved"],
    }]
}

pub struct Cashier {
    pub topology: Topology,
    pub decline_rate: f64,
}

impl EventHandler for Cashier {
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        envelope: &Envelope,
        event: Event,
    ) -> Result<(), HandlerError> {
        let Event::StockReserved(reserved) = event else {
            return Err(HandlerError::Permanent(format!(
                "payment does not handle {}",
                envelope.event_type
            )));
        };
        let result = if is_declined(reserved.order_id, self.decline_rate) {
            ChargeResult::Failed(FailureReason::PaymentDeclined)
        } else {
            ledger::debit(tx, reserved.user_id, reserved.amount_cents).await?
        };
        ledger::record_charge(
            tx,
            reserved.order_id,
            reserved.user_id,
            reserved.amount_cents,
            result,
        )
        .await?;
        let reply = match result {
            ChargeResult::Succeeded => {
                tracing::info!(order_id = %reserved.order_id, user_id = reserved.user_id, amount_cents = reserved.amount_cents, "payment completed");
                Event::PaymentCompleted(PaymentCompleted {
                    order_id: reserved.order_id,
                    user_id: reserved.user_id,
                    amount_cents: reserved.amount_cents,
                })
            }
            ChargeResult::Failed(reason) => {
                tracing::info!(order_id = %reserved.order_id, reason = reason.as_str(), "payment failed");
                Event::PaymentFailed(PaymentFailed {
                    order_id: reserved.order_id,
                    user_id: reserved.user_id,
                    amount_cents: reserved.amount_cents,
                    reason,
                })
            }
        };
        outbox::enqueue(tx, &self.topology, &reply, &envelope.trace).await?;
        Ok(())
    }
}
