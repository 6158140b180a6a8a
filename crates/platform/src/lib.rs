//! Mechanisms shared by the three services: configuration, telemetry, the event contract,
//! the transactional outbox and its relay, the inbox-backed consumer loop, dead letters and their
//! repair, supervision of background workers, retention, and HTTP plumbing.
//! Each mechanism exists once, here; services only supply their domain logic.

pub mod app;
pub mod auth;
pub mod broker;
pub mod broker_access;
pub mod config;
pub mod consumer;
pub mod contract;
pub mod db;
pub mod db_errors;
pub mod dead_letters;
pub mod dev;
pub mod envelope;
pub mod events;
#[cfg(feature = "fault-injection")]
pub mod fault_hooks;
pub mod fd_limit;
pub mod http;
pub mod openapi;
pub mod outbox;
pub mod pacing;
pub mod readiness;
pub mod records;
pub mod retention;
pub mod server;
pub mod supervisor;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
