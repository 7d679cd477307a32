//! `switchyard dev`: the whole system on one machine, on the embedded default (SQLite).
//!
//! It owns its children and stops them the same way however it is stopped (Ctrl-C in a
//! terminal, SIGINT or SIGTERM from a process manager, SIGHUP when the terminal goes): the
//! workers drain first, each within a wait longer than its drain grace, then the coordinator,
//! and every child is waited for. The children run in their own process group, so a
//! terminal's Ctrl-C reaches only `dev`, which then stops them in that order (otherwise the
//! coordinator would drain at the same moment as the workers and their running jobs would come
//! back `interrupted`). Nothing here panics on a closed stdout or stderr (`dev | tee log`
//! after `tee` died): it writes through [`crate::say`], and forwards the children's logs
//! itself when its stderr is not a terminal, so that they never meet a closed pipe either.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::Args;
use switchyard_proto::text::parse_duration;
use switchyard_telemetry::logging::Format as LogFormat;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader, Lines},
    process::{Child, ChildStdout, Command},
    signal::unix::{Signal, SignalKind, signal},
};

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the coordinator listens (`127.0.0.1:0` picks a free port).
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR")]
    listen: String,
    /// The database: `sqlite://PATH` (created if missing) or `postgres://…` (an existing
    /// database), passed to the coordinator as its `--db`.
    #[arg(long, default_value = "sqlite://switchyard-dev.db")]
    db: String,
    /// Worker processes to start (each serves the built-in kinds).
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Slots of each worker: jobs it runs at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// Queues the workers serve (comma-separated).
    #[arg(long, default_value = "default")]
    queues: String,
    /// Serve the coordinator's web console at http://ADDR/ and its Prometheus metrics at
    /// http://ADDR/metrics (the coordinator's --http).
    #[arg(long, visible_alias = "http", value_name = "ADDR")]
    metrics: Option<String>,
    /// When stopped, how long the workers' running jobs may take to finish (e.g. 30s); those
    /// still running then go back to the queue, not counted as a failed attempt.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_grace: Duration,
}

/// How long past its drain grace a worker may take to exit before it is killed: its
/// `--cancel-grace` (10 s by default) for handlers that ignore cancellation, and some slack.
const WORKER_EXIT_SLACK: Duration = Duration::from_secs(15);

/// How long the coordinator may take to drain (close its streams, commit, checkpoint).
const COORDINATOR_STOP: Duration = Duration::from_secs(30);

/// How long a child may take to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A binary that ships next to this one (`switchyard-server`, `switchyard-worker`), else on
/// `PATH`.
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A child process of `dev` (or `bench`), by the name its logs use.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
}

impl Process {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM (a drain), then waits at most `within` for it to exit; kills it after that.
    /// Always waits for the process, so that none is left a zombie.
    pub async fn stop(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(status);
        }
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            // It may have exited since: then there is nothing to stop, and `wait` says so.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                tracing::warn!(
                    "{} did not stop within {}; killing it",
                    self.name,
                    crate::watch::format_duration(within)
                );
                self.kill().await
            }
        }
    }

    /// SIGKILL, and waits for it.
    pub async fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        // An error here means it had exited already; `wait` reaps it either way.
        let _ = self.child.start_kill();
        Ok(self.child.wait().await?)
    }
}

/// Starts a sibling binary in its own process group and waits for its first line on stdout,
/// which says it is ready. Returns the process and its stdout, at that line.
fn spawn(
    binary_name: &str,
    name: &str,
    args: &[String],
    log_format: LogFormat,
) -> anyhow::Result<(Process, Lines<BufReader<ChildStdout>>)> {
    let binary = sibling(binary_name);
    // On a terminal the child writes its logs there itself (with colour); otherwise they
    // come through `dev`, which copies them and drops what it cannot write.
    let forward = !std::io::stderr().is_terminal();
    let mut child = Command::new(&binary)
        // The children log as this process does (before `args`, which may say otherwise).
        .args(["--log-format", log_format.name()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if forward {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        // Its own group: a terminal's Ctrl-C goes to `dev` alone, which stops the children in
        // order (workers, then the coordinator).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with `cargo build --release`, or install it with \
                 `cargo install --locked --path {}`)",
                binary.display(),
                if binary_name == "switchyard-server" {
                    "server"
                } else {
                    "worker"
                }
            )
        })?;
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_lines(stderr));
    }
    let stdout = child.stdout.take().context("piped stdout")?;
    Ok((
        Process {
            name: name.to_owned(),
            child,
        },
        BufReader::new(stdout).lines(),
    ))
}

