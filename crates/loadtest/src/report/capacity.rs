//! The capacity section of a report: every step's figures and verdict, the highest step kept up
//! and the highest also fast (sustained), and the ratio to the naive baseline; its text and its
//! HTML section.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::cost::{self, OrderCost};
use super::svg::escape;
use super::svg::{line_chart, Chart, Series};
use crate::audit::check::Check;
use crate::observe::baseline::BaselineReport;
use crate::plan::capacity::CapacitySettings;

/// The check a capacity run adds: at least one step sustained.
pub const CHECK_CAPACITY: &str = "capacity";

/// What a step's verdict is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Kept up, and fast: every rule held.
    #[default]
    Sustained,
    /// Kept up, but its HTTP p99 was over the limit; the load went on.
    Slow,
    /// Did not keep up (dropped, unanswered or failed requests, a growing backlog); the load
    /// stopped here.
    Saturated,
    /// The step after the saturated one, stopped early; not judged.
    CutShort,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Sustained => "sustained",
            Verdict::Slow => "kept up, slow",
            Verdict::Saturated => "SATURATED",
            Verdict::CutShort => "cut short",
        }
    }
}

/// CPU and memory of one process during one step.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StepProcess {
    pub name: String,
    /// Mean CPU over the step, % of one core.
    pub cpu_pct: f64,
    pub peak_rss_mib: f64,
}

/// One step: what was asked, what happened, and the verdict.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StepFigures {
    /// 1-based.
    pub step: usize,
    pub target_rps: f64,
    pub from_s: f64,
    pub to_s: f64,
    /// Requests the schedule placed in the step.
    pub planned: u64,
    /// Sent and answered (or failed) by the evaluation.
    pub sent: u64,
    pub dropped: u64,
    pub errors: u64,
    /// Sent but unanswered at the evaluation.
    pub unfinished: u64,
    pub achieved_rps: f64,
    pub http_p50_ms: Option<f64>,
    pub http_p99_ms: Option<f64>,
    /// HTTP p99 of each latency window of the step (`capacity.latency_window`), in order.
    #[serde(default)]
    pub http_p99_windows_ms: Vec<f64>,
    /// Orders not final at the start and the end of the step.
    pub backlog_start: Option<i64>,
    pub backlog_end: Option<i64>,
    /// Growth of the fitted trend of non-final orders after `settle` (orders).
    pub backlog_growth: Option<f64>,
    /// Same for outbox rows + JetStream pending and unacknowledged messages. Shown, not judged:
    /// every such message belongs to an order that is not final yet, so the orders' trend
    /// already holds it (and is less noisy).
    pub messages_growth: Option<f64>,
    /// Length of the trend window (seconds) and how many samples it held.
    pub trend_window_s: f64,
    pub trend_samples: usize,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    /// Orders that reached COMPLETED within the step (by `finalized_at`), and per second.
    pub completed: u64,
    pub completed_per_s: f64,
    /// End-to-end latency (created → COMPLETED) of the orders completed within the step.
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    pub processes: Vec<StepProcess>,
    /// CPU of the whole machine over the step, % of one core (200 = both cores of two).
    pub machine_cpu_pct: Option<f64>,
    /// The part of it no tracked process used: other programs on the machine.
    pub other_cpu_pct: Option<f64>,
    /// CPU per completed order of each process over the step, and of the whole machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<OrderCost>,
}
/// The capacity section of `report.json` (next to the fields of a scenario report).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CapacitySummary {
    pub settings: Option<CapacitySettings>,
    pub steps: Vec<StepFigures>,
    /// Target rate of the highest step sustained with every rule holding (kept up and fast).
    pub sustained_rps: Option<f64>,
    /// Orders COMPLETED per second end to end during that step.
    pub sustained_completed_per_s: Option<f64>,
    /// Target rate of the highest step kept up, fast or slow: the throughput the pipeline
    /// carries (the figure that repeats; see `modes/capacity/rules.rs`).
    #[serde(default)]
    pub kept_up_rps: Option<f64>,
    /// Orders COMPLETED per second end to end during that step.
    #[serde(default)]
    pub kept_up_completed_per_s: Option<f64>,
    /// Target rate of the first saturated step and why.
    pub saturated_rps: Option<f64>,
    pub saturation_reasons: Vec<String>,
    /// Seconds after the start at which the load was stopped early.
    pub stopped_at_s: Option<f64>,
    /// COMPLETED orders per second of the run (index = second), from `orders.finalized_at`.
    pub completed_per_second: Vec<u64>,
    pub baseline: Option<BaselineReport>,
    pub baseline_error: Option<String>,
    /// `kept_up_completed_per_s / baseline.best_tps`: throughput against throughput.
    pub ratio_to_baseline: Option<f64>,
    /// The durability settings the figure was measured with.
    pub durability: String,
    /// CPU the machine used in the 2 s before the load (services idle), % of one core: other
    /// programs competing with the run show up here.
    pub machine_cpu_before_pct: Option<f64>,
}

