//! The verdict of a capacity step, as pure functions of what it measured ([`super::figures`]).
//!
//! Two questions, judged apart, because they repeat differently: did the step **keep up**
//! (throughput: requests sent as scheduled and answered, no errors, the end-to-end backlog
//! bounded), and was it **fast** (HTTP p99 within the limit in its latency windows)? A step
//! that did not keep up is saturated and stops the load; one that kept up but was slow is
//! judged "slow" and the load goes on, so the run finds both figures: the highest step kept up
//! and the highest step that was also fast. Near the top of a 2-core machine the HTTP p99 at one
//! rate differed by a factor of two between two runs of the same code (docs/performance.md)
//! while both runs kept up: a verdict that stopped at the first slow step could not repeat.

use crate::plan::capacity::CapacitySettings;
use crate::report::{StepFigures, Verdict};

/// Share of a step's requests still unanswered at its evaluation that puts its p99 over the
/// limit (they have waited at least `evaluation_delay`, which is at least the p99 limit).
const LATE_SHARE: f64 = 0.01;

/// The limits of a plan's settings (the error rate is the scenario's `checks.max_error_rate`).
pub fn limits(settings: &CapacitySettings, max_error_rate: f64) -> Limits {
    Limits {
        http_p99_ms: settings.http_p99_ms,
        max_dropped: settings.max_dropped,
        max_error_rate,
        max_backlog_growth: settings.max_backlog_growth,
        min_backlog_growth: settings.min_backlog_growth,
    }
}

/// The rules of [`judge`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub http_p99_ms: f64,
    pub max_dropped: f64,
    pub max_error_rate: f64,
    pub max_backlog_growth: f64,
    pub min_backlog_growth: f64,
}

impl Limits {
    /// The growth a step's backlog may show over its trend window.
    pub fn allowed_growth(&self, step: &StepFigures) -> f64 {
        self.min_backlog_growth
            .max(self.max_backlog_growth * step.target_rps * step.trend_window_s)
    }
}

/// The verdict on a step and why: saturated when it did not keep up (every reason named, slow
/// ones too), slow when it kept up over the latency limit, sustained when neither.
pub fn judge(step: &StepFigures, limits: &Limits) -> (Verdict, Vec<String>) {
    let behind = throughput_reasons(step, limits);
    let slow = latency_reasons(step, limits);
    match (behind.is_empty(), slow.is_empty()) {
        (true, true) => (Verdict::Sustained, Vec::new()),
        (true, false) => (Verdict::Slow, slow),
        (false, _) => (Verdict::Saturated, [behind, slow].concat()),
    }
}

/// Why a step did not keep up; empty when it did. Requests still unanswered when the step is
/// judged (over [`LATE_SHARE`] of them) count here: they are a queue, not a slow answer.
pub fn throughput_reasons(step: &StepFigures, limits: &Limits) -> Vec<String> {
    let mut reasons = Vec::new();
    let scheduled = step
        .planned
        .max(step.sent + step.dropped + step.unfinished)
        .max(1);
    let dropped_share = step.dropped as f64 / scheduled as f64;
    if dropped_share > limits.max_dropped {
        reasons.push(format!(
            "dropped {} requests ({:.2} % > {:.2} %)",
            step.dropped,
            dropped_share * 100.0,
            limits.max_dropped * 100.0
        ));
    }
    let attempted = (step.sent + step.unfinished).max(1);
    let late_share = step.unfinished as f64 / attempted as f64;
    if late_share > LATE_SHARE {
        reasons.push(format!(
            "{} requests ({:.1} %) unanswered when judged: HTTP p99 > {:.0} ms",
            step.unfinished,
            late_share * 100.0,
            limits.http_p99_ms
        ));
    }
    let error_rate = step.errors as f64 / step.sent.max(1) as f64;
    if error_rate > limits.max_error_rate {
        reasons.push(format!(
            "HTTP error rate {:.3} % > {:.3} % ({} errors)",
            error_rate * 100.0,
            limits.max_error_rate * 100.0,
            step.errors
        ));
    }
    let allowed = limits.allowed_growth(step);
    match step.backlog_growth {
        None => reasons.push(format!(
            "end-to-end backlog not measured ({} progress samples: the databases did not answer in time)",
            step.trend_samples
        )),
        Some(growth) if growth > allowed => reasons.push(format!(
            "end-to-end backlog grew by {growth:.0} orders over {:.0} s (allowed {allowed:.0})",
            step.trend_window_s
        )),
        Some(_) => {}
    }
    reasons
}

