//! The open-model arrival schedule (like k6's `ramping-arrival-rate`).
//!
//! The rate moves linearly from one stage's target to the next. Every request gets an intended
//! start time computed up front from its index, so a slow system cannot slow the load down
//! (no coordinated omission) and rounding cannot drift over a long run.
//!
//! Placement rule: request `n` (0, 1, 2, …) starts when the integral of the rate reaches
//! `n + 0.5`. This midpoint rule makes the number of starts in any window the *rounded* expected
//! count, and avoids a request at t = 0 when the rate there is zero.

use std::time::Duration;

use crate::plan::scenario::LoadProfile;
use crate::plan::stage::Stage;

/// One linear ramp, precomputed.
#[derive(Debug, Clone, PartialEq)]
struct Segment {
    start: Duration,
    duration: Duration,
    /// Rate at the start and at the end of the segment, requests per second.
    from_rate: f64,
    to_rate: f64,
    /// Expected requests before this segment starts.
    requests_before: f64,
}

impl Segment {
    fn seconds(&self) -> f64 {
        self.duration.as_secs_f64()
    }

    fn end(&self) -> Duration {
        self.start + self.duration
    }

    /// Rate change per second.
    fn slope(&self) -> f64 {
        if self.duration.is_zero() {
            0.0
        } else {
            (self.to_rate - self.from_rate) / self.seconds()
        }
    }

    fn rate_after(&self, elapsed: f64) -> f64 {
        self.from_rate + self.slope() * elapsed
    }

    /// Expected requests from the segment's start until `elapsed` seconds into it.
    fn requests_within(&self, elapsed: f64) -> f64 {
        let elapsed = elapsed.clamp(0.0, self.seconds());
        self.from_rate * elapsed + 0.5 * self.slope() * elapsed * elapsed
    }

    fn expected_requests(&self) -> f64 {
        0.5 * (self.from_rate + self.to_rate) * self.seconds()
    }

    /// Seconds into the segment at which `count` (> 0) expected requests have accumulated.
    ///
    /// Solves `from_rate·τ + slope·τ²/2 = count` with the form `τ = 2c / (r + √(r² + 2ac))`,
    /// which has no cancellation, so it stays exact when the slope is ~0 (τ → c / r).
    fn time_of(&self, count: f64) -> f64 {
        let rate = self.from_rate;
        let discriminant = (rate * rate + 2.0 * self.slope() * count).max(0.0);
        let denominator = rate + discriminant.sqrt();
        if denominator <= 0.0 {
            return self.seconds();
        }
        (2.0 * count / denominator).clamp(0.0, self.seconds())
    }
}

/// When requests should start, from a start rate and a list of linear stages.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    segments: Vec<Segment>,
    total_duration: Duration,
    expected_requests: f64,
}

impl Schedule {
    pub fn new(start_rate: f64, stages: &[Stage]) -> Schedule {
        let mut segments = Vec::with_capacity(stages.len());
        let (mut start, mut from_rate, mut requests_before) = (Duration::ZERO, start_rate, 0.0);
        for stage in stages {
            let segment = Segment {
                start,
                duration: stage.duration,
                from_rate,
                to_rate: stage.target,
                requests_before,
            };
            start = segment.end();
            from_rate = stage.target;
            requests_before += segment.expected_requests();
            segments.push(segment);
        }
        Schedule {
            segments,
            total_duration: start,
            expected_requests: requests_before,
        }
    }

    pub fn from_profile(load: &LoadProfile) -> Schedule {
        Schedule::new(load.start_rate, &load.stages)
    }

    pub fn total_duration(&self) -> Duration {
        self.total_duration
    }

    /// Requests per second at `t`. At exactly the end it is the last target; after the end, 0.
    pub fn rate_at(&self, t: Duration) -> f64 {
        match self.stage_at(t) {
            Some(index) => {
                let segment = &self.segments[index];
                segment.rate_after((t - segment.start).as_secs_f64())
            }
            None if t == self.total_duration => self.segments.last().map_or(0.0, |s| s.to_rate),
            None => 0.0,
        }
    }

