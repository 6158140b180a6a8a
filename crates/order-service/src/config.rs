use platform::config::CommonSettings;
use serde::Deserialize;

const DEFAULTS: &str = r#"
[orders]
max_quantity = 100
writers = 1
max_batch = 256
round_interval_ms = 5
commit_deadline_ms = 2000
idempotency_key_retention_secs = 86400

# Per buyer (the token's subject): a token bucket on POST /orders (sustained rate, and how many
# at once), and a cap on orders not final yet (PENDING, RESERVED). Fair use for people and
# their scripts: a shop's buyer does not place more than a few orders a second, nor hold more
# than a few dozen unfinished ones. The load-test CLI sets them per scenario.
[fair_use]
orders_per_second = 5
burst = 20
max_open_orders = 20
# Buckets of buyers that went quiet are dropped once per this many requests.
sweep_every = 4096

[redrive]
after_secs = 20
max_pause_secs = 600
batch_size = 200
interval_ms = 1000
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub orders: OrderSettings,
    pub fair_use: FairUseSettings,
    pub redrive: RedriveSettings,
}

/// Fair use of `POST /orders`, per buyer (see `fair_use.rs`).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct FairUseSettings {
    /// Orders a buyer may place per second, sustained (each instance counts its own).
    pub orders_per_second: u32,
    /// Orders a buyer may place at once, after a quiet spell (the bucket's size).
    pub burst: u32,
    /// Orders of one buyer that may be open (not final) at once; the next one is refused.
    pub max_open_orders: u32,
    /// The rate limiter forgets buyers whose bucket is full again once per this many requests.
    pub sweep_every: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderSettings {
    /// Largest quantity one order may ask for.
    pub max_quantity: i32,
    /// Group-commit writers: transactions writing new orders concurrently.
    pub writers: usize,
    /// Most orders one group-commit transaction writes.
    pub max_batch: usize,
    /// A writer's transactions start at least this far apart (`platform::pacing`): the
    /// requests of a steady stream share one, at the price of up to this much HTTP latency.
    pub round_interval_ms: u64,
    /// A request whose order is not being written within this time is answered 503 with
    /// `Retry-After`, and its order is never written.
    pub commit_deadline_ms: u64,
    /// How long an Idempotency-Key is remembered (Stripe: 24 hours).
    pub idempotency_key_retention_secs: u64,
}

/// When and how fast open orders are asked about again (see `redrive.rs`).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct RedriveSettings {
    /// An open order is re-driven once it has waited this long since its last change; the pause
    /// doubles with each re-drive of the same order, up to `max_pause_secs`.
    pub after_secs: u64,
    pub max_pause_secs: u64,
    /// Orders re-driven per round, and the pause between rounds: at most
    /// `batch_size` × 1000 / `interval_ms` re-drives per second.
    pub batch_size: i64,
    pub interval_ms: u64,
}

impl Settings {
    pub fn load() -> Result<Self, config::ConfigError> {
        platform::config::load(platform::dev::ORDER_PORT, DEFAULTS)
    }

    /// The defaults with these TOML documents on top (no file, no environment): for tests.
    pub fn overridden(overrides: &[&str]) -> Result<Self, config::ConfigError> {
        platform::config::load_overridden(platform::dev::ORDER_PORT, DEFAULTS, overrides)
    }
}
