//! `POST /orders` and `GET /orders/{id}`. Placing an order checks, in this order and before the
//! body is read: the buyer's token, the buyer's rate, the Idempotency-Key header; then the body,
//! and the intake writes the order (`intake/`), keyed or not.

use super::AppState;
use crate::error::{OrderError, OutcomeUnknownProblem};
use crate::fair_use::{self, Limited};
use crate::intake::Placed;
use crate::orders::{self, NewOrder, Order};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use platform::http::{Buyer, JsonBody, PathParam, RequestTrace};
use serde::Deserialize;
use uuid::Uuid;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    #[serde(deserialize_with = "platform::http::whole_number")]
    pub product_id: i64,
    /// Units to buy: 1 up to the deployment's maximum (100 by default).
    #[schema(minimum = 1, maximum = 100)]
    #[serde(deserialize_with = "platform::http::whole_number")]
    pub quantity: i64,
}

/// The authenticated buyer, within their rate: an extractor of the request's head, so a buyer
/// over the rate is answered `429` before the body is read (a slow body cannot hold the door
/// for a buyer the limit refuses anyway).
pub struct RateLimitedBuyer(pub i64);

impl FromRequestParts<AppState> for RateLimitedBuyer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Buyer(user_id) = Buyer::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if let Err(wait) = state.rate_limit.check(user_id) {
            Limited::Rate.count();
            return Err(OrderError::RateLimited {
                retry_after_secs: fair_use::retry_after_secs(wait),
            }
            .into_response());
        }
        Ok(RateLimitedBuyer(user_id))
    }
}

const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The request's `Idempotency-Key`, if it has one: 1 to 255 visible ASCII characters, else `400`.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = OrderError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, OrderError> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let key = value
            .to_str()
            .map_err(|_| OrderError::BadIdempotencyKey("must be visible ASCII"))?;
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(OrderError::BadIdempotencyKey("must be 1 to 255 characters"));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(OrderError::BadIdempotencyKey("must be visible ASCII"));
        }
        Ok(IdempotencyKey(Some(key.to_owned())))
    }
}

fn accepted(placed: &Placed) -> Response {
    let order = &placed.order;
    let mut response = (StatusCode::ACCEPTED, Json(order)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/orders/{}", order.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if placed.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Place an order. The order and its `OrderCreated` event commit in one transaction; the
/// outcome arrives asynchronously (poll `GET /orders/{id}`).
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    request_body = CreateOrder,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
        description = "Same key + same body returns the original order (1 to 255 visible ASCII characters); send one with every order, and retry with the same key")),
    responses(
        (status = 202, description = "Order accepted (`PENDING`): it is written", body = Order, headers(
            ("Location" = String, description = "The order's URL"),
            ("Idempotent-Replayed" = String, description = "`true` when this is the order an earlier request with the same key created"),
        )),
        (status = 400, description = "Malformed JSON or Idempotency-Key"),
        (status = 409, description = "A request with the same Idempotency-Key is in progress (nothing was written for this one)"),
        (status = 422, description = "Body out of the schema, or Idempotency-Key reused with another body (nothing was written)"),
        (status = 429, description = "This buyer is over the rate of orders, or holds too many orders not yet final (nothing was written); retry after `Retry-After`"),
        (status = 500, description = "`/problems/outcome-unknown`: the connection to the database was lost while the order was being committed, and whether it was written could not be found out. `order_id` and `order_url` name the order it would be: look it up (`404` means not written), or retry with the same Idempotency-Key (the original order is replayed if it was written). Any other 500 is an internal error (nothing was written)", body = OutcomeUnknownProblem),
        (status = 503, description = "The order could not be written now (nothing was written); retry after `Retry-After`, with the same Idempotency-Key"),
    ),
    security(("buyer" = []))
)]
pub async fn create_order(
    State(state): State<AppState>,
    RateLimitedBuyer(user_id): RateLimitedBuyer,
    IdempotencyKey(key): IdempotencyKey,
    RequestTrace(trace): RequestTrace,
    JsonBody(request): JsonBody<CreateOrder>,
) -> Result<Response, OrderError> {
    if request.product_id <= 0 {
        return Err(OrderError::Invalid(
            "product_id must be a positive integer".into(),
        ));
    }
    if request.quantity < 1 || request.quantity > i64::from(state.max_quantity) {
        return Err(OrderError::Invalid(format!(
            "quantity must be between 1 and {}",
            state.max_quantity
        )));
    }
    let new_order = NewOrder {
        user_id,
        product_id: request.product_id,
        quantity: request.quantity as i32,
    };
    let placed = state.intake.place(new_order, key, trace).await?;
    Ok(accepted(&placed))
}

/// An order of the authenticated buyer (another buyer's order is 404).
#[utoipa::path(
    get,
    path = "/orders/{id}",
    tag = "orders",
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 400, description = "Malformed id"),
        (status = 404, description = "No such order for this buyer"),
    ),
    security(("buyer" = []))
)]
pub async fn get_order(
    State(state): State<AppState>,
    Buyer(user_id): Buyer,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Order>, OrderError> {
    let mut conn = state.pool.acquire().await?;
    let order = orders::find_order(&mut conn, id, user_id)
        .await?
        .ok_or(OrderError::NotFound)?;
    Ok(Json(order))
}
