//! Faults a serious job queue meets, through the real coordinator: a full disk and a database
//! locked by another process are answered with codes a client can act on, health follows the
//! store's ability to commit, and nothing acknowledged is lost.

mod support;

use std::{path::Path, process::Command};

use switchyard_client::JobSpec;
use switchyard_testkit::{Backend, Coordinator, backend, skip_on_postgres};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use support::{all_jobs, connect, eventually, ids};

/// A small filesystem of the test's own (tmpfs), unmounted when dropped. Mounting needs root,
/// which CI has; elsewhere the test says why it cannot run and passes without checking.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("cannot mount a tmpfs here (it needs root): this test checks nothing");
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn health(coordinator: &Coordinator) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(coordinator.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .expect("health answers")
        .into_inner()
        .status()
}

async fn health_becomes(coordinator: &Coordinator, want: ServingStatus) {
    eventually(&format!("health {want:?}"), || async {
        (health(coordinator).await == want).then_some(())
    })
    .await
}

/// Fills the filesystem at `dir` with a file, then gives back `leave` bytes of it.
fn fill(dir: &Path, leave: u64) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    drop(file);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("filler");
    file.set_len(written.saturating_sub(leave))
        .expect("give some back");
    path
}

#[tokio::test]
async fn a_full_disk_is_resource_exhausted_until_space_comes_back() {
    if skip_on_postgres("the small disk holds a SQLite file; Postgres keeps its data elsewhere") {
        return;
    }
    // Seen once in about fifteen runs before: the coordinator's connection broke (a transport
    // error, not a status) as the small disk filled. The likely cause, since found: the disk
    // was filled while the coordinator was still applying its migrations (it says where it
    // listens before its store is open), so its start failed; `full_disk_once` now waits for
    // health first. Should it still happen, that try's log is printed and the check runs once
    // more on a fresh disk and coordinator, where every assertion below must hold.
    for try_number in 1..=2 {
        match full_disk_once().await {
            Some(Ok(())) | None => return,
            Some(Err(log)) if try_number == 1 => {
                eprintln!("the coordinator's connection broke on a full disk; its log:\n{log}")
            }
            Some(Err(log)) => panic!("the connection broke twice on a full disk; the log:\n{log}"),
        }
    }
}

/// One run of the full-disk check: `None` when no small disk can be mounted here,
/// `Some(Err(log))` when the coordinator's connection broke instead of answering.
async fn full_disk_once() -> Option<Result<(), String>> {
    let disk = SmallDisk::mount(8 << 20)?;
    let coordinator = Coordinator::start_in(Some(disk.path()), &[], &[]).await;
    let client = connect(&coordinator).await;
    // The coordinator says where it listens before its store is open: the disk fills only
    // once the migrations are done (filling it sooner fails the start, as it should).
    health_becomes(&coordinator, ServingStatus::Serving).await;
    let filler = fill(disk.path(), 512 * 1024);
    let payload = "x".repeat(16 * 1024);
    let mut acked = Vec::new();
    let refusal = loop {
        assert!(acked.len() < 10_000, "the disk never filled");
        match client
            .submit(JobSpec::new("q", "echo").payload(payload.clone()))
            .await
        {
            Ok(done) => acked.push(done.job_id),
            Err(err) => break err,
        }
    };
    if refusal.code() == Some(Code::Unknown) {
        return Some(Err(format!("{refusal}\n{}", coordinator.log())));
    }
    assert_eq!(
        refusal.code(),
        Some(Code::ResourceExhausted),
        "{refusal}; the coordinator's log:\n{}",
        coordinator.log()
    );
    assert!(refusal.to_string().contains("full"), "{refusal}");
    health_becomes(&coordinator, ServingStatus::NotServing).await;

    std::fs::remove_file(filler).expect("free the space");
    health_becomes(&coordinator, ServingStatus::Serving).await;
    let later = client
        .submit(JobSpec::new("q", "echo").payload(payload))
        .await
        .expect("a submit once there is room again");
    acked.push(later.job_id);
    let mut stored = ids(&all_jobs(&client).await);
    stored.sort();
    acked.sort();
    assert_eq!(
        stored, acked,
        "every acknowledged job is kept, and nothing refused"
    );
    Some(Ok(()))
}

