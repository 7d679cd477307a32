//! Fan-in: a group's results as a stream that survives dropped connections.
//!
//! `WatchGroup` gives every event a cursor; [`Client::watch_group`] remembers the last one it
//! yielded and, when the stream breaks for a transient reason, opens a new one from there. The
//! coordinator promises that resuming from a cursor neither loses nor repeats an event, so the
//! caller sees one unbroken stream.

use std::time::Duration;

use futures::{Stream, stream};
use switchyard_proto::v1::{self, GroupOutcome, JobResult, WatchGroupRequest, group_event};
use tonic::{Code, Status, Streaming};

use crate::{
    Client, Error,
    trace::{self, Call},
};

/// One event of [`Client::watch_group`].
#[derive(Debug, Clone, PartialEq)]
pub struct GroupEvent {
    pub update: GroupUpdate,
    /// Pass to [`Client::watch_group`] to resume after this event.
    pub cursor: String,
}

/// What happened in a group.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupUpdate {
    /// One job of the group reached a terminal state.
    Result(JobResult),
    /// Every job of the group is terminal. Always the last event of the stream.
    Outcome(GroupOutcome),
}

impl GroupEvent {
    /// The outcome, when this is the last event.
    pub fn outcome(&self) -> Option<&GroupOutcome> {
        match &self.update {
            GroupUpdate::Outcome(outcome) => Some(outcome),
            GroupUpdate::Result(_) => None,
        }
    }
}

/// How [`Client::watch_group_with`] reopens a stream that broke.
#[derive(Debug, Clone)]
pub struct Resume {
    /// Attempts to reopen in a row, with no event in between, before the stream gives up and
    /// yields the last error. An event received resets the count.
    pub max_retries: u32,
    /// The wait before the first retry; it doubles with each failed one.
    pub initial_backoff: Duration,
    /// The longest wait between two retries.
    pub max_backoff: Duration,
}

