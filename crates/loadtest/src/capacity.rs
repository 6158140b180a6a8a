//! Capacity mode (`loadtest capacity`): step the arrival rate up until the system stops keeping
//! up, stop the load there, drain, audit, and report the highest step sustained with every check
//! passing — next to the naive baseline measured on the same PostgreSQL.
//!
//! The scenario file is an ordinary scenario (`[load]`, `[data]`, `[payment]`, `[checks]`) plus a
//! `[capacity]` section ([`CapacitySettings`]); the load stages are generated from it: step `k`
//! holds `start_rate + k × step_rate` requests per second for `step_duration`, up to `max_rate`.
//!
//! While the load runs, a controller samples the end-to-end backlog once a second (orders not yet
//! final, through the partial index, and messages waiting in the outboxes and JetStream
//! consumers) and judges each step `evaluation_delay` after it ends, so its last requests have
//! answered. A step is **saturated** ([`saturation_reasons`]) when
//!
//! - more than `max_dropped` of its scheduled requests were dropped (no free connection),
//! - its HTTP p99 is over `http_p99_ms` (requests still unanswered at the evaluation count as
//!   over the limit),
//! - its HTTP error rate is over the scenario's `checks.max_error_rate`, or
//! - the end-to-end backlog grew: the least-squares trend of the non-final orders sampled after
//!   `settle` rose by more than `max(min_backlog_growth, max_backlog_growth × the requests that
//!   arrived meanwhile)`. (The message backlog is reported too, not judged: each of its messages
//!   belongs to an order that is not final yet, so the orders' trend holds it, with less noise.)
//!
//! The first saturated step stops the load at once (the next step is cut short). The run then
//! drains and audits all three databases exactly like `loadtest run`; the HTTP checks of the
//! audit cover the sustained steps. Completed orders per second come from `orders.finalized_at`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::baseline::{self, BaselineReport, BaselineSettings};
use crate::deploy;
use crate::drain::{self, Broker, DrainStatus};
use crate::driver::{self, LoadState};
use crate::monitor::{self, MonitorContext, Phase};
use crate::report::{escape, line_chart, Chart, CheckResult, ProcessUsage, Report, Series};
use crate::runner::{self, Prepared, ReportInputs};
use crate::scenario::{format_duration, parse_duration, Scenario, Stage};
use crate::schedule::Schedule;
use crate::stack::{self, StateDir};
use crate::stats::Percentiles;
use crate::verify::{self, Databases, HttpFigures};

/// The scenario `loadtest capacity` runs unless told otherwise.
pub const DEFAULT_PLAN: &str = "scenarios/capacity/capacity.toml";
/// The check this mode adds: at least one step sustained.
pub const CHECK_CAPACITY: &str = "capacity";
/// Share of a step's requests still unanswered at its evaluation that puts its p99 over the
/// limit (they have waited at least `evaluation_delay`, which is at least the p99 limit).
const LATE_SHARE: f64 = 0.01;
/// How long one backlog sample may take before it is skipped.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many steps (a typo in the rates should not plan a week of load).
const MAX_STEPS: usize = 500;

// ---------------------------------------------------------------------------------------------
// Settings.

/// The `[capacity]` section of a capacity scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacitySettings {
    /// Rate of the first step, requests per second.
    #[serde(default = "default_start_rate")]
    pub start_rate: f64,
    /// Added at every step.
    #[serde(default = "default_step_rate")]
    pub step_rate: f64,
    /// Length of one step (whole seconds).
    #[serde(default = "default_step_duration", with = "duration_text")]
    pub step_duration: Duration,
    /// The last step's rate is at most this.
    #[serde(default = "default_max_rate")]
    pub max_rate: f64,
    /// The first part of each step, where the backlog moves to its new level, is left out of the
    /// backlog trend.
    #[serde(default = "default_settle", with = "duration_text")]
    pub settle: Duration,
    /// A step is judged this long after it ends, so its last requests have answered.
    #[serde(default = "default_evaluation_delay", with = "duration_text")]
    pub evaluation_delay: Duration,
    /// A step whose HTTP p99 (from the intended start) is above this is saturated.
    #[serde(default = "default_http_p99_ms")]
    pub http_p99_ms: f64,
    /// A step that dropped more than this share of its scheduled requests is saturated.
    #[serde(default = "default_max_dropped")]
    pub max_dropped: f64,
    /// A step whose backlog trend grew by more than this share of the requests that arrived over
    /// the trend window is saturated…
    #[serde(default = "default_max_backlog_growth")]
    pub max_backlog_growth: f64,
    /// …and by more than this many orders (or messages): noise floor for the slow steps.
    #[serde(default = "default_min_backlog_growth")]
    pub min_backlog_growth: f64,
    /// Connections of the naive baseline, one measurement each.
    #[serde(default = "default_baseline_concurrency")]
    pub baseline_concurrency: Vec<usize>,
    /// Length of each baseline measurement.
    #[serde(default = "default_baseline_duration", with = "duration_text")]
    pub baseline_duration: Duration,
}

fn default_start_rate() -> f64 {
    500.0
}
fn default_step_rate() -> f64 {
    500.0
}
fn default_step_duration() -> Duration {
    Duration::from_secs(30)
}
fn default_max_rate() -> f64 {
    20_000.0
}
fn default_settle() -> Duration {
    Duration::from_secs(10)
}
fn default_evaluation_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_http_p99_ms() -> f64 {
    100.0
}
fn default_max_dropped() -> f64 {
    0.001
}
fn default_max_backlog_growth() -> f64 {
    0.01
}
fn default_min_backlog_growth() -> f64 {
    200.0
}
fn default_baseline_concurrency() -> Vec<usize> {
    BaselineSettings::default().concurrency
}
fn default_baseline_duration() -> Duration {
    BaselineSettings::default().duration
}

impl Default for CapacitySettings {
    fn default() -> Self {
        CapacitySettings {
            start_rate: default_start_rate(),
            step_rate: default_step_rate(),
            step_duration: default_step_duration(),
            max_rate: default_max_rate(),
            settle: default_settle(),
            evaluation_delay: default_evaluation_delay(),
            http_p99_ms: default_http_p99_ms(),
            max_dropped: default_max_dropped(),
            max_backlog_growth: default_max_backlog_growth(),
            min_backlog_growth: default_min_backlog_growth(),
            baseline_concurrency: default_baseline_concurrency(),
            baseline_duration: default_baseline_duration(),
        }
    }
}