/// Why a step was slow; empty when it was fast. Its HTTP p99 is judged per latency window: one
/// slow window (a stall — a checkpoint) is forgiven where at least two others were fast.
pub fn latency_reasons(step: &StepFigures, limits: &Limits) -> Vec<String> {
    let windows = &step.http_p99_windows_ms;
    if windows.is_empty() {
        return step
            .http_p99_ms
            .filter(|&p99| p99 > limits.http_p99_ms)
            .map(|p99| format!("HTTP p99 {p99:.1} ms > {:.0} ms", limits.http_p99_ms))
            .into_iter()
            .collect();
    }
    let over: Vec<String> = windows
        .iter()
        .filter(|&&p99| p99 > limits.http_p99_ms)
        .map(|p99| format!("{p99:.0}"))
        .collect();
    let forgiven = usize::from(windows.len() >= 3);
    if over.len() <= forgiven {
        return Vec::new();
    }
    vec![format!(
        "HTTP p99 > {:.0} ms in {} of {} latency windows ({} ms)",
        limits.http_p99_ms,
        over.len(),
        windows.len(),
        over.join(", ")
    )]
}

/// Rise of the least-squares line through `points` (x = seconds) from the first x to the last;
/// `None` with fewer than 3 points or no time between them.
pub fn fitted_growth(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(x, y) in points {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    let span = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max)
        - points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    if sxx <= 0.0 || span <= 0.0 {
        return None;
    }
    Some(sxy / sxx * span)
}

/// The highest step kept up and fast: the last of the unbroken run of sustained steps from the
/// first.
pub fn highest_sustained(steps: &[StepFigures]) -> Option<&StepFigures> {
    steps
        .iter()
        .take_while(|s| s.verdict == Verdict::Sustained)
        .last()
}

