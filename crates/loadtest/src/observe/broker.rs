//! The run's JetStream streams as the harness reads them: every durable consumer's backlog.

use anyhow::{Context, Result};
use async_nats::jetstream;
use futures::TryStreamExt;

use crate::deploy;

/// One durable consumer's backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerState {
    /// `<stream>/<consumer>`.
    pub name: String,
    /// Messages not yet delivered.
    pub pending: u64,
    /// Messages delivered but not acknowledged.
    pub ack_pending: u64,
}

/// The consumers of the run's streams, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerBacklog {
    pub streams: usize,
    pub consumers: usize,
    pub pending: u64,
    pub ack_pending: u64,
}

impl ConsumerBacklog {
    pub fn is_idle(&self) -> bool {
        self.pending == 0 && self.ack_pending == 0
    }

    pub fn messages(&self) -> u64 {
        self.pending + self.ack_pending
    }
}

/// JetStream access to the streams of one prefix.
#[derive(Debug, Clone)]
pub struct Broker {
    context: jetstream::Context,
    streams: Vec<String>,
}

impl Broker {
    pub async fn connect(nats_url: &str, prefix: &str) -> Result<Broker> {
        let client = platform::broker::connect_url(nats_url)
            .await
            .with_context(|| {
                format!(
                    "connecting to NATS at {}",
                    platform::config::redact_url(nats_url)
                )
            })?;
        Ok(Broker {
            context: jetstream::new(client),
            streams: deploy::stream_names(prefix),
        })
    }

    /// Every durable consumer of the run's streams, with the number of streams read.
    pub async fn consumers(&self) -> Result<(usize, Vec<ConsumerState>)> {
        let mut states = Vec::new();
        for name in &self.streams {
            let stream = self
                .context
                .get_stream(name)
                .await
                .with_context(|| format!("reading stream {name}"))?;
            let mut consumers = stream.consumers();
            while let Some(info) = consumers
                .try_next()
                .await
                .with_context(|| format!("listing the consumers of {name}"))?
            {
                states.push(ConsumerState {
                    name: format!("{name}/{}", info.name),
                    pending: info.num_pending,
                    ack_pending: info.num_ack_pending as u64,
                });
            }
        }
        Ok((self.streams.len(), states))
    }

    /// `num_pending` and `num_ack_pending` summed over every consumer of the run's streams.
    pub async fn backlog(&self) -> Result<ConsumerBacklog> {
        let (streams, consumers) = self.consumers().await?;
        Ok(ConsumerBacklog {
            streams,
            consumers: consumers.len(),
            pending: consumers.iter().map(|c| c.pending).sum(),
            ack_pending: consumers.iter().map(|c| c.ack_pending).sum(),
        })
    }
}
