//! `switchyard`: the command line for a Switchyard coordinator.

#[macro_use]
mod say;

mod batch;
mod bench;
mod bulk;
mod demo;
mod dev;
mod exit;
mod output;
mod schedule;
mod watch;

use std::{collections::HashMap, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{
    Args, CommandFactory, FromArgMatches, Parser, Subcommand, builder::TypedValueParser as _,
};
use exit::{Exit, Usage};
use futures::StreamExt;
use switchyard_client::{Client, JobSpec, JobState, ListFilter};
use switchyard_proto::text::parse_duration;
use switchyard_telemetry::logging::{self, Format as LogFormat};

/// The heading of the options every command takes, apart from each command's own.
const GLOBAL: &str = "Global options";

/// Switchyard: a distributed, durable work queue with a gRPC face.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version)]
struct Cli {
    /// The coordinator to talk to: http://HOST:PORT, https://HOST:PORT (with --ca-cert), or
    /// HOST:PORT for http. Several, comma-separated: calls go to the first that answers, and
    /// to the next when it cannot be reached.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_COORDINATOR",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL",
        help_heading = GLOBAL
    )]
    coordinator: String,

    /// Print JSON (one object, or one object per line for lists) instead of text.
    #[arg(long, global = true, env = "SWITCHYARD_JSON", help_heading = GLOBAL)]
    json: bool,

    /// Sent as `x-tenant-id` on every call.
    #[arg(long, global = true, env = "SWITCHYARD_TENANT", help_heading = GLOBAL)]
    tenant: Option<String>,

    /// Sent as `authorization: Bearer <token>` (for a coordinator started with --tokens).
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_TOKEN",
        hide_env_values = true,
        help_heading = GLOBAL
    )]
    token: Option<String>,

    /// For an `https://` coordinator: the CA certificate (PEM) that signed its certificate
    /// (system roots are not used).
    #[arg(long, global = true, env = "SWITCHYARD_CA_CERT", value_name = "FILE", help_heading = GLOBAL)]
    ca_cert: Option<std::path::PathBuf>,

    /// For mutual TLS: this client's certificate (PEM); needs --client-key.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_CLIENT_CERT",
        requires = "client_key",
        value_name = "FILE",
        help_heading = GLOBAL
    )]
    client_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --client-cert.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_CLIENT_KEY",
        requires = "client_cert",
        value_name = "FILE",
        help_heading = GLOBAL
    )]
    client_key: Option<std::path::PathBuf>,

    /// How logs are written to stderr: `text` for people, `json` (one object per line) for
    /// log shippers. `dev` passes it to the coordinator and the workers it starts.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_LOG_FORMAT",
        default_value = "text",
        value_parser = clap::builder::PossibleValuesParser::new(LogFormat::NAMES)
            .try_map(|name| name.parse::<LogFormat>()),
        help_heading = GLOBAL
    )]
    log_format: LogFormat,

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
    Get {
        /// The job's id (as `submit` printed it).
        job_id: String,
    },
    /// Block until a job is terminal and show it; the exit code follows its outcome.
    Wait {
        /// The job's id.
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
        /// ID is a group: cancel its queued and running jobs.
        #[arg(long)]
        group: bool,
    },
    /// Put a job that ended FAILED, CANCELLED or DEADLINE_EXCEEDED back in its queue.
    Requeue {
        /// The job's id.
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
    /// Cron schedules: a job submitted on each tick, exactly once per tick.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Stop dispatching from a queue (submits still land; running jobs go on).
    Pause {
        /// The queue's name.
        queue: String,
    },
    /// Dispatch from a paused queue again.
    Resume {
        /// The queue's name.
        queue: String,
    },
    /// Queue counts, paused queues, refused stale results and the store's commit numbers.
    Stats,
    /// Cancel, requeue or delete every job a filter matches (admin), in bounded steps;
    /// --dry-run counts them. Ctrl-C stops after the step in flight and prints the cursor
    /// to --resume from (exit code 130).
    Bulk(bulk::BulkArgs),
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
    /// The queue it goes to (workers serve queues by name).
    #[arg(long, default_value = "default")]
    queue: String,
    /// What to run: the handler a worker registered under this name (the built-ins of
    /// `switchyard-worker`: echo, sleep, fail, panic, sha256, hang, fanout, flaky-fanout).
    #[arg(long)]
    kind: String,
    /// The payload as text (at most 1 MiB).
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// Read the payload from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    payload_file: Option<String>,
    /// Higher runs first, -1000..=1000.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i32,
    /// Attempts before it ends FAILED (1..=100; the coordinator's default is 3).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Per-attempt timeout (e.g. 30s); an attempt past it is a retryable failure.
    #[arg(long, value_parser = parse_duration)]
    attempt_timeout: Option<Duration>,
    /// Do not run before this long from now (e.g. 10m).
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    /// A repeated submit with the same key returns the first job instead of a new one.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// With --idempotency-key: the key binds only this long after the first submit (e.g. 10m).
    #[arg(long, value_parser = parse_duration, requires = "idempotency_key")]
    unique_for: Option<Duration>,
    /// With --idempotency-key: how long the coordinator remembers the key (e.g. 1h; default:
    /// the coordinator's --idempotency-ttl, 1 day unless set otherwise).
    #[arg(long, value_parser = parse_duration, requires = "idempotency_key")]
    idempotency_ttl: Option<Duration>,
    /// With --idempotency-key: the key binds only while its job is queued or running.
    #[arg(long, requires = "idempotency_key")]
    unique_while_active: bool,
    /// With --idempotency-key: a repeat that finds its job still queued gives it this payload.
    #[arg(long, requires = "idempotency_key")]
    debounce: bool,
    /// Jobs with the same key share the quota `key:<KEY>` (say, at most 5 at once).
    #[arg(long)]
    concurrency_key: Option<String>,
    /// Permits it holds of each quota that applies while it runs (1..=1000; default 1).
    #[arg(long)]
    weight: Option<u32>,
    /// A job id this job waits for (repeatable).
    #[arg(long, value_name = "JOB_ID")]
    depends_on: Vec<String>,
    /// key=value (repeatable).
    #[arg(long, value_parser = parse_label, value_name = "KEY=VALUE")]
    label: Vec<(String, String)>,
    /// Wait for the result (the job runs with --timeout as its deadline); the exit code
    /// follows its outcome.
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
        /// `queue:<name>`, `key:<concurrency_key>` or `tenant:<id>`.
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
        /// For a `queue:` scope: how long an attempt may run when its job sets no timeout of
        /// its own (e.g. 10m). Past it the attempt is stopped, TIMED_OUT, and retried like a
        /// failure.
        #[arg(long, value_parser = parse_duration)]
        attempt_timeout: Option<Duration>,
    },
    /// Every quota, with permits held and jobs queued now.
    List,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only jobs of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only jobs in this state: queued, running, succeeded, failed, cancelled or
    /// deadline_exceeded.
    #[arg(long, value_parser = parse_state)]
    state: Option<JobState>,
    /// Only jobs of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only jobs of this group.
    #[arg(long)]
    group: Option<String>,
    /// Only jobs with this label (key=value).
    #[arg(long, value_parser = parse_label)]
    label: Option<(String, String)>,
    /// Only this tenant's jobs.
    #[arg(long = "of-tenant")]
    of_tenant: Option<String>,
    /// Show at most this many jobs.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    // The exit code table is part of `--help`, built from the one place it is decided.
    let matches = Cli::command().after_help(Exit::help()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let filter = logging::Filter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| logging::Filter::new("warn"));
    // Nothing was installed before: this cannot find a subscriber already set.
    let _ = logging::init(cli.log_format, filter);
    // OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set, so that a trace starts here, at the
    // caller; the SDK's client spans are no-ops otherwise.
    let traces = switchyard_telemetry::init_from_env("switchyard-cli");
    let log_format = cli.log_format;
    // The error is reported here, as one line, rather than returned from `main`: that would
    // print its `Debug` form, with a backtrace under RUST_BACKTRACE=1.
    let exit = match traced(cli, matches.subcommand_name()).await {
        Ok(exit) => exit,
        Err(err) => {
            match log_format {
                LogFormat::Text => errln!("error: {}", exit::report(&err)),
                // A log shipper reading stderr gets the failure as one more JSON line.
                LogFormat::Json => tracing::error!("{}", exit::report(&err)),
            }
            Exit::of_error(&err)
        }
    };
    // Every exit goes through here: the spans buffered for export are flushed before the
    // process ends (dropping the guard shuts the exporter down).
    drop(traces);
    match say::failure() {
        Some(failure) if exit == Exit::Success => {
            errln!("error: writing to stdout: {failure}");
            Exit::Error.into()
        }
        _ => exit.into(),
    }
}

