//! "Where the time goes": from the sampled orders' traces (the services' spans, received by the
//! run's own OTLP receiver), each order's hops — request accepted → committed → published →
//! inventory's transaction → … → the order's final update, and the compensation of a failed
//! payment — their p50/p95/p99 per path, the ten slowest orders' waterfalls, and whether the
//! hops' medians add up to the measured end-to-end median (`hops_view.rs` renders it).
//!
//! An order's spans are found from its `POST /orders` server span: each consumer span is the
//! child of the span whose context its event was written with, and the spans that serve many
//! orders at once (the intake's commit, a relay's publish, a consumer's transaction) are linked
//! to the span of each order they serve (platform/src/telemetry/spans.rs).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use stack::otlp::{Kind, ReceivedSpan};

use crate::loadgen::stats::Percentiles;

/// How far the hops' medians may be from the measured median before the report says so.
pub const TOLERANCE: f64 = 0.10;
/// Waterfalls shown.
const SLOWEST: usize = 10;

/// The report's section.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WhereTimeGoes {
    /// The share of orders traced (the services' `OTEL_TRACES_SAMPLER_ARG`).
    pub sample_ratio: f64,
    /// Spans received from the services.
    pub spans: u64,
    /// Sampled orders whose every hop was found.
    pub orders: u64,
    /// Sampled orders left out: a span of theirs is missing (re-driven orders among them: their
    /// answers came in the re-drive's trace), or they are not final.
    pub incomplete: u64,
    pub paths: Vec<PathFigures>,
    /// The slowest sampled orders, slowest first.
    pub slowest: Vec<Waterfall>,
    /// Why there is nothing to show, when there is not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// The hops of the orders that took one path.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PathFigures {
    pub path: String,
    pub orders: u64,
    pub hops: Vec<HopFigures>,
    /// The sum of the medians of the hops the measured end-to-end latency covers.
    pub covered_medians_ms: f64,
    /// The measured end-to-end median (the orders' `created_at` → `finalized_at`) of these
    /// orders.
    pub measured_median_ms: Option<f64>,
    /// The median of each order's covered hops added up (what the traces measure of the same
    /// interval): set beside the measured median, it shows whether a gap is the medians'.
    pub traced_median_ms: Option<f64>,
    /// Whether the hops' medians are within [`TOLERANCE`] of the measured median.
    pub explained: bool,
}

/// One hop's latency over the orders that took it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HopFigures {
    pub hop: String,
    /// Whether the measured end-to-end latency covers it (it starts when the intake's
    /// transaction began and ends when the order's final transaction began).
    pub covered: bool,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// One order's hops, in order: (hop, start after the request was accepted, duration), in ms.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Waterfall {
    pub order_id: String,
    pub path: String,
    pub total_ms: f64,
    pub segments: Vec<(String, f64, f64)>,
}

/// An order as the database has it at the end: its status (`COMPLETED`, `FAILED:<reason>`) and
/// its measured end-to-end latency.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalOrder {
    pub status: String,
    pub e2e_ms: f64,
}

pub const COMPLETED: &str = "completed";
pub const REJECTED: &str = "stock rejected";
pub const PAYMENT_FAILED: &str = "payment failed, compensated";

/// The spans, indexed by id, by parent and by what links to them.
struct Index<'a> {
    children: HashMap<(&'a str, &'a str), Vec<&'a ReceivedSpan>>,
    linked_from: HashMap<(&'a str, &'a str), Vec<&'a ReceivedSpan>>,
}

impl<'a> Index<'a> {
    fn new(spans: &'a [ReceivedSpan]) -> Index<'a> {
        let mut index = Index {
            children: HashMap::new(),
            linked_from: HashMap::new(),
        };
        for span in spans {
            if let Some(parent) = &span.parent_span_id {
                index
                    .children
                    .entry((span.trace_id.as_str(), parent.as_str()))
                    .or_default()
                    .push(span);
            }
            for (trace, linked) in &span.links {
                index
                    .linked_from
                    .entry((trace.as_str(), linked.as_str()))
                    .or_default()
                    .push(span);
            }
        }
        index
    }

    /// The first consumer span of `event_type` in `service` under `parent`.
    fn consumer(
        &self,
        parent: &ReceivedSpan,
        service: &str,
        event_type: &str,
    ) -> Option<&'a ReceivedSpan> {
        self.children
            .get(&(parent.trace_id.as_str(), parent.span_id.as_str()))?
            .iter()
            .filter(|s| {
                s.kind == Kind::Consumer
                    && s.service == service
                    && s.attribute("event_type") == Some(event_type)
            })
            .min_by_key(|s| s.start_ns)
            .copied()
    }

