//! Extractors whose rejections are problems: JSON bodies, path and query parameters, whole
//! numbers in any JSON spelling, and the request's trace context.

use super::Problem;
use crate::envelope::TraceContext;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, StatusCode};
use axum::Json;
use serde::de::DeserializeOwned;

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