impl CapacitySummary {
    pub fn fill_ratio(&mut self) {
        self.ratio_to_baseline = match (&self.baseline, self.kept_up_completed_per_s) {
            (Some(baseline), Some(completed)) if baseline.best_tps > 0.0 => {
                Some(completed / baseline.best_tps)
            }
            _ => None,
        };
    }

    /// The capacity check: passes when at least one step was sustained.
    pub fn check(&self) -> Check {
        let orders = |completed: Option<f64>| {
            completed.map_or(String::new(), |c| {
                format!(" ({c:.0} orders/s completed end to end)")
            })
        };
        let mut detail = match self.kept_up_rps {
            Some(rps) => format!(
                "highest step kept up {rps:.0} req/s{}",
                orders(self.kept_up_completed_per_s)
            ),
            None => "no step kept up: lower capacity.start_rate".to_string(),
        };
        let limit = self
            .settings
            .as_ref()
            .map_or("the latency limit".to_string(), |s| {
                format!("HTTP p99 ≤ {:.0} ms", s.http_p99_ms)
            });
        match self.sustained_rps {
            Some(rps) if Some(rps) == self.kept_up_rps => {
                let _ = write!(detail, ", within {limit}");
            }
            Some(rps) => {
                let _ = write!(
                    detail,
                    "; within {limit} up to {rps:.0} req/s{}",
                    orders(self.sustained_completed_per_s)
                );
            }
            None if self.kept_up_rps.is_some() => {
                let _ = write!(detail, "; no step within {limit}");
            }
            None => {}
        }
        match self.saturated_rps {
            Some(rps) => {
                let _ = write!(
                    detail,
                    "; saturated at {rps:.0} req/s: {}",
                    self.saturation_reasons.join("; ")
                );
            }
            None if !self.steps.is_empty() => {
                detail.push_str("; reached max_rate without saturating")
            }
            None => {}
        }
        Check::new(CHECK_CAPACITY, self.sustained_rps.is_some(), detail)
    }

