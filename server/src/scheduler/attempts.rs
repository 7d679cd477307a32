//! The one table of attempts the scheduler has handed out: which attempt of which job is where,
//! in which phase, holding which permits. Every other view (a session's busy slots, whether a
//! result is current) is derived from it, and it is changed only through its own methods, so
//! the counts it keeps cannot drift from the entries.

use super::HashMap;

use crate::domain::{JobId, ReadyJob};

/// An attempt: a job and its fencing number (1 for the first attempt).
pub(crate) type Key = (JobId, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Picked for a session; its start is being committed.
    Starting,
    /// Committed and sent: its worker runs it.
    Running,
    /// Ended here (cancelled, expired, timed out) while its handler may still run: it keeps
    /// its permits until its worker reports it, so limits hold for what really runs.
    Stopping,
    /// Running, as far as anyone knows, on a worker that has no stream now (it was lost, or
    /// the coordinator restarted): kept, with its permits, for that worker to come back and
    /// reclaim it within the grace period.
    Detached,
}

/// The session of a detached attempt: none.
pub(crate) const NO_SESSION: u64 = 0;

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub session: u64,
    /// The worker it was given to: only that worker may reclaim it.
    pub worker_id: String,
    /// The run that started it: with the key, its fencing token.
    pub epoch: u64,
    pub phase: Phase,
    /// Found running when the coordinator started (not handed out by this process): if
    /// nobody reclaims it, it was interrupted, not lost.
    pub recovered: bool,
    /// The job as it was queued: put back if its start does not commit, and the source of
    /// its permits (`scopes()`, `weight`) and deadline.
    pub job: ReadyJob,
}

/// The attempts table.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    entries: HashMap<Key, Entry>,
    /// Starting and running attempts per session: the slots the scheduler knows are busy.
    busy: HashMap<u64, u32>,
    /// Attempts in the `Detached` phase.
    detached: usize,
}

impl Attempts {
    pub(crate) fn get(&self, key: &Key) -> Option<&Entry> {
        self.entries.get(key)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Attempts waiting, detached, for their worker to come back.
    pub(crate) fn detached(&self) -> usize {
        self.detached
    }

    /// Starting and running attempts of `session`.
    pub(crate) fn busy(&self, session: u64) -> u32 {
        self.busy.get(&session).copied().unwrap_or(0)
    }

    /// Every attempt of `session`, in any phase.
    pub(crate) fn of_session(&self, session: u64) -> Vec<Key> {
        let mut keys: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| e.session == session)
            .map(|(k, _)| *k)
            .collect();
        keys.sort();
        keys
    }

    /// Every entry, for checking invariants.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.entries.iter()
    }

    /// A new starting attempt. False (and nothing changes) if the key is taken.
    pub(crate) fn start(
        &mut self,
        key: Key,
        epoch: u64,
        session: u64,
        worker_id: String,
        job: ReadyJob,
    ) -> bool {
        self.insert(
            key,
            Entry {
                session,
                worker_id,
                epoch,
                phase: Phase::Starting,
                recovered: false,
                job,
            },
        )
    }

    /// An attempt found running at start, detached until its worker reclaims it. False (and
    /// nothing changes) if the key is taken.
    pub(crate) fn recovered(
        &mut self,
        key: Key,
        epoch: u64,
        worker_id: String,
        job: ReadyJob,
    ) -> bool {
        self.insert(
            key,
            Entry {
                session: NO_SESSION,
                worker_id,
                epoch,
                phase: Phase::Detached,
                recovered: true,
                job,
            },
        )
    }

    fn insert(&mut self, key: Key, entry: Entry) -> bool {
        if self.entries.contains_key(&key) {
            return false;
        }
        if busy(entry.phase) {
            *self.busy.entry(entry.session).or_default() += 1;
        }
        self.detached += usize::from(entry.phase == Phase::Detached);
        self.entries.insert(key, entry);
        true
    }

    /// Moves an attempt to `phase`; false if there is no such attempt.
    pub(crate) fn set_phase(&mut self, key: &Key, phase: Phase) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        let was_busy = busy(entry.phase);
        let was_detached = entry.phase == Phase::Detached;
        entry.phase = phase;
        self.detached =
            self.detached + usize::from(phase == Phase::Detached) - usize::from(was_detached);
        let session = entry.session;
        match (was_busy, busy(phase)) {
            (true, false) => self.unbusy(session),
            (false, true) => *self.busy.entry(session).or_default() += 1,
            _ => {}
        }
        true
    }

    /// Its worker's stream is gone: the attempt waits, detached, for the worker to come back.
    pub(crate) fn detach(&mut self, key: &Key) -> bool {
        if !self.set_phase(key, Phase::Detached) {
            return false;
        }
        if let Some(entry) = self.entries.get_mut(key) {
            entry.session = NO_SESSION;
        }
        true
    }

    /// A detached attempt's worker came back on `session` and still holds it: it runs there.
    pub(crate) fn adopt(&mut self, key: &Key, session: u64) -> bool {
        match self.entries.get_mut(key) {
            Some(entry) if entry.phase == Phase::Detached => entry.session = session,
            _ => return false,
        }
        self.set_phase(key, Phase::Running)
    }

    /// Detached attempts of `worker_id`.
    pub(crate) fn detached_of(&self, worker_id: &str) -> Vec<Key> {
        let mut keys: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| e.phase == Phase::Detached && e.worker_id == worker_id)
            .map(|(k, _)| *k)
            .collect();
        keys.sort();
        keys
    }

    /// Takes an attempt out of the table. Its permits are the caller's to give back: the
    /// scheduler does that in one place (`Core::retire`).
    pub(crate) fn remove(&mut self, key: &Key) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        if busy(entry.phase) {
            self.unbusy(entry.session);
        }
        self.detached -= usize::from(entry.phase == Phase::Detached);
        Some(entry)
    }

    fn unbusy(&mut self, session: u64) {
        if let Some(n) = self.busy.get_mut(&session) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.busy.remove(&session);
            }
        }
    }
}

