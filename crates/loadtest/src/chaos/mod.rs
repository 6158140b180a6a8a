//! Fault injection for chaos scenarios: a schedule of faults executed against the processes
//! and broker state this CLI created, a probe that watches the system notice and catch up, and
//! the recovery time of every fault.
//!
//! A scenario lists its faults as `[[faults]]` tables (`at`, `kind`, `target`, `duration`):
//!
//! | kind | target | what happens |
//! | --- | --- | --- |
//! | `kill` | a service or one instance | `kill -9`; after `duration` started again (same env and port) |
//! | `pause` | a service or one instance | `SIGSTOP`; after `duration` `SIGCONT` |
//! | `kill-nats` | `nats` | `kill -9` of nats-server; after `duration` restarted on the same store |
//! | `stop-postgres` | `postgres` | immediate-mode stop (no checkpoint); after `duration` started again (crash recovery) |
//! | `broker-unreachable` | `nats` | nats-server `SIGSTOP`ped: connections stay open, nothing answers; after `duration` `SIGCONT` |
//! | `delete-consumer` | a durable consumer (`inventory-service-orders`) or a service (all of its) | deleted through the JetStream API; nothing is lifted: the services must create them again |
//! | `delete-stream` | a stream (`order`, `inventory`, `payment`) | its consumers other than the order service are paused for `duration` so messages pile up, then the stream is deleted with them and the paused consumers are killed and started again (what they had taken goes with them): the lost messages' orders must be re-driven |
//! | `poison` | a service | undecodable and unprocessable messages published straight to its subject; after `duration` each must be a dead letter, which is then discarded through the admin API |
//! | `panic` | `inventory` | the services' panic hook (built with `--features platform/fault-injection`) armed for a product of its own, and orders placed for it; after `duration` disarmed and the dead letters replayed |
//! | `pool-starve` | `order` | a flood of `GET /orders/{random}` from many connections, until `duration` is over |
//! | `lock-hold` | `inventory` | an outside session holds `FOR UPDATE` on the hot product's row for `duration` |
//! | `partition` | hosts (`peers`, `one_way`) | packets from the target hosts to the peers (and back, unless one way) vanish; healed after `duration` |
//! | `delay` | hosts (`delay`, `jitter`) | what the hosts send waits `delay` ± `jitter` |
//! | `loss` | hosts (`loss_percent`) | the hosts' outgoing packets are dropped at that rate |
//! | `kill-nats-node` | `nats-2` or `leader:<stream>` | `kill -9` of that cluster node; after `duration` restarted on its store |
//! | `pause-nats-node` | `nats-2` or `leader:<stream>` | that node `SIGSTOP`ped; after `duration` `SIGCONT` |
//! | `forge` | `all` or a service | each service's own NATS user publishes, on every subject it may publish to that another service reads, envelopes of every event type another service owns, for a completed and an open order of the run, and one envelope whose `aggregate_id` is not its payload's order; after `duration` every receiving consumer must have dead-lettered each as `misrouted` (then discarded through the admin API) |
//! | `read-only-db` | a service | its database `SET default_transaction_read_only = on` and its backends terminated (the pools reconnect read-only); after `duration` `RESET` and terminated again |
//! | `commit-unknown` | `order` | for `duration`, every order-service backend seen in `pg_stat_activity` running `COMMIT` is terminated (the fault fails if it caught none) |
//! | `slow-clients` | `order` or one replica (`connections`, default 2,000) | connections from one buyer's token (999,999) send a `POST /orders` head announcing 16 KiB and trickle a byte every 3 s, reopened when closed; the load's own p95 (and error rate) in the fault's window must keep the scenario's thresholds |
//! | `alter-consumer` | a durable consumer or a service (all of its) | its filter changed to `<prefix>.<stream>.nothing` and its ack wait to an hour, as the administrator; nothing is lifted: the services must restore it (one they did not is restored by the CLI and the fault fails) |
//!
//! The five network and cluster faults above `forge` need `[deploy] topology = "hosts"` (see `plan::network` for host lists and
//! `network` for how each is made); `leader:<stream>` is resolved when the fault starts.
//!
//! A service target is `order`, `inventory`, `payment` (or `order-service`, …) for every
//! instance of that service, or `order-service-2` (etc.) for one replica; see
//! [`crate::deploy::Replication`] for how replicas are named. Faults run one at a time: each
//! must start after the previous one has been lifted. They may outlast the load; the drain
//! starts when the last one is lifted.
//!
//! **Recovery** ([`probe`]). A probe samples the system once a second: the outbox backlog, the
//! JetStream consumer backlog, the age of the oldest order that is not final, every instance's
//! `/ready`, and the order service's re-drive counter. A fault was *noticed* when an instance's
//! `/ready` first answered 503 after it was injected; the system has *caught up* when, in
//! [`RECOVERY_SAMPLES`] samples in a row, the outbox holds at most [`RECOVERY_MAX_OUTBOX`] rows,
//! the consumers at most [`RECOVERY_MAX_CONSUMER_BACKLOG`] messages, and no unfinished order is
//! older than [`RECOVERY_MAX_OLDEST_UNFINISHED_S`] seconds. A fault's recovery time runs from
//! the moment it was lifted to the first sample of that run of caught-up samples. The last
//! condition is the decisive one: an order accepted during an outage stays unfinished until
//! every hop it needs works again.