    /// Integral of the rate over the whole schedule.
    pub fn expected_requests(&self) -> f64 {
        self.expected_requests
    }

    /// Expected requests from t = 0 until `t` (clamped to the schedule).
    pub fn expected_requests_until(&self, t: Duration) -> f64 {
        match self.stage_at(t) {
            Some(index) => {
                let segment = &self.segments[index];
                segment.requests_before + segment.requests_within((t - segment.start).as_secs_f64())
            }
            None => self.expected_requests,
        }
    }

    /// Expected requests in `[from, to)`; e.g. the target for one second of a report.
    pub fn expected_requests_between(&self, from: Duration, to: Duration) -> f64 {
        (self.expected_requests_until(to) - self.expected_requests_until(from)).max(0.0)
    }

    /// Index of the stage running at `t`; stages cover `[start, end)`, so zero-length stages
    /// never match and `t >= total_duration()` gives `None`.
    pub fn stage_at(&self, t: Duration) -> Option<usize> {
        if t >= self.total_duration {
            return None;
        }
        // Stages are sorted by start: the last one starting at or before t contains it.
        let starts_after_t = self.segments.partition_point(|s| s.start <= t);
        (0..starts_after_t)
            .rev()
            .find(|&i| self.segments[i].end() > t)
    }

    /// Start time and end time of stage `index`.
    pub fn stage_window(&self, index: usize) -> Option<(Duration, Duration)> {
        self.segments.get(index).map(|s| (s.start, s.end()))
    }

    /// How many requests [`Schedule::intended_starts`] yields: `round(expected_requests())`.
    pub fn intended_start_count(&self) -> u64 {
        (self.expected_requests + 0.5).floor().max(0.0) as u64
    }

    /// Intended start time of every request, in order (see the module docs for the rule).
    pub fn intended_starts(&self) -> IntendedStarts {
        IntendedStarts {
            segments: self.segments.clone(),
            next_request: 0,
            total: self.intended_start_count(),
            segment_index: 0,
            previous: Duration::ZERO,
        }
    }
}

/// Iterator over intended start times; owns its data so it can move into a task.
#[derive(Debug, Clone)]
pub struct IntendedStarts {
    segments: Vec<Segment>,
    next_request: u64,
    total: u64,
    /// Segment holding the previous start; starts only move forward, so the search does too.
    segment_index: usize,
    previous: Duration,
}

impl Iterator for IntendedStarts {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.next_request >= self.total {
            return None;
        }
        // Computed from the index alone, never by adding intervals, so nothing drifts.
        let target = self.next_request as f64 + 0.5;
        self.next_request += 1;

        while self.segment_index + 1 < self.segments.len() {
            let segment = &self.segments[self.segment_index];
            if segment.requests_before + segment.expected_requests() >= target {
                break;
            }
            self.segment_index += 1;
        }
        let segment = self.segments.get(self.segment_index)?;
        let offset = segment.time_of(target - segment.requests_before);
        // Offsets are finite for finite rates; a NaN rate would put the start at the stage end.
        let offset = Duration::try_from_secs_f64(offset).unwrap_or(segment.duration);
        let start = segment.start + offset;
        // Float rounding must never move a start before the previous one.
        self.previous = start.max(self.previous);
        Some(self.previous)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.total - self.next_request).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

impl ExactSizeIterator for IntendedStarts {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stage(seconds: f64, target: f64) -> Stage {
        Stage {
            duration: Duration::from_secs_f64(seconds),
            target,
        }
    }

    fn seed_plan() -> Schedule {
        Schedule::new(
            0.0,
            &[
                stage(30.0, 500.0),
                stage(60.0, 1000.0),
                stage(180.0, 1000.0),
                stage(30.0, 0.0),
            ],
        )
    }

