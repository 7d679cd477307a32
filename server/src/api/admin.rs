//! `AdminService`: quotas, queue control, workers, numbers and schedules — run-time control
//! for operators (and, for schedules, for each tenant).

use super::*;
use crate::store::{Bulk, BulkAction};

/// Jobs per bulk step when the request says none, and at most.
const DEFAULT_BULK_LIMIT: u32 = 1000;
const MAX_BULK_LIMIT: u32 = 10_000;
/// Job ids one bulk request may name.
const MAX_BULK_IDS: usize = 1000;

/// `AdminService`: quotas, queue control, workers and numbers.
#[derive(Clone)]
pub struct AdminApi {
    store: Arc<dyn Store>,
    scheduler: Scheduler,
    notifier: Notifier,
    ticker: Ticker,
    /// Writes run to their end there, whatever happens to their call (`to_the_end`).
    tasks: TaskTracker,
}

impl AdminApi {
    pub fn new(
        store: Arc<dyn Store>,
        scheduler: Scheduler,
        notifier: Notifier,
        ticker: Ticker,
        tasks: TaskTracker,
    ) -> Self {
        AdminApi {
            store,
            scheduler,
            notifier,
            ticker,
            tasks,
        }
    }

    /// The namespace a caller's schedules live in: its token's tenant, or (an admin or an
    /// open coordinator) the `x-tenant-id` it names, `""` for none.
    fn schedule_tenant<T>(request: &Request<T>) -> Result<String> {
        let identity = Identity::of(request);
        if identity.authenticated && identity.tenant.is_some() {
            return Ok(identity.tenant.unwrap_or_default());
        }
        Ok(context(request.metadata(), None)?
            .tenant_id
            .unwrap_or_default())
    }

    fn schedule_key<T>(request: &Request<T>, id: &str) -> Result<ScheduleKey> {
        validate::name("schedule_id", id)?;
        Ok(ScheduleKey {
            tenant: Self::schedule_tenant(request)?,
            id: id.to_owned(),
        })
    }

    /// Pauses or resumes a schedule and tells the ticker; returns it afterwards.
    async fn pause_schedule(&self, key: ScheduleKey, paused: bool) -> Result<v1::Schedule> {
        let (store, ticker, at) = (self.store.clone(), self.ticker.clone(), key.clone());
        to_the_end(&self.tasks, async move {
            store.pause_schedule(at.clone(), paused).await?;
            ticker.changed(at).await;
            Ok(())
        })
        .await?;
        let record = self
            .store
            .schedule(key.clone())
            .await?
            .ok_or(Error::ScheduleNotFound(key.id))?;
        Ok(convert::schedule(record, now_ms()))
    }

    /// Pauses or resumes a queue; returns every paused queue afterwards.
    async fn pause(&self, queue: String, paused: bool) -> Result<Vec<String>> {
        validate::name("queue", &queue)?;
        let (store, scheduler) = (self.store.clone(), self.scheduler.clone());
        to_the_end(&self.tasks, async move {
            store.pause(queue.clone(), paused).await?;
            if let Err(err) = scheduler.pause(queue, paused).await {
                tracing::warn!(cause = %err, "the scheduler takes the pause at its next start");
            }
            Ok(())
        })
        .await?;
        self.store.paused().await
    }
}

