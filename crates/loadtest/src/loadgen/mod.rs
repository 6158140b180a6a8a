//! The open-model load generator, like k6's `ramping-arrival-rate`.
//!
//! One scheduler task walks [`Schedule::intended_starts`] and sleeps until each intended start,
//! computed as `run start + offset` (never by adding intervals, so it cannot drift). If fewer than
//! `max_in_flight` requests are in flight, the request is spawned; otherwise it is counted as
//! dropped, as k6 counts `dropped_iterations`. Latency runs from the *intended* start, so a late
//! scheduler or a slow server shows up in the numbers (no coordinated omission).
//!
//! Requests do not share a lock: each sends its outcome over an unbounded channel to one
//! collector task, which records batches into the [`RunStats`] behind a mutex that only the
//! collector and the once-a-second monitor take.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::plan::schedule::Schedule;
pub mod stats;

use stats::{Outcome, RunStats};

/// What to send: the URL, one bearer header per user and one JSON body per product.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub schedule: Schedule,
    pub url: String,
    /// `Bearer <token>` of user `i + 1` at index `i`; request `n` uses `n % len`.
    pub authorizations: Vec<HeaderValue>,
    /// Request `n` sends body `n % len` (products round-robin).
    pub bodies: Vec<Bytes>,
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    /// Further order-service replicas: request `n` goes to `[url, more_urls…][n % count]`, and
    /// a refused connection is retried once on the next one (see [`LoadState::failovers`]).
    pub more_urls: Vec<String>,
}

impl LoadPlan {
    /// Bodies `{"product_id": id, "quantity": quantity}` for each product, and bearer headers.
    pub fn new(
        schedule: Schedule,
        url: String,
        tokens: &[String],
        product_ids: &[i64],
        quantity: u32,
        max_in_flight: usize,
        request_timeout: Duration,
    ) -> Result<LoadPlan> {
        let authorizations = tokens
            .iter()
            .map(|t| {
                HeaderValue::from_str(&format!("Bearer {t}")).context("token is not a valid header")
            })
            .collect::<Result<Vec<_>>>()?;
        let bodies = product_ids
            .iter()
            .map(|id| {
                Bytes::from(
                    serde_json::json!({ "product_id": id, "quantity": quantity }).to_string(),
                )
            })
            .collect();
        Ok(LoadPlan {
            schedule,
            url,
            authorizations,
            bodies,
            max_in_flight: max_in_flight.max(1),
            request_timeout,
            more_urls: Vec::new(),
        })
    }

    /// Spreads the requests over `urls` (the first replaces `url`); empty: unchanged.
    pub fn with_urls(mut self, urls: &[String]) -> LoadPlan {
        if let Some((first, more)) = urls.split_first() {
            self.url = first.clone();
            self.more_urls = more.to_vec();
        }
        self
    }

    /// Every target URL, `url` first.
    pub fn urls(&self) -> Vec<String> {
        std::iter::once(self.url.clone())
            .chain(self.more_urls.iter().cloned())
            .collect()
    }
}

