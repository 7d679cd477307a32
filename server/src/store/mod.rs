//! The durable record of every job, behind one trait ([`Store`]) so that a backend is a choice
//! made at start. The operations are the ones the api and the scheduler need; each is one
//! transaction. [`sqlite`] is the embedded default: one writer thread, group commit, a read
//! pool. [`postgres`] keeps the same record in a Postgres database, through connection pools,
//! each write its own transaction. The conformance suite (`conformance.rs`, tests only) holds
//! every backend to the same behaviour.

pub mod postgres;
mod rules;
pub mod sqlite;

#[cfg(test)]
pub(crate) mod conformance;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use crate::{
    domain::{
        Dispatch, GroupEvent, GroupRecord, JobId, JobRecord, JobState, NewSchedule, Outcome,
        QueueCounts, Quota, ReadyJob, RunningAttempt, ScheduleKey, ScheduleRecord,
    },
    error::Result,
    telemetry::{Metrics, Tally},
};

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// fsync on every commit: an acknowledged job survives a power cut.
    Full,
    /// fsync at WAL checkpoints only: survives a killed process, not a power cut.
    Normal,
}

/// Which database, from `--db`.
#[derive(Clone, PartialEq, Eq)]
pub enum DbUrl {
    /// `sqlite://PATH`: a file, created if missing.
    Sqlite(PathBuf),
    /// `postgres://…` (or `postgresql://…`), as given: an existing database.
    Postgres(String),
}

impl DbUrl {
    /// The URL with any password replaced, for logs.
    fn redacted(&self) -> String {
        match self {
            DbUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            DbUrl::Postgres(url) => {
                // scheme://user:password@host/… -> scheme://user:***@host/…; the options
                // after `?` (which may hold a password too) are left out.
                let url = url.split('?').next().unwrap_or_default();
                let Some((scheme, rest)) = url.split_once("://") else {
                    return url.to_owned();
                };
                match rest.rsplit_once('@') {
                    Some((credentials, host)) => {
                        let user = credentials.split(':').next().unwrap_or_default();
                        let password = if credentials.contains(':') {
                            ":***"
                        } else {
                            ""
                        };
                        format!("{scheme}://{user}{password}@{host}")
                    }
                    None => url.to_owned(),
                }
            }
        }
    }
}

impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Never the password, not even in `{:?}` (the config is logged at start).
impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbUrl({})", self.redacted())
    }
}

/// Where the store lives and how it writes.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub db: DbUrl,
    pub sync: SyncMode,
    /// Read-only connections in the read pool (Postgres: the pool holds this many more than
    /// its writers).
    pub readers: usize,
    /// Client commands that may wait for the writer before submitters are pushed back. The
    /// scheduler's own writes do not count against it.
    pub write_queue: usize,
    /// How long a write waits for a lock another process holds before it is refused
    /// (`UNAVAILABLE`, retryable).
    pub busy_timeout: std::time::Duration,
}

