//! The sections every service's settings share, each with its defaults beside its fields.
//!
//! Durations are written as people write them (`"20ms"`, `"30s"`, `"7d"`) and parsed once, at
//! load, into `Duration`s. Secrets (and URLs that may carry passwords) are `SecretString`s: their
//! `Debug` prints no value, and they are exposed only where they are used.

use super::hidden;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The public and admin listeners.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpSettings {
    /// The public listener: the service's API, `/openapi.json`, `/health` and `/ready`.
    pub host: String,
    /// The public listener's port; each service's own by default (`crate::dev`), 0 = any free.
    pub port: u16,
    pub max_body_bytes: usize,
    /// A client must send a request's head within this (else the connection is closed) ...
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// ... and each piece of its body within this (else `408` and the connection is closed) ...
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// ... and the whole request, head and body, within this from its first byte, however
    /// steadily it trickles (else `408` and the connection is closed).
    #[serde(with = "humantime_serde")]
    pub request_read_timeout: Duration,
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
    pub admin_host: Option<String>,
    pub admin_port: Option<u16>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            host: "127.0.0.1".into(),
            port: 0,
            max_body_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            request_read_timeout: Duration::from_secs(30),
            max_connections: 8192,
            admin_max_connections: 256,
            admin_host: None,
            admin_port: None,
        }
    }
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
        let at_least_1ms = |d: Duration| d.max(Duration::from_millis(1));
        crate::server::ListenerLimits {
            header: at_least_1ms(self.header_read_timeout),
            body: at_least_1ms(self.body_read_timeout),
            request: at_least_1ms(self.request_read_timeout),
            max_connections: max_connections.max(1),
        }
    }
}

/// The service's PostgreSQL database and its two pools.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct DatabaseSettings {
    /// The service's own database, as its own role (the URL may carry the password); the
    /// private development instance by default.
    #[serde(serialize_with = "hidden")]
    pub url: SecretString,
    /// Connections for HTTP handlers' own queries.
    pub http_connections: u32,
    /// Connections for the background workers (relay, consumers, order intake, re-drive,
    /// retention): a flood of HTTP reads cannot starve them.
    pub worker_connections: u32,
    /// How long a request waits for a connection before answering 503: short, so that a
    /// database outage gives clients a quick, retryable answer instead of a hanging request.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Session limits on every connection, so that no statement, lock wait or abandoned
    /// transaction can hold a worker (or another session's rows) indefinitely.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_timeout: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: crate::dev::admin_database_url().into(),
            http_connections: 8,
            worker_connections: 8,
            acquire_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(3),
            idle_in_transaction_timeout: Duration::from_secs(30),
        }
    }
}

/// The NATS server (or cluster) and the streams the service creates.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct NatsSettings {
    /// A server's URL, or a cluster's servers' URLs separated by commas
    /// (`nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222`); it may carry
    /// credentials. The private development server by default.
    #[serde(serialize_with = "hidden")]
    pub url: SecretString,
    /// The service's NATS user (empty: the URL's credentials, or none).
    pub user: String,
    #[serde(serialize_with = "hidden")]
    pub password: SecretString,
    /// The authority that signed the server's certificate: set, the connection is TLS and
    /// verified against it (empty: plain).
    pub tls_ca_file: String,
    /// Prefix of every subject and stream name, so several deployments (or tests) share a server.
    pub prefix: String,
    /// How long and how much each stream keeps (oldest messages go first).
    #[serde(with = "humantime_serde")]
    pub stream_max_age: Duration,
    pub stream_max_bytes: i64,
    /// Copies of each stream the service creates (`APP_NATS__STREAM_REPLICAS`): 1 on a single
    /// server, 3 on a three-node cluster. A stream that exists with another count is changed to
    /// it if the server allows (a warning says when it does not).
    pub stream_replicas: usize,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: crate::dev::nats_url().into(),
            user: String::new(),
            password: SecretString::from(""),
            tls_ca_file: String::new(),
            prefix: "shop".into(),
            stream_max_age: Duration::from_secs(7 * 24 * 3600),
            stream_max_bytes: 1 << 30,
            stream_replicas: 1,
        }
    }
}

