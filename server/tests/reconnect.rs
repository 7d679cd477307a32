//! Work that outlives its stream: a coordinator restart (clean or SIGKILL) or a network blip
//! costs no attempt; a worker gone for longer than the grace period, or dead, has its jobs
//! re-run elsewhere and its late results refused. Real coordinator and worker processes; the
//! network is broken with a TCP proxy between worker and coordinator.

mod support;

use std::time::{Duration, Instant};

use support::{connect, eventually, finished, ms_of, now_ms, outcomes, running_on, stats};
use switchyard_client::{Batch, Client, JobSpec};
use switchyard_proto::v1::{AttemptOutcome, JobState};
use switchyard_testkit::{Coordinator, Proxy, Worker};

/// Worker flags that log each handler's start (`starting`), to see that it really runs.
const LOG_STARTS: &[&str] = &[
    "--concurrency",
    "10",
    "--log",
    "info,switchyard_worker=debug",
];

/// Waits until `worker` has started `n` handlers: the coordinator's count is of assignments
/// sent, and a cut may catch one still in flight (never received, so not held on to).
async fn handlers_started(worker: &Worker, n: usize) {
    eventually(
        &format!("{n} handlers started on {}", worker.id()),
        || async {
            (worker
                .log()
                .matches("switchyard_worker::session: starting")
                .count()
                >= n)
                .then_some(())
        },
    )
    .await;
}

/// Submits `n` `sleep` jobs of `millis` each in one batch.
async fn sleepers(client: &Client, n: usize, millis: u64) -> Vec<String> {
    let jobs = (0..n).map(|_| JobSpec::new("default", "sleep").payload(millis.to_string()));
    let done = client
        .submit_batch(Batch::new().jobs(jobs))
        .await
        .expect("submit");
    done.jobs.into_iter().map(|j| j.job_id).collect()
}

/// 20 jobs of 30 s on two workers; 10 s in, the coordinator restarts. Every job finishes
/// with its first attempt, about 30 s after it started, not 40.
async fn a_restart_costs_running_work_nothing(kill: bool) {
    let mut coordinator =
        Coordinator::start_with(&["--heartbeat-interval", "200ms", "--reconnect-grace", "10s"])
            .await;
    let client = connect(&coordinator).await;
    let mut workers = [
        Worker::start(&coordinator.url(), &["--concurrency", "10"]).await,
        Worker::start(&coordinator.url(), &["--concurrency", "10"]).await,
    ];
    let ids = sleepers(&client, 20, 30_000).await;
    for worker in &workers {
        running_on(&client, worker.id(), 10).await;
    }
    // The scenario itself, not a synchronisation: the restart comes 10 s into the jobs.
    tokio::time::sleep(Duration::from_secs(10)).await;
    if kill {
        coordinator.kill().await;
    } else {
        let status = coordinator.terminate().await;
        assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
    }
    coordinator.restart().await;
    for worker in &mut workers {
        worker.next_connected().await;
    }
    for id in &ids {
        let job = finished(&client, id).await;
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
        let [attempt] = job.attempts.as_slice() else {
            panic!("one attempt, not {:?}", outcomes(&job));
        };
        let ran = ms_of(attempt.finished_at.as_ref().expect("finished"))
            - ms_of(attempt.started_at.as_ref().expect("started"));
        assert!(
            (29_900..36_000).contains(&ran),
            "it ran on, finishing near 30 s, not restarted: {ran} ms"
        );
    }
    assert_eq!(stats(&client).await.refused_results, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restarted_with_sigterm_keeps_every_running_job_on_its_first_attempt() {
    a_restart_costs_running_work_nothing(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_and_restarted_keeps_every_running_job_on_its_first_attempt() {
    a_restart_costs_running_work_nothing(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_network_cut_costs_no_attempt() {
    let coordinator =
        Coordinator::start_with(&["--heartbeat-interval", "200ms", "--reconnect-grace", "6s"])
            .await;
    let client = connect(&coordinator).await;
    let proxy = Proxy::start(coordinator.addr()).await;
    let mut worker = Worker::start(&proxy.url(), LOG_STARTS).await;
    let ids = sleepers(&client, 10, 4_000).await;
    handlers_started(&worker, 10).await;
    proxy.down();
    // The outage itself.
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.up();
    worker.next_connected().await;
    for id in &ids {
        let job = finished(&client, id).await;
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
        assert_eq!(
            outcomes(&job),
            [(AttemptOutcome::Succeeded, worker.id().to_owned())],
            "one attempt, on the worker that was cut off"
        );
    }
    assert_eq!(stats(&client).await.refused_results, 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_longer_than_the_grace_reruns_the_jobs_elsewhere_and_refuses_the_late_results() {
    let coordinator =
        Coordinator::start_with(&["--heartbeat-interval", "200ms", "--reconnect-grace", "1s"])
            .await;
    let client = connect(&coordinator).await;
    let proxy = Proxy::start(coordinator.addr()).await;
    let mut cut_off = Worker::start(&proxy.url(), LOG_STARTS).await;
    let ids = sleepers(&client, 10, 3_000).await;
    handlers_started(&cut_off, 10).await;
    let other = Worker::start(&coordinator.url(), &["--concurrency", "10"]).await;
    proxy.down();
    for id in &ids {
        let job = finished(&client, id).await;
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
        assert_eq!(
            outcomes(&job),
            [
                (AttemptOutcome::Lost, cut_off.id().to_owned()),
                (AttemptOutcome::Succeeded, other.id().to_owned()),
            ]
        );
    }
    // Back, it presents what it held: nothing is re-adopted, and every result it still had
    // (its handlers were stopped once the grace ran out) is refused by the fence.
    proxy.up();
    cut_off.next_connected().await;
    eventually("the late results refused", || async {
        (stats(&client).await.refused_results == 10).then_some(())
    })
    .await;
    for id in &ids {
        let job = client.get(id).await.expect("get");
        assert_eq!(
            job.worker_id,
            other.id(),
            "the refused results changed nothing"
        );
        assert_eq!(job.attempts.len(), 2);
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_jobs_are_requeued_after_the_grace_period() {
    const GRACE_MS: i64 = 2_000;
    let coordinator =
        Coordinator::start_with(&["--heartbeat-interval", "200ms", "--reconnect-grace", "2s"])
            .await;
    let client = connect(&coordinator).await;
    let mut dead = Worker::start(&coordinator.url(), &["--concurrency", "2"]).await;
    let ids = sleepers(&client, 2, 1_000).await;
    running_on(&client, dead.id(), 2).await;
    let other = Worker::start(&coordinator.url(), &["--concurrency", "2"]).await;
    let killed_at = now_ms();
    let clock = Instant::now();
    dead.kill().await;
    for id in &ids {
        let job = finished(&client, id).await;
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
        assert_eq!(
            outcomes(&job),
            [
                (AttemptOutcome::Lost, dead.id().to_owned()),
                (AttemptOutcome::Succeeded, other.id().to_owned()),
            ]
        );
        let again = ms_of(job.attempts[1].started_at.as_ref().expect("started")) - killed_at;
        // Its connection closed with the process: the grace period is all it waited (plus the
        // liveness timeout, three heartbeats, had the machine vanished silently).
        assert!(
            again >= GRACE_MS - 50,
            "kept for the grace period: re-run {again} ms after the kill"
        );
        assert!(
            again < GRACE_MS + 3 * 200 + 3_000,
            "re-run within grace plus liveness: {again} ms after the kill"
        );
    }
    assert!(clock.elapsed() < Duration::from_secs(30));
}
