//! Inventory's admin routes: products created, restocked and read by an operator (the
//! platform's record routes, with inventory's caps), and the service's OpenAPI document.

use crate::config::InventorySettings;
use crate::error::InventoryError;
use crate::stock::{self, Product, Restocked};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use platform::http::{Admin, JsonBody, PathParam, PositiveId};
use platform::openapi::{set_range, Document, Shared};
use serde::Deserialize;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Inventory service", description = "Products and their stock (setup operations need the admin token)."),
    paths(create_product, get_product, restock),
    components(schemas(NewProduct, Restock, Product)),
    tags((name = "products", description = "Products, their price and stock")),
    modifiers(&Shared)
)]
pub struct ApiDoc;

/// The document with this deployment's caps on prices and units.
pub fn document(caps: &InventorySettings) -> Document {
    let mut openapi = ApiDoc::openapi();
    set_range(
        &mut openapi,
        "NewProduct",
        "price_cents",
        0,
        caps.max_price_cents,
    );
    set_range(&mut openapi, "NewProduct", "stock", 0, caps.max_units);
    set_range(&mut openapi, "Restock", "units", 1, caps.max_units);
    Document::new(&openapi)
}

/// The admin's pool and token, and the caps on prices and units.
pub type AppState = platform::records::RecordsState<InventorySettings>;

pub fn router(state: AppState) -> Router {
    let document = document(&state.caps);
    Router::new()
        .route("/products", post(create_product))
        .route("/products/{id}", get(get_product))
        .route("/products/{id}/restock", post(restock))
        .route("/openapi.json", get(move || async move { document }))
        .with_state(state)
}

/// What inventory tells about an order's saga (`GET /admin/sagas/{order_id}`, admin listener):
/// its reservation or rejection.
pub struct Saga;

impl platform::saga::SagaRecords for Saga {
    fn records<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        order_id: uuid::Uuid,
    ) -> platform::saga::BoxFuture<'a, Result<platform::saga::Records, sqlx::Error>> {
        Box::pin(stock::saga_records(conn, order_id))
    }
}

/// The longest product name, in characters.
const MAX_NAME_CHARS: usize = 200;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewProduct {
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    #[serde(deserialize_with = "platform::http::whole_number")]
    id: i64,
    /// 1 to 200 characters, not only white space, no control characters; stored trimmed.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: String,
    /// At most the deployment's cap on prices.
    #[schema(minimum = 0)]
    #[serde(deserialize_with = "platform::http::whole_number")]
    price_cents: i64,
    /// Units on hand: at most the deployment's cap on units.
    #[schema(minimum = 0)]
    #[serde(deserialize_with = "platform::http::whole_number")]
    stock: i64,
}

fn valid_name(name: &str) -> bool {
    name.chars().count() <= MAX_NAME_CHARS
        && !name.trim().is_empty()
        && !name.chars().any(char::is_control)
}

/// Create a product with its price and initial stock.
#[utoipa::path(
    post,
    path = "/products",
    tag = "products",
    request_body = NewProduct,
    responses(
        (status = 201, description = "Created", body = Product),
        (status = 409, description = "A product with this id exists"),
    ),
    security(("admin" = []))
)]
async fn create_product(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(new): JsonBody<NewProduct>,
) -> Result<(StatusCode, Json<Product>), InventoryError> {
    if new.id <= 0 || new.price_cents < 0 || new.stock < 0 || !valid_name(&new.name) {
        return Err(InventoryError::invalid(format!(
            "id must be positive, name 1 to {MAX_NAME_CHARS} characters (not only white space, \
             no control characters), price_cents and stock non-negative"
        )));
    }
    if new.price_cents > state.caps.max_price_cents || new.stock > state.caps.max_units {
        return Err(InventoryError::invalid(format!(
            "price_cents may be at most {} and stock at most {}",
            state.caps.max_price_cents, state.caps.max_units
        )));
    }
    let mut conn = state.admin.pool.acquire().await?;
    let product = stock::create_product(
        &mut conn,
        new.id,
        new.name.trim(),
        new.price_cents,
        new.stock,
    )
    .await?;
    tracing::info!(
        product_id = product.id,
        stock = product.stock,
        "product created"
    );
    Ok((StatusCode::CREATED, Json(product)))
}

/// A product with its stock.
#[utoipa::path(
    get,
    path = "/products/{id}",
    tag = "products",
    params(("id" = i64, Path, minimum = 1, maximum = 9223372036854775807_i64, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = Product),
        (status = 404, description = "No such product"),
    )
)]
async fn get_product(
    State(state): State<AppState>,
    PathParam(PositiveId(id)): PathParam<PositiveId>,
) -> Result<Json<Product>, InventoryError> {
    let mut conn = state.admin.pool.acquire().await?;
    stock::find_product(&mut conn, id)
        .await?
        .map(Json)
        .ok_or_else(InventoryError::not_found)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Restock {
    /// Units received: at most the deployment's cap on units (for one restock, and for all a
    /// product ever receives).
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "platform::http::whole_number")]
    units: i64,
}

/// Add received units to a product's stock.
#[utoipa::path(
    post,
    path = "/products/{id}/restock",
    tag = "products",
    params(("id" = i64, Path, minimum = 1, maximum = 9223372036854775807_i64, description = "Product id")),
    request_body = Restock,
    responses(
        (status = 200, description = "Restocked", body = Product),
        (status = 404, description = "No such product"),
        (status = 409, description = "The product would receive more than the cap on units in all"),
    ),
    security(("admin" = []))
)]
async fn restock(
    _: Admin,
    State(state): State<AppState>,
    PathParam(PositiveId(id)): PathParam<PositiveId>,
    JsonBody(body): JsonBody<Restock>,
) -> Result<Json<Product>, InventoryError> {
    let max = state.caps.max_units;
    if body.units <= 0 || body.units > max {
        return Err(InventoryError::invalid(format!(
            "units must be between 1 and {max}"
        )));
    }
    let mut conn = state.admin.pool.acquire().await?;
    match stock::restock(&mut conn, id, body.units, max).await? {
        Restocked::Done(product) => Ok(Json(product)),
        Restocked::NotFound => Err(InventoryError::not_found()),
        Restocked::OverCap => Err(InventoryError::over_cap(format!(
            "a product may receive at most {max} units in all"
        ))),
    }
}
