//! HTTP plumbing shared by the services, one concern per module: RFC 9457 problem responses
//! (`problem`), extractors whose rejections are problems (`extract`, and the credentials in
//! `credentials`), `/ready` (`readiness`), the metrics recorder (`metrics`), and the routers of the
//! public and the admin listener (`router`). The names services use are re-exported here.

mod credentials;
mod extract;
#[cfg(feature = "fault-injection")]
pub mod fault_hooks;
mod metrics;
mod problem;
pub mod readiness;
mod router;

pub use credentials::{Admin, AdminState, AdminToken, Buyer};
pub use extract::{whole_number, JsonBody, PathParam, PositiveId, QueryParams, RequestTrace};
pub use metrics::metrics_handle;
pub use problem::{database_problem, on_constraint, Problem};
pub use readiness::Readiness;
pub use router::{admin_router, service_router};

// One classification of database errors for every path (`crate::db::errors`); kept here too
// because handlers have always found them next to `database_problem`.
pub use crate::db::errors::{is_retryable, is_unavailable};
