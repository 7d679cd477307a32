//! Authentication by a tokens file, tenants kept apart, roles for admin RPCs and worker
//! streams, and load shedding at the ceiling of calls in flight. Each refusal is checked with
//! its status code, and for what it left behind: nothing.

mod support;

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use switchyard_client::{Batch, Client, JobSpec, ListFilter};
use switchyard_proto::v1::{
    BulkAction, BulkRequest, CancelRequest, GetGroupRequest, GetRequest, Hello, JobState,
    ListQuotasRequest, ListRequest, ListWorkersRequest, PauseQueueRequest, Quota, RequeueRequest,
    ResumeQueueRequest, RunRequest, SetQuotaRequest, StatsRequest, SubmitBatchRequest, WaitRequest,
    WatchGroupRequest, WorkerMessage, admin_service_client::AdminServiceClient,
    cancel_request::Target, job_service_client::JobServiceClient,
    worker_message::Message as ToCoordinator, worker_service_client::WorkerServiceClient,
};
use switchyard_testkit::{Coordinator, Worker};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use support::{COORDINATOR_FLAGS, PATIENCE, max_overlap, new_job, span};

const TOKENS: &str = "\
# token            tenant  role
tok-acme-client    acme
tok-globex-client  globex  client
tok-worker-1       acme    worker
tok-admin-1        *       admin
";
const ACME: &str = "tok-acme-client";
const GLOBEX: &str = "tok-globex-client";
const WORKER: &str = "tok-worker-1";
const ADMIN: &str = "tok-admin-1";

/// A coordinator started with `--tokens`, the directory that holds the file, and a channel
/// that carries no credentials of its own.
struct Secured {
    coordinator: Coordinator,
    _tokens: TempDir,
    channel: Channel,
}

impl Secured {
    async fn start() -> Secured {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("tokens");
        std::fs::write(&path, TOKENS).expect("write the tokens file");
        let path = path.to_str().expect("a UTF-8 path").to_owned();
        let mut args = COORDINATOR_FLAGS.to_vec();
        args.extend(["--tokens", path.as_str()]);
        let coordinator = Coordinator::start_with(&args).await;
        let channel = support::connect(&coordinator).await.channel().clone();
        Secured {
            coordinator,
            _tokens: dir,
            channel,
        }
    }

    /// The SDK, sending `token`.
    fn client(&self, token: &str) -> Client {
        Client::from_channel(self.channel.clone())
            .with_token(token)
            .expect("a printable token")
    }
}

/// A request with `authorization` set to `credential`, or without it. Its deadline keeps a
/// call that should have been refused (say, a `Run` that nobody serves) from hanging the test.
fn call<T>(message: T, credential: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(Duration::from_secs(10));
    if let Some(value) = credential {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("ASCII metadata"));
    }
    request
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Opens `WorkerService.Connect` with a hello and `credential`; the stream's sender is kept
/// open so that the call is refused for who it is, not for ending.
async fn connect_worker(
    channel: &Channel,
    credential: Option<&str>,
) -> (
    Result<tonic::Response<tonic::Streaming<switchyard_proto::v1::CoordinatorMessage>>, Status>,
    mpsc::Sender<WorkerMessage>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(WorkerMessage {
        message: Some(ToCoordinator::Hello(Hello {
            worker_id: "raw-worker".into(),
            queues: vec!["default".into()],
            kinds: vec![],
            slots: 1,
            version: "test".into(),
            heartbeat_interval: None,
            held: vec![],
        })),
    })
    .await
    .expect("hello");
    let result = WorkerServiceClient::new(channel.clone())
        .connect(call(ReceiverStream::new(rx), credential))
        .await;
    (result, tx)
}

