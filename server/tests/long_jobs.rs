//! Long jobs with a real coordinator and real `switchyard-worker` processes: a queue's default
//! attempt timeout (a quota), children that belong to their parent's attempt, and a job
//! waiting on its dependencies that expires at its deadline.

mod support;

use std::time::{Duration, SystemTime};

use switchyard_client::{Client, JobSpec, ListFilter};
use switchyard_proto::v1::{AttemptOutcome, Job, JobState, Quota, SubmitRequest};
use switchyard_testkit::Worker;
use tonic::Code;

use support::{
    coordinator, eventually, finished, held, jobs, list, ms_of, new_job, quota_of, span,
};

/// Waits until the job is running, and returns it.
async fn running(client: &Client, id: &str) -> Job {
    eventually(&format!("{id} running"), || async {
        let job = client.get(id).await.ok()?;
        (job.state() == JobState::Running).then_some(job)
    })
    .await
}

fn seconds(s: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: s,
        nanos: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queues_attempt_timeout_stops_hung_attempts_and_gives_their_permits_back() {
    let (coordinator, client) = coordinator().await;
    // Only for queue scopes, and a sane duration: refused with the field named.
    for (scope, timeout) in [("key:k", seconds(1)), ("queue:slow", seconds(0))] {
        let err = client
            .set_quota(Quota {
                scope: scope.into(),
                attempt_timeout: Some(timeout),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
        assert!(err.to_string().contains("quota.attempt_timeout"), "{err}");
    }
    // A quota with only an attempt timeout is a quota, not "no limit".
    client
        .set_quota(Quota {
            scope: "queue:slow".into(),
            attempt_timeout: Some(seconds(1)),
            ..Default::default()
        })
        .await
        .expect("set the attempt timeout");
    client
        .set_quota(Quota {
            scope: "queue:slow".into(),
            max_in_flight: Some(1),
            attempt_timeout: Some(seconds(1)),
            ..Default::default()
        })
        .await
        .expect("and a permit limit with it");
    let quota = quota_of(&client, "queue:slow").await.expect("listed");
    assert_eq!(quota.attempt_timeout, Some(seconds(1)));
    assert_eq!(quota.max_in_flight, Some(1));

    let _worker = Worker::start(
        &coordinator.url(),
        &["--queues", "slow", "--concurrency", "4"],
    )
    .await;
    let hung = client
        .submit(
            JobSpec::new("slow", "sleep")
                .payload("60000")
                .max_attempts(2),
        )
        .await
        .expect("submit")
        .job_id;
    // Its own timeout wins over the queue's.
    let own = client
        .submit(
            JobSpec::new("slow", "sleep")
                .payload("1500")
                .timeout(Duration::from_secs(30)),
        )
        .await
        .expect("submit")
        .job_id;

    let hung = finished(&client, &hung).await;
    assert_eq!(hung.state(), JobState::Failed, "{hung:?}");
    assert!(
        hung.error
            .contains("its queue's attempt timeout of 1000 ms"),
        "{}",
        hung.error
    );
    assert_eq!(hung.attempts.len(), 2, "timed out, retried, timed out");
    for attempt in &hung.attempts {
        assert_eq!(attempt.outcome(), AttemptOutcome::DeadlineExceeded);
        let (start, end) = span(attempt);
        assert!(
            (900..10_000).contains(&(end - start)),
            "stopped near its queue's timeout: {} ms",
            end - start
        );
    }
    let own = finished(&client, &own).await;
    assert_eq!(own.state(), JobState::Succeeded, "{own:?}");
    let (start, end) = span(&own.attempts[0]);
    assert!(end - start >= 1500, "ran past the queue's timeout");
    // The permits came back: nothing is held, and the queue takes work again.
    held(&client, "queue:slow", 0).await;
    let after = client
        .run(JobSpec::new("slow", "echo").payload("ok"), None)
        .await
        .expect("run");
    assert_eq!(after.state(), JobState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_of_a_failed_attempt_are_cancelled_and_its_retry_runs_fresh_ones() {
    let (coordinator, client) = coordinator().await;
    let _worker = Worker::start(&coordinator.url(), &["--concurrency", "8"]).await;
    // Its first attempt submits two children that sleep, then fails; the second submits two
    // more and waits for them.
    let parent = client
        .submit(
            JobSpec::new("default", "flaky-fanout")
                .payload("2 sleep 3000")
                .max_attempts(3),
        )
        .await
        .expect("submit")
        .job_id;
    let parent = finished(&client, &parent).await;
    assert_eq!(parent.state(), JobState::Succeeded, "{parent:?}");
    assert_eq!(parent.attempts.len(), 2);
    let children = list(
        &client,
        ListFilter {
            parent_job_id: Some(parent.job_id.clone()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(children.len(), 4, "two per attempt: {children:?}");
    let second_started = ms_of(parent.attempts[1].started_at.as_ref().expect("started"));
    for child in &children {
        let child = finished(&client, &child.job_id).await;
        let created = ms_of(child.created_at.as_ref().expect("created"));
        if created < second_started {
            assert_eq!(child.state(), JobState::Cancelled, "{child:?}");
            assert!(
                child.error.contains("attempt 1 of its parent"),
                "{}",
                child.error
            );
        } else {
            assert_eq!(child.state(), JobState::Succeeded, "{child:?}");
        }
    }
    let cancelled = children.iter().filter(|c| {
        let created = ms_of(c.created_at.as_ref().expect("created"));
        created < second_started
    });
    assert_eq!(cancelled.count(), 2, "the first attempt's two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_of_an_attempt_that_is_not_running_is_refused() {
    let (coordinator, client) = coordinator().await;
    let _worker = Worker::start(&coordinator.url(), &[]).await;
    let parent = client
        .submit(JobSpec::new("default", "sleep").payload("60000"))
        .await
        .expect("submit")
        .job_id;
    let parent = running(&client, &parent).await;
    assert_eq!(parent.attempt, 1);
    let as_child = |attempt: &str| {
        let mut request = tonic::Request::new(SubmitRequest {
            payload: b"60000".to_vec(),
            ..new_job("nobody-serves-this", "sleep")
        });
        let metadata = request.metadata_mut();
        metadata.insert(
            "x-switchyard-parent-job",
            parent.job_id.parse().expect("ascii"),
        );
        metadata.insert(
            "x-switchyard-parent-attempt",
            attempt.parse().expect("ascii"),
        );
        request
    };
    let mut api = jobs(&client);
    let late = api
        .submit(as_child("2"))
        .await
        .expect_err("attempt 2 is not running");
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    let bad = api
        .submit(as_child("zero"))
        .await
        .expect_err("not a number");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let child = api
        .submit(as_child("1"))
        .await
        .expect("a child of the running attempt")
        .into_inner()
        .job_id;
    // The attempt ends (cancelled): its child goes with it, and then no child of it joins.
    client.cancel(&parent.job_id).await.expect("cancel");
    let child = finished(&client, &child).await;
    assert_eq!(child.state(), JobState::Cancelled, "{child:?}");
    let ended = api
        .submit(as_child("1"))
        .await
        .expect_err("the parent ended");
    assert_eq!(ended.code(), Code::FailedPrecondition, "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_on_a_running_dependency_expires_at_its_deadline() {
    let (coordinator, client) = coordinator().await;
    let _worker = Worker::start(&coordinator.url(), &[]).await;
    let dependency = client
        .submit(JobSpec::new("default", "sleep").payload("60000"))
        .await
        .expect("submit")
        .job_id;
    running(&client, &dependency).await;
    let (waiting, deadline) = support::submit_expiring(&client, Duration::from_secs(1), |at| {
        JobSpec::new("default", "echo")
            .depends_on(&dependency)
            .deadline(at)
    })
    .await;
    let after = client
        .submit(JobSpec::new("default", "echo").depends_on(&waiting))
        .await
        .expect("submit")
        .job_id;

    let job = finished(&client, &waiting).await;
    assert_eq!(job.state(), JobState::DeadlineExceeded, "{job:?}");
    assert!(job.attempts.is_empty(), "it never ran");
    let ended = ms_of(job.finished_at.as_ref().expect("finished"));
    let deadline_ms = ms_of(&deadline.into());
    assert!(
        // A timer rounds to the millisecond; a busy machine may be late.
        (deadline_ms - 100..deadline_ms + 10_000).contains(&ended),
        "ended at its deadline: {ended} vs {deadline_ms}"
    );
    let after = finished(&client, &after).await;
    assert_eq!(after.state(), JobState::Cancelled, "{after:?}");
    let dependency = client.get(&dependency).await.expect("get");
    assert_eq!(
        dependency.state(),
        JobState::Running,
        "its dependency still runs"
    );
    client.cancel(&dependency.job_id).await.expect("cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_jobs_deadline_survives_a_restart() {
    let (mut coordinator, client) = coordinator().await;
    // Nothing serves the dependency's queue: it stays queued.
    let dependency = client
        .submit(JobSpec::new("nobody-serves-this", "echo"))
        .await
        .expect("submit")
        .job_id;
    let waiting = client
        .submit(
            JobSpec::new("default", "echo")
                .depends_on(&dependency)
                .deadline(SystemTime::now() + Duration::from_secs(3)),
        )
        .await
        .expect("submit")
        .job_id;
    coordinator.terminate().await;
    coordinator.restart().await;
    let client = support::connect(&coordinator).await;
    let job = finished(&client, &waiting).await;
    assert_eq!(job.state(), JobState::DeadlineExceeded, "{job:?}");
    let dependency = client.get(&dependency).await.expect("get");
    assert_eq!(dependency.state(), JobState::Queued);
}
