//! `switchyard-worker`: serves the built-in kinds (`echo`, `sleep`, `fail`, `panic`,
//! `sha256`, `hang`, `fanout`) to a coordinator. Parses flags, installs logging, and runs the worker SDK until
//! SIGINT or SIGTERM, which drain it.
//!
//! Stdout carries exactly one kind of line, `switchyard-worker <worker_id> connected`, printed
//! each time a coordinator welcomes the worker (scripts and tests wait for it); logs go to
//! stderr.

use std::{io::Write, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{CommandFactory, Parser, builder::TypedValueParser as _, error::ErrorKind};
use switchyard_proto::text::parse_duration;
use switchyard_telemetry::logging::{self, Format as LogFormat};
use switchyard_worker::{ConnectionState, Worker, WorkerConfig, builtins};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// A Switchyard worker process serving the built-in kinds: echo, sleep, fail, panic, sha256,
/// hang, fanout, flaky-fanout and steps.
///
/// echo: output = payload. sleep: payload = milliseconds; stops when cancelled. fail: always a
/// retryable error. panic: the handler panics (the attempt fails, the worker lives on).
/// sha256: output = hex digest of the payload. hang: payload = milliseconds; ignores
/// cancellation (for seeing the worker abandon it). fanout: payload = `N KIND [PAYLOAD]`;
/// submits N child jobs of KIND and outputs their outputs, one per line. flaky-fanout: as
/// fanout, but its first attempt fails (retryable) right after submitting its children.
/// steps: payload = `N [MS] [fail@K]`; N steps of MS ms (default 100), reporting progress
/// and checkpointing each; resumes from an earlier attempt's checkpoint; with fail@K a fresh
/// attempt fails once (retryable) after step K; output = `N steps, resumed from step S`.
///
/// An empty payload on a job with exactly one dependency is that dependency's output, so the
/// kinds chain into pipelines.
///
/// SIGINT and SIGTERM drain: no new work, running jobs get --drain-grace, the rest go back
/// to the queue.
#[derive(Debug, Parser)]
#[command(name = "switchyard-worker", version, args_override_self = true)]
struct Args {
    /// The coordinator to connect to; several, comma-separated or with the flag repeated, are
    /// tried in turn: when the stream to one fails or cannot be opened, the worker moves on to
    /// the next (round robin) and presents the jobs it still runs there.
    #[arg(
        long,
        env = "SWITCHYARD_COORDINATOR",
        default_value = "http://127.0.0.1:50051",
        value_delimiter = ','
    )]
    coordinator: Vec<String>,

    /// Queues to take jobs from, comma-separated.
    #[arg(
        long,
        env = "SWITCHYARD_QUEUES",
        default_value = "default",
        value_delimiter = ','
    )]
    queues: Vec<String>,

    /// How many jobs run at once (the worker's slots).
    #[arg(long, env = "SWITCHYARD_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,

    /// This worker's id, unique in the fleet [default: <hostname>-<pid>].
    #[arg(long, env = "SWITCHYARD_WORKER_ID")]
    worker_id: Option<String>,

    /// How often to send a heartbeat (e.g. 200ms, 2s, 1m). The coordinator treats three
    /// silent intervals as a dead worker.
    #[arg(long, env = "SWITCHYARD_HEARTBEAT_INTERVAL", default_value = "2s",
          value_parser = parse_interval)]
    heartbeat_interval: Duration,

    /// On SIGINT or SIGTERM, how long running jobs may take to finish (e.g. 30s, 2m); those
    /// still running then are cancelled and given back to the coordinator.
    #[arg(long, env = "SWITCHYARD_DRAIN_GRACE", default_value = "30s",
          value_parser = parse_duration)]
    drain_grace: Duration,

    /// How long a cancelled handler (or one past its deadline) may take to return before it
    /// is abandoned; its slot stays taken until it does return.
    #[arg(long, env = "SWITCHYARD_CANCEL_GRACE", default_value = "10s",
          value_parser = parse_duration)]
    cancel_grace: Duration,

    /// Sent as `authorization: Bearer <token>` (for a coordinator started with --tokens).
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// For an `https://` coordinator: the CA certificate (PEM) that signed its certificate.
    #[arg(long, env = "SWITCHYARD_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,

    /// For mutual TLS: this worker's certificate (PEM); needs --client-key.
    #[arg(long, env = "SWITCHYARD_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --client-cert.
    #[arg(long, env = "SWITCHYARD_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<std::path::PathBuf>,

    /// Serve only these built-in kinds, comma-separated [default: all of them].
    #[arg(long, env = "SWITCHYARD_KINDS", value_delimiter = ',')]
    kinds: Option<Vec<String>>,

    /// Log filter (tracing's `EnvFilter` syntax), e.g. `info` or `switchyard_worker=debug`.
    /// Logs go to stderr.
    #[arg(long, env = "SWITCHYARD_LOG", default_value = "info")]
    log: String,

    /// How logs are written to stderr: `text` for people, `json` (one object per line) for
    /// log shippers.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", default_value = "text",
          value_parser = clap::builder::PossibleValuesParser::new(LogFormat::NAMES)
              .try_map(|name| name.parse::<LogFormat>()))]
    log_format: LogFormat,
}

