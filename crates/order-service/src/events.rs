//! How the order service reacts to an order's outcome — inventory's rejection or payment's
//! answer — and to inventory's confirmation that a failed payment's stock went back (which
//! closes the saga). The stock reservation in between is not the order service's to hear (its
//! consumers' filters leave it out; one that came anyway is refused on receipt).

use crate::domain::{OrderStatus, Outcome};
use crate::orders;
use platform::consumer::{EventHandler, HandlerError, Incoming};
use platform::events::Event;
use sqlx::{Postgres, Transaction};
use std::collections::HashMap;
use uuid::Uuid;

pub struct OrderOutcomes;

fn outcome_of(event: &Event) -> Option<Outcome> {
    Some(match event {
        Event::StockRejected(e) => Outcome::StockRejected(e.reason),
        Event::PaymentCompleted(e) => Outcome::PaymentCompleted {
            amount_cents: e.amount_cents,
        },
        Event::PaymentFailed(e) => Outcome::PaymentFailed {
            reason: e.reason,
            amount_cents: e.amount_cents,
        },
        _ => return None,
    })
}

impl EventHandler for OrderOutcomes {
    async fn handle_batch(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        events: &[Incoming],
    ) -> Result<(), HandlerError> {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut released = Vec::new();
        for incoming in events {
            if let Event::StockReleased(e) = &incoming.event {
                released.push(e.order_id);
                continue;
            }
            let Some(outcome) = outcome_of(&incoming.event) else {
                return Err(HandlerError::Permanent(format!(
                    "order service does not handle {}",
                    incoming.envelope.event_type
                )));
            };
            outcomes.push((incoming.event.order_id(), outcome));
        }
        if !released.is_empty() {
            // Two statements update this batch's orders: take their row locks first, in one id
            // order, as every other batch takes them (deadlocks otherwise, measured under load).
            let mut ids: Vec<Uuid> = outcomes.iter().map(|(id, _)| *id).collect();
            ids.extend(&released);
            orders::lock_in_id_order(tx, &ids).await?;
            let existing = orders::mark_stock_released(tx, &released).await?;
            if let Some(missing) = released.iter().find(|id| !existing.contains(id)) {
                return Err(HandlerError::Permanent(format!(
                    "order {missing} does not exist"
                )));
            }
        }
        if outcomes.is_empty() {
            return Ok(());
        }
        let changed: HashMap<Uuid, OrderStatus> = orders::apply_outcomes(tx, &outcomes)
            .await?
            .into_iter()
            .collect();
        for incoming in events {
            let order_id = incoming.event.order_id();
            if let Some(status) = changed.get(&order_id) {
                let request_id = incoming.envelope.trace.request_id.as_deref().unwrap_or("-");
                tracing::info!(%order_id, request_id, status = status.as_str(), "order status changed");
            }
        }
        if changed.len() < outcomes.len() {
            // Outcomes that did not apply are expected when events arrive late or twice (the order
            // is already further along); an outcome for an order that does not exist is not.
            let unchanged: Vec<Uuid> = outcomes
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| !changed.contains_key(id))
                .collect();
            let existing = orders::existing_orders(tx, &unchanged).await?;
            if let Some(missing) = unchanged.iter().find(|id| !existing.contains(id)) {
                return Err(HandlerError::Permanent(format!(
                    "order {missing} does not exist"
                )));
            }
            tracing::debug!(
                count = unchanged.len(),
                "outcomes that no longer apply ignored"
            );
        }
        Ok(())
    }

    /// The order service's reactions only move orders to their next status; its one event,
    /// `OrderCreated`, is written by the intake and the re-drive (pipeline tests check it).
    fn writes_outbox(&self) -> bool {
        false
    }

    /// No inbox row: an outcome applied again changes nothing. It moves an order only from the
    /// statuses it may leave (`Outcome::allowed_from`, checked in the same `UPDATE`), so a
    /// second copy finds the order already moved, and a late one finds it further along or
    /// final (`domain` tests: every outcome applied twice, in every order); a stock release is
    /// recorded with `COALESCE`, so its first time stays. The handler emits nothing.
    fn idempotent(&self) -> bool {
        true
    }
}
