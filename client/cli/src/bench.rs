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
use switchyard_telemetry::logging::Format as LogFormat;
use tokio::task::JoinSet;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

mod prune;
mod scale;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Durable `Submit` throughput and latency, against the health check as baseline.
    Submit(SubmitBench),
    /// Fan-out/fan-in: a group of no-op jobs submitted, run by workers and gathered with
    /// `WatchGroup`; jobs/s and time to the last result, against bare calls in the same run.
    Group(FleetBench),
    /// End-to-end throughput with quotas in force (not binding) against the same load
    /// without them, in the same run.
    Quota(FleetBench),
    /// End to end, no-op jobs through local worker processes: `drain` (queue N jobs, then
    /// start the workers), `flow` (submit while they run) or `rtt` (one `Run` at a time);
    /// jobs/s and submit→start and submit→finish latency, against bare calls in the same run.
    E2e(E2eBench),
    /// Retention: a database holding `--count` old finished jobs (written directly with SQL,
    /// all past their retention), then `Submit` latency while the coordinator's pruner
    /// removes them, against the same submits on the same database with pruning off.
    Prune(prune::PruneBench),
    /// Scale: memory per queued job with `--queued` jobs waiting, a restart (SIGKILL, start
    /// again) with them, dispatch rate at that depth against a shallow queue in the same run,
    /// and `Stats`/`List`/`Get` latency over `--finished` finished jobs (written with SQL).
    Scale(scale::ScaleBench),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum E2eMode {
    Drain,
    Flow,
    Rtt,
}

#[derive(Debug, Args)]
struct E2eBench {
    #[arg(long, value_enum, default_value_t = E2eMode::Drain)]
    mode: E2eMode,
    /// `--count` is the jobs (for `rtt`: sequential `Run` calls).
    #[command(flatten)]
    fleet: FleetBench,
}

#[derive(Debug, Args)]
struct FleetBench {
    /// Jobs in the group.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    count: u64,
    /// Worker processes the bench starts.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Slots of each worker.
    #[arg(long, default_value_t = 32)]
    concurrency: u32,
    /// For the coordinator the bench starts: where its temporary database goes.
    #[arg(long)]
    db_dir: Option<PathBuf>,
    /// For the coordinator the bench starts: this database instead of a temporary SQLite
    /// file, e.g. `postgres://user@host/db` (an empty one: the bench counts what it finds).
    #[arg(long)]
    db: Option<String>,
    /// Coordinators the bench starts on `--db` (more than one needs `postgres://`): the first
    /// leads; the workers and the submits are spread over all of them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    coordinators: u32,
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
    /// Rounds the measured calls are split into, the baseline's and Submit's taking turns: a
    /// machine whose speed drifts (a busy neighbour) then weighs on both alike.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    rounds: u64,
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
    /// One measure of several phases of the same calls.
    fn merged(phases: Vec<Measure>) -> Measure {
        let mut all = Measure {
            calls: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
        };
        for phase in phases {
            all.calls += phase.calls;
            all.errors += phase.errors;
            all.elapsed += phase.elapsed;
            all.latencies.extend(phase.latencies);
        }
        all.latencies.sort_unstable();
        all
    }

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
    drive_while(concurrency.min(count), move |i| i < count, op).await
}

