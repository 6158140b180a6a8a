//! The order service's fair-use limits a run deploys with (`[limits]` of the scenario), so that
//! every run states what it ran with. What a scenario leaves out is derived from its load, with
//! room for honest buyers:
//!
//! - `orders_per_second` = twice the busiest buyer's share of the peak rate, rounded up (the
//!   generator sends request n as buyer n mod users, so every buyer gets rate ÷ users, evenly
//!   spaced; twice that absorbs the bunching of a generator that catches up after a stall);
//! - `burst` = one second of that rate;
//! - `max_open_orders` = a minute of that rate: the chaos scenarios stop NATS, PostgreSQL or a
//!   service for up to 15 s and lose a stream, during which orders stay open until the system
//!   catches up (about 30 s at most, re-drive included).
//!
//! A load above the limits is answered `429`, which the report counts as errors: limits set too
//! low fail the run's error-rate check, they are never hidden.

use serde::{Deserialize, Serialize};

use crate::plan::scenario::Scenario;

/// Seconds of a buyer's derived rate that may be open at once.
const OPEN_ORDER_SECONDS: u32 = 60;

/// The limits one run deploys with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FairUseLimits {
    pub orders_per_second: u32,
    pub burst: u32,
    pub max_open_orders: u32,
    /// Whether each value came from the scenario (false: derived from the load).
    pub explicit: [bool; 3],
}

impl FairUseLimits {
    pub fn of(scenario: &Scenario) -> FairUseLimits {
        let peak = scenario
            .load
            .stages
            .iter()
            .map(|s| s.target)
            .fold(scenario.load.start_rate, f64::max);
        let per_buyer = peak / f64::from(scenario.data.users.max(1));
        let rate = ((2.0 * per_buyer).ceil() as u32).max(1);
        let set = &scenario.limits;
        let orders_per_second = set.orders_per_second.unwrap_or(rate);
        FairUseLimits {
            orders_per_second,
            burst: set.burst.unwrap_or(orders_per_second),
            max_open_orders: set
                .max_open_orders
                .unwrap_or(orders_per_second.saturating_mul(OPEN_ORDER_SECONDS)),
            explicit: [
                set.orders_per_second.is_some(),
                set.burst.is_some(),
                set.max_open_orders.is_some(),
            ],
        }
    }

    /// The order service's settings, as environment.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "APP_FAIR_USE__ORDERS_PER_SECOND".into(),
                self.orders_per_second.to_string(),
            ),
            ("APP_FAIR_USE__BURST".into(), self.burst.to_string()),
            (
                "APP_FAIR_USE__MAX_OPEN_ORDERS".into(),
                self.max_open_orders.to_string(),
            ),
        ]
    }

    /// E.g. "per buyer: 40 orders/s (derived), burst 40 (derived), 2400 open (set)".
    pub fn describe(&self) -> String {
        let how = |explicit: bool| if explicit { "set" } else { "derived" };
        format!(
            "per buyer: {} orders/s ({}), burst {} ({}), {} open orders ({})",
            self.orders_per_second,
            how(self.explicit[0]),
            self.burst,
            how(self.explicit[1]),
            self.max_open_orders,
            how(self.explicit[2])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIO: &str = r#"
        name = "limits-unit"
        [load]
        stages = [{ duration = "30s", target = 500 }, { duration = "1m", target = 1000 }]
        [data]
        users = 50
        initial_balance_cents = 1000
        products = [{ id = 1, stock = 10, price_cents = 100 }]
    "#;

    #[test]
    fn unset_limits_are_derived_from_the_peak_rate_per_buyer() {
        let scenario = Scenario::from_toml_str(SCENARIO).unwrap();
        let limits = FairUseLimits::of(&scenario);
        // 1,000 req/s over 50 buyers = 20 each; twice that.
        assert_eq!(
            (
                limits.orders_per_second,
                limits.burst,
                limits.max_open_orders
            ),
            (40, 40, 2400)
        );
        assert_eq!(limits.explicit, [false; 3]);
        assert!(limits.describe().contains("40 orders/s (derived)"));
        assert!(limits
            .env()
            .contains(&("APP_FAIR_USE__MAX_OPEN_ORDERS".into(), "2400".into())));
    }

    #[test]
    fn set_limits_win_and_zero_is_refused() {
        let text = format!("{SCENARIO}\n[limits]\norders_per_second = 5\nmax_open_orders = 7\n");
        let limits = FairUseLimits::of(&Scenario::from_toml_str(&text).unwrap());
        assert_eq!(
            (
                limits.orders_per_second,
                limits.burst,
                limits.max_open_orders
            ),
            (5, 5, 7)
        );
        assert_eq!(limits.explicit, [true, false, true]);
        let zero = format!("{SCENARIO}\n[limits]\nburst = 0\n");
        let error = Scenario::from_toml_str(&zero).unwrap_err().to_string();
        assert!(error.contains("limits.burst must be >= 1"), "{error}");
    }
}
