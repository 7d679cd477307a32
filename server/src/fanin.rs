//! Fan-in: whoever waits for a job (`Wait`, `Run`) is woken when its terminal state commits.
//! No polling: the scheduler and the API call [`Notifier::notify`] after each commit.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

/// Waiters by job id. Cheap to clone.
#[derive(Clone, Default)]
pub struct Notifier {
    waiters: Arc<Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>>,
}

impl Notifier {
    /// Registers interest in `job_id` ending. Register before reading the job's state, so that
    /// an end committed in between is not missed.
    pub fn subscribe(&self, job_id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut waiters) = self.waiters.lock() {
            let list = waiters.entry(job_id.to_owned()).or_default();
            // Waiters that gave up (timed out, hung up) leave closed senders behind.
            list.retain(|w| !w.is_closed());
            list.push(tx);
        }
        rx
    }

    /// Wakes everyone waiting for these jobs.
    pub fn notify<'a>(&self, job_ids: impl IntoIterator<Item = &'a String>) {
        let Ok(mut waiters) = self.waiters.lock() else {
            return;
        };
        for id in job_ids {
            for waiter in waiters.remove(id).unwrap_or_default() {
                let _ = waiter.send(());
            }
        }
    }

    /// Drops the registrations of waiters that gave up on `job_id`.
    pub fn forget(&self, job_id: &str) {
        if let Ok(mut waiters) = self.waiters.lock()
            && let Some(list) = waiters.get_mut(job_id)
        {
            list.retain(|w| !w.is_closed());
            if list.is_empty() {
                waiters.remove(job_id);
            }
        }
    }
}