#[tokio::test]
async fn a_database_locked_by_another_process_is_unavailable_until_released() {
    if skip_on_postgres("it takes SQLite's file write lock (BEGIN IMMEDIATE) and --busy-timeout") {
        return;
    }
    let coordinator = Coordinator::start_with(&["--busy-timeout", "200ms"]).await;
    let client = connect(&coordinator).await;
    let first = client
        .submit(JobSpec::new("q", "echo"))
        .await
        .expect("a submit before the lock");
    let lock = rusqlite::Connection::open(coordinator.db_path()).expect("open the database");
    lock.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");

    let refusal = client
        .submit(JobSpec::new("q", "echo"))
        .await
        .expect_err("refused while the lock is held");
    assert_eq!(refusal.code(), Some(Code::Unavailable), "{refusal}");
    assert!(refusal.to_string().contains("locked"), "{refusal}");
    health_becomes(&coordinator, ServingStatus::NotServing).await;

    lock.execute_batch("ROLLBACK").expect("release the lock");
    health_becomes(&coordinator, ServingStatus::Serving).await;
    let second = client
        .submit(JobSpec::new("q", "echo"))
        .await
        .expect("a submit after the lock");
    let mut stored = ids(&all_jobs(&client).await);
    stored.sort();
    let mut acked = vec![first.job_id, second.job_id];
    acked.sort();
    assert_eq!(stored, acked);
}

/// Idle long-polls have a bound of their own: they neither shed submits nor fail health
/// checks, however many are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_long_polls_neither_shed_real_work_nor_fail_health() {
    const WAITS: usize = 8;
    let coordinator =
        Coordinator::start_with(&["--max-in-flight", "4", "--max-long-polls", "8"]).await;
    let client = connect(&coordinator).await;
    // Nobody serves this queue: a Wait on its job stays open.
    let job = client
        .submit(JobSpec::new("nobody", "echo"))
        .await
        .expect("a job to wait on")
        .job_id;
    let mut waits = tokio::task::JoinSet::new();
    for _ in 0..WAITS {
        let (client, job) = (client.clone(), job.clone());
        waits.spawn(async move {
            // A wait refused because the probe below held a permit just then tries again.
            loop {
                match client
                    .wait(&job, Some(std::time::Duration::from_secs(60)))
                    .await
                {
                    Err(err) if err.code() == Some(Code::Unavailable) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await
                    }
                    other => return other,
                }
            }
        });
    }
    // Once every long-poll permit is taken, one more Wait is refused: the eight are open.
    eventually("the long-poll bound full", || async {
        match client
            .wait(&job, Some(std::time::Duration::from_millis(200)))
            .await
        {
            Err(err) if err.code() == Some(Code::Unavailable) => Some(()),
            _ => None,
        }
    })
    .await;
    for i in 0..20 {
        client
            .submit(JobSpec::new("q", "echo").payload(format!("{i}")))
            .await
            .expect("a submit beside the idle waits");
    }
    assert_eq!(health(&coordinator).await, ServingStatus::Serving);
    waits.abort_all();
}

/// `grpc-timeout` is read the same way on every call: a malformed one is refused (and
/// nothing stored), and one beyond `--max-deadline` is brought in to it, not dropped.
#[tokio::test]
async fn grpc_timeout_is_handled_the_same_way_on_every_call() {
    use switchyard_proto::v1::{RunRequest, SubmitRequest, job_service_client::JobServiceClient};
    let coordinator = Coordinator::start().await;
    let client = connect(&coordinator).await;
    let mut raw = JobServiceClient::new(client.channel().clone());
    let job = || SubmitRequest {
        queue: "nobody".into(),
        kind: "echo".into(),
        ..Default::default()
    };
    let mut submit = tonic::Request::new(job());
    submit
        .metadata_mut()
        .insert("grpc-timeout", "5s".parse().expect("ascii"));
    let refused = raw
        .submit(submit)
        .await
        .expect_err("a malformed grpc-timeout");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("grpc-timeout"), "{refused:?}");
    assert!(all_jobs(&client).await.is_empty(), "nothing was stored");

    // 99999999 hours: far past the 366-day maximum. The job still gets a deadline, at the
    // maximum; the call is detached so that hanging up does not cancel it.
    let mut run = tonic::Request::new(RunRequest {
        job: Some(job()),
        detach: true,
    });
    run.metadata_mut()
        .insert("grpc-timeout", "99999999H".parse().expect("ascii"));
    let call = tokio::spawn(async move { raw.run(run).await });
    let stored = eventually("the Run's job stored", || async {
        all_jobs(&client).await.into_iter().next()
    })
    .await;
    call.abort();
    let deadline = stored.deadline.expect("the job has a deadline");
    let ahead_days = (deadline.seconds - support::now_ms() / 1000) / 86_400;
    assert!((365..=366).contains(&ahead_days), "{ahead_days} days ahead");
}

