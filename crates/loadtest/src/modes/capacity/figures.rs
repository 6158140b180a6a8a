//! What a capacity step measured: its figures from the load statistics and the backlog samples,
//! the orders it completed, the CPU and memory of each process and the cost per order. The
//! verdict on those figures is [`super::rules`]'.

use std::time::Duration;

use super::rules::fitted_growth;
use crate::loadgen::stats::{Percentiles, RunStats};
use crate::observe::monitor::ProcessUsage;
use crate::plan::capacity::CapacitySettings;
use crate::plan::schedule::Schedule;
use crate::report::cost::OrderCost;
use crate::report::{StepFigures, StepProcess};

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
    use super::super::rules::{judge, limits};
    use super::*;
    use crate::observe::monitor::ProcessSample;
    use crate::report::Verdict;

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
    fn step_figures_come_from_the_stats_and_the_samples() {
        use crate::loadgen::stats::{Outcome, RunStats};
        let s = CapacitySettings {
            start_rate: 10.0,
            step_rate: 10.0,
            max_rate: 20.0,
            step_duration: Duration::from_secs(10),
            settle: Duration::from_secs(2),
            ..CapacitySettings::default()
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
        let (verdict, reasons) = judge(&step, &limits(&s, 0.0));
        // 5 of 200 dropped (2.5 %) and 5 of 195 unanswered (2.6 %).
        assert_eq!(verdict, Verdict::Saturated);
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
