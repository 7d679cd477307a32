//! What a client call can fail with.

use tonic::{Code, Status};

/// Errors of the client SDK. Server refusals keep the server's message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator address cannot be used: not a URL, or a scheme other than `http` and
    /// `https`.
    #[error("{url:?} is not a valid coordinator address: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// An `https://` coordinator without the CA certificate to verify it (system roots are
    /// not used: a Switchyard coordinator's certificate is normally signed by a private CA).
    #[error(
        "{url} uses https but no CA certificate was given to verify it (system roots are not used)"
    )]
    TlsWithoutCa { url: String },
    /// Nothing answered at the address, or the connection failed on the way. `reason` is the
    /// innermost cause, as the operating system or the TLS layer put it.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        url: String,
        reason: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The request broke a rule (`INVALID_ARGUMENT`); the message names the field.
    #[error("{}", prefixed("invalid argument", .0))]
    InvalidArgument(String),
    #[error("{}", prefixed("not found", .0))]
    NotFound(String),
    #[error("{}", prefixed("already exists", .0))]
    AlreadyExists(String),
    #[error("{}", prefixed("failed precondition", .0))]
    FailedPrecondition(String),
    /// A quota or limit refused the request.
    #[error("{}", prefixed("resource exhausted", .0))]
    ResourceExhausted(String),
    /// A message was larger than one side accepts (gRPC `OUT_OF_RANGE` from the transport).
    #[error("message too large: {0}")]
    MessageTooLarge(String),
    /// The coordinator is unreachable, overloaded or shutting down: retry later.
    #[error("{}", prefixed("unavailable", .0))]
    Unavailable(String),
    #[error("{}", prefixed("deadline exceeded", .0))]
    DeadlineExceeded(String),
    #[error("{}", prefixed("unauthenticated", .0))]
    Unauthenticated(String),
    #[error("{}", prefixed("permission denied", .0))]
    PermissionDenied(String),
    #[error("{}", prefixed("unimplemented", .0))]
    Unimplemented(String),
    /// Any other status.
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(Status),
}

/// `what: message`, unless the message already says `what` (the coordinator's own
/// `job X: not found` needs no second `not found`).
fn prefixed(what: &str, message: &str) -> String {
    if message.contains(what) {
        message.to_owned()
    } else {
        format!("{what}: {message}")
    }
}

impl Error {
    /// The gRPC code behind this error, if it came from a call.
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            Error::InvalidUrl { .. } | Error::TlsWithoutCa { .. } | Error::Connect { .. } => {
                return None;
            }
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::MessageTooLarge(_) => Code::OutOfRange,
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
        if let Some(words) = too_large(&message) {
            return Error::MessageTooLarge(words);
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

/// tonic's codec refuses an oversized message with `Error, decoded message length too large:
/// found N bytes, the limit is: M bytes` (`decoded` on the receiving side, the coordinator;
/// `encoded` when this side refused to send it). Says the same in words a person reads.
fn too_large(message: &str) -> Option<String> {
    let side = if message.contains("decoded message length too large") {
        "the coordinator"
    } else if message.contains("encoded message length too large") {
        "this client"
    } else {
        return None;
    };
    // The two numbers, in order: what was found, and the limit.
    let numbers: Vec<u64> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    Some(match numbers.as_slice() {
        [found, limit, ..] => format!(
            "the request is {} and {side} accepts at most {} per message",
            size(*found),
            size(*limit)
        ),
        _ => format!("the request is more than {side} accepts per message"),
    })
}

/// `20.0 MiB (20971532 bytes)`.
pub(crate) fn size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB ({bytes} bytes)", bytes as f64 / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_words_are_not_repeated() {
        let err = Error::from(Status::not_found("job 42: not found"));
        assert_eq!(err.to_string(), "job 42: not found");
        let err = Error::from(Status::invalid_argument("queue: must not be empty"));
        assert_eq!(
            err.to_string(),
            "invalid argument: queue: must not be empty"
        );
    }

    #[test]
    fn oversized_messages_are_said_in_words() {
        let status = Status::out_of_range(
            "Error, decoded message length too large: found 20971532 bytes, the limit is: 16777216 bytes",
        );
        let err = Error::from(status);
        assert_eq!(
            err.to_string(),
            "message too large: the request is 20.0 MiB (20971532 bytes) and the coordinator accepts at most 16.0 MiB (16777216 bytes) per message"
        );
        assert_eq!(err.code(), Some(Code::OutOfRange));
    }
}
