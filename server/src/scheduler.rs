//! The scheduler: one task that owns, in memory, the ready queues, the delayed jobs, the worker
//! sessions with their credits, and which attempt of which job runs where.
//!
//! It wakes on a message (a submit, a result, a credit, a session coming or going) or on the
//! timer of the next delayed job, applies every message that is waiting, decides which ready
//! jobs go to which sessions, and commits all of that in one store transition. Only after the
//! commit does it send assignments and wake waiters, so nothing a worker or a client sees is
//! ahead of the database. Nothing here polls the database.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, UNIX_EPOCH},
};

use switchyard_proto::v1::{
    self, BlockedOn, BlockedReason, CoordinatorMessage, coordinator_message,
};
use switchyard_telemetry::{Attribute, Kind, Span, Status};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    error::{Error, Result},
    fanin::Notifier,
    quota::{Quotas, Refusal},
    store::{
        Finish, Outcome, ReadyJob, RetryPolicy, Start, Store, TransitionOutcome, Transitions,
        now_ms, timestamp,
    },
    telemetry::Metrics,
};

/// Messages the scheduler may hold unread before senders wait.
const INBOX: usize = 8192;
/// Messages applied per round at most.
const ROUND: usize = 4096;

/// What the scheduler starts from: the store's ready jobs, quotas and paused queues.
#[derive(Debug, Default)]
pub struct Recovered {
    pub ready: Vec<ReadyJob>,
    pub quotas: Vec<v1::Quota>,
    pub paused: Vec<String>,
}

/// A worker session as the scheduler knows it.
pub struct SessionInfo {
    pub id: u64,
    pub worker_id: String,
    pub queues: HashSet<String>,
    /// Kinds it handles; empty means every kind.
    pub kinds: HashSet<String>,
    /// A worker whose token names a tenant runs only that tenant's jobs.
    pub tenant: Option<String>,
    pub slots: u32,
    pub peer: String,
    /// Where assignments go (the session's bounded outbound channel).
    pub outbound: mpsc::Sender<CoordinatorMessage>,
    /// Fired by the scheduler to end the session (a slow reader, or a newer session of the same
    /// worker).
    pub kill: CancellationToken,
}