impl Default for Resume {
    /// About half a minute of retries: enough to ride out a coordinator restart.
    fn default() -> Self {
        Resume {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl Resume {
    /// The wait before retry number `failures` (1-based), before jitter.
    fn backoff(&self, failures: u32) -> Duration {
        let doubled = self
            .initial_backoff
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        doubled.min(self.max_backoff)
    }
}

/// Whether a broken stream is worth reopening: the coordinator is unreachable or going away,
/// or the transport failed under the call. tonic reports a reset stream as CANCELLED or
/// INTERNAL, and a connection lost mid-body as UNKNOWN or INTERNAL, with the transport error as
/// the status's source or an `h2 protocol error` message; a status the coordinator sent in
/// trailers has neither, and is final.
pub(crate) fn is_transient(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        // Our own deadline (a parent job's) is not something a retry can fix.
        Code::Cancelled if status.message() == "Timeout expired" => false,
        Code::Cancelled | Code::Internal | Code::Unknown => {
            std::error::Error::source(status).is_some()
                || status.message().starts_with("h2 protocol error")
                || status.message().contains("transport error")
        }
        _ => false,
    }
}

/// The state behind the stream [`Client::watch_group_with`] returns.
/// An open `WatchGroup` stream and its client span, which lasts as long as the stream.
struct Open {
    events: Streaming<v1::GroupEvent>,
    call: Call,
}

struct Watch {
    client: Client,
    group_id: String,
    /// The cursor of the last event yielded (empty: from the start).
    cursor: String,
    resume: Resume,
    stream: Option<Open>,
    /// Failed (re)opens and broken streams since the last event.
    failures: u32,
    done: bool,
}

impl Watch {
    async fn next(&mut self) -> Option<Result<GroupEvent, Error>> {
        loop {
            if self.done {
                return None;
            }
            let open = match &mut self.stream {
                Some(open) => open,
                None => match self.open().await {
                    Ok(open) => self.stream.insert(open),
                    Err(status) => match self.retry(status).await {
                        Ok(()) => continue,
                        Err(error) => return Some(Err(error)),
                    },
                },
            };
            let broken = match open.events.message().await {
                Ok(Some(event)) => {
                    self.failures = 0;
                    // An event without a cursor cannot be resumed after; keep the last one.
                    if !event.cursor.is_empty() {
                        self.cursor = event.cursor;
                    }
                    let update = match event.event {
                        Some(group_event::Event::Result(result)) => GroupUpdate::Result(result),
                        Some(group_event::Event::Outcome(outcome)) => {
                            self.done = true;
                            open.call.status(None);
                            self.stream = None;
                            GroupUpdate::Outcome(outcome)
                        }
                        // A kind of event newer than this SDK: skipped, but its cursor counts.
                        None => continue,
                    };
                    return Some(Ok(GroupEvent {
                        update,
                        cursor: self.cursor.clone(),
                    }));
                }
                // The contract ends the stream only after the outcome: anything else is a
                // stream cut short (a proxy, a coordinator going away) and is resumed.
                Ok(None) => Status::unavailable("the stream ended before the group's outcome"),
                Err(status) => status,
            };
            open.call.status(Some(&broken));
            self.stream = None;
            if let Err(error) = self.retry(broken).await {
                return Some(Err(error));
            }
        }
    }

    async fn open(&self) -> Result<Open, Status> {
        let mut call = self.client.call(trace::WATCH_GROUP);
        call.attributes(|| {
            vec![opentelemetry::KeyValue::new(
                "switchyard.group.id",
                self.group_id.clone(),
            )]
        });
        let request = WatchGroupRequest {
            group_id: self.group_id.clone(),
            cursor: self.cursor.clone(),
        };
        let opened = self
            .client
            .send(&call, request, None, |c, r| async move {
                crate::jobs(c).watch_group(r).await
            })
            .await;
        match opened {
            Ok(response) => Ok(Open {
                events: response.into_inner(),
                call,
            }),
            Err(status) => {
                call.status(Some(&status));
                Err(status)
            }
        }
    }

    /// Waits out the backoff when `status` is transient and retries remain; otherwise ends the
    /// stream with it.
    async fn retry(&mut self, status: Status) -> Result<(), Error> {
        self.failures += 1;
        if !is_transient(&status) || self.failures > self.resume.max_retries {
            self.done = true;
            return Err(status.into());
        }
        let backoff = self.resume.backoff(self.failures);
        // Jitter, so that many watchers of a restarted coordinator do not return in step.
        let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        tracing::warn!(
            group.id = %self.group_id,
            cause = %status,
            retry = self.failures,
            wait_ms = wait.as_millis() as u64,
            "group stream broke; resuming from the last cursor"
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

impl Client {
    /// Each job's result as it finishes, then the group's outcome, and the end. Results that
    /// finished before the call come first. With `cursor` (from an earlier [`GroupEvent`]) it
    /// resumes after that event.
    ///
    /// A stream that breaks for a transient reason (coordinator unavailable or restarting, a
    /// dropped connection, a reset stream) is reopened from the last cursor yielded, with the
    /// default [`Resume`] policy; the caller sees nothing lost or repeated. A final error (an
    /// unknown group is [`Error::NotFound`]) is yielded once and ends the stream.
    ///
    /// Events are pulled from the coordinator as the stream is polled: a slow reader holds
    /// back the coordinator through HTTP/2 flow control instead of buffering here.
    pub fn watch_group(
        &self,
        group_id: &str,
        cursor: Option<String>,
    ) -> impl Stream<Item = Result<GroupEvent, Error>> + Send + 'static {
        self.watch_group_with(group_id, cursor, Resume::default())
    }

    /// [`Client::watch_group`] with its own retry policy.
    pub fn watch_group_with(
        &self,
        group_id: &str,
        cursor: Option<String>,
        resume: Resume,
    ) -> impl Stream<Item = Result<GroupEvent, Error>> + Send + 'static {
        let watch = Watch {
            client: self.clone(),
            group_id: group_id.to_owned(),
            cursor: cursor.unwrap_or_default(),
            resume,
            stream: None,
            failures: 0,
            done: false,
        };
        stream::unfold(watch, |mut watch| async move {
            let item = watch.next().await?;
            Some((item, watch))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let resume = Resume {
            max_retries: 50,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let waits: Vec<u128> = (1..=6).map(|n| resume.backoff(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        // No overflow however long it has failed.
        assert_eq!(resume.backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn only_transport_failures_are_transient() {
        assert!(is_transient(&Status::unavailable("tcp connect error")));
        assert!(is_transient(&Status::internal(
            "h2 protocol error: stream error received"
        )));
        assert!(is_transient(&Status::from_error(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionReset)
        ))));
        // What the coordinator itself answers is final.
        assert!(!is_transient(&Status::not_found("group g")));
        assert!(!is_transient(&Status::internal("internal error")));
        assert!(!is_transient(&Status::unimplemented("")));
        assert!(!is_transient(&Status::cancelled("Timeout expired")));
        assert!(!is_transient(&Status::invalid_argument("group_id")));
    }
}
