//! Configuration: built-in defaults, then an optional TOML file, then environment variables.
//!
//! Environment overrides use the `APP_` prefix and `__` between levels, so
//! `APP_DATABASE__URL` sets `database.url`. `APP_CONFIG_FILE` names the file.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::time::Duration;

/// Loads a service's settings: [`COMMON_DEFAULTS`] and the development defaults of
/// [`crate::dev`] (`port` is the service's HTTP port), then `service_defaults` (a TOML document
/// with the service's own keys), then the file `APP_CONFIG_FILE`, then the environment.
pub fn load<T: DeserializeOwned>(
    port: u16,
    service_defaults: &str,
) -> Result<T, config::ConfigError> {
    let mut builder = defaults(port, service_defaults)?;
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

/// Settings from the defaults and the given TOML documents only (later ones win): no file, no
/// environment. Tests build their services' settings with this.
pub fn load_overridden<T: DeserializeOwned>(
    port: u16,
    service_defaults: &str,
    overrides: &[&str],
) -> Result<T, config::ConfigError> {
    let mut builder = defaults(port, service_defaults)?;
    for document in overrides {
        builder = builder.add_source(config::File::from_str(document, config::FileFormat::Toml));
    }
    builder.build()?.try_deserialize()
}

fn defaults(
    port: u16,
    service_defaults: &str,
) -> Result<config::ConfigBuilder<config::builder::DefaultState>, config::ConfigError> {
    Ok(config::Config::builder()
        .add_source(config::File::from_str(
            COMMON_DEFAULTS,
            config::FileFormat::Toml,
        ))
        .set_default("http.port", port)?
        .set_default("database.url", crate::dev::admin_database_url())?
        .set_default("nats.url", crate::dev::nats_url())?
        .set_default("auth.jwt_secret", crate::dev::JWT_SECRET)?
        .set_default("auth.admin_token", crate::dev::ADMIN_TOKEN)?
        .set_default("auth.jwt_issuer", crate::auth::DEFAULT_ISSUER)?
        .set_default("auth.jwt_audience", crate::auth::DEFAULT_AUDIENCE)?
        .add_source(config::File::from_str(
            service_defaults,
            config::FileFormat::Toml,
        )))
}

/// Defaults every service shares; each service appends its own sections.
pub const COMMON_DEFAULTS: &str = r#"
development = false

[http]
host = "127.0.0.1"
max_body_bytes = 16384
header_read_timeout_ms = 10000
body_read_timeout_ms = 10000
request_read_timeout_ms = 30000
max_connections = 8192
admin_max_connections = 256

[database]
http_connections = 8
worker_connections = 8
acquire_timeout_ms = 1000
statement_timeout_ms = 10000
lock_timeout_ms = 3000
idle_in_transaction_timeout_ms = 30000

[nats]
user = ""
password = ""
tls_ca_file = ""
prefix = "shop"
stream_max_age_secs = 604800
stream_max_bytes = 1073741824
stream_replicas = 1

[outbox]
batch_size = 1000
events_per_message = 100
poll_interval_ms = 250
round_interval_ms = 20

[workers]
enabled = true
restart_backoff_ms = 200
max_restart_backoff_ms = 10000
stall_after_secs = 30
hang_after_secs = 60

[consumer]
batch_size = 256
round_interval_ms = 20
max_deliveries = 5
ack_wait_secs = 30
max_ack_pending = 20000
replay_window_secs = 600

[retention]
interval_secs = 60
batch_size = 1000
inbox_secs = 691200
resolved_dead_letters_secs = 2592000
"#;

/// The sections every service has.
#[derive(Debug, Clone, Deserialize)]
pub struct CommonSettings {
    /// A development machine: the built-in secrets are accepted even when the service listens
    /// beyond loopback (`APP_DEVELOPMENT=true`).
    pub development: bool,
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub nats: NatsSettings,
    pub auth: AuthSettings,
    pub outbox: OutboxSettings,
    pub consumer: ConsumerSettings,
    pub workers: WorkerSettings,
    pub retention: RetentionSettings,
}

impl CommonSettings {
    /// Settings that would break a guarantee are refused at start, not discovered in production.
    pub fn validate(&self) -> Result<(), String> {
        self.check_secrets()?;
        // A message can come back (redelivery, a consumer re-created over the stream, a store
        // restored from a backup) for as long as the stream keeps it; the inbox must remember it
        // at least that long (docs/architecture.md, "Retention").
        if self.retention.inbox_secs < self.nats.stream_max_age_secs {
            return Err(format!(
                "retention.inbox_secs ({}) must be at least nats.stream_max_age_secs ({})",
                self.retention.inbox_secs, self.nats.stream_max_age_secs
            ));
        }
        if self.database.worker_connections < 2 || self.database.http_connections < 1 {
            return Err("database.worker_connections must be at least 2 and database.http_connections at least 1".into());
        }
        if !(1..=5).contains(&self.nats.stream_replicas) {
            // JetStream keeps at most five copies of a stream.
            return Err(format!(
                "nats.stream_replicas ({}) must be between 1 and 5",
                self.nats.stream_replicas
            ));
        }
        if self.consumer.max_deliveries < 1 {
            return Err("consumer.max_deliveries must be at least 1".into());
        }
        let http = &self.http;
        if http.max_connections < 1
            || http.admin_max_connections < 1
            || http.request_read_timeout_ms < 1
        {
            return Err("http: max_connections, admin_max_connections and request_read_timeout_ms must be at least 1".into());
        }
        let workers = &self.workers;
        if workers.restart_backoff_ms < 1
            || workers.max_restart_backoff_ms < workers.restart_backoff_ms
            || workers.hang_after_secs < 1
        {
            return Err("workers: restart_backoff_ms must be at least 1 and at most max_restart_backoff_ms, hang_after_secs at least 1".into());
        }
        Ok(())
    }
}

impl CommonSettings {
    /// The JWT secret and admin token guard a deployment: a service that anyone beyond this
    /// machine can reach refuses empty, short or built-in ones.
    fn check_secrets(&self) -> Result<(), String> {
        let hosts = [self.http.host.as_str(), self.http.admin_host()];
        if self.development || hosts.iter().all(|host| is_loopback_host(host)) {
            return Ok(());
        }
        for (name, value) in [
            ("auth.jwt_secret", &self.auth.jwt_secret),
            ("auth.admin_token", &self.auth.admin_token),
        ] {
            if let Some(why) = crate::auth::weak_secret_reason(value) {
                return Err(format!(
                    "{name} {why}: a service listening beyond loopback (http.host = {}, \
                     admin host {}) needs a random value of at least {} bytes \
                     (APP_AUTH__JWT_SECRET, APP_AUTH__ADMIN_TOKEN); on a development machine set \
                     APP_DEVELOPMENT=true",
                    self.http.host,
                    self.http.admin_host(),
                    crate::auth::MIN_SECRET_BYTES
                ));
            }
        }
        Ok(())
    }
}

/// The URL with its password (if any) replaced by `***`, for messages and logs; in a list of
/// URLs separated by commas (a NATS cluster's servers, a multi-host PostgreSQL URL), in each.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..start],
            &authority[..colon],
            &url[start + at..]
        ),
        _ => url.to_string(),
    }
}