pub(crate) enum Message {
    Enqueue(Vec<ReadyJob>),
    Remove(Vec<String>),
    Connect(SessionInfo),
    Credit {
        session: u64,
        slots: u32,
    },
    Result {
        session: u64,
        result: v1::AttemptResult,
    },
    Release {
        session: u64,
        job_id: String,
        attempt: u32,
    },
    Drain {
        session: u64,
    },
    /// Attempts the store has already ended (cancelled): their workers are told to stop.
    Stop {
        attempts: Vec<(String, u32)>,
        reason: String,
    },
    Disconnect {
        session: u64,
        reason: String,
    },
    Workers {
        reply: oneshot::Sender<Vec<v1::WorkerInfo>>,
    },
    Explain {
        job: ReadyJob,
        reply: oneshot::Sender<Option<BlockedOn>>,
    },
    SetQuota(v1::Quota),
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
    /// Starts the scheduler with the jobs the store found ready. It stops when `shutdown`
    /// fires; the returned handle of the task is for joining it.
    pub fn start(
        store: Store,
        notifier: Notifier,
        metrics: Metrics,
        retry: RetryPolicy,
        recovered: Recovered,
        shutdown: CancellationToken,
    ) -> (Scheduler, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(INBOX);
        let refused = Arc::new(AtomicU64::new(0));
        let mut state = State {
            refused: refused.clone(),
            metrics,
            ..State::default()
        };
        for job in recovered.ready {
            state.enqueue(job);
        }
        for quota in &recovered.quotas {
            state.quotas.set(quota, now_ms());
        }
        state.paused = recovered.paused.into_iter().collect();
        let task = tokio::spawn(
            Runner {
                state,
                store,
                notifier,
                retry,
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

    /// New ready jobs (after their submit committed).
    pub async fn enqueue(&self, jobs: Vec<ReadyJob>) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.send(Message::Enqueue(jobs)).await
    }

    /// Jobs that left the queue without running (cancelled while queued).
    pub async fn remove(&self, ids: Vec<String>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.send(Message::Remove(ids)).await
    }

    pub async fn connect(&self, session: SessionInfo) -> Result<()> {
        self.send(Message::Connect(session)).await
    }

    pub async fn credit(&self, session: u64, slots: u32) -> Result<()> {
        self.send(Message::Credit { session, slots }).await
    }

    pub async fn result(&self, session: u64, result: v1::AttemptResult) -> Result<()> {
        self.send(Message::Result { session, result }).await
    }

    pub async fn release(&self, session: u64, job_id: String, attempt: u32) -> Result<()> {
        self.send(Message::Release {
            session,
            job_id,
            attempt,
        })
        .await
    }

    pub async fn drain(&self, session: u64) -> Result<()> {
        self.send(Message::Drain { session }).await
    }

    /// Tells the workers of these attempts (already ended in the store) to stop them.
    pub async fn stop(&self, attempts: Vec<(String, u32)>, reason: String) -> Result<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        self.send(Message::Stop { attempts, reason }).await
    }

    /// The session is gone: its jobs go back to the queue.
    pub async fn disconnect(&self, session: u64, reason: String) -> Result<()> {
        self.send(Message::Disconnect { session, reason }).await
    }

    pub async fn workers(&self) -> Result<Vec<v1::WorkerInfo>> {
        let (reply, rx) = oneshot::channel();
        self.send(Message::Workers { reply }).await?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }

    /// Why a ready job is not running, if it is not simply waiting for a free slot: its
    /// queue is paused, no worker serves it, or a quota holds it back.
    pub async fn explain(&self, job: ReadyJob) -> Result<Option<BlockedOn>> {
        let (reply, rx) = oneshot::channel();
        self.send(Message::Explain { job, reply }).await?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }

    /// A scope's limits changed (after the store committed them).
    pub async fn set_quota(&self, quota: v1::Quota) -> Result<()> {
        self.send(Message::SetQuota(quota)).await
    }

    /// A queue was paused or resumed (after the store committed it).
    pub async fn pause(&self, queue: String, paused: bool) -> Result<()> {
        self.send(Message::Pause { queue, paused }).await
    }

    /// Permits held now in each scope.
    pub async fn held(&self, scopes: Vec<String>) -> Result<Vec<u32>> {
        let (reply, rx) = oneshot::channel();
        self.send(Message::Held { scopes, reply }).await?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }
}

/// Order within a ready queue: higher priority, then earlier `run_at`, then submission order.
type Key = (Reverse<i32>, i64, i64);

struct Session {
    info: SessionInfo,
    credits: u32,
    running: HashSet<String>,
    draining: bool,
    connected_at_ms: i64,
}

impl Session {
    fn serves(&self, queue: &str, kind: &str) -> bool {
        self.info.queues.contains(queue)
            && (self.info.kinds.is_empty() || self.info.kinds.contains(kind))
    }
}

struct RunningJob {
    session: u64,
    attempt: u32,
    /// When the attempt must end: the sooner of the job's deadline and its timeout.
    ends: Option<i64>,
    /// The job's own deadline: an attempt that ends at it ends the job.
    deadline_ms: Option<i64>,
    /// The permits it holds, given back when the attempt ends however it ends.
    scopes: Vec<String>,
    weight: u32,
}

/// The fairness bucket of a job within its queue: its tenant and concurrency key.
type Bucket = (String, String);

/// The ready jobs of one (queue, kind): a sub-queue per bucket, served round-robin so that
/// one tenant's (or key's) backlog does not delay another's; in priority order within each.
#[derive(Default)]
struct Lane {
    buckets: BTreeMap<Bucket, BTreeMap<Key, ReadyJob>>,
    /// The bucket served last: the next pick looks at the ones after it first.
    last: Option<Bucket>,
}

impl Lane {
    /// Buckets in round-robin order, starting after the last one served.
    fn rotation(&self) -> Vec<Bucket> {
        let keys: Vec<&Bucket> = self.buckets.keys().collect();
        let start = match &self.last {
            Some(last) => keys.partition_point(|k| *k <= last),
            None => 0,
        };
        keys[start..]
            .iter()
            .chain(&keys[..start])
            .map(|k| (*k).clone())
            .collect()
    }
}

fn bucket_of(job: &ReadyJob) -> Bucket {
    (
        job.tenant_id.clone().unwrap_or_default(),
        job.concurrency_key.clone().unwrap_or_default(),
    )
}

struct State {
    /// Ready jobs by (queue, kind).
    ready: HashMap<(String, String), Lane>,
    /// Limits by scope, and the permits running jobs hold.
    quotas: Quotas,
    paused: HashSet<String>,
    /// The soonest a rate limit that held a job back has a token again (Unix ms).
    rate_wake: Option<i64>,
    /// Jobs waiting for their time, by (run_at, seq).
    delayed: BTreeMap<(i64, i64), ReadyJob>,
    /// Where each queued job is: (queue, kind, key) in `ready`, or its `delayed` key.
    index: HashMap<String, Place>,
    /// Queued jobs by deadline, to end them when it passes without their running.
    deadlines: BTreeSet<(i64, String)>,
    /// Running attempts by when they must end.
    attempt_ends: BTreeSet<(i64, String)>,
    sessions: BTreeMap<u64, Session>,
    running: HashMap<String, RunningJob>,
    /// Picked for a session, waiting for the start to commit.
    starting: HashMap<String, (u64, ReadyJob)>,
    /// Attempts the coordinator ended (cancel, deadline, timeout) whose handlers were told to
    /// stop but have not returned: they keep their permits until their worker reports them
    /// (or is lost), so a limit holds for what really runs.
    stopping: HashMap<(String, u32), RunningJob>,
    /// Sessions to drop at the next round (their outbound channel was full or closed).
    dead: Vec<(u64, String)>,
    /// Round-robin offset over sessions.
    turn: u64,
    /// Stale results refused (shared with the handle, for `Stats`).
    refused: Arc<AtomicU64>,
    metrics: Metrics,
    /// Queued jobs in memory (ready or delayed) by queue, for the queue-depth gauge.
    depth: HashMap<String, u64>,
    tracer: Tracer,
}

impl Default for State {
    fn default() -> Self {
        State {
            ready: HashMap::new(),
            quotas: Quotas::default(),
            paused: HashSet::new(),
            rate_wake: None,
            delayed: BTreeMap::new(),
            index: HashMap::new(),
            deadlines: BTreeSet::new(),
            attempt_ends: BTreeSet::new(),
            sessions: BTreeMap::new(),
            running: HashMap::new(),
            starting: HashMap::new(),
            stopping: HashMap::new(),
            dead: Vec::new(),
            turn: 0,
            refused: Arc::default(),
            metrics: Metrics::new(),
            depth: HashMap::new(),
            tracer: switchyard_telemetry::tracer("switchyard-coordinator"),
        }
    }
}

type Tracer = switchyard_telemetry::BoxedTracer;

enum Place {
    Ready(String, String, Bucket, Key),
    Delayed((i64, i64), Option<i64>),
}

impl State {
    fn enqueue(&mut self, job: ReadyJob) {
        if self.index.contains_key(&job.id) || self.running.contains_key(&job.id) {
            return;
        }
        if let Some(deadline) = job.deadline_ms {
            self.deadlines.insert((deadline, job.id.clone()));
        }
        *self.depth.entry(job.queue.clone()).or_default() += 1;
        if job.run_at_ms > now_ms() {
            let key = (job.run_at_ms, job.seq);
            self.index
                .insert(job.id.clone(), Place::Delayed(key, job.deadline_ms));
            self.delayed.insert(key, job);
        } else {
            let key = (Reverse(job.priority), job.run_at_ms, job.seq);
            let bucket = bucket_of(&job);
            self.index.insert(
                job.id.clone(),
                Place::Ready(job.queue.clone(), job.kind.clone(), bucket.clone(), key),
            );
            self.ready
                .entry((job.queue.clone(), job.kind.clone()))
                .or_default()
                .buckets
                .entry(bucket)
                .or_default()
                .insert(key, job);
        }
    }

