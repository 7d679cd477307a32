//! The worker against a scripted coordinator, in-process: each test plays the coordinator's
//! side of `WorkerService.Connect` message by message and checks what the worker answers.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

mod support;

use switchyard_proto::v1::{
    Assignment, CancelAssignment, Drain, attempt_result::Outcome, coordinator_message,
    worker_message::Message,
};
use switchyard_worker::{ConnectionState, Error, JobContext, JobError, Worker, WorkerConfig};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use support::{Coordinator, EPOCH, STEP, credit, release};

/// Handlers the tests steer: `hold` waits until the test lets it go (`gate`), and reports
/// when its cancellation token fires, but returns only through the gate.
struct Steering {
    gate: Arc<Semaphore>,
    fired: mpsc::Receiver<String>,
}

fn config(url: &str, slots: u32) -> WorkerConfig {
    WorkerConfig {
        coordinators: vec![url.into()],
        worker_id: "w1".into(),
        queues: vec!["default".into(), "other".into()],
        slots,
        heartbeat_interval: Duration::from_millis(100),
        drain_grace: Duration::from_secs(30),
        cancel_grace: Duration::from_secs(10),
        token: None,
        tls: None,
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..WorkerConfig::default()
    }
}

fn worker(url: &str, slots: u32) -> (Worker, Steering) {
    worker_with(config(url, slots))
}

/// The `panic` handler's panic is expected, so it skips the default hook: with
/// `RUST_BACKTRACE` set (as in CI) that hook symbolizes a backtrace, which on a busy machine
/// stalls a runtime thread for longer than the 300 ms these tests let a stream be silent.
fn quiet_expected_panic() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&"kaboom") {
                default(info);
            }
        }));
    });
}

fn worker_with(config: WorkerConfig) -> (Worker, Steering) {
    quiet_expected_panic();
    let gate = Arc::new(Semaphore::new(0));
    let (fired_tx, fired) = mpsc::channel(16);
    let hold_gate = gate.clone();
    let worker = Worker::new(config)
        .handle("echo", |ctx: JobContext| async move { Ok(ctx.payload) })
        .handle("panic", |_ctx: JobContext| async move {
            if true {
                panic!("kaboom");
            }
            Ok(vec![])
        })
        .handle("wait", |ctx: JobContext| async move {
            ctx.cancelled().await;
            Err(JobError::cancelled("stopped as told"))
        })
        .handle("sleep", |ctx: JobContext| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(ctx.payload)
        })
        .handle("hold", move |ctx: JobContext| {
            let gate = hold_gate.clone();
            let fired = fired_tx.clone();
            async move {
                let job_id = ctx.job_id.clone();
                let watcher = async {
                    ctx.cancelled().await;
                    let _ = fired.send(job_id).await;
                    std::future::pending::<()>().await;
                };
                tokio::select! {
                    permit = gate.acquire() => permit.map_err(JobError::fatal)?.forget(),
                    () = watcher => {}
                }
                Ok(b"held".to_vec())
            }
        });
    (worker, Steering { gate, fired })
}

struct Started {
    shutdown: CancellationToken,
    state: watch::Receiver<ConnectionState>,
    run: JoinHandle<Result<(), Error>>,
}

fn start(worker: Worker) -> Started {
    let shutdown = CancellationToken::new();
    let state = worker.state();
    let run = tokio::spawn(worker.run(shutdown.clone()));
    Started {
        shutdown,
        state,
        run,
    }
}

impl Started {
    async fn stopped(self) {
        let result = tokio::time::timeout(Duration::from_secs(10), self.run)
            .await
            .expect("the worker stops in time")
            .expect("the worker does not panic");
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(*self.state.borrow(), ConnectionState::Stopped);
    }

