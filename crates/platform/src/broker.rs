//! NATS JetStream: connection, stream topology (one stream per publishing service).

use crate::config::NatsSettings;
use crate::contract::{EventType, Subscription};
use crate::events::{Event, Source};
use async_nats::jetstream::{self, context::CreateStreamErrorKind, stream};
use secrecy::ExposeSecret;
use std::time::Duration;

/// Names of subjects and streams under a deployment prefix, and how long streams keep messages.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    max_age: Duration,
    max_bytes: i64,
    /// Copies of each stream on a cluster (1 on a single server).
    replicas: usize,
    /// The streams this service publishes to: the ones it creates (a consumer only looks up the
    /// stream it reads, whose publisher creates it). A service's NATS user may create and update
    /// only those.
    publishes: Vec<Source>,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Topology {
            prefix: prefix.into(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1 << 30,
            replicas: 1,
            publishes: Source::ALL.to_vec(),
        }
    }

    pub fn from_settings(settings: &NatsSettings) -> Self {
        Topology {
            prefix: settings.prefix.clone(),
            max_age: settings.stream_max_age,
            max_bytes: settings.stream_max_bytes,
            replicas: settings.stream_replicas.max(1),
            publishes: Source::ALL.to_vec(),
        }
    }

    /// The same topology with `replicas` copies of each stream it creates.
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// The same topology for a service that publishes only to `sources`' streams.
    pub fn publishing(mut self, sources: &[Source]) -> Self {
        self.publishes = sources.to_vec();
        self
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn subject_of(&self, event: &Event) -> String {
        self.subject_of_type(event.event_type())
    }

    /// The subject the contract publishes `event_type` on.
    pub fn subject_of_type(&self, event_type: EventType) -> String {
        self.subject(event_type.subject_suffix())
    }

    /// The stream `event_type` is published in: its publisher's.
    pub fn stream_of_type(&self, event_type: EventType) -> String {
        self.stream_name(event_type.publisher())
    }

    /// A durable consumer's filter subjects: the subjects of the event types it takes.
    pub fn filter_subjects(&self, subscription: &Subscription) -> Vec<String> {
        subscription
            .subject_suffixes()
            .map(|suffix| self.subject(suffix))
            .collect()
    }

    /// A subject below the prefix, e.g. `payment.failed`.
    pub fn subject(&self, suffix: &str) -> String {
        format!("{}.{}", self.prefix, suffix)
    }

    pub fn stream_name(&self, source: Source) -> String {
        format!("{}_{}", self.prefix, source.token()).to_uppercase()
    }

    fn stream_config(&self, source: Source) -> stream::Config {
        stream::Config {
            name: self.stream_name(source),
            subjects: vec![format!("{}.{}.>", self.prefix, source.token())],
            storage: stream::StorageType::File,
            // Publishes are deduplicated by Nats-Msg-Id within this window; the inbox covers the rest.
            // A relay whose publish failed (a timeout or `no responders` while a cluster elects a
            // stream leader) publishes the same batch again within seconds (its backoff stops at
            // 5 s, an ack times out after 10 s), well inside it.
            duplicate_window: Duration::from_secs(120),
            // Bounded in time and size; when full the oldest go first. A message lost that way
            // (or any other way) leaves its order unfinished, and the order service re-drives it.
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            discard: stream::DiscardPolicy::Old,
            // Consumers are created without a replica count of their own, so they follow this.
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("could not connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("could not create or update stream {name}: {source}")]
    Stream {
        name: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
}

/// Connects with unlimited reconnects: a broker outage must stall messaging, never crash a service.
/// `nats.url` may list several servers of a cluster, comma-separated; the client connects to any
/// of them and fails over to the others (and to those the cluster announces).
/// Authenticates as `nats.user` when it is set, else with credentials in the URL
/// (`nats://user:password@host:port`), else anonymously; with `nats.tls_ca_file`, over TLS.
pub async fn connect(settings: &NatsSettings) -> Result<async_nats::Client, BrokerError> {
    let (user, password) = if settings.user.is_empty() {
        url_credentials(settings.url.expose_secret())
    } else {
        Some((
            settings.user.clone(),
            settings.password.expose_secret().to_owned(),
        ))
    }
    .unzip();
    let mut options = client_options(user, password);
    if !settings.tls_ca_file.is_empty() {
        // TLS, and only to a server whose certificate this authority signed.
        options = options
            .require_tls(true)
            .add_root_certificates(settings.tls_ca_file.clone().into());
    }
    options
        .retry_on_initial_connect()
        .max_reconnects(None)
        // A server that stops answering without closing the connection (paused, or cut off by
        // the network) is left after three unanswered pings: ~30 s, not the default ~3 min.
        .ping_interval(Duration::from_secs(10))
        .connect(server_urls(settings.url.expose_secret()))
        .await
        .map_err(|source| BrokerError::Connect {
            url: crate::config::redact_url(settings.url.expose_secret()),
            source,
        })
}

/// A connection for tools and tests (the load-test CLI, the test harness): fails fast when the
/// server is away; authenticates with the credentials in the URL, if any. `url` may list
/// several servers, comma-separated.
pub async fn connect_url(url: &str) -> Result<async_nats::Client, BrokerError> {
    let (user, password) = url_credentials(url).unzip();
    client_options(user, password)
        .connect(server_urls(url))
        .await
        .map_err(|source| BrokerError::Connect {
            url: crate::config::redact_url(url),
            source,
        })
}

fn client_options(user: Option<String>, password: Option<String>) -> async_nats::ConnectOptions {
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)));
    match (user, password) {
        // Replies come to an inbox of the user's own, so its permissions can allow exactly that
        // (a shared `_INBOX.>` would let every user read every other user's replies).
        (Some(user), password) => options
            .custom_inbox_prefix(inbox_prefix(&user))
            .user_and_password(user, password.unwrap_or_default()),
        (None, _) => options,
    }
}

/// The reply-subject prefix of a user's connections (its permissions allow subscribing to it).
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{}", user.replace(['.', '*', '>', ' '], "_"))
}

