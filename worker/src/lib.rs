//! The Switchyard worker SDK: holds a `WorkerService.Connect` stream open to a coordinator and
//! runs a handler for each job it is assigned, never more at once than its slots.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchyard_worker::Error> {
//! use switchyard_worker::{JobContext, JobError, Worker, WorkerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! let config = WorkerConfig::new("http://127.0.0.1:50051", "resizer-1");
//! let worker = Worker::new(config).handle("shout", |ctx: JobContext| async move {
//!     let text = String::from_utf8(ctx.payload).map_err(JobError::fatal)?;
//!     Ok(text.to_uppercase().into_bytes())
//! });
//! let shutdown = CancellationToken::new();
//! // Cancel `shutdown` (say, on SIGTERM) to drain: running handlers get `drain_grace` to finish.
//! worker.run(shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! The worker reconnects by itself (exponential backoff with jitter) after a failed connect, a
//! lost or silent stream, or a coordinator that drains; `run` returns only once shut down.

pub mod backoff;
pub mod builtins;
mod config;
mod error;
mod job;
mod session;
mod slots;

use std::{collections::HashMap, fmt, future::Future};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::WorkerConfig;
pub use error::Error;
pub use job::{BoxJobFuture, JobContext, JobError, JobResult};

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