#[cfg(test)]
impl StoreConfig {
    /// What the store's own tests open `db` with: no fsync per commit, two readers, a short
    /// write queue.
    pub(crate) fn for_tests(db: DbUrl) -> StoreConfig {
        StoreConfig {
            db,
            sync: SyncMode::Normal,
            readers: 2,
            write_queue: 64,
            busy_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// Opens the backend `--db` names.
pub async fn open(config: &StoreConfig, metrics: Metrics) -> Result<Arc<dyn Store>> {
    Ok(match &config.db {
        DbUrl::Sqlite(_) => Arc::new(sqlite::SqliteStore::open(config, metrics)?),
        DbUrl::Postgres(_) => Arc::new(postgres::PostgresStore::open(config, metrics).await?),
    })
}

/// The operations of a backend. Every write is one transaction, acknowledged only once it is
/// durable; a write that fails changes nothing.
#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Takes stock at start: what the scheduler starts from. Attempts that were running when
    /// the coordinator last stopped are left running and returned in `running`: their workers
    /// may reclaim them; the scheduler ends the others `interrupted` (not counted as failures)
    /// when the reclaim window closes.
    async fn recover(&self) -> Result<Recovered>;

    /// Stores jobs (and their group) in one transaction: all of them or none.
    async fn submit(&self, submit: Submit) -> Result<Vec<Submitted>>;

    /// Cancels one job or every unfinished job of a group, and what depended on them.
    async fn cancel(&self, target: CancelTarget, reason: String) -> Result<Cancelled>;

    /// Puts a job that ended badly back in its queue; returns it if it is ready to run.
    async fn requeue(&self, id: JobId, max_attempts: Option<u32>) -> Result<Option<ReadyJob>>;

    /// One step of a bulk cancel, requeue or delete by filter, in one transaction.
    async fn bulk(&self, bulk: Bulk) -> Result<BulkDone>;

    /// The scheduler's state changes, committed together. These never wait behind client
    /// writes and are never refused for a full queue.
    async fn transition(&self, ops: Transitions) -> Result<TransitionOutcome>;

    /// Stores what running attempts reported (`Progress`), each field's latest value winning.
    /// Fenced: a report changes its job only while its attempt is the job's current RUNNING
    /// one; any other is ignored (and named in `ignored`). A client write: refused with
    /// `Overloaded` when the write queue is full (progress is best effort).
    async fn progress(&self, reports: Vec<ProgressReport>) -> Result<Progressed>;

    /// Sets a scope's limits; a quota with none set removes it.
    async fn set_quota(&self, quota: Quota) -> Result<()>;

    /// Pauses or resumes a queue.
    async fn pause(&self, queue: String, paused: bool) -> Result<()>;

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>>;

    async fn list(&self, filter: ListFilter) -> Result<ListPage>;

    /// A group by its name, in `tenant`'s namespace (`""` for no tenant), or in any (`None`,
    /// an admin's view: the first namespace that has it).
    async fn group(&self, id: String, tenant: Option<String>) -> Result<Option<GroupRecord>>;

    /// Up to `limit` results of the group's jobs that ended after cursor `after`, in order.
    async fn group_events(
        &self,
        group: GroupKey,
        after: i64,
        limit: u32,
    ) -> Result<Vec<GroupEvent>>;

    /// Every quota, with the jobs queued in its scope now.
    async fn quotas(&self) -> Result<Vec<(Quota, u64)>>;

    async fn paused(&self) -> Result<Vec<String>>;

    async fn queue_counts(&self) -> Result<Vec<QueueCounts>>;

    /// Jobs that ended at or after `since_ms`, counted per minute and end state, oldest minute
    /// first (for an hour, at most 60 × 4 rows).
    async fn ended_per_minute(&self, since_ms: i64) -> Result<Vec<MinuteCount>>;

    /// Per queue with queued jobs, when its oldest queued job was submitted.
    async fn oldest_queued(&self) -> Result<Vec<(String, i64)>>;

    /// FAILED jobs (of `tenant` only, if given) grouped by kind and error, the largest group
    /// first, at most `limit` groups.
    async fn dead_letters(
        &self,
        tenant: Option<String>,
        limit: u32,
    ) -> Result<Vec<DeadLetterGroup>>;

    /// Stores a new schedule; `ScheduleExists` if its tenant already has one by that name.
    async fn create_schedule(&self, schedule: NewSchedule) -> Result<()>;

    /// Pauses or resumes a schedule; `ScheduleNotFound` if there is none.
    async fn pause_schedule(&self, key: ScheduleKey, paused: bool) -> Result<()>;

    /// Removes a schedule (the jobs it fired stay); `ScheduleNotFound` if there is none.
    async fn delete_schedule(&self, key: ScheduleKey) -> Result<()>;

    async fn schedule(&self, key: ScheduleKey) -> Result<Option<ScheduleRecord>>;

    /// Every schedule (`None`), or one tenant's (`Some("")`: those with no tenant).
    async fn schedules(&self, tenant: Option<String>) -> Result<Vec<ScheduleRecord>>;

    /// Fires one tick of a schedule in one transaction: checks it is still due (not paused,
    /// after the last tick handled) and, with overlap `Skip`, that the previous job has ended;
    /// stores the job through the submit path (idempotency and admission apply); and moves
    /// the schedule's last fired tick. A tick that stores nothing is still recorded, with why.
    /// The scheduler's own write: it waits for room rather than being refused.
    async fn fire_schedule(&self, fire: Fire) -> Result<Fired>;

    /// Removes one small batch of what retention lets go (see [`Prune`]): finished jobs past
    /// their state's cutoff with their attempts, checkpoints, dependency edges and keys; groups
    /// (and their events) left with no job; idempotency keys whose window has passed. Queued and
    /// running jobs are never removed. A client write (may be `Overloaded`): call it again
    /// with the cutoffs it returns (`Pruned::next`) until it is `done`.
    async fn prune(&self, prune: Prune) -> Result<Pruned>;

    /// Gives back to the file system up to `pages` free pages (SQLite's incremental vacuum),
    /// as one short client write; returns the size of the store after it.
    async fn vacuum(&self, pages: u32) -> Result<StoreSize>;

    /// What the writer has done since start.
    fn writer_stats(&self) -> WriterStats;

    /// Whether the store can commit: `None` while it can, the fault while it cannot (a full
    /// disk, a lock held by another process). Changes as commits succeed or fail.
    fn health(&self) -> tokio::sync::watch::Receiver<Option<crate::error::StoreFault>>;

    /// A small real write, to learn whether the store can commit again; its outcome moves
    /// `health`.
    async fn probe(&self) -> Result<()>;

    /// Finishes what was sent before and closes; later calls fail with `ShuttingDown`.
    async fn close(&self) -> Result<()>;

    /// The fleet's leadership lease, for a backend that several coordinators can share
    /// (Postgres): `address` is where the others reach this one. `None` (SQLite): this
    /// coordinator is the database's only one, and leads from the start.
    fn lease(&self, _address: String, _term: std::time::Duration) -> Option<postgres::Lease> {
        None
    }
}

/// What the scheduler starts from.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Queued jobs whose dependencies have all succeeded.
    pub ready: Vec<ReadyJob>,
    /// Queued jobs that wait for their dependencies and have a deadline: (job, deadline).
    pub waiting: Vec<(JobId, i64)>,
    /// Attempts that were running when the coordinator stopped: still running in the store,
    /// for their workers to reclaim.
    pub running: Vec<RunningAttempt>,
    pub quotas: Vec<Quota>,
    pub paused: Vec<String>,
    /// This run's epoch, taken (durably) by the recovery: one more than any before it. The
    /// attempts it starts carry it in their fencing token (workers.proto, point 3).
    pub epoch: u64,
}

/// A job to insert, validated and with its id chosen.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub payload: Vec<u8>,
    pub priority: i32,
    pub max_attempts: u32,
    pub timeout_ms: Option<i64>,
    pub deadline_ms: Option<i64>,
    pub run_at_ms: Option<i64>,
    pub idempotency_key: Option<String>,
    /// How long, and while what, the idempotency key binds.
    pub unique: Uniqueness,
    pub concurrency_key: Option<String>,
    pub weight: u32,
    /// Jobs that must succeed first: earlier jobs, or other jobs of the same batch.
    pub depends_on: Vec<JobId>,
    pub labels: BTreeMap<String, String>,
    pub tenant_id: Option<String>,
    pub parent_job_id: Option<JobId>,
    /// The parent's attempt that submitted it, when the caller said: the child is refused
    /// if that attempt is no longer the parent's running one.
    pub parent_attempt: Option<u32>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub trace_id: Option<String>,
}

