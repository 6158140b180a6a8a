//! "Where the time goes" rendered: a table per path, a stacked bar of the hops' medians, the
//! slowest orders' waterfalls (inline SVG), and the terminal's lines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::hops::{PathFigures, WhereTimeGoes, TOLERANCE};
use super::svg::{escape, PALETTE};
use super::text::millis;

/// Two more colours than the palette has: the longest path has ten hops.
const EXTRA: [&str; 2] = ["#bcbd22", "#7f7f7f"];

const WIDTH: f64 = 900.0;
const LABEL: f64 = 230.0;
const ROW: f64 = 26.0;

impl WhereTimeGoes {
    /// The sentence on the check: do the hops' medians add up to the measured median? When
    /// not, what is missing.
    pub fn verdict(path: &PathFigures) -> String {
        let Some(measured) = path.measured_median_ms else {
            return "no measured latency for these orders".into();
        };
        let head = format!(
            "the medians of the hops inside the measured latency (intake transaction began → final transaction began) add up to {} against a measured median of {} (created → final, from the database)",
            millis(path.covered_medians_ms),
            millis(measured)
        );
        let tolerance = TOLERANCE * 100.0;
        if path.explained {
            return format!("{head}: within {tolerance:.0} %");
        }
        let traced = path.traced_median_ms.unwrap_or(f64::NAN);
        let why = if (traced - measured).abs() <= TOLERANCE * measured {
            format!(
                "each order's hops added up have a median of {}, close to the measured one, so no hop is missing: medians of parts do not add up to the median of the whole when the parts vary together (a slow batch slows the hops after it)",
                millis(traced)
            )
        } else {
            format!(
                "each order's hops added up have a median of {}: the traces do not cover all of the measured time (a connection wait before a transaction's BEGIN is in neither)",
                millis(traced)
            )
        };
        format!("{head}: NOT within {tolerance:.0} % — {why}")
    }

    /// The terminal's lines.
    pub fn text_lines(&self) -> Vec<(String, String)> {
        let mut lines = Vec::new();
        let head = format!(
            "{} sampled orders ({} of all, {} left out), {} spans",
            self.orders,
            super::text::percent(self.sample_ratio),
            self.incomplete,
            self.spans
        );
        lines.push(("where the time goes".to_string(), head));
        if !self.note.is_empty() {
            lines.push(("  note".to_string(), self.note.clone()));
        }
        for path in &self.paths {
            let medians: Vec<String> = path.hops.iter().map(|h| millis(h.p50_ms)).collect();
            lines.push((
                format!("  {} ({})", path.path, path.orders),
                format!("p50 by hop {}", medians.join(" + ")),
            ));
            lines.push(("    check".to_string(), Self::verdict(path)));
        }
        lines
    }

    pub fn html(&self) -> String {
        let mut html = String::from("<section><h2>Where the time goes</h2>\n");
        let _ = writeln!(
            html,
            "<p>From the traces of {} sampled orders (the services sample {} of the orders; {} sampled orders left out: a span of theirs missing, or re-driven; {} spans received). Each hop ends where the next begins: the request accepted by the order service, its group commit, the outbox relay's publish, each consumer's committed transaction, each relay's publish of the reply, up to the order's final update; a failed payment's compensation (inventory's release and the saga's close) runs beside the order's update.</p>",
            self.orders,
            super::text::percent(self.sample_ratio),
            self.incomplete,
            self.spans
        );
        if !self.note.is_empty() {
            let _ = writeln!(html, "<p><strong>{}</strong></p>", escape(&self.note));
        }
        if self.paths.is_empty() {
            html.push_str("</section>\n");
            return html;
        }
        let colours = self.colours();
        html.push_str(&self.stacked_bars(&colours));
        for path in &self.paths {
            let _ = writeln!(
                html,
                "<h3>{} ({} orders)</h3>\n<table><tr><th>hop</th><th>p50</th><th>p95</th><th>p99</th></tr>",
                escape(&path.path),
                path.orders
            );
            for hop in &path.hops {
                let mark = if hop.covered { "" } else { " †" };
                let _ = writeln!(
                    html,
                    "<tr><td>{}{mark}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&hop.hop),
                    millis(hop.p50_ms),
                    millis(hop.p95_ms),
                    millis(hop.p99_ms)
                );
            }
            let _ = writeln!(
                html,
                "</table>\n<p>{}. († not inside the measured end-to-end latency.)</p>",
                escape(&Self::verdict(path))
            );
        }
        html.push_str(&self.waterfalls(&colours));
        html.push_str("</section>\n");
        html
    }