    /// The per-step table, the headline and the baseline, for the terminal and the docs.
    pub fn text(&self) -> String {
        let mut out = String::from("\n  capacity steps\n");
        let _ = writeln!(
            out,
            "    {:>4} {:>7} {:>8} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7}  verdict",
            "step",
            "target",
            "achieved",
            "drop %",
            "p50 ms",
            "p99 ms",
            "e2e p99",
            "done/s",
            "backlog",
            "messages",
            "other%",
        );
        for s in &self.steps {
            let _ = writeln!(
                out,
                "    {:>4} {:>7.0} {:>8.0} {:>7.2} {:>8} {:>8} {:>8} {:>9.0} {:>8} {:>8} {:>7}  {}{}",
                s.step,
                s.target_rps,
                s.achieved_rps,
                s.dropped as f64 / s.planned.max(1) as f64 * 100.0,
                opt_ms(s.http_p50_ms),
                opt_ms(s.http_p99_ms),
                opt_ms(s.e2e_p99_ms),
                s.completed_per_s,
                s.backlog_growth
                    .map_or("-".to_string(), |g| format!("{g:+.0}")),
                s.messages_growth
                    .map_or("-".to_string(), |g| format!("{g:+.0}")),
                s.other_cpu_pct.map_or("-".to_string(), |c| format!("{c:.0}")),
                s.verdict.label(),
                if s.reasons.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.reasons.join("; "))
                }
            );
        }
        out.push_str(&self.cost_text());
        if let Some(top) = self
            .kept_up_rps
            .and_then(|rps| self.steps.iter().find(|s| s.target_rps == rps))
        {
            let _ = writeln!(
                out,
                "\n  CPU and memory at the highest step kept up ({:.0} req/s)",
                top.target_rps
            );
            for p in &top.processes {
                let _ = writeln!(
                    out,
                    "    {:<18} cpu {:>6.1} %   rss {:>7.1} MiB",
                    p.name, p.cpu_pct, p.peak_rss_mib
                );
            }
            if let (Some(all), Some(other)) = (top.machine_cpu_pct, top.other_cpu_pct) {
                let _ = writeln!(
                    out,
                    "    {:<18} cpu {other:>6.1} %\n    {:<18} cpu {all:>6.1} %  (100 % = one core)",
                    "(other programs)", "machine total"
                );
            }
        }
        out.push('\n');
        let _ = writeln!(out, "  {}", self.check().detail);
        if let Some(baseline) = &self.baseline {
            out.push('\n');
            out.push_str(&baseline.table());
        }
        if let Some(error) = &self.baseline_error {
            let _ = writeln!(out, "  naive baseline not measured: {error}");
        }
        if let Some(ratio) = self.ratio_to_baseline {
            let _ = writeln!(
                out,
                "  ratio: {:.0} completed orders/s end to end (highest step kept up) ÷ {:.0} naive tps = {ratio:.2}×",
                self.kept_up_completed_per_s.unwrap_or(0.0),
                self.baseline.as_ref().map_or(0.0, |b| b.best_tps)
            );
        }
        let _ = writeln!(out, "  durability: {}", self.durability);
        if let Some(before) = self.machine_cpu_before_pct {
            let _ = writeln!(
                out,
                "  machine CPU in the 2 s before the load: {before:.0} % of one core (services idle)"
            );
        }
        out
    }

    /// The HTML section: headline, baseline, per-step table and the capacity charts.
    pub fn html(&self) -> String {
        let mut html = String::from("<section><h2>Capacity</h2>\n<table class=\"kv\">\n");
        let mut row = |label: &str, value: String| {
            let _ = writeln!(
                html,
                "<tr><th>{}</th><td>{}</td></tr>",
                escape(label),
                escape(&value)
            );
        };
        row("Result", self.check().detail);
        if let Some(completed) = self.kept_up_completed_per_s {
            row(
                "Completed orders/s (highest step kept up)",
                format!("{completed:.0}"),
            );
        }
        if let Some(completed) = self.sustained_completed_per_s {
            row(
                "Completed orders/s (highest sustained step)",
                format!("{completed:.0}"),
            );
        }
        if let Some(baseline) = &self.baseline {
            for run in &baseline.runs {
                row(
                    &format!("Naive baseline, {} connection(s)", run.concurrency),
                    format!(
                        "{:.0} tps (p99 {:.2} ms{})",
                        run.tps,
                        run.p99_ms,
                        if run.consistent { "" } else { ", INCONSISTENT" }
                    ),
                );
            }
            row(
                "Naive baseline, best",
                format!(
                    "{:.0} tps with {} connection(s) (PostgreSQL {}, fsync={}, synchronous_commit={})",
                    baseline.best_tps,
                    baseline.best_concurrency,
                    baseline.server_version,
                    baseline.fsync,
                    baseline.synchronous_commit
                ),
            );
        }
        if let Some(error) = &self.baseline_error {
            row("Naive baseline", format!("not measured: {error}"));
        }
        if let Some(ratio) = self.ratio_to_baseline {
            row("Ratio to the naive baseline", format!("{ratio:.2}×"));
        }
        row("Durability", self.durability.clone());
        if let Some(before) = self.machine_cpu_before_pct {
            row(
                "Machine CPU before the load",
                format!("{before:.0} % of one core (services idle)"),
            );
        }
        html.push_str("</table>\n");

        let names: Vec<String> = self
            .steps
            .first()
            .map(|s| s.processes.iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default();
        html.push_str(
            "<table>\n<tr><th>step</th><th>target req/s</th><th>achieved</th><th>dropped</th>\
             <th>HTTP p50</th><th>HTTP p99</th><th>e2e p99</th><th>completed/s</th>\
             <th>backlog growth</th><th>messages growth</th><th>other CPU %</th>",
        );
        for name in &names {
            let _ = write!(html, "<th>{} CPU % / RSS MiB</th>", escape(name));
        }
        html.push_str("<th>verdict</th></tr>\n");
        for s in &self.steps {
            let class = match s.verdict {
                Verdict::Sustained => "pass",
                Verdict::Saturated => "fail",
                Verdict::Slow | Verdict::CutShort => "",
            };
            let _ = write!(
                html,
                "<tr class=\"{class}\"><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td>",
                s.step,
                s.target_rps,
                s.achieved_rps,
                s.dropped,
                opt_ms(s.http_p50_ms),
                opt_ms(s.http_p99_ms),
                opt_ms(s.e2e_p99_ms),
                s.completed_per_s,
                s.backlog_growth.map_or("-".into(), |g| format!("{g:+.0}")),
                s.messages_growth.map_or("-".into(), |g| format!("{g:+.0}")),
                s.other_cpu_pct.map_or("-".into(), |c| format!("{c:.0}")),
            );
            for name in &names {
                match s.processes.iter().find(|p| &p.name == name) {
                    Some(p) => {
                        let _ = write!(html, "<td>{:.0} / {:.0}</td>", p.cpu_pct, p.peak_rss_mib);
                    }
                    None => html.push_str("<td>-</td>"),
                }
            }
            let _ = writeln!(
                html,
                "<td>{}{}</td></tr>",
                escape(s.verdict.label()),
                escape(&if s.reasons.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.reasons.join("; "))
                })
            );
        }
        html.push_str("</table>\n");
        html.push_str(&self.cost_html());
        for chart in self.charts() {
            let _ = writeln!(html, "<figure>{chart}</figure>");
        }
        html.push_str("</section>\n");
        html
    }

    /// The names of the cost table's rows (processes, all tracked, machine), in step order.
    fn cost_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for row in self
            .steps
            .iter()
            .filter_map(|s| s.cost.as_ref())
            .flat_map(|c| &c.rows)
        {
            if !names.contains(&row.name) {
                names.push(row.name.clone());
            }
        }
        names
    }

    fn cost_of(step: &StepFigures, name: &str) -> String {
        cost::micros(
            step.cost
                .as_ref()
                .and_then(|c| c.rows.iter().find(|r| r.name == name))
                .and_then(|r| r.us_per_completed),
        )
    }

    /// CPU µs per completed order of each process at every step: flat cost or not, at a glance.
    fn cost_text(&self) -> String {
        let names = self.cost_names();
        if names.is_empty() {
            return String::new();
        }
        let mut out = String::from("\n  CPU µs per completed order, per step\n");
        let _ = write!(out, "    {:>4} {:>7}", "step", "target");
        for name in &names {
            let _ = write!(out, " {:>w$}", name, w = name.len().max(8));
        }
        out.push('\n');
        for s in &self.steps {
            let _ = write!(out, "    {:>4} {:>7.0}", s.step, s.target_rps);
            for name in &names {
                let _ = write!(
                    out,
                    " {:>w$}",
                    Self::cost_of(s, name),
                    w = name.len().max(8)
                );
            }
            out.push('\n');
        }
        out
    }

    fn cost_html(&self) -> String {
        let names = self.cost_names();
        if names.is_empty() {
            return String::new();
        }
        let mut html = String::from(
            "<h3>CPU µs per completed order, per step</h3>\n<table>\n<tr><th>step</th><th>target req/s</th>",
        );
        for name in &names {
            let _ = write!(html, "<th>{}</th>", escape(name));
        }
        html.push_str("</tr>\n");
        for s in &self.steps {
            let _ = write!(html, "<tr><td>{}</td><td>{:.0}</td>", s.step, s.target_rps);
            for name in &names {
                let _ = write!(html, "<td>{}</td>", Self::cost_of(s, name));
            }
            html.push_str("</tr>\n");
        }
        html.push_str("</table>\n");
        html
    }

    fn charts(&self) -> Vec<String> {
        let per_second = Series {
            name: "completed orders/s (finalized_at)".into(),
            colour: "#2ca02c".into(),
            points: self
                .completed_per_second
                .iter()
                .enumerate()
                .map(|(s, &n)| (s as f64, n as f64))
                .collect(),
            dashed: false,
        };
        let target = Series {
            name: "target req/s".into(),
            colour: "#888888".into(),
            points: self
                .steps
                .iter()
                .flat_map(|s| [(s.from_s, s.target_rps), (s.to_s, s.target_rps)])
                .collect(),
            dashed: true,
        };
        let curve = |name: &str, colour: &str, value: fn(&StepFigures) -> f64| Series {
            name: name.into(),
            colour: colour.into(),
            points: self
                .steps
                .iter()
                .filter(|s| s.verdict != Verdict::CutShort)
                .map(|s| (s.target_rps, value(s)))
                .collect(),
            dashed: false,
        };
        vec![
            line_chart(&Chart {
                title: "Completed orders per second, end to end".into(),
                x_label: "seconds".into(),
                y_label: "orders/s".into(),
                series: vec![per_second, target],
                ..Chart::default()
            }),
            line_chart(&Chart {
                title: "Throughput per step".into(),
                x_label: "target req/s".into(),
                y_label: "per second".into(),
                series: vec![
                    curve("achieved req/s", "#1f77b4", |s| s.achieved_rps),
                    curve("completed orders/s", "#2ca02c", |s| s.completed_per_s),
                ],
                ..Chart::default()
            }),
            line_chart(&Chart {
                title: "Latency per step".into(),
                x_label: "target req/s".into(),
                y_label: "ms".into(),
                series: vec![
                    curve("HTTP p99", "#d62728", |s| s.http_p99_ms.unwrap_or(f64::NAN)),
                    curve("e2e p99 (completed)", "#ff7f0e", |s| {
                        s.e2e_p99_ms.unwrap_or(f64::NAN)
                    }),
                ],
                ..Chart::default()
            }),
        ]
    }
}