mod boundaries;
mod cluster;
mod context;
mod forge;
mod forge_plan;
mod heal;
mod inject;
pub mod network;
pub mod probe;
mod slow_clients;
mod verdict;

pub use crate::plan::fault_kind::{FaultKind, Hits};
pub use crate::plan::faults::Fault;
pub use context::{FaultContext, InjectedFault};
pub use inject::{spawn, FaultRun};
pub use probe::{
    probe_time_needed, spawn_probe, write_timeline, Health, HealthSample, ProbeTargets,
};
pub use slow_clients::LoadFigures;
pub use verdict::{records, recovered_after, worst_between};

use anyhow::{bail, Result};

use crate::deploy::admin::AdminClient;
use crate::deploy::services::ServiceSpec;
use stack::StateDir;

/// The name of the check the runner adds when a scenario has faults.
pub const CHECK_FAULTS: &str = "faults";

/// Caught up: at most this many outbox rows (one relay batch) …
pub const RECOVERY_MAX_OUTBOX: i64 = 500;
/// … at most this many messages waiting in or delivered by the consumers (about one second of
/// events at the seed plan's peak rate) …
pub const RECOVERY_MAX_CONSUMER_BACKLOG: u64 = 2000;
/// … no unfinished order older than this (the seed run's e2e p99 is well under a second) …
pub const RECOVERY_MAX_OLDEST_UNFINISHED_S: f64 = 5.0;
/// … in this many probe samples (one a second) in a row.
pub const RECOVERY_SAMPLES: usize = 3;

/// Errors unless every process the schedule needs is one we started (we signal only our own
/// PIDs, never another PostgreSQL or NATS, and act as superuser only on our own PostgreSQL),
/// for a `panic` fault unless the services have their fault hooks, and for a `forge` fault
/// unless each service has a NATS user of its own (`nats_users`).
pub async fn preflight(
    state: &StateDir,
    faults: &[Fault],
    specs: &[ServiceSpec],
    admin: &AdminClient,
    nats_users: bool,
) -> Result<()> {
    for fault in faults {
        if fault.kind == FaultKind::Forge && !nats_users {
            bail!(
                "fault forge needs each service's own NATS user, which exist only on our own NATS server; unset ORDERSYS_NATS_URL"
            );
        }
        if let Some(name) = fault.kind.needs_own() {
            if stack::pid_of(state, name).is_none() {
                bail!(
                    "fault {} needs our own {name} (started by this CLI), but none runs; unset ORDERSYS_DATABASE_URL / ORDERSYS_NATS_URL for chaos runs",
                    fault.kind.name()
                );
            }
        }
        for instance in fault.hits.instances() {
            if !specs.iter().any(|s| &s.name == instance) {
                bail!(
                    "fault {} targets {instance}, which this run did not start",
                    fault.kind.name()
                );
            }
        }
        if fault.kind == FaultKind::Panic {
            for spec in specs
                .iter()
                .filter(|s| fault.hits.instances().contains(&s.name))
            {
                // Disarming is harmless and tells whether the hook exists.
                admin.set_panic_hook(&spec.admin_url(), None).await?;
            }
        }
    }
    Ok(())
}
