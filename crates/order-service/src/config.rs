//! The order service's settings: the platform's common sections, the order intake, per-buyer
//! fair use and the re-drive of open orders.

use platform::config::{CommonSettings, ServiceSettings};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub orders: OrderSettings,
    pub fair_use: FairUseSettings,
    pub redrive: RedriveSettings,
}

impl ServiceSettings for Settings {
    const PORT: u16 = platform::dev::ORDER_PORT;

    fn common(&self) -> &CommonSettings {
        &self.common
    }
}

/// Fair use of `POST /orders`, per buyer (see `fair_use.rs`). Fair use for people and their
/// scripts: a shop's buyer does not place more than a few orders a second, nor hold more than a
/// few dozen unfinished ones. The load-test CLI sets them per scenario.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(default)]
pub struct FairUseSettings {
    /// Orders a buyer may place per second, sustained (each instance counts its own).
    pub orders_per_second: u32,
    /// Orders a buyer may place at once, after a quiet spell (the bucket's size).
    pub burst: u32,
    /// Orders of one buyer that may be open (not final: PENDING) at once; the next
    /// one is refused.
    pub max_open_orders: u32,
    /// The rate limiter forgets buyers whose bucket is full again once per this many requests.
    pub sweep_every: u64,
}

impl Default for FairUseSettings {
    fn default() -> Self {
        FairUseSettings {
            orders_per_second: 5,
            burst: 20,
            max_open_orders: 20,
            sweep_every: 4096,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct OrderSettings {
    /// Largest quantity one order may ask for.
    pub max_quantity: i32,
    /// Group-commit writers: transactions writing new orders concurrently.
    pub writers: usize,
    /// Most orders one group-commit transaction writes.
    pub max_batch: usize,
    /// A writer's transactions start at least this far apart (`platform::pacing`): the
    /// requests of a steady stream share one, at the price of up to this much HTTP latency.
    #[serde(with = "humantime_serde")]
    pub round_interval: Duration,
    /// A request whose order is not being written within this time is answered 503 with
    /// `Retry-After`, and its order is never written.
    #[serde(with = "humantime_serde")]
    pub commit_deadline: Duration,
    /// How long an Idempotency-Key is remembered (Stripe: 24 hours).
    #[serde(with = "humantime_serde")]
    pub idempotency_key_retention: Duration,
}

impl Default for OrderSettings {
    fn default() -> Self {
        OrderSettings {
            max_quantity: 100,
            writers: 1,
            max_batch: 256,
            round_interval: Duration::from_millis(5),
            commit_deadline: Duration::from_secs(2),
            idempotency_key_retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// When and how fast open orders are asked about again (see `redrive.rs`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(default)]
pub struct RedriveSettings {
    /// An open order is re-driven once it has waited this long since its last change; the pause
    /// doubles with each re-drive of the same order, up to `max_pause`.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    #[serde(with = "humantime_serde")]
    pub max_pause: Duration,
    /// Orders re-driven per round, and the pause between rounds: at most `batch_size` per
    /// `interval`.
    pub batch_size: i64,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RedriveSettings {
    fn default() -> Self {
        RedriveSettings {
            after: Duration::from_secs(20),
            max_pause: Duration::from_secs(600),
            batch_size: 200,
            interval: Duration::from_secs(1),
        }
    }
}

impl RedriveSettings {
    /// The age past which an open saga counts as overdue (`orders_open_sagas_overdue`): by then
    /// the re-drive has asked again at every step of its backoff up to `max_pause` (with the
    /// defaults 20 s, 40 s, … 320 s: five times in 10 min 20 s), so an order still open is one
    /// the re-drive cannot finish by itself.
    pub fn overdue_after(&self) -> Duration {
        self.after.saturating_add(self.max_pause)
    }
}
