//! `switchyard dev`: the whole system on one machine, on the embedded default (SQLite).

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use clap::Args;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the coordinator listens.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: String,
    /// The database (`sqlite://PATH`).
    #[arg(long, default_value = "sqlite://switchyard-dev.db")]
    db: String,
    /// Worker processes to start (each serves the built-in kinds).
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Slots of each worker.
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// Queues the workers serve (comma-separated).
    #[arg(long, default_value = "default")]
    queues: String,
}

/// A binary that ships next to this one (`switchyard-server`, `switchyard-worker`), else on
/// `PATH`.
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Starts a sibling binary and waits (at most 60 s) for its first line on stdout, which says
/// it is ready. Returns the process, that line, and the rest of its stdout.
async fn spawn_announcing(
    name: &str,
    args: &[String],
) -> anyhow::Result<(Child, String, Lines<BufReader<ChildStdout>>)> {
    let binary = sibling(name);
    let mut child = Command::new(&binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with `cargo build --release`)",
                binary.display()
            )
        })?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .with_context(|| format!("{name} was not ready within 60s"))??;
    let Some(line) = line else {
        let status = child.wait().await?;
        bail!("{name} exited at start ({status}); see its log above");
    };
    Ok((child, line, lines))
}

/// Starts `switchyard-server` with `args` and returns it once it prints where it listens.
pub async fn start_coordinator(args: &[String]) -> anyhow::Result<(Child, String)> {
    let (child, line, _rest) = spawn_announcing("switchyard-server", args).await?;
    let addr = line
        .rsplit(' ')
        .next()
        .filter(|a| a.contains(':'))
        .with_context(|| format!("unexpected first line from the coordinator: {line:?}"))?
        .to_owned();
    Ok((child, addr))
}

/// Starts a `switchyard-worker` and returns it once it says it is connected.
pub async fn start_worker(args: &[String]) -> anyhow::Result<Child> {
    let (child, _, mut rest) = spawn_announcing("switchyard-worker", args).await?;
    // It prints a line at each reconnect: keep reading so that it never meets a closed pipe.
    // The task ends with the process's stdout.
    tokio::spawn(async move { while let Ok(Some(_)) = rest.next_line().await {} });
    Ok(child)
}

/// Sends SIGTERM and waits for the process to drain and exit.
pub async fn stop(child: &mut Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        // The process may have exited already; then there is nothing to stop.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(status) => {
            status?;
        }
        Err(_) => {
            tracing::warn!("the coordinator did not stop within 30s; killing it");
            child.kill().await?;
        }
    }
    Ok(())
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let (mut coordinator, addr) = start_coordinator(&[
        "--listen".into(),
        args.listen.clone(),
        "--db".into(),
        args.db.clone(),
    ])
    .await?;
    let mut workers = Vec::new();
    for i in 0..args.workers {
        let worker = start_worker(&[
            "--coordinator".into(),
            format!("http://{addr}"),
            "--queues".into(),
            args.queues.clone(),
            "--concurrency".into(),
            args.concurrency.to_string(),
            "--worker-id".into(),
            format!("dev-worker-{}", i + 1),
        ])
        .await?;
        workers.push(worker);
    }
    // SIGINT (Ctrl-C) and SIGTERM both stop the fleet, workers first so that they drain.
    // Listening from before the banner: a Ctrl-C as soon as it shows still stops cleanly.
    let stopping = switchyard_telemetry::shutdown::on_signals();
    println!("Switchyard is running.");
    println!("  coordinator  http://{addr}   (gRPC; health and reflection on)");
    println!("  database     {}", args.db);
    println!(
        "  workers      {} x {} slots on queues {} (built-in kinds: echo, sleep, fail, panic, sha256, hang, fanout)",
        args.workers, args.concurrency, args.queues
    );
    println!();
    println!("Try:");
    println!("  switchyard --coordinator http://{addr} submit --kind echo --payload hello --wait");
    println!("  switchyard --coordinator http://{addr} submit --kind sleep --payload 2000");
    println!(
        "  switchyard --coordinator http://{addr} demo     # fan-out/fan-in, errgroup, pipeline"
    );
    println!("  switchyard --coordinator http://{addr} workers");
    println!("  switchyard --coordinator http://{addr} list");
    println!("  grpcurl -plaintext {addr} list");
    println!();
    println!("Ctrl-C stops everything.");

    tokio::select! {
        () = stopping.cancelled() => {}
        status = coordinator.wait() => {
            stopping.cancel();
            bail!("the coordinator exited: {}", status?)
        }
    }
    println!("stopping…");
    for worker in &mut workers {
        stop(worker).await?;
    }
    stop(&mut coordinator).await
}
