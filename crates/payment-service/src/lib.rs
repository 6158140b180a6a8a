//! Payment service: owns the users' accounts and charges each order at most once.

pub mod config;
pub mod decline;
pub mod error;
pub mod events;
pub mod ledger;
pub mod routes;
pub mod startup;
