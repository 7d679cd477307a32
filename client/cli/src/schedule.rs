//! `switchyard schedule create|list|pause|resume|delete`: cron schedules that submit a job on
//! each tick, in the caller's tenant.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use switchyard_client::Client;
use switchyard_proto::{
    text::parse_duration,
    v1::{MisfirePolicy, OverlapPolicy, Schedule, SubmitRequest},
};

use crate::output;

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: on each tick of CRON (in --time-zone) it submits the job described
    /// by --queue, --kind, --payload…, exactly once per tick (its idempotency key is
    /// `schedule:<ID>:<tick ms>`).
    Create(CreateArgs),
    /// Your schedules (an admin's: every tenant's), with their next three runs and last tick.
    List,
    /// Stop firing a schedule; ticks that pass while paused are not fired later.
    Pause {
        /// The schedule's name.
        schedule_id: String,
    },
    /// Fire a paused schedule again, from its next tick.
    Resume {
        /// The schedule's name.
        schedule_id: String,
    },
    /// Delete a schedule; the jobs it already fired stay.
    Delete {
        /// The schedule's name.
        schedule_id: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The schedule's name: 1-128 characters of A-Z a-z 0-9 _ . : -.
    schedule_id: String,
    /// Five fields (minute hour day-of-month month day-of-week), or six with seconds first:
    /// "0 9 * * MON-FRI", "*/10 * * * * *".
    #[arg(long)]
    cron: String,
    /// The IANA time zone the fields are read in (e.g. Europe/Berlin); default UTC.
    #[arg(long, default_value = "")]
    time_zone: String,
    /// The queue each tick's job goes to.
    #[arg(long, default_value = "default")]
    queue: String,
    /// The handler kind each tick's job runs.
    #[arg(long)]
    kind: String,
    /// The payload as text.
    #[arg(long, default_value = "")]
    payload: String,
    /// Higher runs first, -1000..=1000.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i32,
    /// Attempts before a tick's job ends FAILED (1..=100; default 3).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Per-attempt timeout (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    attempt_timeout: Option<Duration>,
    /// Jobs with the same key share the quota `key:<KEY>`.
    #[arg(long)]
    concurrency_key: Option<String>,
    /// key=value (repeatable), on every tick's job.
    #[arg(long, value_parser = crate::parse_label, value_name = "KEY=VALUE")]
    label: Vec<(String, String)>,
    /// Ticks missed while the coordinator was down: skip them, or run once for all of them.
    #[arg(long, value_enum, default_value_t = Misfire::Skip)]
    misfire: Misfire,
    /// A tick while the previous job is still queued or running: skip it, or fire anyway.
    #[arg(long, value_enum, default_value_t = Overlap::Skip)]
    overlap: Overlap,
    /// Create it paused.
    #[arg(long)]
    paused: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Misfire {
    Skip,
    RunOnce,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Overlap {
    Skip,
    Allow,
}

pub async fn run(client: &Client, command: ScheduleCommand, json_out: bool) -> anyhow::Result<()> {
    match command {
        ScheduleCommand::Create(args) => {
            let created = client.create_schedule(schedule_of(args)).await?;
            print(&created, json_out);
        }
        ScheduleCommand::List => {
            let schedules = client.schedules().await?;
            if !json_out && schedules.is_empty() {
                outln!("no schedules");
            }
            for s in &schedules {
                print(s, json_out);
            }
        }
        ScheduleCommand::Pause { schedule_id } => {
            print(&client.pause_schedule(&schedule_id, true).await?, json_out);
        }
        ScheduleCommand::Resume { schedule_id } => {
            print(&client.pause_schedule(&schedule_id, false).await?, json_out);
        }
        ScheduleCommand::Delete { schedule_id } => {
            client.delete_schedule(&schedule_id).await?;
            if json_out {
                outln!("{}", json!({ "deleted": schedule_id }));
            } else {
                outln!("deleted schedule {schedule_id}");
            }
        }
    }
    Ok(())
}

fn schedule_of(args: CreateArgs) -> Schedule {
    Schedule {
        schedule_id: args.schedule_id,
        cron: args.cron,
        time_zone: args.time_zone,
        job: Some(SubmitRequest {
            queue: args.queue,
            kind: args.kind,
            payload: args.payload.into_bytes(),
            priority: args.priority,
            max_attempts: args.max_attempts,
            timeout: args.attempt_timeout.map(|d| prost_types::Duration {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }),
            concurrency_key: args.concurrency_key.unwrap_or_default(),
            labels: args.label.into_iter().collect(),
            ..Default::default()
        }),
        misfire: match args.misfire {
            Misfire::Skip => MisfirePolicy::Skip,
            Misfire::RunOnce => MisfirePolicy::RunOnce,
        } as i32,
        overlap: match args.overlap {
            Overlap::Skip => OverlapPolicy::Skip,
            Overlap::Allow => OverlapPolicy::Allow,
        } as i32,
        paused: args.paused,
        ..Default::default()
    }
}

fn policy(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

fn schedule_json(s: &Schedule) -> Value {
    let job = s.job.clone().unwrap_or_default();
    json!({
        "schedule_id": s.schedule_id,
        "tenant_id": s.tenant_id,
        "cron": s.cron,
        "time_zone": if s.time_zone.is_empty() { "UTC" } else { &s.time_zone },
        "queue": job.queue,
        "kind": job.kind,
        "misfire": policy(s.misfire().as_str_name(), "MISFIRE_POLICY_"),
        "overlap": policy(s.overlap().as_str_name(), "OVERLAP_POLICY_"),
        "paused": s.paused,
        "next_runs": s.next_runs.iter().map(output::format_time).collect::<Vec<_>>(),
        "last_fired": s.last_fired.as_ref().map(output::format_time),
        "last_job_id": (!s.last_job_id.is_empty()).then_some(&s.last_job_id),
        "last_error": (!s.last_error.is_empty()).then_some(&s.last_error),
    })
}

fn print(s: &Schedule, json_out: bool) {
    if json_out {
        outln!("{}", schedule_json(s));
        return;
    }
    let job = s.job.clone().unwrap_or_default();
    let zone = if s.time_zone.is_empty() {
        "UTC"
    } else {
        &s.time_zone
    };
    outln!(
        "{}  {:?} {zone}  -> {}/{}{}",
        s.schedule_id,
        s.cron,
        job.queue,
        job.kind,
        if s.paused { "  (paused)" } else { "" }
    );
    let next: Vec<String> = s.next_runs.iter().map(output::format_time).collect();
    if !next.is_empty() {
        outln!("  next: {}", next.join(", "));
    }
    if let Some(last) = &s.last_fired {
        let what = if s.last_error.is_empty() {
            s.last_job_id.clone()
        } else {
            s.last_error.clone()
        };
        outln!("  last: {}  {what}", output::format_time(last));
    }
}
