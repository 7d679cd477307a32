//! The scheduler's decisions, kept pure: [`Core`] owns the parts (ready lanes, timers, the
//! attempts table, sessions, quotas) and turns what happens into what to do. It never sends
//! on a socket, builds a span or records a metric: it plans the store's next transition
//! ([`Core::plan`]) and, once that commits, says what the runner must do ([`Effect`]).

use std::time::Duration;

use tokio::time::Instant;

use super::{
    HashMap, HashSet,
    attempts::{Attempts, Key, Phase},
    explain,
    lanes::Lanes,
    quotas::{Quotas, Refusal},
    sessions::{SessionInfo, Sessions},
    timers::{Clock, Timers},
};
use crate::{
    domain::{Blocked, Dispatch, JobId, Outcome, Quota, ReadyJob, RunningAttempt, WorkerView},
    store::{Finish, RetryPolicy, Start, TransitionOutcome, Transitions},
};

/// What the runner does after a decision.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Send this attempt to its session (after its start committed).
    Assign {
        session: u64,
        worker_id: String,
        dispatch: Box<Dispatch>,
        queued_since_ms: i64,
    },
    /// Tell a session's worker to stop an attempt.
    Stop {
        session: u64,
        job_id: JobId,
        attempt: u32,
        epoch: u64,
        reason: String,
    },
    /// End a session's stream.
    EndSession { session: u64 },
    /// A result from an attempt that is no longer current was refused.
    Refused { job_id: JobId, attempt: u32 },
}

/// What a worker's message names an attempt by: its fencing token (workers.proto, point 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub job_id: JobId,
    pub attempt: u32,
    /// The run that started it; 0 from a worker written before epochs, which is fenced by the
    /// attempt number alone.
    pub epoch: u64,
}

/// An attempt a reconnecting worker says it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub key: Key,
    /// The epoch of its token; 0 from a worker written before epochs, which is fenced by the
    /// attempt number alone.
    pub epoch: u64,
    /// Its handler has returned: its result follows.
    pub finished: bool,
}

/// Why an attempt's end timer fired.
const DEADLINE_PASSED: &str = "the job's deadline passed";
const TIMEOUT_PASSED: &str = "the attempt's timeout passed";

pub(crate) struct Core {
    clock: Clock,
    lanes: Lanes,
    /// Queued jobs waiting for their `run_at` (or a retry backoff), with their timers.
    delayed: HashMap<JobId, ReadyJob>,
    promote: Timers<JobId>,
    /// Queued jobs' deadlines: a job still queued at its deadline ends without running.
    deadlines: Timers<JobId>,
    /// Deadlines of queued jobs that wait for their dependencies (not in the lanes): such a
    /// job ends at its deadline too. Cancelled when it becomes ready or leaves.
    waiting: Timers<JobId>,
    /// Running attempts' ends (the sooner of the job's deadline and the attempt's timeout).
    attempt_ends: Timers<Key>,
    /// Detached attempts' ends of grace: unclaimed by then, they are lost (or interrupted).
    reclaim: Timers<Key>,
    /// How long a detached attempt waits for its worker; zero loses it at once.
    grace: Duration,
    /// This run's epoch: every attempt it starts carries it in its fencing token.
    epoch: u64,
    /// The soonest a rate limit that held a job back has a token again.
    rate_wake: Option<Instant>,
    attempts: Attempts,
    sessions: Sessions,
    quotas: Quotas,
    paused: HashSet<String>,
    /// Queued jobs in memory (ready or delayed) by queue, for the queue-depth gauge.
    depth: HashMap<String, u64>,
    /// Attempts the store ended (cancelled) while their start was still committing: when
    /// the start settles, the attempt is dropped instead of sent.
    ended_while_starting: HashSet<Key>,
    /// The next transition, gathered over a round.
    finishes: Vec<Finish>,
    expire: Vec<JobId>,
    starts: Vec<Start>,
    effects: Vec<Effect>,
}

impl Core {
    pub(crate) fn new(clock: Clock) -> Core {
        Core {
            clock,
            lanes: Lanes::default(),
            delayed: HashMap::default(),
            promote: Timers::default(),
            deadlines: Timers::default(),
            waiting: Timers::default(),
            attempt_ends: Timers::default(),
            reclaim: Timers::default(),
            grace: Duration::ZERO,
            epoch: 0,
            rate_wake: None,
            attempts: Attempts::default(),
            sessions: Sessions::default(),
            quotas: Quotas::default(),
            paused: HashSet::default(),
            depth: HashMap::default(),
            ended_while_starting: HashSet::default(),
            finishes: Vec::new(),
            expire: Vec::new(),
            starts: Vec::new(),
            effects: Vec::new(),
        }
    }

