use super::AppState;
use crate::error::OrderError;
use crate::fair_use::{self, Limited};
use crate::orders::{self, NewOrder, Order};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use platform::events::{Event, OrderCreated};
use platform::http::{Buyer, JsonBody, PathParam, RequestTrace};
use platform::outbox;
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

const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, OrderError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
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
    Ok(Some(key.to_owned()))
}

fn accepted(order: &Order, replayed: bool) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(order)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/orders/{}", order.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
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
        description = "Same key + same body returns the original order (1 to 255 visible ASCII characters)")),
    responses(
        (status = 202, description = "Order accepted (`PENDING`)", body = Order, headers(
            ("Location" = String, description = "The order's URL"),
            ("Idempotent-Replayed" = String, description = "`true` when this is the order an earlier request with the same key created"),
        )),
        (status = 400, description = "Malformed JSON or Idempotency-Key"),
        (status = 409, description = "A request with the same Idempotency-Key is in progress"),
        (status = 422, description = "Body out of the schema, or Idempotency-Key reused with another body"),
        (status = 429, description = "This buyer is over the rate of orders, or holds too many orders not yet final (nothing was written); retry after `Retry-After`"),
        (status = 503, description = "The order could not be written now (nothing was written); retry after `Retry-After`"),
    ),
    security(("buyer" = []))
)]
pub async fn create_order(
    State(state): State<AppState>,
    Buyer(user_id): Buyer,
    RequestTrace(trace): RequestTrace,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CreateOrder>,
) -> Result<Response, OrderError> {
    if let Err(wait) = state.rate_limit.check(user_id) {
        Limited::Rate.count();
        return Err(OrderError::RateLimited {
            retry_after_secs: fair_use::retry_after_secs(wait),
        });
    }
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
    let quantity = request.quantity as i32;
    let new_order = NewOrder {
        user_id,
        product_id: request.product_id,
        quantity,
    };
    let Some(key) = idempotency_key(&headers)? else {
        let order = state.intake.place(new_order, trace).await?;
        return Ok(accepted(&order, false));
    };

    // With an Idempotency-Key the order gets its own transaction, which holds the key's lock.
    let mut tx = state.pool.begin().await?;
    // The replay and rejection paths end the transaction explicitly: a dropped transaction
    // rolls back lazily, and its advisory lock would make the client's next retry a 409.
    match replay_or_reject(&mut tx, user_id, &key, request.product_id, quantity).await {
        Ok(None) => {}
        Ok(Some(order)) => {
            tx.rollback().await?;
            return Ok(accepted(&order, true));
        }
        Err(error) => {
            tx.rollback().await?;
            return Err(error);
        }
    }
    let open = orders::open_orders_by_buyer(&mut tx, &[user_id]).await?;
    if fair_use::admit(&[user_id], &open, state.max_open_orders) != [true] {
        tx.rollback().await?;
        Limited::OpenOrders.count();
        return Err(OrderError::TooManyOpenOrders {
            cap: state.max_open_orders,
        });
    }
    let order = orders::insert_order(&mut tx, new_order).await?;
    let event = Event::OrderCreated(OrderCreated {
        order_id: order.id,
        user_id,
        product_id: order.product_id,
        quantity: order.quantity,
    });
    outbox::enqueue(&mut tx, &state.topology, &event, &trace).await?;
    orders::insert_idempotency_key(&mut tx, user_id, &key, &order).await?;
    tx.commit().await?;
    state.outbox_signal.notify();
    tracing::info!(order_id = %order.id, user_id, product_id = order.product_id, quantity, "order created");
    Ok(accepted(&order, false))
}

/// With the (user, key) lock held: the order this key already created (same body), an error
/// (different body, or the key is in use by a request in flight), or `None` for a new key.
async fn replay_or_reject(
    conn: &mut sqlx::PgConnection,
    user_id: i64,
    key: &str,
    product_id: i64,
    quantity: i32,
) -> Result<Option<Order>, OrderError> {
    if !orders::try_lock_idempotency_key(conn, user_id, key).await? {
        return Err(OrderError::IdempotencyInProgress);
    }
    let Some(previous) = orders::find_idempotency_key(conn, user_id, key).await? else {
        return Ok(None);
    };
    if previous.product_id != product_id || previous.quantity != quantity {
        return Err(OrderError::IdempotencyKeyReused);
    }
    let order = orders::find_order(conn, previous.order_id, user_id)
        .await?
        .ok_or(OrderError::NotFound)?;
    Ok(Some(order))
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
