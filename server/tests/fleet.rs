//! Several coordinators on one Postgres database (a fleet): real `switchyard-server`
//! processes sharing a fresh database on the test process's private PostgreSQL server, real
//! `switchyard-worker` processes connected to different ones, clients talking to each.
//!
//! One coordinator leads (it holds the leadership lease) and the others forward to it, so a
//! job submitted anywhere runs on a worker connected anywhere, a quota holds across them
//! all, `Wait` anywhere sees what finished through another, and killing any of them loses
//! nothing acknowledged. They run in the Postgres pass of the suite
//! (`SWITCHYARD_TEST_BACKEND=postgres`, as `.ci/run` does): the fleet needs Postgres.

mod support;

use std::collections::HashSet;

use switchyard_client::{Batch, Client, JobSpec};
use switchyard_proto::v1::{AttemptOutcome, BlockedReason, Job, JobState, Quota};
use switchyard_testkit::{Coordinator, Worker, skip_unless_postgres};

use support::{
    COORDINATOR_FLAGS, Submitters, eventually, finished, finished_all, kills, max_overlap, span,
};

/// `n` coordinators on one fresh database, the first started first (so it leads), with a
/// reconnect grace of `grace`.
async fn fleet(n: usize, grace: &str) -> Vec<Coordinator> {
    let db = switchyard_testkit::postgres::database().await;
    // The suite's fast liveness and retries, this fleet's grace, and a short lease: a dead
    // leader is replaced within about 2.5 s.
    let mut args = COORDINATOR_FLAGS.to_vec();
    if let Some(at) = args.iter().position(|a| *a == "--reconnect-grace") {
        args[at + 1] = grace;
    }
    args.extend(["--leader-lease", "2s"]);
    let mut coordinators = Vec::with_capacity(n);
    for _ in 0..n {
        let coordinator = Coordinator::start_on(&db, &args).await;
        if coordinators.is_empty() {
            eventually("the first coordinator leads", || async {
                coordinator.leads().then_some(())
            })
            .await;
        }
        coordinators.push(coordinator);
    }
    coordinators
}

/// Every coordinator's address, comma-separated: what a worker or a client that may move
/// between them is given.
fn all_urls(coordinators: &[Coordinator]) -> String {
    coordinators
        .iter()
        .map(Coordinator::url)
        .collect::<Vec<_>>()
        .join(",")
}