    /// How long the attempts of a lost stream wait for their worker to come back.
    pub(crate) fn set_reconnect_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// The epoch the store took for this run ([`crate::store::Recovered::epoch`]).
    pub(crate) fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    // --- queued jobs -------------------------------------------------------------------

    /// A job that is ready, or will be at its `run_at`.
    pub(crate) fn enqueue(&mut self, job: ReadyJob) {
        let queued = self.lanes.contains(job.id) || self.delayed.contains_key(&job.id);
        let started = self.attempts.get(&(job.id, job.attempt + 1)).is_some()
            || self
                .attempts
                .get(&(job.id, job.attempt))
                .is_some_and(|e| e.phase != Phase::Stopping);
        if queued || started {
            return;
        }
        self.waiting.cancel(job.id);
        if let Some(deadline) = job.deadline_ms {
            self.deadlines.set(job.id, self.clock.instant_at(deadline));
        }
        match self.depth.get_mut(&job.queue) {
            Some(depth) => *depth += 1,
            None => drop(self.depth.insert(job.queue.clone(), 1)),
        }
        if job.run_at_ms > self.clock.now_ms() {
            self.promote
                .set(job.id, self.clock.instant_at(job.run_at_ms));
            self.delayed.insert(job.id, job);
        } else {
            // Due: it takes its place by priority and submission order, as a delayed job does
            // when its time comes (a job handed back or lost goes back where it was, not
            // behind every job submitted since).
            self.lanes.insert(ReadyJob {
                run_at_ms: 0,
                ..job
            });
        }
    }

    /// A queued job that waits for its dependencies, with its deadline: it ends then unless
    /// it became ready (`enqueue`) or left (`remove`) first.
    pub(crate) fn wait(&mut self, id: JobId, deadline_ms: i64) {
        // Its dependencies may have succeeded (and it been enqueued) before its submit's
        // answer reached here. Had it even started, the store would expire it only while it
        // is queued, which is right at its deadline whatever happened meanwhile.
        if !(self.lanes.contains(id) || self.delayed.contains_key(&id)) {
            self.waiting.set(id, self.clock.instant_at(deadline_ms));
        }
    }

    /// A job that left the queue without running (cancelled, expired).
    pub(crate) fn remove(&mut self, id: JobId) -> Option<ReadyJob> {
        self.waiting.cancel(id);
        let job = match self.lanes.remove(id) {
            Some(job) => job,
            None => {
                self.promote.cancel(id);
                self.delayed.remove(&id)?
            }
        };
        self.leave(&job);
        Some(job)
    }

    /// A job is no longer queued: its deadline timer and its count go.
    fn leave(&mut self, job: &ReadyJob) {
        self.deadlines.cancel(job.id);
        if let Some(depth) = self.depth.get_mut(&job.queue) {
            *depth = depth.saturating_sub(1);
        }
    }

    /// Ends what ran out of time by now (nothing is dispatched after its deadline), and moves
    /// delayed jobs whose time has come into the lanes.
    pub(crate) fn tick(&mut self) {
        let now = Instant::now();
        for id in self.deadlines.pop_due(now) {
            if self.remove(id).is_some() {
                self.expire.push(id);
            }
        }
        // Still waiting for dependencies at its deadline: the store ends it (and what
        // depends on it) only if it is still queued.
        self.expire.extend(self.waiting.pop_due(now));
        let now_ms = self.clock.now_ms();
        for key in self.attempt_ends.pop_due(now) {
            let Some(entry) = self.attempts.get(&key) else {
                continue;
            };
            let whole_job = entry.job.deadline_ms.is_some_and(|d| d <= now_ms);
            let (session, epoch) = (entry.session, entry.epoch);
            let (outcome, reason) = if whole_job {
                (Outcome::Expired, DEADLINE_PASSED)
            } else {
                (Outcome::TimedOut, TIMEOUT_PASSED)
            };
            if entry.phase == Phase::Detached {
                // Nobody to tell: if its worker comes back with it, it is not re-adopted
                // and the worker stops it then.
                self.retire(key);
            } else if self.fence(key) {
                self.effects.push(Effect::Stop {
                    session,
                    job_id: key.0,
                    attempt: key.1,
                    epoch,
                    reason: reason.to_owned(),
                });
            } else {
                continue;
            }
            self.finishes.push(Finish {
                job_id: key.0,
                attempt: key.1,
                outcome,
            });
        }
        for key in self.reclaim.pop_due(now) {
            self.unclaimed(
                key,
                "it did not come back within the reconnect grace period",
            );
        }
        for id in self.promote.pop_due(now) {
            if let Some(job) = self.delayed.remove(&id) {
                self.lanes.insert(ReadyJob {
                    run_at_ms: 0,
                    ..job
                });
            }
        }
    }

