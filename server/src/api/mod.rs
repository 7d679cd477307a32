//! The gRPC face: turns requests into store calls, validates them, and maps errors once.

mod admin;
pub(crate) mod bulk;
pub(crate) mod convert;
pub(crate) mod deadline;
pub(crate) mod validate;

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use switchyard_proto::v1::{
    self, CancelRequest, CancelResponse, GetRequest, Job, ListRequest, ListResponse, RunRequest,
    RunResponse, SubmitBatchRequest, SubmitBatchResponse, SubmitRequest, SubmitResponse,
    WaitRequest, WaitResponse, WatchGroupRequest, admin_service_server::AdminService,
    cancel_request::Target, job_service_server::JobService,
};
use switchyard_telemetry::{Attribute, Kind, Span, Status as SpanStatus};
use tokio::sync::oneshot;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::auth::{Identity, Role};
use tonic::{Request, Response, Status, metadata::MetadataMap};

pub use admin::AdminApi;
pub(crate) use admin::view;
pub use validate::{MAX_BATCH_JOBS, MAX_PAYLOAD_BYTES};

use crate::{
    domain::ScheduleKey,
    domain::{Blocked, GroupRecord, JobId, JobRecord, JobState, ReadyJob, now_ms},
    error::{Error, Result},
    fanin::Notifier,
    scheduler::Scheduler,
    scheduler::schedules::Ticker,
    store::{CancelTarget, Durability, ListFilter, NewGroup, Origin, Store, Submit, Submitted},
};

/// The tenant whose jobs and groups a caller may name (`None`: every tenant's, for an admin
/// or an open coordinator).
fn scope(identity: &Identity) -> Option<String> {
    if identity.authenticated && identity.role != Role::Admin {
        identity.tenant.clone()
    } else {
        None
    }
}

/// A job id from a request: text that is not one names no job.
fn job_id(text: &str) -> Result<JobId> {
    text.parse()
        .map_err(|_| Error::JobNotFound(text.to_owned()))
}

/// `JobService`: what clients call.
/// Runs a write and what follows its commit (telling the scheduler, waking waiters) to its
/// end even if the call that asked for it goes away. A caller that hangs up, or a follower
/// that dies with the call it forwarded, drops the call's future: dropped between the commit
/// and the scheduler, a submitted job would be stored but never dispatched.
pub(crate) async fn to_the_end<T: Send + 'static>(
    tasks: &TaskTracker,
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tasks
        .spawn(work)
        .await
        .map_err(|err| Error::CommitFailed(format!("a write's task ended: {err}")))?
}

/// The failpoint `api-after-submit-commit=return(MS)`: how long to wait after a submit's
/// commit (nothing in a build without failpoints).
fn pause_after_submit_commit() -> Option<u64> {
    fail::fail_point!("api-after-submit-commit", |ms| ms
        .and_then(|ms| ms.parse().ok()));
    None
}

#[derive(Clone)]
pub struct JobApi {
    store: Arc<dyn Store>,
    scheduler: Scheduler,
    notifier: Notifier,
    shutdown: CancellationToken,
    /// Work that outlives a call (cancelling the job of a `Run` whose caller hung up).
    tasks: TaskTracker,
    max_deadline: std::time::Duration,
    /// The window of an idempotency key whose job sets none (`None`: as long as the job).
    idempotency_ttl: Option<std::time::Duration>,
}

impl JobApi {
    pub fn new(
        store: Arc<dyn Store>,
        scheduler: Scheduler,
        notifier: Notifier,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        max_deadline: std::time::Duration,
        idempotency_ttl: Option<std::time::Duration>,
    ) -> Self {
        JobApi {
            store,
            scheduler,
            notifier,
            shutdown,
            tasks,
            max_deadline,
            idempotency_ttl,
        }
    }

