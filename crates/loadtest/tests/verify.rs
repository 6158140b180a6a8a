//! The post-run audit against a real PostgreSQL: a consistent world passes every check, and
//! each way of breaking it fails exactly the checks that should notice.
//!
//! Admin URL from `ORDERSYS_DATABASE_URL` (default: the project's private instance). Each test
//! creates three fresh databases and drops them at the end, even when it fails.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;
use loadtest::audit::{
    audit, Check, HttpFigures, CHECK_COMPLETED_ORDERS, CHECK_DEAD_LETTERS, CHECK_FAILED_ORDERS,
    CHECK_HTTP_ERROR_RATE, CHECK_HTTP_P95, CHECK_MONEY_CONSERVED, CHECK_NAMES, CHECK_ORDERS_FINAL,
    CHECK_ORPHANS, CHECK_OUTBOX_DRAINED, CHECK_PAID_ONCE, CHECK_RELEASED_RESERVATIONS, CHECK_STOCK,
};
use loadtest::observe::database::{e2e_latencies, progress, Databases, Scope};
use sqlx::{Connection as _, Executor as _, PgConnection, PgPool};
use std::path::Path;
use uuid::Uuid;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:55432/postgres";

/// The SQL of every migration a service's database gets, in the order the service applies
/// them: the platform's messaging tables, then the service's own.
fn migrations(service: &str) -> Vec<String> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut sql = Vec::new();
    for dir in [
        crates.join("platform/migrations"),
        crates.join(service).join("migrations"),
    ] {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a migration file").path())
            .filter(|path| path.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        sql.extend(
            files
                .iter()
                .map(|f| std::fs::read_to_string(f).expect("readable")),
        );
    }
    sql
}

