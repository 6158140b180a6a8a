//! What every service process is made of: two database pools, a broker connection, an outbox
//! relay, its consumers, a retention worker, any workers of its own, all under one supervisor,
//! and its HTTP server. Services supply routes, handlers and their own workers; the wiring is here.

use crate::broker::{self, BrokerError, Topology};
use crate::config::CommonSettings;
use crate::consumer::{
    BackgroundConsumer, ConsumerError, ConsumerParts, EventConsumer, EventHandler, Subscription,
};
use crate::contract::ServiceSpec;
use crate::db::{self, Pools};
use crate::desk::{self, DeadLetterDesk};
use crate::events::Source;
use crate::http::{self, Readiness};
use crate::openapi::Document;
use crate::outbox::{OutboxError, OutboxRelay, OutboxSignal};
use crate::retention::{Retention, RetentionRule};
use crate::saga::{self, SagaRecords};
use crate::supervisor::{
    run_until_idle, RestartPolicy, Supervisor, Worker, WorkerError, WorkerStatus,
};
use async_nats::jetstream;
use axum::routing::get;
use axum::Router;
use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid configuration: {0}")]
    Config(String),
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

/// Connections and messaging parts shared by a service's handlers and workers.
#[derive(Clone)]
pub struct Infrastructure {
    pub pools: Pools,
    pub nats: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub topology: Topology,
    pub outbox_signal: OutboxSignal,
    pub settings: CommonSettings,
}

