//! After the load: wait until the system is quiet — every order final, every outbox empty, every
//! JetStream consumer of the run's streams caught up — or until the timeout.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use futures::TryStreamExt;
use platform::broker::Topology;
use platform::events::Source;
use tokio::time::Instant;

use crate::verify::{self, Databases, Progress};

/// How often the drain polls.
const POLL: Duration = Duration::from_millis(500);
/// Quiet polls needed in a row: one quiet poll can miss work handed from a consumer to an
/// outbox between the database read and the broker read.
const QUIET_POLLS: u32 = 2;

/// The consumers of the run's streams, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerBacklog {
    pub streams: usize,
    pub consumers: usize,
    /// Messages not yet delivered.
    pub pending: u64,
    /// Messages delivered but not acknowledged.
    pub ack_pending: u64,
}

impl ConsumerBacklog {
    pub fn is_idle(&self) -> bool {
        self.pending == 0 && self.ack_pending == 0
    }
}

/// The run's three stream names (`<PREFIX>_ORDER`, …).
pub fn stream_names(prefix: &str) -> Vec<String> {
    let topology = Topology::new(prefix);
    Source::ALL
        .iter()
        .map(|&source| topology.stream_name(source))
        .collect()
}

/// Deletes the streams of a run's prefix (and their durable consumers) once the run is over:
/// JetStream reserves each stream's `max_bytes` on the server, and a run's messages are of no
/// use afterwards. Returns how many streams were deleted.
pub async fn delete_streams(nats_url: &str, prefix: &str) -> Result<usize> {
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {nats_url}"))?;
    let js = jetstream::new(client);
    let mut deleted = 0;
    for name in stream_names(prefix) {
        if js.delete_stream(&name).await.is_ok() {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// JetStream access for the drain.
pub struct Broker {
    context: jetstream::Context,
    streams: Vec<String>,
}

impl Broker {
    pub async fn connect(nats_url: &str, prefix: &str) -> Result<Broker> {
        let client = async_nats::connect(nats_url)
            .await
            .with_context(|| format!("connecting to NATS at {nats_url}"))?;
        Ok(Broker {
            context: jetstream::new(client),
            streams: stream_names(prefix),
        })
    }

    /// Sums `num_pending` and `num_ack_pending` over every consumer of the run's streams.
    pub async fn backlog(&self) -> Result<ConsumerBacklog> {
        let mut total = ConsumerBacklog::default();
        for name in &self.streams {
            let stream = self
                .context
                .get_stream(name)
                .await
                .with_context(|| format!("reading stream {name}"))?;
            total.streams += 1;
            let mut consumers = stream.consumers();
            while let Some(info) = consumers
                .try_next()
                .await
                .with_context(|| format!("listing the consumers of {name}"))?
            {
                total.consumers += 1;
                total.pending += info.num_pending;
                total.ack_pending += info.num_ack_pending as u64;
            }
        }
        Ok(total)
    }
}

/// Where the drain stands, for the live display.
#[derive(Debug, Clone, Default)]
pub struct DrainStatus {
    pub progress: Option<Progress>,
    pub backlog: Option<ConsumerBacklog>,
    pub error: Option<String>,
}

/// How the drain ended.
#[derive(Debug, Clone)]
pub struct DrainOutcome {
    pub drained: bool,
    pub elapsed: Duration,
    pub status: DrainStatus,
}

impl DrainOutcome {
    /// One line for the "drained" check.
    pub fn detail(&self, timeout: Duration) -> String {
        let mut text = if self.drained {
            format!(
                "quiet after {:.1} s (timeout {:.0} s)",
                self.elapsed.as_secs_f64(),
                timeout.as_secs_f64()
            )
        } else {
            format!("not quiet after the {:.0} s timeout", timeout.as_secs_f64())
        };
        if let Some(p) = &self.status.progress {
            text.push_str(&format!(
                ": {} orders non-final, {} outbox rows",
                p.non_final_orders, p.outbox_backlog
            ));
        }
        if let Some(b) = &self.status.backlog {
            text.push_str(&format!(
                ", {} consumers on {} streams with {} pending and {} unacknowledged",
                b.consumers, b.streams, b.pending, b.ack_pending
            ));
        }
        if let (false, Some(error)) = (self.drained, &self.status.error) {
            text.push_str(&format!(" (last error: {error})"));
        }
        text
    }
}

/// Polls until quiet ([`QUIET_POLLS`] quiet polls in a row) or `timeout`; `status` is updated
/// after each poll.
pub async fn drain(
    dbs: &Databases,
    broker: &Broker,
    timeout: Duration,
    status: &Mutex<DrainStatus>,
) -> DrainOutcome {
    let began = Instant::now();
    let deadline = began + timeout;
    let mut quiet = 0;
    loop {
        let (progress, backlog) = tokio::join!(verify::progress(dbs), broker.backlog());
        let mut current = DrainStatus::default();
        match progress {
            Ok(p) => current.progress = Some(p),
            Err(e) => current.error = Some(format!("{e:#}")),
        }
        match backlog {
            Ok(b) => current.backlog = Some(b),
            Err(e) => current.error = Some(format!("{e:#}")),
        }
        let is_quiet = current
            .progress
            .as_ref()
            .is_some_and(|p| p.non_final_orders == 0 && p.outbox_backlog == 0)
            && current.backlog.is_some_and(|b| b.is_idle());
        quiet = if is_quiet { quiet + 1 } else { 0 };
        *status.lock().unwrap_or_else(|e| e.into_inner()) = current.clone();
        if quiet >= QUIET_POLLS {
            return DrainOutcome {
                drained: true,
                elapsed: began.elapsed(),
                status: current,
            };
        }
        if Instant::now() + POLL > deadline {
            return DrainOutcome {
                drained: false,
                elapsed: began.elapsed(),
                status: current,
            };
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_uppercased_per_source() {
        assert_eq!(
            stream_names("run123"),
            vec!["RUN123_ORDER", "RUN123_INVENTORY", "RUN123_PAYMENT"]
        );
    }

    #[test]
    fn detail_names_the_numbers() {
        let outcome = DrainOutcome {
            drained: false,
            elapsed: Duration::from_secs(120),
            status: DrainStatus {
                progress: Some(Progress {
                    non_final_orders: 3,
                    outbox_backlog: 1,
                    ..Progress::default()
                }),
                backlog: Some(ConsumerBacklog {
                    streams: 3,
                    consumers: 4,
                    pending: 2,
                    ack_pending: 0,
                }),
                error: None,
            },
        };
        let text = outcome.detail(Duration::from_secs(120));
        assert!(text.contains("not quiet"), "{text}");
        assert!(text.contains("3 orders non-final, 1 outbox rows"), "{text}");
        assert!(text.contains("2 pending"), "{text}");
    }
}
