//! The worker protocol, proved from another language: `examples/python-worker/worker.py`, written
//! from `workers.proto` alone on `grpcio`, against a real coordinator. The test makes its own
//! virtual environment from PyPI (`examples/python-worker/requirements.txt`; kept under the
//! target directory, keyed by the requirements and the interpreter, so later runs reuse it),
//! generates the stubs with `grpcio-tools` into a temporary directory, and runs the worker as a
//! child process. Without `python3`, its `venv` module or PyPI the tests fail, saying so: CI
//! has CPython 3.11 with pip.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use switchyard_client::{Batch, JobSpec};
use switchyard_proto::v1::{AttemptOutcome, JobState};
use switchyard_testkit::{Coordinator, Worker, signal};
use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

use support::{
    PATIENCE, coordinator, eventually, finished, finished_all, max_overlap, outcomes, running_on,
    span, stats, submit_all,
};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/python-worker");
const PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto/proto");

/// The virtual environment's interpreter, made once per run (see `support::python`).
fn venv_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        support::python::venv(
            "python-worker",
            &Path::new(EXAMPLE).join("requirements.txt"),
            "the Python worker test",
        )
    })
}

/// `examples/python-worker/worker.py` as a child process (killed when dropped), with stubs
/// generated from the `.proto` files into its own temporary directory.
struct PyWorker {
    child: Option<Child>,
    stdout: Lines<BufReader<ChildStdout>>,
    id: String,
    dir: TempDir,
}

impl PyWorker {
    /// Starts the worker (heartbeats every 200ms, plus `args`) and returns once it was
    /// welcomed.
    async fn start(coordinator: &Coordinator, id: &str, args: &[&str]) -> PyWorker {
        let python = venv_python();
        let dir = tempfile::tempdir().expect("temporary directory");
        let stubs = dir.path().join("gen");
        std::fs::create_dir(&stubs).expect("make the stubs' directory");
        let protos = std::fs::read_dir(Path::new(PROTOS).join("switchyard/v1"))
            .expect("list the .proto files")
            .map(|entry| entry.expect("a .proto file").path())
            .filter(|path| path.extension().is_some_and(|e| e == "proto"));
        support::python::run(
            std::process::Command::new(python)
                .args(["-m", "grpc_tools.protoc", "-I", PROTOS])
                .arg(format!("--python_out={}", stubs.display()))
                .arg(format!("--grpc_python_out={}", stubs.display()))
                .args(protos),
            "grpc_tools.protoc could not generate the Python stubs",
        );
        let log = std::fs::File::create(dir.path().join("worker.log")).expect("the worker's log");
        let mut child = Command::new(python)
            .arg("-u")
            .arg(Path::new(EXAMPLE).join("worker.py"))
            .args(["--coordinator", &coordinator.addr().to_string()])
            .args(["--worker-id", id, "--heartbeat-interval", "0.2"])
            .arg("--stubs")
            .arg(&stubs)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the Python worker");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut worker = PyWorker {
            child: Some(child),
            stdout,
            id: id.to_owned(),
            dir,
        };
        worker.next_connected().await;
        worker
    }

    /// Waits for the next `python-worker <id> connected` line: it was welcomed (again).
    async fn next_connected(&mut self) {
        let line = tokio::time::timeout(PATIENCE, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("no welcome in time; its log:\n{}", self.log()))
            .expect("read the worker's stdout");
        assert_eq!(
            line.as_deref(),
            Some(format!("python-worker {} connected", self.id).as_str()),
            "the Python worker did not connect; its log:\n{}",
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("the worker runs")
    }

    /// Waits until the worker has logged that it started `job_id` (it has the assignment).
    async fn started(&self, job_id: &str) {
        eventually(&format!("{} starts {job_id}", self.id), || async {
            self.log()
                .lines()
                .any(|l| l.contains(" start ") && l.contains(job_id))
                .then_some(())
        })
        .await
    }

    /// SIGKILL: the process dies mid-job, its stream with it.
    async fn kill(&mut self) {
        let mut child = self.child.take().expect("the worker runs");
        child.kill().await.expect("SIGKILL the Python worker");
    }

    /// SIGTERM (drain), then waits for it to exit by itself.
    async fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), "TERM");
        let mut child = self.child.take().expect("the worker runs");
        tokio::time::timeout(PATIENCE, child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit after SIGTERM; its log:\n{}", self.log()))
            .expect("wait for the Python worker")
    }
}