    /// Where work that outlives a call runs ([`to_the_end`]).
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// The request's context, with what travels from the caller: its deadline (for `Run`,
    /// and for any call from inside a handler) and its parent job.
    async fn call_context<T>(
        &self,
        request: &Request<T>,
        deadline_binds: bool,
    ) -> Result<validate::Context> {
        let (identity, metadata) = (&Identity::of(request), request.metadata());
        let mut ctx = context(metadata, crate::trace::of(request))?;
        ctx.idempotency_ttl_ms = self
            .idempotency_ttl
            .map(|ttl| i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        // A token vouches for its tenant; only an admin token acting for all may name one.
        if identity.authenticated && identity.tenant.is_some() {
            ctx.tenant_id = identity.tenant.clone();
        }
        let now = now_ms();
        let parent = match metadata.get("x-switchyard-parent-job") {
            None => None,
            Some(value) => {
                let id = value
                    .to_str()
                    .ok()
                    .filter(|id| !id.is_empty() && id.len() <= validate::MAX_NAME_LEN)
                    .ok_or_else(|| Error::invalid("x-switchyard-parent-job", "must be a job id"))?;
                let no_job = || Error::invalid("x-switchyard-parent-job", format!("no job {id}"));
                let parent_id = id.parse::<JobId>().map_err(|_| no_job())?;
                // Another tenant's job is, to this caller, no job at all.
                let parent = self
                    .store
                    .get(parent_id)
                    .await?
                    .filter(|p| identity.may_see(p.tenant_id.as_deref().unwrap_or("")))
                    .ok_or_else(no_job)?;
                if parent.state.is_terminal() {
                    return Err(Error::FailedPrecondition {
                        id: parent.id.to_string(),
                        reason: "(the parent) has already ended; its children cannot start".into(),
                    });
                }
                ctx.parent_attempt = parent_attempt(metadata)?;
                // Checked again where the child is stored, which is exact; this answers
                // early.
                if let Some(attempt) = ctx.parent_attempt
                    && (parent.state != JobState::Running || parent.attempt != attempt)
                {
                    return Err(Error::parent_attempt_ended(parent.id, attempt));
                }
                Some(parent)
            }
        };
        let mut bound = now.saturating_add(self.max_deadline.as_millis() as i64);
        // The server's maximum alone does not give a job a deadline; a caller's does, brought
        // in to that maximum if it lies beyond it.
        let mut bound_by_caller = false;
        if (deadline_binds || parent.is_some())
            && let Some(timeout) = deadline::of(request)
        {
            let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
            bound = bound.min(now.saturating_add(ms));
            bound_by_caller = true;
        }
        if let Some(d) = parent.as_ref().and_then(|p| p.deadline_ms) {
            bound = bound.min(d);
            bound_by_caller = true;
        }
        if bound <= now {
            return Err(Error::DeadlinePassed);
        }
        ctx.deadline_ms = bound_by_caller.then_some(bound);
        ctx.parent_job_id = parent.map(|p| p.id);
        Ok(ctx)
    }

    /// Stores jobs and hands the ready ones to the scheduler, in a `switchyard.submit` span
    /// under the caller's trace: the jobs carry that span's context from then on, so that
    /// their dispatch and the worker's attempt join the same trace.
    async fn store_jobs(
        &self,
        origin: Origin,
        mut jobs: Vec<crate::store::NewJob>,
        group: Option<NewGroup>,
        scope: Option<String>,
        durability: Durability,
    ) -> Result<Vec<Submitted>> {
        let first = jobs.first();
        let parent = switchyard_telemetry::context_from(
            first.and_then(|j| j.traceparent.as_deref()).unwrap_or(""),
            first.and_then(|j| j.tracestate.as_deref()).unwrap_or(""),
        );
        let span = switchyard_telemetry::start(
            &switchyard_telemetry::tracer("switchyard-coordinator"),
            "switchyard.submit",
            Kind::Server,
            &parent,
            vec![
                Attribute::new("switchyard.jobs", jobs.len() as i64),
                Attribute::new(
                    "switchyard.queue",
                    first.map(|j| j.queue.clone()).unwrap_or_default(),
                ),
            ],
        );
        let (traceparent, tracestate) = switchyard_telemetry::traceparent_of(&span);
        if let Some(parent) = switchyard_telemetry::remote_parent(&traceparent, &tracestate) {
            let trace = Some(parent.trace_id);
            for job in &mut jobs {
                job.traceparent = Some(traceparent.clone());
                job.tracestate = (!tracestate.is_empty()).then(|| tracestate.clone());
                job.trace_id = trace.clone();
            }
        }
        let submit = Submit {
            origin,
            jobs,
            group,
            scope,
            durability,
        };
        let api = self.clone();
        to_the_end(
            &self.tasks,
            async move { api.commit_jobs(submit, span).await },
        )
        .await
    }

    /// Stores the jobs, then hands the ready ones to the scheduler: in a task of its own
    /// ([`to_the_end`]).
    async fn commit_jobs(
        &self,
        submit: Submit,
        mut span: impl Span + Send + 'static,
    ) -> Result<Vec<Submitted>> {
        let done = match self.store.submit(submit).await {
            Ok(done) => done,
            Err(err) => {
                span.set_status(SpanStatus::error(err.to_string()));
                span.end();
                return Err(err);
            }
        };
        span.end();
        // Tests widen the window between the commit and the scheduler (a hang-up in it).
        if let Some(ms) = pause_after_submit_commit() {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let ready = done.iter().filter_map(|s| s.ready.clone()).collect();
        // The jobs are durable now; if the scheduler is stopping, the next start finds them.
        if let Err(err) = self.scheduler.enqueue(ready).await {
            tracing::warn!(cause = %err, "submitted jobs wait for the next start");
        }
        let waiting = done
            .iter()
            .filter(|s| !s.duplicate)
            .filter_map(|s| Some((s.id, s.waiting_until_ms?)))
            .collect();
        if let Err(err) = self.scheduler.wait(waiting).await {
            tracing::warn!(cause = %err, "submitted jobs wait for the next start");
        }
        Ok(done)
    }

    /// A job as the wire shows it, with why it waits if it is queued.
    async fn shown(&self, job: JobRecord) -> Result<Job> {
        let mut blocked = explain(&job, now_ms());
        if blocked == Some(Blocked::Ready)
            && let Some(reason) = self.scheduler.explain(ready_job(&job)).await?
        {
            blocked = Some(reason);
        }
        Ok(convert::job(job, blocked))
    }

    /// Blocks until the job is terminal, the call's deadline passes or the coordinator stops.
    /// `subscribed` is a registration taken before the job was stored (a `Run`'s own job):
    /// its end cannot have been missed, so its state need not be read first.
    async fn wait_for(
        &self,
        job_id: JobId,
        timeout: Option<std::time::Duration>,
        subscribed: Option<oneshot::Receiver<()>>,
    ) -> Result<Job, Status> {
        let woken = match subscribed {
            Some(woken) => woken,
            None => {
                let woken = self.notifier.subscribe(job_id);
                let job = self.job(job_id).await?;
                if job.state.is_terminal() {
                    drop(woken);
                    self.notifier.forget(job_id);
                    return Ok(convert::job(job, None));
                }
                woken
            }
        };
        let expired = async {
            match timeout {
                Some(t) => tokio::time::sleep(deadline::answer_before(t)).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            _ = woken => Ok(()),
            _ = expired => Err(Status::deadline_exceeded(format!(
                "job {job_id} did not finish within the call's deadline"
            ))),
            _ = self.shutdown.cancelled() => Err(Error::ShuttingDown.into()),
        };
        self.notifier.forget(job_id);
        outcome?;
        let job = self.job(job_id).await?;
        Ok(self.shown(job).await?)
    }

    /// A job that exists.
    async fn job(&self, id: JobId) -> Result<JobRecord> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| Error::JobNotFound(id.to_string()))
    }
}

impl JobApi {
    /// A job this caller may see; another tenant's is NOT_FOUND, as if it did not exist.
    async fn visible_job(&self, identity: &Identity, id: &str) -> Result<JobRecord> {
        let job = self.job(job_id(id)?).await?;
        if identity.may_see(job.tenant_id.as_deref().unwrap_or("")) {
            Ok(job)
        } else {
            Err(Error::JobNotFound(id.to_owned()))
        }
    }