impl Args {
    fn config(&self) -> WorkerConfig {
        let mut queues: Vec<String> = Vec::new();
        for queue in self.queues.iter().map(|q| q.trim().to_owned()) {
            if !queues.contains(&queue) {
                queues.push(queue);
            }
        }
        WorkerConfig {
            coordinators: self
                .coordinator
                .iter()
                .map(|c| c.trim().to_owned())
                .collect(),
            worker_id: self.worker_id.clone().unwrap_or_else(default_worker_id),
            queues,
            slots: self.concurrency,
            heartbeat_interval: self.heartbeat_interval,
            drain_grace: self.drain_grace,
            cancel_grace: self.cancel_grace,
            token: self.token.clone(),
            ..WorkerConfig::default()
        }
    }

    fn kinds(&self) -> Option<Vec<String>> {
        self.kinds.as_ref().map(|kinds| {
            kinds
                .iter()
                .map(|kind| kind.trim().to_owned())
                .filter(|kind| !kind.is_empty())
                .collect()
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let log_format = args.log_format;
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            logging::exit_error(log_format, &err);
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    logging::init(
        args.log_format,
        logging::Filter::try_new(&args.log).context("--log")?,
    )?;
    // OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set; flushed when `run` returns.
    let _traces = switchyard_telemetry::init_from_env("switchyard-worker");

    // Refuse a configuration that cannot work before connecting, as clap refuses a bad flag.
    let mut config = args.config();
    if let Some(ca) = &args.ca_cert {
        let identity = args.client_cert.as_deref().zip(args.client_key.as_deref());
        let tls =
            switchyard_client::Tls::from_files(ca, identity).context("reading the TLS files")?;
        config.tls = Some(tls);
    }
    let worker = config
        .validate()
        .and_then(|()| builtins::register(Worker::new(config), args.kinds().as_deref()))
        .unwrap_or_else(|err| {
            Args::command()
                .error(ErrorKind::ValueValidation, err)
                .exit()
        });
    let worker_id = worker.config().worker_id.clone();
    tracing::info!(
        worker = %worker_id,
        coordinators = %worker.config().coordinators.join(","),
        queues = ?worker.config().queues,
        kinds = ?worker.kinds(),
        slots = worker.config().slots,
        "worker starting"
    );

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    // SIGINT and SIGTERM both drain.
    tasks.spawn(switchyard_telemetry::shutdown::signalled(shutdown.clone()));
    tasks.spawn(announce(worker.state(), worker_id));
    let result = worker.run(shutdown.clone()).await;
    // `run` has returned: the announcer sees its state channel close; the signal task stops.
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    result.context("worker failed")
}

/// Prints the one stdout line per welcome.
async fn announce(mut state: watch::Receiver<ConnectionState>, worker_id: String) {
    let mut announced = 0;
    loop {
        let connection = match &*state.borrow_and_update() {
            ConnectionState::Connected { connection, .. } => *connection,
            _ => 0,
        };
        if connection > announced {
            announced = connection;
            let mut stdout = std::io::stdout().lock();
            // Nobody reading stdout is no reason to stop working.
            let written = writeln!(stdout, "switchyard-worker {worker_id} connected")
                .and_then(|()| stdout.flush());
            if let Err(err) = written {
                tracing::debug!(cause = %err, "cannot write to stdout");
            }
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// `<hostname>-<pid>`: the hostname from `HOSTNAME`, else `/etc/hostname`, else `worker`.
fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// A duration that is more than zero.
fn parse_interval(text: &str) -> Result<Duration, String> {
    parse_duration(text).and_then(|interval| {
        if interval.is_zero() {
            Err(format!("{text:?}: must be more than zero"))
        } else {
            Ok(interval)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_more_than_zero() {
        assert!(parse_interval("0ms").is_err());
        assert!(parse_interval("fast").is_err());
        assert_eq!(parse_interval("200ms"), Ok(Duration::from_millis(200)));
    }

    #[test]
    fn flags() {
        Args::command().debug_assert();
        let args = Args::try_parse_from([
            "switchyard-worker",
            "--queues",
            "a, b,a",
            "--concurrency",
            "3",
            "--worker-id",
            "first",
            "--worker-id",
            "w1",
            "--heartbeat-interval",
            "200ms",
            "--kinds",
            "echo,sleep",
        ])
        .expect("valid flags");
        let config = args.config();
        assert_eq!(config.queues, ["a", "b"]);
        assert_eq!(config.slots, 3);
        assert_eq!(
            config.worker_id, "w1",
            "a later flag overrides an earlier one"
        );
        assert_eq!(config.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(config.drain_grace, Duration::from_secs(30));
        assert_eq!(args.kinds(), Some(vec!["echo".into(), "sleep".into()]));
        assert_eq!(config.coordinators, ["http://127.0.0.1:50051"]);

        let args = Args::try_parse_from([
            "switchyard-worker",
            "--coordinator",
            "http://a:50051, http://b:50051",
            "--coordinator",
            "c:50051",
        ])
        .expect("valid flags");
        assert_eq!(
            args.config().coordinators,
            ["http://a:50051", "http://b:50051", "c:50051"],
            "a list, and the flag repeated, add up"
        );

        for bad in [
            &["switchyard-worker", "--concurrency", "0"][..],
            &["switchyard-worker", "--heartbeat-interval", "0s"],
            &["switchyard-worker", "--drain-grace", "soon"],
        ] {
            assert!(
                Args::try_parse_from(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn help_names_every_built_in_kind() {
        let help = Args::command().render_long_help().to_string();
        for kind in builtins::KINDS {
            assert!(
                help.contains(&format!("{kind}:")),
                "{kind} missing from --help:\n{help}"
            );
        }
    }

    #[test]
    fn default_id_names_the_process() {
        let id = default_worker_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        assert!(id.len() > 2);
    }
}