/// State shared between the generator and the monitor.
#[derive(Debug)]
pub struct LoadState {
    pub stats: Mutex<RunStats>,
    /// Requests sent so far (not dropped).
    pub started: AtomicU64,
    /// Set to stop scheduling early (Ctrl-C).
    pub cancel: AtomicBool,
    /// Requests whose connection one replica refused and that were sent to another replica.
    pub failovers: AtomicU64,
    /// The ids of the orders answered 202 (for the `accepted orders` check).
    pub accepted: Mutex<Vec<uuid::Uuid>>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

impl LoadState {
    pub fn new(plan: &LoadPlan) -> Arc<LoadState> {
        let seconds = plan.schedule.total_duration().as_secs() as usize + 1;
        Arc::new(LoadState {
            stats: Mutex::new(RunStats::new(seconds)),
            started: AtomicU64::new(0),
            cancel: AtomicBool::new(false),
            failovers: AtomicU64::new(0),
            accepted: Mutex::new(Vec::new()),
            in_flight: Arc::new(Semaphore::new(plan.max_in_flight)),
            max_in_flight: plan.max_in_flight,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.in_flight.available_permits())
    }

    /// A copy of the statistics so far.
    pub fn stats_snapshot(&self) -> RunStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One HTTP/1.1 keep-alive client for the whole run, pooled for `max_in_flight` connections.
pub fn http_client(plan: &LoadPlan) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(plan.max_in_flight)
        // Below the services' idle-connection close (their header read timeout, 10 s by
        // default), as `deploy::http_client` does: a POST sent on a pooled connection the
        // server is just closing fails, and cannot be retried.
        .pool_idle_timeout(Duration::from_secs(4))
        .connect_timeout(plan.request_timeout.min(Duration::from_secs(5)))
        .build()
        .context("building the load client")
}

/// Runs the schedule from `start` and returns when every request has finished.
pub async fn generate(plan: LoadPlan, state: Arc<LoadState>, start: Instant) -> Result<()> {
    let client = http_client(&plan)?;
    let urls: Arc<[String]> = plan.urls().into();
    let plan = Arc::new(plan);
    type Answer = (Duration, Duration, Outcome, Option<uuid::Uuid>);
    let (tx, mut rx) = mpsc::unbounded_channel::<Answer>();

    let collector = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(4096);
            while rx.recv_many(&mut batch, 4096).await > 0 {
                let mut stats = state.stats.lock().unwrap_or_else(|e| e.into_inner());
                let mut accepted = state.accepted.lock().unwrap_or_else(|e| e.into_inner());
                for (offset, latency, outcome, order) in batch.drain(..) {
                    stats.record(offset, latency, outcome);
                    accepted.extend(order);
                }
            }
        })
    };

    for (n, offset) in plan.schedule.intended_starts().enumerate() {
        if state.cancel.load(Ordering::Relaxed) {
            break;
        }
        let intended = start + offset;
        if intended > Instant::now() {
            tokio::time::sleep_until(intended).await;
        }
        let Ok(permit) = state.in_flight.clone().try_acquire_owned() else {
            let _ = tx.send((offset, Duration::ZERO, Outcome::Dropped, None));
            continue;
        };
        state.started.fetch_add(1, Ordering::Relaxed);
        let (client, plan, tx, urls) = (client.clone(), plan.clone(), tx.clone(), urls.clone());
        let state = state.clone();
        tokio::spawn(async move {
            let authorization = plan.authorizations[n % plan.authorizations.len()].clone();
            let body = plan.bodies[n % plan.bodies.len()].clone();
            let request = |url: &str| {
                client
                    .post(url)
                    .header(AUTHORIZATION, authorization.clone())
                    .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                    .body(body.clone())
                    .timeout(plan.request_timeout)
            };
            let mut outcome = send_once(request(&urls[n % urls.len()])).await;
            // Refused: the request never reached that replica, so another one may take it.
            if let (Err(_), true) = (&outcome, urls.len() > 1) {
                state.failovers.fetch_add(1, Ordering::Relaxed);
                outcome = send_once(request(&urls[(n + 1) % urls.len()])).await;
            }
            let (outcome, order) = outcome.unwrap_or((Outcome::ConnectError, None));
            let latency = intended.elapsed();
            drop(permit);
            let _ = tx.send((offset, latency, outcome, order));
        });
    }

    // Every request finished: all permits are back.
    let all = u32::try_from(state.max_in_flight).unwrap_or(u32::MAX);
    let _all_back = state
        .in_flight
        .acquire_many(all)
        .await
        .context("waiting for the requests in flight")?;
    drop(tx);
    collector.await.context("the stats collector panicked")?;
    Ok(())
}

/// Like [`send`], but a refused connection is `Err(())` (nothing reached the server); with a
/// 202, the accepted order's id.
async fn send_once(request: reqwest::RequestBuilder) -> Result<(Outcome, Option<uuid::Uuid>), ()> {
    match request.send().await {
        Err(e) if is_refused(&e) => Err(()),
        Ok(response) => {
            let status = response.status().as_u16();
            match response.bytes().await {
                Ok(body) => {
                    let order = (status == 202).then(|| accepted_id(&body)).flatten();
                    Ok((Outcome::Status(status), order))
                }
                Err(e) => Ok((classify(&e), None)),
            }
        }
        Err(e) => Ok((classify(&e), None)),
    }
}

/// The `id` of an accepted order's body (`{"id":"<uuid>",…}`): found by its key rather than by
/// parsing the whole document, which would cost the generator more than the request.
fn accepted_id(body: &[u8]) -> Option<uuid::Uuid> {
    const KEY: &[u8] = b"\"id\":\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let text = body.get(at..at + 36)?;
    uuid::Uuid::try_parse_ascii(text).ok()
}

/// A connect error caused by `ECONNREFUSED` (no process listens on that port).
fn is_refused(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}

