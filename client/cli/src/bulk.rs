//! `switchyard bulk cancel|requeue|delete`: an action over every job a filter matches, one
//! bounded step (one short transaction on the coordinator) at a time, until none is left.
//! Ctrl-C stops after the step in flight and prints the cursor to resume from.

use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use switchyard_client::Client;
use switchyard_proto::{
    text::parse_duration,
    v1::{BulkAction, BulkRequest, JobState},
};

use crate::exit::Exit;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Action {
    /// Cancel queued and running jobs (their dependents and children with them).
    Cancel,
    /// Put failed, cancelled and deadline_exceeded jobs back in their queues.
    Requeue,
    /// Delete finished jobs (not those another job depends on, nor children of a running parent).
    Delete,
}

#[derive(Debug, Args)]
pub struct BulkArgs {
    /// What to do with each job that matches.
    action: Action,
    /// Only jobs of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only jobs in this state (the action applies to some states only).
    #[arg(long, value_parser = crate::parse_state)]
    state: Option<JobState>,
    /// Only jobs of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only jobs with this label (key=value).
    #[arg(long, value_parser = crate::parse_label)]
    label: Option<(String, String)>,
    /// Only this tenant's jobs.
    #[arg(long = "of-tenant")]
    of_tenant: Option<String>,
    /// Only jobs submitted within this long before now (e.g. 1h).
    #[arg(long, value_parser = parse_duration)]
    newer_than: Option<Duration>,
    /// Only jobs submitted more than this long before now (e.g. 7d).
    #[arg(long, value_parser = parse_duration)]
    older_than: Option<Duration>,
    /// Only these jobs (repeat the flag; at most 1000).
    #[arg(long = "job")]
    jobs: Vec<String>,
    /// Count what would change and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Jobs per step (per transaction on the coordinator), 1..=10000.
    #[arg(long, default_value_t = 1000)]
    step: u32,
    /// Resume an interrupted action from the cursor it printed.
    #[arg(long)]
    resume: Option<String>,
    /// For cancel: the error the cancelled jobs get.
    #[arg(long)]
    reason: Option<String>,
}

impl BulkArgs {
    fn request(&self, cursor: String) -> BulkRequest {
        let ago = |d: Duration| SystemTime::now().checked_sub(d).map(Into::into);
        BulkRequest {
            action: match self.action {
                Action::Cancel => BulkAction::Cancel,
                Action::Requeue => BulkAction::Requeue,
                Action::Delete => BulkAction::Delete,
            } as i32,
            queue: self.queue.clone().unwrap_or_default(),
            state: self.state.map_or(0, |s| s as i32),
            kind: self.kind.clone().unwrap_or_default(),
            label: self
                .label
                .as_ref()
                .map(|(k, v)| format!("{k}={v}"))
                .unwrap_or_default(),
            submitted_after: self.newer_than.and_then(ago),
            submitted_before: self.older_than.and_then(ago),
            tenant_id: self.of_tenant.clone().unwrap_or_default(),
            job_ids: self.jobs.clone(),
            dry_run: self.dry_run,
            limit: self.step,
            cursor,
            reason: self.reason.clone().unwrap_or_default(),
        }
    }

    fn verb(&self) -> &'static str {
        match self.action {
            Action::Cancel => "cancelled",
            Action::Requeue => "requeued",
            Action::Delete => "deleted",
        }
    }
}

pub async fn run(client: &Client, args: BulkArgs, json: bool) -> anyhow::Result<Exit> {
    let start = args.resume.clone().unwrap_or_default();
    if args.dry_run {
        let done = client.bulk(args.request(start)).await?;
        if json {
            outln!(
                "{}",
                serde_json::json!({ "dry_run": true, "matched": done.matched })
            );
        } else {
            outln!("would have {} {} jobs", args.verb(), done.matched);
        }
        return Ok(Exit::Success);
    }
    // Registered now, so that a Ctrl-C during a step is seen after it (not the default
    // action, which would end the process without saying where to resume).
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let (mut matched, mut changed) = (0u64, 0u64);
    let mut cursor = start;
    loop {
        // A step runs to its end: the coordinator commits it whole or not at all, so the
        // cursor printed on Ctrl-C is always one that every earlier job is behind.
        let done = client.bulk(args.request(cursor.clone())).await?;
        matched += done.matched;
        changed += done.changed;
        if json {
            outln!(
                "{}",
                serde_json::json!({
                    "matched": done.matched,
                    "changed": done.changed,
                    "next_cursor": done.next_cursor,
                })
            );
        } else {
            errln!("{} {changed} of {matched} matched so far", args.verb());
        }
        if done.next_cursor.is_empty() {
            break;
        }
        cursor = done.next_cursor;
        let interrupted = tokio::select! {
            biased;
            _ = interrupt.recv() => true,
            () = std::future::ready(()) => false,
        };
        if interrupted {
            errln!(
                "interrupted after {changed} {}; resume with --resume {cursor}",
                args.verb()
            );
            return Ok(Exit::Interrupted);
        }
    }
    if !json {
        outln!("{} {changed} jobs ({matched} matched)", args.verb());
    }
    Ok(Exit::Success)
}