/// Calls every RPC of the job, admin and worker services with `credential`; returns the
/// status of each, by name. `job` and `group` are ids to aim at.
async fn every_rpc(
    channel: &Channel,
    credential: Option<&str>,
    job: &str,
    group: &str,
) -> Vec<(&'static str, Result<(), Status>)> {
    let mut jobs = JobServiceClient::new(channel.clone());
    let mut admin = AdminServiceClient::new(channel.clone());
    let c = credential;
    let mut out = vec![
        (
            "Submit",
            ok(jobs.submit(call(new_job("default", "echo"), c)).await),
        ),
        (
            "SubmitBatch",
            ok(jobs
                .submit_batch(call(
                    SubmitBatchRequest {
                        jobs: vec![new_job("default", "echo")],
                        ..Default::default()
                    },
                    c,
                ))
                .await),
        ),
        (
            "Run",
            ok(jobs
                .run(call(
                    RunRequest {
                        job: Some(new_job("default", "echo")),
                        detach: false,
                    },
                    c,
                ))
                .await),
        ),
        (
            "Get",
            ok(jobs.get(call(GetRequest { job_id: job.into() }, c)).await),
        ),
        ("List", ok(jobs.list(call(ListRequest::default(), c)).await)),
        (
            "Wait",
            ok(jobs.wait(call(WaitRequest { job_id: job.into() }, c)).await),
        ),
        (
            "WatchGroup",
            ok(jobs
                .watch_group(call(
                    WatchGroupRequest {
                        group_id: group.into(),
                        ..Default::default()
                    },
                    c,
                ))
                .await),
        ),
        (
            "GetGroup",
            ok(jobs
                .get_group(call(
                    GetGroupRequest {
                        group_id: group.into(),
                    },
                    c,
                ))
                .await),
        ),
        (
            "Cancel",
            ok(jobs
                .cancel(call(
                    CancelRequest {
                        target: Some(Target::JobId(job.into())),
                        reason: String::new(),
                    },
                    c,
                ))
                .await),
        ),
        (
            "Requeue",
            ok(jobs
                .requeue(call(
                    RequeueRequest {
                        job_id: job.into(),
                        max_attempts: None,
                    },
                    c,
                ))
                .await),
        ),
    ];
    out.extend(admin_rpcs(&mut admin, c).await);
    let (connected, _hello) = connect_worker(channel, c).await;
    out.push(("Connect", connected.map(drop)));
    out
}

/// Every admin RPC with `credential`, each with a request that would change something.
async fn admin_rpcs(
    admin: &mut AdminServiceClient<Channel>,
    c: Option<&str>,
) -> Vec<(&'static str, Result<(), Status>)> {
    vec![
        (
            "SetQuota",
            ok(admin
                .set_quota(call(
                    SetQuotaRequest {
                        quota: Some(Quota {
                            scope: "queue:default".into(),
                            max_in_flight: Some(1),
                            ..Default::default()
                        }),
                    },
                    c,
                ))
                .await),
        ),
        (
            "ListQuotas",
            ok(admin.list_quotas(call(ListQuotasRequest {}, c)).await),
        ),
        (
            "PauseQueue",
            ok(admin
                .pause_queue(call(
                    PauseQueueRequest {
                        queue: "default".into(),
                    },
                    c,
                ))
                .await),
        ),
        (
            "ResumeQueue",
            ok(admin
                .resume_queue(call(
                    ResumeQueueRequest {
                        queue: "default".into(),
                    },
                    c,
                ))
                .await),
        ),
        (
            "ListWorkers",
            ok(admin.list_workers(call(ListWorkersRequest {}, c)).await),
        ),
        ("Stats", ok(admin.stats(call(StatsRequest {}, c)).await)),
        (
            "Bulk",
            ok(admin
                .bulk(call(
                    BulkRequest {
                        action: BulkAction::Cancel as i32,
                        queue: "default".into(),
                        ..Default::default()
                    },
                    c,
                ))
                .await),
        ),
    ]
}

fn ok<T>(result: Result<T, Status>) -> Result<(), Status> {
    result.map(drop)
}

fn assert_all_refused(results: &[(&str, Result<(), Status>)], code: Code, credential: &str) {
    for (rpc, result) in results {
        match result {
            Ok(()) => panic!("{rpc} with {credential} was answered"),
            Err(status) => assert_eq!(status.code(), code, "{rpc} with {credential}: {status:?}"),
        }
    }
}

