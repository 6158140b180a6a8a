//! The supervisor's unit tests: rounds, retries, restarts and the health they report.

use super::*;
use std::sync::atomic::{AtomicU32, Ordering};

struct Flaky {
    status: WorkerStatus,
    rounds: AtomicU32,
}

impl Worker for Flaky {
    fn status(&self) -> &WorkerStatus {
        &self.status
    }

    fn round(&self) -> BoxFuture<'_, Result<Round, WorkerError>> {
        Box::pin(async move {
            match self.rounds.fetch_add(1, Ordering::SeqCst) {
                0 => panic!("first round panics"),
                1 => Err("second round fails".into()),
                2 => {
                    // The third hangs inside one unit of work.
                    let _busy = self.status.busy();
                    std::future::pending::<()>().await;
                    Ok(Round::default())
                }
                _ => {
                    self.status.progress();
                    Ok(Round::default())
                }
            }
        })
    }

    fn idle(&self) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(Duration::from_secs(1)))
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_is_restarted_after_a_panic_and_a_hang_and_retries_a_failed_round() {
    let worker = Arc::new(Flaky {
        status: WorkerStatus::new("flaky"),
        rounds: AtomicU32::new(0),
    });
    let mut supervisor = Supervisor::new(RestartPolicy {
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        hang_after: Duration::from_secs(5),
    });
    supervisor.spawn(worker.clone());
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Rounds 4.. go on, one a second after their idle wait.
    assert!(worker.rounds.load(Ordering::SeqCst) > 10);
    assert_eq!(worker.status.restarts(), 2, "the panic and the hang");
    assert_eq!(worker.status.unhealthy(Duration::from_secs(10), true), None);
    supervisor.shutdown().await;
    let rounds = worker.rounds.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(worker.rounds.load(Ordering::SeqCst), rounds, "stopped");
    assert!(
        worker
            .status
            .unhealthy(Duration::from_secs(10), true)
            .is_some(),
        "not running"
    );
}

/// A round that is under way when shutdown is asked for runs to its end.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_round_in_progress() {
    struct Slow {
        status: WorkerStatus,
        finished: AtomicU32,
    }
    impl Worker for Slow {
        fn status(&self) -> &WorkerStatus {
            &self.status
        }
        fn round(&self) -> BoxFuture<'_, Result<Round, WorkerError>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                self.finished.fetch_add(1, Ordering::SeqCst);
                Ok(Round {
                    done: 1,
                    more: true,
                })
            })
        }
        fn idle(&self) -> BoxFuture<'_, ()> {
            Box::pin(std::future::pending())
        }
    }
    let worker = Arc::new(Slow {
        status: WorkerStatus::new("slow"),
        finished: AtomicU32::new(0),
    });
    let mut supervisor = Supervisor::new(RestartPolicy {
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        hang_after: Duration::from_secs(60),
    });
    supervisor.spawn(worker.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = Instant::now();
    supervisor.shutdown().await;
    assert_eq!(
        worker.finished.load(Ordering::SeqCst),
        2,
        "the second round ran to its end"
    );
    assert_eq!(Instant::now() - before, Duration::from_secs(2));
}

#[tokio::test]
async fn driving_runs_rounds_until_one_finds_nothing() {
    struct Queue {
        status: WorkerStatus,
        waiting: AtomicU32,
    }
    impl Worker for Queue {
        fn status(&self) -> &WorkerStatus {
            &self.status
        }
        fn round(&self) -> BoxFuture<'_, Result<Round, WorkerError>> {
            Box::pin(async move {
                let waiting = self.waiting.load(Ordering::SeqCst) as usize;
                let done = waiting.min(2);
                self.waiting.fetch_sub(done as u32, Ordering::SeqCst);
                Ok(Round::of(done, 2))
            })
        }
        fn idle(&self) -> BoxFuture<'_, ()> {
            Box::pin(std::future::pending())
        }
    }
    let queue = Queue {
        status: WorkerStatus::new("queue"),
        waiting: AtomicU32::new(5),
    };
    assert_eq!(run_until_idle(&queue).await.unwrap(), 5);
    assert_eq!(run_until_idle(&queue).await.unwrap(), 0);
}

