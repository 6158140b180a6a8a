//! Watching a run: what the databases and the broker hold ([`SystemProbe`]), what the
//! processes use (`procfs`), the live monitor, and the naive baseline of the database alone.

pub mod baseline;
pub mod broker;
pub mod database;
pub mod monitor;
pub mod procfs;
pub mod traces;

use anyhow::Result;

use broker::{Broker, ConsumerBacklog};
use database::{Databases, Progress, Scope};

/// The databases and the broker of one run, read together.
#[derive(Debug, Clone)]
pub struct SystemProbe {
    pub dbs: Databases,
    pub broker: Broker,
}

/// Where the system stands: progress and, when the broker answered, its consumers' backlog.
#[derive(Debug, Clone, Default)]
pub struct SystemState {
    pub progress: Option<Progress>,
    pub backlog: Option<ConsumerBacklog>,
    pub error: Option<String>,
}

impl SystemState {
    /// Every order final, every outbox empty, every consumer caught up.
    pub fn is_quiet(&self) -> bool {
        self.progress
            .as_ref()
            .is_some_and(|p| p.non_final_orders == 0 && p.outbox_backlog == 0)
            && self.backlog.is_some_and(|b| b.is_idle())
    }
}

impl SystemProbe {
    pub async fn connect(dbs: Databases, nats_url: &str, prefix: &str) -> Result<SystemProbe> {
        Ok(SystemProbe {
            dbs,
            broker: Broker::connect(nats_url, prefix).await?,
        })
    }

    /// Progress and backlog read at once; what failed is in `error`.
    pub async fn state(&self, scope: Scope) -> SystemState {
        let (progress, backlog) =
            tokio::join!(database::progress(&self.dbs, scope), self.broker.backlog());
        let mut state = SystemState::default();
        match progress {
            Ok(p) => state.progress = Some(p),
            Err(e) => state.error = Some(format!("{e:#}")),
        }
        match backlog {
            Ok(b) => state.backlog = Some(b),
            Err(e) => state.error = Some(format!("{e:#}")),
        }
        state
    }
}