impl CapacitySettings {
    /// Every rule the settings break.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut require = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        let positive = |r: f64| r.is_finite() && r > 0.0;
        require(
            positive(self.start_rate),
            format!("capacity.start_rate must be > 0 (got {})", self.start_rate),
        );
        require(
            self.step_rate.is_finite() && self.step_rate >= 0.0,
            format!("capacity.step_rate must be >= 0 (got {})", self.step_rate),
        );
        require(
            positive(self.max_rate) && self.max_rate >= self.start_rate,
            format!(
                "capacity.max_rate must be >= start_rate (got {} < {})",
                self.max_rate, self.start_rate
            ),
        );
        let steps = self.step_count();
        require(
            steps <= MAX_STEPS,
            format!("capacity plans {steps} steps; at most {MAX_STEPS}"),
        );
        let seconds = self.step_duration.as_secs();
        require(
            seconds >= 5 && self.step_duration.subsec_nanos() == 0,
            format!(
                "capacity.step_duration must be whole seconds, at least 5 s (got {})",
                format_duration(self.step_duration)
            ),
        );
        require(
            self.step_duration >= self.settle + Duration::from_secs(3),
            "capacity.settle must leave at least 3 s of each step for the backlog trend".into(),
        );
        require(
            positive(self.http_p99_ms),
            "capacity.http_p99_ms must be > 0".into(),
        );
        require(
            self.evaluation_delay.as_secs_f64() * 1000.0 >= self.http_p99_ms,
            "capacity.evaluation_delay must be at least http_p99_ms (requests unanswered by then are over the limit)".into(),
        );
        require(
            (0.0..1.0).contains(&self.max_dropped),
            "capacity.max_dropped must be within 0..1".into(),
        );
        require(
            (0.0..1.0).contains(&self.max_backlog_growth) && self.min_backlog_growth >= 0.0,
            "capacity.max_backlog_growth must be within 0..1 and min_backlog_growth >= 0".into(),
        );
        require(
            !self.baseline_concurrency.is_empty() && !self.baseline_concurrency.contains(&0),
            "capacity.baseline_concurrency needs levels >= 1".into(),
        );
        require(
            !self.baseline_duration.is_zero(),
            "capacity.baseline_duration must be > 0".into(),
        );
        problems
    }

    fn step_count(&self) -> usize {
        if !(self.start_rate.is_finite() && self.max_rate.is_finite()) {
            return 0;
        }
        if self.step_rate <= 0.0 {
            return 1;
        }
        let steps = ((self.max_rate - self.start_rate) / self.step_rate + 1e-9).floor();
        if steps < 0.0 {
            0
        } else {
            (steps as usize).saturating_add(1)
        }
    }

    /// The rate of every step: `start_rate + k × step_rate`, up to `max_rate`.
    pub fn step_rates(&self) -> Vec<f64> {
        (0..self.step_count().min(MAX_STEPS))
            .map(|k| self.start_rate + k as f64 * self.step_rate)
            .collect()
    }

    /// The load stages: each step jumps to its rate (a zero-length stage) and holds it.
    pub fn stages(&self) -> Vec<Stage> {
        let mut stages = Vec::new();
        for (k, rate) in self.step_rates().into_iter().enumerate() {
            if k > 0 {
                stages.push(Stage {
                    duration: Duration::ZERO,
                    target: rate,
                });
            }
            stages.push(Stage {
                duration: self.step_duration,
                target: rate,
            });
        }
        stages
    }

    /// Start and end of step `index` (0-based), from the start of the load.
    pub fn step_window(&self, index: usize) -> (Duration, Duration) {
        let start = self.step_duration * index as u32;
        (start, start + self.step_duration)
    }

    pub fn limits(&self, max_error_rate: f64) -> Limits {
        Limits {
            http_p99_ms: self.http_p99_ms,
            max_dropped: self.max_dropped,
            max_error_rate,
            max_backlog_growth: self.max_backlog_growth,
            min_backlog_growth: self.min_backlog_growth,
        }
    }

    pub fn baseline(&self) -> BaselineSettings {
        BaselineSettings {
            concurrency: self.baseline_concurrency.clone(),
            duration: self.baseline_duration,
        }
    }
}

/// A capacity scenario: the scenario with its generated stages, and the `[capacity]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityPlan {
    pub scenario: Scenario,
    pub settings: CapacitySettings,
}

impl CapacityPlan {
    pub fn from_file(path: &Path) -> Result<CapacityPlan> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario file {}", path.display()))?;
        Self::from_toml_str(&text).with_context(|| format!("scenario {}", path.display()))
    }

    /// Takes `[capacity]` out, writes the generated steps into `[load]` (which must not list
    /// stages of its own), and parses the rest as a [`Scenario`].
    pub fn from_toml_str(text: &str) -> Result<CapacityPlan> {
        let mut table: toml::Table = text.parse().context("not valid TOML")?;
        let settings: CapacitySettings = match table.remove("capacity") {
            Some(value) => value.try_into().context("invalid [capacity] section")?,
            None => CapacitySettings::default(),
        };
        let problems = settings.problems();
        if !problems.is_empty() {
            bail!("invalid [capacity] section: {}", problems.join("; "));
        }
        let load = table
            .entry("load")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| anyhow!("[load] must be a table"))?;
        for generated in ["stages", "start_rate"] {
            if load.contains_key(generated) {
                bail!("load.{generated} is generated from [capacity]; remove it");
            }
        }
        let rates = settings.step_rates();
        load.insert("start_rate".into(), toml::Value::Float(rates[0]));
        let stages = settings
            .stages()
            .into_iter()
            .map(|stage| {
                let mut entry = toml::Table::new();
                entry.insert(
                    "duration".into(),
                    toml::Value::String(format_duration(stage.duration)),
                );
                entry.insert("target".into(), toml::Value::Float(stage.target));
                toml::Value::Table(entry)
            })
            .collect();
        load.insert("stages".into(), toml::Value::Array(stages));
        let text = toml::to_string(&table).context("re-serialising the scenario")?;
        let scenario = Scenario::from_toml_str(&text)?;
        Ok(CapacityPlan { scenario, settings })
    }
}

/// Durations as `"30s"` in TOML and JSON.
mod duration_text {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// `stages` up to `at`: the stage running at `at` is cut there (its target interpolated).
pub fn stages_until(start_rate: f64, stages: &[Stage], at: Duration) -> Vec<Stage> {
    let mut kept = Vec::new();
    let (mut begin, mut from_rate) = (Duration::ZERO, start_rate);
    for stage in stages {
        let end = begin + stage.duration;
        if end <= at {
            kept.push(stage.clone());
        } else {
            if at > begin {
                let fraction = (at - begin).as_secs_f64() / stage.duration.as_secs_f64();
                kept.push(Stage {
                    duration: at - begin,
                    target: from_rate + (stage.target - from_rate) * fraction,
                });
            }
            break;
        }
        begin = end;
        from_rate = stage.target;
    }
    kept
}

// ---------------------------------------------------------------------------------------------
// Per-step figures and the saturation rules.

/// What a step's verdict is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every rule held.
    #[default]
    Sustained,
    /// At least one rule broke; the load stopped here.
    Saturated,
    /// The step after the saturated one, stopped early; not judged.
    CutShort,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Sustained => "sustained",
            Verdict::Saturated => "SATURATED",
            Verdict::CutShort => "cut short",
        }
    }
}

/// CPU and memory of one process during one step.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct StepProcess {
    pub name: String,
    /// Mean CPU over the step, % of one core.
    pub cpu_pct: f64,
    pub peak_rss_mib: f64,
}

/// One step: what was asked, what happened, and the verdict.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
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
}

/// The rules of [`saturation_reasons`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub http_p99_ms: f64,
    pub max_dropped: f64,
    pub max_error_rate: f64,
    pub max_backlog_growth: f64,
    pub min_backlog_growth: f64,
}

impl Limits {
    /// The growth a step's backlog may show over its trend window.
    pub fn allowed_growth(&self, step: &StepFigures) -> f64 {
        self.min_backlog_growth
            .max(self.max_backlog_growth * step.target_rps * step.trend_window_s)
    }
}

/// Why a step did not keep up; empty when it did.
pub fn saturation_reasons(step: &StepFigures, limits: &Limits) -> Vec<String> {
    let mut reasons = Vec::new();
    let scheduled = step
        .planned
        .max(step.sent + step.dropped + step.unfinished)
        .max(1);
    let dropped_share = step.dropped as f64 / scheduled as f64;
    if dropped_share > limits.max_dropped {
        reasons.push(format!(
            "dropped {} requests ({:.2} % > {:.2} %)",
            step.dropped,
            dropped_share * 100.0,
            limits.max_dropped * 100.0
        ));
    }
    let attempted = (step.sent + step.unfinished).max(1);
    let late_share = step.unfinished as f64 / attempted as f64;
    if late_share > LATE_SHARE {
        reasons.push(format!(
            "{} requests ({:.1} %) unanswered when judged: HTTP p99 > {:.0} ms",
            step.unfinished,
            late_share * 100.0,
            limits.http_p99_ms
        ));
    } else if let Some(p99) = step.http_p99_ms.filter(|&p99| p99 > limits.http_p99_ms) {
        reasons.push(format!(
            "HTTP p99 {p99:.1} ms > {:.0} ms",
            limits.http_p99_ms
        ));
    }
    let error_rate = step.errors as f64 / step.sent.max(1) as f64;
    if error_rate > limits.max_error_rate {
        reasons.push(format!(
            "HTTP error rate {:.3} % > {:.3} % ({} errors)",
            error_rate * 100.0,
            limits.max_error_rate * 100.0,
            step.errors
        ));
    }
    let allowed = limits.allowed_growth(step);
    match step.backlog_growth {
        None => reasons.push(format!(
            "end-to-end backlog not measured ({} progress samples: the databases did not answer in time)",
            step.trend_samples
        )),
        Some(growth) if growth > allowed => reasons.push(format!(
            "end-to-end backlog grew by {growth:.0} orders over {:.0} s (allowed {allowed:.0})",
            step.trend_window_s
        )),
        Some(_) => {}
    }
    reasons
}

