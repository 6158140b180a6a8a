//! The measurement side: what happened to each scheduled request, and latency percentiles.
//!
//! Latency is always measured from the request's *intended* start (see `schedule`), so time a
//! request spent waiting for a free worker or a slow server counts against the system.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies above this are clamped to it; a minute is far past any request timeout we use.
const HIGHEST_TRACKABLE_MICROS: u64 = 60_000_000;
/// The whole-run histogram: 0.1 % resolution.
const RUN_SIGNIFICANT_FIGURES: u8 = 3;
/// Per-second histograms: 1 % resolution is plenty for charts and keeps a 300-bucket run at
/// about 6 MB instead of about 40 MB.
const SECOND_SIGNIFICANT_FIGURES: u8 = 2;

fn latency_histogram(significant_figures: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_TRACKABLE_MICROS, significant_figures)
        .expect("constant histogram bounds are valid")
}

/// Adds `source` into `target`; never fails because values are clamped to `target`'s range.
fn add_histogram(target: &mut Histogram<u64>, source: &Histogram<u64>) {
    for value in source.iter_recorded() {
        target.saturating_record_n(value.value_iterated_to(), value.count_at_value());
    }
}

fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)
}

/// What became of one scheduled request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The server answered with this HTTP status.
    Status(u16),
    /// No answer within the request timeout.
    Timeout,
    /// The connection could not be made.
    ConnectError,
    /// Any other transport failure.
    OtherError,
    /// Never sent: no worker was free at its intended start (k6's `dropped_iterations`).
    Dropped,
}

impl Outcome {
    /// The key used in reports: `"202"`, `"timeout"`, `"connect_error"`, `"other_error"`, `"dropped"`.
    pub fn key(&self) -> String {
        match self {
            Outcome::Status(code) => code.to_string(),
            Outcome::Timeout => "timeout".into(),
            Outcome::ConnectError => "connect_error".into(),
            Outcome::OtherError => "other_error".into(),
            Outcome::Dropped => "dropped".into(),
        }
    }

    /// A server failure, a transport failure, or a `429` (the order service's fair-use limit
    /// refused the order: under a load test's honest buyers that is the system failing the
    /// load, never an answer by design). Other 4xx are answers by design; a dropped request
    /// was never sent, so it is counted separately.
    pub fn is_error(&self) -> bool {
        match self {
            Outcome::Status(code) => *code >= 500 || *code == 429,
            Outcome::Timeout | Outcome::ConnectError | Outcome::OtherError => true,
            Outcome::Dropped => false,
        }
    }

    /// Whether the elapsed time means something: an answer, or the full wait of a timeout.
    /// A refused connection fails in microseconds and would flatter the percentiles.
    fn has_latency(&self) -> bool {
        matches!(self, Outcome::Status(_) | Outcome::Timeout)
    }
}

/// Latency percentiles, all in milliseconds; zeros when `count` is 0.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// From a histogram of microsecond values.
    pub fn from_histogram_micros(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        LatencySummary {
            count: histogram.len(),
            min_ms: ms(histogram.min()),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p95_ms: ms(histogram.value_at_quantile(0.95)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Exact percentiles over a list of values (e.g. end-to-end latencies from DB timestamps).
///
/// Uses the nearest-rank definition, like HdrHistogram: the q-quantile is the smallest value
/// with at least q of the samples at or below it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Percentiles {
    sorted_ms: Vec<f64>,
}

impl Percentiles {
    /// Non-finite values are ignored: they are measurement bugs, not latencies.
    pub fn from_millis(values: impl IntoIterator<Item = f64>) -> Percentiles {
        let mut sorted_ms: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        sorted_ms.sort_by(f64::total_cmp);
        Percentiles { sorted_ms }
    }

    pub fn from_durations(values: impl IntoIterator<Item = Duration>) -> Percentiles {
        Self::from_millis(values.into_iter().map(|d| d.as_secs_f64() * 1000.0))
    }

    pub fn len(&self) -> usize {
        self.sorted_ms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted_ms.is_empty()
    }

    /// The nearest-rank quantile, `q` in 0..=1; `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.sorted_ms.len();
        if count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * count as f64).ceil() as usize;
        self.sorted_ms.get(rank.clamp(1, count) - 1).copied()
    }

    pub fn summary(&self) -> LatencySummary {
        let (Some(&min_ms), Some(&max_ms)) = (self.sorted_ms.first(), self.sorted_ms.last()) else {
            return LatencySummary::default();
        };
        let at = |q| self.quantile(q).unwrap_or_default();
        LatencySummary {
            count: self.sorted_ms.len() as u64,
            min_ms,
            mean_ms: self.sorted_ms.iter().sum::<f64>() / self.sorted_ms.len() as f64,
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms,
        }
    }
}