    /// One colour per hop name, in order of appearance.
    fn colours(&self) -> BTreeMap<String, &'static str> {
        let mut colours = BTreeMap::new();
        let palette: Vec<&'static str> = PALETTE.iter().chain(EXTRA.iter()).copied().collect();
        for hop in self.paths.iter().flat_map(|p| &p.hops) {
            let next = palette[colours.len() % palette.len()];
            colours.entry(hop.hop.clone()).or_insert(next);
        }
        colours
    }

    /// A bar per path: its hops' medians stacked, in order.
    fn stacked_bars(&self, colours: &BTreeMap<String, &'static str>) -> String {
        let longest = self
            .paths
            .iter()
            .map(|p| p.hops.iter().map(|h| h.p50_ms).sum::<f64>())
            .fold(0.0, f64::max)
            .max(f64::EPSILON);
        let scale = (WIDTH - LABEL - 70.0) / longest;
        let legend_rows = colours.len().div_ceil(2);
        let height = 30.0 + ROW * self.paths.len() as f64 + 18.0 * legend_rows as f64 + 10.0;
        let mut svg = format!(
            "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<text x=\"0\" y=\"16\" font-weight=\"bold\">Median of each hop, stacked (ms)</text>\n"
        );
        for (row, path) in self.paths.iter().enumerate() {
            let y = 28.0 + ROW * row as f64;
            let _ = writeln!(
                svg,
                "<text x=\"0\" y=\"{:.1}\">{}</text>",
                y + 14.0,
                escape(&path.path)
            );
            let mut x = LABEL;
            for hop in &path.hops {
                let w = hop.p50_ms.max(0.0) * scale;
                let colour = colours.get(&hop.hop).copied().unwrap_or("#888888");
                let _ = writeln!(
                    svg,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"18\" fill=\"{colour}\"><title>{}: {}</title></rect>",
                    escape(&hop.hop),
                    millis(hop.p50_ms)
                );
                x += w;
            }
            let total: f64 = path.hops.iter().map(|h| h.p50_ms).sum();
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                x + 4.0,
                y + 14.0,
                millis(total)
            );
        }
        let legend_y = 36.0 + ROW * self.paths.len() as f64;
        for (i, (hop, colour)) in colours.iter().enumerate() {
            let x = if i % 2 == 0 { 0.0 } else { WIDTH / 2.0 };
            let y = legend_y + 18.0 * (i / 2) as f64;
            let _ = writeln!(
                svg,
                "<rect x=\"{x}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{colour}\"/><text x=\"{}\" y=\"{:.1}\">{}</text>",
                y - 10.0,
                x + 16.0,
                y,
                escape(hop)
            );
        }
        svg.push_str("</svg></figure>\n");
        svg
    }

    /// The slowest sampled orders, each hop where it happened.
    fn waterfalls(&self, colours: &BTreeMap<String, &'static str>) -> String {
        if self.slowest.is_empty() {
            return String::new();
        }
        let longest = self
            .slowest
            .iter()
            .map(|w| w.total_ms)
            .fold(0.0, f64::max)
            .max(f64::EPSILON);
        let scale = (WIDTH - LABEL - 70.0) / longest;
        let height = 30.0 + ROW * self.slowest.len() as f64;
        let mut svg = format!(
            "<h3>The {} slowest sampled orders</h3>\n<figure><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n",
            self.slowest.len()
        );
        for (row, order) in self.slowest.iter().enumerate() {
            let y = 10.0 + ROW * row as f64;
            let short = order.order_id.get(..8).unwrap_or(&order.order_id);
            let _ = writeln!(
                svg,
                "<text x=\"0\" y=\"{:.1}\">{short}… {}</text>",
                y + 14.0,
                escape(&order.path)
            );
            for (hop, start, duration) in &order.segments {
                let colour = colours.get(hop).copied().unwrap_or("#888888");
                let _ = writeln!(
                    svg,
                    "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"18\" fill=\"{colour}\"><title>{}: {} (at {})</title></rect>",
                    LABEL + start.max(0.0) * scale,
                    duration.max(0.0) * scale,
                    escape(hop),
                    millis(*duration),
                    millis(*start)
                );
            }
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                LABEL + order.total_ms * scale + 4.0,
                y + 14.0,
                millis(order.total_ms)
            );
        }
        svg.push_str("</svg></figure>\n");
        svg
    }
}
