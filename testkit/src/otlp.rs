//! A real OTLP trace receiver for tests: an in-process gRPC server implementing the OTLP trace
//! service on `127.0.0.1:0`, which keeps every span that the test, the coordinator, the
//! workers and the CLI export to it.

use std::time::Duration;

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value::Value},
};
use tokio::sync::{oneshot, watch};

/// A span as received: which service sent it, its name, kind, ids, parent and attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The `service.name` of the resource that exported it.
    pub service: String,
    pub name: String,
    /// OTLP's span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id; empty for a root.
    pub parent: String,
    /// Attribute values as text.
    pub attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// The value of attribute `key`, as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// OTLP's `SPAN_KIND_CLIENT`.
pub const KIND_CLIENT: i32 = 3;

/// The receiver's service: every export is appended to one watched list, so that a test
/// awaits the spans it expects instead of polling for them.
struct Collector {
    spans: watch::Sender<Vec<ReceivedSpan>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                        .collect(),
                });
            }
        }
        self.spans.send_modify(|spans| spans.extend(received));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// A running receiver. Stops when dropped.
pub struct Receiver {
    endpoint: String,
    spans: watch::Receiver<Vec<ReceivedSpan>>,
    _stop: oneshot::Sender<()>,
}

impl Receiver {
    /// Starts a receiver on `127.0.0.1:0`.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let endpoint = format!("http://{}", listener.local_addr().expect("its address"));
        let (sender, spans) = watch::channel(Vec::new());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Collector { spans: sender }))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        // Dropping the sender (the receiver's handle) stops it too.
                        let _ = stopped.await;
                    },
                ),
        );
        Receiver {
            endpoint,
            spans,
            _stop: stop,
        }
    }

    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The environment that makes a Switchyard process export here, flushing every 100 ms.
    pub fn env(&self) -> [(&'static str, &str); 2] {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ]
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.borrow().clone()
    }

    /// Waits (at most 30 s, then panics naming `what`) until `found` finds what it looks for
    /// in the spans received, and returns it. Woken by each export.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        mut found: impl FnMut(&[ReceivedSpan]) -> Option<T>,
    ) -> T {
        let mut spans = self.spans.clone();
        let mut result = None;
        let waited = tokio::time::timeout(
            Duration::from_secs(30),
            spans.wait_for(|spans| {
                result = found(spans);
                result.is_some()
            }),
        )
        .await;
        match (waited, result) {
            (Ok(Ok(_)), Some(result)) => result,
            _ => panic!(
                "{what}: not received within 30s; received:\n{:#?}",
                self.spans()
            ),
        }
    }
}
