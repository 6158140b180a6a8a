//! Telemetry: structured logs with `tracing` (`logs`), and OpenTelemetry traces across every hop
//! of an order (`traces`: the exporter and the sampler; `spans`: the spans the services make and
//! the W3C `traceparent` they carry between them).
//!
//! Traces are off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set; off, no
//! span of `spans` is even created, so a service pays nothing for them.

mod logs;
pub mod spans;
mod traces;

pub use traces::enabled as traces_enabled;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the log writer and the span exporter running; dropping it exports the spans still
/// queued, then writes out the lines still queued.
#[must_use = "dropping the guard stops the log writer and the span exporter"]
pub struct LogGuard {
    traces: Option<traces::Traces>,
    _writer: Option<WorkerGuard>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // Spans first: the exporter may still log.
        if let Some(traces) = self.traces.take() {
            traces.shutdown();
        }
    }
}

/// Installs the global subscriber once; later calls (several services in one test process) are
/// no-ops. `service` names the process in its traces unless `OTEL_SERVICE_NAME` says otherwise.
/// Hold the returned guard until the process ends.
pub fn init(service: &str, default_filter: &str) -> LogGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (lines, guard) = logs::lines();
    let traces = match traces::Traces::from_env(service) {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("traces are off: {error}");
            None
        }
    };
    let result = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(traces.as_ref().map(traces::Traces::layer))
        .try_init();
    let installed = result.is_ok();
    if installed {
        logs::log_panics();
        if traces.is_some() {
            traces::set_enabled();
        }
    }
    // An Err only means a subscriber was already installed (and has its own writer).
    LogGuard {
        traces: traces.filter(|_| installed),
        _writer: installed.then_some(guard),
    }
}