/// The admin's view: no job, no write, no quota, no worker, no paused queue.
async fn assert_untouched(admin: &Client) {
    let jobs = support::all_jobs(admin).await;
    assert!(
        jobs.is_empty(),
        "jobs were stored: {:?}",
        support::ids(&jobs)
    );
    let stats = admin.stats().await.expect("stats");
    assert!(stats.queues.is_empty(), "{:?}", stats.queues);
    assert_eq!(stats.workers, 0);
    let store = stats.store.expect("store stats");
    assert_eq!(store.rows_written, 0, "the writer wrote rows: {store:?}");
    assert!(admin.quotas().await.expect("quotas").is_empty());
    assert!(admin.workers().await.expect("workers").is_empty());
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated_and_change_nothing() {
    let secured = Secured::start().await;
    let admin = secured.client(ADMIN);
    let wrong = bearer("tok-nobody-knows");
    let unprefixed = ACME.to_owned();
    let basic = format!("Basic {ACME}");
    for (credential, label) in [
        (None, "no token"),
        (Some(wrong.as_str()), "a wrong token"),
        (Some(unprefixed.as_str()), "a token without Bearer"),
        (Some(basic.as_str()), "Basic auth"),
    ] {
        let results = every_rpc(&secured.channel, credential, "no-such-job", "no-such-group").await;
        assert_eq!(results.len(), 18, "every RPC was tried");
        assert_all_refused(&results, Code::Unauthenticated, label);
    }
    assert_untouched(&admin).await;
    let paused = admin.pause_queue("default", false).await.expect("resume");
    assert!(paused.is_empty(), "no queue was paused: {paused:?}");

    // Health stays open, for load balancers.
    let health = HealthClient::new(secured.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers without a token")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    // A real job and group: without a token, they can be neither seen, waited on nor cancelled.
    let acme = secured.client(ACME);
    let job = acme
        .submit(JobSpec::new("nobody", "echo"))
        .await
        .expect("acme submits")
        .job_id;
    let group = acme
        .submit_group(Batch::new().job(JobSpec::new("nobody", "echo")))
        .await
        .expect("acme submits a group")
        .group_id;
    let results = every_rpc(&secured.channel, None, &job, &group).await;
    assert_all_refused(&results, Code::Unauthenticated, "no token");
    let after = acme.get(&job).await.expect("acme sees its job");
    assert_eq!(
        after.state(),
        JobState::Queued,
        "the refused Cancel did nothing"
    );
    let jobs = support::all_jobs(&admin).await;
    assert_eq!(jobs.len(), 2, "only acme's two jobs are stored");
}

#[tokio::test]
async fn a_tenant_sees_waits_on_and_cancels_only_its_own_jobs() {
    let secured = Secured::start().await;
    let acme = secured.client(ACME);
    let globex = secured.client(GLOBEX);
    let admin = secured.client(ADMIN);

    // The token vouches for the tenant: acme cannot submit as globex.
    let job = acme
        .clone()
        .with_tenant("globex")
        .expect("tenant")
        .submit(JobSpec::new("nobody", "echo").payload("acme's"))
        .await
        .expect("acme submits")
        .job_id;
    let group = acme
        .submit_group(Batch::new().jobs((0..2).map(|_| JobSpec::new("nobody", "echo"))))
        .await
        .expect("acme submits a group")
        .group_id;
    let theirs = globex
        .submit(JobSpec::new("nobody", "echo"))
        .await
        .expect("globex submits")
        .job_id;

    let seen = acme.get(&job).await.expect("acme sees its job");
    assert_eq!(seen.tenant_id, "acme");
    for (what, err) in [
        ("Get", globex.get(&job).await.map(drop)),
        (
            "Wait",
            globex
                .wait(&job, Some(Duration::from_secs(5)))
                .await
                .map(drop),
        ),
        ("Cancel", globex.cancel(&job).await.map(drop)),
        ("Requeue", globex.requeue(&job, None).await.map(drop)),
        ("GetGroup", globex.group(&group).await.map(drop)),
        ("CancelGroup", globex.cancel_group(&group).await.map(drop)),
        ("Get (acme)", acme.get(&theirs).await.map(drop)),
    ] {
        let err = err.expect_err(what);
        assert_eq!(err.code(), Some(Code::NotFound), "{what}: {err}");
    }
    let watch = globex
        .watch_group(&group, None)
        .try_collect::<Vec<_>>()
        .await
        .expect_err("globex cannot watch acme's group");
    assert_eq!(watch.code(), Some(Code::NotFound), "{watch}");

    let ids = |jobs: Vec<switchyard_client::Job>| -> Vec<String> {
        let mut ids: Vec<String> = jobs.into_iter().map(|j| j.job_id).collect();
        ids.sort();
        ids
    };
    let listed = |client: &Client| {
        let client = client.clone();
        async move {
            client
                .list(ListFilter::default())
                .try_collect::<Vec<_>>()
                .await
                .expect("list")
        }
    };
    let globex_sees = ids(listed(&globex).await);
    assert_eq!(
        globex_sees,
        [theirs.as_str()],
        "globex lists only its own job"
    );
    let acme_sees = listed(&acme).await;
    assert_eq!(acme_sees.len(), 3, "acme lists its three");
    assert!(acme_sees.iter().all(|j| j.tenant_id == "acme"));
    assert!(acme_sees.iter().any(|j| j.job_id == job));
    assert_eq!(
        listed(&admin).await.len(),
        4,
        "the admin sees every tenant's"
    );
    let by_admin = admin.get(&job).await.expect("the admin sees acme's job");
    assert_eq!(by_admin.tenant_id, "acme");

    // Nothing globex tried changed acme's jobs.
    assert_eq!(acme.get(&job).await.expect("get").state(), JobState::Queued);
    let g = acme.group(&group).await.expect("acme sees its group");
    assert_eq!((g.queued, g.cancelled), (2, 0));
    let cancelled = acme.cancel(&job).await.expect("acme cancels its own");
    assert_eq!(cancelled.cancelled, [job.as_str()]);
}

#[tokio::test]
async fn admin_rpcs_need_the_admin_role_and_worker_streams_the_worker_role() {
    let secured = Secured::start().await;
    let admin_client = secured.client(ADMIN);
    let mut admin = AdminServiceClient::new(secured.channel.clone());
    for token in [ACME, WORKER] {
        let credential = bearer(token);
        let results = admin_rpcs(&mut admin, Some(&credential)).await;
        assert_eq!(results.len(), 7);
        assert_all_refused(&results, Code::PermissionDenied, token);
    }
    // A client token cannot serve as a worker.
    let credential = bearer(ACME);
    let (refused, _hello) = connect_worker(&secured.channel, Some(&credential)).await;
    let status = refused.expect_err("a client token cannot connect as a worker");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_untouched(&admin_client).await;

    // The admin token may do all of it.
    let credential = bearer(ADMIN);
    for (rpc, result) in admin_rpcs(&mut admin, Some(&credential)).await {
        result.unwrap_or_else(|status| panic!("{rpc} as admin: {status:?}"));
    }
    let quotas = admin_client.quotas().await.expect("quotas");
    assert_eq!(quotas.len(), 1, "the admin's SetQuota took: {quotas:?}");
    assert_eq!(quotas[0].scope, "queue:default");
    assert_eq!(
        admin_client
            .pause_queue("other", true)
            .await
            .expect("pause"),
        ["other"]
    );
    assert!(
        admin_client
            .pause_queue("other", false)
            .await
            .expect("resume")
            .is_empty()
    );

    // A worker with a worker token runs acme's jobs end to end.
    admin_client
        .set_quota(Quota {
            scope: "queue:default".into(),
            ..Default::default()
        })
        .await
        .expect("remove the quota");
    let worker = Worker::start(&secured.coordinator.url(), &["--token", WORKER]).await;
    let workers = admin_client.workers().await.expect("workers");
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].worker_id, worker.id());
    let acme = secured.client(ACME);
    let job = acme
        .run(
            JobSpec::new("default", "sha256").payload("abc"),
            Some(PATIENCE),
        )
        .await
        .expect("run");
    assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
    assert_eq!(job.worker_id, worker.id());
    assert_eq!(job.tenant_id, "acme");
    assert_eq!(
        String::from_utf8_lossy(&job.output),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_ceiling_are_shed_at_once_and_the_admitted_ones_succeed() {
    let mut args = COORDINATOR_FLAGS.to_vec();
    // `Run` is a long-poll: its ceiling is --max-long-polls (short calls have their own).
    args.extend(["--max-long-polls", "2"]);
    let coordinator = Coordinator::start_with(&args).await;
    let client = support::connect(&coordinator).await;
    let worker = Worker::start(&coordinator.url(), &["--concurrency", "8"]).await;

    let calls: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let outcome = tokio::time::timeout(
                    PATIENCE,
                    client.run(
                        JobSpec::new("default", "sleep").payload("300"),
                        Some(PATIENCE),
                    ),
                )
                .await
                .expect("no call hangs");
                (outcome, started.elapsed())
            })
        })
        .collect();
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for call in calls {
        let (outcome, took) = call.await.expect("the call's task");
        match outcome {
            Ok(job) => admitted.push((job, took)),
            Err(err) => {
                assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
                assert!(
                    err.to_string().contains("limit of waiting calls"),
                    "refused by the ceiling, not by the transport: {err}"
                );
                refused.push(took);
            }
        }
    }
    eprintln!("{} admitted, {} shed", admitted.len(), refused.len());
    assert!(!admitted.is_empty(), "some calls were admitted");
    assert!(
        !refused.is_empty(),
        "50 calls at a ceiling of 2: some were shed"
    );
    let slowest_refusal = refused.iter().max().expect("refusals");
    let fastest_admitted = admitted.iter().map(|(_, t)| *t).min().expect("admitted");
    assert!(
        *slowest_refusal < fastest_admitted,
        "a refusal took {slowest_refusal:?}, as long as an admitted 300 ms job ({fastest_admitted:?}): it waited"
    );
    for (job, _) in &admitted {
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
        assert_eq!(job.worker_id, worker.id());
    }
    let stored = support::all_jobs(&client).await;
    assert_eq!(stored.len(), admitted.len(), "a shed Run stored no job");
    let spans = admitted.iter().map(|(job, _)| {
        let (start, end) = span(&job.attempts[0]);
        (start, end, 1)
    });
    assert!(max_overlap(spans) <= 2, "never more than 2 calls in flight");

    // The worker's open stream does not hold a place: two calls at once are both admitted.
    let (a, b) = tokio::join!(
        client.run(
            JobSpec::new("default", "sleep").payload("100"),
            Some(PATIENCE)
        ),
        client.run(
            JobSpec::new("default", "sleep").payload("100"),
            Some(PATIENCE)
        ),
    );
    for job in [a, b] {
        let job = job.expect("below the ceiling, a call is admitted");
        assert_eq!(job.state(), JobState::Succeeded);
    }
}

