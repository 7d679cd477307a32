//! What a worker needs to know to connect and serve: the coordinators, its identity, its
//! queues and slots, and the timings of liveness, drain and reconnect.

use std::time::Duration;

use crate::Error;

/// The settings of one worker process. Kinds are not listed here: they are the kinds that
/// have a handler ([`crate::Worker::handle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The coordinators' addresses, `http://host:port`, in the order tried: the worker
    /// connects to the first, and each time its stream fails or cannot be opened it moves on
    /// to the next (round robin, after the reconnect backoff), presenting the jobs it still
    /// runs there as on any reconnect. One address is a list of one.
    pub coordinators: Vec<String>,
    /// Stable id of this worker process, unique in the fleet.
    pub worker_id: String,
    /// The queues this worker takes jobs from.
    pub queues: Vec<String>,
    /// How many handlers run at once.
    pub slots: u32,
    /// How often this worker sends a heartbeat (announced in `Hello`).
    pub heartbeat_interval: Duration,
    /// On shutdown, how long running handlers may take to finish before they are cancelled
    /// and their jobs given back.
    pub drain_grace: Duration,
    /// How long a handler that was cancelled (or ran past its deadline) may take to return
    /// before it is abandoned.
    pub cancel_grace: Duration,
    /// Sent as `authorization: Bearer <token>` when the coordinator has tokens.
    pub token: Option<String>,
    /// TLS to an `https://` coordinator (its CA, and this worker's identity for mutual TLS).
    pub tls: Option<switchyard_client::Tls>,
    /// The first delay before reconnecting after a lost stream or a failed connect.
    pub reconnect_min: Duration,
    /// The longest delay between reconnect attempts.
    pub reconnect_max: Duration,
    /// The largest output a handler may return, in bytes; a larger one fails its attempt (not
    /// retried) with a clear error instead of being sent. The coordinator's own limit (told in
    /// its `Welcome`) applies too, whichever is smaller.
    pub max_result_bytes: usize,
}

/// The output limit when neither side says otherwise: 8 MiB (the coordinator's default).
pub const DEFAULT_MAX_RESULT_BYTES: usize = 8 * 1024 * 1024;

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            coordinators: vec!["http://127.0.0.1:50051".to_owned()],
            worker_id: "worker".to_owned(),
            queues: vec!["default".to_owned()],
            slots: 8,
            heartbeat_interval: Duration::from_secs(2),
            drain_grace: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(10),
            token: None,
            tls: None,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

impl WorkerConfig {
    /// Defaults (see [`Default`]) for a coordinator and a worker id. `coordinator` may name
    /// several, comma-separated (`http://a:50051,http://b:50051`), as the client's
    /// [`switchyard_client::Client::connect`] takes them.
    pub fn new(coordinator: impl Into<String>, worker_id: impl Into<String>) -> WorkerConfig {
        WorkerConfig {
            coordinators: coordinator
                .into()
                .split(',')
                .map(|url| url.trim().to_owned())
                .collect(),
            worker_id: worker_id.into(),
            ..WorkerConfig::default()
        }
    }

    /// Checks what the coordinator would refuse, and what would make no sense locally, before
    /// anything connects.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |what: String| Err(Error::InvalidConfig(what));
        if self.coordinators.is_empty() {
            return invalid("no coordinator address".into());
        }
        for url in &self.coordinators {
            switchyard_client::endpoint(url, self.tls.as_ref()).map_err(Error::InvalidUrl)?;
        }
        if self.worker_id.trim().is_empty() {
            return invalid("worker id is empty".into());
        }
        if self.queues.is_empty() {
            return invalid("no queues to serve".into());
        }
        if let Some(queue) = self.queues.iter().find(|q| q.trim().is_empty()) {
            return invalid(format!("queue name {queue:?} is empty"));
        }
        if self.slots == 0 {
            return invalid("slots must be at least 1".into());
        }
        if self.heartbeat_interval.is_zero() {
            return invalid("heartbeat interval must be more than zero".into());
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return invalid(format!(
                "reconnect delays must satisfy 0 < min ({:?}) <= max ({:?})",
                self.reconnect_min, self.reconnect_max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = WorkerConfig::default();
        assert_eq!(config.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(config.drain_grace, Duration::from_secs(30));
        assert_eq!(config.reconnect_min, Duration::from_millis(100));
        assert_eq!(config.reconnect_max, Duration::from_secs(5));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn one_string_names_several_coordinators() {
        let config = WorkerConfig::new("http://a:50051, b:50051", "w1");
        assert_eq!(config.coordinators, ["http://a:50051", "b:50051"]);
        let config = WorkerConfig::new("http://a:50051", "w1");
        assert_eq!(config.coordinators, ["http://a:50051"]);
    }

    #[test]
    fn refuses_what_cannot_work() {
        let bad = [
            WorkerConfig {
                coordinators: vec![],
                ..Default::default()
            },
            WorkerConfig {
                worker_id: " ".into(),
                ..Default::default()
            },
            WorkerConfig {
                queues: vec![],
                ..Default::default()
            },
            WorkerConfig {
                queues: vec!["a".into(), "".into()],
                ..Default::default()
            },
            WorkerConfig {
                slots: 0,
                ..Default::default()
            },
            WorkerConfig {
                heartbeat_interval: Duration::ZERO,
                ..Default::default()
            },
            WorkerConfig {
                reconnect_min: Duration::from_secs(2),
                reconnect_max: Duration::from_secs(1),
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(Error::InvalidConfig(_))),
                "{config:?} should be refused"
            );
        }
        // A trailing comma leaves an empty address.
        let config = WorkerConfig::new("http://a:50051,", "w1");
        assert!(
            matches!(config.validate(), Err(Error::InvalidUrl(_))),
            "{config:?} should be refused"
        );
    }
}
