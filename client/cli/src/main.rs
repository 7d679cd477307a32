//! `switchyard`: the command line for a Switchyard coordinator.

mod batch;
mod bench;
mod demo;
mod dev;
mod output;
mod watch;

use std::{collections::HashMap, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use switchyard_client::{Client, JobSpec, JobState, ListFilter};
use switchyard_proto::text::parse_duration;

/// Switchyard: a distributed, durable work queue with a gRPC face.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version)]
struct Cli {
    /// The coordinator to talk to.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,

    /// Print JSON (one object, or one object per line for lists) instead of text.
    #[arg(long, global = true, env = "SWITCHYARD_JSON")]
    json: bool,

    /// Sent as `x-tenant-id` on every call.
    #[arg(long, global = true, env = "SWITCHYARD_TENANT")]
    tenant: Option<String>,

    /// Sent as `authorization: Bearer <token>` (for a coordinator started with --tokens).
    #[arg(long, global = true, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// For an `https://` coordinator: the CA certificate (PEM) that signed its certificate.
    #[arg(long, global = true, env = "SWITCHYARD_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,

    /// For mutual TLS: this client's certificate (PEM); needs --client-key.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_CLIENT_CERT",
        requires = "client_key"
    )]
    client_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --client-cert.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_CLIENT_KEY",
        requires = "client_cert"
    )]
    client_key: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a coordinator on the embedded default (SQLite) for local development.
    Dev(dev::DevArgs),
    /// Submit one job.
    Submit(SubmitArgs),
    /// Show one job, with its attempts and why it waits.
    Get { job_id: String },
    /// Block until a job is terminal and show it.
    Wait {
        job_id: String,
        /// Give up after this long (e.g. 30s, 5m).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// List jobs, oldest first.
    List(ListArgs),
    /// Cancel a job (or, with --group, every unfinished job of a group).
    Cancel {
        /// A job id, or a group id with --group.
        id: String,
        #[arg(long)]
        group: bool,
    },
    /// Put a job that ended FAILED, CANCELLED or DEADLINE_EXCEEDED back in its queue.
    Requeue {
        job_id: String,
        /// Attempts it gets from now on (default: its max_attempts).
        #[arg(long)]
        max_attempts: Option<u32>,
    },
    /// Connected workers: their queues, kinds, slots and running jobs.
    Workers,
    /// Quotas: fleet-wide semaphores, rate limits and admission limits by scope.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Stop dispatching from a queue (submits still land; running jobs go on).
    Pause { queue: String },
    /// Dispatch from a paused queue again.
    Resume { queue: String },
    /// Queue counts and the store's commit numbers.
    Stats,
    /// Measure the coordinator against a baseline in the same run.
    Bench(bench::BenchArgs),
    /// Submit jobs from JSON lines (a file, or stdin), in one transaction, optionally as a
    /// group.
    ///
    /// Each line is one job: {"kind": "echo", "payload": "hello"}. Fields: kind (required),
    /// queue (default: --queue), payload (text; a number or object is sent as its JSON text)
    /// or payload_base64, priority, max_attempts, timeout_ms (per attempt), idempotency_key,
    /// concurrency_key, weight, labels (an object of strings), ref (a name for depends_on) and
    /// depends_on (refs of other lines, or ids of existing jobs). Blank lines are skipped.
    ///
    /// Every line is checked before anything is sent: one bad line (reported with its number)
    /// and nothing is submitted. Up to 10,000 jobs go in one SubmitBatch, stored all or none.
    /// More are sent as consecutive batches of 10,000, each stored all or none (atomicity is
    /// per 10,000 jobs, not per file), and a ref then names a job of its own or an earlier
    /// batch only. A group (--group, --cancel-on-failure, --watch) is one batch: at most
    /// 10,000 jobs.
    ///
    /// Prints the group id, if any, and each job id in input order (with --json: one object).
    Batch(batch::BatchArgs),
    /// Follow a group as its jobs finish: a progress bar on stderr (done, failed, pending =
    /// queued or running, jobs/s, ETA), each failed job as it arrives, then the outcome.
    ///
    /// With --json: one JSON line per event on stdout instead ({"event":"result",...} per
    /// job, then {"event":"outcome",...}), each with the cursor to resume after it. A dropped
    /// connection or a coordinator restart is resumed from the last cursor by itself. Exit
    /// code 0 when the group succeeded, 1 otherwise, 130 on Ctrl-C (which prints how to
    /// resume).
    Watch(watch::WatchArgs),
    /// Show fan-out/fan-in, an errgroup, a collect-all group and a pipeline on a running
    /// coordinator with workers (start one with `switchyard dev`).
    Demo(demo::DemoArgs),
}

