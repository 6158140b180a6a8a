//! Structured logs: one line per significant event, JSON when `LOG_FORMAT=json` (each line then
//! carries its spans' fields, among them the `trace_id` and `span_id` of a traced span).
//!
//! Lines are formatted on the thread that logs and written by one writer thread, which drains
//! what has queued up and writes it with one system call: at thousands of orders per second a
//! `write(2)` per line was a measurable share of each service's CPU (docs/performance.md).
//! The queue applies backpressure instead of dropping lines when full.

use std::io::{BufWriter, IsTerminal};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::registry::Registry;
use tracing_subscriber::{fmt, Layer};

/// Lines queued for the writer thread before loggers wait for it.
const QUEUED_LINES: usize = 64 * 1024;

/// The layer that writes log lines, and the guard of its writer thread.
pub(super) fn lines() -> (Box<dyn Layer<Registry> + Send + Sync>, WorkerGuard) {
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only for a person at a terminal, not in log files.
    let ansi = std::io::stdout().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let layer = if json {
        fmt::layer()
            .with_writer(writer)
            .json()
            .with_current_span(true)
            .boxed()
    } else {
        fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .compact()
            .boxed()
    };
    (layer, guard)
}

/// Panics go to the structured log as one line (workers contain and survive them; an operator
/// finds them with the other errors). The default hook, which prints a backtrace and loads the
/// debug info to do so (a large resident cost: docs/performance.md), still runs when
/// `RUST_BACKTRACE` asks for one.
pub(super) fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info.payload_as_str().unwrap_or("a panic without a message");
        tracing::error!(panic = message, %location, "panicked");
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            default(info);
        }
    }));
}