pub fn latency_summary_from_millis(values: impl IntoIterator<Item = f64>) -> LatencySummary {
    Percentiles::from_millis(values).summary()
}

/// Groups `(second, ms)` samples by second and summarises each; seconds without samples are
/// left out. Sorted by second.
pub fn per_second_percentiles(
    samples: impl IntoIterator<Item = (u64, f64)>,
) -> Vec<(u64, LatencySummary)> {
    let mut by_second: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for (second, ms) in samples {
        by_second.entry(second).or_default().push(ms);
    }
    by_second
        .into_iter()
        .map(|(second, values)| (second, latency_summary_from_millis(values)))
        .collect()
}

/// One second of the run, by intended start time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondBucket {
    pub second: u64,
    /// Requests sent (not dropped).
    pub started: u64,
    /// Requests answered with a status that is not an error (see [`Outcome::is_error`]).
    pub completed_ok: u64,
    /// 5xx and 429 answers, timeouts, connect and other transport errors.
    pub errors: u64,
    pub dropped: u64,
    /// `None` when nothing in this second has a latency.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Default)]
struct SecondStats {
    started: u64,
    completed_ok: u64,
    errors: u64,
    dropped: u64,
    /// Created on first use, so idle seconds cost nothing.
    latency: Option<Histogram<u64>>,
}

impl SecondStats {
    fn latency_mut(&mut self) -> &mut Histogram<u64> {
        self.latency
            .get_or_insert_with(|| latency_histogram(SECOND_SIGNIFICANT_FIGURES))
    }
}

/// What [`RunStats::window`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowStats {
    /// Requests sent and answered or failed (not dropped, not still in flight).
    pub sent: u64,
    pub errors: u64,
    pub dropped: u64,
    pub latency: LatencySummary,
}

/// Everything measured about the requests of one run. Workers may keep their own and
/// [`RunStats::merge`] them at the end.
#[derive(Debug, Clone)]
pub struct RunStats {
    latency: Histogram<u64>,
    seconds: Vec<SecondStats>,
    outcomes: BTreeMap<Outcome, u64>,
}

impl RunStats {
    /// `total_seconds` pre-sizes the per-second buckets; later seconds still get buckets.
    pub fn new(total_seconds: usize) -> Self {
        RunStats {
            latency: latency_histogram(RUN_SIGNIFICANT_FIGURES),
            seconds: vec![SecondStats::default(); total_seconds],
            outcomes: BTreeMap::new(),
        }
    }

    fn second_mut(&mut self, intended_offset: Duration) -> &mut SecondStats {
        let index = usize::try_from(intended_offset.as_secs()).unwrap_or(usize::MAX);
        if index >= self.seconds.len() {
            self.seconds.resize_with(index + 1, SecondStats::default);
        }
        &mut self.seconds[index]
    }

    /// Records a request by its intended start offset; `latency` runs from that intended start.
    pub fn record(&mut self, intended_offset: Duration, latency: Duration, outcome: Outcome) {
        if outcome == Outcome::Dropped {
            self.record_dropped(intended_offset);
            return;
        }
        *self.outcomes.entry(outcome).or_default() += 1;
        let latency_micros = micros(latency);
        if outcome.has_latency() {
            self.latency.saturating_record(latency_micros);
        }
        let second = self.second_mut(intended_offset);
        second.started += 1;
        if outcome.is_error() {
            second.errors += 1;
        } else {
            second.completed_ok += 1;
        }
        if outcome.has_latency() {
            second.latency_mut().saturating_record(latency_micros);
        }
    }

