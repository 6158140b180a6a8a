//! A test harness that runs the three real services in-process, each on a random port with a
//! fresh database, against a real PostgreSQL and NATS (`servers`: the ones given, else the
//! `stack` crate's private instances) with a unique subject/stream prefix.
//! Background work is driven by the test (`settle`) rather than left to timers.

pub mod pg_proxy;
pub mod servers;

pub use servers::{admin_database_url, fresh_database, nats_url};

use platform::app::Driver;
use platform::auth::TokenKeys;
use platform::broker::Topology;
use platform::config::ServiceSettings;
use platform::events::Source;
use platform::testing::{eventually, unique_token};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const JWT_SECRET: &str = "test-secret";
pub const ADMIN_TOKEN: &str = "test-admin";

pub struct Service {
    /// The public listener: the API, `/health`, `/ready`.
    pub base_url: String,
    /// The admin listener: `/metrics`, `/admin/*`.
    pub admin_url: String,
    pub driver: Driver,
    /// The test's own connection to the service's database.
    pub pool: PgPool,
    /// The service's own pools.
    pub pools: platform::db::Pools,
    /// What stops it, as SIGTERM stops a deployed service.
    shutdown: CancellationToken,
    running: Option<JoinHandle<Result<(), std::io::Error>>>,
}

impl Service {
    /// Stops the service through its shutdown signal and returns once it has stopped: requests
    /// in flight answered, every worker's round in progress finished.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running
                .await
                .expect("the service's task")
                .expect("the service stops cleanly");
        }
    }
}

pub struct TestSystem {
    pub prefix: String,
    /// The NATS server (or cluster: URLs separated by commas) the services use.
    pub nats_url: String,
    /// For starting more inventory instances on the same database and stream prefix.
    pub inventory_settings: inventory_service::config::Settings,
    /// For starting the order service again (`TestSystem::restart_order`).
    order_settings: order_service::config::Settings,
    order_database: String,
    pub order: Service,
    pub inventory: Service,
    pub payment: Service,
    pub http: reqwest::Client,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub decline_rate: f64,
    pub max_quantity: i32,
    /// Run the real supervised workers instead of driving them from the test with `settle`.
    pub workers: bool,
    /// More settings, as TOML (e.g. `[redrive]\nafter = "1s"`): each service takes the sections
    /// it has (every service refuses keys it does not have), and every section must be some
    /// service's.
    pub extra: &'static str,
    /// The NATS server or cluster (URLs separated by commas) instead of the tests' own
    /// ([`servers`]).
    pub nats_url: Option<String>,
    /// The orders database to start the order service on (one a test prepared, e.g. migrated
    /// to an older version) instead of a fresh one.
    pub order_database: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            decline_rate: 0.0,
            max_quantity: 100,
            workers: false,
            extra: "",
            nats_url: None,
            order_database: None,
        }
    }
}

/// What every test service gets: its database, the test's prefix and credentials, port 0, and
/// workers driven by the test unless it asks for real ones.
fn test_settings(database_url: &str, prefix: &str, nats: &str, options: &Options) -> String {
    format!(
        r#"
[http]
port = 0
[database]
url = "{database_url}"
acquire_timeout = "5s"
[nats]
url = "{nats}"
prefix = "{prefix}"
# JetStream reserves a stream's max_bytes on the server, and tests leave their streams behind:
# no byte limit (no reservation) for test streams.
stream_max_bytes = -1
[auth]
jwt_secret = "{JWT_SECRET}"
admin_token = "{ADMIN_TOKEN}"
[workers]
enabled = {workers}
restart_backoff = "100ms"
max_restart_backoff = "1s"
[orders]
max_quantity = {max_quantity}
writers = 2
max_batch = 64
# Far above what any test sends: tests of fair use set their own limits.
[fair_use]
orders_per_second = 100000
burst = 100000
max_open_orders = 100000
[payment]
decline_rate = {decline_rate}
"#,
        workers = options.workers,
        max_quantity = options.max_quantity,
        decline_rate = options.decline_rate,
    )
}

/// One service's settings from the documents meant for all three: the sections it has.
fn settings_for<S: ServiceSettings>(base: &str, extra: &str) -> S {
    let known = platform::config::known_keys(&S::default());
    let has_section = |section: &str| {
        known
            .iter()
            .any(|key| key == section || key.starts_with(&format!("{section}.")))
    };
    let documents: Vec<String> = [base, extra]
        .iter()
        .map(|document| {
            let mut table: toml::Table = document.parse().expect("test settings are TOML");
            table.retain(|section, _| has_section(section));
            table.to_string()
        })
        .collect();
    let documents: Vec<&str> = documents.iter().map(String::as_str).collect();
    S::overridden(&documents).expect("the test's settings load")
}