/// Whether a listen address is reachable from this machine only.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Background workers and their supervision.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// Whether the relay, consumers and other workers run inside the process. Tests turn them
    /// off and drive them by hand.
    pub enabled: bool,
    /// Backoff before the first restart of a failed worker; it doubles up to the maximum.
    pub restart_backoff_ms: u64,
    pub max_restart_backoff_ms: u64,
    /// A worker with work waiting and no progress for this long makes `/ready` answer 503.
    pub stall_after_secs: u64,
    /// A worker busy with one unit of work for this long is aborted and restarted.
    pub hang_after_secs: u64,
}

impl WorkerSettings {
    pub fn stall_after(&self) -> Duration {
        Duration::from_secs(self.stall_after_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    /// The public listener: the service's API, `/openapi.json`, `/health` and `/ready`.
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
    /// A client must send a request's head within this (else the connection is closed) ...
    pub header_read_timeout_ms: u64,
    /// ... and each piece of its body within this (else `408` and the connection is closed) ...
    pub body_read_timeout_ms: u64,
    /// ... and the whole request, head and body, within this from its first byte, however
    /// steadily it trickles (else `408` and the connection is closed).
    pub request_read_timeout_ms: u64,
    /// Connections the public listener holds at once; one more is answered `503` and closed at
    /// once. Lowered at start if the file descriptor limit cannot fit it beside the pools
    /// (`crate::fd_limit`).
    pub max_connections: usize,
    /// The same for the admin listener (`/metrics`, `/admin/*`), apart so that a flood of the
    /// public API leaves operators a way in.
    pub admin_max_connections: usize,
    /// The admin listener (`/metrics`, `/admin/*`): `admin_host` defaults to loopback
    /// ([`HttpSettings::DEFAULT_ADMIN_HOST`]), never to `host`: a service opened to buyers
    /// (`host = "0.0.0.0"`) must not open its operators' routes with it unless told so;
    /// `admin_port` defaults to [`HttpSettings::ADMIN_PORT_OFFSET`] above `port` (0 stays 0: any
    /// free port), so replicas on ports base + 10 × n get admin ports that never collide.
    #[serde(default)]
    pub admin_host: Option<String>,
    #[serde(default)]
    pub admin_port: Option<u16>,
}

impl HttpSettings {
    pub const ADMIN_PORT_OFFSET: u16 = 1000;
    /// Where the admin listener binds unless `http.admin_host` is set.
    pub const DEFAULT_ADMIN_HOST: &'static str = "127.0.0.1";

    pub fn admin_host(&self) -> &str {
        self.admin_host
            .as_deref()
            .unwrap_or(Self::DEFAULT_ADMIN_HOST)
    }

    /// The admin listener's port; `None` when it is derived and would pass 65535.
    pub fn admin_port(&self) -> Option<u16> {
        match (self.admin_port, self.port) {
            (Some(port), _) => Some(port),
            (None, 0) => Some(0),
            (None, port) => port.checked_add(Self::ADMIN_PORT_OFFSET),
        }
    }

    /// What the server enforces on each connection of a listener holding at most
    /// `max_connections`.
    pub fn listener_limits(&self, max_connections: usize) -> crate::server::ListenerLimits {
        crate::server::ListenerLimits {
            header: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            body: Duration::from_millis(self.body_read_timeout_ms.max(1)),
            request: Duration::from_millis(self.request_read_timeout_ms.max(1)),
            max_connections: max_connections.max(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    /// Connections for HTTP handlers' own queries.
    pub http_connections: u32,
    /// Connections for the background workers (relay, consumers, order intake, re-drive,
    /// retention): a flood of HTTP reads cannot starve them.
    pub worker_connections: u32,
    /// How long a request waits for a connection before answering 503: short, so that a
    /// database outage gives clients a quick, retryable answer instead of a hanging request.
    pub acquire_timeout_ms: u64,
    /// Session limits on every connection, so that no statement, lock wait or abandoned
    /// transaction can hold a worker (or another session's rows) indefinitely.
    pub statement_timeout_ms: u64,
    pub lock_timeout_ms: u64,
    pub idle_in_transaction_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NatsSettings {
    /// A server's URL, or a cluster's servers' URLs separated by commas
    /// (`nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222`).
    pub url: String,
    /// The service's NATS user (empty: the URL's credentials, or none).
    pub user: String,
    pub password: String,
    /// The authority that signed the server's certificate: set, the connection is TLS and
    /// verified against it (empty: plain).
    pub tls_ca_file: String,
    /// Prefix of every subject and stream name, so several deployments (or tests) share a server.
    pub prefix: String,
    /// How long and how much each stream keeps (oldest messages go first).
    pub stream_max_age_secs: u64,
    pub stream_max_bytes: i64,
    /// Copies of each stream the service creates (`APP_NATS__STREAM_REPLICAS`): 1 on a single
    /// server, 3 on a three-node cluster. A stream that exists with another count is changed to
    /// it if the server allows (a warning says when it does not).
    pub stream_replicas: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub jwt_secret: String,
    pub admin_token: String,
    /// `iss` and `aud` every buyer token must carry.
    pub jwt_issuer: String,
    pub jwt_audience: String,
}

impl AuthSettings {
    /// The keys that sign and check buyer tokens (the settings are read here, so `auth` needs
    /// no configuration types).
    pub fn token_keys(&self) -> crate::auth::TokenKeys {
        crate::auth::TokenKeys::new(&self.jwt_secret, &self.jwt_issuer, &self.jwt_audience)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutboxSettings {
    /// Rows claimed per relay round.
    pub batch_size: i64,
    /// Events packed into one broker message (1 = one message per event).
    pub events_per_message: usize,
    pub poll_interval_ms: u64,
    /// Rounds that follow a round that did not fill a batch start at least this far apart
    /// (`crate::pacing`), so the rows of the commits meanwhile share one claim, one publish and
    /// one delete (0 = a round per wake-up).
    pub round_interval_ms: u64,
}

impl OutboxSettings {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConsumerSettings {
    pub batch_size: usize,
    /// A batch that is not full starts no sooner than this after the previous batch started
    /// (`crate::pacing`), so that events of a steady stream share one transaction instead of
    /// paying for one each (0 = a round per arrival). Full batches go at once.
    pub round_interval_ms: u64,
    /// Deliveries after which an event whose handling panics is dead-lettered. Transient
    /// failures (database or broker away, deadlocks, lock timeouts) are retried without limit.
    pub max_deliveries: i64,
    pub ack_wait_secs: u64,
    pub max_ack_pending: i64,
    /// A durable consumer that has to be created (first start, or deleted) starts this far back
    /// in its stream; anything older still unfinished is re-driven by the order service.
    pub replay_window_secs: u64,
}

/// How long records of what happened are kept, and how the pruning worker deletes them.
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    pub interval_secs: u64,
    /// Rows deleted per statement.
    pub batch_size: i64,
    pub inbox_secs: u64,
    /// Dead letters an operator replayed or discarded (open ones are kept until resolved).
    pub resolved_dead_letters_secs: u64,
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

    #[derive(Deserialize)]
    struct Common {
        #[serde(flatten)]
        common: CommonSettings,
    }

    #[test]
    fn the_defaults_pass_validation_and_an_inbox_shorter_than_the_stream_does_not() {
        let mut settings = load::<Common>(1, "").unwrap().common;
        assert_eq!(settings.validate(), Ok(()));
        settings.retention.inbox_secs = settings.nats.stream_max_age_secs - 1;
        assert!(settings.validate().unwrap_err().contains("inbox_secs"));
        settings.retention.inbox_secs = settings.nats.stream_max_age_secs;
        settings.workers.hang_after_secs = 0;
        assert!(settings.validate().unwrap_err().contains("hang_after_secs"));
    }

    #[test]
    fn connection_caps_and_the_request_deadline_have_defaults_and_must_be_positive() {
        let mut settings = load::<Common>(1, "").unwrap().common;
        assert!(settings.http.max_connections >= 1000);
        assert!(settings.http.admin_max_connections >= 1);
        assert!(
            settings.http.request_read_timeout_ms >= settings.http.header_read_timeout_ms,
            "a whole request may take at least as long as its head"
        );
        settings.http.max_connections = 0;
        assert!(settings.validate().unwrap_err().contains("max_connections"));
        settings.http.max_connections = 1;
        settings.http.request_read_timeout_ms = 0;
        assert!(settings
            .validate()
            .unwrap_err()
            .contains("request_read_timeout_ms"));
    }

    #[test]
    fn built_in_or_weak_secrets_are_refused_beyond_loopback_unless_in_development() {
        let mut settings = load_overridden::<Common>(1, "", &[]).unwrap().common;
        assert_eq!(
            settings.validate(),
            Ok(()),
            "loopback: the dev values are fine"
        );
        settings.http.admin_host = Some("10.0.0.5".into());
        assert!(
            settings.validate().is_err(),
            "an admin listener beyond loopback counts"
        );
        settings.http.admin_host = None;
        settings.http.host = "0.0.0.0".into();
        let refused = settings.validate().unwrap_err();
        assert!(refused.contains("auth.jwt_secret is a built-in development value"));
        settings.auth.jwt_secret = "x".repeat(32);
        assert!(settings
            .validate()
            .unwrap_err()
            .contains("auth.admin_token"));
        settings.auth.admin_token = "short".into();
        assert!(settings.validate().unwrap_err().contains("shorter than 32"));
        settings.auth.admin_token = "y".repeat(40);
        assert_eq!(settings.validate(), Ok(()));
        settings.auth.admin_token = String::new();
        settings.development = true;
        assert_eq!(settings.validate(), Ok(()), "the development switch");
    }

    #[test]
    fn stream_replicas_default_to_one_parse_and_are_bounded() {
        let mut settings = load_overridden::<Common>(1, "", &[]).unwrap().common;
        assert_eq!(settings.nats.stream_replicas, 1);
        let three = load_overridden::<Common>(1, "", &["[nats]\nstream_replicas = 3\n"])
            .unwrap()
            .common;
        assert_eq!(three.nats.stream_replicas, 3);
        settings.nats.stream_replicas = 0;
        assert!(settings.validate().unwrap_err().contains("stream_replicas"));
        settings.nats.stream_replicas = 6;
        assert!(settings.validate().unwrap_err().contains("stream_replicas"));
    }

    #[test]
    fn every_url_of_a_list_is_redacted() {
        assert_eq!(
            redact_url("nats://u:p1@a:4222,nats://u:p2@b:4222,nats://c:4222"),
            "nats://u:***@a:4222,nats://u:***@b:4222,nats://c:4222"
        );
        assert_eq!(
            redact_url("postgres://u:pw@h1:5432,h2:5432/db"),
            "postgres://u:***@h1:5432,h2:5432/db"
        );
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
    }

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["0.0.0.0", "::", "10.0.0.1", "example.com", ""] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn defaults_parse_and_service_sections_merge() {
        let s: Sample = load(1, "").expect("defaults load");
        assert_eq!(s.http.port, 1);
        assert_eq!(s.database.http_connections, 8);
        assert!(s.consumer.batch_size > 0);
    }

    #[test]
    fn the_admin_listener_is_a_thousand_ports_up_unless_set() {
        let mut http = load::<Sample>(18090, "").expect("defaults load").http;
        assert_eq!(http.admin_port(), Some(19090));
        assert_eq!(http.admin_host(), "127.0.0.1");
        http.host = "0.0.0.0".into();
        assert_eq!(
            http.admin_host(),
            "127.0.0.1",
            "buyers on every address, operators still on loopback"
        );
        http.admin_host = Some("10.0.0.5".into());
        assert_eq!(http.admin_host(), "10.0.0.5", "as set");
        http.port = 0;
        assert_eq!(
            http.admin_port(),
            Some(0),
            "any free port, as the public one"
        );
        http.port = 65000;
        assert_eq!(http.admin_port(), None, "past 65535: must be set");
        http.admin_port = Some(9100);
        assert_eq!(http.admin_port(), Some(9100));
    }
}