fn admin_url() -> String {
    std::env::var("ORDERSYS_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// The seeded world's fixed facts.
const PRODUCT: i64 = 1;
const PRICE: i64 = 250;
const RECEIVED: i64 = 10;
/// Quantities of the three COMPLETED orders (Σ 6), the PAYMENT_DECLINED one, and the two
/// OUT_OF_STOCK ones.
const COMPLETED_QTY: [i32; 3] = [1, 2, 3];
const DECLINED_QTY: i32 = 2;
const OUT_OF_STOCK_QTY: [i32; 2] = [5, 9];
const USER_A: i64 = 100;
const USER_B: i64 = 200;
const DEPOSIT: i64 = 10_000;

/// Three fresh databases holding a consistent, drained world.
#[derive(Clone)]
struct World {
    dbs: Databases,
    names: [String; 3],
    completed: Vec<Uuid>,
    declined: Uuid,
    out_of_stock: Vec<Uuid>,
}

impl World {
    async fn create(admin: &str) -> World {
        let tag = Uuid::new_v4().simple().to_string();
        let names = [
            format!("verify_{tag}_orders"),
            format!("verify_{tag}_inventory"),
            format!("verify_{tag}_payments"),
        ];
        let mut conn = PgConnection::connect(admin)
            .await
            .expect("connect to the admin database");
        for name in &names {
            conn.execute(format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("create database");
        }
        conn.close().await.ok();

        let dbs = Databases::connect(
            &stack::database_url(admin, &names[0]),
            &stack::database_url(admin, &names[1]),
            &stack::database_url(admin, &names[2]),
        )
        .await
        .expect("connect to the test databases");
        for (pool, service) in [
            (&dbs.orders, "order-service"),
            (&dbs.inventory, "inventory-service"),
            (&dbs.payments, "payment-service"),
        ] {
            for sql in migrations(service) {
                sqlx::raw_sql(&sql).execute(pool).await.unwrap();
            }
        }

        let completed: Vec<Uuid> = COMPLETED_QTY.iter().map(|_| Uuid::new_v4()).collect();
        let declined = Uuid::new_v4();
        let out_of_stock: Vec<Uuid> = OUT_OF_STOCK_QTY.iter().map(|_| Uuid::new_v4()).collect();
        let sold: i64 = COMPLETED_QTY.iter().map(|&q| i64::from(q)).sum();

        // Inventory: stock = received − Σ COMPLETED qty (the declined order's units came back).
        exec(
            &dbs.inventory,
            "INSERT INTO products (id, name, price_cents, stock, received) VALUES ($1, 'widget', $2, $3, $4)",
            |q| q.bind(PRODUCT).bind(PRICE).bind(RECEIVED - sold).bind(RECEIVED),
        )
        .await;

        // Payments: user A pays the COMPLETED orders; user B was declined.
        let spent: i64 = sold * PRICE;
        for (user, balance) in [(USER_A, DEPOSIT - spent), (USER_B, DEPOSIT)] {
            exec(
                &dbs.payments,
                "INSERT INTO accounts (user_id, balance_cents, deposited_cents) VALUES ($1, $2, $3)",
                |q| q.bind(user).bind(balance).bind(DEPOSIT),
            )
            .await;
        }

        for (&id, &qty) in completed.iter().zip(COMPLETED_QTY.iter()) {
            let amount = i64::from(qty) * PRICE;
            insert_order(&dbs, id, USER_A, qty, "COMPLETED", None).await;
            insert_reservation(&dbs, id, USER_A, qty, "ACTIVE").await;
            insert_charge(&dbs, id, USER_A, amount, "SUCCEEDED").await;
        }
        insert_order(
            &dbs,
            declined,
            USER_B,
            DECLINED_QTY,
            "FAILED",
            Some("PAYMENT_DECLINED"),
        )
        .await;
        insert_reservation(&dbs, declined, USER_B, DECLINED_QTY, "RELEASED").await;
        exec(
            &dbs.orders,
            "UPDATE orders SET stock_released_at = now() WHERE id = $1",
            |q| q.bind(declined),
        )
        .await;
        insert_charge(
            &dbs,
            declined,
            USER_B,
            i64::from(DECLINED_QTY) * PRICE,
            "FAILED",
        )
        .await;
        for (&id, &qty) in out_of_stock.iter().zip(OUT_OF_STOCK_QTY.iter()) {
            insert_order(&dbs, id, USER_B, qty, "FAILED", Some("OUT_OF_STOCK")).await;
        }

        World {
            dbs,
            names,
            completed,
            declined,
            out_of_stock,
        }
    }

    async fn drop_databases(&self, admin: &str) {
        self.dbs.close().await;
        if let Ok(mut conn) = PgConnection::connect(admin).await {
            for name in &self.names {
                let _ = conn
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await;
            }
            conn.close().await.ok();
        }
    }

    async fn checks(&self) -> Vec<Check> {
        audit(&self.dbs, None).await.expect("audit")
    }

    /// The names of the failing checks.
    async fn failing(&self) -> BTreeSet<String> {
        let checks = self.checks().await;
        for c in &checks {
            eprintln!("{c}");
        }
        checks
            .into_iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect()
    }

    async fn assert_failing(&self, expected: &[&str]) {
        let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(self.failing().await, expected);
    }
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

async fn exec(pool: &PgPool, sql: &str, bind: impl for<'q> FnOnce(Query<'q>) -> Query<'q>) {
    bind(sqlx::query(sql))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn insert_order(
    dbs: &Databases,
    id: Uuid,
    user: i64,
    qty: i32,
    status: &str,
    reason: Option<&str>,
) {
    let amount = (status != "PENDING").then_some(i64::from(qty) * PRICE);
    exec(
        &dbs.orders,
        "INSERT INTO orders (id, user_id, product_id, quantity, status, failure_reason, amount_cents, \
         created_at, finalized_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() - interval '2 seconds', \
                 CASE WHEN $5 IN ('COMPLETED', 'FAILED') THEN now() END)",
        |q| {
            q.bind(id)
                .bind(user)
                .bind(PRODUCT)
                .bind(qty)
                .bind(status.to_owned())
                .bind(reason.map(str::to_owned))
                .bind(amount)
        },
    )
    .await;
}

async fn insert_reservation(dbs: &Databases, order: Uuid, user: i64, qty: i32, status: &str) {
    exec(
        &dbs.inventory,
        "INSERT INTO reservations (order_id, product_id, user_id, quantity, amount_cents, status, released_at) \
         VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6 = 'RELEASED' THEN now() END)",
        |q| {
            q.bind(order)
                .bind(PRODUCT)
                .bind(user)
                .bind(qty)
                .bind(i64::from(qty) * PRICE)
                .bind(status.to_owned())
        },
    )
    .await;
}

async fn insert_charge(dbs: &Databases, order: Uuid, user: i64, amount: i64, status: &str) {
    exec(
        &dbs.payments,
        "INSERT INTO charges (order_id, user_id, amount_cents, status, failure_reason) \
         VALUES ($1, $2, $3, $4, CASE WHEN $4 = 'FAILED' THEN 'DECLINED' END)",
        |q| {
            q.bind(order)
                .bind(user)
                .bind(amount)
                .bind(status.to_owned())
        },
    )
    .await;
}

async fn sql(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Creates a world, runs `body` on it, drops the databases whatever happened, then re-raises a
/// failure.
async fn with_world<F, Fut>(body: F)
where
    F: FnOnce(World) -> Fut,
    Fut: Future<Output = ()>,
{
    let admin = admin_url();
    let world = World::create(&admin).await;
    let outcome = AssertUnwindSafe(body(world.clone())).catch_unwind().await;
    world.drop_databases(&admin).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn consistent_world_passes_every_check() {
    with_world(|w| async move {
        let checks = w.checks().await;
        for c in &checks {
            eprintln!("{c}");
        }
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, CHECK_NAMES);
        assert!(checks.iter().all(|c| c.passed), "{checks:#?}");

        let stock = &checks[0];
        assert!(
            stock
                .detail
                .contains("product 1: stock 4 == received 10 − active reserved 6; COMPLETED qty 6"),
            "{}",
            stock.detail
        );
        let money = checks
            .iter()
            .find(|c| c.name == CHECK_MONEY_CONSERVED)
            .unwrap();
        assert!(
            money
                .detail
                .contains("Σ balance 18500 + Σ SUCCEEDED charges 1500 == Σ deposited 20000"),
            "{}",
            money.detail
        );
        for c in checks
            .iter()
            .filter(|c| c.name == CHECK_HTTP_P95 || c.name == CHECK_HTTP_ERROR_RATE)
        {
            assert_eq!(c.detail, "not measured");
        }
    })
    .await;
}

#[tokio::test]
async fn stock_changed_behind_the_systems_back() {
    with_world(|w| async move {
        sql(&w.dbs.inventory, "UPDATE products SET stock = stock - 1").await;
        w.assert_failing(&[CHECK_STOCK]).await;
    })
    .await;
}

#[tokio::test]
async fn charge_of_the_wrong_amount() {
    with_world(|w| async move {
        // The customer was charged one cent more and the balance shows it: money is still
        // conserved, but the charge does not match the order.
        let id = w.completed[0];
        sql(
            &w.dbs.payments,
            &format!("UPDATE charges SET amount_cents = amount_cents + 1 WHERE order_id = '{id}'"),
        )
        .await;
        sql(
            &w.dbs.payments,
            &format!(
                "UPDATE accounts SET balance_cents = balance_cents - 1 WHERE user_id = {USER_A}"
            ),
        )
        .await;
        w.assert_failing(&[CHECK_COMPLETED_ORDERS]).await;
    })
    .await;
}

#[tokio::test]
async fn second_successful_charge() {
    with_world(|w| async move {
        // Only possible if the primary key that forbids it were gone: the audit does not rely
        // on it. The second charge is debited, so money is conserved.
        let id = w.completed[1];
        let amount = i64::from(COMPLETED_QTY[1]) * PRICE;
        sql(
            &w.dbs.payments,
            "ALTER TABLE charges DROP CONSTRAINT charges_pkey",
        )
        .await;
        insert_charge(&w.dbs, id, USER_A, amount, "SUCCEEDED").await;
        sql(
            &w.dbs.payments,
            &format!(
                "UPDATE accounts SET balance_cents = balance_cents - {amount} WHERE user_id = {USER_A}"
            ),
        )
        .await;
        w.assert_failing(&[CHECK_PAID_ONCE]).await;
    })
    .await;
}

#[tokio::test]
async fn completed_order_without_charge() {
    with_world(|w| async move {
        // The charge vanished and its money is back on the account.
        let id = w.completed[2];
        let amount = i64::from(COMPLETED_QTY[2]) * PRICE;
        sql(
            &w.dbs.payments,
            &format!("DELETE FROM charges WHERE order_id = '{id}'"),
        )
        .await;
        sql(
            &w.dbs.payments,
            &format!(
                "UPDATE accounts SET balance_cents = balance_cents + {amount} WHERE user_id = {USER_A}"
            ),
        )
        .await;
        w.assert_failing(&[CHECK_COMPLETED_ORDERS]).await;
    })
    .await;
}

#[tokio::test]
async fn failed_order_with_active_reservation() {
    with_world(|w| async move {
        // Payment declined but the release never happened: the units stay held, so the stock
        // no longer equals received − COMPLETED qty either.
        let id = w.declined;
        sql(
            &w.dbs.inventory,
            &format!(
                "UPDATE reservations SET status = 'ACTIVE', released_at = NULL WHERE order_id = '{id}'"
            ),
        )
        .await;
        sql(
            &w.dbs.inventory,
            &format!("UPDATE products SET stock = stock - {DECLINED_QTY}"),
        )
        .await;
        w.assert_failing(&[CHECK_FAILED_ORDERS, CHECK_STOCK]).await;
    })
    .await;
}

#[tokio::test]
async fn out_of_stock_order_with_released_reservation() {
    with_world(|w| async move {
        // Stock was never taken for an OUT_OF_STOCK order, so it may have no reservation, and a
        // released reservation must belong to a payment failure.
        insert_reservation(
            &w.dbs,
            w.out_of_stock[0],
            USER_B,
            OUT_OF_STOCK_QTY[0],
            "RELEASED",
        )
        .await;
        w.assert_failing(&[CHECK_FAILED_ORDERS, CHECK_RELEASED_RESERVATIONS])
            .await;
    })
    .await;
}

/// The `orders final` check of a world.
async fn orders_final(w: &World) -> Check {
    w.checks()
        .await
        .into_iter()
        .find(|c| c.name == CHECK_ORDERS_FINAL)
        .expect("orders final check")
}

#[tokio::test]
async fn order_left_pending() {
    with_world(|w| async move {
        let open = Uuid::new_v4();
        insert_order(&w.dbs, open, USER_A, 1, "PENDING", None).await;
        w.assert_failing(&[CHECK_ORDERS_FINAL]).await;
        let c = orders_final(&w).await;
        assert!(
            c.detail.contains(&format!("1 PENDING ({open})")),
            "the open order is named: {}",
            c.detail
        );
    })
    .await;
}

#[tokio::test]
async fn orders_left_open_are_named_up_to_twenty() {
    with_world(|w| async move {
        let open: Vec<Uuid> = (0..25).map(|_| Uuid::new_v4()).collect();
        for &id in &open {
            insert_order(&w.dbs, id, USER_A, 1, "PENDING", None).await;
        }
        let c = orders_final(&w).await;
        assert!(!c.passed);
        assert!(
            c.detail.contains("25 PENDING (first 20 of 25: "),
            "{}",
            c.detail
        );
        let named = open
            .iter()
            .filter(|id| c.detail.contains(&id.to_string()))
            .count();
        assert_eq!(named, 20, "{}", c.detail);
    })
    .await;
}

#[tokio::test]
async fn outbox_row_left() {
    with_world(|w| async move {
        sql(
            &w.dbs.payments,
            "INSERT INTO outbox (event_id, subject, envelope) \
             VALUES (gen_random_uuid(), 'payments.charge.succeeded', '\\x00')",
        )
        .await;
        w.assert_failing(&[CHECK_OUTBOX_DRAINED]).await;
        let c = w
            .checks()
            .await
            .into_iter()
            .find(|c| c.name == CHECK_OUTBOX_DRAINED)
            .unwrap();
        assert_eq!(
            c.detail,
            "1 unpublished outbox rows (orders 0, inventory 0, payments 1)"
        );
    })
    .await;
}

#[tokio::test]
async fn a_dead_letter_an_operator_resolved_is_not_counted() {
    with_world(|w| async move {
        sql(
            &w.dbs.inventory,
            "INSERT INTO dead_letters (consumer, subject, deliveries, reason, payload, status, resolved_at, resolved_by) \
             VALUES ('inventory-orders', 'orders.created', 1, 'poison', '\\x00', 'discarded', now(), 'alice')",
        )
        .await;
        w.assert_failing(&[]).await;
    })
    .await;
}

#[tokio::test]
async fn a_payment_failure_without_a_confirmed_stock_release_leaves_its_saga_open() {
    with_world(|w| async move {
        exec(
            &w.dbs.orders,
            "UPDATE orders SET stock_released_at = NULL WHERE id = $1",
            |q| q.bind(w.declined),
        )
        .await;
        w.assert_failing(&[CHECK_ORDERS_FINAL]).await;
    })
    .await;
}

#[tokio::test]
async fn dead_letter_recorded() {
    with_world(|w| async move {
        sql(
            &w.dbs.inventory,
            "INSERT INTO dead_letters (consumer, subject, message_id, deliveries, reason, payload) \
             VALUES ('inventory-orders', 'orders.created', NULL, 5, 'undecodable', '\\x00')",
        )
        .await;
        w.assert_failing(&[CHECK_DEAD_LETTERS]).await;
        let c = w
            .checks()
            .await
            .into_iter()
            .find(|c| c.name == CHECK_DEAD_LETTERS)
            .unwrap();
        assert!(
            c.detail
                .starts_with("1 dead letters (orders 0, inventory 1, payments 0"),
            "{}",
            c.detail
        );
        assert!(c.detail.contains("inventory-orders"), "{}", c.detail);
    })
    .await;
}

#[tokio::test]
async fn balance_changed() {
    with_world(|w| async move {
        sql(
            &w.dbs.payments,
            &format!(
                "UPDATE accounts SET balance_cents = balance_cents + 1 WHERE user_id = {USER_B}"
            ),
        )
        .await;
        w.assert_failing(&[CHECK_MONEY_CONSERVED]).await;
    })
    .await;
}

#[tokio::test]
async fn charge_without_order_is_an_orphan() {
    with_world(|w| async move {
        insert_charge(&w.dbs, Uuid::new_v4(), USER_B, 100, "FAILED").await;
        w.assert_failing(&[CHECK_ORPHANS]).await;
    })
    .await;
}

#[tokio::test]
async fn http_figures_are_judged() {
    with_world(|w| async move {
        let good = HttpFigures {
            p95_ms: 120.0,
            p95_threshold_ms: 2000.0,
            error_rate: 0.0,
            max_error_rate: 0.001,
        };
        let checks = audit(&w.dbs, Some(&good)).await.unwrap();
        assert!(checks.iter().all(|c| c.passed), "{checks:#?}");

        let bad = HttpFigures {
            p95_ms: 2500.0,
            error_rate: 0.01,
            ..good
        };
        let failing: BTreeSet<String> = audit(&w.dbs, Some(&bad))
            .await
            .unwrap()
            .into_iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        let expected: BTreeSet<String> = [CHECK_HTTP_P95, CHECK_HTTP_ERROR_RATE]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(failing, expected);
    })
    .await;
}

#[tokio::test]
async fn progress_and_latencies() {
    with_world(|w| async move {
        insert_order(&w.dbs, Uuid::new_v4(), USER_A, 1, "PENDING", None).await;
        sql(
            &w.dbs.orders,
            "INSERT INTO outbox (event_id, subject, envelope) VALUES (gen_random_uuid(), 'orders.created', '\\x00')",
        )
        .await;
        let p = progress(&w.dbs, Scope::AllOrders).await.unwrap();
        assert_eq!(p.non_final_orders, 1);
        assert_eq!(p.outbox_backlog, 1);
        assert_eq!(p.dead_letters, 0);
        assert_eq!(p.stock.get(&PRODUCT), Some(&4));
        let by_status: Vec<(&str, i64)> = p
            .orders_by_status
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(
            by_status,
            [
                ("COMPLETED", 3),
                ("FAILED:OUT_OF_STOCK", 2),
                ("FAILED:PAYMENT_DECLINED", 1),
                ("PENDING", 1),
            ]
        );

        let lat = e2e_latencies(&w.dbs).await.unwrap();
        assert_eq!(lat.len(), 6, "final orders only");
        assert!(lat.windows(2).all(|p| p[0].0 <= p[1].0), "ordered by created_at");
        assert!(
            lat.iter().all(|(_, ms)| (1999.0..2100.0).contains(ms)),
            "{lat:?}"
        );
    })
    .await;
}
