//! Quotas with a real coordinator and real `switchyard-worker` processes that have more slots
//! than the limits: fleet-wide weighted semaphores (also across a limit change and a killed
//! coordinator), token buckets, fairness between tenants, admission by `max_queued`, and
//! `blocked_on` saying which of them holds a job back.

mod support;

use std::{collections::HashSet, time::Duration};

use switchyard_client::{Batch, Client, JobSpec};
use switchyard_proto::v1::{
    AttemptOutcome, BlockedReason, Job, JobState, ListQuotasRequest, Quota, SetQuotaRequest,
};
use switchyard_testkit::Worker;
use tonic::Code;

use support::{
    admin, all_jobs, assert_names, connect, coordinator, eventually, finished, finished_all, held,
    held_reaches, max_overlap, ms_of, now_ms, quota_of, span, stats, submit_all,
};

fn in_flight(scope: &str, max: u32) -> Quota {
    Quota {
        scope: scope.into(),
        max_in_flight: Some(max),
        ..Default::default()
    }
}

async fn set(client: &Client, quota: Quota) {
    let scope = quota.scope.clone();
    client
        .set_quota(quota)
        .await
        .unwrap_or_else(|e| panic!("set the quota of {scope}: {e}"));
}

/// The spans of every ended attempt of these jobs, each with its job's weight.
fn spans(jobs: &[Job]) -> Vec<(i64, i64, u32)> {
    jobs.iter()
        .flat_map(|job| {
            job.attempts
                .iter()
                .map(|a| {
                    let (start, end) = span(a);
                    (start, end, job.weight.max(1))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_all_succeeded(jobs: &[Job]) {
    for job in jobs {
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
    }
}

/// The start of a job's only attempt.
fn started_ms(job: &Job) -> i64 {
    assert_eq!(job.attempts.len(), 1, "one attempt: {job:?}");
    ms_of(job.attempts[0].started_at.as_ref().expect("started"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_never_runs_deeper_than_its_limit_across_workers_with_more_slots() {
    let (coordinator, client) = coordinator().await;
    set(&client, in_flight("key:k", 3)).await;
    let workers = [
        Worker::start(&coordinator.url(), &["--concurrency", "8"]).await,
        Worker::start(&coordinator.url(), &["--concurrency", "8"]).await,
    ];
    let ids = submit_all(
        &client,
        (0..30).map(|_| {
            JobSpec::new("default", "sleep")
                .payload("150")
                .concurrency_key("k")
        }),
    )
    .await;
    let jobs = finished_all(&client, &ids).await;
    assert_all_succeeded(&jobs);
    for job in &jobs {
        assert_eq!(job.attempts.len(), 1, "{job:?}");
    }
    let deepest = max_overlap(spans(&jobs));
    assert!(
        deepest <= 3,
        "{deepest} jobs of key:k ran at once; the limit is 3"
    );
    assert_eq!(deepest, 3, "16 slots and 30 jobs: the limit is reached");
    let ran_on: HashSet<&str> = jobs.iter().map(|j| j.worker_id.as_str()).collect();
    let expected: HashSet<&str> = workers.iter().map(Worker::id).collect();
    assert_eq!(ran_on, expected, "the limit held across both workers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_jobs_never_hold_more_permits_than_the_limit() {
    let (coordinator, client) = coordinator().await;
    set(&client, in_flight("key:w", 4)).await;
    let _workers = [
        Worker::start(&coordinator.url(), &["--concurrency", "8"]).await,
        Worker::start(&coordinator.url(), &["--concurrency", "8"]).await,
    ];
    let ids = submit_all(
        &client,
        (0..24).map(|i| {
            JobSpec::new("default", "sleep")
                .payload("150")
                .concurrency_key("w")
                .weight(if i % 3 == 0 { 2 } else { 1 })
        }),
    )
    .await;
    let jobs = finished_all(&client, &ids).await;
    assert_all_succeeded(&jobs);
    assert_eq!(
        jobs.iter().filter(|j| j.weight == 2).count(),
        8,
        "the weights were stored"
    );
    let weighted = max_overlap(spans(&jobs));
    assert!(
        weighted <= 4,
        "jobs of key:w held {weighted} permits at once; the limit is 4"
    );
    assert!(
        weighted >= 3,
        "16 slots and 24 jobs: the permits were used, only {weighted} at most"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_lowered_at_run_time_holds_once_the_jobs_running_then_have_finished() {
    let (coordinator, client) = coordinator().await;
    set(&client, in_flight("key:low", 6)).await;
    let _workers = [
        Worker::start(&coordinator.url(), &["--concurrency", "8"]).await,
        Worker::start(&coordinator.url(), &["--concurrency", "8"]).await,
    ];
    let ids = submit_all(
        &client,
        (0..30).map(|_| {
            JobSpec::new("default", "sleep")
                .payload("250")
                .concurrency_key("low")
        }),
    )
    .await;
    let before = held_reaches(&client, "key:low", 6).await;
    assert_eq!(before, 6, "key:low holds no more than its limit of 6");
    set(&client, in_flight("key:low", 2)).await;
    // ListQuotas asks the scheduler after SetQuota did: once it answers, the scheduler has
    // the new limit, and everything it picked before is already committed (started earlier).
    let now = quota_of(&client, "key:low").await.expect("key:low");
    let applied = now_ms();
    assert_eq!(now.max_in_flight, Some(2));

    let jobs = finished_all(&client, &ids).await;
    assert_all_succeeded(&jobs);
    let all = spans(&jobs);
    assert_eq!(
        max_overlap(all.iter().copied()),
        6,
        "the first limit was reached"
    );
    // When every attempt that may have started under the old limit has ended.
    let drained = all
        .iter()
        .filter(|(start, _, _)| *start <= applied)
        .map(|(_, end, _)| *end)
        .max()
        .expect("jobs were running when the limit changed");
    let after: Vec<(i64, i64, u32)> = all
        .iter()
        .filter(|(_, end, _)| *end > drained)
        .map(|(start, end, w)| ((*start).max(drained), *end, *w))
        .collect();
    assert!(
        after.len() >= 10,
        "most of the backlog ran under the new limit: {} attempts",
        after.len()
    );
    let deepest = max_overlap(after);
    assert!(
        deepest <= 2,
        "{deepest} ran at once after the limit was lowered to 2"
    );
    assert_eq!(deepest, 2, "the new limit is still used in full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_after_the_coordinator_is_killed_and_restarted() {
    let (mut coordinator, client) = coordinator().await;
    set(&client, in_flight("key:kr", 3)).await;
    let mut workers = [
        Worker::start(&coordinator.url(), &["--concurrency", "8"]).await,
        Worker::start(&coordinator.url(), &["--concurrency", "8"]).await,
    ];
    let ids = submit_all(
        &client,
        (0..30).map(|_| {
            JobSpec::new("default", "sleep")
                .payload("300")
                .concurrency_key("kr")
        }),
    )
    .await;
    let before = held_reaches(&client, "key:kr", 3).await;
    assert_eq!(before, 3, "key:kr holds no more than its limit of 3");
    coordinator.kill().await;
    let killed = now_ms();
    coordinator.restart().await;
    for worker in &mut workers {
        worker.next_connected().await;
    }
    let client = connect(&coordinator).await;
    let quota = quota_of(&client, "key:kr")
        .await
        .expect("the quota was persisted");
    assert_eq!(quota.max_in_flight, Some(3));

    let jobs = finished_all(&client, &ids).await;
    assert_all_succeeded(&jobs);
    // The jobs running at the kill are reclaimed by their workers, not restarted (only a start
    // committed in the kill's last instant, never sent, ends `interrupted`; reconnect.rs shows
    // the reclaim with long jobs): nothing counts as a failed attempt, and their permits are
    // held across the restart.
    assert!(
        jobs.iter()
            .flat_map(|j| &j.attempts)
            .all(|a| a.outcome() != AttemptOutcome::Lost),
        "the restart lost no attempt"
    );
    let all = spans(&jobs);
    let after: Vec<(i64, i64, u32)> = all
        .iter()
        .filter(|(start, _, _)| *start > killed)
        .copied()
        .collect();
    assert!(
        after.len() >= 10,
        "most jobs ran after the restart: {}",
        after.len()
    );
    let deepest = max_overlap(after);
    assert!(
        deepest <= 3,
        "{deepest} jobs of key:kr ran at once after the restart; the limit is 3"
    );
    assert_eq!(
        deepest, 3,
        "16 slots: the limit is reached after the restart"
    );
    assert!(
        max_overlap(all) <= 3,
        "the attempts running at the kill hold their permits until they end, across the restart"
    );
}

#[tokio::test]
async fn a_rate_limited_queue_dispatches_at_its_rate() {
    let (coordinator, client) = coordinator().await;
    set(
        &client,
        Quota {
            scope: "queue:r".into(),
            rate_per_second: Some(20.0),
            burst: Some(1),
            ..Default::default()
        },
    )
    .await;
    let _worker = Worker::start(&coordinator.url(), &["--queues", "r", "--concurrency", "8"]).await;
    let ids = submit_all(
        &client,
        (0..40).map(|i| JobSpec::new("r", "echo").payload(format!("{i}"))),
    )
    .await;
    let jobs = finished_all(&client, &ids).await;
    assert_all_succeeded(&jobs);
    let starts: Vec<i64> = jobs.iter().map(started_ms).collect();
    let first = *starts.iter().min().expect("jobs");
    let last = *starts.iter().max().expect("jobs");
    let took = Duration::from_millis((last - first) as u64);
    // One token at once, then one every 50 ms: 39 more take 1.95 s.
    assert!(
        took >= Duration::from_millis(1500),
        "40 dispatches at 20/s took only {took:?}"
    );
    assert!(
        took <= Duration::from_secs(6),
        "40 dispatches at 20/s took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_a_few_jobs_is_not_stuck_behind_another_tenants_backlog() {
    let (coordinator, client) = coordinator().await;
    let a = client.clone().with_tenant("tenant-a").expect("tenant a");
    let b = client.clone().with_tenant("tenant-b").expect("tenant b");
    let mut a_ids = Vec::new();
    for _ in 0..2 {
        a_ids.extend(
            submit_all(
                &a,
                (0..1000).map(|_| JobSpec::new("fair", "sleep").payload("5")),
            )
            .await,
        );
    }
    let b_ids = submit_all(
        &b,
        (0..5).map(|_| JobSpec::new("fair", "sleep").payload("5")),
    )
    .await;
    // Everything is queued when the one worker comes: the order is the scheduler's alone.
    let _worker = Worker::start(
        &coordinator.url(),
        &["--queues", "fair", "--concurrency", "4"],
    )
    .await;
    let b_jobs = finished_all(&client, &b_ids).await;
    let a_jobs = finished_all(&client, &a_ids).await;
    assert_all_succeeded(&a_jobs);
    assert_all_succeeded(&b_jobs);
    assert!(a_jobs.iter().all(|j| j.tenant_id == "tenant-a"));
    assert!(b_jobs.iter().all(|j| j.tenant_id == "tenant-b"));
    let mut a_starts: Vec<i64> = a_jobs.iter().map(started_ms).collect();
    a_starts.sort_unstable();
    let b_last = b_jobs.iter().map(started_ms).max().expect("b's jobs");
    assert!(
        b_last < a_starts[199],
        "tenant b's last job started at {b_last}, after tenant a's 200th ({})",
        a_starts[199]
    );
    let a_before = a_starts.iter().filter(|t| **t < b_last).count();
    assert!(
        a_before <= 20,
        "{a_before} of tenant a's jobs started before tenant b's five had"
    );
}

#[tokio::test]
async fn a_submit_past_max_queued_is_refused_naming_the_scope_and_stores_nothing() {
    let (_coordinator, client) = coordinator().await;
    // Admission has looked, and found no limit, before the quota is set: it binds all the same.
    client
        .submit(JobSpec::new("elsewhere", "echo"))
        .await
        .expect("no quota yet");
    set(
        &client,
        Quota {
            scope: "queue:adm".into(),
            max_queued: Some(5),
            ..Default::default()
        },
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let done = client
            .submit(JobSpec::new("adm", "echo"))
            .await
            .expect("within max_queued");
        ids.push(done.job_id);
    }
    let rows = stats(&client)
        .await
        .store
        .expect("store stats")
        .rows_written;
    let err = client
        .submit(JobSpec::new("adm", "echo"))
        .await
        .expect_err("the sixth is past max_queued");
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(
        err.to_string().contains("queue:adm"),
        "names the scope: {err}"
    );
    assert_eq!(
        all_jobs(&client).await.len(),
        1 + 5,
        "the refused job was not stored"
    );
    assert_eq!(
        quota_of(&client, "queue:adm").await.expect("quota").queued,
        5
    );

    // One slot left: a batch of two is refused whole.
    client.cancel(&ids[0]).await.expect("cancel one");
    assert_eq!(
        quota_of(&client, "queue:adm").await.expect("quota").queued,
        4
    );
    let rows_before_batch = stats(&client)
        .await
        .store
        .expect("store stats")
        .rows_written;
    assert!(rows_before_batch > rows, "the cancel was written");
    let err = client
        .submit_batch(Batch::new().jobs((0..2).map(|_| JobSpec::new("adm", "echo"))))
        .await
        .expect_err("two do not fit in one slot");
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(
        err.to_string().contains("queue:adm"),
        "names the scope: {err}"
    );
    assert_eq!(
        all_jobs(&client).await.len(),
        1 + 5,
        "nothing of the batch stored"
    );
    assert_eq!(
        stats(&client)
            .await
            .store
            .expect("store stats")
            .rows_written,
        rows_before_batch,
        "the refused batch wrote no row"
    );
    // The slot is there for one job, and other queues are not limited.
    client
        .submit_batch(Batch::new().job(JobSpec::new("adm", "echo")))
        .await
        .expect("one fits");
    client
        .submit(JobSpec::new("elsewhere", "echo"))
        .await
        .expect("another queue has no max_queued");
    assert_eq!(all_jobs(&client).await.len(), 1 + 7);
}

/// A repeated submit (same idempotency key) adds no job, so `max_queued` has no reason to
/// refuse it: it returns the first job, as it does below the limit. A client retrying a submit
/// whose answer it lost must not be told that its stored job was refused.
#[tokio::test]
async fn a_repeated_submit_at_max_queued_returns_the_first_job() {
    let (_coordinator, client) = coordinator().await;
    set(
        &client,
        Quota {
            scope: "queue:idem".into(),
            max_queued: Some(2),
            ..Default::default()
        },
    )
    .await;
    let first = client
        .submit(JobSpec::new("idem", "echo").idempotency_key("once"))
        .await
        .expect("submit")
        .job_id;
    client
        .submit(JobSpec::new("idem", "echo"))
        .await
        .expect("the second fits");
    let again = client
        .submit(JobSpec::new("idem", "echo").idempotency_key("once"))
        .await
        .expect("a repeated submit stores nothing, so the full queue does not refuse it");
    assert!(again.duplicate);
    assert_eq!(again.job_id, first);
    assert_eq!(all_jobs(&client).await.len(), 2);
}

#[tokio::test]
async fn a_queued_job_says_which_permit_pause_or_rate_limit_holds_it_back() {
    let (coordinator, client) = coordinator().await;
    let worker = Worker::start(
        &coordinator.url(),
        &["--queues", "default,p,rl", "--concurrency", "8"],
    )
    .await;

    // Permits: one of key:ex, held by a long sleep.
    set(&client, in_flight("key:ex", 1)).await;
    let holder = client
        .submit(
            JobSpec::new("default", "sleep")
                .payload("60000")
                .concurrency_key("ex"),
        )
        .await
        .expect("submit")
        .job_id;
    held(&client, "key:ex", 1).await;
    let waiting = client
        .submit(
            JobSpec::new("default", "echo")
                .concurrency_key("ex")
                .payload("w"),
        )
        .await
        .expect("submit")
        .job_id;
    let job = client.get(&waiting).await.expect("get");
    assert_eq!(job.state(), JobState::Queued);
    let blocked = job.blocked_on.expect("a queued job says why");
    assert_eq!(blocked.reason(), BlockedReason::Permit, "{blocked:?}");
    assert_eq!(blocked.scope, "key:ex");
    assert_eq!((blocked.held, blocked.limit), (1, 1));
    client.cancel(&holder).await.expect("cancel the holder");
    let job = finished(&client, &waiting).await;
    assert_eq!(
        job.state(),
        JobState::Succeeded,
        "the freed permit went to it"
    );

    // A paused queue: nothing of it is dispatched until it is resumed.
    let paused = client.pause_queue("p", true).await.expect("pause");
    assert_eq!(paused, ["p"]);
    let held_back = client
        .submit(JobSpec::new("p", "echo").payload("p"))
        .await
        .expect("submit")
        .job_id;
    let job = client.get(&held_back).await.expect("get");
    assert_eq!(
        job.blocked_on.map(|b| b.reason()),
        Some(BlockedReason::QueuePaused)
    );
    // The same worker serves another queue meanwhile: it is dispatching, just not from "p".
    let other = client
        .run(JobSpec::new("default", "echo"), Some(support::PATIENCE))
        .await
        .expect("run");
    assert_eq!(other.worker_id, worker.id());
    let job = client.get(&held_back).await.expect("get");
    assert_eq!(job.state(), JobState::Queued);
    assert_eq!(job.attempt, 0, "not dispatched while paused");
    let resumed = now_ms();
    let after = client.pause_queue("p", false).await.expect("resume");
    assert!(after.is_empty());
    let job = finished(&client, &held_back).await;
    assert_eq!(job.state(), JobState::Succeeded);
    assert!(
        started_ms(&job) >= resumed,
        "it started only after the resume"
    );

    // A rate limit: the burst of one goes at once, the next token is far away.
    set(
        &client,
        Quota {
            scope: "queue:rl".into(),
            rate_per_second: Some(0.001),
            burst: Some(1),
            ..Default::default()
        },
    )
    .await;
    let first = client
        .run(JobSpec::new("rl", "echo"), Some(support::PATIENCE))
        .await
        .expect("the burst's token");
    assert_eq!(first.state(), JobState::Succeeded);
    let second = client
        .submit(JobSpec::new("rl", "echo"))
        .await
        .expect("submit")
        .job_id;
    let job = client.get(&second).await.expect("get");
    assert_eq!(job.state(), JobState::Queued);
    let blocked = job.blocked_on.expect("a queued job says why");
    assert_eq!(blocked.reason(), BlockedReason::RateLimit, "{blocked:?}");
    assert_eq!(blocked.scope, "queue:rl");
    let until = ms_of(&blocked.until.expect("when the next token comes"));
    assert!(until > now_ms() + 60_000, "one token per 1000 s: {until}");
}

#[tokio::test]
async fn bad_quotas_are_refused_and_change_nothing() {
    let (_coordinator, client) = coordinator().await;
    set(&client, in_flight("key:good", 2)).await;
    let before = client.quotas().await.expect("list quotas");
    assert_eq!(before.len(), 1);
    let bad = [
        (in_flight("bogus:x", 1), "quota.scope"),
        (in_flight("no-prefix", 1), "quota.scope"),
        (in_flight("key:", 1), "quota.scope"),
        (in_flight("key:good", 0), "quota.max_in_flight"),
        (
            Quota {
                scope: "queue:q".into(),
                rate_per_second: Some(-5.0),
                ..Default::default()
            },
            "quota.rate_per_second",
        ),
        (
            Quota {
                scope: "queue:q".into(),
                rate_per_second: Some(f64::NAN),
                ..Default::default()
            },
            "quota.rate_per_second",
        ),
    ];
    let mut admin = admin(&client);
    for (quota, field) in bad {
        let scope = quota.scope.clone();
        let status = admin
            .set_quota(SetQuotaRequest { quota: Some(quota) })
            .await
            .expect_err("a bad quota is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{scope}: {status:?}");
        assert_names(&status, field);
    }
    let status = admin
        .set_quota(SetQuotaRequest { quota: None })
        .await
        .expect_err("a quota is required");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let after = admin
        .list_quotas(ListQuotasRequest {})
        .await
        .expect("list quotas")
        .into_inner()
        .quotas;
    assert_eq!(after, before, "the refusals changed nothing");
}

/// `ListQuotas` reports the permits held and the jobs queued in a scope (the tests above wait
/// on them), and a cancelled attempt gives its permits back.
#[tokio::test]
async fn list_quotas_reports_held_permits_and_queued_jobs() {
    let (coordinator, client) = coordinator().await;
    set(&client, in_flight("key:h", 2)).await;
    let ids = submit_all(
        &client,
        (0..3).map(|_| {
            JobSpec::new("default", "sleep")
                .payload("60000")
                .concurrency_key("h")
        }),
    )
    .await;
    let quota = quota_of(&client, "key:h").await.expect("quota");
    assert_eq!((quota.held, quota.queued), (0, 3), "no worker yet");
    let _worker = Worker::start(&coordinator.url(), &["--concurrency", "8"]).await;
    held(&client, "key:h", 2).await;
    let quota = eventually("one job still queued", || async {
        let q = quota_of(&client, "key:h").await?;
        (q.queued == 1).then_some(q)
    })
    .await;
    assert_eq!(quota.held, 2, "never more than the limit");
    for id in &ids {
        client.cancel(id).await.expect("cancel");
    }
    held(&client, "key:h", 0).await;
}
