//! The process's Prometheus recorder and the admin listener's `/metrics`.

use super::Readiness;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// The process-wide Prometheus recorder (installed once, even with several services in one test).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (not ours): render an empty registry.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// `GET /metrics` (admin listener): the recorder's metrics, and `service_ready`, the verdict
/// `/ready` would give now. That one is this listener's own (not the process-wide recorder's,
/// which several services in one test process share), and taken at scrape time: a gauge set by
/// `/ready` would be as old as the last probe. The verdict's database write is cached for 1 s,
/// so scrapes add at most one probe a second.
pub(super) async fn render(State(readiness): State<Readiness>) -> impl IntoResponse {
    let mut page = metrics_handle().render();
    let ready = u8::from(readiness.is_ready().await);
    page.push_str(&format!(
        "# HELP service_ready 1 when /ready answers 200 (every worker keeping up, the database \
         taking writes, the broker connected), else 0.\n\
         # TYPE service_ready gauge\nservice_ready {ready}\n\n"
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], page)
}