/// Buyers' tokens and the operators' token.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AuthSettings {
    /// HS256 key of buyer tokens, the same in every service (the built-in development value by
    /// default, refused beyond loopback).
    #[serde(serialize_with = "hidden")]
    pub jwt_secret: SecretString,
    /// Bearer token of the admin APIs (the built-in development value by default, refused beyond
    /// loopback).
    #[serde(serialize_with = "hidden")]
    pub admin_token: SecretString,
    /// `iss` and `aud` every buyer token must carry.
    pub jwt_issuer: String,
    pub jwt_audience: String,
}

impl AuthSettings {
    /// The keys that sign and check buyer tokens (the settings are read here, so `auth` needs
    /// no configuration types).
    pub fn token_keys(&self) -> crate::auth::TokenKeys {
        crate::auth::TokenKeys::new(
            self.jwt_secret.expose_secret(),
            &self.jwt_issuer,
            &self.jwt_audience,
        )
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            jwt_secret: crate::dev::JWT_SECRET.into(),
            admin_token: crate::dev::ADMIN_TOKEN.into(),
            jwt_issuer: crate::auth::DEFAULT_ISSUER.into(),
            jwt_audience: crate::auth::DEFAULT_AUDIENCE.into(),
        }
    }
}

/// The outbox relay.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct OutboxSettings {
    /// Rows claimed per relay round.
    pub batch_size: i64,
    /// Events packed into one broker message (1 = one message per event).
    pub events_per_message: usize,
    /// How often the relay looks for rows when no commit has woken it.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Rounds that follow a round that did not fill a batch start at least this far apart
    /// (`crate::pacing`), so the rows of the commits meanwhile share one claim, one publish and
    /// one delete (0 = a round per wake-up).
    #[serde(with = "humantime_serde")]
    pub round_interval: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            batch_size: 1000,
            events_per_message: 100,
            poll_interval: Duration::from_millis(250),
            round_interval: Duration::from_millis(20),
        }
    }
}

/// Background workers and their supervision.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// Whether the relay, consumers and other workers run inside the process. Tests turn them
    /// off and drive them by hand.
    pub enabled: bool,
    /// Backoff before the first restart of a failed worker; it doubles up to the maximum.
    #[serde(with = "humantime_serde")]
    pub restart_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_restart_backoff: Duration,
    /// A worker with work waiting and no progress for this long makes `/ready` answer 503.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    /// A worker busy with one unit of work for this long is aborted and restarted.
    #[serde(with = "humantime_serde")]
    pub hang_after: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            enabled: true,
            restart_backoff: Duration::from_millis(200),
            max_restart_backoff: Duration::from_secs(10),
            stall_after: Duration::from_secs(30),
            hang_after: Duration::from_secs(60),
        }
    }
}

/// The JetStream consumers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ConsumerSettings {
    pub batch_size: usize,
    /// A batch that is not full starts no sooner than this after the previous batch started
    /// (`crate::pacing`), so that events of a steady stream share one transaction instead of
    /// paying for one each (0 = a round per arrival). Full batches go at once.
    #[serde(with = "humantime_serde")]
    pub round_interval: Duration,
    /// Deliveries after which an event whose handling panics is dead-lettered. Transient
    /// failures (database or broker away, deadlocks, lock timeouts) are retried without limit.
    pub max_deliveries: i64,
    /// How long the server waits for an acknowledgement before delivering again (whole seconds
    /// count: JetStream's own unit is finer, but nothing here needs it).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    /// A durable consumer that has to be created (first start, or deleted) starts this far back
    /// in its stream; anything older still unfinished is re-driven by the order service.
    #[serde(with = "humantime_serde")]
    pub replay_window: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            batch_size: 256,
            round_interval: Duration::from_millis(20),
            max_deliveries: 5,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            replay_window: Duration::from_secs(600),
        }
    }
}

/// How long records of what happened are kept, and how the pruning worker deletes them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RetentionSettings {
    /// How often the pruning worker runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Rows deleted per statement.
    pub batch_size: i64,
    /// How long the inbox remembers a handled message: at least as long as a stream keeps it.
    #[serde(with = "humantime_serde")]
    pub inbox_max_age: Duration,
    /// Dead letters an operator replayed or discarded (open ones are kept until resolved).
    #[serde(with = "humantime_serde")]
    pub resolved_dead_letters_max_age: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        RetentionSettings {
            interval: Duration::from_secs(60),
            batch_size: 1000,
            inbox_max_age: Duration::from_secs(8 * DAY),
            resolved_dead_letters_max_age: Duration::from_secs(30 * DAY),
        }
    }
}
