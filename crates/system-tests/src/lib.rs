//! A test harness that runs the three real services in-process, each on a random port with a
//! fresh database, against a real PostgreSQL and NATS with a unique subject/stream prefix.
//! Background work is driven by the test (`settle`) rather than left to timers.

use platform::app::Driver;
use platform::auth::mint_token;
use platform::config::{
    AuthSettings, CommonSettings, ConsumerSettings, DatabaseSettings, HttpSettings, NatsSettings,
    OutboxSettings, WorkerSettings,
};
use platform::testing::{fresh_database, nats_url, unique_token};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;

pub const JWT_SECRET: &str = "test-secret";
pub const ADMIN_TOKEN: &str = "test-admin";

pub struct Service {
    pub base_url: String,
    pub driver: Driver,
    pub pool: PgPool,
}

pub struct TestSystem {
    pub prefix: String,
    pub order: Service,
    pub inventory: Service,
    pub payment: Service,
    pub http: reqwest::Client,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub decline_rate: f64,
    pub max_quantity: i32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            decline_rate: 0.0,
            max_quantity: 100,
        }
    }
}

fn common_settings(database_url: String, prefix: &str) -> CommonSettings {
    CommonSettings {
        http: HttpSettings {
            host: "127.0.0.1".into(),
            port: 0,
            max_body_bytes: 16 * 1024,
        },
        database: DatabaseSettings {
            url: database_url,
            max_connections: 8,
            acquire_timeout_ms: 5000,
        },
        nats: NatsSettings {
            url: nats_url(),
            prefix: prefix.into(),
        },
        auth: AuthSettings {
            jwt_secret: JWT_SECRET.into(),
            admin_token: ADMIN_TOKEN.into(),
        },
        outbox: OutboxSettings {
            batch_size: 1000,
            events_per_message: 100,
            poll_interval_ms: 250,
        },
        consumer: ConsumerSettings {
            batch_size: 256,
            max_deliveries: 5,
            ack_wait_secs: 30,
            max_ack_pending: 20_000,
        },
        workers: WorkerSettings { enabled: false },
    }
}

async fn launch(app: platform::app::Application, database_url: &str) -> Service {
    let base_url = format!("http://127.0.0.1:{}", app.port());
    let driver = app.driver();
    tokio::spawn(app.run_until_stopped());
    let pool = PgPool::connect(database_url)
        .await
        .expect("connect to service database");
    Service {
        base_url,
        driver,
        pool,
    }
}

impl TestSystem {
    pub async fn start(options: Options) -> TestSystem {
        let prefix = format!("t{}", unique_token());
        let order_db = fresh_database("orders").await;
        let inventory_db = fresh_database("inventory").await;
        let payment_db = fresh_database("payments").await;

        let order_settings = order_service::config::Settings {
            common: common_settings(order_db.clone(), &prefix),
            orders: order_service::config::OrderSettings {
                max_quantity: options.max_quantity,
                writers: 2,
                max_batch: 64,
            },
        };
        let inventory_settings = inventory_service::config::Settings {
            common: common_settings(inventory_db.clone(), &prefix),
        };
        let payment_settings = payment_service::config::Settings {
            common: common_settings(payment_db.clone(), &prefix),
            payment: payment_service::config::PaymentSettings {
                decline_rate: options.decline_rate,
            },
        };
        let order = order_service::startup::build(&order_settings)
            .await
            .expect("order service starts");
        let inventory = inventory_service::startup::build(&inventory_settings)
            .await
            .expect("inventory starts");
        let payment = payment_service::startup::build(&payment_settings)
            .await
            .expect("payment starts");
        TestSystem {
            prefix,
            order: launch(order, &order_db).await,
            inventory: launch(inventory, &inventory_db).await,
            payment: launch(payment, &payment_db).await,
            http: reqwest::Client::new(),
        }
    }

    fn drivers(&self) -> [&Driver; 3] {
        [
            &self.order.driver,
            &self.inventory.driver,
            &self.payment.driver,
        ]
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
        mint_token(JWT_SECRET, user_id, Duration::from_secs(3600)).expect("mint token")
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
        let client = async_nats::connect(nats_url())
            .await
            .expect("connect to NATS");
        async_nats::jetstream::new(client)
    }

    pub fn subject(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }
}
