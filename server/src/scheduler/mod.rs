//! The scheduler: one task that owns, in memory, the ready queues, the delayed jobs, the worker
//! sessions with their credits, and which attempt of which job runs where.
//!
//! It is a folder of parts, each owning its state: `lanes` (ready jobs and fairness),
//! `timers` (delays, deadlines, attempt ends, on `tokio::time`), `attempts` (the one table of
//! handed-out attempts), `sessions` (workers and credits), `quotas` (semaphores and rate
//! limits) and `explain` (`blocked_on`). `core` makes the decisions over them and returns what
//! to do; the runner here is the thin loop that does it.
//!
//! The runner wakes on a message (a submit, a result, a credit, a session coming or going) or
//! on the next timer, applies every message that is waiting, lets the core pick which ready
//! jobs go to which sessions, and commits all of that in one store transition. Only after the
//! commit does it send assignments, build their spans and wake waiters, so nothing a worker or
//! a client sees is ahead of the database. Nothing here polls the database.

mod attempts;
mod core;
mod explain;
mod lanes;
mod quotas;
pub mod schedules;
mod sessions;
mod timers;

#[cfg(test)]
mod tests;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, UNIX_EPOCH},
};

use switchyard_telemetry::{Attribute, Kind, Span, Status};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use self::core::{Held, Token};
pub use sessions::SessionInfo;

use self::core::{Core, Effect};
use crate::{
    domain::{Blocked, Dispatch, JobId, Outcome, Quota, ReadyJob, WorkerView, now_ms},
    error::{Error, Result},
    fanin::Notifier,
    store::{Recovered, RetryPolicy, Store, Transitions},
    telemetry::Metrics,
};

pub(crate) use timers::Clock;

/// The scheduler's maps, keyed by job ids the coordinator made (and small integers): foldhash
/// instead of SipHash, which was a tenth of an enqueue with a deep queue.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Messages the scheduler may hold unread before senders wait.
const INBOX: usize = 8192;
/// Messages applied per round at most.
const ROUND: usize = 4096;

/// What goes to a worker session, in the coordinator's terms; its stream converts it.
#[derive(Debug, Clone, PartialEq)]
pub enum ToWorker {
    Assign(Box<Dispatch>),
    Stop {
        job_id: JobId,
        attempt: u32,
        epoch: u64,
        reason: String,
    },
}

/// The runner's hold on a session's stream.
#[derive(Debug, Clone)]
pub struct Link {
    /// Bounded by the session's slots (plus room for stops): credits bound what is
    /// outstanding, so a full channel means the worker stopped reading.
    pub outbound: mpsc::Sender<ToWorker>,
    /// Fired to end the session (a slow reader, or a newer session of the same worker).
    pub kill: CancellationToken,
}

pub(crate) enum Message {
    Enqueue(Vec<ReadyJob>),
    /// Queued jobs waiting for their dependencies, with their deadlines.
    Wait(Vec<(JobId, i64)>),
    Remove(Vec<JobId>),
    Connect {
        info: SessionInfo,
        /// Attempts the worker says it still holds, and whether each has finished.
        held: Vec<Held>,
        link: Link,
        reply: oneshot::Sender<Vec<Held>>,
    },
    Credit {
        session: u64,
        slots: u32,
    },
    Result {
        session: u64,
        token: Token,
        outcome: Outcome,
    },
    Release {
        session: u64,
        token: Token,
    },
    Drain {
        session: u64,
    },
    /// Attempts the store has already ended (cancelled): their workers are told to stop.
    Stop {
        attempts: Vec<(JobId, u32)>,
        reason: String,
    },
    Disconnect {
        session: u64,
        reason: String,
    },
    Workers {
        reply: oneshot::Sender<Vec<WorkerView>>,
    },
    Explain {
        job: ReadyJob,
        reply: oneshot::Sender<Option<Blocked>>,
    },
    SetQuota(Quota),
    Pause {
        queue: String,
        paused: bool,
    },
    Held {
        scopes: Vec<String>,
        reply: oneshot::Sender<Vec<u32>>,
    },
}

