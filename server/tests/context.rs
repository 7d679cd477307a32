//! Context that travels: the caller's deadline, cancellation that reaches running handlers,
//! and child jobs that end with their parent. Real coordinator, real worker processes.

mod support;

use std::time::{Duration, Instant, SystemTime};

use switchyard_client::{JobSpec, ListFilter};
use switchyard_proto::v1::{
    AttemptOutcome, JobState, RunRequest, job_service_client::JobServiceClient,
};
use switchyard_testkit::Worker;

use support::{
    PATIENCE, coordinator, eventually, finished, list, ms_of, running_on, submit_expiring,
};

/// Waits until the worker holds no slot: every handler it ran has returned.
async fn slots_free(client: &switchyard_client::Client, worker: &str) {
    running_on(client, worker, 0).await;
}

#[tokio::test]
async fn run_past_its_deadline_returns_deadline_exceeded_and_frees_the_slot() {
    let (coordinator, client) = coordinator().await;
    let worker = Worker::start(&coordinator.url(), &["--concurrency", "1"]).await;
    let deadline = Duration::from_millis(1000);
    let started = Instant::now();
    let err = client
        .run(
            JobSpec::new("default", "sleep").payload("30000"),
            Some(deadline),
        )
        .await
        .expect_err("the sleep outlives the deadline");
    let took = started.elapsed();
    assert_eq!(err.code(), Some(tonic::Code::DeadlineExceeded), "{err}");
    assert!(
        // Not when the 30 s sleep ends: at the deadline, however late a busy machine is.
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "Run returned after {took:?}, not at its 1s deadline"
    );

    let jobs = list(&client, ListFilter::default()).await;
    assert_eq!(jobs.len(), 1);
    let job = finished(&client, &jobs[0].job_id).await;
    assert_eq!(job.state(), JobState::DeadlineExceeded, "{job:?}");
    assert_eq!(job.attempts.len(), 1);
    assert_eq!(job.attempts[0].outcome(), AttemptOutcome::DeadlineExceeded);
    let created = ms_of(&job.created_at.expect("created"));
    let until = ms_of(&job.deadline.expect("the call's deadline became the job's"));
    assert!(
        (until - created - 1000).abs() < 100,
        "deadline {until} vs created {created}"
    );

    // The sleep listened: its slot is free right after, and the next job runs on it.
    slots_free(&client, worker.id()).await;
    let next = client
        .run(
            JobSpec::new("default", "echo").payload("next"),
            Some(PATIENCE),
        )
        .await
        .expect("the slot is free");
    assert_eq!(next.worker_id, worker.id());
}

#[tokio::test]
async fn a_queued_job_whose_deadline_passes_ends_without_an_attempt() {
    let (_coordinator, client) = coordinator().await;
    let (id, _) = submit_expiring(&client, Duration::from_secs(1), |deadline| {
        JobSpec::new("nobody-serves-this", "echo").deadline(deadline)
    })
    .await;
    let job = finished(&client, &id).await;
    assert_eq!(job.state(), JobState::DeadlineExceeded);
    assert_eq!(job.attempt, 0);
    assert!(job.attempts.is_empty());
}

#[tokio::test]
async fn a_job_is_never_dispatched_after_its_deadline() {
    let (coordinator, client) = coordinator().await;
    let (id, _) = submit_expiring(&client, Duration::from_secs(1), |deadline| {
        JobSpec::new("default", "echo").deadline(deadline)
    })
    .await;
    let job = finished(&client, &id).await;
    // Only now does a worker come: the job is over, and nothing is sent to it.
    let worker = Worker::start(&coordinator.url(), &[]).await;
    let ran = client
        .run(JobSpec::new("default", "echo"), Some(PATIENCE))
        .await
        .expect("run");
    assert_eq!(ran.worker_id, worker.id());
    let again = client.get(&id).await.expect("get");
    assert_eq!(again.state(), JobState::DeadlineExceeded);
    assert_eq!(again.attempts, job.attempts);
    assert!(again.attempts.is_empty());
}

#[tokio::test]
async fn an_attempt_past_its_timeout_fails_and_is_retried() {
    let (coordinator, client) = coordinator().await;
    let _worker = Worker::start(&coordinator.url(), &[]).await;
    let id = client
        .submit(
            JobSpec::new("default", "sleep")
                .payload("30000")
                .timeout(Duration::from_millis(200))
                .max_attempts(2),
        )
        .await
        .expect("submit")
        .job_id;
    let job = finished(&client, &id).await;
    assert_eq!(job.state(), JobState::Failed, "{job:?}");
    assert_eq!(job.attempts.len(), 2);
    for attempt in &job.attempts {
        assert_eq!(attempt.outcome(), AttemptOutcome::DeadlineExceeded);
        assert!(attempt.error.contains("timeout"), "{}", attempt.error);
    }
}

#[tokio::test]
async fn cancelling_a_running_job_stops_its_handler_and_frees_the_slot() {
    let (coordinator, client) = coordinator().await;
    let worker = Worker::start(&coordinator.url(), &["--concurrency", "1"]).await;
    let id = client
        .submit(JobSpec::new("default", "sleep").payload("60000"))
        .await
        .expect("submit")
        .job_id;
    running_on(&client, worker.id(), 1).await;
    let done = client.cancel(&id).await.expect("cancel");
    assert_eq!(done.state(), JobState::Cancelled);
    assert_eq!(done.cancelled, std::slice::from_ref(&id));
    let job = client.get(&id).await.expect("get");
    assert_eq!(job.state(), JobState::Cancelled);
    assert_eq!(job.attempts[0].outcome(), AttemptOutcome::Cancelled);
    slots_free(&client, worker.id()).await;
    let next = client
        .run(JobSpec::new("default", "echo"), Some(PATIENCE))
        .await
        .expect("the slot is free");
    assert_eq!(next.state(), JobState::Succeeded);
}

