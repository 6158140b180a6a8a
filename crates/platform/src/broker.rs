//! NATS JetStream: connection, stream topology (one stream per publishing service).

use crate::config::NatsSettings;
use crate::events::{Event, Source};
use async_nats::jetstream::{self, stream};
use std::time::Duration;

/// Names of subjects and streams under a deployment prefix, and how long streams keep messages.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    max_age: Duration,
    max_bytes: i64,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Topology {
            prefix: prefix.into(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1 << 30,
        }
    }

    pub fn from_settings(settings: &NatsSettings) -> Self {
        Topology {
            prefix: settings.prefix.clone(),
            max_age: Duration::from_secs(settings.stream_max_age_secs),
            max_bytes: settings.stream_max_bytes,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn subject_of(&self, event: &Event) -> String {
        format!("{}.{}", self.prefix, event.subject_suffix())
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
            duplicate_window: Duration::from_secs(120),
            // Bounded in time and size; when full the oldest go first. A message lost that way
            // (or any other way) leaves its order unfinished, and the order service re-drives it.
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            discard: stream::DiscardPolicy::Old,
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
pub async fn connect(settings: &NatsSettings) -> Result<async_nats::Client, BrokerError> {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(&settings.url)
        .await
        .map_err(|source| BrokerError::Connect {
            url: settings.url.clone(),
            source,
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
/// deleted stream is re-created.
pub async fn ensure_stream(
    js: &jetstream::Context,
    topology: &Topology,
    source: Source,
) -> Result<(), BrokerError> {
    let config = topology.stream_config(source);
    let name = config.name.clone();
    js.create_or_update_stream(config)
        .await
        .map_err(|source| BrokerError::Stream { name, source })?;
    Ok(())
}

/// [`ensure_stream`] for every stream of the topology.
pub async fn ensure_streams(
    js: &jetstream::Context,
    topology: &Topology,
) -> Result<(), BrokerError> {
    for source in Source::ALL {
        ensure_stream(js, topology, source).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{OrderCreated, Source};

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
        assert_eq!(
            t.stream_config(Source::Order).subjects,
            vec!["t_ab.order.>".to_string()]
        );
    }
}
