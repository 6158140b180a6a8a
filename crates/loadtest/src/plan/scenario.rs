//! Scenario files: what load to generate, what data to seed, what to check afterwards.
//!
//! A scenario is a TOML file (see `scenarios/*.toml`). Durations are written the way people say
//! them — `"30s"`, `"1m"`, `"1m30s"`, `"500ms"` — and parsed by [`duration::parse`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::plan::capacity::CapacitySettings;
use crate::plan::duration;
use crate::plan::stage::Stage;

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario{} is not valid TOML for a scenario: {source}", in_file(.path))]
    Syntax {
        path: Option<PathBuf>,
        #[source]
        source: toml::de::Error,
    },
    #[error("scenario{} is invalid: {}", in_file(.path), .problems.join("; "))]
    Invalid {
        path: Option<PathBuf>,
        problems: Vec<String>,
    },
}

fn in_file(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

/// A whole load-test scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub load: LoadProfile,
    pub data: DataSetup,
    #[serde(default)]
    pub payment: PaymentSettings,
    #[serde(default)]
    pub checks: Thresholds,
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    #[serde(default)]
    pub deploy: DeploySettings,
    /// The order service's fair-use limits for this run; unset ones are derived from the load
    /// (see `plan::limits`).
    #[serde(default)]
    pub limits: LimitSettings,
    /// Only in a capacity plan: the steps, from which `load.stages` is generated.
    #[serde(default)]
    pub capacity: Option<CapacitySettings>,
    /// How many of the run's orders the services trace ("Where the time goes").
    #[serde(default)]
    pub traces: TraceSettings,
}

/// The run's traces: the share of orders sampled.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSettings {
    /// 0..=1; unset: enough for [`TraceSettings::ENOUGH_ORDERS`] sampled orders, not every one.
    pub sample_ratio: Option<f64>,
}

impl TraceSettings {
    /// Sampled orders a run aims for when the scenario does not say.
    pub const ENOUGH_ORDERS: f64 = 5_000.0;

    /// The ratio for a run that plans `orders` requests.
    pub fn ratio(&self, orders: f64) -> f64 {
        self.sample_ratio
            .unwrap_or_else(|| Self::ENOUGH_ORDERS / orders.max(1.0))
            .clamp(0.0, 1.0)
    }
}

/// How the run deploys the services (see `deploy::Replication` and `faults`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySettings {
    /// Instances of every service: same database and durable consumers, different HTTP ports;
    /// the load is spread over the order-service instances.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// The services' JetStream consumer ack wait (`APP_CONSUMER__ACK_WAIT`); unset: the
    /// services' default (30 s).
    #[serde(default, with = "duration::optional_text")]
    pub consumer_ack_wait: Option<Duration>,
    /// How long a worker may have work waiting without progress before `/ready` says 503
    /// (`APP_WORKERS__STALL_AFTER`); unset: the services' default (30 s).
    #[serde(default, with = "duration::optional_text")]
    pub stall_after: Option<Duration>,
    /// How long an open order waits before the order service re-drives it
    /// (`APP_REDRIVE__AFTER`); unset: the services' default (20 s).
    #[serde(default, with = "duration::optional_text")]
    pub redrive_after: Option<Duration>,
    /// `local` (default): every process on 127.0.0.1. `hosts`: every PostgreSQL, NATS node
    /// and service instance on a host of its own (a network namespace, `stack::hosts`).
    #[serde(default)]
    pub topology: Topology,
    /// NATS servers in the hosts topology: 3 (a cluster, streams with 3 replicas) or 1.
    #[serde(default = "default_nats_nodes")]
    pub nats_nodes: u32,
}

/// Where the run's processes live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    #[default]
    Local,
    Hosts,
}

impl Default for DeploySettings {
    fn default() -> Self {
        DeploySettings {
            replicas: default_replicas(),
            consumer_ack_wait: None,
            stall_after: None,
            redrive_after: None,
            topology: Topology::Local,
            nats_nodes: default_nats_nodes(),
        }
    }
}

fn default_nats_nodes() -> u32 {
    3
}

fn default_replicas() -> u32 {
    1
}

