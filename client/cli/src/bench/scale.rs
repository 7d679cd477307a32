//! `switchyard bench scale`: the coordinator with a deep queue and a large database. Memory
//! per queued job, restart with the queue full, dispatch rate at depth against a shallow
//! queue in the same run, and read latency over many finished jobs.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use serde_json::json;
use switchyard_client::{Client, JobState, ListFilter};
use switchyard_telemetry::logging::Format as LogFormat;

use super::{FleetBench, ended, ms, pct, submit_batches};
use crate::dev::Process;

/// The coordinator's memory per queued job beyond its payload, at most (issue 12).
const BYTES_PER_JOB_TARGET: f64 = 300.0;
/// From SIGKILL with the queue full to serving and dispatching again, at most.
const RESTART_TARGET_S: f64 = 5.0;
/// Dispatch at depth against a shallow queue: within this share.
const DEPTH_TARGET: f64 = 0.20;
/// `Stats`, `List` and `Get` over the large database, at most (p99).
const READ_TARGET_MS: f64 = 10.0;

#[derive(Debug, Args)]
pub(super) struct ScaleBench {
    /// Jobs queued for the memory, restart and depth figures.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(10_000..=10_000_000))]
    queued: u64,
    /// Jobs timed for a dispatch rate (after the first 1,000 of each run).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1_000..=1_000_000))]
    window: u64,
    /// Finished jobs in the database for the read figures (written with SQL); 0 skips them.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    finished: u64,
    /// Worker processes for the dispatch figures.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Slots of each worker.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Where the temporary databases go (default: the system's temporary directory).
    #[arg(long)]
    db_dir: Option<std::path::PathBuf>,
}

/// The memory figure fails the run from this many queued jobs on.
const GATED_FROM: u64 = 1_000_000;

/// Jobs finished before a dispatch rate is timed (workers connecting, caches warming).
const WARM: u64 = 1_000;

/// A coordinator of the bench on `db` (nothing here is old enough to be pruned).
async fn coordinator(
    db: &std::path::Path,
    log_format: LogFormat,
) -> anyhow::Result<(Process, Client, String)> {
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--db",
        &format!("sqlite://{}", db.display()),
        "--log",
        "warn",
    ]
    .map(str::to_owned);
    let (process, addr) = crate::dev::start_coordinator(&args, log_format).await?;
    let url = format!("http://{addr}");
    let client = Client::connect(url.clone()).await?;
    Ok((process, client, url))
}

/// Resident memory of a process, in bytes (`VmRSS` of `/proc/PID/status`).
fn rss(process: &Process) -> anyhow::Result<u64> {
    let pid = process.pid().context("the coordinator has exited")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("read /proc/PID/status (Linux only)")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib * 1024)
}

/// Waits (polling `Stats`: the figure is taken from outside) until `count` jobs have ended.
async fn until_ended(client: &Client, count: u64) -> anyhow::Result<()> {
    while ended(client).await? < count {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Starts the workers and times `window` jobs after the first [`WARM`]: jobs/s.
async fn dispatch_rate(
    fleet: &mut super::Fleet,
    client: &Client,
    args: &ScaleBench,
) -> anyhow::Result<(f64, Duration)> {
    let began = Instant::now();
    fleet.add_workers(&fleet_args(args)).await?;
    until_ended(client, 1).await?;
    let first = began.elapsed();
    until_ended(client, WARM).await?;
    let timed = Instant::now();
    until_ended(client, WARM + args.window).await?;
    Ok((args.window as f64 / timed.elapsed().as_secs_f64(), first))
}

fn fleet_args(args: &ScaleBench) -> FleetBench {
    FleetBench {
        count: 1,
        workers: args.workers,
        concurrency: args.concurrency,
        db_dir: args.db_dir.clone(),
        db: None,
        coordinators: 1,
    }
}

fn temp_dir(args: &ScaleBench) -> anyhow::Result<tempfile::TempDir> {
    match &args.db_dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("temporary directory for the bench database")
}

/// p50 and p99 of `n` calls of `op`, one at a time, in ms, after three not counted.
async fn timed<F, Fut>(n: u64, mut op: F) -> anyhow::Result<(f64, f64)>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    // The first calls open the coordinator's read connections and warm its caches: not
    // counted.
    for i in 0..3 {
        op(i).await?;
    }
    let mut took = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        op(i).await?;
        took.push(ms(t.elapsed()));
    }
    took.sort_by(f64::total_cmp);
    Ok((pct(&took, 0.5), pct(&took, 0.99)))
}

