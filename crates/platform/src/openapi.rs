//! What the services' OpenAPI 3.1 documents share: the two security schemes, the problem+json
//! (RFC 9457) schema on every error response, the error statuses the shared extractors and
//! database handling can answer with, and the bounds that come from a deployment's settings.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::header::Header;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{Object, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, RefOr, ResponseBuilder};
use utoipa::{Modify, PartialSchema, ToSchema};

/// The buyer's bearer JWT (`sub` = the buyer's user id), for the order API.
pub const BUYER: &str = "buyer";
/// The deployment's admin bearer token, for setup and operator APIs.
pub const ADMIN: &str = "admin";

const PROBLEM_JSON: &str = "application/problem+json";

/// Adds the security schemes and the error responses to a derived document (`modifiers(&Shared)`).
pub struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BUYER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A buyer's token: HS256 JWT whose `sub` is the buyer's user id, a positive \
                         decimal integer without sign or leading zero",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ADMIN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The deployment's admin token"))
                    .build(),
            ),
        );
        components.schemas.insert(
            crate::http::Problem::name().into_owned(),
            crate::http::Problem::schema(),
        );
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                add_error_responses(operation);
            }
        }
    }
}

/// Every error an operation can get from the shared plumbing, then problem+json on every 4xx/5xx.
fn add_error_responses(operation: &mut Operation) {
    let mut implied: Vec<(&str, &str)> = Vec::new();
    if operation.request_body.is_some() {
        implied.extend([
            ("400", "Malformed JSON (syntax, invalid UTF-8, nesting too deep)"),
            ("408", "The body did not arrive in time (the connection is closed)"),
            ("413", "Body too large"),
            ("415", "Content-Type is not application/json"),
            ("422", "The body does not match the schema (unknown or duplicate fields, wrong types, out of range)"),
        ]);
    }
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    if !parameters.is_empty() {
        implied.push((
            "400",
            "A path, query or header parameter is malformed or out of range",
        ));
    }
    if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
        implied.push(("401", "Missing or invalid credentials"));
    }
    implied.extend([
        ("500", "Internal error (details are logged, never sent)"),
        (
            "503",
            "The database is unavailable or too slow; retry after `Retry-After` seconds",
        ),
    ]);
    let responses = &mut operation.responses.responses;
    for (status, description) in implied {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(ResponseBuilder::new().description(description).build()));
    }
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        if status.starts_with('4') || status.starts_with('5') {
            // An operation may document its own problem schema (one with extension members).
            let schema = response
                .content
                .values()
                .find_map(|content| content.schema.clone())
                .unwrap_or_else(|| RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Problem")));
            response.content.clear();
            response
                .content
                .insert(PROBLEM_JSON.to_owned(), Content::new(Some(schema)));
        }
        if status == "503" || status == "429" {
            let mut retry_after = Header::new(Object::with_type(Type::Integer));
            retry_after.description = Some("Seconds to wait before retrying".into());
            response
                .headers
                .insert(header::RETRY_AFTER.as_str().to_owned(), retry_after);
        }
    }
}

/// Sets the inclusive `minimum`/`maximum` of an integer property of a component schema, for
/// bounds that come from a deployment's settings (the derived schema holds the built-in ones).
pub fn set_range(openapi: &mut OpenApi, schema: &str, property: &str, min: i64, max: i64) {
    let Some(object) = property_mut(openapi, schema, property) else {
        tracing::error!(schema, property, "OpenAPI document has no such property");
        return;
    };
    object.minimum = Some(number(min));
    object.maximum = Some(number(max));
}

fn number(value: i64) -> utoipa::Number {
    // Every bound we document fits an isize on the 64-bit targets we build for.
    utoipa::Number::Int(isize::try_from(value).unwrap_or(isize::MAX))
}

fn property_mut<'a>(
    openapi: &'a mut OpenApi,
    schema: &str,
    property: &str,
) -> Option<&'a mut Object> {
    let components = openapi.components.as_mut()?;
    let RefOr::T(Schema::Object(object)) = components.schemas.get_mut(schema)? else {
        return None;
    };
    match object.properties.get_mut(property)? {
        RefOr::T(Schema::Object(property)) => Some(property),
        _ => None,
    }
}

/// A document served as `application/json` (computed once, with the deployment's bounds).
#[derive(Clone)]
pub struct Document(pub std::sync::Arc<str>);

impl Document {
    pub fn new(openapi: &OpenApi) -> Self {
        // Serializing our own derived types cannot fail; an empty object says something is off.
        Document(openapi.to_json().unwrap_or_else(|_| "{}".to_owned()).into())
    }
}

impl IntoResponse for Document {
    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, "application/json")],
            self.0.to_string(),
        )
            .into_response()
    }
}
