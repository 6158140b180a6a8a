//! The operators' record routes: the inventory service's products and the payment service's
//! accounts are created, topped up (restock, deposit) and looked up by an admin, under caps on
//! what one record may hold, and fail the same ways. Each service names its record and its
//! constraints ([`Record`]); the failures and their problem+json answers are defined once here.

use crate::http::{on_constraint, AdminState, AdminToken, Problem};
use axum::extract::FromRef;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::fmt;
use std::marker::PhantomData;

/// What a service tells about its record for the answers of its routes.
pub trait Record {
    /// `product`, `account`: the problem types are `invalid-<name>`, `<name>-not-found` and
    /// `<name>-exists`.
    const NAME: &'static str;
    /// The titles of those problems, and of `over-cap`.
    const INVALID: &'static str;
    const NOT_FOUND: &'static str;
    const EXISTS: &'static str;
    const OVER_CAP: &'static str;
    /// The primary key's constraint: a second record with the same id is `409 <name>-exists`.
    const PRIMARY_KEY: &'static str;
    /// The table's check constraints: a row breaking one is `422 invalid-<name>`.
    const CHECKS: &'static [&'static str];
}

/// Why a record route failed.
#[derive(Debug)]
pub enum Failure {
    Invalid(String),
    /// Valid on its own, but past a cap on the total (which depends on what came before).
    OverCap(String),
    NotFound,
    Database(sqlx::Error),
}

/// A record route's error, answered as the record `R` says.
pub struct RecordError<R> {
    pub failure: Failure,
    record: PhantomData<fn() -> R>,
}

impl<R> RecordError<R> {
    fn new(failure: Failure) -> Self {
        RecordError {
            failure,
            record: PhantomData,
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(Failure::Invalid(detail.into()))
    }

    pub fn over_cap(detail: impl Into<String>) -> Self {
        Self::new(Failure::OverCap(detail.into()))
    }

    pub fn not_found() -> Self {
        Self::new(Failure::NotFound)
    }
}

impl<R> From<sqlx::Error> for RecordError<R> {
    fn from(error: sqlx::Error) -> Self {
        Self::new(Failure::Database(error))
    }
}

impl<R> fmt::Debug for RecordError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.failure.fmt(f)
    }
}

impl<R: Record> fmt::Display for RecordError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            Failure::Invalid(detail) | Failure::OverCap(detail) => f.write_str(detail),
            Failure::NotFound => write!(f, "{} not found", R::NAME),
            Failure::Database(error) => error.fmt(f),
        }
    }
}

impl<R: Record> std::error::Error for RecordError<R> {}

impl<R: Record> IntoResponse for RecordError<R> {
    fn into_response(self) -> Response {
        let invalid = || {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("invalid-{}", R::NAME),
                R::INVALID,
            )
        };
        let problem = match &self.failure {
            Failure::Invalid(detail) => invalid().with_detail(detail),
            Failure::OverCap(detail) => {
                Problem::new(StatusCode::CONFLICT, "over-cap", R::OVER_CAP).with_detail(detail)
            }
            Failure::NotFound => Problem::new(
                StatusCode::NOT_FOUND,
                &format!("{}-not-found", R::NAME),
                R::NOT_FOUND,
            ),
            Failure::Database(error) => on_constraint(error, |name| {
                if name == R::PRIMARY_KEY {
                    Some(Problem::new(
                        StatusCode::CONFLICT,
                        &format!("{}-exists", R::NAME),
                        R::EXISTS,
                    ))
                } else if R::CHECKS.contains(&name) {
                    Some(invalid().with_detail(format!("violates {name}")))
                } else {
                    None
                }
            }),
        };
        problem.into_response()
    }
}

/// The state of a service's record routes: the admin pool and token, and the service's caps.
#[derive(Clone)]
pub struct RecordsState<C> {
    pub admin: AdminState,
    pub caps: C,
}

impl<C> FromRef<RecordsState<C>> for AdminToken {
    fn from_ref(state: &RecordsState<C>) -> Self {
        state.admin.admin.clone()
    }
}
