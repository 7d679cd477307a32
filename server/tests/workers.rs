//! The coordinator with real `switchyard-worker` processes: dispatch, ordering, retries, and
//! the faults a fleet meets (killed, frozen and draining workers, a killed coordinator, a worker
//! that stops reading).

mod support;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, SystemTime},
};

use futures::{StreamExt, stream};
use switchyard_client::{Batch, JobSpec};
use switchyard_proto::v1::{
    AttemptOutcome, Heartbeat, Hello, Job, JobState, WorkerMessage,
    worker_message::Message as ToCoordinator, worker_service_client::WorkerServiceClient,
};
use switchyard_testkit::Worker;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use support::{
    PATIENCE, connect, coordinator, eventually, finished, ms_of, outcomes, running_on, stats,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_jobs_across_workers_each_run_exactly_once() {
    let (coordinator, client) = coordinator().await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(Worker::start(&coordinator.url(), &["--concurrency", "8"]).await);
    }
    let mut ids = Vec::new();
    for batch in 0..3 {
        let jobs =
            (0..1000).map(|i| JobSpec::new("default", "echo").payload(format!("job-{batch}-{i}")));
        let done = client
            .submit_batch(Batch::new().jobs(jobs))
            .await
            .expect("submit a batch");
        ids.extend(done.jobs.into_iter().map(|j| j.job_id));
    }
    let jobs: Vec<Job> = stream::iter(ids.iter())
        .map(|id| finished(&client, id))
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(jobs.len(), 3000);
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for job in &jobs {
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
        assert_eq!(job.output, job.payload, "echo returns its payload");
        assert_eq!(job.attempt, 1, "each job ran exactly once: {job:?}");
        assert_eq!(
            outcomes(job),
            [(AttemptOutcome::Succeeded, job.worker_id.clone())]
        );
        *per_worker.entry(job.worker_id.clone()).or_default() += 1;
    }
    let expected: HashSet<String> = workers.iter().map(|w| w.id().to_owned()).collect();
    assert_eq!(per_worker.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(
        per_worker.values().all(|n| *n >= 300),
        "work spreads over the workers: {per_worker:?}"
    );
}

#[tokio::test]
async fn higher_priority_runs_first_then_submission_order() {
    let (coordinator, client) = coordinator().await;
    let mut ids = Vec::new();
    for priority in [0, 5, -3, 5, 10] {
        let job = JobSpec::new("ordered", "sleep")
            .payload("30")
            .priority(priority);
        ids.push((priority, client.submit(job).await.expect("submit").job_id));
    }
    // One slot: the worker takes them strictly one after the other, in dispatch order.
    let _worker = Worker::start(
        &coordinator.url(),
        &["--queues", "ordered", "--concurrency", "1"],
    )
    .await;
    let mut started = Vec::new();
    for (priority, id) in &ids {
        let job = finished(&client, id).await;
        assert_eq!(job.state(), JobState::Succeeded);
        started.push((
            ms_of(&job.attempts[0].started_at.expect("started")),
            *priority,
            id.clone(),
        ));
    }
    started.sort();
    let order: Vec<(i32, &str)> = started.iter().map(|(_, p, id)| (*p, id.as_str())).collect();
    assert_eq!(
        order,
        [
            (10, ids[4].1.as_str()),
            (5, ids[1].1.as_str()),
            (5, ids[3].1.as_str()),
            (0, ids[0].1.as_str()),
            (-3, ids[2].1.as_str()),
        ]
    );
}

#[tokio::test]
async fn a_delayed_job_waits_for_run_at_without_holding_up_others() {
    let (coordinator, client) = coordinator().await;
    let _worker = Worker::start(&coordinator.url(), &["--concurrency", "1"]).await;
    let run_at = SystemTime::now() + Duration::from_millis(1500);
    let later = client
        .submit(JobSpec::new("default", "echo").run_at(run_at))
        .await
        .expect("submit")
        .job_id;
    let now = client
        .submit(JobSpec::new("default", "echo"))
        .await
        .expect("submit")
        .job_id;
    let now = finished(&client, &now).await;
    let later = finished(&client, &later).await;
    let run_at_ms = ms_of(&run_at.into());
    let started = |job: &Job| ms_of(&job.attempts[0].started_at.expect("started"));
    assert!(started(&now) < run_at_ms, "the ready job did not wait");
    assert!(
        started(&later) >= run_at_ms,
        "started {} before its run_at {run_at_ms}",
        started(&later)
    );
}

#[tokio::test]
async fn a_failing_job_ends_failed_after_exactly_max_attempts_and_can_be_requeued() {
    let (coordinator, client) = coordinator().await;
    let _worker = Worker::start(&coordinator.url(), &[]).await;
    let id = client
        .submit(JobSpec::new("default", "fail").max_attempts(3))
        .await
        .expect("submit")
        .job_id;
    let job = finished(&client, &id).await;
    assert_eq!(job.state(), JobState::Failed);
    assert_eq!(job.attempt, 3);
    assert_eq!(job.attempts.len(), 3);
    assert!(
        job.attempts
            .iter()
            .all(|a| a.outcome() == AttemptOutcome::Failed)
    );
    assert!(job.error.contains("fail"), "{}", job.error);
    assert!(job.error.ends_with("(after 3 attempts)"), "{}", job.error);

    let failed = client
        .list(switchyard_client::ListFilter {
            state: Some(JobState::Failed),
            ..Default::default()
        })
        .collect::<Vec<_>>()
        .await;
    assert_eq!(failed.len(), 1, "List selects the failed job");

    let requeued = client.requeue(&id, Some(1)).await.expect("requeue");
    assert!(matches!(
        requeued.state(),
        JobState::Queued | JobState::Running
    ));
    let job = finished(&client, &id).await;
    assert_eq!(job.state(), JobState::Failed);
    assert_eq!(job.attempt, 4, "one more attempt after the requeue");
    assert_eq!(job.attempts.len(), 4);
    // The count is of the fresh attempts the requeue gave, in words a person writes.
    assert!(job.error.ends_with("(after 1 attempt)"), "{}", job.error);
}

#[tokio::test]
async fn a_panicking_handler_fails_its_attempt_and_the_worker_keeps_serving() {
    let (coordinator, client) = coordinator().await;
    let mut worker = Worker::start(&coordinator.url(), &["--concurrency", "1"]).await;
    let id = client
        .submit(JobSpec::new("default", "panic").max_attempts(2))
        .await
        .expect("submit")
        .job_id;
    let job = finished(&client, &id).await;
    assert_eq!(job.state(), JobState::Failed);
    assert_eq!(job.attempts.len(), 2);
    assert!(job.error.contains("panicked"), "{}", job.error);

    let after = client
        .run(
            JobSpec::new("default", "sha256").payload("abc"),
            Some(PATIENCE),
        )
        .await
        .expect("run");
    assert_eq!(after.state(), JobState::Succeeded);
    assert_eq!(after.worker_id, worker.id());
    assert_eq!(
        String::from_utf8_lossy(&after.output),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // Still the same process: it was never restarted.
    let alive = std::fs::metadata(format!("/proc/{}", worker.pid())).is_ok();
    assert!(alive);
    worker.kill().await;
}

#[tokio::test]
async fn jobs_of_a_killed_worker_finish_on_another_with_one_more_attempt() {
    let (coordinator, client) = coordinator().await;
    let mut first = Worker::start(&coordinator.url(), &["--concurrency", "2"]).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let job = JobSpec::new("default", "sleep").payload("1500");
        ids.push(client.submit(job).await.expect("submit").job_id);
    }
    running_on(&client, first.id(), 2).await;
    let second = Worker::start(&coordinator.url(), &["--concurrency", "2"]).await;
    first.kill().await;
    for id in &ids {
        let job = finished(&client, id).await;
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
        assert_eq!(job.worker_id, second.id());
        assert_eq!(
            outcomes(&job),
            [
                (AttemptOutcome::Lost, first.id().to_owned()),
                (AttemptOutcome::Succeeded, second.id().to_owned()),
            ]
        );
    }
}

#[tokio::test]
async fn a_frozen_worker_loses_its_job_and_its_late_result_is_refused() {
    let (coordinator, client) = coordinator().await;
    let mut frozen = Worker::start(&coordinator.url(), &["--concurrency", "1"]).await;
    let id = client
        .submit(JobSpec::new("default", "sleep").payload("1000"))
        .await
        .expect("submit")
        .job_id;
    running_on(&client, frozen.id(), 1).await;
    let other = Worker::start(&coordinator.url(), &["--concurrency", "1"]).await;
    frozen.pause();
    let job = finished(&client, &id).await;
    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(
        outcomes(&job),
        [
            (AttemptOutcome::Lost, frozen.id().to_owned()),
            (AttemptOutcome::Succeeded, other.id().to_owned()),
        ]
    );
    assert_eq!(stats(&client).await.refused_results, 0);

    // Thawed, it finds its stream gone, reconnects, and reports attempt 1: refused.
    frozen.resume();
    frozen.next_connected().await;
    eventually("the late result is refused", || async {
        (stats(&client).await.refused_results >= 1).then_some(())
    })
    .await;
    let after = client.get(&id).await.expect("get");
    assert_eq!(
        after.attempts, job.attempts,
        "the refused result changed nothing"
    );
    assert_eq!(after.worker_id, other.id());
}

#[tokio::test]
async fn a_draining_worker_finishes_or_hands_back_its_jobs_without_failing_them() {
    let (coordinator, client) = coordinator().await;
    // Short jobs finish within the grace period, on the worker that drains.
    let mut draining = Worker::start(
        &coordinator.url(),
        &["--concurrency", "2", "--drain-grace", "10s"],
    )
    .await;
    let mut short = Vec::new();
    for _ in 0..2 {
        let job = JobSpec::new("default", "sleep").payload("300");
        short.push(client.submit(job).await.expect("submit").job_id);
    }
    running_on(&client, draining.id(), 2).await;
    assert!(draining.terminate().await.success());
    for id in &short {
        let job = finished(&client, id).await;
        assert_eq!(job.state(), JobState::Succeeded);
        assert_eq!(
            outcomes(&job),
            [(AttemptOutcome::Succeeded, draining.id().to_owned())]
        );
    }

    // Long jobs outlive the grace period: handed back, and not counted against max_attempts.
    let mut draining = Worker::start(
        &coordinator.url(),
        &["--concurrency", "2", "--drain-grace", "200ms"],
    )
    .await;
    let mut long = Vec::new();
    for _ in 0..2 {
        let job = JobSpec::new("default", "sleep")
            .payload("2000")
            .max_attempts(1);
        long.push(client.submit(job).await.expect("submit").job_id);
    }
    running_on(&client, draining.id(), 2).await;
    assert!(draining.terminate().await.success());
    let next = Worker::start(&coordinator.url(), &["--concurrency", "2"]).await;
    for id in &long {
        let job = finished(&client, id).await;
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
        assert_eq!(
            outcomes(&job),
            [
                (AttemptOutcome::Released, draining.id().to_owned()),
                (AttemptOutcome::Succeeded, next.id().to_owned()),
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_job_ends_after_the_coordinator_is_killed_under_load() {
    let (mut coordinator, client) = coordinator().await;
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(Worker::start(&coordinator.url(), &["--concurrency", "4"]).await);
    }
    let (acked_tx, mut acked_rx) = mpsc::channel(4096);
    let submitter = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                let job = JobSpec::new("default", "sleep").payload(format!("{}", i % 7));
                match client.submit(job).await {
                    Ok(done) => {
                        if acked_tx.send(done.job_id).await.is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        })
    };
    // Kill it once a good part of the load has been acknowledged.
    let mut acked = Vec::new();
    while acked.len() < 150 {
        acked.push(acked_rx.recv().await.expect("submits are acknowledged"));
    }
    coordinator.kill().await;
    submitter
        .await
        .expect("the submitter stops at the first refusal");
    while let Ok(id) = acked_rx.try_recv() {
        acked.push(id);
    }

    coordinator.restart().await;
    for worker in &mut workers {
        worker.next_connected().await;
    }
    let client = connect(&coordinator).await;
    for id in &acked {
        let job = finished(&client, id).await;
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
        let last = job.attempts.last().expect("an attempt");
        assert_eq!(last.outcome(), AttemptOutcome::Succeeded);
        assert!(
            job.attempts[..job.attempts.len() - 1]
                .iter()
                .all(|a| a.outcome() == AttemptOutcome::Interrupted),
            "only the restart interrupted it: {:?}",
            outcomes(&job)
        );
    }
}

/// A worker that keeps heartbeating but never reads its stream holds a few credits' worth of
/// jobs at most; it is caught, its jobs move on, and the coordinator's memory does not grow
/// because of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_reading_neither_grows_memory_nor_holds_up_the_others() {
    let (coordinator, client) = coordinator().await;
    let worker = Worker::start(&coordinator.url(), &["--concurrency", "8"]).await;
    // 400 jobs of 256 KiB: 100 MiB a load. Buffering for the stalled reader past its credits
    // would keep a good part of that; its 50 credits allow 12.5 MiB, released when it is
    // dropped.
    let payload = vec![b'x'; 256 * 1024];
    let run_load = || async {
        let mut ids = Vec::new();
        for _ in 0..8 {
            let jobs = (0..50).map(|_| JobSpec::new("default", "echo").payload(payload.clone()));
            let done = match client.submit_batch(Batch::new().jobs(jobs)).await {
                Ok(done) => done,
                Err(err) => panic!("submit: {err}\n{}", coordinator.log()),
            };
            ids.extend(done.jobs.into_iter().map(|j| j.job_id));
        }
        for id in &ids {
            let job = finished(&client, id).await;
            assert_eq!(job.state(), JobState::Succeeded);
            assert_eq!(job.worker_id, worker.id());
        }
    };
    // The same load first without the stalled reader, twice: what the store, the caches and the
    // allocator take for the payloads passing through. The allocator's arenas settle at
    // different sizes from run to run (seen: 60 to 100 MiB after one load, on the same build),
    // so the baseline is the peak resident size over those loads, not one reading after them.
    run_load().await;
    run_load().await;
    let rss_baseline = proc_status_kib(coordinator.pid(), "VmHWM:");

    let (to_coordinator, outbound) = mpsc::channel(16);
    let send = |m: ToCoordinator| WorkerMessage { message: Some(m) };
    to_coordinator
        .send(send(ToCoordinator::Hello(Hello {
            worker_id: "never-reads".into(),
            queues: vec!["default".into()],
            kinds: vec![],
            slots: 50,
            version: "test".into(),
            heartbeat_interval: None,
            held: vec![],
        })))
        .await
        .expect("hello");
    // Its responses are never read: the stream is held, not polled.
    let _stream = WorkerServiceClient::new(client.channel().clone())
        .connect(ReceiverStream::new(outbound))
        .await
        .expect("connect");
    let heartbeats = tokio::spawn(async move {
        for sequence in 1.. {
            let beat = send(ToCoordinator::Heartbeat(Heartbeat {
                sequence,
                sent_at: None,
                ack: 0,
            }));
            if to_coordinator.send(beat).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    run_load().await;
    let workers = client.workers().await.expect("workers");
    assert!(
        workers.iter().all(|w| w.worker_id != "never-reads"),
        "the silent reader was dropped: {workers:?}"
    );
    let rss_after = proc_status_kib(coordinator.pid(), "VmRSS:");
    eprintln!("coordinator peak RSS without it {rss_baseline} KiB, RSS with it {rss_after} KiB");
    assert!(
        rss_after < rss_baseline + 40 * 1024,
        "coordinator RSS grew from {rss_baseline} KiB to {rss_after} KiB with a stalled reader"
    );
    heartbeats.abort();
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[tokio::test]
async fn run_returns_the_result_and_wait_is_bounded_by_the_call_deadline() {
    let (coordinator, client) = coordinator().await;
    let _worker = Worker::start(&coordinator.url(), &[]).await;
    let job = client
        .run(
            JobSpec::new("default", "echo").payload("hello"),
            Some(PATIENCE),
        )
        .await
        .expect("run");
    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(job.output, b"hello");

    // Nobody serves this queue: Wait gives up at the call's deadline.
    let id = client
        .submit(JobSpec::new("nobody", "echo"))
        .await
        .expect("submit")
        .job_id;
    let started = std::time::Instant::now();
    let err = client
        .wait(&id, Some(Duration::from_millis(300)))
        .await
        .expect_err("the deadline passes first");
    assert_eq!(err.code(), Some(tonic::Code::DeadlineExceeded), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let job = client.get(&id).await.expect("get");
    assert_eq!(job.state(), JobState::Queued);
    assert_eq!(
        job.blocked_on.map(|b| b.reason()),
        Some(switchyard_proto::v1::BlockedReason::NoWorker)
    );
}

#[tokio::test]
async fn a_worker_serves_only_its_queues_and_kinds() {
    let (coordinator, client) = coordinator().await;
    let worker = Worker::start(
        &coordinator.url(),
        &["--queues", "a,b", "--kinds", "echo,sha256"],
    )
    .await;
    let served = client
        .run(JobSpec::new("b", "sha256").payload(""), Some(PATIENCE))
        .await
        .expect("run");
    assert_eq!(served.worker_id, worker.id());
    assert_eq!(
        String::from_utf8_lossy(&served.output),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    for (queue, kind) in [("a", "sleep"), ("c", "echo")] {
        let id = client
            .submit(JobSpec::new(queue, kind).payload("1"))
            .await
            .expect("submit")
            .job_id;
        let job = client.get(&id).await.expect("get");
        assert_eq!(job.state(), JobState::Queued, "{queue}/{kind}");
        assert_eq!(
            job.blocked_on.map(|b| b.reason()),
            Some(switchyard_proto::v1::BlockedReason::NoWorker),
            "{queue}/{kind} has no worker"
        );
    }
    let workers = client.workers().await.expect("workers");
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].queues, ["a", "b"]);
    assert_eq!(workers[0].kinds, ["echo", "sha256"]);
}