/// One job's output too large to carry fails only that job's attempt, for good, with words
/// that say so: the worker's stream and every other job on it go on (before, the stream was
/// cut and all of its jobs were lost, again at each retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_result_fails_its_own_attempt_and_no_other() {
    use support::{COORDINATOR_FLAGS, finished, running_on};
    let coordinator = Coordinator::start_with(COORDINATOR_FLAGS).await;
    let client = connect(&coordinator).await;
    let worker =
        switchyard_testkit::Worker::start(&coordinator.url(), &["--concurrency", "8"]).await;
    let neighbour = client
        .submit(JobSpec::new("default", "sleep").payload("4000"))
        .await
        .expect("a neighbour")
        .job_id;
    running_on(&client, worker.id(), 1).await;
    // Three fanouts of seven children that each echo a megabyte: each gathers 7 MB (under
    // the 8 MiB limit of a result), and the outer one 21 MB, past it (and past the 16 MiB a
    // message may carry, which used to cut the whole stream).
    let fanout = client
        .submit(
            JobSpec::new("default", "fanout")
                .payload(format!("3 fanout 7 echo {}", "x".repeat(1_000_000))),
        )
        .await
        .expect("the fanout")
        .job_id;
    let fanout = finished(&client, &fanout).await;
    assert_eq!(
        fanout.state(),
        switchyard_proto::v1::JobState::Failed,
        "{}",
        fanout.error
    );
    assert_eq!(
        fanout.attempts.len(),
        1,
        "not retried: the same output would come again: {:?}",
        fanout.attempts
    );
    assert!(fanout.error.contains("over the limit"), "{}", fanout.error);
    let neighbour = finished(&client, &neighbour).await;
    assert_eq!(neighbour.state(), switchyard_proto::v1::JobState::Succeeded);
    assert_eq!(neighbour.attempts.len(), 1, "the neighbour was not lost");
}

/// A worker that ignores the limit (one not built on the SDK) gets its attempt failed by the
/// coordinator, and its stream stays up for the next job.
#[tokio::test]
async fn a_result_past_the_coordinators_limit_fails_the_attempt_not_the_stream() {
    use switchyard_proto::v1::{
        AttemptResult, Hello, WorkerMessage, attempt_result, coordinator_message, worker_message,
        worker_service_client::WorkerServiceClient,
    };
    let coordinator = Coordinator::start_with(&["--max-result-bytes", "1048576"]).await;
    let client = connect(&coordinator).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let send = |m: worker_message::Message| WorkerMessage { message: Some(m) };
    tx.send(send(worker_message::Message::Hello(Hello {
        worker_id: "raw".into(),
        queues: vec!["default".into()],
        slots: 1,
        ..Default::default()
    })))
    .await
    .expect("hello");
    let mut inbound = WorkerServiceClient::new(client.channel().clone())
        .max_encoding_message_size(16 << 20)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("the stream")
        .into_inner();
    let mut next_assignment = async || loop {
        let message = inbound.message().await.expect("the stream").expect("open");
        match message.message {
            Some(coordinator_message::Message::Welcome(w)) => {
                assert_eq!(w.max_result_bytes, 1 << 20, "the limit is told");
            }
            Some(coordinator_message::Message::Assignment(a)) => return a,
            _ => {}
        }
    };
    let result = |a: &switchyard_proto::v1::Assignment, output: Vec<u8>| {
        send(worker_message::Message::Result(AttemptResult {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            epoch: a.epoch,
            outcome: Some(attempt_result::Outcome::Output(output)),
        }))
    };
    let big = client
        .submit(JobSpec::new("default", "echo"))
        .await
        .expect("submit")
        .job_id;
    let assignment = next_assignment().await;
    tx.send(result(&assignment, vec![0; 2 << 20]))
        .await
        .expect("the big result");
    tx.send(send(worker_message::Message::Credit(
        switchyard_proto::v1::Credit { slots: 1 },
    )))
    .await
    .expect("credit");
    let big = client
        .wait(&big, Some(std::time::Duration::from_secs(30)))
        .await
        .expect("wait");
    assert_eq!(big.state(), switchyard_proto::v1::JobState::Failed);
    assert!(
        big.error.contains("over the coordinator's limit"),
        "{}",
        big.error
    );

    let small = client
        .submit(JobSpec::new("default", "echo"))
        .await
        .expect("submit")
        .job_id;
    let assignment = next_assignment().await;
    assert_eq!(
        assignment.job_id, small,
        "the same stream takes the next job"
    );
    tx.send(result(&assignment, b"ok".to_vec()))
        .await
        .expect("the small result");
    let small = client
        .wait(&small, Some(std::time::Duration::from_secs(30)))
        .await
        .expect("wait");
    assert_eq!(small.state(), switchyard_proto::v1::JobState::Succeeded);
}

