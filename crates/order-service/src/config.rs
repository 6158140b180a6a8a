use platform::config::CommonSettings;
use serde::Deserialize;

const DEFAULTS: &str = r#"
[orders]
max_quantity = 100
writers = 1
max_batch = 256
commit_deadline_ms = 2000
idempotency_key_retention_secs = 86400

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
    pub redrive: RedriveSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderSettings {
    /// Largest quantity one order may ask for.
    pub max_quantity: i32,
    /// Group-commit writers: transactions writing new orders concurrently.
    pub writers: usize,
    /// Most orders one group-commit transaction writes.
    pub max_batch: usize,
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
