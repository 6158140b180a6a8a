//! CPU per order: what each process spent for one order, so the cost of the pipeline shows in
//! every report and not only in a profile.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::svg::escape;

/// The name of the row that adds up every tracked process.
pub const ALL_TRACKED: &str = "all tracked";

/// One process's CPU over the run (or a step) and what it comes to per order.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CostRow {
    pub name: String,
    pub cpu_s: f64,
    /// Per order the system took (every status), µs.
    pub us_per_order: Option<f64>,
    /// Per COMPLETED order, µs.
    pub us_per_completed: Option<f64>,
    /// Per HTTP request sent, µs: for the load generator, its own cost.
    pub us_per_request: Option<f64>,
}

/// The per-order CPU table of a run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OrderCost {
    /// Orders the system took (every status).
    pub orders: u64,
    pub completed: u64,
    pub requests: u64,
    /// One row per process, then [`ALL_TRACKED`].
    pub rows: Vec<CostRow>,
}

/// `cpu_s` in µs per one of `count`; `None` when there was none.
fn per(cpu_s: f64, count: u64) -> Option<f64> {
    (count > 0).then(|| cpu_s * 1e6 / count as f64)
}

impl OrderCost {
    /// `cpu` is (process, CPU seconds) for every tracked process.
    pub fn new(
        cpu: impl IntoIterator<Item = (String, f64)>,
        orders: u64,
        completed: u64,
        requests: u64,
    ) -> OrderCost {
        let mut cost = OrderCost {
            orders,
            completed,
            requests,
            rows: Vec::new(),
        };
        for (name, cpu_s) in cpu {
            cost.push(name, cpu_s);
        }
        let total = cost.rows.iter().map(|r| r.cpu_s).sum();
        cost.push(ALL_TRACKED.into(), total);
        cost
    }

    /// Adds a row: `cpu_s` divided by the table's counts.
    pub fn push(&mut self, name: String, cpu_s: f64) {
        self.rows.push(CostRow {
            name,
            cpu_s,
            us_per_order: per(cpu_s, self.orders),
            us_per_completed: per(cpu_s, self.completed),
            us_per_request: per(cpu_s, self.requests),
        });
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "\n  CPU per order ({} orders taken, {} completed, {} requests)\n",
            self.orders, self.completed, self.requests
        );
        let _ = writeln!(
            out,
            "    {:<18} {:>9} {:>11} {:>15} {:>13}",
            "process", "cpu s", "µs / order", "µs / completed", "µs / request"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "    {:<18} {:>9.1} {:>11} {:>15} {:>13}",
                r.name,
                r.cpu_s,
                micros(r.us_per_order),
                micros(r.us_per_completed),
                micros(r.us_per_request)
            );
        }
        out
    }

    pub fn html(&self) -> String {
        let mut html = format!(
            "<section><h2>CPU per order</h2>\n<p>{} orders taken, {} completed, {} requests; \
             CPU of each process over the whole run (load and drain).</p>\n<table>\n\
             <tr><th>process</th><th>CPU s</th><th>µs / order</th><th>µs / completed order</th>\
             <th>µs / request</th></tr>\n",
            self.orders, self.completed, self.requests
        );
        for r in &self.rows {
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&r.name),
                r.cpu_s,
                micros(r.us_per_order),
                micros(r.us_per_completed),
                micros(r.us_per_request)
            );
        }
        html.push_str("</table></section>\n");
        html
    }
}

pub fn micros(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.0}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_cpu_divided_by_the_count_with_a_total_row() {
        let cost = OrderCost::new(
            [("postgres".to_string(), 3.0), ("loadtest".to_string(), 1.0)],
            2_000,
            1_000,
            4_000,
        );
        assert_eq!(cost.rows.len(), 3);
        assert_eq!(cost.rows[0].us_per_order, Some(1_500.0));
        assert_eq!(cost.rows[0].us_per_completed, Some(3_000.0));
        assert_eq!(cost.rows[1].us_per_request, Some(250.0));
        let total = &cost.rows[2];
        assert_eq!(total.name, ALL_TRACKED);
        assert_eq!(total.cpu_s, 4.0);
        assert_eq!(total.us_per_completed, Some(4_000.0));
        assert!(cost.text().contains("µs / completed"));
        assert!(cost.html().contains("<td>all tracked</td>"));
    }

    #[test]
    fn nothing_counted_gives_no_figure() {
        let cost = OrderCost::new([("nats".to_string(), 2.0)], 0, 0, 0);
        assert_eq!(cost.rows[0].us_per_order, None);
        assert_eq!(micros(cost.rows[0].us_per_completed), "-");
    }
}
