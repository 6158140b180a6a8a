//! The order's state machine: `PENDING → COMPLETED | FAILED`. An order is pending until its
//! outcome arrives — inventory's rejection or payment's answer, from two streams, so late, twice
//! or in any order; the first outcome decides, and a final status never changes.

use platform::events::FailureReason;
use serde::{Deserialize, Serialize};

/// `PENDING` until the order's outcome arrives, then `COMPLETED` or `FAILED`, which never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Accepted; waiting for its outcome (stock rejected, or payment's answer).
    Pending,
    Completed,
    Failed,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 3] = [
        OrderStatus::Pending,
        OrderStatus::Completed,
        OrderStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Completed => "COMPLETED",
            OrderStatus::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Completed | OrderStatus::Failed)
    }
}

// Stored as TEXT (the `orders_status_check` constraint names the three values): read and
// written through the same names as in JSON.
impl sqlx::Type<sqlx::Postgres> for OrderStatus {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <&str as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for OrderStatus {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        OrderStatus::parse(text).ok_or_else(|| format!("unknown order status {text:?}").into())
    }
}

/// What the other services report about an order: its outcome. (The stock reservation in
/// between is payment's business; the order service does not hear it.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    StockRejected(FailureReason),
    PaymentCompleted {
        amount_cents: i64,
    },
    PaymentFailed {
        reason: FailureReason,
        amount_cents: i64,
    },
}

impl Outcome {
    /// The status this outcome leads to: every outcome is final.
    pub fn target(self) -> OrderStatus {
        match self {
            Outcome::PaymentCompleted { .. } => OrderStatus::Completed,
            Outcome::StockRejected(_) | Outcome::PaymentFailed { .. } => OrderStatus::Failed,
        }
    }

    /// The statuses from which this outcome may move an order: only a pending one (a final
    /// status never changes, so a late or repeated outcome is ignored).
    pub fn allowed_from(self) -> &'static [OrderStatus] {
        &[OrderStatus::Pending]
    }

    pub fn failure_reason(self) -> Option<FailureReason> {
        match self {
            Outcome::StockRejected(reason) | Outcome::PaymentFailed { reason, .. } => Some(reason),
            Outcome::PaymentCompleted { .. } => None,
        }
    }

    /// The amount payment charged or tried to charge: the reservation's (price × quantity).
    pub fn amount_cents(self) -> Option<i64> {
        match self {
            Outcome::PaymentCompleted { amount_cents }
            | Outcome::PaymentFailed { amount_cents, .. } => Some(amount_cents),
            Outcome::StockRejected(_) => None,
        }
    }

    /// The status after applying this outcome to `current`, or `None` if it does not apply.
    pub fn apply(self, current: OrderStatus) -> Option<OrderStatus> {
        self.allowed_from()
            .contains(&current)
            .then(|| self.target())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    fn all_outcomes() -> Vec<Outcome> {
        vec![
            Outcome::StockRejected(FailureReason::OutOfStock),
            Outcome::PaymentCompleted { amount_cents: 10 },
            Outcome::PaymentFailed {
                reason: FailureReason::PaymentDeclined,
                amount_cents: 10,
            },
        ]
    }

    #[test]
    fn a_pending_order_moves_straight_to_its_outcome() {
        assert_eq!(
            Outcome::PaymentCompleted { amount_cents: 10 }.apply(Pending),
            Some(Completed)
        );
        assert_eq!(
            Outcome::StockRejected(FailureReason::OutOfStock).apply(Pending),
            Some(Failed)
        );
        let declined = Outcome::PaymentFailed {
            reason: FailureReason::InsufficientFunds,
            amount_cents: 10,
        };
        assert_eq!(declined.apply(Pending), Some(Failed));
        assert_eq!(
            declined.failure_reason(),
            Some(FailureReason::InsufficientFunds)
        );
        assert_eq!(declined.amount_cents(), Some(10));
    }

    #[test]
    fn every_outcome_is_final_and_final_statuses_never_change() {
        for outcome in all_outcomes() {
            assert!(outcome.target().is_final(), "{outcome:?}");
            assert_eq!(outcome.apply(Completed), None);
            assert_eq!(outcome.apply(Failed), None);
        }
    }

    /// Whatever order two contradicting outcomes arrive in (a replayed or forged one can only
    /// come second), the first one decides and the second is ignored.
    #[test]
    fn the_first_outcome_decides() {
        let outcomes = all_outcomes();
        for first in &outcomes {
            for second in &outcomes {
                let status = first.apply(Pending).expect("applies to a pending order");
                assert_eq!(second.apply(status), None, "{first:?} then {second:?}");
                assert_eq!(status, first.target());
            }
        }
    }

    /// Why the order service keeps no inbox (`events.rs`, `idempotent`): every sequence of
    /// outcomes of up to five events, copies anywhere in it, ends where the same sequence
    /// without the copies ends (each outcome kept at its first arrival).
    #[test]
    fn an_outcome_applied_again_changes_nothing() {
        let outcomes = all_outcomes();
        let fold = |sequence: &[Outcome]| {
            sequence.iter().fold(Pending, |status, outcome| {
                outcome.apply(status).unwrap_or(status)
            })
        };
        for length in 1..=5u32 {
            for code in 0..outcomes.len().pow(length) {
                let sequence: Vec<Outcome> = (0..length)
                    .map(|i| outcomes[code / outcomes.len().pow(i) % outcomes.len()])
                    .collect();
                let mut first_arrivals: Vec<Outcome> = Vec::new();
                for outcome in &sequence {
                    if !first_arrivals.contains(outcome) {
                        first_arrivals.push(*outcome);
                    }
                }
                assert_eq!(fold(&sequence), fold(&first_arrivals), "{sequence:?}");
                assert_eq!(fold(&sequence), sequence[0].target(), "{sequence:?}");
            }
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("RESERVED"), None);
    }
}