/// What the reads take over `finished` finished jobs: Stats, a List page of one queue and
/// state, and Get of jobs spread over the table.
async fn reads(args: &ScaleBench, log_format: LogFormat) -> anyhow::Result<serde_json::Value> {
    let dir = temp_dir(args)?;
    let db = dir.path().join("reads.db");
    let (mut process, client, _) = coordinator(&db, log_format).await?;
    client.stats().await?;
    crate::dev::stop(&mut process).await?;
    let filling = Instant::now();
    let (fill_db, count) = (db.clone(), args.finished);
    tokio::task::spawn_blocking(move || super::prune::fill_finished_jobs(&fill_db, count, 0))
        .await??;
    let fill_s = filling.elapsed().as_secs_f64();

    let started = Instant::now();
    let (mut process, client, _) = coordinator(&db, log_format).await?;
    let open_s = started.elapsed().as_secs_f64();
    let stats = timed(50, |_| {
        let client = client.clone();
        async move {
            client.stats().await?;
            Ok(())
        }
    })
    .await?;
    let list = timed(50, |_| {
        let client = client.clone();
        async move {
            let mut page = Box::pin(client.list(ListFilter {
                queue: Some("old".into()),
                state: Some(JobState::Succeeded),
                page_size: Some(100),
                ..Default::default()
            }));
            page.next().await.context("a page of jobs")??;
            Ok(())
        }
    })
    .await?;
    let get = timed(200, |i| {
        let client = client.clone();
        // Spread over the table, with a fixed stride.
        let n = (i * 7_919_993) % args.finished.max(1);
        async move {
            client.get(&super::prune::old_job_id(n)).await?;
            Ok(())
        }
    })
    .await?;
    crate::dev::stop(&mut process).await?;
    let worst = stats.1.max(list.1).max(get.1);
    Ok(json!({
        "finished_jobs": args.finished,
        "fill_seconds": fill_s,
        "open_seconds": open_s,
        "stats_ms": {"p50": stats.0, "p99": stats.1},
        "list_ms": {"p50": list.0, "p99": list.1},
        "get_ms": {"p50": get.0, "p99": get.1},
        "target_p99_ms": READ_TARGET_MS,
        "met": worst <= READ_TARGET_MS,
    }))
}

