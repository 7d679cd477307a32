//! What [`crate::Worker::run`] can fail with. Connect failures and lost streams are not here:
//! the worker retries those by itself until it is shut down.

/// Errors of the worker SDK: only what retrying cannot fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work (empty worker id, no queues, zero slots, …).
    #[error("invalid worker configuration: {0}")]
    InvalidConfig(String),
    /// The coordinator address does not parse as a URL.
    #[error("{url:?} is not a valid coordinator address: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The coordinator refused this worker's `Hello` as invalid (a queue or kind name it does
    /// not accept, too many slots, …): connecting again would be refused again.
    #[error("the coordinator at {coordinator} refused this worker: {message}")]
    Refused {
        coordinator: String,
        message: String,
    },
}
