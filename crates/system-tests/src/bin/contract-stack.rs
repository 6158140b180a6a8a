//! The three services for an outside contract checker (`scripts/test.sh` runs schemathesis
//! against them): started in-process like the integration tests — fresh databases, a unique
//! NATS prefix, ports chosen by the OS, real workers — so that nothing of a load-test stack
//! (fixed ports, `.run/` state) is touched. Prints `NAME=value` lines (URLs and credentials),
//! then `READY`, and serves until SIGTERM or Ctrl-C.

use system_tests::{Options, TestSystem, ADMIN_TOKEN};

#[tokio::main]
async fn main() {
    let system = TestSystem::start(Options {
        workers: true,
        ..Options::default()
    })
    .await;
    let lines = [
        ("ORDER_URL", system.order.base_url.as_str()),
        ("ORDER_ADMIN_URL", system.order.admin_url.as_str()),
        ("INVENTORY_URL", system.inventory.base_url.as_str()),
        ("INVENTORY_ADMIN_URL", system.inventory.admin_url.as_str()),
        ("PAYMENT_URL", system.payment.base_url.as_str()),
        ("PAYMENT_ADMIN_URL", system.payment.admin_url.as_str()),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    for (name, value) in lines {
        println!("{name}={value}");
    }
    // Buyer 7, valid for the run.
    println!("BUYER_TOKEN={}", system.token(7));
    println!("READY");
    platform::app::shutdown_signal().await;
}
