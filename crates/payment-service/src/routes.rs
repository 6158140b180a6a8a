//! Payment's admin routes: accounts opened, topped up and read by an operator (the platform's
//! record routes, with payment's cap on a balance), and the service's OpenAPI document.

use crate::error::PaymentError;
use crate::ledger::{self, Account, Deposited};
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
    info(title = "Payment service", description = "Buyers' accounts and deposits (admin token)."),
    paths(open_account, get_account, deposit),
    components(schemas(NewAccount, Deposit, Account)),
    tags((name = "accounts", description = "Buyers' accounts and the money paid into them")),
    modifiers(&Shared)
)]
pub struct ApiDoc;

/// The document with this deployment's cap on deposits.
pub fn document(max_deposited_cents: i64) -> Document {
    let mut openapi = ApiDoc::openapi();
    set_range(
        &mut openapi,
        "NewAccount",
        "balance_cents",
        0,
        max_deposited_cents,
    );
    set_range(&mut openapi, "Deposit", "cents", 1, max_deposited_cents);
    Document::new(&openapi)
}

/// The admin's pool and token, and the most money one account may ever be paid in.
pub type AppState = platform::records::RecordsState<i64>;

pub fn router(state: AppState) -> Router {
    let document = document(state.caps);
    Router::new()
        .route("/openapi.json", get(move || async move { document }))
        .route("/accounts", post(open_account))
        .route("/accounts/{user_id}", get(get_account))
        .route("/accounts/{user_id}/deposits", post(deposit))
        .with_state(state)
}

/// What payment tells about an order's saga (`GET /admin/sagas/{order_id}`, admin listener):
/// its charge.
pub struct Saga;

impl platform::saga::SagaRecords for Saga {
    fn records<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        order_id: uuid::Uuid,
    ) -> platform::saga::BoxFuture<'a, Result<platform::saga::Records, sqlx::Error>> {
        Box::pin(ledger::saga_records(conn, order_id))
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    /// The buyer (the `sub` of the buyer's tokens).
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    #[serde(deserialize_with = "platform::http::whole_number")]
    user_id: i64,
    /// Opening balance: at most the deployment's cap on what one account is ever paid in.
    #[schema(minimum = 0)]
    #[serde(deserialize_with = "platform::http::whole_number")]
    balance_cents: i64,
}

/// Open a buyer's account with an opening balance.
#[utoipa::path(
    post,
    path = "/accounts",
    tag = "accounts",
    request_body = NewAccount,
    responses(
        (status = 201, description = "Opened", body = Account),
        (status = 409, description = "This user has an account"),
    ),
    security(("admin" = []))
)]
async fn open_account(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(new): JsonBody<NewAccount>,
) -> Result<(StatusCode, Json<Account>), PaymentError> {
    if new.user_id <= 0 || new.balance_cents < 0 {
        return Err(PaymentError::invalid(
            "user_id must be positive and balance_cents non-negative",
        ));
    }
    if new.balance_cents > state.caps {
        return Err(PaymentError::invalid(format!(
            "balance_cents may be at most {}",
            state.caps
        )));
    }
    let mut conn = state.admin.pool.acquire().await?;
    let account = ledger::open_account(&mut conn, new.user_id, new.balance_cents).await?;
    Ok((StatusCode::CREATED, Json(account)))
}

/// A buyer's account.
#[utoipa::path(
    get,
    path = "/accounts/{user_id}",
    tag = "accounts",
    params(("user_id" = i64, Path, minimum = 1, maximum = 9223372036854775807_i64, description = "The buyer")),
    responses(
        (status = 200, description = "The account", body = Account),
        (status = 404, description = "No account for this user"),
    ),
    security(("admin" = []))
)]
async fn get_account(
    _: Admin,
    State(state): State<AppState>,
    PathParam(PositiveId(user_id)): PathParam<PositiveId>,
) -> Result<Json<Account>, PaymentError> {
    let mut conn = state.admin.pool.acquire().await?;
    ledger::find_account(&mut conn, user_id)
        .await?
        .map(Json)
        .ok_or_else(PaymentError::not_found)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Deposit {
    /// At most the deployment's cap (for one deposit, and for all an account is ever paid in).
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "platform::http::whole_number")]
    cents: i64,
}

/// Pay money into a buyer's account.
#[utoipa::path(
    post,
    path = "/accounts/{user_id}/deposits",
    tag = "accounts",
    params(("user_id" = i64, Path, minimum = 1, maximum = 9223372036854775807_i64, description = "The buyer")),
    request_body = Deposit,
    responses(
        (status = 200, description = "Deposited", body = Account),
        (status = 404, description = "No account for this user"),
        (status = 409, description = "The account would be paid more than the cap in all"),
    ),
    security(("admin" = []))
)]
async fn deposit(
    _: Admin,
    State(state): State<AppState>,
    PathParam(PositiveId(user_id)): PathParam<PositiveId>,
    JsonBody(body): JsonBody<Deposit>,
) -> Result<Json<Account>, PaymentError> {
    let max = state.caps;
    if body.cents <= 0 || body.cents > max {
        return Err(PaymentError::invalid(format!(
            "cents must be between 1 and {max}"
        )));
    }
    let mut conn = state.admin.pool.acquire().await?;
    match ledger::deposit(&mut conn, user_id, body.cents, max).await? {
        Deposited::Done(account) => Ok(Json(account)),
        Deposited::NotFound => Err(PaymentError::not_found()),
        Deposited::OverCap => Err(PaymentError::over_cap(format!(
            "an account may be paid at most {max} cents in all"
        ))),
    }
}