#[derive(Debug, Args)]
struct SubmitArgs {
    #[arg(long, default_value = "default")]
    queue: String,
    #[arg(long)]
    kind: String,
    /// The payload as text.
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// Read the payload from a file (`-` for stdin).
    #[arg(long)]
    payload_file: Option<String>,
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i32,
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Per-attempt timeout (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    attempt_timeout: Option<Duration>,
    /// Do not run before this long from now (e.g. 10m).
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    #[arg(long)]
    idempotency_key: Option<String>,
    #[arg(long)]
    concurrency_key: Option<String>,
    #[arg(long)]
    weight: Option<u32>,
    /// A job id this job waits for (repeatable).
    #[arg(long)]
    depends_on: Vec<String>,
    /// key=value (repeatable).
    #[arg(long, value_parser = parse_label)]
    label: Vec<(String, String)>,
    /// Wait for the result (the job runs with --timeout as its deadline).
    #[arg(long)]
    wait: bool,
    /// With --wait: how long to wait; it becomes the job's deadline.
    #[arg(long, value_parser = parse_duration, requires = "wait")]
    timeout: Option<Duration>,
}

#[derive(Debug, Subcommand)]
enum QuotaCommand {
    /// Set a scope's limits (`queue:<q>`, `key:<k>`, `tenant:<t>`); with none, remove them.
    Set {
        scope: String,
        /// Permits held by running jobs at most (a job holds its weight).
        #[arg(long)]
        max_in_flight: Option<u32>,
        /// Jobs queued at most; past it a submit gets RESOURCE_EXHAUSTED.
        #[arg(long)]
        max_queued: Option<u32>,
        /// Dispatches per second (token bucket).
        #[arg(long)]
        rate: Option<f64>,
        /// Tokens the bucket holds (default 1).
        #[arg(long, requires = "rate")]
        burst: Option<u32>,
    },
    /// Every quota, with permits held and jobs queued now.
    List,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[arg(long)]
    queue: Option<String>,
    /// queued, running, succeeded, failed, cancelled or deadline_exceeded.
    #[arg(long, value_parser = parse_state)]
    state: Option<JobState>,
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    group: Option<String>,
    /// Show at most this many jobs.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Dev(args) => return dev::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => {
            return bench::run(args, cli.json).await.map(|()| ExitCode::SUCCESS);
        }
        _ => {}
    }
    let tls = match &cli.ca_cert {
        Some(ca) => Some(
            switchyard_client::Tls::from_files(
                ca,
                cli.client_cert.as_deref().zip(cli.client_key.as_deref()),
            )
            .context("reading the TLS files")?,
        ),
        None => None,
    };
    let mut client = Client::connect_with(cli.coordinator.clone(), tls.as_ref()).await?;
    if let Some(tenant) = &cli.tenant {
        client = client.with_tenant(tenant)?;
    }
    if let Some(token) = &cli.token {
        client = client.with_token(token)?;
    }
    let done = match cli.command {
        Command::Batch(args) => return batch::run(&client, args, cli.json).await,
        Command::Watch(args) => return watch::run(&client, args, cli.json).await,
        Command::Demo(args) => return demo::run(&client, args, &cli.coordinator).await,
        Command::Submit(args) => submit(&client, args, cli.json).await,
        Command::Get { job_id } => {
            let job = client.get(&job_id).await?;
            print_job(&job, cli.json);
            Ok(())
        }
        Command::Wait { job_id, timeout } => {
            let job = client.wait(&job_id, timeout).await?;
            print_job(&job, cli.json);
            Ok(())
        }
        Command::List(args) => list(&client, args, cli.json).await,
        Command::Cancel { id, group } => {
            let done = if group {
                client.cancel_group(&id).await?
            } else {
                client.cancel(&id).await?
            };
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "cancelled": done.cancelled, "state": output::state_name(done.state) })
                );
            } else if group {
                println!("cancelled {} jobs of group {id}", done.cancelled.len());
            } else {
                println!("{id} {}", output::state_name(done.state));
            }
            Ok(())
        }
        Command::Requeue {
            job_id,
            max_attempts,
        } => {
            let job = client.requeue(&job_id, max_attempts).await?;
            print_job(&job, cli.json);
            Ok(())
        }
        Command::Workers => {
            let workers = client.workers().await?;
            if cli.json {
                for w in &workers {
                    println!("{}", output::worker_json(w));
                }
            } else {
                print!("{}", output::workers_text(&workers));
            }
            Ok(())
        }
        Command::Quota(QuotaCommand::Set {
            scope,
            max_in_flight,
            max_queued,
            rate,
            burst,
        }) => {
            let quota = client
                .set_quota(switchyard_proto::v1::Quota {
                    scope,
                    max_in_flight,
                    max_queued,
                    rate_per_second: rate,
                    burst,
                    ..Default::default()
                })
                .await?;
            println!("{}", output::quota_line(&quota, cli.json));
            Ok(())
        }
        Command::Quota(QuotaCommand::List) => {
            for quota in client.quotas().await? {
                println!("{}", output::quota_line(&quota, cli.json));
            }
            Ok(())
        }
        Command::Pause { queue } => {
            let paused = client.pause_queue(&queue, true).await?;
            println!("paused: {}", paused.join(", "));
            Ok(())
        }
        Command::Resume { queue } => {
            let paused = client.pause_queue(&queue, false).await?;
            println!("paused: {}", paused.join(", "));
            Ok(())
        }
        Command::Stats => {
            let stats = client.stats().await?;
            if cli.json {
                println!("{}", output::stats_json(&stats));
            } else {
                print!("{}", output::stats_text(&stats));
            }
            Ok(())
        }
        Command::Dev(_) | Command::Bench(_) => unreachable!("handled before connecting"),
    };
    done.map(|()| ExitCode::SUCCESS)
}

