//! Command-line flags of `switchyard-server`; each also reads `SWITCHYARD_<FLAG>`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, builder::TypedValueParser as _};
use switchyard_telemetry::logging::Format as LogFormat;

use crate::store::{DbUrl, RetryPolicy, StoreConfig, SyncMode};

/// The Switchyard coordinator: takes jobs over gRPC and keeps them durably in SQLite (or
/// Postgres).
#[derive(Debug, Clone, Parser)]
#[command(name = "switchyard-server", version)]
pub struct ServerArgs {
    /// Address to listen on for gRPC (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Database: `sqlite://PATH` (the file is created if missing), or
    /// `postgres://USER:PASSWORD@HOST:PORT/DBNAME` (an existing database; the schema is
    /// created or brought up to date at start).
    #[arg(long, env = "SWITCHYARD_DB", default_value = "sqlite://switchyard.db", value_parser = parse_db_url)]
    pub db: DbUrl,

    /// When a commit reaches the disk. `full`: fsync on every commit, so an acknowledged job
    /// survives a killed process and a power cut. `normal`: faster; survives a killed process,
    /// but a power cut may lose the last commits.
    #[arg(long, env = "SWITCHYARD_SYNC", value_enum, default_value_t = SyncMode::Full)]
    pub sync: SyncMode,

    /// Largest gRPC message accepted or sent, in bytes (a job's payload is limited to 1 MiB
    /// by itself; this bounds a whole `SubmitBatch`).
    #[arg(long, env = "SWITCHYARD_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024 * 1024 + 4096..=256 * 1024 * 1024))]
    pub max_message_bytes: u64,

    /// Largest output a job's attempt may return, in bytes. A larger one fails its attempt
    /// (not retried) with a clear error; the worker's stream and its other jobs go on. At
    /// most --max-message-bytes less 64 KiB (the result must fit in one message).
    #[arg(long, env = "SWITCHYARD_MAX_RESULT_BYTES", default_value_t = 8 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=256 * 1024 * 1024))]
    pub max_result_bytes: u64,

    /// Most concurrent HTTP/2 streams (calls) on one connection.
    #[arg(long, env = "SWITCHYARD_MAX_CONCURRENT_STREAMS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// Calls in flight at once across all connections; past it a call is refused with
    /// UNAVAILABLE at once (load shedding) instead of waiting.
    #[arg(long, env = "SWITCHYARD_MAX_IN_FLIGHT", default_value_t = 8192,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_in_flight: u64,

    /// Long-polls (`Wait`, `Run`, `WatchGroup`) open at once; past it one is refused with
    /// UNAVAILABLE. They have a bound of their own, apart from --max-in-flight, so that idle
    /// waiters never shed submits; health and reflection are never shed.
    #[arg(long, env = "SWITCHYARD_MAX_LONG_POLLS", default_value_t = 8192,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_long_polls: u64,

    /// Writes that may wait for the store's writer before submitters get UNAVAILABLE.
    #[arg(long, env = "SWITCHYARD_WRITE_QUEUE", default_value_t = 16_384,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub write_queue: u64,

    /// How long a write waits for the database's lock when another process holds it, before
    /// it is refused with UNAVAILABLE (retryable); health answers NOT_SERVING meanwhile. On
    /// Postgres: a row another transaction holds (`lock_timeout`), and a free connection.
    #[arg(long, env = "SWITCHYARD_BUSY_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub busy_timeout: Duration,

    /// How often the coordinator pings each worker stream. A stream silent for three
    /// intervals (or whose worker stops acknowledging) is dead and its jobs go back to the
    /// queue.
    #[arg(long, env = "SWITCHYARD_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long the attempts of a worker whose stream was lost (or of every worker, after the
    /// coordinator restarts) are kept for it to reconnect and reclaim them, before they are
    /// LOST (or, after a restart, `interrupted`) and re-queued. 0 re-queues at once.
    #[arg(long, env = "SWITCHYARD_RECONNECT_GRACE", default_value = "10s", value_parser = parse_grace)]
    pub reconnect_grace: Duration,

    /// First retry backoff after a retryable failure; it doubles with each failure (with
    /// jitter) up to --retry-cap.
    #[arg(long, env = "SWITCHYARD_RETRY_BASE", default_value = "1s", value_parser = parse_duration)]
    pub retry_base: Duration,

