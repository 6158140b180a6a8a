//! The k6-style terminal summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{Check, FaultRecord, Report};
use crate::loadgen::stats::LatencySummary;

impl Report {
    /// A k6-style end-of-test summary: dot-leader aligned metrics, then every check.
    pub fn terminal_summary(&self) -> String {
        let mut metrics: Vec<(String, String)> = vec![
            ("started".into(), self.started_at.clone()),
            ("machine".into(), self.machine.clone()),
            ("duration".into(), format!("{:.1} s", self.duration_s)),
            (
                "requests".into(),
                format!(
                    "{} sent, {:.1}/s (planned {:.0})",
                    self.requests, self.achieved_rps, self.target_requests
                ),
            ),
            ("dropped".into(), self.dropped.to_string()),
            ("error rate".into(), percent(self.error_rate)),
            (
                "refused, fair use".into(),
                format!("{} × 429 (counted as errors)", self.rate_limited()),
            ),
            ("fair-use limits".into(), self.fair_use_limits.clone()),
            ("http latency".into(), latency_line(&self.http_latency)),
        ];
        if let Some(e2e) = &self.e2e_latency {
            metrics.push(("e2e latency".into(), latency_line(e2e)));
        }
        metrics.push(("outcomes".into(), counts_line(&self.outcomes)));
        metrics.push(("orders".into(), counts_line(&self.orders_by_status)));
        if let Some(seconds) = self.sold_out_after_s {
            metrics.push(("sold out after".into(), format!("{seconds:.1} s")));
        }
        for process in &self.processes {
            metrics.push((
                format!("process {}", process.name),
                format!(
                    "peak rss {:.1} MiB, cpu {:.1} s",
                    process.peak_rss_mib, process.cpu_seconds
                ),
            ));
        }
        if let Some(section) = &self.where_time_goes {
            metrics.extend(section.text_lines());
        }

        let check_label = |c: &Check| format!("{} {}", if c.passed { "✓" } else { "✗" }, c.name);
        let width = metrics
            .iter()
            .map(|(label, _)| label.chars().count())
            .chain(self.checks.iter().map(|c| check_label(c).chars().count()))
            .max()
            .unwrap_or(0)
            + 3;

        let mut out = format!("\n  █ {} — {}\n\n", self.scenario, self.verdict());
        for (label, value) in &metrics {
            let _ = writeln!(out, "    {}{value}", leader(label, width));
        }
        out.push_str("\n  checks\n");
        if self.checks.is_empty() {
            out.push_str("    ✗ no checks were run\n");
        }
        for check in &self.checks {
            let _ = writeln!(
                out,
                "    {}{}",
                leader(&check_label(check), width),
                check.detail
            );
        }
        if !self.faults.is_empty() {
            out.push_str("\n  faults\n");
            for fault in &self.faults {
                let recovered = fault
                    .recovered_after_s
                    .map_or("not recovered".to_string(), |s| {
                        format!("recovered after {s:.1} s")
                    });
                let _ = writeln!(
                    out,
                    "    at {:>7.1} s  {} {}: {}, {recovered}, {}  {}",
                    fault.at_s,
                    fault.kind,
                    fault.target,
                    noticed_text(fault),
                    redrives_text(fault),
                    fault.note
                );
            }
        }
        if let Some(cost) = &self.cost {
            out.push_str(&cost.text());
        }
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        let _ = writeln!(
            out,
            "\n  result: {} ({} of {} checks failed)",
            self.verdict(),
            failed,
            self.checks.len()
        );
        if let Some(capacity) = &self.capacity {
            out.push('\n');
            out.push_str(&capacity.text());
        }
        out
    }
}

fn leader(label: &str, width: usize) -> String {
    let dots = width.saturating_sub(label.chars().count() + 1);
    format!("{label} {}: ", ".".repeat(dots))
}

pub(super) fn millis(value: f64) -> String {
    format!("{value:.2}ms")
}

pub(super) fn percent(rate: f64) -> String {
    format!("{:.3} %", rate * 100.0)
}

fn latency_line(s: &LatencySummary) -> String {
    format!(
        "avg={} min={} med={} p(90)={} p(95)={} p(99)={} max={} count={}",
        millis(s.mean_ms),
        millis(s.min_ms),
        millis(s.p50_ms),
        millis(s.p90_ms),
        millis(s.p95_ms),
        millis(s.p99_ms),
        millis(s.max_ms),
        s.count
    )
}

fn counts_line(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(key, count)| format!("{key}={count}"))
        .collect::<Vec<_>>()
        .join("  ")
}

pub(super) fn noticed_text(fault: &FaultRecord) -> String {
    fault.noticed_after_s.map_or(
        "not noticed (no /ready 503, no healing counter moved)".to_string(),
        |s| format!("noticed after {s:.1} s"),
    )
}

pub(super) fn redrives_text(fault: &FaultRecord) -> String {
    fault
        .redrives
        .map_or("re-drives not measured".to_string(), |n| {
            format!("{n} re-drives")
        })
}
