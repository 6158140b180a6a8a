//! What every fault of the schedule is given (the deployment, the load, the credentials), what
//! a fault that was carried out but not answered as it must be reports, and the record of each
//! fault as it was executed. The fault modules and the executor (`inject`) all read these.

use std::sync::Arc;

use serde::Serialize;
use stack::StateDir;
use tokio::time::Instant;

use super::FaultKind;
use crate::deploy::admin::AdminClient;
use crate::deploy::{services::ServiceSpec, Credentials};
use crate::loadgen::LoadState;

/// What the fault task needs.
pub struct FaultContext {
    pub state: StateDir,
    /// Every service instance as it was started (restarts use the same spec).
    pub specs: Vec<ServiceSpec>,
    /// The run's t = 0.
    pub start: Instant,
    pub load: Arc<LoadState>,
    /// The deployment's admin API credentials, and a buyer's token.
    pub admin: AdminClient,
    pub buyer_token: String,
    pub nats_url: String,
    pub prefix: String,
    /// The inventory database (for `lock-hold`) and the product the load buys.
    pub inventory_db: String,
    pub hot_product: i64,
    /// The hosts topology's network (network and cluster faults).
    pub hosts: Option<stack::netns::HostNetwork>,
    /// PostgreSQL as its superuser (`read-only-db`, `commit-unknown`, reading orders).
    pub admin_database_url: String,
    /// Whether each service has a NATS user of its own (`forge` publishes as them).
    pub nats_users: bool,
    /// The deployment's secrets: the services' NATS passwords, the JWT secret.
    pub credentials: Credentials,
}

/// A fault that was executed and lifted, but whose demand on the system was not met (a forged
/// event not dead-lettered as misrouted, an altered consumer not restored): the fault fails,
/// and its recovery is still measured from the lift.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refuted(pub String);

/// One fault as it was executed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InjectedFault {
    pub kind: FaultKind,
    pub target: String,
    pub planned_at_s: f64,
    pub planned_duration_s: f64,
    /// When it was injected, seconds after t = 0.
    pub injected_s: f64,
    /// When it was lifted (restarted and ready, or continued); `None`: lifting failed.
    pub lifted_s: Option<f64>,
    /// What was done, in order.
    pub actions: Vec<String>,
    pub error: Option<String>,
    /// Requests refused by a dead replica and sent to another one while the fault lasted.
    pub failovers: u64,
}