    /// Longest retry backoff.
    #[arg(long, env = "SWITCHYARD_RETRY_CAP", default_value = "5m", value_parser = parse_duration)]
    pub retry_cap: Duration,

    /// The furthest deadline a job may get from a caller's `grpc-timeout` or `deadline`;
    /// later ones are brought in to it.
    #[arg(long, env = "SWITCHYARD_MAX_DEADLINE", default_value = "366d", value_parser = parse_duration)]
    pub max_deadline: Duration,

    /// How long a SUCCEEDED job is kept after it ended, with its attempts and other rows;
    /// then the pruner removes it. `0` keeps succeeded jobs forever. Queued and running jobs
    /// are never removed, nor a job another kept job depends on, nor the jobs of a group that
    /// is still running or watched.
    #[arg(long, env = "SWITCHYARD_RETAIN_SUCCEEDED", default_value = "1d", value_parser = parse_retention)]
    pub retain_succeeded: Duration,

    /// How long a FAILED job (the dead-letter set) is kept after it ended; `0`: forever.
    /// Longer than --retain-succeeded by default, so that failures can be looked at and
    /// requeued.
    #[arg(long, env = "SWITCHYARD_RETAIN_FAILED", default_value = "7d", value_parser = parse_retention)]
    pub retain_failed: Duration,

    /// How long a CANCELLED job is kept after it ended; `0`: forever.
    #[arg(long, env = "SWITCHYARD_RETAIN_CANCELLED", default_value = "7d", value_parser = parse_retention)]
    pub retain_cancelled: Duration,

    /// How long a DEADLINE_EXCEEDED job is kept after it ended; `0`: forever.
    #[arg(long, env = "SWITCHYARD_RETAIN_DEADLINE_EXCEEDED", default_value = "7d", value_parser = parse_retention)]
    pub retain_deadline_exceeded: Duration,

    /// How long an idempotency key binds after its job's submit when the job sets no window
    /// of its own (`idempotency_ttl`, `unique_for`); a repeat later makes a new job. `0`: as
    /// long as the job is kept. A key never outlives its job.
    #[arg(long, env = "SWITCHYARD_IDEMPOTENCY_TTL", default_value = "1d", value_parser = parse_retention)]
    pub idempotency_ttl: Duration,

    /// How often the pruner looks for what retention lets go. Each pass removes it in small
    /// transactions (up to 500 jobs, sized to take a few milliseconds each) until nothing is
    /// left, then gives the freed pages back to the file system.
    #[arg(long, env = "SWITCHYARD_PRUNE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub prune_interval: Duration,

    /// Serve HTTP at ADDR: the web console at `http://ADDR/` and Prometheus metrics at
    /// `http://ADDR/metrics` (off when unset; port 0 picks a free port, and the chosen address
    /// is printed on a second line). `--metrics` is another name for it.
    #[arg(
        long = "http",
        visible_alias = "metrics",
        env = "SWITCHYARD_HTTP",
        value_name = "ADDR"
    )]
    pub metrics: Option<SocketAddr>,

    /// Tokens file: one `TOKEN TENANT [client|worker|admin|reader]` per line. With it, every
    /// call (and the web console) needs a token, and a tenant sees only its own jobs.
    #[arg(long, env = "SWITCHYARD_TOKENS")]
    pub tokens: Option<PathBuf>,

    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "SWITCHYARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "SWITCHYARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "SWITCHYARD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Several coordinators on one Postgres database: the URL the others reach this one at
    /// when it leads (`http://HOST:PORT`, `https://` with TLS). Default: the --listen
    /// address (127.0.0.1's port when it listens on every interface, which other machines
    /// cannot reach: set it then). Each coordinator needs an address of its own.
    #[arg(long, env = "SWITCHYARD_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,

    /// Several coordinators on one Postgres database: how long the leader's lease runs
    /// without a renewal. A leader that dies is replaced within this (plus a quarter of it);
    /// the leader renews it every quarter, and stops by itself once it has failed to for
    /// three quarters. A drain gives it up at once.
    #[arg(long, env = "SWITCHYARD_LEADER_LEASE", default_value = "5s", value_parser = parse_lease)]
    pub leader_lease: Duration,

    /// Several coordinators with TLS: the CA (PEM) that signed the other coordinators'
    /// certificates, for forwarding to the leader (default: --tls-cert itself). With
    /// --tls-client-ca a follower presents its own certificate to the leader.
    #[arg(long, env = "SWITCHYARD_PEER_CA", requires = "tls_cert")]
    pub peer_ca: Option<PathBuf>,

    /// Log filter (tracing's `EnvFilter` syntax), e.g. `info` or `switchyard_server=debug`.
    #[arg(long, env = "SWITCHYARD_LOG", default_value = "info")]
    pub log: String,

    /// How logs are written to stderr: `text` for people, `json` (one object per line) for
    /// log shippers.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", default_value = "text",
          value_parser = clap::builder::PossibleValuesParser::new(LogFormat::NAMES)
              .try_map(|name| name.parse::<LogFormat>()))]
    pub log_format: LogFormat,
}