#[tokio::test]
async fn a_handler_that_ignores_cancellation_is_abandoned_after_the_grace_period() {
    let (coordinator, client) = coordinator().await;
    let worker = Worker::start(
        &coordinator.url(),
        &["--concurrency", "1", "--cancel-grace", "500ms"],
    )
    .await;
    let id = client
        .submit(JobSpec::new("default", "hang").payload("60000"))
        .await
        .expect("submit")
        .job_id;
    running_on(&client, worker.id(), 1).await;
    let cancelled_at = Instant::now();
    client.cancel(&id).await.expect("cancel");
    // The job ends at once; the slot is held until the worker gives up on the handler.
    assert_eq!(
        client.get(&id).await.expect("get").state(),
        JobState::Cancelled
    );
    slots_free(&client, worker.id()).await;
    assert!(
        cancelled_at.elapsed() >= Duration::from_millis(450),
        "the slot came back after {:?}, before the grace period",
        cancelled_at.elapsed()
    );
    assert!(worker.log().contains("abandoning"), "{}", worker.log());
}

#[tokio::test]
async fn a_caller_that_hangs_up_on_run_cancels_the_job_unless_it_detached() {
    let (coordinator, client) = coordinator().await;
    let worker = Worker::start(&coordinator.url(), &["--concurrency", "2"]).await;
    let call = |detach: bool| {
        let channel = client.channel().clone();
        tokio::spawn(async move {
            JobServiceClient::new(channel)
                .run(RunRequest {
                    job: Some(
                        JobSpec::new("default", "sleep")
                            .payload("60000")
                            .into_request(),
                    ),
                    detach,
                })
                .await
        })
    };
    let attached = call(false);
    running_on(&client, worker.id(), 1).await;
    attached.abort();
    let job = eventually("the abandoned Run's job is cancelled", || async {
        let jobs = list(&client, ListFilter::default()).await;
        jobs.into_iter().find(|j| j.state() == JobState::Cancelled)
    })
    .await;
    assert!(job.error.contains("hung up"), "{}", job.error);
    slots_free(&client, worker.id()).await;

    let detached = call(true);
    running_on(&client, worker.id(), 1).await;
    detached.abort();
    let _ = detached.await;
    // Hanging up changed nothing: the job still runs (and we clean it up ourselves).
    let jobs = list(
        &client,
        ListFilter {
            state: Some(JobState::Running),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(jobs.len(), 1);
    running_on(&client, worker.id(), 1).await;
    client.cancel(&jobs[0].job_id).await.expect("cancel");
}

#[tokio::test]
async fn children_inherit_the_parents_deadline_and_end_with_it() {
    let (coordinator, client) = coordinator().await;
    let worker = Worker::start(&coordinator.url(), &["--concurrency", "4"]).await;
    let parent_deadline = SystemTime::now() + Duration::from_secs(60);
    let parent = client
        .submit(
            JobSpec::new("default", "fanout")
                .payload("2 sleep 60000")
                .deadline(parent_deadline),
        )
        .await
        .expect("submit")
        .job_id;
    let children = eventually("the parent started two children", || async {
        let children = list(
            &client,
            ListFilter {
                parent_job_id: Some(parent.clone()),
                ..Default::default()
            },
        )
        .await;
        (children.len() == 2 && children.iter().all(|c| c.state() == JobState::Running))
            .then_some(children)
    })
    .await;
    let parent_deadline_ms = ms_of(&parent_deadline.into());
    for child in &children {
        assert_eq!(child.parent_job_id, parent);
        let child_deadline = ms_of(&child.deadline.expect("a child inherits a deadline"));
        assert!(
            child_deadline <= parent_deadline_ms,
            "child deadline {child_deadline} is after the parent's {parent_deadline_ms}"
        );
    }
    running_on(&client, worker.id(), 3).await;

    let done = client.cancel(&parent).await.expect("cancel the parent");
    assert_eq!(done.cancelled.len(), 3, "the parent and its two children");
    for child in &children {
        let child = finished(&client, &child.job_id).await;
        assert_eq!(child.state(), JobState::Cancelled);
        assert!(child.error.contains("parent"), "{}", child.error);
    }
    slots_free(&client, worker.id()).await;
}

#[tokio::test]
async fn a_child_cannot_outlive_a_parent_with_a_short_deadline() {
    let (coordinator, client) = coordinator().await;
    let _worker = Worker::start(&coordinator.url(), &["--concurrency", "4"]).await;
    let started = Instant::now();
    let err = client
        .run(
            JobSpec::new("default", "fanout").payload("1 sleep 60000"),
            Some(Duration::from_millis(1500)),
        )
        .await
        .expect_err("the child sleeps past the parent's deadline");
    assert_eq!(err.code(), Some(tonic::Code::DeadlineExceeded), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "at the deadline, not when the 60 s sleep ends"
    );
    let all = list(&client, ListFilter::default()).await;
    assert_eq!(all.len(), 2, "the parent and one child");
    for job in all {
        let job = finished(&client, &job.job_id).await;
        assert!(
            matches!(
                job.state(),
                JobState::DeadlineExceeded | JobState::Cancelled
            ),
            "{job:?}"
        );
    }
}
