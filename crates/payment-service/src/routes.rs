use crate::error::PaymentError;
use crate::ledger::{self, Account, Deposited};
use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use platform::http::{Admin, AdminState, AdminToken, JsonBody, PathParam};
use serde::Deserialize;

#[derive(Clone)]
pub struct AppState {
    pub admin: AdminState,
    /// Most money one account may ever be paid in.
    pub max_deposited_cents: i64,
}

impl FromRef<AppState> for AdminToken {
    fn from_ref(state: &AppState) -> Self {
        state.admin.admin.clone()
    }
}

pub fn router(state: AppState) -> Router {
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
    State(state): State<AppState>,
    JsonBody(new): JsonBody<NewAccount>,
) -> Result<(StatusCode, Json<Account>), PaymentError> {
    if new.user_id <= 0 || new.balance_cents < 0 {
        return Err(PaymentError::Invalid(
            "user_id must be positive and balance_cents non-negative".into(),
        ));
    }
    if new.balance_cents > state.max_deposited_cents {
        return Err(PaymentError::Invalid(format!(
            "balance_cents may be at most {}",
            state.max_deposited_cents
        )));
    }
    let mut conn = state.admin.pool.acquire().await?;
    let account = ledger::open_account(&mut conn, new.user_id, new.balance_cents).await?;
    Ok((StatusCode::CREATED, Json(account)))
}

async fn get_account(
    _: Admin,
    State(state): State<AppState>,
    PathParam(user_id): PathParam<i64>,
) -> Result<Json<Account>, PaymentError> {
    let mut conn = state.admin.pool.acquire().await?;
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
    State(state): State<AppState>,
    PathParam(user_id): PathParam<i64>,
    JsonBody(body): JsonBody<Deposit>,
) -> Result<Json<Account>, PaymentError> {
    let max = state.max_deposited_cents;
    if body.cents <= 0 || body.cents > max {
        return Err(PaymentError::Invalid(format!(
            "cents must be between 1 and {max}"
        )));
    }
    let mut conn = state.admin.pool.acquire().await?;
    match ledger::deposit(&mut conn, user_id, body.cents, max).await? {
        Deposited::Done(account) => Ok(Json(account)),
        Deposited::NotFound => Err(PaymentError::NotFound),
        Deposited::OverCap => Err(PaymentError::Invalid(format!(
            "an account may be paid at most {max} cents in all"
        ))),
    }
}
