//! The worker's side of `WorkerService.Connect` (see the header of `workers.proto`): one task
//! owns the stream, the running handlers (a `JoinSet`) and their slots, and `select!`s over
//! what the coordinator sends, handlers that return, the heartbeat ticker and shutdown.
//! A lost stream is replaced with a new one after a backoff, until shutdown: to the next of the
//! configured coordinators (round robin), presenting the attempts still running.

use std::{
    collections::{HashMap, HashSet},
    error::Error as StdError,
    time::Duration,
};

use switchyard_proto::v1::{
    Assignment, AttemptResult, CoordinatorMessage, Credit, Drain, Heartbeat, HeldAttempt, Hello,
    Welcome, WorkerMessage, attempt_result::Outcome, coordinator_message, worker_message::Message,
    worker_service_client::WorkerServiceClient,
};
use tokio::{
    sync::mpsc,
    task::{self, JoinError, JoinSet},
    time::{Instant, MissedTickBehavior},
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Streaming, transport::Endpoint};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    ConnectionState, Error, Worker, WorkerConfig,
    backoff::Backoff,
    job::{self, AttemptId, Handler, JobContext, JobResult},
    progress,
    slots::{Admission, ReleaseReason, RunningJob, Slots},
};

/// Connecting, opening the stream and getting `Welcome` must take no longer than this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the worker ends its half of a stream, how long it waits at most for the coordinator
/// to end the other half (which tells that everything sent was read).
const CLOSE_WAIT_MAX: Duration = Duration::from_secs(5);
/// When `run` ends, how long handlers whose tokens fired get to return before being aborted.
const STOP_WAIT: Duration = Duration::from_secs(1);
/// Largest message either way (a payload is at most 1 MiB, but an assignment also carries the
/// outputs of its dependencies).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Silence for this many of the coordinator's heartbeat intervals means the stream is dead.
const MISSED_HEARTBEATS: u32 = 3;
/// How long handlers of a lost stream go on before the worker hears a coordinator's own
/// `Welcome.reconnect_grace` (the coordinator's default).
const DEFAULT_RECONNECT_GRACE: Duration = Duration::from_secs(10);