/// The servers of a `nats.url`: one URL, or several separated by commas (the client library
/// takes a list, not a comma-separated string).
pub fn server_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|server| !server.is_empty())
        .collect()
}

/// `user:password` of a `nats://user:password@host` URL, percent-decoding neither (we generate
/// URL-safe ones); of a list, the first server's that has any (a cluster's nodes share users).
fn url_credentials(url: &str) -> Option<(String, String)> {
    server_urls(url).into_iter().find_map(|server| {
        let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
        let (userinfo, _) = rest.split_once('@')?;
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        (!user.is_empty()).then(|| (user.to_string(), password.to_string()))
    })
}

pub fn jetstream(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(4096)
        .backpressure_on_inflight(true)
        .build(client)
}

/// Creates the stream if it is missing and brings its settings to the configured ones
/// (idempotent). Called at start and whenever a worker starts again after a broker error, so a
/// deleted stream is re-created. A replica count the server will not give an existing stream
/// (more than the cluster has nodes, a single server) leaves the stream's own: a warning says
/// so, and the service runs on the stream as it is.
pub async fn ensure_stream(
    js: &jetstream::Context,
    topology: &Topology,
    source: Source,
) -> Result<(), BrokerError> {
    let config = topology.stream_config(source);
    let name = config.name.clone();
    match js.create_or_update_stream(config.clone()).await {
        Ok(_) => Ok(()),
        Err(refused) if matches!(refused.kind(), CreateStreamErrorKind::JetStream(_)) => {
            keep_replicas(js, config, refused).await
        }
        Err(source) => Err(BrokerError::Stream { name, source }),
    }
}

