//! Where the tests' PostgreSQL and NATS are: the servers `ORDERSYS_DATABASE_URL` and
//! `ORDERSYS_NATS_URL` name (what `loadtest infra-up` prints and `make test` exports), else the
//! stack's private instances (`stack::ensure_infra`: those of the state directory, started if
//! they are not running, left running for the next test run; `loadtest down` stops them).

use platform::testing::unique_token;
use tokio::sync::OnceCell;

#[derive(Debug, Clone)]
pub struct Servers {
    /// The superuser's URL of the `postgres` database: create test databases from it.
    pub admin_database_url: String,
    pub nats_url: String,
}

static SERVERS: OnceCell<Servers> = OnceCell::const_new();

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The servers, found once per test binary.
pub async fn servers() -> &'static Servers {
    SERVERS
        .get_or_init(|| async {
            // Both given: used as they are, without the stack's lock or checks (`make test`).
            if let (Some(admin_database_url), Some(nats_url)) =
                (var("ORDERSYS_DATABASE_URL"), var("ORDERSYS_NATS_URL"))
            {
                return Servers {
                    admin_database_url,
                    nats_url,
                };
            }
            let state = stack::StateDir::locate().unwrap_or_else(|e| panic!("{e:#}"));
            let infra = stack::ensure_infra(&state).await.unwrap_or_else(|e| {
                panic!("no PostgreSQL and NATS for the tests ({e:#}); set ORDERSYS_DATABASE_URL and ORDERSYS_NATS_URL, or run `loadtest infra-up`")
            });
            Servers {
                admin_database_url: infra.admin_database_url,
                nats_url: infra.nats_url,
            }
        })
        .await
}

pub async fn admin_database_url() -> String {
    servers().await.admin_database_url.clone()
}

pub async fn nats_url() -> String {
    servers().await.nats_url.clone()
}

/// Creates an empty database of a unique name beginning with `label`; returns its URL.
pub async fn fresh_database(label: &str) -> String {
    let name = format!("{label}_{}", unique_token());
    stack::create_database(&servers().await.admin_database_url, &name)
        .await
        .unwrap_or_else(|e| panic!("creating test database {name}: {e:#}"))
}