/// Copies a child's stderr to ours, line by line, until the child closes it. A line that
/// cannot be written is dropped: the child must keep running and never see a closed pipe.
async fn forward_lines(from: impl AsyncRead + Unpin) {
    let mut from = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match from.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                // A line to a pipe or a file: short enough not to need an async write.
                let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), &line);
            }
        }
    }
}

/// Reads lines to the end, so that the child never writes into a closed pipe.
fn drain_stdout(mut lines: Lines<BufReader<ChildStdout>>) {
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

/// The next line of a child's stdout, within [`START_TIMEOUT`].
async fn next_line(
    process: &mut Process,
    lines: &mut Lines<BufReader<ChildStdout>>,
) -> anyhow::Result<String> {
    let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
        .await
        .with_context(|| format!("{} was not ready within 60s", process.name))??;
    match line {
        Some(line) => Ok(line),
        None => {
            let status = process.child.wait().await?;
            bail!(
                "{} exited at start ({status}); see its log above",
                process.name
            )
        }
    }
}

/// The address at the end of a `switchyard-server … on ADDR` line.
fn address(line: &str) -> anyhow::Result<String> {
    line.rsplit(' ')
        .next()
        .filter(|a| a.contains(':'))
        .map(str::to_owned)
        .with_context(|| format!("unexpected line from the coordinator: {line:?}"))
}

/// Starts `switchyard-server` with `args` and returns it once it prints where it listens.
pub async fn start_coordinator(
    args: &[String],
    log_format: LogFormat,
) -> anyhow::Result<(Process, String)> {
    let (mut process, mut lines) = spawn("switchyard-server", "the coordinator", args, log_format)?;
    let addr = address(&next_line(&mut process, &mut lines).await?)?;
    drain_stdout(lines);
    Ok((process, addr))
}

/// Starts a `switchyard-worker` and returns it once it says it is connected.
pub async fn start_worker(args: &[String], log_format: LogFormat) -> anyhow::Result<Process> {
    let name = args
        .iter()
        .position(|a| a == "--worker-id")
        .and_then(|at| args.get(at + 1))
        .map_or_else(|| "a worker".to_owned(), |id| format!("worker {id}"));
    let (mut process, mut lines) = spawn("switchyard-worker", &name, args, log_format)?;
    next_line(&mut process, &mut lines).await?;
    // It prints a line at each reconnect.
    drain_stdout(lines);
    Ok(process)
}

/// Stops a process that `bench` started, within [`COORDINATOR_STOP`].
pub async fn stop(process: &mut Process) -> anyhow::Result<()> {
    process.stop(COORDINATOR_STOP).await.map(|_| ())
}

/// SIGINT, SIGTERM and SIGHUP: each means "stop", the second one "stop now".
struct Signals(Vec<(Signal, &'static str)>);

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let mut signals = Vec::new();
        for (kind, name) in [
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::hangup(), "SIGHUP"),
        ] {
            signals.push((
                signal(kind).with_context(|| format!("listening for {name}"))?,
                name,
            ));
        }
        Ok(Signals(signals))
    }

    /// The name of the next signal that arrives.
    async fn next(&mut self) -> &'static str {
        let waiting = self.0.iter_mut().map(|(signal, name)| {
            let name = *name;
            Box::pin(async move {
                signal.recv().await;
                name
            })
        });
        futures::future::select_all(waiting).await.0
    }
}

/// What `dev` has started, stopped in the right order.
#[derive(Default)]
struct Fleet {
    coordinator: Option<Process>,
    workers: Vec<Process>,
}

