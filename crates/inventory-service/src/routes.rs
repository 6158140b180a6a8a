use crate::error::InventoryError;
use crate::stock::{self, Product};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use platform::http::{Admin, AdminState, JsonBody, PathParam};
use serde::Deserialize;

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/products", post(create_product))
        .route("/products/{id}", get(get_product))
        .route("/products/{id}/restock", post(restock))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProduct {
    id: i64,
    name: String,
    price_cents: i64,
    stock: i64,
}

async fn create_product(
    _: Admin,
    State(state): State<AdminState>,
    JsonBody(new): JsonBody<NewProduct>,
) -> Result<(StatusCode, Json<Product>), InventoryError> {
    if new.id <= 0 || new.price_cents < 0 || new.stock < 0 || new.name.trim().is_empty() {
        return Err(InventoryError::Invalid(
            "id must be positive, name non-empty, price_cents and stock non-negative".into(),
        ));
    }
    let mut conn = state.pool.acquire().await?;
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

async fn get_product(
    State(state): State<AdminState>,
    PathParam(id): PathParam<i64>,
) -> Result<Json<Product>, InventoryError> {
    let mut conn = state.pool.acquire().await?;
    stock::find_product(&mut conn, id)
        .await?
        .map(Json)
        .ok_or(InventoryError::NotFound)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Restock {
    units: i64,
}

async fn restock(
    _: Admin,
    State(state): State<AdminState>,
    PathParam(id): PathParam<i64>,
    JsonBody(body): JsonBody<Restock>,
) -> Result<Json<Product>, InventoryError> {
    if body.units <= 0 {
        return Err(InventoryError::Invalid("units must be positive".into()));
    }
    let mut conn = state.pool.acquire().await?;
    stock::restock(&mut conn, id, body.units)
        .await?
        .map(Json)
        .ok_or(InventoryError::NotFound)
}
