//! The routers of the two listeners: a service's routes with the plumbing every request gets
//! (request id, trace span, metrics sample, body limit, problems for unknown routes and methods),
//! `/health` and `/ready` on the public listener, `/metrics` and `/ready` in detail on the admin
//! one.

use super::{readiness, Problem, Readiness};
use crate::envelope::TraceContext;
use crate::telemetry::spans;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::time::Instant;
use tracing::Instrument;

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
    // Traced, the request's own server span is the context its effects continue (an order's
    // events carry it); untraced, the client's `traceparent` is passed on as it came.
    let traced = spans::server(&method, &route, &request_id, traceparent.as_deref());
    let (span, traceparent) = if traced.is_none() {
        let span = tracing::info_span!("http", %method, %route, %request_id);
        (span, traceparent)
    } else {
        let own = spans::traceparent(&traced);
        (traced, own)
    };
    req.extensions_mut().insert(TraceContext {
        request_id: Some(request_id.clone()),
        traceparent,
    });
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16().to_string();
    span.record("http.response.status_code", response.status().as_u16());
    metrics::histogram!("http_request_duration_seconds", "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("http_requests_total", "method" => method, "route" => route, "status" => status).increment(1);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
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
        .route("/ready", get(readiness::ready))
        .with_state(readiness);
    with_plumbing(routes.merge(ops), max_body_bytes)
}

/// The admin listener's router: `/metrics`, `/ready` with the errors behind each reason (the
/// public `/ready` names what is wrong without them), and the admin routes (`/admin/*`, which
/// check the admin credential themselves), with the same plumbing as the public one.
pub fn admin_router(admin_routes: Router, readiness: Readiness, max_body_bytes: usize) -> Router {
    let ops = Router::new()
        .route("/metrics", get(super::metrics::render))
        .route("/ready", get(readiness::ready_in_detail))
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
