//! Worker sessions as the scheduler knows them: what each serves, its credits (free slots it
//! has offered), whether it drains, and the round-robin turn that spreads work over them.

use std::collections::{BTreeMap, BTreeSet};

/// A worker session, as its stream announced it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: u64,
    pub worker_id: String,
    pub queues: BTreeSet<String>,
    /// Kinds it handles; empty means every kind.
    pub kinds: BTreeSet<String>,
    /// A worker whose token names a tenant runs only that tenant's jobs.
    pub tenant: Option<String>,
    pub slots: u32,
    pub peer: String,
    /// When its last heartbeat came (ms since the epoch); the session's task keeps it.
    pub last_heartbeat_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

#[derive(Debug)]
pub(crate) struct Session {
    pub info: SessionInfo,
    /// Assignments it may still be sent.
    pub credits: u32,
    pub draining: bool,
    pub connected_at_ms: i64,
}

impl Session {
    pub(crate) fn serves(&self, queue: &str, kind: &str) -> bool {
        self.info.queues.contains(queue)
            && (self.info.kinds.is_empty() || self.info.kinds.contains(kind))
    }

    /// Whether it may be sent work now.
    pub(crate) fn open(&self) -> bool {
        self.credits > 0 && !self.draining
    }
}

#[derive(Debug, Default)]
pub(crate) struct Sessions {
    map: BTreeMap<u64, Session>,
    /// Round-robin offset over sessions, moved on at each pick.
    turn: u64,
}

impl Sessions {
    pub(crate) fn get(&self, id: u64) -> Option<&Session> {
        self.map.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut Session> {
        self.map.get_mut(&id)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Session> {
        self.map.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Adds a session with all its slots as credit; returns the ids of older sessions of the
    /// same worker, which it replaces (the caller ends them).
    pub(crate) fn connect(&mut self, info: SessionInfo, now_ms: i64) -> Vec<u64> {
        let older: Vec<u64> = self
            .map
            .values()
            .filter(|s| s.info.worker_id == info.worker_id)
            .map(|s| s.info.id)
            .collect();
        self.map.insert(
            info.id,
            Session {
                credits: info.slots,
                info,
                draining: false,
                connected_at_ms: now_ms,
            },
        );
        older
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<Session> {
        self.map.remove(&id)
    }

    /// `slots` more credit, but never more outstanding than the worker's slots, whatever it
    /// sends: `busy` slots are taken by attempts it holds.
    pub(crate) fn credit(&mut self, id: u64, slots: u32, busy: u32) {
        if let Some(s) = self.map.get_mut(&id) {
            s.credits = s
                .credits
                .saturating_add(slots)
                .min(s.info.slots.saturating_sub(busy));
        }
    }

    /// The worker stops: it is sent nothing more.
    pub(crate) fn drain(&mut self, id: u64) {
        if let Some(s) = self.map.get_mut(&id) {
            s.draining = true;
            s.credits = 0;
        }
    }

    /// Session ids in this round's order: the offset moves by one each round, so that work
    /// spreads over the workers.
    pub(crate) fn rotation(&mut self) -> Vec<u64> {
        let ids: Vec<u64> = self.map.keys().copied().collect();
        if ids.is_empty() {
            return ids;
        }
        self.turn = self.turn.wrapping_add(1);
        let offset = (self.turn % ids.len() as u64) as usize;
        ids[offset..]
            .iter()
            .chain(&ids[..offset])
            .copied()
            .collect()
    }

    /// Slots of every session together.
    pub(crate) fn slots(&self) -> u64 {
        self.map.values().map(|s| u64::from(s.info.slots)).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn info(id: u64, queues: &[&str], kinds: &[&str], slots: u32) -> SessionInfo {
        SessionInfo {
            id,
            worker_id: format!("w{id}"),
            queues: queues.iter().map(|s| s.to_string()).collect(),
            kinds: kinds.iter().map(|s| s.to_string()).collect(),
            tenant: None,
            slots,
            peer: String::new(),
            last_heartbeat_ms: Default::default(),
        }
    }

    #[test]
    fn credits_never_pass_the_free_slots() {
        let mut sessions = Sessions::default();
        assert!(sessions.connect(info(1, &["q"], &[], 4), 0).is_empty());
        let s = sessions.get_mut(1).expect("session");
        s.credits = 0;
        sessions.credit(1, 10, 3);
        assert_eq!(sessions.get(1).map(|s| s.credits), Some(1));
        sessions.drain(1);
        assert!(!sessions.get(1).is_some_and(Session::open));
    }

    #[test]
    fn a_reconnecting_worker_replaces_its_old_session_and_turns_rotate() {
        let mut sessions = Sessions::default();
        sessions.connect(info(1, &["q"], &[], 1), 0);
        sessions.connect(info(2, &["q"], &[], 1), 0);
        let again = SessionInfo {
            id: 3,
            ..info(1, &["q"], &[], 1)
        };
        assert_eq!(sessions.connect(again, 0), [1]);
        let first = sessions.rotation();
        let second = sessions.rotation();
        assert_eq!(first.len(), 3);
        assert_ne!(first[0], second[0], "each round starts at another session");
    }
}