/// Calls `op` with `concurrency` in flight, timing each, while `go` says so of the next
/// call's number.
async fn drive_while<G, F, Fut>(concurrency: u64, go: G, op: F) -> Measure
where
    G: Fn(u64) -> bool + Clone + Send + 'static,
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for _ in 0..concurrency {
        let (next, go, op) = (next.clone(), go.clone(), op.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                if !go(i) {
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
    let (mut latencies, mut errors) = (Vec::new(), 0);
    while let Some(done) = tasks.join_next().await {
        if let Ok((l, e)) = done {
            latencies.extend(l);
            errors += e;
        }
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Measure {
        calls: latencies.len() as u64 + errors,
        errors,
        elapsed,
        latencies,
    }
}

pub async fn run(args: BenchArgs, json_out: bool, log_format: LogFormat) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Submit(bench) => submit(bench, json_out, log_format).await,
        BenchCommand::Group(bench) => fleet(bench, false, json_out, log_format).await,
        BenchCommand::Quota(bench) => fleet(bench, true, json_out, log_format).await,
        BenchCommand::E2e(bench) => e2e(bench, json_out, log_format).await,
        BenchCommand::Prune(bench) => prune::prune(bench, json_out, log_format).await,
        BenchCommand::Scale(bench) => scale::scale(bench, json_out, log_format).await,
    }
}

/// A coordinator on a fresh database and worker processes, all started by the bench.
struct Fleet {
    coordinator: crate::dev::Process,
    /// The other coordinators on the same database (`--coordinators`), which forward to the
    /// first.
    followers: Vec<crate::dev::Process>,
    workers: Vec<crate::dev::Process>,
    url: String,
    /// Every coordinator's URL, the first's first.
    urls: Vec<String>,
    log_format: LogFormat,
    _dirs: Vec<tempfile::TempDir>,
}

/// The bench's own coordinator, with `extra` flags, on `db` or else a fresh SQLite database
/// in a temporary directory (under `db_dir` when given) that lives as long as the caller keeps
/// it.
async fn own_coordinator(
    db_dir: Option<&std::path::Path>,
    db: Option<&str>,
    extra: &[&str],
    log_format: LogFormat,
) -> anyhow::Result<(tempfile::TempDir, crate::dev::Process, String)> {
    let dir = match db_dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("temporary directory for the bench database")?;
    let db = match db {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}", dir.path().join("bench.db").display()),
    };
    let mut args = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--db".to_owned(),
        db,
        "--log".to_owned(),
        "warn".to_owned(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let (coordinator, addr) = crate::dev::start_coordinator(&args, log_format).await?;
    Ok((dir, coordinator, addr))
}

impl Fleet {
    async fn start(args: &FleetBench, log_format: LogFormat) -> anyhow::Result<Fleet> {
        let mut fleet = Fleet::coordinator(args, log_format).await?;
        fleet.add_workers(args).await?;
        Ok(fleet)
    }

    /// A fleet around a coordinator started elsewhere (at `url`), whose database is in `dir`.
    fn around(
        coordinator: crate::dev::Process,
        url: String,
        log_format: LogFormat,
        dir: tempfile::TempDir,
    ) -> Fleet {
        Fleet {
            coordinator,
            followers: Vec::new(),
            workers: Vec::new(),
            urls: vec![url.clone()],
            url,
            log_format,
            _dirs: vec![dir],
        }
    }

    /// The coordinators alone (`--coordinators`, one by default), on a fresh database.
    async fn coordinator(args: &FleetBench, log_format: LogFormat) -> anyhow::Result<Fleet> {
        let shared = args.db.as_deref().filter(|db| db.starts_with("postgres"));
        anyhow::ensure!(
            args.coordinators == 1 || shared.is_some(),
            "--coordinators {} needs --db postgres://…: only Postgres is shared by several coordinators",
            args.coordinators
        );
        let (dir, coordinator, addr) =
            own_coordinator(args.db_dir.as_deref(), args.db.as_deref(), &[], log_format).await?;
        let mut fleet = Fleet::around(coordinator, format!("http://{addr}"), log_format, dir);
        for _ in 1..args.coordinators {
            let (dir, follower, addr) =
                own_coordinator(args.db_dir.as_deref(), shared, &[], log_format).await?;
            fleet.followers.push(follower);
            fleet.urls.push(format!("http://{addr}"));
            fleet._dirs.push(dir);
        }
        Ok(fleet)
    }

    /// A client of each coordinator, the first's first.
    async fn clients(&self) -> anyhow::Result<Vec<Client>> {
        let mut clients = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            clients.push(Client::connect(url.clone()).await?);
        }
        Ok(clients)
    }

    /// Starts the worker processes `args` asks for.
    async fn add_workers(&mut self, args: &FleetBench) -> anyhow::Result<()> {
        for i in 0..args.workers {
            // Each worker on a coordinator of its own (round robin), knowing the others.
            let n = self.urls.len();
            let url = (0..n)
                .map(|k| self.urls[(i as usize + k) % n].as_str())
                .collect::<Vec<_>>()
                .join(",");
            self.workers.push(
                crate::dev::start_worker(
                    &[
                        "--coordinator".into(),
                        url.clone(),
                        "--queues".into(),
                        "bench,bench-quota".into(),
                        "--concurrency".into(),
                        args.concurrency.to_string(),
                        "--worker-id".into(),
                        format!("bench-worker-{i}"),
                        "--log".into(),
                        "warn".into(),
                    ],
                    self.log_format,
                )
                .await?,
            );
        }
        Ok(())
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        for worker in &mut self.workers {
            crate::dev::stop(worker).await?;
        }
        for follower in &mut self.followers {
            crate::dev::stop(follower).await?;
        }
        crate::dev::stop(&mut self.coordinator).await
    }
}

