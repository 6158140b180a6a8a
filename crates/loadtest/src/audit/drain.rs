//! After the load: wait until the system is quiet — every order final, every outbox empty, every
//! JetStream consumer of the run's streams caught up — or until the timeout.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::observe::database::Scope;
use crate::observe::{SystemProbe, SystemState};

/// How often the drain polls.
const POLL: Duration = Duration::from_millis(500);
/// Quiet polls needed in a row: one quiet poll can miss work handed from a consumer to an
/// outbox between the database read and the broker read.
const QUIET_POLLS: u32 = 2;

/// How the drain ended.
#[derive(Debug, Clone)]
pub struct DrainOutcome {
    pub drained: bool,
    pub elapsed: Duration,
    pub status: SystemState,
}

impl DrainOutcome {
    /// One line for the "drained" check.
    pub fn detail(&self, timeout: Duration) -> String {
        let mut text = if self.drained {
            format!(
                "quiet after {:.1} s (timeout {:.0} s)",
                self.elapsed.as_secs_f64(),
                timeout.as_secs_f64()
            )
        } else {
            format!("not quiet after the {:.0} s timeout", timeout.as_secs_f64())
        };
        if let Some(p) = &self.status.progress {
            text.push_str(&format!(
                ": {} orders non-final, {} outbox rows",
                p.non_final_orders, p.outbox_backlog
            ));
        }
        if let Some(b) = &self.status.backlog {
            text.push_str(&format!(
                ", {} consumers on {} streams with {} pending and {} unacknowledged",
                b.consumers, b.streams, b.pending, b.ack_pending
            ));
        }
        if let (false, Some(error)) = (self.drained, &self.status.error) {
            text.push_str(&format!(" (last error: {error})"));
        }
        text
    }
}

/// Polls until quiet ([`QUIET_POLLS`] quiet polls in a row) or `timeout`; `status` is updated
/// after each poll.
pub async fn drain(
    probe: &SystemProbe,
    timeout: Duration,
    status: &Mutex<SystemState>,
) -> DrainOutcome {
    let began = Instant::now();
    let deadline = began + timeout;
    let mut quiet = 0;
    loop {
        let current = probe.state(Scope::AllOrders).await;
        quiet = if current.is_quiet() { quiet + 1 } else { 0 };
        *status.lock().unwrap_or_else(|e| e.into_inner()) = current.clone();
        if quiet >= QUIET_POLLS || Instant::now() + POLL > deadline {
            return DrainOutcome {
                drained: quiet >= QUIET_POLLS,
                elapsed: began.elapsed(),
                status: current,
            };
        }
        tokio::time::sleep(POLL).await;
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::broker::ConsumerBacklog;
    use crate::observe::database::Progress;

    #[test]
    fn detail_names_the_numbers() {
        let outcome = DrainOutcome {
            drained: false,
            elapsed: Duration::from_secs(120),
            status: SystemState {
                progress: Some(Progress {
                    non_final_orders: 3,
                    outbox_backlog: 1,
                    ..Progress::default()
                }),
                backlog: Some(ConsumerBacklog {
                    streams: 3,
                    consumers: 4,
                    pending: 2,
                    ack_pending: 0,
                }),
                error: None,
            },
        };
        let text = outcome.detail(Duration::from_secs(120));
        assert!(text.contains("not quiet"), "{text}");
        assert!(text.contains("3 orders non-final, 1 outbox rows"), "{text}");
        assert!(text.contains("2 pending"), "{text}");
    }
}
