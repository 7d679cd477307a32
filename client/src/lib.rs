//! The Switchyard client SDK.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchyard_client::Error> {
//! use switchyard_client::{Client, JobSpec};
//!
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let submitted = client
//!     .submit(JobSpec::new("default", "echo").payload("hello").priority(5))
//!     .await?;
//! let job = client.get(&submitted.job_id).await?;
//! println!("{} is {:?}", job.job_id, job.state());
//! # Ok(()) }
//! ```
//!
//! Fan-out and fan-in: submit a group, then gather its results as they finish.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchyard_client::Error> {
//! use futures::StreamExt;
//! use switchyard_client::{Batch, Client, GroupUpdate, JobSpec};
//!
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let batch = Batch::new()
//!     .jobs((0..100).map(|i| JobSpec::new("default", "sha256").payload(format!("part {i}"))))
//!     .cancel_on_failure(true);
//! let group = client.submit_group(batch).await?;
//! let mut events = std::pin::pin!(client.watch_group(&group.group_id, None));
//! while let Some(event) = events.next().await {
//!     match event?.update {
//!         GroupUpdate::Result(result) => println!("{} {:?}", result.job_id, result.state()),
//!         GroupUpdate::Outcome(outcome) => println!("group {:?}", outcome.state()),
//!     }
//! }
//! # Ok(()) }
//! ```

mod error;
mod failover;
mod group;
mod spec;
mod trace;

use std::time::Duration;

use failover::{Route, Routes};
use futures::{Stream, TryStreamExt, stream};
use opentelemetry::KeyValue;
use switchyard_proto::v1::{
    self, CancelRequest, GetRequest, ListRequest, StatsRequest, SubmitBatchRequest,
    admin_service_client::AdminServiceClient, cancel_request::Target,
    job_service_client::JobServiceClient,
};
use tonic::transport::{Channel, Endpoint};
use trace::Call;

pub use error::Error;
pub use group::{GroupEvent, GroupUpdate, Resume};
pub use spec::{Batch, JobSpec};
pub use switchyard_proto::v1::{
    Attempt, BlockedOn, Group, GroupOutcome, Job, JobResult, JobState, StatsResponse,
    SubmitBatchResponse, SubmitResponse,
};

/// A connection to a coordinator, or to the first of several that answers (see
/// [`Client::connect`]). Cheap to clone: clones share one HTTP/2 connection per address.
#[derive(Debug, Clone)]
pub struct Client {
    routes: Routes,
    tenant: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    parent: Option<Parent>,
}

/// The job on whose behalf calls are made, from inside its handler: its id, deadline and
/// trace context travel with every call, so children end with it and join its trace.
#[derive(Debug, Clone, Default)]
pub struct Parent {
    pub job_id: String,
    /// The parent's attempt making the calls (0: not said). With it, a child submitted after
    /// that attempt ended is refused (FAILED_PRECONDITION) instead of joining a later one.
    pub attempt: u32,
    pub deadline: Option<std::time::SystemTime>,
    pub traceparent: String,
    pub tracestate: String,
    pub tenant_id: String,
}

/// TLS for a coordinator started with `--tls-cert` (PEM contents).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// The CA certificate that signed the coordinator's certificate.
    pub ca: Vec<u8>,
    /// This client's certificate and key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Tls {
    /// Reads the PEM files.
    pub fn from_files(
        ca: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> std::io::Result<Tls> {
        Ok(Tls {
            ca: std::fs::read(ca)?,
            identity: match identity {
                Some((cert, key)) => Some((std::fs::read(cert)?, std::fs::read(key)?)),
                None => None,
            },
        })
    }

    pub fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        config
    }
}

/// Which jobs [`Client::list`] yields.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub queue: Option<String>,
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub group_id: Option<String>,
    /// Only the children of this job.
    pub parent_job_id: Option<String>,
    /// Only jobs with this label (key, value).
    pub label: Option<(String, String)>,
    /// Only this tenant's jobs (for an admin; a tenant's token sees only its own).
    pub tenant_id: Option<String>,
    /// Only jobs submitted at or after, and before, these times.
    pub submitted_after: Option<std::time::SystemTime>,
    pub submitted_before: Option<std::time::SystemTime>,
    /// Jobs fetched per round trip (the server's default when unset).
    pub page_size: Option<u32>,
}

