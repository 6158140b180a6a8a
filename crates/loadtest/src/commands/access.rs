//! `loadtest access`: the credentials and rights of a deployment on servers we do not run —
//! for each service its PostgreSQL role and NATS user, with fresh random passwords, as SQL, a
//! NATS `authorization` block and the services' environment. The NATS permissions are derived
//! from the services' own code, exactly as the CLI grants them on its private server.

use crate::deploy::{
    self, Credentials, AUDIT_ROLE, INVENTORY_DB, ORDERS_DB, PAYMENTS_DB, SERVICES,
};

/// Prints everything an operator needs to give deployment `prefix` least-privilege access.
pub fn print(prefix: &str) {
    let credentials = Credentials::random();
    let databases = [ORDERS_DB, INVENTORY_DB, PAYMENTS_DB];
    println!("-- PostgreSQL, as a superuser (pg_hba.conf: scram-sha-256 for these roles)");
    for ((service, _), database) in SERVICES.iter().zip(databases) {
        let role = deploy::database_role(service);
        println!(
            "CREATE ROLE {role} LOGIN PASSWORD '{}';\nCREATE DATABASE {database} OWNER {role};\n\
             REVOKE ALL ON DATABASE {database} FROM PUBLIC;",
            credentials.database_password(service)
        );
    }
    println!(
        "CREATE ROLE {AUDIT_ROLE} LOGIN PASSWORD '{}';\nGRANT pg_read_all_data TO {AUDIT_ROLE};\n\
         GRANT CONNECT ON DATABASE {} TO {AUDIT_ROLE};\n",
        credentials.audit_password,
        databases.join(", ")
    );
    println!("# NATS server configuration (add your own administrator user to the list)");
    print!(
        "{}",
        stack::nats_authorization_text(prefix, &deploy::nats_users(prefix, &credentials))
    );
    println!("\n# Each service's environment (besides APP_DATABASE__URL's host and APP_NATS__URL)");
    for ((service, _), database) in SERVICES.iter().zip(databases) {
        println!(
            "{service}: APP_NATS__PREFIX={prefix} APP_NATS__USER={} APP_NATS__PASSWORD={} \
             APP_DATABASE__URL=postgres://{}:{}@<host>:5432/{}",
            deploy::nats_user(prefix, service),
            credentials.nats_password(service),
            deploy::database_role(service),
            credentials.database_password(service),
            database,
        );
    }
    println!(
        "all three: APP_AUTH__JWT_SECRET={} APP_AUTH__ADMIN_TOKEN={}",
        credentials.jwt_secret, credentials.admin_token
    );
}
