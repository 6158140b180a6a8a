//! The saturation rules of a capacity run, as pure functions of what a step measured: the
//! figures of a step, its backlog trend, the verdict, and the orders it completed.

use std::time::Duration;

use crate::loadgen::stats::{Percentiles, RunStats};
use crate::observe::monitor::ProcessUsage;
use crate::plan::capacity::CapacitySettings;
use crate::plan::schedule::Schedule;
use crate::report::cost::OrderCost;
use crate::report::{StepFigures, StepProcess, Verdict};

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

/// The rules of [`saturation_reasons`].
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

/// Why a step did not keep up; empty when it did.
pub fn saturation_reasons(step: &StepFigures, limits: &Limits) -> Vec<String> {
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
    } else if step.http_p99_windows_ms.is_empty() {
        if let Some(p99) = step.http_p99_ms.filter(|&p99| p99 > limits.http_p99_ms) {
            reasons.push(format!(
                "HTTP p99 {p99:.1} ms > {:.0} ms",
                limits.http_p99_ms
            ));
        }
    } else {
        let windows = &step.http_p99_windows_ms;
        let over: Vec<String> = windows
            .iter()
            .filter(|&&p99| p99 > limits.http_p99_ms)
            .map(|p99| format!("{p99:.0}"))
            .collect();
        // One slow window is forgiven only where at least two others show the step kept up.
        let forgiven = usize::from(windows.len() >= 3);
        if over.len() > forgiven {
            reasons.push(format!(
                "HTTP p99 > {:.0} ms in {} of {} latency windows ({} ms)",
                limits.http_p99_ms,
                over.len(),
                windows.len(),
                over.join(", ")
            ));
        }
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

/// The last step of the unbroken run of sustained steps from the first.
pub fn highest_sustained(steps: &[StepFigures]) -> Option<&StepFigures> {
    steps
        .iter()
        .take_while(|s| s.verdict == Verdict::Sustained)
        .last()
}

/// One backlog sample, `at_s` seconds after the load started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BacklogSample {
    pub at_s: f64,
    pub non_final_orders: i64,
    /// Outbox rows + JetStream pending + unacknowledged; `None` when the broker did not answer.
    pub messages: Option<i64>,
    /// CPU seconds the whole machine has been busy since boot (all cores, from `/proc/stat`).
    pub cpu_busy_s: Option<f64>,
}

/// Trend growth of the samples in `[from_s, to_s]`: (orders, messages, samples used).
pub fn backlog_trend(
    samples: &[BacklogSample],
    from_s: f64,
    to_s: f64,
) -> (Option<f64>, Option<f64>, usize) {
    let inside: Vec<&BacklogSample> = samples
        .iter()
        .filter(|s| s.at_s >= from_s - 1e-6 && s.at_s <= to_s + 1e-6)
        .collect();
    let orders: Vec<(f64, f64)> = inside
        .iter()
        .map(|s| (s.at_s, s.non_final_orders as f64))
        .collect();
    let messages: Vec<(f64, f64)> = inside
        .iter()
        .filter_map(|s| s.messages.map(|m| (s.at_s, m as f64)))
        .collect();
    (
        fitted_growth(&orders),
        fitted_growth(&messages),
        inside.len(),
    )
}

/// CPU the whole machine used over `[from_s, to_s]`, in % of one core (200 = two cores busy).
pub fn machine_cpu_pct(samples: &[BacklogSample], from_s: f64, to_s: f64) -> Option<f64> {
    let nearest = |at: f64| {
        samples
            .iter()
            .filter(|s| s.cpu_busy_s.is_some() && (s.at_s - at).abs() <= 1.5)
            .min_by(|a, b| (a.at_s - at).abs().total_cmp(&(b.at_s - at).abs()))
    };
    let (first, last) = (nearest(from_s)?, nearest(to_s)?);
    let seconds = last.at_s - first.at_s;
    if seconds <= 0.0 {
        return None;
    }
    Some((last.cpu_busy_s? - first.cpu_busy_s?) / seconds * 100.0)
}