/// Whether an attempt in `phase` takes one of its session's slots as the scheduler counts
/// them: a stopping one's slot is its worker's to give back, a detached one has no session.
fn busy(phase: Phase) -> bool {
    matches!(phase, Phase::Starting | Phase::Running)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::lanes::tests::{job, test_id};

    #[test]
    fn busy_slots_follow_the_phases() {
        let mut t = Attempts::default();
        let a = (test_id(1), 1);
        let b = (test_id(2), 1);
        assert!(t.start(a, 1, 7, "w".into(), job(1, "q", 0, 1)));
        assert!(
            !t.start(a, 1, 8, "w".into(), job(1, "q", 0, 1)),
            "one entry per attempt"
        );
        assert!(t.start(b, 1, 7, "w".into(), job(2, "q", 0, 2)));
        assert_eq!(t.busy(7), 2);
        t.set_phase(&a, Phase::Running);
        assert_eq!(t.busy(7), 2);
        t.set_phase(&a, Phase::Stopping);
        assert_eq!(
            t.busy(7),
            1,
            "a stopping attempt's slot is the worker's to give back"
        );
        assert_eq!(t.of_session(7), {
            let mut k = vec![a, b];
            k.sort();
            k
        });
        assert!(t.remove(&a).is_some());
        assert!(t.remove(&b).is_some());
        assert_eq!(t.busy(7), 0);
        assert_eq!(t.len(), 0);
        assert!(t.remove(&a).is_none());
    }

    #[test]
    fn a_detached_attempt_leaves_its_session_and_is_adopted_by_another() {
        let mut t = Attempts::default();
        let a = (test_id(1), 1);
        assert!(t.start(a, 1, 7, "w".into(), job(1, "q", 0, 1)));
        t.set_phase(&a, Phase::Running);
        assert!(t.detach(&a));
        assert_eq!(t.busy(7), 0, "a detached attempt has no session");
        assert_eq!(t.detached(), 1);
        assert_eq!(t.detached_of("w"), [a]);
        assert!(t.detached_of("other").is_empty());
        assert!(t.adopt(&a, 9));
        assert_eq!(t.busy(9), 1);
        assert_eq!(t.detached(), 0);
        assert_eq!(
            t.get(&a).map(|e| (e.session, e.phase)),
            Some((9, Phase::Running))
        );
        assert!(!t.adopt(&a, 10), "only a detached attempt can be adopted");
        let r = (test_id(2), 3);
        assert!(t.recovered(r, 1, "w".into(), job(2, "q", 0, 2)));
        assert_eq!(t.detached_of("w"), [r]);
        assert!(t.get(&r).is_some_and(|e| e.recovered));
        assert_eq!(t.detached(), 1);
        t.remove(&r);
        assert_eq!(t.detached(), 0);
    }
}