/// `List` pages are bounded in bytes: twenty jobs of a megabyte come in several pages, not in
/// one answer too large to send.
#[tokio::test]
async fn list_pages_are_bounded_in_bytes() {
    let coordinator = Coordinator::start().await;
    let client = connect(&coordinator).await;
    let payload = "x".repeat(1024 * 1024 - 16);
    let mut submitted = Vec::new();
    for _ in 0..20 {
        submitted.push(
            client
                .submit(JobSpec::new("nobody", "echo").payload(payload.clone()))
                .await
                .expect("submit")
                .job_id,
        );
    }
    let page = support::jobs(&client)
        .list(switchyard_proto::v1::ListRequest::default())
        .await
        .expect("a page, not OUT_OF_RANGE")
        .into_inner();
    assert!(page.jobs.len() < 20, "{} jobs in one page", page.jobs.len());
    assert!(!page.next_page_token.is_empty());
    let all = ids(&all_jobs(&client).await);
    assert_eq!(all, submitted, "every job once, in order, over the pages");
}

/// A history checker over repeated coordinator SIGKILLs under load: submitters retry each
/// job under its own idempotency key until it is acknowledged; afterwards no acknowledged job
/// is lost, none is stored twice, none was never asked for, each ran to success with its own
/// payload ([`support::Submitters::check`]), and the database passes `PRAGMA integrity_check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_history_holds_across_repeated_sigkills() {
    const SUBMITTERS: usize = 6;
    const ACKS_BETWEEN_KILLS: usize = 60;
    let mut coordinator = Coordinator::start_with(support::COORDINATOR_FLAGS).await;
    let client = connect(&coordinator).await;
    let _worker =
        switchyard_testkit::Worker::start(&coordinator.url(), &["--concurrency", "16"]).await;
    let mut submitters = support::Submitters::start(std::slice::from_ref(&client), SUBMITTERS);
    for _ in 0..support::kills() {
        submitters.acknowledged(ACKS_BETWEEN_KILLS).await;
        coordinator.kill().await;
        coordinator.restart().await;
    }
    let asked = submitters.stop().await;
    let (_, stored) = submitters.check(&client, &asked).await;
    eprintln!(
        "{} kills; {} acknowledged, {stored} stored, {} asked",
        support::kills(),
        submitters.history.len(),
        asked.len()
    );
    coordinator.terminate().await;
    // SQLite's own check of its file (Postgres has no such file).
    if backend() == Backend::Sqlite {
        let db = rusqlite::Connection::open(coordinator.db_path()).expect("open the database");
        let check: String = db
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok");
    }
}

/// Failpoints (compiled in only for tests) crash the coordinator at the moments between its
/// steps. After a commit, before the reply: the job that nobody heard of is kept, once, and a
/// retry with its idempotency key finds it.
#[tokio::test]
async fn a_crash_between_commit_and_reply_keeps_the_job_once() {
    if skip_on_postgres("the store-after-commit failpoint is in the SQLite writer") {
        return;
    }
    // Commit 1 takes stock at start, commit 2 stores the first job; the third crashes.
    let mut coordinator = Coordinator::start_in(
        None,
        &[],
        &[("FAILPOINTS", "store-after-commit=2*off->return")],
    )
    .await;
    let client = connect(&coordinator).await;
    let keyed = |key: &str| JobSpec::new("nobody", "echo").idempotency_key(key);
    let first = client
        .submit(keyed("first"))
        .await
        .expect("acknowledged")
        .job_id;
    client
        .submit(keyed("second"))
        .await
        .expect_err("the coordinator died before answering");
    coordinator.kill().await;
    coordinator.set_env(&[]);
    coordinator.restart().await;
    let client = connect(&coordinator).await;
    let stored = all_jobs(&client).await;
    let keys: Vec<&str> = stored.iter().map(|j| j.idempotency_key.as_str()).collect();
    assert_eq!(
        keys,
        ["first", "second"],
        "committed is kept, though unanswered"
    );
    assert_eq!(stored[0].job_id, first);
    let again = client.submit(keyed("second")).await.expect("the retry");
    assert!(
        again.duplicate,
        "the retry finds the job it could not hear of"
    );
    assert_eq!(again.job_id, stored[1].job_id);
}

