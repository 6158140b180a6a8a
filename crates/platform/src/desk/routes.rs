//! The dead-letter desk over HTTP (admin listener) and its part of the admin OpenAPI document
//! (`crate::app` serves the whole), written once for the three services.

use super::{Action, BulkFailure, BulkOutcome, DeadLetterDesk, DeskError};
use super::{HandlerError, Resolution};
use crate::dead_letters::{DeadLetter, ListFilter};
use crate::http::{
    database_problem, Admin, AdminToken, JsonBody, PathParam, PositiveId, Problem, QueryParams,
};
use crate::openapi::Shared;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

/// The admin listener's document: the dead-letter desk (every service has one); the app adds
/// the saga route's part and the service's own admin routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Admin API",
        description = "The operator's desk over a service's dead letters, and its part of one order's story (admin listener)."
    ),
    paths(list_letters, list_actions, replay_one, discard_one, replay_matching, discard_matching),
    components(schemas(DeadLetter, Action, BulkOutcome, BulkFailure, Resolved, Matching)),
    tags((name = "dead-letters", description = "Messages a consumer parked, and replaying or discarding them")),
    modifiers(&Shared)
)]
pub struct ApiDoc;

#[derive(Clone)]
struct DeskState {
    desk: DeadLetterDesk,
    admin: AdminToken,
}

impl FromRef<DeskState> for AdminToken {
    fn from_ref(state: &DeskState) -> Self {
        state.admin.clone()
    }
}

/// The longest `X-Operator` name.
const MAX_OPERATOR_LEN: usize = 64;
/// The longest reason text to match.
const MAX_REASON_LEN: usize = 500;

/// Who asked: the `X-Operator` header (visible ASCII, 1 to 64 characters), else `admin`.
fn actor(headers: &HeaderMap) -> Result<String, Problem> {
    let Some(value) = headers.get("x-operator") else {
        return Ok("admin".to_owned());
    };
    value
        .to_str()
        .ok()
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_OPERATOR_LEN && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-operator",
                "Invalid X-Operator",
            )
            .with_detail("must be 1 to 64 visible ASCII characters")
        })
}

/// A reason text to match: at most 500 characters, no control characters (PostgreSQL text
/// cannot hold NUL); `min` is 1 for the bulk operations, where "" would match everything.
fn check_reason(reason: &str, min: usize, status: StatusCode) -> Result<(), Problem> {
    let chars = reason.chars().count();
    if chars < min || chars > MAX_REASON_LEN || reason.chars().any(char::is_control) {
        return Err(
            Problem::new(status, "invalid-reason", "Invalid reason text").with_detail(format!(
                "must be {min} to {MAX_REASON_LEN} characters without control characters"
            )),
        );
    }
    Ok(())
}

impl From<DeskError> for Problem {
    fn from(error: DeskError) -> Problem {
        match error {
            DeskError::NotFound => Problem::new(
                StatusCode::NOT_FOUND,
                "dead-letter-not-found",
                "No such dead letter",
            ),
            DeskError::Resolved(status) => Problem::new(
                StatusCode::CONFLICT,
                "dead-letter-resolved",
                "The dead letter was already resolved",
            )
            .with_detail(format!("it is {status}")),
            DeskError::UnknownConsumer(name) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown-consumer",
                "No consumer of this service parked it",
            )
            .with_detail(name),
            DeskError::ReplayFailed(error) => {
                // The handler's own reasons help the operator; database error text stays in the log.
                let detail = match &error {
                    HandlerError::Database(_) | HandlerError::Outbox(_) => {
                        tracing::warn!(%error, "replay failed");
                        "database error (see the service log)".to_owned()
                    }
                    other => other.to_string(),
                };
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "replay-failed",
                    "The event still fails",
                )
                .with_detail(detail)
            }
            DeskError::Misrouted(reason) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "misrouted",
                "A misrouted event is never applied",
            )
            .with_detail(format!("{reason}; discard the dead letter")),
            DeskError::Database(error) => database_problem(&error),
        }
    }
}

/// Which dead letters to list.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum StatusFilter {
    #[default]
    Open,
    Replayed,
    Discarded,
    All,
}

