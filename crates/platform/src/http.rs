//! HTTP plumbing shared by the services: RFC 9457 problem responses, extractors whose rejections
//! are problems, request context (request id, trace), metrics, and the routers of the public
//! listener (with health/ready) and the admin listener (metrics, `/admin/*`).

use crate::envelope::TraceContext;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRef, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::PgPool;
use std::sync::OnceLock;
use std::time::Instant;
use tracing::Instrument;

/// An RFC 9457 problem detail, sent as `application/problem+json`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI reference naming the problem type (`/problems/{slug}`).
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Sent as the `Retry-After` header (seconds), not in the body.
    #[serde(skip)]
    pub retry_after_secs: Option<u32>,
    /// RFC 9457 extension members of a problem type (e.g. the order an answer is about); an
    /// operation that sends some documents them in its own schema.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// `slug` names the problem type (`/problems/{slug}`); `title` is its short human summary.
    pub fn new(status: StatusCode, slug: &str, title: &str) -> Self {
        Problem {
            problem_type: format!("/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            retry_after_secs: None,
            extensions: serde_json::Map::new(),
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds an extension member (RFC 9457 §3.2).
    pub fn with_extension(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extensions.insert(name.to_owned(), value.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn internal() -> Self {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
    }

    /// `503` with `Retry-After: 1`: the condition is expected to pass.
    pub fn unavailable(detail: &str) -> Self {
        let mut problem = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        )
        .with_detail(detail);
        problem.retry_after_secs = Some(1);
        problem
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after_secs;
        let mut response = (status, Json(self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// `Json<T>` whose rejections are problems: malformed JSON 400, wrong shape 422, wrong content
/// type 415, too large 413.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(req.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Expected Content-Type: application/json",
            ));
        }
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| json_problem(JsonRejection::from(rejection)))?;
        let Json(value) = Json::<T>::from_bytes(&bytes).map_err(json_problem)?;
        // serde also reads a struct from an array of its fields in order; every body is an object.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "Request body does not match the schema",
            )
            .with_detail("the body must be a JSON object"));
        }
        Ok(JsonBody(value))
    }
}

/// `application/json` or `application/*+json`, parameters (charset) aside: what axum's `Json`
/// accepts.
fn has_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn json_problem(rejection: JsonRejection) -> Problem {
    let detail = rejection.body_text();
    match rejection {
        JsonRejection::JsonDataError(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "Request body does not match the schema",
        ),
        JsonRejection::JsonSyntaxError(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Request body is not valid JSON",
        ),
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Expected Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body is too large",
        ),
        other if is_body_timeout(&other) => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "The request body did not arrive in time",
        ),
        other => Problem::new(
            other.status(),
            "bad-request",
            "Request body could not be read",
        ),
    }
    .with_detail(detail)
}

/// Whether reading the body failed because the client stalled (`crate::server`'s body timeout)
/// or took longer than the whole request may.
fn is_body_timeout(rejection: &JsonRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>()
            || error.is::<crate::server::RequestDeadlineExceeded>()
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// `Path<T>` whose rejections are problems (400 for an id that does not parse).
pub struct PathParam<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParam<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PathParam(value)),
            Err(rejection) => Err(path_problem(rejection)),
        }
    }
}

fn path_problem(rejection: PathRejection) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-path",
        "Invalid path parameter",
    )
    .with_detail(rejection.body_text())
}

/// Deserializes a JSON integer into an `i64` (`#[serde(deserialize_with = ...)]`). JSON (and
/// JSON Schema's `integer`) does not tell `5` from `5.0` or `5e0`: every spelling of a whole
/// number is that number, read exactly from its text (never through a float, which would round
/// `1e-400` to 0 or `1.0000000000000000001` to 1). A fraction, a number past i64 or anything
/// that is not a number is refused (the body is then `422`).
pub fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let raw = <Box<serde_json::value::RawValue> as serde::Deserialize>::deserialize(deserializer)?;
    integer_from_json_number(raw.get())
        .ok_or_else(|| serde::de::Error::custom("expected an integer within 64 bits"))
}

/// The integer a JSON number token denotes, if it is whole and fits an `i64`.
fn integer_from_json_number(text: &str) -> Option<i64> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !is_digits(whole) || !is_digits(fraction) {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    // value = digits × 10^shift
    let exponent: i64 = exponent.map_or(Some(0), |e| e.parse().ok())?;
    let shift = exponent.checked_sub(i64::try_from(fraction.len()).ok()?)?;
    let magnitude: u64 = if shift < 0 {
        let cut = usize::try_from(shift.unsigned_abs()).ok()?;
        let keep = digits.len().checked_sub(cut)?;
        let (kept, dropped) = digits.split_at(keep);
        if dropped.bytes().any(|b| b != b'0') {
            return None;
        }
        if kept.is_empty() {
            return Some(0);
        }
        kept.parse().ok()?
    } else {
        // 20 digits are past i64 already.
        let zeros = usize::try_from(shift)
            .ok()
            .filter(|z| digits.len() + z <= 20)?;
        format!("{digits}{}", "0".repeat(zeros)).parse().ok()?
    };
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

#[cfg(test)]
mod whole_number_tests {
    use super::integer_from_json_number as int;

    #[test]
    fn whole_numbers_in_any_spelling_are_their_integer() {
        assert_eq!(int("5"), Some(5));
        assert_eq!(int("-5"), Some(-5));
        assert_eq!(int("5.0"), Some(5));
        assert_eq!(int("5e0"), Some(5));
        assert_eq!(int("2E1"), Some(20));
        assert_eq!(int("2e+1"), Some(20));
        assert_eq!(int("1.50e1"), Some(15));
        assert_eq!(int("500e-2"), Some(5));
        assert_eq!(int("0"), Some(0));
        assert_eq!(int("-0.0"), Some(0));
        assert_eq!(int("0e999999999999999999999"), Some(0));
        assert_eq!(int("9223372036854775807"), Some(i64::MAX));
        assert_eq!(int("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(int("9.223372036854775807e18"), Some(i64::MAX));
    }

    #[test]
    fn fractions_and_numbers_past_i64_are_refused() {
        for text in [
            "1.5",
            "1e-400",
            "1.0000000000000000001",
            "5e-1",
            "9223372036854775808",
            "-9223372036854775809",
            "1e19",
            "1e400",
            "1e999999999999999999999",
            "\"5\"",
            "null",
            "[5]",
            "",
            ".5",
        ] {
            assert_eq!(int(text), None, "{text}");
        }
    }
}

/// An id in a path: a positive 64-bit integer (ids start at 1), else `400`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositiveId(pub i64);

impl<'de> serde::Deserialize<'de> for PositiveId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match i64::deserialize(deserializer)? {
            id if id > 0 => Ok(PositiveId(id)),
            _ => Err(serde::de::Error::custom("an id is a positive integer")),
        }
    }
}

/// `Query<T>` whose rejections are problems (400 for a parameter that does not parse or is
/// unknown, when `T` denies unknown fields).
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(QueryParams(value)),
            Err(rejection) => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-query",
                "Invalid query parameter",
            )
            .with_detail(rejection.body_text())),
        }
    }
}