/// Rise of the least-squares line through `points` (x = seconds) from the first x to the last;
/// `None` with fewer than 3 points or no time between them.
pub fn fitted_growth(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(x, y) in points {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    let span = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max)
        - points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    if sxx <= 0.0 || span <= 0.0 {
        return None;
    }
    Some(sxy / sxx * span)
}

/// The last step of the unbroken run of sustained steps from the first.
pub fn highest_sustained(steps: &[StepFigures]) -> Option<&StepFigures> {
    steps
        .iter()
        .take_while(|s| s.verdict == Verdict::Sustained)
        .last()
}

/// One backlog sample, `at_s` seconds after the load started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BacklogSample {
    pub at_s: f64,
    pub non_final_orders: i64,
    /// Outbox rows + JetStream pending + unacknowledged; `None` when the broker did not answer.
    pub messages: Option<i64>,
    /// CPU seconds the whole machine has been busy since boot (all cores, from `/proc/stat`).
    pub cpu_busy_s: Option<f64>,
}

/// Trend growth of the samples in `[from_s, to_s]`: (orders, messages, samples used).
pub fn backlog_trend(
    samples: &[BacklogSample],
    from_s: f64,
    to_s: f64,
) -> (Option<f64>, Option<f64>, usize) {
    let inside: Vec<&BacklogSample> = samples
        .iter()
        .filter(|s| s.at_s >= from_s - 1e-6 && s.at_s <= to_s + 1e-6)
        .collect();
    let orders: Vec<(f64, f64)> = inside
        .iter()
        .map(|s| (s.at_s, s.non_final_orders as f64))
        .collect();
    let messages: Vec<(f64, f64)> = inside
        .iter()
        .filter_map(|s| s.messages.map(|m| (s.at_s, m as f64)))
        .collect();
    (
        fitted_growth(&orders),
        fitted_growth(&messages),
        inside.len(),
    )
}

/// CPU ticks the machine has been busy (all cores): `/proc/stat`'s first line, all but idle
/// and iowait.
pub fn parse_cpu_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some(total.saturating_sub(idle))
}

fn machine_busy_seconds() -> Option<f64> {
    let ticks = parse_cpu_busy_ticks(&std::fs::read_to_string("/proc/stat").ok()?)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}

/// CPU the whole machine used over `[from_s, to_s]`, in % of one core (200 = two cores busy).
pub fn machine_cpu_pct(samples: &[BacklogSample], from_s: f64, to_s: f64) -> Option<f64> {
    let nearest = |at: f64| {
        samples
            .iter()
            .filter(|s| s.cpu_busy_s.is_some() && (s.at_s - at).abs() <= 1.5)
            .min_by(|a, b| (a.at_s - at).abs().total_cmp(&(b.at_s - at).abs()))
    };
    let (first, last) = (nearest(from_s)?, nearest(to_s)?);
    let seconds = last.at_s - first.at_s;
    if seconds <= 0.0 {
        return None;
    }
    Some((last.cpu_busy_s? - first.cpu_busy_s?) / seconds * 100.0)
}

/// The sample nearest to `at_s` (within a second and a half).
fn backlog_at(samples: &[BacklogSample], at_s: f64) -> Option<i64> {
    samples
        .iter()
        .filter(|s| (s.at_s - at_s).abs() <= 1.5)
        .min_by(|a, b| (a.at_s - at_s).abs().total_cmp(&(b.at_s - at_s).abs()))
        .map(|s| s.non_final_orders)
}

/// Mean CPU and peak RSS of each process over `[from_s, to_s)`: the sample taken at second `s`
/// covers the second before it, so the seconds `from_s + 1 ..= to_s` count.
pub fn processes_in_window(processes: &[ProcessUsage], from_s: u64, to_s: u64) -> Vec<StepProcess> {
    processes
        .iter()
        .map(|p| {
            let inside: Vec<_> = p
                .series
                .iter()
                .filter(|s| s.second > from_s && s.second <= to_s)
                .collect();
            let cpu_pct = if inside.is_empty() {
                0.0
            } else {
                inside.iter().map(|s| s.cpu_pct).sum::<f64>() / inside.len() as f64
            };
            StepProcess {
                name: p.name.clone(),
                cpu_pct,
                peak_rss_mib: inside.iter().map(|s| s.rss_mib).fold(0.0, f64::max),
            }
        })
        .collect()
}

/// Orders finalized in one run: offset of `finalized_at` from the load start (seconds),
/// end-to-end milliseconds, and whether it COMPLETED.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finalized {
    pub at_s: f64,
    pub e2e_ms: f64,
    pub completed: bool,
}

/// COMPLETED orders per whole second of `finalized_at` (index = second after the load start).
pub fn completions_per_second(orders: &[Finalized]) -> Vec<u64> {
    let mut counts: Vec<u64> = Vec::new();
    for order in orders.iter().filter(|o| o.completed && o.at_s >= 0.0) {
        let second = order.at_s as usize;
        if second >= counts.len() {
            counts.resize(second + 1, 0);
        }
        counts[second] += 1;
    }
    counts
}

/// Completed count, completed per second and e2e p50/p99 of the orders COMPLETED in the window.
fn completions_in(
    orders: &[Finalized],
    from_s: f64,
    to_s: f64,
) -> (u64, f64, Option<f64>, Option<f64>) {
    let latencies = Percentiles::from_millis(
        orders
            .iter()
            .filter(|o| o.completed && o.at_s >= from_s && o.at_s < to_s)
            .map(|o| o.e2e_ms),
    );
    let count = latencies.len() as u64;
    let seconds = to_s - from_s;
    let per_second = if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    };
    (
        count,
        per_second,
        latencies.quantile(0.50),
        latencies.quantile(0.99),
    )
}

// ---------------------------------------------------------------------------------------------
// The capacity summary in the report.

/// The capacity section of `report.json` (next to the fields of a scenario report).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct CapacitySummary {
    pub settings: Option<CapacitySettings>,
    pub steps: Vec<StepFigures>,
    /// Target rate of the highest step sustained with every rule holding.
    pub sustained_rps: Option<f64>,
    /// Orders COMPLETED per second end to end during that step.
    pub sustained_completed_per_s: Option<f64>,
    /// Target rate of the first saturated step and why.
    pub saturated_rps: Option<f64>,
    pub saturation_reasons: Vec<String>,
    /// Seconds after the start at which the load was stopped early.
    pub stopped_at_s: Option<f64>,
    /// COMPLETED orders per second of the run (index = second), from `orders.finalized_at`.
    pub completed_per_second: Vec<u64>,
    pub baseline: Option<BaselineReport>,
    pub baseline_error: Option<String>,
    /// `sustained_completed_per_s / baseline.best_tps`.
    pub ratio_to_baseline: Option<f64>,
    /// The durability settings the figure was measured with.
    pub durability: String,
    /// CPU the machine used in the 2 s before the load (services idle), % of one core: other
    /// programs competing with the run show up here.
    pub machine_cpu_before_pct: Option<f64>,
}