/// Runs the command inside its own span (`switchyard.cli.submit`, …), the root of its trace: the
/// SDK's span for each call it makes is a child of it, so `submit --wait` is one trace. `dev`
/// runs until stopped, and its children trace themselves: it gets no span.
async fn traced(cli: Cli, command: Option<&str>) -> anyhow::Result<Exit> {
    match command {
        Some(name) if !matches!(cli.command, Command::Dev(_)) => {
            let span = switchyard_telemetry::start_root(
                &switchyard_telemetry::tracer("switchyard-cli"),
                format!("switchyard.cli.{name}"),
                switchyard_telemetry::Kind::Internal,
                Vec::new(),
            );
            switchyard_telemetry::within(span, run(cli)).await
        }
        _ => run(cli).await,
    }
}

async fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Dev(args) => {
            return dev::run(args, cli.log_format).await.map(|()| Exit::Success);
        }
        Command::Bench(args) => {
            return bench::run(args, cli.json, cli.log_format)
                .await
                .map(|()| Exit::Success);
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
        Command::Bulk(args) => return bulk::run(&client, args, cli.json).await,
        Command::Demo(args) => return demo::run(&client, args, &cli.coordinator).await,
        Command::Submit(args) => return submit(&client, args, cli.json).await,
        Command::Get { job_id } => {
            let job = client.get(&job_id).await?;
            print_job(&job, cli.json);
            Ok(())
        }
        Command::Wait { job_id, timeout } => {
            let job = client.wait(&job_id, timeout).await?;
            print_job(&job, cli.json);
            return Ok(Exit::of_state(job.state()));
        }
        Command::List(args) => list(&client, args, cli.json).await,
        Command::Cancel { id, group } => {
            let done = if group {
                client.cancel_group(&id).await?
            } else {
                client.cancel(&id).await?
            };
            if cli.json {
                outln!(
                    "{}",
                    serde_json::json!({ "cancelled": done.cancelled, "state": output::state_name(done.state) })
                );
            } else if group {
                outln!("cancelled {} jobs of group {id}", done.cancelled.len());
            } else {
                outln!("{id} {}", output::state_name(done.state));
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
                    outln!("{}", output::worker_json(w));
                }
            } else {
                out!("{}", output::workers_text(&workers));
            }
            Ok(())
        }
        Command::Quota(QuotaCommand::Set {
            scope,
            max_in_flight,
            max_queued,
            rate,
            burst,
            attempt_timeout,
        }) => {
            let quota = client
                .set_quota(switchyard_proto::v1::Quota {
                    scope,
                    max_in_flight,
                    max_queued,
                    rate_per_second: rate,
                    burst,
                    attempt_timeout: attempt_timeout.and_then(|d| d.try_into().ok()),
                    ..Default::default()
                })
                .await?;
            outln!("{}", output::quota_line(&quota, cli.json));
            Ok(())
        }
        Command::Schedule(command) => schedule::run(&client, command, cli.json).await,
        Command::Quota(QuotaCommand::List) => {
            for quota in client.quotas().await? {
                outln!("{}", output::quota_line(&quota, cli.json));
            }
            Ok(())
        }
        Command::Pause { queue } => {
            let paused = client.pause_queue(&queue, true).await?;
            outln!("{}", output::paused_text(&queue, true, &paused, cli.json));
            Ok(())
        }
        Command::Resume { queue } => {
            let paused = client.pause_queue(&queue, false).await?;
            outln!("{}", output::paused_text(&queue, false, &paused, cli.json));
            Ok(())
        }
        Command::Stats => {
            let stats = client.stats().await?;
            if cli.json {
                outln!("{}", output::stats_json(&stats));
            } else {
                out!("{}", output::stats_text(&stats));
            }
            Ok(())
        }
        Command::Dev(_) | Command::Bench(_) => unreachable!("handled before connecting"),
    };
    done.map(|()| Exit::Success)
}

