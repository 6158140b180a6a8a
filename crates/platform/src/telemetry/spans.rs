//! The spans of an order's trace, and the W3C `traceparent` that carries its context from one
//! hop to the next (in the HTTP request, the outbox row's envelope, the NATS message headers).
//!
//! Every function here returns `Span::none()` (and makes nothing) when traces are off.
//!
//! The shape of a trace: the `POST /orders` server span (continuing the client's `traceparent`)
//! is the context the order's `OrderCreated` is written with; each consumer handles an event in
//! a consumer span whose parent is the event's context, and the replies it writes carry that
//! span's context. Spans that serve many orders at once — the intake's batch commit, a relay's
//! publish, a consumer's batch transaction, a re-drive — start traces of their own, linked to
//! every order's span they serve (a parent for one would be wrong for the others).

use super::traces::{enabled, samples_from_outside, TARGET};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header (and envelope field) name.
pub const TRACEPARENT: &str = "traceparent";

/// One `traceparent` value as a propagation carrier.
struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// Catches the `traceparent` a propagator writes.
#[derive(Default)]
struct Caught(Option<String>);

impl Injector for Caught {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

/// The remote span a `traceparent` names, if it is a valid one.
pub fn remote(traceparent: Option<&str>) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&One(traceparent?));
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// The `traceparent` of a span: what the next hop continues. `None` for no span.
pub fn traceparent(span: &Span) -> Option<String> {
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut caught = Caught::default();
    TraceContextPropagator::new().inject_context(&cx, &mut caught);
    caught.0
}

/// Starts the span (its sampling decided, with the parent and links it has by now) and puts its
/// ids into the fields every log line inside it carries.
fn started(span: Span) -> Span {
    let cx = span.context();
    let ids = cx.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
    span
}

fn with_parent(span: Span, parent: Option<SpanContext>) -> Span {
    if let Some(parent) = parent {
        let cx = opentelemetry::Context::new().with_remote_span_context(parent);
        // Fails only for a span already started, which this one is not.
        let _ = span.set_parent(cx);
    }
    span
}

/// The client's span as our parent: its trace id and span id, so the client's trace shows our
/// spans, with our sampling decision in place of the flag it sent.
fn from_outside(client: SpanContext, sampled: bool) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        client.trace_id(),
        client.span_id(),
        flags,
        true,
        client.trace_state().clone(),
    )
}

/// An HTTP request's server span, named by its route (`POST /orders`), continuing the client's
/// `traceparent` if it sent a valid one — in the client's trace, sampled as we decide.
pub fn server(method: &str, route: &str, request_id: &str, client: Option<&str>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        request_id = %request_id,
        http.response.status_code = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    let parent = remote(client).map(|cx| {
        let sampled = samples_from_outside(cx.trace_id());
        from_outside(cx, sampled)
    });
    started(with_parent(span, parent))
}

/// A consumer's handling of one event: parent is the event's context (its `traceparent`).
pub fn consumer(
    consumer: &str,
    event_type: &str,
    order_id: impl std::fmt::Display,
    parent: Option<&str>,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "consume",
        otel.name = %format_args!("{consumer} {event_type}"),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.consumer.group.name = %consumer,
        event_type = %event_type,
        order_id = %order_id,
        trace_id = Empty,
        span_id = Empty,
    );
    started(with_parent(span, remote(parent)))
}

/// A span serving several orders' spans at once (`kind`: "internal" or "producer"), linked to
/// each of `links` (spans or `traceparent`s, invalid ones left out).
pub fn linked<'a>(
    name: &'static str,
    kind: &'static str,
    links: impl IntoIterator<Item = Link<'a>>,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "linked",
        otel.name = name,
        otel.kind = kind,
        batch = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    let mut count = 0u64;
    for link in links {
        let cx = match link {
            Link::Span(linked) => linked.context().span().span_context().clone(),
            Link::Traceparent(traceparent) => match remote(traceparent) {
                Some(cx) => cx,
                None => continue,
            },
        };
        if cx.is_valid() {
            count += 1;
            span.add_link(cx);
        }
    }
    span.record("batch", count);
    started(span)
}

/// What a [`linked`] span is linked to.
pub enum Link<'a> {
    Span(&'a Span),
    Traceparent(Option<&'a str>),
}

/// Sets an attribute of a span (nothing for no span).
pub fn attribute(span: &Span, key: &'static str, value: impl std::fmt::Display) {
    if !span.is_none() {
        span.set_attribute(key, value.to_string());
    }
}

/// Marks a moment in a span's life (a dead letter recorded, a replay) as a span event.
pub fn event(span: &Span, name: &'static str, attributes: Vec<(&'static str, String)>) {
    if span.is_none() {
        return;
    }
    span.add_event(
        name,
        attributes
            .into_iter()
            .map(|(key, value)| KeyValue::new(key, value))
            .collect(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_names_a_remote_span_or_nothing() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = remote(Some(valid)).unwrap();
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(cx.is_sampled() && cx.is_remote());
        assert!(remote(Some(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ))
        .is_none());
        assert!(remote(Some("garbage")).is_none());
        assert!(remote(None).is_none());
    }

    #[test]
    fn a_client_keeps_its_trace_but_not_its_sampling_flag() {
        let sent = remote(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ))
        .unwrap();
        let ours = from_outside(sent.clone(), false);
        assert_eq!(ours.trace_id(), sent.trace_id());
        assert_eq!(ours.span_id(), sent.span_id());
        assert!(!ours.is_sampled() && ours.is_remote());
        assert!(from_outside(sent, true).is_sampled());
    }

    #[test]
    fn off_makes_no_span() {
        assert!(server("POST", "/orders", "r", None).is_none());
        assert_eq!(traceparent(&Span::none()), None);
    }
}
