//! The run report and its three renderings: a k6-style terminal summary, JSON, and one
//! self-contained HTML page with inline SVG charts (no scripts, no network).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::check::Check;
use crate::loadgen::stats::LatencySummary;
pub use crate::observe::monitor::{ProcessSample, ProcessUsage};

pub mod build;
mod capacity;
pub mod cost;
pub mod hops;
mod hops_view;
mod html;
pub mod svg;
mod text;

pub use capacity::{CapacitySummary, StepFigures, StepProcess, Verdict, CHECK_CAPACITY};
pub use cost::OrderCost;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub started_at: String,
    /// E.g. "2 cores, 24 GiB"; filled by the caller.
    pub machine: String,
    pub duration_s: f64,
    /// Requests sent.
    pub requests: u64,
    pub achieved_rps: f64,
    /// Requests the schedule planned.
    pub target_requests: f64,
    pub http_latency: LatencySummary,
    pub dropped: u64,
    /// Counts by outcome key: "202", "409", "timeout", "connect_error", "dropped", …
    pub outcomes: BTreeMap<String, u64>,
    pub error_rate: f64,
    /// The order service's fair-use limits the run deployed with (`plan::limits`).
    #[serde(default)]
    pub fair_use_limits: String,
    /// Final order counts, e.g. "COMPLETED", "FAILED:OUT_OF_STOCK".
    pub orders_by_status: BTreeMap<String, u64>,
    /// Order created → final status.
    pub e2e_latency: Option<LatencySummary>,
    pub sold_out_after_s: Option<f64>,
    pub per_second: Vec<SecondRow>,
    pub checks: Vec<Check>,
    #[serde(default)]
    pub faults: Vec<FaultRecord>,
    #[serde(default)]
    pub processes: Vec<ProcessUsage>,
    /// CPU of each process per order over the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<OrderCost>,
    /// Where an order's time goes, hop by hop, from the sampled orders' traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub where_time_goes: Option<hops::WhereTimeGoes>,
    /// A capacity run's steps and verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacitySummary>,
}

/// One second of the run; `None` where nothing was measured.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SecondRow {
    pub second: u64,
    pub target_rps: f64,
    pub achieved_rps: f64,
    pub http_p50_ms: Option<f64>,
    pub http_p95_ms: Option<f64>,
    pub http_p99_ms: Option<f64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p95_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    pub stock: Option<i64>,
    pub outbox_backlog: Option<i64>,
    pub orders_pending: Option<u64>,
    pub orders_completed: Option<u64>,
    pub orders_failed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FaultRecord {
    pub at_s: f64,
    pub kind: String,
    pub target: String,
    pub recovered_after_s: Option<f64>,
    /// When the system first showed it noticed, after the injection: an instance's `/ready`
    /// said 503, or one of its healing counters moved (see `chaos::probe::SIGNALS`).
    #[serde(default)]
    pub noticed_after_s: Option<f64>,
    /// Orders re-driven (asked again) from the injection until the system caught up.
    #[serde(default)]
    pub redrives: Option<u64>,
    pub note: String,
}

impl Report {
    /// Orders refused for fair use (`429`): counted as errors, shown on their own.
    pub fn rate_limited(&self) -> u64 {
        self.outcomes.get("429").copied().unwrap_or(0)
    }

    /// True when every check passed. A report without checks has verified nothing, so it fails.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    fn verdict(&self) -> &'static str {
        if self.passed() {
            "PASSED"
        } else {
            "FAILED"
        }
    }

    pub fn to_json(&self) -> String {
        // Plain structs with string map keys: serialisation cannot fail.
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    /// Writes `report.json` and `report.html` into `dir`, creating it.
    pub fn write_files(&self, dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let json_path = dir.join("report.json");
        let html_path = dir.join("report.html");
        std::fs::write(&json_path, self.to_json())?;
        std::fs::write(&html_path, self.to_html())?;
        Ok((json_path, html_path))
    }
}

#[cfg(test)]
mod tests {
    use super::svg::{line_chart, Chart, Series};
    use super::*;

    fn sample_report() -> Report {
        let latency = LatencySummary {
            count: 1000,
            min_ms: 1.5,
            mean_ms: 12.25,
            p50_ms: 10.0,
            p90_ms: 20.0,
            p95_ms: 25.5,
            p99_ms: 40.0,
            max_ms: 120.0,
        };
        Report {
            scenario: "seed".into(),
            started_at: "2025-01-01T19:00:00Z".into(),
            machine: "2 cores, 24 GiB".into(),
            duration_s: 300.0,
            requests: 1000,
            achieved_rps: 3.5,
            target_requests: 1000.0,
            http_latency: latency,
            dropped: 2,
            outcomes: [("202".to_string(), 900), ("409".to_string(), 100)].into(),
            error_rate: 0.0,
            fair_use_limits:
                "per buyer: 40 orders/s (derived), burst 40 (derived), 2400 open orders (derived)"
                    .into(),
            orders_by_status: [
                ("COMPLETED".to_string(), 850),
                ("FAILED:OUT_OF_STOCK".to_string(), 50),
            ]
            .into(),
            e2e_latency: Some(latency),
            sold_out_after_s: Some(19.0),
            per_second: (0..5)
                .map(|s| SecondRow {
                    second: s,
                    target_rps: 10.0 * s as f64,
                    achieved_rps: 9.5 * s as f64,
                    http_p50_ms: (s != 2).then_some(5.0),
                    http_p95_ms: Some(9.0),
                    http_p99_ms: Some(12.0),
                    stock: Some(100 - 10 * s as i64),
                    orders_completed: Some(s * 3),
                    ..SecondRow::default()
                })
                .collect(),
            checks: vec![
                Check::new("stock consistency", true, "final 0 = 3000 − 3000"),
                Check::new("p95 < 2000 ms", true, "p95 25.5 ms"),
            ],
            faults: vec![FaultRecord {
                at_s: 2.0,
                kind: "kill".into(),
                target: "payment".into(),
                recovered_after_s: Some(1.25),
                noticed_after_s: Some(0.5),
                redrives: Some(3),
                note: "restarted".into(),
            }],
            capacity: None,
            where_time_goes: None,
            processes: vec![ProcessUsage {
                name: "order-service".into(),
                peak_rss_mib: 120.5,
                cpu_seconds: 44.25,
                series: vec![ProcessSample {
                    second: 0,
                    cpu_pct: 50.0,
                    rss_mib: 100.0,
                }],
            }],
            cost: Some(OrderCost::new(
                [("order-service".to_string(), 44.25)],
                3_000,
                2_900,
                3_100,
            )),
        }
    }