fn print_job(job: &switchyard_client::Job, json: bool) {
    if json {
        outln!("{}", output::job_json(job));
    } else {
        out!("{}", output::job_text(job));
    }
}

async fn submit(client: &Client, args: SubmitArgs, json: bool) -> anyhow::Result<Exit> {
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
    // Checked here, before a large payload is sent at all, in the words of the limit.
    if payload.len() > switchyard_client::MAX_PAYLOAD_BYTES {
        return Err(Usage(format!(
            "the payload is {} bytes; a job's payload may be at most {} bytes (1 MiB): store \
             large data elsewhere and pass a reference to it",
            payload.len(),
            switchyard_client::MAX_PAYLOAD_BYTES
        ))
        .into());
    }
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
    if let Some(window) = args.unique_for {
        spec = spec.unique_for(window);
    }
    if let Some(ttl) = args.idempotency_ttl {
        spec = spec.idempotency_ttl(ttl);
    }
    if args.unique_while_active {
        spec = spec.unique_while_active();
    }
    if args.debounce {
        spec = spec.debounce();
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
        return Ok(Exit::of_state(job.state()));
    }
    let done = client.submit(spec).await?;
    if json {
        outln!(
            "{}",
            serde_json::json!({
                "job_id": done.job_id,
                "duplicate": done.duplicate,
                "payload_differs": done.payload_differs,
                "debounced": done.debounced,
                "state": output::state_name(done.state),
            })
        );
    } else if done.duplicate {
        let how = match (done.debounced, done.payload_differs) {
            (true, _) => "; it takes this payload",
            (false, true) => "; its payload differs from this one",
            (false, false) => "",
        };
        outln!("{} (duplicate of an earlier submit{how})", done.job_id);
    } else {
        outln!("{}", done.job_id);
    }
    Ok(Exit::Success)
}

async fn list(client: &Client, args: ListArgs, json: bool) -> anyhow::Result<()> {
    let filter = ListFilter {
        queue: args.queue,
        state: args.state,
        kind: args.kind,
        group_id: args.group,
        label: args.label,
        tenant_id: args.of_tenant,
        page_size: Some(args.limit.clamp(1, 1000) as u32),
        ..ListFilter::default()
    };
    let mut jobs = Box::pin(client.list(filter).take(args.limit));
    if !json {
        outln!("{}", output::LIST_HEADER);
    }
    while let Some(job) = jobs.next().await {
        let job = job?;
        if json {
            outln!("{}", output::job_json(&job));
        } else {
            outln!("{}", output::job_row(&job));
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