fn classify(error: &reqwest::Error) -> Outcome {
    if error.is_timeout() {
        Outcome::Timeout
    } else if error.is_connect() {
        Outcome::ConnectError
    } else {
        Outcome::OtherError
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accepted_order_id_is_read_from_the_answer() {
        let id = uuid::Uuid::from_u128(0x1234);
        let body = format!(r#"{{"id":"{id}","user_id":1,"status":"PENDING"}}"#);
        assert_eq!(accepted_id(body.as_bytes()), Some(id));
        assert_eq!(accepted_id(br#"{"id":"not-a-uuid"}"#), None);
        assert_eq!(accepted_id(b"{}"), None);
    }
    use crate::plan::scenario::Stage;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A minimal HTTP/1.1 keep-alive server answering 202 to everything.
    async fn accept_all() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/orders", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 8192];
                    let mut pending = Vec::new();
                    loop {
                        let Ok(n) = socket.read(&mut buffer).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        pending.extend_from_slice(&buffer[..n]);
                        // Each request: headers, then a body of Content-Length bytes.
                        while let Some(end) = find(&pending, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if pending.len() < end + 4 + length {
                                break;
                            }
                            pending.drain(..end + 4 + length);
                            let reply = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}";
                            if socket.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, task)
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    fn plan(url: String, rate: f64, seconds: f64, max_in_flight: usize) -> LoadPlan {
        let schedule = Schedule::new(
            rate,
            &[Stage {
                duration: Duration::from_secs_f64(seconds),
                target: rate,
            }],
        );
        LoadPlan::new(
            schedule,
            url,
            &["a".into(), "b".into()],
            &[1],
            1,
            max_in_flight,
            Duration::from_secs(2),
        )
        .expect("plan")
    }

    #[tokio::test]
    async fn sends_every_scheduled_request_on_time() {
        let (url, server) = accept_all().await;
        let plan = plan(url, 200.0, 1.0, 100);
        let state = LoadState::new(&plan);
        let began = Instant::now();
        generate(plan, state.clone(), Instant::now())
            .await
            .expect("run");
        let elapsed = began.elapsed();
        let stats = state.stats_snapshot();
        assert_eq!(stats.counts_by_outcome().get("202"), Some(&200));
        assert_eq!(stats.dropped(), 0);
        assert_eq!(state.started.load(Ordering::Relaxed), 200);
        // Open model: the run lasts the schedule, not longer.
        assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
        server.abort();
    }

    #[tokio::test]
    async fn drops_requests_beyond_the_in_flight_cap() {
        // Nobody answers: connections hang until the request timeout, so the cap is reached.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/orders", listener.local_addr().expect("addr"));
        let mut plan = plan(url, 100.0, 0.5, 5);
        plan.request_timeout = Duration::from_millis(700);
        let state = LoadState::new(&plan);
        generate(plan, state.clone(), Instant::now())
            .await
            .expect("run");
        let stats = state.stats_snapshot();
        assert_eq!(stats.sent(), 5);
        assert_eq!(stats.dropped(), 45);
        assert_eq!(stats.counts_by_outcome().get("timeout"), Some(&5));
        drop(listener);
    }

    #[tokio::test]
    async fn refused_connections_fail_over_to_another_replica() {
        let (live, server) = accept_all().await;
        let dead_port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let dead = format!("http://127.0.0.1:{dead_port}/orders");
        let plan = plan(live.clone(), 40.0, 0.5, 10).with_urls(&[dead, live]);
        assert_eq!(plan.urls().len(), 2);
        let state = LoadState::new(&plan);
        generate(plan, state.clone(), Instant::now())
            .await
            .expect("run");
        let stats = state.stats_snapshot();
        // Every other request went to the dead replica first and was retried on the live one.
        assert_eq!(stats.counts_by_outcome().get("202"), Some(&20));
        assert_eq!(state.failovers.load(Ordering::Relaxed), 10);
        assert_eq!(stats.error_rate(), 0.0);
        server.abort();
    }

    #[tokio::test]
    async fn refused_connections_are_connect_errors() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let plan = plan(format!("http://127.0.0.1:{port}/orders"), 20.0, 0.5, 10);
        let state = LoadState::new(&plan);
        generate(plan, state.clone(), Instant::now())
            .await
            .expect("run");
        let stats = state.stats_snapshot();
        assert_eq!(stats.counts_by_outcome().get("connect_error"), Some(&10));
        assert_eq!(stats.error_rate(), 1.0);
    }
}
