//! What is acknowledged is on disk: jobs survive SIGKILL and SIGTERM, and concurrent submits
//! share commits (group commit).

mod support;

use std::{collections::HashMap, sync::Arc};

use switchyard_client::{Batch, Client, JobSpec};
use switchyard_proto::v1::JobState;
use switchyard_testkit::{Backend, Coordinator, Worker, backend};
use tokio::{
    sync::{Barrier, mpsc},
    task::JoinSet,
};

use support::{COORDINATOR_FLAGS, all_jobs, connect, finished_all, ids, start, stats};

/// Submitters that keep submitting until the coordinator goes away.
const SUBMITTERS: usize = 32;
/// Acknowledged jobs to collect before the coordinator is stopped.
const ACKNOWLEDGED: usize = 500;

/// Starts `SUBMITTERS` tasks that submit jobs with distinct payloads until a call fails, and
/// send every acknowledged `(job_id, payload)` on the returned channel.
fn submit_until_failure(
    client: &Client,
    tasks: &mut JoinSet<()>,
) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let (acks, acknowledged) = mpsc::unbounded_channel();
    for submitter in 0..SUBMITTERS {
        let client = client.clone();
        let acks = acks.clone();
        tasks.spawn(async move {
            for n in 0.. {
                let payload = format!("submitter {submitter} job {n}").into_bytes();
                let job = JobSpec::new("durable", "echo").payload(payload.clone());
                match client.submit(job).await {
                    Ok(response) => {
                        assert!(!response.duplicate);
                        if acks.send((response.job_id, payload)).is_err() {
                            return;
                        }
                    }
                    // The coordinator is gone: this call may or may not have been stored.
                    Err(_) => return,
                }
            }
        });
    }
    acknowledged
}

/// Collects acknowledgements until `ACKNOWLEDGED` arrived, stops the coordinator with `stop`
/// while the submitters are still going, then collects the rest (calls that were answered
/// just before the stop count too) until every submitter has given up.
async fn acknowledged_across<F: Future<Output = ()>>(
    client: &Client,
    stop: impl FnOnce() -> F,
) -> Vec<(String, Vec<u8>)> {
    let mut tasks = JoinSet::new();
    let mut acknowledged = submit_until_failure(client, &mut tasks);
    let mut acked = Vec::new();
    while acked.len() < ACKNOWLEDGED {
        acked.push(
            acknowledged
                .recv()
                .await
                .expect("the submitters are running"),
        );
    }
    stop().await;
    while let Some(ack) = acknowledged.recv().await {
        acked.push(ack);
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a submitter panicked");
    }
    acked
}

/// After a restart, every acknowledged job is there, queued, with its payload; and at most one
/// job per submitter (its last, unanswered call) is stored beyond those.
async fn assert_all_kept(coordinator: &Coordinator, acked: &[(String, Vec<u8>)]) {
    let client = connect(coordinator).await;
    for (id, payload) in acked {
        let job = client
            .get(id)
            .await
            .unwrap_or_else(|err| panic!("acknowledged job {id} is lost: {err}"));
        assert_eq!(&job.payload, payload, "job {id}");
        assert_eq!(job.queue, "durable");
        assert_eq!(job.state, JobState::Queued as i32, "job {id}");
    }
    let stored = all_jobs(&client).await;
    assert!(
        stored.len() >= acked.len() && stored.len() <= acked.len() + SUBMITTERS,
        "{} jobs stored for {} acknowledged",
        stored.len(),
        acked.len()
    );
    // Nothing was stored twice or garbled: every stored payload is one a submitter sent.
    let mut payloads: Vec<&[u8]> = stored.iter().map(|j| j.payload.as_slice()).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), stored.len(), "a payload is stored twice");
    assert!(
        stored.iter().all(|j| j.payload.starts_with(b"submitter ")),
        "a stored payload is not one that was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_jobs_survive_sigkill() {
    let (mut coordinator, client) = start().await;
    let acked = acknowledged_across(&client, || coordinator.kill()).await;
    assert!(acked.len() >= ACKNOWLEDGED);

    coordinator.restart().await;
    assert_all_kept(&coordinator, &acked).await;

    // And the restarted coordinator takes new work.
    let fresh = connect(&coordinator).await;
    let id = fresh
        .submit(JobSpec::new("durable", "echo").payload("after the crash"))
        .await
        .expect("submit after restart")
        .job_id;
    assert_eq!(
        fresh.get(&id).await.expect("get").payload,
        b"after the crash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_exits_cleanly_and_keeps_every_acknowledged_job() {
    let (mut coordinator, client) = start().await;
    let mut status = None;
    let acked = acknowledged_across(&client, || async {
        status = Some(coordinator.terminate().await);
    })
    .await;
    let status = status.expect("the coordinator was terminated");
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        coordinator.log()
    );

    coordinator.restart().await;
    assert_all_kept(&coordinator, &acked).await;
}

