//! `loadtest saga` against the three real services (in-process, fresh databases, real NATS,
//! workers driven by the test): a completed order, a failed-and-compensated one, one stuck
//! behind a dead letter (and completed once the cause is fixed and the letter replayed), and one
//! whose payment consumer does not run — each verdict exactly as it must be; `--stuck` lists the
//! open ones with the same verdicts.

use std::collections::BTreeMap;
use std::time::Duration;

use loadtest::commands::saga::story::{clock, Endpoints, Service};
use loadtest::commands::saga::verdict::Verdict;
use loadtest::commands::saga::{stuck_sagas, SagaReport};
use loadtest::deploy::admin::{AdminClient, Resolution};
use platform::app::Driver;
use platform::saga::Records;
use system_tests::{Options, TestSystem, ADMIN_TOKEN};
use uuid::Uuid;

const PRODUCT: i64 = 1;
/// Orders of this product are refused by inventory's database until the test lifts it.
const POISONED: i64 = 2;
const RICH: i64 = 7;
const POOR: i64 = 8;

fn endpoints(system: &TestSystem) -> Endpoints {
    Endpoints {
        order: system.order.admin_url.clone(),
        inventory: system.inventory.admin_url.clone(),
        payment: system.payment.admin_url.clone(),
    }
}

async fn place(system: &TestSystem, buyer: i64, product: i64) -> Uuid {
    let id = system.accepted_order(buyer, product, 1).await;
    id.parse().expect("an order id")
}

/// Runs the relays and consumers of these services only, until a round finds nothing.
async fn drive(drivers: &[&Driver]) {
    for _ in 0..50 {
        let mut work = 0;
        for driver in drivers {
            work += driver.step().await.expect("background step");
        }
        if work == 0 {
            return;
        }
    }
    panic!("the services did not go quiet");
}

