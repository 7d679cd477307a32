//! Helpers shared by the coordinator's integration tests: start a real coordinator, reach it
//! through the SDK or the generated clients, and check that a refused request left nothing
//! behind.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

pub mod python;

use std::{
    future::Future,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::TryStreamExt;
use switchyard_client::{Client, ListFilter};
use switchyard_proto::{
    Timestamp,
    v1::{
        AttemptOutcome, Job, JobState, ListRequest, StatsRequest, StatsResponse, SubmitRequest,
        admin_service_client::AdminServiceClient, job_service_client::JobServiceClient,
    },
};
use switchyard_testkit::Coordinator;
use tonic::{Status, transport::Channel};

/// Larger than anything the coordinator accepts, so that its limits are what the tests meet.
const CLIENT_MESSAGE_LIMIT: usize = 64 * 1024 * 1024;

/// Starts a coordinator on a fresh database and connects the SDK to it.
pub async fn start() -> (Coordinator, Client) {
    let coordinator = Coordinator::start().await;
    let client = connect(&coordinator).await;
    (coordinator, client)
}

pub async fn connect(coordinator: &Coordinator) -> Client {
    Client::connect(coordinator.url())
        .await
        .expect("connect to the coordinator")
}

/// The generated `JobService` client on the SDK's connection, for raw fields and metadata.
pub fn jobs(client: &Client) -> JobServiceClient<Channel> {
    JobServiceClient::new(client.channel().clone())
        .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
        .max_encoding_message_size(CLIENT_MESSAGE_LIMIT)
}

pub fn admin(client: &Client) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(client.channel().clone())
}

/// A minimal valid job.
pub fn new_job(queue: &str, kind: &str) -> SubmitRequest {
    SubmitRequest {
        queue: queue.into(),
        kind: kind.into(),
        ..Default::default()
    }
}

/// Every stored job, in submission order, through the SDK's paging stream.
pub async fn all_jobs(client: &Client) -> Vec<Job> {
    list(client, ListFilter::default()).await
}

pub async fn list(client: &Client, filter: ListFilter) -> Vec<Job> {
    client
        .list(filter)
        .try_collect()
        .await
        .expect("list the jobs")
}

pub fn ids(jobs: &[Job]) -> Vec<String> {
    jobs.iter().map(|j| j.job_id.clone()).collect()
}

pub async fn stats(client: &Client) -> StatsResponse {
    admin(client)
        .stats(StatsRequest {})
        .await
        .expect("stats")
        .into_inner()
}

/// No job is stored: `List` finds none, `Stats` counts none and the writer wrote no row.
pub async fn assert_nothing_stored(client: &Client) {
    let page = jobs(client)
        .list(ListRequest::default())
        .await
        .expect("list the jobs")
        .into_inner();
    assert!(
        page.jobs.is_empty(),
        "jobs were stored: {:?}",
        ids(&page.jobs)
    );
    let stats = stats(client).await;
    assert!(
        stats.queues.is_empty(),
        "queues have jobs: {:?}",
        stats.queues
    );
    let store = stats.store.expect("stats carry the store's numbers");
    assert_eq!(store.rows_written, 0, "the writer wrote rows: {store:?}");
}

/// The field an `INVALID_ARGUMENT` message names: the text before `": "`.
pub fn named_field(status: &Status) -> &str {
    status
        .message()
        .split_once(": ")
        .map_or("", |(field, _)| field)
}

