//! The parts of a deployment that exist before any service runs: the three services' names and
//! ports, their databases (each owned by the service's own role, plus a read-only audit role),
//! their NATS users (permissions from the event contract), and the secrets all of these use
//! (`credentials`). Starting the services themselves is the load-test CLI's (`loadtest::deploy`).

use anyhow::{Context, Result};
use platform::broker::Topology;
use platform::broker_access::BrokerPermissions;
use platform::contract;

pub mod credentials;

pub use credentials::{
    credentials_file, database_role, nats_user, recorded_credentials, recorded_prefix,
    write_credentials, Credentials, AUDIT_ROLE,
};

pub const ORDERS_DB: &str = "ordersys_orders";
pub const INVENTORY_DB: &str = "ordersys_inventory";
pub const PAYMENTS_DB: &str = "ordersys_payments";

pub const ORDER_PORT: u16 = platform::dev::ORDER_PORT;
pub const INVENTORY_PORT: u16 = platform::dev::INVENTORY_PORT;
pub const PAYMENT_PORT: u16 = platform::dev::PAYMENT_PORT;

/// The three services: (instance name = binary name, port), in the contract's order
/// (`platform::contract::SERVICES`; a test checks it).
pub const SERVICES: [(&str, u16); 3] = [
    ("order-service", ORDER_PORT),
    ("inventory-service", INVENTORY_PORT),
    ("payment-service", PAYMENT_PORT),
];

/// The database of each service, in [`SERVICES`] order.
const SERVICE_DATABASES: [&str; 3] = [ORDERS_DB, INVENTORY_DB, PAYMENTS_DB];

pub fn base_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Where the three services' databases are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseUrls {
    pub orders: String,
    pub inventory: String,
    pub payments: String,
}

impl DatabaseUrls {
    /// The URLs of our three databases on the server of `admin_url` (nothing is created).
    pub fn on(admin_url: &str) -> DatabaseUrls {
        DatabaseUrls {
            orders: crate::database_url(admin_url, ORDERS_DB),
            inventory: crate::database_url(admin_url, INVENTORY_DB),
            payments: crate::database_url(admin_url, PAYMENTS_DB),
        }
    }

    /// The same, logging in as the read-only audit role.
    pub fn for_audit(admin_url: &str, credentials: &Credentials) -> DatabaseUrls {
        let url =
            |db| crate::database_url_as(admin_url, db, AUDIT_ROLE, &credentials.audit_password);
        DatabaseUrls {
            orders: url(ORDERS_DB),
            inventory: url(INVENTORY_DB),
            payments: url(PAYMENTS_DB),
        }
    }
}

/// The admin URL of the stack's PostgreSQL without starting anything: `ORDERSYS_DATABASE_URL`,
/// else our own instance on `ORDERSYS_PG_PORT` (default 55432).
pub fn default_admin_url() -> String {
    let options = crate::InfraOptions::default();
    options
        .database_url
        .unwrap_or_else(|| format!("postgres://postgres@127.0.0.1:{}/postgres", options.pg_port))
}

/// Creates the three databases, each owned by its service's role (with this deployment's
/// password), and the read-only audit role; with `fresh`, drops them first so nothing of an
/// earlier run remains. Returns the URLs the services log in with.
pub async fn prepare_databases(
    admin_url: &str,
    fresh: bool,
    credentials: &Credentials,
) -> Result<DatabaseUrls> {
    let mut urls = Vec::new();
    for ((service, _), name) in SERVICES.iter().zip(SERVICE_DATABASES) {
        if fresh {
            crate::drop_database(admin_url, name)
                .await
                .with_context(|| format!("dropping database {name}"))?;
        }
        let url = crate::provision_service_database(
            admin_url,
            name,
            &database_role(service),
            credentials.database_password(service),
        )
        .await
        .with_context(|| format!("preparing database {name}"))?;
        urls.push(url);
    }
    crate::provision_reader(
        admin_url,
        AUDIT_ROLE,
        &credentials.audit_password,
        &SERVICE_DATABASES,
    )
    .await?;
    let [orders, inventory, payments]: [String; 3] = urls
        .try_into()
        .map_err(|_| anyhow::anyhow!("three databases"))?;
    Ok(DatabaseUrls {
        orders,
        inventory,
        payments,
    })
}

/// What a service's NATS user may do, derived from its declaration in the event contract (which
/// the service runs with).
pub fn broker_permissions(prefix: &str, service: &str) -> BrokerPermissions {
    let spec = contract::service_named(service)
        .unwrap_or_else(|| panic!("{service:?} is not one of our services"));
    BrokerPermissions::for_service(&Topology::new(prefix), spec, &nats_user(prefix, service))
}

/// The NATS users of a deployment's three services.
pub fn nats_users(prefix: &str, credentials: &Credentials) -> Vec<crate::NatsUser> {
    SERVICES
        .iter()
        .map(|(service, _)| {
            crate::NatsUser::new(
                &nats_user(prefix, service),
                credentials.nats_password(service),
                broker_permissions(prefix, service),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_are_the_contracts() {
        let names: Vec<&str> = SERVICES.iter().map(|(name, _)| *name).collect();
        let declared: Vec<&str> = contract::SERVICES.iter().map(|s| s.name).collect();
        assert_eq!(names, declared);
    }

    #[test]
    fn each_service_user_may_publish_only_its_own_events() {
        let order = broker_permissions("shop", "order-service");
        assert!(order.publish.contains(&"shop.order.created".to_string()));
        assert!(
            !order
                .publish
                .iter()
                .any(|s| s.starts_with("shop.") && s.ends_with('>')),
            "no wildcard: only the contract's subjects"
        );
        assert!(!order.publish.iter().any(|s| s.starts_with("shop.payment")));
        let inventory = broker_permissions("shop", "inventory-service");
        assert!(!inventory
            .publish
            .iter()
            .any(|s| s.starts_with("shop.payment")));
        assert!(inventory.publish.contains(
            &"$JS.API.CONSUMER.MSG.NEXT.SHOP_PAYMENT.inventory-service-payments".to_string()
        ));
    }

    #[test]
    fn database_urls_share_the_server() {
        let urls = DatabaseUrls::on("postgres://postgres@127.0.0.1:55432/postgres");
        assert_eq!(
            urls.orders,
            "postgres://postgres@127.0.0.1:55432/ordersys_orders"
        );
        assert_eq!(
            urls.payments,
            "postgres://postgres@127.0.0.1:55432/ordersys_payments"
        );
    }
}