impl Infrastructure {
    /// Checks the settings, connects to PostgreSQL (migrating it) and NATS (creating the streams
    /// the service publishes to: `publishes`).
    pub async fn connect(
        settings: &CommonSettings,
        migrator: Migrator,
        publishes: &[Source],
    ) -> Result<Self, StartupError> {
        // The recorder first: a metric handle taken before it is installed (a worker's gauges,
        // taken when the worker is built) would report to nothing for good.
        let _ = http::metrics_handle();
        settings.validate().map_err(StartupError::Config)?;
        db::migrate(&settings.database, migrator).await?;
        let pools = db::connect(&settings.database).await?;
        let nats = broker::connect(&settings.nats).await?;
        let jetstream = broker::jetstream(nats.clone());
        let topology = Topology::from_settings(&settings.nats).publishing(publishes);
        broker::ensure_streams(&jetstream, &topology).await?;
        Ok(Infrastructure {
            pools,
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
        let parts = ConsumerParts {
            jetstream: self.jetstream.clone(),
            topology: self.topology.clone(),
            pool: self.pools.workers.clone(),
            handler,
            signal: self.outbox_signal.clone(),
            settings: self.settings.consumer.clone(),
        };
        Ok(Arc::new(EventConsumer::create(subscription, parts).await?))
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

    /// State for admin-only routes: the HTTP pool and the deployment's admin credential.
    pub fn admin_state(&self) -> http::AdminState {
        http::AdminState {
            pool: self.pools.http.clone(),
            admin: self.admin_token(),
        }
    }

    fn admin_token(&self) -> http::AdminToken {
        http::AdminToken(Arc::from(self.settings.auth.admin_token.expose_secret()))
    }

    pub fn relay(&self) -> OutboxRelay {
        OutboxRelay::new(
            self.pools.workers.clone(),
            self.jetstream.clone(),
            self.topology.clone(),
            self.outbox_signal.clone(),
            &self.settings.outbox,
        )
    }
}

/// Lets a test run a service's background work by the same rounds production runs: the relay
/// publishes, each consumer takes what is waiting, the service's own workers do what is due,
/// each until a round finds nothing to do.
#[derive(Clone)]
pub struct Driver {
    pub relay: OutboxRelay,
    pub consumers: Vec<Arc<dyn BackgroundConsumer>>,
    /// The service's own background workers (e.g. the order service's re-drive).
    pub workers: Vec<Arc<dyn Worker>>,
    /// Not driven by [`Driver::step`] (it deletes by age); tests prune by hand.
    pub retention: Arc<Retention>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("{0}")]
    Worker(WorkerError),
}

impl Driver {
    /// Every worker's rounds until each finds nothing to do, then the relay's again (for what
    /// the others wrote). Returns how much work was done (0 = quiet).
    pub async fn step(&self) -> Result<usize, DriveError> {
        // As the running relay's periodic check does, at once: a deleted stream comes back.
        self.relay.ensure_streams().await?;
        let mut work = self.relay.publish_all_pending().await?;
        let consumers = self.consumers.iter().map(|c| c.clone() as Arc<dyn Worker>);
        for worker in consumers.chain(self.workers.iter().cloned()) {
            work += run_until_idle(&*worker).await.map_err(DriveError::Worker)?;
        }
        work += self.relay.publish_all_pending().await?;
        Ok(work)
    }
}

/// A service's HTTP routes.
pub struct Routes {
    /// Its API on the public listener.
    pub public: Router,
    /// Its own rows about an order, for `GET /admin/sagas/{order_id}` on the admin listener
    /// (every service has the route; the messaging rows are the platform's).
    pub saga: Arc<dyn SagaRecords>,
    /// Admin routes of its own, beside the dead-letter desk and the saga route.
    pub admin: Option<AdminRoutes>,
}

/// A service's own admin routes (admin listener) and their part of the admin document.
pub struct AdminRoutes {
    pub router: Router,
    pub document: utoipa::openapi::OpenApi,
}

/// What a service runs besides its HTTP routes; each worker is named once.
#[derive(Default)]
pub struct Background {
    pub consumers: Vec<Arc<dyn BackgroundConsumer>>,
    /// The service's own background workers (they stop when workers are disabled for tests,
    /// which then drive them through [`Driver`]).
    pub workers: Vec<Arc<dyn Worker>>,
    /// Workers that serve requests (e.g. group-commit writers): they always run.
    pub serving: Vec<Arc<dyn Worker>>,
    /// Retention of the service's own tables, besides the messaging tables every service has.
    pub retention: Vec<RetentionRule>,
}

pub struct Application {
    listener: TcpListener,
    port: u16,
    router: Router,
    /// `/metrics` and `/admin/*`, apart from the public API (see `http.admin_port`).
    admin_listener: TcpListener,
    admin_address: SocketAddr,
    admin_router: Router,
    driver: Driver,
    background: Vec<Arc<dyn Worker>>,
    serving: Vec<Arc<dyn Worker>>,
    workers_enabled: bool,
    policy: RestartPolicy,
    pools: Pools,
    limits: crate::server::ListenerLimits,
    admin_limits: crate::server::ListenerLimits,
}

impl Application {
    /// A service whose only background work is its consumers (inventory, payment): connected
    /// as the contract's `service` (its stream, its durable consumers, all handled by one
    /// handler), serving the routes made from its admin state.
    pub async fn consuming<H: EventHandler>(
        settings: &CommonSettings,
        migrator: Migrator,
        service: &ServiceSpec,
        handler: impl FnOnce(&Infrastructure) -> H,
        routes: impl FnOnce(http::AdminState) -> Routes,
    ) -> Result<Self, StartupError> {
        let infra = Infrastructure::connect(settings, migrator, &[service.source]).await?;
        let handler = Arc::new(handler(&infra));
        let consumers = infra.consumers(service.subscriptions, handler).await?;
        let background = Background {
            consumers,
            ..Background::default()
        };
        Application::new(&infra, routes(infra.admin_state()), background).await
    }

    pub async fn new(
        infra: &Infrastructure,
        routes: Routes,
        background: Background,
    ) -> Result<Self, StartupError> {
        let settings = &infra.settings;
        // Install the recorder before any request or message is counted.
        let _ = http::metrics_handle();
        let (public_cap, admin_cap) = connection_caps(settings);
        let listener = TcpListener::bind((settings.http.host.as_str(), settings.http.port)).await?;
        let port = listener.local_addr()?.port();
        let admin_port = settings.http.admin_port().ok_or_else(|| {
            StartupError::Config("http.admin_port: http.port + 1000 passes 65535; set it".into())
        })?;
        let admin_listener = TcpListener::bind((settings.http.admin_host(), admin_port)).await?;
        let admin_address = admin_listener.local_addr()?;

        let relay = infra.relay();
        let mut rules = RetentionRule::messaging(&settings.retention);
        rules.extend(background.retention);
        let retention = Arc::new(Retention::new(
            infra.pools.workers.clone(),
            &settings.retention,
            rules,
        ));
        let mut workers: Vec<Arc<dyn Worker>> = vec![Arc::new(relay.clone()), retention.clone()];
        workers.extend(
            background
                .consumers
                .iter()
                .map(|c| c.clone() as Arc<dyn Worker>),
        );
        workers.extend(background.workers.iter().cloned());

        let enabled = settings.workers.enabled;
        let mut statuses: Vec<(WorkerStatus, bool)> = workers
            .iter()
            .map(|w| (w.status().clone(), enabled))
            .collect();
        statuses.extend(
            background
                .serving
                .iter()
                .map(|w| (w.status().clone(), true)),
        );
        // `/ready` proves a write through the workers' pool: that is where orders, events and
        // their answers are written.
        let readiness = Readiness::new(
            infra.pools.workers.clone(),
            infra.nats.clone(),
            statuses,
            settings.workers.stall_after,
        );
        let desk = DeadLetterDesk::new(
            infra.pools.workers.clone(),
            background.consumers.clone(),
            infra.outbox_signal.clone(),
        );
        let admin_routes = admin_routes(infra, desk, routes.saga, routes.admin);
        #[cfg(feature = "fault-injection")]
        let admin_routes = admin_routes.merge(http::fault_hooks::routes(infra.admin_token()));
        let max_body = settings.http.max_body_bytes;
        let router = http::service_router(routes.public, readiness.clone(), max_body);
        let admin_router = http::admin_router(admin_routes, readiness, max_body);
        Ok(Application {
            listener,
            port,
            router,
            admin_listener,
            admin_address,
            admin_router,
            driver: Driver {
                relay,
                consumers: background.consumers,
                workers: background.workers,
                retention,
            },
            background: workers,
            serving: background.serving,
            workers_enabled: enabled,
            policy: RestartPolicy::from_settings(&settings.workers),
            pools: infra.pools.clone(),
            limits: settings.http.listener_limits(public_cap),
            admin_limits: settings.http.listener_limits(admin_cap),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin listener's port (`/metrics`, `/admin/*`).
    pub fn admin_port(&self) -> u16 {
        self.admin_address.port()
    }

    /// The admin listener's bound address: whether operators' routes are reachable beyond
    /// loopback shows here.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    pub fn driver(&self) -> Driver {
        self.driver.clone()
    }

    pub fn pools(&self) -> Pools {
        self.pools.clone()
    }

    /// Serves both listeners and runs the workers under supervision (the background ones unless
    /// disabled) until `shutdown` resolves (a service's `main` passes [`shutdown_signal`]).
    /// Then it stops accepting connections, lets the requests in flight finish (the intake's
    /// writers still run for them), lets every worker finish the round it is in — its
    /// transaction committed and its acks sent, or not begun — and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), std::io::Error> {
        let mut supervisor = Supervisor::new(self.policy);
        for worker in self.serving {
            supervisor.spawn(worker);
        }
        if self.workers_enabled {
            for worker in self.background {
                supervisor.spawn(worker);
            }
        }
        let stop = CancellationToken::new();
        let (served, admin_served, ()) = tokio::join!(
            crate::server::serve(
                self.listener,
                "public",
                self.router,
                self.limits,
                stop.cancelled()
            ),
            crate::server::serve(
                self.admin_listener,
                "admin",
                self.admin_router,
                self.admin_limits,
                stop.cancelled()
            ),
            async {
                shutdown.await;
                tracing::info!("shutting down: draining requests, then workers");
                stop.cancel();
            },
        );
        supervisor.shutdown().await;
        tracing::info!("stopped");
        served.and(admin_served)
    }
}

/// The admin listener's routes every service has — the dead-letter desk, the saga route — with
/// the service's own, and `/openapi.json` describing them all.
fn admin_routes(
    infra: &Infrastructure,
    desk: DeadLetterDesk,
    saga_records: Arc<dyn SagaRecords>,
    own: Option<AdminRoutes>,
) -> Router {
    let mut document = desk::ApiDoc::openapi();
    document.merge(saga::ApiDoc::openapi());
    let mut router = desk::routes(desk, infra.admin_token()).merge(saga::routes(
        infra.pools.http.clone(),
        infra.admin_token(),
        saga_records,
    ));
    if let Some(own) = own {
        document.merge(own.document);
        router = router.merge(own.router);
    }
    let document = Document::new(&document);
    router.route("/openapi.json", get(move || async move { document }))
}

/// The listeners' connection caps: the configured ones, lowered if the file descriptor limit
/// (raised to the hard limit first) cannot hold them beside the database pools.
fn connection_caps(settings: &CommonSettings) -> (usize, usize) {
    let configured = (
        settings.http.max_connections,
        settings.http.admin_max_connections,
    );
    let Some(limit) = crate::fd_limit::raise_to_hard_limit() else {
        return configured;
    };
    let pools = u64::from(settings.database.http_connections)
        + u64::from(settings.database.worker_connections);
    let fitted = crate::fd_limit::fit_connection_caps(limit, pools, configured.0, configured.1);
    if fitted != configured {
        tracing::warn!(
            file_limit = limit,
            configured_public = configured.0,
            configured_admin = configured.1,
            public = fitted.0,
            admin = fitted.1,
            "connection caps lowered to fit the file descriptor limit"
        );
    }
    fitted
}

/// Resolves on Ctrl-C or SIGTERM: what a service's `main` stops on.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
