//! `GET /ready`: whether this instance can do its job now, for a load balancer and for people.
//! It is `200` only when every background worker is running and keeping up (see
//! [`WorkerStatus::unhealthy`]: not running, down, failing, busy or stalled), the database
//! takes a *write* through the workers' pool (not just a `SELECT 1`: a read-only or full
//! database answers reads and refuses every order), and the broker connection is up.

use super::Problem;
use crate::db::errors as db_errors;
use crate::supervisor::{Unhealthy, WorkerStatus};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A verdict younger than this is reused: `/ready` polled many times a second (several load
/// balancers, a monitor) costs one probe a second, and a verdict never lags more than that.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// How long the probe may wait for a connection of the workers' pool: when all are in use, the
/// workers are using the database (a dead database fails them fast and frees them), so a busy
/// pool is no verdict and the last one stands (see [`DatabaseCheck::verdict`]).
const ACQUIRE_WAIT: Duration = Duration::from_millis(300);
/// How long the write itself may take before the database counts as not answering.
const WRITE_WAIT: Duration = Duration::from_secs(1);

/// What `/ready` checks.
#[derive(Clone)]
pub struct Readiness {
    database: Arc<DatabaseCheck>,
    nats: async_nats::Client,
    /// Each worker, and whether the supervisor runs it (false when tests drive it by hand: then
    /// only what it reports itself counts, not "not running").
    workers: Vec<(WorkerStatus, bool)>,
    stall_after: Duration,
}

impl Readiness {
    /// `workers_pool` is the pool the service's workers (intake writers, relay, consumers)
    /// write through: the one whose ability to write decides whether orders go anywhere.
    pub fn new(
        workers_pool: PgPool,
        nats: async_nats::Client,
        workers: Vec<(WorkerStatus, bool)>,
        stall_after: Duration,
    ) -> Self {
        Readiness {
            database: Arc::new(DatabaseCheck {
                pool: workers_pool,
                last: Mutex::new(None),
                stall_after,
            }),
            nats,
            workers,
            stall_after,
        }
    }
}

/// The database probe and its last verdict, with when it was reached.
struct DatabaseCheck {
    pool: PgPool,
    last: Mutex<Option<(Instant, Verdict)>>,
    stall_after: Duration,
}

#[derive(Debug, Clone)]
enum Verdict {
    Writable,
    NotWritable(&'static str),
}

impl DatabaseCheck {
    /// The cached verdict while fresh; else one probe (concurrent callers wait for it instead of
    /// probing too). A probe that finds every connection of the workers' pool busy keeps the
    /// last verdict — busy connections are working ones; a failing database errors them out —
    /// unless the pool has stayed busy for longer than `stall_after`.
    async fn verdict(&self) -> Verdict {
        let mut last = self.last.lock().await;
        if let Some((at, verdict)) = last.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return verdict.clone();
            }
        }
        let verdict = match tokio::time::timeout(ACQUIRE_WAIT, self.pool.acquire()).await {
            Err(_) | Ok(Err(sqlx::Error::PoolTimedOut)) => match last.as_ref() {
                Some((at, verdict)) if at.elapsed() < self.stall_after => {
                    // No new evidence: keep the verdict, keep its time (so this ends).
                    return verdict.clone();
                }
                _ => Verdict::NotWritable("no database connection of the workers free"),
            },
            Ok(Err(error)) => not_writable(&error),
            Ok(Ok(mut conn)) => {
                match tokio::time::timeout(WRITE_WAIT, crate::db::prove_writable(&mut conn)).await {
                    Ok(Ok(())) => Verdict::Writable,
                    Ok(Err(error)) => not_writable(&error),
                    Err(_) => {
                        // The connection is mid-statement: close it, never hand it out again.
                        drop(conn.detach());
                        Verdict::NotWritable("database did not take a write in time")
                    }
                }
            }
        };
        *last = Some((Instant::now(), verdict.clone()));
        verdict
    }
}

fn not_writable(error: &sqlx::Error) -> Verdict {
    tracing::warn!(%error, "readiness: the database does not take a write");
    if db_errors::is_unavailable(error) {
        Verdict::NotWritable(db_errors::unavailable_reason(error))
    } else {
        Verdict::NotWritable("database refuses writes")
    }
}

/// The `503` of `/ready`: RFC 9457 with the workers that are not healthy and why.
#[derive(Debug, Serialize)]
struct NotReady {
    #[serde(flatten)]
    problem: Problem,
    workers: Vec<Unhealthy>,
}

impl IntoResponse for NotReady {
    fn into_response(self) -> Response {
        let mut response = (self.problem.status(), Json(self)).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(5u32));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// `/ready` on the public listener (load balancers, anyone): each unhealthy worker with what is
/// wrong, never the error behind it — error texts name databases, servers and rows, and
/// internal error text is not sent to clients.
pub(crate) async fn ready(State(readiness): State<Readiness>) -> Response {
    answer(&readiness, false).await
}

/// `/ready` on the admin listener (operators, the load-test CLI's probe): the same verdict, with
/// the errors behind each reason.
pub(crate) async fn ready_in_detail(State(readiness): State<Readiness>) -> Response {
    answer(&readiness, true).await
}

async fn answer(readiness: &Readiness, detailed: bool) -> Response {
    let (workers, problems) = readiness.check(detailed).await;
    if problems.is_empty() {
        return Json(serde_json::json!({ "status": "ready" })).into_response();
    }
    NotReady {
        problem: Problem::unavailable(&problems.join("; ")),
        workers,
    }
    .into_response()
}

impl Readiness {
    /// The verdict `/ready` gives, as a yes or no: what `/metrics` reports as `service_ready`.
    pub(crate) async fn is_ready(&self) -> bool {
        self.check(false).await.1.is_empty()
    }

    /// The unhealthy workers (with the errors behind their reasons when `detailed`), and every
    /// problem in words: none when ready.
    async fn check(&self, detailed: bool) -> (Vec<Unhealthy>, Vec<String>) {
        let workers: Vec<Unhealthy> = self
            .workers
            .iter()
            .filter_map(|(w, supervised)| w.unhealthy(self.stall_after, *supervised))
            .map(|mut unhealthy| {
                if !detailed {
                    unhealthy.reason = std::mem::take(&mut unhealthy.summary);
                }
                unhealthy
            })
            .collect();
        let mut problems: Vec<String> = workers
            .iter()
            .map(|u| format!("{}: {}", u.worker, u.reason))
            .collect();
        // The database verdict is one of a few fixed texts (`db_errors::unavailable_reason`).
        if let Verdict::NotWritable(why) = self.database.verdict().await {
            problems.push(why.to_owned());
        }
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            problems.push("broker unreachable".to_owned());
        }
        (workers, problems)
    }
}