#[tokio::test]
async fn jobs_submitted_from_rust_run_on_the_python_worker() {
    let (coordinator, client) = coordinator().await;
    let py = PyWorker::start(&coordinator, "py-1", &["--queues", "py", "--slots", "2"]).await;

    let workers = client.workers().await.expect("list the workers");
    let [info] = workers.as_slice() else {
        panic!("one worker connected: {workers:?}");
    };
    assert_eq!(
        (info.worker_id.as_str(), info.slots, info.queues.as_slice()),
        ("py-1", 2, ["py".to_owned()].as_slice())
    );
    let mut kinds = info.kinds.clone();
    kinds.sort();
    assert_eq!(kinds, ["echo", "sleep", "upper"]);

    for (kind, payload, output) in [("echo", "hello", "hello"), ("upper", "shout", "SHOUT")] {
        let job = client
            .submit(JobSpec::new("py", kind).payload(payload))
            .await
            .expect("submit");
        let job = finished(&client, &job.job_id).await;
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
        assert_eq!(job.output, output.as_bytes(), "{kind} {payload:?}");
        assert_eq!(outcomes(&job), [(AttemptOutcome::Succeeded, "py-1".into())]);
    }

    // A pipeline: `upper` has no payload and one dependency, so it takes `echo`'s output.
    let batch = Batch::new()
        .job(
            JobSpec::new("py", "echo")
                .payload("piped")
                .reference("first"),
        )
        .job(JobSpec::new("py", "upper").depends_on("first"));
    let done = client.submit_batch(batch).await.expect("submit a pipeline");
    let last = finished(&client, &done.jobs[1].job_id).await;
    assert_eq!(
        (last.state(), last.output.as_slice()),
        (JobState::Succeeded, b"PIPED".as_slice())
    );

    // Eight jobs through two slots: they all run only if each freed slot is credited back,
    // and never more than two at once.
    let ids = submit_all(
        &client,
        (0..8).map(|_| JobSpec::new("py", "sleep").payload("100")),
    )
    .await;
    let jobs = finished_all(&client, &ids).await;
    for job in &jobs {
        assert_eq!(outcomes(job), [(AttemptOutcome::Succeeded, "py-1".into())]);
    }
    let spans = jobs.iter().map(|j| {
        let (start, end) = span(&j.attempts[0]);
        (start, end, 1)
    });
    assert_eq!(max_overlap(spans), 2, "two slots, both used");

    // A job longer than three heartbeat intervals (200ms): the stream lives only if the
    // worker heartbeats and acknowledges the coordinator's heartbeats.
    let connected_at = info.connected_at;
    let job = client
        .submit(JobSpec::new("py", "sleep").payload("1500"))
        .await
        .expect("submit");
    let job = finished(&client, &job.job_id).await;
    assert_eq!(
        outcomes(&job),
        [(AttemptOutcome::Succeeded, "py-1".into())],
        "{job:?}\nthe worker's log:\n{}",
        py.log()
    );
    let workers = client.workers().await.expect("list the workers");
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(
        workers[0].connected_at, connected_at,
        "still the first stream"
    );
}

