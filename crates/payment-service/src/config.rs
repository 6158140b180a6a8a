use platform::config::CommonSettings;
use serde::Deserialize;

const DEFAULTS: &str = r#"
[http]
port = 18082

[payment]
decline_rate = 0.0
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
}

impl Settings {
    pub fn load() -> Result<Self, config::ConfigError> {
        platform::config::load(DEFAULTS)
    }
}