/// The coordinator's own numbers (workers, quotas, stats): for admins and all-tenants readers.
pub(crate) fn view(identity: &Identity) -> Result<(), Status> {
    match identity.role {
        Role::Reader if identity.sees_all() => Ok(()),
        Role::Reader => Err(Status::permission_denied(
            "the coordinator's numbers need an admin or an all-tenants (*) reader token",
        )),
        _ => identity.require(Role::Admin),
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn set_quota(
        &self,
        request: Request<v1::SetQuotaRequest>,
    ) -> Result<Response<v1::Quota>, Status> {
        Identity::of(&request).require(Role::Admin)?;
        let quota = request
            .into_inner()
            .quota
            .ok_or_else(|| Error::invalid("quota", "is required"))?;
        let quota = validate::quota(quota)?;
        let (store, scheduler, set) = (self.store.clone(), self.scheduler.clone(), quota.clone());
        to_the_end(&self.tasks, async move {
            store.set_quota(set.clone()).await?;
            if let Err(err) = scheduler.set_quota(set).await {
                tracing::warn!(cause = %err, "the scheduler takes the quota at its next start");
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(convert::quota(quota, 0, 0)))
    }

    async fn list_quotas(
        &self,
        request: Request<v1::ListQuotasRequest>,
    ) -> Result<Response<v1::ListQuotasResponse>, Status> {
        view(&Identity::of(&request))?;
        let quotas = self.store.quotas().await?;
        let held = self
            .scheduler
            .held(quotas.iter().map(|(q, _)| q.scope.clone()).collect())
            .await?;
        let quotas = quotas
            .into_iter()
            .zip(held)
            .map(|((quota, queued), held)| convert::quota(quota, held, queued))
            .collect();
        Ok(Response::new(v1::ListQuotasResponse { quotas }))
    }

    async fn pause_queue(
        &self,
        request: Request<v1::PauseQueueRequest>,
    ) -> Result<Response<v1::PauseQueueResponse>, Status> {
        Identity::of(&request).require(Role::Admin)?;
        let queue = request.into_inner().queue;
        let paused = self.pause(queue, true).await?;
        Ok(Response::new(v1::PauseQueueResponse { paused }))
    }

    async fn resume_queue(
        &self,
        request: Request<v1::ResumeQueueRequest>,
    ) -> Result<Response<v1::ResumeQueueResponse>, Status> {
        Identity::of(&request).require(Role::Admin)?;
        let queue = request.into_inner().queue;
        let paused = self.pause(queue, false).await?;
        Ok(Response::new(v1::ResumeQueueResponse { paused }))
    }

    async fn list_workers(
        &self,
        request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        view(&Identity::of(&request))?;
        let workers = self.scheduler.workers().await?;
        Ok(Response::new(v1::ListWorkersResponse {
            workers: workers.into_iter().map(convert::worker).collect(),
        }))
    }

    async fn stats(
        &self,
        request: Request<v1::StatsRequest>,
    ) -> Result<Response<v1::StatsResponse>, Status> {
        view(&Identity::of(&request))?;
        let counts = self.store.queue_counts().await?;
        let paused = self.store.paused().await?;
        let mut queues: Vec<v1::QueueStats> =
            counts.into_iter().map(convert::queue_stats).collect();
        for queue in &mut queues {
            queue.paused = paused.contains(&queue.queue);
        }
        // A paused queue with no jobs yet is still something an operator paused and must see.
        for name in paused {
            if !queues.iter().any(|q| q.queue == name) {
                queues.push(v1::QueueStats {
                    queue: name,
                    paused: true,
                    ..Default::default()
                });
            }
        }
        queues.sort_by(|a, b| a.queue.cmp(&b.queue));
        let workers = self.scheduler.workers().await?.len() as u32;
        Ok(Response::new(v1::StatsResponse {
            queues,
            store: Some(convert::store_stats(self.store.writer_stats())),
            workers,
            refused_results: self.scheduler.refused_results(),
        }))
    }

    async fn create_schedule(
        &self,
        request: Request<v1::CreateScheduleRequest>,
    ) -> Result<Response<v1::Schedule>, Status> {
        Identity::of(&request).require(Role::Client)?;
        let tenant = Self::schedule_tenant(&request)?;
        let schedule = request
            .into_inner()
            .schedule
            .ok_or_else(|| Error::invalid("schedule", "is required"))?;
        let schedule = validate::schedule(schedule, &tenant, now_ms())?;
        let key = schedule.key.clone();
        let (store, ticker, at) = (self.store.clone(), self.ticker.clone(), key.clone());
        to_the_end(&self.tasks, async move {
            store.create_schedule(schedule).await?;
            ticker.changed(at).await;
            Ok(())
        })
        .await?;
        let record = self
            .store
            .schedule(key.clone())
            .await?
            .ok_or(Error::ScheduleNotFound(key.id))?;
        Ok(Response::new(convert::schedule(record, now_ms())))
    }

    async fn list_schedules(
        &self,
        request: Request<v1::ListSchedulesRequest>,
    ) -> Result<Response<v1::ListSchedulesResponse>, Status> {
        let identity = Identity::of(&request);
        // A tenant-bound caller sees its own; an admin sees every tenant's.
        let tenant = match scope(&identity) {
            Some(tenant) => Some(tenant),
            None if request.metadata().contains_key("x-tenant-id") => {
                Some(Self::schedule_tenant(&request)?)
            }
            None => None,
        };
        let now = now_ms();
        let schedules = self
            .store
            .schedules(tenant)
            .await?
            .into_iter()
            .map(|r| convert::schedule(r, now))
            .collect();
        Ok(Response::new(v1::ListSchedulesResponse { schedules }))
    }

    async fn pause_schedule(
        &self,
        request: Request<v1::PauseScheduleRequest>,
    ) -> Result<Response<v1::Schedule>, Status> {
        Identity::of(&request).require(Role::Client)?;
        let key = Self::schedule_key(&request, &request.get_ref().schedule_id)?;
        Ok(Response::new(self.pause_schedule(key, true).await?))
    }

    async fn resume_schedule(
        &self,
        request: Request<v1::ResumeScheduleRequest>,
    ) -> Result<Response<v1::Schedule>, Status> {
        Identity::of(&request).require(Role::Client)?;
        let key = Self::schedule_key(&request, &request.get_ref().schedule_id)?;
        Ok(Response::new(self.pause_schedule(key, false).await?))
    }

    async fn delete_schedule(
        &self,
        request: Request<v1::DeleteScheduleRequest>,
    ) -> Result<Response<v1::DeleteScheduleResponse>, Status> {
        Identity::of(&request).require(Role::Client)?;
        let key = Self::schedule_key(&request, &request.get_ref().schedule_id)?;
        let (store, ticker) = (self.store.clone(), self.ticker.clone());
        to_the_end(&self.tasks, async move {
            store.delete_schedule(key.clone()).await?;
            ticker.changed(key).await;
            Ok(())
        })
        .await?;
        Ok(Response::new(v1::DeleteScheduleResponse {}))
    }

    async fn bulk(
        &self,
        request: Request<v1::BulkRequest>,
    ) -> Result<Response<v1::BulkResponse>, Status> {
        let identity = Identity::of(&request);
        identity.require(Role::Admin)?;
        let req = request.into_inner();
        let action = match v1::BulkAction::try_from(req.action) {
            Ok(v1::BulkAction::Cancel) => BulkAction::Cancel,
            Ok(v1::BulkAction::Requeue) => BulkAction::Requeue,
            Ok(v1::BulkAction::Delete) => BulkAction::Delete,
            _ => return Err(Error::invalid("action", "set cancel, requeue or delete").into()),
        };
        let limit = match req.limit {
            0 => DEFAULT_BULK_LIMIT,
            n if n <= MAX_BULK_LIMIT => n,
            _ => {
                return Err(
                    Error::invalid("limit", format!("must be at most {MAX_BULK_LIMIT}")).into(),
                );
            }
        };
        if req.job_ids.len() > MAX_BULK_IDS {
            return Err(
                Error::invalid("job_ids", format!("has more than {MAX_BULK_IDS} entries")).into(),
            );
        }
        let ids = req
            .job_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                id.parse::<JobId>()
                    .map_err(|_| Error::invalid(format!("job_ids[{i}]"), "is not a job id"))
            })
            .collect::<Result<Vec<_>>>()?;
        validate::reason(&req.reason)?;
        let fields = validate::filter_fields!(req);
        let filter = ListFilter {
            after_seq: parse_page_token("cursor", &req.cursor)?,
            page_size: limit,
            ..validate::filter(fields, scope(&identity))?
        };
        let request = Bulk {
            action,
            filter,
            ids,
            dry_run: req.dry_run,
            reason: if req.reason.is_empty() {
                "cancelled in bulk".to_owned()
            } else {
                req.reason
            },
        };
        let (store, scheduler, notifier) = (
            self.store.clone(),
            self.scheduler.clone(),
            self.notifier.clone(),
        );
        let done = to_the_end(&self.tasks, async move {
            bulk::bulk(&store, &scheduler, &notifier, request).await
        })
        .await?;
        Ok(Response::new(v1::BulkResponse {
            matched: done.matched,
            changed: done.changed,
            next_cursor: done.next_after_seq.map(page_token).unwrap_or_default(),
        }))
    }
}