/// How an idempotency key binds to its job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uniqueness {
    /// Only this long after the job's submit (`None`: forever).
    pub for_ms: Option<i64>,
    /// Only while the job is queued or running.
    pub while_active: bool,
    /// A repeat that finds the job still queued gives it its own payload.
    pub debounce: bool,
}

/// A group created by `SubmitBatch`.
#[derive(Debug, Clone)]
pub struct NewGroup {
    pub id: String,
    pub cancel_on_failure: bool,
}

/// How a submit names its jobs' fields in errors: `depends_on[0]` or `jobs[3].depends_on[0]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Submit,
    Batch,
}

/// One submit: jobs, their group, and how errors name them.
#[derive(Debug, Clone)]
pub struct Submit {
    pub origin: Origin,
    pub jobs: Vec<NewJob>,
    pub group: Option<NewGroup>,
    /// The tenant whose jobs the caller may name in `depends_on` (`None`: any tenant's). A
    /// job of another tenant is answered as if it did not exist.
    pub scope: Option<String>,
    pub durability: Durability,
}

/// When a write must be on disk (under `--sync full`; `--sync normal` never waits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// Before it is answered: its caller is told it is stored. Every write but one.
    #[default]
    BeforeReply,
    /// With the next write that is (a log is made durable in the order it was written).
    /// A `Run`'s submit: its caller hears of nothing but the finished job, whose end commits
    /// durably, which makes the submit durable too; lost to a power cut before then, it was a
    /// job nobody had been told of. And a transition of starts alone
    /// ([`Transitions::durability`]): epochs fence what a lost start handed out.
    WithNext,
}