impl StatusFilter {
    fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Open => "open",
            StatusFilter::Replayed => "replayed",
            StatusFilter::Discarded => "discarded",
            StatusFilter::All => "all",
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// `open` by default.
    status: Option<StatusFilter>,
    /// Only those whose reason contains this text.
    #[param(max_length = 500, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    reason: Option<String>,
    /// At most this many, newest first (1000 by default).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

const MAX_LIMIT: i64 = 10_000;

fn check_limit(limit: Option<i64>) -> Result<i64, Problem> {
    match limit.unwrap_or(1000) {
        limit @ 1..=MAX_LIMIT => Ok(limit),
        _ => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query parameter",
        )
        .with_detail("limit must be between 1 and 10000")),
    }
}

/// Dead letters, newest first.
#[utoipa::path(
    get,
    path = "/admin/dead-letters",
    tag = "dead-letters",
    params(ListQuery),
    responses((status = 200, description = "The matching dead letters", body = [DeadLetter])),
    security(("admin" = []))
)]
async fn list_letters(
    _: Admin,
    State(state): State<DeskState>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Vec<DeadLetter>>, Problem> {
    let reason = query.reason.unwrap_or_default();
    check_reason(&reason, 0, StatusCode::BAD_REQUEST)?;
    let filter = ListFilter {
        status: Some(query.status.unwrap_or_default().as_str().to_owned()),
        reason: Some(reason),
        limit: Some(check_limit(query.limit)?),
    };
    crate::dead_letters::list(&state.desk.pool, &filter)
        .await
        .map(Json)
        .map_err(|e| database_problem(&e))
}

/// The new status of a dead letter an operator replayed or discarded.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolved {
    pub id: i64,
    /// `replayed` or `discarded`.
    pub status: String,
}

async fn resolve_one(
    state: DeskState,
    headers: HeaderMap,
    id: i64,
    how: Resolution,
) -> Result<Json<Resolved>, Problem> {
    let actor = actor(&headers)?;
    state.desk.resolve(id, &actor, how).await?;
    Ok(Json(Resolved {
        id,
        status: how.status().into(),
    }))
}

/// Apply one open dead letter again through the consumer that parked it (in the transaction
/// that marks it replayed, so a second replay has no effect).
#[utoipa::path(
    post,
    path = "/admin/dead-letters/{id}/replay",
    tag = "dead-letters",
    params(
        ("id" = i64, Path, minimum = 1, maximum = 9223372036854775807_i64, description = "Dead letter id"),
        ("X-Operator" = Option<String>, Header, min_length = 1, max_length = 64, pattern = "^[!-~]+$", description = "Who acts (default `admin`)"),
    ),
    responses(
        (status = 200, description = "Replayed", body = Resolved),
        (status = 404, description = "No such dead letter"),
        (status = 409, description = "Already replayed or discarded"),
        (status = 422, description = "The event still fails, it is misrouted (it did not come the way the event contract says its type travels: discard it), or no consumer of this service parked it"),
    ),
    security(("admin" = []))
)]
async fn replay_one(
    _: Admin,
    State(state): State<DeskState>,
    headers: HeaderMap,
    PathParam(PositiveId(id)): PathParam<PositiveId>,
) -> Result<Json<Resolved>, Problem> {
    resolve_one(state, headers, id, Resolution::Replay).await
}

/// Mark one open dead letter discarded (nothing is applied).
#[utoipa::path(
    post,
    path = "/admin/dead-letters/{id}/discard",
    tag = "dead-letters",
    params(
        ("id" = i64, Path, minimum = 1, maximum = 9223372036854775807_i64, description = "Dead letter id"),
        ("X-Operator" = Option<String>, Header, min_length = 1, max_length = 64, pattern = "^[!-~]+$", description = "Who acts (default `admin`)"),
    ),
    responses(
        (status = 200, description = "Discarded", body = Resolved),
        (status = 404, description = "No such dead letter"),
        (status = 409, description = "Already replayed or discarded"),
    ),
    security(("admin" = []))
)]
async fn discard_one(
    _: Admin,
    State(state): State<DeskState>,
    headers: HeaderMap,
    PathParam(PositiveId(id)): PathParam<PositiveId>,
) -> Result<Json<Resolved>, Problem> {
    resolve_one(state, headers, id, Resolution::Discard).await
}