/// Submits `count` echo jobs as one group (batches of at most 10,000) and gathers every
/// result; returns (time to submit, time to the last result).
async fn run_group(
    client: &Client,
    queue: &str,
    count: u64,
    spec: impl Fn(u64) -> JobSpec,
) -> anyhow::Result<(Duration, Duration)> {
    use futures::StreamExt;
    let group = switchyard_client::new_group_id();
    let start = Instant::now();
    let mut submitted = 0;
    while submitted < count {
        let n = (count - submitted).min(10_000);
        let batch = switchyard_client::Batch::new()
            .group(format!("{group}-{submitted}"))
            .jobs((submitted..submitted + n).map(&spec));
        client.submit_batch(batch).await?;
        submitted += n;
    }
    let submit_time = start.elapsed();
    let _ = queue;
    let mut results = 0u64;
    let mut offset = 0;
    while offset < count {
        let mut events = Box::pin(client.watch_group(&format!("{group}-{offset}"), None));
        while let Some(event) = events.next().await {
            let event = event?;
            if event.outcome().is_some() {
                break;
            }
            results += 1;
        }
        offset += (count - offset).min(10_000);
    }
    anyhow::ensure!(results == count, "gathered {results} results of {count}");
    Ok((submit_time, start.elapsed()))
}

async fn fleet(
    args: FleetBench,
    with_quotas: bool,
    json_out: bool,
    log_format: LogFormat,
) -> anyhow::Result<()> {
    let fleet = Fleet::start(&args, log_format).await?;
    let client = Client::connect(fleet.url.clone()).await?;
    // Baseline: the same number of bare unary calls, 100 in flight, on the same server.
    let baseline = baseline(&client, args.count).await;
    let plain = |i: u64| JobSpec::new("bench", "echo").payload(format!("{i}"));
    // Warm up the workers and the store.
    run_group(&client, "bench", 500.min(args.count), plain).await?;
    let (submit_time, total) = run_group(&client, "bench", args.count, plain).await?;
    let rate = args.count as f64 / total.as_secs_f64();
    let mut report = json!({
        "bench": if with_quotas { "quota" } else { "group" },
        "jobs": args.count,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "baseline_calls_per_second": baseline.rate(),
        "submit_seconds": submit_time.as_secs_f64(),
        "seconds_to_last_result": total.as_secs_f64(),
        "jobs_per_second": rate,
        "ratio_to_baseline": rate / baseline.rate(),
    });
    let mut quota_line = String::new();
    if with_quotas {
        // Quotas on every scope the jobs touch, high enough never to bind: what they cost is
        // the bookkeeping, not waiting.
        for scope in ["queue:bench-quota".to_owned(), "tenant:bench".to_owned()]
            .into_iter()
            .chain((0..16).map(|k| format!("key:k{k}")))
        {
            client
                .set_quota(switchyard_proto::v1::Quota {
                    scope,
                    max_in_flight: Some(1_000_000),
                    max_queued: Some(10_000_000),
                    rate_per_second: Some(1_000_000.0),
                    burst: Some(1_000_000),
                    ..Default::default()
                })
                .await?;
        }
        let tenant = client.clone().with_tenant("bench")?;
        let quoted = |i: u64| {
            JobSpec::new("bench-quota", "echo")
                .payload(format!("{i}"))
                .concurrency_key(format!("k{}", i % 16))
        };
        let (_, with) = run_group(&tenant, "bench-quota", args.count, quoted).await?;
        let quota_rate = args.count as f64 / with.as_secs_f64();
        report["with_quotas_jobs_per_second"] = json!(quota_rate);
        report["quota_cost_ratio"] = json!(quota_rate / rate);
        quota_line = format!(
            "with quotas  {:>8.0} jobs/s ({:.2} of without), last result after {:.2} s",
            quota_rate,
            quota_rate / rate,
            with.as_secs_f64()
        );
    }
    fleet.stop().await?;
    if json_out {
        outln!("{report}");
    } else {
        outln!(
            "switchyard bench {}: {} no-op (echo) jobs, {} workers x {} slots, coordinator started here",
            if with_quotas { "quota" } else { "group" },
            args.count,
            args.workers,
            args.concurrency
        );
        outln!(
            "baseline     {:>8.0} calls/s  (grpc.health.v1.Health/Check, 100 in flight)",
            baseline.rate()
        );
        outln!(
            "group        {:>8.0} jobs/s   ({:.2} of baseline); submitted in {:.2} s, last result after {:.2} s",
            rate,
            rate / baseline.rate(),
            submit_time.as_secs_f64(),
            total.as_secs_f64()
        );
        if !quota_line.is_empty() {
            outln!("{quota_line}");
        }
    }
    Ok(())
}

