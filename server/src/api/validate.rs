//! The rules every request field must keep. A broken rule is `INVALID_ARGUMENT` naming the
//! field and the rule, found before anything is stored.

use std::collections::{BTreeMap, HashMap, HashSet};

use switchyard_proto::v1::{self, SubmitRequest};

use crate::{
    domain::{JobId, JobTemplate, Misfire, NewSchedule, Overlap, Quota, ScheduleKey, Timetable},
    error::{Error, Result},
    store::{ListFilter, NewJob},
};

/// Largest payload of one job.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Most jobs in one `SubmitBatch`.
pub const MAX_BATCH_JOBS: usize = 10_000;
/// Longest queue, kind, key, group, tenant or label name.
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
pub const MAX_PRIORITY: i32 = 1000;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const MAX_ATTEMPTS: u32 = 100;
pub const MAX_WEIGHT: u32 = 1000;
pub const MAX_TIMEOUT_MS: i64 = 7 * 24 * 3600 * 1000;
/// How far ahead `deadline` and `run_at` may lie.
pub const MAX_HORIZON_MS: i64 = 366 * 24 * 3600 * 1000;
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_VALUE_LEN: usize = 1024;
pub const MAX_DEPENDENCIES: usize = 1000;
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const DEFAULT_PAGE_SIZE: u32 = 100;

const NAME_RULE: &str = "must be 1-128 characters of A-Z a-z 0-9 _ . : -";

/// Checks a name (queue, kind, key, group, tenant, label key) against the documented set.
pub fn name(field: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else if value.is_empty() {
        Err(Error::invalid(field, "is required"))
    } else {
        Err(Error::invalid(field, NAME_RULE))
    }
}

/// An optional name: empty means unset.
pub fn optional_name(field: &str, value: &str) -> Result<Option<String>> {
    if value.is_empty() {
        return Ok(None);
    }
    name(field, value)?;
    Ok(Some(value.to_owned()))
}

/// A cancel's `reason` (`Cancel`, `Bulk`): at most 1 KiB.
pub fn reason(reason: &str) -> Result<()> {
    if reason.len() > 1024 {
        return Err(Error::invalid("reason", "must be at most 1024 bytes"));
    }
    Ok(())
}

/// The [`FilterFields`] of a request that spells the filter with `List`'s field names
/// (`ListRequest`, `BulkRequest`).
macro_rules! filter_fields {
    ($req:expr) => {
        $crate::api::validate::FilterFields {
            queue: &$req.queue,
            state: $req.state,
            kind: &$req.kind,
            label: &$req.label,
            tenant_id: &$req.tenant_id,
            submitted_after: $req.submitted_after.as_ref(),
            submitted_before: $req.submitted_before.as_ref(),
        }
    };
}
pub(crate) use filter_fields;

/// The job filter that `List` and `Bulk` share, as the request spells it.
#[derive(Debug, Clone, Copy)]
pub struct FilterFields<'a> {
    pub queue: &'a str,
    pub state: i32,
    pub kind: &'a str,
    pub label: &'a str,
    pub tenant_id: &'a str,
    pub submitted_after: Option<&'a prost_types::Timestamp>,
    pub submitted_before: Option<&'a prost_types::Timestamp>,
}

/// Checks a filter's fields and builds the store's; `scope` (a tenant-bound caller's tenant)
/// overrides any `tenant_id` asked for. The cursor and page size are the caller's to set.
pub fn filter(fields: FilterFields<'_>, scope: Option<String>) -> Result<ListFilter> {
    let state = match v1::JobState::try_from(fields.state) {
        Ok(state) => crate::api::convert::state_from_wire(state),
        Err(_) => return Err(Error::invalid("state", "is not a JobState")),
    };
    let label = match fields.label {
        "" => None,
        text => {
            let (key, value) = text
                .split_once('=')
                .ok_or_else(|| Error::invalid("label", "must be written key=value"))?;
            name("label", key)?;
            if value.len() > MAX_LABEL_VALUE_LEN {
                return Err(Error::invalid(
                    "label",
                    format!("value must be at most {MAX_LABEL_VALUE_LEN} bytes"),
                ));
            }
            Some((key.to_owned(), value.to_owned()))
        }
    };
    Ok(ListFilter {
        queue: optional_name("queue", fields.queue)?,
        state,
        kind: optional_name("kind", fields.kind)?,
        tenant_id: match scope {
            Some(own) => Some(own),
            None => optional_name("tenant_id", fields.tenant_id)?,
        },
        label,
        submitted_after_ms: fields
            .submitted_after
            .map(|t| timestamp_ms("submitted_after", t))
            .transpose()?,
        submitted_before_ms: fields
            .submitted_before
            .map(|t| timestamp_ms("submitted_before", t))
            .transpose()?,
        ..ListFilter::default()
    })
}

