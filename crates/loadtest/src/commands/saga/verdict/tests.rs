//! The verdict's unit tests: every case of a story, built by hand.

use super::*;
use platform::dead_letters::DeadLetter;
use platform::saga::{
    ChargeRecord, OrderDeadLetter, Records, RejectionRecord, ReservationRecord, SagaPart,
    WaitingEvent,
};
use uuid::Uuid;

/// A moment `secs` after the story began.
fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("a time")
}

fn told(records: Records) -> Told {
    Told::Part(Box::new(SagaPart {
        service: records.service().to_owned(),
        order_id: Uuid::nil(),
        read_at: t(1000),
        records,
        outbox: Vec::new(),
        inbox: Vec::new(),
        dead_letters: Vec::new(),
    }))
}

fn order(status: &str, reason: Option<&str>, open: bool) -> OrderRecord {
    OrderRecord {
        user_id: 7,
        product_id: 1,
        quantity: 2,
        status: status.to_owned(),
        failure_reason: reason.map(str::to_owned),
        amount_cents: None,
        created_at: t(0),
        updated_at: t(0),
        finalized_at: (!open || status != "PENDING").then_some(t(9)),
        stock_released_at: None,
        redrive_count: 0,
        redriven_at: None,
        open,
    }
}

fn reservation(status: &str) -> ReservationRecord {
    ReservationRecord {
        product_id: 1,
        quantity: 2,
        amount_cents: 500,
        status: status.to_owned(),
        reserved_at: t(2),
        released_at: (status == "RELEASED").then_some(t(6)),
    }
}

fn charge(status: &str) -> ChargeRecord {
    ChargeRecord {
        amount_cents: 500,
        status: status.to_owned(),
        failure_reason: (status == "FAILED").then(|| "PAYMENT_DECLINED".to_owned()),
        created_at: t(4),
    }
}

fn story(
    order: Option<OrderRecord>,
    reservation: Option<ReservationRecord>,
    rejection: Option<RejectionRecord>,
    charge: Option<ChargeRecord>,
) -> Story {
    Story {
        order_id: Uuid::nil(),
        order: told(Records::Order { order }),
        inventory: told(Records::Inventory {
            reservation,
            rejection,
        }),
        payment: told(Records::Payment { charge }),
    }
}

fn part_mut(story: &mut Story, service: Service) -> &mut SagaPart {
    let told = match service {
        Service::Order => &mut story.order,
        Service::Inventory => &mut story.inventory,
        Service::Payment => &mut story.payment,
    };
    match told {
        Told::Part(part) => part,
        Told::Unanswered(_) => panic!("no part"),
    }
}

fn waiting_in(story: &mut Story, service: Service, event_type: &str, at: DateTime<Utc>) {
    let outbox = &mut part_mut(story, service).outbox;
    outbox.push(WaitingEvent {
        seq: outbox.len() as i64 + 1,
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        subject: "shop.x".to_owned(),
        created_at: at,
    });
}

fn letter(story: &mut Story, service: Service, id: i64, suffix: &str, status: &str, kind: &str) {
    part_mut(story, service).dead_letters.push(OrderDeadLetter {
        letter: DeadLetter {
            id,
            consumer: format!("{}-service-x", service.name()),
            subject: format!("shop.{suffix}"),
            message_id: None,
            event_id: Some(Uuid::now_v7()),
            kind: kind.to_owned(),
            deliveries: 1,
            reason: format!("letter {id} failed"),
            status: status.to_owned(),
            failed_at: t(id),
            resolved_at: (status != "open").then_some(t(50)),
            resolved_by: (status != "open").then(|| "alice".to_owned()),
        },
        actions: Vec::new(),
    });
}

fn waiting(on: Service, since: DateTime<Utc>, why: &str) -> Verdict {
    Verdict::Waiting {
        on,
        since,
        why: why.to_owned(),
    }
}

