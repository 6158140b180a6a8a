//! Round pacing for the workers that move events (outbox relays, consumers).
//!
//! A worker's cost is per round — a fetch, a transaction, a publish, an ack, the wake-ups of
//! every process on the way — far more than per event. Left alone, a worker runs a round for
//! every event that arrives, so at a steady 100 events/s it pays for 100 rounds. A paced worker
//! starts its rounds at least `interval` apart: the first event after a quiet spell goes at once,
//! the events of a steady stream wait for the next round (on average half an interval) and share
//! it. Rounds per second are bounded by the interval whatever the rate, so the cost per event
//! falls as the rate rises; a round that comes back full is followed at once (the caller skips
//! the wait), so pacing never caps a worker that has a backlog.

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct RoundPacer {
    interval: Duration,
    last_start: Option<Instant>,
}

impl RoundPacer {
    pub fn new(interval: Duration) -> Self {
        RoundPacer {
            interval,
            last_start: None,
        }
    }

    /// Waits until the interval since the previous round's start has passed, and counts a new
    /// round as started now.
    pub async fn start_round(&mut self) {
        if let Some(due) = self.next_due(Instant::now()) {
            tokio::time::sleep_until(due).await;
        }
        self.last_start = Some(Instant::now());
    }

    /// Counts a round as started now without waiting (a round that follows a full one).
    pub fn start_round_now(&mut self) {
        self.last_start = Some(Instant::now());
    }

    /// When the next round may start, if that is later than `now`.
    fn next_due(&self, now: Instant) -> Option<Instant> {
        let due = self.last_start? + self.interval;
        (due > now).then_some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_round_and_a_round_after_a_quiet_spell_start_at_once() {
        let mut pacer = RoundPacer::new(Duration::from_millis(20));
        let before = Instant::now();
        pacer.start_round().await;
        assert_eq!(Instant::now(), before);
        tokio::time::advance(Duration::from_millis(50)).await;
        let quiet = Instant::now();
        pacer.start_round().await;
        assert_eq!(Instant::now(), quiet);
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_in_a_steady_stream_start_one_interval_apart() {
        let mut pacer = RoundPacer::new(Duration::from_millis(20));
        pacer.start_round().await;
        let first = Instant::now();
        // The round itself took 3 ms; the next waits out the remaining 17.
        tokio::time::advance(Duration::from_millis(3)).await;
        pacer.start_round().await;
        assert_eq!(Instant::now() - first, Duration::from_millis(20));
        // A round longer than the interval is followed at once.
        tokio::time::advance(Duration::from_millis(25)).await;
        let late = Instant::now();
        pacer.start_round().await;
        assert_eq!(Instant::now(), late);
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_started_at_once_after_a_full_one_paces_the_next() {
        let mut pacer = RoundPacer::new(Duration::from_millis(20));
        pacer.start_round().await;
        tokio::time::advance(Duration::from_millis(5)).await;
        // The round came back full: the next starts now, and the one after it is paced from here.
        pacer.start_round_now();
        let started = Instant::now();
        pacer.start_round().await;
        assert_eq!(Instant::now() - started, Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_interval_never_waits() {
        let mut pacer = RoundPacer::new(Duration::ZERO);
        let before = Instant::now();
        for _ in 0..3 {
            pacer.start_round().await;
        }
        assert_eq!(Instant::now(), before);
    }
}