/// A cheap handle to the scheduler task.
#[derive(Clone)]
pub struct Scheduler {
    inbox: mpsc::Sender<Message>,
    refused: Arc<AtomicU64>,
}

impl Scheduler {
    /// Starts the scheduler with what the store recovered. It stops when `shutdown` fires;
    /// the returned handle of the task is for joining it.
    pub fn start(
        store: Arc<dyn Store>,
        notifier: Notifier,
        metrics: Metrics,
        retry: RetryPolicy,
        reconnect_grace: Duration,
        recovered: Recovered,
        shutdown: CancellationToken,
    ) -> (Scheduler, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(INBOX);
        let refused = Arc::new(AtomicU64::new(0));
        let mut core = Core::new(Clock::System);
        core.set_reconnect_grace(reconnect_grace);
        core.set_epoch(recovered.epoch);
        for quota in &recovered.quotas {
            core.set_quota(quota);
        }
        // Before the ready jobs, so that their permits count when those are picked.
        core.recovered(recovered.running);
        for job in recovered.ready {
            core.enqueue(job);
        }
        for (id, deadline_ms) in recovered.waiting {
            core.wait(id, deadline_ms);
        }
        for queue in recovered.paused {
            core.pause(queue, true);
        }
        let task = tokio::spawn(
            Runner {
                core,
                links: HashMap::default(),
                dead: Vec::new(),
                store,
                notifier,
                metrics,
                retry,
                refused: refused.clone(),
                tracer: switchyard_telemetry::tracer("switchyard-coordinator"),
                inbox: rx,
                shutdown,
            }
            .run(),
        );
        (Scheduler { inbox: tx, refused }, task)
    }

    /// Results refused since start because their attempt was stale.
    pub fn refused_results(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.inbox
            .send(message)
            .await
            .map_err(|_| Error::ShuttingDown)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Message) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }

    /// New ready jobs (after their submit committed).
    pub async fn enqueue(&self, jobs: Vec<ReadyJob>) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.send(Message::Enqueue(jobs)).await
    }

    /// New jobs stored waiting for their dependencies, with their deadlines: each ends at its
    /// deadline unless it became ready first.
    pub async fn wait(&self, jobs: Vec<(JobId, i64)>) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.send(Message::Wait(jobs)).await
    }

    /// Jobs that left the queue without running (cancelled while queued).
    pub async fn remove(&self, ids: Vec<JobId>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.send(Message::Remove(ids)).await
    }

    /// A new worker session; returns the held attempts it re-adopted.
    pub async fn connect(
        &self,
        info: SessionInfo,
        held: Vec<Held>,
        link: Link,
    ) -> Result<Vec<Held>> {
        self.ask(|reply| Message::Connect {
            info,
            held,
            link,
            reply,
        })
        .await
    }

    pub async fn credit(&self, session: u64, slots: u32) -> Result<()> {
        self.send(Message::Credit { session, slots }).await
    }

    pub async fn result(&self, session: u64, token: Token, outcome: Outcome) -> Result<()> {
        self.send(Message::Result {
            session,
            token,
            outcome,
        })
        .await
    }

    pub async fn release(&self, session: u64, token: Token) -> Result<()> {
        self.send(Message::Release { session, token }).await
    }

    pub async fn drain(&self, session: u64) -> Result<()> {
        self.send(Message::Drain { session }).await
    }

    /// Tells the workers of these attempts (already ended in the store) to stop them.
    pub async fn stop(&self, attempts: Vec<(JobId, u32)>, reason: String) -> Result<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        self.send(Message::Stop { attempts, reason }).await
    }

    /// The session is gone: its jobs go back to the queue.
    pub async fn disconnect(&self, session: u64, reason: String) -> Result<()> {
        self.send(Message::Disconnect { session, reason }).await
    }

    pub async fn workers(&self) -> Result<Vec<WorkerView>> {
        self.ask(|reply| Message::Workers { reply }).await
    }

    /// Why a ready job is not running, if it is not simply waiting for a free slot: its
    /// queue is paused, no worker serves it, or a quota holds it back.
    pub async fn explain(&self, job: ReadyJob) -> Result<Option<Blocked>> {
        self.ask(|reply| Message::Explain { job, reply }).await
    }

    /// A scope's limits changed (after the store committed them).
    pub async fn set_quota(&self, quota: Quota) -> Result<()> {
        self.send(Message::SetQuota(quota)).await
    }

    /// A queue was paused or resumed (after the store committed it).
    pub async fn pause(&self, queue: String, paused: bool) -> Result<()> {
        self.send(Message::Pause { queue, paused }).await
    }

    /// Permits held now in each scope.
    pub async fn held(&self, scopes: Vec<String>) -> Result<Vec<u32>> {
        self.ask(|reply| Message::Held { scopes, reply }).await
    }
}

