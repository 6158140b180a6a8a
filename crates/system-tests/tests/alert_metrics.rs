//! The alert rules and the code kept honest with each other (issue 23): every metric a rule in
//! `ops/prometheus/alerts.yml` reads is one the services export on their admin listeners from
//! their start — before anything went wrong, so that a rule's `rate()` or `increase()` sees the
//! first event — and the gauges added for the rules follow what they report: open dead letters
//! (down again once resolved), and open sagas older than the re-drive allows.
//! (`service_ready` following `/ready` is checked in readiness.rs.)

use platform::testing::eventually;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use system_tests::{Options, Service, TestSystem, ADMIN_TOKEN};

/// Series Prometheus makes itself for every target; no service exports them.
const SYNTHESIZED_BY_PROMETHEUS: &[&str] = &["up"];

/// How long a gauge may take to follow (a driven round samples it; other tests of this file,
/// running in the same process and so on the same recorder, may overwrite it meanwhile).
const FOLLOW: Duration = Duration::from_secs(20);

fn alerts_yml() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../ops/prometheus/alerts.yml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `expr` of every rule: a one-line `expr: …`, or a block (`expr: |`) of the lines indented
/// deeper than its key.
fn rule_expressions(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value != "|" && value != ">" {
            exprs.push(value.trim_matches(['"', '\'']).to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .map(|l| l.trim())
            .collect();
        exprs.push(block.join(" "));
    }
    exprs
}

/// The metric names a PromQL expression reads: its identifiers, less functions (followed by
/// `(`), keywords and aggregation operators (`max by (…) (…)` is not followed by `(`), label
/// lists (`by (…)`, `on (…)`, …), label matchers (`{…}`), ranges and offsets (`[…]`) and
/// quoted strings.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' || c == '[' {
            let close = if c == '{' { '}' } else { ']' };
            while i < chars.len() && chars[i] != close {
                i += 1;
            }
            i += 1;
        } else if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() {
            // A number, or a duration such as 5m.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let called = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if called {
                    while i < chars.len() && chars[i] != ')' {
                        i += 1;
                    }
                    i += 1;
                }
            } else if !called && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every metric name the rules read, less the series Prometheus makes itself.
fn metrics_the_rules_read() -> BTreeSet<String> {
    rule_expressions(&alerts_yml())
        .iter()
        .flat_map(|expr| metric_names(expr))
        .filter(|name| !SYNTHESIZED_BY_PROMETHEUS.contains(&name.as_str()))
        .collect()
}

async fn scrape(system: &TestSystem, service: &Service) -> String {
    let response = system
        .http
        .get(format!("{}/metrics", service.admin_url))
        .send()
        .await
        .expect("scrape /metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("the exposition")
}

/// The names of the series in a text exposition.
fn exported_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The value of one series (`name` or `name{labels}`, exactly as exported), if present.
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

#[test]
fn the_rule_parser_finds_metrics_and_nothing_else() {
    let expr = r#"(max by (job, consumer) (consumer_lag{job=~"a|b"}) > 1000)
        and on (job) sum without (instance) (rate(order_intake_shed_total[5m] offset 1m)) > 0.5
        or up{job="order-service"} == bool 0"#;
    let expected: BTreeSet<String> = ["consumer_lag", "order_intake_shed_total", "up"]
        .map(String::from)
        .into();
    assert_eq!(metric_names(expr), expected);
    let yaml = "      - alert: A\n        expr: |\n          x_total\n          and y\n        for: 1m\n      - alert: B\n        expr: z == 0\n";
    assert_eq!(rule_expressions(yaml), vec!["x_total and y", "z == 0"]);
}

#[tokio::test]
async fn every_metric_the_alert_rules_read_is_exported_from_the_start() {
    let wanted = metrics_the_rules_read();
    // The parser found the rules (a YAML it no longer reads would pass with nothing wanted).
    for known in [
        "consumer_lag",
        "worker_up",
        "service_ready",
        "dead_letters_open",
    ] {
        assert!(wanted.contains(known), "{known} not among {wanted:?}");
    }
    // A fresh system, settled: nothing has gone wrong, nothing has been shed or refused.
    let system = TestSystem::start(Options::default()).await;
    let mut exported = BTreeSet::new();
    let mut pages = String::new();
    for service in [&system.order, &system.inventory, &system.payment] {
        let page = scrape(&system, service).await;
        exported.extend(exported_names(&page));
        pages.push_str(&page);
    }
    let missing: Vec<&String> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "alert rules read metrics no service exports: {missing:?}"
    );
    // Every worker's series, also of the consumers, which are built before the service's
    // listeners: a handle taken before the recorder was installed would report to nothing.
    for spec in platform::contract::SERVICES {
        for subscription in spec.subscriptions {
            for metric in ["worker_up", "worker_restarts_total"] {
                let series = format!(
                    "{metric}{{worker=\"consumer:{}\"}}",
                    subscription.durable_name()
                );
                assert!(value(&pages, &series).is_some(), "{series} not exported");
            }
        }
    }
    for service in [&system.order, &system.inventory, &system.payment] {
        let page = scrape(&system, service).await;
        assert_eq!(
            value(&page, "service_ready"),
            Some(1.0),
            "{}",
            service.admin_url
        );
    }
}