#[test]
fn health_tells_why_a_worker_is_not_ready() {
    let status = WorkerStatus::new("w");
    let stall = Duration::from_secs(10);
    assert!(status
        .unhealthy(stall, true)
        .unwrap()
        .reason
        .contains("not running"));
    assert_eq!(status.unhealthy(stall, false), None, "driven by hand");
    status.started();
    assert_eq!(status.unhealthy(stall, true), None);
    status.stopped("boom".into());
    let why = status.unhealthy(stall, true).unwrap();
    assert_eq!(why.worker, "w");
    assert!(why.reason.contains("boom"), "{}", why.reason);
}

#[tokio::test(start_paused = true)]
async fn waiting_work_without_progress_is_a_stall() {
    let status = WorkerStatus::new("w");
    status.started();
    status.set_backlog(5);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(status.unhealthy(Duration::from_secs(10), true), None);
    tokio::time::advance(Duration::from_secs(6)).await;
    let why = status.unhealthy(Duration::from_secs(10), true).unwrap();
    assert!(why.reason.contains("5 waiting"), "{}", why.reason);
    status.progress();
    assert_eq!(status.unhealthy(Duration::from_secs(10), true), None);
    status.report_down("consumer deleted");
    assert_eq!(
        status
            .unhealthy(Duration::from_secs(10), false)
            .unwrap()
            .reason,
        "consumer deleted"
    );
    status.report_up();
    let busy = status.busy();
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(status
        .unhealthy(Duration::from_secs(10), true)
        .unwrap()
        .reason
        .contains("busy"));
    drop(busy);
    status.set_backlog(0);
    assert_eq!(status.unhealthy(Duration::from_secs(10), true), None);
}

#[tokio::test(start_paused = true)]
async fn rounds_that_keep_failing_are_unhealthy_even_with_nothing_waiting() {
    let status = WorkerStatus::new("redrive");
    let stall = Duration::from_secs(10);
    status.started();
    status.report_error("cannot execute UPDATE in a read-only transaction");
    assert!(status.is_failing());
    tokio::time::advance(Duration::from_secs(5)).await;
    status.report_error("still read-only");
    assert_eq!(status.unhealthy(stall, true), None, "not for long yet");
    tokio::time::advance(Duration::from_secs(6)).await;
    let why = status.unhealthy(stall, true).expect("failing for 11 s");
    assert_eq!(why.worker, "redrive");
    assert!(why.reason.starts_with("failing for 11 s"), "{}", why.reason);
    assert!(why.reason.contains("still read-only"), "{}", why.reason);
    // Busy with the next try changes nothing.
    let busy = status.busy();
    assert!(status.unhealthy(stall, true).is_some());
    drop(busy);
    // Driven by hand (not supervised), failing rounds count the same.
    assert!(status.unhealthy(stall, false).is_some());
    status.progress();
    assert!(!status.is_failing());
    assert_eq!(status.unhealthy(stall, true), None);
    // A failure after progress starts the clock again.
    status.report_error("once");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(status.unhealthy(stall, true), None);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_keeps_dying_at_start_is_failing_while_it_runs() {
    let status = WorkerStatus::new("w");
    let stall = Duration::from_secs(10);
    // Lives of 3 s each, dying at 3, 6, 9, 12 and 15 s: failing since the first death.
    for _ in 0..5 {
        status.started();
        tokio::time::advance(Duration::from_secs(3)).await;
        status.stopped("cannot reach the broker".into());
    }
    status.started();
    let why = status.unhealthy(stall, true).expect("failing for 12 s");
    assert!(why.reason.starts_with("failing for 12 s"), "{}", why.reason);
    status.progress();
    assert_eq!(status.unhealthy(stall, true), None);
}

#[test]
fn panic_messages_are_read_from_both_payload_kinds() {
    let text = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
    assert_eq!(panic_message(text.as_ref()), "plain");
    let formatted = std::panic::catch_unwind(|| panic!("n = {}", 3)).unwrap_err();
    assert_eq!(panic_message(formatted.as_ref()), "n = 3");
}
