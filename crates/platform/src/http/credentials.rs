//! The credentials extractors: the admin's token and the buyer's bearer JWT, whose rejections
//! are `401` problems. What makes a credential valid is `crate::auth`'s.

use super::Problem;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::{header, request::Parts, StatusCode};
use sqlx::PgPool;

/// The deployment's admin credential, taken from the router state with `FromRef`.
#[derive(Clone)]
pub struct AdminToken(pub std::sync::Arc<str>);

fn unauthorized(detail: &str) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Missing or invalid credentials",
    )
    .with_detail(detail)
}

fn authorization(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// Proof that the request carries the admin credential (setup operations).
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    AdminToken: axum::extract::FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let AdminToken(expected) = AdminToken::from_ref(state);
        let token =
            crate::auth::bearer(authorization(parts)).map_err(|e| unauthorized(&e.to_string()))?;
        if crate::auth::is_admin(&expected, token) {
            Ok(Admin)
        } else {
            Err(unauthorized("not an admin credential"))
        }
    }
}

/// The authenticated buyer: the `sub` of a valid bearer token. Never taken from the body.
pub struct Buyer(pub i64);

impl<S> FromRequestParts<S> for Buyer
where
    crate::auth::TokenKeys: axum::extract::FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let keys = crate::auth::TokenKeys::from_ref(state);
        let token =
            crate::auth::bearer(authorization(parts)).map_err(|e| unauthorized(&e.to_string()))?;
        keys.verify(token)
            .map(Buyer)
            .map_err(|e| unauthorized(&e.to_string()))
    }
}

/// Router state of admin-only endpoints that need the database: the pool and the credential.
#[derive(Clone)]
pub struct AdminState {
    pub pool: PgPool,
    pub admin: AdminToken,
}

impl FromRef<AdminState> for AdminToken {
    fn from_ref(state: &AdminState) -> Self {
        state.admin.clone()
    }
}
