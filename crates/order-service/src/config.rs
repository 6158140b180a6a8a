use platform::config::CommonSettings;
use serde::Deserialize;

const DEFAULTS: &str = r#"
[http]
port = 18080

[orders]
max_quantity = 100
writers = 1
max_batch = 256
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
    /// Group-commit writers: transactions writing new orders concurrently.
    pub writers: usize,
    /// Most orders one group-commit transaction writes.
    pub max_batch: usize,
}

impl Settings {
    pub fn load() -> Result<Self, config::ConfigError> {
        platform::config::load(DEFAULTS)
    }
}
