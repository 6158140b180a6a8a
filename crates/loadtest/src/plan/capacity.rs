//! The `[capacity]` section of a capacity plan (`scenarios/capacity/*.toml`, read by
//! `loadtest capacity`): the steps the arrival rate climbs, the rules a step must keep to count
//! as sustained, and the naive baseline to measure afterwards. The load stages are generated
//! from it: step `k` holds `start_rate + k × step_rate` requests per second for
//! `step_duration`, up to `max_rate`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plan::duration;
use crate::plan::stage::Stage;

/// At most this many steps (a typo in the rates should not plan a week of load).
const MAX_STEPS: usize = 500;

/// How to measure: which concurrencies, and for how long each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineSettings {
    /// Connections looping at once, one measurement each.
    pub concurrency: Vec<usize>,
    /// How long each measurement lasts.
    #[serde(with = "duration::seconds")]
    pub duration: Duration,
}

impl Default for BaselineSettings {
    fn default() -> Self {
        BaselineSettings {
            concurrency: vec![1, 8, 32],
            duration: Duration::from_secs(15),
        }
    }
}

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
    #[serde(default = "default_step_duration", with = "duration::text")]
    pub step_duration: Duration,
    /// The last step's rate is at most this.
    #[serde(default = "default_max_rate")]
    pub max_rate: f64,
    /// The first part of each step, where the backlog moves to its new level, is left out of the
    /// backlog trend.
    #[serde(default = "default_settle", with = "duration::text")]
    pub settle: Duration,
    /// A step is judged this long after it ends, so its last requests have answered.
    #[serde(default = "default_evaluation_delay", with = "duration::text")]
    pub evaluation_delay: Duration,
    /// A step whose HTTP p99 (from the intended start) is above this in more than one of its
    /// latency windows (in any, with fewer than three windows) is saturated.
    #[serde(default = "default_http_p99_ms")]
    pub http_p99_ms: f64,
    /// HTTP latency is judged per window of this length within a step, so one stall (a
    /// checkpoint, a burst of fsyncs) spoils one window, not the verdict; real saturation spoils
    /// the windows after it too (whole seconds; a step shorter than this is one window).
    #[serde(default = "default_latency_window", with = "duration::text")]
    pub latency_window: Duration,
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
    #[serde(default = "default_baseline_duration", with = "duration::text")]
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
fn default_latency_window() -> Duration {
    Duration::from_secs(10)
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
            latency_window: default_latency_window(),
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
                duration::format(self.step_duration)
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
            self.latency_window.as_secs() >= 1 && self.latency_window.subsec_nanos() == 0,
            "capacity.latency_window must be whole seconds, at least 1 s".into(),
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

    pub fn baseline(&self) -> BaselineSettings {
        BaselineSettings {
            concurrency: self.baseline_concurrency.clone(),
            duration: self.baseline_duration,
        }
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::plan::schedule::Schedule;
    use crate::plan::RunPlan;

    fn settings() -> CapacitySettings {
        CapacitySettings::default()
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
        let plan = RunPlan::from_capacity_toml(text).expect("valid");
        let settings = plan.capacity.clone().expect("capacity settings");
        assert_eq!(plan.scenario.load.start_rate, 100.0);
        assert_eq!(plan.scenario.load.stages, settings.stages());
        assert_eq!(plan.scenario.load_duration(), Duration::from_secs(30));
        assert_eq!(plan.scenario.load.max_in_flight, 100);
        assert_eq!(settings.settle, Duration::from_secs(4));
        assert_eq!(settings.http_p99_ms, 100.0);

        let with_stages = text.replace(
            "max_in_flight = 100",
            "max_in_flight = 100\nstages = [{ duration = \"1s\", target = 1 }]",
        );
        let error = RunPlan::from_capacity_toml(&with_stages).expect_err("stages");
        assert!(format!("{error:#}").contains("generated"), "{error:#}");
        let typo = text.replace("settle =", "setle =");
        assert!(RunPlan::from_capacity_toml(&typo).is_err());
        let bad = text.replace("step_duration = \"10s\"", "step_duration = \"2500ms\"");
        let error = RunPlan::from_capacity_toml(&bad).expect_err("fractional");
        assert!(format!("{error:#}").contains("whole seconds"), "{error:#}");
    }

    #[test]
    fn the_shipped_capacity_scenario_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/capacity/capacity.toml");
        let plan = RunPlan::capacity(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let rates = plan.capacity.as_ref().expect("settings").step_rates();
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
}