/// Why a stream ended badly. Only logged: the worker reconnects.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("cannot connect")]
    Connect(#[source] tonic::transport::Error),
    #[error("the coordinator refused the stream: {}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    #[error("the stream failed: {}: {}", .0.code(), .0.message())]
    Failed(tonic::Status),
    #[error("the coordinator ended the stream")]
    Ended,
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("no welcome within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("nothing heard from the coordinator for {0:?}")]
    Silent(Duration),
    #[error("the stream took no message for {0:?}")]
    Stuck(Duration),
    #[error("the stream is closed")]
    Closed,
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The worker is shut down (drained, or shutdown came while it was not connected).
    Stopped,
    /// The stream is gone or was never welcomed: reconnect after a backoff.
    Lost { welcomed: bool },
    /// The coordinator refused the hello as invalid: no use trying again.
    Refused(String),
}

/// What the serving loop does after one event.
enum Flow {
    Continue,
    /// The coordinator goes away for a moment: keep the handlers, close, and come back.
    Hold,
    /// End our half of the stream, wait for the coordinator to end its half, then `End`.
    Close(End),
}

pub(crate) async fn run(worker: Worker, shutdown: CancellationToken) -> Result<(), Error> {
    let Worker {
        config,
        handlers,
        state,
    } = worker;
    config.validate()?;
    if handlers.is_empty() {
        // An empty kinds list in `Hello` means "every kind": a worker without handlers would
        // take every job and fail it.
        return Err(Error::InvalidConfig("no handlers registered".into()));
    }
    let endpoints = config
        .coordinators
        .iter()
        .map(|url| {
            let endpoint = switchyard_client::endpoint(url, config.tls.as_ref())
                .map_err(Error::InvalidUrl)?
                .connect_timeout(HANDSHAKE_TIMEOUT)
                .tcp_nodelay(true);
            Ok((url.trim().to_owned(), endpoint))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let mut kinds: Vec<String> = handlers.keys().cloned().collect();
    kinds.sort();

    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    // Handlers' own calls (child jobs) share one lazily opened connection per coordinator, and
    // move on to the next coordinator as the client does when theirs cannot be reached.
    let coordinator = {
        let client = switchyard_client::Client::connect_lazy(
            config.coordinators.join(","),
            config.tls.as_ref(),
        )
        .map_err(Error::InvalidUrl)?;
        match config.token.as_deref() {
            Some(token) => client
                .with_token(token)
                .map_err(|e| Error::InvalidConfig(e.to_string()))?,
            None => client,
        }
    };
    // Each running attempt's slot is on it at most once (see `progress.rs`); handlers that
    // outlive their stream keep theirs, hence the room.
    let (progress_queue, progress) = mpsc::channel((config.slots as usize).saturating_mul(2) + 64);
    let mut runner = Runner {
        progress_queue,
        progress,
        slots: Slots::new(config.slots),
        tasks: JoinSet::new(),
        streams: 0,
        welcomes: 0,
        late: Vec::new(),
        held_since: None,
        grace: DEFAULT_RECONNECT_GRACE,
        result_limit: config.max_result_bytes,
        config,
        kinds,
        handlers,
        state,
        coordinator,
        endpoints,
        at: 0,
    };
    let mut refused = None;
    loop {
        match runner.stream(&shutdown).await {
            End::Stopped => break,
            End::Lost { welcomed } => {
                if welcomed {
                    backoff.reset();
                }
                runner.move_on();
            }
            End::Refused(message) => {
                refused = Some(message);
                break;
            }
        }
        runner.state.send_replace(ConnectionState::Disconnected);
        let delay = backoff.next_delay();
        debug!(?delay, "reconnecting after a delay");
        if !runner.pause(delay, &shutdown).await {
            break;
        }
    }
    runner.stop().await;
    runner.state.send_replace(ConnectionState::Stopped);
    if let Some(message) = refused {
        return Err(Error::Refused {
            coordinator: runner.address().to_owned(),
            message,
        });
    }
    info!("worker stopped");
    Ok(())
}

/// Everything one worker owns across its streams.
struct Runner {
    config: WorkerConfig,
    kinds: Vec<String>,
    handlers: HashMap<String, Handler>,
    state: tokio::sync::watch::Sender<ConnectionState>,
    /// Each coordinator's address, as configured, and its endpoint.
    endpoints: Vec<(String, Endpoint)>,
    /// The coordinator the next stream opens to (an index into `endpoints`).
    at: usize,
    coordinator: switchyard_client::Client,
    slots: Slots<task::Id>,
    tasks: JoinSet<JobResult>,
    /// Streams opened so far; the current one's number.
    streams: u64,
    /// Streams welcomed so far.
    welcomes: u64,
    /// The largest output a result may carry now: this worker's limit and the coordinator's.
    result_limit: usize,
    /// Handlers' progress reports waiting to go out on the stream (see `progress.rs`).
    progress_queue: progress::Queue,
    progress: mpsc::Receiver<std::sync::Arc<progress::Slot>>,
    /// Results of handlers that returned between streams. They go out after the next hello:
    /// the coordinator's fence refuses those whose attempt has moved on (bounded by the
    /// slots, since each was a running handler).
    late: Vec<switchyard_proto::v1::AttemptResult>,
    /// When the handlers now detached lost their stream: past `grace` from then, the
    /// coordinator has given them to someone else, and they are stopped.
    held_since: Option<Instant>,
    /// How long the coordinator keeps a lost stream's attempts (its last `Welcome` said).
    grace: Duration,
}

/// The sending half of a stream: a bounded channel feeding the request body. A send that
/// cannot get through for as long as the stream may be silent means the stream is stuck.
struct Outbox {
    tx: mpsc::Sender<WorkerMessage>,
    patience: Duration,
}

impl Outbox {
    async fn send(&self, message: Message) -> Result<(), StreamError> {
        let message = WorkerMessage {
            message: Some(message),
        };
        match tokio::time::timeout(self.patience, self.tx.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StreamError::Closed),
            Err(_) => Err(StreamError::Stuck(self.patience)),
        }
    }
}

/// This side's heartbeat counter and the last sequence heard from the coordinator.
#[derive(Debug, Default)]
struct Heartbeats {
    sent: u64,
    ack: u64,
    /// The last of our heartbeats the coordinator acknowledged: everything sent before it
    /// has arrived.
    acked_by_peer: u64,
}

impl Heartbeats {
    fn next(&mut self) -> Message {
        self.sent += 1;
        Message::Heartbeat(Heartbeat {
            sequence: self.sent,
            sent_at: Some(std::time::SystemTime::now().into()),
            ack: self.ack,
        })
    }
}

impl Runner {
    /// The address of the coordinator the worker is (or is about to be) connected to.
    fn address(&self) -> &str {
        &self.endpoints[self.at].0
    }

    /// The stream to the current coordinator is gone or could not be opened: the next one
    /// is the next coordinator's, round robin (the same one when there is only one).
    fn move_on(&mut self) {
        if self.endpoints.len() > 1 {
            let from = self.at;
            self.at = (self.at + 1) % self.endpoints.len();
            info!(
                coordinator = %self.address(),
                from = %self.endpoints[from].0,
                "moving to the next coordinator"
            );
        }
    }

    /// Opens one stream, serves it until it ends, and says how it ended.
    async fn stream(&mut self, shutdown: &CancellationToken) -> End {
        if shutdown.is_cancelled() {
            return End::Stopped;
        }
        self.streams += 1;
        let stream = self.streams;
        self.state.send_replace(ConnectionState::Connecting);

        // Room for a result and a credit per slot, plus heartbeats and releases.
        let capacity = (self.config.slots as usize).saturating_mul(2) + 64;
        let (tx, rx) = mpsc::channel(capacity);
        // Handlers of a lost stream still run and hold their slots: they are presented for
        // re-adoption, with the results not yet confirmed; the coordinator's credit leaves
        // out the running ones, whose slots come back with `Credit` as they return.
        let hello = Hello {
            worker_id: self.config.worker_id.clone(),
            queues: self.config.queues.clone(),
            kinds: self.kinds.clone(),
            slots: self.config.slots,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            heartbeat_interval: self.config.heartbeat_interval.try_into().ok(),
            held: held_attempts(self.slots.held(), &self.late),
        };
        let free = self.slots.free();
        let held = hello.held.len();
        // The channel is new and empty: this cannot fail for lack of room.
        let _ = tx.try_send(WorkerMessage {
            message: Some(Message::Hello(hello)),
        });
        // Progress reported between streams goes before the results kept from then (the
        // coordinator ignores progress of an attempt that has ended), leaving room for every
        // result. Copies: the reports stay queued, for the welcomed stream to send (again).
        let waiting: Vec<_> = std::iter::from_fn(|| self.progress.try_recv().ok()).collect();
        for slot in waiting {
            if tx.capacity() > self.late.len()
                && let Some(report) = slot.waiting()
            {
                let _ = tx.try_send(WorkerMessage {
                    message: Some(Message::Progress(report)),
                });
            }
            slot.requeue(&self.progress_queue);
        }
        // Kept until the stream is welcomed: a failed handshake loses none of them.
        for result in &self.late {
            let _ = tx.try_send(WorkerMessage {
                message: Some(Message::Result(result.clone())),
            });
        }

        let (endpoint, token) = (self.endpoints[self.at].1.clone(), self.config.token.clone());
        let opening = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            handshake(&endpoint, rx, token.as_deref()),
        );
        tokio::pin!(opening);
        let handshake = loop {
            let give_up = self.held_since.map(|since| since + self.grace);
            tokio::select! {
                result = &mut opening => {
                    break result.unwrap_or(Err(StreamError::HandshakeTimeout(HANDSHAKE_TIMEOUT)));
                }
                () = shutdown.cancelled() => return End::Stopped,
                () = sleep_until_some(give_up) => self.give_up_held(),
            }
        };
        let (inbound, welcome) = match handshake {
            Ok(welcomed) => welcomed,
            // The hello is the same every time (but for its slots): a refusal is final.
            Err(StreamError::Refused(status)) if status.code() == tonic::Code::InvalidArgument => {
                error!(cause = %status.message(), "the coordinator refused this worker");
                return End::Refused(status.message().to_owned());
            }
            Err(err) => {
                warn!(
                    coordinator = %self.address(),
                    cause = %report(&err),
                    "cannot open a stream to the coordinator"
                );
                return End::Lost { welcomed: false };
            }
        };

        // The coordinator's pings set how long silence may last; ours go out at our own
        // interval (promised in `Hello`), or faster if the coordinator pings faster.
        let own = self.config.heartbeat_interval;
        let peer = welcome
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero());
        let send_every = peer.map_or(own, |peer| peer.min(own));
        let silence_limit = peer.unwrap_or(own).saturating_mul(MISSED_HEARTBEATS);

        let theirs = match welcome.max_result_bytes {
            0 => crate::config::DEFAULT_MAX_RESULT_BYTES,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        self.result_limit = self.config.max_result_bytes.min(theirs);
        if let Some(grace) = welcome
            .reconnect_grace
            .and_then(|d| Duration::try_from(d).ok())
        {
            self.grace = grace;
        }
        let adopted: HashSet<AttemptId> = welcome.adopted.iter().map(AttemptId::from).collect();
        let stopped = self.slots.adopt(stream, &adopted);
        self.held_since = None;
        if held > 0 {
            info!(
                held,
                adopted = adopted.len(),
                stopped,
                "presented the attempts held from the last stream"
            );
        }
        self.welcomes += 1;
        self.state.send_replace(ConnectionState::Connected {
            connection: self.welcomes,
            session_id: welcome.session_id.clone(),
        });
        info!(
            coordinator = %self.address(),
            session = %welcome.session_id,
            slots = free,
            "connected"
        );
        let outbox = Outbox {
            tx,
            patience: silence_limit,
        };
        self.serve(stream, inbound, outbox, send_every, silence_limit, shutdown)
            .instrument(info_span!("stream", session = %welcome.session_id))
            .await
    }

    /// The welcomed stream's loop.
    async fn serve(
        &mut self,
        stream: u64,
        mut inbound: Streaming<CoordinatorMessage>,
        outbox: Outbox,
        send_every: Duration,
        silence_limit: Duration,
        shutdown: &CancellationToken,
    ) -> End {
        let mut draining = false;
        let mut heartbeats = Heartbeats::default();
        let mut ticker = tokio::time::interval(send_every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let silence = tokio::time::sleep(silence_limit);
        tokio::pin!(silence);
        // Armed when draining starts.
        let grace = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(grace);
        // Results sent on this stream that the coordinator has not yet confirmed (by
        // acknowledging a heartbeat sent after them), with that heartbeat's number. If the
        // stream dies, they go out again on the next one: a result is never lost in a dying
        // stream, and the coordinator's fence refuses any it no longer wants.
        // The results kept from earlier streams went out right after the hello.
        // In the order sent, so their heartbeat numbers only grow: the confirmed ones are
        // always at the front (a scan of them all per turn was half the worker's CPU).
        let mut unconfirmed: std::collections::VecDeque<(
            u64,
            switchyard_proto::v1::AttemptResult,
        )> = std::mem::take(&mut self.late)
            .into_iter()
            .map(|r| (1, r))
            .collect();

        loop {
            while unconfirmed
                .front()
                .is_some_and(|(after, _)| *after <= heartbeats.acked_by_peer)
            {
                unconfirmed.pop_front();
            }
            let step: Result<Flow, StreamError> = tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        silence.as_mut().reset(Instant::now() + silence_limit);
                        self.on_message(stream, message, &outbox, &mut heartbeats, draining).await
                    }
                    Ok(None) => Err(StreamError::Ended),
                    Err(status) => Err(StreamError::Failed(status)),
                },
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    match self.on_returned(stream, joined, &outbox, draining).await {
                        Ok(sent) => {
                            if let Some(result) = sent {
                                unconfirmed.push_back((heartbeats.sent + 1, result));
                            }
                            if draining && self.slots.owed_to(stream) == 0 {
                                info!("drained: every running handler has returned");
                                Ok(Flow::Close(End::Stopped))
                            } else {
                                Ok(Flow::Continue)
                            }
                        }
                        Err(err) => Err(err),
                    }
                }
                _ = ticker.tick() => outbox.send(heartbeats.next()).await.map(|()| Flow::Continue),
                Some(slot) = self.progress.recv() => send_progress(&outbox, &slot).await.map(|()| Flow::Continue),
                () = &mut silence => Err(StreamError::Silent(silence_limit)),
                () = shutdown.cancelled(), if !draining => {
                    draining = true;
                    self.state.send_replace(ConnectionState::Draining);
                    let running = self.slots.owed_to(stream);
                    info!(running, grace = ?self.config.drain_grace, "draining");
                    grace.as_mut().reset(Instant::now() + self.config.drain_grace);
                    let drain = Message::Drain(Drain { reason: "worker shutting down".into() });
                    match outbox.send(drain).await {
                        Ok(()) if running == 0 => Ok(Flow::Close(End::Stopped)),
                        Ok(()) => Ok(Flow::Continue),
                        Err(err) => Err(err),
                    }
                }
                () = &mut grace, if draining => {
                    let released = self.slots.detach(stream);
                    info!(released = released.len(), "drain grace over: giving back unfinished jobs");
                    // Their last checkpoints first: the next attempts start from them.
                    match self.flush_progress(&outbox).await {
                        Ok(()) => release_all(&outbox, released).await.map(|()| Flow::Close(End::Stopped)),
                        Err(err) => Err(err),
                    }
                }
            };
            match step {
                Ok(Flow::Continue) => {}
                Ok(Flow::Hold) => {
                    // What the coordinator may not have committed goes out again, for the
                    // next one's fence to judge.
                    for (_, result) in unconfirmed {
                        self.keep_late(result);
                    }
                    close(inbound, outbox, silence_limit.min(CLOSE_WAIT_MAX)).await;
                    return End::Lost { welcomed: true };
                }
                Ok(Flow::Close(end)) => {
                    close(inbound, outbox, silence_limit.min(CLOSE_WAIT_MAX)).await;
                    return end;
                }
                Err(err) => {
                    // The handlers go on: the coordinator keeps their attempts for the grace
                    // period, and the next stream presents them. Results it may not have
                    // received go out on the next stream, for its fence to judge.
                    let held = if draining {
                        self.slots.detach(stream).len()
                    } else {
                        self.lose(stream)
                    };
                    warn!(
                        cause = %report(&err),
                        held,
                        draining,
                        resend = unconfirmed.len(),
                        "stream lost"
                    );
                    for (_, result) in unconfirmed {
                        self.keep_late(result);
                    }
                    return if draining {
                        End::Stopped
                    } else {
                        End::Lost { welcomed: true }
                    };
                }
            }
        }
    }

    async fn on_message(
        &mut self,
        stream: u64,
        message: CoordinatorMessage,
        outbox: &Outbox,
        heartbeats: &mut Heartbeats,
        draining: bool,
    ) -> Result<Flow, StreamError> {
        use coordinator_message::Message as In;
        match message.message {
            Some(In::Assignment(assignment)) => {
                self.on_assignment(stream, assignment, outbox, draining)
                    .await?;
            }
            Some(In::Cancel(cancel)) => {
                let found = self
                    .slots
                    .cancel(stream, &cancel.job_id, cancel.attempt, cancel.epoch);
                debug!(
                    job.id = %cancel.job_id,
                    job.attempt = cancel.attempt,
                    job.epoch = cancel.epoch,
                    reason = %cancel.reason,
                    found,
                    "cancel"
                );
            }
            Some(In::Heartbeat(heartbeat)) => {
                heartbeats.ack = heartbeat.sequence;
                heartbeats.acked_by_peer = heartbeats.acked_by_peer.max(heartbeat.ack);
            }
            Some(In::Drain(drain)) => {
                // The coordinator is going away: stop the handlers, give their jobs back, and
                // reconnect (to it or its successor) after a backoff.
                let released = self.slots.detach(stream);
                info!(reason = %drain.reason, released = released.len(), "the coordinator drains");
                self.flush_progress(outbox).await?;
                release_all(outbox, released).await?;
                let end = if draining {
                    End::Stopped
                } else {
                    End::Lost { welcomed: true }
                };
                return Ok(Flow::Close(end));
            }
            Some(In::Welcome(_)) => warn!("ignoring a second welcome on the stream"),
            Some(In::Hold(hold)) => {
                let held = self.lose(stream);
                info!(reason = %hold.reason, held, "the coordinator asks to hold on; reconnecting");
                if draining {
                    return Ok(Flow::Close(End::Stopped));
                }
                return Ok(Flow::Hold);
            }
            // A message from a newer coordinator that this worker does not know.
            None => debug!("ignoring an empty coordinator message"),
        }
        Ok(Flow::Continue)
    }

    async fn on_assignment(
        &mut self,
        stream: u64,
        assignment: Assignment,
        outbox: &Outbox,
        draining: bool,
    ) -> Result<(), StreamError> {
        let handler = self.handlers.get(&assignment.kind).cloned();
        match self.slots.admit(draining, handler.is_some()) {
            Admission::Release(reason) => {
                match reason {
                    ReleaseReason::Draining => debug!(
                        job.id = %assignment.job_id,
                        "releasing an assignment that came while draining"
                    ),
                    ReleaseReason::NoFreeSlot => warn!(
                        job.id = %assignment.job_id,
                        slots = self.config.slots,
                        "releasing an assignment beyond this worker's slots"
                    ),
                }
                let release = AttemptId::of(&assignment).release();
                outbox.send(Message::Release(release)).await
            }
            Admission::NoHandler => {
                warn!(job.id = %assignment.job_id, kind = %assignment.kind, "no handler for kind");
                let result = job::no_handler(AttemptId::of(&assignment), &assignment.kind);
                outbox.send(Message::Result(result)).await?;
                outbox.send(Message::Credit(Credit { slots: 1 })).await
            }
            Admission::Run => {
                if let Some(handler) = handler {
                    self.start(stream, assignment, handler);
                }
                Ok(())
            }
        }
    }

    /// Starts a handler in the `JoinSet`, holding one slot until it returns.
    fn start(&mut self, stream: u64, mut assignment: Assignment, handler: Handler) {
        use switchyard_telemetry::{Attribute, Kind};
        let id = AttemptId::of(&assignment);
        let token = CancellationToken::new();
        // The attempt's span joins the job's trace under the coordinator's dispatch; calls
        // the handler makes (child jobs) carry this span on.
        let parent =
            switchyard_telemetry::context_from(&assignment.traceparent, &assignment.tracestate);
        let mut attempt_span = switchyard_telemetry::start(
            &switchyard_telemetry::tracer("switchyard-worker"),
            "switchyard.attempt",
            Kind::Consumer,
            &parent,
            vec![
                Attribute::new("switchyard.job.id", assignment.job_id.clone()),
                Attribute::new("switchyard.job.kind", assignment.kind.clone()),
                Attribute::new("switchyard.attempt", i64::from(assignment.attempt)),
                Attribute::new("switchyard.worker.id", self.config.worker_id.clone()),
            ],
        );
        let (traceparent, tracestate) = switchyard_telemetry::traceparent_of(&attempt_span);
        if !traceparent.is_empty() {
            assignment.traceparent = traceparent;
            assignment.tracestate = tracestate;
        }
        let ctx =
            JobContext::from_assignment(assignment, token.clone(), Some(self.coordinator.clone()))
                .reporting_to(self.progress_queue.clone());
        let span = info_span!(
            "job",
            job.id = %ctx.job_id,
            job.kind = %ctx.kind,
            job.attempt = ctx.attempt,
            job.epoch = id.epoch,
            queue = %ctx.queue,
            traceparent = %ctx.traceparent,
        );
        let job = RunningJob {
            id,
            stream,
            token: token.clone(),
        };
        debug!(parent: &span, "starting");
        let grace = self.config.cancel_grace;
        let handle = self.tasks.spawn(
            async move {
                use switchyard_telemetry::Span as _;
                let result = run_handler(handler, ctx, token, grace).await;
                if let Err(err) = &result {
                    attempt_span.set_status(switchyard_telemetry::Status::error(err.to_string()));
                }
                attempt_span.end();
                result
            }
            .instrument(span),
        );
        // The task's completion is only observed by this loop, so it is registered in time.
        self.slots.insert(handle.id(), job);
    }

    /// A handler returned (or panicked): send its result if its stream is this one, and give
    /// its slot back.
    async fn on_returned(
        &mut self,
        stream: u64,
        joined: Result<(task::Id, JobResult), JoinError>,
        outbox: &Outbox,
        draining: bool,
    ) -> Result<Option<switchyard_proto::v1::AttemptResult>, StreamError> {
        let (id, outcome) = match joined {
            Ok((id, result)) => (id, Ok(result)),
            Err(err) => (err.id(), Err(err)),
        };
        let Some(job) = self.slots.remove(id) else {
            return Ok(None);
        };
        if job.stream != stream {
            // Its stream is gone and the coordinator has likely given the job to someone
            // else; the fence there decides, so the result goes out all the same.
            debug!(
                job.id = %job.id.job_id,
                job.attempt = job.id.attempt,
                job.epoch = job.id.epoch,
                "a handler of an earlier stream returned; reporting it for the coordinator to judge"
            );
        }
        let panicked = matches!(&outcome, Err(err) if err.is_panic());
        let result = job::fit(job::attempt_result(job.id, outcome), self.result_limit);
        log_outcome(&result, panicked);
        // What the handler reported before it returned goes first: the coordinator ignores
        // progress of an attempt that has ended.
        if let Err(err) = self.flush_progress(outbox).await {
            self.keep_late(result);
            return Err(err);
        }
        if let Err(err) = outbox.send(Message::Result(result.clone())).await {
            // The stream died under it: the result goes out on the next one.
            self.keep_late(result);
            return Err(err);
        }
        // A draining worker takes no more work: its freed slots are not offered.
        if !draining {
            outbox.send(Message::Credit(Credit { slots: 1 })).await?;
        }
        Ok(Some(result))
    }

    /// `stream` is gone: its handlers are held for the next one (stopped at once if the
    /// coordinator keeps nothing for a lost stream). Returns how many.
    fn lose(&mut self, stream: u64) -> usize {
        let held = self.slots.hold(stream);
        if held > 0 && self.held_since.is_none() {
            self.held_since = Some(Instant::now());
        }
        if self.grace.is_zero() {
            self.slots.cancel_detached();
        }
        held
    }

    /// Sends every progress report waiting: before a result or a release, since the
    /// coordinator ignores progress of an attempt that has ended.
    async fn flush_progress(&mut self, outbox: &Outbox) -> Result<(), StreamError> {
        while let Ok(slot) = self.progress.try_recv() {
            send_progress(outbox, &slot).await?;
        }
        Ok(())
    }

    /// No coordinator welcomed this worker within the grace: its held attempts have been
    /// given to others, so their handlers stop.
    fn give_up_held(&mut self) {
        let stopped = self.slots.cancel_detached();
        warn!(grace = ?self.grace, stopped, "no coordinator within the reconnect grace: stopping the held handlers");
        self.held_since = None;
    }

    /// Keeps a result for the next stream. Bounded: each is an attempt this worker ran since
    /// the last stream, so twice the slots is room enough; beyond that the oldest are dropped
    /// (the coordinator has re-queued those attempts anyway).
    fn keep_late(&mut self, result: switchyard_proto::v1::AttemptResult) {
        let limit = 2 * self.config.slots as usize;
        if self.late.len() >= limit {
            self.late.remove(0);
        }
        self.late.push(result);
    }

    /// Between streams: waits `delay`, freeing the slots of handlers that return meanwhile.
    /// False if shutdown came first.
    async fn pause(&mut self, delay: Duration, shutdown: &CancellationToken) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            let give_up = self.held_since.map(|since| since + self.grace);
            tokio::select! {
                () = &mut sleep => return true,
                () = shutdown.cancelled() => return false,
                () = sleep_until_some(give_up) => self.give_up_held(),
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    let (id, outcome) = match joined {
                        Ok((id, result)) => (id, Ok(result)),
                        Err(err) => (err.id(), Err(err)),
                    };
                    if let Some(job) = self.slots.remove(id) {
                        let result = job::attempt_result(job.id, outcome);
                        self.keep_late(job::fit(result, self.result_limit));
                    }
                }
            }
        }
    }

    /// The end of `run`: fires every handler's token, gives them a moment to return, and
    /// aborts the rest.
    async fn stop(&mut self) {
        self.state.send_replace(ConnectionState::Draining);
        self.slots.cancel_all();
        let wait = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_WAIT, wait).await.is_err() {
            warn!(
                running = self.tasks.len(),
                "aborting handlers that did not return after being cancelled"
            );
        }
        self.tasks.shutdown().await;
    }
}