pub(super) async fn scale(
    args: ScaleBench,
    json_out: bool,
    log_format: LogFormat,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        WARM + args.window < args.queued,
        "--window {} needs more than {} jobs queued (--queued {})",
        args.window,
        WARM + args.window,
        args.queued
    );
    // The shallow baseline: a queue of `WARM + window` plus a little, drained.
    let shallow_dir = temp_dir(&args)?;
    let shallow_db = shallow_dir.path().join("shallow.db");
    let (process, client, url) = coordinator(&shallow_db, log_format).await?;
    let mut fleet = super::Fleet::around(process, url, log_format, shallow_dir);
    let shallow_depth = WARM + args.window + 1_000;
    submit_batches(&client, shallow_depth).await?;
    let (shallow_rate, _) = dispatch_rate(&mut fleet, &client, &args).await?;
    fleet.stop().await?;

    // The deep queue: memory before and after, then SIGKILL and a restart.
    let deep_dir = temp_dir(&args)?;
    let deep_db = deep_dir.path().join("deep.db");
    let (mut process, client, _) = coordinator(&deep_db, log_format).await?;
    submit_batches(&client, 1_000).await?;
    let before = rss(&process)?;
    let submitting = Instant::now();
    submit_batches(&client, args.queued - 1_000).await?;
    let submit_s = submitting.elapsed().as_secs_f64();
    let after = rss(&process)?;
    let per_job = after.saturating_sub(before) as f64 / (args.queued - 1_000) as f64;
    // The payloads ("0" … "999999") are not kept in memory; counted against the figure
    // anyway, they are at most 7 bytes.
    process.kill().await?;

    let restarting = Instant::now();
    let (process, client, url) = coordinator(&deep_db, log_format).await?;
    // It listens before it has taken stock; serving is its first answer.
    client.stats().await?;
    let serving_s = restarting.elapsed().as_secs_f64();
    let rss_restarted = rss(&process)?;
    let mut fleet = super::Fleet::around(process, url, log_format, deep_dir);
    let (deep_rate, first) = dispatch_rate(&mut fleet, &client, &args).await?;
    let dispatching_s = serving_s + first.as_secs_f64();
    fleet.stop().await?;
    let depth_ratio = deep_rate / shallow_rate;

    let reads = if args.finished > 0 {
        Some(reads(&args, log_format).await?)
    } else {
        None
    };

    let memory_met = per_job <= BYTES_PER_JOB_TARGET;
    let report = json!({
        "bench": "scale",
        "queued": args.queued,
        "submit_seconds": submit_s,
        "memory": {
            "rss_before_bytes": before,
            "rss_after_bytes": after,
            "rss_after_restart_bytes": rss_restarted,
            "bytes_per_queued_job": per_job,
            "target": BYTES_PER_JOB_TARGET,
            "met": memory_met,
        },
        "restart": {
            "serving_seconds": serving_s,
            "dispatching_seconds": dispatching_s,
            "target_seconds": RESTART_TARGET_S,
            "met": dispatching_s <= RESTART_TARGET_S,
        },
        "dispatch": {
            "window": args.window,
            "shallow_depth": shallow_depth,
            "shallow_jobs_per_second": shallow_rate,
            "deep_jobs_per_second": deep_rate,
            "ratio": depth_ratio,
            "met": depth_ratio >= 1.0 - DEPTH_TARGET,
        },
        "reads": reads,
    });
    if json_out {
        outln!("{report}");
    } else {
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        outln!(
            "switchyard bench scale: {} queued jobs (submitted in {submit_s:.1} s), {} workers x {} slots",
            args.queued,
            args.workers,
            args.concurrency
        );
        outln!(
            "memory    {per_job:.0} bytes per queued job (RSS {:.0} -> {:.0} MiB; {:.0} MiB after the restart); target <= {BYTES_PER_JOB_TARGET}: {}",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            rss_restarted as f64 / 1048576.0,
            met(memory_met)
        );
        outln!(
            "restart   serving {serving_s:.2} s, first job done {dispatching_s:.2} s after SIGKILL and start; target <= {RESTART_TARGET_S} s: {}",
            met(dispatching_s <= RESTART_TARGET_S)
        );
        outln!(
            "dispatch  {deep_rate:.0} jobs/s with {} queued against {shallow_rate:.0} with {shallow_depth} ({:.2}); target within {:.0}%: {}",
            args.queued,
            depth_ratio,
            DEPTH_TARGET * 100.0,
            met(depth_ratio >= 1.0 - DEPTH_TARGET)
        );
        if let Some(r) = &report["reads"].as_object() {
            outln!(
                "reads     over {} finished jobs (written in {:.0} s; opened in {:.2} s): Stats p50 {:.2} p99 {:.2} ms, List p50 {:.2} p99 {:.2} ms, Get p50 {:.2} p99 {:.2} ms; target p99 <= {READ_TARGET_MS} ms: {}",
                args.finished,
                r["fill_seconds"].as_f64().unwrap_or_default(),
                r["open_seconds"].as_f64().unwrap_or_default(),
                r["stats_ms"]["p50"].as_f64().unwrap_or_default(),
                r["stats_ms"]["p99"].as_f64().unwrap_or_default(),
                r["list_ms"]["p50"].as_f64().unwrap_or_default(),
                r["list_ms"]["p99"].as_f64().unwrap_or_default(),
                r["get_ms"]["p50"].as_f64().unwrap_or_default(),
                r["get_ms"]["p99"].as_f64().unwrap_or_default(),
                met(r["met"].as_bool().unwrap_or_default())
            );
        }
    }
    // The memory figure is a gate: a bench run that grows past it fails. Below a million
    // queued jobs the process's fixed overheads (allocator arenas, buffers) weigh too much
    // in the figure for it to gate anything.
    if !memory_met && args.queued >= GATED_FROM {
        anyhow::bail!(
            "{per_job:.0} bytes per queued job: over the target of {BYTES_PER_JOB_TARGET}"
        );
    }
    Ok(())
}
