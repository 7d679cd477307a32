//! One trace from the client through the coordinator to the worker: a real OTLP receiver (an
//! in-process gRPC server implementing the OTLP trace service) collects what the test's client,
//! the coordinator process and the worker process export.

mod support;

use std::{collections::HashMap, time::Duration};

use switchyard_client::{Client, JobSpec};
use switchyard_proto::v1::{JobState, RunRequest, job_service_client::JobServiceClient};
use switchyard_telemetry::{Kind, Span as _};
use switchyard_testkit::{
    Coordinator, Worker,
    otlp::{ReceivedSpan, Receiver},
};

use support::COORDINATOR_FLAGS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_holds_the_clients_the_coordinators_and_the_workers_spans() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.endpoint().to_owned();
    let env = receiver.env();
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

    let spans = receiver
        .wait_for("every span of the job", |spans| {
            let spans: Vec<ReceivedSpan> = spans
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
    let by_name: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.name.as_str(), s)).collect();
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
}
