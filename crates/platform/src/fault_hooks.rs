//! Fault hooks for chaos runs, compiled only with the `fault-injection` feature (never in a
//! normal build). No real input makes a handler panic any more, so the chaos suite's `panic`
//! fault arms this hook instead: while armed, handling an `OrderCreated` for the chosen product
//! panics, as a handler bug would. Operators arm it through `crate::http::fault_hooks`.

use crate::events::Event;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicI64, Ordering};

/// The product whose orders make a handler panic; 0 when disarmed.
static PANIC_ON_PRODUCT: AtomicI64 = AtomicI64::new(0);

/// Called by the consumer inside its panic boundary, before the handler.
pub fn before_handle<'a>(mut events: impl Iterator<Item = &'a Event>) {
    let product = PANIC_ON_PRODUCT.load(Ordering::Relaxed);
    if product == 0 {
        return;
    }
    let hit = events.any(|e| matches!(e, Event::OrderCreated(o) if o.product_id == product));
    if hit {
        panic!("fault hook: handling an order for product {product}");
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    pub panic_on_product: Option<i64>,
}

/// The hooks as armed now.
pub fn current() -> Hooks {
    let product = PANIC_ON_PRODUCT.load(Ordering::Relaxed);
    Hooks {
        panic_on_product: (product != 0).then_some(product),
    }
}

/// Arms (or, with `None`, disarms) the hooks.
pub fn set(hooks: &Hooks) {
    PANIC_ON_PRODUCT.store(hooks.panic_on_product.unwrap_or(0), Ordering::Relaxed);
    tracing::warn!(panic_on_product = ?hooks.panic_on_product, "fault hooks set");
}