/// What became of one submitted job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub id: JobId,
    /// The idempotency key matched an earlier job; `id` is that job's.
    pub duplicate: bool,
    /// For a duplicate: its payload differs from the matched job's.
    pub payload_differs: bool,
    /// For a duplicate with debounce: the matched (queued) job took this payload.
    pub debounced: bool,
    pub state: JobState,
    /// Set when the job was stored ready to run (queued, with no unfinished dependencies).
    pub ready: Option<ReadyJob>,
    /// Set when the job was stored waiting for its dependencies and has a deadline: that
    /// deadline, at which it ends if it is still waiting.
    pub waiting_until_ms: Option<i64>,
}

/// One tick of a schedule to fire, with the job it submits (its idempotency key derived from
/// the schedule and the tick).
#[derive(Debug, Clone)]
pub struct Fire {
    pub key: ScheduleKey,
    pub tick_ms: i64,
    pub job: NewJob,
}

/// What firing a tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// The tick's job was stored (or, `duplicate`, had been by an earlier fire of the tick).
    Submitted(Submitted),
    /// Overlap `Skip`: the previous job is still queued or running; the tick is passed over.
    Overlapped,
    /// Admission refused the job (`max_queued`); the tick is passed over, the reason kept.
    Refused(String),
    /// Nothing to do: the schedule is gone or paused, or the tick was handled already.
    Stale,
}

/// Give a queued job to a worker session.
#[derive(Debug, Clone)]
pub struct Start {
    pub job_id: JobId,
    /// The attempt it starts: the job's next.
    pub attempt: u32,
    /// The run that starts it (`Recovered::epoch`), stored with the attempt.
    pub epoch: u64,
    pub session: u64,
    pub worker_id: String,
}

/// End one attempt (fenced by its number).
#[derive(Debug, Clone)]
pub struct Finish {
    pub job_id: JobId,
    pub attempt: u32,
    pub outcome: Outcome,
}

/// What one running attempt reported. A field left `None` keeps its stored value; an empty
/// checkpoint removes the stored one.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressReport {
    pub job_id: JobId,
    pub attempt: u32,
    /// The epoch of the attempt's token; 0 from a worker written before epochs.
    pub epoch: u64,
    /// 0.0 to 1.0.
    pub fraction: Option<f64>,
    pub message: Option<String>,
    pub checkpoint: Option<Vec<u8>>,
}

impl ProgressReport {
    /// The attempt's fencing token: reports of one token are one attempt's.
    pub fn token(&self) -> (JobId, u32, u64) {
        (self.job_id, self.attempt, self.epoch)
    }

    /// Folds a later report of the same attempt into this one: what the later one sets wins,
    /// what it leaves unset keeps this one's value.
    pub fn merge(&mut self, later: ProgressReport) {
        debug_assert_eq!(self.token(), later.token());
        if later.fraction.is_some() {
            self.fraction = later.fraction;
        }
        if later.message.is_some() {
            self.message = later.message;
        }
        if later.checkpoint.is_some() {
            self.checkpoint = later.checkpoint;
        }
    }
}

