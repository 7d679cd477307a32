//! A client span for every call, and its trace context on the wire, so that a trace starts
//! where the work was asked for.
//!
//! Only the OpenTelemetry API is used: the global tracer and the global propagator. Until the
//! program installs a tracer provider (`switchyard_telemetry::init_from_env` does when the
//! standard `OTEL_*` variables name an endpoint, and installs the W3C propagator with it), the
//! span is a no-op that records nothing and no `traceparent` is sent. An SDK must not install
//! an exporter itself: where spans go is the program's choice.

use opentelemetry::{
    Context, KeyValue, global,
    propagation::{Extractor, Injector},
    trace::{Span as _, SpanBuilder, SpanKind, Status, TraceContextExt as _, Tracer as _},
};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

use crate::Parent;

/// The instrumentation scope the client's spans are reported under.
const TRACER: &str = "switchyard-client";

/// One RPC, as its span names it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rpc {
    /// `switchyard.client.<Method>`.
    pub span: &'static str,
    /// The fully qualified gRPC service.
    pub service: &'static str,
    pub method: &'static str,
}

macro_rules! rpc {
    ($service:literal, $method:literal) => {
        Rpc {
            span: concat!("switchyard.client.", $method),
            service: concat!("switchyard.v1.", $service),
            method: $method,
        }
    };
}

pub(crate) const SUBMIT: Rpc = rpc!("JobService", "Submit");
pub(crate) const SUBMIT_BATCH: Rpc = rpc!("JobService", "SubmitBatch");
pub(crate) const GET: Rpc = rpc!("JobService", "Get");
pub(crate) const GET_GROUP: Rpc = rpc!("JobService", "GetGroup");
pub(crate) const RUN: Rpc = rpc!("JobService", "Run");
pub(crate) const WAIT: Rpc = rpc!("JobService", "Wait");
pub(crate) const LIST: Rpc = rpc!("JobService", "List");
pub(crate) const CANCEL: Rpc = rpc!("JobService", "Cancel");
pub(crate) const REQUEUE: Rpc = rpc!("JobService", "Requeue");
pub(crate) const WATCH_GROUP: Rpc = rpc!("JobService", "WatchGroup");
pub(crate) const SET_QUOTA: Rpc = rpc!("AdminService", "SetQuota");
pub(crate) const LIST_QUOTAS: Rpc = rpc!("AdminService", "ListQuotas");
pub(crate) const PAUSE_QUEUE: Rpc = rpc!("AdminService", "PauseQueue");
pub(crate) const RESUME_QUEUE: Rpc = rpc!("AdminService", "ResumeQueue");
pub(crate) const LIST_WORKERS: Rpc = rpc!("AdminService", "ListWorkers");
pub(crate) const STATS: Rpc = rpc!("AdminService", "Stats");
pub(crate) const BULK: Rpc = rpc!("AdminService", "Bulk");
pub(crate) const CREATE_SCHEDULE: Rpc = rpc!("AdminService", "CreateSchedule");
pub(crate) const LIST_SCHEDULES: Rpc = rpc!("AdminService", "ListSchedules");
pub(crate) const PAUSE_SCHEDULE: Rpc = rpc!("AdminService", "PauseSchedule");
pub(crate) const RESUME_SCHEDULE: Rpc = rpc!("AdminService", "ResumeSchedule");
pub(crate) const DELETE_SCHEDULE: Rpc = rpc!("AdminService", "DeleteSchedule");

/// The client span of one call. It ends when dropped, so a call whose future is dropped
/// half-way still ends its span.
pub(crate) struct Call {
    span: global::BoxedSpan,
}

impl Call {
    /// Starts the span of `rpc`: under the parent job's trace for a call made from inside a
    /// handler, else under the caller's current OpenTelemetry context (a root when there is
    /// none).
    pub(crate) fn start(rpc: Rpc, parent: Option<&Parent>) -> Call {
        let parent = match parent {
            Some(parent) => global::get_text_map_propagator(|p| p.extract(&Carrier(parent))),
            None => Context::current(),
        };
        let span = global::tracer(TRACER).build_with_context(
            SpanBuilder::from_name(rpc.span)
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", rpc.service),
                    KeyValue::new("rpc.method", rpc.method),
                ]),
            &parent,
        );
        Call { span }
    }

    /// Adds attributes (the job, the queue): `attributes` runs only when the span is
    /// recorded, so that a program without tracing does not build them.
    pub(crate) fn attributes(&mut self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if self.span.is_recording() {
            self.span.set_attributes(attributes());
        }
    }

    /// Records how the call ended.
    pub(crate) fn record<R>(&mut self, result: &Result<R, tonic::Status>) {
        match result {
            Ok(_) => self.status(None),
            Err(status) => self.status(Some(status)),
        }
    }

    /// Records a call (or a stream) that ended with `status`, or well with `None`.
    pub(crate) fn status(&mut self, status: Option<&tonic::Status>) {
        if !self.span.is_recording() {
            return;
        }
        let code = status.map_or(tonic::Code::Ok, tonic::Status::code);
        self.span
            .set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
        if let Some(status) = status {
            self.span.set_status(Status::error(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            )));
        }
    }

    /// Puts this span's `traceparent` (and `tracestate`) in `metadata`, through the global
    /// propagator. Returns whether it put one: not when no propagator is installed or the span
    /// belongs to no trace.
    pub(crate) fn inject(&self, metadata: &mut MetadataMap) -> bool {
        let context = Context::new().with_remote_span_context(self.span.span_context().clone());
        let mut injector = MetadataInjector {
            metadata,
            injected: false,
        };
        global::get_text_map_propagator(|p| p.inject_context(&context, &mut injector));
        injector.injected
    }
}

/// A parent job's trace context, as the propagator reads it.
struct Carrier<'a>(&'a Parent);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match key {
            "traceparent" => &self.0.traceparent,
            "tracestate" => &self.0.tracestate,
            _ => return None,
        };
        (!value.is_empty()).then_some(value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Request metadata, as the propagator writes it.
struct MetadataInjector<'a> {
    metadata: &'a mut MetadataMap,
    injected: bool,
}

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // A key or value that is not valid metadata is left out rather than failing the call.
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.metadata.insert(key, value);
            self.injected = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_tracer_provider_nothing_is_sent() {
        let call = Call::start(SUBMIT, None);
        let mut metadata = MetadataMap::new();
        assert!(!call.inject(&mut metadata));
        assert!(metadata.is_empty());
    }

    #[test]
    fn span_names_follow_the_rpc() {
        assert_eq!(SUBMIT.span, "switchyard.client.Submit");
        assert_eq!(SUBMIT.service, "switchyard.v1.JobService");
        assert_eq!(STATS.span, "switchyard.client.Stats");
    }
}