/// Body of a bulk replay or discard: every open dead letter whose reason contains this text.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Matching {
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
    )]
    pub reason: String,
}

async fn resolve_matching(
    state: DeskState,
    headers: HeaderMap,
    matching: Matching,
    how: Resolution,
) -> Result<Json<BulkOutcome>, Problem> {
    let actor = actor(&headers)?;
    check_reason(&matching.reason, 1, StatusCode::UNPROCESSABLE_ENTITY)?;
    state
        .desk
        .resolve_matching(&matching.reason, &actor, how)
        .await
        .map(Json)
        .map_err(|e| database_problem(&e))
}

/// Replay every open dead letter whose reason contains the text, oldest first.
#[utoipa::path(
    post,
    path = "/admin/dead-letters/replay",
    tag = "dead-letters",
    request_body = Matching,
    params(("X-Operator" = Option<String>, Header, min_length = 1, max_length = 64, pattern = "^[!-~]+$", description = "Who acts (default `admin`)")),
    responses((status = 200, description = "How many matched, were replayed, and which still fail", body = BulkOutcome)),
    security(("admin" = []))
)]
async fn replay_matching(
    _: Admin,
    State(state): State<DeskState>,
    headers: HeaderMap,
    JsonBody(matching): JsonBody<Matching>,
) -> Result<Json<BulkOutcome>, Problem> {
    resolve_matching(state, headers, matching, Resolution::Replay).await
}

/// Discard every open dead letter whose reason contains the text.
#[utoipa::path(
    post,
    path = "/admin/dead-letters/discard",
    tag = "dead-letters",
    request_body = Matching,
    params(("X-Operator" = Option<String>, Header, min_length = 1, max_length = 64, pattern = "^[!-~]+$", description = "Who acts (default `admin`)")),
    responses((status = 200, description = "How many matched and were discarded", body = BulkOutcome)),
    security(("admin" = []))
)]
async fn discard_matching(
    _: Admin,
    State(state): State<DeskState>,
    headers: HeaderMap,
    JsonBody(matching): JsonBody<Matching>,
) -> Result<Json<BulkOutcome>, Problem> {
    resolve_matching(state, headers, matching, Resolution::Discard).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ActionsQuery {
    /// At most this many, newest first (1000 by default).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

/// Who replayed or discarded what, when, with what result (newest first).
#[utoipa::path(
    get,
    path = "/admin/dead-letters/actions",
    tag = "dead-letters",
    params(ActionsQuery),
    responses((status = 200, description = "The recorded actions", body = [Action])),
    security(("admin" = []))
)]
async fn list_actions(
    _: Admin,
    State(state): State<DeskState>,
    QueryParams(query): QueryParams<ActionsQuery>,
) -> Result<Json<Vec<Action>>, Problem> {
    let limit = check_limit(query.limit)?;
    state
        .desk
        .actions(limit)
        .await
        .map(Json)
        .map_err(|e| database_problem(&e))
}

/// The admin routes over a service's dead letters (every service has them): `GET /admin/dead-letters` (`?status=open|replayed|discarded|all&reason=…&limit=…`),
/// `POST /admin/dead-letters/{id}/replay`, `POST /admin/dead-letters/{id}/discard`,
/// `POST /admin/dead-letters/replay` and `…/discard` with `{"reason": "…"}` for every open one
/// whose reason contains the text, and `GET /admin/dead-letters/actions`, the audit log.
pub fn routes(desk: DeadLetterDesk, admin: AdminToken) -> Router {
    Router::new()
        .route("/admin/dead-letters", get(list_letters))
        .route("/admin/dead-letters/actions", get(list_actions))
        .route("/admin/dead-letters/replay", post(replay_matching))
        .route("/admin/dead-letters/discard", post(discard_matching))
        .route("/admin/dead-letters/{id}/replay", post(replay_one))
        .route("/admin/dead-letters/{id}/discard", post(discard_one))
        .with_state(DeskState { desk, admin })
}