/// The highest step kept up (fast or slow): the last before the first saturated one.
pub fn highest_kept_up(steps: &[StepFigures]) -> Option<&StepFigures> {
    steps
        .iter()
        .take_while(|s| matches!(s.verdict, Verdict::Sustained | Verdict::Slow))
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saturation_reasons(step: &StepFigures, limits: &Limits) -> Vec<String> {
        judge(step, limits).1
    }

    fn settings() -> CapacitySettings {
        CapacitySettings::default()
    }

    fn limits() -> Limits {
        super::limits(&settings(), 0.0)
    }

    /// A step at `rate` that kept up: everything sent, fast, flat backlog.
    fn healthy(rate: f64) -> StepFigures {
        let planned = (rate * 30.0) as u64;
        StepFigures {
            step: 1,
            target_rps: rate,
            from_s: 0.0,
            to_s: 30.0,
            planned,
            sent: planned,
            achieved_rps: rate,
            http_p50_ms: Some(3.0),
            http_p99_ms: Some(40.0),
            backlog_growth: Some(5.0),
            messages_growth: Some(-3.0),
            trend_window_s: 20.0,
            trend_samples: 21,
            ..StepFigures::default()
        }
    }

    #[test]
    fn a_step_that_keeps_up_is_sustained() {
        assert!(saturation_reasons(&healthy(2000.0), &limits()).is_empty());
    }

    #[test]
    fn dropped_requests_over_the_limit_saturate() {
        let mut step = healthy(1000.0); // 30,000 planned
        step.dropped = 30; // 0.1 %: allowed
        step.sent -= 30;
        assert!(saturation_reasons(&step, &limits()).is_empty());
        step.dropped = 31;
        step.sent -= 1;
        let reasons = saturation_reasons(&step, &limits());
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].starts_with("dropped 31"), "{reasons:?}");
    }

    #[test]
    fn http_p99_over_the_limit_is_slow_not_saturated() {
        let mut step = healthy(1000.0);
        step.http_p99_ms = Some(100.0);
        assert!(saturation_reasons(&step, &limits()).is_empty());
        step.http_p99_ms = Some(100.5);
        let (verdict, reasons) = judge(&step, &limits());
        assert_eq!(verdict, Verdict::Slow);
        assert!(
            reasons[0].contains("HTTP p99 100.5 ms > 100 ms"),
            "{reasons:?}"
        );
    }

    #[test]
    fn one_slow_latency_window_does_not_decide_the_verdict_two_do() {
        let mut step = healthy(3000.0);
        // The 2026-12-01 run: one 216 ms spike in a step that otherwise kept up.
        step.http_p99_ms = Some(216.0);
        step.http_p99_windows_ms = vec![40.0, 216.0, 45.0];
        assert!(saturation_reasons(&step, &limits()).is_empty());
        step.http_p99_windows_ms = vec![40.0, 216.0, 130.0];
        let (verdict, reasons) = judge(&step, &limits());
        assert_eq!(verdict, Verdict::Slow);
        assert_eq!(
            reasons,
            vec!["HTTP p99 > 100 ms in 2 of 3 latency windows (216, 130 ms)".to_string()]
        );
        // A step of one or two windows forgives nothing.
        step.http_p99_windows_ms = vec![40.0, 216.0];
        assert_eq!(saturation_reasons(&step, &limits()).len(), 1);
    }

    #[test]
    fn unanswered_requests_saturate() {
        let mut step = healthy(1000.0);
        // 2 % of the step still in flight a second after it ended: p99 is over the limit even
        // though the answered ones were fast.
        step.unfinished = 600;
        step.sent -= 600;
        let (verdict, reasons) = judge(&step, &limits());
        assert_eq!(verdict, Verdict::Saturated, "a queue, not a slow answer");
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].contains("600 requests (2.0 %) unanswered"),
            "{reasons:?}"
        );
        // A handful in flight is normal.
        step.unfinished = 10;
        step.sent += 590;
        assert!(saturation_reasons(&step, &limits()).is_empty());
    }

    #[test]
    fn errors_over_the_allowed_rate_saturate() {
        let mut step = healthy(1000.0);
        step.errors = 1;
        assert!(saturation_reasons(&step, &limits())[0].contains("error rate"));
        assert!(saturation_reasons(&step, &super::limits(&settings(), 0.01)).is_empty());
    }

    #[test]
    fn backlog_growth_is_judged_against_the_arrivals() {
        let mut step = healthy(5000.0);
        // 1 % of 5,000/s over 20 s = 1,000 orders allowed.
        assert_eq!(limits().allowed_growth(&step), 1000.0);
        step.backlog_growth = Some(999.0);
        assert!(saturation_reasons(&step, &limits()).is_empty());
        step.backlog_growth = Some(1500.0);
        let reasons = saturation_reasons(&step, &limits());
        assert!(
            reasons[0].contains("backlog grew by 1500 orders"),
            "{reasons:?}"
        );
        // Slow steps: the absolute floor.
        let mut slow = healthy(500.0);
        assert_eq!(limits().allowed_growth(&slow), 200.0);
        slow.backlog_growth = Some(250.0);
        assert!(saturation_reasons(&slow, &limits())[0].contains("backlog grew"));
        // The message backlog is shown, not judged: its orders are in the orders' backlog.
        slow.backlog_growth = Some(0.0);
        slow.messages_growth = Some(5000.0);
        assert!(saturation_reasons(&slow, &limits()).is_empty());
    }

    #[test]
    fn an_unmeasured_backlog_saturates() {
        let mut step = healthy(1000.0);
        step.backlog_growth = None;
        step.trend_samples = 1;
        assert!(saturation_reasons(&step, &limits())[0].contains("not measured"));
    }

    #[test]
    fn several_reasons_are_all_named() {
        let mut step = healthy(8000.0);
        step.dropped = 5000;
        step.http_p99_ms = Some(900.0);
        step.backlog_growth = Some(50_000.0);
        let (verdict, reasons) = judge(&step, &limits());
        assert_eq!(verdict, Verdict::Saturated);
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(
            reasons[2].starts_with("HTTP p99 900.0 ms"),
            "slow last: {reasons:?}"
        );
    }

    #[test]
    fn fitted_growth_follows_the_trend_not_the_noise() {
        // Flat with ±80 of noise: far below the 200-order floor.
        let flat: Vec<(f64, f64)> = (0..20)
            .map(|t| (t as f64, 300.0 + if t % 2 == 0 { 80.0 } else { -80.0 }))
            .collect();
        assert!(fitted_growth(&flat).expect("enough points").abs() < 50.0);
        // Growing 100 per second over 19 s.
        let growing: Vec<(f64, f64)> = (0..20).map(|t| (t as f64, 100.0 * t as f64)).collect();
        assert!((fitted_growth(&growing).expect("enough points") - 1900.0).abs() < 1e-6);
        // Draining counts as negative growth.
        let draining: Vec<(f64, f64)> = (0..5)
            .map(|t| (t as f64, 500.0 - 100.0 * t as f64))
            .collect();
        assert!(fitted_growth(&draining).expect("enough points") < 0.0);
        assert_eq!(fitted_growth(&[(0.0, 1.0), (1.0, 2.0)]), None);
        assert_eq!(fitted_growth(&[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn the_highest_sustained_step_is_the_last_before_the_first_saturation() {
        let mut steps: Vec<StepFigures> = [500.0, 1000.0, 1500.0, 2000.0]
            .iter()
            .map(|&r| healthy(r))
            .collect();
        steps[2].verdict = Verdict::Saturated;
        steps[3].verdict = Verdict::CutShort;
        assert_eq!(
            highest_sustained(&steps).map(|s| s.target_rps),
            Some(1000.0)
        );
        steps[0].verdict = Verdict::Saturated;
        assert_eq!(highest_sustained(&steps), None);
        assert_eq!(highest_sustained(&[]), None);
    }

    #[test]
    fn slow_steps_count_as_kept_up_but_not_as_sustained() {
        let mut steps: Vec<StepFigures> = [500.0, 1000.0, 1500.0, 2000.0, 2500.0]
            .iter()
            .map(|&r| healthy(r))
            .collect();
        // A slow step, then a fast one again (a stall), then a slow one, then saturation.
        steps[1].verdict = Verdict::Slow;
        steps[3].verdict = Verdict::Slow;
        steps[4].verdict = Verdict::Saturated;
        assert_eq!(highest_sustained(&steps).map(|s| s.target_rps), Some(500.0));
        assert_eq!(highest_kept_up(&steps).map(|s| s.target_rps), Some(2000.0));
        steps[0].verdict = Verdict::Saturated;
        assert_eq!(highest_kept_up(&steps), None);
    }
}
