//! Traces that start at the caller: the real `switchyard submit --wait`, the coordinator and a
//! worker all export to one OTLP receiver, and the job's spans form one trace rooted in the
//! CLI.

use std::collections::HashMap;

use switchyard_testkit::{
    Coordinator, Worker,
    otlp::{KIND_CLIENT, ReceivedSpan, Receiver},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_is_one_trace_from_the_cli_to_the_worker() {
    let receiver = Receiver::start().await;
    let env = receiver.env();
    let coordinator = Coordinator::start_with_env(&[], &env).await;
    let _worker = Worker::start_with_env(&coordinator.url(), &[], &env).await;

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--coordinator", &coordinator.url(), "--json"])
        .args(["submit", "--kind", "echo", "--payload", "hi", "--wait"])
        .envs(env)
        .output()
        .await
        .expect("run switchyard");
    assert!(
        output.status.success(),
        "switchyard failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let job: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the job, as one JSON object");
    let job_id = job["job_id"].as_str().expect("a job id").to_owned();

    // The CLI flushes its spans before it exits; the coordinator's and the worker's come
    // within their 100 ms export delay.
    let spans = receiver
        .wait_for(
            "the CLI's, the coordinator's and the worker's spans",
            |spans| {
                let run = spans
                    .iter()
                    .find(|s| s.service == "switchyard-cli" && s.name == "switchyard.client.Run")?;
                let trace: Vec<ReceivedSpan> = spans
                    .iter()
                    .filter(|s| s.trace_id == run.trace_id)
                    .cloned()
                    .collect();
                let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
                [
                    "switchyard.submit",
                    "switchyard.dispatch",
                    "switchyard.attempt",
                ]
                .iter()
                .all(|n| names.contains(n))
                .then_some(trace)
            },
        )
        .await;
    let by_name: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let command = by_name["switchyard.cli.submit"];
    let run = by_name["switchyard.client.Run"];
    let submit = by_name["switchyard.submit"];
    let dispatch = by_name["switchyard.dispatch"];
    let attempt = by_name["switchyard.attempt"];

    assert_eq!(command.service, "switchyard-cli");
    assert!(command.parent.is_empty(), "the command's span is the root");
    assert_eq!(run.service, "switchyard-cli");
    assert_eq!(run.kind, KIND_CLIENT);
    assert_eq!(run.parent, command.span_id);
    assert_eq!(run.attribute("rpc.method"), Some("Run"));
    assert_eq!(run.attribute("switchyard.queue"), Some("default"));
    assert_eq!(run.attribute("switchyard.job.kind"), Some("echo"));
    assert_eq!(run.attribute("switchyard.job.id"), Some(job_id.as_str()));
    assert_eq!(submit.service, "switchyard-coordinator");
    assert_eq!(
        submit.parent, run.span_id,
        "the coordinator's submit span is a child of the CLI's client span"
    );
    assert_eq!(dispatch.parent, submit.span_id);
    assert_eq!(attempt.service, "switchyard-worker");
    assert_eq!(attempt.parent, dispatch.span_id);
    assert_eq!(
        job["trace_id"].as_str(),
        Some(run.trace_id.as_str()),
        "Job.trace_id names the CLI's trace"
    );
}

/// Without `OTEL_*`, the CLI sends no `traceparent`: the job stores no caller's trace.
#[tokio::test]
async fn without_otel_the_cli_sends_no_trace_context() {
    let coordinator = Coordinator::start().await;
    let cli = |args: &'static [&'static str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["--coordinator", &coordinator.url(), "--json"])
            .args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .output()
    };
    let output = cli(&["submit", "--kind", "echo", "--payload", "hi"])
        .await
        .expect("run switchyard");
    assert!(output.status.success(), "{output:?}");
    let submitted: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let job_id = submitted["job_id"].as_str().expect("a job id").to_owned();
    let job = coordinator_job(&coordinator, &job_id).await;
    // Neither the CLI nor the coordinator traces here: no trace id at all.
    assert_eq!(job.trace_id, "", "{job:?}");
}

async fn coordinator_job(coordinator: &Coordinator, job_id: &str) -> switchyard_client::Job {
    switchyard_client::Client::connect(coordinator.url())
        .await
        .expect("connect")
        .get(job_id)
        .await
        .expect("get")
}