    pub fn record_dropped(&mut self, intended_offset: Duration) {
        *self.outcomes.entry(Outcome::Dropped).or_default() += 1;
        self.second_mut(intended_offset).dropped += 1;
    }

    pub fn merge(&mut self, other: &RunStats) {
        add_histogram(&mut self.latency, &other.latency);
        if other.seconds.len() > self.seconds.len() {
            self.seconds
                .resize_with(other.seconds.len(), SecondStats::default);
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            mine.started += theirs.started;
            mine.completed_ok += theirs.completed_ok;
            mine.errors += theirs.errors;
            mine.dropped += theirs.dropped;
            if let Some(latency) = &theirs.latency {
                add_histogram(mine.latency_mut(), latency);
            }
        }
        for (outcome, count) in &other.outcomes {
            *self.outcomes.entry(*outcome).or_default() += count;
        }
    }

    /// HTTP latency over the run: answers and timeouts, not refused connections or drops.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary::from_histogram_micros(&self.latency)
    }

    pub fn per_second(&self) -> Vec<SecondBucket> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(second, stats)| {
                let quantile = |q| {
                    stats
                        .latency
                        .as_ref()
                        .filter(|h| !h.is_empty())
                        .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
                };
                SecondBucket {
                    second: second as u64,
                    started: stats.started,
                    completed_ok: stats.completed_ok,
                    errors: stats.errors,
                    dropped: stats.dropped,
                    p50_ms: quantile(0.50),
                    p95_ms: quantile(0.95),
                    p99_ms: quantile(0.99),
                }
            })
            .collect()
    }

    /// The requests whose intended start falls in `seconds` (whole seconds of the run): sent,
    /// errors, dropped and their latency (1 % resolution, from the per-second histograms).
    pub fn window(&self, seconds: std::ops::Range<u64>) -> WindowStats {
        let mut window = WindowStats::default();
        let mut latency = latency_histogram(SECOND_SIGNIFICANT_FIGURES);
        let from = usize::try_from(seconds.start).unwrap_or(usize::MAX);
        let to = usize::try_from(seconds.end).unwrap_or(usize::MAX);
        for stats in self.seconds.iter().take(to).skip(from) {
            window.sent += stats.started;
            window.errors += stats.errors;
            window.dropped += stats.dropped;
            if let Some(h) = &stats.latency {
                add_histogram(&mut latency, h);
            }
        }
        window.latency = LatencySummary::from_histogram_micros(&latency);
        window
    }

    /// Counts keyed by [`Outcome::key`].
    pub fn counts_by_outcome(&self) -> BTreeMap<String, u64> {
        self.outcomes
            .iter()
            .map(|(outcome, count)| (outcome.key(), *count))
            .collect()
    }

    /// Requests actually sent (everything but drops).
    pub fn sent(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|(outcome, _)| **outcome != Outcome::Dropped)
            .map(|(_, count)| count)
            .sum()
    }

    pub fn dropped(&self) -> u64 {
        self.outcomes.get(&Outcome::Dropped).copied().unwrap_or(0)
    }

    pub fn errors(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|(outcome, _)| outcome.is_error())
            .map(|(_, count)| count)
            .sum()
    }

    /// (5xx + 429 + timeouts + connect/other errors) / requests sent; 0 when nothing was sent.
    /// Drops are not attempts and are reported on their own.
    pub fn error_rate(&self) -> f64 {
        match self.sent() {
            0 => 0.0,
            sent => self.errors() as f64 / sent as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    fn close(actual: f64, expected: f64, relative: f64) -> bool {
        (actual - expected).abs() <= expected.abs() * relative + 1e-9
    }

    #[test]
    fn percentiles_of_one_to_hundred() {
        let summary = latency_summary_from_millis((1..=100).rev().map(f64::from));
        assert_eq!(
            summary,
            LatencySummary {
                count: 100,
                min_ms: 1.0,
                mean_ms: 50.5,
                p50_ms: 50.0,
                p90_ms: 90.0,
                p95_ms: 95.0,
                p99_ms: 99.0,
                max_ms: 100.0,
            }
        );
    }

    #[test]
    fn nearest_rank_on_small_lists() {
        let four = Percentiles::from_millis([40.0, 10.0, 30.0, 20.0]);
        assert_eq!(four.quantile(0.0), Some(10.0));
        assert_eq!(four.quantile(0.25), Some(10.0));
        assert_eq!(four.quantile(0.26), Some(20.0));
        assert_eq!(four.quantile(0.5), Some(20.0));
        assert_eq!(four.quantile(0.95), Some(40.0));
        assert_eq!(four.quantile(1.0), Some(40.0));

        let one = Percentiles::from_durations([ms(7)]).summary();
        assert_eq!((one.count, one.p50_ms, one.p99_ms), (1, 7.0, 7.0));
    }

    #[test]
    fn empty_and_non_finite_values() {
        assert_eq!(Percentiles::default().quantile(0.5), None);
        assert_eq!(latency_summary_from_millis([]), LatencySummary::default());
        let summary = latency_summary_from_millis([f64::NAN, 5.0, f64::INFINITY]);
        assert_eq!((summary.count, summary.max_ms), (1, 5.0));
    }

    #[test]
    fn per_second_percentiles_group_and_sort() {
        let samples = [(2, 30.0), (0, 10.0), (2, 10.0), (0, 20.0), (2, 20.0)];
        let grouped = per_second_percentiles(samples);
        let seconds: Vec<u64> = grouped.iter().map(|(s, _)| *s).collect();
        assert_eq!(seconds, vec![0, 2]);
        assert_eq!(grouped[0].1.count, 2);
        assert_eq!(grouped[0].1.p50_ms, 10.0);
        assert_eq!(grouped[1].1.p50_ms, 20.0);
        assert_eq!(grouped[1].1.max_ms, 30.0);
    }

    #[test]
    fn histogram_summary_matches_hand_computed_values() {
        // Values below 2,048 µs are exact at 3 significant figures.
        let mut stats = RunStats::new(1);
        for latency in 1..=100u64 {
            stats.record(
                Duration::ZERO,
                Duration::from_micros(latency * 10),
                Outcome::Status(202),
            );
        }
        let summary = stats.summary();
        assert_eq!(summary.count, 100);
        assert_eq!(summary.min_ms, 0.01);
        assert_eq!(summary.p50_ms, 0.5);
        assert_eq!(summary.p95_ms, 0.95);
        assert_eq!(summary.p99_ms, 0.99);
        assert_eq!(summary.max_ms, 1.0);
        assert!(close(summary.mean_ms, 0.505, 1e-3));
    }

    #[test]
    fn buckets_by_intended_second() {
        let mut stats = RunStats::new(2);
        stats.record(ms(100), ms(10), Outcome::Status(202));
        stats.record(ms(900), ms(30), Outcome::Status(409));
        stats.record(ms(999), ms(20), Outcome::Status(503));
        stats.record(ms(1500), ms(5000), Outcome::Timeout);
        stats.record(ms(1600), ms(1), Outcome::ConnectError);
        stats.record_dropped(ms(1700));
        stats.record(ms(3200), ms(7), Outcome::Status(202)); // past the planned end

        let buckets = stats.per_second();
        assert_eq!(buckets.len(), 4);
        let counts = |b: &SecondBucket| (b.second, b.started, b.completed_ok, b.errors, b.dropped);
        assert_eq!(counts(&buckets[0]), (0, 3, 2, 1, 0));
        assert_eq!(counts(&buckets[1]), (1, 2, 0, 2, 1));
        assert_eq!(counts(&buckets[2]), (2, 0, 0, 0, 0));
        assert_eq!(counts(&buckets[3]), (3, 1, 1, 0, 0));

        // Second 0 holds 10, 20 and 30 ms; per-second histograms are accurate to 1 %.
        assert!(close(buckets[0].p50_ms.expect("samples"), 20.0, 0.01));
        assert!(close(buckets[0].p99_ms.expect("samples"), 30.0, 0.01));
        // Second 1: only the timeout has a latency; the refused connection does not count.
        assert!(close(buckets[1].p50_ms.expect("samples"), 5000.0, 0.01));
        assert_eq!(buckets[2].p95_ms, None);
    }

    #[test]
    fn outcomes_and_error_rate() {
        let mut stats = RunStats::new(1);
        for outcome in [
            Outcome::Status(202),
            Outcome::Status(202),
            Outcome::Status(409),
            Outcome::Status(400),
            Outcome::Status(500),
            Outcome::Status(429),
            Outcome::Timeout,
            Outcome::ConnectError,
            Outcome::OtherError,
            Outcome::Dropped,
        ] {
            stats.record(Duration::ZERO, ms(1), outcome);
        }
        let expected: BTreeMap<String, u64> = [
            ("202", 2),
            ("400", 1),
            ("409", 1),
            ("429", 1),
            ("500", 1),
            ("connect_error", 1),
            ("dropped", 1),
            ("other_error", 1),
            ("timeout", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(stats.counts_by_outcome(), expected);
        // 500, 429, timeout, connect and other error: 5 of the 9 sent.
        assert_eq!((stats.sent(), stats.dropped(), stats.errors()), (9, 1, 5));
        assert_eq!(stats.error_rate(), 5.0 / 9.0);
        assert_eq!(RunStats::new(0).error_rate(), 0.0);
    }

    #[test]
    fn latency_above_the_range_is_clamped() {
        let mut stats = RunStats::new(1);
        stats.record(Duration::ZERO, Duration::from_secs(3600), Outcome::Timeout);
        let max = stats.summary().max_ms;
        assert!(close(max, 60_000.0, 0.001), "{max}");
    }

    #[test]
    fn merging_equals_recording_in_one_place() {
        let samples: Vec<(u64, u64, Outcome)> = (0..200u64)
            .map(|i| {
                let outcome = match i % 7 {
                    0 => Outcome::Status(503),
                    1 => Outcome::Dropped,
                    _ => Outcome::Status(202),
                };
                (i * 37, (i * 13) % 400 + 1, outcome)
            })
            .collect();

        let mut together = RunStats::new(3);
        let (mut left, mut right) = (RunStats::new(3), RunStats::new(1));
        for (i, &(offset, latency, outcome)) in samples.iter().enumerate() {
            together.record(ms(offset), ms(latency), outcome);
            let half = if i % 2 == 0 { &mut left } else { &mut right };
            half.record(ms(offset), ms(latency), outcome);
        }
        left.merge(&right);

        assert_eq!(left.summary(), together.summary());
        assert_eq!(left.per_second(), together.per_second());
        assert_eq!(left.counts_by_outcome(), together.counts_by_outcome());
    }

    #[test]
    fn window_sums_the_seconds_it_covers() {
        let mut stats = RunStats::new(4);
        stats.record(ms(100), ms(10), Outcome::Status(202));
        stats.record(ms(1100), ms(20), Outcome::Status(202));
        stats.record(ms(1200), ms(30), Outcome::Status(503));
        stats.record_dropped(ms(1300));
        stats.record(ms(2100), ms(40), Outcome::Status(202));
        let window = stats.window(1..2);
        assert_eq!((window.sent, window.errors, window.dropped), (2, 1, 1));
        assert_eq!(window.latency.count, 2);
        assert!(close(window.latency.p99_ms, 30.0, 0.01));
        assert_eq!(stats.window(0..3).sent, 4);
        assert_eq!(stats.window(3..9), WindowStats::default());
    }
}
