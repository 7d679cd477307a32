//! Starts the real Switchyard processes for tests: the coordinator on `127.0.0.1:0` with a
//! temporary database, talked to over gRPC. Each handle kills its process when dropped.
//!
//! `SWITCHYARD_TEST_BACKEND` picks the coordinator's store: `sqlite` (the default: a file in a
//! temporary directory) or `postgres` (a fresh database on the test process's private
//! PostgreSQL server, [`postgres`]). [`backend`] says which one a test runs on.

pub mod otlp;
pub mod postgres;
mod proxy;

pub use proxy::Proxy;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::Arc,
    time::Duration,
};

use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdout, Command},
};

/// How long a process may take to say where it listens before the test gives up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of one of the workspace's binaries, built next to the test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`). `SWITCHYARD_BIN_DIR` overrides.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SWITCHYARD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("the test executable has a path");
            exe.parent()
                .and_then(Path::parent)
                .expect("tests run from target/<profile>/deps")
                .to_path_buf()
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo test --workspace` builds every binary)",
        path.display()
    );
    path
}

/// The store the coordinators of this test run use, from `SWITCHYARD_TEST_BACKEND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite` or unset: a database file in a temporary directory.
    Sqlite,
    /// `postgres`: a fresh database on the test process's PostgreSQL server.
    Postgres,
}

/// The backend `SWITCHYARD_TEST_BACKEND` selects (`sqlite` when it is unset or empty).
pub fn backend() -> Backend {
    match std::env::var("SWITCHYARD_TEST_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => Backend::Sqlite,
        Ok("postgres") => Backend::Postgres,
        Ok(other) => panic!("SWITCHYARD_TEST_BACKEND={other:?}: expected sqlite or postgres"),
    }
}

/// True (after saying so on stderr) when the tests run on Postgres: for a test that is about
/// SQLite itself (its file, its locks, its failpoints), which returns early then.
pub fn skip_on_postgres(reason: &str) -> bool {
    skip_if(
        backend() == Backend::Postgres,
        &format!("skipped on postgres: {reason}"),
    )
}

/// True (after saying so on stderr) unless the tests run on Postgres: for a test that needs
/// it (several coordinators sharing one database), which returns early then.
pub fn skip_unless_postgres(reason: &str) -> bool {
    skip_if(
        backend() != Backend::Postgres,
        &format!("skipped: {reason} (SWITCHYARD_TEST_BACKEND=postgres)"),
    )
}

fn skip_if(skip: bool, line: &str) -> bool {
    if skip {
        // Straight to stderr, past the test harness's capture: the line shows in CI's log.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{line}");
    }
    skip
}

/// Where a coordinator keeps its jobs: the `--db` URL, and the SQLite file behind it.
#[derive(Clone, Debug)]
struct Db {
    url: String,
    /// The SQLite database file; `None` on Postgres.
    path: Option<PathBuf>,
}

impl Db {
    /// The one place that decides a new coordinator's `--db`: a SQLite file in `dir`, or a
    /// fresh Postgres database. A restart reuses it (the same file or database).
    async fn new(dir: &Path) -> Db {
        match backend() {
            Backend::Sqlite => {
                let path = dir.join("switchyard.db");
                Db {
                    url: format!("sqlite://{}", path.display()),
                    path: Some(path),
                }
            }
            Backend::Postgres => Db {
                url: postgres::database().await,
                path: None,
            },
        }
    }
}

/// A coordinator process and the directory that holds its log (and its SQLite database).
pub struct Coordinator {
    child: Option<Child>,
    _stdout: Option<ChildStdout>,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    dir: Arc<TempDir>,
    db: Db,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Coordinator {
    /// Starts a coordinator on a fresh temporary database.
    pub async fn start() -> Coordinator {
        Self::start_with(&[]).await
    }

    /// Starts a coordinator with extra flags on a fresh temporary database.
    pub async fn start_with(args: &[&str]) -> Coordinator {
        Self::start_with_env(args, &[]).await
    }

    /// Starts a coordinator with extra flags and environment variables (say,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`) on a fresh temporary database.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Coordinator {
        Self::start_in(None, args, env).await
    }

    /// Starts a coordinator whose database lives in `db_dir` (say, a small filesystem the test
    /// made: SQLite only), or in the coordinator's own temporary directory (or, on Postgres, a
    /// fresh database).
    pub async fn start_in(
        db_dir: Option<&Path>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Coordinator {
        let dir = Arc::new(tempfile::tempdir().expect("temporary directory"));
        assert!(
            db_dir.is_none() || backend() == Backend::Sqlite,
            "a database directory is SQLite's: skip this test on {:?}",
            backend()
        );
        let db = Db::new(db_dir.unwrap_or(dir.path())).await;
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::launch(dir, db, args, env).await
    }

    /// Starts a coordinator on the database `db_url` names, which other coordinators may
    /// share (several coordinators on one Postgres database: a fleet).
    pub async fn start_on(db_url: &str, args: &[&str]) -> Coordinator {
        let dir = Arc::new(tempfile::tempdir().expect("temporary directory"));
        let db = Db {
            url: db_url.to_owned(),
            path: None,
        };
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Self::launch(dir, db, args, Vec::new()).await
    }

    /// Spawns the process on `127.0.0.1:0` and keeps what a restart needs.
    async fn launch(
        dir: Arc<TempDir>,
        db: Db,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Coordinator {
        let (child, stdout, addr, metrics_addr) =
            spawn(dir.path(), &db, &args, &env, "127.0.0.1:0").await;
        Coordinator {
            child: Some(child),
            _stdout: Some(stdout),
            addr,
            metrics_addr,
            dir,
            db,
            args,
            env,
        }
    }

    /// Whether this process (since its last start) leads its fleet: its log says it took
    /// the leadership lease after it last started.
    pub fn leads(&self) -> bool {
        let log = self.log();
        let started = log.rfind("coordinator starting");
        let led = log.rfind("this coordinator leads the fleet");
        matches!((started, led), (Some(s), Some(l)) if l > s)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the metrics endpoint listens, when the coordinator was started with `--metrics`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// `http://127.0.0.1:PORT`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The SQLite database file (panics on Postgres: skip such a test there).
    pub fn db_path(&self) -> PathBuf {
        self.db
            .path
            .clone()
            .expect("the coordinator runs on Postgres: there is no database file")
    }

    /// The `--db` URL the coordinator runs on (the same across restarts).
    pub fn db_url(&self) -> &str {
        &self.db.url
    }

    /// Everything the coordinator has logged (stderr), across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("coordinator.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("the coordinator is running")
    }

    /// SIGKILL: no chance to flush or close anything.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("SIGKILL the coordinator");
        }
        self._stdout = None;
    }

    /// SIGTERM, then waits for the process to exit by itself.
    pub async fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), "TERM");
        let mut child = self.child.take().expect("the coordinator is running");
        let status = tokio::time::timeout(START_TIMEOUT, child.wait())
            .await
            .expect("the coordinator exits after SIGTERM")
            .expect("wait for the coordinator");
        self._stdout = None;
        status
    }

    /// Replaces the environment the coordinator is started with from now on (say, to start it
    /// again without a failpoint).
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Starts the coordinator again on the same database (after `kill` or `terminate`), on the
    /// same port so that clients reconnect.
    pub async fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop the coordinator before restarting it"
        );
        let (child, stdout, addr, metrics_addr) = spawn(
            self.dir.path(),
            &self.db,
            &self.args,
            &self.env,
            &self.addr.to_string(),
        )
        .await;
        assert_eq!(addr, self.addr);
        // With `--metrics 127.0.0.1:0` the metrics port may change.
        self.metrics_addr = metrics_addr;
        self.child = Some(child);
        self._stdout = Some(stdout);
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`) to a process.
pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Starts the coordinator and reads where it listens from its stdout: the first line, and the
/// second when `--metrics` is among `args`.
async fn spawn(
    dir: &Path,
    db: &Db,
    args: &[String],
    env: &[(String, String)],
    listen: &str,
) -> (Child, ChildStdout, SocketAddr, Option<SocketAddr>) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("coordinator.log"))
        .expect("open the coordinator's log");
    let mut child = Command::new(bin("switchyard-server"))
        .arg("--listen")
        .arg(listen)
        .arg("--db")
        .arg(&db.url)
        .args(args)
        .env("SWITCHYARD_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start switchyard-server");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = read_addr(&mut lines, dir, "switchyard-server listening on ").await;
    let metrics = args.iter().any(|arg| {
        ["--http", "--metrics"]
            .iter()
            .any(|flag| arg == flag || arg.starts_with(&format!("{flag}=")))
    });
    let metrics_addr = if metrics {
        Some(read_addr(&mut lines, dir, "switchyard-server metrics on ").await)
    } else {
        None
    };
    (child, lines.into_inner().into_inner(), addr, metrics_addr)
}

/// Reads the next line of the coordinator's stdout, `<prefix>ADDR`, and returns the address.
async fn read_addr(
    lines: &mut tokio::io::Lines<BufReader<ChildStdout>>,
    dir: &Path,
    prefix: &str,
) -> SocketAddr {
    let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
        .await
        .expect("the coordinator prints its address in time")
        .expect("read the coordinator's stdout")
        .unwrap_or_else(|| {
            panic!(
                "the coordinator exited before listening; its log:\n{}",
                std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default()
            )
        });
    line.strip_prefix(prefix)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            panic!("expected {prefix:?} and an address from the coordinator: {line:?}")
        })
}

/// How many workers this test process has started: part of each one's unique id.
static WORKERS_STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A `switchyard-worker` process, its stdout (where it announces each connection) and a
/// directory that holds its log. Killed when dropped.
pub struct Worker {
    child: Option<Child>,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    id: String,
    dir: TempDir,
}

impl Worker {
    /// Starts `switchyard-worker --coordinator URL --worker-id <unique> --heartbeat-interval
    /// 200ms` plus `args` (which may override any of those), and returns once it has
    /// connected.
    pub async fn start(coordinator_url: &str, args: &[&str]) -> Worker {
        Self::start_with_env(coordinator_url, args, &[]).await
    }

    /// As [`Worker::start`], with extra environment variables.
    pub async fn start_with_env(
        coordinator_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Worker {
        let dir = tempfile::tempdir().expect("temporary directory");
        let given = |flag: &str| {
            args.iter()
                .position(|arg| *arg == flag || arg.starts_with(&format!("{flag}=")))
        };
        let id = match given("--worker-id") {
            Some(at) => match args[at].split_once('=') {
                Some((_, id)) => id.to_owned(),
                None => args
                    .get(at + 1)
                    .expect("--worker-id takes a value")
                    .to_string(),
            },
            None => format!(
                "test-worker-{}-{}",
                std::process::id(),
                WORKERS_STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        };
        let mut defaults: Vec<String> = Vec::new();
        for (flag, value) in [
            ("--coordinator", coordinator_url),
            ("--worker-id", id.as_str()),
            ("--heartbeat-interval", "200ms"),
        ] {
            if given(flag).is_none() {
                defaults.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("worker.log"))
            .expect("open the worker's log");
        let mut child = Command::new(bin("switchyard-worker"))
            .args(&defaults)
            .args(args)
            .env("SWITCHYARD_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start switchyard-worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut worker = Worker {
            child: Some(child),
            stdout: BufReader::new(stdout).lines(),
            id,
            dir,
        };
        worker.next_connected().await;
        worker
    }

    /// The worker id it was started with.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("the worker is running")
    }

    /// Waits for the next `switchyard-worker <id> connected` line: the worker was welcomed
    /// (again, after a coordinator restart).
    pub async fn next_connected(&mut self) {
        let line = tokio::time::timeout(START_TIMEOUT, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "worker {} did not connect within {START_TIMEOUT:?}; its log:\n{}",
                    self.id,
                    self.log()
                )
            })
            .expect("read the worker's stdout")
            .unwrap_or_else(|| {
                panic!(
                    "worker {} exited before connecting; its log:\n{}",
                    self.id,
                    self.log()
                )
            });
        let expected = format!("switchyard-worker {} connected", self.id);
        assert_eq!(
            line,
            expected,
            "unexpected line from the worker; its log:\n{}",
            self.log()
        );
    }

    /// SIGKILL: handlers die mid-job, nothing is given back.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("SIGKILL the worker");
        }
    }

    /// SIGSTOP: the process stays, silent (its stream goes quiet).
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`Worker::pause`].
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// SIGTERM (drain), then waits for the process to exit by itself.
    pub async fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), "TERM");
        let mut child = self.child.take().expect("the worker is running");
        tokio::time::timeout(START_TIMEOUT, child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "worker {} did not exit within {START_TIMEOUT:?} of SIGTERM; its log:\n{}",
                    self.id,
                    self.log()
                )
            })
            .expect("wait for the worker")
    }

    /// Everything the worker has logged (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
