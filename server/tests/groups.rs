//! Fan-out/fan-in, errgroup and pipelines, with the real coordinator and real workers:
//! `WatchGroup` streams every result then the outcome, resumes from a cursor, survives a
//! coordinator restart; a failing job of an errgroup stops its siblings; stages feed stages.

mod support;

use std::collections::HashSet;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use switchyard_client::{Batch, Client, JobSpec};
use switchyard_proto::v1::{
    AttemptOutcome, GetGroupRequest, GroupEvent, GroupOutcome, JobResult, JobState,
    WatchGroupRequest, group_event::Event, job_service_client::JobServiceClient,
};
use switchyard_testkit::Worker;

use support::{connect, coordinator, finished, running_on};

/// Reads a group's events from `cursor` on: (results, outcome if the stream got that far,
/// last cursor). Stops after `limit` results when given.
async fn watch(
    client: &Client,
    group: &str,
    cursor: &str,
    limit: Option<usize>,
) -> (Vec<JobResult>, Option<GroupOutcome>, String) {
    let mut stream = JobServiceClient::new(client.channel().clone())
        .watch_group(WatchGroupRequest {
            group_id: group.into(),
            cursor: cursor.into(),
        })
        .await
        .expect("watch the group")
        .into_inner();
    let mut results = Vec::new();
    let mut last = cursor.to_owned();
    while let Some(event) = stream.next().await {
        let GroupEvent { event, cursor } = event.expect("a group event");
        last = cursor;
        match event.expect("an event") {
            Event::Result(result) => {
                results.push(result);
                if limit.is_some_and(|n| results.len() >= n) {
                    return (results, None, last);
                }
            }
            Event::Outcome(outcome) => {
                assert!(
                    stream.next().await.is_none(),
                    "the outcome is the last event"
                );
                return (results, Some(outcome), last);
            }
        }
    }
    (results, None, last)
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_a_thousand_streams_every_result_then_its_outcome() {
    let (coordinator, client) = coordinator().await;
    let _workers = [
        Worker::start(&coordinator.url(), &["--concurrency", "8"]).await,
        Worker::start(&coordinator.url(), &["--concurrency", "8"]).await,
    ];
    let batch = Batch::new()
        .group("thousand")
        .jobs((0..1000).map(|i| JobSpec::new("default", "echo").payload(format!("{i}"))));
    let submitted = client.submit_batch(batch).await.expect("submit the group");
    assert_eq!(submitted.group_id, "thousand");

    let (results, outcome, _) = watch(&client, "thousand", "", None).await;
    assert_eq!(results.len(), 1000);
    let ids: HashSet<&str> = results.iter().map(|r| r.job_id.as_str()).collect();
    let expected: HashSet<&str> = submitted.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, expected, "every job once");
    assert!(results.iter().all(|r| r.state() == JobState::Succeeded));
    let outcome = outcome.expect("the outcome closes the stream");
    assert_eq!(outcome.state(), JobState::Succeeded);
    assert_eq!(
        (outcome.size, outcome.succeeded, outcome.failed),
        (1000, 1000, 0)
    );

    // Watching a finished group replays it from the start.
    let (again, outcome, _) = watch(&client, "thousand", "", None).await;
    assert_eq!(again.len(), 1000);
    assert!(outcome.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_a_cursor_after_a_dropped_watch_loses_and_repeats_nothing() {
    let (coordinator, client) = coordinator().await;
    let _worker = Worker::start(&coordinator.url(), &["--concurrency", "4"]).await;
    let batch = Batch::new()
        .group("resumable")
        .jobs((0..200).map(|i| JobSpec::new("default", "sleep").payload(format!("{}", i % 5))));
    client.submit_batch(batch).await.expect("submit");

    // The first watcher hangs up after 50 results; a new connection resumes from its cursor.
    let (first, outcome, cursor) = watch(&client, "resumable", "", Some(50)).await;
    assert!(outcome.is_none());
    let other = connect(&coordinator).await;
    let (rest, outcome, _) = watch(&other, "resumable", &cursor, None).await;
    assert!(outcome.is_some());
    let mut seen: Vec<&str> = first
        .iter()
        .chain(&rest)
        .map(|r| r.job_id.as_str())
        .collect();
    assert_eq!(seen.len(), 200, "no result lost or repeated");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_failure_of_an_errgroup_cancels_its_siblings_promptly() {
    let (coordinator, client) = coordinator().await;
    let worker = Worker::start(&coordinator.url(), &["--concurrency", "8"]).await;
    let batch = Batch::new()
        .group("errgroup")
        .cancel_on_failure(true)
        .jobs((0..5).map(|_| JobSpec::new("default", "sleep").payload("60000")))
        .job(JobSpec::new("default", "fail").max_attempts(1))
        // More than the slots: some siblings are still queued when the failure comes.
        .jobs((0..5).map(|_| JobSpec::new("default", "sleep").payload("60000")));
    let submitted = client.submit_batch(batch).await.expect("submit");
    let started = std::time::Instant::now();
    let (results, outcome, _) = watch(&client, "errgroup", "", None).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "stopped after {:?}",
        started.elapsed()
    );
    let outcome = outcome.expect("outcome");
    assert_eq!(outcome.state(), JobState::Failed);
    assert_eq!((outcome.failed, outcome.cancelled), (1, 10));
    assert!(outcome.error.contains("fail"), "{}", outcome.error);
    assert_eq!(results.len(), 11);
    for id in submitted.jobs.iter().map(|j| &j.job_id) {
        let job = finished(&client, id).await;
        if job.kind == "sleep" {
            assert_eq!(job.state(), JobState::Cancelled, "{job:?}");
            assert!(
                job.attempts
                    .iter()
                    .all(|a| a.outcome() == AttemptOutcome::Cancelled)
            );
        }
    }
    // The stopped handlers gave their slots back.
    running_on(&client, worker.id(), 0).await;
    let group = JobServiceClient::new(client.channel().clone())
        .get_group(GetGroupRequest {
            group_id: "errgroup".into(),
        })
        .await
        .expect("get the group")
        .into_inner();
    assert_eq!(group.state(), JobState::Failed);
    assert_eq!(group.failed_job_id, submitted.jobs[5].job_id);
}

#[tokio::test]
async fn a_collect_all_group_runs_everything_and_counts_each_end() {
    let (coordinator, client) = coordinator().await;
    let _worker = Worker::start(&coordinator.url(), &["--concurrency", "4"]).await;
    let batch = Batch::new()
        .group("collect")
        .jobs((0..6).map(|i| JobSpec::new("default", "echo").payload(format!("{i}"))))
        .jobs((0..2).map(|_| JobSpec::new("default", "fail").max_attempts(1)));
    client.submit_batch(batch).await.expect("submit");
    let (results, outcome, _) = watch(&client, "collect", "", None).await;
    let outcome = outcome.expect("outcome");
    assert_eq!(results.len(), 8);
    assert_eq!(outcome.state(), JobState::Failed);
    assert_eq!(
        (outcome.succeeded, outcome.failed, outcome.cancelled),
        (6, 2, 0),
        "a collect-all group runs every job"
    );
}

#[tokio::test]
async fn a_pipeline_feeds_each_stage_into_the_next() {
    let (coordinator, client) = coordinator().await;
    let _worker = Worker::start(&coordinator.url(), &[]).await;
    let batch = Batch::new()
        .group("pipeline")
        .job(
            JobSpec::new("default", "echo")
                .payload("hello")
                .reference("read"),
        )
        .job(
            JobSpec::new("default", "sha256")
                .reference("hash")
                .depends_on("read"),
        )
        .job(
            JobSpec::new("default", "sha256")
                .reference("rehash")
                .depends_on("hash"),
        );
    let submitted = client.submit_batch(batch).await.expect("submit");
    let (_, outcome, _) = watch(&client, "pipeline", "", None).await;
    assert_eq!(outcome.expect("outcome").state(), JobState::Succeeded);
    let last = client.get(&submitted.jobs[2].job_id).await.expect("get");
    assert_eq!(
        String::from_utf8_lossy(&last.output),
        sha256_hex(sha256_hex(b"hello").as_bytes()),
        "the output is sha256(sha256(echo(hello)))"
    );
}

#[tokio::test]
async fn a_failed_stage_cancels_what_depends_on_it() {
    let (coordinator, client) = coordinator().await;
    let _worker = Worker::start(&coordinator.url(), &[]).await;
    let batch = Batch::new()
        .job(
            JobSpec::new("default", "fail")
                .max_attempts(1)
                .reference("broken"),
        )
        .job(
            JobSpec::new("default", "sha256")
                .reference("next")
                .depends_on("broken"),
        )
        .job(JobSpec::new("default", "sha256").depends_on("next"));
    let submitted = client.submit_batch(batch).await.expect("submit");
    let ids: Vec<&str> = submitted.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(finished(&client, ids[0]).await.state(), JobState::Failed);
    for id in &ids[1..] {
        let job = finished(&client, id).await;
        assert_eq!(job.state(), JobState::Cancelled);
        assert!(job.attempts.is_empty(), "it never ran");
        assert!(job.error.contains("dependency"), "{}", job.error);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_finishes_and_reports_every_job_across_a_coordinator_restart() {
    let (mut coordinator, client) = coordinator().await;
    let mut worker = Worker::start(&coordinator.url(), &["--concurrency", "4"]).await;
    let batch = Batch::new().group("restarted").jobs(
        (0..100).map(|i| JobSpec::new("default", "sleep").payload(format!("{}", 20 + i % 10))),
    );
    let submitted = client.submit_batch(batch).await.expect("submit");
    let (before, _, cursor) = watch(&client, "restarted", "", Some(20)).await;

    coordinator.kill().await;
    coordinator.restart().await;
    worker.next_connected().await;
    let client = connect(&coordinator).await;
    let (after, outcome, _) = watch(&client, "restarted", &cursor, None).await;
    let outcome = outcome.expect("the group completes");
    assert_eq!(outcome.state(), JobState::Succeeded);
    assert_eq!(outcome.succeeded, 100);
    let seen: HashSet<&str> = before
        .iter()
        .chain(&after)
        .map(|r| r.job_id.as_str())
        .collect();
    let expected: HashSet<&str> = submitted.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(seen, expected, "every job reported");
    assert_eq!(before.len() + after.len(), 100, "none twice");
}
