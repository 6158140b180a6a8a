use crate::config::InventorySettings;
use crate::error::InventoryError;
use crate::stock::{self, Product, Restocked};
use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use platform::http::{Admin, AdminState, AdminToken, JsonBody, PathParam};
use serde::Deserialize;

#[derive(Clone)]
pub struct AppState {
    pub admin: AdminState,
    pub caps: InventorySettings,
}

impl FromRef<AppState> for AdminToken {
    fn from_ref(state: &AppState) -> Self {
        state.admin.admin.clone()
    }
}

pub fn router(state: AppState) -> Router {
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
    State(state): State<AppState>,
    JsonBody(new): JsonBody<NewProduct>,
) -> Result<(StatusCode, Json<Product>), InventoryError> {
    if new.id <= 0 || new.price_cents < 0 || new.stock < 0 || new.name.trim().is_empty() {
        return Err(InventoryError::Invalid(
            "id must be positive, name non-empty, price_cents and stock non-negative".into(),
        ));
    }
    if new.price_cents > state.caps.max_price_cents || new.stock > state.caps.max_units {
        return Err(InventoryError::Invalid(format!(
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

async fn get_product(
    State(state): State<AppState>,
    PathParam(id): PathParam<i64>,
) -> Result<Json<Product>, InventoryError> {
    let mut conn = state.admin.pool.acquire().await?;
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
    State(state): State<AppState>,
    PathParam(id): PathParam<i64>,
    JsonBody(body): JsonBody<Restock>,
) -> Result<Json<Product>, InventoryError> {
    let max = state.caps.max_units;
    if body.units <= 0 || body.units > max {
        return Err(InventoryError::Invalid(format!(
            "units must be between 1 and {max}"
        )));
    }
    let mut conn = state.admin.pool.acquire().await?;
    match stock::restock(&mut conn, id, body.units, max).await? {
        Restocked::Done(product) => Ok(Json(product)),
        Restocked::NotFound => Err(InventoryError::NotFound),
        Restocked::OverCap => Err(InventoryError::Invalid(format!(
            "a product may receive at most {max} units in all"
        ))),
    }
}