/// After the server refused `config` for an existing stream: if the stream has another replica
/// count, tries the same settings with its count. Returns the refusal when that is not it.
async fn keep_replicas(
    js: &jetstream::Context,
    mut config: stream::Config,
    refused: jetstream::context::CreateStreamError,
) -> Result<(), BrokerError> {
    let name = config.name.clone();
    let configured = config.num_replicas;
    let current = match js.get_stream(&name).await {
        Ok(mut stream) => stream
            .info()
            .await
            .map(|info| info.config.num_replicas)
            .ok(),
        Err(_) => None,
    };
    let Some(current) = current.filter(|&current| current != configured) else {
        return Err(BrokerError::Stream {
            name,
            source: refused,
        });
    };
    config.num_replicas = current;
    js.create_or_update_stream(config)
        .await
        .map_err(|source| BrokerError::Stream {
            name: name.clone(),
            source,
        })?;
    tracing::warn!(
        stream = %name,
        replicas = current,
        configured,
        reason = %refused,
        "the server refused to change the stream's replica count; the stream keeps its own"
    );
    Ok(())
}

/// [`ensure_stream`] for every stream the service publishes to.
pub async fn ensure_streams(
    js: &jetstream::Context,
    topology: &Topology,
) -> Result<(), BrokerError> {
    for &source in &topology.publishes {
        ensure_stream(js, topology, source).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{OrderCreated, Source};

    #[test]
    fn credentials_in_urls_are_found() {
        assert_eq!(
            url_credentials("nats://svc:pw@127.0.0.1:4222"),
            Some(("svc".into(), "pw".into()))
        );
        assert_eq!(url_credentials("nats://127.0.0.1:4222"), None);
        assert_eq!(inbox_prefix("shop-order"), "_INBOX_shop-order");
    }

    #[test]
    fn a_url_may_list_a_clusters_servers() {
        let list = "nats://svc:pw@10.0.0.1:4222, nats://svc:pw@10.0.0.2:4222,nats://10.0.0.3:4222,";
        assert_eq!(
            server_urls(list),
            vec![
                "nats://svc:pw@10.0.0.1:4222",
                "nats://svc:pw@10.0.0.2:4222",
                "nats://10.0.0.3:4222"
            ]
        );
        assert_eq!(url_credentials(list), Some(("svc".into(), "pw".into())));
        assert_eq!(
            url_credentials("nats://10.0.0.1:4222,nats://u:p@10.0.0.2:4222"),
            Some(("u".into(), "p".into())),
            "the first server with credentials"
        );
        assert_eq!(url_credentials("nats://a:1,nats://b:2"), None);
        assert_eq!(
            server_urls("nats://127.0.0.1:4222"),
            vec!["nats://127.0.0.1:4222"]
        );
    }

    #[test]
    fn streams_get_the_configured_replicas() {
        let t = Topology::new("t");
        assert_eq!(t.stream_config(Source::Order).num_replicas, 1);
        let t = t.with_replicas(3);
        assert_eq!(t.stream_config(Source::Order).num_replicas, 3);
        assert_eq!(
            Topology::new("t")
                .with_replicas(0)
                .stream_config(Source::Order)
                .num_replicas,
            1,
            "zero means one"
        );
    }

    #[test]
    fn names_live_under_the_prefix() {
        let t = Topology::new("t_ab");
        assert_eq!(t.stream_name(Source::Payment), "T_AB_PAYMENT");
        let e = Event::OrderCreated(OrderCreated {
            order_id: uuid::Uuid::nil(),
            user_id: 1,
            product_id: 1,
            quantity: 1,
        });
        assert_eq!(t.subject_of(&e), "t_ab.order.created");
        assert_eq!(t.stream_of_type(EventType::StockReleased), "T_AB_INVENTORY");
        const OUTCOMES: Subscription = Subscription::new(
            "o",
            &[EventType::PaymentCompleted, EventType::PaymentFailed],
        );
        assert_eq!(
            t.filter_subjects(&OUTCOMES),
            vec!["t_ab.payment.completed", "t_ab.payment.failed"]
        );
        assert_eq!(
            t.stream_config(Source::Order).subjects,
            vec!["t_ab.order.>".to_string()]
        );
    }
}
