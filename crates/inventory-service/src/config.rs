use platform::config::CommonSettings;
use serde::Deserialize;

const DEFAULTS: &str = r#"
[http]
port = 18081
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
}

impl Settings {
    pub fn load() -> Result<Self, config::ConfigError> {
        platform::config::load(DEFAULTS)
    }
}