/// Asserts that the error names exactly `field`.
pub fn assert_names(status: &Status, field: &str) {
    assert_eq!(
        named_field(status),
        field,
        "the message should name {field:?}: {:?}",
        status.message()
    );
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

/// A whole-millisecond timestamp (the store keeps milliseconds).
pub fn timestamp_ms(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn ms_of(t: &Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos / 1_000_000)
}

pub const DAY_MS: i64 = 24 * 3600 * 1000;
pub const MIB: usize = 1024 * 1024;

// --- the fleet: a coordinator with fast liveness, and waiting on what it does ------------

/// Fast liveness, retries and reconnect grace, so that faults resolve in about a second.
pub const COORDINATOR_FLAGS: &[&str] = &[
    "--heartbeat-interval",
    "200ms",
    "--reconnect-grace",
    "1s",
    "--retry-base",
    "20ms",
    "--retry-cap",
    "100ms",
];
pub const PATIENCE: Duration = Duration::from_secs(60);

pub async fn coordinator() -> (Coordinator, Client) {
    let coordinator = Coordinator::start_with(COORDINATOR_FLAGS).await;
    let client = connect(&coordinator).await;
    (coordinator, client)
}

/// Waits (bounded by the call's deadline) until the job is terminal.
pub async fn finished(client: &Client, id: &str) -> Job {
    let job = match client.wait(id, Some(PATIENCE)).await {
        Ok(job) => job,
        Err(e) => {
            // Say where it is stuck, for whoever reads the failure.
            let now = client.get(id).await;
            let workers = client.workers().await;
            panic!("wait for {id}: {e}\nthe job now: {now:?}\nworkers: {workers:?}")
        }
    };
    assert!(terminal(&job), "Wait returned a live job: {job:?}");
    job
}

pub fn terminal(job: &Job) -> bool {
    !matches!(job.state(), JobState::Queued | JobState::Running)
}

/// Polls an observable condition (a state change that has no stream to await) until it holds.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `worker` holds `n` running jobs, and (for `n` > 0) the store has committed
/// their starts: a slot is taken when a start is planned, and the job is sent to the worker
/// only once its start has committed, which takes longer on some stores than on others.
pub async fn running_on(client: &Client, worker: &str, n: u32) {
    eventually(&format!("{n} jobs running on {worker}"), || async {
        let workers = client.workers().await.ok()?;
        if !workers
            .iter()
            .any(|w| w.worker_id == worker && w.running == n)
        {
            return None;
        }
        if n == 0 {
            return Some(());
        }
        let running: Vec<Job> = client
            .list(ListFilter {
                state: Some(JobState::Running),
                ..Default::default()
            })
            .try_collect()
            .await
            .ok()?;
        let committed = running.iter().filter(|j| j.worker_id == worker).count();
        (committed >= n as usize).then_some(())
    })
    .await
}

pub fn outcomes(job: &Job) -> Vec<(AttemptOutcome, String)> {
    job.attempts
        .iter()
        .map(|a| (a.outcome(), a.worker_id.clone()))
        .collect()
}

/// Submits the job `spec` builds for a deadline `soon` from now, and returns its id and that
/// deadline. On a machine so busy that the call arrives after the deadline (refused as already
/// past), it tries again with twice the time: a test needs a deadline that passes while the job
/// waits, not any particular one.
pub async fn submit_expiring(
    client: &Client,
    mut soon: Duration,
    spec: impl Fn(SystemTime) -> switchyard_client::JobSpec,
) -> (String, SystemTime) {
    loop {
        let deadline = SystemTime::now() + soon;
        match client.submit(spec(deadline)).await {
            Ok(done) => return (done.job_id, deadline),
            Err(switchyard_client::Error::Rpc(status))
                if status.code() == tonic::Code::InvalidArgument
                    && named_field(&status) == "deadline"
                    && status.message().ends_with("is already past")
                    && soon < PATIENCE =>
            {
                soon *= 2;
            }
            Err(err) => panic!("submit: {err}"),
        }
    }
}

// --- quotas: what the recorded attempts say about concurrency ----------------------------

/// Submits the jobs in one batch and returns their ids, in order.
pub async fn submit_all(
    client: &Client,
    jobs: impl IntoIterator<Item = switchyard_client::JobSpec>,
) -> Vec<String> {
    let done = client
        .submit_batch(switchyard_client::Batch::new().jobs(jobs))
        .await
        .expect("submit a batch");
    done.jobs.into_iter().map(|j| j.job_id).collect()
}

/// Waits for every job to end (`Wait` returns them whole, attempts included), in the order of
/// `ids`.
pub async fn finished_all(client: &Client, ids: &[String]) -> Vec<Job> {
    use futures::StreamExt;
    futures::stream::iter(ids)
        .map(|id| finished(client, id))
        .buffered(64)
        .collect()
        .await
}

/// An ended attempt's recorded span in Unix ms: it held its permits over `[start, end)`.
pub fn span(attempt: &switchyard_proto::v1::Attempt) -> (i64, i64) {
    let start = attempt.started_at.as_ref().expect("the attempt started");
    let end = attempt.finished_at.as_ref().expect("the attempt ended");
    (ms_of(start), ms_of(end))
}

/// The most weight running at once over half-open spans `(start, end, weight)`. The store
/// stamps a finish and the starts it made room for with the same time, so at equal times an
/// end counts before a start.
pub fn max_overlap(spans: impl IntoIterator<Item = (i64, i64, u32)>) -> u32 {
    // (time, 0 = end / 1 = start, weight): ends sort first at equal times.
    let mut events: Vec<(i64, u8, u32)> = Vec::new();
    for (start, end, weight) in spans {
        assert!(
            start <= end,
            "an attempt ended before it started: {start} > {end}"
        );
        if start == end {
            // Empty under `[start, end)`: it overlaps nothing.
            continue;
        }
        events.push((start, 1, weight));
        events.push((end, 0, weight));
    }
    events.sort_unstable();
    let (mut now, mut deepest) = (0u32, 0u32);
    for (_, kind, weight) in events {
        if kind == 1 {
            now += weight;
            deepest = deepest.max(now);
        } else {
            now -= weight;
        }
    }
    deepest
}

/// One scope's quota as `ListQuotas` reports it (limits, permits held, jobs queued).
pub async fn quota_of(client: &Client, scope: &str) -> Option<switchyard_proto::v1::Quota> {
    client
        .quotas()
        .await
        .expect("list the quotas")
        .into_iter()
        .find(|q| q.scope == scope)
}

/// Waits until `scope` has exactly `held` permits out.
pub async fn held(client: &Client, scope: &str, held: u32) {
    eventually(&format!("{held} permits of {scope} held"), || async {
        let quota = quota_of(client, scope).await?;
        (quota.held == held).then_some(())
    })
    .await
}

/// Waits until `scope` has at least `n` permits out; returns how many it has then (which a
/// test compares with the limit).
pub async fn held_reaches(client: &Client, scope: &str, n: u32) -> u32 {
    eventually(&format!("{n} permits of {scope} held"), || async {
        let quota = quota_of(client, scope).await?;
        (quota.held >= n).then_some(quota.held)
    })
    .await
}

/// One HTTP exchange: sends `request` as is, returns the status code, the headers (lowercase
/// names) and the body.
pub async fn http(
    addr: std::net::SocketAddr,
    request: &str,
) -> (u16, std::collections::BTreeMap<String, String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to /metrics");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read the response");
        response
    };
    let response = tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("the endpoint answers and closes");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {response:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {status_line:?}"));
    let headers: std::collections::BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
        .collect();
    if let Some(length) = headers.get("content-length") {
        assert_eq!(
            length.parse::<usize>().ok(),
            Some(body.len()),
            "content-length"
        );
    }
    (status, headers, body.to_owned())
}