    /// When something is next due: a delayed job, a deadline, an attempt's end, a rate token.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        [
            self.promote.next(),
            self.deadlines.next(),
            self.waiting.next(),
            self.attempt_ends.next(),
            self.reclaim.next(),
            self.rate_wake,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // --- dispatch ----------------------------------------------------------------------

    /// The best ready job session `id` may take now.
    fn best_for(&mut self, id: u64, now_ms: i64) -> Option<JobId> {
        let Core {
            lanes,
            sessions,
            quotas,
            paused,
            rate_wake,
            clock,
            ..
        } = self;
        let session = sessions.get(id)?;
        lanes.best(
            |queue, kind| !paused.contains(queue) && session.serves(queue, kind),
            |bucket| session.info.tenant.as_ref().is_none_or(|t| *t == bucket.0),
            |job| match quotas.check(&job.scopes(), job.weight, now_ms) {
                Ok(()) => true,
                Err(Refusal::Rate { until_ms, .. }) => {
                    let at = clock.instant_at(until_ms);
                    *rate_wake = Some(rate_wake.map_or(at, |w| w.min(at)));
                    false
                }
                Err(Refusal::Permits { .. }) => false,
            },
        )
    }

    /// Whether some open session could take a job now.
    pub(crate) fn can_dispatch(&mut self) -> bool {
        let now_ms = self.clock.now_ms();
        let open: Vec<u64> = self
            .sessions
            .iter()
            .filter(|s| s.open())
            .map(|s| s.info.id)
            .collect();
        open.into_iter()
            .any(|id| self.best_for(id, now_ms).is_some())
    }

    /// Hands ready jobs to sessions with credit, one at a time round-robin, so that work
    /// spreads over the workers; each job takes its permits as it is picked.
    pub(crate) fn pick(&mut self) {
        let order = self.sessions.rotation();
        if order.is_empty() {
            return;
        }
        let now_ms = self.clock.now_ms();
        self.rate_wake = None;
        loop {
            let mut progress = false;
            for &id in &order {
                if !self.sessions.get(id).is_some_and(|s| s.open()) {
                    continue;
                }
                let Some(job_id) = self.best_for(id, now_ms) else {
                    continue;
                };
                let Some(job) = self.lanes.take(job_id) else {
                    continue;
                };
                let Some(session) = self.sessions.get_mut(id) else {
                    continue;
                };
                session.credits -= 1;
                let worker_id = session.info.worker_id.clone();
                self.leave(&job);
                self.quotas.acquire(&job.scopes(), job.weight, now_ms);
                let attempt = job.attempt + 1;
                self.starts.push(Start {
                    job_id,
                    attempt,
                    epoch: self.epoch,
                    session: id,
                    worker_id: worker_id.clone(),
                });
                self.attempts
                    .start((job_id, attempt), self.epoch, id, worker_id.clone(), job);
                progress = true;
            }
            if !progress {
                break;
            }
        }
    }

    /// The transition this round decided, if any: what to commit next.
    pub(crate) fn plan(&mut self, retry: RetryPolicy) -> Option<Transitions> {
        let ops = Transitions {
            finishes: std::mem::take(&mut self.finishes),
            expire: std::mem::take(&mut self.expire),
            starts: std::mem::take(&mut self.starts),
            retry,
        };
        (!ops.is_empty()).then_some(ops)
    }

