//! The real binary refuses to start, before it connects to anything, when its settings are
//! wrong: a variable or a key of its settings file that is no setting (named, with the setting
//! meant), a duration without its unit, or a built-in or weak secret while it would listen
//! beyond loopback.

use std::process::{Command, Output};

fn start(env: &[(&str, &str)]) -> Output {
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

fn refused(output: &Output) -> String {
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_misspelt_variable_stops_the_binary_naming_it() {
    let text = refused(&start(&[("APP_HTTP__PORTT", "1")]));
    assert!(
        text.contains(
            "unknown setting `http.portt` (from APP_HTTP__PORTT); did you mean `http.port`?"
        ),
        "{text}"
    );
}

#[test]
fn a_key_of_the_file_that_is_no_setting_stops_the_binary_naming_it() {
    let path = std::env::temp_dir().join(format!("order-settings-{}.toml", std::process::id()));
    std::fs::write(&path, "[orders]\ncommit_deadline_ms = 2000\n").expect("write the file");
    let output = start(&[("APP_CONFIG_FILE", path.to_str().expect("a UTF-8 path"))]);
    std::fs::remove_file(&path).ok();
    let text = refused(&output);
    assert!(
        text.contains("unknown setting `orders.commit_deadline_ms`")
            && text.contains("did you mean `orders.commit_deadline`?"),
        "{text}"
    );
}

#[test]
fn a_duration_without_its_unit_stops_the_binary_naming_the_key() {
    for (variable, key) in [
        ("APP_ORDERS__COMMIT_DEADLINE", "orders.commit_deadline"),
        // A common section, flattened into the service's settings.
        ("APP_CONSUMER__ACK_WAIT", "consumer.ack_wait"),
    ] {
        let text = refused(&start(&[(variable, "2000")]));
        assert!(text.contains(key), "{text}");
    }
}