    async fn visible_group(&self, identity: &Identity, id: String) -> Result<GroupRecord> {
        let group = self
            .store
            .group(id.clone(), scope(identity))
            .await?
            .ok_or_else(|| Error::GroupNotFound(id.clone()))?;
        if identity.may_see(group.tenant_id.as_deref().unwrap_or("")) {
            Ok(group)
        } else {
            Err(Error::GroupNotFound(id))
        }
    }

    /// Cancels in the store (which fences out running attempts), then tells the scheduler to
    /// drop the queued ones and stop the running ones on their workers, and wakes waiters.
    async fn cancel_jobs(
        &self,
        target: CancelTarget,
        reason: String,
    ) -> Result<(Vec<JobId>, Option<JobState>)> {
        let api = self.clone();
        to_the_end(&self.tasks, async move {
            api.cancel_jobs_now(target, reason).await
        })
        .await
    }

    async fn cancel_jobs_now(
        &self,
        target: CancelTarget,
        reason: String,
    ) -> Result<(Vec<JobId>, Option<JobState>)> {
        let done = self.store.cancel(target, reason.clone()).await?;
        let mut cancelled = done.ids;
        cancelled.extend(done.dependents);
        self.notifier.notify(&cancelled);
        // The store is the record: a stopping scheduler dispatches nothing more anyway.
        if let Err(err) = self.scheduler.remove(cancelled.clone()).await {
            tracing::warn!(cause = %err, "scheduler did not take the cancellation");
        }
        if let Err(err) = self.scheduler.stop(done.running, reason).await {
            tracing::warn!(cause = %err, "scheduler did not stop the cancelled attempts");
        }
        Ok((cancelled, done.state))
    }
}

/// Cancels a `Run`'s job if the call is dropped (the caller hung up) while still armed.
struct CancelOnDrop {
    api: Option<JobApi>,
    job_id: JobId,
    /// The job's deadline (the call's): a call that ends because it came is not a hang-up,
    /// and the job ends `DEADLINE_EXCEEDED` by itself, not `CANCELLED`.
    deadline_ms: Option<i64>,
}

/// How early before its deadline a dropped call still counts as the deadline (the caller's
/// timer and ours do not fire at the same instant).
const HANG_UP_SLACK_MS: i64 = 100;

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(api) = self.api.take() else {
            return;
        };
        if self
            .deadline_ms
            .is_some_and(|d| now_ms() >= d - HANG_UP_SLACK_MS)
        {
            return;
        }
        let job_id = self.job_id;
        let tasks = api.tasks.clone();
        tasks.spawn(async move {
            let reason = "the caller of Run hung up".to_owned();
            match api.cancel_jobs(CancelTarget::Job(job_id), reason).await {
                Ok(_) | Err(Error::FailedPrecondition { .. }) => {}
                Err(err) => tracing::warn!(job.id = %job_id, cause = %err, "cancelling an abandoned Run failed"),
            }
        });
    }
}