    /// Takes a ready job out of its lane (it is dispatched or leaves the queue).
    fn take_ready(
        &mut self,
        queue: &str,
        kind: &str,
        bucket: &Bucket,
        key: &Key,
    ) -> Option<ReadyJob> {
        let pair = (queue.to_owned(), kind.to_owned());
        let lane = self.ready.get_mut(&pair)?;
        let jobs = lane.buckets.get_mut(bucket)?;
        let job = jobs.remove(key)?;
        if jobs.is_empty() {
            lane.buckets.remove(bucket);
        }
        if lane.buckets.is_empty() {
            self.ready.remove(&pair);
        }
        self.index.remove(&job.id);
        if let Some(deadline) = job.deadline_ms {
            self.deadlines.remove(&(deadline, job.id.clone()));
        }
        self.shallower(&job.queue);
        Some(job)
    }

    fn shallower(&mut self, queue: &str) {
        if let Some(depth) = self.depth.get_mut(queue) {
            *depth = depth.saturating_sub(1);
        }
    }

    /// Publishes the gauges that follow the scheduler's state.
    fn publish(&self) {
        for (queue, depth) in &self.depth {
            self.metrics.set_queue_depth(queue, *depth);
        }
        let slots = self
            .sessions
            .values()
            .map(|s| u64::from(s.info.slots))
            .sum();
        self.metrics.set_workers(self.sessions.len() as u64, slots);
    }

    fn remove(&mut self, id: &str) {
        match self.index.get(id) {
            Some(Place::Ready(queue, kind, bucket, key)) => {
                let (queue, kind, bucket, key) =
                    (queue.clone(), kind.clone(), bucket.clone(), *key);
                self.take_ready(&queue, &kind, &bucket, &key);
            }
            Some(Place::Delayed(key, deadline)) => {
                let (key, deadline) = (*key, *deadline);
                if let Some(job) = self.delayed.remove(&key) {
                    self.shallower(&job.queue);
                }
                self.index.remove(id);
                if let Some(deadline) = deadline {
                    self.deadlines.remove(&(deadline, id.to_owned()));
                }
            }
            None => {}
        }
    }

    /// Ends what ran out of time: queued jobs past their deadline (never dispatched), and
    /// running attempts past their end (their workers are told to stop).
    fn expire_due(&mut self, now: i64, expire: &mut Vec<String>, finishes: &mut Vec<Finish>) {
        while let Some((at, id)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            if self.index.contains_key(&id) {
                self.remove(&id);
                expire.push(id);
            } else {
                self.deadlines.pop_first();
            }
        }
        while let Some((at, id)) = self.attempt_ends.first().cloned() {
            if at > now {
                break;
            }
            self.attempt_ends.pop_first();
            let Some(running) = self.running.get(&id) else {
                continue;
            };
            let (session, attempt) = (running.session, running.attempt);
            let whole_job = running.deadline_ms.is_some_and(|d| d <= now);
            if !self.fence(&id, attempt) {
                continue;
            }
            let (outcome, reason) = if whole_job {
                (Outcome::Expired, "the job's deadline passed")
            } else {
                (Outcome::TimedOut, "the attempt's timeout passed")
            };
            self.tell_stop(session, &id, attempt, reason);
            finishes.push(Finish {
                job_id: id,
                attempt,
                outcome,
            });
        }
    }

    /// Sends a cancel for one attempt on its session's stream.
    fn tell_stop(&mut self, session: u64, job_id: &str, attempt: u32, reason: &str) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let message = CoordinatorMessage {
            message: Some(coordinator_message::Message::Cancel(v1::CancelAssignment {
                job_id: job_id.to_owned(),
                attempt,
                reason: reason.to_owned(),
            })),
        };
        if s.info.outbound.try_send(message).is_err() {
            self.dead
                .push((session, "the worker stopped reading its stream".to_owned()));
        }
    }