/// Every lookup a caller can steer is scoped to its tenant, and a foreign id reads exactly as
/// a missing one: `depends_on` (which would hand over the other tenant's output), the parent
/// header (which would take its deadline and cancellation), and group names (each tenant has
/// its own).
#[tokio::test]
async fn a_tenant_cannot_reach_or_detect_another_tenants_jobs_and_groups() {
    let secured = Secured::start().await;
    let acme = secured.client(ACME);
    let globex = secured.client(GLOBEX);
    let _worker = Worker::start(&secured.coordinator.url(), &["--token", WORKER]).await;
    let secret = acme
        .run(
            JobSpec::new("default", "echo").payload("acme's secret"),
            Some(PATIENCE),
        )
        .await
        .expect("acme's job runs");
    assert_eq!(secret.state(), JobState::Succeeded);
    let missing = "0190d3c0-0000-7000-8000-000000000000";
    let refusal =
        |err: switchyard_client::Error, id: &str| (err.code(), err.to_string().replace(id, "ID"));

    // depends_on: acme's job is as absent as a job that never was.
    let depending = |id: &str| JobSpec::new("default", "echo").depends_on(id);
    let foreign = globex
        .submit(depending(&secret.job_id))
        .await
        .expect_err("globex may not depend on acme's job");
    let absent = globex
        .submit(depending(missing))
        .await
        .expect_err("no such job");
    assert_eq!(foreign.code(), Some(Code::InvalidArgument), "{foreign}");
    assert_eq!(refusal(foreign, &secret.job_id), refusal(absent, missing));

    // The parent header: the same.
    let mut jobs = JobServiceClient::new(secured.channel.clone());
    let as_child_of = |parent: &str| {
        let mut request = call(new_job("default", "echo"), Some(GLOBEX));
        request
            .metadata_mut()
            .insert("x-switchyard-parent-job", parent.parse().expect("ascii"));
        request
    };
    let foreign = jobs
        .submit(as_child_of(&secret.job_id))
        .await
        .expect_err("acme's job is no parent of globex's");
    let absent = jobs
        .submit(as_child_of(missing))
        .await
        .expect_err("no such job");
    assert_eq!(foreign.code(), absent.code());
    assert_eq!(
        foreign.message().replace(&secret.job_id, "ID"),
        absent.message().replace(missing, "ID")
    );

    // Group names: each tenant has its own `nightly`.
    let group = |client: &Client| {
        let client = client.clone();
        async move {
            client
                .submit_batch(
                    Batch::new()
                        .group("nightly")
                        .job(JobSpec::new("nobody", "echo")),
                )
                .await
        }
    };
    group(&acme).await.expect("acme's nightly");
    group(&globex)
        .await
        .expect("globex's nightly, though acme has one of that name");
    let theirs = globex
        .group("nightly")
        .await
        .expect("globex sees its group");
    assert_eq!((theirs.size, theirs.tenant_id.as_str()), (1, "globex"));
    let ours = acme.group("nightly").await.expect("acme sees its group");
    assert_eq!(ours.tenant_id, "acme");
    assert!(
        globex
            .submit_batch(
                Batch::new()
                    .group("nightly")
                    .job(JobSpec::new("nobody", "echo"))
            )
            .await
            .is_err(),
        "a group name is still unique within its tenant"
    );
}
