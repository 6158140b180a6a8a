//! The fault schedule's unit tests: which faults a scenario may name and where they hit.

use super::*;
use crate::plan::RunPlan;
use platform::events::Source;

const BASE: &str = r#"
    name = "chaos-unit"
    [load]
    stages = [{ duration = "60s", target = 10 }]
    [data]
    users = 2
    initial_balance_cents = 1000
    products = [{ id = 1, stock = 10, price_cents = 100 }]
    [deploy]
    replicas = 2
    consumer_ack_wait = "10s"
"#;

fn with_faults(faults: &str) -> anyhow::Result<Scenario> {
    RunPlan::from_scenario_toml(&format!("{BASE}\n{faults}")).map(|plan| plan.scenario)
}

fn fault(at: &str, kind: &str, target: &str, duration: &str) -> String {
    format!(
        "[[faults]]\nat = \"{at}\"\nkind = \"{kind}\"\ntarget = \"{target}\"\nduration = \"{duration}\"\n"
    )
}

#[test]
fn parses_every_kind_and_orders_by_start() {
    let text = [
        fault("40s", "broker-unreachable", "nats", "5s"),
        fault("5s", "kill", "order-service-2", "3s"),
        fault("30s", "stop-postgres", "postgres", "4s"),
        fault("10s", "pause", "payment", "12s"),
        fault("25s", "kill-nats", "nats", "2s"),
    ]
    .concat();
    let scenario = with_faults(&text).expect("valid");
    let faults = schedule(&scenario).expect("valid plan");
    let order: Vec<(u64, FaultKind)> = faults.iter().map(|f| (f.at.as_secs(), f.kind)).collect();
    assert_eq!(
        order,
        vec![
            (5, FaultKind::Kill),
            (10, FaultKind::Pause),
            (25, FaultKind::KillNats),
            (30, FaultKind::StopPostgres),
            (40, FaultKind::BrokerUnreachable),
        ]
    );
    assert_eq!(faults[0].hits.instances(), ["order-service-2"]);
    assert_eq!(
        faults[1].hits.instances(),
        ["payment-service-1", "payment-service-2"]
    );
    assert!(faults[2].hits.instances().is_empty());
    assert_eq!(faults[1].end(), Duration::from_secs(22));
}

#[test]
fn rejects_unknown_kinds_targets_missing_durations_and_overlaps() {
    let text = [
        fault("1s", "explode", "order", "1s"),
        fault("2s", "kill", "order-service-3", "1s"),
        fault("3s", "kill", "shipping", "1s"),
        fault("4s", "kill-nats", "postgres", "1s"),
        "[[faults]]\nat = \"5s\"\nkind = \"pause\"\ntarget = \"order\"\n".to_string(),
        fault("10s", "kill", "payment-1", "10s"),
        fault("15s", "stop-postgres", "postgres", "2s"),
    ]
    .concat();
    let message = with_faults(&text).expect_err("invalid").to_string();
    for expected in [
        "unknown kind \"explode\"",
        "replica 3 does not exist",
        "unknown target \"shipping\"",
        "target must be \"nats\"",
        "needs a duration",
        "starts before faults[5]",
    ] {
        assert!(message.contains(expected), "{message} lacks {expected}");
    }
}

#[test]
fn rejects_bad_replicas_and_ack_wait() {
    let too_many = BASE.replace("replicas = 2", "replicas = 9");
    let message = RunPlan::from_scenario_toml(&too_many)
        .expect_err("9 replicas")
        .to_string();
    assert!(message.contains("deploy.replicas"), "{message}");
    let short = BASE.replace("\"10s\"", "\"500ms\"");
    let message = RunPlan::from_scenario_toml(&short)
        .expect_err("short ack wait")
        .to_string();
    assert!(message.contains("consumer_ack_wait"), "{message}");
}

#[test]
fn replication_carries_replicas_and_ack_wait() {
    let scenario = with_faults("").expect("valid");
    let replication = replication(&scenario);
    assert_eq!(replication.replicas, 2);
    assert_eq!(
        replication.extra_env,
        vec![("APP_CONSUMER__ACK_WAIT".to_string(), "10s".to_string())]
    );
}

