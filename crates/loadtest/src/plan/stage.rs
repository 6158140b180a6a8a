//! The unit of a load profile, shared by run scenarios and the stages a capacity plan generates.

use std::time::Duration;

use serde::Deserialize;

use crate::plan::duration;

/// One stage: over `duration`, the rate moves linearly to `target` requests per second.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    #[serde(with = "duration::text")]
    pub duration: Duration,
    pub target: f64,
}
