//! The consumer mechanism with a handler that panics: the panic is contained to its event (the
//! other events of the same broker message are applied), the event is retried and then
//! dead-lettered with the panic message, and once the cause is gone an operator's replay
//! applies it exactly once.

use async_nats::jetstream::message::PublishMessage;
use platform::app::Infrastructure;
use platform::consumer::{EventHandler, HandlerError, Incoming, Subscription};
use platform::dead_letters::ListFilter;
use platform::desk::{DeadLetterDesk, DeskError};
use platform::envelope::TraceContext;
use platform::events::{Event, EventType, OrderCreated};
use platform::testing::{eventually, unique_token};
use sqlx::{Postgres, Transaction};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use system_tests::{fresh_database, nats_url};
use uuid::Uuid;

/// Records each order it sees; panics on the orders it was told to.
struct Flaky {
    poisoned: Mutex<HashSet<Uuid>>,
}

impl EventHandler for Flaky {
    async fn handle_batch(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        events: &[Incoming],
    ) -> Result<(), HandlerError> {
        for incoming in events {
            let id = incoming.event.order_id();
            if self.poisoned.lock().unwrap().contains(&id) {
                panic!("poisoned order {id}");
            }
            sqlx::query("INSERT INTO applied (order_id) VALUES ($1)")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

fn created(order_id: Uuid) -> Vec<u8> {
    Event::OrderCreated(OrderCreated {
        order_id,
        user_id: 1,
        product_id: 1,
        quantity: 1,
    })
    .into_envelope(TraceContext::default())
    .unwrap()
    .encode()
    .unwrap()
}

#[tokio::test]
async fn a_panic_is_contained_to_its_event_dead_lettered_and_replayed_once_fixed() {
    let prefix = format!("t{}", unique_token());
    let database = fresh_database("supervision").await;
    let overrides = format!(
        "[http]\nport = 0\n[database]\nurl = \"{database}\"\n[nats]\nurl = \"{}\"\nprefix = \"{prefix}\"\nstream_max_bytes = -1\n[consumer]\nmax_deliveries = 3\n",
        nats_url().await
    );
    let settings: platform::config::CommonSettings =
        platform::config::load_overridden(0, &[&overrides]).unwrap();
    let infra = Infrastructure::connect(
        &settings,
        sqlx::migrate::Migrator::DEFAULT,
        &platform::events::Source::ALL,
    )
    .await
    .unwrap();
    let pool = infra.pools.workers.clone();
    sqlx::query("CREATE TABLE applied (order_id UUID NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let (good, bad, also_good) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let handler = Arc::new(Flaky {
        poisoned: Mutex::new(HashSet::from([bad])),
    });
    let consumer = infra
        .consumer(
            &Subscription::new("supervision-test", &[EventType::OrderCreated]),
            handler.clone(),
        )
        .await
        .unwrap();

    // One broker message carrying three events, the middle one poisoned.
    let mut packed = b"[".to_vec();
    for (i, id) in [good, bad, also_good].iter().enumerate() {
        if i > 0 {
            packed.push(b',');
        }
        packed.extend(created(*id));
    }
    packed.push(b']');
    infra
        .jetstream
        .send_publish(
            format!("{prefix}.order.created"),
            PublishMessage::build()
                .payload(packed.into())
                .message_id("packed-1"),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let parked = eventually(Duration::from_secs(20), || async {
        consumer.process_available().await.unwrap();
        let open = platform::dead_letters::list(&pool, &ListFilter::default())
            .await
            .unwrap();
        open.into_iter().next()
    })
    .await
    .expect("the poisoned event is dead-lettered after its retries");
    assert_eq!(parked.kind, "panic");
    assert!(
        parked.event_id.is_some(),
        "parked as one event of the packed message"
    );
    assert!(parked.deliveries >= 3, "retried first: {parked:?}");
    assert!(
        parked.reason.contains(&format!("poisoned order {bad}")),
        "{}",
        parked.reason
    );
    let applied = |pool: sqlx::PgPool| async move {
        let ids: Vec<Uuid> = sqlx::query_scalar("SELECT order_id FROM applied")
            .fetch_all(&pool)
            .await
            .unwrap();
        ids
    };
    let mut seen = applied(pool.clone()).await;
    seen.sort();
    let mut expected = vec![good, also_good];
    expected.sort();
    assert_eq!(seen, expected, "the neighbours applied once each");

    // The cause is fixed; the operator replays it, twice.
    handler.poisoned.lock().unwrap().clear();
    let desk = DeadLetterDesk::new(pool.clone(), vec![consumer], infra.outbox_signal.clone());
    desk.replay(parked.id, "tester").await.unwrap();
    let again = desk.replay(parked.id, "tester").await;
    assert!(matches!(again, Err(DeskError::Resolved(_))), "{again:?}");
    assert_eq!(applied(pool.clone()).await.len(), 3, "applied exactly once");
    let actions = desk.actions(10).await.unwrap();
    let summary: Vec<(String, String, bool)> = actions
        .iter()
        .map(|a| (a.action.clone(), a.actor.clone(), a.succeeded))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("replay".to_string(), "tester".to_string(), false),
            ("replay".to_string(), "tester".to_string(), true),
        ]
    );
}
