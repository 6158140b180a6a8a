//! How the order service reacts to the outcome events of inventory and payment.

use crate::domain::Outcome;
use crate::orders;
use platform::consumer::{EventHandler, HandlerError, Subscription};
use platform::envelope::Envelope;
use platform::events::{Event, Source};
use sqlx::{Postgres, Transaction};

pub fn subscriptions() -> Vec<Subscription> {
    vec![
        Subscription {
            durable_name: "order-service-inventory".into(),
            stream: Source::Inventory,
            subject_suffixes: vec!["inventory.stock_reserved", "inventory.stock_rejected"],
        },
        Subscription {
            durable_name: "order-service-payment".into(),
            stream: Source::Payment,
            subject_suffixes: vec!["payment.completed", "payment.failed"],
        },
    ]
}

pub struct OrderOutcomes;

fn outcome_of(event: &Event) -> Option<Outcome> {
    Some(match event {
        Event::StockReserved(e) => Outcome::StockReserved {
            amount_cents: e.amount_cents,
        },
        Event::StockRejected(e) => Outcome::StockRejected(e.reason),
        Event::PaymentCompleted(e) => Outcome::PaymentCompleted {
            amount_cents: e.amount_cents,
        },
        Event::PaymentFailed(e) => Outcome::PaymentFailed(e.reason),
        _ => return None,
    })
}

impl EventHandler for OrderOutcomes {
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        envelope: &Envelope,
        event: Event,
    ) -> Result<(), HandlerError> {
        let Some(outcome) = outcome_of(&event) else {
            return Err(HandlerError::Permanent(format!(
                "order service does not handle {}",
                envelope.event_type
            )));
        };
        let order_id = event.order_id();
        match orders::apply_outcome(tx, order_id, outcome).await? {
            Some(status) => {
                tracing::info!(%order_id, status = status.as_str(), "order status changed")
            }
            None => match orders::current_status(tx, order_id).await? {
                // Expected when events arrive late or twice: the order is already further along.
                Some(status) => {
                    tracing::debug!(%order_id, %status, event = envelope.event_type, "outcome does not apply")
                }
                None => {
                    return Err(HandlerError::Permanent(format!(
                        "order {order_id} does not exist"
                    )))
                }
            },
        }
        Ok(())
    }
}