    fn linked(
        &self,
        to: &ReceivedSpan,
        test: impl Fn(&ReceivedSpan) -> bool,
    ) -> Vec<&'a ReceivedSpan> {
        self.linked_from
            .get(&(to.trace_id.as_str(), to.span_id.as_str()))
            .map(|spans| spans.iter().copied().filter(|s| test(s)).collect())
            .unwrap_or_default()
    }

    /// The transaction that applied the event of `consumed` (or the intake's commit of the
    /// request): its (start, end). The last one linked to it: one that failed was tried again.
    fn transaction(&self, consumed: &ReceivedSpan) -> Option<(u64, u64)> {
        self.linked(consumed, |s| {
            s.name == "consumer transaction" || s.name == "intake commit"
        })
        .iter()
        .max_by_key(|s| s.end_ns)
        .map(|s| (s.start_ns, s.end_ns))
    }

    /// When what was written in `written_in`'s context was first published.
    fn published(&self, written_in: &ReceivedSpan) -> Option<u64> {
        self.linked(written_in, |s| s.kind == Kind::Producer)
            .iter()
            .map(|s| s.start_ns)
            .min()
    }
}

/// One order's hops: (name, start, end in ns, covered by the measured end-to-end latency).
struct Timeline {
    order_id: String,
    path: &'static str,
    hops: Vec<(&'static str, u64, u64, bool)>,
}

impl Timeline {
    fn push(&mut self, name: &'static str, from: u64, to: u64, covered: bool) {
        self.hops.push((name, from, to, covered));
    }

    fn total_ms(&self) -> f64 {
        let start = self.hops.first().map_or(0, |h| h.1);
        let end = self.hops.iter().map(|h| h.2).max().unwrap_or(start);
        ms(start, end)
    }

    /// The measured latency's part of the trace: the intake transaction's start to the order's
    /// final transaction's start (the database's `created_at` and `finalized_at` are both
    /// `now()`, a transaction's start).
    fn covered_ms(&self) -> f64 {
        self.hops.iter().filter(|h| h.3).map(|h| ms(h.1, h.2)).sum()
    }
}

/// The hops of the order whose request is `server`, if every span of its path is there. Each
/// hop ends where the next begins, except the compensation, which starts at the payment's
/// publish and runs beside the order's own update.
fn timeline(
    index: &Index<'_>,
    server: &ReceivedSpan,
    orders: &HashMap<String, FinalOrder>,
) -> Option<Timeline> {
    let inventory = index.consumer(server, "inventory-service", "OrderCreated")?;
    let order_id = inventory.attribute("order_id")?.to_owned();
    let status = &orders.get(&order_id)?.status;
    let path = if status == "COMPLETED" {
        COMPLETED
    } else if is_payment_failure(status) {
        PAYMENT_FAILED
    } else {
        REJECTED
    };
    let mut t = Timeline {
        order_id,
        path,
        hops: Vec::new(),
    };
    let intake = index.transaction(server)?;
    let published = index.published(server)?;
    let stock = index.transaction(inventory)?;
    let replied = index.published(inventory)?;
    t.push(
        "request accepted → its transaction began",
        server.start_ns,
        intake.0,
        false,
    );
    t.push(
        "the intake's transaction (→ committed)",
        intake.0,
        intake.1,
        true,
    );
    t.push("committed → published", intake.1, published, true);
    t.push("published → inventory committed", published, stock.1, true);
    t.push("inventory committed → published", stock.1, replied, true);
    let last_publish = if path == REJECTED {
        replied
    } else {
        let payment = index.consumer(inventory, "payment-service", "StockReserved")?;
        let charged = index.transaction(payment)?;
        let answered = index.published(payment)?;
        t.push("published → payment committed", replied, charged.1, true);
        t.push("payment committed → published", charged.1, answered, true);
        answered
    };
    let (outcome, from) = match path {
        COMPLETED => ("PaymentCompleted", "payment-service"),
        PAYMENT_FAILED => ("PaymentFailed", "payment-service"),
        _ => ("StockRejected", "inventory-service"),
    };
    let answered_by = if from == "payment-service" {
        index.consumer(inventory, "payment-service", "StockReserved")?
    } else {
        inventory
    };
    let updated = index.consumer(answered_by, "order-service", outcome)?;
    let update = index.transaction(updated)?;
    t.push(
        "published → the order's final update began",
        last_publish,
        update.0,
        true,
    );
    t.push("the order's final transaction", update.0, update.1, false);
    if path == PAYMENT_FAILED {
        let release = index.consumer(answered_by, "inventory-service", "PaymentFailed")?;
        let released = index.transaction(release)?;
        let told = index.published(release)?;
        let closed = index.consumer(release, "order-service", "StockReleased")?;
        let close = index.transaction(closed)?;
        t.push(
            "compensation: published → inventory released",
            last_publish,
            released.1,
            false,
        );
        t.push(
            "compensation: released → published",
            released.1,
            told,
            false,
        );
        t.push(
            "compensation: published → the saga closed",
            told,
            close.1,
            false,
        );
    }
    Some(t)
}

fn is_payment_failure(status: &str) -> bool {
    ["PAYMENT_DECLINED", "INSUFFICIENT_FUNDS", "UNKNOWN_ACCOUNT"]
        .iter()
        .any(|reason| status.ends_with(reason))
}

fn ms(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) / 1e6
}

