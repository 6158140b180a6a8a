//! Mechanisms shared by the three services: configuration, telemetry, the event contract,
//! the transactional outbox and its relay, the inbox-backed consumer loop, dead letters and their
//! repair, supervision of background workers, retention, and HTTP plumbing.
//! Each mechanism exists once, here; services only supply their domain logic.
//!
//! The modules form layers, each using only those below it (kept by `tests/layout.rs`), from the
//! bottom up:

// Built-in development defaults (local URLs, well-known secrets a deployment must not use).
pub mod dev;
// The file descriptor limit, and the connection caps that fit it.
pub mod fd_limit;
// Round pacing for the workers that move events.
pub mod pacing;
// Logging setup.
pub mod telemetry;
// The HTTP/1 server: connection caps, request deadlines, graceful shutdown.
pub mod server;
// The event envelope (id, type, trace context) and its encoding.
pub mod envelope;
// The event contract: every event type's publisher, stream and subject.
pub mod contract;
// The events' payloads and their conversion to and from envelopes.
pub mod events;
// Buyer tokens and the admin credential: minting, checking, the rules for secrets.
pub mod auth;
// The settings every service shares, from files and `APP_…` variables.
pub mod config;
// Connection pools, migrations, and what a database error means (`db::errors`).
pub mod db;
// Supervision of background workers: their rounds, health, restarts.
pub mod supervisor;
// The broker: connection, streams, the deployment's subjects.
pub mod broker;
// Each service's NATS permissions, derived from the contract.
pub mod broker_access;
// The transactional outbox and its relay.
pub mod outbox;
// The dead-letter store: what consumers park, recorded once, listed for operators.
pub mod dead_letters;
// The fault hook for chaos runs (never in a normal build).
#[cfg(feature = "fault-injection")]
pub mod fault_hooks;
// The consumer: durable pull consumers, inbox-deduplicated batches, acks after commit.
pub mod consumer;
// Pruning of records past their retention.
pub mod retention;
// HTTP plumbing: problems, extractors, readiness, metrics, routers.
pub mod http;
// The OpenAPI documents' shared parts.
pub mod openapi;
// Records a service keeps (products, accounts): their errors, problem answers and route state.
pub mod records;
// The operator's dead-letter desk: replay and discard, over HTTP.
pub mod desk;
// One order's story as a service tells it: its records and messaging rows, over HTTP.
pub mod saga;
// What every service process is made of, wired together.
pub mod app;
// Helpers for integration tests (never in a service build).
#[cfg(feature = "testing")]
pub mod testing;
