//! How the CLI shows jobs and numbers: aligned text for people, JSON for scripts.

use serde_json::{Value, json};
use switchyard_client::{Job, JobState, StatsResponse};
use switchyard_proto::v1::{AttemptOutcome, BlockedReason, JobProgress, WorkerInfo};

fn time(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => json!(format_time(t)),
        None => Value::Null,
    }
}

/// RFC 3339 in UTC, to the millisecond.
pub fn format_time(t: &prost_types::Timestamp) -> String {
    let secs = t.seconds;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        t.nanos / 1_000_000
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `JOB_STATE_SUCCEEDED` → `succeeded`.
pub fn state_name(state: i32) -> String {
    JobState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("JOB_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("unknown({state})"))
}

/// The payload or output as text when it is UTF-8, else as base-16.
pub fn bytes(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(text) => json!(text),
        Err(_) => json!({ "hex": b.iter().map(|x| format!("{x:02x}")).collect::<String>() }),
    }
}

pub fn job_json(job: &Job) -> Value {
    json!({
        "job_id": job.job_id,
        "queue": job.queue,
        "kind": job.kind,
        "state": state_name(job.state),
        "payload": bytes(&job.payload),
        "priority": job.priority,
        "max_attempts": job.max_attempts,
        "attempt": job.attempt,
        "timeout_ms": job.timeout.map(|d| d.seconds * 1000 + i64::from(d.nanos / 1_000_000)),
        "deadline": time(&job.deadline),
        "run_at": time(&job.run_at),
        "idempotency_key": job.idempotency_key,
        "concurrency_key": job.concurrency_key,
        "weight": job.weight,
        "depends_on": job.depends_on,
        "group_id": job.group_id,
        "labels": job.labels,
        "tenant_id": job.tenant_id,
        "output": bytes(&job.output),
        "error": job.error,
        "created_at": time(&job.created_at),
        "started_at": time(&job.started_at),
        "finished_at": time(&job.finished_at),
        "worker_id": job.worker_id,
        "trace_id": job.trace_id,
        "blocked_on": job.blocked_on.as_ref().map(|b| json!({
            "reason": BlockedReason::try_from(b.reason)
                .map(|r| r.as_str_name().trim_start_matches("BLOCKED_REASON_").to_ascii_lowercase())
                .unwrap_or_default(),
            "detail": b.detail,
            "scope": b.scope,
            "held": b.held,
            "limit": b.limit,
            "until": time(&b.until),
        })),
        "attempts": job.attempts.iter().map(|a| json!({
            "number": a.number,
            "worker_id": a.worker_id,
            "started_at": time(&a.started_at),
            "finished_at": time(&a.finished_at),
            "outcome": AttemptOutcome::try_from(a.outcome)
                .map(|o| o.as_str_name().trim_start_matches("ATTEMPT_OUTCOME_").to_ascii_lowercase())
                .unwrap_or_default(),
            "error": a.error,
        })).collect::<Vec<_>>(),
        // The checkpoint by its size only: it may be 1 MiB of anything.
        "progress": job.progress.as_ref().map(|p| json!({
            "attempt": p.attempt,
            "fraction": p.fraction,
            "message": p.message,
            "updated_at": time(&p.updated_at),
            "checkpoint_bytes": p.checkpoint.len(),
        })),
    })
}

/// `40% step 4 of 10 (attempt 1, checkpoint 12 bytes)`.
pub fn progress_text(p: &JobProgress) -> String {
    let mut text = String::new();
    if let Some(fraction) = p.fraction {
        let percent = fraction * 100.0;
        if percent.fract() == 0.0 {
            text.push_str(&format!("{percent:.0}% "));
        } else {
            text.push_str(&format!("{percent:.1}% "));
        }
    }
    if !p.message.is_empty() {
        text.push_str(&p.message);
        text.push(' ');
    }
    text.push_str(&format!("(attempt {}", p.attempt));
    match p.checkpoint.len() {
        0 => {}
        1 => text.push_str(", checkpoint 1 byte"),
        n => text.push_str(&format!(", checkpoint {n} bytes")),
    }
    text.push(')');
    text
}

/// `key: value` lines, skipping what is empty.
pub fn job_text(job: &Job) -> String {
    let value = job_json(job);
    let mut out = String::new();
    let Some(fields) = value.as_object() else {
        return out;
    };
    for (key, v) in fields {
        let shown = match v {
            Value::Null => continue,
            Value::String(s) if s.is_empty() => continue,
            Value::Array(a) if a.is_empty() => continue,
            Value::Object(o) if o.is_empty() => continue,
            Value::String(s) => s.clone(),
            _ if key == "progress" => job.progress.as_ref().map(progress_text).unwrap_or_default(),
            other => other.to_string(),
        };
        // `attempt` counts every attempt ever started; `max_attempts` bounds only those that
        // count, since the last requeue. Side by side, 4 of 2 reads like a bug without this.
        let shown = if key == "attempt" && job.attempt > job.max_attempts {
            format!(
                "{shown} (started in all; max_attempts counts the failed and lost ones since the \
                 last requeue, not released or interrupted ones)"
            )
        } else {
            shown
        };
        out.push_str(&format!("{key:>16}: {shown}\n"));
    }
    out
}

pub const LIST_HEADER: &str = "JOB_ID                                STATE              QUEUE            KIND             PRI  ATTEMPT  CREATED";

pub fn job_row(job: &Job) -> String {
    format!(
        "{:<37} {:<18} {:<16} {:<16} {:>4} {:>8}  {}",
        job.job_id,
        state_name(job.state),
        job.queue,
        job.kind,
        job.priority,
        job.attempt,
        job.created_at.as_ref().map(format_time).unwrap_or_default()
    )
}

pub fn worker_json(w: &WorkerInfo) -> Value {
    json!({
        "worker_id": w.worker_id, "queues": w.queues, "kinds": w.kinds, "slots": w.slots,
        "running": w.running, "connected_at": time(&w.connected_at), "peer": w.peer,
    })
}

pub fn workers_text(workers: &[WorkerInfo]) -> String {
    let mut out = format!(
        "{:<28} {:>6} {:>8}  {:<20} {:<24} KINDS\n",
        "WORKER", "SLOTS", "RUNNING", "QUEUES", "PEER"
    );
    for w in workers {
        out.push_str(&format!(
            "{:<28} {:>6} {:>8}  {:<20} {:<24} {}\n",
            w.worker_id,
            w.slots,
            w.running,
            w.queues.join(","),
            w.peer,
            if w.kinds.is_empty() {
                "*".to_owned()
            } else {
                w.kinds.join(",")
            }
        ));
    }
    out
}

/// One quota as a line: text for people, JSON with `--json`.
pub fn quota_line(q: &switchyard_proto::v1::Quota, json_out: bool) -> String {
    let attempt_timeout = q
        .attempt_timeout
        .and_then(|d| std::time::Duration::try_from(d).ok());
    if json_out {
        return json!({
            "scope": q.scope, "max_in_flight": q.max_in_flight, "max_queued": q.max_queued,
            "rate_per_second": q.rate_per_second, "burst": q.burst,
            "attempt_timeout_ms": attempt_timeout.map(|d| d.as_millis() as u64),
            "held": q.held, "queued": q.queued,
        })
        .to_string();
    }
    let limit = |v: Option<u32>| v.map_or("-".to_owned(), |n| n.to_string());
    let timeout = attempt_timeout.map_or(String::new(), |d| {
        format!(" attempt-timeout {}", crate::watch::format_duration(d))
    });
    format!(
        "{:<32} in-flight {:>5}/{:<5} queued {:>7}/{:<7} rate {}{timeout}",
        q.scope,
        q.held,
        limit(q.max_in_flight),
        q.queued,
        limit(q.max_queued),
        q.rate_per_second.map_or("-".to_owned(), |r| format!(
            "{r}/s burst {}",
            q.burst.unwrap_or(1)
        ))
    )
}

pub fn stats_json(stats: &StatsResponse) -> Value {
    let store = stats.store.unwrap_or_default();
    json!({
        "queues": stats.queues.iter().map(|q| json!({
            "queue": q.queue, "queued": q.queued, "running": q.running,
            "succeeded": q.succeeded, "failed": q.failed, "cancelled": q.cancelled,
            "deadline_exceeded": q.deadline_exceeded, "paused": q.paused,
        })).collect::<Vec<_>>(),
        "store": {
            "commits": store.commits, "commands": store.commands,
            "rows_written": store.rows_written, "max_batch": store.max_batch,
        },
        "workers": stats.workers,
        "refused_results": stats.refused_results,
    })
}

pub fn stats_text(stats: &StatsResponse) -> String {
    let mut out = format!(
        "{:<20} {:>9} {:>9} {:>10} {:>9} {:>10} {:>9}\n",
        "QUEUE", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "DEADLINE"
    );
    for q in &stats.queues {
        out.push_str(&format!(
            "{:<20} {:>9} {:>9} {:>10} {:>9} {:>10} {:>9}{}\n",
            q.queue,
            q.queued,
            q.running,
            q.succeeded,
            q.failed,
            q.cancelled,
            q.deadline_exceeded,
            if q.paused { "  (paused)" } else { "" }
        ));
    }
    let paused: Vec<&str> = stats
        .queues
        .iter()
        .filter(|q| q.paused)
        .map(|q| q.queue.as_str())
        .collect();
    let store = stats.store.unwrap_or_default();
    let per_commit = if store.commits == 0 {
        0.0
    } else {
        store.commands as f64 / store.commits as f64
    };
    out.push_str(&format!(
        "\npaused queues: {}\nworkers: {}\nrefused results: {} (from stale attempts: after a cancel, a deadline or a lost stream)\nstore: {} commits, {} commands ({per_commit:.1} per commit, at most {}), {} rows written\n",
        if paused.is_empty() { "none".to_owned() } else { paused.join(", ") },
        stats.workers,
        stats.refused_results,
        store.commits,
        store.commands,
        store.max_batch,
        store.rows_written
    ));
    out
}

/// What `pause` and `resume` print: what changed, then every queue still paused.
pub fn paused_text(queue: &str, pause: bool, paused: &[String], json_out: bool) -> String {
    if json_out {
        return json!({ "queue": queue, "paused": pause, "paused_queues": paused }).to_string();
    }
    let now = if pause { "paused" } else { "resumed" };
    if paused.is_empty() {
        format!("queue {queue} {now}; no queue is paused")
    } else {
        format!("queue {queue} {now}; paused queues: {}", paused.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_shows_its_attempt_timeout() {
        let quota = switchyard_proto::v1::Quota {
            scope: "queue:render".into(),
            attempt_timeout: Some(prost_types::Duration {
                seconds: 1800,
                nanos: 0,
            }),
            ..Default::default()
        };
        let text = quota_line(&quota, false);
        assert!(text.ends_with(" attempt-timeout 30m00s"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&quota_line(&quota, true)).expect("json");
        assert_eq!(json["attempt_timeout_ms"], 1_800_000);
        let none = quota_line(&Default::default(), false);
        assert!(!none.contains("attempt-timeout"), "{none}");
    }

    #[test]
    fn pause_and_resume_say_what_changed() {
        assert_eq!(
            paused_text("emails", false, &[], false),
            "queue emails resumed; no queue is paused"
        );
        assert_eq!(
            paused_text("emails", true, &["emails".into(), "sms".into()], false),
            "queue emails paused; paused queues: emails, sms"
        );
    }

    #[test]
    fn stats_show_paused_queues_and_refused_results() {
        let stats = StatsResponse {
            queues: vec![switchyard_proto::v1::QueueStats {
                queue: "emails".into(),
                paused: true,
                ..Default::default()
            }],
            refused_results: 3,
            ..Default::default()
        };
        let text = stats_text(&stats);
        assert!(
            text.contains("emails") && text.contains("(paused)"),
            "{text}"
        );
        assert!(text.contains("\npaused queues: emails\n"), "{text}");
        assert!(text.contains("\nrefused results: 3 "), "{text}");
    }

    #[test]
    fn attempts_past_max_attempts_are_explained() {
        let job = Job {
            attempt: 4,
            max_attempts: 2,
            ..Default::default()
        };
        let text = job_text(&job);
        assert!(
            text.contains("attempt: 4 (started in all; max_attempts counts"),
            "{text}"
        );
        let job = Job {
            attempt: 1,
            max_attempts: 2,
            ..Default::default()
        };
        assert!(job_text(&job).contains("attempt: 1\n"));
    }

    #[test]
    fn progress_shows_as_a_percentage_with_its_message_and_checkpoint_size() {
        let job = Job {
            progress: Some(JobProgress {
                attempt: 2,
                fraction: Some(0.4),
                message: "step 4 of 10".into(),
                checkpoint: b"4444".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = job_text(&job);
        assert!(
            text.contains("        progress: 40% step 4 of 10 (attempt 2, checkpoint 4 bytes)\n"),
            "{text}"
        );
        let json = job_json(&job);
        assert_eq!(json["progress"]["fraction"], 0.4);
        assert_eq!(json["progress"]["checkpoint_bytes"], 4);
        let bare = JobProgress {
            attempt: 1,
            fraction: Some(1.0 / 3.0),
            ..Default::default()
        };
        assert_eq!(progress_text(&bare), "33.3% (attempt 1)");
        assert!(!job_text(&Job::default()).contains("progress"));
    }

    #[test]
    fn times_are_rfc3339() {
        let t = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_000_000,
        };
        assert_eq!(format_time(&t), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            format_time(&prost_types::Timestamp {
                seconds: 0,
                nanos: 0
            }),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