/// The section from the run's spans and its final orders.
pub fn where_time_goes(
    spans: &[ReceivedSpan],
    orders: &HashMap<String, FinalOrder>,
    sample_ratio: f64,
) -> WhereTimeGoes {
    let index = Index::new(spans);
    let servers: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == Kind::Server && s.name == "POST /orders")
        .collect();
    let mut section = WhereTimeGoes {
        sample_ratio,
        spans: spans.len() as u64,
        ..Default::default()
    };
    let mut timelines = Vec::new();
    for server in &servers {
        match timeline(&index, server, orders) {
            Some(timeline) => timelines.push(timeline),
            None => section.incomplete += 1,
        }
    }
    section.orders = timelines.len() as u64;
    if timelines.is_empty() {
        section.note = if spans.is_empty() {
            "no spans were received from the services".into()
        } else {
            format!(
                "{} spans received, but no sampled order had all its hops",
                spans.len()
            )
        };
        return section;
    }
    for path in [COMPLETED, REJECTED, PAYMENT_FAILED] {
        let of_path: Vec<&Timeline> = timelines.iter().filter(|t| t.path == path).collect();
        if let Some(figures) = path_figures(path, &of_path, orders) {
            section.paths.push(figures);
        }
    }
    let mut slowest: Vec<&Timeline> = timelines.iter().collect();
    slowest.sort_by(|a, b| b.total_ms().total_cmp(&a.total_ms()));
    section.slowest = slowest
        .into_iter()
        .take(SLOWEST)
        .map(|t| {
            let start = t.hops.first().map_or(0, |h| h.1);
            Waterfall {
                order_id: t.order_id.clone(),
                path: t.path.to_owned(),
                total_ms: t.total_ms(),
                segments: t
                    .hops
                    .iter()
                    .map(|(name, from, to, _)| (name.to_string(), ms(start, *from), ms(*from, *to)))
                    .collect(),
            }
        })
        .collect();
    section
}