fn endpoints() -> Endpoints {
    Endpoints {
        order: "http://o".into(),
        inventory: "http://i".into(),
        payment: "http://p".into(),
    }
}

#[test]
fn a_closed_saga_is_final_whatever_else_is_recorded() {
    let mut done = story(
        Some(order("COMPLETED", None, false)),
        Some(reservation("ACTIVE")),
        None,
        Some(charge("SUCCEEDED")),
    );
    // A re-drive's copy parked after the order completed changes nothing.
    letter(
        &mut done,
        Service::Inventory,
        3,
        "order.created",
        "open",
        "panic",
    );
    assert_eq!(verdict(&done), Verdict::Completed);
    assert_eq!(verdict(&done).line(t(100)), "final: COMPLETED");
    assert_eq!(verdict(&done).remedy(&endpoints()), None);

    let mut declined = order("FAILED", Some("PAYMENT_DECLINED"), false);
    declined.stock_released_at = Some(t(8));
    let declined = story(
        Some(declined),
        Some(reservation("RELEASED")),
        None,
        Some(charge("FAILED")),
    );
    assert_eq!(
        verdict(&declined).line(t(100)),
        "final: FAILED (PAYMENT_DECLINED), stock released"
    );

    let rejected = story(
        Some(order("FAILED", Some("OUT_OF_STOCK"), false)),
        None,
        Some(RejectionRecord {
            product_id: 1,
            reason: "OUT_OF_STOCK".into(),
            rejected_at: t(2),
        }),
        None,
    );
    assert_eq!(
        verdict(&rejected).line(t(100)),
        "final: FAILED (OUT_OF_STOCK), nothing was reserved"
    );
}

#[test]
fn an_order_nobody_knows_or_a_service_that_does_not_answer_is_said_so() {
    assert_eq!(verdict(&story(None, None, None, None)), Verdict::Unknown);
    let mut silent = story(Some(order("PENDING", None, true)), None, None, None);
    silent.payment = Told::Unanswered("connection refused".into());
    assert_eq!(
        verdict(&silent).line(t(1)),
        "unknown: the payment service did not answer (connection refused)"
    );
    assert_eq!(
        verdict(&silent).remedy(&endpoints()).map(|r| r.command),
        Some("loadtest status".to_owned())
    );
    // A final order needs nobody else.
    let mut done = story(Some(order("COMPLETED", None, false)), None, None, None);
    done.payment = Told::Unanswered("connection refused".into());
    assert_eq!(verdict(&done), Verdict::Completed);
    done.order = Told::Unanswered("timed out".into());
    assert!(matches!(
        verdict(&done),
        Verdict::Unanswered {
            service: Service::Order,
            ..
        }
    ));
}

#[test]
fn a_new_order_waits_for_the_relay_then_for_inventory_since_it_was_last_asked() {
    let mut pending = story(Some(order("PENDING", None, true)), None, None, None);
    waiting_in(&mut pending, Service::Order, "OrderCreated", t(1));
    assert_eq!(
        verdict(&pending),
        waiting(
            Service::Order,
            t(1),
            "OrderCreated waits in the order service's outbox (not published)"
        )
    );
    let mut published = story(Some(order("PENDING", None, true)), None, None, None);
    let asked = waiting(
        Service::Inventory,
        t(0),
        "inventory has not answered OrderCreated",
    );
    assert_eq!(verdict(&published), asked);
    assert_eq!(
        verdict(&published).line(t(125)),
        "waiting for inventory service since 2027-01-15T08:00:00.000Z (2m 5s)"
    );
    assert_eq!(
        verdict(&published).remedy(&endpoints()).map(|r| r.command),
        Some("curl -s http://i/ready".to_owned())
    );
    let Told::Part(part) = &mut published.order else {
        unreachable!()
    };
    let Records::Order { order: Some(o) } = &mut part.records else {
        unreachable!()
    };
    o.redriven_at = Some(t(30));
    assert_eq!(
        verdict(&published),
        waiting(
            Service::Inventory,
            t(30),
            "inventory has not answered OrderCreated"
        )
    );
}

