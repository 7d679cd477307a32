//! Bulk cancel, requeue and delete: one step of the store's, carried out in the scheduler.
//! `AdminService.Bulk` and the web console both go through [`bulk`].

use std::sync::Arc;

use crate::{
    error::Result,
    fanin::Notifier,
    scheduler::Scheduler,
    store::{Bulk, BulkAction, BulkDone, Store},
};

/// Runs one step of `request` in the store, then tells the scheduler and the waiters what
/// changed: cancelled jobs leave the queues and their running attempts are stopped;
/// requeued ones are queued again (or wait for their dependencies until their deadline).
pub async fn bulk(
    store: &Arc<dyn Store>,
    scheduler: &Scheduler,
    notifier: &Notifier,
    request: Bulk,
) -> Result<BulkDone> {
    let action = request.action;
    let reason = request.reason.clone();
    let dry_run = request.dry_run;
    let mut done = store.bulk(request).await?;
    if dry_run {
        return Ok(done);
    }
    // The store is the record: a stopping scheduler dispatches nothing more anyway.
    match action {
        BulkAction::Cancel => {
            if let Some(cancelled) = done.cancelled.take() {
                let mut ids = cancelled.ids;
                ids.extend(cancelled.dependents);
                notifier.notify(&ids);
                if let Err(err) = scheduler.remove(ids).await {
                    tracing::warn!(cause = %err, "scheduler did not take the cancellation");
                }
                if let Err(err) = scheduler.stop(cancelled.running, reason).await {
                    tracing::warn!(cause = %err, "scheduler did not stop the cancelled attempts");
                }
            }
        }
        BulkAction::Requeue => {
            let ready = std::mem::take(&mut done.ready);
            if !ready.is_empty()
                && let Err(err) = scheduler.enqueue(ready).await
            {
                tracing::warn!(cause = %err, "requeued jobs wait for the next start");
            }
            let waiting = std::mem::take(&mut done.waiting);
            if !waiting.is_empty()
                && let Err(err) = scheduler.wait(waiting).await
            {
                tracing::warn!(cause = %err, "requeued jobs wait for the next start");
            }
        }
        BulkAction::Delete => {}
    }
    Ok(done)
}