#[tokio::test]
async fn sigterm_exits_with_success_and_the_database_is_intact() {
    let (mut coordinator, client) = start().await;
    let mut submitted = HashMap::new();
    for i in 0..20 {
        let payload = format!("job {i}");
        let id = client
            .submit(
                JobSpec::new("kept", "echo")
                    .payload(payload.clone())
                    .priority(i)
                    .label("n", i.to_string()),
            )
            .await
            .expect("submit")
            .job_id;
        submitted.insert(id, payload);
    }
    let group = client
        .submit_batch(
            Batch::new()
                .group("kept-group")
                .jobs((0..3).map(|i| JobSpec::new("kept", "echo").payload(format!("member {i}")))),
        )
        .await
        .expect("submit batch");
    let cancelled = group.jobs[0].job_id.clone();
    client.cancel(&cancelled).await.expect("cancel");
    let before = all_jobs(&client).await;
    assert_eq!(before.len(), 23);

    let status = coordinator.terminate().await;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        coordinator.log()
    );
    // The store folded its WAL into the database file on the way out (SQLite's own WAL file:
    // Postgres has none of the coordinator's).
    if backend() == Backend::Sqlite {
        let wal = coordinator.db_path().with_extension("db-wal");
        let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert_eq!(wal_len, 0, "{} still holds {wal_len} bytes", wal.display());
    }

    coordinator.restart().await;
    let client = connect(&coordinator).await;
    let after = all_jobs(&client).await;
    assert_eq!(after, before, "the jobs changed across the restart");
    for (id, payload) in &submitted {
        let job = client.get(id).await.expect("get after restart");
        assert_eq!(job.payload, payload.as_bytes());
        assert_eq!(job.state, JobState::Queued as i32);
    }
    assert_eq!(
        client.get(&cancelled).await.expect("get").state,
        JobState::Cancelled as i32
    );
    // The group still exists: its id cannot be taken again, and it can be cancelled.
    let status = client
        .submit_batch(
            Batch::new()
                .group("kept-group")
                .job(JobSpec::new("kept", "echo")),
        )
        .await
        .expect_err("the group survived the restart");
    assert_eq!(
        status.code(),
        Some(tonic::Code::AlreadyExists),
        "{status:?}"
    );
    let response = client
        .cancel_group("kept-group")
        .await
        .expect("cancel group");
    assert_eq!(response.cancelled.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_share_commits() {
    if switchyard_testkit::skip_on_postgres(
        "group commit is the SQLite writer's; on Postgres each write is its own transaction",
    ) {
        return;
    }
    const SUBMITTERS: usize = 400;
    let (_coordinator, client) = start().await;
    let barrier = Arc::new(Barrier::new(SUBMITTERS));
    let mut tasks = JoinSet::new();
    for i in 0..SUBMITTERS {
        let client = client.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            client
                .submit(JobSpec::new("commits", "echo").payload(format!("{i}")))
                .await
                .expect("submit")
                .job_id
        });
    }
    let mut submitted = tasks.join_all().await;

    let store = stats(&client).await.store.expect("store stats");
    let jobs = SUBMITTERS as u64;
    assert_eq!(store.commands, jobs, "{store:?}");
    assert_eq!(store.rows_written, jobs, "{store:?}");
    assert!(
        store.commits * 2 <= jobs,
        "{} commits for {jobs} jobs: submits are not sharing commits ({store:?})",
        store.commits
    );
    assert!(store.max_batch >= 2, "{store:?}");
    assert!(store.max_batch <= jobs, "{store:?}");

    let mut stored = ids(&all_jobs(&client).await);
    submitted.sort();
    stored.sort();
    assert_eq!(stored, submitted);
}

