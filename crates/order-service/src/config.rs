use platform::config::CommonSettings;
use serde::Deserialize;

const DEFAULTS: &str = r#"
[http]
port = 18080

[orders]
max_quantity = 100
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub orders: OrderSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderSettings {
    /// Largest quantity one order may ask for.
    pub max_quantity: i32,
}

impl Settings {
    pub fn load() -> Result<Self, config::ConfigError> {
        platform::config::load(DEFAULTS)
    }
}