impl Fleet {
    /// The workers first, all at once, each within its drain grace and some slack; then the
    /// coordinator, so that it is there to take the workers' last results and releases.
    async fn stop(&mut self, drain_grace: Duration, signals: &mut Signals) {
        let worker_wait = drain_grace + WORKER_EXIT_SLACK;
        let stopping = async {
            let stops = self.workers.iter_mut().map(|worker| async move {
                match worker.stop(worker_wait).await {
                    Ok(status) => errln!("{} stopped ({status})", worker.name()),
                    Err(err) => {
                        tracing::warn!(cause = %err, "{} could not be stopped", worker.name())
                    }
                }
            });
            futures::future::join_all(stops).await;
            if let Some(coordinator) = &mut self.coordinator {
                match coordinator.stop(COORDINATOR_STOP).await {
                    Ok(status) => errln!("the coordinator stopped ({status})"),
                    Err(err) => {
                        tracing::warn!(cause = %err, "the coordinator could not be stopped")
                    }
                }
            }
        };
        let again = tokio::select! {
            () = stopping => None,
            name = signals.next() => Some(name),
        };
        if let Some(name) = again {
            errln!("{name} again: killing everything now");
            for process in self.workers.iter_mut().chain(self.coordinator.as_mut()) {
                if let Err(err) = process.kill().await {
                    tracing::warn!(cause = %err, "{} could not be killed", process.name());
                }
            }
        }
    }
}

pub async fn run(args: DevArgs, log_format: LogFormat) -> anyhow::Result<()> {
    // Listening before anything starts: a signal from now on stops the fleet cleanly rather
    // than killing `dev` and leaving its children behind.
    let mut signals = Signals::install()?;
    let mut fleet = Fleet::default();
    let started = tokio::select! {
        started = start(&args, log_format, &mut fleet) => Some(started),
        name = signals.next() => {
            errln!("{name}: stopping what had started");
            None
        }
    };
    let outcome = match started {
        Some(Ok(banner)) => {
            outln!("{banner}");
            serve(&mut fleet, &mut signals).await
        }
        Some(Err(err)) => Err(err),
        None => Ok(()),
    };
    errln!(
        "stopping: the workers drain (running jobs get {}), then the coordinator…",
        crate::watch::format_duration(args.drain_grace)
    );
    fleet.stop(args.drain_grace, &mut signals).await;
    errln!("stopped.");
    outcome
}

/// Waits for a signal, or for a child that exits on its own (then the rest is stopped too).
async fn serve(fleet: &mut Fleet, signals: &mut Signals) -> anyhow::Result<()> {
    let Fleet {
        coordinator,
        workers,
    } = fleet;
    let coordinator = coordinator
        .as_mut()
        .context("the coordinator was started")?;
    let worker_exits = async {
        if workers.is_empty() {
            return std::future::pending().await;
        }
        let exits = workers.iter_mut().map(|worker| {
            Box::pin(async move { (worker.name.clone(), worker.child.wait().await) })
        });
        futures::future::select_all(exits).await.0
    };
    tokio::select! {
        name = signals.next() => {
            errln!("{name}: stopping");
            Ok(())
        }
        status = coordinator.child.wait() => bail!("the coordinator exited: {}", status?),
        (name, status) = worker_exits => bail!("{name} exited: {}", status?),
    }
}