fn path_figures(
    path: &str,
    timelines: &[&Timeline],
    orders: &HashMap<String, FinalOrder>,
) -> Option<PathFigures> {
    let first = timelines.first()?;
    let hops: Vec<HopFigures> = first
        .hops
        .iter()
        .enumerate()
        .map(|(i, (name, _, _, covered))| {
            let values = Percentiles::from_millis(
                timelines
                    .iter()
                    .filter_map(|t| t.hops.get(i).map(|h| ms(h.1, h.2))),
            );
            let at = |q| values.quantile(q).unwrap_or_default();
            HopFigures {
                hop: name.to_string(),
                covered: *covered,
                p50_ms: at(0.50),
                p95_ms: at(0.95),
                p99_ms: at(0.99),
            }
        })
        .collect();
    let covered_medians_ms: f64 = hops.iter().filter(|h| h.covered).map(|h| h.p50_ms).sum();
    let measured = Percentiles::from_millis(
        timelines
            .iter()
            .filter_map(|t| orders.get(&t.order_id).map(|o| o.e2e_ms)),
    );
    let measured_median_ms = measured.quantile(0.50);
    let traced_median_ms =
        Percentiles::from_millis(timelines.iter().map(|t| t.covered_ms())).quantile(0.50);
    let explained = measured_median_ms
        .is_some_and(|m| (covered_medians_ms - m).abs() <= TOLERANCE * m.max(f64::EPSILON));
    Some(PathFigures {
        path: path.to_owned(),
        orders: timelines.len() as u64,
        hops,
        covered_medians_ms,
        measured_median_ms,
        traced_median_ms,
        explained,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A span; times in ms.
    fn span(
        service: &str,
        id: &str,
        parent: Option<&str>,
        name: &str,
        kind: Kind,
        at: (u64, u64),
    ) -> ReceivedSpan {
        ReceivedSpan {
            service: service.into(),
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_owned),
            name: name.into(),
            kind,
            start_ns: at.0 * 1_000_000,
            end_ns: at.1 * 1_000_000,
            attributes: Vec::new(),
            links: Vec::new(),
            events: Vec::new(),
        }
    }

    fn consumer(
        service: &str,
        id: &str,
        parent: &str,
        event: &str,
        at: (u64, u64),
    ) -> ReceivedSpan {
        let mut s = span(service, id, Some(parent), "consume", Kind::Consumer, at);
        s.attributes = vec![
            ("event_type".into(), event.into()),
            ("order_id".into(), "o1".into()),
        ];
        s
    }

    fn linked(service: &str, name: &str, kind: Kind, to: &str, at: (u64, u64)) -> ReceivedSpan {
        let mut s = span(service, &format!("{name}-{to}"), None, name, kind, at);
        s.trace_id = format!("other-{to}");
        s.links = vec![("t".into(), to.into())];
        s
    }

    #[test]
    fn a_completed_order_is_cut_into_its_hops() {
        let spans = vec![
            span(
                "order-service",
                "s",
                None,
                "POST /orders",
                Kind::Server,
                (0, 12),
            ),
            linked(
                "order-service",
                "intake commit",
                Kind::Internal,
                "s",
                (2, 10),
            ),
            linked(
                "order-service",
                "outbox publish",
                Kind::Producer,
                "s",
                (15, 16),
            ),
            consumer("inventory-service", "i", "s", "OrderCreated", (17, 40)),
            linked(
                "inventory-service",
                "consumer transaction",
                Kind::Internal,
                "i",
                (20, 30),
            ),
            linked(
                "inventory-service",
                "outbox publish",
                Kind::Producer,
                "i",
                (33, 34),
            ),
            consumer("payment-service", "p", "i", "StockReserved", (35, 60)),
            linked(
                "payment-service",
                "consumer transaction",
                Kind::Internal,
                "p",
                (40, 50),
            ),
            linked(
                "payment-service",
                "outbox publish",
                Kind::Producer,
                "p",
                (52, 53),
            ),
            consumer("order-service", "c", "p", "PaymentCompleted", (54, 80)),
            linked(
                "order-service",
                "consumer transaction",
                Kind::Internal,
                "c",
                (60, 70),
            ),
        ];
        let orders = HashMap::from([(
            "o1".to_string(),
            FinalOrder {
                status: "COMPLETED".into(),
                e2e_ms: 58.0,
            },
        )]);
        let section = where_time_goes(&spans, &orders, 0.5);
        assert_eq!((section.orders, section.incomplete), (1, 0));
        let path = &section.paths[0];
        assert_eq!(path.path, COMPLETED);
        let medians: Vec<f64> = path.hops.iter().map(|h| h.p50_ms).collect();
        assert_eq!(
            medians,
            vec![2.0, 8.0, 5.0, 15.0, 3.0, 17.0, 2.0, 8.0, 10.0]
        );
        // Intake transaction began (2) → final transaction began (60).
        assert_eq!(path.covered_medians_ms, 58.0);
        assert_eq!(path.traced_median_ms, Some(58.0));
        assert!(path.explained);
        assert_eq!(section.slowest[0].total_ms, 70.0);
    }

    #[test]
    fn an_order_missing_a_span_is_left_out_and_nothing_is_a_note() {
        let spans = vec![span(
            "order-service",
            "s",
            None,
            "POST /orders",
            Kind::Server,
            (0, 1),
        )];
        let section = where_time_goes(&spans, &HashMap::new(), 1.0);
        assert_eq!((section.orders, section.incomplete), (0, 1));
        assert!(!section.note.is_empty());
        assert!(where_time_goes(&[], &HashMap::new(), 1.0)
            .note
            .contains("no spans"));
    }
}