/// What `run` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub store: StoreConfig,
    pub max_message_bytes: usize,
    pub max_result_bytes: usize,
    pub max_concurrent_streams: u32,
    pub heartbeat_interval: Duration,
    /// How long a lost stream's attempts wait for their worker to come back.
    pub reconnect_grace: Duration,
    pub retry: RetryPolicy,
    /// Where to serve HTTP (the console and Prometheus metrics), if anywhere.
    pub metrics: Option<SocketAddr>,
    pub max_deadline: Duration,
    pub tokens: Option<PathBuf>,
    pub max_in_flight: usize,
    pub max_long_polls: usize,
    pub tls: Option<Tls>,
    pub retention: Retention,
    /// The window of an idempotency key whose job sets none (`None`: as long as the job).
    pub idempotency_ttl: Option<Duration>,
    /// Where the other coordinators on the database reach this one (`None`: from --listen).
    pub advertise: Option<String>,
    pub leader_lease: Duration,
    pub peer_ca: Option<PathBuf>,
}

/// How long finished jobs are kept, by state (`None`: forever), and how often to prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub succeeded: Option<Duration>,
    pub failed: Option<Duration>,
    pub cancelled: Option<Duration>,
    pub deadline_exceeded: Option<Duration>,
    pub interval: Duration,
}

/// TLS files: certificate chain and key, and for mutual TLS the clients' CA.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl ServerArgs {
    pub fn config(&self) -> Config {
        Config {
            store: StoreConfig {
                db: self.db.clone(),
                sync: self.sync,
                readers: 4,
                write_queue: self.write_queue as usize,
                busy_timeout: self.busy_timeout,
            },
            max_message_bytes: self.max_message_bytes as usize,
            // A result must fit in one message of the worker stream, with room for its frame.
            max_result_bytes: (self.max_result_bytes as usize)
                .min((self.max_message_bytes as usize).saturating_sub(64 * 1024)),
            max_concurrent_streams: self.max_concurrent_streams,
            heartbeat_interval: self.heartbeat_interval,
            reconnect_grace: self.reconnect_grace,
            metrics: self.metrics,
            max_deadline: self.max_deadline,
            tokens: self.tokens.clone(),
            max_in_flight: self.max_in_flight as usize,
            max_long_polls: self.max_long_polls as usize,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(Tls {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                }),
                _ => None,
            },
            retry: RetryPolicy {
                base_ms: self.retry_base.as_millis() as i64,
                cap_ms: self.retry_cap.max(self.retry_base).as_millis() as i64,
            },
            retention: Retention {
                succeeded: kept_for(self.retain_succeeded),
                failed: kept_for(self.retain_failed),
                cancelled: kept_for(self.retain_cancelled),
                deadline_exceeded: kept_for(self.retain_deadline_exceeded),
                interval: self.prune_interval,
            },
            idempotency_ttl: kept_for(self.idempotency_ttl),
            advertise: self.advertise.clone(),
            leader_lease: self.leader_lease,
            peer_ca: self.peer_ca.clone(),
        }
    }
}

impl Config {
    /// Defaults for a database file, as the flags give them.
    pub fn for_path(path: impl Into<PathBuf>) -> Config {
        let mut args = ServerArgs::parse_from(["switchyard-server"]);
        args.db = DbUrl::Sqlite(path.into());
        args.config()
    }
}

