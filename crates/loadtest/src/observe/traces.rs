//! The run's traces: an OTLP receiver of the run's own (`stack::otlp`), the `OTEL_*` variables
//! that point every service instance at it with the scenario's sampling ratio, and the wait for
//! the last spans after the drain.

use std::time::Duration;

use anyhow::{Context, Result};
use stack::otlp::{OtlpReceiver, ReceivedSpan};

/// Receives the services' spans for one run.
pub struct TraceSink {
    receiver: OtlpReceiver,
    pub ratio: f64,
}

/// How often the services' span processors export: short, so the last spans of a run arrive
/// soon after the drain.
const EXPORT_EVERY_MS: u64 = 500;

impl TraceSink {
    pub async fn start(ratio: f64) -> Result<TraceSink> {
        let receiver = OtlpReceiver::start()
            .await
            .context("starting the run's OTLP receiver")?;
        Ok(TraceSink { receiver, ratio })
    }

    /// The variables every service instance gets: the standard ones, nothing of ours.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.receiver.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()),
            ("OTEL_TRACES_SAMPLER_ARG", self.ratio.to_string()),
            ("OTEL_BSP_SCHEDULE_DELAY", EXPORT_EVERY_MS.to_string()),
            // A queue for several seconds of spans at the highest rates we run: a full queue
            // drops spans (and their orders drop out of the section as incomplete).
            ("OTEL_BSP_MAX_QUEUE_SIZE", "262144".into()),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2048".into()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
    }

    /// The spans received, once none came for two export intervals (at most `within`).
    pub async fn settled_spans(&self, within: Duration) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + within;
        let quiet = Duration::from_millis(2 * EXPORT_EVERY_MS + 200);
        let mut seen = self.receiver.count();
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(quiet).await;
            let now = self.receiver.count();
            if now == seen {
                break;
            }
            seen = now;
        }
        self.receiver.take()
    }
}
