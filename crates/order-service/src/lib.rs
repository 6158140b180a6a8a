//! Order service: accepts orders over HTTP (order + `OrderCreated` in one transaction) and moves
//! each order to its final status as the outcome events arrive; re-drives orders that wait too
//! long (the saga is the order service's).

pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod fair_use;
pub mod idempotency;
pub mod intake;
pub mod orders;
pub mod redrive;
pub mod routes;
pub mod startup;