/// What the request's metadata contributes to each job it submits.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub tenant_id: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub trace_id: Option<String>,
    /// The job whose handler made this call (`x-switchyard-parent-job`).
    pub parent_job_id: Option<JobId>,
    /// The parent's attempt that made it (`x-switchyard-parent-attempt`), when said.
    pub parent_attempt: Option<u32>,
    /// The latest the submitted jobs may end (Unix ms): the caller's `grpc-timeout` for `Run`
    /// and for calls from inside a handler, the parent's deadline, capped by the server's
    /// maximum. A job's own `deadline` may only bring it closer.
    pub deadline_ms: Option<i64>,
    /// The coordinator's `--idempotency-ttl` (ms; `None`: keys are kept as long as their
    /// jobs): the window of a key whose job sets none.
    pub idempotency_ttl_ms: Option<i64>,
}

/// Turns one `SubmitRequest` into a job to store. `prefix` names it inside a batch
/// (`jobs[3].`); `refs` maps the batch's `ref`s to the ids chosen for them.
pub fn job(
    prefix: &str,
    req: SubmitRequest,
    id: JobId,
    refs: &HashMap<String, JobId>,
    ctx: &Context,
    now_ms: i64,
) -> Result<NewJob> {
    let field = |name: &str| format!("{prefix}{name}");
    name(&field("queue"), &req.queue)?;
    name(&field("kind"), &req.kind)?;
    if req.payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Error::invalid(
            field("payload"),
            format!(
                "is {} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes",
                req.payload.len()
            ),
        ));
    }
    if !(-MAX_PRIORITY..=MAX_PRIORITY).contains(&req.priority) {
        return Err(Error::invalid(
            field("priority"),
            format!("must be between -{MAX_PRIORITY} and {MAX_PRIORITY}"),
        ));
    }
    let max_attempts = match req.max_attempts {
        None => DEFAULT_MAX_ATTEMPTS,
        Some(0) => return Err(Error::invalid(field("max_attempts"), "must be at least 1")),
        Some(n) if n > MAX_ATTEMPTS => {
            return Err(Error::invalid(
                field("max_attempts"),
                format!("must be at most {MAX_ATTEMPTS}"),
            ));
        }
        Some(n) => n,
    };
    let timeout_ms = req
        .timeout
        .map(|d| duration_ms(&field("timeout"), &d, MAX_TIMEOUT_MS, "7 days"))
        .transpose()?;
    let deadline_ms = req
        .deadline
        .map(|t| timestamp_ms(&field("deadline"), &t))
        .transpose()?;
    if let Some(deadline) = deadline_ms {
        if deadline <= now_ms {
            return Err(Error::invalid(field("deadline"), "is already past"));
        }
        if deadline - now_ms > MAX_HORIZON_MS {
            return Err(Error::invalid(
                field("deadline"),
                "must be at most 366 days ahead",
            ));
        }
    }
    let run_at_ms = req
        .run_at
        .map(|t| timestamp_ms(&field("run_at"), &t))
        .transpose()?;
    if run_at_ms.is_some_and(|at| at - now_ms > MAX_HORIZON_MS) {
        return Err(Error::invalid(
            field("run_at"),
            "must be at most 366 days ahead",
        ));
    }
    let idempotency_key = if req.idempotency_key.is_empty() {
        None
    } else if req.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || req.idempotency_key.chars().any(char::is_control)
    {
        return Err(Error::invalid(
            field("idempotency_key"),
            format!("must be at most {MAX_IDEMPOTENCY_KEY_LEN} bytes with no control characters"),
        ));
    } else {
        Some(req.idempotency_key)
    };
    let unique_for = req
        .unique_for
        .map(|d| duration_ms(&field("unique_for"), &d, MAX_HORIZON_MS, "366 days"))
        .transpose()?;
    let ttl = req
        .idempotency_ttl
        .map(|d| duration_ms(&field("idempotency_ttl"), &d, MAX_HORIZON_MS, "366 days"))
        .transpose()?;
    // Both windows hold when both are set; with neither, the coordinator's ttl, unless the key
    // binds while its job is live (then it lasts as long as the job, and goes with it).
    let for_ms = match (unique_for, ttl) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (Some(w), None) | (None, Some(w)) => Some(w),
        (None, None) if req.unique_while_active => None,
        (None, None) => ctx.idempotency_ttl_ms,
    };
    let unique = crate::store::Uniqueness {
        for_ms: idempotency_key.as_ref().and(for_ms),
        while_active: req.unique_while_active,
        debounce: req.debounce,
    };
    if idempotency_key.is_none() {
        let asked = [
            ("unique_for", unique_for.is_some()),
            ("idempotency_ttl", ttl.is_some()),
            ("unique_while_active", unique.while_active),
            ("debounce", unique.debounce),
        ];
        if let Some((name, _)) = asked.iter().find(|(_, set)| *set) {
            return Err(Error::invalid(field(name), "needs an idempotency_key"));
        }
    }
    let concurrency_key = optional_name(&field("concurrency_key"), &req.concurrency_key)?;
    let weight = match req.weight {
        None => 1,
        Some(w) if (1..=MAX_WEIGHT).contains(&w) => w,
        Some(_) => {
            return Err(Error::invalid(
                field("weight"),
                format!("must be between 1 and {MAX_WEIGHT}"),
            ));
        }
    };
    if req.depends_on.len() > MAX_DEPENDENCIES {
        return Err(Error::invalid(
            field("depends_on"),
            format!("has more than {MAX_DEPENDENCIES} entries"),
        ));
    }
    for (i, dep) in req.depends_on.iter().enumerate() {
        if dep.is_empty() || dep.len() > MAX_NAME_LEN {
            return Err(Error::invalid(
                field(&format!("depends_on[{i}]")),
                "must be a job id or the ref of a job in the batch",
            ));
        }
    }
    labels(&field("labels"), &req.labels)?;
    let mut depends_on = Vec::with_capacity(req.depends_on.len());
    for (i, dep) in req.depends_on.iter().enumerate() {
        let field = || field(&format!("depends_on[{i}]"));
        // What is neither a ref of the batch nor a job id names no job.
        let dep = match refs.get(dep) {
            Some(id) => *id,
            None => dep
                .parse::<JobId>()
                .map_err(|_| Error::invalid(field(), format!("no job {dep}")))?,
        };
        if dep == id {
            return Err(Error::invalid(field(), "a job cannot depend on itself"));
        }
        depends_on.push(dep);
    }
    Ok(NewJob {
        id,
        queue: req.queue,
        kind: req.kind,
        payload: req.payload,
        priority: req.priority,
        max_attempts,
        timeout_ms,
        deadline_ms: match (deadline_ms, ctx.deadline_ms) {
            (Some(own), Some(bound)) => Some(own.min(bound)),
            (own, bound) => own.or(bound),
        },
        run_at_ms,
        idempotency_key,
        unique,
        concurrency_key,
        weight,
        depends_on,
        labels: req.labels.into_iter().collect::<BTreeMap<_, _>>(),
        tenant_id: ctx.tenant_id.clone(),
        parent_job_id: ctx.parent_job_id,
        parent_attempt: ctx.parent_attempt,
        traceparent: ctx.traceparent.clone(),
        tracestate: ctx.tracestate.clone(),
        trace_id: ctx.trace_id.clone(),
    })
}