fn print_job(job: &switchyard_client::Job, json: bool) {
    if json {
        println!("{}", output::job_json(job));
    } else {
        print!("{}", output::job_text(job));
    }
}

async fn submit(client: &Client, args: SubmitArgs, json: bool) -> anyhow::Result<()> {
    let payload = match (&args.payload, &args.payload_file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) if path == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
            buf
        }
        (None, Some(path)) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
        (None, None) => Vec::new(),
    };
    let mut spec = JobSpec::new(&args.queue, &args.kind)
        .payload(payload)
        .priority(args.priority)
        .labels(args.label.into_iter().collect::<HashMap<_, _>>());
    if let Some(n) = args.max_attempts {
        spec = spec.max_attempts(n);
    }
    if let Some(t) = args.attempt_timeout {
        spec = spec.timeout(t);
    }
    if let Some(delay) = args.delay {
        spec = spec.run_at(std::time::SystemTime::now() + delay);
    }
    if let Some(key) = args.idempotency_key {
        spec = spec.idempotency_key(key);
    }
    if let Some(key) = args.concurrency_key {
        spec = spec.concurrency_key(key);
    }
    if let Some(w) = args.weight {
        spec = spec.weight(w);
    }
    for dep in args.depends_on {
        spec = spec.depends_on(dep);
    }
    if args.wait {
        let job = client.run(spec, args.timeout).await?;
        print_job(&job, json);
        return Ok(());
    }
    let done = client.submit(spec).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "job_id": done.job_id, "duplicate": done.duplicate, "state": output::state_name(done.state) })
        );
    } else if done.duplicate {
        println!("{} (duplicate of an earlier submit)", done.job_id);
    } else {
        println!("{}", done.job_id);
    }
    Ok(())
}

async fn list(client: &Client, args: ListArgs, json: bool) -> anyhow::Result<()> {
    let filter = ListFilter {
        queue: args.queue,
        state: args.state,
        kind: args.kind,
        group_id: args.group,
        parent_job_id: None,
        page_size: Some(args.limit.clamp(1, 1000) as u32),
    };
    let mut jobs = Box::pin(client.list(filter).take(args.limit));
    if !json {
        println!("{}", output::LIST_HEADER);
    }
    while let Some(job) = jobs.next().await {
        let job = job?;
        if json {
            println!("{}", output::job_json(&job));
        } else {
            println!("{}", output::job_row(&job));
        }
    }
    Ok(())
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected key=value"))?;
    Ok((k.to_owned(), v.to_owned()))
}

fn parse_state(text: &str) -> Result<JobState, String> {
    JobState::from_str_name(&format!("JOB_STATE_{}", text.to_ascii_uppercase()))
        .filter(|s| *s != JobState::Unspecified)
        .ok_or_else(|| {
            format!("{text:?}: expected queued, running, succeeded, failed, cancelled or deadline_exceeded")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        assert_eq!(
            parse_state("deadline_exceeded"),
            Ok(JobState::DeadlineExceeded)
        );
        assert!(parse_state("unspecified").is_err());
        assert!(parse_state("nope").is_err());
    }
}