/// The tenant (`x-tenant-id`) and trace context (from the trace layer) of a call.
/// `x-switchyard-parent-attempt`: the attempt of the parent job that makes the call.
fn parent_attempt(metadata: &MetadataMap) -> Result<Option<u32>> {
    let Some(value) = metadata.get("x-switchyard-parent-attempt") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| *n >= 1)
        .map(Some)
        .ok_or_else(|| {
            Error::invalid(
                "x-switchyard-parent-attempt",
                "must be an attempt number (1 or more)",
            )
        })
}

fn context(
    metadata: &MetadataMap,
    trace: Option<switchyard_telemetry::RemoteParent>,
) -> Result<validate::Context> {
    let tenant_id = match metadata.get("x-tenant-id") {
        None => None,
        Some(value) => {
            let tenant = value
                .to_str()
                .map_err(|_| Error::invalid("x-tenant-id", "must be printable ASCII"))?;
            validate::optional_name("x-tenant-id", tenant)?
        }
    };
    Ok(validate::Context {
        tenant_id,
        traceparent: trace.as_ref().map(|t| t.traceparent.clone()),
        tracestate: trace
            .as_ref()
            .map(|t| t.tracestate.clone())
            .filter(|t| !t.is_empty()),
        trace_id: trace.map(|t| t.trace_id),
        parent_job_id: None,
        parent_attempt: None,
        deadline_ms: None,
        idempotency_ttl_ms: None,
    })
}

fn submit_response(s: Submitted) -> SubmitResponse {
    SubmitResponse {
        job_id: s.id.to_string(),
        duplicate: s.duplicate,
        state: convert::state(s.state) as i32,
        payload_differs: s.payload_differs,
        debounced: s.debounced,
    }
}

/// Says why a queued job is not running, as far as the job itself tells: it waits for its
/// dependencies, or for a future `run_at`; otherwise it is ready (and the scheduler may know
/// more).
fn explain(job: &JobRecord, now: i64) -> Option<Blocked> {
    if job.state != JobState::Queued {
        return None;
    }
    if !job.waiting_for.is_empty() {
        return Some(Blocked::Dependencies {
            waiting_for: job.waiting_for.clone(),
            of: job.depends_on.len(),
        });
    }
    Some(match job.run_at_ms.filter(|t| *t > now) {
        Some(until_ms) => Blocked::Scheduled { until_ms },
        None => Blocked::Ready,
    })
}

/// Payload and output bytes a `List` page carries at most (a job past it starts the next
/// page); well under the smallest message limit, with room for everything else.
const LIST_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Group results read per query: memory per watcher stays bounded however large the group.
const GROUP_PAGE: u32 = 256;

/// One `WatchGroup` call: yields the group's results after a cursor, page by page, waits for
/// more as jobs end, and ends with the outcome once every job has ended. It produces only
/// as fast as the caller reads.
struct GroupWatch {
    store: Arc<dyn Store>,
    ended: tokio::sync::watch::Receiver<u64>,
    shutdown: CancellationToken,
    group: crate::store::GroupKey,
    after: i64,
    page: std::collections::VecDeque<crate::domain::GroupEvent>,
    done: bool,
    /// Keeps retention off the group while the stream is open.
    _watching: crate::fanin::WatchGuard,
}

