use platform::config::CommonSettings;
use serde::Deserialize;

const DEFAULTS: &str = r#"
[payment]
decline_rate = 0.0
max_deposited_cents = 10000000000000
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub payment: PaymentSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentSettings {
    /// Share of charges the simulated card network declines (0.0 to 1.0), decided from the
    /// order id so that a run is reproducible.
    pub decline_rate: f64,
    /// Most money one account may ever be paid in ($100,000,000,000.00 by default): every
    /// balance and sum stays far inside the database's 64-bit integers.
    pub max_deposited_cents: i64,
}

impl Settings {
    pub fn load() -> Result<Self, config::ConfigError> {
        platform::config::load(platform::dev::PAYMENT_PORT, DEFAULTS)
    }

    /// The defaults with these TOML documents on top (no file, no environment): for tests.
    pub fn overridden(overrides: &[&str]) -> Result<Self, config::ConfigError> {
        platform::config::load_overridden(platform::dev::PAYMENT_PORT, DEFAULTS, overrides)
    }
}
