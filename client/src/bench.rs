//! `switchyard bench`: load against a coordinator, reported beside a baseline measured in the
//! same run on the same server (a bare unary gRPC call: the health check).

use std::{
    future::Future,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use switchyard_client::{Client, JobSpec};
use tokio::task::JoinSet;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Durable `Submit` throughput and latency, against the health check as baseline.
    Submit(SubmitBench),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Sync {
    Full,
    Normal,
}

#[derive(Debug, Args)]
struct SubmitBench {
    /// Calls in flight at once.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// Calls to measure (for the baseline and for Submit each).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Calls before measuring, to warm connections and caches.
    #[arg(long, default_value_t = 2_000)]
    warmup: u64,
    /// Payload size of each job.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// HTTP/2 connections to spread the calls over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    connections: u64,
    /// Measure this running coordinator instead of starting one.
    #[arg(long)]
    target: Option<String>,
    /// For the coordinator the bench starts: its `--sync`.
    #[arg(long, value_enum, default_value_t = Sync::Full)]
    sync: Sync,
    /// For the coordinator the bench starts: where its temporary database goes (default: the
    /// system's temporary directory).
    #[arg(long)]
    db_dir: Option<PathBuf>,
}

/// What one measured phase saw.
struct Measure {
    calls: u64,
    errors: u64,
    elapsed: Duration,
    /// Sorted latencies of successful calls.
    latencies: Vec<Duration>,
}

impl Measure {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index.min(self.latencies.len() - 1)]
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "calls": self.calls,
            "errors": self.errors,
            "seconds": self.elapsed.as_secs_f64(),
            "per_second": self.rate(),
            "p50_ms": ms(self.percentile(0.50)),
            "p90_ms": ms(self.percentile(0.90)),
            "p99_ms": ms(self.percentile(0.99)),
        })
    }

    fn row(&self, name: &str) -> String {
        format!(
            "{name:<42} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            self.rate(),
            ms(self.percentile(0.50)),
            ms(self.percentile(0.90)),
            ms(self.percentile(0.99)),
            self.errors
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `count` calls of `op` with `concurrency` in flight, timing each.
async fn drive<F, Fut>(concurrency: u64, count: u64, op: F) -> Measure
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for _ in 0..concurrency.min(count) {
        let next = next.clone();
        let op = op.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                if i >= count {
                    break;
                }
                let t = Instant::now();
                match op(i).await {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(err) => {
                        errors += 1;
                        if errors == 1 {
                            tracing::warn!(cause = %err, "call failed");
                        }
                    }
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::with_capacity(count as usize);
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        if let Ok((l, e)) = done {
            latencies.extend(l);
            errors += e;
        }
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Measure {
        calls: count,
        errors,
        elapsed,
        latencies,
    }
}

pub async fn run(args: BenchArgs, json_out: bool) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Submit(bench) => submit(bench, json_out).await,
    }
}

async fn submit(args: SubmitBench, json_out: bool) -> anyhow::Result<()> {
    // The coordinator: the one given, or our own on a fresh database.
    let db_dir = match &args.db_dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("temporary directory for the bench database")?;
    let mut own = None;
    let url = match &args.target {
        Some(url) => url.clone(),
        None => {
            let sync = match args.sync {
                Sync::Full => "full",
                Sync::Normal => "normal",
            };
            let (child, addr) = crate::dev::start_coordinator(&[
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--db".into(),
                format!("sqlite://{}", db_dir.path().join("bench.db").display()),
                "--sync".into(),
                sync.into(),
                "--log".into(),
                "warn".into(),
            ])
            .await?;
            own = Some(child);
            format!("http://{addr}")
        }
    };

    let mut clients = Vec::new();
    for _ in 0..args.connections {
        clients.push(Client::connect(url.clone()).await?);
    }
    let clients = Arc::new(clients);
    let payload = Arc::new(vec![b'x'; args.payload_bytes]);

    let health = {
        let clients = clients.clone();
        move |i: u64| {
            let mut health =
                HealthClient::new(clients[i as usize % clients.len()].channel().clone());
            async move {
                health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
                Ok(())
            }
        }
    };
    let submit = {
        let clients = clients.clone();
        let payload = payload.clone();
        move |i: u64| {
            let client = clients[i as usize % clients.len()].clone();
            let job = JobSpec::new("bench", "echo").payload(payload.as_ref().clone());
            async move {
                client.submit(job).await?;
                Ok(())
            }
        }
    };

    drive(args.concurrency, args.warmup, health.clone()).await;
    drive(args.concurrency, args.warmup, submit.clone()).await;
    let before = clients[0].stats().await?.store.unwrap_or_default();
    let baseline = drive(args.concurrency, args.count, health).await;
    let submits = drive(args.concurrency, args.count, submit).await;
    let after = clients[0].stats().await?.store.unwrap_or_default();

    let commits = after.commits - before.commits;
    let commands = after.commands - before.commands;
    let ratio = submits.rate() / baseline.rate();
    if json_out {
        println!(
            "{}",
            json!({
                "bench": "submit",
                "concurrency": args.concurrency,
                "payload_bytes": args.payload_bytes,
                "connections": args.connections,
                "coordinator": if args.target.is_some() { url.as_str() } else { "embedded" },
                "sync": if args.target.is_some() { None } else { Some(format!("{:?}", args.sync).to_lowercase()) },
                "baseline": baseline.json(),
                "submit": submits.json(),
                "ratio": ratio,
                "store": { "commits": commits, "commands": commands,
                           "commands_per_commit": commands as f64 / commits.max(1) as f64 },
            })
        );
    } else {
        println!(
            "switchyard bench submit: {} calls each, {} in flight, {} connection(s), {}-byte payloads, coordinator {}",
            args.count,
            args.concurrency,
            args.connections,
            args.payload_bytes,
            match &args.target {
                Some(url) => url.clone(),
                None => format!("started here (--sync {:?})", args.sync).to_lowercase(),
            }
        );
        println!(
            "{:<42} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "", "calls/s", "p50 ms", "p90 ms", "p99 ms", "errors"
        );
        println!("{}", baseline.row("baseline  grpc.health.v1.Health/Check"));
        println!(
            "{}",
            submits.row("submit    switchyard.v1.JobService/Submit")
        );
        println!(
            "ratio     submit/baseline throughput {ratio:.2}; submit p99 {:.2} ms",
            ms(submits.percentile(0.99))
        );
        println!(
            "store     {commands} commands in {commits} commits ({:.1} per commit)",
            commands as f64 / commits.max(1) as f64
        );
    }
    if let Some(mut child) = own {
        crate::dev::stop(&mut child).await?;
    }
    Ok(())
}
