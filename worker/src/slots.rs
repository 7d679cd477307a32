//! The worker's slots: which handlers run, on which stream they were assigned, and whether a
//! new assignment may start. Pure bookkeeping, so that the rules are testable without a
//! coordinator.
//!
//! A handler holds its slot until it actually returns, even after the stream it came on is
//! gone: the next `Hello` announces only the free slots, and the slot is given back with a
//! `Credit` on whatever stream is current when the handler returns.
//!
//! Handlers are told apart by their whole fencing token, `(job_id, attempt, epoch)`: after a
//! coordinator crash the same attempt number comes again with a higher epoch, and the old
//! handler (if it ignores its cancellation) runs on beside the new one.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
};

use tokio_util::sync::CancellationToken;

use crate::job::AttemptId;

/// Streams are numbered from 1 per worker; `DETACHED` is no stream at all.
pub(crate) const DETACHED: u64 = 0;

/// One running handler.
#[derive(Debug)]
pub(crate) struct RunningJob {
    pub id: AttemptId,
    /// The stream the job was assigned on: its result may go only there. `DETACHED` once that
    /// stream is gone or the job was released.
    pub stream: u64,
    pub token: CancellationToken,
}

/// What to do with an assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Run,
    /// Give it back unstarted with `Release`.
    Release(ReleaseReason),
    /// Fail it at once, not retryable: no handler for its kind.
    NoHandler,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReleaseReason {
    Draining,
    /// The coordinator sent more than the credits it had (a protocol violation).
    NoFreeSlot,
}

/// The running handlers, keyed by their task (`K` is `tokio::task::Id` in the worker).
#[derive(Debug)]
pub(crate) struct Slots<K> {
    slots: u32,
    jobs: HashMap<K, RunningJob>,
}

impl<K: Eq + Hash + Copy> Slots<K> {
    pub fn new(slots: u32) -> Self {
        Slots {
            slots,
            jobs: HashMap::new(),
        }
    }

    /// Slots not held by a handler, whatever stream it came on.
    pub fn free(&self) -> u32 {
        let busy = u32::try_from(self.jobs.len()).unwrap_or(u32::MAX);
        self.slots.saturating_sub(busy)
    }

    /// Whether an assignment may start. Draining wins over everything: the job goes back
    /// untouched. Without a free slot it goes back too (the coordinator overspent its credit).
    /// Only then is the kind looked at.
    pub fn admit(&self, draining: bool, has_handler: bool) -> Admission {
        if draining {
            Admission::Release(ReleaseReason::Draining)
        } else if self.free() == 0 {
            Admission::Release(ReleaseReason::NoFreeSlot)
        } else if !has_handler {
            Admission::NoHandler
        } else {
            Admission::Run
        }
    }

    pub fn insert(&mut self, key: K, job: RunningJob) {
        self.jobs.insert(key, job);
    }

    /// The handler of `key` has returned: its slot is free.
    pub fn remove(&mut self, key: K) -> Option<RunningJob> {
        self.jobs.remove(&key)
    }

    /// Fires the token of `job_id`'s handler if it runs `attempt` of `epoch`, on `stream` (any
    /// epoch for 0, see [`AttemptId::is_named_by`]). A cancel for an older or newer attempt,
    /// or for the same number handed out by another coordinator run, is not for this handler.
    pub fn cancel(&self, stream: u64, job_id: &str, attempt: u32, epoch: u64) -> bool {
        let mut found = false;
        for job in self.jobs.values() {
            if job.stream == stream && job.id.is_named_by(job_id, attempt, epoch) {
                job.token.cancel();
                found = true;
            }
        }
        found
    }

    /// How many handlers still owe `stream` a result.
    pub fn owed_to(&self, stream: u64) -> usize {
        self.jobs
            .values()
            .filter(|job| job.stream == stream)
            .count()
    }

    /// `stream` is gone, or its jobs are given back: fires their tokens and detaches them, so
    /// that their results are never sent. Returns the attempts.
    pub fn detach(&mut self, stream: u64) -> Vec<AttemptId> {
        let mut detached = Vec::new();
        for job in self.jobs.values_mut() {
            if job.stream == stream && stream != DETACHED {
                job.token.cancel();
                job.stream = DETACHED;
                detached.push(job.id.clone());
            }
        }
        detached
    }

    /// `stream` is gone but its jobs go on: they are detached, their handlers keep running, and
    /// the next hello presents them for the coordinator to re-adopt. Returns how many.
    pub fn hold(&mut self, stream: u64) -> usize {
        let mut held = 0;
        for job in self.jobs.values_mut() {
            if job.stream == stream && stream != DETACHED {
                job.stream = DETACHED;
                held += 1;
            }
        }
        held
    }

