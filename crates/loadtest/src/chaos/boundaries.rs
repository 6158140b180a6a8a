//! Faults at the service → database and broker → service boundaries: a database turned
//! read-only under a service (`read-only-db`), the order service's connections killed while
//! their COMMIT is in flight (`commit-unknown`), and a durable consumer's settings changed
//! under the services that own it (`alter-consumer`). The first two act as our PostgreSQL's
//! superuser, the last as the NATS administrator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, consumer};
use platform::events::Source;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::context::{FaultContext, Refuted};
use crate::deploy;

/// How often the `commit-unknown` loop looks for a COMMIT in flight: often enough to catch
/// group commits (a few milliseconds each with fsync on), not so often that the poll is the
/// load on a 2-core machine.
const COMMIT_POLL_EVERY: Duration = Duration::from_millis(1);
/// The ack wait an altered consumer gets: a delivery lost in a crash would wait an hour.
const ALTERED_ACK_WAIT: Duration = Duration::from_secs(3600);
/// How often an altered consumer is looked at to see whether the services restored it.
const CONSUMER_WATCH_EVERY: Duration = Duration::from_millis(500);

/// The database of a service (binary name).
fn database_of(service: &str) -> &'static str {
    match service {
        "order-service" => deploy::ORDERS_DB,
        "inventory-service" => deploy::INVENTORY_DB,
        _ => deploy::PAYMENTS_DB,
    }
}

async fn superuser(context: &FaultContext) -> Result<PgConnection> {
    PgConnection::connect(&context.admin_database_url)
        .await
        .context("connecting to PostgreSQL as its superuser")
}

/// Terminates the backends of `role` in `database`; how many.
async fn terminate_backends(conn: &mut PgConnection, database: &str, role: &str) -> Result<i64> {
    let (terminated,): (i64,) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
         FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
    )
    .bind(database)
    .bind(role)
    .fetch_one(conn)
    .await
    .with_context(|| format!("terminating the backends of {role} in {database}"))?;
    Ok(terminated)
}

/// `ALTER DATABASE … SET default_transaction_read_only = on` (or `RESET` it), then the
/// service's backends terminated so its pools reconnect with the new default.
pub async fn set_read_only(
    context: &FaultContext,
    service: &str,
    read_only: bool,
    actions: &mut Vec<String>,
) -> Result<()> {
    let database = database_of(service);
    let role = deploy::database_role(service);
    let mut conn = superuser(context).await?;
    // Identifiers cannot be bound; these are our own constants.
    let statement = if read_only {
        format!("ALTER DATABASE \"{database}\" SET default_transaction_read_only = on")
    } else {
        format!("ALTER DATABASE \"{database}\" RESET default_transaction_read_only")
    };
    sqlx::query(&statement)
        .execute(&mut conn)
        .await
        .with_context(|| statement.clone())?;
    let terminated = match terminate_backends(&mut conn, database, &role).await {
        Ok(terminated) => terminated,
        Err(e) => {
            // Never leave the database read-only behind a fault that was not injected.
            if read_only {
                let reset =
                    format!("ALTER DATABASE \"{database}\" RESET default_transaction_read_only");
                sqlx::query(&reset).execute(&mut conn).await.ok();
            }
            return Err(e);
        }
    };
    conn.close().await.ok();
    actions.push(format!(
        "{statement}; terminated {terminated} backends of {role} so its pools reconnect {}",
        if read_only { "read-only" } else { "writable" }
    ));
    Ok(())
}

/// Terminates the order service's backends whose COMMIT is in flight, in a loop, until stopped.
pub struct CommitKiller {
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<Result<(i64, u64)>>>,
}

