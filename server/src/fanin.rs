//! Fan-in: whoever waits for a job (`Wait`, `Run`) is woken when its terminal state commits.
//! No polling: the scheduler and the API call [`Notifier::notify`] after each commit. It also
//! knows which groups a `WatchGroup` stream watches ([`Notifier::watch_group`]), for retention
//! to leave them alone.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{oneshot, watch};

use crate::{domain::JobId, store::GroupKey};

/// Watched groups, each with how many streams watch it.
type Watched = Arc<Mutex<HashMap<GroupKey, usize>>>;

/// Waiters by job id, a counter of commits that ended jobs (for group watchers), and the
/// groups being watched. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    waiters: Arc<Mutex<HashMap<JobId, Vec<oneshot::Sender<()>>>>>,
    ended: Arc<watch::Sender<u64>>,
    watched: Watched,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier {
            waiters: Arc::default(),
            ended: Arc::new(watch::Sender::new(0)),
            watched: Arc::default(),
        }
    }
}

/// A group counted as watched for as long as this lives: a `WatchGroup` stream holds one.
#[derive(Debug)]
pub struct WatchGuard {
    watched: Watched,
    group: GroupKey,
}

impl WatchGuard {
    pub fn group(&self) -> &GroupKey {
        &self.group
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Ok(mut watched) = self.watched.lock()
            && let Some(count) = watched.get_mut(&self.group)
        {
            *count -= 1;
            if *count == 0 {
                watched.remove(&self.group);
            }
        }
    }
}

impl Notifier {
    /// Registers interest in `job_id` ending. Register before reading the job's state, so that
    /// an end committed in between is not missed.
    pub fn subscribe(&self, job_id: JobId) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut waiters) = self.waiters.lock() {
            let list = waiters.entry(job_id).or_default();
            // Waiters that gave up (timed out, hung up) leave closed senders behind.
            list.retain(|w| !w.is_closed());
            list.push(tx);
        }
        rx
    }

    /// Wakes everyone waiting for these jobs, and every group watcher.
    pub fn notify<'a>(&self, job_ids: impl IntoIterator<Item = &'a JobId>) {
        let mut any = false;
        if let Ok(mut waiters) = self.waiters.lock() {
            for id in job_ids {
                any = true;
                for waiter in waiters.remove(id).unwrap_or_default() {
                    let _ = waiter.send(());
                }
            }
        }
        if any {
            self.ended.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Changes whenever a commit ended some jobs. A group watcher marks it seen, reads what
    /// ended, and waits for the next change: nothing ends unnoticed in between.
    pub fn ended(&self) -> watch::Receiver<u64> {
        self.ended.subscribe()
    }

    /// Counts `group` as watched until the guard is dropped. Take it before reading the group,
    /// so that a pruning batch that starts after the read leaves it alone.
    pub fn watch_group(&self, group: GroupKey) -> WatchGuard {
        if let Ok(mut watched) = self.watched.lock() {
            *watched.entry(group.clone()).or_default() += 1;
        }
        WatchGuard {
            watched: self.watched.clone(),
            group,
        }
    }

    /// The groups watched now.
    pub fn watched_groups(&self) -> Vec<GroupKey> {
        self.watched
            .lock()
            .map(|watched| watched.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Drops the registrations of waiters that gave up on `job_id`.
    pub fn forget(&self, job_id: JobId) {
        if let Ok(mut waiters) = self.waiters.lock()
            && let Some(list) = waiters.get_mut(&job_id)
        {
            list.retain(|w| !w.is_closed());
            if list.is_empty() {
                waiters.remove(&job_id);
            }
        }
    }
}