impl Client {
    /// Connects to a coordinator at `url`: `http://host:port`, `https://host:port` (then
    /// use [`Client::connect_with`] and a CA), or `host:port`, which means `http://host:port`
    /// (the form grpcurl takes).
    ///
    /// Several coordinators, comma-separated (`http://a:50051,http://b:50051`): the client
    /// connects to the first that answers, and a call that cannot reach the coordinator it
    /// uses (its connection cannot be made: the coordinator died or moved) is made on the next
    /// address, round robin, and the calls after it go there too. A call that reached a
    /// coordinator is never sent again, whatever it answered.
    pub async fn connect(url: impl Into<String>) -> Result<Client, Error> {
        Client::connect_with(url, None).await
    }

    /// Connects over TLS (`https://host:port`): `tls` names the CA that signed the
    /// coordinator's certificate and, for mutual TLS, this client's certificate and key.
    /// Several addresses as for [`Client::connect`]; each is verified against its own host.
    pub async fn connect_with(url: impl Into<String>, tls: Option<&Tls>) -> Result<Client, Error> {
        let endpoints = endpoints(&url.into(), tls)?;
        let mut routes = Vec::with_capacity(endpoints.len());
        let mut current = None;
        let mut failed = None;
        for (url, endpoint) in endpoints {
            // The first address that answers is where calls go; the ones after it connect
            // when a call needs them.
            let channel = match current {
                Some(_) => endpoint.connect_lazy(),
                None => match endpoint.connect().await {
                    Ok(channel) => {
                        current = Some(routes.len());
                        channel
                    }
                    Err(source) => {
                        failed = Some(source);
                        endpoint.connect_lazy()
                    }
                },
            };
            routes.push(Route { url, channel });
        }
        match (current, failed) {
            (Some(current), _) => Ok(Client::on(Routes::new(routes, current))),
            (None, Some(source)) => Err(Error::Connect {
                reason: innermost(&source),
                url: routes
                    .iter()
                    .map(|route| route.url.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                source,
            }),
            // Not reached: `endpoints` gives at least one address, and each was tried.
            (None, None) => Err(Error::InvalidUrl {
                url: String::new(),
                reason: "it is empty".into(),
            }),
        }
    }

    /// As [`Client::connect_with`], but nothing connects until the first call: an address
    /// that is down now is no error (its calls fail, or move on to the next address, then).
    pub fn connect_lazy(url: impl Into<String>, tls: Option<&Tls>) -> Result<Client, Error> {
        let routes = endpoints(&url.into(), tls)?
            .into_iter()
            .map(|(url, endpoint)| Route {
                url,
                channel: endpoint.connect_lazy(),
            })
            .collect();
        Ok(Client::on(Routes::new(routes, 0)))
    }

    /// Uses an existing channel (TLS, custom timeouts, interceptors' transport, …).
    pub fn from_channel(channel: Channel) -> Client {
        Client::on(Routes::new(
            vec![Route {
                url: String::new(),
                channel,
            }],
            0,
        ))
    }

    fn on(routes: Routes) -> Client {
        Client {
            routes,
            tenant: None,
            token: None,
            parent: None,
        }
    }

    /// Calls of the returned client are made on behalf of `parent` (a running job): they
    /// carry `x-switchyard-parent-job`, the time left to its deadline as `grpc-timeout`, its
    /// trace context and tenant. Jobs submitted this way are its children: they cannot outlive
    /// its deadline, and cancelling it cancels them.
    pub fn child_of(&self, parent: Parent) -> Client {
        Client {
            parent: Some(parent),
            ..self.clone()
        }
    }

    /// Sends `x-tenant-id` on every call of the returned client.
    pub fn with_tenant(mut self, tenant: &str) -> Result<Client, Error> {
        let value = tenant
            .parse()
            .map_err(|_| Error::InvalidArgument(format!("tenant {tenant:?} is not ASCII")))?;
        self.tenant = Some(value);
        Ok(self)
    }

    /// Sends `authorization: Bearer <token>` on every call of the returned client (for a
    /// coordinator started with `--tokens`).
    pub fn with_token(mut self, token: &str) -> Result<Client, Error> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::InvalidArgument("the token is not printable ASCII".into()))?;
        self.token = Some(value);
        Ok(self)
    }

    /// The channel to the coordinator calls go to now (with several addresses, calls made on
    /// it directly stay with that coordinator).
    pub fn channel(&self) -> &Channel {
        &self.routes.current().channel
    }

    /// The span of a call to `rpc`, under the parent job's trace when there is one.
    fn call(&self, rpc: trace::Rpc) -> Call {
        Call::start(rpc, self.parent.as_ref())
    }

    /// A request with this client's metadata and `call`'s trace context.
    fn request<T>(&self, call: &Call, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        // The call's own span when tracing is on; otherwise the parent's context is passed on
        // as it came, so that a child job still joins its parent's trace.
        let traced = call.inject(request.metadata_mut());
        if let Some(parent) = &self.parent {
            if let Some(left) = parent.deadline.map(|d| {
                d.duration_since(std::time::SystemTime::now())
                    .unwrap_or_default()
            }) {
                // Already past: the smallest timeout, which the coordinator refuses.
                request.set_timeout(left.max(Duration::from_millis(1)));
            }
            let metadata = request.metadata_mut();
            let context = [
                ("traceparent", &parent.traceparent),
                ("tracestate", &parent.tracestate),
            ];
            let attempt = if parent.attempt > 0 {
                parent.attempt.to_string()
            } else {
                String::new()
            };
            let pairs = [
                ("x-switchyard-parent-job", &parent.job_id),
                ("x-switchyard-parent-attempt", &attempt),
                ("x-tenant-id", &parent.tenant_id),
            ]
            .into_iter()
            .chain(context.into_iter().filter(|_| !traced));
            for (key, value) in pairs {
                // A value that is not valid metadata is left out rather than failing the call.
                if let (false, Ok(value)) = (value.is_empty(), value.parse()) {
                    metadata.insert(key, value);
                }
            }
        }
        if let Some(tenant) = &self.tenant {
            request.metadata_mut().insert("x-tenant-id", tenant.clone());
        }
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }

    /// Sets the call's timeout, never past the parent's deadline.
    fn bound<T>(&self, request: &mut tonic::Request<T>, timeout: Option<Duration>) {
        let Some(timeout) = timeout else {
            return;
        };
        let left = self.parent.as_ref().and_then(|p| p.deadline).map(|d| {
            d.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        });
        request.set_timeout(
            left.map_or(timeout, |left| left.min(timeout))
                .max(Duration::from_millis(1)),
        );
    }

    /// Submits one job; returns once it is durable.
    pub async fn submit(&self, job: JobSpec) -> Result<SubmitResponse, Error> {
        check_payload(job.payload_bytes())?;
        let message = job.into_request();
        let mut call = self.call(trace::SUBMIT);
        call.attributes(|| job_attributes(&message));
        let result = self
            .send(&call, message, None, |c, r| async move {
                jobs(c).submit(r).await
            })
            .await;
        call.record(&result);
        let response = result?.into_inner();
        call.attributes(|| {
            vec![
                KeyValue::new("switchyard.job.id", response.job_id.clone()),
                KeyValue::new("switchyard.duplicate", response.duplicate),
            ]
        });
        Ok(response)
    }

    /// Submits many jobs in one transaction: all of them, or none.
    pub async fn submit_batch(&self, batch: Batch) -> Result<SubmitBatchResponse, Error> {
        let request: SubmitBatchRequest = batch.into_request();
        for job in &request.jobs {
            check_payload(&job.payload)?;
        }
        let mut call = self.call(trace::SUBMIT_BATCH);
        call.attributes(|| {
            let mut attributes = vec![KeyValue::new("switchyard.jobs", request.jobs.len() as i64)];
            if !request.group_id.is_empty() {
                attributes.push(KeyValue::new(
                    "switchyard.group.id",
                    request.group_id.clone(),
                ));
            }
            attributes
        });
        let result = self
            .send(&call, request, None, |c, r| async move {
                jobs(c).submit_batch(r).await
            })
            .await;
        call.record(&result);
        Ok(result?.into_inner())
    }

    /// Submits the batch as a group, in one transaction: under the batch's group id, or a
    /// fresh one when it has none. The response's `group_id` names the group, for
    /// [`Client::watch_group`] and [`Client::cancel_group`].
    pub async fn submit_group(&self, batch: Batch) -> Result<SubmitBatchResponse, Error> {
        let batch = match batch.group_id() {
            Some(_) => batch,
            None => batch.group(new_group_id()),
        };
        self.submit_batch(batch).await
    }

    pub async fn get(&self, job_id: &str) -> Result<Job, Error> {
        let mut call = self.call(trace::GET);
        call.attributes(|| job_id_attribute(job_id));
        let request = GetRequest {
            job_id: job_id.to_owned(),
        };
        let result = self
            .send(
                &call,
                request,
                None,
                |c, r| async move { jobs(c).get(r).await },
            )
            .await;
        call.record(&result);
        Ok(result?.into_inner())
    }

    /// A group as it stands: its size, policy and how many of its jobs are in each state.
    pub async fn group(&self, group_id: &str) -> Result<Group, Error> {
        let mut call = self.call(trace::GET_GROUP);
        call.attributes(|| vec![KeyValue::new("switchyard.group.id", group_id.to_owned())]);
        let request = v1::GetGroupRequest {
            group_id: group_id.to_owned(),
        };
        let result = self
            .send(&call, request, None, |c, r| async move {
                jobs(c).get_group(r).await
            })
            .await;
        call.record(&result);
        Ok(result?.into_inner())
    }

    /// Submits a job and waits for its result. `timeout` bounds the call (sent as
    /// `grpc-timeout`) and becomes the job's deadline.
    pub async fn run(&self, job: JobSpec, timeout: Option<Duration>) -> Result<Job, Error> {
        check_payload(job.payload_bytes())?;
        let message = job.into_request();
        let mut call = self.call(trace::RUN);
        call.attributes(|| job_attributes(&message));
        let request = v1::RunRequest {
            job: Some(message),
            detach: false,
        };
        let result = self
            .send(&call, request, timeout, |c, r| async move {
                jobs(c).run(r).await
            })
            .await;
        call.record(&result);
        let response = result?.into_inner();
        if let Some(job) = &response.job {
            call.attributes(|| job_id_attribute(&job.job_id));
        }
        response
            .job
            .ok_or_else(|| Error::Rpc(tonic::Status::internal("Run answered without a job")))
    }

    /// Blocks until the job is terminal, or `timeout` passes (`DEADLINE_EXCEEDED`).
    pub async fn wait(&self, job_id: &str, timeout: Option<Duration>) -> Result<Job, Error> {
        let mut call = self.call(trace::WAIT);
        call.attributes(|| job_id_attribute(job_id));
        let request = v1::WaitRequest {
            job_id: job_id.to_owned(),
        };
        let result = self
            .send(&call, request, timeout, |c, r| async move {
                jobs(c).wait(r).await
            })
            .await;
        call.record(&result);
        let response = result?.into_inner();
        response
            .job
            .ok_or_else(|| Error::Rpc(tonic::Status::internal("Wait answered without a job")))
    }

    /// Every job that matches, page after page, as a stream.
    pub fn list(
        &self,
        filter: ListFilter,
    ) -> impl Stream<Item = Result<Job, Error>> + Send + 'static {
        let client = self.clone();
        // State: the next page token, or None once the last page was fetched.
        let pages = stream::try_unfold(Some(String::new()), move |token| {
            let client = client.clone();
            let filter = filter.clone();
            async move {
                let Some(page_token) = token else {
                    return Ok(None);
                };
                let mut call = client.call(trace::LIST);
                let request = ListRequest {
                    queue: filter.queue.unwrap_or_default(),
                    state: filter.state.map_or(0, |s| s as i32),
                    kind: filter.kind.unwrap_or_default(),
                    group_id: filter.group_id.unwrap_or_default(),
                    page_size: filter.page_size.unwrap_or(0),
                    page_token,
                    parent_job_id: filter.parent_job_id.unwrap_or_default(),
                    label: filter
                        .label
                        .map(|(k, v)| format!("{k}={v}"))
                        .unwrap_or_default(),
                    tenant_id: filter.tenant_id.unwrap_or_default(),
                    submitted_after: filter.submitted_after.map(Into::into),
                    submitted_before: filter.submitted_before.map(Into::into),
                };
                let result = client
                    .send(
                        &call,
                        request,
                        None,
                        |c, r| async move { jobs(c).list(r).await },
                    )
                    .await;
                call.record(&result);
                let page = result?.into_inner();
                let next = (!page.next_page_token.is_empty()).then_some(page.next_page_token);
                Ok::<_, Error>(Some((stream::iter(page.jobs.into_iter().map(Ok)), next)))
            }
        });
        pages.try_flatten()
    }

    /// Cancels a job that has not finished; returns its state afterwards.
    pub async fn cancel(&self, job_id: &str) -> Result<v1::CancelResponse, Error> {
        self.cancel_target(Target::JobId(job_id.to_owned())).await
    }

    /// Cancels every unfinished job of a group.
    pub async fn cancel_group(&self, group_id: &str) -> Result<v1::CancelResponse, Error> {
        self.cancel_target(Target::GroupId(group_id.to_owned()))
            .await
    }

    async fn cancel_target(&self, target: Target) -> Result<v1::CancelResponse, Error> {
        let mut call = self.call(trace::CANCEL);
        call.attributes(|| match &target {
            Target::JobId(id) => job_id_attribute(id),
            Target::GroupId(id) => vec![KeyValue::new("switchyard.group.id", id.clone())],
        });
        let request = CancelRequest {
            target: Some(target),
            reason: String::new(),
        };
        let result = self
            .send(&call, request, None, |c, r| async move {
                jobs(c).cancel(r).await
            })
            .await;
        call.record(&result);
        Ok(result?.into_inner())
    }

    /// Puts a job that ended badly back in its queue with a fresh count of attempts.
    pub async fn requeue(&self, job_id: &str, max_attempts: Option<u32>) -> Result<Job, Error> {
        let mut call = self.call(trace::REQUEUE);
        call.attributes(|| job_id_attribute(job_id));
        let request = v1::RequeueRequest {
            job_id: job_id.to_owned(),
            max_attempts,
        };
        let result = self
            .send(&call, request, None, |c, r| async move {
                jobs(c).requeue(r).await
            })
            .await;
        call.record(&result);
        Ok(result?.into_inner())
    }

    /// Sets a scope's limits (`queue:<q>`, `key:<k>`, `tenant:<t>`); none set removes it.
    pub async fn set_quota(&self, quota: v1::Quota) -> Result<v1::Quota, Error> {
        let mut call = self.call(trace::SET_QUOTA);
        call.attributes(|| vec![KeyValue::new("switchyard.quota.scope", quota.scope.clone())]);
        let request = v1::SetQuotaRequest { quota: Some(quota) };
        let result = self
            .send(&call, request, None, |c, r| async move {
                admin(c).set_quota(r).await
            })
            .await;
        call.record(&result);
        Ok(result?.into_inner())
    }

    /// Every quota, with the permits held and jobs queued in its scope now.
    pub async fn quotas(&self) -> Result<Vec<v1::Quota>, Error> {
        let mut call = self.call(trace::LIST_QUOTAS);
        let request = v1::ListQuotasRequest {};
        let result = self
            .send(&call, request, None, |c, r| async move {
                admin(c).list_quotas(r).await
            })
            .await;
        call.record(&result);
        Ok(result?.into_inner().quotas)
    }

    /// Pauses (or resumes) dispatch from a queue; returns the paused queues.
    pub async fn pause_queue(&self, queue: &str, paused: bool) -> Result<Vec<String>, Error> {
        let mut call = self.call(if paused {
            trace::PAUSE_QUEUE
        } else {
            trace::RESUME_QUEUE
        });
        call.attributes(|| vec![KeyValue::new("switchyard.queue", queue.to_owned())]);
        let queue = queue.to_owned();
        let result = if paused {
            let request = v1::PauseQueueRequest { queue };
            self.send(&call, request, None, |c, r| async move {
                admin(c).pause_queue(r).await
            })
            .await
            .map(|response| response.into_inner().paused)
        } else {
            let request = v1::ResumeQueueRequest { queue };
            self.send(&call, request, None, |c, r| async move {
                admin(c).resume_queue(r).await
            })
            .await
            .map(|response| response.into_inner().paused)
        };
        call.record(&result);
        Ok(result?)
    }

    /// The connected workers.
    pub async fn workers(&self) -> Result<Vec<v1::WorkerInfo>, Error> {
        let mut call = self.call(trace::LIST_WORKERS);
        let request = v1::ListWorkersRequest {};
        let result = self
            .send(&call, request, None, |c, r| async move {
                admin(c).list_workers(r).await
            })
            .await;
        call.record(&result);
        Ok(result?.into_inner().workers)
    }

    /// Creates a cron schedule in the caller's tenant: each tick submits `schedule.job` once.
    pub async fn create_schedule(&self, schedule: v1::Schedule) -> Result<v1::Schedule, Error> {
        let mut call = self.call(trace::CREATE_SCHEDULE);
        let request = v1::CreateScheduleRequest {
            schedule: Some(schedule),
        };
        let result = self
            .send(&call, request, None, |c, r| async move {
                admin(c).create_schedule(r).await
            })
            .await;
        call.record(&result);
        Ok(result?.into_inner())
    }

    /// The caller's schedules (an admin's: every tenant's), with their next runs.
    pub async fn schedules(&self) -> Result<Vec<v1::Schedule>, Error> {
        let mut call = self.call(trace::LIST_SCHEDULES);
        let request = v1::ListSchedulesRequest {};
        let result = self
            .send(&call, request, None, |c, r| async move {
                admin(c).list_schedules(r).await
            })
            .await;
        call.record(&result);
        Ok(result?.into_inner().schedules)
    }

    /// Pauses (or resumes) a schedule; ticks that pass while it is paused are not fired.
    pub async fn pause_schedule(
        &self,
        schedule_id: &str,
        paused: bool,
    ) -> Result<v1::Schedule, Error> {
        let schedule_id = schedule_id.to_owned();
        let result = if paused {
            let mut call = self.call(trace::PAUSE_SCHEDULE);
            let request = v1::PauseScheduleRequest { schedule_id };
            let result = self
                .send(&call, request, None, |c, r| async move {
                    admin(c).pause_schedule(r).await
                })
                .await;
            call.record(&result);
            result
        } else {
            let mut call = self.call(trace::RESUME_SCHEDULE);
            let request = v1::ResumeScheduleRequest { schedule_id };
            let result = self
                .send(&call, request, None, |c, r| async move {
                    admin(c).resume_schedule(r).await
                })
                .await;
            call.record(&result);
            result
        };
        Ok(result?.into_inner())
    }

    /// Deletes a schedule; the jobs it fired stay.
    pub async fn delete_schedule(&self, schedule_id: &str) -> Result<(), Error> {
        let mut call = self.call(trace::DELETE_SCHEDULE);
        let request = v1::DeleteScheduleRequest {
            schedule_id: schedule_id.to_owned(),
        };
        let result = self
            .send(&call, request, None, |c, r| async move {
                admin(c).delete_schedule(r).await
            })
            .await;
        call.record(&result);
        result?;
        Ok(())
    }

    /// One step of a bulk cancel, requeue or delete (admin only); go on with
    /// `next_cursor` until it is empty.
    pub async fn bulk(&self, request: v1::BulkRequest) -> Result<v1::BulkResponse, Error> {
        let mut call = self.call(trace::BULK);
        let result = self
            .send(&call, request, None, |c, r| async move {
                admin(c).bulk(r).await
            })
            .await;
        call.record(&result);
        Ok(result?.into_inner())
    }

    /// Queue counts and the store's commit numbers.
    pub async fn stats(&self) -> Result<StatsResponse, Error> {
        let mut call = self.call(trace::STATS);
        let result = self
            .send(&call, StatsRequest {}, None, |c, r| async move {
                admin(c).stats(r).await
            })
            .await;
        call.record(&result);
        Ok(result?.into_inner())
    }
}