impl GroupWatch {
    async fn next(mut self) -> Option<(Result<v1::GroupEvent, Status>, Self)> {
        if self.done {
            return None;
        }
        loop {
            if let Some(ended) = self.page.pop_front() {
                self.after = ended.cursor;
                let event = v1::GroupEvent {
                    cursor: cursor(ended.cursor),
                    event: Some(v1::group_event::Event::Result(convert::job_result(ended))),
                };
                return Some((Ok(event), self));
            }
            // Seen before reading: a job that ends after this read changes it again.
            self.ended.borrow_and_update();
            let page = self
                .store
                .group_events(self.group.clone(), self.after, GROUP_PAGE)
                .await;
            match page {
                Ok(page) if !page.is_empty() => {
                    self.page.extend(page);
                    continue;
                }
                Ok(_) => {}
                Err(err) => {
                    self.done = true;
                    return Some((Err(err.into()), self));
                }
            }
            // Everything that ended is delivered: if nothing is left running, that's all.
            let key = &self.group;
            let group = match self
                .store
                .group(key.id.clone(), Some(key.tenant.clone()))
                .await
            {
                Ok(Some(group)) => group,
                Ok(None) => {
                    self.done = true;
                    let missing = Error::GroupNotFound(self.group.id.clone());
                    return Some((Err(missing.into()), self));
                }
                Err(err) => {
                    self.done = true;
                    return Some((Err(err.into()), self));
                }
            };
            if group.queued + group.running == 0 {
                // A job may have ended between the two reads: deliver it first.
                match self
                    .store
                    .group_events(self.group.clone(), self.after, 1)
                    .await
                {
                    Ok(more) if !more.is_empty() => continue,
                    _ => {}
                }
                self.done = true;
                let outcome = v1::GroupOutcome {
                    state: convert::state(group.state()) as i32,
                    group_id: group.id,
                    size: group.size,
                    succeeded: group.succeeded,
                    failed: group.failed,
                    cancelled: group.cancelled,
                    deadline_exceeded: group.deadline_exceeded,
                    error: group.error.unwrap_or_default(),
                };
                let event = v1::GroupEvent {
                    event: Some(v1::group_event::Event::Outcome(outcome)),
                    cursor: cursor(self.after),
                };
                return Some((Ok(event), self));
            }
            tokio::select! {
                changed = self.ended.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = self.shutdown.cancelled() => {
                    self.done = true;
                    return Some((Err(Error::ShuttingDown.into()), self));
                }
            }
        }
    }
}

fn cursor(seq: i64) -> String {
    format!("e{seq}")
}

fn parse_cursor(cursor: &str) -> Result<i64> {
    if cursor.is_empty() {
        return Ok(0);
    }
    cursor
        .strip_prefix('e')
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| Error::invalid("cursor", "is not a cursor this server issued"))
}

/// What the scheduler needs of a job to say why it waits.
fn ready_job(job: &JobRecord) -> ReadyJob {
    ReadyJob {
        id: job.id,
        queue: job.queue.clone(),
        kind: job.kind.clone(),
        priority: job.priority,
        run_at_ms: 0,
        seq: job.seq,
        deadline_ms: None,
        weight: job.weight.max(1),
        tenant_id: job.tenant_id.clone(),
        concurrency_key: job.concurrency_key.clone(),
        attempt: job.attempt,
    }
}

pub(crate) fn page_token(seq: i64) -> String {
    format!("s{seq}")
}

