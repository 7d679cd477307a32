//! One trace from the client through the coordinator to the worker: a real OTLP receiver (an
//! in-process gRPC server implementing the OTLP trace service) collects what the test's client,
//! the coordinator process and the worker process export.

mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};
use switchyard_client::{Client, JobSpec};
use switchyard_proto::v1::{JobState, RunRequest, job_service_client::JobServiceClient};
use switchyard_telemetry::{Kind, Span as _};
use switchyard_testkit::{Coordinator, Worker};
use tokio_util::sync::CancellationToken;

use support::{COORDINATOR_FLAGS, eventually};

/// A span as received: which service sent it, its name, ids and parent.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("receiver lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_holds_the_clients_the_coordinators_and_the_workers_spans() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let stop = CancellationToken::new();
    let server = {
        let receiver = receiver.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await
        })
    };

    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let coordinator = Coordinator::start_with_env(COORDINATOR_FLAGS, &env).await;
    let _worker = Worker::start_with_env(&coordinator.url(), &[], &env).await;
    let client = Client::connect(coordinator.url()).await.expect("connect");

    // The client's own span, exported from this process, and its context on the call.
    let guard = switchyard_telemetry::init_with_endpoint("test-client", &endpoint)
        .expect("the test exports its span");
    let mut span = switchyard_telemetry::start(
        &switchyard_telemetry::tracer("test-client"),
        "client.run",
        Kind::Client,
        &Default::default(),
        vec![],
    );
    let (traceparent, _) = switchyard_telemetry::traceparent_of(&span);
    let trace_id = traceparent
        .split('-')
        .nth(1)
        .expect("a trace id")
        .to_owned();
    let client_span = traceparent.split('-').nth(2).expect("a span id").to_owned();
    let mut request = tonic::Request::new(RunRequest {
        job: Some(
            JobSpec::new("default", "echo")
                .payload("traced")
                .into_request(),
        ),
        detach: false,
    });
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ascii"));
    request.set_timeout(Duration::from_secs(30));
    let job = JobServiceClient::new(client.channel().clone())
        .run(request)
        .await
        .expect("run")
        .into_inner()
        .job
        .expect("a job");
    span.end();
    drop(guard);
    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(
        job.trace_id, trace_id,
        "Job.trace_id shows the caller's trace"
    );

    let spans = eventually("every span of the job reaches the receiver", || async {
        let spans: Vec<Received> = receiver
            .spans
            .lock()
            .expect("receiver lock")
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        [
            "client.run",
            "switchyard.submit",
            "switchyard.queue_wait",
            "switchyard.dispatch",
            "switchyard.attempt",
        ]
        .iter()
        .all(|n| names.contains(n))
        .then_some(spans)
    })
    .await;
    let by_name: HashMap<&str, &Received> = spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let client_run = by_name["client.run"];
    let submit = by_name["switchyard.submit"];
    let queue_wait = by_name["switchyard.queue_wait"];
    let dispatch = by_name["switchyard.dispatch"];
    let attempt = by_name["switchyard.attempt"];

    assert_eq!(client_run.span_id, client_span);
    assert_eq!(client_run.service, "test-client");
    assert_eq!(submit.service, "switchyard-coordinator");
    assert_eq!(
        submit.parent, client_run.span_id,
        "submit is a child of the client's span"
    );
    assert_eq!(queue_wait.parent, submit.span_id);
    assert_eq!(dispatch.parent, submit.span_id);
    assert_eq!(attempt.service, "switchyard-worker");
    assert_eq!(
        attempt.parent, dispatch.span_id,
        "the worker's span joins under the dispatch"
    );

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
}