/// Every section of a test's settings is some service's: a misspelt one is refused like in a
/// deployment, not dropped by [`settings_for`].
fn check_sections(extra: &str) {
    let table: toml::Table = extra.parse().expect("test settings are TOML");
    let known: Vec<_> = [
        platform::config::known_keys(&order_service::config::Settings::default()),
        platform::config::known_keys(&inventory_service::config::Settings::default()),
        platform::config::known_keys(&payment_service::config::Settings::default()),
    ]
    .into_iter()
    .flatten()
    .collect();
    for section in table.keys() {
        assert!(
            known
                .iter()
                .any(|key| key == section || key.starts_with(&format!("{section}."))),
            "`{section}` is no service's section"
        );
    }
}

async fn launch(app: platform::app::Application, database_url: &str) -> Service {
    let base_url = format!("http://127.0.0.1:{}", app.port());
    let admin_url = format!("http://127.0.0.1:{}", app.admin_port());
    let driver = app.driver();
    let pools = app.pools();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone().cancelled_owned()));
    let pool = PgPool::connect(database_url)
        .await
        .expect("connect to service database");
    Service {
        base_url,
        admin_url,
        driver,
        pool,
        pools,
        shutdown,
        running: Some(running),
    }
}

impl TestSystem {
    pub async fn start(options: Options) -> TestSystem {
        let prefix = format!("t{}", unique_token());
        let nats = match options.nats_url.clone() {
            Some(url) => url,
            None => nats_url().await,
        };
        check_sections(options.extra);
        let order_db = match options.order_database.clone() {
            Some(url) => url,
            None => fresh_database("orders").await,
        };
        let inventory_db = fresh_database("inventory").await;
        let payment_db = fresh_database("payments").await;

        let order_settings: order_service::config::Settings = settings_for(
            &test_settings(&order_db, &prefix, &nats, &options),
            options.extra,
        );
        let inventory_settings: inventory_service::config::Settings = settings_for(
            &test_settings(&inventory_db, &prefix, &nats, &options),
            options.extra,
        );
        let payment_settings: payment_service::config::Settings = settings_for(
            &test_settings(&payment_db, &prefix, &nats, &options),
            options.extra,
        );
        let order = order_service::startup::build(&order_settings)
            .await
            .expect("order service starts");
        let inventory = inventory_service::startup::build(&inventory_settings)
            .await
            .expect("inventory starts");
        let payment = payment_service::startup::build(&payment_settings)
            .await
            .expect("payment starts");
        let system = TestSystem {
            prefix,
            nats_url: nats,
            inventory_settings,
            order_settings,
            order: launch(order, &order_db).await,
            order_database: order_db,
            inventory: launch(inventory, &inventory_db).await,
            payment: launch(payment, &payment_db).await,
            http: reqwest::Client::new(),
        };
        // A consumer whose stream's publisher had not started yet is not attached (a service
        // may create only its own stream); running workers keep trying, driven ones attach at
        // their first step.
        if !options.workers {
            system.settle().await;
        }
        system
    }

    /// Stops the order service through its shutdown signal and starts it again on the same
    /// database and streams (on new ports).
    pub async fn restart_order(&mut self) {
        self.order.stop().await;
        let app = order_service::startup::build(&self.order_settings)
            .await
            .expect("order service starts again");
        self.order = launch(app, &self.order_database).await;
    }

    fn drivers(&self) -> [&Driver; 3] {
        [
            &self.order.driver,
            &self.inventory.driver,
            &self.payment.driver,
        ]
    }

    /// Like [`TestSystem::settle`], but a round may fail (a consumer finding its durable
    /// consumer or stream gone reports it and attaches again next round); it must end in two
    /// quiet rounds without errors.
    pub async fn settle_after_fault(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut quiet_rounds = 0;
        while quiet_rounds < 2 {
            let (work, errors) = self.step_tolerant().await;
            assert!(
                tokio::time::Instant::now() < deadline,
                "system did not settle within 60 s; last errors: {errors:?}"
            );
            quiet_rounds = if work == 0 && errors.is_empty() {
                quiet_rounds + 1
            } else {
                0
            };
        }
    }