    /// A committed transition: assignments go out, starts that did not happen give their
    /// permits and credits back, new ready jobs are queued.
    pub(crate) fn settle(&mut self, out: TransitionOutcome) {
        for started in out.started {
            let key = (started.dispatch.job_id, started.dispatch.attempt);
            let Some(session) = self.attempts.get(&key).map(|e| e.session) else {
                continue;
            };
            if self.ended_while_starting.remove(&key) {
                // Cancelled in the store after this start committed, before it settled: its
                // worker never hears of it, and its slot and permits come back.
                self.retire(key);
                if let Some(s) = self.sessions.get_mut(session) {
                    s.credits += 1;
                }
                continue;
            }
            let Some(worker_id) = self.sessions.get(session).map(|s| s.info.worker_id.clone())
            else {
                // The session died while its start was committing: not the worker's fault.
                self.retire(key);
                self.finishes.push(Finish {
                    job_id: key.0,
                    attempt: key.1,
                    outcome: Outcome::Released("its worker left before it was sent".into()),
                });
                continue;
            };
            self.attempts.set_phase(&key, Phase::Running);
            if let Some(ends) = started.dispatch.ends_ms {
                self.attempt_ends.set(key, self.clock.instant_at(ends));
            }
            self.effects.push(Effect::Assign {
                session,
                worker_id,
                dispatch: Box::new(started.dispatch),
                queued_since_ms: started.queued_since_ms,
            });
        }
        for (session, job_id, attempt) in out.not_started {
            self.retire((job_id, attempt));
            if let Some(s) = self.sessions.get_mut(session) {
                s.credits += 1;
            }
        }
        for job in out.ready {
            self.enqueue(job);
        }
        for id in out.cancelled_dependents {
            self.remove(id);
        }
        for (id, attempt) in out.stopped {
            self.stop_ended(id, attempt, "a job it belongs to ended");
        }
        for (job_id, attempt) in out.stale {
            self.effects.push(Effect::Refused { job_id, attempt });
        }
    }

    /// A transition that failed to commit: what it picked goes back, so nothing is lost; its
    /// finishes are tried again with the next one.
    pub(crate) fn unplan(&mut self, ops: Transitions) {
        for start in ops.starts {
            if let Some(entry) = self.retire((start.job_id, start.attempt)) {
                self.enqueue(entry.job);
            }
            if let Some(session) = self.sessions.get_mut(start.session) {
                session.credits += 1;
            }
        }
        let mut finishes = ops.finishes;
        finishes.append(&mut self.finishes);
        self.finishes = finishes;
        let mut expire = ops.expire;
        expire.append(&mut self.expire);
        self.expire = expire;
    }

    /// Whether finishes or expiries wait to be committed.
    pub(crate) fn has_pending(&self) -> bool {
        !self.finishes.is_empty() || !self.expire.is_empty()
    }

    pub(crate) fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    // --- attempts ----------------------------------------------------------------------

    /// Takes an attempt out of the table and gives back its permits: the one place they are
    /// given back, whatever way the attempt ended.
    fn retire(&mut self, key: Key) -> Option<super::attempts::Entry> {
        self.ended_while_starting.remove(&key);
        let entry = self.attempts.remove(&key)?;
        self.quotas.release(&entry.job.scopes(), entry.job.weight);
        self.attempt_ends.cancel(key);
        self.reclaim.cancel(key);
        Some(entry)
    }

    /// Ends a running attempt here while its handler may still run: it stops being current,
    /// but keeps its permits until its worker reports it (or is lost).
    fn fence(&mut self, key: Key) -> bool {
        if self
            .attempts
            .get(&key)
            .is_none_or(|e| e.phase != Phase::Running)
        {
            return false;
        }
        self.attempt_ends.cancel(key);
        self.attempts.set_phase(&key, Phase::Stopping)
    }

    /// An attempt the store already ended (cancelled): fenced, and its worker told to stop.
    pub(crate) fn stop_ended(&mut self, job_id: JobId, attempt: u32, reason: &str) {
        let key = (job_id, attempt);
        let Some((session, phase, epoch)) = self
            .attempts
            .get(&key)
            .map(|e| (e.session, e.phase, e.epoch))
        else {
            return;
        };
        if phase == Phase::Detached {
            // The store has ended it already; a worker that comes back with it is told to
            // stop then, as it is not re-adopted.
            self.retire(key);
        } else if phase == Phase::Starting {
            // Its start is still committing (a round in flight): dropped when it settles.
            self.ended_while_starting.insert(key);
        } else if self.fence(key) {
            self.effects.push(Effect::Stop {
                session,
                job_id,
                attempt,
                epoch,
                reason: reason.to_owned(),
            });
        }
    }

