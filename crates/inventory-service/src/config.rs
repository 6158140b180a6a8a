use platform::config::CommonSettings;
use serde::Deserialize;

const DEFAULTS: &str = r#"
[inventory]
max_price_cents = 100000000
max_units = 1000000000
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub inventory: InventorySettings,
}

/// Caps on what an admin may enter: with them, price × quantity and every stock sum fit in the
/// database's 64-bit integers by a wide margin.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct InventorySettings {
    /// Highest price of one unit ($1,000,000.00 by default).
    pub max_price_cents: i64,
    /// Most units a product may ever receive (creation plus restocks).
    pub max_units: i64,
}

impl Settings {
    pub fn load() -> Result<Self, config::ConfigError> {
        platform::config::load(platform::dev::INVENTORY_PORT, DEFAULTS)
    }

    /// The defaults with these TOML documents on top (no file, no environment): for tests.
    pub fn overridden(overrides: &[&str]) -> Result<Self, config::ConfigError> {
        platform::config::load_overridden(platform::dev::INVENTORY_PORT, DEFAULTS, overrides)
    }
}