    /// Moves delayed jobs whose time has come into the ready queues.
    fn promote_due(&mut self, now: i64) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let job = entry.remove();
            self.index.remove(&job.id);
            self.shallower(&job.queue);
            self.enqueue(ReadyJob {
                run_at_ms: 0,
                ..job
            });
        }
    }

    /// The next time something is due: a delayed job, a deadline, an attempt's end.
    fn next_due_ms(&self) -> Option<i64> {
        [
            self.delayed.keys().next().map(|(at, _)| *at),
            self.deadlines.first().map(|(at, _)| *at),
            self.attempt_ends.first().map(|(at, _)| *at),
            self.rate_wake,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The best ready job a session may take now: in each lane it serves (of a queue that is
    /// not paused), the first bucket in round-robin order whose head can take its permits;
    /// across lanes, the one with the highest priority. A bucket whose head cannot start does
    /// not hold up the others.
    fn best_for(&mut self, session: u64, now: i64) -> Option<(String, String, Bucket, Key)> {
        let session = self.sessions.get(&session)?;
        let mut best: Option<(String, String, Bucket, Key)> = None;
        for ((queue, kind), lane) in &self.ready {
            if self.paused.contains(queue) || !session.serves(queue, kind) {
                continue;
            }
            for bucket in lane.rotation() {
                if session.info.tenant.as_ref().is_some_and(|t| *t != bucket.0) {
                    continue;
                }
                let Some((key, job)) = lane.buckets.get(&bucket).and_then(|b| b.first_key_value())
                else {
                    continue;
                };
                match self.quotas.check(&job.scopes(), job.weight, now) {
                    Ok(()) => {
                        if best.as_ref().is_none_or(|b| *key < b.3) {
                            best = Some((queue.clone(), kind.clone(), bucket, *key));
                        }
                        break;
                    }
                    Err(Refusal::Rate { until_ms, .. }) => {
                        self.rate_wake = Some(self.rate_wake.map_or(until_ms, |w| w.min(until_ms)));
                    }
                    Err(Refusal::Permits { .. }) => {}
                }
            }
        }
        best
    }

    fn can_dispatch(&mut self) -> bool {
        let now = now_ms();
        let ids: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.credits > 0 && !s.draining)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().any(|id| self.best_for(id, now).is_some())
    }

    /// Hands ready jobs to sessions with credit, one at a time round-robin, so that work
    /// spreads over the workers; each job takes its permits as it is picked.
    fn pick(&mut self, starts: &mut Vec<Start>) {
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let now = now_ms();
        self.rate_wake = None;
        self.turn = self.turn.wrapping_add(1);
        let offset = (self.turn % ids.len() as u64) as usize;
        let order: Vec<u64> = ids[offset..]
            .iter()
            .chain(&ids[..offset])
            .copied()
            .collect();
        loop {
            let mut progress = false;
            for id in &order {
                let Some(session) = self.sessions.get(id) else {
                    continue;
                };
                if session.credits == 0 || session.draining {
                    continue;
                }
                let Some((queue, kind, bucket, key)) = self.best_for(*id, now) else {
                    continue;
                };
                let Some(job) = self.take_ready(&queue, &kind, &bucket, &key) else {
                    continue;
                };
                if let Some(lane) = self.ready.get_mut(&(queue, kind)) {
                    lane.last = Some(bucket);
                }
                self.quotas.acquire(&job.scopes(), job.weight, now);
                let Some(session) = self.sessions.get_mut(id) else {
                    continue;
                };
                session.credits -= 1;
                starts.push(Start {
                    job_id: job.id.clone(),
                    session: *id,
                    worker_id: session.info.worker_id.clone(),
                });
                self.starting.insert(job.id.clone(), (*id, job));
                progress = true;
            }
            if !progress {
                break;
            }
        }
    }

    /// Removes a session; its running jobs become lost attempts.
    fn drop_session(&mut self, id: u64, reason: &str, finishes: &mut Vec<Finish>) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        session.info.kill.cancel();
        let stopped: Vec<(String, u32)> = self
            .stopping
            .iter()
            .filter(|(_, r)| r.session == id)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stopped {
            if let Some(r) = self.stopping.remove(&key) {
                self.quotas.release(&r.scopes, r.weight);
            }
        }
        tracing::info!(
            worker = %session.info.worker_id,
            session = id,
            running = session.running.len(),
            reason,
            "worker session ended"
        );
        for job_id in session.running {
            if let Some(running) = self.running.remove(&job_id) {
                if let Some(ends) = running.ends {
                    self.attempt_ends.remove(&(ends, job_id.clone()));
                }
                self.quotas.release(&running.scopes, running.weight);
                finishes.push(Finish {
                    job_id,
                    attempt: running.attempt,
                    outcome: Outcome::Lost(format!(
                        "worker {} was lost: {reason}",
                        session.info.worker_id
                    )),
                });
            }
        }
    }

    fn explain(&mut self, job: &ReadyJob) -> Option<BlockedOn> {
        if self.paused.contains(&job.queue) {
            return Some(BlockedOn {
                reason: BlockedReason::QueuePaused as i32,
                detail: format!("queue {:?} is paused", job.queue),
                ..Default::default()
            });
        }
        if !self
            .sessions
            .values()
            .any(|s| s.serves(&job.queue, &job.kind))
        {
            return Some(BlockedOn {
                reason: BlockedReason::NoWorker as i32,
                detail: format!(
                    "no connected worker serves queue {:?} and kind {:?}",
                    job.queue, job.kind
                ),
                ..Default::default()
            });
        }
        self.quotas
            .check(&job.scopes(), job.weight, now_ms())
            .err()
            .map(|refusal| refusal.blocked_on())
    }

    /// An attempt the store already ended: off the running set, and its worker told to stop.
    fn stop_ended(&mut self, job_id: &str, attempt: u32, reason: &str) {
        let Some(session) = self
            .running
            .get(job_id)
            .filter(|r| r.attempt == attempt)
            .map(|r| r.session)
        else {
            return;
        };
        if self.fence(job_id, attempt) {
            self.tell_stop(session, job_id, attempt, reason);
        }
    }

    /// Ends an attempt here while its handler may still run: off the running set, but its
    /// permits stay held (in `stopping`) until its worker reports it.
    fn fence(&mut self, job_id: &str, attempt: u32) -> bool {
        let Some(running) = self.running.remove(job_id).filter(|r| r.attempt == attempt) else {
            return false;
        };
        if let Some(ends) = running.ends {
            self.attempt_ends.remove(&(ends, job_id.to_owned()));
        }
        if let Some(s) = self.sessions.get_mut(&running.session) {
            s.running.remove(job_id);
        }
        self.stopping.insert((job_id.to_owned(), attempt), running);
        true
    }

    /// Takes a result off the running set if it comes from the session that holds the job's
    /// current attempt. Anything else is a stale result, refused here.
    fn take_running(&mut self, session: u64, job_id: &str, attempt: u32) -> bool {
        let current = self
            .running
            .get(job_id)
            .is_some_and(|r| r.session == session && r.attempt == attempt);
        if current {
            if let Some(running) = self.running.remove(job_id) {
                if let Some(ends) = running.ends {
                    self.attempt_ends.remove(&(ends, job_id.to_owned()));
                }
                self.quotas.release(&running.scopes, running.weight);
            }
            if let Some(s) = self.sessions.get_mut(&session) {
                s.running.remove(job_id);
            }
        } else {
            // A handler told to stop has returned: its permits come back now.
            let key = (job_id.to_owned(), attempt);
            if self
                .stopping
                .get(&key)
                .is_some_and(|r| r.session == session)
                && let Some(stopped) = self.stopping.remove(&key)
            {
                self.quotas.release(&stopped.scopes, stopped.weight);
            }
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(job.id = %job_id, attempt, session, "refused a result from a stale attempt");
        }
        current
    }

    fn apply(&mut self, message: Message, finishes: &mut Vec<Finish>) {
        match message {
            Message::Enqueue(jobs) => {
                for job in jobs {
                    self.enqueue(job);
                }
            }
            Message::Remove(ids) => {
                for id in ids {
                    self.remove(&id);
                }
            }
            Message::Connect(info) => {
                // A worker that reconnects replaces its old session at once.
                let old: Vec<u64> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.info.worker_id == info.worker_id)
                    .map(|(id, _)| *id)
                    .collect();
                for id in old {
                    self.drop_session(id, "the worker connected again", finishes);
                }
                tracing::info!(worker = %info.worker_id, session = info.id, slots = info.slots, "worker session started");
                self.sessions.insert(
                    info.id,
                    Session {
                        credits: info.slots,
                        info,
                        running: HashSet::new(),
                        draining: false,
                        connected_at_ms: now_ms(),
                    },
                );
            }
            Message::Credit { session, slots } => {
                let starting = self
                    .starting
                    .values()
                    .filter(|(s, _)| *s == session)
                    .count() as u32;
                if let Some(s) = self.sessions.get_mut(&session) {
                    // Never more outstanding than the worker's slots, whatever it sends.
                    let busy = s.running.len() as u32 + starting;
                    s.credits =
                        (s.credits.saturating_add(slots)).min(s.info.slots.saturating_sub(busy));
                }
            }
            Message::Result { session, result } => {
                if !self.take_running(session, &result.job_id, result.attempt) {
                    return;
                }
                let outcome = match result.outcome {
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
                };
                finishes.push(Finish {
                    job_id: result.job_id,
                    attempt: result.attempt,
                    outcome,
                });
            }
            Message::Release {
                session,
                job_id,
                attempt,
            } => {
                if self.take_running(session, &job_id, attempt) {
                    finishes.push(Finish {
                        job_id,
                        attempt,
                        outcome: Outcome::Released("handed back by a draining worker".into()),
                    });
                }
            }
            Message::Drain { session } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.draining = true;
                    s.credits = 0;
                }
            }
            Message::Stop { attempts, reason } => {
                for (job_id, attempt) in attempts {
                    self.stop_ended(&job_id, attempt, &reason);
                }
            }
            Message::Disconnect { session, reason } => {
                self.drop_session(session, &reason, finishes);
            }
            Message::Workers { reply } => {
                let workers = self
                    .sessions
                    .values()
                    .map(|s| v1::WorkerInfo {
                        worker_id: s.info.worker_id.clone(),
                        queues: sorted(&s.info.queues),
                        kinds: sorted(&s.info.kinds),
                        slots: s.info.slots,
                        // Slots the worker has not given back: running handlers, including
                        // ones told to stop that have not returned yet.
                        running: s.info.slots.saturating_sub(s.credits),
                        connected_at: Some(timestamp(s.connected_at_ms)),
                        peer: s.info.peer.clone(),
                    })
                    .collect();
                let _ = reply.send(workers);
            }
            Message::Explain { job, reply } => {
                let _ = reply.send(self.explain(&job));
            }
            Message::SetQuota(quota) => self.quotas.set(&quota, now_ms()),
            Message::Pause { queue, paused } => {
                if paused {
                    self.paused.insert(queue);
                } else {
                    self.paused.remove(&queue);
                }
            }
            Message::Held { scopes, reply } => {
                let _ = reply.send(scopes.iter().map(|s| self.quotas.held(s)).collect());
            }
        }
    }

    /// Applies a committed transition: assignments go out, credits of starts that did not
    /// happen come back, new ready jobs are queued.
    fn settle(&mut self, out: &TransitionOutcome, finishes: &mut Vec<Finish>) {
        for started in &out.started {
            let (session_id, ends) = (&started.session, &started.ends);
            let mut assignment = started.assignment.clone();
            let Some((_, job)) = self.starting.remove(&assignment.job_id) else {
                continue;
            };
            let Some(session) = self.sessions.get_mut(session_id) else {
                // The session died while its start was committing: not the worker's fault.
                self.quotas.release(&job.scopes(), job.weight);
                finishes.push(Finish {
                    job_id: assignment.job_id.clone(),
                    attempt: assignment.attempt,
                    outcome: Outcome::Released("its worker left before it was sent".into()),
                });
                continue;
            };
            // The job's trace: how long it waited, and its dispatch, whose context the worker's
            // span for the attempt joins.
            let parent =
                switchyard_telemetry::context_from(&assignment.traceparent, &assignment.tracestate);
            let attributes = || {
                vec![
                    Attribute::new("switchyard.job.id", assignment.job_id.clone()),
                    Attribute::new("switchyard.attempt", i64::from(assignment.attempt)),
                    Attribute::new("switchyard.worker.id", session.info.worker_id.clone()),
                ]
            };
            let queued_since =
                UNIX_EPOCH + Duration::from_millis(started.queued_since_ms.max(0) as u64);
            switchyard_telemetry::start_at(
                &self.tracer,
                "switchyard.queue_wait",
                &parent,
                queued_since,
                attributes(),
            )
            .end();
            let mut dispatch = switchyard_telemetry::start(
                &self.tracer,
                "switchyard.dispatch",
                Kind::Producer,
                &parent,
                attributes(),
            );
            let (traceparent, tracestate) = switchyard_telemetry::traceparent_of(&dispatch);
            if !traceparent.is_empty() {
                assignment.traceparent = traceparent;
                assignment.tracestate = tracestate;
            }
            let message = CoordinatorMessage {
                message: Some(coordinator_message::Message::Assignment(assignment.clone())),
            };
            let waited = (now_ms() - started.queued_since_ms).max(0) as u64;
            self.metrics.dispatched(Duration::from_millis(waited));
            self.running.insert(
                assignment.job_id.clone(),
                RunningJob {
                    session: *session_id,
                    attempt: assignment.attempt,
                    ends: *ends,
                    deadline_ms: job.deadline_ms,
                    scopes: job.scopes(),
                    weight: job.weight,
                },
            );
            if let Some(ends) = ends {
                self.attempt_ends.insert((*ends, assignment.job_id.clone()));
            }
            session.running.insert(assignment.job_id.clone());
            // Credits bound what is outstanding, so a full channel means the worker stopped
            // reading: the session is dropped rather than buffered for.
            if let Err(err) = session.info.outbound.try_send(message) {
                let reason = match err {
                    mpsc::error::TrySendError::Full(_) => "the worker stopped reading its stream",
                    mpsc::error::TrySendError::Closed(_) => "its stream closed",
                };
                dispatch.set_status(Status::error(reason));
                self.dead.push((*session_id, reason.to_owned()));
            }
            dispatch.end();
        }
        for (session_id, job_id) in &out.not_started {
            if let Some((_, job)) = self.starting.remove(job_id) {
                self.quotas.release(&job.scopes(), job.weight);
            }
            if let Some(session) = self.sessions.get_mut(session_id) {
                session.credits += 1;
            }
        }
        for job in &out.ready {
            self.enqueue(job.clone());
        }
        for id in &out.cancelled_dependents {
            self.remove(id);
        }
        for (id, attempt) in &out.stopped {
            self.stop_ended(id, *attempt, "a job it belongs to ended");
        }
        for (job_id, attempt) in &out.stale {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(job.id = %job_id, attempt, "the store refused a stale result");
        }
    }

    /// Puts back what a failed commit had picked, so nothing is lost.
    fn unpick(&mut self, starts: Vec<Start>) {
        for start in starts {
            if let Some((_, job)) = self.starting.remove(&start.job_id) {
                self.quotas.release(&job.scopes(), job.weight);
                self.enqueue(job);
            }
            if let Some(session) = self.sessions.get_mut(&start.session) {
                session.credits += 1;
            }
        }
    }
}