    /// The attempts of every detached handler still running.
    pub fn held(&self) -> Vec<AttemptId> {
        let mut held: Vec<AttemptId> = self
            .jobs
            .values()
            .filter(|job| job.stream == DETACHED)
            .map(|job| job.id.clone())
            .collect();
        held.sort();
        held
    }

    /// The coordinator's answer to a hello: detached handlers it re-adopted belong to
    /// `stream` now; the others were replaced, and their tokens fire. An adopted entry names
    /// its attempt by the whole token, or (epoch 0, a coordinator from before epochs) by job
    /// and number alone. Returns how many were stopped.
    pub fn adopt(&mut self, stream: u64, adopted: &HashSet<AttemptId>) -> usize {
        let mut stopped = 0;
        for job in self.jobs.values_mut() {
            if job.stream != DETACHED {
                continue;
            }
            let by_number = || AttemptId {
                epoch: 0,
                ..job.id.clone()
            };
            if adopted.contains(&job.id) || adopted.contains(&by_number()) {
                job.stream = stream;
            } else if !job.token.is_cancelled() {
                job.token.cancel();
                stopped += 1;
            }
        }
        stopped
    }

    /// Fires the tokens of detached handlers: their coordinator has given up on them.
    pub fn cancel_detached(&self) -> usize {
        let mut cancelled = 0;
        for job in self.jobs.values().filter(|job| job.stream == DETACHED) {
            if !job.token.is_cancelled() {
                job.token.cancel();
                cancelled += 1;
            }
        }
        cancelled
    }

