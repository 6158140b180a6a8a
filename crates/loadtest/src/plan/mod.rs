//! What a run will do, compiled once from a file and validated as a whole: the scenario, its
//! schedule, its faults and replicas, and for a capacity plan its steps. Every mode hands a
//! [`RunPlan`] to the one executor, `session`.

pub mod boundaries;
pub mod capacity;
pub mod duration;
pub mod fault_kind;
pub mod faults;
pub mod limits;
pub mod network;
pub mod scenario;
pub mod schedule;
pub mod stage;
pub mod targets;

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::deploy::Replication;
use capacity::CapacitySettings;
use faults::Fault;
use limits::FairUseLimits;
use scenario::{Scenario, ScenarioError};
use schedule::Schedule;

/// The capacity plan `loadtest capacity` runs unless told otherwise.
pub const DEFAULT_CAPACITY_PLAN: &str = "scenarios/capacity/capacity.toml";

/// One validated run.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub scenario: Scenario,
    pub schedule: Schedule,
    /// Ordered, one at a time, each resolved to what it hits.
    pub faults: Vec<Fault>,
    pub replication: Replication,
    /// The order service's fair-use limits (also in `replication`'s environment).
    pub limits: FairUseLimits,
    /// A capacity plan's steps (its stages are in `scenario.load`).
    pub capacity: Option<CapacitySettings>,
}

impl RunPlan {
    /// A run scenario (`scenarios/*.toml`).
    pub fn scenario(path: &Path) -> Result<RunPlan> {
        let plan = Self::compile(Scenario::from_file(path)?, Some(path))?;
        if plan.capacity.is_some() {
            bail!(
                "{} is a capacity plan: run it with `loadtest capacity --plan {}`",
                path.display(),
                path.display()
            );
        }
        Ok(plan)
    }

    /// A capacity plan (`scenarios/capacity/*.toml`).
    pub fn capacity(path: &Path) -> Result<RunPlan> {
        let plan = Self::compile(Scenario::from_file(path)?, Some(path))?;
        Self::require_capacity(plan).with_context(|| path.display().to_string())
    }

    pub fn from_scenario_toml(text: &str) -> Result<RunPlan> {
        Self::compile(Scenario::from_toml_str(text)?, None)
    }

    pub fn from_capacity_toml(text: &str) -> Result<RunPlan> {
        Self::require_capacity(Self::compile(Scenario::from_toml_str(text)?, None)?)
    }

    fn require_capacity(plan: RunPlan) -> Result<RunPlan> {
        if plan.capacity.is_none() {
            bail!("not a capacity plan: it has no [capacity] section");
        }
        if !plan.faults.is_empty() {
            bail!("a capacity plan cannot inject faults");
        }
        Ok(plan)
    }

    /// The scenario's own checks passed; here the parts that depend on each other: the
    /// generated stages, the fault schedule against the replicas.
    fn compile(mut scenario: Scenario, path: Option<&Path>) -> Result<RunPlan> {
        if let Some(settings) = &scenario.capacity {
            scenario.load.start_rate = settings.step_rates()[0];
            scenario.load.stages = settings.stages();
        }
        let invalid = |problems: Vec<String>| ScenarioError::Invalid {
            path: path.map(Path::to_path_buf),
            problems,
        };
        let problems = faults::problems(&scenario);
        if !problems.is_empty() {
            return Err(invalid(problems).into());
        }
        let faults = faults::schedule(&scenario).map_err(invalid)?;
        let limits = FairUseLimits::of(&scenario);
        let mut replication = faults::replication(&scenario);
        replication.extra_env.extend(limits.env());
        Ok(RunPlan {
            schedule: Schedule::from_profile(&scenario.load),
            replication,
            limits,
            capacity: scenario.capacity.clone(),
            faults,
            scenario,
        })
    }
}
