//! The coordinator's error type, and its one mapping to `tonic::Status`.

use tonic::{Code, Status};

/// Everything the coordinator can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field broke a rule; the message names the field and the rule.
    #[error("{field}: {rule}")]
    InvalidArgument { field: String, rule: String },
    #[error("job {0}: not found")]
    JobNotFound(String),
    #[error("group {0}: not found")]
    GroupNotFound(String),
    #[error("group {0}: already exists")]
    GroupExists(String),
    #[error("schedule {0}: not found")]
    ScheduleNotFound(String),
    #[error("schedule {0}: already exists")]
    ScheduleExists(String),
    #[error("job {id}: {reason}")]
    FailedPrecondition { id: String, reason: String },
    /// The caller's deadline (or its parent job's) has already passed.
    #[error("the deadline this call carries has already passed")]
    DeadlinePassed,
    /// Admission: a scope's `max_queued` would be passed.
    #[error("{scope} has {queued} jobs queued of its max_queued {max}; nothing was stored")]
    QueueFull {
        scope: String,
        queued: u64,
        max: u64,
    },
    /// A bounded queue is full: the caller should back off and retry.
    #[error("{0} is full; retry later")]
    Overloaded(&'static str),
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// This coordinator's leadership lease may have run out: another may lead now, so it
    /// commits nothing more.
    #[error(
        "this coordinator no longer leads the fleet (its lease ran out); nothing was stored, retry"
    )]
    NotLeading,
    /// The store cannot write now, for a reason the caller can act on; nothing was stored.
    #[error("{}", .fault.explain())]
    Store { fault: StoreFault, detail: String },
    #[error("database: {0}")]
    Database(rusqlite::Error),
    #[error("migration {version}: {source}")]
    Migration {
        version: u32,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database file {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("postgres: {0}")]
    Postgres(sqlx::Error),
    #[error("postgres migrations: {0}")]
    PostgresMigration(#[from] sqlx::migrate::MigrateError),
    #[error("commit failed: {0}")]
    CommitFailed(String),
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("{0}")]
    Config(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Why the store cannot write, as a caller can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreFault {
    /// The disk (or the database's size cap) is full: free space, then retry.
    Full,
    /// Another process holds the database's write lock: retry with backoff.
    Busy,
    /// The database server cannot be reached (Postgres): retry with backoff.
    Unreachable,
}

impl StoreFault {
    fn explain(self) -> &'static str {
        match self {
            StoreFault::Full => {
                "the coordinator's database or disk is full; nothing was stored (retry once space is freed)"
            }
            StoreFault::Busy => {
                "the coordinator's database is locked by another process; nothing was stored (retry with backoff)"
            }
            StoreFault::Unreachable => {
                "the coordinator cannot reach its database; nothing was stored (retry with backoff)"
            }
        }
    }

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreFault::Full => "full",
            StoreFault::Busy => "busy",
            StoreFault::Unreachable => "unreachable",
        }
    }
}

impl From<rusqlite::Error> for Error {
    /// A full disk and a locked database are told apart from other database errors: the
    /// caller can act on them.
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        // SQLITE_IOERR_SHMSIZE: the WAL's shared-memory index could not grow, which on a
        // full disk is where a write may stop first.
        const IOERR_SHMSIZE: std::ffi::c_int = 10 | (19 << 8);
        let extended = err.sqlite_error().map(|e| e.extended_code);
        let fault = match err.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => Some(StoreFault::Full),
            Some(ErrorCode::SystemIoFailure) if extended == Some(IOERR_SHMSIZE) => {
                Some(StoreFault::Full)
            }
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Some(StoreFault::Busy),
            _ => None,
        };
        match fault {
            // The extended code tells a full disk from a wal-index that could not grow.
            Some(fault) => Error::Store {
                fault,
                detail: match extended {
                    Some(code) => format!("{err} (SQLite code {code})"),
                    None => err.to_string(),
                },
            },
            None => Error::Database(err),
        }
    }
}

impl From<sqlx::Error> for Error {
    /// As for SQLite: what the caller can act on (a full disk, a lock held too long, a server
    /// out of reach) is told apart from other database errors. A closed pool is a store that
    /// was closed.
    fn from(err: sqlx::Error) -> Self {
        let fault = match &err {
            sqlx::Error::PoolClosed => return Error::ShuttingDown,
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed => Some(StoreFault::Unreachable),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // disk_full.
                Some("53100") => Some(StoreFault::Full),
                // lock_not_available: `lock_timeout` (from --busy-timeout) passed.
                Some("55P03") => Some(StoreFault::Busy),
                // too_many_connections; admin_shutdown, crash_shutdown, cannot_connect_now;
                // connection exceptions.
                Some(code)
                    if code == "53300" || code.starts_with("57P") || code.starts_with("08") =>
                {
                    Some(StoreFault::Unreachable)
                }
                _ => None,
            },
            _ => None,
        };
        match fault {
            Some(fault) => Error::Store {
                fault,
                detail: err.to_string(),
            },
            None => Error::Postgres(err),
        }
    }
}

impl Error {
    pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// A child submitted by an attempt of its parent that is no longer the running one.
    pub fn parent_attempt_ended(parent: crate::domain::JobId, attempt: u32) -> Error {
        Error::FailedPrecondition {
            id: parent.to_string(),
            reason: format!(
                "(the parent) is no longer running attempt {attempt}; \
                 children of an attempt that ended cannot start"
            ),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::JobNotFound(_) | Error::GroupNotFound(_) | Error::ScheduleNotFound(_) => {
                Code::NotFound
            }
            Error::GroupExists(_) | Error::ScheduleExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition { .. } => Code::FailedPrecondition,
            Error::DeadlinePassed => Code::DeadlineExceeded,
            Error::Overloaded(_) | Error::ShuttingDown | Error::NotLeading => Code::Unavailable,
            Error::QueueFull { .. } => Code::ResourceExhausted,
            Error::Store { fault, detail } => {
                tracing::warn!(fault = fault.as_str(), cause = %detail, "the store cannot write");
                match fault {
                    StoreFault::Full => Code::ResourceExhausted,
                    StoreFault::Busy | StoreFault::Unreachable => Code::Unavailable,
                }
            }
            Error::Database(_)
            | Error::Postgres(_)
            | Error::PostgresMigration(_)
            | Error::Migration { .. }
            | Error::Open { .. }
            | Error::CommitFailed(_)
            | Error::Corrupt(_)
            | Error::Transport(_)
            | Error::Reflection(_)
            | Error::Config(_)
            | Error::Io(_) => Code::Internal,
        };
        if code == Code::Internal {
            // The database's own text stays in our logs; the caller learns only that it failed.
            tracing::error!(cause = %err, "internal error");
            return Status::internal("internal error; see the coordinator's log");
        }
        Status::new(code, err.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
