//! Least privilege against the real servers the tests run on (`loadtest infra-up`): a service's
//! PostgreSQL role reaches its own database only and can drop nothing else; the audit role
//! reads and cannot write; on NATS an anonymous client is refused, a service's user cannot
//! publish another service's events nor touch another service's streams, and can do its own work.
//!
//! Every test uses names of its own (databases, roles, NATS prefix) and removes them at the end.

use std::time::Duration;

use async_nats::jetstream;
use loadtest::deploy::{self, Credentials};
use platform::broker::Topology;
use platform::events::Source;
use sqlx::{Connection as _, PgConnection};
use stack::StateDir;

fn admin_url() -> String {
    std::env::var("ORDERSYS_DATABASE_URL")
        .expect("ORDERSYS_DATABASE_URL (the admin URL `loadtest infra-up` prints)")
}

fn nats_admin_url() -> String {
    std::env::var("ORDERSYS_NATS_URL")
        .expect("ORDERSYS_NATS_URL (the URL `loadtest infra-up` prints)")
}

fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}

fn sql_state(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(e) => e.code().map(|c| c.into_owned()),
        _ => None,
    }
}

async fn admin(sql: &str) {
    let mut conn = PgConnection::connect(&admin_url()).await.expect("admin");
    sqlx::raw_sql(sql).execute(&mut conn).await.expect(sql);
}

#[tokio::test]
async fn a_service_role_reaches_only_its_own_database_and_the_audit_role_only_reads() {
    let t = token();
    let (orders, payments) = (format!("lp_{t}_orders"), format!("lp_{t}_payments"));
    let (order_role, payment_role, audit_role) = (
        format!("lp_{t}_order"),
        format!("lp_{t}_payment"),
        format!("lp_{t}_audit"),
    );
    let secret = stack::process::random_secret();
    let order_url = stack::provision_service_database(&admin_url(), &orders, &order_role, &secret)
        .await
        .expect("orders database");
    let payments_url =
        stack::provision_service_database(&admin_url(), &payments, &payment_role, &secret)
            .await
            .expect("payments database");
    stack::provision_reader(&admin_url(), &audit_role, &secret, &[&orders, &payments])
        .await
        .expect("audit role");

    // The owners create their schemas, as their migrations do.
    let mut as_payment = PgConnection::connect(&payments_url)
        .await
        .expect("payment role");
    sqlx::raw_sql("CREATE TABLE payments (id BIGINT PRIMARY KEY); INSERT INTO payments VALUES (1)")
        .execute(&mut as_payment)
        .await
        .expect("the owner creates its tables");
    as_payment.close().await.ok();
    let mut as_order = PgConnection::connect(&order_url).await.expect("order role");
    sqlx::raw_sql("CREATE TABLE orders (id BIGINT PRIMARY KEY)")
        .execute(&mut as_order)
        .await
        .expect("the owner creates its tables");

    // The order service's role cannot even connect to the payments database…
    let foreign = stack::database_url_as(&admin_url(), &payments, &order_role, &secret);
    let refused = PgConnection::connect(&foreign).await.expect_err("refused");
    assert_eq!(sql_state(&refused).as_deref(), Some("42501"), "{refused}");
    // …nor log in without its password, nor as another role with its own password.
    let wrong = stack::database_url_as(&admin_url(), &orders, &order_role, "not-the-password");
    assert!(PgConnection::connect(&wrong).await.is_err());
    // It can drop nothing it does not own: not another schema's table in its own database, not
    // another database.
    let mut superuser_in_orders =
        PgConnection::connect(&stack::database_url(&admin_url(), &orders))
            .await
            .expect("superuser");
    sqlx::raw_sql("CREATE SCHEMA operator; CREATE TABLE operator.settings (k TEXT)")
        .execute(&mut superuser_in_orders)
        .await
        .expect("an operator's schema");
    superuser_in_orders.close().await.ok();
    for statement in [
        "DROP TABLE operator.settings".to_string(),
        "DROP SCHEMA operator CASCADE".to_string(),
        format!("DROP DATABASE {payments}"),
        format!("ALTER ROLE {order_role} SUPERUSER"),
        format!("CREATE ROLE lp_{t}_extra"),
    ] {
        let error = sqlx::raw_sql(&statement)
            .execute(&mut as_order)
            .await
            .err()
            .unwrap_or_else(|| panic!("{statement} was allowed"));
        assert_eq!(
            sql_state(&error).as_deref(),
            Some("42501"),
            "{statement}: {error}"
        );
    }
    as_order.close().await.ok();

    // The audit role reads both databases and writes neither.
    for (db, table) in [(&orders, "orders"), (&payments, "payments")] {
        let url = stack::database_url_as(&admin_url(), db, &audit_role, &secret);
        let mut auditor = PgConnection::connect(&url)
            .await
            .expect("audit role connects");
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut auditor)
            .await
            .expect("the audit reads");
        assert!(rows >= 0);
        let error = sqlx::raw_sql(&format!("DELETE FROM {table}"))
            .execute(&mut auditor)
            .await
            .expect_err("the audit cannot write");
        assert_eq!(sql_state(&error).as_deref(), Some("42501"), "{error}");
        auditor.close().await.ok();
    }

    for db in [&orders, &payments] {
        stack::drop_database(&admin_url(), db).await.expect("drop");
    }
    admin(&format!(
        "DROP ROLE {order_role}; DROP ROLE {payment_role}; DROP ROLE {audit_role}"
    ))
    .await;
}

