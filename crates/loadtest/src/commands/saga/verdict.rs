//! The verdict on one order's saga, as a pure function of its story: final, waiting for which
//! service since when, or stuck behind which dead letter — and what would unstick it.
//!
//! Whether the saga is open is the orders database's one rule (`order_saga_open`, which the
//! order service answers with); where an open saga waits is read from how far the records got,
//! step by step: inventory's answer, payment's charge, the order service's outcome, and after a
//! failed payment the release of the stock. A step's event still in its publisher's outbox is
//! its publisher's wait (the relay); published but not applied, the next service's. The order's
//! intermediate statuses play no part: an open order is simply not final yet.

use chrono::{DateTime, Utc};
use platform::contract::CONTRACT;
use platform::saga::OrderRecord;
use serde::Serialize;

use super::story::{age, clock, Endpoints, Service, Story, Told};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Verdict {
    /// The order service does not know the order.
    Unknown,
    /// A service did not answer, and the saga is not known to be final.
    Unanswered {
        service: Service,
        error: String,
    },
    Completed,
    /// Final and failed: after a payment failure, inventory's release of the stock was noted;
    /// otherwise (a stock rejection) nothing was reserved.
    Failed {
        reason: String,
        stock_released: bool,
    },
    /// The next step is `on`'s, due since `since`.
    Waiting {
        on: Service,
        since: DateTime<Utc>,
        why: String,
    },
    /// An open dead letter holds the step that is missing.
    Stuck {
        dead_letter: i64,
        service: Service,
        kind: String,
        reason: String,
        /// Other open dead letters of the order that hold a missing step.
        others: usize,
    },
}

/// What would unstick a saga: a command, and what to know about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Remedy {
    pub command: String,
    pub note: String,
}

/// The longest dead-letter reason a verdict line quotes.
const MAX_REASON_CHARS: usize = 200;

impl Verdict {
    pub fn is_final(&self) -> bool {
        matches!(self, Verdict::Completed | Verdict::Failed { .. })
    }

    /// The one-line verdict (`now` for the age of a wait).
    pub fn line(&self, now: DateTime<Utc>) -> String {
        match self {
            Verdict::Unknown => "unknown: the order service has no such order".to_owned(),
            Verdict::Unanswered { service, error } => {
                format!(
                    "unknown: the {} service did not answer ({error})",
                    service.name()
                )
            }
            Verdict::Completed => "final: COMPLETED".to_owned(),
            Verdict::Failed {
                reason,
                stock_released: true,
            } => format!("final: FAILED ({reason}), stock released"),
            Verdict::Failed {
                reason,
                stock_released: false,
            } => format!("final: FAILED ({reason}), nothing was reserved"),
            Verdict::Waiting { on, since, .. } => format!(
                "waiting for {} service since {} ({})",
                on.name(),
                clock(*since),
                age(now - *since)
            ),
            Verdict::Stuck {
                dead_letter,
                service,
                reason,
                others,
                ..
            } => {
                let mut reason = reason.clone();
                if reason.chars().count() > MAX_REASON_CHARS {
                    reason = reason.chars().take(MAX_REASON_CHARS).collect::<String>() + "…";
                }
                let more = match others {
                    0 => String::new(),
                    n => format!(" and {n} more"),
                };
                format!(
                    "stuck: dead letter {dead_letter} in {} service ({reason}){more}",
                    service.name()
                )
            }
        }
    }

    /// What would unstick the saga (nothing for a final one or an unknown order).
    pub fn remedy(&self, endpoints: &Endpoints) -> Option<Remedy> {
        match self {
            Verdict::Unknown | Verdict::Completed | Verdict::Failed { .. } => None,
            Verdict::Unanswered { service, .. } => Some(Remedy {
                command: "loadtest status".to_owned(),
                note: format!(
                    "is the {} service running? (its admin listener: {})",
                    service.name(),
                    endpoints.of(*service)
                ),
            }),
            Verdict::Waiting { on, why, .. } => Some(Remedy {
                command: format!("curl -s {}/ready", endpoints.of(*on)),
                note: format!(
                    "{why}; its /ready names a worker that is down or stalled (a stopped \
                     consumer, a relay that cannot publish); once it runs the saga moves on, and \
                     the order service's re-drive asks the step again by itself"
                ),
            }),
            Verdict::Stuck {
                dead_letter,
                service,
                ..
            } => Some(Remedy {
                command: format!(
                    "loadtest dead-letters replay --service {} --id {dead_letter}",
                    service.name()
                ),
                note: "once its cause is fixed: the replay applies the event again through the \
                       consumer that parked it"
                    .to_owned(),
            }),
        }
    }
}

