//! The `slow-clients` fault: thousands of connections from one buyer's token, each sending a
//! `POST /orders` head that announces a 16 KiB body and then trickling the body a byte every
//! few seconds, never finishing it; a connection the server closes is opened again. While it
//! runs, the load's own buyers must keep the scenario's latency threshold
//! ([`judge_window`]): a slow client may hold its own connection, never the door.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::context::{FaultContext, InjectedFault};
use crate::loadgen::stats::RunStats;

/// The buyer the slow clients act as: outside any scenario's users (1..=users).
pub const SLOW_BUYER: i64 = 999_999;
/// The body length the head announces.
const BODY_LENGTH: usize = 16 * 1024;
/// A byte of body this often: slower than any sane client, faster than a per-read timeout.
const TRICKLE_EVERY: Duration = Duration::from_secs(3);
/// A closed or refused connection is opened again after this (a reconnect storm would be a
/// flood, another fault).
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// The first connections are spread over this long.
const OPEN_OVER: Duration = Duration::from_secs(2);
/// How long a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the slow clients saw, over all their connections.
#[derive(Debug, Default)]
struct Tally {
    opened: AtomicU64,
    open_now: AtomicU64,
    most_open: AtomicU64,
    /// Connects that failed (refused, timed out, out of descriptors).
    refused: AtomicU64,
    /// Connections the server answered (before the body was complete), by status.
    answered: Mutex<BTreeMap<String, u64>>,
    /// Connections the server closed without an answer.
    closed_silently: AtomicU64,
    /// Connections reset (a read or write failed).
    reset: AtomicU64,
    bytes_trickled: AtomicU64,
}

impl Tally {
    fn answered(&self, status: String) {
        *self
            .answered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status)
            .or_insert(0) += 1;
    }
}

/// The status of an HTTP/1.1 answer's first line (`HTTP/1.1 408 Request Timeout` → `408`).
fn status_of(answer: &[u8]) -> String {
    let line = String::from_utf8_lossy(answer);
    line.split_whitespace()
        .nth(1)
        .filter(|s| s.len() == 3 && s.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or("unparsable answer")
        .to_string()
}

/// The running slow clients.
pub struct SlowClients {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    tally: Arc<Tally>,
    connections: u32,
    targets: Vec<String>,
}

impl SlowClients {
    /// Opens `connections` slow connections, spread over the `instances`' public listeners.
    pub fn start(
        context: &FaultContext,
        instances: &[String],
        connections: u32,
    ) -> Result<SlowClients> {
        let token = platform::auth::TokenKeys::with_secret(&context.credentials.jwt_secret)
            .mint(SLOW_BUYER, Duration::from_secs(3600))
            .context("signing the slow buyer's token")?;
        let targets: Vec<(String, String)> = instances
            .iter()
            .map(|name| {
                let spec = context
                    .specs
                    .iter()
                    .find(|s| &s.name == name)
                    .with_context(|| format!("no start specification for {name}"))?;
                let address = format!("{}:{}", spec.host, spec.port);
                let head = format!(
                    "POST /orders HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
                     Content-Type: application/json\r\nContent-Length: {BODY_LENGTH}\r\n\r\n"
                );
                Ok((address, head))
            })
            .collect::<Result<_>>()?;
        let (stop, stopped) = watch::channel(false);
        let tally = Arc::new(Tally::default());
        let tasks = (0..connections as usize)
            .map(|n| {
                let (address, head) = targets[n % targets.len()].clone();
                let delay = OPEN_OVER.mul_f64(n as f64 / f64::from(connections.max(1)));
                tokio::spawn(slow_client(
                    address,
                    head,
                    delay,
                    tally.clone(),
                    stopped.clone(),
                ))
            })
            .collect();
        Ok(SlowClients {
            stop,
            tasks,
            tally,
            connections,
            targets: targets.into_iter().map(|(address, _)| address).collect(),
        })
    }

    /// Closes every connection and says what the server did with them.
    pub async fn stop(mut self) -> String {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        let t = &self.tally;
        let answered = t.answered.lock().unwrap_or_else(|e| e.into_inner());
        let answers: Vec<String> = answered.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        format!(
            "stopped {} slow clients of buyer {SLOW_BUYER} on {}: {} connections opened (at most {} open at once), {} connects failed; the server answered {} before the body was complete ({}), closed {} without an answer, {} were reset; {} body bytes trickled",
            self.connections,
            self.targets.join(", "),
            t.opened.load(Ordering::Relaxed),
            t.most_open.load(Ordering::Relaxed),
            t.refused.load(Ordering::Relaxed),
            answered.values().sum::<u64>(),
            if answers.is_empty() { "none".to_string() } else { answers.join(", ") },
            t.closed_silently.load(Ordering::Relaxed),
            t.reset.load(Ordering::Relaxed),
            t.bytes_trickled.load(Ordering::Relaxed),
        )
    }
}

impl Drop for SlowClients {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One slow client: connect, send the head, trickle the body until the server answers or
/// closes (then open again) or the fault ends.
async fn slow_client(
    address: String,
    head: String,
    delay: Duration,
    tally: Arc<Tally>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut wait = delay;
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = REOPEN_AFTER;
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&address)).await;
        let Ok(Ok(mut stream)) = connected else {
            tally.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tally.opened.fetch_add(1, Ordering::Relaxed);
        let open = tally.open_now.fetch_add(1, Ordering::Relaxed) + 1;
        tally.most_open.fetch_max(open, Ordering::Relaxed);
        let ended = hold(&mut stream, &head, &tally, &mut stopped).await;
        tally.open_now.fetch_sub(1, Ordering::Relaxed);
        if ended {
            return;
        }
    }
}

