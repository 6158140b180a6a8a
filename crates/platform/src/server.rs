//! The HTTP server every listener runs: axum's router on hyper's HTTP/1 connections, with
//! connections treated as a budget, so that slow or numerous clients cannot hold the door:
//! - a listener holds at most `max_connections` connections; one more is answered `503`
//!   problem+json with `Retry-After` and closed at once (never queued), counted in
//!   `http_connections_refused_total`, while `http_connections_open` shows how many are open;
//! - the request head must arrive within the header read timeout (else the connection is
//!   closed), each piece of a body within the body read timeout, and the whole request within
//!   the request deadline from its first byte (`deadline.rs`) — else `408` problem+json and the
//!   connection is closed.

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::timeout::TimeoutBody;
use tower_service::Service;

mod deadline;

pub use deadline::RequestDeadlineExceeded;
use deadline::{ClockedStream, DeadlineBody, RequestClock};

/// Bytes hyper buffers for one request head: a larger head is answered `431`.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long in-flight connections may finish after the shutdown signal.
const DRAIN: Duration = Duration::from_secs(5);
/// Refused connections being answered at once, per listener; past this a refused connection is
/// closed without an answer, so refusing costs a bounded number of descriptors.
const REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refused connection may take to read its answer and close.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// What a listener enforces.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// From the connection's readiness for a request to the end of its head.
    pub header: Duration,
    /// Between two pieces of a request body.
    pub body: Duration,
    /// From a request's first byte to the end of its body.
    pub request: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Serves `router` on `listener` (named `listener_name` in metrics: `public`, `admin`) until
/// `shutdown` resolves, then lets open connections finish (up to 5 s).
pub async fn serve(
    listener: TcpListener,
    listener_name: &'static str,
    router: Router,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), std::io::Error> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header)
        .max_buf_size(MAX_HEAD_BYTES);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    let refusal = refusal_answer();
    let open = metrics::gauge!("http_connections_open", "listener" => listener_name);
    let refused = metrics::counter!("http_connections_refused_total", "listener" => listener_name);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, listener = listener_name, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.increment(1);
            refuse(stream, &refusals, refusal.clone());
            continue;
        };
        let _ = stream.set_nodelay(true);
        let open_connection = OpenConnection::new(slot, open.clone());
        let clock = Arc::new(RequestClock::new());
        let io = TokioIo::new(ClockedStream::new(stream, clock.clone()));
        let router = router.clone();
        // Each request's body ends at the request's deadline, and at a pause longer than the
        // body read timeout.
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let deadline = clock.request_started() + limits.request;
            let request = request.map(|body| {
                let paced = Body::new(TimeoutBody::new(limits.body, body));
                Body::new(DeadlineBody::new(paced, deadline))
            });
            // A Router is always ready (`poll_ready` is `Ready(Ok)`): called directly.
            router.clone().call(request)
        });
        let connection = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            let _open = open_connection;
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain period; closing them");
    }
    Ok(())
}

/// A connection counted against its listener's cap and in `http_connections_open` until it
/// ends (also when its task is dropped at shutdown).
struct OpenConnection {
    _slot: OwnedSemaphorePermit,
    gauge: metrics::Gauge,
}

impl OpenConnection {
    fn new(slot: OwnedSemaphorePermit, gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        OpenConnection { _slot: slot, gauge }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// The answer to a connection over the cap: a complete HTTP/1.1 response, then close.
fn refusal_answer() -> Bytes {
    let body = r#"{"type":"/problems/too-many-connections","title":"Too many connections","status":503,"detail":"this listener holds as many connections as it allows; retry later"}"#;
    Bytes::from(format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// Answers a connection over the cap with `503` and closes it, off the accept loop. It reads
/// what the client sent until the client closes (or [`REFUSAL_LINGER`] passes): closing a socket
/// with unread data resets it, which can destroy the answer before the client reads it. At most
/// [`REFUSALS_IN_FLIGHT`] at a time; past that the connection is closed at once.
fn refuse(stream: TcpStream, refusals: &Arc<Semaphore>, answer: Bytes) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        })
        .await;
    });
}
