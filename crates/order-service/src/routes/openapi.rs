//! The order service's OpenAPI document, generated from the routes, with the deployment's bounds.

use platform::openapi::{set_range, Document, Shared};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Order service", description = "Place orders and follow them to their final status."),
    paths(super::orders::create_order, super::orders::get_order),
    components(schemas(super::orders::CreateOrder, crate::orders::Order, crate::domain::OrderStatus, crate::error::OutcomeUnknownProblem)),
    tags((name = "orders", description = "A buyer's orders")),
    modifiers(&Shared)
)]
pub struct ApiDoc;

/// The document with this deployment's largest quantity.
pub fn document(max_quantity: i32) -> Document {
    let mut openapi = ApiDoc::openapi();
    set_range(
        &mut openapi,
        "CreateOrder",
        "quantity",
        1,
        max_quantity.into(),
    );
    Document::new(&openapi)
}

/// `GET /openapi.json` (built per request: it is asked for rarely).
pub async fn serve(axum::extract::State(state): axum::extract::State<super::AppState>) -> Document {
    document(state.max_quantity)
}
