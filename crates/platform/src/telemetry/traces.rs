//! The span exporter and the sampler, configured by the standard `OTEL_*` variables.
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): where spans go, as
//!   OTLP over HTTP/protobuf; unset, traces are off.
//! - `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`: the sampler (`parentbased_traceidratio`
//!   with a ratio, for example); a span that continues a context follows its parent's decision,
//!   so one decision holds for a whole saga.
//! - `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`,
//!   `…_TIMEOUT`: read by the SDK itself.

use opentelemetry::trace::{Link, SamplingDecision, SamplingResult, SpanKind, TraceContextExt};
use opentelemetry::trace::{TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, ShouldSample};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{filter, Layer};

/// The target of every span that becomes an OpenTelemetry span (`spans.rs`); other `tracing`
/// spans stay in the logs only.
pub(super) const TARGET: &str = "ordersys::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The configured sampler's decision for a trace no hop of ours has decided yet (the root of a
/// parent-based sampler): what a client's `traceparent` is judged by (`spans::server`).
static ROOT: OnceLock<Sampler> = OnceLock::new();

/// Whether this process samples a trace that arrives from outside with `trace_id`: our
/// sampler's decision, not the flag the client sent (a client could otherwise have every one of
/// its orders traced through all three services). `false` while traces are off.
pub(super) fn samples_from_outside(trace_id: TraceId) -> bool {
    ROOT.get()
        .is_some_and(|root| decides_to_sample(root, trace_id))
}

fn decides_to_sample(root: &Sampler, trace_id: TraceId) -> bool {
    let result = root.should_sample(None, trace_id, "", &SpanKind::Server, &[], &[]);
    result.decision == SamplingDecision::RecordAndSample
}

/// Whether this process exports traces: the spans of `spans.rs` are made only then.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(super) fn set_enabled() {
    ENABLED.store(true, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("{0}={1:?} is not a sampler this service knows")]
    Sampler(&'static str, String),
}

/// The tracer provider of the process.
pub(super) struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// The provider the `OTEL_*` variables describe, or `None` when no endpoint is set.
    pub(super) fn from_env(service: &str) -> Result<Option<Traces>, TracesError> {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        let off = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
            || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none");
        if off || !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()?;
        let mut resource = Resource::builder();
        if !set("OTEL_SERVICE_NAME") {
            resource = resource.with_service_name(service.to_owned());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(LinkAware(sampler_from_env()?))
            .with_resource(resource.build())
            .build();
        Ok(Some(Traces { provider }))
    }

    /// The `tracing` layer that turns this crate's spans (and only those) into OpenTelemetry
    /// spans, without the attributes of the `tracing` callsite (file, thread, busy time).
    pub(super) fn layer<S>(&self) -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("ordersys"))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(filter::filter_fn(|meta| {
                meta.is_span() && meta.target() == TARGET
            }))
    }

    /// Exports what is queued and stops the exporter.
    pub(super) fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "could not export the last spans");
        }
    }
}

/// The sampler `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name (default
/// `parentbased_always_on`, as the specification says).
/// Also keeps the sampler's root for [`samples_from_outside`].
fn sampler_from_env() -> Result<Sampler, TracesError> {
    let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
    let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok();
    let (sampler, root) = sampler(name.trim(), arg.as_deref())?;
    // Set once per process: a second provider (several services in one test process) samples
    // with the same variables.
    let _ = ROOT.set(root);
    Ok(sampler)
}

/// The sampler the variables name, and its root (the decision for a trace without a parent).
fn sampler(name: &str, arg: Option<&str>) -> Result<(Sampler, Sampler), TracesError> {
    let ratio = || {
        arg.and_then(|a| a.trim().parse::<f64>().ok())
            .filter(|r| (0.0..=1.0).contains(r))
            .unwrap_or(1.0)
    };
    let (root, parent_based) = match name {
        "" | "parentbased_always_on" => (Sampler::AlwaysOn, true),
        "parentbased_always_off" => (Sampler::AlwaysOff, true),
        "parentbased_traceidratio" => (Sampler::TraceIdRatioBased(ratio()), true),
        "always_on" => (Sampler::AlwaysOn, false),
        "always_off" => (Sampler::AlwaysOff, false),
        "traceidratio" => (Sampler::TraceIdRatioBased(ratio()), false),
        other => {
            return Err(TracesError::Sampler(
                "OTEL_TRACES_SAMPLER",
                other.to_owned(),
            ))
        }
    };
    let sampler = if parent_based {
        Sampler::ParentBased(Box::new(root.clone()))
    } else {
        root.clone()
    };
    Ok((sampler, root))
}

/// A span that starts a trace of its own but is linked to sampled spans (a relay's publish, a
/// consumer's batch transaction, the intake's commit, a re-drive) is sampled with them: these
/// spans are where an order's time goes between its hops, and a ratio decision of their own
/// would keep them for a different share of orders than the orders' own traces.
#[derive(Debug, Clone)]
struct LinkAware(Sampler);

impl ShouldSample for LinkAware {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let has_parent = parent_context.is_some_and(|cx| cx.span().span_context().is_valid());
        if !has_parent && links.iter().any(|l| l.span_context.is_sampled()) {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: Default::default(),
            };
        }
        self.0
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};

    fn link(sampled: bool) -> Link {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let cx = SpanContext::new(
            TraceId::from(7u128),
            SpanId::from(9u64),
            flags,
            true,
            TraceState::default(),
        );
        Link::new(cx, Vec::new(), 0)
    }

    fn decide(sampler: &LinkAware, links: &[Link]) -> SamplingDecision {
        sampler
            .should_sample(
                None,
                TraceId::from(u128::MAX),
                "s",
                &SpanKind::Internal,
                &[],
                links,
            )
            .decision
    }

    #[test]
    fn a_root_linked_to_a_sampled_span_is_sampled_whatever_the_ratio() {
        let never = LinkAware(sampler("parentbased_traceidratio", Some("0")).unwrap().0);
        assert_eq!(
            decide(&never, &[link(false), link(true)]),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(decide(&never, &[link(false)]), SamplingDecision::Drop);
        assert_eq!(decide(&never, &[]), SamplingDecision::Drop);
    }

    #[test]
    fn a_trace_from_outside_is_judged_by_our_root_not_by_its_flag() {
        let (_, never) = sampler("parentbased_traceidratio", Some("0")).unwrap();
        let (_, always) = sampler("parentbased_always_on", None).unwrap();
        let (_, half) = sampler("parentbased_traceidratio", Some("0.5")).unwrap();
        assert!(!decides_to_sample(&never, TraceId::from(7u128)));
        assert!(decides_to_sample(&always, TraceId::from(7u128)));
        // The ratio is applied to the trace id: the same id, the same answer everywhere.
        let low = TraceId::from(1u128);
        let high = TraceId::from(u128::from(u64::MAX));
        assert!(decides_to_sample(&half, low));
        assert!(!decides_to_sample(&half, high));
    }

    #[test]
    fn samplers_are_the_specifications() {
        assert!(sampler("", None).is_ok());
        assert!(sampler("traceidratio", Some("0.5")).is_ok());
        assert!(sampler("jaeger_remote", None).is_err());
    }
}