/// What a batch of progress reports did.
#[derive(Debug, Default)]
pub struct Progressed {
    /// Reports stored.
    pub stored: u32,
    /// Reports whose attempt is not the job's current running one (or no such job): (job,
    /// attempt).
    pub ignored: Vec<(JobId, u32)>,
    /// What metrics count of it; the backend records it once the transaction commits.
    pub metrics: Tally,
}

/// Exponential backoff with full jitter between attempts.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base_ms: i64,
    pub cap_ms: i64,
}

impl RetryPolicy {
    /// The delay before the attempt after `failures` failures: a random point in
    /// `[d/2, d]` where `d = min(cap, base * 2^(failures-1))`.
    pub fn backoff_ms(&self, failures: u32) -> i64 {
        let exp = failures.saturating_sub(1).min(30);
        let d = self
            .base_ms
            .saturating_mul(1i64 << exp)
            .min(self.cap_ms)
            .max(0);
        let jitter = fastrand::u64(..=(d as u64 / 2));
        d / 2 + jitter as i64
    }
}

/// One batch of the scheduler's state changes, committed together.
#[derive(Debug, Clone)]
pub struct Transitions {
    pub finishes: Vec<Finish>,
    /// Queued jobs whose deadline passed before they could run.
    pub expire: Vec<JobId>,
    pub starts: Vec<Start>,
    pub retry: RetryPolicy,
}

impl Transitions {
    pub fn is_empty(&self) -> bool {
        self.finishes.is_empty() && self.expire.is_empty() && self.starts.is_empty()
    }

    /// Starts alone need no fsync of their own: what follows their commit is an assignment,
    /// whose token carries this run's epoch, and nobody else is told anything. Lost to a power
    /// cut, a start leaves its job queued at the attempt before; the next run hands that
    /// attempt out again under a higher epoch, and the lost one's result, progress or
    /// reclaim matches nothing. Finishes and expiries end jobs that callers are then told of:
    /// they are durable before that.
    pub fn durability(&self) -> Durability {
        if self.finishes.is_empty() && self.expire.is_empty() {
            Durability::WithNext
        } else {
            Durability::BeforeReply
        }
    }
}

/// An attempt that started: where it goes, and since when its job waited.
#[derive(Debug)]
pub struct Started {
    pub session: u64,
    pub dispatch: Dispatch,
    /// Since when it waited in its queue (submitted, or its `run_at` or backoff passed).
    pub queued_since_ms: i64,
}

/// One batch of pruning: what is due, and what must stay.
#[derive(Debug, Clone)]
pub struct Prune {
    /// The terminal states that are pruned, each with its cutoff and where the pass got to.
    /// A state not named is kept forever.
    pub cutoffs: Vec<Cutoff>,
    /// Idempotency keys whose window ended by this time (Unix ms) are removed.
    pub now_ms: i64,
    /// The most finished jobs one batch looks at (and expired keys it removes): it bounds the
    /// transaction's work, however many of the jobs it looks at must stay.
    pub limit: u32,
    /// Groups with a `WatchGroup` open on them: their jobs, events and record stay.
    pub watched: Vec<GroupKey>,
}

/// One state's jobs that are due: those that ended before `before_ms`, looked at in order of
/// their end, after position `after` (end time, then submission order) where the last batch
/// stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoff {
    pub state: JobState,
    pub before_ms: i64,
    pub after: (i64, i64),
}

impl Cutoff {
    /// From the start: every job of `state` that ended before `before_ms`.
    pub fn new(state: JobState, before_ms: i64) -> Cutoff {
        Cutoff {
            state,
            before_ms,
            after: (i64::MIN, i64::MIN),
        }
    }
}

/// What one batch of pruning removed, and where to go on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub groups: u64,
    /// Idempotency keys whose window had passed (a pruned job's own key is not counted).
    pub keys: u64,
    /// The next batch's cutoffs: the states not yet looked at to the end, with where this
    /// batch stopped. Empty (and `done`) once the pass has seen everything due.
    pub next: Vec<Cutoff>,
    /// Nothing due is left to look at: the pass is over.
    pub done: bool,
    /// How long the batch's own statements took in the store, not counting its commit: what
    /// it added to the commit it rode in.
    pub work: std::time::Duration,
}