fn opt_ms(value: Option<f64>) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;

    /// A step at `rate` that kept up.
    fn healthy(rate: f64) -> StepFigures {
        StepFigures {
            step: 1,
            target_rps: rate,
            to_s: 30.0,
            achieved_rps: rate,
            http_p99_ms: Some(40.0),
            ..StepFigures::default()
        }
    }

    #[test]
    fn the_summary_check_and_ratio() {
        let mut steps = vec![healthy(500.0), healthy(1000.0), healthy(1500.0)];
        steps[1].step = 2;
        steps[2].step = 3;
        steps[0].completed_per_s = 499.0;
        steps[1].completed_per_s = 998.0;
        steps[1].verdict = Verdict::Slow;
        steps[1].reasons = vec!["HTTP p99 150.0 ms > 100 ms".into()];
        steps[2].verdict = Verdict::Saturated;
        steps[2].reasons = vec!["end-to-end backlog grew by 900 orders over 20 s".into()];
        let mut summary = CapacitySummary {
            settings: Some(CapacitySettings::default()),
            sustained_rps: Some(500.0),
            sustained_completed_per_s: Some(499.0),
            kept_up_rps: Some(1000.0),
            kept_up_completed_per_s: Some(998.0),
            saturated_rps: Some(1500.0),
            saturation_reasons: steps[2].reasons.clone(),
            steps,
            baseline: Some(BaselineReport {
                best_tps: 4000.0,
                ..BaselineReport::default()
            }),
            ..CapacitySummary::default()
        };
        summary.fill_ratio();
        // Throughput against throughput: the highest step kept up, slow or not.
        assert_eq!(summary.ratio_to_baseline, Some(998.0 / 4000.0));
        let check = summary.check();
        assert!(check.passed);
        assert_eq!(
            check.detail,
            "highest step kept up 1000 req/s (998 orders/s completed end to end); within HTTP \
             p99 ≤ 100 ms up to 500 req/s (499 orders/s completed end to end); saturated at 1500 \
             req/s: end-to-end backlog grew by 900 orders over 20 s"
        );
        let text = summary.text();
        assert!(text.contains("kept up, slow: HTTP p99 150.0 ms"), "{text}");
        assert!(text.contains("SATURATED: end-to-end backlog"), "{text}");
        assert!(text.contains("0.25×"), "{text}");
        let html = summary.html();
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(!CapacitySummary::default().check().passed);
        // Kept up and fast at the same step: one figure.
        summary.sustained_rps = Some(1000.0);
        assert!(
            summary
                .check()
                .detail
                .starts_with("highest step kept up 1000 req/s (998 orders/s completed end to end), within HTTP p99 ≤ 100 ms;"),
            "{}",
            summary.check().detail
        );
    }

    #[test]
    fn the_report_files_carry_the_capacity_section() {
        let dir = std::env::temp_dir().join(format!("loadtest-capacity-{}", std::process::id()));
        let report = Report {
            scenario: "capacity".into(),
            capacity: Some(CapacitySummary {
                steps: vec![healthy(500.0)],
                sustained_rps: Some(500.0),
                kept_up_rps: Some(500.0),
                ..CapacitySummary::default()
            }),
            ..Report::default()
        };
        let (json, html) = report.write_files(&dir).expect("written");
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid");
        assert_eq!(value["scenario"], "capacity");
        assert_eq!(value["capacity"]["sustained_rps"], 500.0);
        assert_eq!(value["capacity"]["kept_up_rps"], 500.0);
        assert_eq!(value["capacity"]["steps"][0]["verdict"], "sustained");
        let page = std::fs::read_to_string(&html).expect("html");
        let capacity_at = page.find("<h2>Capacity</h2>").expect("section");
        assert!(capacity_at < page.find("<h2>Over time</h2>").expect("charts"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
