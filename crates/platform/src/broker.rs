//! NATS JetStream: connection, stream topology (one stream per publishing service).

use crate::config::NatsSettings;
use crate::events::{Event, Source};
use async_nats::jetstream::{self, stream};
use std::time::Duration;

/// Names of subjects and streams under a deployment prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Topology {
            prefix: prefix.into(),
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
            max_age: Duration::from_secs(7 * 24 * 3600),
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
    #[error("could not create stream {name}: {source}")]
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

/// Creates every stream of the topology if missing (idempotent; each service calls it at start).
pub async fn ensure_streams(
    js: &jetstream::Context,
    topology: &Topology,
) -> Result<(), BrokerError> {
    for source in Source::ALL {
        let config = topology.stream_config(source);
        let name = config.name.clone();
        js.get_or_create_stream(config)
            .await
            .map_err(|source| BrokerError::Stream { name, source })?;
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