/// The verdict on the story.
pub fn verdict(story: &Story) -> Verdict {
    if let Told::Unanswered(error) = &story.order {
        return Verdict::Unanswered {
            service: Service::Order,
            error: error.clone(),
        };
    }
    let Some(order) = story.order_record() else {
        return Verdict::Unknown;
    };
    if !order.open {
        if order.status == "COMPLETED" {
            return Verdict::Completed;
        }
        return Verdict::Failed {
            reason: order.failure_reason.clone().unwrap_or_default(),
            stock_released: order.stock_released_at.is_some(),
        };
    }
    for service in [Service::Inventory, Service::Payment] {
        if let Told::Unanswered(error) = story.told(service) {
            return Verdict::Unanswered {
                service,
                error: error.clone(),
            };
        }
    }
    let mut blocking: Vec<_> = story
        .dead_letters()
        .filter(|(_, parked)| parked.letter.status == "open" && parked.letter.kind != "misrouted")
        .filter(|(service, parked)| holds(story, *service, event_of(&parked.letter.subject)))
        .collect();
    blocking.sort_by_key(|(_, parked)| (parked.letter.failed_at, parked.letter.id));
    if let Some((service, parked)) = blocking.first() {
        return Verdict::Stuck {
            dead_letter: parked.letter.id,
            service: *service,
            kind: parked.letter.kind.clone(),
            reason: parked.letter.reason.clone(),
            others: blocking.len() - 1,
        };
    }
    next_wait(story, order)
}

/// The event type a dead letter's subject carries, by the contract (`None`: none of them).
fn event_of(subject: &str) -> Option<&'static str> {
    CONTRACT
        .iter()
        .find(|spec| subject.ends_with(&format!(".{}", spec.subject_suffix)))
        .map(|spec| spec.name)
}

/// Whether a dead letter of `event` in `service` holds the saga: the step it carries is not done
/// (a letter of a step done some other way — a re-drive's copy answered — holds nothing). A
/// letter whose event or place cannot be told is taken to hold it.
fn holds(story: &Story, service: Service, event: Option<&str>) -> bool {
    let order = story.order_record();
    let status_is = |status: &str| order.is_some_and(|o| o.status == status);
    match (service, event) {
        (Service::Inventory, Some("OrderCreated")) => {
            story.reservation().is_none() && story.rejection().is_none()
        }
        (Service::Inventory, Some("PaymentFailed")) => {
            story.reservation().is_some_and(|r| r.status == "ACTIVE")
        }
        (Service::Payment, Some("StockReserved")) => story.charge().is_none(),
        (Service::Order, Some("StockRejected" | "PaymentFailed")) => !status_is("FAILED"),
        (Service::Order, Some("PaymentCompleted")) => !status_is("COMPLETED"),
        (Service::Order, Some("StockReleased")) => {
            order.is_some_and(|o| o.stock_released_at.is_none())
        }
        // The order service no longer waits for StockReserved: payment goes on without it.
        (Service::Order, Some("StockReserved")) => false,
        _ => true,
    }
}

/// The first step of the open saga the records do not show done, and whose it is: the step's
/// event still in its publisher's outbox is the publisher's wait, else the next service's.
fn next_wait(story: &Story, order: &OrderRecord) -> Verdict {
    let step =
        |event: &str, publisher: Service, due: DateTime<Utc>, next: Service, why: &str| match story
            .waiting(publisher, event)
        {
            Some(row) => Verdict::Waiting {
                on: publisher,
                since: row.created_at,
                why: format!(
                    "{event} waits in the {} service's outbox (not published)",
                    publisher.name()
                ),
            },
            None => Verdict::Waiting {
                on: next,
                since: due,
                why: why.to_owned(),
            },
        };
    // The question was asked when the order was placed, and again at each re-drive.
    let asked = order
        .redriven_at
        .map_or(order.created_at, |at| at.max(order.created_at));
    match (story.reservation(), story.rejection(), story.charge()) {
        (None, None, _) => step(
            "OrderCreated",
            Service::Order,
            asked,
            Service::Inventory,
            "inventory has not answered OrderCreated",
        ),
        (None, Some(rejected), _) => step(
            "StockRejected",
            Service::Inventory,
            rejected.rejected_at,
            Service::Order,
            "the order service has not applied StockRejected",
        ),
        (Some(reserved), _, None) => step(
            "StockReserved",
            Service::Inventory,
            reserved.reserved_at,
            Service::Payment,
            "payment has not charged the reserved order",
        ),
        (Some(_), _, Some(charge)) if charge.status == "SUCCEEDED" => step(
            "PaymentCompleted",
            Service::Payment,
            charge.created_at,
            Service::Order,
            "the order service has not applied PaymentCompleted",
        ),
        (Some(reserved), _, Some(charge)) => {
            if reserved.status == "ACTIVE" {
                step(
                    "PaymentFailed",
                    Service::Payment,
                    charge.created_at,
                    Service::Inventory,
                    "inventory has not released the stock of the failed payment",
                )
            } else if order.status != "FAILED" {
                step(
                    "PaymentFailed",
                    Service::Payment,
                    charge.created_at,
                    Service::Order,
                    "the order service has not applied PaymentFailed",
                )
            } else {
                step(
                    "StockReleased",
                    Service::Inventory,
                    reserved.released_at.unwrap_or(charge.created_at),
                    Service::Order,
                    "the order service has not noted inventory's release of the stock",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests;
