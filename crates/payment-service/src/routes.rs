use crate::error::PaymentError;
use crate::ledger::{self, Account};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use platform::http::{Admin, AdminState, JsonBody, PathParam};
use serde::Deserialize;

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/accounts", post(open_account))
        .route("/accounts/{user_id}", get(get_account))
        .route("/accounts/{user_id}/deposits", post(deposit))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    user_id: i64,
    balance_cents: i64,
}

async fn open_account(
    _: Admin,
    State(state): State<AdminState>,
    JsonBody(new): JsonBody<NewAccount>,
) -> Result<(StatusCode, Json<Account>), PaymentError> {
    if new.user_id <= 0 || new.balance_cents < 0 {
        return Err(PaymentError::Invalid(
            "user_id must be positive and balance_cents non-negative".into(),
        ));
    }
    let mut conn = state.pool.acquire().await?;
    let account = ledger::open_account(&mut conn, new.user_id, new.balance_cents).await?;
    Ok((StatusCode::CREATED, Json(account)))
}

async fn get_account(
    _: Admin,
    State(state): State<AdminState>,
    PathParam(user_id): PathParam<i64>,
) -> Result<Json<Account>, PaymentError> {
    let mut conn = state.pool.acquire().await?;
    ledger::find_account(&mut conn, user_id)
        .await?
        .map(Json)
        .ok_or(PaymentError::NotFound)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deposit {
    cents: i64,
}

async fn deposit(
    _: Admin,
    State(state): State<AdminState>,
    PathParam(user_id): PathParam<i64>,
    JsonBody(body): JsonBody<Deposit>,
) -> Result<Json<Account>, PaymentError> {
    if body.cents <= 0 {
        return Err(PaymentError::Invalid("cents must be positive".into()));
    }
    let mut conn = state.pool.acquire().await?;
    ledger::deposit(&mut conn, user_id, body.cents)
        .await?
        .map(Json)
        .ok_or(PaymentError::NotFound)
}