/// Starts the coordinator and the workers (each joins `fleet` as soon as it is spawned, so
/// that it is stopped whatever happens next), and returns the banner to show.
async fn start(args: &DevArgs, log_format: LogFormat, fleet: &mut Fleet) -> anyhow::Result<String> {
    let mut coordinator_args = vec![
        "--listen".to_owned(),
        args.listen.clone(),
        "--db".to_owned(),
        args.db.clone(),
    ];
    if let Some(metrics) = &args.metrics {
        coordinator_args.extend(["--metrics".to_owned(), metrics.clone()]);
    }
    let (process, mut lines) = spawn(
        "switchyard-server",
        "the coordinator",
        &coordinator_args,
        log_format,
    )?;
    let coordinator = fleet.coordinator.insert(process);
    let addr = address(&next_line(coordinator, &mut lines).await?)?;
    // With --metrics, its second line says where they are served.
    let metrics = match &args.metrics {
        Some(_) => Some(address(&next_line(coordinator, &mut lines).await?)?),
        None => None,
    };
    drain_stdout(lines);
    let coordinator_pid = coordinator.pid().unwrap_or_default();

    let mut worker_lines = Vec::new();
    for i in 1..=args.workers {
        let id = format!("dev-worker-{i}");
        let worker_args = [
            "--coordinator".to_owned(),
            format!("http://{addr}"),
            "--queues".to_owned(),
            args.queues.clone(),
            "--concurrency".to_owned(),
            args.concurrency.to_string(),
            "--worker-id".to_owned(),
            id.clone(),
            "--drain-grace".to_owned(),
            format!("{}ms", args.drain_grace.as_millis()),
        ];
        let (process, mut lines) = spawn(
            "switchyard-worker",
            &format!("worker {id}"),
            &worker_args,
            log_format,
        )?;
        fleet.workers.push(process);
        let Some(worker) = fleet.workers.last_mut() else {
            bail!("worker {id} vanished");
        };
        next_line(worker, &mut lines).await?;
        drain_stdout(lines);
        worker_lines.push(format!(
            "  worker       {id}  (pid {}; {} slots on queues {})",
            worker.pid().unwrap_or_default(),
            args.concurrency,
            args.queues
        ));
    }
    Ok(banner(
        args,
        &addr,
        coordinator_pid,
        metrics.as_deref(),
        &worker_lines,
    ))
}

fn banner(
    args: &DevArgs,
    addr: &str,
    coordinator_pid: u32,
    metrics: Option<&str>,
    workers: &[String],
) -> String {
    let mut lines = vec![
        "Switchyard is running.".to_owned(),
        format!(
            "  coordinator  http://{addr}  (pid {coordinator_pid}; gRPC, health and reflection on)"
        ),
    ];
    if let Some(metrics) = metrics {
        lines.push(format!("  console      http://{metrics}/"));
        lines.push(format!("  metrics      http://{metrics}/metrics"));
    }
    lines.push(format!("  database     {}", args.db));
    lines.extend(workers.iter().cloned());
    lines.push(
        "  kinds        echo, sleep, fail, panic, sha256, hang, fanout (built in)".to_owned(),
    );
    lines.push(String::new());
    lines.push("Try:".to_owned());
    let me = match std::env::current_exe() {
        Ok(exe) => command_name(&exe),
        Err(_) => "switchyard".to_owned(),
    };
    // The flag only when it is needed: the default address is what every command assumes.
    let cli = if addr == "127.0.0.1:50051" {
        me
    } else {
        format!("{me} --coordinator http://{addr}")
    };
    lines.push(format!("  {cli} submit --kind echo --payload hello --wait"));
    lines.push(format!("  {cli} submit --kind sleep --payload 2000"));
    lines.push(format!(
        "  {cli} demo     # fan-out/fan-in, errgroup, pipeline"
    ));
    lines.push(format!("  {cli} workers"));
    lines.push(format!("  {cli} list"));
    lines.push(format!("  grpcurl -plaintext {addr} list"));
    lines.push(String::new());
    lines.push(format!(
        "Ctrl-C stops everything: the workers drain (running jobs get {}), then the coordinator.",
        crate::watch::format_duration(args.drain_grace)
    ));
    lines.join("\n")
}

/// How a shell reaches this binary: `switchyard` when that name on `PATH` is this very file,
/// else its path (after `cargo build` it is `target/release/switchyard`, not on `PATH`).
fn command_name(exe: &Path) -> String {
    let me = exe.canonicalize().unwrap_or_else(|_| exe.to_path_buf());
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            dir.join("switchyard")
                .canonicalize()
                .is_ok_and(|found| found == me)
        })
    });
    if on_path {
        return "switchyard".to_owned();
    }
    let text = exe.display().to_string();
    let plain = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c));
    if plain {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_off_the_path_is_named_by_its_path() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let exe = dir.path().join("switchyard");
        std::fs::write(&exe, b"").expect("write");
        let named = command_name(&exe);
        assert_eq!(named, exe.display().to_string());
        let spaced = dir.path().join("a b");
        std::fs::create_dir(&spaced).expect("mkdir");
        let exe = spaced.join("switchyard");
        std::fs::write(&exe, b"").expect("write");
        assert_eq!(command_name(&exe), format!("'{}'", exe.display()));
    }
}