#[test]
fn a_rejection_waits_for_its_publisher_then_for_the_order_service() {
    let rejection = RejectionRecord {
        product_id: 1,
        reason: "OUT_OF_STOCK".into(),
        rejected_at: t(3),
    };
    let mut rejected = story(
        Some(order("PENDING", None, true)),
        None,
        Some(rejection),
        None,
    );
    assert_eq!(
        verdict(&rejected),
        waiting(
            Service::Order,
            t(3),
            "the order service has not applied StockRejected"
        )
    );
    waiting_in(&mut rejected, Service::Inventory, "StockRejected", t(3));
    assert!(matches!(
        verdict(&rejected),
        Verdict::Waiting {
            on: Service::Inventory,
            ..
        }
    ));
}

#[test]
fn a_reservation_waits_for_payment_and_a_charge_for_the_order_service() {
    let mut reserved = story(
        Some(order("PENDING", None, true)),
        Some(reservation("ACTIVE")),
        None,
        None,
    );
    assert_eq!(
        verdict(&reserved),
        waiting(
            Service::Payment,
            t(2),
            "payment has not charged the reserved order"
        )
    );
    waiting_in(&mut reserved, Service::Inventory, "StockReserved", t(2));
    assert!(matches!(
        verdict(&reserved),
        Verdict::Waiting {
            on: Service::Inventory,
            ..
        }
    ));

    let mut paid = story(
        Some(order("PENDING", None, true)),
        Some(reservation("ACTIVE")),
        None,
        Some(charge("SUCCEEDED")),
    );
    assert_eq!(
        verdict(&paid),
        waiting(
            Service::Order,
            t(4),
            "the order service has not applied PaymentCompleted"
        )
    );
    waiting_in(&mut paid, Service::Payment, "PaymentCompleted", t(5));
    assert_eq!(
        verdict(&paid),
        waiting(
            Service::Payment,
            t(5),
            "PaymentCompleted waits in the payment service's outbox (not published)"
        )
    );
}

#[test]
fn a_failed_payment_waits_for_the_release_then_for_the_order_service_to_note_it() {
    let unreleased = story(
        Some(order("FAILED", Some("PAYMENT_DECLINED"), true)),
        Some(reservation("ACTIVE")),
        None,
        Some(charge("FAILED")),
    );
    assert_eq!(
        verdict(&unreleased),
        waiting(
            Service::Inventory,
            t(4),
            "inventory has not released the stock of the failed payment"
        )
    );
    let not_applied = story(
        Some(order("PENDING", None, true)),
        Some(reservation("RELEASED")),
        None,
        Some(charge("FAILED")),
    );
    assert_eq!(
        verdict(&not_applied),
        waiting(
            Service::Order,
            t(4),
            "the order service has not applied PaymentFailed"
        )
    );
    let mut unconfirmed = story(
        Some(order("FAILED", Some("PAYMENT_DECLINED"), true)),
        Some(reservation("RELEASED")),
        None,
        Some(charge("FAILED")),
    );
    assert_eq!(
        verdict(&unconfirmed),
        waiting(
            Service::Order,
            t(6),
            "the order service has not noted inventory's release of the stock"
        )
    );
    waiting_in(&mut unconfirmed, Service::Inventory, "StockReleased", t(7));
    assert_eq!(
        verdict(&unconfirmed),
        waiting(
            Service::Inventory,
            t(7),
            "StockReleased waits in the inventory service's outbox (not published)"
        )
    );
}

