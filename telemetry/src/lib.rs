//! The process glue every Switchyard binary shares: trace export and context (here), logs
//! ([`logging`]) and shutdown on SIGINT/SIGTERM ([`shutdown`]).
//!
//! Traces across processes. The coordinator and the workers create their spans with the
//! OpenTelemetry API; the parent of each comes from a W3C `traceparent` carried in gRPC
//! metadata or in the job itself, so that a client's span, the coordinator's spans and the
//! worker's span for a job form one trace. Export is OTLP over gRPC, configured by the
//! standard `OTEL_EXPORTER_OTLP_*` (and `OTEL_BSP_*`) environment variables, and off when no
//! endpoint is set: then every span is a no-op and costs next to nothing.

pub mod logging;
pub mod shutdown;

use std::collections::HashMap;

use opentelemetry::{
    Context, KeyValue, global,
    propagation::TextMapPropagator,
    trace::{SpanBuilder, SpanKind, TraceContextExt, Tracer},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};

/// Installs the OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. Keep the returned guard for the life of the
/// process: dropping it flushes what is buffered.
pub fn init_from_env(service_name: &'static str) -> Option<Guard> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|key| std::env::var_os(key).is_some_and(|v| !v.is_empty()));
    if !configured {
        return None;
    }
    install(
        service_name,
        opentelemetry_otlp::SpanExporter::builder().with_tonic(),
    )
}

/// Installs OTLP export to `endpoint` (`http://host:port`), whatever the environment says.
pub fn init_with_endpoint(service_name: &'static str, endpoint: &str) -> Option<Guard> {
    use opentelemetry_otlp::WithExportConfig;
    install(
        service_name,
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint),
    )
}

fn install(
    service_name: &'static str,
    builder: opentelemetry_otlp::SpanExporterBuilder<opentelemetry_otlp::TonicExporterBuilderSet>,
) -> Option<Guard> {
    let exporter = match builder.build() {
        Ok(exporter) => exporter,
        Err(err) => {
            tracing::warn!(cause = %err, "OTLP trace export is configured but cannot start");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service_name).build())
        .build();
    global::set_tracer_provider(provider.clone());
    // The client SDK injects `traceparent` through the global propagator (it depends on the
    // OpenTelemetry API alone), so exporting and propagating are switched on together.
    global::set_text_map_propagator(TraceContextPropagator::new());
    tracing::info!(service = service_name, "exporting traces over OTLP");
    Some(Guard { provider })
}

/// Flushes and stops the exporter when dropped.
pub struct Guard {
    provider: SdkTracerProvider,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(cause = %err, "flushing traces at exit failed");
        }
    }
}

/// The tracer of a component (`switchyard-coordinator`, `switchyard-worker`).
pub fn tracer(name: &'static str) -> BoxedTracer {
    global::tracer(name)
}

/// The context a `traceparent` (and `tracestate`) names; the empty context if there is none
/// or it is malformed.
pub fn context_from(traceparent: &str, tracestate: &str) -> Context {
    if traceparent.is_empty() {
        return Context::new();
    }
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if !tracestate.is_empty() {
        carrier.insert("tracestate".to_owned(), tracestate.to_owned());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// A caller's W3C trace context, as the OpenTelemetry propagator reads it: the
/// `traceparent` and `tracestate` to carry on, and the trace's id (32 lowercase hex digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteParent {
    pub traceparent: String,
    pub tracestate: String,
    pub trace_id: String,
}

/// The caller's trace context, if `traceparent` is well formed (the W3C spec asks that a
/// malformed one be ignored: the work starts a new trace).
pub fn remote_parent(traceparent: &str, tracestate: &str) -> Option<RemoteParent> {
    let cx = context_from(traceparent, tracestate);
    let span = cx.span();
    let span_context = span.span_context();
    if !span_context.is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    Some(RemoteParent {
        traceparent: carrier.remove("traceparent")?,
        tracestate: carrier.remove("tracestate").unwrap_or_default(),
        trace_id: span_context.trace_id().to_string(),
    })
}

/// The `traceparent` and `tracestate` of a span, to carry it to another process. Empty when
/// the span is not recorded (export off).
pub fn traceparent_of(span: &BoxedSpan) -> (String, String) {
    use opentelemetry::trace::Span;
    let cx = Context::new().with_remote_span_context(span.span_context().clone());
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    (
        carrier.remove("traceparent").unwrap_or_default(),
        carrier.remove("tracestate").unwrap_or_default(),
    )
}

/// Starts a span named `name` under `parent`.
pub fn start(
    tracer: &BoxedTracer,
    name: &'static str,
    kind: SpanKind,
    parent: &Context,
    attributes: Vec<KeyValue>,
) -> BoxedSpan {
    tracer.build_with_context(
        SpanBuilder::from_name(name)
            .with_kind(kind)
            .with_attributes(attributes),
        parent,
    )
}

/// Runs `future` with `span` as the current OpenTelemetry span, so that spans started inside it
/// with no explicit parent (the client SDK's, for each call) become its children: a command
/// that makes several calls is one trace. The span ends when the future is done (or dropped).
/// Tasks the future spawns do not inherit it.
pub fn within<F: std::future::Future>(span: BoxedSpan, future: F) -> WithContext<F> {
    use opentelemetry::context::FutureExt as _;
    future.with_context(Context::current_with_span(span))
}

/// Starts a root span whose name is made at run time (a command's name).
pub fn start_root(
    tracer: &BoxedTracer,
    name: impl Into<std::borrow::Cow<'static, str>>,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
) -> BoxedSpan {
    tracer.build_with_context(
        SpanBuilder::from_name(name)
            .with_kind(kind)
            .with_attributes(attributes),
        &Context::new(),
    )
}

/// Starts a span with an explicit start time (for a wait measured after the fact).
pub fn start_at(
    tracer: &BoxedTracer,
    name: &'static str,
    parent: &Context,
    start: std::time::SystemTime,
    attributes: Vec<KeyValue>,
) -> BoxedSpan {
    tracer.build_with_context(
        SpanBuilder::from_name(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attributes),
        parent,
    )
}

pub use opentelemetry::{
    KeyValue as Attribute,
    context::WithContext,
    global::{BoxedSpan, BoxedTracer},
    trace::{Span, SpanKind as Kind, Status},
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_traceparents_name_a_parent() {
        let parent = remote_parent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "a=b",
        )
        .expect("a parent");
        assert_eq!(parent.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            parent.traceparent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(parent.tracestate, "a=b");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "garbage",
            "",
        ] {
            assert_eq!(remote_parent(bad, ""), None, "{bad:?}");
        }
    }
}