impl CommitKiller {
    pub async fn start(context: &FaultContext, service: &str) -> Result<CommitKiller> {
        let mut conn = superuser(context).await?;
        let database = database_of(service);
        let role = deploy::database_role(service);
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut terminated, mut polls) = (0_i64, 0_u64);
                while !stop.load(Ordering::Relaxed) {
                    let (caught,): (i64,) = sqlx::query_as(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
                         FROM pg_stat_activity
                         WHERE datname = $1 AND usename = $2 AND state = 'active' AND query = 'COMMIT'",
                    )
                    .bind(database)
                    .bind(&role)
                    .fetch_one(&mut conn)
                    .await
                    .context("looking for a COMMIT in flight")?;
                    terminated += caught;
                    polls += 1;
                    tokio::time::sleep(COMMIT_POLL_EVERY).await;
                }
                conn.close().await.ok();
                Ok((terminated, polls))
            })
        };
        Ok(CommitKiller {
            stop,
            task: Some(task),
        })
    }

    /// Stops the loop and says how many it caught; none caught is an error (the fault did not
    /// happen: lengthen it).
    pub async fn stop(mut self, actions: &mut Vec<String>) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let task = self
            .task
            .take()
            .context("the COMMIT killer was stopped already")?;
        let (terminated, polls) = task.await.context("the COMMIT killer panicked")??;
        actions.push(format!(
            "terminated {terminated} order-service backends while their COMMIT was in flight ({polls} looks at pg_stat_activity)"
        ));
        if terminated == 0 {
            bail!("no COMMIT of the order service was caught in flight in {polls} looks: lengthen the fault or run it under more load");
        }
        Ok(())
    }
}

impl Drop for CommitKiller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A durable consumer as it was before the fault changed it.
struct Original {
    stream: String,
    durable: String,
    config: consumer::Config,
}

/// Filter subjects in a comparable order.
fn filters(config: &consumer::Config) -> Vec<String> {
    let mut subjects = config.filter_subjects.clone();
    if !config.filter_subject.is_empty() {
        subjects.push(config.filter_subject.clone());
    }
    subjects.sort();
    subjects
}

/// Whether `now` has the filter and ack wait the consumer had before the fault.
fn restored(original: &consumer::Config, now: &consumer::Config) -> bool {
    filters(original) == filters(now) && original.ack_wait == now.ack_wait
}

/// The consumers altered, and a watch that notes when the services put each back.
pub struct AlteredConsumers {
    originals: Vec<Original>,
    stop: Arc<AtomicBool>,
    /// Per consumer (in `originals` order): seconds after the change until it was restored.
    watch: JoinHandle<Vec<Option<f64>>>,
}

async fn admin_jetstream(context: &FaultContext) -> Result<jetstream::Context> {
    let client = platform::broker::connect_url(&context.nats_url)
        .await
        .context("connecting to NATS as its administrator")?;
    Ok(jetstream::new(client))
}

