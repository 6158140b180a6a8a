//! Fault hooks for chaos runs, compiled only with the `fault-injection` feature (never in a
//! normal build). No real input makes a handler panic any more, so the chaos suite's `panic`
//! fault arms this hook instead: while armed, handling an `OrderCreated` for the chosen product
//! panics, as a handler bug would.

use crate::consumer::Incoming;
use crate::events::Event;
use crate::http::{Admin, AdminToken, JsonBody};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicI64, Ordering};

/// The product whose orders make a handler panic; 0 when disarmed.
static PANIC_ON_PRODUCT: AtomicI64 = AtomicI64::new(0);

/// Called by the consumer inside its panic boundary, before the handler.
pub fn before_handle(events: &[Incoming]) {
    let product = PANIC_ON_PRODUCT.load(Ordering::Relaxed);
    if product == 0 {
        return;
    }
    let hit = events
        .iter()
        .any(|e| matches!(&e.event, Event::OrderCreated(o) if o.product_id == product));
    if hit {
        panic!("fault hook: handling an order for product {product}");
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    pub panic_on_product: Option<i64>,
}

fn current() -> Hooks {
    let product = PANIC_ON_PRODUCT.load(Ordering::Relaxed);
    Hooks {
        panic_on_product: (product != 0).then_some(product),
    }
}

async fn show(_: Admin, State(_): State<AdminToken>) -> Json<Hooks> {
    Json(current())
}

async fn set(
    _: Admin,
    State(_): State<AdminToken>,
    JsonBody(hooks): JsonBody<Hooks>,
) -> Json<Hooks> {
    PANIC_ON_PRODUCT.store(hooks.panic_on_product.unwrap_or(0), Ordering::Relaxed);
    tracing::warn!(panic_on_product = ?hooks.panic_on_product, "fault hooks set");
    Json(current())
}

/// `GET`/`PUT /admin/fault-hooks` (admin only).
pub fn routes(admin: AdminToken) -> Router {
    Router::new()
        .route("/admin/fault-hooks", get(show).put(set))
        .with_state(admin)
}