    /// Runs relays and consumers until two consecutive rounds find nothing to do.
    pub async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut quiet_rounds = 0;
        while quiet_rounds < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "system did not settle within 60 s"
            );
            let mut work = 0;
            for driver in self.drivers() {
                work += driver.step().await.expect("background step");
            }
            quiet_rounds = if work == 0 { quiet_rounds + 1 } else { 0 };
        }
    }

    pub fn token(&self, user_id: i64) -> String {
        TokenKeys::with_secret(JWT_SECRET)
            .mint(user_id, Duration::from_secs(3600))
            .expect("mint token")
    }

    pub async fn create_product(&self, id: i64, price_cents: i64, stock: i64) {
        let response = self
            .http
            .post(format!("{}/products", self.inventory.base_url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "id": id, "name": format!("product {id}"), "price_cents": price_cents, "stock": stock }))
            .send()
            .await
            .expect("create product");
        assert_eq!(
            response.status(),
            201,
            "create product: {:?}",
            response.text().await
        );
    }

    pub async fn open_account(&self, user_id: i64, balance_cents: i64) {
        let response = self
            .http
            .post(format!("{}/accounts", self.payment.base_url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "user_id": user_id, "balance_cents": balance_cents }))
            .send()
            .await
            .expect("open account");
        assert_eq!(
            response.status(),
            201,
            "open account: {:?}",
            response.text().await
        );
    }

    pub async fn place_order(
        &self,
        user_id: i64,
        product_id: i64,
        quantity: i64,
    ) -> reqwest::Response {
        self.http
            .post(format!("{}/orders", self.order.base_url))
            .bearer_auth(self.token(user_id))
            .json(&json!({ "product_id": product_id, "quantity": quantity }))
            .send()
            .await
            .expect("send order")
    }

    /// Places an order that must be accepted and returns its id.
    pub async fn accepted_order(&self, user_id: i64, product_id: i64, quantity: i64) -> String {
        let response = self.place_order(user_id, product_id, quantity).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("order body");
        body["id"].as_str().expect("order id").to_owned()
    }

    pub async fn order(&self, user_id: i64, order_id: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/orders/{order_id}", self.order.base_url))
            .bearer_auth(self.token(user_id))
            .send()
            .await
            .expect("get order");
        assert_eq!(response.status(), 200);
        response.json().await.expect("order body")
    }

    pub async fn stock(&self, product_id: i64) -> i64 {
        sqlx::query_scalar("SELECT stock FROM products WHERE id = $1")
            .bind(product_id)
            .fetch_one(&self.inventory.pool)
            .await
            .expect("stock")
    }

    pub async fn balance(&self, user_id: i64) -> i64 {
        sqlx::query_scalar("SELECT balance_cents FROM accounts WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&self.payment.pool)
            .await
            .expect("balance")
    }

    pub async fn count(pool: &PgPool, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .expect("count query")
    }

    /// A JetStream context on the test's NATS, for injecting messages.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = platform::broker::connect_url(&self.nats_url)
            .await
            .expect("connect to NATS");
        async_nats::jetstream::new(client)
    }

    pub fn subject(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    pub fn stream_name(&self, source: Source) -> String {
        Topology::new(self.prefix.clone()).stream_name(source)
    }

    /// Messages the stream of `source` holds.
    pub async fn stream_messages(&self, source: Source) -> u64 {
        let js = self.jetstream().await;
        let mut stream = js
            .get_stream(self.stream_name(source))
            .await
            .expect("stream exists");
        stream.info().await.expect("stream info").state.messages
    }

    /// Deletes a durable consumer, as an operator's mistake would.
    pub async fn delete_consumer(&self, source: Source, durable: &str) {
        let js = self.jetstream().await;
        let stream = js
            .get_stream(self.stream_name(source))
            .await
            .expect("stream exists");
        stream
            .delete_consumer(durable)
            .await
            .expect("delete consumer");
    }

    /// Deletes a stream with whatever it holds, as a lost broker store would.
    pub async fn delete_stream(&self, source: Source) {
        let js = self.jetstream().await;
        js.delete_stream(self.stream_name(source))
            .await
            .expect("delete stream");
    }

    /// `GET /ready` of a service: status and body.
    pub async fn ready(&self, service: &Service) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}/ready", service.base_url))
            .send()
            .await
            .expect("ready");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls the order until it has `status` (real workers running), or panics after `deadline`.
    pub async fn wait_for_status(
        &self,
        user_id: i64,
        order_id: &str,
        status: &str,
        deadline: Duration,
    ) -> Value {
        let found = eventually(deadline, || async {
            let order = self.order(user_id, order_id).await;
            (order["status"] == status).then_some(order)
        })
        .await;
        match found {
            Some(order) => order,
            None => panic!(
                "order {order_id} not {status} within {deadline:?}: {}",
                self.order(user_id, order_id).await
            ),
        }
    }

    /// One round of every service's background work that tolerates a failing step (a consumer
    /// that found its durable consumer gone reports it, and attaches again next round).
    pub async fn step_tolerant(&self) -> (usize, Vec<String>) {
        let mut work = 0;
        let mut errors = Vec::new();
        for driver in self.drivers() {
            match driver.step().await {
                Ok(n) => work += n,
                Err(error) => errors.push(error.to_string()),
            }
        }
        (work, errors)
    }
}