/// A full write queue pushes back with UNAVAILABLE instead of growing; what it refused is not
/// stored, and what it acknowledged is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_write_queue_pushes_back_with_unavailable() {
    const SUBMITTERS: usize = 400;
    let coordinator = Coordinator::start_with(&["--write-queue", "1"]).await;
    let client = connect(&coordinator).await;
    let barrier = Arc::new(Barrier::new(SUBMITTERS));
    let mut tasks = JoinSet::new();
    for i in 0..SUBMITTERS {
        let client = client.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            client
                .submit(JobSpec::new("pushback", "echo").payload(format!("{i}")))
                .await
        });
    }
    let results = tasks.join_all().await;
    let mut acked = Vec::new();
    let mut refused = 0;
    for result in results {
        match result {
            Ok(response) => acked.push(response.job_id),
            Err(err) => {
                assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "a write queue of 1 took {SUBMITTERS} concurrent submits"
    );
    assert!(!acked.is_empty(), "every submit was refused");

    let mut stored = ids(&all_jobs(&client).await);
    acked.sort();
    stored.sort();
    assert_eq!(stored, acked);
}

/// A batch is one transaction: after SIGKILL each group is stored whole or not at all, and
/// every acknowledged group is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_are_whole_or_absent_after_sigkill() {
    const BATCH: usize = 50;
    const SUBMITTERS: usize = 8;
    const ACKNOWLEDGED_BATCHES: usize = 40;
    let (mut coordinator, client) = start().await;
    let (acks, mut acknowledged) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for submitter in 0..SUBMITTERS {
        let client = client.clone();
        let acks = acks.clone();
        tasks.spawn(async move {
            for n in 0.. {
                let group = format!("s{submitter}-b{n}");
                let batch = Batch::new().group(&group).jobs(
                    (0..BATCH)
                        .map(|i| JobSpec::new("batches", "echo").payload(format!("{group}/{i}"))),
                );
                match client.submit_batch(batch).await {
                    Ok(response) => {
                        assert_eq!(response.jobs.len(), BATCH);
                        if acks.send(group).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    }
    drop(acks);
    let mut acked = Vec::new();
    while acked.len() < ACKNOWLEDGED_BATCHES {
        acked.push(
            acknowledged
                .recv()
                .await
                .expect("the submitters are running"),
        );
    }
    coordinator.kill().await;
    while let Some(group) = acknowledged.recv().await {
        acked.push(group);
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a submitter panicked");
    }

    coordinator.restart().await;
    let client = connect(&coordinator).await;
    let mut sizes: HashMap<String, usize> = HashMap::new();
    for job in all_jobs(&client).await {
        assert!(
            job.payload
                .starts_with(format!("{}/", job.group_id).as_bytes()),
            "job {} of group {} has payload {:?}",
            job.job_id,
            job.group_id,
            String::from_utf8_lossy(&job.payload)
        );
        *sizes.entry(job.group_id).or_default() += 1;
    }
    for (group, size) in &sizes {
        assert_eq!(*size, BATCH, "group {group} is stored in part");
    }
    for group in &acked {
        assert_eq!(
            sizes.get(group),
            Some(&BATCH),
            "acknowledged group {group} is lost"
        );
    }
    assert!(
        sizes.len() <= acked.len() + SUBMITTERS,
        "{} groups stored for {} acknowledged",
        sizes.len(),
        acked.len()
    );
}

/// The scheduler's commits have a path of their own into the writer: while clients flood a
/// write queue of one and are refused, jobs already queued keep starting and finishing, and
/// no scheduler commit is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submit_flood_does_not_stop_dispatch() {
    const QUEUED: usize = 200;
    const FLOODERS: usize = 32;
    let mut flags = COORDINATOR_FLAGS.to_vec();
    flags.extend(["--write-queue", "1"]);
    let coordinator = Coordinator::start_with(&flags).await;
    let client = connect(&coordinator).await;
    let batch = Batch::new()
        .jobs((0..QUEUED).map(|i| JobSpec::new("work", "echo").payload(format!("{i}"))));
    let queued: Vec<String> = client
        .submit_batch(batch)
        .await
        .expect("the jobs to run, queued before the flood")
        .jobs
        .into_iter()
        .map(|j| j.job_id)
        .collect();

    let stop = tokio_util::sync::CancellationToken::new();
    let mut flood = JoinSet::new();
    for f in 0..FLOODERS {
        let (client, stop) = (client.clone(), stop.clone());
        flood.spawn(async move {
            let (mut accepted, mut refused) = (0u64, 0u64);
            // Bounded: the flood ends when the queued jobs are done (or after this many).
            for i in 0..1_000_000u64 {
                if stop.is_cancelled() {
                    break;
                }
                // Nobody serves `flood`: these only load the write queue.
                match client
                    .submit(JobSpec::new("flood", "echo").payload(format!("{f}/{i}")))
                    .await
                {
                    Ok(_) => accepted += 1,
                    Err(err) => {
                        assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
                        refused += 1;
                    }
                }
            }
            (accepted, refused)
        });
    }
    let _worker = Worker::start(
        &coordinator.url(),
        &["--queues", "work", "--concurrency", "16"],
    )
    .await;
    let done = finished_all(&client, &queued).await;
    stop.cancel();
    let (mut accepted, mut refused) = (0, 0);
    for (a, r) in flood.join_all().await {
        accepted += a;
        refused += r;
    }
    assert!(done.iter().all(|j| j.state() == JobState::Succeeded));
    assert!(
        refused > 0,
        "the flood never filled the write queue ({accepted} accepted)"
    );
    let log = coordinator.log();
    assert!(
        !log.contains("committing scheduler transitions failed"),
        "a scheduler commit was refused behind client submits:\n{log}"
    );
}

/// A job's path costs at most three commits, as the design says: its submit, the start of
/// its attempt and its result (concurrent work shares them). Only two of them fsync: a start
/// needs none of its own (epochs fence what a lost one handed out), and a `Run`'s submit is
/// made durable by its result's commit, so a `Run` costs one fsync. A `Submit` is durable
/// before its answer. Counted through `Stats`, so a change that adds a commit or an fsync to
/// the path fails here.
#[tokio::test]
async fn a_jobs_path_costs_at_most_three_commits() {
    const JOBS: u64 = 20;
    // Housekeeping (pruning, probes) is the store's own work and not counted as commits.
    let coordinator = Coordinator::start().await;
    let client = connect(&coordinator).await;
    let _worker = Worker::start(&coordinator.url(), &["--queues", "path"]).await;
    let before = stats(&client).await.store.expect("store stats");
    for i in 0..JOBS {
        let job = JobSpec::new("path", "echo").payload(format!("{i}"));
        let done = client
            .run(job, Some(std::time::Duration::from_secs(30)))
            .await
            .expect("run");
        assert_eq!(done.state(), JobState::Succeeded);
    }
    let after = stats(&client).await.store.expect("store stats");
    let commits = after.commits - before.commits;
    assert!(
        commits <= 3 * JOBS,
        "{commits} commits for {JOBS} jobs run one after another: more than submit, start and result ({after:?})"
    );
    assert!(commits >= JOBS, "each submit commits: {commits} for {JOBS}");
    let syncs = after.syncs - before.syncs;
    assert!(
        syncs <= JOBS,
        "{syncs} fsyncs for {JOBS} runs: more than the result's ({after:?})"
    );
    assert!(syncs >= JOBS, "each result is durable: {syncs} for {JOBS}");

    // Submitted and then run, one after another: the submit's fsync and the result's.
    let before = after;
    for i in 0..JOBS {
        let job = JobSpec::new("path", "echo").payload(format!("{i}"));
        let id = client.submit(job).await.expect("submit").job_id;
        let done = client
            .wait(&id, Some(std::time::Duration::from_secs(30)))
            .await
            .expect("wait");
        assert_eq!(done.state(), JobState::Succeeded);
    }
    let after = stats(&client).await.store.expect("store stats");
    let syncs = after.syncs - before.syncs;
    assert!(
        syncs <= 2 * JOBS,
        "{syncs} fsyncs for {JOBS} submitted jobs: more than submit and result ({after:?})"
    );
    assert!(
        syncs >= 2 * JOBS,
        "submits and results are durable: {syncs}"
    );
    assert!(after.commits - before.commits <= 3 * JOBS);

    // No worker serves this queue: each submit is its own commit, and each is durable
    // before it is answered.
    let before = after;
    for i in 0..JOBS {
        let job = JobSpec::new("unserved", "echo").payload(format!("{i}"));
        client.submit(job).await.expect("submit");
    }
    let after = stats(&client).await.store.expect("store stats");
    assert_eq!(
        after.syncs - before.syncs,
        after.commits - before.commits,
        "every commit of a submit is synced ({after:?})"
    );
    assert!(after.commits - before.commits >= JOBS);
}
