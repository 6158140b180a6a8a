//! The HTTP server every listener runs: axum's router on hyper's HTTP/1 connections, so that a
//! slow client cannot hold a connection forever — the request head must arrive within the
//! header read timeout (else the connection is closed), and each piece of a body within the
//! body read timeout (else the request is answered `408` problem+json and the connection is
//! closed).

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_http::timeout::RequestBodyTimeout;

/// Bytes hyper buffers for one request head: a larger head is answered `431`.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long in-flight connections may finish after the shutdown signal.
const DRAIN: Duration = Duration::from_secs(5);

/// How long a client may take to send a request.
#[derive(Debug, Clone, Copy)]
pub struct ReadTimeouts {
    /// From the connection's readiness for a request to the end of its head.
    pub header: Duration,
    /// Between two pieces of a request body.
    pub body: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open connections finish
/// (up to 5 s).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: ReadTimeouts,
    shutdown: impl Future<Output = ()>,
) -> Result<(), std::io::Error> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .max_buf_size(MAX_HEAD_BYTES);
    let service = TowerToHyperService::new(RequestBodyTimeout::new(router, timeouts.body));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection =
            graceful.watch(builder.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
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