impl CapacitySummary {
    fn fill_ratio(&mut self) {
        self.ratio_to_baseline = match (&self.baseline, self.sustained_completed_per_s) {
            (Some(baseline), Some(completed)) if baseline.best_tps > 0.0 => {
                Some(completed / baseline.best_tps)
            }
            _ => None,
        };
    }

    /// The capacity check: passes when at least one step was sustained.
    pub fn check(&self) -> CheckResult {
        let mut detail = match (self.sustained_rps, self.sustained_completed_per_s) {
            (Some(rps), Some(completed)) => format!(
                "highest sustained step {rps:.0} req/s ({completed:.0} orders/s completed end to end)"
            ),
            (Some(rps), None) => format!("highest sustained step {rps:.0} req/s"),
            _ => "no step sustained: lower capacity.start_rate".to_string(),
        };
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
        CheckResult::new(CHECK_CAPACITY, self.sustained_rps.is_some(), detail)
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
        if let Some(top) = self
            .sustained_rps
            .and_then(|rps| self.steps.iter().find(|s| s.target_rps == rps))
        {
            let _ = writeln!(
                out,
                "\n  CPU and memory at the top sustained step ({:.0} req/s)",
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
                "  ratio: {:.0} completed orders/s end to end ÷ {:.0} naive tps = {ratio:.2}×",
                self.sustained_completed_per_s.unwrap_or(0.0),
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
        if let Some(completed) = self.sustained_completed_per_s {
            row(
                "Completed orders/s (sustained step)",
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
                Verdict::CutShort => "",
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
        for chart in self.charts() {
            let _ = writeln!(html, "<figure>{chart}</figure>");
        }
        html.push_str("</section>\n");
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

/// `report.json` of a capacity run: the scenario report's fields plus `capacity`.
#[derive(Serialize)]
struct CapacityReportFile<'a> {
    #[serde(flatten)]
    report: &'a Report,
    capacity: &'a CapacitySummary,
}

/// Writes `report.json` and `report.html` (the scenario report's page with the capacity section
/// before the charts over time).
pub fn write_report(
    report: &Report,
    capacity: &CapacitySummary,
    dir: &Path,
) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let json_path = dir.join("report.json");
    let html_path = dir.join("report.html");
    let json = serde_json::to_string_pretty(&CapacityReportFile { report, capacity })?;
    std::fs::write(&json_path, json)?;
    let html = report.to_html();
    let anchor = "<section><h2>Over time</h2>";
    let section = capacity.html();
    let html = match html.find(anchor) {
        Some(at) => format!("{}{section}{}", &html[..at], &html[at..]),
        None => html.replacen("</body>", &format!("{section}</body>"), 1),
    };
    std::fs::write(&html_path, html)?;
    Ok((json_path, html_path))
}

// ---------------------------------------------------------------------------------------------
// The run.

#[derive(Debug, Clone, Default)]
pub struct CapacityOptions {
    /// Where `<timestamp>-<scenario>/` goes; default `<workspace>/results`.
    pub results_dir: Option<PathBuf>,
    /// Skip the naive baseline.
    pub skip_baseline: bool,
}

/// Runs the capacity plan end to end; returns whether every check passed. Stops what it
/// started, also on failure or Ctrl-C.
pub async fn run_capacity(plan: &CapacityPlan, options: &CapacityOptions) -> Result<bool> {
    if !plan.scenario.faults.is_empty() {
        bail!("a capacity scenario cannot inject faults");
    }
    deploy::check_binaries()?;
    let _lock = stack::run_lock::acquire()?;
    let state = StateDir::locate()?;
    let postgres_before = stack::pid_of(&state, "postgres").is_some();
    let nats_before = stack::pid_of(&state, "nats").is_some();
    println!("▶ starting PostgreSQL and NATS (installing them if missing)…");
    let infra = stack::ensure_infra(&state).await?;

    let result = tokio::select! {
        result = run(plan, options, &state, &infra) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };

    println!("▶ stopping what the run started…");
    deploy::finish_run(&state, &infra.nats_url).await;
    let ours_now =
        stack::pid_of(&state, "postgres").is_some() || stack::pid_of(&state, "nats").is_some();
    if !postgres_before && !nats_before && ours_now {
        if let Err(e) = stack::stop_infra(&state).await {
            eprintln!("warning: stopping PostgreSQL and NATS: {e:#}");
        }
    }
    result
}

async fn run(
    plan: &CapacityPlan,
    options: &CapacityOptions,
    state: &StateDir,
    infra: &stack::Infra,
) -> Result<bool> {
    let scenario = &plan.scenario;
    let settings = &plan.settings;
    let rates = settings.step_rates();
    let Prepared {
        started_at,
        services,
        dbs,
        broker,
        schedule,
        product_ids,
        load_plan,
        ..
    } = runner::prepare(scenario, state, infra).await?;
    let durability = durability(&dbs, state).await;
    let load_state = LoadState::new(&load_plan);
    let phase = Arc::new(Mutex::new(Phase::Load));
    let drain_status = Arc::new(Mutex::new(DrainStatus::default()));

    println!(
        "▶ capacity: {} steps of {} from {:.0} to {:.0} req/s (+{:.0}); the first step that does not keep up stops the load",
        rates.len(),
        format_duration(settings.step_duration),
        rates[0],
        rates[rates.len() - 1],
        settings.step_rate
    );
    let machine_cpu_before_pct = quiet_check().await;
    let start = Instant::now();
    let start_utc = Utc::now();
    let (stop_monitor, stop_signal) = watch::channel(false);
    let monitor = monitor::spawn_light(
        MonitorContext {
            dbs: dbs.clone(),
            load: load_state.clone(),
            schedule: schedule.clone(),
            start,
            phase: phase.clone(),
            drain_status: drain_status.clone(),
            processes: monitor::tracked_processes(state, &services),
            watched_product: product_ids[0],
            terminal: std::io::stdout().is_terminal(),
        },
        stop_signal,
    );

    let controller = Controller {
        settings,
        limits: settings.limits(scenario.checks.max_error_rate),
        rates: &rates,
        schedule: &schedule,
        load: load_state.clone(),
        dbs: &dbs,
        broker: &broker,
        start,
    };
    let (generated, control) = tokio::join!(
        driver::generate(load_plan, load_state.clone(), start),
        controller.run()
    );
    let load_elapsed = start.elapsed();
    if let Err(e) = generated {
        let _ = stop_monitor.send(true);
        return Err(e);
    }

    let drain_timeout = scenario.checks.drain_timeout;
    *phase.lock().unwrap_or_else(|e| e.into_inner()) = Phase::Drain {
        since: Instant::now(),
        timeout: drain_timeout,
    };
    let drained = drain::drain(&dbs, &broker, drain_timeout, &drain_status).await;
    let _ = stop_monitor.send(true);
    let samples = monitor.await.context("the monitor task panicked")?;
    println!("▶ drain: {}", drained.detail(drain_timeout));

    // The HTTP checks of the audit cover the sustained steps; the data checks cover everything.
    let stats = load_state.stats_snapshot();
    let sustained_end = highest_sustained(&control.steps).map(|s| s.to_s as u64);
    let http_window = stats.window(0..sustained_end.unwrap_or(u64::MAX));
    println!("▶ verifying the three databases…");
    let audit = verify::audit(
        &dbs,
        Some(&HttpFigures {
            p95_ms: http_window.latency.p95_ms,
            p95_threshold_ms: scenario.checks.p95_ms as f64,
            error_rate: http_window.errors as f64 / http_window.sent.max(1) as f64,
            max_error_rate: scenario.checks.max_error_rate,
        }),
    )
    .await?;
    let final_progress = verify::progress(&dbs).await?;
    let finalized_rows = finalized_orders(&dbs).await?;
    dbs.close().await;

    // The baseline on a quiet server: only PostgreSQL and NATS still run.
    deploy::stop_services(state).await?;
    let (baseline, baseline_error) = if options.skip_baseline {
        (None, Some("skipped (--skip-baseline)".to_string()))
    } else {
        println!(
            "▶ naive baseline on the same PostgreSQL ({} s per level)…",
            settings.baseline_duration.as_secs_f64()
        );
        match baseline::measure(&infra.admin_database_url, &settings.baseline()).await {
            Ok(report) => (Some(report), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    };

    let finalized: Vec<Finalized> = finalized_rows
        .iter()
        .map(|(created, finalized, completed)| Finalized {
            at_s: seconds_between(start_utc, *finalized),
            e2e_ms: seconds_between(*created, *finalized) * 1000.0,
            completed: *completed,
        })
        .collect();
    let e2e: Vec<(DateTime<Utc>, f64)> = finalized_rows
        .iter()
        .zip(&finalized)
        .map(|((created, _, _), f)| (*created, f.e2e_ms))
        .collect();

    let mut capacity = summarise(
        settings,
        &schedule,
        control,
        &stats,
        &samples.processes,
        &finalized,
    );
    capacity.baseline = baseline;
    capacity.baseline_error = baseline_error;
    capacity.durability = durability;
    capacity.machine_cpu_before_pct = machine_cpu_before_pct;
    capacity.fill_ratio();

    // The report of what actually ran: the schedule cut where the load stopped.
    let ran = capacity
        .stopped_at_s
        .map_or(schedule.total_duration(), Duration::from_secs_f64);
    let ran_schedule = Schedule::new(
        scenario.load.start_rate,
        &stages_until(scenario.load.start_rate, &scenario.load.stages, ran),
    );
    let mut checks = runner::checks(audit, &drained, drain_timeout);
    checks.push(capacity.check());
    let last_sample = samples.progress.last().map_or(0, |s| s.at_s as u64);
    let mut report = runner::build_report(ReportInputs {
        scenario,
        started_at,
        start_utc,
        schedule: &ran_schedule,
        load_elapsed,
        stats: &stats,
        samples,
        final_progress: &final_progress,
        e2e: &e2e,
        watched_product: product_ids[0],
        checks,
    });
    // The light progress samples count only non-final orders: the final ones come from
    // finalized_at, cumulatively, like the scenario report's chart.
    let last_second = last_sample.max(ran.as_secs());
    report.per_second.retain(|row| row.second <= last_second);
    let (mut completed, mut failed) = (0u64, 0u64);
    let mut by_second: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for order in &finalized {
        let entry = by_second.entry(order.at_s.max(0.0) as u64).or_default();
        if order.completed {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
    let mut counts = by_second.into_iter().peekable();
    for row in &mut report.per_second {
        while let Some((_, (c, f))) = counts.next_if(|(second, _)| *second <= row.second) {
            completed += c;
            failed += f;
        }
        row.orders_completed = Some(completed);
        row.orders_failed = Some(failed);
    }

    let dir = match &options.results_dir {
        Some(dir) => dir.clone(),
        None => stack::workspace_root()?.join("results"),
    }
    .join(format!(
        "{}-{}",
        started_at.format("%Y%m%dT%H%M%SZ"),
        runner::file_safe(&scenario.name)
    ));
    let (json, html) = write_report(&report, &capacity, &dir)
        .with_context(|| format!("writing the report into {}", dir.display()))?;
    println!("{}", report.terminal_summary());
    println!("{}", capacity.text());
    println!("  report: {}\n          {}", json.display(), html.display());
    Ok(report.passed())
}

/// Builds the summary from the judged steps and what the run recorded.
fn summarise(
    settings: &CapacitySettings,
    schedule: &Schedule,
    control: ControlOutcome,
    stats: &crate::stats::RunStats,
    processes: &[ProcessUsage],
    finalized: &[Finalized],
) -> CapacitySummary {
    let mut steps = control.steps;
    // The step the stop cut short, from the final statistics.
    if let Some(stopped) = control.stopped_at {
        let index = steps.len();
        let (from, to) = settings.step_window(index);
        if stopped > from && index < settings.step_rates().len() {
            let to = to.min(stopped);
            let mut cut = step_figures(
                index,
                settings.step_rates()[index],
                from,
                to,
                schedule,
                stats,
                &[],
                settings,
            );
            cut.backlog_growth = None;
            cut.verdict = Verdict::CutShort;
            steps.push(cut);
        }
    }
    for step in &mut steps {
        let (count, per_second, p50, p99) = completions_in(finalized, step.from_s, step.to_s);
        step.completed = count;
        step.completed_per_s = per_second;
        step.e2e_p50_ms = p50;
        step.e2e_p99_ms = p99;
        step.processes =
            processes_in_window(processes, step.from_s as u64, step.to_s.ceil() as u64);
        let tracked: f64 = step.processes.iter().map(|p| p.cpu_pct).sum();
        step.other_cpu_pct = step.machine_cpu_pct.map(|all| (all - tracked).max(0.0));
    }
    let sustained = highest_sustained(&steps).cloned();
    let saturated = steps
        .iter()
        .find(|s| s.verdict == Verdict::Saturated)
        .cloned();
    CapacitySummary {
        settings: Some(settings.clone()),
        sustained_rps: sustained.as_ref().map(|s| s.target_rps),
        sustained_completed_per_s: sustained.as_ref().map(|s| s.completed_per_s),
        saturated_rps: saturated.as_ref().map(|s| s.target_rps),
        saturation_reasons: saturated.map(|s| s.reasons).unwrap_or_default(),
        stopped_at_s: control.stopped_at.map(|d| d.as_secs_f64()),
        completed_per_second: completions_per_second(finalized),
        steps,
        ..CapacitySummary::default()
    }
}

/// What the controller saw.
struct ControlOutcome {
    steps: Vec<StepFigures>,
    /// When the load was stopped early (after the start).
    stopped_at: Option<Duration>,
}

/// Samples the backlog once a second and judges each step after it ends.
struct Controller<'a> {
    settings: &'a CapacitySettings,
    limits: Limits,
    rates: &'a [f64],
    schedule: &'a Schedule,
    load: Arc<LoadState>,
    dbs: &'a Databases,
    broker: &'a Broker,
    start: Instant,
}

impl Controller<'_> {
    async fn run(self) -> ControlOutcome {
        let mut samples: Vec<BacklogSample> = Vec::new();
        let mut steps = Vec::new();
        let mut ticks = tokio::time::interval_at(self.start, Duration::from_secs(1));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            let tick = ticks.tick().await;
            if let Some(sample) = self.sample((tick - self.start).as_secs_f64()).await {
                samples.push(sample);
            }
            let index = steps.len();
            let (from, to) = self.settings.step_window(index);
            if self.start.elapsed() < to + self.settings.evaluation_delay {
                continue;
            }
            let mut step = {
                let stats = self.load.stats.lock().unwrap_or_else(|e| e.into_inner());
                step_figures(
                    index,
                    self.rates[index],
                    from,
                    to,
                    self.schedule,
                    &stats,
                    &samples,
                    self.settings,
                )
            };
            step.reasons = saturation_reasons(&step, &self.limits);
            if !step.reasons.is_empty() {
                step.verdict = Verdict::Saturated;
            }
            println!(
                "  step {:>2}: {:>6.0} req/s → achieved {:.0}/s, HTTP p99 {} ms, dropped {}, backlog {} → {}{}",
                step.step,
                step.target_rps,
                step.achieved_rps,
                opt_ms(step.http_p99_ms),
                step.dropped,
                step.backlog_growth
                    .map_or("-".to_string(), |g| format!("{g:+.0}")),
                step.verdict.label(),
                if step.reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", step.reasons.join("; "))
                }
            );
            let saturated = step.verdict == Verdict::Saturated;
            steps.push(step);
            if saturated {
                self.load.cancel.store(true, Ordering::Relaxed);
                return ControlOutcome {
                    steps,
                    stopped_at: Some(self.start.elapsed()),
                };
            }
            if steps.len() == self.rates.len() {
                return ControlOutcome {
                    steps,
                    stopped_at: None,
                };
            }
        }
    }

    async fn sample(&self, at_s: f64) -> Option<BacklogSample> {
        let (progress, backlog) = tokio::join!(
            tokio::time::timeout(SAMPLE_TIMEOUT, verify::progress_light(self.dbs)),
            tokio::time::timeout(SAMPLE_TIMEOUT, self.broker.backlog()),
        );
        let progress = progress.ok()?.ok()?;
        let messages = match backlog {
            Ok(Ok(b)) => Some(progress.outbox_backlog + (b.pending + b.ack_pending) as i64),
            _ => None,
        };
        Some(BacklogSample {
            at_s,
            non_final_orders: progress.non_final_orders,
            messages,
            cpu_busy_s: machine_busy_seconds(),
        })
    }
}

/// The figures of step `index` over `[from, to)` from the statistics and backlog samples.
#[allow(clippy::too_many_arguments)]
fn step_figures(
    index: usize,
    rate: f64,
    from: Duration,
    to: Duration,
    schedule: &Schedule,
    stats: &crate::stats::RunStats,
    samples: &[BacklogSample],
    settings: &CapacitySettings,
) -> StepFigures {
    let window = stats.window(from.as_secs()..to.as_secs_f64().ceil() as u64);
    let planned = schedule.expected_requests_between(from, to).round() as u64;
    let (from_s, to_s) = (from.as_secs_f64(), to.as_secs_f64());
    let trend_from = (from + settings.settle).as_secs_f64().min(to_s);
    let (backlog_growth, messages_growth, trend_samples) = backlog_trend(samples, trend_from, to_s);
    let seconds = to_s - from_s;
    StepFigures {
        step: index + 1,
        target_rps: rate,
        from_s,
        to_s,
        planned,
        sent: window.sent,
        dropped: window.dropped,
        errors: window.errors,
        unfinished: planned.saturating_sub(window.sent + window.dropped),
        achieved_rps: if seconds > 0.0 {
            window.sent as f64 / seconds
        } else {
            0.0
        },
        http_p50_ms: (window.latency.count > 0).then_some(window.latency.p50_ms),
        http_p99_ms: (window.latency.count > 0).then_some(window.latency.p99_ms),
        backlog_start: backlog_at(samples, from_s),
        backlog_end: backlog_at(samples, to_s),
        backlog_growth,
        messages_growth,
        trend_window_s: to_s - trend_from,
        trend_samples,
        machine_cpu_pct: machine_cpu_pct(samples, from_s, to_s),
        ..StepFigures::default()
    }
}

/// CPU the machine uses over 2 s, % of one core; warns when other programs are busy.
async fn quiet_check() -> Option<f64> {
    let before = machine_busy_seconds()?;
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pct = (machine_busy_seconds()? - before) / began.elapsed().as_secs_f64() * 100.0;
    if pct > 25.0 {
        println!(
            "  warning: the machine used {pct:.0} % of a core before the load (services idle): \
             other programs compete with the run, so its figures come out low"
        );
    }
    Some(pct)
}

/// (created_at, finalized_at, COMPLETED?) of every final order.
async fn finalized_orders(dbs: &Databases) -> Result<Vec<(DateTime<Utc>, DateTime<Utc>, bool)>> {
    sqlx::query_as(
        "SELECT created_at, finalized_at, status = 'COMPLETED' FROM orders \
         WHERE finalized_at IS NOT NULL",
    )
    .fetch_all(&dbs.orders)
    .await
    .context("reading finalized orders")
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from)
        .num_microseconds()
        .map_or(f64::NAN, |us| us as f64 / 1e6)
}

/// The durability settings in force, for the report.
async fn durability(dbs: &Databases, state: &StateDir) -> String {
    let show = |name: &'static str| async move {
        sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
            .fetch_one(&dbs.orders)
            .await
            .unwrap_or_else(|_| "?".into())
    };
    let (fsync, synchronous_commit) = tokio::join!(show("fsync"), show("synchronous_commit"));
    let nats = if std::env::var("ORDERSYS_NATS_URL").is_ok_and(|v| !v.trim().is_empty()) {
        "external NATS (sync setting unknown)".to_string()
    } else {
        std::fs::read_to_string(state.path().join("nats/nats.conf"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.trim_start().starts_with("sync_interval"))
                    .map(|l| format!("NATS JetStream file store {}", l.trim()))
            })
            .unwrap_or_else(|| "NATS sync setting unknown".to_string())
    };
    format!("PostgreSQL fsync={fsync}, synchronous_commit={synchronous_commit}; {nats}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ProcessSample;

    fn settings() -> CapacitySettings {
        CapacitySettings::default()
    }

    fn limits() -> Limits {
        settings().limits(0.0)
    }

    /// A step at `rate` that kept up: everything sent, fast, flat backlog.
    fn healthy(rate: f64) -> StepFigures {
        let planned = (rate * 30.0) as u64;
        StepFigures {
            step: 1,
            target_rps: rate,
            from_s: 0.0,
            to_s: 30.0,
            planned,
            sent: planned,
            achieved_rps: rate,
            http_p50_ms: Some(3.0),
            http_p99_ms: Some(40.0),
            backlog_growth: Some(5.0),
            messages_growth: Some(-3.0),
            trend_window_s: 20.0,
            trend_samples: 21,
            ..StepFigures::default()
        }
    }

    #[test]
    fn steps_go_from_start_to_max_by_step() {
        let s = CapacitySettings {
            start_rate: 500.0,
            step_rate: 500.0,
            max_rate: 2000.0,
            ..settings()
        };
        assert_eq!(s.step_rates(), vec![500.0, 1000.0, 1500.0, 2000.0]);
        // A max between two steps is not exceeded.
        let s = CapacitySettings {
            max_rate: 1800.0,
            ..s
        };
        assert_eq!(s.step_rates(), vec![500.0, 1000.0, 1500.0]);
        // No increment: one step.
        let s = CapacitySettings {
            step_rate: 0.0,
            ..s
        };
        assert_eq!(s.step_rates(), vec![500.0]);
        assert_eq!(
            CapacitySettings {
                start_rate: 1000.0,
                step_rate: 1000.0,
                max_rate: 10_000.0,
                ..settings()
            }
            .step_rates()
            .len(),
            10
        );
    }

    #[test]
    fn stages_hold_each_step_and_the_schedule_matches() {
        let s = CapacitySettings {
            start_rate: 100.0,
            step_rate: 50.0,
            max_rate: 200.0,
            step_duration: Duration::from_secs(10),
            ..settings()
        };
        let stages = s.stages();
        assert_eq!(stages.len(), 5); // hold, jump, hold, jump, hold
        let schedule = Schedule::new(100.0, &stages);
        assert_eq!(schedule.total_duration(), Duration::from_secs(30));
        for (k, rate) in s.step_rates().into_iter().enumerate() {
            let (from, to) = s.step_window(k);
            assert_eq!(from, Duration::from_secs(10 * k as u64));
            let expected = schedule.expected_requests_between(from, to);
            assert!(
                (expected - rate * 10.0).abs() < 1e-6,
                "step {k}: {expected}"
            );
            assert_eq!(schedule.rate_at(from + Duration::from_secs(5)), rate);
        }
        assert_eq!(schedule.intended_starts().count(), 1000 + 1500 + 2000);
    }

    #[test]
    fn stages_until_cuts_where_the_load_stopped() {
        let s = CapacitySettings {
            start_rate: 100.0,
            step_rate: 100.0,
            max_rate: 300.0,
            step_duration: Duration::from_secs(10),
            ..settings()
        };
        let cut = stages_until(100.0, &s.stages(), Duration::from_millis(21_500));
        let schedule = Schedule::new(100.0, &cut);
        assert_eq!(schedule.total_duration(), Duration::from_millis(21_500));
        assert!((schedule.expected_requests() - (1000.0 + 2000.0 + 450.0)).abs() < 1e-6);
        // Past the end: everything.
        assert_eq!(
            stages_until(100.0, &s.stages(), Duration::from_secs(99)),
            s.stages()
        );
        // A ramp is cut at its interpolated rate.
        let ramp = [Stage {
            duration: Duration::from_secs(10),
            target: 100.0,
        }];
        let cut = stages_until(0.0, &ramp, Duration::from_secs(5));
        assert_eq!(cut[0].target, 50.0);
        assert!(stages_until(0.0, &ramp, Duration::ZERO).is_empty());
    }

    #[test]
    fn a_step_that_keeps_up_is_sustained() {
        assert!(saturation_reasons(&healthy(2000.0), &limits()).is_empty());
    }

    #[test]
    fn dropped_requests_over_the_limit_saturate() {
        let mut step = healthy(1000.0); // 30,000 planned
        step.dropped = 30; // 0.1 %: allowed
        step.sent -= 30;
        assert!(saturation_reasons(&step, &limits()).is_empty());
        step.dropped = 31;
        step.sent -= 1;
        let reasons = saturation_reasons(&step, &limits());
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].starts_with("dropped 31"), "{reasons:?}");
    }

