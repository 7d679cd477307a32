//! Jobs go in and come back out as they were sent: submit, get, list, cancel and idempotency,
//! against a real coordinator.

mod support;

use std::collections::HashMap;

use switchyard_client::{Batch, Client, JobSpec, ListFilter};
use switchyard_proto::{
    Duration,
    v1::{
        BlockedReason, CancelRequest, GetRequest, JobState, ListRequest, SubmitRequest,
        cancel_request::Target,
    },
};
use tokio::{sync::Barrier, task::JoinSet};
use tonic::{Code, Request};

use support::{
    DAY_MS, all_jobs, ids, jobs, list, ms_of, new_job, now_ms, start, stats, timestamp_ms,
};

const QUEUED: i32 = JobState::Queued as i32;
const CANCELLED: i32 = JobState::Cancelled as i32;

#[tokio::test]
async fn get_returns_every_field_as_submitted() {
    let (_coordinator, client) = start().await;
    let before = now_ms();
    let run_at = timestamp_ms(before + 3_600_000);
    let deadline = timestamp_ms(before + 2 * DAY_MS);
    let labels: HashMap<String, String> = [("team", "payments"), ("env", "test:1")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let request = SubmitRequest {
        queue: "emails.high-prio:v2_x".into(),
        kind: "send-email".into(),
        payload: vec![0, 1, 2, 0xfe, 0xff, b'\n'],
        priority: -17,
        max_attempts: Some(7),
        timeout: Some(Duration {
            seconds: 90,
            nanos: 250_000_000,
        }),
        deadline: Some(deadline),
        run_at: Some(run_at),
        idempotency_key: "order 42 · retry-safe".into(),
        concurrency_key: "customer:42".into(),
        weight: Some(5),
        labels: labels.clone(),
        ..Default::default()
    };
    let submitted = jobs(&client)
        .submit(request.clone())
        .await
        .expect("submit")
        .into_inner();
    let after = now_ms();
    assert!(!submitted.job_id.is_empty());
    assert!(!submitted.duplicate);
    assert_eq!(submitted.state, QUEUED);

    let job = client.get(&submitted.job_id).await.expect("get");
    assert_eq!(job.job_id, submitted.job_id);
    assert_eq!(job.queue, request.queue);
    assert_eq!(job.kind, request.kind);
    assert_eq!(job.payload, request.payload);
    assert_eq!(job.priority, -17);
    assert_eq!(job.max_attempts, 7);
    assert_eq!(job.timeout, request.timeout);
    assert_eq!(job.deadline, Some(deadline));
    assert_eq!(job.run_at, Some(run_at));
    assert_eq!(job.idempotency_key, request.idempotency_key);
    assert_eq!(job.concurrency_key, request.concurrency_key);
    assert_eq!(job.weight, 5);
    assert_eq!(job.labels, labels);
    assert!(job.depends_on.is_empty());
    assert_eq!(job.group_id, "");
    assert_eq!(job.state, QUEUED);
    assert_eq!(job.attempt, 0);
    assert!(job.attempts.is_empty());
    assert!(job.output.is_empty());
    assert_eq!(job.error, "");
    assert_eq!(job.started_at, None);
    assert_eq!(job.finished_at, None);
    assert_eq!(job.worker_id, "");
    let created = ms_of(&job.created_at.expect("created_at is set"));
    assert!(
        (before..=after).contains(&created),
        "created_at {created} is outside [{before}, {after}]"
    );
    // run_at lies ahead: the job says it waits for it, and until when.
    let blocked = job.blocked_on.expect("a queued job says why it waits");
    assert_eq!(
        blocked.reason,
        BlockedReason::Scheduled as i32,
        "{blocked:?}"
    );
    assert_eq!(blocked.until, Some(run_at));
    assert!(!blocked.detail.is_empty());
}

#[tokio::test]
async fn unset_fields_get_their_documented_defaults() {
    let (_coordinator, client) = start().await;
    let submitted = client
        .submit(JobSpec::new("default", "echo"))
        .await
        .expect("submit");
    let job = client.get(&submitted.job_id).await.expect("get");
    assert_eq!(job.max_attempts, 3);
    assert_eq!(job.weight, 1);
    assert_eq!(job.priority, 0);
    assert!(job.payload.is_empty());
    assert_eq!(job.timeout, None);
    assert_eq!(job.deadline, None);
    assert_eq!(job.run_at, None);
    assert!(job.labels.is_empty());
    assert_eq!(job.tenant_id, "");
    // Nothing serves any queue yet, and nothing else holds the job back.
    let blocked = job.blocked_on.expect("a queued job says why it waits");
    assert_eq!(
        blocked.reason,
        BlockedReason::NoWorker as i32,
        "{blocked:?}"
    );
    assert!(blocked.detail.contains("default"), "{blocked:?}");
}

#[tokio::test]
async fn metadata_sets_the_tenant_and_trace_of_the_job() {
    let (_coordinator, client) = start().await;
    let mut request = Request::new(new_job("default", "echo"));
    request
        .metadata_mut()
        .insert("x-tenant-id", "acme-corp".parse().expect("ascii"));
    request.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .expect("ascii"),
    );
    let id = jobs(&client)
        .submit(request)
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    let job = client.get(&id).await.expect("get");
    assert_eq!(job.tenant_id, "acme-corp");
    assert_eq!(job.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");

    // A malformed traceparent is ignored (W3C): the submit succeeds with no trace id.
    let mut request = Request::new(new_job("default", "echo"));
    request
        .metadata_mut()
        .insert("traceparent", "not-a-traceparent".parse().expect("ascii"));
    let id = jobs(&client)
        .submit(request)
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    assert_eq!(client.get(&id).await.expect("get").trace_id, "");
}

#[tokio::test]
async fn dependencies_and_groups_round_trip() {
    let (_coordinator, client) = start().await;
    let first = client
        .submit(JobSpec::new("pipeline", "fetch"))
        .await
        .expect("submit")
        .job_id;
    let second = client
        .submit(JobSpec::new("pipeline", "parse").depends_on(&first))
        .await
        .expect("submit")
        .job_id;
    let job = client.get(&second).await.expect("get");
    assert_eq!(job.depends_on, vec![first.clone()]);

    // Inside a batch, `ref`s name the batch's own jobs and become their ids.
    let batch = client
        .submit_batch(
            Batch::new()
                .group("fan-out.1")
                .job(JobSpec::new("pipeline", "split").reference("split"))
                .job(
                    JobSpec::new("pipeline", "work")
                        .reference("work")
                        .depends_on("split")
                        .depends_on(&first),
                ),
        )
        .await
        .expect("submit batch");
    assert_eq!(batch.group_id, "fan-out.1");
    assert_eq!(batch.jobs.len(), 2);
    let split = client.get(&batch.jobs[0].job_id).await.expect("get");
    let work = client.get(&batch.jobs[1].job_id).await.expect("get");
    assert_eq!(split.group_id, "fan-out.1");
    assert_eq!(work.group_id, "fan-out.1");
    assert_eq!(split.kind, "split");
    assert_eq!(work.kind, "work");
    assert_eq!(work.depends_on, vec![split.job_id.clone(), first]);
}

#[tokio::test]
async fn list_filters_by_queue_state_kind_and_group() {
    let (_coordinator, client) = start().await;
    let submit = |queue: &'static str, kind: &'static str| {
        let client = client.clone();
        async move {
            client
                .submit(JobSpec::new(queue, kind))
                .await
                .expect("submit")
                .job_id
        }
    };
    let a1 = submit("alpha", "resize").await;
    let a2 = submit("alpha", "encode").await;
    let b1 = submit("beta", "resize").await;
    let a3 = submit("alpha", "resize").await;
    let b2 = submit("beta", "encode").await;
    let grouped = client
        .submit_batch(
            Batch::new()
                .group("g1")
                .job(JobSpec::new("gamma", "resize"))
                .job(JobSpec::new("alpha", "encode")),
        )
        .await
        .expect("submit batch");
    let (g1, g2) = (
        grouped.jobs[0].job_id.clone(),
        grouped.jobs[1].job_id.clone(),
    );
    client.cancel(&a3).await.expect("cancel");

    let filter = |queue: Option<&str>, state, kind: Option<&str>, group: Option<&str>| ListFilter {
        queue: queue.map(Into::into),
        state,
        kind: kind.map(Into::into),
        group_id: group.map(Into::into),
        ..ListFilter::default()
    };
    let cases = [
        (
            filter(None, None, None, None),
            vec![&a1, &a2, &b1, &a3, &b2, &g1, &g2],
        ),
        (
            filter(Some("alpha"), None, None, None),
            vec![&a1, &a2, &a3, &g2],
        ),
        (filter(Some("beta"), None, None, None), vec![&b1, &b2]),
        (
            filter(None, None, Some("resize"), None),
            vec![&a1, &b1, &a3, &g1],
        ),
        (
            filter(None, Some(JobState::Cancelled), None, None),
            vec![&a3],
        ),
        (
            filter(Some("alpha"), Some(JobState::Queued), Some("resize"), None),
            vec![&a1],
        ),
        (filter(None, None, None, Some("g1")), vec![&g1, &g2]),
        (filter(None, None, Some("encode"), Some("g1")), vec![&g2]),
        (filter(Some("nowhere"), None, None, None), vec![]),
        (filter(None, Some(JobState::Succeeded), None, None), vec![]),
    ];
    for (filter, expected) in cases {
        let described = format!("{filter:?}");
        let found = ids(&list(&client, filter).await);
        assert_eq!(found.iter().collect::<Vec<_>>(), expected, "{described}");
    }
}

/// Submits `n` jobs one after the other and returns their ids in submission order.
async fn submit_sequentially(client: &Client, n: usize) -> Vec<String> {
    let mut submitted = Vec::with_capacity(n);
    for i in 0..n {
        let job = JobSpec::new("paged", "echo").payload(format!("job {i}"));
        submitted.push(client.submit(job).await.expect("submit").job_id);
    }
    submitted
}

#[tokio::test]
async fn pages_return_each_job_once_in_submission_order() {
    let (_coordinator, client) = start().await;
    let submitted = submit_sequentially(&client, 25).await;

    let mut seen = Vec::new();
    let mut pages = 0;
    let mut page_token = String::new();
    loop {
        let page = jobs(&client)
            .list(ListRequest {
                page_size: 4,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        assert!(
            page.jobs.len() <= 4,
            "page {pages} has {} jobs",
            page.jobs.len()
        );
        seen.extend(ids(&page.jobs));
        if page.next_page_token.is_empty() {
            break;
        }
        assert_eq!(page.jobs.len(), 4, "only the last page may be short");
        page_token = page.next_page_token;
        assert!(pages < 100, "paging does not end");
    }
    assert_eq!(seen, submitted);
    assert_eq!(pages, 7, "25 jobs in pages of 4");

    // A page size that divides the count: the last full page says there is nothing more.
    let page = jobs(&client)
        .list(ListRequest {
            page_size: 25,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(ids(&page.jobs), submitted);
    assert_eq!(page.next_page_token, "");
}

#[tokio::test]
async fn the_sdk_list_stream_pages_through_everything() {
    let (_coordinator, client) = start().await;
    let submitted = submit_sequentially(&client, 25).await;
    for page_size in [1, 3, 5, 1000] {
        let listed = list(
            &client,
            ListFilter {
                page_size: Some(page_size),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(ids(&listed), submitted, "page size {page_size}");
        assert_eq!(listed[7].payload, b"job 7");
    }
    assert_eq!(ids(&all_jobs(&client).await), submitted);
}

#[tokio::test]
async fn cancelling_a_queued_job() {
    let (_coordinator, client) = start().await;
    let keep = client
        .submit(JobSpec::new("default", "echo"))
        .await
        .expect("submit")
        .job_id;
    let id = client
        .submit(JobSpec::new("default", "echo"))
        .await
        .expect("submit")
        .job_id;

    let before = now_ms();
    let response = jobs(&client)
        .cancel(CancelRequest {
            target: Some(Target::JobId(id.clone())),
            reason: "changed my mind".into(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(response.cancelled, vec![id.clone()]);
    assert_eq!(response.state, CANCELLED);

    let job = client.get(&id).await.expect("get");
    assert_eq!(job.state, CANCELLED);
    assert_eq!(job.error, "changed my mind");
    let finished = ms_of(&job.finished_at.expect("a cancelled job has finished_at"));
    assert!(
        finished >= before,
        "finished_at {finished} is before the cancel ({before})"
    );
    assert_eq!(job.blocked_on, None, "only queued jobs are blocked");
    assert_eq!(client.get(&keep).await.expect("get").state, QUEUED);

    // Again: a cancelled job has finished, and cancelling a finished job is
    // FAILED_PRECONDITION (as the README says), naming the state; nothing more changes.
    let again = jobs(&client)
        .cancel(CancelRequest {
            target: Some(Target::JobId(id.clone())),
            reason: "again".into(),
        })
        .await
        .expect_err("a cancelled job has already ended");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert!(
        again.message().ends_with("already ended (cancelled)"),
        "{again:?}"
    );
    let job = client.get(&id).await.expect("get");
    assert_eq!(job.error, "changed my mind");
}

#[tokio::test]
async fn cancelling_an_unknown_job_is_not_found() {
    let (_coordinator, client) = start().await;
    for target in [
        Target::JobId("0190d3c0-0000-7000-8000-000000000000".into()),
        Target::GroupId("no-such-group".into()),
    ] {
        let status = jobs(&client)
            .cancel(CancelRequest {
                target: Some(target.clone()),
                reason: String::new(),
            })
            .await
            .expect_err("nothing to cancel");
        assert_eq!(status.code(), Code::NotFound, "{target:?}: {status:?}");
    }
}

#[tokio::test]
async fn cancelling_a_group_cancels_its_queued_jobs() {
    let (_coordinator, client) = start().await;
    let outsider = client
        .submit(JobSpec::new("default", "echo"))
        .await
        .expect("submit")
        .job_id;
    let batch = client
        .submit_batch(
            Batch::new()
                .group("batch-7")
                .jobs((0..4).map(|i| JobSpec::new("default", "echo").payload(format!("{i}")))),
        )
        .await
        .expect("submit batch");
    let members: Vec<String> = batch.jobs.iter().map(|j| j.job_id.clone()).collect();
    // One member is already cancelled: the group cancel reports only what it changed.
    client.cancel(&members[1]).await.expect("cancel one");

    let response = client.cancel_group("batch-7").await.expect("cancel group");
    let mut cancelled = response.cancelled.clone();
    cancelled.sort();
    let mut expected = vec![members[0].clone(), members[2].clone(), members[3].clone()];
    expected.sort();
    assert_eq!(cancelled, expected);

    for id in &members {
        assert_eq!(client.get(id).await.expect("get").state, CANCELLED, "{id}");
    }
    assert_eq!(client.get(&outsider).await.expect("get").state, QUEUED);

    let again = client
        .cancel_group("batch-7")
        .await
        .expect("cancel group again");
    assert!(again.cancelled.is_empty(), "{again:?}");
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_job() {
    let (_coordinator, client) = start().await;
    let spec = || JobSpec::new("orders", "charge").idempotency_key("order-1001");
    let first = client
        .submit(spec().payload("first"))
        .await
        .expect("submit");
    assert!(!first.duplicate);
    let second = client
        .submit(spec().payload("second"))
        .await
        .expect("submit");
    assert!(second.duplicate);
    assert_eq!(second.job_id, first.job_id);
    assert_eq!(second.state, QUEUED);

    let stored = all_jobs(&client).await;
    assert_eq!(ids(&stored), [first.job_id.as_str()]);
    assert_eq!(
        stored[0].payload, b"first",
        "the first job is kept as it was"
    );

    // The key is per queue: another queue gets a job of its own.
    let other = client
        .submit(JobSpec::new("refunds", "charge").idempotency_key("order-1001"))
        .await
        .expect("submit");
    assert!(!other.duplicate);
    assert_ne!(other.job_id, first.job_id);
    assert_eq!(all_jobs(&client).await.len(), 2);
    let store = stats(&client).await.store.expect("store stats");
    assert_eq!(store.rows_written, 2, "{store:?}");
}

#[tokio::test]
async fn a_duplicate_reports_the_first_jobs_current_state() {
    let (_coordinator, client) = start().await;
    let spec = || JobSpec::new("orders", "charge").idempotency_key("k");
    let first = client.submit(spec()).await.expect("submit");
    client.cancel(&first.job_id).await.expect("cancel");
    let again = client.submit(spec()).await.expect("submit");
    assert!(again.duplicate);
    assert_eq!(again.job_id, first.job_id);
    assert_eq!(again.state, CANCELLED);
}

#[tokio::test]
async fn a_run_with_a_used_idempotency_key_answers_for_the_first_job() {
    let (_coordinator, client) = start().await;
    let spec = || JobSpec::new("orders", "charge").idempotency_key("order-7");
    let first = client.submit(spec()).await.expect("submit");
    // No worker runs it: the Run waits for the first job, which ends when it is cancelled,
    // whether that comes before the Run looks at it or after.
    let run = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .run(spec(), Some(std::time::Duration::from_secs(60)))
                .await
        })
    };
    client.cancel(&first.job_id).await.expect("cancel");
    let job = run.await.expect("join").expect("run");
    assert_eq!(job.job_id, first.job_id);
    assert_eq!(job.state, CANCELLED);
    // Once it has ended, a Run with its key answers at once.
    let again = client
        .run(spec(), Some(std::time::Duration::from_secs(60)))
        .await
        .expect("run");
    assert_eq!((again.job_id, again.state), (first.job_id, CANCELLED));
    assert_eq!(all_jobs(&client).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_with_one_key_store_one_job() {
    const SUBMITTERS: usize = 50;
    let (_coordinator, client) = start().await;
    let barrier = std::sync::Arc::new(Barrier::new(SUBMITTERS));
    let mut tasks = JoinSet::new();
    for i in 0..SUBMITTERS {
        let client = client.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            client
                .submit(
                    JobSpec::new("orders", "charge")
                        .idempotency_key("same-key")
                        .payload(format!("{i}")),
                )
                .await
                .expect("submit")
        });
    }
    let responses = tasks.join_all().await;
    let first_ids: Vec<_> = responses.iter().filter(|r| !r.duplicate).collect();
    assert_eq!(
        first_ids.len(),
        1,
        "exactly one submit creates the job: {responses:?}"
    );
    let id = &first_ids[0].job_id;
    assert!(responses.iter().all(|r| &r.job_id == id), "{responses:?}");
    assert_eq!(ids(&all_jobs(&client).await), [id.as_str()]);
}

#[tokio::test]
async fn a_batch_reuses_earlier_jobs_by_idempotency_key() {
    let (_coordinator, client) = start().await;
    let earlier = client
        .submit(JobSpec::new("orders", "charge").idempotency_key("a"))
        .await
        .expect("submit")
        .job_id;
    let batch = client
        .submit_batch(
            Batch::new()
                .job(JobSpec::new("orders", "charge").idempotency_key("a"))
                .job(JobSpec::new("orders", "charge").idempotency_key("b")),
        )
        .await
        .expect("submit batch");
    assert!(batch.jobs[0].duplicate);
    assert_eq!(batch.jobs[0].job_id, earlier);
    assert!(!batch.jobs[1].duplicate);
    assert_eq!(
        ids(&all_jobs(&client).await),
        [earlier, batch.jobs[1].job_id.clone()]
    );
}

/// Two jobs of one batch with the same key in the same queue: the second is a duplicate of the
/// first, or the batch is refused naming it. Either way the answer is not an internal error.
#[tokio::test]
async fn a_batch_repeating_a_key_within_itself_is_answered_cleanly() {
    let (coordinator, client) = start().await;
    let result = jobs(&client)
        .submit_batch(
            Batch::new()
                .job(JobSpec::new("orders", "charge").idempotency_key("twice"))
                .job(JobSpec::new("orders", "charge").idempotency_key("twice"))
                .into_request(),
        )
        .await;
    match result {
        Ok(response) => {
            let response = response.into_inner();
            assert!(!response.jobs[0].duplicate);
            assert!(response.jobs[1].duplicate);
            assert_eq!(response.jobs[1].job_id, response.jobs[0].job_id);
            assert_eq!(all_jobs(&client).await.len(), 1);
        }
        Err(status) => {
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{status:?}\ncoordinator log:\n{}",
                coordinator.log()
            );
            assert!(
                status.message().contains("jobs[1].idempotency_key"),
                "{status:?}"
            );
            assert!(all_jobs(&client).await.is_empty());
        }
    }
}

#[tokio::test]
async fn get_finds_what_list_finds() {
    let (_coordinator, client) = start().await;
    let submitted = submit_sequentially(&client, 3).await;
    for job in all_jobs(&client).await {
        let got = jobs(&client)
            .get(GetRequest {
                job_id: job.job_id.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(got.payload, job.payload);
        assert_eq!(got.created_at, job.created_at);
        assert!(submitted.contains(&got.job_id));
    }
}

#[tokio::test]
async fn stats_count_jobs_per_queue_and_state() {
    let (_coordinator, client) = start().await;
    for queue in ["alpha", "alpha", "alpha", "beta", "beta"] {
        client
            .submit(JobSpec::new(queue, "echo"))
            .await
            .expect("submit");
    }
    let first_alpha = all_jobs(&client).await[0].job_id.clone();
    client.cancel(&first_alpha).await.expect("cancel");

    let stats = stats(&client).await;
    let queues: Vec<(&str, u64, u64, u64)> = stats
        .queues
        .iter()
        .map(|q| {
            (
                q.queue.as_str(),
                q.queued,
                q.cancelled,
                q.running + q.succeeded + q.failed,
            )
        })
        .collect();
    assert_eq!(queues, [("alpha", 2, 1, 0), ("beta", 2, 0, 0)]);
    assert!(stats.queues.iter().all(|q| !q.paused));
    assert_eq!(stats.workers, 0);
    let store = stats.store.expect("store stats");
    // Five submits and one cancel, each writing one row.
    assert_eq!(store.commands, 6, "{store:?}");
    assert_eq!(store.rows_written, 6, "{store:?}");
    assert!(store.commits >= 1 && store.commits <= 6, "{store:?}");

    // A paused queue says so, even one that has no jobs yet.
    client.pause_queue("beta", true).await.expect("pause beta");
    client
        .pause_queue("gamma", true)
        .await
        .expect("pause gamma");
    let paused: Vec<(String, bool)> = support::stats(&client)
        .await
        .queues
        .into_iter()
        .map(|q| (q.queue, q.paused))
        .collect();
    assert_eq!(
        paused,
        [
            ("alpha".to_owned(), false),
            ("beta".to_owned(), true),
            ("gamma".to_owned(), true)
        ]
    );
}

/// `Timestamp` and `Duration` carry nanoseconds; what `JobSpec::run_at(SystemTime::now() + …)`
/// sends should come back unchanged from `Get`.
#[tokio::test]
async fn times_are_kept_to_the_millisecond() {
    let (_coordinator, client) = start().await;
    let at = |ms: i64, extra_nanos: i32| {
        let mut t = timestamp_ms(ms);
        t.nanos += extra_nanos;
        t
    };
    let run_at = now_ms() + 3_600_000;
    let deadline = now_ms() + DAY_MS;
    let request = SubmitRequest {
        run_at: Some(at(run_at, 123_456)),
        deadline: Some(at(deadline, 654_321)),
        timeout: Some(Duration {
            seconds: 1,
            nanos: 1_500_000,
        }),
        ..new_job("default", "echo")
    };
    let id = jobs(&client)
        .submit(request)
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    let job = client.get(&id).await.expect("get");
    assert_eq!(job.run_at, Some(timestamp_ms(run_at)), "run_at");
    assert_eq!(job.deadline, Some(timestamp_ms(deadline)), "deadline");
    assert_eq!(
        job.timeout,
        Some(Duration {
            seconds: 1,
            nanos: 1_000_000
        }),
        "timeout"
    );
}

/// DESIGN: a queued job can always say why it is not running — here, its dependency.
#[tokio::test]
async fn a_job_waiting_for_its_dependencies_says_so() {
    let (_coordinator, client) = start().await;
    let first = client
        .submit(JobSpec::new("pipeline", "fetch"))
        .await
        .expect("submit")
        .job_id;
    let second = client
        .submit(JobSpec::new("pipeline", "parse").depends_on(&first))
        .await
        .expect("submit")
        .job_id;
    let blocked = client
        .get(&second)
        .await
        .expect("get")
        .blocked_on
        .expect("a queued job says why it waits");
    assert_eq!(
        blocked.reason,
        BlockedReason::Dependencies as i32,
        "{blocked:?}"
    );
    assert_eq!(blocked.waiting_for, vec![first]);
}

/// DESIGN: "if one [dependency] ends otherwise [than SUCCEEDED], the dependents end CANCELLED
/// with that reason". A cancel ends a job, so its queued dependents (and theirs) end too.
#[tokio::test]
async fn cancelling_a_job_cancels_its_dependents() {
    let (_coordinator, client) = start().await;
    let first = client
        .submit(JobSpec::new("pipeline", "fetch"))
        .await
        .expect("submit")
        .job_id;
    let second = client
        .submit(JobSpec::new("pipeline", "parse").depends_on(&first))
        .await
        .expect("submit")
        .job_id;
    let third = client
        .submit(JobSpec::new("pipeline", "store").depends_on(&second))
        .await
        .expect("submit")
        .job_id;
    let unrelated = client
        .submit(JobSpec::new("pipeline", "fetch"))
        .await
        .expect("submit")
        .job_id;

    client.cancel(&first).await.expect("cancel");

    for id in [&second, &third] {
        let job = client.get(id).await.expect("get");
        assert_eq!(
            job.state, CANCELLED,
            "dependent {id} is still {}",
            job.state
        );
        assert!(
            !job.error.is_empty(),
            "dependent {id} says why it was cancelled"
        );
    }
    assert_eq!(client.get(&unrelated).await.expect("get").state, QUEUED);

    // A job submitted after its dependency was cancelled can never run either.
    let late = client
        .submit(JobSpec::new("pipeline", "parse").depends_on(&first))
        .await;
    match late {
        Ok(late) => assert_eq!(
            client.get(&late.job_id).await.expect("get").state,
            CANCELLED,
            "a job waiting for a cancelled job stays queued forever"
        ),
        Err(err) => assert!(
            matches!(
                err.code(),
                Some(Code::FailedPrecondition | Code::InvalidArgument)
            ),
            "{err}"
        ),
    }
}