    fn starts_per_stage(schedule: &Schedule, stage_count: usize) -> Vec<u64> {
        let mut counts = vec![0u64; stage_count];
        for start in schedule.intended_starts() {
            // A start may land exactly on the end (midpoint rule, E = k + 0.5): count it last.
            let index = schedule.stage_at(start).unwrap_or(stage_count - 1);
            counts[index] += 1;
        }
        counts
    }

    #[test]
    fn seed_plan_expects_247_500_requests() {
        let schedule = seed_plan();
        assert_eq!(schedule.total_duration(), Duration::from_secs(300));
        assert!((schedule.expected_requests() - 247_500.0).abs() < 1e-6);
        assert_eq!(schedule.intended_start_count(), 247_500);
        assert_eq!(schedule.intended_starts().count(), 247_500);
    }

    #[test]
    fn seed_plan_stage_counts() {
        let counts = starts_per_stage(&seed_plan(), 4);
        for (count, expected) in counts.iter().zip([7_500, 45_000, 180_000, 15_000]) {
            assert!(count.abs_diff(expected) <= 1, "{counts:?}");
        }
    }

    #[test]
    fn seed_plan_sells_3000_units_near_19_seconds() {
        // Field notes: the 3,000th order arrives at t ≈ 19 s, at ≈ 316 RPS.
        let schedule = seed_plan();
        let start = schedule.intended_starts().nth(2_999).expect("exists");
        assert!((start.as_secs_f64() - 18.97).abs() < 0.05, "{start:?}");
        assert!((schedule.rate_at(start) - 316.0).abs() < 1.0);
    }

    #[test]
    fn starts_are_ordered_and_inside_the_run() {
        let schedule = seed_plan();
        let mut previous = Duration::ZERO;
        for start in schedule.intended_starts() {
            assert!(start >= previous);
            assert!(start < schedule.total_duration());
            previous = start;
        }
    }

    #[test]
    fn constant_rate_spaces_requests_evenly() {
        let schedule = Schedule::new(10.0, &[stage(2.0, 10.0)]);
        let starts: Vec<f64> = schedule
            .intended_starts()
            .map(|t| t.as_secs_f64())
            .collect();
        assert_eq!(starts.len(), 20);
        for (n, start) in starts.iter().enumerate() {
            assert!((start - (n as f64 + 0.5) / 10.0).abs() < 1e-9);
        }
    }

    #[test]
    fn rate_follows_the_ramps() {
        let schedule = seed_plan();
        let at = |s: f64| schedule.rate_at(Duration::from_secs_f64(s));
        assert_eq!(at(0.0), 0.0);
        assert!((at(15.0) - 250.0).abs() < 1e-9);
        assert!((at(30.0) - 500.0).abs() < 1e-9);
        assert!((at(60.0) - 750.0).abs() < 1e-9);
        assert!((at(200.0) - 1000.0).abs() < 1e-9);
        assert!((at(285.0) - 500.0).abs() < 1e-9);
        assert_eq!(at(300.0), 0.0); // the last target
        assert_eq!(at(301.0), 0.0);
    }

    #[test]
    fn stage_lookup_uses_half_open_windows() {
        let schedule = seed_plan();
        let at = |s: u64| schedule.stage_at(Duration::from_secs(s));
        assert_eq!(at(0), Some(0));
        assert_eq!(at(29), Some(0));
        assert_eq!(at(30), Some(1));
        assert_eq!(at(90), Some(2));
        assert_eq!(at(299), Some(3));
        assert_eq!(at(300), None);
        assert_eq!(
            schedule.stage_window(2),
            Some((Duration::from_secs(90), Duration::from_secs(270)))
        );
    }

    #[test]
    fn zero_length_stage_is_a_step() {
        let schedule = Schedule::new(0.0, &[stage(0.0, 100.0), stage(1.0, 100.0)]);
        assert_eq!(schedule.stage_at(Duration::ZERO), Some(1));
        assert_eq!(schedule.rate_at(Duration::ZERO), 100.0);
        assert_eq!(schedule.intended_starts().count(), 100);
    }