    #[test]
    fn http_p99_over_the_limit_saturates() {
        let mut step = healthy(1000.0);
        step.http_p99_ms = Some(100.0);
        assert!(saturation_reasons(&step, &limits()).is_empty());
        step.http_p99_ms = Some(100.5);
        let reasons = saturation_reasons(&step, &limits());
        assert!(
            reasons[0].contains("HTTP p99 100.5 ms > 100 ms"),
            "{reasons:?}"
        );
    }

    #[test]
    fn unanswered_requests_count_as_slow() {
        let mut step = healthy(1000.0);
        // 2 % of the step still in flight a second after it ended: p99 is over the limit even
        // though the answered ones were fast.
        step.unfinished = 600;
        step.sent -= 600;
        let reasons = saturation_reasons(&step, &limits());
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].contains("600 requests (2.0 %) unanswered"),
            "{reasons:?}"
        );
        // A handful in flight is normal.
        step.unfinished = 10;
        step.sent += 590;
        assert!(saturation_reasons(&step, &limits()).is_empty());
    }

    #[test]
    fn errors_over_the_allowed_rate_saturate() {
        let mut step = healthy(1000.0);
        step.errors = 1;
        assert!(saturation_reasons(&step, &limits())[0].contains("error rate"));
        assert!(saturation_reasons(&step, &settings().limits(0.01)).is_empty());
    }

    #[test]
    fn backlog_growth_is_judged_against_the_arrivals() {
        let mut step = healthy(5000.0);
        // 1 % of 5,000/s over 20 s = 1,000 orders allowed.
        assert_eq!(limits().allowed_growth(&step), 1000.0);
        step.backlog_growth = Some(999.0);
        assert!(saturation_reasons(&step, &limits()).is_empty());
        step.backlog_growth = Some(1500.0);
        let reasons = saturation_reasons(&step, &limits());
        assert!(
            reasons[0].contains("backlog grew by 1500 orders"),
            "{reasons:?}"
        );
        // Slow steps: the absolute floor.
        let mut slow = healthy(500.0);
        assert_eq!(limits().allowed_growth(&slow), 200.0);
        slow.backlog_growth = Some(250.0);
        assert!(saturation_reasons(&slow, &limits())[0].contains("backlog grew"));
        // The message backlog is shown, not judged: its orders are in the orders' backlog.
        slow.backlog_growth = Some(0.0);
        slow.messages_growth = Some(5000.0);
        assert!(saturation_reasons(&slow, &limits()).is_empty());
    }

    #[test]
    fn an_unmeasured_backlog_saturates() {
        let mut step = healthy(1000.0);
        step.backlog_growth = None;
        step.trend_samples = 1;
        assert!(saturation_reasons(&step, &limits())[0].contains("not measured"));
    }

    #[test]
    fn several_reasons_are_all_named() {
        let mut step = healthy(8000.0);
        step.dropped = 5000;
        step.http_p99_ms = Some(900.0);
        step.backlog_growth = Some(50_000.0);
        assert_eq!(saturation_reasons(&step, &limits()).len(), 3);
    }

    #[test]
    fn fitted_growth_follows_the_trend_not_the_noise() {
        // Flat with ±80 of noise: far below the 200-order floor.
        let flat: Vec<(f64, f64)> = (0..20)
            .map(|t| (t as f64, 300.0 + if t % 2 == 0 { 80.0 } else { -80.0 }))
            .collect();
        assert!(fitted_growth(&flat).expect("enough points").abs() < 50.0);
        // Growing 100 per second over 19 s.
        let growing: Vec<(f64, f64)> = (0..20).map(|t| (t as f64, 100.0 * t as f64)).collect();
        assert!((fitted_growth(&growing).expect("enough points") - 1900.0).abs() < 1e-6);
        // Draining counts as negative growth.
        let draining: Vec<(f64, f64)> = (0..5)
            .map(|t| (t as f64, 500.0 - 100.0 * t as f64))
            .collect();
        assert!(fitted_growth(&draining).expect("enough points") < 0.0);
        assert_eq!(fitted_growth(&[(0.0, 1.0), (1.0, 2.0)]), None);
        assert_eq!(fitted_growth(&[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn backlog_trend_uses_the_window_only() {
        let samples: Vec<BacklogSample> = (0..=30)
            .map(|t| BacklogSample {
                at_s: t as f64,
                // A level shift in the first 10 s, then flat; messages grow all along.
                non_final_orders: if t < 10 { 100 * t } else { 1000 },
                messages: (t != 15).then_some(10 * t),
                cpu_busy_s: Some(t as f64 * 0.5),
            })
            .collect();
        let (orders, messages, used) = backlog_trend(&samples, 10.0, 30.0);
        assert_eq!(used, 21);
        assert!(orders.expect("fitted").abs() < 1e-6);
        assert!((messages.expect("fitted") - 200.0).abs() < 1e-6);
        assert_eq!(backlog_at(&samples, 30.0), Some(1000));
        // Half a CPU second per second: 50 % of one core.
        assert_eq!(machine_cpu_pct(&samples, 10.0, 30.0), Some(50.0));
        assert_eq!(machine_cpu_pct(&samples, 40.0, 50.0), None);
        assert_eq!(backlog_at(&samples, 99.0), None);
    }

    #[test]
    fn machine_cpu_from_proc_stat() {
        let stat = "cpu  100 5 50 1000 20 3 2 0 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(parse_cpu_busy_ticks(stat), Some(160));
        assert_eq!(parse_cpu_busy_ticks("nonsense"), None);
        assert!(machine_busy_seconds().expect("/proc/stat") > 0.0);
    }

    #[test]
    fn the_highest_sustained_step_is_the_last_before_the_first_saturation() {
        let mut steps: Vec<StepFigures> = [500.0, 1000.0, 1500.0, 2000.0]
            .iter()
            .map(|&r| healthy(r))
            .collect();
        steps[2].verdict = Verdict::Saturated;
        steps[3].verdict = Verdict::CutShort;
        assert_eq!(
            highest_sustained(&steps).map(|s| s.target_rps),
            Some(1000.0)
        );
        steps[0].verdict = Verdict::Saturated;
        assert_eq!(highest_sustained(&steps), None);
        assert_eq!(highest_sustained(&[]), None);
    }

    #[test]
    fn step_figures_come_from_the_stats_and_the_samples() {
        use crate::stats::{Outcome, RunStats};
        let s = CapacitySettings {
            start_rate: 10.0,
            step_rate: 10.0,
            max_rate: 20.0,
            step_duration: Duration::from_secs(10),
            settle: Duration::from_secs(2),
            ..settings()
        };
        let schedule = Schedule::new(10.0, &s.stages());
        let mut stats = RunStats::new(20);
        // Step 2 (10 s .. 20 s, 200 planned): 190 answered, 5 dropped, 5 in flight.
        for i in 0..190u64 {
            let at = Duration::from_millis(10_000 + i * 50);
            stats.record(at, Duration::from_millis(5 + i % 10), Outcome::Status(202));
        }
        for i in 0..5u64 {
            stats.record_dropped(Duration::from_millis(19_600 + i * 50));
        }
        let samples: Vec<BacklogSample> = (10..=20)
            .map(|t| BacklogSample {
                at_s: t as f64,
                non_final_orders: 20,
                messages: Some(0),
                cpu_busy_s: None,
            })
            .collect();
        let (from, to) = s.step_window(1);
        let step = step_figures(1, 20.0, from, to, &schedule, &stats, &samples, &s);
        assert_eq!(step.step, 2);
        assert_eq!(
            (step.planned, step.sent, step.dropped, step.unfinished),
            (200, 190, 5, 5)
        );
        assert_eq!(step.achieved_rps, 19.0);
        assert_eq!(step.trend_window_s, 8.0);
        assert_eq!(step.trend_samples, 9);
        assert_eq!(step.backlog_growth, Some(0.0));
        assert_eq!((step.backlog_start, step.backlog_end), (Some(20), Some(20)));
        assert!(step.http_p99_ms.expect("latency") < 15.0);
        let reasons = saturation_reasons(&step, &s.limits(0.0));
        // 5 of 200 dropped (2.5 %) and 5 of 195 unanswered (2.6 %).
        assert_eq!(reasons.len(), 2, "{reasons:?}");
    }

    #[test]
    fn completions_are_counted_by_finalized_second() {
        let orders = [
            Finalized {
                at_s: 0.5,
                e2e_ms: 10.0,
                completed: true,
            },
            Finalized {
                at_s: 1.2,
                e2e_ms: 20.0,
                completed: true,
            },
            Finalized {
                at_s: 1.9,
                e2e_ms: 30.0,
                completed: false,
            },
            Finalized {
                at_s: 3.0,
                e2e_ms: 40.0,
                completed: true,
            },
        ];
        assert_eq!(completions_per_second(&orders), vec![1, 1, 0, 1]);
        let (count, per_second, p50, p99) = completions_in(&orders, 1.0, 3.0);
        assert_eq!((count, per_second), (1, 0.5));
        assert_eq!((p50, p99), (Some(20.0), Some(20.0)));
        assert_eq!(completions_in(&orders, 5.0, 6.0).2, None);
    }

    #[test]
    fn process_usage_per_step() {
        let usage = ProcessUsage {
            name: "order-service".into(),
            series: (0..=20)
                .map(|s| ProcessSample {
                    second: s,
                    cpu_pct: if s <= 10 { 10.0 } else { 50.0 },
                    rss_mib: s as f64,
                })
                .collect(),
            ..ProcessUsage::default()
        };
        let step = processes_in_window(&[usage], 10, 20);
        assert_eq!(step[0].cpu_pct, 50.0);
        assert_eq!(step[0].peak_rss_mib, 20.0);
    }

    #[test]
    fn the_capacity_file_generates_its_stages() {
        let text = r#"
            name = "cap"
            [load]
            max_in_flight = 100
            [data]
            users = 2
            initial_balance_cents = 1000
            products = [{ id = 1, stock = 10, price_cents = 1 }]
            [capacity]
            start_rate = 100
            step_rate = 100
            step_duration = "10s"
            max_rate = 300
            settle = "4s"
        "#;
        let plan = CapacityPlan::from_toml_str(text).expect("valid");
        assert_eq!(plan.scenario.load.start_rate, 100.0);
        assert_eq!(plan.scenario.load.stages, plan.settings.stages());
        assert_eq!(plan.scenario.load_duration(), Duration::from_secs(30));
        assert_eq!(plan.scenario.load.max_in_flight, 100);
        assert_eq!(plan.settings.settle, Duration::from_secs(4));
        assert_eq!(plan.settings.http_p99_ms, 100.0);

        let with_stages = text.replace(
            "max_in_flight = 100",
            "max_in_flight = 100\nstages = [{ duration = \"1s\", target = 1 }]",
        );
        let error = CapacityPlan::from_toml_str(&with_stages).expect_err("stages");
        assert!(format!("{error:#}").contains("generated"), "{error:#}");
        let typo = text.replace("settle =", "setle =");
        assert!(CapacityPlan::from_toml_str(&typo).is_err());
        let bad = text.replace("step_duration = \"10s\"", "step_duration = \"2500ms\"");
        let error = CapacityPlan::from_toml_str(&bad).expect_err("fractional");
        assert!(format!("{error:#}").contains("whole seconds"), "{error:#}");
    }

    #[test]
    fn the_shipped_capacity_scenario_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/capacity/capacity.toml");
        let plan = CapacityPlan::from_file(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let rates = plan.settings.step_rates();
        assert!(rates.len() >= 10, "{rates:?}");
        assert!(*rates.last().expect("steps") >= 10_000.0);
        // Enough stock and money for every order of every step.
        let planned = Schedule::from_profile(&plan.scenario.load).expected_requests();
        let product = &plan.scenario.data.products[0];
        assert!(
            product.stock as f64 >= planned,
            "stock {} < {planned}",
            product.stock
        );
        let money =
            plan.scenario.data.initial_balance_cents as f64 * plan.scenario.data.users as f64;
        assert!(money >= planned * product.price_cents as f64);
        assert_eq!(plan.scenario.data.low_balance_users, 0);
    }

    #[test]
    fn the_summary_check_and_ratio() {
        let mut steps = vec![healthy(500.0), healthy(1000.0), healthy(1500.0)];
        steps[1].step = 2;
        steps[2].step = 3;
        steps[0].completed_per_s = 499.0;
        steps[1].completed_per_s = 998.0;
        steps[2].verdict = Verdict::Saturated;
        steps[2].reasons = vec!["HTTP p99 150.0 ms > 100 ms".into()];
        let mut summary = CapacitySummary {
            sustained_rps: Some(1000.0),
            sustained_completed_per_s: Some(998.0),
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
        assert_eq!(summary.ratio_to_baseline, Some(998.0 / 4000.0));
        let check = summary.check();
        assert!(check.passed);
        assert!(
            check.detail.contains("highest sustained step 1000 req/s"),
            "{}",
            check.detail
        );
        assert!(
            check.detail.contains("saturated at 1500 req/s"),
            "{}",
            check.detail
        );
        let text = summary.text();
        assert!(text.contains("SATURATED: HTTP p99 150.0 ms"), "{text}");
        assert!(text.contains("0.25×"), "{text}");
        let html = summary.html();
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(!CapacitySummary::default().check().passed);
    }

    #[test]
    fn the_report_files_carry_the_capacity_section() {
        let dir = std::env::temp_dir().join(format!("loadtest-capacity-{}", std::process::id()));
        let report = Report {
            scenario: "capacity".into(),
            ..Report::default()
        };
        let summary = CapacitySummary {
            steps: vec![healthy(500.0)],
            sustained_rps: Some(500.0),
            ..CapacitySummary::default()
        };
        let (json, html) = write_report(&report, &summary, &dir).expect("written");
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid");
        assert_eq!(value["scenario"], "capacity");
        assert_eq!(value["capacity"]["sustained_rps"], 500.0);
        assert_eq!(value["capacity"]["steps"][0]["verdict"], "sustained");
        let page = std::fs::read_to_string(&html).expect("html");
        let capacity_at = page.find("<h2>Capacity</h2>").expect("section");
        assert!(capacity_at < page.find("<h2>Over time</h2>").expect("charts"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
