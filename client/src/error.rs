//! What a client call can fail with.

use tonic::{Code, Status};

/// Errors of the client SDK. Server refusals keep the server's message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url:?} is not a valid coordinator address: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The request broke a rule (`INVALID_ARGUMENT`); the message names the field.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A quota or limit refused the request.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The coordinator is unreachable, overloaded or shutting down: retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    /// Any other status.
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(Status),
}

impl Error {
    /// The gRPC code behind this error, if it came from a call.
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            Error::InvalidUrl { .. } | Error::Connect { .. } => return None,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Rpc(status) => status.code(),
        })
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        // tonic reports its own end of a call's deadline as CANCELLED "Timeout expired".
        if status.code() == Code::Cancelled && message == "Timeout expired" {
            return Error::DeadlineExceeded(message);
        }
        match status.code() {
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::NotFound => Error::NotFound(message),
            Code::AlreadyExists => Error::AlreadyExists(message),
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            Code::ResourceExhausted => Error::ResourceExhausted(message),
            Code::Unavailable => Error::Unavailable(message),
            Code::DeadlineExceeded => Error::DeadlineExceeded(message),
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            Code::Unimplemented => Error::Unimplemented(message),
            _ => Error::Rpc(status),
        }
    }
}