/// A page token or bulk cursor (`field`) back as the sequence number it came from.
pub(crate) fn parse_page_token(field: &str, token: &str) -> Result<i64> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .strip_prefix('s')
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::invalid(field, "is not a token this server issued"))
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobApi {
    #[tracing::instrument(level = "debug", skip_all, fields(queue = %request.get_ref().queue, kind = %request.get_ref().kind))]
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        // A reader's token changes nothing.
        Identity::of(&request).require(Role::Client)?;
        let ctx = self.call_context(&request, false).await?;
        let scope = scope(&Identity::of(&request));
        let req = request.into_inner();
        if !req.group_id.is_empty() {
            return Err(Error::invalid("group_id", "is set by SubmitBatch, not Submit").into());
        }
        if !req.r#ref.is_empty() {
            return Err(Error::invalid("ref", "only names jobs inside a SubmitBatch").into());
        }
        let job = validate::job("", req, JobId::new(), &Default::default(), &ctx, now_ms())?;
        let mut done = self
            .store_jobs(
                Origin::Submit,
                vec![job],
                None,
                scope,
                Durability::BeforeReply,
            )
            .await?;
        let submitted = done
            .pop()
            .ok_or_else(|| Error::Corrupt("submit returned no job".into()))?;
        Ok(Response::new(submit_response(submitted)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(jobs = request.get_ref().jobs.len()))]
    async fn submit_batch(
        &self,
        request: Request<SubmitBatchRequest>,
    ) -> Result<Response<SubmitBatchResponse>, Status> {
        // A reader's token changes nothing.
        Identity::of(&request).require(Role::Client)?;
        let ctx = self.call_context(&request, false).await?;
        let scope = scope(&Identity::of(&request));
        let req = request.into_inner();
        if req.jobs.is_empty() {
            return Err(Error::invalid("jobs", "must hold at least one job").into());
        }
        if req.jobs.len() > MAX_BATCH_JOBS {
            return Err(Error::invalid(
                "jobs",
                format!("has {} jobs; the limit is {MAX_BATCH_JOBS}", req.jobs.len()),
            )
            .into());
        }
        let group = validate::optional_name("group_id", &req.group_id)?.map(|id| NewGroup {
            id,
            cancel_on_failure: req.cancel_on_failure,
        });
        if group.is_none() && req.cancel_on_failure {
            return Err(Error::invalid("cancel_on_failure", "needs a group_id").into());
        }
        let ids: Vec<JobId> = req.jobs.iter().map(|_| JobId::new()).collect();
        let refs = validate::refs(&req.jobs, &ids)?;
        let now = now_ms();
        let mut jobs = Vec::with_capacity(req.jobs.len());
        for (i, (job, id)) in req.jobs.into_iter().zip(ids).enumerate() {
            if !job.group_id.is_empty() && Some(&job.group_id) != group.as_ref().map(|g| &g.id) {
                return Err(Error::invalid(
                    format!("jobs[{i}].group_id"),
                    "must be empty or the batch's group_id",
                )
                .into());
            }
            jobs.push(validate::job(
                &format!("jobs[{i}]."),
                job,
                id,
                &refs,
                &ctx,
                now,
            )?);
        }
        validate::acyclic(&jobs)?;
        let group_id = group.as_ref().map(|g| g.id.clone()).unwrap_or_default();
        let done = self
            .store_jobs(Origin::Batch, jobs, group, scope, Durability::BeforeReply)
            .await?;
        Ok(Response::new(SubmitBatchResponse {
            jobs: done.into_iter().map(submit_response).collect(),
            group_id,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn run(&self, request: Request<RunRequest>) -> Result<Response<RunResponse>, Status> {
        // A reader's token changes nothing.
        Identity::of(&request).require(Role::Client)?;
        let timeout = deadline::of(&request);
        let ctx = self.call_context(&request, true).await?;
        let scope = scope(&Identity::of(&request));
        let req = request.into_inner();
        let Some(job) = req.job else {
            return Err(Error::invalid("job", "is required").into());
        };
        if !job.group_id.is_empty() || !job.r#ref.is_empty() {
            return Err(Error::invalid("job", "group_id and ref belong to SubmitBatch").into());
        }
        let fresh = JobId::new();
        let job = validate::job("job.", job, fresh, &Default::default(), &ctx, now_ms())?;
        let deadline_ms = job.deadline_ms;
        // A job bound to its call need not be on disk before the start that dispatches it
        // (whose commit is): the caller hears of nothing but the finished job, and a call that
        // ends sooner cancels it. A detached job outlives its call, as a submitted one does.
        let durability = if req.detach {
            Durability::BeforeReply
        } else {
            Durability::WithNext
        };
        // Registered before the job exists, its end cannot be missed: the wait reads nothing
        // until it is woken.
        let woken = self.notifier.subscribe(fresh);
        let stored = self
            .store_jobs(Origin::Submit, vec![job], None, scope, durability)
            .await
            .and_then(|mut done| {
                done.pop()
                    .ok_or_else(|| Error::Corrupt("submit returned no job".into()))
            });
        // A rejected job leaves no registration behind. An idempotency key may name a job
        // stored before: that one is waited for as `Wait` waits, from its state now.
        let woken = if matches!(&stored, Ok(submitted) if submitted.id == fresh) {
            Some(woken)
        } else {
            drop(woken);
            self.notifier.forget(fresh);
            None
        };
        let submitted = stored?;
        // A caller that hangs up cancels its job (the done channel), unless it detached.
        let mut guard = CancelOnDrop {
            api: (!req.detach).then(|| self.clone()),
            job_id: submitted.id,
            deadline_ms,
        };
        let outcome = self.wait_for(submitted.id, timeout, woken).await;
        guard.api = None;
        Ok(Response::new(RunResponse {
            job: Some(outcome?),
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Job>, Status> {
        let identity = Identity::of(&request);
        let id = request.into_inner().job_id;
        if id.is_empty() {
            return Err(Error::invalid("job_id", "is required").into());
        }
        let job = self.visible_job(&identity, &id).await?;
        Ok(Response::new(self.shown(job).await?))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let identity = Identity::of(&request);
        let req = request.into_inner();
        let page_size = match req.page_size {
            0 => validate::DEFAULT_PAGE_SIZE,
            n if n <= validate::MAX_PAGE_SIZE => n,
            _ => {
                return Err(Error::invalid(
                    "page_size",
                    format!("must be at most {}", validate::MAX_PAGE_SIZE),
                )
                .into());
            }
        };
        // A parent that is not a job id has no children.
        let parent_job_id = match req.parent_job_id.as_str() {
            "" => None,
            text => match text.parse::<JobId>() {
                Ok(id) => Some(id),
                Err(_) => {
                    return Ok(Response::new(ListResponse {
                        jobs: vec![],
                        next_page_token: String::new(),
                    }));
                }
            },
        };
        let fields = validate::filter_fields!(req);
        let filter = ListFilter {
            group_id: validate::optional_name("group_id", &req.group_id)?,
            parent_job_id,
            after_seq: parse_page_token("page_token", &req.page_token)?,
            page_size,
            // A tenant lists only its own jobs.
            ..validate::filter(fields, scope(&identity))?
        };
        let mut page = self.store.list(filter).await?;
        // A page is bounded in bytes as well as in count, so that large payloads and outputs
        // make shorter pages rather than an answer too large to send: it ends after the job
        // that reaches the budget (always with at least one job).
        let mut bytes = 0usize;
        if let Some(last) = page.jobs.iter().position(|job| {
            bytes += job.payload.len() + job.output.len();
            bytes >= LIST_PAGE_BYTES
        }) && last + 1 < page.jobs.len()
        {
            page.jobs.truncate(last + 1);
            page.next_after_seq = page.jobs.last().map(|job| job.seq);
        }
        let mut jobs = Vec::with_capacity(page.jobs.len());
        // One question to the scheduler per distinct queue, kind, scopes and weight.
        let mut answers = std::collections::HashMap::new();
        for job in page.jobs {
            let mut blocked = explain(&job, now_ms());
            if blocked == Some(Blocked::Ready) {
                let ready = ready_job(&job);
                let key = (
                    ready.queue.clone(),
                    ready.kind.clone(),
                    ready.scopes(),
                    ready.weight,
                );
                if !answers.contains_key(&key) {
                    let answer = self.scheduler.explain(ready).await?;
                    answers.insert(key.clone(), answer);
                }
                if let Some(Some(reason)) = answers.get(&key) {
                    blocked = Some(reason.clone());
                }
            }
            jobs.push(convert::job(job, blocked));
        }
        Ok(Response::new(ListResponse {
            jobs,
            next_page_token: page.next_after_seq.map(page_token).unwrap_or_default(),
        }))
    }

    async fn wait(&self, request: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        let identity = Identity::of(&request);
        let timeout = deadline::of(&request);
        let id = request.into_inner().job_id;
        if id.is_empty() {
            return Err(Error::invalid("job_id", "is required").into());
        }
        let job = self.visible_job(&identity, &id).await?;
        let job = self.wait_for(job.id, timeout, None).await?;
        Ok(Response::new(WaitResponse { job: Some(job) }))
    }

    type WatchGroupStream = Stream_<v1::GroupEvent>;

    async fn watch_group(
        &self,
        request: Request<WatchGroupRequest>,
    ) -> Result<Response<Self::WatchGroupStream>, Status> {
        let identity = Identity::of(&request);
        let req = request.into_inner();
        let group = validate::optional_name("group_id", &req.group_id)?
            .ok_or_else(|| Error::invalid("group_id", "is required"))?;
        let after = parse_cursor(&req.cursor)?;
        // Watched before it is read: a pruning batch that starts after the read leaves it be.
        let tenant = scope(&identity).unwrap_or_default();
        let watching = self.notifier.watch_group(crate::store::GroupKey {
            tenant,
            id: group.clone(),
        });
        // Refuse an unknown (or another tenant's) group before the stream starts.
        let group = self.visible_group(&identity, group).await?.key();
        // An admin's view finds the group in whichever tenant has it: watch that one.
        let watching = if watching.group() == &group {
            watching
        } else {
            self.notifier.watch_group(group.clone())
        };
        let watch = GroupWatch {
            store: self.store.clone(),
            ended: self.notifier.ended(),
            shutdown: self.shutdown.clone(),
            group,
            after,
            page: std::collections::VecDeque::new(),
            done: false,
            _watching: watching,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            watch,
            GroupWatch::next,
        ))))
    }

    async fn get_group(
        &self,
        request: Request<v1::GetGroupRequest>,
    ) -> Result<Response<v1::Group>, Status> {
        let identity = Identity::of(&request);
        let id = request.into_inner().group_id;
        let id = validate::optional_name("group_id", &id)?
            .ok_or_else(|| Error::invalid("group_id", "is required"))?;
        let group = self.visible_group(&identity, id).await?;
        Ok(Response::new(convert::group(group)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job.id = %request.get_ref().job_id))]
    async fn requeue(&self, request: Request<v1::RequeueRequest>) -> Result<Response<Job>, Status> {
        // A reader's token changes nothing.
        Identity::of(&request).require(Role::Client)?;
        let identity = Identity::of(&request);
        let req = request.into_inner();
        if req.job_id.is_empty() {
            return Err(Error::invalid("job_id", "is required").into());
        }
        let id = self.visible_job(&identity, &req.job_id).await?.id;
        if let Some(n) = req.max_attempts
            && !(1..=validate::MAX_ATTEMPTS).contains(&n)
        {
            return Err(Error::invalid(
                "max_attempts",
                format!("must be between 1 and {}", validate::MAX_ATTEMPTS),
            )
            .into());
        }
        let (store, scheduler) = (self.store.clone(), self.scheduler.clone());
        let max_attempts = req.max_attempts;
        let waits = to_the_end(&self.tasks, async move {
            let ready = store.requeue(id, max_attempts).await?;
            let waits = ready.is_none();
            if let Some(ready) = ready
                && let Err(err) = scheduler.enqueue(vec![ready]).await
            {
                tracing::warn!(cause = %err, "requeued job waits for the next start");
            }
            Ok(waits)
        })
        .await?;
        let job = self.job(id).await?;
        // Back to waiting for its dependencies: it still ends at its deadline.
        if waits
            && job.state == JobState::Queued
            && let Some(deadline) = job.deadline_ms
            && let Err(err) = self.scheduler.wait(vec![(id, deadline)]).await
        {
            tracing::warn!(cause = %err, "requeued job waits for the next start");
        }
        Ok(Response::new(self.shown(job).await?))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        // A reader's token changes nothing.
        Identity::of(&request).require(Role::Client)?;
        let identity = Identity::of(&request);
        let req = request.into_inner();
        let target = match req.target {
            Some(Target::JobId(id)) if !id.is_empty() => Target::JobId(id),
            Some(Target::GroupId(id)) if !id.is_empty() => Target::GroupId(id),
            _ => return Err(Error::invalid("target", "set job_id or group_id").into()),
        };
        validate::reason(&req.reason)?;
        let reason = if req.reason.is_empty() {
            "cancelled by request".to_owned()
        } else {
            req.reason
        };
        let target = match target {
            Target::JobId(id) => CancelTarget::Job(self.visible_job(&identity, &id).await?.id),
            Target::GroupId(id) => {
                CancelTarget::Group(self.visible_group(&identity, id).await?.key())
            }
        };
        let (cancelled, state) = self.cancel_jobs(target, reason).await?;
        Ok(Response::new(CancelResponse {
            cancelled: cancelled.iter().map(ToString::to_string).collect(),
            state: state.map_or(v1::JobState::Unspecified, convert::state) as i32,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_forgeries() {
        assert_eq!(
            parse_page_token("page_token", &page_token(42)).ok(),
            Some(42)
        );
        assert!(parse_page_token("page_token", "s-1").is_err());
        assert!(parse_page_token("page_token", "42").is_err());
    }

    #[test]
    fn queued_jobs_say_why_they_wait() {
        let at = now_ms() + 60_000;
        let job = JobRecord {
            id: JobId::new(),
            seq: 1,
            queue: "q".into(),
            kind: "k".into(),
            payload: vec![],
            priority: 0,
            max_attempts: 3,
            timeout_ms: None,
            deadline_ms: None,
            run_at_ms: Some(at),
            idempotency_key: None,
            concurrency_key: None,
            weight: 1,
            depends_on: vec![],
            group_id: None,
            labels: Default::default(),
            tenant_id: None,
            parent_job_id: None,
            trace_id: None,
            state: JobState::Queued,
            attempt: 0,
            output: vec![],
            error: None,
            created_at_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
            worker_id: None,
            attempts: vec![],
            waiting_for: vec![],
            progress: None,
        };
        assert_eq!(
            explain(&job, now_ms()),
            Some(Blocked::Scheduled { until_ms: at })
        );
        let running = JobRecord {
            state: JobState::Running,
            ..job
        };
        assert_eq!(explain(&running, now_ms()), None);
    }
}
