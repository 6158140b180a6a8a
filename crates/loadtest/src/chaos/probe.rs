//! The probe: once a second, how far behind the system is and whether it says so (each
//! fault's verdict is read from its samples in `verdict`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    InjectedFault, RECOVERY_MAX_CONSUMER_BACKLOG, RECOVERY_MAX_OLDEST_UNFINISHED_S,
    RECOVERY_MAX_OUTBOX, RECOVERY_SAMPLES,
};
use crate::observe::broker::Broker;
use crate::observe::database::{self, Databases};

/// How often the probe samples.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one probe query may take; slower counts as "no sample" (not caught up).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an instance's `/ready` may take; slower counts as unreachable.
const READY_TIMEOUT: Duration = Duration::from_millis(800);

/// How far behind the system is at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Health {
    /// Outbox rows over the three databases.
    pub outbox: i64,
    /// Messages not yet delivered plus delivered and unacknowledged, over every consumer.
    pub consumer_backlog: u64,
    /// Age of the oldest open saga: an order PENDING, or failed in payment without a confirmed
    /// stock release (0 when there is none).
    pub oldest_unfinished_s: f64,
}

impl Health {
    pub fn caught_up(&self) -> bool {
        self.outbox <= RECOVERY_MAX_OUTBOX
            && self.consumer_backlog <= RECOVERY_MAX_CONSUMER_BACKLOG
            && self.oldest_unfinished_s <= RECOVERY_MAX_OLDEST_UNFINISHED_S
    }

    /// The larger of each figure.
    pub(super) fn max(self, other: Health) -> Health {
        Health {
            outbox: self.outbox.max(other.outbox),
            consumer_backlog: self.consumer_backlog.max(other.consumer_backlog),
            oldest_unfinished_s: self.oldest_unfinished_s.max(other.oldest_unfinished_s),
        }
    }
}

/// One probe sample; `health` is `None` when a part could not be read (database or broker
/// down, or slower than the probe timeout).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct HealthSample {
    pub at_s: f64,
    pub health: Option<Health>,
    /// Per durable consumer (`<stream>/<consumer>`): pending + unacknowledged, for the record.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<(String, u64)>,
    /// Instances whose `/ready` answered 503, with the reason they gave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<(String, String)>,
    /// Instances whose `/ready` did not answer in time (stopped, paused, starting).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
    /// The services' own counters of what they noticed and healed ([`SIGNALS`]), summed over
    /// every instance since the run began.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counters: BTreeMap<String, u64>,
}

/// Counters each service keeps of its own healing: open orders re-driven, durable consumers
/// created again, workers restarted, handler panics caught, events dead-lettered, orders shed.
pub const SIGNALS: [&str; 6] = [
    REDRIVES,
    "consumer_created_total",
    "worker_restarts_total",
    "consumer_panics_total",
    "consumer_dead_lettered_total",
    "order_intake_shed_total",
];
pub(super) const REDRIVES: &str = "orders_redriven_total";

/// What the probe asks besides the databases and the broker: every instance's `/ready` and
/// `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ProbeTargets {
    /// (instance name, URL) of every instance's `/ready`: its admin listener's, which gives the
    /// public one's verdict with the errors behind it.
    pub instances: Vec<(String, String)>,
    /// (instance name, admin URL) of every instance: `/metrics` is read there.
    pub admin: Vec<(String, String)>,
}

/// Adds up counters of several processes across their restarts (a restarted process starts
/// from zero).
#[derive(Debug, Default)]
struct CounterSum {
    last: HashMap<(String, String), u64>,
    total: BTreeMap<String, u64>,
}

impl CounterSum {
    fn observe(&mut self, process: &str, counter: &str, value: u64) {
        let last = self
            .last
            .insert((process.to_owned(), counter.to_owned()), value)
            .unwrap_or(0);
        *self.total.entry(counter.to_owned()).or_insert(0) +=
            if value >= last { value - last } else { value };
    }
}

/// The sums of the [`SIGNALS`] counters in a Prometheus text page (over all label sets); a
/// counter that never moved is not on the page yet, and counts 0.
fn signal_values(metrics: &str) -> BTreeMap<&'static str, u64> {
    let mut values: BTreeMap<&'static str, u64> = SIGNALS.iter().map(|s| (*s, 0)).collect();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        let Some(signal) = SIGNALS.iter().find(|s| **s == name) else {
            continue;
        };
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        *values.entry(*signal).or_insert(0) += value as u64;
    }
    values
}

/// How long the probe must still run after `now_s` (the drain's end) so that every lifted
/// fault has [`RECOVERY_SAMPLES`] samples after it and after the drain: a fault lifted just
/// before the load ends may leave orders that finish only as the drain does, and without
/// samples of the quiet system it would count as "never caught up".
pub fn probe_time_needed(executed: &[InjectedFault], now_s: f64) -> Duration {
    let Some(last_lift) = executed.iter().filter_map(|e| e.lifted_s).reduce(f64::max) else {
        return Duration::ZERO;
    };
    let until = last_lift.max(now_s) + (RECOVERY_SAMPLES as f64 + 1.0) * PROBE_EVERY.as_secs_f64();
    Duration::from_secs_f64((until - now_s).max(0.0))
}

