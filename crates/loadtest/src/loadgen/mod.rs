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
//!
//! Every request carries an `Idempotency-Key` unique to the run (`answers.rs`), and is sent
//! again with the same key when answered `503` or `500 /problems/outcome-unknown`, after the
//! answer's `Retry-After`, as long as the request's timeout budget lasts: a retry can never
//! make a second order. Its final answer is recorded by key, for the audit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::plan::schedule::Schedule;
pub mod answers;
pub mod stats;

use answers::{FinalAnswer, RequestLog, RequestRecord};
use stats::{Outcome, RunStats};

/// Most times one request is sent again.
const MAX_RETRIES: u8 = 8;
/// The pause before sending again after an answer without `Retry-After`.
const DEFAULT_RETRY_PAUSE: Duration = Duration::from_millis(200);

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
    /// Request `n` carries `Idempotency-Key: <key_prefix><n>` (see `answers.rs`).
    pub key_prefix: String,
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
            key_prefix: answers::run_prefix(),
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
    /// Every request's final answer, by Idempotency-Key (for the `accepted orders` and
    /// `answered orders` checks).
    pub requests: Mutex<RequestLog>,
    /// Requests sent again after a `503` or an outcome-unknown answer.
    pub retries: AtomicU64,
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
            requests: Mutex::new(RequestLog::new(plan.key_prefix.clone())),
            retries: AtomicU64::new(0),
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
    type Answer = (Duration, Duration, Outcome, usize, RequestRecord);
    let (tx, mut rx) = mpsc::unbounded_channel::<Answer>();

    let collector = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(4096);
            while rx.recv_many(&mut batch, 4096).await > 0 {
                let mut stats = state.stats.lock().unwrap_or_else(|e| e.into_inner());
                let mut requests = state.requests.lock().unwrap_or_else(|e| e.into_inner());
                for (offset, latency, outcome, n, record) in batch.drain(..) {
                    stats.record(offset, latency, outcome);
                    requests.record(n, record);
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
            let dropped = RequestRecord {
                answer: FinalAnswer::Dropped,
                retries: 0,
            };
            let _ = tx.send((offset, Duration::ZERO, Outcome::Dropped, n, dropped));
            continue;
        };
        state.started.fetch_add(1, Ordering::Relaxed);
        let (client, plan, tx, urls) = (client.clone(), plan.clone(), tx.clone(), urls.clone());
        let state = state.clone();
        tokio::spawn(async move {
            let (outcome, record) = place(&client, &plan, &urls, &state, n).await;
            let latency = intended.elapsed();
            drop(permit);
            let _ = tx.send((offset, latency, outcome, n, record));
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

/// Sends request `n` with its key until it has a final answer or its timeout budget is spent.
async fn place(
    client: &reqwest::Client,
    plan: &LoadPlan,
    urls: &[String],
    state: &LoadState,
    n: usize,
) -> (Outcome, RequestRecord) {
    let authorization = plan.authorizations[n % plan.authorizations.len()].clone();
    let body = plan.bodies[n % plan.bodies.len()].clone();
    // One allocation for the key; the header shares it.
    let key = HeaderValue::from_maybe_shared(Bytes::from(RequestLog::key_of_request(
        &plan.key_prefix,
        n,
    )))
    .ok();
    let budget_end = Instant::now() + plan.request_timeout;
    let mut retries = 0u8;
    loop {
        let remaining = budget_end.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return (Outcome::Timeout, record(FinalAnswer::NoAnswer, retries));
        }
        let request = |url: &str| {
            let mut request = client
                .post(url)
                .header(AUTHORIZATION, authorization.clone())
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body.clone())
                .timeout(remaining);
            if let Some(key) = &key {
                request = request.header("idempotency-key", key.clone());
            }
            request
        };
        let mut reply = send_once(request(&urls[n % urls.len()])).await;
        // Refused: the request never reached that replica, so another one may take it.
        if let (Err(_), true) = (&reply, urls.len() > 1) {
            state.failovers.fetch_add(1, Ordering::Relaxed);
            reply = send_once(request(&urls[(n + 1) % urls.len()])).await;
        }
        let reply = reply.unwrap_or(Reply {
            outcome: Outcome::ConnectError,
            answer: FinalAnswer::NoAnswer,
            retry_after: None,
        });
        match reply.retry_after {
            Some(wait) if retries < MAX_RETRIES && Instant::now() + wait < budget_end => {
                retries += 1;
                state.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
            }
            _ => return (reply.outcome, record(reply.answer, retries)),
        }
    }
}

fn record(answer: FinalAnswer, retries: u8) -> RequestRecord {
    RequestRecord { answer, retries }
}

/// One answer: what the statistics count, what the audit holds the order to, and, for an
/// answer that invites the same request again (`503`, outcome unknown), after how long.
struct Reply {
    outcome: Outcome,
    answer: FinalAnswer,
    retry_after: Option<Duration>,
}

/// One attempt; a refused connection is `Err(())` (nothing reached the server).
async fn send_once(request: reqwest::RequestBuilder) -> Result<Reply, ()> {
    let response = match request.send().await {
        Err(e) if is_refused(&e) => return Err(()),
        Err(e) => return Ok(no_answer(&e)),
        Ok(response) => response,
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(e) => return Ok(no_answer(&e)),
    };
    let outcome_unknown = status == 500 && contains(&body, OUTCOME_UNKNOWN);
    let order = match status {
        202 => string_field(&body, b"\"id\":\""),
        500 if outcome_unknown => string_field(&body, b"\"order_id\":\""),
        _ => None,
    };
    let retry_after = match status {
        503 => Some(retry_after.unwrap_or(DEFAULT_RETRY_PAUSE)),
        500 if outcome_unknown => Some(retry_after.unwrap_or(DEFAULT_RETRY_PAUSE)),
        _ => None,
    };
    Ok(Reply {
        outcome: Outcome::Status(status),
        answer: answers::classify(status, outcome_unknown, order),
        retry_after,
    })
}

fn no_answer(error: &reqwest::Error) -> Reply {
    Reply {
        outcome: classify(error),
        answer: FinalAnswer::NoAnswer,
        retry_after: None,
    }
}

/// The problem type of a `500` whose order may or may not have been written.
const OUTCOME_UNKNOWN: &[u8] = b"/problems/outcome-unknown";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The UUID value of a top-level string field of a compact JSON body (`"id":"<uuid>"`), found
/// by its key rather than by parsing the whole document, which would cost the generator more
/// than the request.
fn string_field(body: &[u8], key: &[u8]) -> Option<uuid::Uuid> {
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
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
    fn the_order_id_is_read_from_the_answer() {
        let id = uuid::Uuid::from_u128(0x1234);
        let body = format!(r#"{{"id":"{id}","user_id":1,"status":"PENDING"}}"#);
        let key = b"\"id\":\"";
        assert_eq!(string_field(body.as_bytes(), key), Some(id));
        assert_eq!(string_field(br#"{"id":"not-a-uuid"}"#, key), None);
        assert_eq!(string_field(b"{}", key), None);
        let unknown = format!(
            r#"{{"type":"/problems/outcome-unknown","title":"t","status":500,"order_id":"{id}","order_url":"/orders/{id}"}}"#
        );
        assert!(contains(unknown.as_bytes(), OUTCOME_UNKNOWN));
        assert_eq!(string_field(unknown.as_bytes(), key), None);
        assert_eq!(
            string_field(unknown.as_bytes(), b"\"order_id\":\""),
            Some(id)
        );
    }
    use crate::plan::stage::Stage;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A minimal HTTP/1.1 keep-alive server answering 202 to everything.
    async fn accept_all() -> (String, tokio::task::JoinHandle<()>) {
        serve(Arc::new(|_: &str| {
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}".to_vec()
        }))
        .await
    }

    type Respond = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

    /// A minimal HTTP/1.1 keep-alive server answering each request with `respond(head)` (the
    /// head lower-cased).
    async fn serve(respond: Respond) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/orders", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let respond = respond.clone();
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
                            if socket.write_all(&respond(&head)).await.is_err() {
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

    /// A server that answers each key's first request `503` (or outcome unknown) and its
    /// second `202` with an order: every request ends accepted, once retried, with one key.
    #[tokio::test]
    async fn a_503_or_an_unknown_outcome_is_retried_with_the_same_key() {
        let seen: Arc<Mutex<std::collections::HashMap<String, u32>>> = Arc::default();
        let respond: Respond = {
            let seen = seen.clone();
            Arc::new(move |head: &str| {
                let key = head
                    .lines()
                    .find_map(|l| l.strip_prefix("idempotency-key:"))
                    .map(|k| k.trim().to_owned())
                    .unwrap_or_default();
                let attempts = {
                    let mut seen = seen.lock().unwrap();
                    let n = seen.entry(key.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes());
                let (status, extra, body) = match (
                    attempts,
                    key.ends_with(['1', '3', '5', '7', '9']),
                ) {
                    (1, false) => (
                        "503 Service Unavailable",
                        "retry-after: 0\r\n",
                        r#"{"type":"/problems/unavailable","status":503}"#.to_owned(),
                    ),
                    (1, true) => (
                        "500 Internal Server Error",
                        "",
                        format!(
                            r#"{{"type":"/problems/outcome-unknown","status":500,"order_id":"{id}","order_url":"/orders/{id}"}}"#
                        ),
                    ),
                    _ => ("202 Accepted", "", format!(r#"{{"id":"{id}"}}"#)),
                };
                format!(
                    "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            })
        };
        let (url, server) = serve(respond).await;
        let plan = plan(url, 40.0, 0.5, 20);
        let prefix = plan.key_prefix.clone();
        let state = LoadState::new(&plan);
        generate(plan, state.clone(), Instant::now())
            .await
            .expect("run");
        let stats = state.stats_snapshot();
        assert_eq!(stats.counts_by_outcome().get("202"), Some(&20));
        assert_eq!(state.retries.load(Ordering::Relaxed), 20);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 20, "one key per request: {seen:?}");
        assert!(
            seen.values().all(|n| *n == 2),
            "each key sent twice: {seen:?}"
        );
        let requests = state.requests.lock().unwrap();
        for n in 0..20 {
            let key = RequestLog::key_of_request(&prefix, n);
            let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.to_lowercase().as_bytes());
            assert_eq!(
                requests.lookup(&key),
                Some(&RequestRecord {
                    answer: FinalAnswer::Accepted(id),
                    retries: 1
                }),
                "{key}"
            );
        }
        server.abort();
    }
}