impl Pruned {
    /// Whether it removed nothing.
    pub fn is_empty(&self) -> bool {
        self.jobs == 0 && self.groups == 0 && self.keys == 0
    }
}

/// How large the store is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreSize {
    /// The database's pages times the page size: the main file's size once the WAL is
    /// checkpointed (the WAL is not counted: it is reset at each checkpoint).
    pub bytes: u64,
    /// Pages free inside the file, that a vacuum can give back.
    pub free_pages: u64,
}

/// What a committed batch of transitions did.
#[derive(Debug, Default)]
pub struct TransitionOutcome {
    /// Attempts now running, with the session they go to.
    pub started: Vec<Started>,
    /// Starts that found the job no longer queued (cancelled meanwhile): (session, job,
    /// attempt).
    pub not_started: Vec<(u64, JobId, u32)>,
    /// Jobs that became ready: retries (with their backoff) and dependents.
    pub ready: Vec<ReadyJob>,
    /// Jobs that reached a terminal state.
    pub terminal: Vec<JobId>,
    /// Dependents and children cancelled because a job they needed ended badly.
    pub cancelled_dependents: Vec<JobId>,
    /// Of those, the ones that were running: (job, attempt), for their workers to stop.
    pub stopped: Vec<(JobId, u32)>,
    /// Results refused by the fence: (job, attempt).
    pub stale: Vec<(JobId, u32)>,
    /// What metrics count of it; the backend records it once the transaction commits.
    pub metrics: Tally,
}

/// A group: its name in its tenant's namespace (`""` for no tenant).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub tenant: String,
    pub id: String,
}

impl GroupRecord {
    pub fn key(&self) -> GroupKey {
        GroupKey {
            tenant: self.tenant_id.clone().unwrap_or_default(),
            id: self.id.clone(),
        }
    }
}

/// What to cancel.
#[derive(Debug, Clone)]
pub enum CancelTarget {
    Job(JobId),
    Group(GroupKey),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// Jobs this call moved to `CANCELLED`.
    pub ids: Vec<JobId>,
    /// Jobs that depended on them or were their children (at any depth), cancelled with them.
    pub dependents: Vec<JobId>,
    /// Of all those, the ones that were running: (job, attempt), for their workers to stop.
    pub running: Vec<(JobId, u32)>,
    /// For a single job, its state afterwards.
    pub state: Option<JobState>,
    /// What metrics count of it; the backend records it once the transaction commits.
    pub metrics: Tally,
}

/// Which jobs `List` returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub queue: Option<String>,
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub group_id: Option<String>,
    pub parent_job_id: Option<JobId>,
    /// Only this tenant's jobs.
    pub tenant_id: Option<String>,
    /// Only jobs with this label (key, value).
    pub label: Option<(String, String)>,
    /// Only jobs submitted at or after this time (ms since the epoch).
    pub submitted_after_ms: Option<i64>,
    /// Only jobs submitted before this time (ms since the epoch).
    pub submitted_before_ms: Option<i64>,
    /// Only jobs submitted after this sequence number (from the page token).
    pub after_seq: i64,
    pub page_size: u32,
}

/// What a bulk action does to each job its filter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// Cancel queued and running jobs (with their dependents and children, as `Cancel`).
    Cancel,
    /// Put FAILED, CANCELLED and DEADLINE_EXCEEDED jobs back in their queues, as `Requeue`.
    Requeue,
    /// Delete finished jobs with their attempts. A job that another job depends on is kept
    /// (its output is that job's input), as retention keeps it.
    Delete,
}

impl BulkAction {
    /// The states a job must be in for the action to change it.
    pub fn applies_to(self) -> &'static [JobState] {
        match self {
            BulkAction::Cancel => &[JobState::Queued, JobState::Running],
            BulkAction::Requeue => &[
                JobState::Failed,
                JobState::Cancelled,
                JobState::DeadlineExceeded,
            ],
            BulkAction::Delete => &[
                JobState::Succeeded,
                JobState::Failed,
                JobState::Cancelled,
                JobState::DeadlineExceeded,
            ],
        }
    }
}