/// The sample nearest to `at_s` (within a second and a half).
fn backlog_at(samples: &[BacklogSample], at_s: f64) -> Option<i64> {
    samples
        .iter()
        .filter(|s| (s.at_s - at_s).abs() <= 1.5)
        .min_by(|a, b| (a.at_s - at_s).abs().total_cmp(&(b.at_s - at_s).abs()))
        .map(|s| s.non_final_orders)
}

/// Mean CPU and peak RSS of each process over `[from_s, to_s)`: the sample taken at second `s`
/// covers the second before it, so the seconds `from_s + 1 ..= to_s` count.
pub fn processes_in_window(processes: &[ProcessUsage], from_s: u64, to_s: u64) -> Vec<StepProcess> {
    processes
        .iter()
        .map(|p| {
            let inside: Vec<_> = p
                .series
                .iter()
                .filter(|s| s.second > from_s && s.second <= to_s)
                .collect();
            let cpu_pct = if inside.is_empty() {
                0.0
            } else {
                inside.iter().map(|s| s.cpu_pct).sum::<f64>() / inside.len() as f64
            };
            StepProcess {
                name: p.name.clone(),
                cpu_pct,
                peak_rss_mib: inside.iter().map(|s| s.rss_mib).fold(0.0, f64::max),
            }
        })
        .collect()
}

/// The machine's row of a step's cost table: every program, tracked or not.
pub const MACHINE: &str = "machine (everything)";

/// CPU per completed order over a step: each process, all tracked, and the whole machine.
pub fn step_cost(step: &StepFigures) -> OrderCost {
    let seconds = step.to_s - step.from_s;
    let cpu_s = |pct: f64| pct / 100.0 * seconds;
    let mut cost = OrderCost::new(
        step.processes
            .iter()
            .map(|p| (p.name.clone(), cpu_s(p.cpu_pct))),
        step.completed,
        step.completed,
        step.sent,
    );
    if let Some(all) = step.machine_cpu_pct {
        cost.push(MACHINE.into(), cpu_s(all));
    }
    cost
}

/// Orders finalized in one run: offset of `finalized_at` from the load start (seconds),
/// end-to-end milliseconds, and whether it COMPLETED.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finalized {
    pub at_s: f64,
    pub e2e_ms: f64,
    pub completed: bool,
}

/// COMPLETED orders per whole second of `finalized_at` (index = second after the load start).
pub fn completions_per_second(orders: &[Finalized]) -> Vec<u64> {
    let mut counts: Vec<u64> = Vec::new();
    for order in orders.iter().filter(|o| o.completed && o.at_s >= 0.0) {
        let second = order.at_s as usize;
        if second >= counts.len() {
            counts.resize(second + 1, 0);
        }
        counts[second] += 1;
    }
    counts
}

/// Completed count, completed per second and e2e p50/p99 of the orders COMPLETED in the window.
pub fn completions_in(
    orders: &[Finalized],
    from_s: f64,
    to_s: f64,
) -> (u64, f64, Option<f64>, Option<f64>) {
    let latencies = Percentiles::from_millis(
        orders
            .iter()
            .filter(|o| o.completed && o.at_s >= from_s && o.at_s < to_s)
            .map(|o| o.e2e_ms),
    );
    let count = latencies.len() as u64;
    let seconds = to_s - from_s;
    let per_second = if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    };
    (
        count,
        per_second,
        latencies.quantile(0.50),
        latencies.quantile(0.99),
    )
}

