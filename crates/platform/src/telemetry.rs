//! Structured logs with `tracing`: one line per significant event, JSON when `LOG_FORMAT=json`.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber once; later calls (several services in one test process) are no-ops.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json");
    let result = if json {
        fmt()
            .with_env_filter(filter)
            .json()
            .with_current_span(true)
            .try_init()
    } else {
        fmt().with_env_filter(filter).compact().try_init()
    };
    // An Err only means a subscriber was already installed.
    let _ = result;
}