/// One step of a bulk action: the jobs the filter matches (and the action applies to), from
/// `filter.after_seq` on, at most `filter.page_size` of them. The caller goes on from
/// `BulkDone::next_after_seq` until it is `None`; so a long action is many short
/// transactions, and can stop and resume anywhere.
#[derive(Debug, Clone)]
pub struct Bulk {
    pub action: BulkAction,
    pub filter: ListFilter,
    /// Only these jobs (and only those the filter matches); empty means every match.
    pub ids: Vec<JobId>,
    /// Count every match from the cursor on, change nothing.
    pub dry_run: bool,
    /// Why, for `Cancel` (the jobs' error).
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct BulkDone {
    /// Jobs matched: in this step, or (dry run) all from the cursor on.
    pub matched: u64,
    /// Jobs changed in this step (a match a cascade already changed, or that a rule keeps,
    /// such as a requeue whose dependency failed, is matched but not changed).
    pub changed: u64,
    /// Where the next step starts; `None` when none is left.
    pub next_after_seq: Option<i64>,
    /// For a cancel: what it cancelled (cascades included), for the scheduler and waiters.
    pub cancelled: Option<Cancelled>,
    /// For a requeue: the jobs ready to run now, and the ones back to waiting for their
    /// dependencies with their deadlines.
    pub ready: Vec<ReadyJob>,
    pub waiting: Vec<(JobId, i64)>,
}

#[derive(Debug, Clone)]
pub struct ListPage {
    pub jobs: Vec<JobRecord>,
    /// The sequence number of the last job, when there are more after it.
    pub next_after_seq: Option<i64>,
}

/// Jobs that ended in one minute one way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteCount {
    /// The minute's start (ms since the epoch, a multiple of 60,000).
    pub minute_ms: i64,
    pub state: JobState,
    pub count: u64,
}

/// FAILED jobs of one kind that ended with the same error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterGroup {
    pub kind: String,
    pub error: Option<String>,
    pub count: u64,
    /// When the latest of them failed.
    pub last_failed_ms: Option<i64>,
}

/// A backend's write counters, kept as it commits; [`WriteCounters::snapshot`] is its
/// [`WriterStats`].
#[derive(Debug, Default)]
pub(crate) struct WriteCounters {
    commits: std::sync::atomic::AtomicU64,
    commands: std::sync::atomic::AtomicU64,
    rows_written: std::sync::atomic::AtomicU64,
    max_batch: std::sync::atomic::AtomicU64,
    syncs: std::sync::atomic::AtomicU64,
}

impl WriteCounters {
    /// One commit that carried `commands` commands and wrote `rows` job rows; `synced`: it
    /// was made durable before its replies (an fsync, or a flush of Postgres's WAL).
    pub(crate) fn record(&self, commands: u64, rows: u64, synced: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.commits.fetch_add(1, Relaxed);
        self.syncs.fetch_add(u64::from(synced), Relaxed);
        self.commands.fetch_add(commands, Relaxed);
        self.rows_written.fetch_add(rows, Relaxed);
        self.max_batch.fetch_max(commands, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> WriterStats {
        use std::sync::atomic::Ordering::Relaxed;
        WriterStats {
            commits: self.commits.load(Relaxed),
            commands: self.commands.load(Relaxed),
            rows_written: self.rows_written.load(Relaxed),
            max_batch: self.max_batch.load(Relaxed),
            syncs: self.syncs.load(Relaxed),
        }
    }
}

/// The writer's numbers since start, for `Stats` and tests of group commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: u64,
    /// Commands applied in them.
    pub commands: u64,
    /// Job rows inserted or updated.
    pub rows_written: u64,
    /// The most commands one commit carried.
    pub max_batch: u64,
    /// The commits made durable before their replies (each an fsync of the embedded store's
    /// WAL; under `--sync normal`, none).
    pub syncs: u64,
}
