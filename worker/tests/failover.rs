//! Several coordinators. A `switchyard-worker` given several addresses moves on to the next
//! when its coordinator dies, or is not there at start; a client given several makes its
//! calls through one that answers. These run the real binaries, each coordinator on its own
//! temporary database. In-process, against scripted coordinators: the jobs a worker still
//! runs when its coordinator goes are presented to the next one, which adopts them.

mod support;

use std::{sync::Arc, time::Duration};

use switchyard_client::{Client, Error as ClientError, JobSpec, JobState};
use switchyard_proto::v1::{HeldAttempt, attempt_result::Outcome};
use switchyard_testkit::{Coordinator, Worker};
use switchyard_worker::{
    CancellationToken, JobContext, JobError, Worker as SdkWorker, WorkerConfig,
};
use tokio::sync::{Semaphore, mpsc};

/// How long a job may take to run end to end before the test calls it stuck.
const PATIENCE: Duration = Duration::from_secs(30);

/// An address nobody listens on: a port that was just free.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("a bound address");
    drop(listener);
    format!("http://{addr}")
}

/// Runs an `echo` job through `client` (submit and wait, `Run`) and returns the id of the
/// worker that ran it.
async fn ran_by(client: &Client, payload: &str) -> String {
    let job = client
        .run(
            JobSpec::new("default", "echo").payload(payload),
            Some(PATIENCE),
        )
        .await
        .expect("the job runs");
    assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
    assert_eq!(job.output, payload.as_bytes());
    job.attempts
        .last()
        .map(|attempt| attempt.worker_id.clone())
        .expect("the job has an attempt")
}

#[tokio::test]
async fn a_worker_moves_to_the_next_coordinator_when_its_own_dies() {
    let mut first = Coordinator::start().await;
    let second = Coordinator::start().await;
    let both = format!("{},{}", first.url(), second.url());
    let mut worker = Worker::start(&first.url(), &["--coordinator", &both]).await;
    let pid = worker.pid();
    // A client of both, connected to the first (the first that answers).
    let client = Client::connect(both.as_str()).await.expect("connect");
    let on_first = Client::connect(first.url()).await.expect("connect");
    assert_eq!(ran_by(&on_first, "before").await, worker.id());

    first.kill().await;
    // Welcomed again, by the second: the line is printed for every welcome.
    worker.next_connected().await;
    let on_second = Client::connect(second.url()).await.expect("connect");
    let listed = on_second.workers().await.expect("list the workers");
    assert!(
        listed.iter().any(|w| w.worker_id == worker.id()),
        "{listed:?}"
    );
    // The client's connection to the first is gone: its next call reaches the second, and
    // the same worker process runs the job.
    assert_eq!(ran_by(&client, "after").await, worker.id());
    assert_eq!(worker.pid(), pid, "the same process");
    assert!(
        worker.log().contains("moving to the next coordinator")
            && worker.log().contains(&second.url()),
        "the worker says where it moved; its log:\n{}",
        worker.log()
    );
    // It is on the second's books, not only answered by it.
    assert_eq!(ran_by(&on_second, "again").await, worker.id());
}

#[tokio::test]
async fn a_worker_whose_first_coordinator_is_down_at_start_connects_to_the_next() {
    let coordinator = Coordinator::start().await;
    let list = format!("{},{}", dead_address(), coordinator.url());
    // `start` returns once the worker says it was welcomed.
    let worker = Worker::start(&coordinator.url(), &["--coordinator", &list]).await;
    let client = Client::connect(coordinator.url()).await.expect("connect");
    assert_eq!(ran_by(&client, "hello").await, worker.id());
}

#[tokio::test]
async fn a_client_connects_to_the_first_address_that_answers() {
    let coordinator = Coordinator::start().await;
    let client = Client::connect(format!("{},{}", dead_address(), coordinator.url()))
        .await
        .expect("the second address answers");
    let submitted = client
        .submit(JobSpec::new("default", "echo").payload("hi"))
        .await
        .expect("submit");
    // Stored by the live coordinator.
    let direct = Client::connect(coordinator.url()).await.expect("connect");
    let job = direct
        .get(&submitted.job_id)
        .await
        .expect("the job is there");
    assert_eq!(job.payload, b"hi");

    // None answers: the error names every address.
    let (a, b) = (dead_address(), dead_address());
    match Client::connect(format!("{a},{b}")).await {
        Err(ClientError::Connect { url, .. }) => assert_eq!(url, format!("{a}, {b}")),
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_call_that_cannot_reach_its_coordinator_is_made_on_the_next() {
    let coordinator = Coordinator::start().await;
    // Lazy: nothing is tried until the first call, which goes to the first address.
    let client = Client::connect_lazy(format!("{},{}", dead_address(), coordinator.url()), None)
        .expect("valid addresses");
    let submitted = client
        .submit(JobSpec::new("default", "echo").payload("moved"))
        .await
        .expect("the call goes on to the second address");
    let again = client.get(&submitted.job_id).await.expect("get");
    assert_eq!(again.payload, b"moved");
    let direct = Client::connect(coordinator.url()).await.expect("connect");
    let stored = direct
        .get(&submitted.job_id)
        .await
        .expect("on the live coordinator");
    assert_eq!(stored.payload, b"moved");
}

/// The jobs a worker runs when its stream dies go with it to the next coordinator: its hello
/// there presents them, and once adopted their results go to that coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_coordinator_is_shown_the_jobs_still_running() {
    let mut first = support::Coordinator::start().await;
    let mut second = support::Coordinator::start().await;
    let config = WorkerConfig {
        coordinators: vec![first.url.clone(), second.url.clone()],
        heartbeat_interval: Duration::from_millis(100),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..WorkerConfig::new("unused", "w1")
    };
    // `hold` says it started, then returns its payload once the test lets it.
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::channel(4);
    let hold_gate = gate.clone();
    let worker = SdkWorker::new(config).handle("hold", move |ctx: JobContext| {
        let (gate, started) = (hold_gate.clone(), started_tx.clone());
        async move {
            let _ = started.send(ctx.job_id.clone()).await;
            gate.acquire().await.map_err(JobError::fatal)?.forget();
            Ok(ctx.payload)
        }
    });
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(worker.run(shutdown.clone()));

    let mut session = first.session().await;
    session.welcome(Duration::from_millis(100), true).await;
    session.assign("j1", 1, "hold", "kept").await;
    let running = tokio::time::timeout(support::STEP, started.recv()).await;
    assert_eq!(running.ok().flatten().as_deref(), Some("j1"));

    // The first coordinator's stream ends without a word; it still listens, but the worker
    // goes on to the next address.
    drop(session);
    let mut session = second.session().await;
    assert_eq!(
        session.hello.held,
        [HeldAttempt {
            job_id: "j1".into(),
            attempt: 1,
            finished: false,
            epoch: support::EPOCH,
        }]
    );
    session
        .welcome_adopting(Duration::from_millis(100), true, &[("j1", 1)])
        .await;
    gate.add_permits(1);
    let result = session.expect_result().await;
    assert_eq!(
        (result.job_id.as_str(), result.attempt, result.epoch),
        ("j1", 1, support::EPOCH)
    );
    assert_eq!(result.outcome, Some(Outcome::Output(b"kept".to_vec())));
    session.expect(support::credit()).await;

    shutdown.cancel();
    drop(session);
    let stopped = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the worker stops in time")
        .expect("the worker does not panic");
    assert!(stopped.is_ok(), "{stopped:?}");
}