/// Changes each consumer's filter to a subject nothing is published on, and its ack wait, as
/// the administrator, without deleting it.
pub async fn alter_consumers(
    context: &FaultContext,
    consumers: &[(Source, String)],
    actions: &mut Vec<String>,
) -> Result<AlteredConsumers> {
    let js = admin_jetstream(context).await?;
    let topology = platform::broker::Topology::new(context.prefix.clone());
    let mut originals = Vec::new();
    for (source, durable) in consumers {
        let name = topology.stream_name(*source);
        let stream = js
            .get_stream_no_info(&name)
            .await
            .with_context(|| format!("reading stream {name}"))?;
        let info = stream
            .consumer_info(durable)
            .await
            .with_context(|| format!("reading consumer {durable} of {name}"))?;
        let mut altered = info.config.clone();
        altered.filter_subject = String::new();
        altered.filter_subjects = vec![topology.subject(&format!("{}.nothing", source.token()))];
        altered.ack_wait = ALTERED_ACK_WAIT;
        stream
            .update_consumer(altered.clone())
            .await
            .with_context(|| format!("changing consumer {durable} of {name}"))?;
        actions.push(format!(
            "changed consumer {durable} of {name}: filter {:?} → {:?}, ack wait {} s → {} s",
            filters(&info.config),
            filters(&altered),
            info.config.ack_wait.as_secs(),
            altered.ack_wait.as_secs()
        ));
        originals.push(Original {
            stream: name,
            durable: durable.clone(),
            config: info.config,
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watch = {
        let stop = stop.clone();
        let watched: Vec<(String, String, consumer::Config)> = originals
            .iter()
            .map(|o| (o.stream.clone(), o.durable.clone(), o.config.clone()))
            .collect();
        tokio::spawn(async move {
            let began = Instant::now();
            let mut back: Vec<Option<f64>> = vec![None; watched.len()];
            while !stop.load(Ordering::Relaxed) {
                for (i, (stream, durable, original)) in watched.iter().enumerate() {
                    if back[i].is_some() {
                        continue;
                    }
                    let Ok(stream) = js.get_stream_no_info(stream).await else {
                        continue;
                    };
                    if let Ok(info) = stream.consumer_info(durable).await {
                        if restored(original, &info.config) {
                            back[i] = Some(began.elapsed().as_secs_f64());
                        }
                    }
                }
                tokio::time::sleep(CONSUMER_WATCH_EVERY).await;
            }
            back
        })
    };
    Ok(AlteredConsumers {
        originals,
        stop,
        watch,
    })
}

impl AlteredConsumers {
    /// Reports whether the services restored each consumer; one they did not is put back by
    /// the CLI (so the rest of the run can drain) and the fault fails.
    pub async fn finish(self, context: &FaultContext, actions: &mut Vec<String>) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let back = self.watch.await.context("the consumer watch panicked")?;
        let js = admin_jetstream(context).await?;
        let mut not_restored = Vec::new();
        for (original, back) in self.originals.iter().zip(back) {
            let stream = js
                .get_stream_no_info(&original.stream)
                .await
                .with_context(|| format!("reading stream {}", original.stream))?;
            let now = stream
                .consumer_info(&original.durable)
                .await
                .with_context(|| format!("reading consumer {}", original.durable))?
                .config
                .clone();
            if restored(&original.config, &now) {
                actions.push(format!(
                    "the services restored consumer {} (filter {:?}, ack wait {} s) {} after the change",
                    original.durable,
                    filters(&now),
                    now.ack_wait.as_secs(),
                    back.map_or("at some point".to_string(), |s| format!("{s:.1} s"))
                ));
                continue;
            }
            let mut config = original.config.clone();
            config.deliver_policy = now.deliver_policy;
            stream
                .update_consumer(config)
                .await
                .with_context(|| format!("restoring consumer {}", original.durable))?;
            actions.push(format!(
                "consumer {} was NOT restored by the services (filter {:?}, ack wait {} s); the CLI restored it",
                original.durable,
                filters(&now),
                now.ack_wait.as_secs()
            ));
            not_restored.push(original.durable.clone());
        }
        if !not_restored.is_empty() {
            return Err(Refuted(format!(
                "the services did not restore the altered consumer(s) {} while the fault lasted",
                not_restored.join(", ")
            ))
            .into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_is_restored_only_with_its_filter_and_ack_wait() {
        let original = consumer::Config {
            durable_name: Some("inventory-service-orders".into()),
            filter_subjects: vec!["p.order.created".into()],
            ack_wait: Duration::from_secs(10),
            ..Default::default()
        };
        let mut now = original.clone();
        assert!(restored(&original, &now));
        now.filter_subjects = vec!["p.order.nothing".into()];
        assert!(!restored(&original, &now));
        // One filter given the old way is the same filter.
        now.filter_subjects = Vec::new();
        now.filter_subject = "p.order.created".into();
        assert!(restored(&original, &now));
        now.ack_wait = ALTERED_ACK_WAIT;
        assert!(!restored(&original, &now));
        assert_eq!(database_of("payment-service"), deploy::PAYMENTS_DB);
    }
}
