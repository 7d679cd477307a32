//! The one table of attempts the scheduler has handed out: which attempt of which job is where,
//! in which phase, holding which permits. Every other view (a session's busy slots, whether a
//! result is current) is derived from it, and it is changed only through its own methods, so
//! the counts it keeps cannot drift from the entries.

use std::collections::HashMap;

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
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub session: u64,
    pub phase: Phase,
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
}

impl Attempts {
    pub(crate) fn get(&self, key: &Key) -> Option<&Entry> {
        self.entries.get(key)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
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
    pub(crate) fn start(&mut self, key: Key, session: u64, job: ReadyJob) -> bool {
        if self.entries.contains_key(&key) {
            return false;
        }
        self.entries.insert(
            key,
            Entry {
                session,
                phase: Phase::Starting,
                job,
            },
        );
        *self.busy.entry(session).or_default() += 1;
        true
    }

    /// Moves an attempt to `phase`; false if there is no such attempt.
    pub(crate) fn set_phase(&mut self, key: &Key, phase: Phase) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        let was_busy = entry.phase != Phase::Stopping;
        entry.phase = phase;
        let is_busy = phase != Phase::Stopping;
        let session = entry.session;
        match (was_busy, is_busy) {
            (true, false) => self.unbusy(session),
            (false, true) => *self.busy.entry(session).or_default() += 1,
            _ => {}
        }
        true
    }

    /// Takes an attempt out of the table. Its permits are the caller's to give back: the
    /// scheduler does that in one place (`Core::retire`).
    pub(crate) fn remove(&mut self, key: &Key) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        if entry.phase != Phase::Stopping {
            self.unbusy(entry.session);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::lanes::tests::{job, test_id};

    #[test]
    fn busy_slots_follow_the_phases() {
        let mut t = Attempts::default();
        let a = (test_id(1), 1);
        let b = (test_id(2), 1);
        assert!(t.start(a, 7, job(1, "q", 0, 1)));
        assert!(!t.start(a, 8, job(1, "q", 0, 1)), "one entry per attempt");
        assert!(t.start(b, 7, job(2, "q", 0, 2)));
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
}
