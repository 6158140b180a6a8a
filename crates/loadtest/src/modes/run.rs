//! `loadtest run`: a scenario end to end, its faults included; the session does it all.

use anyhow::Result;

use crate::plan::RunPlan;
use crate::report::Report;
use crate::session::{self, DuringLoad, Finished, Mode, SessionOptions};

/// Runs the scenario; `Ok(false)` when a check failed.
pub async fn run(plan: &RunPlan, options: &SessionOptions) -> Result<bool> {
    Ok(session::execute(plan, options, &ScenarioRun)
        .await?
        .passed())
}

/// A scenario adds nothing to the session.
struct ScenarioRun;

impl Mode for ScenarioRun {
    type Outcome = ();

    async fn during_load(&self, _during: DuringLoad<'_>) {}

    async fn finish(&self, _: Finished<'_>, _: (), _: &mut Report) -> Result<()> {
        Ok(())
    }
}
