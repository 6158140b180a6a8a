//! The run report and its three renderings: a k6-style terminal summary, JSON, and one
//! self-contained HTML page with inline SVG charts (no scripts, no network).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::stats::LatencySummary;

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
    /// Final order counts, e.g. "COMPLETED", "FAILED:OUT_OF_STOCK".
    pub orders_by_status: BTreeMap<String, u64>,
    /// Order created → final status.
    pub e2e_latency: Option<LatencySummary>,
    pub sold_out_after_s: Option<f64>,
    pub per_second: Vec<SecondRow>,
    pub checks: Vec<CheckResult>,
    #[serde(default)]
    pub faults: Vec<FaultRecord>,
    #[serde(default)]
    pub processes: Vec<ProcessUsage>,
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
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    /// The numbers behind the verdict, e.g. "final stock 0 = 3000 − 3000 sold".
    pub detail: String,
}

impl CheckResult {
    pub fn new(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Self {
        CheckResult {
            name: name.into(),
            passed,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FaultRecord {
    pub at_s: f64,
    pub kind: String,
    pub target: String,
    pub recovered_after_s: Option<f64>,
    /// When the system first showed it noticed, after the injection: an instance's `/ready`
    /// said 503, or one of its healing counters moved (see `faults::probe::SIGNALS`).
    #[serde(default)]
    pub noticed_after_s: Option<f64>,
    /// Orders re-driven (asked again) from the injection until the system caught up.
    #[serde(default)]
    pub redrives: Option<u64>,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProcessUsage {
    pub name: String,
    pub peak_rss_mib: f64,
    pub cpu_seconds: f64,
    #[serde(default)]
    pub series: Vec<ProcessSample>,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ProcessSample {
    pub second: u64,
    pub cpu_pct: f64,
    pub rss_mib: f64,
}

impl Report {
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

        let check_label =
            |c: &CheckResult| format!("{} {}", if c.passed { "✓" } else { "✗" }, c.name);
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
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        let _ = writeln!(
            out,
            "\n  result: {} ({} of {} checks failed)",
            self.verdict(),
            failed,
            self.checks.len()
        );
        out
    }

    pub fn to_json(&self) -> String {
        // Plain structs with string map keys: serialisation cannot fail.
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    /// One self-contained HTML page: inline CSS and SVG, no scripts, nothing fetched.
    pub fn to_html(&self) -> String {
        let mut html = String::with_capacity(64 * 1024);
        let title = format!("Load test: {}", self.scenario);
        let _ = write!(
            html,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
            escape(&title)
        );
        let verdict_class = if self.passed() { "pass" } else { "fail" };
        let _ = writeln!(
            html,
            "<h1>{} <span class=\"badge {verdict_class}\">{}</span></h1>",
            escape(&title),
            self.verdict()
        );

        html.push_str(&self.summary_html());
        html.push_str(&self.checks_html());
        html.push_str("<section><h2>Over time</h2>\n");
        for chart in self.charts() {
            let _ = writeln!(html, "<figure>{chart}</figure>");
        }
        html.push_str("</section>\n");
        html.push_str(&self.latency_html());
        html.push_str(&counts_table_html(
            "HTTP outcomes",
            "outcome",
            &self.outcomes,
        ));
        html.push_str(&counts_table_html(
            "Orders by final status",
            "status",
            &self.orders_by_status,
        ));
        html.push_str(&self.faults_html());
        html.push_str(&self.processes_html());
        html.push_str("</body>\n</html>\n");
        html
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

    fn summary_html(&self) -> String {
        let mut rows = vec![
            ("Scenario", self.scenario.clone()),
            ("Started", self.started_at.clone()),
            ("Machine", self.machine.clone()),
            ("Duration", format!("{:.1} s", self.duration_s)),
            ("Requests sent", self.requests.to_string()),
            ("Requests planned", format!("{:.0}", self.target_requests)),
            ("Achieved rate", format!("{:.1} req/s", self.achieved_rps)),
            ("Dropped (no free worker)", self.dropped.to_string()),
            ("Error rate", percent(self.error_rate)),
        ];
        if let Some(seconds) = self.sold_out_after_s {
            rows.push(("Sold out after", format!("{seconds:.1} s")));
        }
        let mut html = String::from("<section><h2>Summary</h2>\n<table class=\"kv\">\n");
        for (label, value) in rows {
            let _ = writeln!(
                html,
                "<tr><th>{}</th><td>{}</td></tr>",
                escape(label),
                escape(&value)
            );
        }
        html.push_str("</table></section>\n");
        html
    }

    fn checks_html(&self) -> String {
        let mut html = String::from(
            "<section><h2>Checks</h2>\n<table>\n<tr><th></th><th>check</th><th>detail</th></tr>\n",
        );
        if self.checks.is_empty() {
            html.push_str(
                "<tr class=\"fail\"><td>✗</td><td colspan=\"2\">no checks were run</td></tr>\n",
            );
        }
        for check in &self.checks {
            let (class, mark) = if check.passed {
                ("pass", "✓")
            } else {
                ("fail", "✗")
            };
            let _ = writeln!(
                html,
                "<tr class=\"{class}\"><td>{mark}</td><td>{}</td><td>{}</td></tr>",
                escape(&check.name),
                escape(&check.detail)
            );
        }
        html.push_str("</table></section>\n");
        html
    }

    fn latency_html(&self) -> String {
        let mut html = String::from(
            "<section><h2>Latency</h2>\n<table>\n<tr><th></th><th>count</th><th>min</th>\
             <th>mean</th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>max</th></tr>\n",
        );
        let mut row = |label: &str, s: &LatencySummary| {
            let _ = write!(html, "<tr><th>{}</th><td>{}</td>", escape(label), s.count);
            for value in [
                s.min_ms, s.mean_ms, s.p50_ms, s.p90_ms, s.p95_ms, s.p99_ms, s.max_ms,
            ] {
                let _ = write!(html, "<td>{}</td>", millis(value));
            }
            html.push_str("</tr>\n");
        };
        row("HTTP (from intended start)", &self.http_latency);
        if let Some(e2e) = &self.e2e_latency {
            row("End to end (created → final)", e2e);
        }
        html.push_str("</table></section>\n");
        html
    }

    fn faults_html(&self) -> String {
        let mut html = String::from("<section><h2>Fault timeline</h2>\n");
        if self.faults.is_empty() {
            html.push_str("<p>No faults injected.</p></section>\n");
            return html;
        }
        html.push_str(
            "<table>\n<tr><th>at</th><th>kind</th><th>target</th><th>noticed (/ready 503 or a healing counter)</th><th>recovered after the lift</th><th>re-drives</th><th>note</th></tr>\n",
        );
        for fault in &self.faults {
            let recovered = fault
                .recovered_after_s
                .map_or("not recovered".to_string(), |s| format!("{s:.1} s"));
            let _ = writeln!(
                html,
                "<tr><td>{:.1} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                fault.at_s,
                escape(&fault.kind),
                escape(&fault.target),
                escape(&noticed_text(fault)),
                escape(&recovered),
                escape(&redrives_text(fault)),
                escape(&fault.note)
            );
        }
        html.push_str("</table></section>\n");
        html
    }

    fn processes_html(&self) -> String {
        if self.processes.is_empty() {
            return String::new();
        }
        let mut html = String::from(
            "<section><h2>Processes</h2>\n<table>\n<tr><th>process</th><th>peak RSS</th><th>CPU time</th></tr>\n",
        );
        for process in &self.processes {
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{:.1} MiB</td><td>{:.1} s</td></tr>",
                escape(&process.name),
                process.peak_rss_mib,
                process.cpu_seconds
            );
        }
        html.push_str("</table></section>\n");
        html
    }

    /// Every chart of the page, as SVG strings. The six run charts are always drawn (empty ones
    /// say so); the per-process charts only when samples exist.
    fn charts(&self) -> Vec<String> {
        let rows = &self.per_second;
        let x = |row: &SecondRow| row.second as f64;
        let series = |name: &str, colour: &str, value: &dyn Fn(&SecondRow) -> Option<f64>| {
            Series::from_optional(name, colour, rows.iter().map(|r| (x(r), value(r))))
        };
        let markers: Vec<Marker> = self
            .faults
            .iter()
            .map(|f| Marker {
                x: f.at_s,
                label: format!("{} {}", f.kind, f.target),
            })
            .collect();
        // Every time chart spans the whole run, so they line up when read one under another.
        let last_second = rows.last().map_or(0.0, x);
        let x_range = Some((0.0, self.duration_s.max(last_second)));
        let chart = |title: &str, y_label: &str, series: Vec<Series>| {
            line_chart(&Chart {
                title: title.into(),
                x_label: "seconds".into(),
                y_label: y_label.into(),
                series,
                markers: markers.clone(),
                x_range,
            })
        };

        let mut charts = vec![
            chart(
                "Requests per second: target vs achieved",
                "req/s",
                vec![
                    series("achieved", PALETTE[0], &|r| Some(r.achieved_rps)),
                    // Dashed and on top, so the achieved line shows through where they agree.
                    series("target", GREY, &|r| Some(r.target_rps)).dashed(),
                ],
            ),
            chart(
                "HTTP latency from intended start",
                "ms",
                vec![
                    series("p50", PALETTE[2], &|r| r.http_p50_ms),
                    series("p95", PALETTE[1], &|r| r.http_p95_ms),
                    series("p99", PALETTE[3], &|r| r.http_p99_ms),
                ],
            ),
            chart(
                "End-to-end latency (order created → final status)",
                "ms",
                vec![
                    series("p50", PALETTE[2], &|r| r.e2e_p50_ms),
                    series("p95", PALETTE[1], &|r| r.e2e_p95_ms),
                    series("p99", PALETTE[3], &|r| r.e2e_p99_ms),
                ],
            ),
            chart(
                "Stock",
                "units",
                vec![series("stock", PALETTE[4], &|r| r.stock.map(|v| v as f64))],
            ),
            chart(
                "Outbox backlog",
                "rows",
                vec![series("unpublished rows", PALETTE[5], &|r| {
                    r.outbox_backlog.map(|v| v as f64)
                })],
            ),
            chart(
                "Orders by status",
                "orders",
                vec![
                    series("pending", PALETTE[1], &|r| {
                        r.orders_pending.map(|v| v as f64)
                    }),
                    series("completed", PALETTE[2], &|r| {
                        r.orders_completed.map(|v| v as f64)
                    }),
                    series("failed", PALETTE[3], &|r| r.orders_failed.map(|v| v as f64)),
                ],
            ),
        ];

        if self.processes.iter().any(|p| !p.series.is_empty()) {
            let per_process = |value: fn(&ProcessSample) -> f64| -> Vec<Series> {
                self.processes
                    .iter()
                    .enumerate()
                    .map(|(i, p)| Series {
                        name: p.name.clone(),
                        colour: PALETTE[i % PALETTE.len()].to_string(),
                        dashed: false,
                        points: p
                            .series
                            .iter()
                            .map(|s| (s.second as f64, value(s)))
                            .collect(),
                    })
                    .collect()
            };
            charts.push(chart("CPU per process", "%", per_process(|s| s.cpu_pct)));
            charts.push(chart(
                "Memory (RSS) per process",
                "MiB",
                per_process(|s| s.rss_mib),
            ));
        }
        charts
    }
}

fn leader(label: &str, width: usize) -> String {
    let dots = width.saturating_sub(label.chars().count() + 1);
    format!("{label} {}: ", ".".repeat(dots))
}

fn millis(value: f64) -> String {
    format!("{value:.2}ms")
}

fn percent(rate: f64) -> String {
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

fn counts_table_html(title: &str, key_name: &str, counts: &BTreeMap<String, u64>) -> String {
    let total: u64 = counts.values().sum();
    let mut html = format!(
        "<section><h2>{}</h2>\n<table>\n<tr><th>{}</th><th>count</th><th>share</th></tr>\n",
        escape(title),
        escape(key_name)
    );
    for (key, count) in counts {
        let share = if total == 0 {
            0.0
        } else {
            *count as f64 / total as f64
        };
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{count}</td><td>{}</td></tr>",
            escape(key),
            percent(share)
        );
    }
    let _ = writeln!(
        html,
        "<tr class=\"total\"><td>total</td><td>{total}</td><td></td></tr>\n</table></section>"
    );
    html
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:960px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}
th,td{padding:.25em .8em;border-bottom:1px solid #eee;text-align:left;font-variant-numeric:tabular-nums}
tr.pass td:first-child{color:#1a7f37;font-weight:bold}tr.fail td:first-child{color:#cf222e;font-weight:bold}
tr.fail{background:#fff0f0}tr.total td{font-weight:bold}
.badge{font-size:.6em;padding:.2em .6em;border-radius:.3em;color:#fff;vertical-align:middle}
.badge.pass{background:#1a7f37}.badge.fail{background:#cf222e}
figure{margin:1em 0}svg{background:#fff;border:1px solid #eee}
";

const GREY: &str = "#888888";
const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of a chart. A non-finite `y` breaks the line (a gap in the data).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub colour: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

impl Series {
    /// Missing values become gaps.
    pub fn from_optional(
        name: &str,
        colour: &str,
        points: impl IntoIterator<Item = (f64, Option<f64>)>,
    ) -> Series {
        Series {
            name: name.to_string(),
            colour: colour.to_string(),
            points: points
                .into_iter()
                .map(|(x, y)| (x, y.unwrap_or(f64::NAN)))
                .collect(),
            dashed: false,
        }
    }

    pub fn dashed(self) -> Series {
        Series {
            dashed: true,
            ..self
        }
    }
}

fn noticed_text(fault: &FaultRecord) -> String {
    fault.noticed_after_s.map_or(
        "not noticed (no /ready 503, no healing counter moved)".to_string(),
        |s| format!("noticed after {s:.1} s"),
    )
}

fn redrives_text(fault: &FaultRecord) -> String {
    fault
        .redrives
        .map_or("re-drives not measured".to_string(), |n| {
            format!("{n} re-drives")
        })
}

/// A vertical line across a chart, e.g. when a fault was injected.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub x: f64,
    pub label: String,
}

const CHART_WIDTH: f64 = 900.0;
const CHART_HEIGHT: f64 = 300.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 50.0;
const MARGIN_BOTTOM: f64 = 45.0;

/// A line chart to draw with [`line_chart`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Vertical lines, e.g. fault injections.
    pub markers: Vec<Marker>,
    /// Makes the x axis cover at least this range, so charts of one run share their time axis.
    pub x_range: Option<(f64, f64)>,
}

/// An inline SVG line chart with axes, tick labels, a legend and optional markers.
/// Charts without any finite point say "no data" instead of drawing axes.
pub fn line_chart(chart: &Chart) -> String {
    let Chart {
        title,
        x_label,
        y_label,
        series,
        markers,
        x_range,
    } = chart;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{CHART_WIDTH}\" height=\"{CHART_HEIGHT}\" \
         viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" font-family=\"sans-serif\" font-size=\"11\" \
         role=\"img\" aria-label=\"{0}\">\n<text x=\"{MARGIN_LEFT}\" y=\"18\" font-size=\"14\" \
         font-weight=\"bold\">{0}</text>\n",
        escape(title)
    );

    let finite: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if finite.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n</svg>",
            CHART_WIDTH / 2.0,
            CHART_HEIGHT / 2.0
        );
        return svg;
    }

    let x_ends = x_range.iter().flat_map(|&(from, to)| [from, to]);
    let x_axis = Axis::covering(finite.iter().map(|p| p.0).chain(x_ends), false, 8.0);
    let y_axis = Axis::covering(finite.iter().map(|p| p.1), true, 5.0);
    let plot_width = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_height = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let bottom = MARGIN_TOP + plot_height;
    let px = |x: f64| MARGIN_LEFT + x_axis.fraction(x) * plot_width;
    let py = |y: f64| bottom - y_axis.fraction(y) * plot_height;

    // Grid and tick labels.
    for tick in y_axis.ticks() {
        let y = py(tick);
        let _ = writeln!(
            svg,
            "<line x1=\"{MARGIN_LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            MARGIN_LEFT + plot_width,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            tick_label(tick, y_axis.step)
        );
    }
    for tick in x_axis.ticks() {
        let x = px(tick);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{MARGIN_TOP}\" x2=\"{x:.1}\" y2=\"{bottom}\" stroke=\"#f3f3f3\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            bottom + 15.0,
            tick_label(tick, x_axis.step)
        );
    }
    // Axes and their labels.
    let _ = writeln!(
        svg,
        "<line x1=\"{MARGIN_LEFT}\" y1=\"{MARGIN_TOP}\" x2=\"{MARGIN_LEFT}\" y2=\"{bottom}\" stroke=\"#444\"/>\
         <line x1=\"{MARGIN_LEFT}\" y1=\"{bottom}\" x2=\"{:.1}\" y2=\"{bottom}\" stroke=\"#444\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        MARGIN_LEFT + plot_width,
        MARGIN_LEFT + plot_width / 2.0,
        CHART_HEIGHT - 8.0,
        escape(x_label),
        MARGIN_TOP + plot_height / 2.0,
        escape(y_label)
    );

    for line in series {
        svg.push_str(&series_path(line, &px, &py));
    }

    // Markers after the lines, so their labels stay readable.
    for marker in markers
        .iter()
        .filter(|m| m.x >= x_axis.min && m.x <= x_axis.max)
    {
        let x = px(marker.x);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{MARGIN_TOP}\" x2=\"{x:.1}\" y2=\"{bottom}\" stroke=\"#cf222e\" \
             stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#cf222e\" \
             stroke=\"#fff\" stroke-width=\"3\" paint-order=\"stroke\">{}</text>",
            x + 3.0,
            MARGIN_TOP + 10.0,
            escape(&marker.label)
        );
    }

    // Legend, left to right above the plot.
    let mut legend_x = MARGIN_LEFT;
    for line in series {
        let colour = escape(&line.colour);
        let _ = writeln!(
            svg,
            "<rect x=\"{legend_x:.1}\" y=\"28\" width=\"12\" height=\"12\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"38\">{}</text>",
            legend_x + 16.0,
            escape(&line.name)
        );
        legend_x += 28.0 + 6.5 * line.name.chars().count() as f64;
    }
    svg.push_str("</svg>");
    svg
}

/// The series as SVG paths, one per unbroken run; a lone point between gaps becomes a dot.
fn series_path(series: &Series, px: &dyn Fn(f64) -> f64, py: &dyn Fn(f64) -> f64) -> String {
    let colour = escape(&series.colour);
    let dash = if series.dashed {
        " stroke-dasharray=\"6 4\""
    } else {
        ""
    };
    let mut out = String::new();
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for &(x, y) in &series.points {
        if x.is_finite() && y.is_finite() {
            if let Some(run) = runs.last_mut() {
                run.push((px(x), py(y)));
            }
        } else if runs.last().is_some_and(|run| !run.is_empty()) {
            runs.push(Vec::new());
        }
    }
    for run in runs.iter().filter(|run| !run.is_empty()) {
        if let [(x, y)] = run.as_slice() {
            let _ = writeln!(
                out,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2\" fill=\"{colour}\"/>"
            );
            continue;
        }
        let mut d = String::new();
        for (i, (x, y)) in run.iter().enumerate() {
            let _ = write!(d, "{}{x:.1},{y:.1}", if i == 0 { "M" } else { " L" });
        }
        let _ = writeln!(
            out,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"{dash}/>"
        );
    }
    out
}

/// An axis range rounded out to "nice" ticks (1, 2 or 5 × 10ⁿ).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Axis {
    min: f64,
    max: f64,
    step: f64,
}

impl Axis {
    /// `from_zero`: quantities like rates and stock read best against a zero baseline.
    /// `ticks`: roughly how many tick intervals to aim for.
    fn covering(values: impl Iterator<Item = f64>, from_zero: bool, ticks: f64) -> Axis {
        let (mut low, mut high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if from_zero {
            low = low.min(0.0);
        }
        if !(low.is_finite() && high.is_finite()) {
            (low, high) = (0.0, 1.0);
        }
        if high <= low {
            high = low + 1.0;
        }
        let step = nice_step((high - low) / ticks);
        Axis {
            min: (low / step).floor() * step,
            max: (high / step).ceil() * step,
            step,
        }
    }

    fn fraction(&self, value: f64) -> f64 {
        (value - self.min) / (self.max - self.min)
    }

    fn ticks(&self) -> impl Iterator<Item = f64> + '_ {
        let count = ((self.max - self.min) / self.step).round() as u64;
        (0..=count).map(move |i| self.min + i as f64 * self.step)
    }
}

fn nice_step(rough: f64) -> f64 {
    if !(rough.is_finite() && rough > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(rough.log10().floor());
    let nice = match rough / magnitude {
        f if f <= 1.0 => 1.0,
        f if f <= 2.0 => 2.0,
        f if f <= 5.0 => 5.0,
        _ => 10.0,
    };
    nice * magnitude
}

fn tick_label(value: f64, step: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1e6 && step >= 1e5 {
        format!("{}M", trim_number(value / 1e6, 1))
    } else if magnitude >= 1e4 && step >= 1e3 {
        format!("{}k", trim_number(value / 1e3, 1))
    } else {
        let decimals = if step >= 1.0 {
            0
        } else {
            (-step.log10()).ceil() as usize
        };
        trim_number(value, decimals)
    }
}

fn trim_number(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    if text == "-0" {
        "0".into()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
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
                CheckResult::new("stock consistency", true, "final 0 = 3000 − 3000"),
                CheckResult::new("p95 < 2000 ms", true, "p95 25.5 ms"),
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
        report.checks[1] = CheckResult::new("p95 < 2000 ms", false, "p95 2345.0 ms");
        let summary = report.terminal_summary();
        assert!(summary.contains("✓ stock consistency"), "{summary}");
        assert!(summary.contains("✗ p95 < 2000 ms"), "{summary}");
        assert!(summary.contains("p95 2345.0 ms"));
        assert!(summary.contains("FAILED (1 of 2 checks failed)"));
        assert!(summary.contains("p(95)=25.50ms"));
        assert!(summary.contains("202=900"));
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
    fn nice_axes() {
        let axis = Axis::covering([3.0, 947.0].into_iter(), true, 5.0);
        assert_eq!((axis.min, axis.max, axis.step), (0.0, 1000.0, 200.0));
        let ticks: Vec<f64> = axis.ticks().collect();
        assert_eq!(ticks, vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);

        let flat = Axis::covering([5.0, 5.0].into_iter(), false, 5.0);
        assert!(flat.max > flat.min);
        assert_eq!(tick_label(250_000.0, 50_000.0), "250k");
        assert_eq!(tick_label(0.25, 0.05), "0.25");
        assert_eq!(tick_label(1_500_000.0, 500_000.0), "1.5M");
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
