//! The real binary refuses to start, before it connects to anything, when it would listen
//! beyond loopback with a built-in or weak secret.

use std::process::Command;

fn start(env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_order-service"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        // Nothing listens here: a binary that got past its checks would fail differently.
        .env("APP_DATABASE__URL", "postgres://nobody@127.0.0.1:9/none")
        .env("APP_NATS__URL", "nats://127.0.0.1:9")
        .output()
        .expect("the binary runs")
}

#[test]
fn the_order_service_refuses_built_in_or_short_secrets_on_a_public_address() {
    let built_in = start(&[("APP_HTTP__HOST", "0.0.0.0")]);
    assert!(!built_in.status.success());
    let text = String::from_utf8_lossy(&built_in.stderr);
    assert!(
        text.contains("auth.jwt_secret is a built-in development value"),
        "{text}"
    );

    let strong = "0123456789abcdef0123456789abcdef";
    let short_admin = start(&[
        ("APP_HTTP__HOST", "0.0.0.0"),
        ("APP_AUTH__JWT_SECRET", strong),
        ("APP_AUTH__ADMIN_TOKEN", "letmein"),
    ]);
    assert!(!short_admin.status.success());
    let text = String::from_utf8_lossy(&short_admin.stderr);
    assert!(
        text.contains("auth.admin_token is 7 bytes long, shorter than 32"),
        "{text}"
    );
}