#[tokio::test]
async fn each_saga_gets_its_verdict_and_the_open_ones_are_listed() {
    let system = TestSystem::start(Options::default()).await;
    system.create_product(PRODUCT, 250, 100).await;
    system.create_product(POISONED, 250, 100).await;
    system.open_account(RICH, 1_000_000).await;
    system.open_account(POOR, 100).await;
    let admin = AdminClient::new(ADMIN_TOKEN).expect("a client");
    let endpoints = endpoints(&system);

    // A cause of permanent failure in inventory's database for one order (as bad data would
    // be): its reservation breaks a constraint, so its OrderCreated is dead-lettered.
    let poisoned = place(&system, RICH, POISONED).await;
    sqlx::query(&format!(
        "ALTER TABLE reservations ADD CONSTRAINT saga_test_poison CHECK (order_id <> '{poisoned}')"
    ))
    .execute(&system.inventory.pool)
    .await
    .expect("constraint added");
    let completed = place(&system, RICH, PRODUCT).await;
    let compensated = place(&system, POOR, PRODUCT).await;
    system.settle().await;

    let report = SagaReport::fetch(&admin, &endpoints, completed).await;
    assert_eq!(report.verdict, Verdict::Completed, "{}", report.text());
    assert_eq!(report.line, "final: COMPLETED");
    assert_eq!(report.remedy, None);
    let text = report.text();
    for seen in [
        "order placed: 1 × product 1 for buyer 7 (PENDING)",
        "inventory-service-orders took OrderCreated",
        "stock reserved: 1 × product 1, 250 cents",
        "payment-service-reservations took StockReserved",
        "charge of 250 cents: SUCCEEDED",
        "order final: COMPLETED",
    ] {
        assert!(text.contains(seen), "{seen:?} missing from\n{text}");
    }
    let times: Vec<_> = report.timeline.iter().map(|e| e.at).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{text}");

    let report = SagaReport::fetch(&admin, &endpoints, compensated).await;
    assert_eq!(
        report.line,
        "final: FAILED (INSUFFICIENT_FUNDS), stock released",
        "{}",
        report.text()
    );
    for seen in [
        "charge of 250 cents: FAILED (INSUFFICIENT_FUNDS)",
        "inventory-service-payments took PaymentFailed",
        "stock released (compensation)",
        "inventory's release of the stock noted: saga closed",
    ] {
        assert!(
            report.text().contains(seen),
            "{seen:?} missing from\n{}",
            report.text()
        );
    }

    let report = SagaReport::fetch(&admin, &endpoints, poisoned).await;
    let letters = &report
        .story
        .part(Service::Inventory)
        .expect("inventory told")
        .dead_letters;
    assert_eq!(letters.len(), 1, "{}", report.text());
    let letter = letters[0].letter.clone();
    assert_eq!(
        (letter.kind.as_str(), letter.status.as_str()),
        ("rejected", "open")
    );
    assert_eq!(
        report.verdict,
        Verdict::Stuck {
            dead_letter: letter.id,
            service: Service::Inventory,
            kind: "rejected".into(),
            reason: letter.reason.clone(),
            others: 0,
        },
        "{}",
        report.text()
    );
    assert_eq!(
        report.line,
        format!(
            "stuck: dead letter {} in inventory service ({})",
            letter.id, letter.reason
        )
    );
    let replay = format!(
        "loadtest dead-letters replay --service inventory --id {}",
        letter.id
    );
    assert_eq!(
        report.remedy.as_ref().map(|r| r.command.as_str()),
        Some(replay.as_str())
    );

    // The payment service's consumer does not run: the order is reserved and waits for it.
    let waiting = place(&system, RICH, PRODUCT).await;
    drive(&[&system.order.driver, &system.inventory.driver]).await;
    let report = SagaReport::fetch(&admin, &endpoints, waiting).await;
    let reserved_at = match &report.story.part(Service::Inventory).expect("told").records {
        Records::Inventory {
            reservation: Some(r),
            ..
        } => r.reserved_at,
        other => panic!("no reservation: {other:?}"),
    };
    assert_eq!(
        report.verdict,
        Verdict::Waiting {
            on: Service::Payment,
            since: reserved_at,
            why: "payment has not charged the reserved order".into(),
        },
        "{}",
        report.text()
    );
    let expected = format!("waiting for payment service since {} (", clock(reserved_at));
    assert!(report.line.starts_with(&expected), "{}", report.line);
    assert!(report.text().contains(&format!("verdict: {expected}")));
    assert_eq!(
        report.remedy.as_ref().map(|r| r.command.clone()),
        Some(format!("curl -s {}/ready", system.payment.admin_url))
    );

    // `--stuck`: the two open sagas, oldest first, with the same verdicts.
    let listed = stuck_sagas(&admin, &endpoints, Duration::ZERO, 100)
        .await
        .expect("open sagas");
    let verdicts: BTreeMap<Uuid, String> = listed
        .iter()
        .map(|s| (s.order_id, s.line.clone()))
        .collect();
    assert_eq!(verdicts.len(), 2, "{verdicts:?}");
    assert!(verdicts[&poisoned].starts_with("stuck: dead letter"));
    assert!(verdicts[&waiting].starts_with("waiting for payment service since"));
    assert_eq!(listed[0].order_id, poisoned, "oldest first");
    let none_yet = stuck_sagas(&admin, &endpoints, Duration::from_secs(3600), 100)
        .await
        .expect("open sagas");
    assert!(none_yet.is_empty(), "{none_yet:?}");

    // The cause fixed and the letter replayed (the command the verdict gave), the saga ends.
    sqlx::query("ALTER TABLE reservations DROP CONSTRAINT saga_test_poison")
        .execute(&system.inventory.pool)
        .await
        .expect("constraint dropped");
    admin
        .resolve(&endpoints.inventory, letter.id, Resolution::Replay)
        .await
        .expect("replayed");
    system.settle().await;
    for order in [poisoned, waiting] {
        let report = SagaReport::fetch(&admin, &endpoints, order).await;
        assert_eq!(report.verdict, Verdict::Completed, "{}", report.text());
    }
    let report = SagaReport::fetch(&admin, &endpoints, poisoned).await;
    assert!(
        report.text().contains(&format!(
            "dead letter #{}: replay by loadtest done",
            letter.id
        )),
        "{}",
        report.text()
    );
}

#[tokio::test]
async fn the_saga_routes_need_the_admin_token_and_are_in_the_admin_documents() {
    let system = TestSystem::start(Options::default()).await;
    let unknown = Uuid::now_v7();
    for service in [&system.order, &system.inventory, &system.payment] {
        let url = format!("{}/admin/sagas/{unknown}", service.admin_url);
        let anonymous = system.http.get(&url).send().await.expect("answer");
        assert_eq!(anonymous.status(), 401);
        let document: serde_json::Value = system
            .http
            .get(format!("{}/openapi.json", service.admin_url))
            .send()
            .await
            .expect("document")
            .json()
            .await
            .expect("JSON");
        assert!(document["paths"]["/admin/sagas/{order_id}"]["get"].is_object());
        assert!(document["paths"]["/admin/dead-letters"]["get"].is_object());
        let lists = document["paths"]["/admin/sagas"]["get"].is_object();
        assert_eq!(lists, service.admin_url == system.order.admin_url);
    }
    // An order nobody knows has an empty story, and the verdict says so.
    let admin = AdminClient::new(ADMIN_TOKEN).expect("a client");
    let report = SagaReport::fetch(&admin, &endpoints(&system), unknown).await;
    assert_eq!(report.verdict, Verdict::Unknown, "{}", report.text());
    let (status, _) = admin
        .send(
            reqwest::Method::GET,
            &format!("{}/admin/sagas?older_than=1x", system.order.admin_url),
            None,
        )
        .await
        .expect("answer");
    assert_eq!(status, 400);
}
