//! Configuration: built-in defaults, then an optional TOML file, then environment variables.
//!
//! Environment overrides use the `APP_` prefix and `__` between levels, so
//! `APP_DATABASE__URL` sets `database.url`. `APP_CONFIG_FILE` names the file.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::time::Duration;

/// Loads a service's settings: [`COMMON_DEFAULTS`], then `service_defaults` (a TOML document
/// with the service's own keys, e.g. its HTTP port), then the file, then the environment.
pub fn load<T: DeserializeOwned>(service_defaults: &str) -> Result<T, config::ConfigError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(
            COMMON_DEFAULTS,
            config::FileFormat::Toml,
        ))
        .add_source(config::File::from_str(
            service_defaults,
            config::FileFormat::Toml,
        ));
    if let Ok(path) = std::env::var("APP_CONFIG_FILE") {
        builder = builder.add_source(config::File::with_name(&path).required(true));
    }
    builder
        .add_source(
            config::Environment::with_prefix("APP")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true),
        )
        .build()?
        .try_deserialize()
}

/// Defaults every service shares; each service appends its own sections.
pub const COMMON_DEFAULTS: &str = r#"
[http]
host = "127.0.0.1"
max_body_bytes = 16384

[database]
url = "postgres://postgres@127.0.0.1:55432/postgres"
max_connections = 16
acquire_timeout_ms = 1000

[nats]
url = "nats://127.0.0.1:54222"
prefix = "shop"

[auth]
jwt_secret = "dev-only-secret-change-me"
admin_token = "dev-admin-token"

[outbox]
batch_size = 1000
events_per_message = 100
poll_interval_ms = 250

[workers]
enabled = true

[consumer]
batch_size = 256
max_deliveries = 20
ack_wait_secs = 30
max_ack_pending = 20000
"#;

/// The sections every service has.
#[derive(Debug, Clone, Deserialize)]
pub struct CommonSettings {
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub nats: NatsSettings,
    pub auth: AuthSettings,
    pub outbox: OutboxSettings,
    pub consumer: ConsumerSettings,
    pub workers: WorkerSettings,
}

/// Whether the relay and consumers run inside the process. Tests turn them off and drive them.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a connection before answering 503: short, so that a
    /// database outage gives clients a quick, retryable answer instead of a hanging request.
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NatsSettings {
    pub url: String,
    /// Prefix of every subject and stream name, so several deployments (or tests) share a server.
    pub prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub jwt_secret: String,
    pub admin_token: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutboxSettings {
    /// Rows claimed per relay round.
    pub batch_size: i64,
    /// Events packed into one broker message (1 = one message per event).
    pub events_per_message: usize,
    pub poll_interval_ms: u64,
}

impl OutboxSettings {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConsumerSettings {
    pub batch_size: usize,
    pub max_deliveries: i64,
    pub ack_wait_secs: u64,
    pub max_ack_pending: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Sample {
        http: HttpSettings,
        database: DatabaseSettings,
        consumer: ConsumerSettings,
    }

    #[test]
    fn defaults_parse_and_service_sections_merge() {
        let s: Sample = load("[http]\nport = 1\n").expect("defaults load");
        assert_eq!(s.http.port, 1);
        assert_eq!(s.database.max_connections, 16);
        assert!(s.consumer.batch_size > 0);
    }
}