#[test]
fn instances_get_their_own_names_and_ports_and_share_the_rest() {
    let deployment = deploy::Deployment {
        databases: deploy::DatabaseUrls::on("postgres://postgres@127.0.0.1:1/postgres"),
        nats_url: "nats://127.0.0.1:2".into(),
        nats_users: false,
        prefix: "run1".into(),
        credentials: deploy::Credentials::random(),
        decline_rate: 0.05,
        placement: None,
        stream_replicas: 1,
    };
    let specs = deploy::instance_specs(
        &deployment,
        &Replication {
            replicas: 2,
            extra_env: vec![
                ("APP_CONSUMER__ACK_WAIT".into(), "10s".into()),
                ("APP_REDRIVE__AFTER".into(), "2s".into()),
            ],
        },
    );
    let names: Vec<(&str, u16)> = specs.iter().map(|s| (s.name.as_str(), s.port)).collect();
    assert_eq!(
        names,
        vec![
            ("order-service-1", 18080),
            ("inventory-service-1", 18081),
            ("payment-service-1", 18082),
            ("order-service-2", 18090),
            ("inventory-service-2", 18091),
            ("payment-service-2", 18092),
        ]
    );
    let env = |spec: &deploy::services::ServiceSpec, key: &str| {
        spec.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(env(&specs[3], "APP_HTTP__PORT").as_deref(), Some("18090"));
    assert_eq!(
        env(&specs[0], "APP_DATABASE__URL"),
        env(&specs[3], "APP_DATABASE__URL")
    );
    assert!(specs[3].binary.ends_with("debug/order-service"));
    assert!(specs
        .iter()
        .all(|s| env(s, "APP_CONSUMER__ACK_WAIT").as_deref() == Some("10s")));
    assert!(
        specs.iter().all(|s| env(s, "APP_REDRIVE__AFTER").is_some()
            == deploy::is_instance_of(s, "order-service")),
        "the order service's own settings go to it alone (the others refuse them)"
    );
    assert_eq!(
        deploy::order_urls(&specs),
        vec![
            "http://127.0.0.1:18080/orders".to_string(),
            "http://127.0.0.1:18090/orders".to_string()
        ]
    );
    assert!(specs.iter().all(|s| s.netns.is_none()
        && env(s, "APP_HTTP__HOST").is_none()
        && env(s, "APP_NATS__STREAM_REPLICAS").as_deref() == Some("1")));
    let single = deploy::instance_specs(&deployment, &Replication::default());
    let names: Vec<&str> = single.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["order-service", "inventory-service", "payment-service"]
    );
}

#[test]
fn the_healing_faults_resolve_their_targets() {
    let text = [
        fault("1s", "delete-consumer", "inventory-service-orders", "1s"),
        fault("3s", "delete-consumer", "payment", "1s"),
        fault("5s", "delete-stream", "order", "2s"),
        fault("10s", "delete-stream", "payment", "2s"),
        fault("15s", "poison", "order", "2s"),
        fault("20s", "panic", "inventory", "2s"),
        fault("25s", "pool-starve", "order", "2s"),
        fault("30s", "lock-hold", "inventory", "2s"),
    ]
    .concat();
    let faults = schedule(&with_faults(&text).expect("valid")).expect("valid plan");
    assert_eq!(
        faults[0].hits,
        Hits::Consumers(vec![(Source::Order, "inventory-service-orders".into())])
    );
    assert_eq!(
        faults[1].hits,
        Hits::Consumers(vec![(
            Source::Inventory,
            "payment-service-reservations".into()
        )])
    );
    // The order stream's consumer is inventory; the payment stream's, besides the order
    // service (which keeps taking orders), inventory too.
    for (fault, source) in [(&faults[2], Source::Order), (&faults[3], Source::Payment)] {
        assert_eq!(
            fault.hits,
            Hits::Stream {
                source,
                paused: vec![
                    "inventory-service-1".to_string(),
                    "inventory-service-2".to_string()
                ]
            }
        );
    }
    assert!(matches!(
        faults[4].hits,
        Hits::Service {
            name: "order-service",
            ..
        }
    ));
    assert_eq!(
        faults[5].hits.instances(),
        ["inventory-service-1", "inventory-service-2"]
    );
    assert_eq!(
        faults[6].hits.instances(),
        ["order-service-1", "order-service-2"]
    );
}

#[test]
fn the_healing_faults_refuse_targets_they_cannot_hit() {
    let text = [
        fault("1s", "delete-consumer", "shipping-orders", "1s"),
        fault("3s", "delete-stream", "orders", "1s"),
        fault("5s", "panic", "payment", "1s"),
        fault("7s", "pool-starve", "inventory", "1s"),
        fault("9s", "lock-hold", "order", "1s"),
        fault("11s", "poison", "nats", "1s"),
    ]
    .concat();
    let message = with_faults(&text).expect_err("invalid").to_string();
    for expected in [
        "unknown durable consumer \"shipping-orders\"",
        "unknown stream \"orders\"",
        "target must be \"inventory\" (got \"payment\")",
        "target must be \"order\" (got \"inventory\")",
        "target must be \"inventory\" (got \"order\")",
        "unknown service \"nats\"",
    ] {
        assert!(message.contains(expected), "{message} lacks {expected}");
    }
}

#[test]
fn deploy_settings_become_service_environment() {
    let scenario = Scenario::from_toml_str(&BASE.replace(
        "consumer_ack_wait = \"10s\"",
        "consumer_ack_wait = \"10s\"\nstall_after = \"5s\"\nredrive_after = \"1500ms\"",
    ))
    .expect("valid");
    assert_eq!(
        replication(&scenario).extra_env,
        vec![
            ("APP_CONSUMER__ACK_WAIT".to_string(), "10s".to_string()),
            ("APP_WORKERS__STALL_AFTER".to_string(), "5s".to_string()),
            ("APP_REDRIVE__AFTER".to_string(), "1s500ms".to_string()),
        ]
    );
}

#[test]
fn kinds_round_trip() {
    for kind in FaultKind::ALL {
        assert_eq!(FaultKind::parse(kind.name()), Some(kind));
    }
    assert_eq!(FaultKind::parse("restart"), None);
}