#[tokio::test]
async fn a_cancel_reaches_the_python_worker_and_frees_its_slot() {
    let (coordinator, client) = coordinator().await;
    let py = PyWorker::start(&coordinator, "py-1", &["--queues", "py", "--slots", "1"]).await;
    let job = client
        .submit(JobSpec::new("py", "sleep").payload("60000"))
        .await
        .expect("submit");
    running_on(&client, "py-1", 1).await;
    py.started(&job.job_id).await;
    let refused_before = stats(&client).await.refused_results;

    let cancelled_at = Instant::now();
    client.cancel(&job.job_id).await.expect("cancel");
    let job = finished(&client, &job.job_id).await;
    assert_eq!(job.state(), JobState::Cancelled, "{job:?}");
    assert_eq!(outcomes(&job), [(AttemptOutcome::Cancelled, "py-1".into())]);

    // One slot: the next job runs only once the sleep has stopped and its slot was credited
    // back, long before its 60 seconds.
    let next = client
        .submit(JobSpec::new("py", "echo").payload("next"))
        .await
        .expect("submit");
    let next = finished(&client, &next.job_id).await;
    assert_eq!(
        (
            next.state(),
            next.output.as_slice(),
            next.worker_id.as_str()
        ),
        (JobState::Succeeded, b"next".as_slice(), "py-1"),
        "the worker's log:\n{}",
        py.log()
    );
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(20),
        "the slot freed only after {:?}",
        cancelled_at.elapsed()
    );
    // The stopped handler still reported its attempt (cancelled = true), refused as stale.
    eventually("the cancelled attempt's result is refused", || async {
        (stats(&client).await.refused_results > refused_before).then_some(())
    })
    .await;
    assert!(
        py.log().contains("cancelled while sleeping"),
        "{}",
        py.log()
    );
}

#[tokio::test]
async fn killing_the_python_worker_moves_its_job_to_another_worker() {
    let (coordinator, client) = coordinator().await;
    let mut py = PyWorker::start(&coordinator, "py-1", &["--queues", "py", "--slots", "1"]).await;
    let job = client
        .submit(JobSpec::new("py", "sleep").payload("3000"))
        .await
        .expect("submit");
    running_on(&client, "py-1", 1).await;
    py.started(&job.job_id).await;
    py.kill().await;

    let rust = Worker::start(&coordinator.url(), &["--queues", "py", "--kinds", "sleep"]).await;
    let job = finished(&client, &job.job_id).await;
    assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
    assert_eq!(
        outcomes(&job),
        [
            (AttemptOutcome::Lost, "py-1".into()),
            (AttemptOutcome::Succeeded, rust.id().to_owned()),
        ]
    );
}

#[tokio::test]
async fn sigterm_drains_the_python_worker() {
    let (coordinator, client) = coordinator().await;
    let mut py = PyWorker::start(
        &coordinator,
        "py-1",
        &["--queues", "py", "--slots", "2", "--drain-grace", "2"],
    )
    .await;
    let short = client
        .submit(JobSpec::new("py", "sleep").payload("300"))
        .await
        .expect("submit");
    let long = client
        .submit(JobSpec::new("py", "sleep").payload("60000"))
        .await
        .expect("submit");
    py.started(&short.job_id).await;
    py.started(&long.job_id).await;

    let status = py.terminate().await;
    assert!(status.success(), "{status}; its log:\n{}", py.log());
    // The short job finished within the grace period; the long one went back to the queue,
    // not counted as a failed attempt.
    let short = finished(&client, &short.job_id).await;
    assert_eq!(
        outcomes(&short),
        [(AttemptOutcome::Succeeded, "py-1".into())]
    );
    let long = client.get(&long.job_id).await.expect("get");
    assert_eq!(long.state(), JobState::Queued, "{long:?}");
    assert_eq!(outcomes(&long), [(AttemptOutcome::Released, "py-1".into())]);
    eventually("the drained worker is gone", || async {
        client.workers().await.ok()?.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_python_worker_reconnects_after_a_coordinator_restart() {
    let (mut coordinator, client) = coordinator().await;
    let mut py = PyWorker::start(&coordinator, "py-1", &["--queues", "py"]).await;
    // SIGTERM: the coordinator sends `Hold` and ends the stream; the worker reconnects (with
    // backoff) to the coordinator started again on the same port and database.
    assert!(coordinator.terminate().await.success());
    coordinator.restart().await;
    py.next_connected().await;
    let job = client
        .submit(JobSpec::new("py", "upper").payload("again"))
        .await
        .expect("submit");
    let job = finished(&client, &job.job_id).await;
    assert_eq!(
        (job.state(), job.output.as_slice(), job.worker_id.as_str()),
        (JobState::Succeeded, b"AGAIN".as_slice(), "py-1"),
        "the worker's log:\n{}",
        py.log()
    );
    assert!(
        py.log().contains("the coordinator restarts"),
        "{}",
        py.log()
    );
}
