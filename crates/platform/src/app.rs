//! What every service process is made of: a database pool, a broker connection, an outbox relay,
//! its consumers and its HTTP server. Services supply routes and handlers; the wiring is here.

use crate::broker::{self, BrokerError, Topology};
use crate::config::CommonSettings;
use crate::consumer::{
    BackgroundConsumer, ConsumerError, EventConsumer, EventHandler, Subscription,
};
use crate::db;
use crate::http::{self, Readiness};
use crate::outbox::{OutboxError, OutboxRelay, OutboxSignal};
use async_nats::jetstream;
use axum::Router;
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot connect to the database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("cannot create consumer: {0}")]
    Consumer(#[from] ConsumerError),
    #[error("cannot bind the HTTP listener: {0}")]
    Bind(#[from] std::io::Error),
}

/// Connections and messaging parts shared by a service's handlers.
#[derive(Clone)]
pub struct Infrastructure {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub topology: Topology,
    pub outbox_signal: OutboxSignal,
    pub settings: CommonSettings,
}

impl Infrastructure {
    /// Connects to PostgreSQL (migrating it) and NATS (creating the streams).
    pub async fn connect(
        settings: &CommonSettings,
        migrator: Migrator,
    ) -> Result<Self, StartupError> {
        let pool = db::connect(&settings.database).await?;
        db::migrate(&pool, migrator).await?;
        let nats = broker::connect(&settings.nats).await?;
        let jetstream = broker::jetstream(nats.clone());
        let topology = Topology::new(settings.nats.prefix.clone());
        broker::ensure_streams(&jetstream, &topology).await?;
        Ok(Infrastructure {
            pool,
            nats,
            jetstream,
            topology,
            outbox_signal: OutboxSignal::default(),
            settings: settings.clone(),
        })
    }

    pub async fn consumer<H: EventHandler>(
        &self,
        subscription: &Subscription,
        handler: Arc<H>,
    ) -> Result<Arc<dyn BackgroundConsumer>, StartupError> {
        let consumer = EventConsumer::create(
            &self.jetstream,
            &self.topology,
            subscription,
            self.pool.clone(),
            handler,
            self.outbox_signal.clone(),
            self.settings.consumer.clone(),
        )
        .await?;
        Ok(Arc::new(consumer))
    }

    /// One consumer per subscription, all with the same handler.
    pub async fn consumers<H: EventHandler>(
        &self,
        subscriptions: &[Subscription],
        handler: Arc<H>,
    ) -> Result<Vec<Arc<dyn BackgroundConsumer>>, StartupError> {
        let mut consumers = Vec::with_capacity(subscriptions.len());
        for subscription in subscriptions {
            consumers.push(self.consumer(subscription, handler.clone()).await?);
        }
        Ok(consumers)
    }

    /// State for admin-only routes: the pool and the deployment's admin credential.
    pub fn admin_state(&self) -> http::AdminState {
        http::AdminState {
            pool: self.pool.clone(),
            admin: http::AdminToken(Arc::from(self.settings.auth.admin_token.as_str())),
        }
    }

    pub fn relay(&self) -> OutboxRelay {
        OutboxRelay::new(
            self.pool.clone(),
            self.jetstream.clone(),
            self.outbox_signal.clone(),
            &self.settings.outbox,
        )
    }
}

/// Lets a test run a service's background work step by step: publish the outbox, then let each
/// consumer take what is waiting.
#[derive(Clone)]
pub struct Driver {
    pub relay: OutboxRelay,
    pub consumers: Vec<Arc<dyn BackgroundConsumer>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
}

impl Driver {
    /// One round: publish all pending events, then process everything waiting for each consumer.
    /// Returns how much work was done (0 = quiet).
    pub async fn step(&self) -> Result<usize, DriveError> {
        let mut work = self.relay.publish_all_pending().await?;
        for consumer in &self.consumers {
            work += consumer.process_available().await?;
        }
        work += self.relay.publish_all_pending().await?;
        Ok(work)
    }
}

pub struct Application {
    listener: TcpListener,
    port: u16,
    router: Router,
    driver: Driver,
    workers_enabled: bool,
}

impl Application {
    pub async fn new(
        infra: &Infrastructure,
        routes: Router,
        consumers: Vec<Arc<dyn BackgroundConsumer>>,
    ) -> Result<Self, StartupError> {
        let settings = &infra.settings;
        // Install the recorder before any request or message is counted.
        let _ = http::metrics_handle();
        let listener = TcpListener::bind((settings.http.host.as_str(), settings.http.port)).await?;
        let port = listener.local_addr()?.port();
        let readiness = Readiness {
            pool: infra.pool.clone(),
            nats: infra.nats.clone(),
        };
        let routes = routes.merge(http::dead_letter_routes(infra.admin_state()));
        let router = http::service_router(routes, readiness, settings.http.max_body_bytes);
        Ok(Application {
            listener,
            port,
            router,
            driver: Driver {
                relay: infra.relay(),
                consumers,
            },
            workers_enabled: settings.workers.enabled,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn driver(&self) -> Driver {
        self.driver.clone()
    }

    /// Serves HTTP and, unless disabled, runs the relay and consumers, until SIGTERM/Ctrl-C.
    pub async fn run_until_stopped(self) -> Result<(), std::io::Error> {
        let mut workers = tokio::task::JoinSet::new();
        if self.workers_enabled {
            workers.spawn(self.driver.relay.clone().run());
            for consumer in &self.driver.consumers {
                workers.spawn(consumer.clone().run());
            }
        }
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(http::shutdown_signal())
            .await;
        // In-flight consumer transactions roll back when their tasks are dropped; unacked
        // messages are redelivered. Give the relay a moment to finish a batch in progress.
        tokio::time::sleep(Duration::from_millis(50)).await;
        workers.abort_all();
        served
    }
}
