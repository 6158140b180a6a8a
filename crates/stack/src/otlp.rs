//! An OTLP receiver of our own: the endpoint the services' traces go to in the system tests and
//! in load runs. It takes OTLP over HTTP/protobuf (`POST /v1/traces`, what the services' exporter
//! sends), decodes each export with the generated protobuf types and keeps the spans in memory,
//! flattened, for the caller to read.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// A span kind, as OTLP numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl Kind {
    fn from_otlp(kind: i32) -> Kind {
        match kind {
            1 => Kind::Internal,
            2 => Kind::Server,
            3 => Kind::Client,
            4 => Kind::Producer,
            5 => Kind::Consumer,
            _ => Kind::Unspecified,
        }
    }
}

/// A span as received: ids in lowercase hex (as a `traceparent` writes them), times in
/// nanoseconds since the epoch.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The `service.name` of the resource that sent it.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: Kind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(String, String)>,
    /// (trace id, span id) of each linked span.
    pub links: Vec<(String, String)>,
    /// The names of its span events.
    pub events: Vec<String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_linked_to(&self, other: &ReceivedSpan) -> bool {
        self.links
            .iter()
            .any(|(trace, span)| *trace == other.trace_id && *span == other.span_id)
    }

    pub fn is_child_of(&self, other: &ReceivedSpan) -> bool {
        self.trace_id == other.trace_id
            && self.parent_span_id.as_deref() == Some(other.span_id.as_str())
    }
}

type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

/// The receiver; it stops when dropped.
pub struct OtlpReceiver {
    address: SocketAddr,
    spans: Received,
    server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// Listens on a free port of the loopback interface.
    pub async fn start() -> std::io::Result<OtlpReceiver> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(address: SocketAddr) -> std::io::Result<OtlpReceiver> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let spans = Received::default();
        let app = Router::new()
            .route("/v1/traces", post(export))
            // An export is one batch of the SDK's (512 spans by default): far below this.
            .layer(DefaultBodyLimit::max(64 << 20))
            .with_state(spans.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::warn!(%error, "the OTLP receiver stopped");
            }
        });
        Ok(OtlpReceiver {
            address,
            spans,
            server,
        })
    }

    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` is set to for the services (the exporter adds
    /// `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received().clone()
    }

    /// How many spans were received so far.
    pub fn count(&self) -> usize {
        self.received().len()
    }

    /// The spans received so far, forgotten here.
    pub fn take(&self) -> Vec<ReceivedSpan> {
        std::mem::take(&mut *self.received())
    }

    fn received(&self) -> MutexGuard<'_, Vec<ReceivedSpan>> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn export(State(spans): State<Received>, body: bytes::Bytes) -> Response {
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    let received = flatten(request);
    spans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(received);
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    ([(header::CONTENT_TYPE, "application/x-protobuf")], answer).into_response()
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(|kv| text(kv.value.as_ref()))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex(&span.parent_span_id)),
                    span_id: hex(&span.span_id),
                    name: span.name,
                    kind: Kind::from_otlp(span.kind),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                    attributes: span.attributes.iter().map(pair).collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    events: span.events.into_iter().map(|e| e.name).collect(),
                });
            }
        }
    }
    out
}

fn pair(kv: &KeyValue) -> (String, String) {
    (kv.key.clone(), text(kv.value.as_ref()))
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span};

    #[tokio::test]
    async fn an_export_is_kept_span_by_span() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue("svc".into())),
                        }),
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        name: "POST /orders".into(),
                        kind: 2,
                        links: vec![span::Link {
                            trace_id: vec![3; 16],
                            span_id: vec![4; 8],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let answer = reqwest::Client::new()
            .post(format!("{}/v1/traces", receiver.endpoint()))
            .header("content-type", "application/x-protobuf")
            .body(request.encode_to_vec())
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success());
        let spans = receiver.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].service, "svc");
        assert_eq!(spans[0].kind, Kind::Server);
        assert_eq!(spans[0].trace_id, "01".repeat(16));
        assert_eq!(spans[0].parent_span_id, None);
        assert_eq!(spans[0].links, vec![("03".repeat(16), "04".repeat(8))]);
    }
}