async fn submit(args: SubmitBench, json_out: bool, log_format: LogFormat) -> anyhow::Result<()> {
    // The coordinator: the one given, or our own on a fresh database.
    let mut own = None;
    let url = match &args.target {
        Some(url) => url.clone(),
        None => {
            let sync = match args.sync {
                Sync::Full => "full",
                Sync::Normal => "normal",
            };
            let (dir, child, addr) =
                own_coordinator(args.db_dir.as_deref(), None, &["--sync", sync], log_format)
                    .await?;
            own = Some((child, dir));
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
    // In turns: each round measures the baseline, then Submit, on the same machine's moment.
    let (mut baselines, mut submitted) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let calls = args.count / args.rounds + u64::from(round < args.count % args.rounds);
        baselines.push(drive(args.concurrency, calls, health.clone()).await);
        submitted.push(drive(args.concurrency, calls, submit.clone()).await);
    }
    let (baseline, submits) = (Measure::merged(baselines), Measure::merged(submitted));
    let after = clients[0].stats().await?.store.unwrap_or_default();

    let commits = after.commits - before.commits;
    let commands = after.commands - before.commands;
    let ratio = submits.rate() / baseline.rate();
    if json_out {
        outln!(
            "{}",
            json!({
                "bench": "submit",
                "concurrency": args.concurrency,
                "rounds": args.rounds,
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
        outln!(
            "switchyard bench submit: {} calls each in {} rounds, {} in flight, {} connection(s), {}-byte payloads, coordinator {}",
            args.count,
            args.rounds,
            args.concurrency,
            args.connections,
            args.payload_bytes,
            match &args.target {
                Some(url) => url.clone(),
                None => format!("started here (--sync {:?})", args.sync).to_lowercase(),
            }
        );
        outln!(
            "{:<42} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "",
            "calls/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "errors"
        );
        outln!("{}", baseline.row("baseline  grpc.health.v1.Health/Check"));
        outln!(
            "{}",
            submits.row("submit    switchyard.v1.JobService/Submit")
        );
        outln!(
            "ratio     submit/baseline throughput {ratio:.2}; submit p99 {:.2} ms",
            ms(submits.percentile(0.99))
        );
        outln!(
            "store     {commands} commands in {commits} commits ({:.1} per commit)",
            commands as f64 / commits.max(1) as f64
        );
    }
    if let Some((mut child, _dir)) = own {
        crate::dev::stop(&mut child).await?;
    }
    Ok(())
}

/// Bare unary calls on the fleet's coordinator, 100 in flight: the baseline of a run.
async fn baseline(client: &Client, count: u64) -> Measure {
    let channel = client.channel().clone();
    drive(100, count, move |_| {
        let mut health = HealthClient::new(channel.clone());
        async move {
            health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
            Ok(())
        }
    })
    .await
}

/// Submits `count` echo jobs in batches of 1,000, 4 batches in flight; returns their ids.
async fn submit_batches(client: &Client, count: u64) -> anyhow::Result<Vec<String>> {
    submit_batches_to(std::slice::from_ref(client), count).await
}

/// [`submit_batches`], the batches spread round robin over `clients` (4 in flight for each).
async fn submit_batches_to(clients: &[Client], count: u64) -> anyhow::Result<Vec<String>> {
    use futures::{StreamExt, TryStreamExt};
    const BATCH: u64 = 1_000;
    let batches = (0..count.div_ceil(BATCH)).map(|b| {
        let client = clients[b as usize % clients.len()].clone();
        async move {
            let from = b * BATCH;
            let to = (from + BATCH).min(count);
            let batch = switchyard_client::Batch::new()
                .jobs((from..to).map(|i| JobSpec::new("bench", "echo").payload(format!("{i}"))));
            let done = client.submit_batch(batch).await?;
            anyhow::Ok(done.jobs.into_iter().map(|j| j.job_id).collect::<Vec<_>>())
        }
    });
    let ids: Vec<Vec<String>> = futures::stream::iter(batches)
        .buffered(4 * clients.len())
        .try_collect()
        .await?;
    Ok(ids.into_iter().flatten().collect())
}

/// Waits until `count` jobs of queue `bench` have succeeded (polling `Stats`: a bench may
/// look at numbers on a timer).
async fn all_succeeded(client: &Client, count: u64) -> anyhow::Result<()> {
    while ended(client).await? < count {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Jobs of queue `bench` that have ended, by `Stats`.
async fn ended(client: &Client) -> anyhow::Result<u64> {
    Ok(client
        .stats()
        .await?
        .queues
        .iter()
        .filter(|q| q.queue == "bench")
        .map(|q| q.succeeded + q.failed + q.cancelled + q.deadline_exceeded)
        .sum())
}

/// Submit→start and submit→finish of every succeeded job, in ms, sorted.
async fn job_latencies(client: &Client) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    use futures::TryStreamExt;
    let jobs: Vec<switchyard_client::Job> = client
        .list(switchyard_client::ListFilter {
            queue: Some("bench".into()),
            page_size: Some(1000),
            ..Default::default()
        })
        .try_collect()
        .await?;
    let ms = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map(|t| t.seconds as f64 * 1000.0 + f64::from(t.nanos) / 1e6)
    };
    let (mut to_start, mut to_finish) = (Vec::new(), Vec::new());
    for job in &jobs {
        if let (Some(c), Some(s), Some(f)) = (
            ms(&job.created_at),
            ms(&job.started_at),
            ms(&job.finished_at),
        ) {
            to_start.push(s - c);
            to_finish.push(f - c);
        }
    }
    to_start.sort_by(f64::total_cmp);
    to_finish.sort_by(f64::total_cmp);
    Ok((to_start, to_finish))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

async fn e2e(args: E2eBench, json_out: bool, log_format: LogFormat) -> anyhow::Result<()> {
    let mut fleet = Fleet::coordinator(&args.fleet, log_format).await?;
    let clients = fleet.clients().await?;
    let client = clients[0].clone();
    let base = baseline(&client, 20_000).await;
    let mut report = json!({
        "bench": "e2e",
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "jobs": args.fleet.count,
        "workers": args.fleet.workers,
        "concurrency": args.fleet.concurrency,
        "coordinators": args.fleet.coordinators,
        "baseline_calls_per_second": base.rate(),
    });
    let line = match args.mode {
        E2eMode::Drain | E2eMode::Flow => {
            let started;
            if args.mode == E2eMode::Drain {
                submit_batches_to(&clients, args.fleet.count).await?;
                started = Instant::now();
                fleet.add_workers(&args.fleet).await?;
            } else {
                fleet.add_workers(&args.fleet).await?;
                started = Instant::now();
                submit_batches_to(&clients, args.fleet.count).await?;
            }
            all_succeeded(&client, args.fleet.count).await?;
            let took = started.elapsed();
            let rate = args.fleet.count as f64 / took.as_secs_f64();
            let (to_start, to_finish) = job_latencies(&client).await?;
            let stats = client.stats().await?;
            let commits = stats.store.map_or(0, |s| s.commits);
            report["jobs_per_second"] = json!(rate);
            report["seconds"] = json!(took.as_secs_f64());
            report["ratio_to_baseline"] = json!(rate / base.rate());
            report["submit_to_start_ms"] =
                json!({"p50": pct(&to_start, 0.5), "p99": pct(&to_start, 0.99)});
            report["submit_to_finish_ms"] =
                json!({"p50": pct(&to_finish, 0.5), "p99": pct(&to_finish, 0.99)});
            report["commits_per_job"] = json!(commits as f64 / args.fleet.count as f64);
            format!(
                "{:<6} {:>8.0} jobs/s ({:.2} of baseline) in {:.2} s; submit→start p50 {:.1} p99 {:.1} ms, submit→finish p50 {:.1} p99 {:.1} ms; {:.2} commits/job",
                report["mode"].as_str().unwrap_or(""),
                rate,
                rate / base.rate(),
                took.as_secs_f64(),
                pct(&to_start, 0.5),
                pct(&to_start, 0.99),
                pct(&to_finish, 0.5),
                pct(&to_finish, 0.99),
                commits as f64 / args.fleet.count as f64,
            )
        }
        E2eMode::Rtt => {
            fleet.add_workers(&args.fleet).await?;
            let client_for = client.clone();
            let runs = drive(1, args.fleet.count, move |i| {
                let client = client_for.clone();
                async move {
                    client
                        .run(
                            JobSpec::new("bench", "echo").payload(format!("{i}")),
                            Some(Duration::from_secs(30)),
                        )
                        .await?;
                    Ok(())
                }
            })
            .await;
            report["run"] = runs.json();
            runs.row("rtt    switchyard.v1.JobService/Run (1 in flight)")
        }
    };
    fleet.stop().await?;
    if json_out {
        outln!("{report}");
    } else {
        outln!(
            "switchyard bench e2e: {} no-op jobs, {} workers x {} slots, {} coordinator(s) started here",
            args.fleet.count,
            args.fleet.workers,
            args.fleet.concurrency,
            args.fleet.coordinators
        );
        outln!(
            "baseline {:>8.0} calls/s (grpc.health.v1.Health/Check, 100 in flight)",
            base.rate()
        );
        outln!("{line}");
    }
    Ok(())
}