/// The job service on `channel`, taking messages as large as a job's dependencies' outputs.
fn jobs(channel: Channel) -> JobServiceClient<Channel> {
    JobServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024)
}

fn admin(channel: Channel) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(channel)
}

/// A submitted job's attributes, for its client span.
fn job_attributes(job: &v1::SubmitRequest) -> Vec<KeyValue> {
    vec![
        KeyValue::new("switchyard.queue", job.queue.clone()),
        KeyValue::new("switchyard.job.kind", job.kind.clone()),
    ]
}

fn job_id_attribute(job_id: &str) -> Vec<KeyValue> {
    vec![KeyValue::new("switchyard.job.id", job_id.to_owned())]
}

/// The largest payload a job may carry; the coordinator refuses more (`INVALID_ARGUMENT`).
/// Checked here too, so that a payload far past it is refused with these words rather than
/// by the transport's message-size limit.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

fn check_payload(payload: &[u8]) -> Result<(), Error> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Error::InvalidArgument(format!(
            "payload: is {}; the limit is {MAX_PAYLOAD_BYTES} bytes (1 MiB) per job",
            error::size(payload.len() as u64)
        )));
    }
    Ok(())
}

/// The endpoint for a coordinator address, with the rules every Switchyard client and worker
/// follows: `host:port` means `http://host:port`; only `http` and `https` are accepted; an
/// `https` address needs `tls` (its CA), since system roots are not used.
pub fn endpoint(url: &str, tls: Option<&Tls>) -> Result<Endpoint, Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let text = url.trim();
    if text.is_empty() {
        return Err(invalid("it is empty"));
    }
    let full = match text.split_once("://") {
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => text.to_owned(),
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            if tls.is_none() {
                return Err(Error::TlsWithoutCa {
                    url: text.to_owned(),
                });
            }
            text.to_owned()
        }
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "the scheme is {scheme:?}; expected http://HOST:PORT, https://HOST:PORT or HOST:PORT"
            )));
        }
        None => format!("http://{text}"),
    };
    let mut endpoint = Endpoint::from_shared(full)
        .map_err(|_| invalid("expected http://HOST:PORT, https://HOST:PORT or HOST:PORT"))?;
    if endpoint.uri().host().is_none_or(str::is_empty) {
        return Err(invalid("it names no host"));
    }
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.client_config())
            .map_err(|source| invalid(&innermost(&source)))?;
    }
    Ok(endpoint)
}

