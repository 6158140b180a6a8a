//! `GET /admin/sagas/{order_id}` (admin listener, admin token): what this service tells about one
//! order, and its part of the admin OpenAPI document. The same route in every service.

use super::{
    tell, ChargeRecord, OrderDeadLetter, OrderRecord, ReceivedEvent, Records, RejectionRecord,
    ReservationRecord, SagaPart, SagaRecords, WaitingEvent,
};
use crate::http::{database_problem, Admin, AdminToken, PathParam, Problem};
use crate::openapi::Shared;
use axum::extract::{FromRef, State};
use axum::routing::get;
use axum::{Json, Router};
use sqlx::PgPool;
use std::sync::Arc;
use utoipa::OpenApi;
use uuid::Uuid;

/// The saga route's part of the admin listener's document.
#[derive(OpenApi)]
#[openapi(
    paths(saga_part),
    components(schemas(
        SagaPart,
        Records,
        OrderRecord,
        ReservationRecord,
        RejectionRecord,
        ChargeRecord,
        WaitingEvent,
        ReceivedEvent,
        OrderDeadLetter
    )),
    tags((name = "sagas", description = "One order's story as each service tells it (`loadtest saga` merges them)")),
    modifiers(&Shared)
)]
pub struct ApiDoc;

#[derive(Clone)]
struct SagaState {
    pool: PgPool,
    admin: AdminToken,
    records: Arc<dyn SagaRecords>,
}

impl FromRef<SagaState> for AdminToken {
    fn from_ref(state: &SagaState) -> Self {
        state.admin.clone()
    }
}

/// What this service knows about one order: its own records, the order's events still in its
/// outbox, those its consumers took, and the dead letters that concern it (an order it never
/// heard of has an empty story).
#[utoipa::path(
    get,
    path = "/admin/sagas/{order_id}",
    tag = "sagas",
    params(("order_id" = Uuid, Path, description = "Order id")),
    responses((status = 200, description = "This service's part of the order's story", body = SagaPart)),
    security(("admin" = []))
)]
async fn saga_part(
    _: Admin,
    State(state): State<SagaState>,
    PathParam(order_id): PathParam<Uuid>,
) -> Result<Json<SagaPart>, Problem> {
    let read = async {
        let mut tx = state.pool.begin().await?;
        // One snapshot for every table: an event is either still in the outbox or gone.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let part = tell(&mut tx, order_id, &*state.records).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(part)
    };
    read.await.map(Json).map_err(|e| database_problem(&e))
}

/// `GET /admin/sagas/{order_id}`, reading the service's own records through `records` on the
/// HTTP pool.
pub fn routes(pool: PgPool, admin: AdminToken, records: Arc<dyn SagaRecords>) -> Router {
    Router::new()
        .route("/admin/sagas/{order_id}", get(saga_part))
        .with_state(SagaState {
            pool,
            admin,
            records,
        })
}