/// Holds one connection; true when the fault ended (false: the server let go of it).
async fn hold(
    stream: &mut TcpStream,
    head: &str,
    tally: &Tally,
    stopped: &mut watch::Receiver<bool>,
) -> bool {
    if stream.write_all(head.as_bytes()).await.is_err() {
        tally.reset.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    let mut sent = 0;
    let mut answer = [0u8; 64];
    loop {
        tokio::select! {
            _ = stopped.changed() => return true,
            read = stream.read(&mut answer) => {
                match read {
                    Ok(0) => { tally.closed_silently.fetch_add(1, Ordering::Relaxed); }
                    Ok(n) => tally.answered(status_of(&answer[..n])),
                    Err(_) => { tally.reset.fetch_add(1, Ordering::Relaxed); }
                }
                return false;
            }
            _ = tokio::time::sleep(TRICKLE_EVERY) => {
                // Never the last byte: the body stays incomplete.
                if sent + 1 < BODY_LENGTH {
                    if stream.write_all(b" ").await.is_err() {
                        tally.reset.fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                    sent += 1;
                    tally.bytes_trickled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// What the load got, and the scenario's limits for it: faults that must not cost the load's
/// own buyers anything (`slow-clients`) are judged by the requests in their window.
pub struct LoadFigures<'a> {
    pub stats: &'a RunStats,
    pub p95_threshold_ms: f64,
    pub max_error_rate: f64,
}

/// What the load's own buyers got while a fault lasted, judged against the scenario's
/// thresholds: a note for the fault's record and, when a threshold was broken (or no load ran
/// in the window, so nothing was shown), the problem.
pub fn judge_window(
    fault: &InjectedFault,
    stats: &RunStats,
    p95_threshold_ms: f64,
    max_error_rate: f64,
) -> (String, Option<String>) {
    let from = fault.injected_s.floor().max(0.0) as u64;
    let until = fault
        .lifted_s
        .unwrap_or(fault.injected_s + fault.planned_duration_s);
    let window = stats.window(from..until.ceil().max(0.0) as u64);
    let figures = format!(
        "the load's own buyers during the fault ({from}–{:.0} s): {} requests, HTTP p95 {:.1} ms, p99 {:.1} ms (threshold p95 {p95_threshold_ms:.0} ms), {} errors",
        until.ceil(),
        window.sent,
        window.latency.p95_ms,
        window.latency.p99_ms,
        window.errors
    );
    let error_rate = window.errors as f64 / window.sent.max(1) as f64;
    let problem = if window.sent == 0 {
        Some("no load ran while the slow clients held their connections".to_string())
    } else if window.latency.p95_ms > p95_threshold_ms {
        Some(format!(
            "the load's HTTP p95 during the fault was {:.1} ms, above the {p95_threshold_ms:.0} ms threshold",
            window.latency.p95_ms
        ))
    } else if error_rate > max_error_rate {
        Some(format!(
            "{} of the load's {} requests during the fault failed ({:.2} %, more than the {:.2} % allowed)",
            window.errors,
            window.sent,
            error_rate * 100.0,
            max_error_rate * 100.0
        ))
    } else {
        None
    };
    (figures, problem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::stats::Outcome;
    use crate::plan::fault_kind::FaultKind;

    fn fault(injected_s: f64, lifted_s: Option<f64>) -> InjectedFault {
        InjectedFault {
            kind: FaultKind::SlowClients,
            target: "order".into(),
            planned_at_s: injected_s,
            planned_duration_s: 10.0,
            injected_s,
            lifted_s,
            actions: Vec::new(),
            error: None,
            failovers: 0,
        }
    }

    fn stats(per_second: &[(u64, u64, Outcome)]) -> RunStats {
        let mut stats = RunStats::new(60);
        for &(second, ms, outcome) in per_second {
            stats.record(
                Duration::from_secs(second),
                Duration::from_millis(ms),
                outcome,
            );
        }
        stats
    }

    #[test]
    fn the_window_is_judged_by_the_requests_that_started_in_it() {
        let ok = Outcome::Status(202);
        // Slow answers outside the window (seconds 5 and 30) do not count against it.
        let mut samples: Vec<(u64, u64, Outcome)> = (20..30).map(|s| (s, 40, ok)).collect();
        samples.extend([(5, 9_000, ok), (30, 9_000, ok)]);
        let (note, problem) = judge_window(&fault(20.2, Some(29.8)), &stats(&samples), 2000.0, 0.0);
        assert_eq!(problem, None, "{note}");
        assert!(note.contains("10 requests"), "{note}");

        samples.push((25, 5_000, ok));
        samples.push((26, 5_000, ok));
        let (_, problem) = judge_window(&fault(20.2, Some(29.8)), &stats(&samples), 2000.0, 0.0);
        assert!(problem
            .expect("too slow")
            .contains("above the 2000 ms threshold"));
    }

    #[test]
    fn failures_without_latency_and_an_empty_window_fail_too() {
        // Refused connections have no latency: a p95 alone would look fine.
        let samples: Vec<(u64, u64, Outcome)> = (20..30)
            .map(|s| (s, 40, Outcome::Status(202)))
            .chain([(22, 0, Outcome::ConnectError)])
            .collect();
        let (_, problem) = judge_window(&fault(20.0, Some(30.0)), &stats(&samples), 2000.0, 0.0);
        assert!(problem
            .expect("an error")
            .contains("1 of the load's 11 requests"));
        let (_, problem) = judge_window(&fault(20.0, Some(30.0)), &stats(&samples), 2000.0, 0.1);
        assert_eq!(problem, None);

        let (_, problem) = judge_window(&fault(45.0, None), &stats(&samples), 2000.0, 0.0);
        assert!(problem.expect("no load").contains("no load ran"));
    }

    #[test]
    fn an_answer_line_gives_its_status() {
        assert_eq!(status_of(b"HTTP/1.1 408 Request Timeout\r\n"), "408");
        assert_eq!(status_of(b"HTTP/1.1 429 Too Many"), "429");
        assert_eq!(status_of(b"garbage"), "unparsable answer");
    }
}
