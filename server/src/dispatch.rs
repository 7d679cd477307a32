//! `WorkerService.Connect`: one session task per worker stream. It checks the hello, registers
//! the session with the scheduler, forwards what the worker sends, and keeps the stream honest:
//! heartbeats both ways, and a stream that is silent, or whose worker no longer reads, is
//! declared dead so that its jobs go back to the queue. With `api/`, the one place that
//! converts between protobuf messages and the scheduler's terms ([`ToWorker`], [`Outcome`]).
//! Progress reports go to the store on their own path (`progress.rs`).

mod progress;

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use switchyard_proto::v1::{
    self, CoordinatorMessage, WorkerMessage, coordinator_message, worker_message,
    worker_service_server::WorkerService,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    api::{
        convert::{duration, timestamp},
        validate,
    },
    domain::{Dispatch, JobId, Outcome, now_ms},
    error::{Error, Result},
    scheduler::{Held, Link, Scheduler, SessionInfo, ToWorker, Token},
    store::Store,
};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Intervals of silence (or of unacknowledged heartbeats) after which a stream is dead.
const MISSED_HEARTBEATS: u32 = 3;
/// Room in a session's outbound channel beyond its slots: heartbeats, cancels, drain.
const CONTROL_ROOM: usize = 16;
pub const MAX_SLOTS: u32 = 10_000;
const MAX_QUEUES: usize = 256;

/// `WorkerService`: the dispatch stream.
#[derive(Clone)]
pub struct WorkerApi {
    scheduler: Scheduler,
    /// Where progress reports go (they do not pass the scheduler).
    store: Arc<dyn Store>,
    heartbeat: Duration,
    /// How long the coordinator keeps a lost stream's attempts (told in `Welcome`).
    reconnect_grace: Duration,
    /// The largest output a result may carry; a larger one fails its attempt, not the stream.
    max_result_bytes: usize,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    next_session: Arc<AtomicU64>,
}

impl WorkerApi {
    pub fn new(
        scheduler: Scheduler,
        store: Arc<dyn Store>,
        heartbeat: Duration,
        reconnect_grace: Duration,
        max_result_bytes: usize,
        shutdown: CancellationToken,
        sessions: TaskTracker,
    ) -> Self {
        WorkerApi {
            scheduler,
            store,
            heartbeat,
            reconnect_grace,
            max_result_bytes,
            shutdown,
            sessions,
            next_session: Arc::new(AtomicU64::new(1)),
        }
    }
}

/// The attempts a hello says its worker still holds. An entry that names no job is no attempt
/// of this coordinator's and is passed over.
fn held_attempts(held: &[v1::HeldAttempt]) -> Vec<Held> {
    held.iter()
        .filter_map(|h| {
            Some(Held {
                key: (h.job_id.parse::<JobId>().ok()?, h.attempt),
                epoch: h.epoch,
                finished: h.finished,
            })
        })
        .collect()
}

fn check_hello(hello: &v1::Hello) -> Result<()> {
    validate::name("hello.worker_id", &hello.worker_id)?;
    if hello.queues.is_empty() || hello.queues.len() > MAX_QUEUES {
        return Err(Error::invalid(
            "hello.queues",
            format!("must name 1 to {MAX_QUEUES} queues"),
        ));
    }
    for (i, queue) in hello.queues.iter().enumerate() {
        validate::name(&format!("hello.queues[{i}]"), queue)?;
    }
    for (i, kind) in hello.kinds.iter().enumerate() {
        validate::name(&format!("hello.kinds[{i}]"), kind)?;
    }
    if hello.slots > MAX_SLOTS {
        return Err(Error::invalid(
            "hello.slots",
            format!("must be at most {MAX_SLOTS}"),
        ));
    }
    // Each held attempt is a running handler or a result not yet confirmed: a worker keeps
    // at most a few per slot.
    let max_held = 4 * (hello.slots as usize).max(1);
    if hello.held.len() > max_held {
        return Err(Error::invalid(
            "hello.held",
            format!("holds at most 4 attempts per slot ({max_held})"),
        ));
    }
    Ok(())
}

type OutboundStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