/// A caller that hangs up after its submit committed, before the scheduler heard of the
/// jobs (a client's deadline, or a follower that died with the call it forwarded): the job
/// is stored and still runs. The failpoint holds the call in that window past the caller's
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_whose_caller_hangs_up_after_the_commit_still_runs() {
    let coordinator = Coordinator::start_in(
        None,
        support::COORDINATOR_FLAGS,
        &[("FAILPOINTS", "api-after-submit-commit=return(1500)")],
    )
    .await;
    let client = connect(&coordinator).await;
    let _worker = switchyard_testkit::Worker::start(&coordinator.url(), &[]).await;
    let mut request = tonic::Request::new(support::new_job("default", "echo"));
    request.set_timeout(std::time::Duration::from_millis(300));
    let refused = support::jobs(&client)
        .submit(request)
        .await
        .expect_err("the caller gave up before the answer");
    assert!(
        matches!(
            refused.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{refused:?}"
    );
    let stored = support::eventually("the committed job is listed", || async {
        let jobs = all_jobs(&client).await;
        (jobs.len() == 1).then_some(jobs)
    })
    .await;
    let done = support::finished(&client, &stored[0].job_id).await;
    assert_eq!(done.state(), switchyard_proto::v1::JobState::Succeeded);
}

/// After a start commits, before its worker hears of it: the restart finds the attempt
/// interrupted (not counted) and runs the job again, to success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_start_and_send_runs_the_job_again() {
    use switchyard_proto::v1::AttemptOutcome;
    let mut coordinator = Coordinator::start_in(
        None,
        support::COORDINATOR_FLAGS,
        &[("FAILPOINTS", "scheduler-before-send=return")],
    )
    .await;
    let client = connect(&coordinator).await;
    let mut worker = switchyard_testkit::Worker::start(&coordinator.url(), &[]).await;
    let job = client
        .submit(JobSpec::new("default", "echo").payload("again"))
        .await
        .expect("acknowledged")
        .job_id;
    // The coordinator dies at the dispatch; the worker reconnects once it is back.
    eventually("the coordinator gone", || async {
        connect_quietly(&coordinator).await.is_none().then_some(())
    })
    .await;
    coordinator.kill().await;
    coordinator.set_env(&[]);
    coordinator.restart().await;
    worker.next_connected().await;
    let client = connect(&coordinator).await;
    let done = support::finished(&client, &job).await;
    assert_eq!(done.state(), switchyard_proto::v1::JobState::Succeeded);
    let outcomes: Vec<AttemptOutcome> = done.attempts.iter().map(|a| a.outcome()).collect();
    assert_eq!(
        outcomes,
        [AttemptOutcome::Interrupted, AttemptOutcome::Succeeded]
    );
    assert_eq!(done.output, b"again");
}

/// A connection and one call, or `None` when nothing answers.
async fn connect_quietly(coordinator: &Coordinator) -> Option<()> {
    let client = switchyard_client::Client::connect(coordinator.url())
        .await
        .ok()?;
    client.stats().await.ok().map(drop)
}

/// A raw worker's stream, as any gRPC client would open one: its sender, and what comes back.
struct RawWorker {
    tx: tokio::sync::mpsc::Sender<switchyard_proto::v1::WorkerMessage>,
    inbound: tonic::Streaming<switchyard_proto::v1::CoordinatorMessage>,
}

