//! A [`Report`] built from what a run measured: the load generator's statistics, the monitor's
//! samples, the final progress and the end-to-end latencies.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{OrderCost, Report, SecondRow};
use crate::audit::Check;
use crate::loadgen::stats::{
    latency_summary_from_millis, per_second_percentiles, LatencySummary, RunStats,
};
use crate::observe::database::Progress;
use crate::observe::monitor::{ProgressSample, Samples};
use crate::observe::procfs;
use crate::plan::limits::FairUseLimits;
use crate::plan::scenario::Scenario;
use crate::plan::schedule::Schedule;

pub struct ReportInputs<'a> {
    pub scenario: &'a Scenario,
    pub started_at: DateTime<Utc>,
    /// Wall-clock time of the schedule's t = 0.
    pub start_utc: DateTime<Utc>,
    pub schedule: &'a Schedule,
    pub load_elapsed: Duration,
    pub stats: &'a RunStats,
    pub samples: Samples,
    pub final_progress: &'a Progress,
    /// (created_at, ms to the final status) of every final order.
    pub e2e: &'a [(DateTime<Utc>, f64)],
    pub watched_product: i64,
    pub checks: Vec<Check>,
}

pub fn build_report(inputs: ReportInputs<'_>) -> Report {
    let ReportInputs {
        scenario,
        started_at,
        start_utc,
        schedule,
        load_elapsed,
        stats,
        samples,
        final_progress,
        e2e,
        watched_product,
        checks,
    } = inputs;

    let e2e_by_second: BTreeMap<u64, LatencySummary> = per_second_percentiles(
        e2e.iter()
            .map(|(created, ms)| (second_after(start_utc, *created), *ms)),
    )
    .into_iter()
    .collect();
    let e2e_latency =
        (!e2e.is_empty()).then(|| latency_summary_from_millis(e2e.iter().map(|(_, ms)| *ms)));

    let buckets = stats.per_second();
    let last_sample_second = samples.progress.last().map_or(0, |s| s.at_s.floor() as u64);
    let last_second = (buckets.len() as u64)
        .saturating_sub(1)
        .max(last_sample_second)
        .max(schedule.total_duration().as_secs().saturating_sub(1));
    let progress_at = progress_by_second(&samples.progress);

    let per_second = (0..=last_second)
        .map(|second| {
            let from = Duration::from_secs(second);
            let bucket = buckets.get(second as usize);
            let e2e = e2e_by_second.get(&second);
            let progress = progress_at.get(&second);
            SecondRow {
                second,
                target_rps: schedule.expected_requests_between(from, from + Duration::from_secs(1)),
                achieved_rps: bucket.map_or(0.0, |b| b.started as f64),
                http_p50_ms: bucket.and_then(|b| b.p50_ms),
                http_p95_ms: bucket.and_then(|b| b.p95_ms),
                http_p99_ms: bucket.and_then(|b| b.p99_ms),
                e2e_p50_ms: e2e.map(|s| s.p50_ms),
                e2e_p95_ms: e2e.map(|s| s.p95_ms),
                e2e_p99_ms: e2e.map(|s| s.p99_ms),
                stock: progress.map(|p| p.stock.values().sum()),
                outbox_backlog: progress.map(|p| p.outbox_backlog),
                orders_pending: progress.map(|p| p.non_final_orders.max(0) as u64),
                orders_completed: progress.map(|p| count_of(p, |k| k == "COMPLETED")),
                orders_failed: progress.map(|p| count_of(p, |k| k.starts_with("FAILED"))),
            }
        })
        .collect();

    let sold_out_after_s = samples
        .progress
        .iter()
        .find(|s| s.progress.stock.get(&watched_product) == Some(&0))
        .map(|s| s.at_s);

    let cost = OrderCost::new(
        samples
            .processes
            .iter()
            .map(|p| (p.name.clone(), p.cpu_seconds)),
        count_of(final_progress, |_| true),
        count_of(final_progress, |k| k == "COMPLETED"),
        stats.sent(),
    );
    let load_seconds = schedule
        .total_duration()
        .as_secs_f64()
        .max(load_elapsed.as_secs_f64());
    Report {
        scenario: scenario.name.clone(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: procfs::machine(),
        duration_s: load_seconds,
        requests: stats.sent(),
        // Over the planned duration, as k6 reports its rate.
        achieved_rps: stats.sent() as f64 / schedule.total_duration().as_secs_f64().max(1e-9),
        target_requests: schedule.expected_requests(),
        http_latency: stats.summary(),
        dropped: stats.dropped(),
        outcomes: stats.counts_by_outcome(),
        error_rate: stats.error_rate(),
        fair_use_limits: FairUseLimits::of(scenario).describe(),
        orders_by_status: final_progress
            .orders_by_status
            .iter()
            .map(|(k, v)| (k.clone(), (*v).max(0) as u64))
            .collect(),
        e2e_latency,
        sold_out_after_s,
        per_second,
        checks,
        faults: Vec::new(),
        processes: samples.processes,
        cost: Some(cost),
        where_time_goes: None,
        capacity: None,
    }
}

fn count_of(progress: &Progress, key: impl Fn(&str) -> bool) -> u64 {
    progress
        .orders_by_status
        .iter()
        .filter(|(k, _)| key(k))
        .map(|(_, v)| (*v).max(0) as u64)
        .sum()
}

/// The last sample taken in each second.
fn progress_by_second(samples: &[ProgressSample]) -> BTreeMap<u64, Progress> {
    samples
        .iter()
        .map(|s| (s.at_s.floor() as u64, s.progress.clone()))
        .collect()
}

/// Whole seconds from `start` to `at` (0 when `at` is earlier).
fn second_after(start: DateTime<Utc>, at: DateTime<Utc>) -> u64 {
    (at - start).num_milliseconds().max(0) as u64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::stats::Outcome;
    use crate::observe::monitor::ProcessUsage;

    fn scenario() -> Scenario {
        Scenario::from_file(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/ci-short.toml"),
        )
        .expect("ci-short parses")
    }

    fn progress(stock: i64, completed: i64, failed: i64, pending: i64) -> Progress {
        Progress {
            non_final_orders: pending,
            outbox_backlog: 0,
            orders_by_status: [
                ("COMPLETED".to_string(), completed),
                ("FAILED:OUT_OF_STOCK".to_string(), failed),
                ("PENDING".to_string(), pending),
            ]
            .into_iter()
            .collect(),
            stock: [(1, stock)].into_iter().collect(),
            dead_letters: 0,
        }
    }

    #[test]
    fn report_rows_combine_schedule_stats_samples_and_e2e() {
        let scenario = scenario();
        let schedule = Schedule::from_profile(&scenario.load);
        let mut stats = RunStats::new(60);
        stats.record(
            Duration::from_millis(500),
            Duration::from_millis(8),
            Outcome::Status(202),
        );
        stats.record(
            Duration::from_millis(1500),
            Duration::from_millis(4),
            Outcome::Status(202),
        );
        stats.record_dropped(Duration::from_millis(1600));
        let start_utc = Utc::now();
        let samples = Samples {
            progress: vec![
                ProgressSample {
                    at_s: 0.01,
                    progress: progress(3000, 0, 0, 0),
                },
                ProgressSample {
                    at_s: 1.02,
                    progress: progress(2999, 1, 0, 1),
                },
                ProgressSample {
                    at_s: 2.0,
                    progress: progress(0, 1, 1, 0),
                },
            ],
            processes: vec![ProcessUsage {
                name: "x".into(),
                ..ProcessUsage::default()
            }],
        };
        let e2e = vec![
            (start_utc + chrono::Duration::milliseconds(600), 40.0),
            (start_utc + chrono::Duration::milliseconds(1700), 90.0),
        ];
        let report = build_report(ReportInputs {
            scenario: &scenario,
            started_at: start_utc,
            start_utc,
            schedule: &schedule,
            load_elapsed: Duration::from_secs(60),
            stats: &stats,
            samples,
            final_progress: &progress(0, 1, 1, 0),
            e2e: &e2e,
            watched_product: 1,
            checks: vec![Check::new("x", true, "")],
        });
        assert_eq!(report.requests, 2);
        assert_eq!(report.dropped, 1);
        assert_eq!(report.per_second.len(), 60);
        let row = |s: usize| &report.per_second[s];
        assert_eq!(row(0).achieved_rps, 1.0);
        assert_eq!(row(0).stock, Some(3000));
        assert_eq!(row(1).orders_pending, Some(1));
        assert_eq!(row(2).orders_failed, Some(1));
        assert_eq!(row(0).e2e_p50_ms, Some(40.0));
        assert_eq!(row(1).e2e_p99_ms, Some(90.0));
        assert_eq!(row(3).stock, None);
        // 0 → 200 RPS over 10 s: the first second expects 10 requests.
        assert!((row(0).target_rps - 10.0).abs() < 1e-9);
        assert_eq!(report.sold_out_after_s, Some(2.0));
        assert_eq!(report.e2e_latency.map(|s| s.count), Some(2));
        assert_eq!(report.orders_by_status.get("COMPLETED"), Some(&1));
        assert!(report.passed());
    }
}
