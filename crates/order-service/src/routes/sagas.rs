//! The order service's admin routes (admin listener, admin token): the open sagas
//! (`GET /admin/sagas`), and the order service's part of one order's story (the platform's
//! `GET /admin/sagas/{order_id}`, with the order row read here).

use crate::orders;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use platform::app::AdminRoutes;
use platform::http::{database_problem, Admin, AdminState, Problem, QueryParams};
use platform::openapi::Shared;
use platform::saga::{BoxFuture, OpenSaga, Records, SagaRecords};
use serde::Deserialize;
use sqlx::PgConnection;
use std::time::Duration;
use utoipa::OpenApi;
use uuid::Uuid;

/// The open-sagas route's part of the admin listener's document.
#[derive(OpenApi)]
#[openapi(
    paths(open_sagas),
    components(schemas(OpenSaga)),
    modifiers(&Shared)
)]
struct ApiDoc;

/// What the order service tells about an order's saga: its row, with whether the saga is open.
pub struct Saga;

impl SagaRecords for Saga {
    fn records<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        order_id: Uuid,
    ) -> BoxFuture<'a, Result<Records, sqlx::Error>> {
        Box::pin(async move {
            let order = orders::saga_record(conn, order_id).await?;
            Ok(Records::Order { order })
        })
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct OpenSagasQuery {
    /// Only sagas created longer ago than this: a whole number and a unit (`ms`, `s`, `m`, `h`,
    /// `d`), e.g. `30s` (default `0s`: every open saga).
    #[param(pattern = "^[0-9]{1,7}(ms|s|m|h|d)$")]
    older_than: Option<String>,
    /// At most this many, oldest first (100 by default).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

/// No order is older: a longer age is taken as this one (the database's timestamps end in 4713 BC).
const MAX_AGE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `30s`, `5m`, `250ms`: the only durations the route takes (bounded, so nothing overflows).
fn parse_age(text: &str) -> Option<Duration> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 7 {
        return None;
    }
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => return Some(Duration::from_millis(number)),
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(number * seconds).min(MAX_AGE))
}

fn invalid_query(detail: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-query",
        "Invalid query parameter",
    )
    .with_detail(detail)
}

/// The open sagas — not final yet, or failed for a payment reason with the stock's release not
/// yet confirmed (the `open_sagas` view) — created longer ago than `older_than`, oldest first.
#[utoipa::path(
    get,
    path = "/admin/sagas",
    tag = "sagas",
    params(OpenSagasQuery),
    responses((status = 200, description = "The open sagas, oldest first", body = [OpenSaga])),
    security(("admin" = []))
)]
async fn open_sagas(
    _: Admin,
    State(state): State<AdminState>,
    QueryParams(query): QueryParams<OpenSagasQuery>,
) -> Result<Json<Vec<OpenSaga>>, Problem> {
    let older_than = match query.older_than.as_deref() {
        None => Duration::ZERO,
        Some(text) => parse_age(text).ok_or_else(|| {
            invalid_query("older_than: a whole number (at most 7 digits) and ms, s, m, h or d")
        })?,
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(invalid_query("limit must be between 1 and 10000"));
    }
    let mut conn = state
        .pool
        .acquire()
        .await
        .map_err(|e| database_problem(&e))?;
    orders::open_sagas(&mut conn, older_than, limit)
        .await
        .map(Json)
        .map_err(|e| database_problem(&e))
}

/// `GET /admin/sagas` and its part of the admin document.
pub fn admin_routes(state: AdminState) -> AdminRoutes {
    AdminRoutes {
        router: Router::new()
            .route("/admin/sagas", get(open_sagas))
            .with_state(state),
        document: ApiDoc::openapi(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_a_whole_number_and_a_unit() {
        assert_eq!(parse_age("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_age("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_age("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_age("9999999d"), Some(MAX_AGE));
        for bad in ["", "s", "30", "1.5s", "30 s", "-1s", "12345678s", "3w"] {
            assert_eq!(parse_age(bad), None, "{bad:?}");
        }
    }
}
