//! `GET`/`PUT /admin/fault-hooks` (admin only): arming `crate::fault_hooks` for chaos runs.

use super::{Admin, AdminToken, JsonBody};
use crate::fault_hooks::{self, Hooks};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

async fn show(_: Admin, State(_): State<AdminToken>) -> Json<Hooks> {
    Json(fault_hooks::current())
}

async fn set(
    _: Admin,
    State(_): State<AdminToken>,
    JsonBody(hooks): JsonBody<Hooks>,
) -> Json<Hooks> {
    fault_hooks::set(&hooks);
    Json(fault_hooks::current())
}

pub fn routes(admin: AdminToken) -> Router {
    Router::new()
        .route("/admin/fault-hooks", get(show).put(set))
        .with_state(admin)
}