/// Connects, opens the stream (whose first message, `Hello`, is already in `rx`) and waits
/// for `Welcome`.
async fn handshake(
    endpoint: &Endpoint,
    rx: mpsc::Receiver<WorkerMessage>,
    token: Option<&str>,
) -> Result<(Streaming<CoordinatorMessage>, Welcome), StreamError> {
    let channel = endpoint.connect().await.map_err(StreamError::Connect)?;
    let mut client = WorkerServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(Ok(value)) = token.map(|t| format!("Bearer {t}").parse()) {
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = client
        .connect(request)
        .await
        .map_err(StreamError::Refused)?
        .into_inner();
    match inbound.message().await.map_err(StreamError::Refused)? {
        Some(CoordinatorMessage {
            message: Some(coordinator_message::Message::Welcome(welcome)),
        }) => Ok((inbound, welcome)),
        Some(other) => Err(StreamError::Protocol(format!(
            "expected Welcome first, got {other:?}"
        ))),
        None => Err(StreamError::Ended),
    }
}

/// Runs a handler until it returns. Its token fires when its deadline passes or the
/// coordinator cancels it; from then on it has `grace` to return by itself, and is abandoned
/// (its future dropped, which stops it at its next await) after that.
async fn run_handler(
    handler: Handler,
    ctx: JobContext,
    token: CancellationToken,
    grace: Duration,
) -> JobResult {
    let remaining = ctx.remaining();
    // Called inside the task, so that a panic while building the future is caught as well.
    let job = handler(ctx);
    tokio::pin!(job);
    let deadline = async {
        match remaining {
            Some(remaining) => tokio::time::sleep(remaining).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        result = &mut job => return result,
        () = token.cancelled() => debug!("cancelled"),
        () = deadline => {
            debug!("deadline passed: cancelling");
            token.cancel();
        }
    }
    tokio::select! {
        biased;
        result = &mut job => result,
        () = tokio::time::sleep(grace) => {
            warn!(?grace, "abandoning a handler that ignored its cancellation");
            Err(crate::JobError::cancelled(format!(
                "abandoned: it did not stop within {grace:?} of being cancelled"
            )))
        }
    }
}

/// Sends the report waiting in an attempt's slot, if it is still there.
async fn send_progress(outbox: &Outbox, slot: &progress::Slot) -> Result<(), StreamError> {
    match slot.take() {
        Some(report) => outbox.send(Message::Progress(report)).await,
        None => Ok(()),
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn release_all(outbox: &Outbox, jobs: Vec<AttemptId>) -> Result<(), StreamError> {
    for id in jobs {
        outbox.send(Message::Release(id.release())).await?;
    }
    Ok(())
}

/// What a reconnecting hello presents (see workers.proto point 7): the attempts still running
/// and those whose results were not confirmed, each with its whole token, so that the
/// coordinator adopts only what it handed out itself.
fn held_attempts(running: Vec<AttemptId>, late: &[AttemptResult]) -> Vec<HeldAttempt> {
    let running = running.into_iter().map(|id| id.held(false));
    let finished = late.iter().map(|r| AttemptId::from(r).held(true));
    running.chain(finished).collect()
}

/// Ends our half of the stream (flushing what is queued) and waits, at most `limit`, for the
/// coordinator to end its half: then it has read everything sent.
async fn close(mut inbound: Streaming<CoordinatorMessage>, outbox: Outbox, limit: Duration) {
    drop(outbox);
    let rest = async {
        while let Ok(Some(message)) = inbound.message().await {
            debug!(?message, "ignoring a message after closing");
        }
    };
    if tokio::time::timeout(limit, rest).await.is_err() {
        debug!(
            ?limit,
            "the coordinator did not end the stream; dropping it"
        );
    }
}

fn log_outcome(result: &AttemptResult, panicked: bool) {
    let (id, attempt) = (&result.job_id, result.attempt);
    match &result.outcome {
        Some(Outcome::Failure(failure)) if panicked => {
            error!(job.id = %id, job.attempt = attempt, error = %failure.message, "handler panicked")
        }
        Some(Outcome::Failure(failure)) => info!(
            job.id = %id,
            job.attempt = attempt,
            error = %failure.message,
            retryable = failure.retryable,
            cancelled = failure.cancelled,
            "failed"
        ),
        Some(Outcome::Output(output)) => {
            debug!(job.id = %id, job.attempt = attempt, bytes = output.len(), "succeeded")
        }
        None => {}
    }
}

/// An error and its causes, one after another.
fn report(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_presents_each_held_attempt_with_its_epoch() {
        let id = |job_id: &str, attempt, epoch| AttemptId {
            job_id: job_id.into(),
            attempt,
            epoch,
        };
        // Attempt 1 of `a` runs twice: once from epoch 3 (its handler ignored the cancel) and
        // again from epoch 4; attempt 2 of `b` returned between streams.
        let late = job::attempt_result(id("b", 2, 4), Ok(Ok(b"done".to_vec())));
        let held = held_attempts(vec![id("a", 1, 3), id("a", 1, 4)], &[late]);
        let held: Vec<_> = held
            .iter()
            .map(|h| (h.job_id.as_str(), h.attempt, h.epoch, h.finished))
            .collect();
        assert_eq!(
            held,
            [("a", 1, 3, false), ("a", 1, 4, false), ("b", 2, 4, true)]
        );
    }
}