    /// Takes a report of an attempt off the table if it comes from the session that holds
    /// the job's current attempt; true then. Anything else is stale and refused (a stopped
    /// attempt's report still gives its permits back).
    fn take_report(&mut self, session: u64, key: Key, epoch: u64) -> bool {
        // The same number from another run is another attempt (a start a crash lost): its
        // report changes nothing here. A worker that sends no epoch is fenced by the number.
        let (phase, holder) = match self.attempts.get(&key) {
            Some(e) if epoch == 0 || epoch == e.epoch => (Some(e.phase), e.session),
            _ => (None, 0),
        };
        let current = phase == Some(Phase::Running) && holder == session;
        if current || (phase == Some(Phase::Stopping) && holder == session) {
            self.retire(key);
        }
        if !current {
            self.effects.push(Effect::Refused {
                job_id: key.0,
                attempt: key.1,
            });
        }
        current
    }

    /// A worker reported an attempt's result.
    pub(crate) fn result(&mut self, session: u64, token: Token, outcome: Outcome) {
        let Token {
            job_id,
            attempt,
            epoch,
        } = token;
        if self.take_report(session, (job_id, attempt), epoch) {
            self.finishes.push(Finish {
                job_id,
                attempt,
                outcome,
            });
        }
    }

    /// A draining worker handed an attempt back.
    pub(crate) fn release(&mut self, session: u64, token: Token) {
        let outcome = Outcome::Released("handed back by a draining worker".into());
        self.result(session, token, outcome);
    }

    // --- sessions ----------------------------------------------------------------------

    /// A worker's new session. `held` are the attempts it says it still holds from earlier
    /// streams (with whether each has finished: its result follows). Those that are still
    /// current (the same number, started in the same epoch) and were given to this worker are
    /// re-adopted and returned; the worker's other detached attempts are ended at once, since
    /// it no longer has them. Its credit is its slots less the held attempts still running
    /// (their slots come back with `Credit`).
    pub(crate) fn connect(&mut self, info: SessionInfo, held: &[Held]) -> Vec<Held> {
        tracing::info!(worker = %info.worker_id, session = info.id, slots = info.slots, held = held.len(), "worker session started");
        let id = info.id;
        let worker_id = info.worker_id.clone();
        let tenant = info.tenant.clone();
        let slots = info.slots;
        let still_running = held.iter().filter(|h| !h.finished).count() as u32;
        // A worker that reconnects replaces its old session at once: what that one ran is
        // detached, for this one to adopt.
        let older = self.sessions.connect(info, self.clock.now_ms());
        for old in older {
            self.drop_session(old, "the worker connected again");
        }
        let mut adopted = Vec::new();
        for &h @ Held { key, epoch, .. } in held {
            let ours = self.attempts.get(&key).is_some_and(|e| {
                e.phase == Phase::Detached
                    && e.worker_id == worker_id
                    && (epoch == e.epoch || epoch == 0)
                    && tenant
                        .as_ref()
                        .is_none_or(|t| e.job.tenant_id.as_ref() == Some(t))
            });
            if ours && self.attempts.adopt(&key, id) {
                self.reclaim.cancel(key);
                adopted.push(h);
            }
        }
        for key in self.attempts.detached_of(&worker_id) {
            self.unclaimed(key, "its worker came back without it");
        }
        if let Some(session) = self.sessions.get_mut(id) {
            session.credits = slots.saturating_sub(still_running);
        }
        if !adopted.is_empty() {
            tracing::info!(worker = %worker_id, session = id, adopted = adopted.len(), "re-adopted attempts that outlived their stream");
        }
        adopted
    }

    /// Attempts found running at start: detached, holding their permits, for their workers
    /// to reclaim within the grace period.
    pub(crate) fn recovered(&mut self, running: Vec<RunningAttempt>) {
        let now_ms = self.clock.now_ms();
        for r in running {
            let key = (r.job.id, r.attempt);
            let (scopes, weight) = (r.job.scopes(), r.job.weight);
            if !self.attempts.recovered(key, r.epoch, r.worker_id, r.job) {
                continue;
            }
            // Only for an attempt the table took: `retire` gives back what it holds.
            self.quotas.acquire(&scopes, weight, now_ms);
            if let Some(ends) = r.ends_ms {
                self.attempt_ends.set(key, self.clock.instant_at(ends));
            }
            self.reclaim.set(key, Instant::now() + self.grace);
        }
    }

    /// A detached attempt nobody reclaimed: lost, or interrupted if it was found at start.
    fn unclaimed(&mut self, key: Key, why: &str) {
        let Some(entry) = self.attempts.get(&key) else {
            return;
        };
        if entry.phase != Phase::Detached {
            return;
        }
        let outcome = if entry.recovered {
            Outcome::Interrupted(format!("the coordinator restarted and {why}"))
        } else {
            Outcome::Lost(format!("worker {} was lost: {why}", entry.worker_id))
        };
        self.retire(key);
        self.finishes.push(Finish {
            job_id: key.0,
            attempt: key.1,
            outcome,
        });
    }