type Tracer = switchyard_telemetry::BoxedTracer;

/// The thin loop around the core: receives, commits, and carries out the core's effects
/// (sends on worker streams, spans, metrics, wake-ups).
struct Runner {
    core: Core,
    /// Each live session's stream.
    links: HashMap<u64, Link>,
    /// Sessions to drop at the next round (their outbound channel was full or closed).
    dead: Vec<(u64, String)>,
    store: Arc<dyn Store>,
    notifier: Notifier,
    metrics: Metrics,
    retry: RetryPolicy,
    /// Stale results refused (shared with the handle, for `Stats`).
    refused: Arc<AtomicU64>,
    tracer: Tracer,
    inbox: mpsc::Receiver<Message>,
    shutdown: CancellationToken,
}

/// Transitions committing at once. The next round is gathered and handed to the store while
/// the previous one commits, so the scheduler's work overlaps the writer's; the writer may
/// then put both in one commit. What a round plans never depends on the outcome of one still
/// committing: assignments, retries and wake-ups happen only when a round has settled.
const IN_FLIGHT: usize = 2;

/// A transition handed to the store, with what it was (to undo if it fails).
type Committing =
    futures::future::BoxFuture<'static, (Transitions, Result<crate::store::TransitionOutcome>)>;

impl Runner {
    async fn run(mut self) {
        use futures::StreamExt;
        let mut messages = Vec::with_capacity(ROUND);
        let mut committing: futures::stream::FuturesOrdered<Committing> =
            futures::stream::FuturesOrdered::new();
        // After a failed commit, nothing new is handed to the store before this.
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let can_plan = committing.len() < IN_FLIGHT
                && retry_at.is_none_or(|at| at <= tokio::time::Instant::now());
            let busy = can_plan
                && (self.core.can_dispatch() || self.core.has_pending() || !self.dead.is_empty());
            if !busy {
                let wake = [self.core.next_wake(), retry_at]
                    .into_iter()
                    .flatten()
                    .min();
                let sleep = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = self.shutdown.cancelled() => break,
                    n = self.inbox.recv_many(&mut messages, ROUND) => {
                        if n == 0 {
                            break;
                        }
                    }
                    Some((ops, result)) = committing.next(), if !committing.is_empty() => {
                        if !self.settled(ops, result) {
                            retry_at = Some(tokio::time::Instant::now() + Duration::from_millis(100));
                        }
                    }
                    _ = sleep => {}
                }
            } else if self.shutdown.is_cancelled() {
                break;
            }
            if retry_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
                retry_at = None;
            }
            while messages.len() < ROUND {
                match self.inbox.try_recv() {
                    Ok(m) => messages.push(m),
                    Err(_) => break,
                }
            }

            for (session, reason) in std::mem::take(&mut self.dead) {
                self.core.drop_session(session, &reason);
            }
            for message in messages.drain(..) {
                self.apply(message);
            }
            // Expiry first: nothing is dispatched after its deadline.
            self.core.tick();
            self.core.pick();
            self.carry_out();
            self.publish();
            if committing.len() >= IN_FLIGHT || retry_at.is_some() {
                continue;
            }
            let Some(ops) = self.core.plan(self.retry) else {
                continue;
            };
            let store = self.store.clone();
            committing.push_back(Box::pin(async move {
                let result = store.transition(ops.clone()).await;
                (ops, result)
            }));
        }
        // What is committing now is waited for: its assignments are not sent (the sessions
        // are ending), but what it finished is woken.
        while let Some((ops, result)) = committing.next().await {
            self.settled(ops, result);
        }
        self.finish_up().await;
        tracing::debug!("scheduler stopped");
    }

    /// A transition the store answered: on success its effects are carried out and its
    /// waiters woken; on failure it is undone, to be planned again. Returns whether it
    /// committed.
    fn settled(
        &mut self,
        ops: Transitions,
        result: Result<crate::store::TransitionOutcome>,
    ) -> bool {
        match result {
            Ok(mut out) => {
                let terminal = std::mem::take(&mut out.terminal);
                self.core.settle(out);
                self.carry_out();
                self.publish();
                self.notifier.notify(&terminal);
                true
            }
            Err(err) => {
                tracing::error!(cause = %err, "committing scheduler transitions failed; retrying");
                self.core.unplan(ops);
                false
            }
        }
    }

    /// At shutdown, once every session has ended: what the workers reported last is
    /// committed. Sessions ending now are not lost: their workers hold on and come back to
    /// the next coordinator, which finds their attempts still running.
    async fn finish_up(&mut self) {
        let mut messages = Vec::new();
        while let Ok(m) = self.inbox.try_recv() {
            messages.push(m);
        }
        for message in messages {
            match message {
                Message::Disconnect { .. } | Message::Connect { .. } => {}
                other => self.apply(other),
            }
        }
        let Some(mut ops) = self.core.plan(self.retry) else {
            return;
        };
        ops.starts.clear();
        ops.expire.clear();
        if ops.is_empty() {
            return;
        }
        match self.store.transition(ops).await {
            Ok(out) => self.notifier.notify(&out.terminal),
            Err(err) => {
                tracing::warn!(cause = %err, "the last results could not be committed; their jobs are recovered as running")
            }
        }
    }

    /// Hands one message to the core, or answers it.
    fn apply(&mut self, message: Message) {
        let core = &mut self.core;
        match message {
            Message::Enqueue(jobs) => jobs.into_iter().for_each(|job| core.enqueue(job)),
            Message::Wait(jobs) => jobs
                .into_iter()
                .for_each(|(id, deadline_ms)| core.wait(id, deadline_ms)),
            Message::Remove(ids) => ids.into_iter().for_each(|id| drop(core.remove(id))),
            Message::Connect {
                info,
                held,
                link,
                reply,
            } => {
                let id = info.id;
                let adopted = core.connect(info, &held);
                self.metrics.readopted(adopted.len() as u64);
                self.links.insert(id, link);
                drop(reply.send(adopted));
            }
            Message::Credit { session, slots } => core.credit(session, slots),
            Message::Result {
                session,
                token,
                outcome,
            } => core.result(session, token, outcome),
            Message::Release { session, token } => core.release(session, token),
            Message::Drain { session } => core.drain(session),
            Message::Stop { attempts, reason } => {
                for (job_id, attempt) in attempts {
                    core.stop_ended(job_id, attempt, &reason);
                }
            }
            Message::Disconnect { session, reason } => core.drop_session(session, &reason),
            Message::Workers { reply } => drop(reply.send(core.workers())),
            Message::Explain { job, reply } => drop(reply.send(core.explain(&job))),
            Message::SetQuota(quota) => core.set_quota(&quota),
            Message::Pause { queue, paused } => core.pause(queue, paused),
            Message::Held { scopes, reply } => {
                drop(reply.send(scopes.iter().map(|s| core.held(s)).collect()))
            }
        }
    }

    /// Does what the core decided.
    fn carry_out(&mut self) {
        for effect in self.core.take_effects() {
            match effect {
                Effect::Assign {
                    session,
                    worker_id,
                    dispatch,
                    queued_since_ms,
                } => self.assign(session, &worker_id, dispatch, queued_since_ms),
                Effect::Stop {
                    session,
                    job_id,
                    attempt,
                    epoch,
                    reason,
                } => {
                    self.send(
                        session,
                        ToWorker::Stop {
                            job_id,
                            attempt,
                            epoch,
                            reason,
                        },
                    );
                }
                Effect::EndSession { session } => {
                    if let Some(link) = self.links.remove(&session) {
                        link.kill.cancel();
                    }
                }
                Effect::Refused { job_id, attempt } => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    // Ordinary after a cancel, a deadline or a lost stream: the
                    // fencing did its job. Counted in Stats.refused_results.
                    tracing::info!(job.id = %job_id, attempt, "refused a result from a stale attempt");
                }
            }
        }
    }

    /// Sends an assignment in the job's trace: how long it waited, and its dispatch, whose
    /// context the worker's span for the attempt joins.
    fn assign(
        &mut self,
        session: u64,
        worker_id: &str,
        mut dispatch: Box<Dispatch>,
        since_ms: i64,
    ) {
        let parent =
            switchyard_telemetry::context_from(&dispatch.traceparent, &dispatch.tracestate);
        let attributes = || {
            vec![
                Attribute::new("switchyard.job.id", dispatch.job_id.to_string()),
                Attribute::new("switchyard.attempt", i64::from(dispatch.attempt)),
                Attribute::new("switchyard.worker.id", worker_id.to_owned()),
            ]
        };
        let queued_since = UNIX_EPOCH + Duration::from_millis(since_ms.max(0) as u64);
        switchyard_telemetry::start_at(
            &self.tracer,
            "switchyard.queue_wait",
            &parent,
            queued_since,
            attributes(),
        )
        .end();
        let mut span = switchyard_telemetry::start(
            &self.tracer,
            "switchyard.dispatch",
            Kind::Producer,
            &parent,
            attributes(),
        );
        let (traceparent, tracestate) = switchyard_telemetry::traceparent_of(&span);
        if !traceparent.is_empty() {
            dispatch.traceparent = traceparent;
            dispatch.tracestate = tracestate;
        }
        // A crash after the start committed, before the worker heard of it: the restart finds
        // the attempt interrupted and runs the job again.
        fail::fail_point!("scheduler-before-send", |_| std::process::abort());
        let waited = (now_ms() - since_ms).max(0) as u64;
        self.metrics.dispatched(Duration::from_millis(waited));
        if let Some(reason) = self.send(session, ToWorker::Assign(dispatch)) {
            span.set_status(Status::error(reason));
        }
        span.end();
    }

    /// Sends on a session's stream; a full or closed one marks the session dead (credits
    /// bound what is outstanding, so full means its worker stopped reading). Returns why it
    /// failed, if it did.
    fn send(&mut self, session: u64, message: ToWorker) -> Option<&'static str> {
        let link = self.links.get(&session)?;
        let reason = match link.outbound.try_send(message) {
            Ok(()) => return None,
            Err(mpsc::error::TrySendError::Full(_)) => "the worker stopped reading its stream",
            Err(mpsc::error::TrySendError::Closed(_)) => "its stream closed",
        };
        self.dead.push((session, reason.to_owned()));
        Some(reason)
    }

    /// Publishes the gauges that follow the scheduler's state.
    fn publish(&self) {
        for (queue, depth) in self.core.depths() {
            self.metrics.set_queue_depth(queue, depth);
        }
        let (sessions, slots) = self.core.fleet();
        self.metrics.set_workers(sessions, slots);
        self.metrics.set_detached(self.core.detached() as u64);
    }
}
