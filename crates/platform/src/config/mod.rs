//! Configuration: each setting's default beside its field (`sections`, and each service's own
//! sections), then an optional TOML file, then environment variables; unknown keys are refused
//! (`loader`).
//!
//! Environment overrides use the `APP_` prefix and `__` between levels, so
//! `APP_DATABASE__URL` sets `database.url`. `APP_CONFIG_FILE` names the file.

mod loader;
mod sections;

pub use loader::{
    known_keys, load, load_overridden, nearest, variable_name, ServiceSettings, SettingsError,
    UnknownKey, CONFIG_FILE_VARIABLE,
};
pub use sections::{
    AuthSettings, ConsumerSettings, DatabaseSettings, HttpSettings, NatsSettings, OutboxSettings,
    RetentionSettings, WorkerSettings,
};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// The sections every service has.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
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
        if self.retention.inbox_max_age < self.nats.stream_max_age {
            return Err(format!(
                "retention.inbox_max_age ({}) must be at least nats.stream_max_age ({})",
                humantime_serde::re::humantime::format_duration(self.retention.inbox_max_age),
                humantime_serde::re::humantime::format_duration(self.nats.stream_max_age)
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
            || http.request_read_timeout.is_zero()
        {
            return Err("http: max_connections, admin_max_connections and request_read_timeout must be positive".into());
        }
        let workers = &self.workers;
        if workers.restart_backoff.is_zero()
            || workers.max_restart_backoff < workers.restart_backoff
            || workers.hang_after.is_zero()
        {
            return Err("workers: restart_backoff must be positive and at most max_restart_backoff, hang_after positive".into());
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
            if let Some(why) = crate::auth::weak_secret_reason(value.expose_secret()) {
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

/// Serializes a secret as a placeholder: settings may be serialized (their keys are read so),
/// their secrets never.
fn hidden<S: Serializer>(_: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("<secret>")
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    fn defaults(port: u16) -> CommonSettings {
        load_overridden(port, &[]).expect("defaults load")
    }

    #[test]
    fn the_defaults_pass_validation_and_an_inbox_shorter_than_the_stream_does_not() {
        let mut settings = defaults(1);
        assert_eq!(settings.validate(), Ok(()));
        settings.retention.inbox_max_age = settings.nats.stream_max_age - Duration::from_secs(1);
        assert!(settings.validate().unwrap_err().contains("inbox_max_age"));
        settings.retention.inbox_max_age = settings.nats.stream_max_age;
        settings.workers.hang_after = Duration::ZERO;
        assert!(settings.validate().unwrap_err().contains("hang_after"));
    }

    #[test]
    fn connection_caps_and_the_request_deadline_have_defaults_and_must_be_positive() {
        let mut settings = defaults(1);
        assert!(settings.http.max_connections >= 1000);
        assert!(settings.http.admin_max_connections >= 1);
        assert!(
            settings.http.request_read_timeout >= settings.http.header_read_timeout,
            "a whole request may take at least as long as its head"
        );
        settings.http.max_connections = 0;
        assert!(settings.validate().unwrap_err().contains("max_connections"));
        settings.http.max_connections = 1;
        settings.http.request_read_timeout = Duration::ZERO;
        assert!(settings
            .validate()
            .unwrap_err()
            .contains("request_read_timeout"));
    }

    #[test]
    fn built_in_or_weak_secrets_are_refused_beyond_loopback_unless_in_development() {
        let mut settings = defaults(1);
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
        settings.auth.jwt_secret = "x".repeat(32).into();
        assert!(settings
            .validate()
            .unwrap_err()
            .contains("auth.admin_token"));
        settings.auth.admin_token = "short".into();
        assert!(settings.validate().unwrap_err().contains("shorter than 32"));
        settings.auth.admin_token = "y".repeat(40).into();
        assert_eq!(settings.validate(), Ok(()));
        settings.auth.admin_token = "".into();
        settings.development = true;
        assert_eq!(settings.validate(), Ok(()), "the development switch");
    }

    #[test]
    fn stream_replicas_default_to_one_parse_and_are_bounded() {
        let mut settings = defaults(1);
        assert_eq!(settings.nats.stream_replicas, 1);
        let three: CommonSettings = load_overridden(1, &["[nats]\nstream_replicas = 3\n"]).unwrap();
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
    fn defaults_parse_and_secrets_never_print() {
        let s = defaults(1);
        assert_eq!(s.http.port, 1);
        assert_eq!(s.database.http_connections, 8);
        assert!(s.consumer.batch_size > 0);
        let printed = format!("{s:?} {}", serde_json::to_string(&s).unwrap());
        for secret in [
            crate::dev::JWT_SECRET,
            crate::dev::ADMIN_TOKEN,
            "127.0.0.1:55432",
        ] {
            assert!(!printed.contains(secret), "{secret} printed");
        }
    }

    #[test]
    fn the_admin_listener_is_a_thousand_ports_up_unless_set() {
        let mut http = defaults(18090).http;
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