/// `sqlite://PATH` (relative) or `sqlite:///PATH` (absolute) to a file path; `postgres://…`
/// or `postgresql://…` to a Postgres database, kept as given (the driver parses the rest).
pub fn parse_db_url(url: &str) -> Result<DbUrl, String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return match url.split_once("://") {
            Some((_, rest)) if !rest.is_empty() => Ok(DbUrl::Postgres(url.to_owned())),
            _ => Err("expected postgres://USER:PASSWORD@HOST:PORT/DBNAME".to_owned()),
        };
    }
    let path = url
        .strip_prefix("sqlite://")
        .ok_or_else(|| format!("{url:?}: expected sqlite://PATH or postgres://…"))?;
    if path.is_empty() || path.starts_with(':') || path.contains('?') {
        return Err(format!(
            "{url:?}: expected sqlite://PATH to a file (in-memory databases and options are not supported)"
        ));
    }
    Ok(DbUrl::Sqlite(PathBuf::from(path)))
}

/// `250ms`, `30s`, `5m`, `2h`, `7d` (a bare number is seconds); at least 1 ms, at most 366
/// days.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = switchyard_proto::text::parse_duration(text)?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(366 * 86_400) {
        return Err(format!("{text:?}: must be between 1ms and 366 days"));
    }
    Ok(d)
}

/// A retention: `0` (keep forever) or a duration up to 366 days.
fn parse_retention(text: &str) -> Result<Duration, String> {
    let d = switchyard_proto::text::parse_duration(text)?;
    if d > Duration::from_secs(366 * 86_400) {
        return Err(format!(
            "{text:?}: must be at most 366 days (or 0: forever)"
        ));
    }
    Ok(d)
}

/// `0` is forever.
fn kept_for(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// A grace period: `0` (none) up to a day.
fn parse_grace(text: &str) -> Result<Duration, String> {
    let d = switchyard_proto::text::parse_duration(text)?;
    if d > Duration::from_secs(86_400) {
        return Err(format!("{text:?}: must be at most a day"));
    }
    Ok(d)
}

fn parse_lease(text: &str) -> Result<Duration, String> {
    let d = switchyard_proto::text::parse_duration(text)?;
    if d < Duration::from_millis(400) || d > Duration::from_secs(600) {
        return Err(format!("{text:?}: must be between 400ms and 10m"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_has_metrics_as_its_other_name() {
        for flag in ["--http", "--metrics"] {
            let args = ServerArgs::parse_from(["switchyard-server", flag, "127.0.0.1:0"]);
            assert_eq!(args.metrics, Some(SocketAddr::from(([127, 0, 0, 1], 0))));
        }
    }

    #[test]
    fn db_urls() {
        assert_eq!(
            parse_db_url("sqlite://a.db"),
            Ok(DbUrl::Sqlite(PathBuf::from("a.db")))
        );
        assert_eq!(
            parse_db_url("sqlite:///tmp/a.db"),
            Ok(DbUrl::Sqlite(PathBuf::from("/tmp/a.db")))
        );
        for url in ["postgres://u:p@h:5432/d", "postgresql://h/d"] {
            assert_eq!(parse_db_url(url), Ok(DbUrl::Postgres(url.to_owned())));
        }
        assert!(parse_db_url("postgres://").is_err());
        // Logs and `{:?}` never show a password.
        let url = DbUrl::Postgres("postgres://u:secret@h:5432/d?password=other".into());
        assert_eq!(url.to_string(), "postgres://u:***@h:5432/d");
        assert!(!format!("{url:?}").contains("secret"));
        assert!(parse_db_url("mysql://x").is_err());
        assert!(parse_db_url("sqlite://:memory:").is_err());
        assert!(parse_db_url("sqlite://").is_err());
    }

    #[test]
    fn retention_defaults_and_forever() {
        let config = ServerArgs::parse_from(["switchyard-server"]).config();
        let day = Duration::from_secs(86_400);
        assert_eq!(
            config.retention,
            Retention {
                succeeded: Some(day),
                failed: Some(7 * day),
                cancelled: Some(7 * day),
                deadline_exceeded: Some(7 * day),
                interval: Duration::from_secs(30),
            }
        );
        assert_eq!(config.idempotency_ttl, Some(day));
        let config = ServerArgs::parse_from([
            "switchyard-server",
            "--retain-succeeded",
            "0",
            "--retain-failed",
            "0s",
            "--idempotency-ttl",
            "0",
        ])
        .config();
        assert_eq!(
            (config.retention.succeeded, config.retention.failed),
            (None, None)
        );
        assert_eq!(config.idempotency_ttl, None);
        assert!(parse_retention("367d").is_err());
    }
}
