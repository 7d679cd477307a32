//! What [`crate::Worker::run`] can fail with. Connect failures and lost streams are not here:
//! the worker retries those by itself until it is shut down.

/// Errors of the worker SDK: only what retrying cannot fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work (empty worker id, no queues, zero slots, …).
    #[error("invalid worker configuration: {0}")]
    InvalidConfig(String),
    /// The coordinator address cannot be used (not a URL, a scheme other than `http` or
    /// `https`, or `https` without a CA); the same rules as the client's.
    #[error("{0}")]
    InvalidUrl(#[source] switchyard_client::Error),
    /// The coordinator refused this worker's `Hello` as invalid (a queue or kind name it does
    /// not accept, too many slots, …): connecting again would be refused again.
    #[error("the coordinator at {coordinator} refused this worker: {message}")]
    Refused {
        coordinator: String,
        message: String,
    },
}