    async fn wait_for(&mut self, what: impl Fn(&ConnectionState) -> bool) {
        tokio::time::timeout(STEP, self.state.wait_for(what))
            .await
            .expect("the state comes in time")
            .expect("the worker runs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_welcome_results_and_credits() {
    let mut coordinator = Coordinator::start().await;
    let (worker, _steering) = worker(&coordinator.url, 2);
    let mut started = start(worker);

    let mut session = coordinator.session().await;
    assert_eq!(session.hello.worker_id, "w1");
    assert_eq!(session.hello.queues, ["default", "other"]);
    assert_eq!(
        session.hello.kinds,
        ["echo", "hold", "panic", "sleep", "wait"]
    );
    assert_eq!(session.hello.slots, 2);
    assert_eq!(
        session.hello.heartbeat_interval,
        Some(switchyard_proto::Duration {
            seconds: 0,
            nanos: 100_000_000
        })
    );
    assert!(!session.hello.version.is_empty());
    session.welcome(Duration::from_millis(100), true).await;
    started
        .wait_for(|s| matches!(s, ConnectionState::Connected { connection: 1, .. }))
        .await;

    session.assign("j1", 1, "echo", "hello").await;
    let result = session.expect_result().await;
    assert_eq!(
        (result.job_id.as_str(), result.attempt, result.epoch),
        ("j1", 1, EPOCH),
        "the result carries the assignment's whole fencing token"
    );
    assert_eq!(result.outcome, Some(Outcome::Output(b"hello".to_vec())));
    session.expect(credit()).await;

    session.assign("j2", 4, "panic", "").await;
    let failure = session.expect_failure("j2").await;
    assert!(failure.retryable && !failure.cancelled);
    assert!(
        failure.message.starts_with("handler panicked: kaboom"),
        "{}",
        failure.message
    );
    session.expect(credit()).await;

    session.assign("j3", 1, "teleport", "").await;
    let result = session.expect_result().await;
    assert_eq!((result.attempt, result.epoch), (1, EPOCH));
    let Some(Outcome::Failure(failure)) = result.outcome else {
        panic!("expected a failure, got {result:?}");
    };
    assert_eq!(failure.message, "no handler for kind teleport");
    assert!(!failure.retryable);
    session.expect(credit()).await;

    // Still alive after the panic, and heartbeating with the coordinator's sequence as ack.
    session.assign("j4", 1, "echo", "again").await;
    assert_eq!(
        session.expect_result().await.outcome,
        Some(Outcome::Output(b"again".to_vec()))
    );
    session.expect(credit()).await;
    session.expect_quiet(Duration::from_millis(350)).await;
    let heartbeat = session.last_heartbeat.expect("the worker heartbeats");
    assert!(
        heartbeat.sequence >= 2 && heartbeat.ack >= 1,
        "{heartbeat:?}"
    );
    assert!(heartbeat.sent_at.is_some());

    started.shutdown.cancel();
    session
        .expect(Message::Drain(Drain {
            reason: "worker shutting down".into(),
        }))
        .await;
    assert_eq!(session.next().await, None, "nothing ran: the worker closes");
    drop(session);
    started.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_fires_the_token_of_that_attempt_only() {
    let mut coordinator = Coordinator::start().await;
    let (worker, _steering) = worker(&coordinator.url, 2);
    let started = start(worker);
    let mut session = coordinator.session().await;
    session.welcome(Duration::from_millis(100), true).await;

    session.assign("j1", 2, "wait", "").await;
    let cancel = |attempt, epoch| {
        coordinator_message::Message::Cancel(CancelAssignment {
            job_id: "j1".into(),
            attempt,
            reason: "test".into(),
            epoch,
        })
    };
    session.send(cancel(1, EPOCH)).await;
    session.send(cancel(2, EPOCH + 1)).await;
    session.expect_quiet(Duration::from_millis(200)).await;
    session.send(cancel(2, EPOCH)).await;
    let failure = session.expect_failure("j1").await;
    assert!(failure.cancelled && !failure.retryable);
    assert_eq!(failure.message, "stopped as told");
    session.expect(credit()).await;

    started.shutdown.cancel();
    drop(session);
    started.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_attempt_number_from_two_epochs_is_two_attempts() {
    let mut coordinator = Coordinator::start().await;
    let (worker, _steering) = worker(&coordinator.url, 3);
    let started = start(worker);
    let mut session = coordinator.session().await;
    session.welcome(Duration::from_millis(100), true).await;

    // Attempt 1 of j1, handed out by the coordinator's run 3 and, after a crash made it
    // forget, again by run 4; and j2 from a coordinator from before epochs.
    let wait = |job_id: &str, epoch| Assignment {
        job_id: job_id.into(),
        attempt: 1,
        queue: "default".into(),
        kind: "wait".into(),
        epoch,
        ..Default::default()
    };
    session.send_assignment(wait("j1", 3)).await;
    session.send_assignment(wait("j1", 4)).await;
    session.send_assignment(wait("j2", 5)).await;
    let cancel = |job_id: &str, epoch| {
        coordinator_message::Message::Cancel(CancelAssignment {
            job_id: job_id.into(),
            attempt: 1,
            reason: "test".into(),
            epoch,
        })
    };
    session.send(cancel("j1", 2)).await;
    session.expect_quiet(Duration::from_millis(200)).await;

    for epoch in [4, 3] {
        session.send(cancel("j1", epoch)).await;
        let result = session.expect_result().await;
        assert_eq!(
            (result.job_id.as_str(), result.attempt, result.epoch),
            ("j1", 1, epoch),
            "only the attempt of that epoch stops, and its result says which it was"
        );
        session.expect(credit()).await;
    }
    // Without an epoch, a cancel names the attempt by its number.
    session.send(cancel("j2", 0)).await;
    let result = session.expect_result().await;
    assert_eq!((result.job_id.as_str(), result.epoch), ("j2", 5));
    session.expect(credit()).await;

    started.shutdown.cancel();
    drop(session);
    started.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_kept_between_streams_is_presented_with_its_epoch() {
    let mut coordinator = Coordinator::start().await;
    let (worker, steering) = worker(&coordinator.url, 2);
    let mut started = start(worker);
    let mut session = coordinator.session().await;
    session.welcome(Duration::from_millis(100), true).await;
    session.assign("j1", 2, "hold", "").await;
    session.expect_quiet(Duration::from_millis(100)).await;
    drop(session);
    started
        .wait_for(|s| *s == ConnectionState::Disconnected)
        .await;

    // The next stream is never welcomed; meanwhile the handler returns, between streams.
    let session = coordinator.session().await;
    assert_eq!(held(&session.hello), [("j1", 2, EPOCH, false)]);
    steering.gate.add_permits(1);
    drop(session);

    let mut session = coordinator.session().await;
    assert_eq!(held(&session.hello), [("j1", 2, EPOCH, true)]);
    let result = session.expect_result().await;
    assert_eq!(
        (result.job_id.as_str(), result.attempt, result.epoch),
        ("j1", 2, EPOCH)
    );
    session.welcome(Duration::from_millis(100), true).await;
    session.expect_quiet(Duration::from_millis(200)).await;

    started.shutdown.cancel();
    drop(session);
    started.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_assignments_than_slots_are_released() {
    let mut coordinator = Coordinator::start().await;
    let (worker, steering) = worker(&coordinator.url, 1);
    let started = start(worker);
    let mut session = coordinator.session().await;
    assert_eq!(session.hello.slots, 1);
    session.welcome(Duration::from_millis(100), true).await;

    session.assign("j1", 1, "hold", "").await;
    session.assign("j2", 1, "echo", "x").await;
    session.expect(release("j2", 1)).await;

    steering.gate.add_permits(1);
    let result = session.expect_result().await;
    assert_eq!(result.outcome, Some(Outcome::Output(b"held".to_vec())));
    session.expect(credit()).await;

    started.shutdown.cancel();
    drop(session);
    started.stopped().await;
}

/// Lets the steered `hold` handler return, and expects its result for `job_id`'s `attempt`
/// on `session`, then the credit for its slot.
async fn returned_then_credit(
    session: &mut support::Session,
    steering: &Steering,
    job_id: &str,
    attempt: u32,
) -> switchyard_proto::v1::AttemptResult {
    steering.gate.add_permits(1);
    let result = match session.next().await {
        Some(Message::Result(result)) => result,
        other => panic!("expected {job_id}'s result, got {other:?}"),
    };
    assert_eq!(
        (result.job_id.as_str(), result.attempt, result.epoch),
        (job_id, attempt, EPOCH)
    );
    session.expect(credit()).await;
    result
}

/// The attempts a hello presents as held: (job, attempt, epoch, finished).
fn held(hello: &switchyard_proto::v1::Hello) -> Vec<(&str, u32, u64, bool)> {
    hello
        .held
        .iter()
        .map(|h| (h.job_id.as_str(), h.attempt, h.epoch, h.finished))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stream_keeps_its_handlers_running_for_the_next_stream_to_adopt() {
    let mut coordinator = Coordinator::start().await;
    let (worker, mut steering) = worker(&coordinator.url, 2);
    let mut started = start(worker);
    let mut session = coordinator.session().await;
    session.welcome(Duration::from_millis(100), true).await;
    session.assign("j1", 1, "hold", "").await;
    // Let the handler start before the stream goes.
    session.expect_quiet(Duration::from_millis(100)).await;

    // The coordinator goes away without a word.
    drop(session);
    started
        .wait_for(|s| *s == ConnectionState::Disconnected)
        .await;
    let mut session = coordinator.session().await;
    assert!(
        steering.fired.try_recv().is_err(),
        "a lost stream does not stop its handlers"
    );
    // The whole capacity, and the attempt it still runs.
    assert_eq!(session.hello.slots, 2);
    assert_eq!(held(&session.hello), [("j1", 1, EPOCH, false)]);
    session
        .welcome_adopting(Duration::from_millis(100), true, &[("j1", 1)])
        .await;
    started
        .wait_for(|s| matches!(s, ConnectionState::Connected { connection: 2, .. }))
        .await;
    // Adopted, it reports on the new stream, and its slot comes back.
    let result = returned_then_credit(&mut session, &steering, "j1", 1).await;
    assert_eq!(result.outcome, Some(Outcome::Output(b"held".to_vec())));
    assert!(steering.fired.try_recv().is_err(), "it was never stopped");
    session.expect_quiet(Duration::from_millis(200)).await;

    started.shutdown.cancel();
    drop(session);
    started.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_attempt_the_coordinator_did_not_adopt_is_stopped() {
    let mut coordinator = Coordinator::start().await;
    let (worker, mut steering) = worker(&coordinator.url, 2);
    let mut started = start(worker);
    let mut session = coordinator.session().await;
    session.welcome(Duration::from_millis(100), true).await;
    session.assign("j1", 1, "hold", "").await;
    session.expect_quiet(Duration::from_millis(100)).await;
    drop(session);
    started
        .wait_for(|s| *s == ConnectionState::Disconnected)
        .await;

    let mut session = coordinator.session().await;
    assert_eq!(held(&session.hello), [("j1", 1, EPOCH, false)]);
    // Too late: the coordinator gave it to someone else.
    session.welcome(Duration::from_millis(100), true).await;
    let fired = tokio::time::timeout(STEP, steering.fired.recv()).await;
    assert_eq!(fired.ok().flatten().as_deref(), Some("j1"));
    // Its result still goes out, for the fence to refuse, and then its slot comes back.
    returned_then_credit(&mut session, &steering, "j1", 1).await;

    started.shutdown.cancel();
    drop(session);
    started.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_coordinator_is_left() {
    let mut coordinator = Coordinator::start().await;
    let (worker, _steering) = worker(&coordinator.url, 2);
    let started = start(worker);
    let mut first = coordinator.session().await;
    let welcomed = Instant::now();
    // Welcomed, but never a heartbeat: after three intervals the worker gives up on it.
    first.welcome(Duration::from_millis(100), false).await;
    let mut second = coordinator.session().await;
    let waited = welcomed.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "reconnected after only {waited:?}"
    );
    assert_eq!(second.hello.slots, 2);
    second.welcome(Duration::from_millis(100), true).await;
    second.assign("j1", 1, "echo", "still here").await;
    assert_eq!(
        second.expect_result().await.outcome,
        Some(Outcome::Output(b"still here".to_vec()))
    );
    drop(first);

    started.shutdown.cancel();
    drop(second);
    started.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_coordinator_gets_its_jobs_back_and_the_worker_returns() {
    let mut coordinator = Coordinator::start().await;
    let (worker, mut steering) = worker(&coordinator.url, 2);
    let mut started = start(worker);
    let mut session = coordinator.session().await;
    session.welcome(Duration::from_millis(100), true).await;
    session.assign("j1", 3, "hold", "").await;
    session.expect_quiet(Duration::from_millis(100)).await;

    session
        .send(coordinator_message::Message::Drain(Drain {
            reason: "restarting".into(),
        }))
        .await;
    session.expect(release("j1", 3)).await;
    assert_eq!(session.next().await, None, "the worker ends its half");
    let fired = tokio::time::timeout(STEP, steering.fired.recv()).await;
    assert_eq!(fired.ok().flatten().as_deref(), Some("j1"));
    drop(session);

    let mut session = coordinator.session().await;
    // Released, its handler has not returned yet: it is presented as still running, which
    // the coordinator leaves out of its credit (and does not adopt).
    assert_eq!(session.hello.slots, 2);
    assert_eq!(held(&session.hello), [("j1", 3, EPOCH, false)]);
    session.welcome(Duration::from_millis(100), true).await;
    started
        .wait_for(|s| matches!(s, ConnectionState::Connected { connection: 2, .. }))
        .await;
    returned_then_credit(&mut session, &steering, "j1", 3).await;

    started.shutdown.cancel();
    drop(session);
    started.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_handlers_finish_and_releases_late_assignments() {
    let mut coordinator = Coordinator::start().await;
    let (worker, _steering) = worker(&coordinator.url, 2);
    let mut started = start(worker);
    let mut session = coordinator.session().await;
    session.welcome(Duration::from_millis(100), true).await;
    session.assign("j1", 1, "sleep", "slept").await;
    session.expect_quiet(Duration::from_millis(50)).await;

    started.shutdown.cancel();
    session
        .expect(Message::Drain(Drain {
            reason: "worker shutting down".into(),
        }))
        .await;
    started.wait_for(|s| *s == ConnectionState::Draining).await;
    // Sent before the coordinator read the drain.
    session.assign("j2", 1, "echo", "late").await;
    session.expect(release("j2", 1)).await;

    let result = session.expect_result().await;
    assert_eq!(result.job_id, "j1");
    assert_eq!(result.outcome, Some(Outcome::Output(b"slept".to_vec())));
    // No credit while draining; the worker ends the stream.
    assert_eq!(session.next().await, None);
    drop(session);
    started.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_grace_over_gives_back_what_still_runs() {
    let mut coordinator = Coordinator::start().await;
    let (worker, mut steering) = worker_with(WorkerConfig {
        drain_grace: Duration::from_millis(300),
        ..config(&coordinator.url, 2)
    });
    let started = start(worker);
    let mut session = coordinator.session().await;
    session.welcome(Duration::from_millis(100), true).await;
    session.assign("j1", 2, "hold", "").await;
    session.expect_quiet(Duration::from_millis(50)).await;

    let draining = Instant::now();
    started.shutdown.cancel();
    session
        .expect(Message::Drain(Drain {
            reason: "worker shutting down".into(),
        }))
        .await;
    session.expect(release("j1", 2)).await;
    assert!(draining.elapsed() >= Duration::from_millis(300));
    assert_eq!(session.next().await, None, "no result after the release");
    let fired = tokio::time::timeout(STEP, steering.fired.recv()).await;
    assert_eq!(fired.ok().flatten().as_deref(), Some("j1"));
    drop(session);
    started.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_disconnected_returns() {
    let (worker, _steering) = worker("http://127.0.0.1:9", 2);
    let mut started = start(worker);
    started
        .wait_for(|s| *s == ConnectionState::Disconnected)
        .await;
    started.shutdown.cancel();
    started.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_setups_fail_fast() {
    let no_handlers = Worker::new(WorkerConfig::default());
    let result = no_handlers.run(CancellationToken::new()).await;
    assert!(matches!(result, Err(Error::InvalidConfig(_))), "{result:?}");

    let (worker, _) = worker("not a url", 1);
    let result = worker.run(CancellationToken::new()).await;
    assert!(matches!(result, Err(Error::InvalidUrl(_))), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hello_is_final() {
    let coordinator = Coordinator::start().await;
    let (worker, _) = worker_with(WorkerConfig {
        worker_id: "refused".into(),
        ..config(&coordinator.url, 1)
    });
    let result = tokio::time::timeout(STEP, worker.run(CancellationToken::new()))
        .await
        .expect("gives up at once");
    match result {
        Err(Error::Refused { message, .. }) => {
            assert_eq!(message, "hello.worker_id: not welcome here")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_fires_the_token() {
    let mut coordinator = Coordinator::start().await;
    let (worker, _steering) = worker(&coordinator.url, 2);
    let started = start(worker);
    let mut session = coordinator.session().await;
    session.welcome(Duration::from_millis(100), true).await;

    let assigned = Instant::now();
    let deadline = std::time::SystemTime::now() + Duration::from_millis(300);
    session
        .send_assignment(Assignment {
            job_id: "j1".into(),
            attempt: 1,
            kind: "wait".into(),
            deadline: Some(deadline.into()),
            ..Default::default()
        })
        .await;
    let failure = session.expect_failure("j1").await;
    assert!(failure.cancelled, "{failure:?}");
    let waited = assigned.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    session.expect(credit()).await;

    started.shutdown.cancel();
    drop(session);
    started.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_holds_keeps_the_handlers_running_across_its_restart() {
    let mut coordinator = Coordinator::start().await;
    let (worker, mut steering) = worker(&coordinator.url, 2);
    let mut started = start(worker);
    let mut session = coordinator.session().await;
    session.welcome(Duration::from_millis(100), true).await;
    session.assign("j1", 2, "hold", "").await;
    session.expect_quiet(Duration::from_millis(100)).await;

    session
        .send(coordinator_message::Message::Hold(
            switchyard_proto::v1::Hold {
                reason: "restarting".into(),
            },
        ))
        .await;
    // No release: the worker only ends its half, and comes back with what it holds.
    assert_eq!(session.next().await, None, "the worker ends its half");
    drop(session);
    let mut session = coordinator.session().await;
    assert!(steering.fired.try_recv().is_err(), "nothing was stopped");
    assert_eq!(held(&session.hello), [("j1", 2, EPOCH, false)]);
    session
        .welcome_adopting(Duration::from_millis(100), true, &[("j1", 2)])
        .await;
    started
        .wait_for(|s| matches!(s, ConnectionState::Connected { connection: 2, .. }))
        .await;
    returned_then_credit(&mut session, &steering, "j1", 2).await;

    started.shutdown.cancel();
    drop(session);
    started.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_handlers_stop_when_no_coordinator_is_back_within_its_grace() {
    let mut coordinator = Coordinator::start().await;
    let (worker, mut steering) = worker(&coordinator.url, 1);
    let started = start(worker);
    let mut session = coordinator.session().await;
    session
        .send(coordinator_message::Message::Welcome(
            switchyard_proto::v1::Welcome {
                session_id: "s".into(),
                heartbeat_interval: Some(Duration::from_millis(100).try_into().expect("small")),
                reconnect_grace: Some(Duration::from_millis(300).try_into().expect("small")),
                ..Default::default()
            },
        ))
        .await;
    session.assign("j1", 1, "hold", "").await;
    session.expect_quiet(Duration::from_millis(100)).await;
    let lost = Instant::now();
    // The coordinator goes, and no other welcomes the worker: the handshakes it tries are
    // never answered.
    drop(session);
    let fired = tokio::time::timeout(STEP, steering.fired.recv()).await;
    assert_eq!(fired.ok().flatten().as_deref(), Some("j1"));
    assert!(
        lost.elapsed() >= Duration::from_millis(300),
        "stopped only once the grace ran out: {:?}",
        lost.elapsed()
    );
    started.shutdown.cancel();
    started.stopped().await;
}