/// Samples the system's [`Health`], readiness and re-drives every second from `start` until
/// `stop` turns true.
pub fn spawn_probe(
    dbs: Databases,
    nats_url: String,
    prefix: String,
    targets: ProbeTargets,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Vec<HealthSample>> {
    tokio::spawn(async move {
        let http = crate::deploy::http_client()
            .timeout(READY_TIMEOUT)
            .build()
            .unwrap_or_default();
        let mut counters = CounterSum::default();
        let mut broker: Option<Broker> = None;
        let mut samples = Vec::new();
        let mut ticks = tokio::time::interval_at(start, PROBE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                    continue;
                }
            }
            let at_s = start.elapsed().as_secs_f64();
            if broker.is_none() {
                broker = tokio::time::timeout(PROBE_TIMEOUT, Broker::connect(&nats_url, &prefix))
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
            let measured = match &broker {
                Some(broker) => tokio::time::timeout(PROBE_TIMEOUT, health(&dbs, broker))
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => None,
            };
            let (health, consumers) = match measured {
                Some((health, consumers)) => (Some(health), consumers),
                None => (None, Vec::new()),
            };
            let (not_ready, unreachable) = readiness(&http, &targets.instances).await;
            for (name, url) in &targets.admin {
                if let Some(page) = metrics_page(&http, url).await {
                    for (signal, value) in signal_values(&page) {
                        counters.observe(name, signal, value);
                    }
                }
            }
            samples.push(HealthSample {
                at_s,
                health,
                consumers,
                not_ready,
                unreachable,
                counters: counters.total.clone(),
            });
        }
        samples
    })
}

/// Asks every instance's `/ready` at once.
async fn readiness(
    http: &reqwest::Client,
    instances: &[(String, String)],
) -> (Vec<(String, String)>, Vec<String>) {
    let answers = futures::future::join_all(instances.iter().map(|(name, url)| async move {
        let answer = http.get(format!("{url}/ready")).send().await;
        match answer {
            Ok(response) if response.status().as_u16() == 503 => {
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let why = body["detail"].as_str().unwrap_or("503").to_owned();
                (name.clone(), Some(Err(why)))
            }
            Ok(_) => (name.clone(), Some(Ok(()))),
            Err(_) => (name.clone(), None),
        }
    }))
    .await;
    let mut not_ready = Vec::new();
    let mut unreachable = Vec::new();
    for (name, answer) in answers {
        match answer {
            Some(Ok(())) => {}
            Some(Err(why)) => not_ready.push((name, why)),
            None => unreachable.push(name),
        }
    }
    (not_ready, unreachable)
}

/// An instance's `/metrics` page, if it answers.
async fn metrics_page(http: &reqwest::Client, url: &str) -> Option<String> {
    http.get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

async fn health(dbs: &Databases, broker: &Broker) -> Result<(Health, Vec<(String, u64)>)> {
    let (outbox, oldest, (_, consumers)) = tokio::try_join!(
        database::outbox_rows(dbs),
        database::oldest_open_order_s(dbs),
        broker.consumers(),
    )?;
    let backlog: Vec<(String, u64)> = consumers
        .into_iter()
        .map(|c| (c.name, c.pending + c.ack_pending))
        .collect();
    let health = Health {
        outbox,
        consumer_backlog: backlog.iter().map(|(_, n)| n).sum(),
        oldest_unfinished_s: oldest,
    };
    Ok((health, backlog))
}

/// Writes `faults.json` next to the report: every fault as executed and every probe sample,
/// the evidence behind the recovery times.
pub fn write_timeline(
    dir: &std::path::Path,
    executed: &[InjectedFault],
    samples: &[HealthSample],
) -> Result<std::path::PathBuf> {
    #[derive(Serialize)]
    struct Timeline<'a> {
        recovery_criteria: serde_json::Value,
        faults: &'a [InjectedFault],
        probe: &'a [HealthSample],
    }
    let timeline = Timeline {
        recovery_criteria: serde_json::json!({
            "max_outbox": RECOVERY_MAX_OUTBOX,
            "max_consumer_backlog": RECOVERY_MAX_CONSUMER_BACKLOG,
            "max_oldest_unfinished_s": RECOVERY_MAX_OLDEST_UNFINISHED_S,
            "samples_in_a_row": RECOVERY_SAMPLES,
        }),
        faults: executed,
        probe: samples,
    };
    let path = dir.join("faults.json");
    let text = serde_json::to_string_pretty(&timeline).context("serialising the fault timeline")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::verdict::tests::executed;
    use crate::chaos::FaultKind;

    #[test]
    fn counters_add_up_across_instances_and_restarts() {
        let mut sum = CounterSum::default();
        sum.observe("a", REDRIVES, 10);
        sum.observe("b", REDRIVES, 5);
        sum.observe("a", REDRIVES, 12);
        // `a` restarted: counts from zero again.
        sum.observe("a", REDRIVES, 3);
        assert_eq!(sum.total[REDRIVES], 20);
        let page = "# TYPE x counter\nconsumer_created_total{consumer=\"c1\"} 2\nconsumer_created_total{consumer=\"c2\"} 1\norders_redriven_total 7\nother_total 9\n";
        let values = signal_values(page);
        assert_eq!(values["consumer_created_total"], 3);
        assert_eq!(values[REDRIVES], 7);
        assert_eq!(values["worker_restarts_total"], 0, "absent: never moved");
        assert_eq!(values.len(), SIGNALS.len());
    }

    #[test]
    fn the_probe_outlives_the_last_lift() {
        let lifted = [
            executed(FaultKind::Kill, 8.0, Some(12.0)),
            executed(FaultKind::Pause, 100.0, Some(119.0)),
        ];
        let needed = (RECOVERY_SAMPLES as f64 + 1.0) * PROBE_EVERY.as_secs_f64();
        // Asked before the last lift (the schedule outlasted the drain): its samples after it.
        assert_eq!(
            probe_time_needed(&lifted, 118.0),
            Duration::from_secs_f64(119.0 + needed - 118.0)
        );
        // Long after the last lift, still the samples of the quiet system after the drain.
        assert_eq!(
            probe_time_needed(&lifted, 200.0),
            Duration::from_secs_f64(needed)
        );
        assert_eq!(probe_time_needed(&[], 5.0), Duration::ZERO);
    }
}
