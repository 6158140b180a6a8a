//! Fair use of the order API, per buyer: a token bucket on `POST /orders`, and a cap on the
//! buyer's orders that are not final yet, so that one buyer cannot hold a hot product's stock
//! with orders that will fail payment. What was refused is counted in
//! `orders_limited_total{reason="rate"|"open_orders"}`.
//!
//! How exact the two are:
//! - The token bucket lives in each instance's memory (the `governor` crate's keyed limiter): a
//!   buyer whose requests are spread over N order-service instances may place up to N times
//!   the rate. That is acceptable for fair use (a load balancer with buyer affinity makes it
//!   exact), and it costs no database work at all.
//! - The open-orders cap is counted in the transaction that writes the order (one query per
//!   group-commit batch, through the partial index `orders_unfinished_by_user`), under READ
//!   COMMITTED and without a lock on the buyer: orders of the same buyer that another
//!   transaction writes at the same moment (another intake writer, another instance) are not
//!   counted yet. So the cap can be passed by the buyer's
//!   orders in transactions that commit concurrently — a handful of orders, bounded by the
//!   rate limit times a commit's duration — and never by more. That is acceptable: the cap is
//!   fair use, not an invariant (stock is never oversold: inventory reserves exactly), and an
//!   exact count would need a per-buyer lock that serialises every batch sharing a buyer,
//!   under load nearly all of them.

use crate::config::FairUseSettings;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why an order was refused for fair use; the label of `orders_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Rate,
    OpenOrders,
}

impl Limited {
    pub const ALL: [Limited; 2] = [Limited::Rate, Limited::OpenOrders];

    pub fn count(self) {
        self.counter().increment(1);
    }

    /// Registers each reason's series at 0, so that they exist (and an alert's `rate()` sees
    /// the first refusal) before any buyer is refused.
    pub fn register_all() {
        for limited in Limited::ALL {
            limited.counter().increment(0);
        }
    }

    fn counter(self) -> metrics::Counter {
        let reason = match self {
            Limited::Rate => "rate",
            Limited::OpenOrders => "open_orders",
        };
        metrics::counter!("orders_limited_total", "reason" => reason)
    }
}

/// The per-buyer token bucket of `POST /orders`.
pub struct BuyerRateLimit {
    limiter: DefaultKeyedRateLimiter<i64>,
    checks: AtomicU64,
    sweep_every: u64,
}

impl BuyerRateLimit {
    pub fn new(settings: &FairUseSettings) -> Result<Self, String> {
        let (Some(rate), Some(burst)) = (
            NonZeroU32::new(settings.orders_per_second),
            NonZeroU32::new(settings.burst),
        ) else {
            return Err("fair_use.orders_per_second and fair_use.burst must be at least 1".into());
        };
        if settings.max_open_orders < 1 || settings.sweep_every < 1 {
            return Err(
                "fair_use.max_open_orders and fair_use.sweep_every must be at least 1".into(),
            );
        }
        Ok(BuyerRateLimit {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            checks: AtomicU64::new(0),
            sweep_every: settings.sweep_every,
        })
    }

    /// Takes a token from the buyer's bucket, or says how long until one is there.
    pub fn check(&self, buyer: i64) -> Result<(), Duration> {
        // Memory stays bounded: a bucket that has filled up again is the same as no bucket, so
        // now and then those are dropped (a pass over the map, once per `sweep_every` checks).
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.sweep_every)
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(&buyer)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Buyers with a bucket in memory (for tests).
    pub fn tracked_buyers(&self) -> usize {
        self.limiter.len()
    }
}

/// Which of a batch's orders (their buyers, in arrival order) fit under the cap, given how many
/// open orders each buyer has already: each buyer's first `cap − open` orders.
pub fn admit(buyers: &[i64], open: &HashMap<i64, i64>, cap: u32) -> Vec<bool> {
    let mut room: HashMap<i64, i64> = HashMap::new();
    buyers
        .iter()
        .map(|buyer| {
            let left = room
                .entry(*buyer)
                .or_insert_with(|| i64::from(cap) - open.get(buyer).copied().unwrap_or(0));
            *left -= 1;
            *left >= 0
        })
        .collect()
}

/// `Retry-After` in whole seconds: at least 1, rounded up.
pub fn retry_after_secs(wait: Duration) -> u32 {
    let millis = wait.as_millis().max(1);
    u32::try_from(millis.div_ceil(1000)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings(orders_per_second: u32, burst: u32) -> FairUseSettings {
        FairUseSettings {
            orders_per_second,
            burst,
            max_open_orders: 10,
            sweep_every: 1,
        }
    }

    #[test]
    fn a_buyer_gets_the_burst_then_waits_and_others_are_not_affected() {
        let limit = BuyerRateLimit::new(&settings(1, 3)).unwrap();
        for _ in 0..3 {
            assert_eq!(limit.check(7), Ok(()));
        }
        let wait = limit.check(7).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(retry_after_secs(wait), 1);
        assert_eq!(limit.check(8), Ok(()));
    }

    #[test]
    fn buyers_whose_bucket_filled_up_again_are_forgotten() {
        // 1,000 a second, a burst of 1: a bucket is full again 1 ms after its last use.
        let limit = BuyerRateLimit::new(&settings(1000, 1)).unwrap();
        for buyer in 0..100 {
            assert_eq!(limit.check(buyer), Ok(()));
        }
        assert!(limit.tracked_buyers() >= 99);
        // sweep_every = 1: every check first drops the buckets that are full again.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while limit.tracked_buyers() > 1 {
            let _ = limit.check(1_000);
            assert!(
                std::time::Instant::now() < deadline,
                "{} buyers kept",
                limit.tracked_buyers()
            );
        }
    }

    #[test]
    fn zero_rate_burst_or_cap_is_refused() {
        assert!(BuyerRateLimit::new(&settings(0, 1)).is_err());
        assert!(BuyerRateLimit::new(&settings(1, 0)).is_err());
        let mut no_cap = settings(1, 1);
        no_cap.max_open_orders = 0;
        assert!(BuyerRateLimit::new(&no_cap).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn the_first_orders_up_to_the_cap_are_admitted() {
        let open = HashMap::from([(1, 2), (2, 3)]);
        assert_eq!(
            admit(&[1, 2, 1, 3, 1, 3], &open, 3),
            vec![true, false, false, true, false, true]
        );
    }

    proptest! {
        /// Per buyer: admitted + already open never passes the cap, and exactly
        /// min(asked, room) are admitted, the earliest ones.
        #[test]
        fn admission_fills_each_buyers_room_in_arrival_order(
            buyers in proptest::collection::vec(0i64..5, 0..60),
            open in proptest::collection::hash_map(0i64..5, 0i64..12, 0..5),
            cap in 1u32..10,
        ) {
            let admitted = admit(&buyers, &open, cap);
            prop_assert_eq!(admitted.len(), buyers.len());
            for buyer in 0..5 {
                let mine: Vec<bool> = buyers.iter().zip(&admitted)
                    .filter(|(b, _)| **b == buyer).map(|(_, a)| *a).collect();
                let room = (i64::from(cap) - open.get(&buyer).copied().unwrap_or(0)).max(0) as usize;
                let expected = mine.len().min(room);
                prop_assert!(mine[..expected].iter().all(|a| *a));
                prop_assert!(mine[expected..].iter().all(|a| !*a));
            }
        }
    }
}
