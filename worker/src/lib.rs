//! The Switchyard worker SDK: holds a `WorkerService.Connect` stream open to a coordinator and
//! runs a handler for each job it is assigned, never more at once than its slots.
//!
//! ```no_run
//! use switchyard_worker::{JobContext, JobError, Worker, WorkerConfig};
//!
//! # async fn demo() -> Result<(), switchyard_worker::Error> {
//! switchyard_worker::init_logging();
//! let config = WorkerConfig::new("http://127.0.0.1:50051", "resizer-1");
//! let worker = Worker::new(config).handle("shout", |ctx: JobContext| async move {
//!     let text = String::from_utf8(ctx.payload).map_err(JobError::fatal)?;
//!     Ok(text.to_uppercase().into_bytes())
//! });
//! // SIGINT or SIGTERM drains: running handlers get `drain_grace` to finish, the rest go
//! // back to the queue. Any other `CancellationToken` works too.
//! worker.run(switchyard_worker::shutdown_on_signals()).await?;
//! # Ok(()) }
//! ```
//!
//! The worker reconnects by itself (exponential backoff with jitter) after a failed connect, a
//! lost or silent stream, or a coordinator that drains, to the next of
//! [`WorkerConfig::coordinators`] when it has several; `run` returns only once shut down.
//!
//! Logging: the SDK logs through [`tracing`] (connects, drains, failed handlers) and installs
//! no subscriber, as a library should. A program that has none of its own calls
//! [`init_logging`]; one that has its own sees the SDK's events in it.

pub mod backoff;
pub mod builtins;
mod config;
mod error;
mod job;
mod progress;
mod session;
mod slots;

use std::{collections::HashMap, fmt, future::Future};

use tokio::sync::watch;

pub use config::WorkerConfig;
pub use error::Error;
pub use job::{BoxJobFuture, JobContext, JobError, JobResult};
pub use progress::{MAX_CHECKPOINT_BYTES, MAX_PROGRESS_MESSAGE_BYTES, ProgressError};
/// What [`Worker::run`] stops on and what a handler's context watches: re-exported so that a
/// worker needs no `tokio-util` of its own.
pub use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT or SIGTERM (later ones are ignored rather than
/// killing the process half-way through its drain). Pass it to [`Worker::run`] for the drain
/// a process manager expects: no new work, running handlers get
/// [`WorkerConfig::drain_grace`], the rest go back to the queue uncounted.
///
/// Call it inside a Tokio runtime; the signal handlers are installed by this call.
pub fn shutdown_on_signals() -> CancellationToken {
    switchyard_telemetry::shutdown::on_signals()
}

/// Installs a `tracing` subscriber that writes the SDK's logs (and the program's) to stderr:
/// level from `SWITCHYARD_LOG`, else `RUST_LOG` (tracing's `EnvFilter` syntax), else `info`;
/// format from `SWITCHYARD_LOG_FORMAT` (`text`, the default, with colour only when stderr is a
/// terminal, or `json`, one object per line), the same subscriber the Switchyard binaries
/// install. Does nothing when a subscriber is already set.
pub fn init_logging() {
    use switchyard_telemetry::logging::{self, Filter, Format};
    let filter = ["SWITCHYARD_LOG", "RUST_LOG"]
        .iter()
        .find_map(|key| Filter::try_from_env(key).ok())
        .unwrap_or_else(|| Filter::new("info"));
    // A program (or a test) that installed its own subscriber keeps it.
    let _ = logging::init(Format::from_env(), filter);
}

/// The README's Rust snippets, compiled as doc-tests: the README's own text, so that a snippet
/// that stops compiling fails `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// Where the worker's connection to the coordinator stands; see [`Worker::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not connected: `run` has not started, or the last stream is gone and the worker waits
    /// to reconnect.
    Disconnected,
    /// Opening a stream and waiting for the coordinator's `Welcome`.
    Connecting,
    /// Welcomed by the coordinator. `connection` counts welcomes since the worker started (1
    /// for the first), so that a watcher can tell a new connection from the same one.
    Connected { connection: u64, session_id: String },
    /// Shutting down: no new work; running handlers finish within the drain grace.
    Draining,
    /// `run` has returned.
    Stopped,
}

/// A worker: its configuration and the handlers it runs, by kind.
pub struct Worker {
    config: WorkerConfig,
    handlers: HashMap<String, job::Handler>,
    state: watch::Sender<ConnectionState>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .field("kinds", &self.kinds())
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub fn new(config: WorkerConfig) -> Worker {
        Worker {
            config,
            handlers: HashMap::new(),
            state: watch::Sender::new(ConnectionState::Disconnected),
        }
    }

    /// Runs `handler` for jobs of `kind` (replacing an earlier handler of that kind). The
    /// worker announces exactly the kinds it has handlers for.
    ///
    /// A handler that panics fails its attempt (retryable); the worker lives on.
    pub fn handle<F, Fut>(mut self, kind: impl Into<String>, handler: F) -> Worker
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        self.handlers.insert(kind.into(), job::boxed(handler));
        self
    }

    /// The kinds with a handler, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.handlers.keys().cloned().collect();
        kinds.sort();
        kinds
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Follows the connection: a new value on every change (connected, lost, draining, …).
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }

    /// Connects and serves until `shutdown` is cancelled, reconnecting as needed; then drains
    /// (see [`WorkerConfig::drain_grace`]) and returns. Fails only for what retrying cannot
    /// fix: an invalid configuration or coordinator address, or no handlers.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        session::run(self, shutdown).await
    }
}