fn labels(field: &str, labels: &HashMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid(
            field,
            format!("has more than {MAX_LABELS} entries"),
        ));
    }
    for (key, value) in labels {
        name(&format!("{field}[{key:?}]"), key)?;
        if value.len() > MAX_LABEL_VALUE_LEN {
            return Err(Error::invalid(
                format!("{field}[{key:?}]"),
                format!("value must be at most {MAX_LABEL_VALUE_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

/// A positive duration no longer than `max_ms`, in milliseconds.
pub fn duration_ms(
    field: &str,
    d: &prost_types::Duration,
    max_ms: i64,
    max_text: &str,
) -> Result<i64> {
    if !(0..1_000_000_000).contains(&d.nanos) || d.seconds < 0 {
        return Err(Error::invalid(field, "must be a positive duration"));
    }
    let ms = d
        .seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(d.nanos / 1_000_000)))
        .filter(|ms| *ms <= max_ms)
        .ok_or_else(|| Error::invalid(field, format!("must be at most {max_text}")))?;
    if ms == 0 {
        return Err(Error::invalid(field, "must be at least 1 millisecond"));
    }
    Ok(ms)
}

/// Turns a `Schedule` into one to store in `tenant`'s namespace (`""` for none). Its cron
/// expression, time zone and job template are all checked now, so that a tick never meets a
/// rule it breaks; fields are named `schedule.…`.
pub fn schedule(s: v1::Schedule, tenant: &str, now_ms: i64) -> Result<NewSchedule> {
    name("schedule.schedule_id", &s.schedule_id)?;
    Timetable::parse("schedule.", &s.cron, &s.time_zone)?;
    let misfire = match v1::MisfirePolicy::try_from(s.misfire) {
        Ok(v1::MisfirePolicy::Unspecified | v1::MisfirePolicy::Skip) => Misfire::Skip,
        Ok(v1::MisfirePolicy::RunOnce) => Misfire::RunOnce,
        Err(_) => {
            return Err(Error::invalid(
                "schedule.misfire",
                "is not a misfire policy",
            ));
        }
    };
    let overlap = match v1::OverlapPolicy::try_from(s.overlap) {
        Ok(v1::OverlapPolicy::Unspecified | v1::OverlapPolicy::Skip) => Overlap::Skip,
        Ok(v1::OverlapPolicy::Allow) => Overlap::Allow,
        Err(_) => {
            return Err(Error::invalid(
                "schedule.overlap",
                "is not an overlap policy",
            ));
        }
    };
    let job = s
        .job
        .ok_or_else(|| Error::invalid("schedule.job", "is required"))?;
    // What belongs to one job, not to every tick's.
    let per_job = [
        ("idempotency_key", !job.idempotency_key.is_empty()),
        ("depends_on", !job.depends_on.is_empty()),
        ("group_id", !job.group_id.is_empty()),
        ("ref", !job.r#ref.is_empty()),
        ("run_at", job.run_at.is_some()),
        ("deadline", job.deadline.is_some()),
    ];
    if let Some((field, _)) = per_job.iter().find(|(_, set)| *set) {
        return Err(Error::invalid(
            format!("schedule.job.{field}"),
            "cannot be set on a schedule's job: each tick's job has its own",
        ));
    }
    let job = self::job(
        "schedule.job.",
        job,
        JobId::new(),
        &HashMap::new(),
        &Context::default(),
        now_ms,
    )?;
    Ok(NewSchedule {
        key: ScheduleKey {
            tenant: tenant.to_owned(),
            id: s.schedule_id,
        },
        cron: s.cron,
        time_zone: s.time_zone,
        job: JobTemplate {
            queue: job.queue,
            kind: job.kind,
            payload: job.payload,
            priority: job.priority,
            max_attempts: job.max_attempts,
            timeout_ms: job.timeout_ms,
            concurrency_key: job.concurrency_key,
            weight: job.weight,
            labels: job.labels,
        },
        misfire,
        overlap,
        paused: s.paused,
        created_at_ms: now_ms,
    })
}

/// A valid timestamp, in milliseconds since the epoch.
pub fn timestamp_ms(field: &str, t: &prost_types::Timestamp) -> Result<i64> {
    // Year 1 .. year 9999, as google.protobuf.Timestamp defines.
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    if !(0..1_000_000_000).contains(&t.nanos) || !(MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) {
        return Err(Error::invalid(field, "is not a valid timestamp"));
    }
    Ok(t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

/// A quota's scope is `queue:`, `key:` or `tenant:` and a name; its limits are sane.
pub fn quota(mut q: v1::Quota) -> Result<Quota> {
    let (kind, name_part) = q.scope.split_once(':').ok_or_else(|| {
        Error::invalid(
            "quota.scope",
            "must be queue:<name>, key:<key> or tenant:<id>",
        )
    })?;
    if !matches!(kind, "queue" | "key" | "tenant") {
        return Err(Error::invalid(
            "quota.scope",
            "must be queue:<name>, key:<key> or tenant:<id>",
        ));
    }
    name("quota.scope", name_part)?;
    if q.max_in_flight == Some(0) {
        return Err(Error::invalid(
            "quota.max_in_flight",
            "must be at least 1 (unset for no limit)",
        ));
    }
    if let Some(rate) = q.rate_per_second
        && !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0)
    {
        return Err(Error::invalid(
            "quota.rate_per_second",
            "must be above 0 and at most 1000000",
        ));
    }
    if q.burst.is_some() && q.rate_per_second.is_none() {
        return Err(Error::invalid("quota.burst", "needs rate_per_second"));
    }
    if q.burst == Some(0) {
        return Err(Error::invalid("quota.burst", "must be at least 1"));
    }
    if q.rate_per_second.is_some() && q.burst.is_none() {
        q.burst = Some(1);
    }
    let attempt_timeout_ms = match &q.attempt_timeout {
        None => None,
        Some(_) if kind != "queue" => {
            return Err(Error::invalid(
                "quota.attempt_timeout",
                "applies to queue:<name> scopes only",
            ));
        }
        Some(d) => Some(duration_ms(
            "quota.attempt_timeout",
            d,
            MAX_TIMEOUT_MS,
            "7 days",
        )?),
    };
    Ok(Quota {
        scope: q.scope,
        max_in_flight: q.max_in_flight,
        max_queued: q.max_queued,
        rate_per_second: q.rate_per_second,
        burst: q.burst,
        attempt_timeout_ms,
    })
}

/// The batch's `ref`s must be unique names; returns them mapped to the ids chosen for the jobs.
pub fn refs(jobs: &[SubmitRequest], ids: &[JobId]) -> Result<HashMap<String, JobId>> {
    let mut refs = HashMap::new();
    let mut seen = HashSet::new();
    for (i, (job, id)) in jobs.iter().zip(ids).enumerate() {
        if job.r#ref.is_empty() {
            continue;
        }
        name(&format!("jobs[{i}].ref"), &job.r#ref)?;
        if !seen.insert(job.r#ref.as_str()) {
            return Err(Error::invalid(
                format!("jobs[{i}].ref"),
                format!("{:?} is used by an earlier job of the batch", job.r#ref),
            ));
        }
        refs.insert(job.r#ref.clone(), *id);
    }
    Ok(refs)
}

/// Refuses a dependency cycle inside a batch (jobs outside it cannot depend on new ones).
pub fn acyclic(jobs: &[NewJob]) -> Result<()> {
    let index: HashMap<JobId, usize> = jobs.iter().enumerate().map(|(i, j)| (j.id, i)).collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut mark = vec![0u8; jobs.len()];
    for start in 0..jobs.len() {
        if mark[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        mark[start] = 1;
        while let Some((node, next)) = stack.last_mut() {
            let node = *node;
            match jobs[node].depends_on.get(*next) {
                Some(dep) => {
                    *next += 1;
                    if let Some(&d) = index.get(dep) {
                        match mark[d] {
                            0 => {
                                mark[d] = 1;
                                stack.push((d, 0));
                            }
                            1 => {
                                return Err(Error::invalid(
                                    format!("jobs[{node}].depends_on"),
                                    "forms a cycle",
                                ));
                            }
                            _ => {}
                        }
                    }
                }
                None => {
                    mark[node] = 2;
                    stack.pop();
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_to_the_documented_set() {
        assert!(name("queue", "emails.high-prio:v2_x").is_ok());
        for bad in ["", "has space", "ünï", "semi;colon", &"x".repeat(129)] {
            assert!(name("queue", bad).is_err(), "{bad:?} should be refused");
        }
        assert!(name("queue", &"x".repeat(128)).is_ok());
    }

    #[test]
    fn durations_must_be_positive_and_bounded() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(
            duration_ms("t", &d(1, 500_000_000), MAX_TIMEOUT_MS, "7d").ok(),
            Some(1500)
        );
        assert!(duration_ms("t", &d(-1, 0), MAX_TIMEOUT_MS, "7d").is_err());
        assert!(duration_ms("t", &d(0, -5), MAX_TIMEOUT_MS, "7d").is_err());
        assert!(duration_ms("t", &d(0, 0), MAX_TIMEOUT_MS, "7d").is_err());
        assert!(duration_ms("t", &d(i64::MAX, 0), MAX_TIMEOUT_MS, "7d").is_err());
        assert!(duration_ms("t", &d(8 * 24 * 3600, 0), MAX_TIMEOUT_MS, "7d").is_err());
    }

    #[test]
    fn an_attempt_timeout_is_a_queues_and_sane() {
        let with = |scope: &str, seconds| v1::Quota {
            scope: scope.into(),
            attempt_timeout: Some(prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        };
        let q = quota(with("queue:render", 90)).expect("a queue's timeout");
        assert_eq!(q.attempt_timeout_ms, Some(90_000));
        assert!(!q.is_empty(), "a quota of its own, not \"no limit\"");
        for bad in [
            with("key:k", 90),
            with("tenant:t", 90),
            with("queue:render", 0),
            with("queue:render", -1),
            with("queue:render", 8 * 24 * 3600),
        ] {
            let err = quota(bad.clone()).expect_err("refused");
            assert!(
                err.to_string().contains("quota.attempt_timeout"),
                "{bad:?}: {err}"
            );
        }
    }
}

/// Property tests over request decoding and validation: random requests (near and past every
/// limit) and random bytes never panic; what is accepted keeps every documented rule, and what
/// is refused names a field of the request.
#[cfg(test)]
mod properties {
    use prost::Message;
    use switchyard_proto::v1::SubmitRequest;

    use super::*;

    const FIELDS: &[&str] = &[
        "idempotency_ttl",
        "unique_for",
        "unique_while_active",
        "debounce",
        "queue",
        "kind",
        "payload",
        "priority",
        "max_attempts",
        "timeout",
        "deadline",
        "run_at",
        "idempotency_key",
        "concurrency_key",
        "weight",
        "depends_on",
        "labels",
    ];

    /// Mostly a valid value (so that whole requests pass often enough), sometimes one at or
    /// past a limit, or with a character outside the rule.
    fn text(rng: &mut fastrand::Rng, max: usize, may_be_empty: bool) -> String {
        const ALPHABET: &[char] = &[
            'a', 'Z', '0', '_', '.', ':', '-', ' ', '/', 'é', '\n', '\u{7f}',
        ];
        let hostile = rng.u8(0..10) == 0;
        let len = match (hostile, rng.u8(0..3)) {
            (true, 0) => 0,
            (true, 1) => max + 1,
            (true, _) => max,
            (false, _) if may_be_empty && rng.bool() => 0,
            (false, _) => rng.usize(1..=max.min(40)),
        };
        (0..len)
            .map(|_| {
                if hostile && rng.u8(0..4) == 0 {
                    ALPHABET[rng.usize(..ALPHABET.len())]
                } else {
                    ALPHABET[rng.usize(..7)]
                }
            })
            .collect()
    }

    fn sometimes(rng: &mut fastrand::Rng) -> bool {
        rng.u8(0..10) == 0
    }

    fn request(rng: &mut fastrand::Rng, now: i64) -> SubmitRequest {
        let ts = |rng: &mut fastrand::Rng| {
            let ahead = if sometimes(rng) {
                rng.i64(-100_000..40_000_000)
            } else {
                rng.i64(1..1_000_000)
            };
            prost_types::Timestamp {
                seconds: now / 1000 + ahead,
                nanos: if sometimes(rng) {
                    rng.i32(-5..1_000_000_005)
                } else {
                    0
                },
            }
        };
        SubmitRequest {
            queue: text(rng, MAX_NAME_LEN, false),
            kind: text(rng, MAX_NAME_LEN, false),
            payload: vec![
                0;
                if sometimes(rng) {
                    [MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES + 1][rng.usize(..2)]
                } else {
                    rng.usize(0..100)
                }
            ],
            priority: if sometimes(rng) {
                rng.i32(-1100..1100)
            } else {
                rng.i32(-1000..=1000)
            },
            max_attempts: rng.bool().then(|| {
                if sometimes(rng) {
                    rng.u32(0..120)
                } else {
                    rng.u32(1..=100)
                }
            }),
            timeout: rng.bool().then(|| prost_types::Duration {
                seconds: if sometimes(rng) {
                    rng.i64(-10..700_000)
                } else {
                    rng.i64(1..600_000)
                },
                nanos: if sometimes(rng) {
                    rng.i32(-5..1_000_000_005)
                } else {
                    0
                },
            }),
            deadline: rng.bool().then(|| ts(rng)),
            run_at: rng.bool().then(|| ts(rng)),
            idempotency_key: text(rng, MAX_IDEMPOTENCY_KEY_LEN, true),
            concurrency_key: text(rng, MAX_NAME_LEN, true),
            weight: rng.bool().then(|| {
                if sometimes(rng) {
                    rng.u32(0..1100)
                } else {
                    rng.u32(1..=1000)
                }
            }),
            depends_on: (0..rng.usize(0..3))
                .map(|_| {
                    if sometimes(rng) {
                        text(rng, MAX_NAME_LEN, false)
                    } else {
                        crate::domain::JobId::new().to_string()
                    }
                })
                .collect(),
            labels: (0..rng.usize(0..3))
                .map(|_| {
                    (
                        text(rng, MAX_NAME_LEN, false),
                        text(rng, MAX_LABEL_VALUE_LEN, true),
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn validation_accepts_only_what_keeps_the_rules_and_names_what_it_refuses() {
        let mut rng = fastrand::Rng::with_seed(23);
        let now = crate::domain::now_ms();
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..3000 {
            let req = request(&mut rng, now);
            let copy = req.clone();
            match job(
                "",
                req,
                crate::domain::JobId::new(),
                &HashMap::new(),
                &Context::default(),
                now,
            ) {
                Ok(job) => {
                    accepted += 1;
                    assert!(name("q", &job.queue).is_ok() && name("k", &job.kind).is_ok());
                    assert!(job.payload.len() <= MAX_PAYLOAD_BYTES);
                    assert!((-MAX_PRIORITY..=MAX_PRIORITY).contains(&job.priority));
                    assert!((1..=MAX_ATTEMPTS).contains(&job.max_attempts));
                    assert!((1..=MAX_WEIGHT).contains(&job.weight));
                    assert!(
                        job.timeout_ms
                            .is_none_or(|t| (1..=MAX_TIMEOUT_MS).contains(&t))
                    );
                    assert!(
                        job.deadline_ms
                            .is_none_or(|d| d > now && d - now <= MAX_HORIZON_MS)
                    );
                    assert!(job.run_at_ms.is_none_or(|r| r - now <= MAX_HORIZON_MS));
                    assert!(job.labels.len() <= MAX_LABELS);
                    assert_eq!(job.depends_on.len(), copy.depends_on.len());
                }
                Err(Error::InvalidArgument { field, .. }) => {
                    refused += 1;
                    let base = field.split(['[', '.']).next().unwrap_or("");
                    assert!(FIELDS.contains(&base), "refused naming {field:?}: {copy:?}");
                }
                Err(other) => panic!("{other} for {copy:?}"),
            }
        }
        assert!(
            accepted > 100 && refused > 100,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn random_bytes_decode_or_not_and_never_panic() {
        let mut rng = fastrand::Rng::with_seed(29);
        let now = crate::domain::now_ms();
        let valid = SubmitRequest {
            queue: "q".into(),
            kind: "k".into(),
            ..Default::default()
        }
        .encode_to_vec();
        for _ in 0..5000 {
            // Mostly mutations of a valid message, some noise.
            let mut bytes = if rng.bool() {
                valid.clone()
            } else {
                (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect()
            };
            for _ in 0..rng.usize(0..4) {
                if !bytes.is_empty() {
                    let at = rng.usize(..bytes.len());
                    bytes[at] = rng.u8(..);
                }
            }
            if let Ok(req) = SubmitRequest::decode(bytes.as_slice()) {
                let _ = job(
                    "",
                    req,
                    crate::domain::JobId::new(),
                    &HashMap::new(),
                    &Context::default(),
                    now,
                );
            }
        }
    }
}