/// The server's address without credentials, and the URL of `user`.
fn nats_url_as(user: Option<(&str, &str)>) -> String {
    let admin = nats_admin_url();
    let host = admin
        .rsplit_once('@')
        .map_or(admin.trim_start_matches("nats://"), |(_, host)| host);
    match user {
        Some((user, password)) => format!("nats://{user}:{password}@{host}"),
        None => format!("nats://{host}"),
    }
}

/// A client of `user` that reports the server's errors (permission violations) on a channel.
async fn client_with_errors(
    user: &str,
    password: &str,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .user_and_password(user.into(), password.into())
        .custom_inbox_prefix(platform::broker::inbox_prefix(user))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    tx.send(error.to_string()).ok();
                }
            }
        })
        .connect(nats_url_as(None))
        .await
        .expect("the service's user connects");
    (client, rx)
}

async fn next_violation(errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .expect("the server reports the violation within 5 s")
        .expect("error channel open")
}

async fn messages_in(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .state
        .messages
}

#[tokio::test]
async fn nats_refuses_anonymous_clients_and_foreign_publishes_and_lets_each_service_do_its_own_work(
) {
    let state = StateDir::locate().expect("state directory");
    let prefix = format!("lp{}", token());
    let credentials = Credentials::random();
    stack::set_nats_users(&state, &prefix, deploy::nats_users(&prefix, &credentials))
        .await
        .expect(
            "the deployment's users (the tests' NATS must be the one `loadtest infra-up` runs)",
        );
    let admin = platform::broker::connect_url(&nats_admin_url())
        .await
        .expect("admin connects");
    let js = jetstream::new(admin);
    let topology = Topology::new(prefix.clone());
    for source in Source::ALL {
        platform::broker::ensure_stream(&js, &topology, source)
            .await
            .expect("stream");
    }
    let payment_stream = topology.stream_name(Source::Payment);

    // No anonymous access, and no access with a wrong password.
    assert!(platform::broker::connect_url(&nats_url_as(None))
        .await
        .is_err());
    let inventory = deploy::nats_user(&prefix, "inventory-service");
    assert!(
        platform::broker::connect_url(&nats_url_as(Some((&inventory, "wrong"))))
            .await
            .is_err()
    );

    // The inventory service's user cannot claim a payment…
    let (client, mut errors) =
        client_with_errors(&inventory, credentials.nats_password("inventory-service")).await;
    let forged = topology.subject("payment.completed");
    client
        .publish(forged.clone(), "{}".into())
        .await
        .expect("sent");
    client.flush().await.expect("flushed");
    let violation = next_violation(&mut errors).await;
    assert!(
        violation.to_lowercase().contains("permissions violation") && violation.contains(&forged),
        "{violation}"
    );
    assert_eq!(
        messages_in(&js, &payment_stream).await,
        0,
        "nothing reached the stream"
    );
    // …nor invent a subject under its own token: it may publish only the subjects the event
    // contract gives its types…
    let invented = topology.subject("inventory.stock_forged");
    client
        .publish(invented.clone(), "{}".into())
        .await
        .expect("sent");
    client.flush().await.expect("flushed");
    let violation = next_violation(&mut errors).await;
    assert!(violation.contains(&invented), "{violation}");
    // …nor delete another service's durable consumer…
    let foreign_consumer = format!(
        "$JS.API.CONSUMER.DELETE.{}.{}",
        topology.stream_name(Source::Inventory),
        platform::contract::PAYMENT_SERVICE.subscriptions[0].durable_name()
    );
    client
        .publish(foreign_consumer.clone(), "".into())
        .await
        .expect("sent");
    client.flush().await.expect("flushed");
    let violation = next_violation(&mut errors).await;
    assert!(violation.contains(&foreign_consumer), "{violation}");
    // …nor delete or purge the payment stream, nor read other users' replies.
    for api in [
        format!("$JS.API.STREAM.DELETE.{payment_stream}"),
        format!("$JS.API.STREAM.PURGE.{payment_stream}"),
    ] {
        client.publish(api.clone(), "".into()).await.expect("sent");
        client.flush().await.expect("flushed");
        let violation = next_violation(&mut errors).await;
        assert!(violation.contains(&api), "{violation}");
    }
    let _sneak = client.subscribe("_INBOX.>").await.expect("sent");
    client.flush().await.expect("flushed");
    let violation = next_violation(&mut errors).await;
    assert!(
        violation.to_lowercase().contains("subscription"),
        "{violation}"
    );
    assert!(
        js.get_stream(&payment_stream).await.is_ok(),
        "the stream is still there"
    );

    // Each service can do its own work: publish its events (acknowledged by the stream) and
    // consume through its durable consumer.
    let payment = deploy::nats_user(&prefix, "payment-service");
    let settings = |user: &str, service: &str| platform::config::NatsSettings {
        url: nats_url_as(None).into(),
        user: user.to_string(),
        password: credentials.nats_password(service).into(),
        prefix: prefix.clone(),
        stream_max_age: Duration::from_secs(60),
        stream_max_bytes: -1,
        stream_replicas: 1,
        tls_ca_file: String::new(),
    };
    let payment_client = platform::broker::connect(&settings(&payment, "payment-service"))
        .await
        .expect("payment connects");
    let payment_js = platform::broker::jetstream(payment_client);
    payment_js
        .publish(forged.clone(), "{}".into())
        .await
        .expect("published")
        .await
        .expect("acknowledged by the stream");
    assert_eq!(messages_in(&js, &payment_stream).await, 1);
    platform::broker::ensure_stream(
        &payment_js,
        &topology.clone().publishing(&[Source::Payment]),
        Source::Payment,
    )
    .await
    .expect("the payment service manages its own stream");

    let inventory_client = platform::broker::connect(&settings(&inventory, "inventory-service"))
        .await
        .expect("inventory connects");
    let inventory_js = platform::broker::jetstream(inventory_client);
    let subscription = platform::contract::INVENTORY_SERVICE
        .subscriptions
        .iter()
        .find(|s| s.stream() == Source::Payment)
        .expect("inventory consumes payments");
    let stream = inventory_js
        .get_stream_no_info(&payment_stream)
        .await
        .expect("stream handle");
    let config = jetstream::consumer::pull::Config {
        durable_name: Some(subscription.durable_name().to_owned()),
        filter_subjects: topology.filter_subjects(subscription),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ..Default::default()
    };
    stream
        .create_consumer(config.clone())
        .await
        .expect("its own durable consumer");
    // It may delete its own durable consumer (to create it again at a safe position after its
    // filter was changed), and create it again.
    stream
        .delete_consumer(subscription.durable_name())
        .await
        .expect("its own durable consumer deleted");
    let consumer = stream
        .create_consumer(config)
        .await
        .expect("and created again");
    use futures::StreamExt as _;
    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    // The consumer filters payment.failed: the one completed payment is not for it, and the
    // fetch ends empty without a permission error.
    let mut fetched = 0;
    while let Some(message) = batch.next().await {
        message.expect("message").ack().await.expect("ack");
        fetched += 1;
    }
    assert_eq!(fetched, 0);
    inventory_js
        .publish(topology.subject("inventory.stock_reserved"), "{}".into())
        .await
        .expect("published")
        .await
        .expect("the inventory service publishes its own events");

    for source in Source::ALL {
        js.delete_stream(topology.stream_name(source)).await.ok();
    }
    stack::set_nats_users(&state, &prefix, Vec::new())
        .await
        .expect("users removed");
    assert!(
        platform::broker::connect_url(&nats_url_as(Some((
            &payment,
            credentials.nats_password("payment-service")
        ))))
        .await
        .is_err(),
        "a removed user is refused"
    );
}