fn sorted(set: &HashSet<String>) -> Vec<String> {
    let mut v: Vec<String> = set.iter().cloned().collect();
    v.sort();
    v
}

struct Runner {
    state: State,
    store: Store,
    notifier: Notifier,
    retry: RetryPolicy,
    inbox: mpsc::Receiver<Message>,
    shutdown: CancellationToken,
}

impl Runner {
    async fn run(mut self) {
        let mut messages = Vec::with_capacity(ROUND);
        // Finishes whose commit failed, tried again next round.
        let mut carried: Vec<Finish> = Vec::new();
        loop {
            let busy =
                self.state.can_dispatch() || !carried.is_empty() || !self.state.dead.is_empty();
            if !busy {
                let due = self.state.next_due_ms();
                let sleep = async {
                    match due {
                        Some(at) => {
                            let wait = (at - now_ms()).max(0) as u64;
                            tokio::time::sleep(Duration::from_millis(wait)).await
                        }
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
                    _ = sleep => {}
                }
            } else if self.shutdown.is_cancelled() {
                break;
            }
            while messages.len() < ROUND {
                match self.inbox.try_recv() {
                    Ok(m) => messages.push(m),
                    Err(_) => break,
                }
            }

            let mut finishes = std::mem::take(&mut carried);
            for (session, reason) in std::mem::take(&mut self.state.dead) {
                self.state.drop_session(session, &reason, &mut finishes);
            }
            for message in messages.drain(..) {
                self.state.apply(message, &mut finishes);
            }
            self.state.publish();
            let now = now_ms();
            let mut expire = Vec::new();
            // Expiry first: nothing is dispatched after its deadline.
            self.state.expire_due(now, &mut expire, &mut finishes);
            self.state.promote_due(now);
            let mut starts = Vec::new();
            self.state.pick(&mut starts);
            if finishes.is_empty() && starts.is_empty() && expire.is_empty() {
                continue;
            }

            let ops = Transitions {
                finishes,
                expire,
                starts,
                retry: self.retry,
            };
            match self.store.transition(ops.clone()).await {
                Ok(out) => {
                    let mut more = Vec::new();
                    self.state.settle(&out, &mut more);
                    self.state.publish();
                    carried.extend(more);
                    self.notifier.notify(&out.terminal);
                }
                Err(err) => {
                    tracing::error!(cause = %err, "committing scheduler transitions failed; retrying");
                    self.state.unpick(ops.starts);
                    carried = ops.finishes;
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
        tracing::debug!("scheduler stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store committed attempt 1 of `job_id` (picked for session 1): the scheduler sends
    /// it. Returns what settling carried over to the next round.
    fn commit_start(state: &mut State, job_id: &str, ends: Option<i64>) -> Vec<Finish> {
        let started = crate::store::Started {
            session: 1,
            assignment: v1::Assignment {
                job_id: job_id.into(),
                attempt: 1,
                ..Default::default()
            },
            ends,
            queued_since_ms: now_ms(),
        };
        let mut finishes = Vec::new();
        state.settle(
            &TransitionOutcome {
                started: vec![started],
                ..Default::default()
            },
            &mut finishes,
        );
        finishes
    }

    #[test]
    fn a_saturated_key_waits_without_holding_up_other_keys() {
        let mut state = State::default();
        state.quotas.set(
            &v1::Quota {
                scope: "key:busy".into(),
                max_in_flight: Some(1),
                ..Default::default()
            },
            0,
        );
        for (i, key) in ["busy", "busy", "free"].iter().enumerate() {
            state.enqueue(ReadyJob {
                concurrency_key: Some(key.to_string()),
                ..job(&format!("{key}{i}"), "q", "k", 0, i as i64)
            });
        }
        let _w = session(&mut state, 1, &["q"], &[], 10);
        let mut ids: Vec<String> = picked(&mut state).into_iter().map(|(id, _)| id).collect();
        ids.sort();
        assert_eq!(
            ids,
            ["busy0", "free2"],
            "one permit of key:busy, and the free key goes"
        );
        assert_eq!(state.quotas.held("key:busy"), 1);
    }

    #[test]
    fn a_stopped_attempt_keeps_its_permits_until_its_handler_returns() {
        let mut state = State::default();
        state.quotas.set(
            &v1::Quota {
                scope: "key:k".into(),
                max_in_flight: Some(1),
                ..Default::default()
            },
            0,
        );
        for (i, id) in ["first", "second"].iter().enumerate() {
            state.enqueue(ReadyJob {
                concurrency_key: Some("k".into()),
                ..job(id, "q", "k", 0, i as i64)
            });
        }
        let _w = session(&mut state, 1, &["q"], &[], 2);
        assert_eq!(picked(&mut state), [("first".to_string(), 1)]);
        let carried = commit_start(&mut state, "first", None);
        assert!(
            carried.is_empty(),
            "its session is alive: nothing carried over"
        );
        // Cancelled in the store: the worker is told to stop, the permit stays held.
        state.stop_ended("first", 1, "cancelled");
        assert!(picked(&mut state).is_empty(), "its handler may still run");
        // Its worker reports the stopped attempt: now the permit is free.
        assert!(!state.take_running(1, "first", 1));
        assert_eq!(picked(&mut state), [("second".to_string(), 1)]);
    }

    #[test]
    fn tenants_are_served_round_robin_within_a_queue() {
        let mut state = State::default();
        for i in 0..100 {
            state.enqueue(ReadyJob {
                tenant_id: Some("a".into()),
                ..job(&format!("a{i}"), "q", "k", 0, i)
            });
        }
        for i in 0..3 {
            state.enqueue(ReadyJob {
                tenant_id: Some("b".into()),
                ..job(&format!("b{i}"), "q", "k", 0, 100 + i)
            });
        }
        let _w = session(&mut state, 1, &["q"], &[], 6);
        let ids: Vec<String> = picked(&mut state).into_iter().map(|(id, _)| id).collect();
        let b = ids.iter().filter(|id| id.starts_with('b')).count();
        assert_eq!(b, 3, "tenant b's three jobs go in the first six: {ids:?}");
    }

    #[test]
    fn a_paused_queue_dispatches_nothing() {
        let mut state = State::default();
        state.enqueue(job("a", "q", "k", 0, 1));
        state.paused.insert("q".into());
        let _w = session(&mut state, 1, &["q"], &[], 1);
        assert!(picked(&mut state).is_empty());
        state.paused.clear();
        assert_eq!(picked(&mut state).len(), 1);
    }

    #[test]
    fn queued_jobs_past_their_deadline_expire_and_are_never_picked() {
        let mut state = State::default();
        let now = now_ms();
        state.enqueue(ReadyJob {
            deadline_ms: Some(now - 1),
            ..job("late", "q", "k", 0, 1)
        });
        state.enqueue(ReadyJob {
            deadline_ms: Some(now + 60_000),
            ..job("fine", "q", "k", 0, 2)
        });
        let _w = session(&mut state, 1, &["q"], &[], 5);
        let (mut expire, mut finishes) = (Vec::new(), Vec::new());
        state.expire_due(now, &mut expire, &mut finishes);
        assert_eq!(expire, ["late"]);
        assert_eq!(picked(&mut state), [("fine".to_string(), 1)]);
        assert!(
            state.deadlines.is_empty(),
            "a picked job leaves the deadline index"
        );
    }

    #[test]
    fn a_running_attempt_past_its_end_is_stopped_on_its_worker() {
        let mut state = State::default();
        let now = now_ms();
        state.enqueue(ReadyJob {
            deadline_ms: Some(now + 1000),
            ..job("a", "q", "k", 0, 1)
        });
        let mut worker = session(&mut state, 1, &["q"], &[], 1);
        picked(&mut state);
        let mut finishes = commit_start(&mut state, "a", Some(now + 1000));
        let mut expire = Vec::new();
        state.expire_due(now + 999, &mut expire, &mut finishes);
        assert!(finishes.is_empty());
        state.expire_due(now + 1000, &mut expire, &mut finishes);
        assert!(matches!(
            finishes.as_slice(),
            [Finish {
                outcome: Outcome::Expired,
                attempt: 1,
                ..
            }]
        ));
        let _assignment = worker.try_recv();
        assert!(matches!(
            worker.try_recv().ok().and_then(|m| m.message),
            Some(coordinator_message::Message::Cancel(c)) if c.job_id == "a" && c.attempt == 1
        ));
        assert!(!state.take_running(1, "a", 1), "its late result is stale");
    }

    fn job(id: &str, queue: &str, kind: &str, priority: i32, seq: i64) -> ReadyJob {
        ReadyJob {
            id: id.into(),
            queue: queue.into(),
            kind: kind.into(),
            priority,
            run_at_ms: 0,
            seq,
            deadline_ms: None,
            weight: 1,
            tenant_id: None,
            concurrency_key: None,
        }
    }

    /// Connects a session; the returned receiver is its worker's end of the stream.
    fn session(
        state: &mut State,
        id: u64,
        queues: &[&str],
        kinds: &[&str],
        slots: u32,
    ) -> mpsc::Receiver<CoordinatorMessage> {
        let (outbound, rx) = mpsc::channel(slots as usize + 4);
        let mut finishes = Vec::new();
        state.apply(
            Message::Connect(SessionInfo {
                id,
                worker_id: format!("w{id}"),
                queues: queues.iter().map(|s| s.to_string()).collect(),
                kinds: kinds.iter().map(|s| s.to_string()).collect(),
                tenant: None,
                slots,
                peer: String::new(),
                outbound,
                kill: CancellationToken::new(),
            }),
            &mut finishes,
        );
        assert!(finishes.is_empty());
        rx
    }

    fn picked(state: &mut State) -> Vec<(String, u64)> {
        let mut starts = Vec::new();
        state.pick(&mut starts);
        starts.into_iter().map(|s| (s.job_id, s.session)).collect()
    }

    #[test]
    fn priority_then_run_at_then_submission_order() {
        let mut state = State::default();
        state.enqueue(job("low", "q", "k", 0, 1));
        state.enqueue(job("high", "q", "k", 5, 2));
        state.enqueue(job("low-later", "q", "k", 0, 3));
        state.enqueue(ReadyJob {
            run_at_ms: 1,
            ..job("low-early-run-at", "q", "k", 0, 4)
        });
        let _w1 = session(&mut state, 1, &["q"], &[], 10);
        let order: Vec<String> = picked(&mut state).into_iter().map(|(id, _)| id).collect();
        assert_eq!(order, ["high", "low", "low-later", "low-early-run-at"]);
    }

    #[test]
    fn never_more_than_the_credits_and_spread_over_sessions() {
        let mut state = State::default();
        for i in 0..10 {
            state.enqueue(job(&format!("j{i}"), "q", "k", 0, i));
        }
        let _w1 = session(&mut state, 1, &["q"], &[], 2);
        let _w2 = session(&mut state, 2, &["q"], &[], 3);
        let starts = picked(&mut state);
        assert_eq!(starts.len(), 5);
        assert_eq!(starts.iter().filter(|(_, s)| *s == 1).count(), 2);
        assert_eq!(starts.iter().filter(|(_, s)| *s == 2).count(), 3);
        assert!(picked(&mut state).is_empty(), "no credit left");
        assert!(!state.can_dispatch());
    }

    #[test]
    fn jobs_go_only_to_sessions_that_serve_their_queue_and_kind() {
        let mut state = State::default();
        state.enqueue(job("a", "q", "sha256", 0, 1));
        state.enqueue(job("b", "other", "echo", 0, 2));
        let _w1 = session(&mut state, 1, &["q"], &["echo"], 5);
        assert!(picked(&mut state).is_empty());
        let _w2 = session(&mut state, 2, &["q"], &["sha256"], 5);
        assert_eq!(picked(&mut state), [("a".to_string(), 2)]);
    }

    #[test]
    fn results_from_a_stale_attempt_are_refused() {
        let mut state = State::default();
        state.enqueue(job("a", "q", "k", 0, 1));
        let mut worker = session(&mut state, 1, &["q"], &[], 1);
        let starts = picked(&mut state);
        assert_eq!(starts.len(), 1);
        let carried = commit_start(&mut state, "a", None);
        assert!(
            carried.is_empty(),
            "its session is alive: nothing carried over"
        );
        assert!(
            matches!(
                worker.try_recv().ok().and_then(|m| m.message),
                Some(coordinator_message::Message::Assignment(a)) if a.job_id == "a"
            ),
            "the assignment went out on the session's stream"
        );
        assert!(
            state.take_running(1, "a", 1),
            "the current attempt's result"
        );
        // A second result for attempt 1, or one for an attempt never given, is stale.
        assert!(!state.take_running(1, "a", 1));
        assert!(!state.take_running(1, "a", 2));
    }

    #[test]
    fn a_lost_session_gives_its_jobs_back_as_lost_attempts() {
        let mut state = State::default();
        state.enqueue(job("a", "q", "k", 0, 1));
        let _w1 = session(&mut state, 1, &["q"], &[], 1);
        picked(&mut state);
        let mut finishes = commit_start(&mut state, "a", None);
        state.apply(
            Message::Disconnect {
                session: 1,
                reason: "test".into(),
            },
            &mut finishes,
        );
        assert_eq!(finishes.len(), 1);
        assert!(matches!(finishes[0].outcome, Outcome::Lost(_)));
        assert_eq!(finishes[0].attempt, 1);
    }

    #[test]
    fn delayed_jobs_become_ready_on_time() {
        let mut state = State::default();
        let at = now_ms() + 60_000;
        state.enqueue(ReadyJob {
            run_at_ms: at,
            ..job("later", "q", "k", 0, 1)
        });
        let _w1 = session(&mut state, 1, &["q"], &[], 1);
        assert!(picked(&mut state).is_empty());
        assert_eq!(state.next_due_ms(), Some(at));
        state.promote_due(at);
        assert_eq!(picked(&mut state), [("later".to_string(), 1)]);
    }
}