/// The value of one series in the coordinator's `/metrics` (0 if it is not shown yet).
pub async fn metric(addr: std::net::SocketAddr, series: &str) -> f64 {
    let (status, _, body) = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

// --- a history checker: acknowledged submits against what the store kept ----------------

/// Coordinator SIGKILLs per run of a history test: a few in the suite; `SWITCHYARD_SOAK=N`
/// for a longer soak.
pub fn kills() -> usize {
    std::env::var("SWITCHYARD_SOAK")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4)
}

/// Submitters under load: each submits `echo` jobs one at a time, the payload its own
/// idempotency key, and retries a key until it is acknowledged (a retry after a kill finds
/// the first job). Submitter `s` talks to `clients[s % clients.len()]`.
pub struct Submitters {
    stop: tokio_util::sync::CancellationToken,
    acked: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    tasks: tokio::task::JoinSet<Vec<String>>,
    /// Every acknowledgement so far: key → job id.
    pub history: std::collections::BTreeMap<String, String>,
}

impl Submitters {
    pub fn start(clients: &[Client], n: usize) -> Submitters {
        let stop = tokio_util::sync::CancellationToken::new();
        let (acks, acked) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = tokio::task::JoinSet::new();
        for s in 0..n {
            let (client, stop, acks) = (
                clients[s % clients.len()].clone(),
                stop.clone(),
                acks.clone(),
            );
            tasks.spawn(async move {
                let mut asked = Vec::new();
                'jobs: for n in 0..100_000 {
                    let key = format!("s{s}-{n}");
                    asked.push(key.clone());
                    loop {
                        let spec = switchyard_client::JobSpec::new("default", "echo")
                            .payload(key.clone())
                            .idempotency_key(key.clone());
                        match client.submit(spec).await {
                            Ok(done) => {
                                let _ = acks.send((key, done.job_id));
                                break;
                            }
                            Err(_) if stop.is_cancelled() => break 'jobs,
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                    if stop.is_cancelled() {
                        break;
                    }
                }
                asked
            });
        }
        Submitters {
            stop,
            acked,
            tasks,
            history: Default::default(),
        }
    }

    /// Waits for `n` more acknowledgements.
    pub async fn acknowledged(&mut self, n: usize) {
        for _ in 0..n {
            let (key, id) = self
                .acked
                .recv()
                .await
                .expect("acknowledgements keep coming");
            assert!(
                self.history.insert(key, id).is_none(),
                "a key acknowledged twice"
            );
        }
    }

    /// Stops them and gathers the last acknowledgements; returns every key asked for.
    pub async fn stop(&mut self) -> std::collections::BTreeSet<String> {
        self.stop.cancel();
        let mut asked = std::collections::BTreeSet::new();
        while let Some(keys) = self.tasks.join_next().await {
            asked.extend(keys.expect("a submitter"));
        }
        while let Ok((key, id)) = self.acked.try_recv() {
            assert!(
                self.history.insert(key, id).is_none(),
                "a key acknowledged twice"
            );
        }
        asked
    }

    /// The checker, after [`Submitters::stop`]: no acknowledged job is lost, none is stored
    /// twice, none was never asked for, and each ran to success with its own payload. Returns
    /// the acknowledged jobs, finished, and how many jobs the store holds.
    pub async fn check(
        &self,
        client: &Client,
        asked: &std::collections::BTreeSet<String>,
    ) -> (Vec<Job>, usize) {
        use std::collections::BTreeMap;
        let ids: Vec<String> = self.history.values().cloned().collect();
        let done = finished_all(client, &ids).await;
        let stored = all_jobs(client).await;
        let mut per_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for job in &stored {
            per_key
                .entry(job.idempotency_key.as_str())
                .or_default()
                .push(job.job_id.as_str());
        }
        let lost: Vec<&String> = self
            .history
            .keys()
            .filter(|k| !per_key.contains_key(k.as_str()))
            .collect();
        let duplicates: Vec<_> = per_key.iter().filter(|(_, ids)| ids.len() > 1).collect();
        let unexpected: Vec<&&str> = per_key.keys().filter(|k| !asked.contains(**k)).collect();
        assert!(lost.is_empty(), "lost: {lost:?}");
        assert!(duplicates.is_empty(), "stored twice: {duplicates:?}");
        assert!(unexpected.is_empty(), "never asked for: {unexpected:?}");
        for job in &done {
            assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
            assert_eq!(
                job.output,
                job.idempotency_key.as_bytes(),
                "its own payload"
            );
            assert_eq!(self.history.get(&job.idempotency_key), Some(&job.job_id));
        }
        (done, stored.len())
    }
}
