//! Long jobs end to end (workers.proto point 8), with real processes: a handler's
//! `ctx.progress` and `ctx.checkpoint` (the built-in `steps` kind) travel the worker's stream,
//! are stored with the job and shown by `Get` while it runs, the last report stays after it
//! ends, the metrics count them, and a retry resumes from the last checkpoint. That a report
//! of an attempt no longer current is ignored is the store's conformance check
//! (`progress_is_fenced_and_its_checkpoint_reaches_the_retry`).

mod support;

use switchyard_client::JobSpec;
use switchyard_proto::v1::{AttemptOutcome, JobState};
use switchyard_testkit::{Coordinator, Proxy, Worker};

use support::{PATIENCE, connect, eventually, finished, metric, outcomes};

/// Quick retries, and heartbeats slower than the other tests' 200 ms: a result waits for its
/// attempt's progress to be written for up to two of the coordinator's heartbeat intervals,
/// and a busy machine's commits can take longer than 400 ms.
const FLAGS: &[&str] = &[
    "--heartbeat-interval",
    "1s",
    "--retry-base",
    "20ms",
    "--retry-cap",
    "100ms",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_shows_in_get_while_the_job_runs_and_its_last_report_stays() {
    let mut flags = FLAGS.to_vec();
    flags.extend(["--metrics", "127.0.0.1:0"]);
    let coordinator = Coordinator::start_with(&flags).await;
    let metrics = coordinator.metrics_addr().expect("the metrics address");
    let client = connect(&coordinator).await;
    let _worker = Worker::start(&coordinator.url(), &["--kinds", "steps"]).await;

    // 10 steps of 300 ms: about 3 s, long enough to see it half-way.
    let id = client
        .submit(JobSpec::new("default", "steps").payload("10 300"))
        .await
        .expect("submit")
        .job_id;
    let seen = eventually("progress part of the way, while the job runs", || async {
        let job = client.get(&id).await.ok()?;
        let progress = job.progress.clone()?;
        let fraction = progress.fraction?;
        (job.state() == JobState::Running && fraction > 0.0 && fraction < 1.0)
            .then_some((job, progress))
    })
    .await;
    let (job, progress) = seen;
    assert_eq!(progress.attempt, 1);
    assert!(progress.updated_at.is_some());
    // The step the message names, the fraction and the checkpoint agree: they come in one
    // report.
    let step: u32 = progress
        .message
        .strip_prefix("step ")
        .and_then(|rest| rest.strip_suffix(" of 10"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a message `step i of 10`: {job:?}"));
    assert!((1..10).contains(&step), "{job:?}");
    assert!(
        (progress.fraction.unwrap_or_default() - f64::from(step) / 10.0).abs() < 1e-9,
        "{job:?}"
    );
    assert_eq!(progress.checkpoint, step.to_string().into_bytes());

    let done = finished(&client, &id).await;
    assert_eq!(done.state(), JobState::Succeeded, "{done:?}");
    assert_eq!(done.output, b"10 steps, resumed from step 0");
    let last = done.progress.clone().expect("the last report stays");
    assert_eq!(
        (
            last.attempt,
            last.fraction,
            last.message.as_str(),
            last.checkpoint.as_slice()
        ),
        (1, Some(1.0), "step 10 of 10", &b"10"[..]),
        "the report sent just before the result is stored: {done:?}"
    );

    // Reports of one attempt may fold together on the way, but at least the one seen half-way
    // and the last were stored.
    let stored = metric(
        metrics,
        "switchyard_progress_reports_total{queue=\"default\"}",
    )
    .await;
    assert!(stored >= 2.0, "{stored} progress reports counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_resumes_from_the_last_checkpoint() {
    let coordinator = Coordinator::start_with(FLAGS).await;
    let client = connect(&coordinator).await;
    let worker = Worker::start(&coordinator.url(), &["--kinds", "steps"]).await;

    // A fresh attempt fails (retryable) right after checkpointing step 3; one that starts from
    // a checkpoint does not. Without the checkpoint every attempt would fail there, and the
    // job would end FAILED after its 3 attempts.
    let id = client
        .submit(
            JobSpec::new("default", "steps")
                .payload("6 50 fail@3")
                .max_attempts(3),
        )
        .await
        .expect("submit")
        .job_id;
    let done = finished(&client, &id).await;
    assert_eq!(done.state(), JobState::Succeeded, "{done:?}");
    assert_eq!(
        String::from_utf8_lossy(&done.output),
        "6 steps, resumed from step 3",
        "the second attempt got the first one's checkpoint"
    );
    assert_eq!(done.attempt, 2);
    assert_eq!(
        outcomes(&done),
        [
            (AttemptOutcome::Failed, worker.id().to_owned()),
            (AttemptOutcome::Succeeded, worker.id().to_owned())
        ]
    );
    assert!(
        done.attempts[0].error.contains("failing once after step 3"),
        "{done:?}"
    );
    let last = done.progress.clone().expect("progress");
    assert_eq!(
        (last.attempt, last.fraction, last.checkpoint.as_slice()),
        (2, Some(1.0), &b"6"[..])
    );
}

/// A worker that drains hands back what outlives its grace: the checkpoint it made on the
/// way is stored first, so the next attempt, elsewhere, resumes from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_handed_back_by_a_draining_worker_resumes_from_its_checkpoint() {
    let coordinator = Coordinator::start_with(FLAGS).await;
    let client = connect(&coordinator).await;
    let mut draining = Worker::start(
        &coordinator.url(),
        &["--kinds", "steps", "--drain-grace", "200ms"],
    )
    .await;
    // 100 steps of 100 ms: far longer than the drain grace.
    let id = client
        .submit(JobSpec::new("default", "steps").payload("100 100"))
        .await
        .expect("submit")
        .job_id;
    eventually("a few steps checkpointed", || async {
        let job = client.get(&id).await.ok()?;
        let progress = job.progress?;
        (!progress.checkpoint.is_empty() && progress.fraction.unwrap_or(0.0) > 0.02).then_some(())
    })
    .await;
    assert!(draining.terminate().await.success());
    let job = eventually("the attempt handed back", || async {
        let job = client.get(&id).await.ok()?;
        (job.state() == JobState::Queued).then_some(job)
    })
    .await;
    assert_eq!(
        outcomes(&job),
        [(AttemptOutcome::Released, draining.id().to_owned())]
    );
    let saved = job.progress.expect("progress").checkpoint;
    let _next = Worker::start(&coordinator.url(), &["--kinds", "steps"]).await;
    let done = finished(&client, &id).await;
    assert_eq!(done.state(), JobState::Succeeded, "{done:?}");
    let resumed_from: u32 = String::from_utf8_lossy(&saved)
        .parse()
        .expect("a step number");
    assert_eq!(
        String::from_utf8_lossy(&done.output),
        format!("100 steps, resumed from step {resumed_from}"),
        "the second attempt started from the handed-back attempt's last checkpoint"
    );
    assert!(resumed_from > 0);
}

/// A handler that reports and returns while its worker is cut off: once the worker is back
/// (within the reconnect grace, so the attempt is re-adopted), the reports made meanwhile
/// arrive before the result, so the job's last progress is the handler's last report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_made_while_cut_off_arrives_once_the_worker_is_back() {
    // The worker finds its stream dead after three of these intervals; its handler must
    // still be running then, so that its last reports wait in the worker for the next stream.
    let coordinator =
        Coordinator::start_with(&["--heartbeat-interval", "500ms", "--reconnect-grace", "20s"])
            .await;
    let client = connect(&coordinator).await;
    let proxy = Proxy::start(coordinator.addr()).await;
    let mut worker = Worker::start(&proxy.url(), &["--kinds", "steps"]).await;

    // 20 steps of 150 ms: it outlives the worker's finding its stream dead (1.5 s), and ends
    // well inside the outage below.
    let id = client
        .submit(JobSpec::new("default", "steps").payload("20 150"))
        .await
        .expect("submit")
        .job_id;
    let before = eventually("the first reports", || async {
        let job = client.get(&id).await.ok()?;
        job.progress.and_then(|p| p.fraction).filter(|f| *f > 0.0)
    })
    .await;
    proxy.down();
    // The outage itself, longer than what is left of the job.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let cut_off = client.get(&id).await.expect("get");
    assert_eq!(cut_off.state(), JobState::Running, "{cut_off:?}");
    let stale = cut_off
        .progress
        .and_then(|p| p.fraction)
        .unwrap_or_default();
    assert!(
        stale < 1.0,
        "nothing arrives while cut off ({before} then {stale})"
    );
    proxy.up();
    worker.next_connected().await;

    let done = finished(&client, &id).await;
    assert_eq!(done.state(), JobState::Succeeded, "{done:?}");
    assert_eq!(
        outcomes(&done),
        [(AttemptOutcome::Succeeded, worker.id().to_owned())],
        "one attempt, re-adopted"
    );
    let last = done.progress.clone().expect("progress");
    assert_eq!(
        (last.attempt, last.fraction, last.checkpoint.as_slice()),
        (1, Some(1.0), &b"20"[..]),
        "the reports made while cut off were stored before the result: {done:?}"
    );
    proxy.stop().await;
}

/// A report a coordinator refuses (over its limits, or for no job) is dropped; the stream and
/// the job go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_over_the_limits_are_ignored_and_the_stream_lives_on() {
    use switchyard_proto::v1::{
        CoordinatorMessage, Credit, Hello, Progress, WorkerMessage, coordinator_message,
        worker_message::Message as ToCoordinator, worker_service_client::WorkerServiceClient,
    };
    use tokio_stream::wrappers::ReceiverStream;

    let coordinator = Coordinator::start_with(FLAGS).await;
    let client = connect(&coordinator).await;
    let id = client
        .submit(JobSpec::new("default", "steps").payload("1"))
        .await
        .expect("submit")
        .job_id;

    // A worker of our own, on the raw stream.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let send = |m: ToCoordinator| {
        let tx = tx.clone();
        async move {
            tx.send(WorkerMessage { message: Some(m) })
                .await
                .expect("the stream takes it")
        }
    };
    send(ToCoordinator::Hello(Hello {
        worker_id: "raw".into(),
        queues: vec!["default".into()],
        kinds: vec!["steps".into()],
        slots: 1,
        // Slow heartbeats: this test sends none, and must not be thought dead meanwhile.
        heartbeat_interval: Some(switchyard_proto::Duration {
            seconds: 60,
            nanos: 0,
        }),
        ..Default::default()
    }))
    .await;
    let mut workers = WorkerServiceClient::new(client.channel().clone())
        .max_decoding_message_size(8 << 20)
        .max_encoding_message_size(8 << 20);
    let mut inbound = workers
        .connect(ReceiverStream::new(rx))
        .await
        .expect("connect")
        .into_inner();
    async fn next(inbound: &mut tonic::Streaming<CoordinatorMessage>) -> CoordinatorMessage {
        loop {
            let message = tokio::time::timeout(PATIENCE, inbound.message())
                .await
                .expect("the coordinator says something")
                .expect("the stream is fine")
                .expect("the stream is open");
            // Heartbeats are not what this test waits for.
            if !matches!(
                message.message,
                Some(coordinator_message::Message::Heartbeat(_))
            ) {
                return message;
            }
        }
    }
    assert!(matches!(
        next(&mut inbound).await.message,
        Some(coordinator_message::Message::Welcome(_))
    ));
    let assignment = match next(&mut inbound).await.message {
        Some(coordinator_message::Message::Assignment(a)) => a,
        other => panic!("expected the assignment, got {other:?}"),
    };
    assert_eq!(assignment.job_id, id);
    let report = |fraction: f64, message: String, checkpoint: Vec<u8>| {
        ToCoordinator::Progress(Progress {
            job_id: id.clone(),
            attempt: assignment.attempt,
            epoch: assignment.epoch,
            fraction: Some(fraction),
            message: Some(message),
            checkpoint: Some(checkpoint),
        })
    };
    send(report(1.5, "too far".into(), vec![])).await;
    send(report(0.5, "x".repeat(1025), vec![])).await;
    send(report(0.5, "too large".into(), vec![0; (1 << 20) + 1])).await;
    send(ToCoordinator::Progress(Progress {
        job_id: "not-a-job".into(),
        ..Default::default()
    }))
    .await;
    send(report(0.25, "fine".into(), b"ok".to_vec())).await;
    let job = eventually("the report within the limits is stored", || async {
        let job = client.get(&id).await.ok()?;
        job.progress.is_some().then_some(job)
    })
    .await;
    let progress = job.progress.expect("progress");
    assert_eq!(
        (
            progress.fraction,
            progress.message.as_str(),
            progress.checkpoint.as_slice()
        ),
        (Some(0.25), "fine", &b"ok"[..]),
        "only the report within the limits was stored"
    );
    // The stream still serves: the result is taken.
    send(ToCoordinator::Result(switchyard_proto::v1::AttemptResult {
        job_id: id.clone(),
        attempt: assignment.attempt,
        epoch: assignment.epoch,
        outcome: Some(switchyard_proto::v1::attempt_result::Outcome::Output(
            b"done".to_vec(),
        )),
    }))
    .await;
    send(ToCoordinator::Credit(Credit { slots: 1 })).await;
    let done = finished(&client, &id).await;
    assert_eq!(
        (done.state(), done.output.as_slice()),
        (JobState::Succeeded, &b"done"[..])
    );
}
