//! `switchyard bench prune`: `Submit` latency while the pruner removes a backlog of old
//! finished jobs written straight into the database, against the same submits with pruning
//! off; and the SQL that writes such jobs (also for `bench scale`).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use switchyard_client::{Client, JobSpec};
use switchyard_telemetry::logging::Format as LogFormat;

use super::{Measure, drive, drive_while, ms};

#[derive(Debug, Args)]
pub(super) struct PruneBench {
    /// Old finished jobs (each with one attempt) in the database before the coordinator starts.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    count: u64,
    /// Submits in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    concurrency: u64,
    /// Submits measured without pruning (the baseline); with pruning, submits go on until
    /// the pruner is done.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    baseline: u64,
    /// Where the temporary database goes (default: the system's temporary directory).
    #[arg(long)]
    db_dir: Option<PathBuf>,
}

/// The p99 `Submit` latency retention must keep while it prunes.
const PRUNE_TARGET_P99_MS: f64 = 10.0;

/// Old jobs in the prune bench: finished two days ago, so past any retention of a day.
const OLD_MS: i64 = 2 * 24 * 3600 * 1000;

/// Writes `count` succeeded jobs (each with one attempt) that ended two days ago straight into
/// the database, in one transaction.
fn fill_old_jobs(db: &std::path::Path, count: u64) -> anyhow::Result<()> {
    fill_finished_jobs(db, count, OLD_MS)
}

/// The id of the `n`-th job [`fill_finished_jobs`] wrote: distinct, well-formed UUIDv7-shaped
/// ids in order.
pub(super) fn old_job_id(n: u64) -> String {
    format!("00000000-0000-7000-8000-{:012x}", n & 0xffff_ffff_ffff)
}