/// `[limits]`: the order service's per-buyer fair use (`APP_FAIR_USE__…`) for the run.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Orders one buyer may place per second, sustained (per order-service instance).
    pub orders_per_second: Option<u32>,
    /// Orders one buyer may place at once.
    pub burst: Option<u32>,
    /// Orders of one buyer that may be open (not final) at once.
    pub max_open_orders: Option<u32>,
}

/// The open-model arrival profile: the rate ramps linearly from stage to stage.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadProfile {
    /// Requests per second at t = 0; the first stage ramps from here.
    #[serde(default)]
    pub start_rate: f64,
    /// Generated from `[capacity]` in a capacity plan.
    #[serde(default)]
    pub stages: Vec<Stage>,
    /// Requests allowed in flight at once; beyond this a scheduled request is dropped and counted.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_request_timeout", with = "duration::text")]
    pub request_timeout: Duration,
    /// Units per order.
    #[serde(default = "default_quantity")]
    pub quantity: u32,
}

/// Users, balances and products seeded before the run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSetup {
    pub users: u32,
    pub initial_balance_cents: i64,
    /// Users seeded with `low_balance_cents` instead, so some payments fail with INSUFFICIENT_FUNDS.
    #[serde(default)]
    pub low_balance_users: u32,
    #[serde(default)]
    pub low_balance_cents: i64,
    pub products: Vec<ProductSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductSpec {
    pub id: i64,
    pub stock: i64,
    pub price_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentSettings {
    /// Share of payments the payment provider declines, 0..=1.
    #[serde(default)]
    pub decline_rate: f64,
}

/// Pass/fail limits checked after the run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    #[serde(default = "default_p95_ms")]
    pub p95_ms: u64,
    /// How long every order may take to reach a final status once the load stops.
    #[serde(default = "default_drain_timeout", with = "duration::text")]
    pub drain_timeout: Duration,
    /// Share of attempted requests allowed to end in 5xx, 429 (fair use refused) or a transport
    /// error; 0 = none.
    #[serde(default)]
    pub max_error_rate: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            p95_ms: default_p95_ms(),
            drain_timeout: default_drain_timeout(),
            max_error_rate: 0.0,
        }
    }
}

/// A fault to inject during the run; executed elsewhere, only parsed here.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(with = "duration::text")]
    pub at: Duration,
    pub kind: String,
    pub target: String,
    #[serde(default, with = "duration::optional_text")]
    pub duration: Option<Duration>,
    /// Network faults (`plan::network`): the other side of a `partition` …
    #[serde(default)]
    pub peers: Option<String>,
    /// … cut in one direction only (target → peers) …
    #[serde(default)]
    pub one_way: Option<bool>,
    /// … a `delay` and its jitter …
    #[serde(default, with = "duration::optional_text")]
    pub delay: Option<Duration>,
    #[serde(default, with = "duration::optional_text")]
    pub jitter: Option<Duration>,
    /// … the share of packets a `loss` drops.
    #[serde(default)]
    pub loss_percent: Option<f64>,
    /// `slow-clients`: how many connections trickle request bodies at once.
    #[serde(default)]
    pub connections: Option<u32>,
}

