//! The self-contained HTML page: inline CSS and SVG, no scripts, nothing fetched.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::svg::{escape, line_chart, Chart, Marker, Series, GREY, PALETTE};
use super::text::{millis, noticed_text, percent, redrives_text};
use super::{ProcessSample, Report, SecondRow};
use crate::loadgen::stats::LatencySummary;

impl Report {
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
        if let Some(capacity) = &self.capacity {
            html.push_str(&capacity.html());
        }
        html.push_str("<section><h2>Over time</h2>\n");
        for chart in self.charts() {
            let _ = writeln!(html, "<figure>{chart}</figure>");
        }
        html.push_str("</section>\n");
        html.push_str(&self.latency_html());
        if let Some(section) = &self.where_time_goes {
            html.push_str(&section.html());
        }
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
        if let Some(cost) = &self.cost {
            html.push_str(&cost.html());
        }
        html.push_str("</body>\n</html>\n");
        html
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
            (
                "Refused for fair use (429, counted as errors)",
                self.rate_limited().to_string(),
            ),
            ("Fair-use limits", self.fair_use_limits.clone()),
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
        // p50, p95 and p99 of one latency, each second.
        let percentiles = |title: &str, pick: &dyn Fn(&SecondRow) -> [Option<f64>; 3]| {
            let lines = [
                ("p50", PALETTE[2]),
                ("p95", PALETTE[1]),
                ("p99", PALETTE[3]),
            ];
            let series = lines
                .iter()
                .enumerate()
                .map(|(i, (name, colour))| series(name, colour, &|r| pick(r)[i]))
                .collect();
            chart(title, "ms", series)
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
            percentiles("HTTP latency from intended start", &|r| {
                [r.http_p50_ms, r.http_p95_ms, r.http_p99_ms]
            }),
            percentiles(
                "End-to-end latency (order created → final status)",
                &|r| [r.e2e_p50_ms, r.e2e_p95_ms, r.e2e_p99_ms],
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
