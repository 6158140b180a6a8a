//! The development defaults, in one place: where the project's private PostgreSQL and NATS
//! listen, the services' ports, and the built-in credentials a deployment must replace (the
//! load-test CLI generates its own for every run).

/// The private PostgreSQL instance the CLI starts.
pub const POSTGRES_PORT: u16 = 55432;
/// The private NATS server the CLI starts, and its monitoring port.
pub const NATS_PORT: u16 = 54222;
pub const NATS_MONITOR_PORT: u16 = 58222;

/// The services' HTTP ports (replicas add 10 each).
pub const ORDER_PORT: u16 = 18080;
pub const INVENTORY_PORT: u16 = 18081;
pub const PAYMENT_PORT: u16 = 18082;

/// Built-in credentials: fine on a developer's loopback, never in a deployment.
pub const JWT_SECRET: &str = "dev-only-secret-change-me";
pub const ADMIN_TOKEN: &str = "dev-admin-token";

/// The admin URL of the private PostgreSQL.
pub fn admin_database_url() -> String {
    format!("postgres://postgres@127.0.0.1:{POSTGRES_PORT}/postgres")
}

/// The URL of the private NATS server.
pub fn nats_url() -> String {
    format!("nats://127.0.0.1:{NATS_PORT}")
}