impl RawWorker {
    async fn connect(
        client: &switchyard_client::Client,
        slots: u32,
        held: Vec<switchyard_proto::v1::HeldAttempt>,
    ) -> (RawWorker, switchyard_proto::v1::Welcome) {
        use switchyard_proto::v1::{
            Hello, WorkerMessage, coordinator_message, worker_message,
            worker_service_client::WorkerServiceClient,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        // The hello goes first: the coordinator answers the call only once it has read it.
        tx.send(WorkerMessage {
            message: Some(worker_message::Message::Hello(Hello {
                worker_id: "raw".into(),
                queues: vec!["default".into()],
                slots,
                held,
                ..Default::default()
            })),
        })
        .await
        .expect("the hello");
        let mut worker = RawWorker {
            tx,
            inbound: WorkerServiceClient::new(client.channel().clone())
                .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("the stream")
                .into_inner(),
        };
        loop {
            if let Some(coordinator_message::Message::Welcome(w)) = worker.next().await {
                return (worker, w);
            }
        }
    }

    async fn send(&self, m: switchyard_proto::v1::worker_message::Message) {
        self.tx
            .send(switchyard_proto::v1::WorkerMessage { message: Some(m) })
            .await
            .expect("the stream is open");
    }

    async fn next(&mut self) -> Option<switchyard_proto::v1::coordinator_message::Message> {
        self.inbound
            .message()
            .await
            .expect("the stream")
            .expect("open")
            .message
    }

    async fn assignment(&mut self) -> switchyard_proto::v1::Assignment {
        loop {
            if let Some(switchyard_proto::v1::coordinator_message::Message::Assignment(a)) =
                self.next().await
            {
                return a;
            }
        }
    }
}

/// A start needs no fsync of its own, so a power cut may take it: the job is found queued at
/// the attempt before, and the next run hands the same attempt number out again. Its epoch is
/// higher, and the first attempt's result, which the worker still sends, is refused: it is
/// not taken for the second attempt's. (The failpoint throws away every commit no fsync
/// covered, as a power cut would, while their replies go out as if they had stayed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_lost_to_a_power_cut_is_fenced_by_its_epoch() {
    use switchyard_proto::v1::{
        AttemptResult, HeldAttempt, JobState, attempt_result, worker_message,
    };
    if skip_on_postgres("the store-unsynced-commit-lost failpoint is in the SQLite writer") {
        return;
    }
    let mut coordinator = Coordinator::start_in(
        None,
        support::COORDINATOR_FLAGS,
        &[("FAILPOINTS", "store-unsynced-commit-lost=return")],
    )
    .await;
    let client = connect(&coordinator).await;
    let (mut first_stream, _) = RawWorker::connect(&client, 1, vec![]).await;
    let job = client
        .submit(JobSpec::new("default", "echo"))
        .await
        .expect("acknowledged")
        .job_id;
    let lost = first_stream.assignment().await;
    assert_eq!((lost.job_id.as_str(), lost.attempt), (job.as_str(), 1));
    assert!(lost.epoch > 0, "an assignment carries its run's epoch");

    // The power cut: the start never reached the disk.
    coordinator.kill().await;
    drop(first_stream);
    coordinator.set_env(&[]);
    coordinator.restart().await;
    let client = connect(&coordinator).await;
    let (mut worker, welcome) = RawWorker::connect(
        &client,
        2,
        vec![HeldAttempt {
            job_id: job.clone(),
            attempt: 1,
            epoch: lost.epoch,
            finished: false,
        }],
    )
    .await;
    assert!(
        welcome.adopted.is_empty(),
        "the store never started that attempt: {:?}",
        welcome.adopted
    );
    let again = worker.assignment().await;
    assert_eq!((again.job_id.as_str(), again.attempt), (job.as_str(), 1));
    assert!(
        again.epoch > lost.epoch,
        "the same number under a higher epoch: {} after {}",
        again.epoch,
        lost.epoch
    );

    let result = |a: &switchyard_proto::v1::Assignment, output: &str| {
        worker_message::Message::Result(AttemptResult {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            epoch: a.epoch,
            outcome: Some(attempt_result::Outcome::Output(output.into())),
        })
    };
    let refused = support::stats(&client).await.refused_results;
    worker.send(result(&lost, "from the lost start")).await;
    eventually("the first attempt's result refused", || async {
        (support::stats(&client).await.refused_results > refused).then_some(())
    })
    .await;
    let job_now = client.get(&job).await.expect("get");
    assert_eq!(
        job_now.state(),
        JobState::Running,
        "the stale result ended nothing"
    );

    worker.send(result(&again, "from the second")).await;
    let done = support::finished(&client, &job).await;
    assert_eq!(done.state(), JobState::Succeeded);
    assert_eq!(done.output, b"from the second");
}
