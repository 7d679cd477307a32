//! Time in the scheduler: a [`Clock`] that tells wall-clock milliseconds (what is stored) and
//! turns them into `tokio::time::Instant`s (what is slept on), and [`Timers`], a set of keys
//! each due at an instant. Everything runs on `tokio::time`, so a test can
//! `tokio::time::pause()` and `advance()` instead of sleeping.

use std::{collections::BTreeSet, hash::Hash, time::Duration};

use tokio::time::Instant;

use super::HashMap;

/// Wall-clock time for the scheduler.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Clock {
    /// The system's clock: what the store stamps rows with.
    System,
    /// Wall time that moves with `tokio::time` from `wall_ms` at `at`: under a paused test
    /// runtime it advances only when the test advances time (the scheduler's tests run on it).
    #[cfg_attr(not(test), allow(dead_code))]
    Tokio { wall_ms: i64, at: Instant },
}

impl Clock {
    /// A clock that follows `tokio::time` from `wall_ms` now.
    #[cfg(test)]
    pub(crate) fn tokio(wall_ms: i64) -> Clock {
        Clock::Tokio {
            wall_ms,
            at: Instant::now(),
        }
    }

    /// Unix milliseconds now.
    pub(crate) fn now_ms(&self) -> i64 {
        match self {
            Clock::System => crate::domain::now_ms(),
            Clock::Tokio { wall_ms, at } => wall_ms + at.elapsed().as_millis() as i64,
        }
    }

    /// The instant at which the wall clock reads `ms` (now, if that has passed).
    pub(crate) fn instant_at(&self, ms: i64) -> Instant {
        let ahead = ms.saturating_sub(self.now_ms()).max(0) as u64;
        Instant::now() + Duration::from_millis(ahead)
    }
}

/// Keys due at instants: each key at most once. `pop_due` hands back those whose time has come,
/// earliest first.
#[derive(Debug)]
pub(crate) struct Timers<K: Ord + Hash + Copy> {
    due: BTreeSet<(Instant, K)>,
    at: HashMap<K, Instant>,
}

impl<K: Ord + Hash + Copy> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            due: BTreeSet::new(),
            at: HashMap::default(),
        }
    }
}

impl<K: Ord + Hash + Copy> Timers<K> {
    /// Sets `key` due at `at`, replacing an earlier setting.
    pub(crate) fn set(&mut self, key: K, at: Instant) {
        if let Some(old) = self.at.insert(key, at) {
            self.due.remove(&(old, key));
        }
        self.due.insert((at, key));
    }

    pub(crate) fn cancel(&mut self, key: K) {
        if let Some(at) = self.at.remove(&key) {
            self.due.remove(&(at, key));
        }
    }

    /// The soonest instant something is due.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Takes every key due by `now`, earliest first.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Vec<K> {
        let mut out = Vec::new();
        while let Some(&(at, key)) = self.due.first() {
            if at > now {
                break;
            }
            self.due.pop_first();
            self.at.remove(&key);
            out.push(key);
        }
        out
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keys_come_due_in_order_and_only_once() {
        let mut timers = Timers::default();
        let start = Instant::now();
        timers.set(3, start + Duration::from_secs(3));
        timers.set(1, start + Duration::from_secs(1));
        timers.set(2, start + Duration::from_secs(2));
        // Moved later: it comes due at its new time only.
        timers.set(1, start + Duration::from_secs(5));
        timers.cancel(2);
        assert_eq!(timers.next(), Some(start + Duration::from_secs(3)));

        tokio::time::sleep_until(start + Duration::from_secs(3)).await;
        assert_eq!(timers.pop_due(Instant::now()), [3]);
        assert!(timers.pop_due(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(timers.pop_due(Instant::now()), [1]);
        assert_eq!(timers.len(), 0);
        assert_eq!(timers.next(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_with_paused_time() {
        let clock = Clock::tokio(1_000_000);
        assert_eq!(clock.now_ms(), 1_000_000);
        let at = clock.instant_at(1_000_250);
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(clock.now_ms(), 1_000_250);
        assert_eq!(Instant::now(), at);
        // A past time is due now.
        assert_eq!(clock.instant_at(0), Instant::now());
    }
}