/// The request's trace context, set by the request-context middleware.
pub struct RequestTrace(pub TraceContext);

impl<S: Send + Sync> FromRequestParts<S> for RequestTrace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestTrace(
            parts
                .extensions
                .get::<TraceContext>()
                .cloned()
                .unwrap_or_default(),
        ))
    }
}

fn header_token(parts: &axum::http::HeaderMap, name: &str) -> Option<String> {
    parts
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
}

/// Gives every request an id (the client's `x-request-id` if sane), a span, a metrics sample,
/// and echoes the id back.
async fn request_context(mut req: Request, next: Next) -> Response {
    let request_id = header_token(req.headers(), "x-request-id")
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let traceparent = header_token(req.headers(), "traceparent");
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let method = req.method().to_string();
    req.extensions_mut().insert(TraceContext {
        request_id: Some(request_id.clone()),
        traceparent,
    });
    let span = tracing::info_span!("http", %method, %route, %request_id);
    let started = Instant::now();
    let mut response = next.run(req).instrument(span).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("http_request_duration_seconds", "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("http_requests_total", "method" => method, "route" => route, "status" => status).increment(1);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The process-wide Prometheus recorder (installed once, even with several services in one test).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (not ours): render an empty registry.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn render_metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "No such resource")
}

async fn method_not_allowed(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        let mut problem = Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
        )
        .into_response();
        // RFC 9110: a 405 says which methods the resource has.
        if let Some(allow) = response.headers().get(header::ALLOW) {
            problem.headers_mut().insert(header::ALLOW, allow.clone());
        }
        return problem;
    }
    response
}

/// The public listener's router: a service's routes with `/health` and `/ready`, request
/// context, body limit and problem responses for unknown routes. `/metrics` and `/admin/*` are
/// not here: they are on the admin listener ([`admin_router`]).
pub fn service_router(routes: Router, readiness: Readiness, max_body_bytes: usize) -> Router {
    let ops = Router::new()
        .route("/health", get(health))
        .route("/ready", get(crate::readiness::ready))
        .with_state(readiness);
    with_plumbing(routes.merge(ops), max_body_bytes)
}

/// The admin listener's router: `/metrics`, `/ready` with the errors behind each reason (the
/// public `/ready` names what is wrong without them), and the admin routes (`/admin/*`, which
/// check the admin credential themselves), with the same plumbing as the public one.
pub fn admin_router(admin_routes: Router, readiness: Readiness, max_body_bytes: usize) -> Router {
    let ops = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/ready", get(crate::readiness::ready_in_detail))
        .with_state(readiness);
    with_plumbing(admin_routes.merge(ops), max_body_bytes)
}

fn with_plumbing(routes: Router, max_body_bytes: usize) -> Router {
    routes
        .route_layer(middleware::from_fn(request_context))
        .fallback(not_found)
        .layer(middleware::from_fn(method_not_allowed))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
}

/// Resolves on Ctrl-C or SIGTERM, for graceful shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

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

// One classification of database errors for every path (`crate::db_errors`); kept here too
// because handlers have always found them next to `database_problem`.
pub use crate::db_errors::{is_retryable, is_unavailable};
pub use crate::readiness::Readiness;

/// The answer for a database error: the client's problem when it violated a constraint that
/// `by_name` knows (constraint violations are the client's doing: named, not a 500), else
/// [`database_problem`].
pub fn on_constraint(
    error: &sqlx::Error,
    by_name: impl FnOnce(&str) -> Option<Problem>,
) -> Problem {
    error
        .as_database_error()
        .and_then(|e| e.constraint())
        .and_then(by_name)
        .unwrap_or_else(|| database_problem(error))
}

/// The answer for a database error that is not the client's doing: 503 while it may pass if
/// retried (database unreachable, lock or statement timeout, deadlock), 500 otherwise. The
/// error text is logged, never sent.
pub fn database_problem(error: &sqlx::Error) -> Problem {
    if is_retryable(error) {
        tracing::warn!(%error, "database unavailable");
        Problem::unavailable("database unavailable, retry later")
    } else {
        tracing::error!(%error, "database error");
        Problem::internal()
    }
}