fn message(m: coordinator_message::Message) -> CoordinatorMessage {
    CoordinatorMessage { message: Some(m) }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type ConnectStream = OutboundStream;

    async fn connect(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let identity = crate::auth::Identity::of(&request);
        identity.require(crate::auth::Role::Worker)?;
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10s of opening the stream"))??
            .and_then(|m| m.message);
        let Some(worker_message::Message::Hello(hello)) = first else {
            return Err(
                Error::invalid("message", "the first message on Connect must be a hello").into(),
            );
        };
        check_hello(&hello)?;

        // The slower of the two sides' heartbeats sets the pace for judging silence.
        let worker_interval = hello
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(self.heartbeat)
            .clamp(Duration::from_millis(50), Duration::from_secs(60));
        let interval = self.heartbeat.max(worker_interval);

        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        // Two ways out: the scheduler's assignments and stops (bounded by the slots: credits
        // bound what is outstanding), and this session's own heartbeats and drain.
        let (outbound, rx) = mpsc::channel(hello.slots as usize + CONTROL_ROOM);
        let (control, control_rx) = mpsc::channel(CONTROL_ROOM);
        let kill = self.shutdown.child_token();
        let link = Link {
            outbound,
            kill: kill.clone(),
        };
        let held = held_attempts(&hello.held);
        let heard = Arc::new(AtomicI64::new(now_ms()));
        let adopted = self
            .scheduler
            .connect(
                SessionInfo {
                    id,
                    worker_id: hello.worker_id.clone(),
                    queues: hello.queues.iter().cloned().collect(),
                    kinds: hello.kinds.iter().cloned().collect(),
                    // A token that names a tenant binds its worker to that tenant's jobs.
                    tenant: identity
                        .authenticated
                        .then(|| identity.tenant.clone())
                        .flatten(),
                    slots: hello.slots,
                    peer,
                    last_heartbeat_ms: heard.clone(),
                },
                held,
                link,
            )
            .await?;
        // The welcome goes first, before anything the scheduler sends (it sends nothing on
        // the link until this call has returned and the stream is read).
        let welcome = message(coordinator_message::Message::Welcome(v1::Welcome {
            session_id: id.to_string(),
            heartbeat_interval: Some(duration(self.heartbeat.as_millis() as i64)),
            max_result_bytes: self.max_result_bytes as u64,
            adopted: adopted
                .iter()
                .map(|h| v1::HeldAttempt {
                    job_id: h.key.0.to_string(),
                    attempt: h.key.1,
                    epoch: h.epoch,
                    finished: false,
                })
                .collect(),
            reconnect_grace: Some(duration(self.reconnect_grace.as_millis() as i64)),
        }));
        let terms = Terms {
            id,
            interval,
            max_result_bytes: self.max_result_bytes,
            heard,
        };
        let (reports, writer) = progress::Reports::start(self.store.clone(), id, self.heartbeat);
        self.sessions.spawn(writer);
        self.sessions.spawn(session(
            self.scheduler.clone(),
            reports,
            terms,
            inbound,
            control,
            kill.clone(),
            self.shutdown.clone(),
        ));
        // When the session ends, so does the response stream, at once: what is still buffered
        // for a worker that stopped reading is dropped, not held for as long as its
        // connection lives. A drain sent at shutdown gets a moment to go out first.
        let ended = async move {
            kill.cancelled().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let stream = futures::stream::once(async { welcome })
            .chain(futures::stream::select(
                ReceiverStream::new(rx).map(to_wire),
                ReceiverStream::new(control_rx),
            ))
            .map(Ok)
            .take_until(ended);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// What a session keeps to: its id, the heartbeat pace that judges silence, and the largest
/// output a result may carry.
struct Terms {
    id: u64,
    interval: Duration,
    max_result_bytes: usize,
    /// When the worker's last heartbeat came (wall clock, for `ListWorkers` and the console).
    heard: Arc<AtomicI64>,
}

/// Forwards the worker's messages and watches the stream's liveness until it ends.
async fn session(
    scheduler: Scheduler,
    reports: progress::Reports,
    terms: Terms,
    mut inbound: Streaming<WorkerMessage>,
    outbound: mpsc::Sender<CoordinatorMessage>,
    kill: CancellationToken,
    shutdown: CancellationToken,
) {
    let Terms {
        id,
        interval,
        max_result_bytes,
        heard,
    } = terms;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut received = 0u64;
    let reason: String = loop {
        tokio::select! {
            _ = kill.cancelled() => {
                if shutdown.is_cancelled() {
                    // A restart or a deploy: the worker keeps running what it holds and
                    // comes back for it (to this coordinator's successor).
                    let _ = outbound.try_send(message(coordinator_message::Message::Hold(v1::Hold {
                        reason: "the coordinator is restarting".into(),
                    })));
                    break "the coordinator is shutting down".into();
                }
                break "ended by the coordinator".into();
            }
            next = inbound.message() => {
                let m = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => break "the worker closed its stream".into(),
                    Err(status) => break format!("stream failed: {}", status.message()),
                };
                last_heard = Instant::now();
                let forwarded = match m.message {
                    Some(worker_message::Message::Heartbeat(h)) => {
                        heard.store(now_ms(), Ordering::Relaxed);
                        received = h.sequence;
                        acked = acked.max(h.ack);
                        Ok(())
                    }
                    Some(worker_message::Message::Credit(c)) => scheduler.credit(id, c.slots).await,
                    Some(worker_message::Message::Result(r)) => match r.job_id.parse::<JobId>() {
                        Ok(job_id) => {
                            let token = Token {
                                job_id,
                                attempt: r.attempt,
                                epoch: r.epoch,
                            };
                            let outcome = bounded(outcome(r.outcome), max_result_bytes);
                            // Progress the attempt sent before its result is stored first.
                            reports.written((job_id, r.attempt, r.epoch)).await;
                            scheduler.result(id, token, outcome).await
                        }
                        Err(_) => {
                            tracing::warn!(session = id, job.id = %r.job_id, "ignoring a result for no job");
                            Ok(())
                        }
                    },
                    Some(worker_message::Message::Release(r)) => match r.job_id.parse::<JobId>() {
                        Ok(job_id) => {
                            let token = Token {
                                job_id,
                                attempt: r.attempt,
                                epoch: r.epoch,
                            };
                            // A handed-back attempt's last checkpoint is the next one's start.
                            reports.written((job_id, r.attempt, r.epoch)).await;
                            scheduler.release(id, token).await
                        }
                        Err(_) => Ok(()),
                    },
                    Some(worker_message::Message::Drain(_)) => scheduler.drain(id).await,
                    Some(worker_message::Message::Hello(_)) => break "a second hello".into(),
                    Some(worker_message::Message::Progress(p)) => {
                        reports.add(id, p);
                        Ok(())
                    }
                    None => Ok(()),
                };
                if forwarded.is_err() {
                    break "the scheduler stopped".into();
                }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > interval * MISSED_HEARTBEATS {
                    break format!("silent for {MISSED_HEARTBEATS} heartbeat intervals");
                }
                if sent.saturating_sub(acked) > u64::from(MISSED_HEARTBEATS) {
                    break format!(
                        "not reading: {} of our heartbeats unacknowledged",
                        sent - acked
                    );
                }
                sent += 1;
                // A full channel drops the heartbeat; the missing ack then tells.
                let _ = outbound.try_send(message(coordinator_message::Message::Heartbeat(
                    v1::Heartbeat {
                        sequence: sent,
                        sent_at: Some(timestamp(now_ms())),
                        ack: received,
                    },
                )));
            }
        }
    };
    // What the attempts reported before the stream ended is stored before they end.
    reports.close().await;
    let _ = scheduler.disconnect(id, reason).await;
}

/// What the scheduler sends, as the wire carries it.
fn to_wire(out: ToWorker) -> CoordinatorMessage {
    message(match out {
        ToWorker::Assign(dispatch) => {
            coordinator_message::Message::Assignment(assignment(*dispatch))
        }
        ToWorker::Stop {
            job_id,
            attempt,
            epoch,
            reason,
        } => coordinator_message::Message::Cancel(v1::CancelAssignment {
            job_id: job_id.to_string(),
            attempt,
            epoch,
            reason,
        }),
    })
}

fn assignment(d: Dispatch) -> v1::Assignment {
    v1::Assignment {
        job_id: d.job_id.to_string(),
        attempt: d.attempt,
        epoch: d.epoch,
        queue: d.queue,
        kind: d.kind,
        payload: d.payload,
        // The handler is told the sooner of the job's deadline and the attempt's timeout.
        deadline: d.ends_ms.map(timestamp),
        traceparent: d.traceparent,
        tracestate: d.tracestate,
        dependency_outputs: d
            .dependency_outputs
            .into_iter()
            .map(|(id, output)| (id.to_string(), output))
            .collect(),
        labels: d.labels.into_iter().collect(),
        group_id: d.group_id.unwrap_or_default(),
        tenant_id: d.tenant_id.unwrap_or_default(),
        max_attempts: d.max_attempts,
        checkpoint: d.checkpoint.unwrap_or_default(),
    }
}

/// An output over the limit fails its attempt, for good: storing it would make every read of
/// the job too large to answer, and running it again would make the same output.
fn bounded(outcome: Outcome, max_result_bytes: usize) -> Outcome {
    match outcome {
        Outcome::Succeeded(output) if output.len() > max_result_bytes => Outcome::Failed {
            message: format!(
                "its output of {} bytes is over the coordinator's limit of {max_result_bytes} bytes (--max-result-bytes)",
                output.len()
            ),
            retryable: false,
            retry_after_ms: None,
            cancelled: false,
        },
        other => other,
    }
}

/// How a worker says an attempt ended.
fn outcome(outcome: Option<v1::attempt_result::Outcome>) -> Outcome {
    match outcome {
        Some(v1::attempt_result::Outcome::Output(output)) => Outcome::Succeeded(output),
        Some(v1::attempt_result::Outcome::Failure(failure)) => Outcome::Failed {
            message: failure.message,
            retryable: failure.retryable,
            retry_after_ms: failure
                .retry_after
                .and_then(|d| Duration::try_from(d).ok().map(|d| d.as_millis() as i64)),
            cancelled: failure.cancelled,
        },
        None => Outcome::Failed {
            message: "the worker sent a result with no outcome".into(),
            retryable: true,
            retry_after_ms: None,
            cancelled: false,
        },
    }
}