#[test]
fn an_open_dead_letter_of_a_missing_step_is_what_the_saga_is_stuck_on() {
    let mut stuck = story(Some(order("PENDING", None, true)), None, None, None);
    letter(
        &mut stuck,
        Service::Inventory,
        12,
        "order.created",
        "open",
        "rejected",
    );
    letter(
        &mut stuck,
        Service::Inventory,
        4,
        "order.created",
        "open",
        "panic",
    );
    assert_eq!(
        verdict(&stuck),
        Verdict::Stuck {
            dead_letter: 4,
            service: Service::Inventory,
            kind: "panic".into(),
            reason: "letter 4 failed".into(),
            others: 1,
        }
    );
    assert_eq!(
        verdict(&stuck).line(t(100)),
        "stuck: dead letter 4 in inventory service (letter 4 failed) and 1 more"
    );
    assert_eq!(
        verdict(&stuck).remedy(&endpoints()).map(|r| r.command),
        Some("loadtest dead-letters replay --service inventory --id 4".to_owned())
    );
}

#[test]
fn resolved_misrouted_and_overtaken_dead_letters_hold_nothing() {
    let mut reserved = story(
        Some(order("PENDING", None, true)),
        Some(reservation("ACTIVE")),
        None,
        None,
    );
    letter(
        &mut reserved,
        Service::Payment,
        1,
        "inventory.stock_reserved",
        "replayed",
        "rejected",
    );
    letter(
        &mut reserved,
        Service::Payment,
        2,
        "inventory.stock_reserved",
        "open",
        "misrouted",
    );
    // Inventory answered the order since (a re-drive's copy got through).
    letter(
        &mut reserved,
        Service::Inventory,
        3,
        "order.created",
        "open",
        "panic",
    );
    // The order service no longer takes StockReserved.
    letter(
        &mut reserved,
        Service::Order,
        4,
        "inventory.stock_reserved",
        "open",
        "rejected",
    );
    assert!(matches!(
        verdict(&reserved),
        Verdict::Waiting {
            on: Service::Payment,
            ..
        }
    ));
    // A letter of the step that is missing holds it; one whose event is unknown too.
    letter(
        &mut reserved,
        Service::Payment,
        5,
        "inventory.stock_reserved",
        "open",
        "rejected",
    );
    assert!(matches!(
        verdict(&reserved),
        Verdict::Stuck { dead_letter: 5, .. }
    ));
    let mut garbled = story(Some(order("PENDING", None, true)), None, None, None);
    letter(
        &mut garbled,
        Service::Inventory,
        6,
        "order.what",
        "open",
        "undecodable",
    );
    assert!(matches!(
        verdict(&garbled),
        Verdict::Stuck { dead_letter: 6, .. }
    ));
}

#[test]
fn a_failed_payment_parked_by_either_of_its_consumers_holds_the_saga() {
    let mut unreleased = story(
        Some(order("FAILED", Some("PAYMENT_DECLINED"), true)),
        Some(reservation("ACTIVE")),
        None,
        Some(charge("FAILED")),
    );
    // The order service applied it; inventory parked it.
    letter(
        &mut unreleased,
        Service::Order,
        1,
        "payment.failed",
        "open",
        "rejected",
    );
    assert!(matches!(verdict(&unreleased), Verdict::Waiting { .. }));
    letter(
        &mut unreleased,
        Service::Inventory,
        2,
        "payment.failed",
        "open",
        "rejected",
    );
    assert!(matches!(
        verdict(&unreleased),
        Verdict::Stuck {
            dead_letter: 2,
            service: Service::Inventory,
            ..
        }
    ));
}

#[test]
fn a_long_reason_is_cut_in_the_line() {
    let mut stuck = story(Some(order("PENDING", None, true)), None, None, None);
    letter(
        &mut stuck,
        Service::Inventory,
        1,
        "order.created",
        "open",
        "rejected",
    );
    part_mut(&mut stuck, Service::Inventory).dead_letters[0]
        .letter
        .reason = "x".repeat(500);
    let line = verdict(&stuck).line(t(1));
    assert!(line.ends_with("x…)"), "{line}");
    assert!(line.chars().count() < 260, "{line}");
}