async fn client_of(coordinator: &Coordinator) -> Client {
    Client::connect(coordinator.url())
        .await
        .expect("connect to a coordinator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_coordinators_run_every_job_once_under_one_fleet_wide_quota() {
    if skip_unless_postgres("a fleet needs Postgres") {
        return;
    }
    const JOBS: usize = 3000;
    const BATCH: usize = 100;
    let coordinators = fleet(3, "1s").await;
    let mut clients = Vec::new();
    for coordinator in &coordinators {
        clients.push(client_of(coordinator).await);
    }
    // Set through a follower: admin calls reach the leader too.
    clients[2]
        .set_quota(Quota {
            scope: "key:k".into(),
            max_in_flight: Some(5),
            ..Default::default()
        })
        .await
        .expect("set the quota through a follower");
    // A worker on each coordinator, with more slots together (24) than the quota (5).
    let mut workers = Vec::new();
    for coordinator in &coordinators {
        workers.push(Worker::start(&coordinator.url(), &["--concurrency", "8"]).await);
    }
    // Submitted round-robin, a batch at a time, to all three.
    let mut submitted: Vec<Vec<String>> = vec![Vec::new(); 3];
    for (b, chunk) in (0..JOBS).collect::<Vec<_>>().chunks(BATCH).enumerate() {
        let to = b % 3;
        let batch = Batch::new().jobs(chunk.iter().map(|n| {
            JobSpec::new("default", "sleep")
                .payload("2")
                .concurrency_key("k")
                .idempotency_key(format!("job-{n}"))
        }));
        let done = clients[to]
            .submit_batch(batch)
            .await
            .unwrap_or_else(|e| panic!("submit a batch to coordinator {to}: {e}"));
        submitted[to].extend(done.jobs.into_iter().map(|j| j.job_id));
    }
    // Each coordinator's jobs are waited for on the next one: `Wait` there sees jobs that
    // were submitted through another and finished through a worker of any.
    let mut jobs: Vec<Job> = Vec::new();
    for (to, ids) in submitted.iter().enumerate() {
        jobs.extend(finished_all(&clients[(to + 1) % 3], ids).await);
    }
    assert_eq!(jobs.len(), JOBS);
    let mut ids = HashSet::new();
    for job in &jobs {
        assert!(ids.insert(job.job_id.clone()), "a job returned twice");
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
        assert_eq!(job.attempts.len(), 1, "one attempt each: {job:?}");
    }
    let spans = jobs.iter().map(|job| {
        let (start, end) = span(&job.attempts[0]);
        (start, end, 1)
    });
    let deepest = max_overlap(spans);
    assert!(
        deepest <= 5,
        "{deepest} jobs of key:k ran at once across the fleet; the limit is 5"
    );
    assert_eq!(deepest, 5, "24 slots and {JOBS} jobs: the limit is reached");
    let ran_on: HashSet<&str> = jobs.iter().map(|j| j.worker_id.as_str()).collect();
    let expected: HashSet<&str> = workers.iter().map(Worker::id).collect();
    assert_eq!(
        ran_on, expected,
        "workers connected to each of the three coordinators ran jobs"
    );
    // Counts are the fleet's, whichever coordinator is asked.
    for client in &clients {
        let stats = client.stats().await.expect("stats");
        let default = stats
            .queues
            .iter()
            .find(|q| q.queue == "default")
            .expect("the default queue");
        assert_eq!(default.succeeded, JOBS as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_quota_changes_through_one_coordinator_hold_on_every_other() {
    if skip_unless_postgres("a fleet needs Postgres") {
        return;
    }
    let coordinators = fleet(3, "1s").await;
    let mut clients = Vec::new();
    for coordinator in &coordinators {
        clients.push(client_of(coordinator).await);
    }
    let _worker = Worker::start(
        &coordinators[2].url(),
        &["--queues", "q", "--concurrency", "4"],
    )
    .await;
    clients[1]
        .pause_queue("q", true)
        .await
        .expect("pause through a follower");
    let job = clients[2]
        .submit(JobSpec::new("q", "echo").payload("held"))
        .await
        .expect("submit through the other follower")
        .job_id;
    // Paused on the leader too: the job waits, and says why, whoever is asked.
    let shown = eventually("the job says its queue is paused", || async {
        let job = clients[0].get(&job).await.ok()?;
        job.blocked_on
            .as_ref()
            .is_some_and(|b| b.reason() == BlockedReason::QueuePaused)
            .then_some(job)
    })
    .await;
    assert_eq!(shown.state(), JobState::Queued, "{shown:?}");
    // A quota set through one coordinator is the one every other reports.
    clients[2]
        .set_quota(Quota {
            scope: "queue:q".into(),
            max_in_flight: Some(1),
            ..Default::default()
        })
        .await
        .expect("set a quota");
    for client in &clients {
        let quotas = client.quotas().await.expect("list quotas");
        assert!(
            quotas
                .iter()
                .any(|q| q.scope == "queue:q" && q.max_in_flight == Some(1)),
            "{quotas:?}"
        );
    }
    clients[0]
        .pause_queue("q", false)
        .await
        .expect("resume through the leader");
    let done = finished(&clients[1], &job).await;
    assert_eq!(done.state(), JobState::Succeeded);
    assert_eq!(done.output, b"held");
}

/// A history checker over repeated SIGKILLs of one coordinator of three under load. Submitters
/// (each on its own coordinator) retry each job under its own idempotency key until it is
/// acknowledged; workers are given every coordinator's address. Afterwards no acknowledged
/// job is lost, none is stored twice, each succeeded once with its own payload, and an
/// attempt that did not end the job ended because its lease ran out (lost or interrupted),
/// with its result refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_coordinators_of_a_fleet_loses_nothing_acknowledged() {
    if skip_unless_postgres("a fleet needs Postgres") {
        return;
    }
    const SUBMITTERS: usize = 6;
    const ACKS_BETWEEN_KILLS: usize = 150;
    // Workers reclaim their attempts on the new leader within the grace.
    let mut coordinators = fleet(3, "10s").await;
    let urls = all_urls(&coordinators);
    let _workers = [
        Worker::start(&urls, &["--concurrency", "8"]).await,
        Worker::start(&urls, &["--concurrency", "8"]).await,
    ];
    let mut clients = Vec::new();
    for coordinator in &coordinators {
        clients.push(client_of(coordinator).await);
    }
    let mut submitters = Submitters::start(&clients, SUBMITTERS);
    let mut leaders_killed = 0;
    for k in 0..kills() {
        submitters.acknowledged(ACKS_BETWEEN_KILLS).await;
        // The leader on even rounds, a follower on odd ones.
        let leader = eventually("a coordinator leads", || async {
            coordinators.iter().position(Coordinator::leads)
        })
        .await;
        let victim = if k % 2 == 0 { leader } else { (leader + 1) % 3 };
        if victim == leader {
            leaders_killed += 1;
        }
        coordinators[victim].kill().await;
        if victim == leader {
            // Another takes over once the lease runs out, before the victim is back (on its
            // own address it would take the lease back at once).
            eventually("another coordinator takes the lease over", || async {
                coordinators
                    .iter()
                    .enumerate()
                    .any(|(i, c)| i != victim && c.leads())
                    .then_some(())
            })
            .await;
        }
        coordinators[victim].restart().await;
    }
    assert!(kills() == 0 || leaders_killed >= 1, "the leader was killed");
    let asked = submitters.stop().await;
    let checker = client_of(&coordinators[0]).await;
    let (done, stored) = submitters.check(&checker, &asked).await;
    let mut rerun = 0;
    // Beyond what `check` holds every job to: one accepted result each.
    for job in &done {
        let succeeded = job
            .attempts
            .iter()
            .filter(|a| a.outcome() == AttemptOutcome::Succeeded)
            .count();
        assert_eq!(succeeded, 1, "one accepted result: {job:?}");
        // Every earlier attempt ran out (its worker's stream was lost past the grace, or a
        // new leader found it running and nobody reclaimed it), or never ran (given back
        // before it reached a worker).
        for attempt in &job.attempts[..job.attempts.len() - 1] {
            rerun += 1;
            assert!(
                matches!(
                    attempt.outcome(),
                    AttemptOutcome::Lost | AttemptOutcome::Interrupted | AttemptOutcome::Released
                ),
                "an attempt ran again without its lease running out: {job:?}"
            );
        }
    }
    eprintln!(
        "{} kills ({leaders_killed} of the leader); {} acknowledged, {stored} stored, {} asked, {rerun} attempts run again",
        kills(),
        submitters.history.len(),
        asked.len()
    );
}
