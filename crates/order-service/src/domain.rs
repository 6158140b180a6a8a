//! The order's state machine. Events may arrive late, twice or out of order (they come from two
//! streams); a status only ever moves forward, and a final status never changes.

use platform::events::FailureReason;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Accepted; waiting for stock.
    Pending,
    /// Stock deducted; waiting for payment.
    Reserved,
    Completed,
    Failed,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Reserved => "RESERVED",
            OrderStatus::Completed => "COMPLETED",
            OrderStatus::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            OrderStatus::Pending,
            OrderStatus::Reserved,
            OrderStatus::Completed,
            OrderStatus::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Completed | OrderStatus::Failed)
    }
}

// Stored as TEXT (the `orders_status_check` constraint names the four values): read and
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

/// What the other services report about an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    StockReserved { amount_cents: i64 },
    StockRejected(FailureReason),
    PaymentCompleted { amount_cents: i64 },
    PaymentFailed(FailureReason),
}

impl Outcome {
    /// The status this outcome leads to.
    pub fn target(self) -> OrderStatus {
        match self {
            Outcome::StockReserved { .. } => OrderStatus::Reserved,
            Outcome::PaymentCompleted { .. } => OrderStatus::Completed,
            Outcome::StockRejected(_) | Outcome::PaymentFailed(_) => OrderStatus::Failed,
        }
    }

    /// The statuses from which this outcome may move an order. A payment outcome may overtake
    /// the stock reservation it depends on (different streams), so it also applies to PENDING.
    pub fn allowed_from(self) -> &'static [OrderStatus] {
        match self {
            Outcome::StockReserved { .. } => &[OrderStatus::Pending],
            _ => &[OrderStatus::Pending, OrderStatus::Reserved],
        }
    }

    pub fn failure_reason(self) -> Option<FailureReason> {
        match self {
            Outcome::StockRejected(reason) | Outcome::PaymentFailed(reason) => Some(reason),
            _ => None,
        }
    }

    pub fn amount_cents(self) -> Option<i64> {
        match self {
            Outcome::StockReserved { amount_cents }
            | Outcome::PaymentCompleted { amount_cents } => Some(amount_cents),
            _ => None,
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
            Outcome::StockReserved { amount_cents: 10 },
            Outcome::StockRejected(FailureReason::OutOfStock),
            Outcome::PaymentCompleted { amount_cents: 10 },
            Outcome::PaymentFailed(FailureReason::PaymentDeclined),
        ]
    }

    #[test]
    fn the_happy_path_moves_forward() {
        let reserved = Outcome::StockReserved { amount_cents: 10 }.apply(Pending);
        assert_eq!(reserved, Some(Reserved));
        assert_eq!(
            Outcome::PaymentCompleted { amount_cents: 10 }.apply(Reserved),
            Some(Completed)
        );
    }

    #[test]
    fn final_statuses_never_change() {
        for outcome in all_outcomes() {
            assert_eq!(outcome.apply(Completed), None);
            assert_eq!(outcome.apply(Failed), None);
        }
    }

    #[test]
    fn a_late_reservation_does_not_undo_a_payment_outcome() {
        let done = Outcome::PaymentCompleted { amount_cents: 10 }
            .apply(Pending)
            .unwrap();
        assert_eq!(done, Completed);
        assert_eq!(
            Outcome::StockReserved { amount_cents: 10 }.apply(done),
            None
        );
    }

    #[test]
    fn every_order_of_outcomes_ends_in_a_final_status_that_never_moves_back() {
        // All permutations of a payment path: the last applicable outcome wins only if forward.
        let paths = [
            vec![
                Outcome::StockReserved { amount_cents: 1 },
                Outcome::PaymentCompleted { amount_cents: 1 },
            ],
            vec![
                Outcome::StockReserved { amount_cents: 1 },
                Outcome::PaymentFailed(FailureReason::PaymentDeclined),
            ],
        ];
        for path in paths {
            for reversed in [false, true] {
                let mut steps = path.clone();
                if reversed {
                    steps.reverse();
                }
                let mut status = Pending;
                for outcome in &steps {
                    if let Some(next) = outcome.apply(status) {
                        assert!(!status.is_final(), "moved out of a final status");
                        status = next;
                    }
                }
                assert_eq!(status, path[1].target());
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
            }
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in [Pending, Reserved, Completed, Failed] {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
    }
}