/// The figures of step `index` over `[from, to)` from the statistics and backlog samples.
#[allow(clippy::too_many_arguments)]
pub fn step_figures(
    index: usize,
    rate: f64,
    from: Duration,
    to: Duration,
    schedule: &Schedule,
    stats: &RunStats,
    samples: &[BacklogSample],
    settings: &CapacitySettings,
) -> StepFigures {
    let window = stats.window(from.as_secs()..to.as_secs_f64().ceil() as u64);
    let planned = schedule.expected_requests_between(from, to).round() as u64;
    let (from_s, to_s) = (from.as_secs_f64(), to.as_secs_f64());
    let trend_from = (from + settings.settle).as_secs_f64().min(to_s);
    let (backlog_growth, messages_growth, trend_samples) = backlog_trend(samples, trend_from, to_s);
    let seconds = to_s - from_s;
    let window_s = settings.latency_window.as_secs().max(1);
    let step_end = to.as_secs_f64().ceil() as u64;
    let http_p99_windows_ms = (from.as_secs()..step_end)
        .step_by(window_s as usize)
        .map(|start| {
            stats
                .window(start..(start + window_s).min(step_end))
                .latency
        })
        .filter(|latency| latency.count > 0)
        .map(|latency| latency.p99_ms)
        .collect();
    StepFigures {
        step: index + 1,
        target_rps: rate,
        from_s,
        to_s,
        planned,
        sent: window.sent,
        dropped: window.dropped,
        errors: window.errors,
        unfinished: planned.saturating_sub(window.sent + window.dropped),
        achieved_rps: if seconds > 0.0 {
            window.sent as f64 / seconds
        } else {
            0.0
        },
        http_p50_ms: (window.latency.count > 0).then_some(window.latency.p50_ms),
        http_p99_ms: (window.latency.count > 0).then_some(window.latency.p99_ms),
        http_p99_windows_ms,
        backlog_start: backlog_at(samples, from_s),
        backlog_end: backlog_at(samples, to_s),
        backlog_growth,
        messages_growth,
        trend_window_s: to_s - trend_from,
        trend_samples,
        machine_cpu_pct: machine_cpu_pct(samples, from_s, to_s),
        ..StepFigures::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::monitor::ProcessSample;

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
    fn http_p99_over_the_limit_saturates() {
        let mut step = healthy(1000.0);
        step.http_p99_ms = Some(100.0);
        assert!(saturation_reasons(&step, &limits()).is_empty());
        step.http_p99_ms = Some(100.5);
        let reasons = saturation_reasons(&step, &limits());
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
        let reasons = saturation_reasons(&step, &limits());
        assert_eq!(
            reasons,
            vec!["HTTP p99 > 100 ms in 2 of 3 latency windows (216, 130 ms)".to_string()]
        );
        // A step of one or two windows forgives nothing.
        step.http_p99_windows_ms = vec![40.0, 216.0];
        assert_eq!(saturation_reasons(&step, &limits()).len(), 1);
    }

    #[test]
    fn unanswered_requests_count_as_slow() {
        let mut step = healthy(1000.0);
        // 2 % of the step still in flight a second after it ended: p99 is over the limit even
        // though the answered ones were fast.
        step.unfinished = 600;
        step.sent -= 600;
        let reasons = saturation_reasons(&step, &limits());
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
        assert_eq!(saturation_reasons(&step, &limits()).len(), 3);
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
    fn backlog_trend_uses_the_window_only() {
        let samples: Vec<BacklogSample> = (0..=30)
            .map(|t| BacklogSample {
                at_s: t as f64,
                // A level shift in the first 10 s, then flat; messages grow all along.
                non_final_orders: if t < 10 { 100 * t } else { 1000 },
                messages: (t != 15).then_some(10 * t),
                cpu_busy_s: Some(t as f64 * 0.5),
            })
            .collect();
        let (orders, messages, used) = backlog_trend(&samples, 10.0, 30.0);
        assert_eq!(used, 21);
        assert!(orders.expect("fitted").abs() < 1e-6);
        assert!((messages.expect("fitted") - 200.0).abs() < 1e-6);
        assert_eq!(backlog_at(&samples, 30.0), Some(1000));
        // Half a CPU second per second: 50 % of one core.
        assert_eq!(machine_cpu_pct(&samples, 10.0, 30.0), Some(50.0));
        assert_eq!(machine_cpu_pct(&samples, 40.0, 50.0), None);
        assert_eq!(backlog_at(&samples, 99.0), None);
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
    fn step_figures_come_from_the_stats_and_the_samples() {
        use crate::loadgen::stats::{Outcome, RunStats};
        let s = CapacitySettings {
            start_rate: 10.0,
            step_rate: 10.0,
            max_rate: 20.0,
            step_duration: Duration::from_secs(10),
            settle: Duration::from_secs(2),
            ..settings()
        };
        let schedule = Schedule::new(10.0, &s.stages());
        let mut stats = RunStats::new(20);
        // Step 2 (10 s .. 20 s, 200 planned): 190 answered, 5 dropped, 5 in flight.
        for i in 0..190u64 {
            let at = Duration::from_millis(10_000 + i * 50);
            stats.record(at, Duration::from_millis(5 + i % 10), Outcome::Status(202));
        }
        for i in 0..5u64 {
            stats.record_dropped(Duration::from_millis(19_600 + i * 50));
        }
        let samples: Vec<BacklogSample> = (10..=20)
            .map(|t| BacklogSample {
                at_s: t as f64,
                non_final_orders: 20,
                messages: Some(0),
                cpu_busy_s: None,
            })
            .collect();
        let (from, to) = s.step_window(1);
        let step = step_figures(1, 20.0, from, to, &schedule, &stats, &samples, &s);
        assert_eq!(step.step, 2);
        assert_eq!(
            (step.planned, step.sent, step.dropped, step.unfinished),
            (200, 190, 5, 5)
        );
        assert_eq!(step.achieved_rps, 19.0);
        assert_eq!(step.trend_window_s, 8.0);
        assert_eq!(step.trend_samples, 9);
        assert_eq!(step.backlog_growth, Some(0.0));
        assert_eq!((step.backlog_start, step.backlog_end), (Some(20), Some(20)));
        assert!(step.http_p99_ms.expect("latency") < 15.0);
        let reasons = saturation_reasons(&step, &super::limits(&s, 0.0));
        // 5 of 200 dropped (2.5 %) and 5 of 195 unanswered (2.6 %).
        assert_eq!(reasons.len(), 2, "{reasons:?}");
    }

    #[test]
    fn completions_are_counted_by_finalized_second() {
        let orders = [
            Finalized {
                at_s: 0.5,
                e2e_ms: 10.0,
                completed: true,
            },
            Finalized {
                at_s: 1.2,
                e2e_ms: 20.0,
                completed: true,
            },
            Finalized {
                at_s: 1.9,
                e2e_ms: 30.0,
                completed: false,
            },
            Finalized {
                at_s: 3.0,
                e2e_ms: 40.0,
                completed: true,
            },
        ];
        assert_eq!(completions_per_second(&orders), vec![1, 1, 0, 1]);
        let (count, per_second, p50, p99) = completions_in(&orders, 1.0, 3.0);
        assert_eq!((count, per_second), (1, 0.5));
        assert_eq!((p50, p99), (Some(20.0), Some(20.0)));
        assert_eq!(completions_in(&orders, 5.0, 6.0).2, None);
    }

    #[test]
    fn process_usage_per_step() {
        let usage = ProcessUsage {
            name: "order-service".into(),
            series: (0..=20)
                .map(|s| ProcessSample {
                    second: s,
                    cpu_pct: if s <= 10 { 10.0 } else { 50.0 },
                    rss_mib: s as f64,
                })
                .collect(),
            ..ProcessUsage::default()
        };
        let step = processes_in_window(&[usage], 10, 20);
        assert_eq!(step[0].cpu_pct, 50.0);
        assert_eq!(step[0].peak_rss_mib, 20.0);
    }

    #[test]
    fn a_steps_cost_divides_its_cpu_by_the_orders_it_completed() {
        let step = StepFigures {
            from_s: 0.0,
            to_s: 30.0,
            completed: 30_000,
            sent: 30_000,
            machine_cpu_pct: Some(150.0),
            processes: vec![StepProcess {
                name: "postgres".into(),
                cpu_pct: 50.0,
                peak_rss_mib: 1.0,
            }],
            ..StepFigures::default()
        };
        let cost = step_cost(&step);
        // 0.5 core × 30 s = 15 s over 30,000 orders = 500 µs each.
        assert_eq!(cost.rows[0].us_per_completed, Some(500.0));
        assert_eq!(cost.rows[1].name, crate::report::cost::ALL_TRACKED);
        let machine = cost.rows.last().expect("machine row");
        assert_eq!(machine.name, MACHINE);
        assert_eq!(machine.us_per_completed, Some(1_500.0));
    }
}
