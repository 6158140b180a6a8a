//! The load-test harness: every mode compiles into one [`plan::RunPlan`] that one
//! [`session`] executes. Dependencies point one way: `modes` → `session` → `plan`, `loadgen`,
//! `observe`, `chaos`, `audit`, `report` → `deploy` → `stack` (a crate of its own: PostgreSQL,
//! NATS, hosts and the deployment's credentials) → `platform` (`docs/architecture.md` has the
//! tree; `tests/layout.rs` keeps it).
pub mod audit;
pub mod chaos;
pub mod commands;
pub mod deploy;
pub mod loadgen;
pub mod modes;
pub mod observe;
pub mod plan;
pub mod report;
pub mod seed;
pub mod session;