    #[test]
    fn idle_schedule_yields_nothing() {
        let schedule = Schedule::new(0.0, &[stage(10.0, 0.0)]);
        assert_eq!(schedule.expected_requests(), 0.0);
        assert_eq!(schedule.intended_starts().next(), None);
        assert_eq!(Schedule::new(5.0, &[]).intended_starts().next(), None);
    }

    #[test]
    fn expected_requests_between_gives_per_second_targets() {
        let schedule = seed_plan();
        let second = |s: u64| {
            schedule.expected_requests_between(Duration::from_secs(s), Duration::from_secs(s + 1))
        };
        // 0→500 over 30 s: second 0 holds 500/30/2 ≈ 8.33 requests.
        assert!((second(0) - 500.0 / 60.0).abs() < 1e-9);
        assert!((second(100) - 1000.0).abs() < 1e-9);
        assert_eq!(second(400), 0.0);
    }

    #[test]
    fn nearly_flat_ramp_is_stable() {
        let schedule = Schedule::new(1000.0, &[stage(10.0, 1000.0 + 1e-12)]);
        let starts: Vec<Duration> = schedule.intended_starts().collect();
        assert_eq!(starts.len(), 10_000);
        assert!((starts[9_999].as_secs_f64() - 9.9995).abs() < 1e-6);
    }

    fn stages_strategy() -> impl Strategy<Value = (f64, Vec<(u64, f64)>)> {
        (
            0.0..300.0f64,
            prop::collection::vec((100u64..20_000, 0.0..300.0f64), 1..6),
        )
    }

    fn build(start_rate: f64, stages: &[(u64, f64)]) -> (Schedule, Vec<Stage>) {
        let stages: Vec<Stage> = stages
            .iter()
            .map(|&(millis, target)| Stage {
                duration: Duration::from_millis(millis),
                target,
            })
            .collect();
        (Schedule::new(start_rate, &stages), stages)
    }

    proptest! {
        #[test]
        fn start_count_matches_expected_requests((start_rate, raw) in stages_strategy()) {
            let (schedule, stages) = build(start_rate, &raw);
            let count = schedule.intended_starts().count() as f64;
            prop_assert!((count - schedule.expected_requests()).abs() <= 0.5 + 1e-6);

            let per_stage = starts_per_stage(&schedule, stages.len());
            for (index, count) in per_stage.iter().enumerate() {
                let (from, to) = schedule.stage_window(index).expect("stage");
                let expected = schedule.expected_requests_between(from, to);
                prop_assert!((*count as f64 - expected).abs() <= 1.0 + 1e-6,
                    "stage {index}: {count} starts, {expected} expected");
            }
        }

        #[test]
        fn starts_are_monotonic_and_land_where_the_integral_says((start_rate, raw) in stages_strategy()) {
            let (schedule, _) = build(start_rate, &raw);
            let mut previous = Duration::ZERO;
            for (n, start) in schedule.intended_starts().enumerate() {
                prop_assert!(start >= previous);
                prop_assert!(start <= schedule.total_duration());
                // Tolerance: one nanosecond of rounding at up to a few hundred requests/s.
                let reached = schedule.expected_requests_until(start);
                prop_assert!((reached - (n as f64 + 0.5)).abs() < 1e-3,
                    "request {n} at {start:?}: integral {reached}");
                previous = start;
            }
        }

        #[test]
        fn rate_is_continuous_at_stage_boundaries((start_rate, raw) in stages_strategy()) {
            let (schedule, stages) = build(start_rate, &raw);
            let epsilon = Duration::from_micros(1);
            for index in 1..stages.len() {
                let (boundary, _) = schedule.stage_window(index).expect("stage");
                let before = schedule.rate_at(boundary - epsilon);
                let at = schedule.rate_at(boundary);
                prop_assert!((at - stages[index - 1].target).abs() < 1e-9);
                prop_assert!((before - at).abs() < 0.1, "jump at {boundary:?}: {before} -> {at}");
            }
        }
    }
}