fn default_max_in_flight() -> usize {
    2000
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_quantity() -> u32 {
    1
}
fn default_p95_ms() -> u64 {
    2000
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(120)
}

impl Scenario {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, Some(path))
    }

    pub fn from_toml_str(text: &str) -> Result<Scenario, ScenarioError> {
        Self::parse(text, None)
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Syntax {
            path: path.map(Path::to_path_buf),
            source,
        })?;
        let problems = scenario.problems();
        if problems.is_empty() {
            Ok(scenario)
        } else {
            Err(ScenarioError::Invalid {
                path: path.map(Path::to_path_buf),
                problems,
            })
        }
    }

    /// Length of the load phase (sum of the stage durations).
    pub fn load_duration(&self) -> Duration {
        self.load.stages.iter().map(|s| s.duration).sum()
    }

    /// Every rule the scenario breaks, so one run of the parser reports them all.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut require = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        let is_rate = |r: f64| r.is_finite() && r >= 0.0;

        require(!self.name.trim().is_empty(), "name is empty".into());

        let load = &self.load;
        match &self.capacity {
            None => require(
                !load.stages.is_empty(),
                "load.stages needs at least one stage".into(),
            ),
            Some(_) => require(
                load.stages.is_empty() && load.start_rate == 0.0,
                "load.stages and load.start_rate are generated from [capacity]; remove them".into(),
            ),
        }
        require(
            is_rate(load.start_rate),
            format!("load.start_rate must be >= 0 (got {})", load.start_rate),
        );
        for (i, stage) in load.stages.iter().enumerate() {
            require(
                is_rate(stage.target),
                format!(
                    "load.stages[{i}].target must be >= 0 (got {})",
                    stage.target
                ),
            );
        }
        require(
            load.stages.is_empty() || !self.load_duration().is_zero(),
            "load.stages last zero seconds in total".into(),
        );
        require(
            load.max_in_flight >= 1,
            "load.max_in_flight must be >= 1".into(),
        );
        require(
            !load.request_timeout.is_zero(),
            "load.request_timeout must be > 0".into(),
        );
        require(load.quantity >= 1, "load.quantity must be >= 1".into());
        let limits = &self.limits;
        for (name, value) in [
            ("orders_per_second", limits.orders_per_second),
            ("burst", limits.burst),
            ("max_open_orders", limits.max_open_orders),
        ] {
            require(
                value != Some(0),
                format!("limits.{name} must be >= 1 (leave it out to derive it from the load)"),
            );
        }

        let data = &self.data;
        require(data.users >= 1, "data.users must be >= 1".into());
        require(
            data.low_balance_users <= data.users,
            format!(
                "data.low_balance_users ({}) exceeds data.users ({})",
                data.low_balance_users, data.users
            ),
        );
        require(
            data.initial_balance_cents >= 0 && data.low_balance_cents >= 0,
            "balances must be >= 0".into(),
        );
        require(
            !data.products.is_empty(),
            "data.products needs at least one product".into(),
        );
        let mut seen_ids = BTreeSet::new();
        for product in &data.products {
            require(
                seen_ids.insert(product.id),
                format!("product id {} appears twice", product.id),
            );
            require(
                product.stock >= 0,
                format!("product {} has negative stock", product.id),
            );
            require(
                product.price_cents > 0,
                format!("product {} must have a price > 0", product.id),
            );
        }

        let decline = self.payment.decline_rate;
        require(
            (0.0..=1.0).contains(&decline),
            format!("payment.decline_rate must be within 0..=1 (got {decline})"),
        );
        if let Some(ratio) = self.traces.sample_ratio {
            require(
                (0.0..=1.0).contains(&ratio),
                format!("traces.sample_ratio must be within 0..=1 (got {ratio})"),
            );
        }
        let max_error = self.checks.max_error_rate;
        require(
            (0.0..=1.0).contains(&max_error),
            format!("checks.max_error_rate must be within 0..=1 (got {max_error})"),
        );
        for (i, fault) in self.faults.iter().enumerate() {
            require(
                !fault.kind.trim().is_empty() && !fault.target.trim().is_empty(),
                format!("faults[{i}] needs a kind and a target"),
            );
        }
        if let Some(capacity) = &self.capacity {
            problems.extend(capacity.problems());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "tiny"
        [load]
        stages = [{ duration = "10s", target = 5 }]
        [data]
        users = 2
        initial_balance_cents = 1000
        products = [{ id = 1, stock = 10, price_cents = 100 }]
    "#;

    #[test]
    fn minimal_scenario_gets_defaults() {
        let scenario = Scenario::from_toml_str(MINIMAL).expect("valid");
        assert_eq!(scenario.load.start_rate, 0.0);
        assert_eq!(scenario.load.max_in_flight, 2000);
        assert_eq!(scenario.load.request_timeout, Duration::from_secs(10));
        assert_eq!(scenario.load.quantity, 1);
        assert_eq!(scenario.checks, Thresholds::default());
        assert_eq!(scenario.checks.p95_ms, 2000);
        assert_eq!(scenario.checks.drain_timeout, Duration::from_secs(120));
        assert_eq!(scenario.payment.decline_rate, 0.0);
        assert_eq!(scenario.data.low_balance_users, 0);
        assert!(scenario.faults.is_empty());
    }

    #[test]
    fn parses_faults() {
        let text = format!(
            "{MINIMAL}\n[[faults]]\nat = \"5s\"\nkind = \"kill\"\ntarget = \"payment\"\nduration = \"2s\"\n\
             [[faults]]\nat = \"1m\"\nkind = \"kill-nats\"\ntarget = \"nats\"\nduration = \"3s\"\n"
        );
        let scenario = Scenario::from_toml_str(&text).expect("valid");
        assert_eq!(
            scenario.faults,
            vec![
                FaultSpec {
                    at: Duration::from_secs(5),
                    kind: "kill".into(),
                    target: "payment".into(),
                    duration: Some(Duration::from_secs(2)),
                    ..FaultSpec::default()
                },
                FaultSpec {
                    at: Duration::from_secs(60),
                    kind: "kill-nats".into(),
                    target: "nats".into(),
                    duration: Some(Duration::from_secs(3)),
                    ..FaultSpec::default()
                },
            ]
        );
    }

    #[test]
    fn reports_every_problem() {
        let text = r#"
            name = "broken"
            [load]
            stages = []
            start_rate = -1
            [data]
            users = 0
            low_balance_users = 3
            initial_balance_cents = 1000
            products = []
            [payment]
            decline_rate = 1.5
        "#;
        let error = Scenario::from_toml_str(text).expect_err("invalid");
        let message = error.to_string();
        for expected in [
            "at least one stage",
            "start_rate",
            "data.users",
            "low_balance_users",
            "at least one product",
            "decline_rate",
        ] {
            assert!(message.contains(expected), "{message} lacks {expected}");
        }
    }

    #[test]
    fn rejects_negative_target_and_bad_duration() {
        let negative = MINIMAL.replace("target = 5", "target = -5");
        assert!(Scenario::from_toml_str(&negative)
            .expect_err("negative")
            .to_string()
            .contains("stages[0].target"));

        let bad_duration = MINIMAL.replace("\"10s\"", "\"10 parsecs\"");
        let message = Scenario::from_toml_str(&bad_duration)
            .expect_err("bad duration")
            .to_string();
        assert!(message.contains("10 parsecs"), "{message}");
    }

    #[test]
    fn rejects_unknown_fields() {
        let typo = MINIMAL.replace("users = 2", "users = 2\nuser = 3");
        assert!(matches!(
            Scenario::from_toml_str(&typo),
            Err(ScenarioError::Syntax { .. })
        ));
    }

    #[test]
    fn missing_file_names_the_path() {
        let error = Scenario::from_file("/nonexistent/scenario.toml").expect_err("missing");
        assert!(error.to_string().contains("/nonexistent/scenario.toml"));
    }

    fn shipped(name: &str) -> Scenario {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../scenarios")
            .join(name);
        Scenario::from_file(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn shipped_seed_scenario_matches_the_plan() {
        let seed = shipped("seed.toml");
        let stages: Vec<(u64, f64)> = seed
            .load
            .stages
            .iter()
            .map(|s| (s.duration.as_secs(), s.target))
            .collect();
        assert_eq!(
            stages,
            vec![(30, 500.0), (60, 1000.0), (180, 1000.0), (30, 0.0)]
        );
        assert_eq!(seed.data.users, 50);
        assert_eq!(seed.data.products.len(), 1);
        assert_eq!(seed.data.products[0].stock, 3000);
        assert_eq!(seed.checks.p95_ms, 2000);
        assert!(seed.data.low_balance_users > 0);
        // The well-funded users alone can buy the whole stock.
        let product = &seed.data.products[0];
        let rich_users = i64::from(seed.data.users - seed.data.low_balance_users);
        assert!(
            rich_users * seed.data.initial_balance_cents >= product.stock * product.price_cents
        );
    }

    #[test]
    fn shipped_hot_and_ci_scenarios_load() {
        let hot = shipped("seed-hot.toml");
        assert!(hot.data.products[0].stock >= 247_500);
        let ci = shipped("ci-short.toml");
        assert!(ci.load_duration() <= Duration::from_secs(90));
        assert_eq!(ci.data.users, 50);
    }
}