/// The endpoints of a comma-separated list of coordinator addresses (one address is a list of
/// one), each with [`endpoint`]'s rules and the client's connection settings, and its address
/// as the client names it (`http://host:port`).
fn endpoints(urls: &str, tls: Option<&Tls>) -> Result<Vec<(String, Endpoint)>, Error> {
    urls.split(',')
        .map(|url| {
            let endpoint = endpoint(url, tls)?
                .connect_timeout(Duration::from_secs(10))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true);
            let url = endpoint.uri().to_string().trim_end_matches('/').to_owned();
            Ok((url, endpoint))
        })
        .collect()
}

/// The last cause in an error's chain, in lower case without the `(os error N)` tail: what
/// actually went wrong (`connection refused`), not the layers it passed through.
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if let Some(io) = cause.downcast_ref::<std::io::Error>()
        && io.kind() == std::io::ErrorKind::ConnectionRefused
    {
        return "connection refused".to_owned();
    }
    let text = cause.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_owned(),
    }
}

/// A group id no one else has chosen: `grp-` and a random (v4) UUID.
pub fn new_group_id() -> String {
    format!("grp-{}", uuid::Uuid::new_v4())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separates_coordinator_addresses() {
        let urls = |list: &str| -> Result<Vec<String>, Error> {
            Ok(endpoints(list, None)?
                .into_iter()
                .map(|(url, _)| url)
                .collect())
        };
        assert_eq!(urls("http://a:1").expect("one"), ["http://a:1"]);
        assert_eq!(
            urls("http://a:1, b:2").expect("two"),
            ["http://a:1", "http://b:2"]
        );
        for bad in ["http://a:1,", "http://a:1,,b:2", "http://a:1,ftp://b:2"] {
            assert!(
                matches!(urls(bad), Err(Error::InvalidUrl { .. })),
                "{bad:?} should be refused"
            );
        }
    }
}