    pub(crate) fn credit(&mut self, session: u64, slots: u32) {
        let busy = self.attempts.busy(session);
        self.sessions.credit(session, slots, busy);
    }

    pub(crate) fn drain(&mut self, session: u64) {
        self.sessions.drain(session);
    }

    /// Removes a session. Its running attempts are detached for the grace period, for its
    /// worker to come back and reclaim them (lost at once, and counted, with no grace); its
    /// stopped ones give their permits back. Starting ones are settled when their commit
    /// comes back.
    pub(crate) fn drop_session(&mut self, id: u64, reason: &str) {
        let Some(session) = self.sessions.remove(id) else {
            return;
        };
        self.effects.push(Effect::EndSession { session: id });
        let mut lost = 0;
        let mut detached = 0;
        for key in self.attempts.of_session(id) {
            let phase = self.attempts.get(&key).map(|e| e.phase);
            match phase {
                Some(Phase::Running) if !self.grace.is_zero() => {
                    self.attempts.detach(&key);
                    self.reclaim.set(key, Instant::now() + self.grace);
                    detached += 1;
                }
                Some(Phase::Running) => {
                    self.retire(key);
                    lost += 1;
                    self.finishes.push(Finish {
                        job_id: key.0,
                        attempt: key.1,
                        outcome: Outcome::Lost(format!(
                            "worker {} was lost: {reason}",
                            session.info.worker_id
                        )),
                    });
                }
                Some(Phase::Stopping) => {
                    self.retire(key);
                }
                Some(Phase::Starting | Phase::Detached) | None => {}
            }
        }
        tracing::info!(
            worker = %session.info.worker_id,
            session = id,
            lost,
            detached,
            grace = ?self.grace,
            reason,
            "worker session ended"
        );
    }

    // --- questions and control -----------------------------------------------------------

    pub(crate) fn workers(&self) -> Vec<WorkerView> {
        self.sessions
            .iter()
            .map(|s| WorkerView {
                worker_id: s.info.worker_id.clone(),
                queues: s.info.queues.iter().cloned().collect(),
                kinds: s.info.kinds.iter().cloned().collect(),
                slots: s.info.slots,
                // Slots the worker has not given back: running handlers, including ones
                // told to stop that have not returned yet.
                running: s.info.slots.saturating_sub(s.credits),
                connected_at_ms: s.connected_at_ms,
                peer: s.info.peer.clone(),
                last_heartbeat_ms: s
                    .info
                    .last_heartbeat_ms
                    .load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect()
    }

    pub(crate) fn explain(&mut self, job: &ReadyJob) -> Option<Blocked> {
        let now_ms = self.clock.now_ms();
        explain::explain(job, &self.paused, &self.sessions, &mut self.quotas, now_ms)
    }

    pub(crate) fn set_quota(&mut self, quota: &Quota) {
        self.quotas.set(quota, self.clock.now_ms());
    }

    pub(crate) fn pause(&mut self, queue: String, paused: bool) {
        if paused {
            self.paused.insert(queue);
        } else {
            self.paused.remove(&queue);
        }
    }

    pub(crate) fn held(&self, scope: &str) -> u32 {
        self.quotas.held(scope)
    }

    /// Queued jobs in memory by queue (a queue once seen keeps its entry).
    pub(crate) fn depths(&self) -> impl Iterator<Item = (&String, u64)> {
        self.depth.iter().map(|(q, d)| (q, *d))
    }

    /// Attempts waiting, detached, for their worker to come back.
    pub(crate) fn detached(&self) -> usize {
        self.attempts.detached()
    }

    /// Connected sessions and their slots in all.
    pub(crate) fn fleet(&self) -> (u64, u64) {
        (self.sessions.len() as u64, self.sessions.slots())
    }

    /// For invariant checks in tests: the attempts table and the quotas.
    #[cfg(test)]
    pub(crate) fn parts(&self) -> (&Attempts, &Quotas, &Sessions) {
        (&self.attempts, &self.quotas, &self.sessions)
    }

    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.lanes.len() + self.delayed.len()
    }

    #[cfg(test)]
    pub(crate) fn is_queued(&self, id: JobId) -> bool {
        self.lanes.contains(id) || self.delayed.contains_key(&id)
    }

    #[cfg(test)]
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}