/// Writes `count` succeeded jobs of queue `old` (each with one attempt) that ended `age_ms`
/// ago straight into the database, in one transaction. The schema is the coordinator's (it
/// made the file); the bench writes only the columns a finished job needs, and their count
/// per queue and state, which the coordinator's writer keeps (its triggers call
/// `sy_job_moved`, here a function that does nothing).
pub(super) fn fill_finished_jobs(
    db: &std::path::Path,
    count: u64,
    age_ms: i64,
) -> anyhow::Result<()> {
    let mut conn = rusqlite::Connection::open(db).context("open the bench database")?;
    conn.create_scalar_function(
        "sy_job_moved",
        5,
        rusqlite::functions::FunctionFlags::SQLITE_UTF8,
        |_| Ok(Option::<i64>::None),
    )?;
    let tx = conn.transaction()?;
    let ended = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64
        - age_ms;
    {
        let mut job = tx.prepare(
            "INSERT INTO jobs (id, queue, kind, payload, max_attempts, state, attempt,
                output, created_at_ms, started_at_ms, finished_at_ms, worker_id)
             VALUES (?1, 'old', 'echo', x'6f6c64', 3, 30 /* succeeded */, 1, x'6f6c64', ?2, ?2,
                ?3, 'bench-worker')",
        )?;
        let mut attempt = tx.prepare(
            "INSERT INTO attempts (job_seq, number, worker_id, started_at_ms, finished_at_ms,
                outcome) VALUES (?1, 1, 'bench-worker', ?2, ?3, 20 /* succeeded */)",
        )?;
        for i in 0..count {
            let at = ended - 1000 + (i % 1000) as i64;
            job.execute(rusqlite::params![old_job_id(i), at - 1, at])?;
            attempt.execute(rusqlite::params![tx.last_insert_rowid(), at - 1, at])?;
        }
        tx.execute(
            "INSERT INTO job_counts (queue, state, n) VALUES ('old', 30 /* succeeded */, ?1)
             ON CONFLICT (queue, state) DO UPDATE SET n = n + excluded.n",
            [count as i64],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// A no-op job for a paused queue: nothing runs it, so a submit measures the store alone.
fn parked(i: u64) -> JobSpec {
    JobSpec::new("bench-parked", "echo").payload(format!("{i}"))
}

/// `Submit`s of parked jobs, `concurrency` in flight, until `stop` is raised.
async fn submits_until(client: &Client, concurrency: u64, stop: Arc<AtomicBool>) -> Measure {
    let client = client.clone();
    drive_while(
        concurrency,
        move |_| !stop.load(Ordering::Relaxed),
        move |i| {
            let client = client.clone();
            async move {
                client.submit(parked(i)).await?;
                Ok(())
            }
        },
    )
    .await
}

/// How many old jobs are left.
async fn old_left(client: &Client) -> anyhow::Result<u64> {
    Ok(client
        .stats()
        .await?
        .queues
        .iter()
        .find(|q| q.queue == "old")
        .map_or(0, |q| q.succeeded))
}

pub(super) async fn prune(
    args: PruneBench,
    json_out: bool,
    log_format: LogFormat,
) -> anyhow::Result<()> {
    let dir = match &args.db_dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("temporary directory for the bench database")?;
    let db = dir.path().join("bench.db");
    let start = |retain: &'static str| {
        let args = vec![
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--db".to_owned(),
            format!("sqlite://{}", db.display()),
            "--log".to_owned(),
            "warn".to_owned(),
            "--retain-succeeded".to_owned(),
            retain.to_owned(),
            "--prune-interval".to_owned(),
            "1s".to_owned(),
        ];
        async move { crate::dev::start_coordinator(&args, log_format).await }
    };

    // The coordinator makes the schema (it has once it answers); the old jobs go in while it
    // is stopped.
    let (mut coordinator, addr) = start("0").await?;
    Client::connect(format!("http://{addr}"))
        .await?
        .stats()
        .await?;
    crate::dev::stop(&mut coordinator).await?;
    let filling = Instant::now();
    let fill_db = db.clone();
    let count = args.count;
    tokio::task::spawn_blocking(move || fill_old_jobs(&fill_db, count)).await??;
    let fill_s = filling.elapsed().as_secs_f64();

    // Baseline: the same database, pruning off (`0`: keep forever).
    let (mut coordinator, addr) = start("0").await?;
    let client = Client::connect(format!("http://{addr}")).await?;
    client.pause_queue("bench-parked", true).await?;
    let submit = {
        let client = client.clone();
        move |i: u64| {
            let client = client.clone();
            async move {
                client.submit(parked(i)).await?;
                Ok(())
            }
        }
    };
    drive(args.concurrency, 200, submit.clone()).await;
    let baseline = drive(args.concurrency, args.baseline, submit).await;
    crate::dev::stop(&mut coordinator).await?;

    // With pruning: every old job is due; submits go on until the pruner has removed them all.
    let (mut coordinator, addr) = start("1d").await?;
    let client = Client::connect(format!("http://{addr}")).await?;
    let until = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let watcher = {
        let (client, until) = (client.clone(), until.clone());
        tokio::spawn(async move {
            loop {
                match old_left(&client).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(err) => tracing::warn!(cause = %err, "stats failed"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            until.store(true, Ordering::Relaxed);
            began.elapsed()
        })
    };
    let during = submits_until(&client, args.concurrency, until).await;
    let pruned_in = watcher.await?;
    crate::dev::stop(&mut coordinator).await?;
    let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);

    let p99 = ms(during.percentile(0.99));
    if json_out {
        outln!(
            "{}",
            json!({
                "bench": "prune",
                "old_jobs": args.count,
                "concurrency": args.concurrency,
                "fill_seconds": fill_s,
                "prune_seconds": pruned_in.as_secs_f64(),
                "pruned_per_second": args.count as f64 / pruned_in.as_secs_f64(),
                "baseline": baseline.json(),
                "while_pruning": during.json(),
                "target_p99_ms": PRUNE_TARGET_P99_MS,
                "met": p99 <= PRUNE_TARGET_P99_MS,
                "db_bytes_after": size,
            })
        );
    } else {
        outln!(
            "switchyard bench prune: {} old finished jobs (written in {fill_s:.1} s), {} submit(s) in flight",
            args.count,
            args.concurrency
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
        outln!("{}", baseline.row("baseline  Submit, pruning off"));
        outln!("{}", during.row("pruning   Submit, while the pruner works"));
        outln!(
            "pruned    {} jobs in {:.1} s ({:.0} jobs/s); database {:.1} MiB after",
            args.count,
            pruned_in.as_secs_f64(),
            args.count as f64 / pruned_in.as_secs_f64(),
            size as f64 / (1024.0 * 1024.0)
        );
        outln!(
            "target    submit p99 <= {PRUNE_TARGET_P99_MS} ms while pruning: {} ({p99:.2} ms)",
            if p99 <= PRUNE_TARGET_P99_MS {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    Ok(())
}