    #[test]
    fn json_round_trip() {
        let report = sample_report();
        let parsed: Report = serde_json::from_str(&report.to_json()).expect("valid json");
        assert_eq!(parsed, report);
    }

    #[test]
    fn passed_needs_every_check_and_at_least_one() {
        let mut report = sample_report();
        assert!(report.passed());
        report.checks[1].passed = false;
        assert!(!report.passed());
        report.checks.clear();
        assert!(!report.passed());
    }

    #[test]
    fn terminal_summary_marks_each_check() {
        let mut report = sample_report();
        report.checks[1] = Check::new("p95 < 2000 ms", false, "p95 2345.0 ms");
        let summary = report.terminal_summary();
        assert!(summary.contains("✓ stock consistency"), "{summary}");
        assert!(summary.contains("✗ p95 < 2000 ms"), "{summary}");
        assert!(summary.contains("p95 2345.0 ms"));
        assert!(summary.contains("FAILED (1 of 2 checks failed)"));
        assert!(summary.contains("p(95)=25.50ms"));
        assert!(summary.contains("202=900"));
        assert!(
            summary.contains("40 orders/s (derived)"),
            "the limits the run had"
        );
        assert!(summary.contains("0 × 429 (counted as errors)"));
        // 44.25 CPU-s over 3,000 orders and 2,900 completed.
        assert!(summary.contains("CPU per order (3000 orders taken, 2900 completed"));
        assert!(summary.contains("14750"), "µs per order: {summary}");
        assert!(report.to_html().contains("<h2>CPU per order</h2>"));
    }

    #[test]
    fn terminal_summary_aligns_values() {
        let summary = sample_report().terminal_summary();
        let columns: Vec<usize> = summary
            .lines()
            .filter_map(|line| line.find("..: ").map(|i| line[..i].chars().count()))
            .collect();
        assert!(columns.len() > 5);
        assert!(columns.iter().all(|&c| c == columns[0]), "{summary}");
    }

    #[test]
    fn html_has_a_chart_for_each_view() {
        let html = sample_report().to_html();
        // 6 run charts + CPU + RSS.
        assert_eq!(html.matches("<svg").count(), 8);
        assert!(html.contains("Fault timeline"));
        assert!(html.contains("kill payment"), "fault marker on charts");
        assert!(!html.contains("<script"));
        assert!(
            !html.contains("src=") && !html.contains("href="),
            "nothing fetched"
        );

        let mut bare = sample_report();
        bare.processes.clear();
        bare.per_second.clear();
        let html = bare.to_html();
        assert_eq!(html.matches("<svg").count(), 6);
        assert_eq!(html.matches("no data").count(), 6);
    }

    #[test]
    fn html_escapes_every_string() {
        let mut report = sample_report();
        report.scenario = "<script>alert('x')</script>".into();
        report.checks[0].name = "a & b".into();
        report.processes[0].name = "<script>".into();
        let html = report.to_html();
        assert!(!html.contains("<script"));
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(html.contains("a &amp; b"));
    }

    #[test]
    fn chart_breaks_lines_at_gaps() {
        let series = Series::from_optional(
            "s",
            "#000",
            [
                (0.0, Some(1.0)),
                (1.0, Some(2.0)),
                (2.0, None),
                (3.0, Some(3.0)),
                (4.0, None),
                (5.0, Some(1.0)),
                (6.0, Some(0.0)),
            ],
        );
        let svg = line_chart(&Chart {
            series: vec![series],
            ..Chart::default()
        });
        assert_eq!(svg.matches("<path").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 1);
    }

    #[test]
    fn writes_both_files() {
        let dir = std::env::temp_dir().join(format!("loadtest-report-{}", std::process::id()));
        let (json, html) = sample_report()
            .write_files(&dir)
            .expect("writable temp dir");
        assert!(json.ends_with("report.json") && html.ends_with("report.html"));
        let text = std::fs::read_to_string(&json).expect("written");
        assert!(text.contains("\"scenario\": \"seed\""));
        assert!(std::fs::read_to_string(&html)
            .expect("written")
            .starts_with("<!DOCTYPE html>"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