/// The URL without its query (the socket directory `host=…`): TCP to the host in the URL.
fn over_tcp(url: &str) -> String {
    url.split_once('?')
        .map_or(url, |(base, _)| base)
        .to_string()
}

#[tokio::test]
async fn the_services_can_reach_postgres_and_nats_over_tls_verified_against_the_private_authority()
{
    let ca = std::env::var("ORDERSYS_TLS_CA")
        .expect("ORDERSYS_TLS_CA (the authority `loadtest infra-up` prints)");

    // PostgreSQL, through the services' own pool code, with the server's certificate verified.
    let t = token();
    let (db, role) = (format!("lp_{t}_tls"), format!("lp_{t}_tls"));
    let secret = stack::process::random_secret();
    let url = stack::provision_service_database(&admin_url(), &db, &role, &secret)
        .await
        .expect("database");
    let settings = platform::config::DatabaseSettings {
        url: format!("{}?sslmode=verify-full&sslrootcert={ca}", over_tcp(&url)).into(),
        http_connections: 1,
        worker_connections: 2,
        acquire_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(5),
        lock_timeout: Duration::from_secs(1),
        idle_in_transaction_timeout: Duration::from_secs(5),
    };
    let pools = platform::db::connect(&settings).await.expect("pools");
    let (ssl, version): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pools.http)
            .await
            .expect("pg_stat_ssl");
    assert!(ssl, "the session is encrypted ({version:?})");
    pools.http.close().await;
    pools.workers.close().await;
    // A client that trusts another authority refuses the server.
    let stranger = std::env::temp_dir().join(format!("ordersys-other-ca-{t}.pem"));
    let other = StateDir::at(std::env::temp_dir().join(format!("ordersys-other-{t}"))).unwrap();
    std::fs::copy(stack::tls::ensure(&other).unwrap().ca, &stranger).unwrap();
    let refused = PgConnection::connect(&format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        over_tcp(&url),
        stranger.display()
    ))
    .await;
    assert!(
        refused.is_err(),
        "a certificate from another authority is refused"
    );
    std::fs::remove_dir_all(other.path()).ok();
    std::fs::remove_file(&stranger).ok();
    stack::drop_database(&admin_url(), &db).await.expect("drop");
    admin(&format!("DROP ROLE {role}")).await;

    // NATS, through the services' own connect code.
    let settings = platform::config::NatsSettings {
        url: nats_admin_url().into(),
        user: String::new(),
        password: "".into(),
        prefix: "unused".into(),
        stream_max_age: Duration::from_secs(60),
        stream_max_bytes: -1,
        stream_replicas: 1,
        tls_ca_file: ca,
    };
    let client = platform::broker::connect(&settings)
        .await
        .expect("TLS connection");
    client.flush().await.expect("round trip");
    let cid = client.server_info().client_id;
    let monitor = std::env::var("ORDERSYS_NATS_MONITOR_PORT").unwrap_or_else(|_| "58222".into());
    let connz: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{monitor}/connz?cid={cid}"))
            .await
            .expect("monitoring")
            .json()
            .await
            .expect("connz");
    let tls = connz["connections"][0]["tls_version"]
        .as_str()
        .unwrap_or_default();
    assert!(tls.starts_with("1."), "the connection is TLS: {connz}");
}