/// An undecodable message on inventory's subject of new orders is parked; the consumer's gauge
/// counts it, and counts 0 again once an operator discarded it.
#[tokio::test]
async fn open_dead_letters_are_gauged_until_resolved() {
    let system = TestSystem::start(Options::default()).await;
    system
        .jetstream()
        .await
        .send_publish(
            system.subject("order.created"),
            async_nats::jetstream::message::PublishMessage::build()
                .payload(b"{ not json".to_vec().into())
                .message_id("alert-metrics-garbage"),
        )
        .await
        .expect("publish")
        .await
        .expect("publish ack");
    let series = r#"dead_letters_open{consumer="inventory-service-orders"}"#;
    let gauged = |expected: f64| {
        let system = &system;
        async move {
            eventually(FOLLOW, || async {
                system.settle().await;
                let page = scrape(system, &system.inventory).await;
                (value(&page, series) == Some(expected)).then_some(())
            })
            .await
        }
    };
    assert!(gauged(1.0).await.is_some(), "{series} did not read 1");

    let letters: Value = system
        .http
        .get(format!("{}/admin/dead-letters", system.inventory.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("list dead letters")
        .json()
        .await
        .expect("letters");
    let letters = letters.as_array().expect("a list");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let discarded = system
        .http
        .post(format!(
            "{}/admin/dead-letters/{}/discard",
            system.inventory.admin_url, letters[0]["id"]
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("discard");
    assert!(discarded.status().is_success(), "{discarded:?}");
    assert!(gauged(0.0).await.is_some(), "{series} did not read 0 again");
}

/// With `redrive.after` and `redrive.max_pause` of 1 s, an order left open (inventory never
/// runs) is overdue after 2 s: the re-drive's rounds count it and gauge its age; once the system
/// settles and the order is final, nothing is overdue.
#[tokio::test]
async fn open_sagas_older_than_the_redrive_allows_are_gauged() {
    let system = TestSystem::start(Options {
        extra: "[redrive]\nafter = \"1s\"\nmax_pause = \"1s\"",
        ..Options::default()
    })
    .await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100_000).await;
    let order = system.accepted_order(7, 1, 1).await;
    let redrive_round = || async {
        for worker in &system.order.driver.workers {
            platform::supervisor::run_until_idle(&**worker)
                .await
                .expect("re-drive round");
        }
        scrape(&system, &system.order).await
    };
    let overdue = eventually(FOLLOW, || async {
        let page = redrive_round().await;
        let overdue = value(&page, "orders_open_sagas_overdue")?;
        let oldest = value(&page, "orders_open_saga_oldest_age_seconds")?;
        (overdue >= 1.0 && oldest >= 2.0).then_some(())
    })
    .await;
    assert!(
        overdue.is_some(),
        "the order open for longer than 2 s not counted overdue with its age"
    );

    system.settle().await;
    assert_eq!(system.order(7, &order).await["status"], "COMPLETED");
    let quiet = eventually(FOLLOW, || async {
        let page = redrive_round().await;
        (value(&page, "orders_open_sagas_overdue") == Some(0.0)).then_some(())
    })
    .await;
    assert!(quiet.is_some(), "a final order still counted as overdue");
}
