//! The whole-request deadline. hyper bounds the head (`header_read_timeout`) and tower-http the
//! pause between two pieces of a body; neither bounds a body that keeps coming a byte at a time
//! (16 KiB at a byte every 9 s is 40 hours). Here the clock starts at the first byte of a
//! request — read through [`ClockedStream`], which notes when a request begins (the first byte
//! read after an answer was written) — and [`DeadlineBody`] ends the body at start + deadline
//! with [`RequestDeadlineExceeded`], which the body extractors answer `408`.

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// When the request being read on a connection began.
pub(super) struct RequestClock {
    origin: Instant,
    /// Nanoseconds after `origin` at which the current request's first byte was read, plus one;
    /// 0 while no request is being read (between an answer and the next request).
    started: AtomicU64,
}

impl RequestClock {
    pub(super) fn new() -> Self {
        RequestClock {
            origin: Instant::now(),
            started: AtomicU64::new(0),
        }
    }

    fn bytes_read(&self) {
        let now = u64::try_from(self.origin.elapsed().as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        // Only the first read of a request starts its clock.
        let _ = self
            .started
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
    }

    fn bytes_written(&self) {
        self.started.store(0, Ordering::Release);
    }

    /// When the request now being handled began (now, if its bytes were read before the
    /// previous answer was written, as with a pipelined request).
    pub(super) fn request_started(&self) -> Instant {
        match self.started.load(Ordering::Acquire) {
            0 => Instant::now(),
            nanos => self.origin + Duration::from_nanos(nanos - 1),
        }
    }
}

/// A connection's socket that tells its [`RequestClock`] when bytes come and go.
pub(super) struct ClockedStream {
    inner: TcpStream,
    clock: Arc<RequestClock>,
}

impl ClockedStream {
    pub(super) fn new(inner: TcpStream, clock: Arc<RequestClock>) -> Self {
        ClockedStream { inner, clock }
    }

    fn written(&self, result: &Poll<std::io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.clock.bytes_written();
        }
    }
}

impl AsyncRead for ClockedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.bytes_read();
        }
        result
    }
}

impl AsyncWrite for ClockedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.written(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.written(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The request did not arrive whole (head and body) within `http.request_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request did not arrive whole within its deadline")]
pub struct RequestDeadlineExceeded;

/// A request body that fails with [`RequestDeadlineExceeded`] once its deadline has passed,
/// however steadily its pieces arrive.
pub(super) struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    pub(super) fn new(inner: Body, deadline: Instant) -> Self {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.deadline.is_elapsed() {
            return Poll::Ready(Some(Err(Box::new(RequestDeadlineExceeded))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(RequestDeadlineExceeded)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of ten one-byte pieces, one every 500 ms.
    fn trickle() -> Body {
        Body::from_stream(futures::stream::unfold(0, |sent| async move {
            if sent == 10 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from_static(b"x")),
                sent + 1,
            ))
        }))
    }

    async fn next_frame(body: &mut DeadlineBody) -> Option<Result<Frame<Bytes>, axum::BoxError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_coming_at_its_deadline_fails_there() {
        let started = Instant::now();
        let mut body = DeadlineBody::new(trickle(), started + Duration::from_secs(2));
        let mut pieces = 0;
        let error = loop {
            match next_frame(&mut body).await {
                Some(Ok(_)) => pieces += 1,
                Some(Err(error)) => break error,
                None => panic!("the body ended"),
            }
        };
        assert!(error.is::<RequestDeadlineExceeded>(), "{error}");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(pieces, 3, "the pieces before the deadline came through");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_within_its_deadline_is_whole() {
        let body = DeadlineBody::new(trickle(), Instant::now() + Duration::from_secs(6));
        let bytes = axum::body::to_bytes(Body::new(body), 1024)
            .await
            .expect("whole body");
        assert_eq!(bytes, Bytes::from_static(b"xxxxxxxxxx"));
    }

    #[test]
    fn a_request_starts_at_its_first_byte_and_ends_with_the_answer() {
        let clock = RequestClock::new();
        clock.bytes_read();
        let first = clock.request_started();
        std::thread::sleep(Duration::from_millis(20));
        clock.bytes_read();
        assert_eq!(clock.request_started(), first, "later reads keep the start");
        clock.bytes_written();
        assert!(
            clock.request_started() > first,
            "an answer ends the request"
        );
    }
}