    /// Fires every handler's token (the worker is stopping).
    pub fn cancel_all(&self) {
        for job in self.jobs.values() {
            job.token.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(job_id: &str, attempt: u32, epoch: u64) -> AttemptId {
        AttemptId {
            job_id: job_id.into(),
            attempt,
            epoch,
        }
    }

    fn job(job_id: &str, attempt: u32, epoch: u64, stream: u64) -> RunningJob {
        RunningJob {
            id: id(job_id, attempt, epoch),
            stream,
            token: CancellationToken::new(),
        }
    }

    #[test]
    fn admission_order() {
        let mut slots = Slots::new(1);
        assert_eq!(slots.admit(false, true), Admission::Run);
        assert_eq!(slots.admit(false, false), Admission::NoHandler);
        assert_eq!(
            slots.admit(true, true),
            Admission::Release(ReleaseReason::Draining)
        );
        slots.insert(1, job("a", 1, 1, 1));
        assert_eq!(
            slots.admit(false, true),
            Admission::Release(ReleaseReason::NoFreeSlot)
        );
        assert_eq!(
            slots.admit(false, false),
            Admission::Release(ReleaseReason::NoFreeSlot),
            "a job we have no room for goes back, whatever its kind"
        );
        assert_eq!(
            slots.admit(true, true),
            Admission::Release(ReleaseReason::Draining)
        );
        slots.remove(1);
        assert_eq!(slots.admit(false, true), Admission::Run);
    }

    #[test]
    fn detached_handlers_hold_their_slots() {
        let mut slots = Slots::new(3);
        slots.insert(1, job("a", 1, 2, 1));
        slots.insert(2, job("b", 4, 3, 1));
        assert_eq!(slots.free(), 1);
        assert_eq!(slots.owed_to(1), 2);

        let tokens: Vec<_> = [1, 2].map(|k| slots.jobs[&k].token.clone()).into();
        let mut detached = slots.detach(1);
        detached.sort();
        assert_eq!(
            detached,
            [id("a", 1, 2), id("b", 4, 3)],
            "released with their epochs"
        );
        assert!(tokens.iter().all(CancellationToken::is_cancelled));
        assert_eq!(slots.owed_to(1), 0, "nothing is sent on a lost stream");
        assert_eq!(
            slots.free(),
            1,
            "the slots stay held until the handlers return"
        );
        assert!(slots.detach(DETACHED).is_empty());

        // The next stream gets a job; then a detached handler returns.
        slots.insert(3, job("c", 1, 2, 2));
        assert_eq!(slots.free(), 0);
        let returned = slots.remove(1).expect("running");
        assert_eq!(returned.stream, DETACHED);
        assert_eq!(slots.free(), 1);
        assert_eq!(slots.owed_to(2), 1);
    }

    #[test]
    fn cancel_matches_stream_job_attempt_and_epoch() {
        let mut slots = Slots::new(4);
        slots.insert(1, job("a", 2, 5, 7));
        let token = slots.jobs[&1].token.clone();
        assert!(!slots.cancel(7, "a", 1, 5), "an older attempt");
        assert!(!slots.cancel(7, "b", 2, 5), "another job");
        assert!(!slots.cancel(6, "a", 2, 5), "another stream");
        assert!(
            !slots.cancel(7, "a", 2, 4),
            "the same number from another coordinator run"
        );
        assert!(!slots.cancel(7, "a", 2, 6));
        assert!(!token.is_cancelled());
        assert!(slots.cancel(7, "a", 2, 5));
        assert!(token.is_cancelled());
    }

    #[test]
    fn a_cancel_without_an_epoch_matches_by_number() {
        let mut slots = Slots::new(2);
        slots.insert(1, job("a", 2, 5, 7));
        slots.insert(2, job("a", 3, 5, 7));
        assert!(slots.cancel(7, "a", 2, 0));
        assert!(slots.jobs[&1].token.is_cancelled());
        assert!(!slots.jobs[&2].token.is_cancelled(), "another attempt");
    }

    #[test]
    fn one_attempt_number_of_two_epochs_is_two_attempts() {
        // Attempt 1 of job a from epoch 3, whose handler ignores cancellation, and attempt 1
        // again from epoch 4, after a coordinator crash.
        let mut slots = Slots::new(3);
        slots.insert(1, job("a", 1, 3, 1));
        slots.insert(2, job("a", 1, 4, 1));
        assert_eq!(slots.free(), 1, "each holds its own slot");
        let (old, new) = (slots.jobs[&1].token.clone(), slots.jobs[&2].token.clone());

        assert!(slots.cancel(1, "a", 1, 3));
        assert!(old.is_cancelled());
        assert!(!new.is_cancelled(), "the old one's cancel spares the new");

        assert_eq!(slots.hold(1), 2);
        assert_eq!(
            slots.held(),
            [id("a", 1, 3), id("a", 1, 4)],
            "both are presented, each with its epoch"
        );
        // The coordinator adopts only the one it handed out last.
        let adopted = HashSet::from([id("a", 1, 4)]);
        assert_eq!(
            slots.adopt(2, &adopted),
            0,
            "the old one was already stopped"
        );
        assert_eq!(slots.jobs[&2].stream, 2);
        assert!(!new.is_cancelled());
        assert_eq!(slots.jobs[&1].stream, DETACHED, "not adopted by its number");

        // Its handler returns at last: the new one still runs, on its slot.
        let returned = slots.remove(1).expect("running");
        assert_eq!(returned.id, id("a", 1, 3));
        assert_eq!(slots.owed_to(2), 1);
        assert_eq!(slots.free(), 2);
    }

    #[test]
    fn held_handlers_keep_running_and_are_adopted_or_stopped() {
        let mut slots = Slots::new(4);
        slots.insert(1, job("a", 1, 2, 1));
        slots.insert(2, job("b", 2, 2, 1));
        slots.insert(3, job("c", 1, 2, 1));
        assert_eq!(slots.hold(1), 3);
        assert!(
            slots.jobs.values().all(|j| !j.token.is_cancelled()),
            "a lost stream does not stop its handlers"
        );
        assert_eq!(slots.held(), [id("a", 1, 2), id("b", 2, 2), id("c", 1, 2)]);
        assert_eq!(slots.owed_to(1), 0);
        // `a` by its whole token; `c` by a coordinator from before epochs; `b` named with
        // another epoch is not adopted.
        let adopted = HashSet::from([id("a", 1, 2), id("b", 2, 1), id("c", 1, 0)]);
        assert_eq!(slots.adopt(5, &adopted), 1);
        assert_eq!(slots.jobs[&1].stream, 5);
        assert!(!slots.jobs[&1].token.is_cancelled());
        assert_eq!(slots.jobs[&3].stream, 5, "adopted by its number");
        assert!(!slots.jobs[&3].token.is_cancelled());
        assert!(slots.jobs[&2].token.is_cancelled(), "replaced: stopped");
        assert_eq!(slots.jobs[&2].stream, DETACHED);
        assert_eq!(slots.cancel_detached(), 0, "already stopped");
    }

    #[test]
    fn cancel_all_fires_every_token() {
        let mut slots = Slots::new(2);
        slots.insert(1, job("a", 1, 1, 1));
        slots.insert(2, job("b", 1, 1, DETACHED));
        slots.cancel_all();
        assert!(slots.jobs.values().all(|job| job.token.is_cancelled()));
    }
}
