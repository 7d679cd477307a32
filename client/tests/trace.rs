//! The SDK's client spans, with a tracer provider installed as a program would install one:
//! each call is a `switchyard.client.<Method>` span of kind Client whose `traceparent` the
//! coordinator receives, and a call made on a parent job's behalf continues that job's trace.

use std::sync::{Arc, Mutex};

use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use switchyard_client::{Client, JobSpec, Parent};
use switchyard_testkit::Coordinator;

/// Keeps every span it is given. Used with the simple processor, which exports each span as it
/// ends: once a call returns, its span is here.
#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.0.lock().expect("spans lock").extend(batch);
        std::future::ready(Ok(()))
    }
}

impl Collect {
    fn named(&self, name: &str) -> Vec<SpanData> {
        let spans = self.0.lock().expect("spans lock");
        spans.iter().filter(|s| s.name == name).cloned().collect()
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

// One test: the tracer provider is global to the process.
#[tokio::test]
async fn calls_are_client_spans_that_carry_their_trace() {
    let spans = Collect::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let coordinator = Coordinator::start().await;
    let client = Client::connect(coordinator.url()).await.expect("connect");

    // A call of its own: a new trace, which the coordinator stores with the job.
    let submitted = client
        .submit(JobSpec::new("default", "echo").payload("hi"))
        .await
        .expect("submit");
    let [submit] = spans
        .named("switchyard.client.Submit")
        .try_into()
        .expect("one span");
    assert_eq!(submit.span_kind, SpanKind::Client);
    assert_eq!(submit.parent_span_id, opentelemetry::trace::SpanId::INVALID);
    assert_eq!(attribute(&submit, "rpc.method").as_deref(), Some("Submit"));
    assert_eq!(
        attribute(&submit, "switchyard.queue").as_deref(),
        Some("default")
    );
    assert_eq!(
        attribute(&submit, "switchyard.job.kind").as_deref(),
        Some("echo")
    );
    assert_eq!(
        attribute(&submit, "switchyard.job.id"),
        Some(submitted.job_id.clone())
    );
    let job = client.get(&submitted.job_id).await.expect("get");
    assert_eq!(
        job.trace_id,
        submit.span_context.trace_id().to_string(),
        "the coordinator received the client span's traceparent"
    );

    // On a parent job's behalf: the span continues the parent's trace under its span.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let child = client.child_of(Parent {
        job_id: submitted.job_id.clone(),
        traceparent: format!("00-{trace_id}-{parent_span}-01"),
        ..Parent::default()
    });
    child.get(&submitted.job_id).await.expect("get as a child");
    let [get] = spans
        .named("switchyard.client.Get")
        .into_iter()
        .filter(|s| s.span_context.trace_id().to_string() == trace_id)
        .collect::<Vec<_>>()
        .try_into()
        .expect("one span in the parent's trace");
    assert_eq!(get.parent_span_id.to_string(), parent_span);
    assert_eq!(
        attribute(&get, "switchyard.job.id"),
        Some(submitted.job_id.clone())
    );

    // A call that fails records its status.
    let missing = client.get("no-such-job").await;
    assert!(missing.is_err());
    let failed = spans
        .named("switchyard.client.Get")
        .into_iter()
        .find(|s| attribute(s, "switchyard.job.id").as_deref() == Some("no-such-job"))
        .expect("the failed call's span");
    assert!(matches!(
        failed.status,
        opentelemetry::trace::Status::Error { .. }
    ));
    assert!(
        !opentelemetry::Context::current()
            .span()
            .span_context()
            .is_valid(),
        "the SDK leaves the caller's context as it was"
    );
    provider.shutdown().expect("shut the provider down");
}
