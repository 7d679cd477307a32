//! The storage conformance suite: what every backend must do, written against the [`Store`]
//! trait alone. Each check is a plain async function over a [`Backend`]; the `suite!` macro
//! at the bottom runs all of them against each backend (SQLite, and Postgres on a server the
//! test process starts for itself: `switchyard_testkit::postgres`).

use std::{future::Future, pin::Pin, sync::Arc};

use super::{
    Bulk, BulkAction, CancelTarget, Durability, Finish, Fire, Fired, ListFilter, NewGroup, NewJob,
    Origin, ProgressReport, RetryPolicy, Start, Store, Submit, Submitted, Transitions,
};
use crate::{
    domain::{
        AttemptOutcome, JobId, JobState, JobTemplate, Misfire, NewSchedule, Outcome, Overlap,
        Quota, ReadyJob, ScheduleKey, now_ms,
    },
    error::Error,
    telemetry::Metrics,
};

type Opened = Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send>>;

/// A backend under test: a store, and a way to open it again on the same data (a restart).
pub(crate) struct Backend {
    pub store: Arc<dyn Store>,
    reopen: Box<dyn Fn() -> Opened + Send + Sync>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// Closes the store and opens it again, as a restarted coordinator would.
    async fn restart(&mut self) {
        self.store.close().await.expect("close");
        self.store = (self.reopen)().await;
    }
}

/// A fresh SQLite store in a temporary directory (also for other modules' tests).
pub(crate) async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config =
        super::StoreConfig::for_tests(super::DbUrl::Sqlite(dir.path().join("conformance.db")));
    let open = move || -> Opened {
        let config = config.clone();
        Box::pin(async move {
            let store: Arc<dyn Store> = Arc::new(
                super::sqlite::SqliteStore::open(&config, Metrics::new()).expect("open sqlite"),
            );
            store
        })
    };
    let store = open().await;
    Backend {
        store,
        reopen: Box::new(open),
        _dir: Some(dir),
    }
}

/// A fresh database on the test process's own Postgres server (`switchyard_testkit::postgres`);
/// a restart closes the store's pools and opens a new store on the same database.
pub(crate) async fn postgres() -> Backend {
    let config = super::StoreConfig::for_tests(super::DbUrl::Postgres(
        switchyard_testkit::postgres::database().await,
    ));
    let open = move || -> Opened {
        let config = config.clone();
        Box::pin(async move {
            let store: Arc<dyn Store> = Arc::new(
                super::postgres::PostgresStore::open(&config, Metrics::new())
                    .await
                    .expect("open postgres"),
            );
            store
        })
    };
    let store = open().await;
    Backend {
        store,
        reopen: Box::new(open),
        _dir: None,
    }
}

const RETRY: RetryPolicy = RetryPolicy {
    base_ms: 1,
    cap_ms: 1,
};

pub(crate) fn new_job(queue: &str) -> NewJob {
    NewJob {
        id: JobId::new(),
        queue: queue.into(),
        kind: "echo".into(),
        payload: b"in".to_vec(),
        priority: 0,
        max_attempts: 2,
        timeout_ms: None,
        deadline_ms: None,
        run_at_ms: None,
        idempotency_key: None,
        unique: Default::default(),
        concurrency_key: None,
        weight: 1,
        depends_on: vec![],
        labels: Default::default(),
        tenant_id: None,
        parent_job_id: None,
        parent_attempt: None,
        traceparent: None,
        tracestate: None,
        trace_id: None,
    }
}

pub(crate) async fn submit(
    store: &dyn Store,
    jobs: Vec<NewJob>,
    group: Option<&str>,
) -> Vec<Submitted> {
    store
        .submit(Submit {
            origin: Origin::Batch,
            jobs,
            group: group.map(|id| NewGroup {
                id: id.into(),
                cancel_on_failure: false,
            }),
            scope: None,
            durability: Durability::BeforeReply,
        })
        .await
        .expect("submit")
}

/// A submit of `jobs` with no group, by a caller who sees every tenant: for calls that may
/// be refused (`submit` above expects success).
fn submit_of(origin: Origin, jobs: Vec<NewJob>) -> Submit {
    Submit {
        origin,
        jobs,
        group: None,
        scope: None,
        durability: Durability::BeforeReply,
    }
}

/// The jobs queued in `scope` now, as `quotas` reports them (for a scope with a quota).
async fn queued_in(store: &dyn Store, scope: &str) -> Option<u64> {
    let quotas = store.quotas().await.expect("quotas");
    quotas
        .into_iter()
        .find(|(q, _)| q.scope == scope)
        .map(|q| q.1)
}

pub(crate) fn transitions(finishes: Vec<Finish>, starts: Vec<Start>) -> Transitions {
    Transitions {
        finishes,
        expire: vec![],
        starts,
        retry: RETRY,
    }
}

pub(crate) fn start(job: &ReadyJob) -> Start {
    Start {
        job_id: job.id,
        attempt: job.attempt + 1,
        epoch: 1,
        session: 1,
        worker_id: "w1".into(),
    }
}

fn finish(id: JobId, attempt: u32, outcome: Outcome) -> Finish {
    Finish {
        job_id: id,
        attempt,
        outcome,
    }
}

fn failure(retryable: bool) -> Outcome {
    Outcome::Failed {
        message: "boom".into(),
        retryable,
        retry_after_ms: None,
        cancelled: false,
    }
}

async fn state(store: &dyn Store, id: JobId) -> JobState {
    store.get(id).await.expect("get").expect("the job").state
}

/// Submit, start, succeed: each step is visible, and the attempt is recorded.
async fn a_job_moves_through_its_states(b: Backend) {
    let store = &*b.store;
    let done = submit(store, vec![new_job("q")], None).await;
    let ready = done[0].ready.clone().expect("ready at once");
    assert_eq!(state(store, ready.id).await, JobState::Queued);

    let out = store
        .transition(transitions(vec![], vec![start(&ready)]))
        .await
        .expect("start");
    assert_eq!(out.started.len(), 1);
    let dispatch = &out.started[0].dispatch;
    assert_eq!(
        (dispatch.attempt, dispatch.payload.as_slice()),
        (1, &b"in"[..])
    );
    assert_eq!(state(store, ready.id).await, JobState::Running);

    let out = store
        .transition(transitions(
            vec![finish(ready.id, 1, Outcome::Succeeded(b"out".to_vec()))],
            vec![],
        ))
        .await
        .expect("finish");
    assert_eq!(out.terminal, [ready.id]);
    let job = store.get(ready.id).await.expect("get").expect("the job");
    assert_eq!(
        (job.state, job.output.as_slice()),
        (JobState::Succeeded, &b"out"[..])
    );
    assert_eq!(job.attempts.len(), 1);
    assert_eq!(job.attempts[0].outcome, AttemptOutcome::Succeeded);
    assert!(store.get(JobId::new()).await.expect("get").is_none());
}

/// Only the current attempt finishes a job; a start names the attempt it starts.
async fn stale_attempts_are_fenced_out(b: Backend) {
    let store = &*b.store;
    let ready = submit(store, vec![new_job("q")], None).await[0]
        .ready
        .clone()
        .expect("ready");
    let wrong = Start {
        attempt: 2,
        ..start(&ready)
    };
    let out = store
        .transition(transitions(vec![], vec![wrong]))
        .await
        .expect("start");
    assert_eq!(
        out.not_started,
        [(1, ready.id, 2)],
        "attempt 2 is not the next one"
    );
    store
        .transition(transitions(vec![], vec![start(&ready)]))
        .await
        .expect("start");
    let out = store
        .transition(transitions(
            vec![finish(ready.id, 7, Outcome::Succeeded(vec![]))],
            vec![],
        ))
        .await
        .expect("finish");
    assert_eq!(out.stale, [(ready.id, 7)]);
    assert_eq!(
        state(store, ready.id).await,
        JobState::Running,
        "nothing changed"
    );
    // A retryable failure re-queues it; the next start is attempt 2, and its failure (the
    // last allowed) ends it FAILED.
    let out = store
        .transition(transitions(
            vec![finish(ready.id, 1, failure(true))],
            vec![],
        ))
        .await
        .expect("fail once");
    let again = out.ready.first().cloned().expect("re-queued");
    assert_eq!(again.attempt, 1);
    store
        .transition(transitions(vec![], vec![start(&again)]))
        .await
        .expect("start again");
    store
        .transition(transitions(
            vec![finish(ready.id, 2, failure(true))],
            vec![],
        ))
        .await
        .expect("fail twice");
    let job = store.get(ready.id).await.expect("get").expect("the job");
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.error.as_deref(), Some("boom (after 2 attempts)"));
}

/// A key binds to the first job, in the same queue and tenant only.
async fn idempotency_keys_return_the_first_job(b: Backend) {
    let store = &*b.store;
    let keyed = |tenant: Option<&str>| NewJob {
        idempotency_key: Some("k".into()),
        tenant_id: tenant.map(String::from),
        ..new_job("q")
    };
    let first = submit(store, vec![keyed(None)], None).await;
    let again = submit(store, vec![keyed(None), keyed(None)], None).await;
    assert!(again.iter().all(|s| s.duplicate && s.id == first[0].id));
    let other = submit(store, vec![keyed(Some("t"))], None).await;
    assert!(!other[0].duplicate, "another tenant's key is its own");
}

/// `max_queued` refuses the whole submit, storing nothing; a repeat still finds its job.
async fn admission_refuses_past_max_queued(b: Backend) {
    let store = &*b.store;
    store
        .set_quota(Quota {
            scope: "queue:q".into(),
            max_queued: Some(2),
            ..Default::default()
        })
        .await
        .expect("quota");
    let keyed = NewJob {
        idempotency_key: Some("k".into()),
        ..new_job("q")
    };
    let first = submit(store, vec![keyed.clone(), new_job("q")], None).await;
    let refused = store
        .submit(submit_of(Origin::Submit, vec![new_job("q")]))
        .await;
    assert!(
        matches!(refused, Err(Error::QueueFull { max: 2, .. })),
        "{refused:?}"
    );
    let repeat = submit(
        store,
        vec![NewJob {
            id: JobId::new(),
            ..keyed
        }],
        None,
    )
    .await;
    assert_eq!(repeat[0].id, first[0].id);
    let counts = store.queue_counts().await.expect("counts");
    assert_eq!(counts[0].queued, 2, "nothing more was stored");
    let quotas = store.quotas().await.expect("quotas");
    assert_eq!(quotas[0].1, 2, "its scope counts two queued");
}

/// A group's ends are events in commit order, with cursors to resume after.
async fn group_events_follow_each_end(b: Backend) {
    let store = &*b.store;
    let key = || super::GroupKey {
        tenant: String::new(),
        id: "g".into(),
    };
    let done = submit(store, vec![new_job("q"), new_job("q")], Some("g")).await;
    let ready: Vec<ReadyJob> = done.iter().filter_map(|s| s.ready.clone()).collect();
    store
        .transition(transitions(vec![], ready.iter().map(start).collect()))
        .await
        .expect("start");
    store
        .transition(transitions(
            vec![finish(ready[1].id, 1, Outcome::Succeeded(b"b".to_vec()))],
            vec![],
        ))
        .await
        .expect("one ends");
    let events = store.group_events(key(), 0, 10).await.expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].job_id, ready[1].id);
    let group = store
        .group("g".into(), Some(String::new()))
        .await
        .expect("group")
        .expect("exists");
    assert_eq!(
        (group.running, group.succeeded, group.state()),
        (1, 1, JobState::Running)
    );
    store
        .transition(transitions(
            vec![finish(ready[0].id, 1, failure(false))],
            vec![],
        ))
        .await
        .expect("the other ends");
    let later = store
        .group_events(key(), events[0].cursor, 10)
        .await
        .expect("events after the cursor");
    assert_eq!(later.len(), 1);
    assert_eq!(
        (later[0].job_id, later[0].state),
        (ready[0].id, JobState::Failed)
    );
    let group = store
        .group("g".into(), Some(String::new()))
        .await
        .expect("group")
        .expect("exists");
    assert_eq!(group.state(), JobState::Failed);
    let twice = store
        .submit(Submit {
            origin: Origin::Batch,
            jobs: vec![new_job("q")],
            group: Some(NewGroup {
                id: "g".into(),
                cancel_on_failure: false,
            }),
            scope: None,
            durability: Durability::BeforeReply,
        })
        .await;
    assert!(matches!(twice, Err(Error::GroupExists(_))));
}

/// Cancelling a queued job cancels its dependents; a running one is fenced; an ended one is
/// refused.
async fn cancels_reach_dependents_and_fence_running_attempts(b: Backend) {
    let store = &*b.store;
    let parent = new_job("q");
    let child = NewJob {
        depends_on: vec![parent.id],
        ..new_job("q")
    };
    let (parent_id, child_id) = (parent.id, child.id);
    let done = submit(store, vec![parent, child], None).await;
    assert!(done[1].ready.is_none(), "the dependent waits");
    let cancelled = store
        .cancel(CancelTarget::Job(parent_id), "stop".into())
        .await
        .expect("cancel");
    assert_eq!(
        (cancelled.ids, cancelled.dependents),
        (vec![parent_id], vec![child_id])
    );
    assert_eq!(state(store, child_id).await, JobState::Cancelled);

    let running = submit(store, vec![new_job("q")], None).await[0]
        .ready
        .clone()
        .expect("ready");
    store
        .transition(transitions(vec![], vec![start(&running)]))
        .await
        .expect("start");
    let cancelled = store
        .cancel(CancelTarget::Job(running.id), "stop".into())
        .await
        .expect("cancel running");
    assert_eq!(cancelled.running, [(running.id, 1)]);
    let out = store
        .transition(transitions(
            vec![finish(running.id, 1, Outcome::Succeeded(vec![]))],
            vec![],
        ))
        .await
        .expect("late result");
    assert_eq!(out.stale, [(running.id, 1)], "its late result is refused");
    let again = store
        .cancel(CancelTarget::Job(JobId::new()), "stop".into())
        .await;
    assert!(matches!(again, Err(Error::JobNotFound(_))));
}

/// A restart finds running attempts still running (for their workers to reclaim) and every
/// queued job ready; an attempt nobody reclaims ends `interrupted` (not counted) and its job is
/// queued again.
async fn a_restart_keeps_what_was_running_for_its_worker(mut b: Backend) {
    let done = submit(&*b.store, vec![new_job("q"), new_job("q")], None).await;
    let first = done[0].ready.clone().expect("ready");
    b.store
        .transition(transitions(vec![], vec![start(&first)]))
        .await
        .expect("start");
    b.restart().await;
    let recovered = b.store.recover().await.expect("recover");
    let ids: Vec<JobId> = recovered.ready.iter().map(|j| j.id).collect();
    assert_eq!(ids, [done[1].id]);
    let [running] = recovered.running.as_slice() else {
        panic!("one running attempt: {:?}", recovered.running);
    };
    assert_eq!((running.job.id, running.attempt), (first.id, 1));
    assert_eq!(running.job.attempt, 0, "as it was queued");
    assert_eq!(running.worker_id, "w1");
    let job = b.store.get(first.id).await.expect("get").expect("the job");
    assert_eq!(job.state, JobState::Running);

    // Its worker's result after the restart is the attempt's own.
    let out = b
        .store
        .transition(transitions(
            vec![finish(first.id, 1, Outcome::Succeeded(b"kept".to_vec()))],
            vec![],
        ))
        .await
        .expect("reclaimed result");
    assert!(out.stale.is_empty());
    assert_eq!(out.terminal, [first.id]);

    // Nobody reclaims the second one: interrupted, not counted, queued again.
    let second = recovered.ready[0].clone();
    b.store
        .transition(transitions(vec![], vec![start(&second)]))
        .await
        .expect("start");
    b.restart().await;
    let recovered = b.store.recover().await.expect("recover");
    assert_eq!(recovered.running.len(), 1);
    let out = b
        .store
        .transition(transitions(
            vec![finish(
                second.id,
                1,
                Outcome::Interrupted("nobody came back".into()),
            )],
            vec![],
        ))
        .await
        .expect("interrupt");
    let again = out
        .ready
        .iter()
        .find(|j| j.id == second.id)
        .expect("queued again");
    assert_eq!(again.attempt, 1, "its next attempt is number 2");
    let job = b.store.get(second.id).await.expect("get").expect("the job");
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempts[0].outcome, AttemptOutcome::Interrupted);
}

/// Each recovery takes a higher epoch than any before it, and an attempt found running comes
/// back with the epoch of the run that started it: the two halves of its fencing token.
async fn each_run_takes_a_new_epoch_and_attempts_keep_theirs(mut b: Backend) {
    let first = b.store.recover().await.expect("recover").epoch;
    assert!(first > 0, "0 is the epoch of workers that send none");
    let job = submit(b.store.as_ref(), vec![new_job("q")], None).await[0]
        .ready
        .clone()
        .expect("ready");
    b.store
        .transition(transitions(
            vec![],
            vec![Start {
                epoch: first,
                ..start(&job)
            }],
        ))
        .await
        .expect("start");
    b.restart().await;
    let second = b.store.recover().await.expect("recover");
    assert!(second.epoch > first, "{} after {first}", second.epoch);
    assert_eq!(
        second
            .running
            .iter()
            .map(|r| (r.job.id, r.attempt, r.epoch))
            .collect::<Vec<_>>(),
        [(job.id, 1, first)]
    );
    b.restart().await;
    let third = b.store.recover().await.expect("recover");
    assert!(third.epoch > second.epoch);
    assert_eq!(
        third.running[0].epoch, first,
        "still the run that started it"
    );
}

/// Quotas and paused queues are kept across restarts.
async fn control_survives_a_restart(mut b: Backend) {
    b.store
        .set_quota(Quota {
            scope: "key:k".into(),
            max_in_flight: Some(3),
            ..Default::default()
        })
        .await
        .expect("quota");
    b.store.pause("q".into(), true).await.expect("pause");
    b.restart().await;
    let recovered = b.store.recover().await.expect("recover");
    assert_eq!(recovered.quotas.len(), 1);
    assert_eq!(recovered.quotas[0].max_in_flight, Some(3));
    assert_eq!(recovered.paused, ["q"]);
    b.store.pause("q".into(), false).await.expect("resume");
    assert!(b.store.paused().await.expect("paused").is_empty());
}

/// Keys bind for a window, or while their job is live; a repeat says whether its payload
/// differs, and with debounce gives a queued job its payload.
async fn keys_bind_for_a_window_or_while_their_job_is_live(b: Backend) {
    use super::Uniqueness;
    let store = &*b.store;
    let keyed = |key: &str, payload: &str, unique: Uniqueness| NewJob {
        idempotency_key: Some(key.into()),
        payload: payload.as_bytes().to_vec(),
        unique,
        ..new_job("q")
    };
    // A window that has already passed frees the key at once; a long one holds it.
    let gone = Uniqueness {
        for_ms: Some(0),
        ..Default::default()
    };
    let first = submit(store, vec![keyed("w", "a", gone)], None).await[0].id;
    let second = submit(store, vec![keyed("w", "a", gone)], None).await;
    assert!(
        !second[0].duplicate && second[0].id != first,
        "the window passed"
    );
    let long = Uniqueness {
        for_ms: Some(3_600_000),
        ..Default::default()
    };
    let held = submit(store, vec![keyed("l", "a", long)], None).await[0].id;
    let repeat = submit(store, vec![keyed("l", "b", long)], None).await;
    assert!(repeat[0].duplicate && repeat[0].id == held);
    assert!(repeat[0].payload_differs, "a different payload is reported");
    assert!(!repeat[0].debounced);

    // While active: bound while queued, free once the job has ended.
    let live = Uniqueness {
        while_active: true,
        ..Default::default()
    };
    let queued = submit(store, vec![keyed("a", "x", live)], None).await[0].id;
    let same = submit(store, vec![keyed("a", "x", live)], None).await;
    assert!(same[0].duplicate && !same[0].payload_differs);
    store
        .cancel(CancelTarget::Job(queued), "done".into())
        .await
        .expect("cancel");
    let after = submit(store, vec![keyed("a", "x", live)], None).await;
    assert!(!after[0].duplicate, "the key is free once its job ended");

    // Debounce: the repeat's payload replaces the queued job's.
    let bounce = Uniqueness {
        debounce: true,
        ..Default::default()
    };
    let job = submit(store, vec![keyed("d", "old", bounce)], None).await[0].id;
    let again = submit(store, vec![keyed("d", "new", bounce)], None).await;
    assert!(again[0].duplicate && again[0].debounced);
    let stored = store.get(job).await.expect("get").expect("the job");
    assert_eq!(stored.payload, b"new");
}

/// Everything pruning may remove, due now: every terminal state ended before `ahead_ms` from
/// now.
fn prune_all(ahead_ms: i64, limit: u32, watched: Vec<super::GroupKey>) -> super::Prune {
    let now = crate::domain::now_ms() + ahead_ms;
    super::Prune {
        cutoffs: JobState::ALL
            .iter()
            .map(|s| super::Cutoff::new(*s, now))
            .collect(),
        now_ms: now,
        limit,
        watched,
    }
}

/// Prunes batch after batch until one removes nothing; returns the sum.
async fn prune_until_done(store: &dyn Store, mut prune: super::Prune) -> (u64, u64, u64) {
    let mut total = (0, 0, 0);
    loop {
        let done = store.prune(prune.clone()).await.expect("prune");
        total.0 += done.jobs;
        total.1 += done.groups;
        total.2 += done.keys;
        if done.done {
            return total;
        }
        prune.cutoffs = done.next;
    }
}

/// Starts and succeeds a ready job.
async fn succeed(store: &dyn Store, ready: &ReadyJob) {
    store
        .transition(transitions(vec![], vec![start(ready)]))
        .await
        .expect("start");
    store
        .transition(transitions(
            vec![finish(ready.id, 1, Outcome::Succeeded(b"out".to_vec()))],
            vec![],
        ))
        .await
        .expect("succeed");
}

/// Finished jobs go once their state's cutoff has passed, with their key, in batches of at
/// most `limit`; queued and running jobs never go, however old.
async fn prune_removes_finished_jobs_past_their_cutoff(b: Backend) {
    let store = &*b.store;
    let done = submit(
        store,
        vec![
            NewJob {
                idempotency_key: Some("k".into()),
                ..new_job("q")
            },
            new_job("q"),
            new_job("q"),
            new_job("q"),
            new_job("q"),
        ],
        None,
    )
    .await;
    let ready: Vec<ReadyJob> = done.iter().filter_map(|s| s.ready.clone()).collect();
    let (succeeded, cancelled, also, queued, running) =
        (&ready[0], &ready[1], &ready[2], &ready[3], &ready[4]);
    succeed(store, succeeded).await;
    succeed(store, also).await;
    store
        .cancel(CancelTarget::Job(cancelled.id), "no".into())
        .await
        .expect("cancel");
    store
        .transition(transitions(vec![], vec![start(running)]))
        .await
        .expect("start");

    // Ended after the cutoff (an hour ago): kept.
    let kept = store
        .prune(prune_all(-3_600_000, 500, vec![]))
        .await
        .expect("prune");
    assert!(kept.is_empty() && kept.done, "{kept:?}");
    // A state with no cutoff is kept forever.
    let only_failed = super::Prune {
        cutoffs: vec![super::Cutoff::new(
            JobState::Failed,
            crate::domain::now_ms() + 60_000,
        )],
        ..prune_all(60_000, 500, vec![])
    };
    assert_eq!(store.prune(only_failed).await.expect("prune").jobs, 0);

    // All due: at most `limit` per batch.
    let first = store
        .prune(prune_all(60_000, 2, vec![]))
        .await
        .expect("prune");
    assert_eq!(first.jobs, 2);
    assert!(!first.done, "more is due");
    let rest = store
        .prune(super::Prune {
            cutoffs: first.next.clone(),
            ..prune_all(60_000, 2, vec![])
        })
        .await
        .expect("prune");
    assert_eq!(rest.jobs, 1);
    assert!(rest.done, "{rest:?}");
    for gone in [succeeded, cancelled, also] {
        assert!(store.get(gone.id).await.expect("get").is_none(), "pruned");
    }
    assert_eq!(state(store, queued.id).await, JobState::Queued);
    assert_eq!(state(store, running.id).await, JobState::Running);
    // The pruned job's key went with it.
    let again = submit(
        store,
        vec![NewJob {
            idempotency_key: Some("k".into()),
            ..new_job("q")
        }],
        None,
    )
    .await;
    assert!(!again[0].duplicate, "the key left with its job");
}

/// A dependency stays while a job that depends on it does; a group's jobs stay while one of
/// them is unfinished or the group is watched, and the group goes with its last job.
async fn prune_keeps_dependencies_and_live_or_watched_groups(b: Backend) {
    let store = &*b.store;
    let dep = submit(store, vec![new_job("q")], None).await[0]
        .ready
        .clone()
        .expect("ready");
    succeed(store, &dep).await;
    let dependent = submit(
        store,
        vec![NewJob {
            depends_on: vec![dep.id],
            ..new_job("q")
        }],
        None,
    )
    .await[0]
        .ready
        .clone()
        .expect("its dependency succeeded");
    let group = submit(store, vec![new_job("q"), new_job("q")], Some("g")).await;
    let (x, y) = (group[0].id, group[1].id);
    store
        .cancel(CancelTarget::Job(x), "no".into())
        .await
        .expect("cancel one");

    let key = super::GroupKey {
        tenant: String::new(),
        id: "g".into(),
    };
    assert_eq!(
        prune_until_done(store, prune_all(60_000, 500, vec![])).await,
        (0, 0, 0),
        "the dependency's dependent and the group's other job are live"
    );

    succeed(store, &dependent).await;
    store
        .cancel(CancelTarget::Job(y), "no".into())
        .await
        .expect("cancel the other");
    // A pass looks at each due job once: the dependency, still kept by its dependent when
    // looked at, goes in the next pass.
    let pass = prune_until_done(store, prune_all(60_000, 500, vec![key.clone()])).await;
    assert_eq!(pass.0, 1, "the dependent; not the watched group");
    assert!(store.get(dep.id).await.expect("get").is_some());
    let pass = prune_until_done(store, prune_all(60_000, 500, vec![key.clone()])).await;
    assert_eq!(pass.0, 1, "then its dependency");
    assert!(store.get(dep.id).await.expect("get").is_none());
    assert!(store.get(x).await.expect("get").is_some(), "watched");
    assert!(
        store
            .group("g".into(), Some(String::new()))
            .await
            .expect("group")
            .is_some()
    );

    let pass = prune_until_done(store, prune_all(60_000, 500, vec![])).await;
    assert_eq!((pass.0, pass.1), (2, 1));
    assert!(
        store
            .group("g".into(), Some(String::new()))
            .await
            .expect("group")
            .is_none()
    );
    assert!(
        store
            .group_events(key, 0, 10)
            .await
            .expect("events")
            .is_empty()
    );
}

/// A key whose window has passed is removed (and its job stays); a live one is not.
async fn prune_removes_expired_keys(b: Backend) {
    use super::Uniqueness;
    let store = &*b.store;
    let keyed = |key: &str, for_ms: i64| NewJob {
        idempotency_key: Some(key.into()),
        unique: Uniqueness {
            for_ms: Some(for_ms),
            ..Default::default()
        },
        ..new_job("q")
    };
    let done = submit(
        store,
        vec![keyed("short", 1_000), keyed("long", 3_600_000)],
        None,
    )
    .await;
    let pruned = store
        .prune(prune_all(60_000, 500, vec![]))
        .await
        .expect("prune");
    assert_eq!((pruned.jobs, pruned.keys), (0, 1));
    assert_eq!(state(store, done[0].id).await, JobState::Queued);
    let repeat = submit(store, vec![keyed("long", 3_600_000)], None).await;
    assert!(repeat[0].duplicate && repeat[0].id == done[1].id);
}

/// Every check, as a test against one backend: `suite!(name)` runs them against the backend
/// that `async fn name() -> Backend` opens.
/// A tenant-scoped submit cannot name another tenant's job, and group names are each
/// tenant's own.
async fn tenants_name_only_their_own_jobs_and_groups(b: Backend) {
    let store = &*b.store;
    let of = |tenant: &str| NewJob {
        tenant_id: Some(tenant.into()),
        ..new_job("q")
    };
    let submit_as = |tenant: &str, jobs: Vec<NewJob>, group: Option<&str>| Submit {
        origin: Origin::Submit,
        jobs,
        group: group.map(|id| NewGroup {
            id: id.into(),
            cancel_on_failure: false,
        }),
        scope: Some(tenant.into()),
        durability: Durability::BeforeReply,
    };
    let a = store
        .submit(submit_as("a", vec![of("a")], Some("nightly")))
        .await
        .expect("a's batch")[0]
        .id;
    let foreign = store
        .submit(submit_as(
            "b",
            vec![NewJob {
                depends_on: vec![a],
                ..of("b")
            }],
            None,
        ))
        .await
        .expect_err("b names a's job");
    let missing = JobId::new();
    let absent = store
        .submit(submit_as(
            "b",
            vec![NewJob {
                depends_on: vec![missing],
                ..of("b")
            }],
            None,
        ))
        .await
        .expect_err("b names no job");
    assert_eq!(
        foreign.to_string().replace(&a.to_string(), "ID"),
        absent.to_string().replace(&missing.to_string(), "ID"),
        "another tenant's job reads as a missing one"
    );
    store
        .submit(submit_as("b", vec![of("b")], Some("nightly")))
        .await
        .expect("b's own group of the same name");
    let a_group = store
        .group("nightly".into(), Some("a".into()))
        .await
        .expect("group")
        .expect("a's");
    assert_eq!((a_group.size, a_group.tenant_id.as_deref()), (1, Some("a")));
    assert_eq!(a_group.queued, 1, "only a's job counts in a's group");
}

pub(crate) fn schedule(tenant: &str, id: &str, overlap: Overlap) -> NewSchedule {
    NewSchedule {
        key: ScheduleKey {
            tenant: tenant.into(),
            id: id.into(),
        },
        cron: "* * * * * *".into(),
        time_zone: "UTC".into(),
        job: JobTemplate {
            queue: "q".into(),
            kind: "echo".into(),
            payload: b"tick".to_vec(),
            priority: 0,
            max_attempts: 1,
            timeout_ms: None,
            concurrency_key: None,
            weight: 1,
            labels: Default::default(),
        },
        misfire: Misfire::RunOnce,
        overlap,
        paused: false,
        created_at_ms: 1,
    }
}

pub(crate) fn fire_of(key: &ScheduleKey, tick_ms: i64) -> Fire {
    Fire {
        key: key.clone(),
        tick_ms,
        job: NewJob {
            idempotency_key: Some(crate::domain::schedule::tick_key(&key.id, tick_ms)),
            tenant_id: (!key.tenant.is_empty()).then(|| key.tenant.clone()),
            ..new_job("q")
        },
    }
}

/// A tick fires one job and moves the last fired tick with it; a tick at or before it fires
/// nothing; overlap `Skip` passes a tick over while the previous job is queued; all of it
/// survives a restart, and each tenant's schedules are its own.
async fn schedules_fire_each_tick_once(mut b: Backend) {
    let s = schedule("a", "nightly", Overlap::Skip);
    let key = s.key.clone();
    b.store.create_schedule(s.clone()).await.expect("create");
    assert!(matches!(
        b.store.create_schedule(s.clone()).await,
        Err(Error::ScheduleExists(_))
    ));
    // Another tenant may use the same name.
    b.store
        .create_schedule(schedule("b", "nightly", Overlap::Allow))
        .await
        .expect("b's own");
    let first = match b
        .store
        .fire_schedule(fire_of(&key, 1000))
        .await
        .expect("fire")
    {
        Fired::Submitted(s) => s,
        other => panic!("expected a job: {other:?}"),
    };
    assert!(!first.duplicate && first.ready.is_some());
    assert_eq!(
        b.store
            .fire_schedule(fire_of(&key, 1000))
            .await
            .expect("again"),
        Fired::Stale
    );
    assert_eq!(
        b.store
            .fire_schedule(fire_of(&key, 2000))
            .await
            .expect("overlap"),
        Fired::Overlapped
    );
    b.restart().await;
    let record = b
        .store
        .schedule(key.clone())
        .await
        .expect("read")
        .expect("still there");
    assert_eq!(record.schedule, s);
    assert_eq!(record.last_fired_ms, Some(2000));
    assert_eq!(record.last_job_id, Some(first.id));
    assert!(record.last_error.is_some(), "the overlap is told");
    let job = b.store.get(first.id).await.expect("get").expect("the job");
    assert_eq!(job.tenant_id.as_deref(), Some("a"));
    assert_eq!(
        job.idempotency_key.as_deref(),
        Some("schedule:nightly:1000")
    );
    assert_eq!(
        b.store
            .schedules(Some("a".into()))
            .await
            .expect("a's")
            .len(),
        1
    );
    assert_eq!(b.store.schedules(None).await.expect("all").len(), 2);

    b.store
        .pause_schedule(key.clone(), true)
        .await
        .expect("pause");
    assert_eq!(
        b.store
            .fire_schedule(fire_of(&key, 3000))
            .await
            .expect("paused"),
        Fired::Stale
    );
    b.store.delete_schedule(key.clone()).await.expect("delete");
    assert!(matches!(
        b.store.delete_schedule(key.clone()).await,
        Err(Error::ScheduleNotFound(_))
    ));
    assert_eq!(
        b.store
            .fire_schedule(fire_of(&key, 4000))
            .await
            .expect("gone"),
        Fired::Stale
    );
    assert!(matches!(
        b.store.pause_schedule(key, false).await,
        Err(Error::ScheduleNotFound(_))
    ));
}

/// Admission applies to fired jobs: past the tenant's `max_queued` a tick stores no job, and
/// the tick is recorded as handled with the reason.
async fn a_refused_fire_is_recorded(b: Backend) {
    let store = &*b.store;
    let s = schedule("a", "often", Overlap::Allow);
    let key = s.key.clone();
    store.create_schedule(s).await.expect("create");
    store
        .set_quota(Quota {
            scope: "tenant:a".into(),
            max_queued: Some(1),
            ..Default::default()
        })
        .await
        .expect("quota");
    assert!(matches!(
        store
            .fire_schedule(fire_of(&key, 1000))
            .await
            .expect("first"),
        Fired::Submitted(_)
    ));
    match store
        .fire_schedule(fire_of(&key, 2000))
        .await
        .expect("second")
    {
        Fired::Refused(why) => assert!(why.contains("max_queued"), "{why}"),
        other => panic!("expected a refusal: {other:?}"),
    }
    let record = store.schedule(key).await.expect("read").expect("there");
    assert_eq!(record.last_fired_ms, Some(2000));
    assert!(record.last_error.is_some_and(|e| e.contains("max_queued")));
    let jobs = store
        .list(super::ListFilter {
            page_size: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(jobs.jobs.len(), 1, "the refused tick stored nothing");
}

fn report(
    id: JobId,
    attempt: u32,
    fraction: Option<f64>,
    message: Option<&str>,
    checkpoint: Option<&[u8]>,
) -> ProgressReport {
    ProgressReport {
        job_id: id,
        attempt,
        // As `start` stores it.
        epoch: 1,
        fraction,
        message: message.map(str::to_owned),
        checkpoint: checkpoint.map(<[u8]>::to_vec),
    }
}

/// (attempt, fraction, message, checkpoint) of a job's stored progress, through `get`.
async fn progress_of(
    store: &dyn Store,
    id: JobId,
) -> Option<(u32, Option<f64>, Option<String>, Option<Vec<u8>>)> {
    let job = store.get(id).await.expect("get").expect("the job");
    job.progress
        .map(|p| (p.attempt, p.fraction, p.message, p.checkpoint))
}

/// Progress is stored only for the job's current running attempt, the latest value of each
/// field winning; the last checkpoint reaches the next attempt, survives a restart, and goes
/// when an empty one is stored.
async fn progress_is_fenced_and_its_checkpoint_reaches_the_retry(mut b: Backend) {
    let job = NewJob {
        max_attempts: 3,
        ..new_job("q")
    };
    let ready = submit(&*b.store, vec![job], None).await[0]
        .ready
        .clone()
        .expect("ready");
    let id = ready.id;
    let store = b.store.clone();
    let out = store
        .progress(vec![report(id, 1, Some(0.1), Some("early"), Some(b"c0"))])
        .await
        .expect("progress");
    assert_eq!(
        (out.stored, out.ignored.as_slice()),
        (0, &[(id, 1)][..]),
        "a queued job has no running attempt"
    );
    assert_eq!(progress_of(&*store, id).await, None);

    let out = store
        .transition(transitions(vec![], vec![start(&ready)]))
        .await
        .expect("start");
    assert_eq!(out.started[0].dispatch.checkpoint, None, "a fresh start");
    let out = store
        .progress(vec![report(id, 1, Some(0.2), Some("a"), Some(b"c1"))])
        .await
        .expect("progress");
    assert_eq!((out.stored, out.ignored.len()), (1, 0));
    assert_eq!(
        progress_of(&*store, id).await,
        Some((1, Some(0.2), Some("a".into()), Some(b"c1".to_vec())))
    );
    // The latest value of each field wins, within a batch and across batches; what a report
    // leaves unset stays.
    let out = store
        .progress(vec![
            report(id, 1, Some(0.6), Some("b"), None),
            report(id, 1, Some(0.7), None, None),
            // Stale: another attempt's number.
            report(id, 7, Some(0.9), Some("stale"), Some(b"stale")),
            // Stale too: the same number from another run (a start a crash lost).
            ProgressReport {
                epoch: 2,
                ..report(id, 1, Some(0.9), Some("stale"), Some(b"stale"))
            },
        ])
        .await
        .expect("progress");
    assert_eq!(
        (out.stored, out.ignored.as_slice()),
        (2, &[(id, 7), (id, 1)][..])
    );
    assert_eq!(
        progress_of(&*store, id).await,
        Some((1, Some(0.7), Some("b".into()), Some(b"c1".to_vec())))
    );
    // A page of jobs carries the progress but not the checkpoint.
    let page = store
        .list(super::ListFilter {
            page_size: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    let listed = page.jobs[0].progress.clone().expect("progress in the page");
    assert_eq!((listed.fraction, listed.checkpoint), (Some(0.7), None));

    // Attempt 1 fails (retryable): its late reports are ignored, and attempt 2 receives its
    // checkpoint.
    let out = store
        .transition(transitions(vec![finish(id, 1, failure(true))], vec![]))
        .await
        .expect("fail once");
    let again = out.ready.first().cloned().expect("re-queued");
    let out = store
        .progress(vec![report(id, 1, Some(1.0), None, Some(b"late"))])
        .await
        .expect("progress");
    assert_eq!(out.ignored, [(id, 1)], "the attempt has ended");
    let out = store
        .transition(transitions(vec![], vec![start(&again)]))
        .await
        .expect("start again");
    assert_eq!(
        out.started[0].dispatch.checkpoint.as_deref(),
        Some(&b"c1"[..]),
        "the retry resumes from the last checkpoint"
    );
    let out = store
        .progress(vec![
            report(id, 2, None, None, Some(b"c2")),
            report(id, 1, Some(0.0), Some("stale"), Some(b"old")),
        ])
        .await
        .expect("progress");
    assert_eq!((out.stored, out.ignored.as_slice()), (1, &[(id, 1)][..]));
    assert_eq!(
        progress_of(&*store, id).await,
        Some((2, Some(0.7), Some("b".into()), Some(b"c2".to_vec())))
    );

    // It survives a restart, and the next attempt resumes from it.
    drop(store);
    b.restart().await;
    let store = b.store.clone();
    assert_eq!(
        progress_of(&*store, id).await.and_then(|p| p.3),
        Some(b"c2".to_vec())
    );
    let out = store
        .transition(transitions(vec![finish(id, 2, failure(true))], vec![]))
        .await
        .expect("fail twice");
    let third = out.ready.first().cloned().expect("re-queued");
    let out = store
        .transition(transitions(vec![], vec![start(&third)]))
        .await
        .expect("start a third time");
    assert_eq!(
        out.started[0].dispatch.checkpoint.as_deref(),
        Some(&b"c2"[..])
    );
    // An empty checkpoint removes it.
    let attempt = third.attempt + 1;
    store
        .progress(vec![report(id, attempt, None, None, Some(b""))])
        .await
        .expect("progress");
    assert_eq!(progress_of(&*store, id).await.and_then(|p| p.3), None);
    store
        .transition(transitions(
            vec![finish(id, attempt, Outcome::Succeeded(vec![]))],
            vec![],
        ))
        .await
        .expect("succeed");
    let out = store
        .progress(vec![report(id, attempt, Some(1.0), None, None)])
        .await
        .expect("progress");
    assert_eq!(
        out.ignored,
        [(id, attempt)],
        "a succeeded job takes no more"
    );
}

/// Children belong to their parent's attempt: one that ends other than in success (here a
/// retryable failure, so the parent runs again) cancels its children, queued or running, and
/// their descendants; a child that names an attempt no longer running is refused.
async fn children_end_with_their_parents_attempt(b: Backend) {
    let store = &*b.store;
    let parent = NewJob {
        max_attempts: 3,
        ..new_job("q")
    };
    let parent = submit(store, vec![parent], None).await[0]
        .ready
        .clone()
        .expect("ready");
    store
        .transition(transitions(vec![], vec![start(&parent)]))
        .await
        .expect("start the parent");
    let child_of = |id: JobId, attempt: u32| NewJob {
        parent_job_id: Some(id),
        parent_attempt: Some(attempt),
        ..new_job("q")
    };
    let kids = submit(
        store,
        vec![child_of(parent.id, 1), child_of(parent.id, 1)],
        None,
    )
    .await;
    let running_kid = kids[1].ready.clone().expect("ready");
    store
        .transition(transitions(vec![], vec![start(&running_kid)]))
        .await
        .expect("start a child");
    let grandchild = submit(store, vec![child_of(running_kid.id, 1)], None).await[0].id;
    let refused = store
        .submit(submit_of(Origin::Submit, vec![child_of(parent.id, 2)]))
        .await;
    assert!(
        matches!(refused, Err(Error::FailedPrecondition { .. })),
        "attempt 2 is not running: {refused:?}"
    );

    let out = store
        .transition(transitions(
            vec![finish(parent.id, 1, failure(true))],
            vec![],
        ))
        .await
        .expect("the parent's attempt fails");
    let again = out.ready.first().cloned().expect("the parent runs again");
    let mut ended = out.cancelled_dependents.clone();
    ended.sort();
    let mut expected = vec![kids[0].id, kids[1].id, grandchild];
    expected.sort();
    assert_eq!(ended, expected, "the attempt's children and theirs");
    assert_eq!(
        out.stopped,
        [(running_kid.id, 1)],
        "its worker is told to stop"
    );
    for id in [kids[0].id, kids[1].id, grandchild] {
        assert_eq!(state(store, id).await, JobState::Cancelled);
    }
    let kid = store
        .get(kids[0].id)
        .await
        .expect("get")
        .expect("the child");
    assert!(
        kid.error
            .as_deref()
            .is_some_and(|e| e.contains("attempt 1 of its parent")),
        "{:?}",
        kid.error
    );
    // A late child of attempt 1, from its handler still running: refused while the parent
    // waits for its retry, and once the retry runs.
    for _ in 0..2 {
        let late = store
            .submit(submit_of(Origin::Submit, vec![child_of(parent.id, 1)]))
            .await;
        assert!(
            matches!(late, Err(Error::FailedPrecondition { .. })),
            "{late:?}"
        );
        if state(store, parent.id).await == JobState::Queued {
            store
                .transition(transitions(vec![], vec![start(&again)]))
                .await
                .expect("start the retry");
        }
    }
    // The retry's own children join it, and a success leaves them be.
    let fresh = submit(store, vec![child_of(parent.id, 2)], None).await[0].id;
    let out = store
        .transition(transitions(
            vec![finish(parent.id, 2, Outcome::Succeeded(vec![]))],
            vec![],
        ))
        .await
        .expect("the retry succeeds");
    assert!(out.cancelled_dependents.is_empty());
    assert_eq!(state(store, fresh).await, JobState::Queued);
}

/// A job that waits for its dependencies is known by its deadline (from submit and from
/// recover), and the expire path ends it while it waits, with its own dependents.
async fn a_waiting_job_expires_at_its_deadline(mut b: Backend) {
    let deadline = crate::domain::now_ms() + 60_000;
    let first = new_job("q");
    let waiting = NewJob {
        depends_on: vec![first.id],
        deadline_ms: Some(deadline),
        ..new_job("q")
    };
    let after = NewJob {
        depends_on: vec![waiting.id],
        ..new_job("q")
    };
    let (first_id, waiting_id, after_id) = (first.id, waiting.id, after.id);
    let done = submit(&*b.store, vec![first, waiting, after], None).await;
    assert!(done[0].ready.is_some());
    assert_eq!(
        (done[1].ready.as_ref(), done[1].waiting_until_ms),
        (None, Some(deadline))
    );
    assert_eq!(done[2].waiting_until_ms, None, "no deadline of its own");

    b.restart().await;
    let recovered = b.store.recover().await.expect("recover");
    assert_eq!(recovered.waiting, [(waiting_id, deadline)]);

    let store = &*b.store;
    let out = store
        .transition(Transitions {
            finishes: vec![],
            expire: vec![waiting_id],
            starts: vec![],
            retry: RETRY,
        })
        .await
        .expect("expire");
    assert_eq!(out.terminal, [waiting_id, after_id]);
    assert_eq!(out.cancelled_dependents, [after_id]);
    assert_eq!(state(store, waiting_id).await, JobState::DeadlineExceeded);
    assert_eq!(state(store, after_id).await, JobState::Cancelled);
    assert_eq!(state(store, first_id).await, JobState::Queued);
}

/// A queue's attempt timeout is a quota of its own (it survives a restart) and bounds the
/// attempts of its jobs that set no timeout; a job's own timeout wins. A handler that stopped
/// on its token at that timeout counts as TIMED_OUT.
async fn a_queues_attempt_timeout_bounds_jobs_without_their_own(mut b: Backend) {
    for (queue, ms) in [("slow", 5_000), ("fast", 1)] {
        b.store
            .set_quota(Quota {
                scope: format!("queue:{queue}"),
                attempt_timeout_ms: Some(ms),
                ..Default::default()
            })
            .await
            .expect("quota");
    }
    b.restart().await;
    let quotas = b.store.quotas().await.expect("quotas");
    let timeouts: Vec<_> = quotas
        .iter()
        .map(|(q, _)| (q.scope.as_str(), q.attempt_timeout_ms))
        .collect();
    assert_eq!(
        timeouts,
        [("queue:fast", Some(1)), ("queue:slow", Some(5_000))]
    );

    let store = &*b.store;
    let own = NewJob {
        timeout_ms: Some(60_000),
        ..new_job("slow")
    };
    let done = submit(
        store,
        vec![new_job("slow"), own, new_job("other"), new_job("fast")],
        None,
    )
    .await;
    let ready: Vec<ReadyJob> = done.iter().filter_map(|s| s.ready.clone()).collect();
    let before = crate::domain::now_ms();
    let out = store
        .transition(transitions(vec![], ready.iter().map(start).collect()))
        .await
        .expect("start");
    let after = crate::domain::now_ms();
    let ends = |id: JobId| {
        out.started
            .iter()
            .find(|s| s.dispatch.job_id == id)
            .expect("started")
            .dispatch
            .ends_ms
    };
    let within =
        |ends: Option<i64>, ms: i64| ends.is_some_and(|e| (before + ms..=after + ms).contains(&e));
    assert!(within(ends(ready[0].id), 5_000), "the queue's default");
    assert!(within(ends(ready[1].id), 60_000), "its own timeout");
    assert_eq!(ends(ready[2].id), None, "a queue with none");

    let fast = ready[3].id;
    let out = store
        .transition(transitions(
            vec![finish(
                fast,
                1,
                Outcome::Failed {
                    message: "stopped".into(),
                    retryable: false,
                    retry_after_ms: None,
                    cancelled: true,
                },
            )],
            vec![],
        ))
        .await
        .expect("finish");
    assert!(!out.ready.is_empty(), "a timeout is retried");
    let job = store.get(fast).await.expect("get").expect("the job");
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempts[0].outcome, AttemptOutcome::DeadlineExceeded);
    assert!(
        job.attempts[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("its queue's attempt timeout of 1 ms")),
        "{:?}",
        job.attempts[0].error
    );
}

fn bulk(action: BulkAction, filter: ListFilter) -> Bulk {
    Bulk {
        action,
        filter,
        ids: vec![],
        dry_run: false,
        reason: "bulk".into(),
    }
}

/// Bulk actions and `List` share the filter (label and submit time too); a bulk action goes
/// step by step from its cursor, changes only the states it applies to, and a dry run counts
/// what it would change. Delete keeps what another job still needs.
async fn bulk_actions_step_through_a_filter(b: Backend) {
    let store = &*b.store;
    let labelled = |team: &str| NewJob {
        labels: [("team".to_owned(), team.to_owned())].into(),
        ..new_job("a")
    };
    let jobs = vec![
        labelled("x"),
        labelled("y"),
        labelled("x"),
        labelled("x"),
        new_job("b"),
    ];
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    submit(store, jobs, None).await;
    let team_x = ListFilter {
        queue: Some("a".into()),
        label: Some(("team".into(), "x".into())),
        page_size: 10,
        ..ListFilter::default()
    };
    let listed = store.list(team_x.clone()).await.expect("list");
    let listed: Vec<JobId> = listed.jobs.iter().map(|j| j.id).collect();
    assert_eq!(listed, [ids[0], ids[2], ids[3]]);
    let later = ListFilter {
        submitted_after_ms: Some(now_ms() + 60_000),
        ..team_x.clone()
    };
    assert!(store.list(later).await.expect("list").jobs.is_empty());
    let earlier = ListFilter {
        submitted_before_ms: Some(now_ms() + 60_000),
        ..team_x.clone()
    };
    assert_eq!(store.list(earlier).await.expect("list").jobs.len(), 3);

    let dry = |action, filter| Bulk {
        dry_run: true,
        ..bulk(action, filter)
    };
    let counted = store
        .bulk(dry(BulkAction::Cancel, team_x.clone()))
        .await
        .expect("dry run");
    assert_eq!((counted.matched, counted.changed), (3, 0));
    assert_eq!(
        state(store, ids[0]).await,
        JobState::Queued,
        "a dry run changes nothing"
    );
    assert_eq!(
        store
            .bulk(dry(BulkAction::Requeue, team_x.clone()))
            .await
            .expect("dry run")
            .matched,
        0,
        "queued jobs are not requeued"
    );

    // Two steps of two: the cursor carries the second one on.
    let step = ListFilter {
        page_size: 2,
        ..team_x.clone()
    };
    let first = store
        .bulk(bulk(BulkAction::Cancel, step.clone()))
        .await
        .expect("step 1");
    assert_eq!((first.matched, first.changed), (2, 2));
    let cursor = first.next_after_seq.expect("more to do");
    let second = store
        .bulk(bulk(
            BulkAction::Cancel,
            ListFilter {
                after_seq: cursor,
                ..step.clone()
            },
        ))
        .await
        .expect("step 2");
    assert_eq!(
        (second.matched, second.changed, second.next_after_seq),
        (1, 1, None)
    );
    let cancelled = second.cancelled.expect("what it cancelled");
    assert_eq!(cancelled.ids, [ids[3]]);
    for (i, expected) in [
        JobState::Cancelled,
        JobState::Queued,
        JobState::Cancelled,
        JobState::Cancelled,
        JobState::Queued,
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(state(store, ids[i]).await, expected, "job {i}");
    }
    assert_eq!(
        store
            .bulk(dry(BulkAction::Cancel, team_x.clone()))
            .await
            .expect("dry run")
            .matched,
        0
    );

    // Only the named ones, of those the filter matches.
    let named = store
        .bulk(Bulk {
            ids: vec![ids[0], ids[1]],
            ..bulk(BulkAction::Requeue, team_x.clone())
        })
        .await
        .expect("requeue named");
    assert_eq!(named.changed, 1);
    assert_eq!(
        named.ready.iter().map(|r| r.id).collect::<Vec<_>>(),
        [ids[0]]
    );
    assert_eq!(state(store, ids[0]).await, JobState::Queued);
    assert_eq!(state(store, ids[2]).await, JobState::Cancelled);

    // Delete: a finished job that a queued one depends on stays until that one ends.
    let needed = new_job("d");
    let needer = NewJob {
        depends_on: vec![needed.id],
        ..new_job("d")
    };
    let (needed_id, needer_id) = (needed.id, needer.id);
    let ready = submit(store, vec![needed, needer], None).await[0]
        .ready
        .clone()
        .expect("ready");
    store
        .transition(transitions(vec![], vec![start(&ready)]))
        .await
        .expect("start");
    store
        .transition(transitions(
            vec![finish(needed_id, 1, Outcome::Succeeded(b"out".to_vec()))],
            vec![],
        ))
        .await
        .expect("finish");
    let queue_d = ListFilter {
        queue: Some("d".into()),
        page_size: 10,
        ..ListFilter::default()
    };
    let kept = store
        .bulk(bulk(BulkAction::Delete, queue_d.clone()))
        .await
        .expect("delete");
    assert_eq!(kept.changed, 0, "its dependent still needs it");
    store
        .cancel(CancelTarget::Job(needer_id), "stop".into())
        .await
        .expect("cancel");
    // The dependent goes first; its dependency once nothing depends on it any more.
    let dependent = store
        .bulk(bulk(BulkAction::Delete, queue_d.clone()))
        .await
        .expect("delete");
    assert_eq!(dependent.changed, 1);
    assert!(store.get(needer_id).await.expect("get").is_none());
    assert!(store.get(needed_id).await.expect("get").is_some());
    let deleted = store
        .bulk(bulk(BulkAction::Delete, queue_d))
        .await
        .expect("delete");
    assert_eq!(deleted.changed, 1);
    assert!(store.get(needed_id).await.expect("get").is_none());
    assert!(store.get(needer_id).await.expect("get").is_none());
    assert_eq!(
        state(store, ids[4]).await,
        JobState::Queued,
        "other queues untouched"
    );
}

/// The console's reads: jobs ended per minute and state, the oldest queued job per queue, and
/// FAILED jobs grouped by kind and error (a tenant's only, when asked).
async fn the_console_counts_ends_queues_and_dead_letters(b: Backend) {
    let store = &*b.store;
    let since = crate::domain::now_ms() / 60_000 * 60_000 - 60_000;
    let mut acme = new_job("q");
    acme.tenant_id = Some("acme".into());
    let mut jobs = vec![new_job("q"), new_job("q"), acme, new_job("q")];
    jobs[1].kind = "mail".into();
    let done = submit(store, jobs, None).await;
    let ready: Vec<ReadyJob> = done
        .iter()
        .map(|d| d.ready.clone().expect("ready"))
        .collect();
    let waiting = submit(store, vec![new_job("other")], None).await;
    // The first succeeds; the next three fail for good (the last with another error).
    let out = store
        .transition(transitions(vec![], ready.iter().map(start).collect()))
        .await
        .expect("start");
    assert_eq!(out.started.len(), 4);
    let mut finishes = vec![finish(ready[0].id, 1, Outcome::Succeeded(vec![]))];
    for job in &ready[1..3] {
        finishes.push(finish(job.id, 1, failure(false)));
    }
    finishes.push(finish(
        ready[3].id,
        1,
        Outcome::Failed {
            message: "other".into(),
            retryable: false,
            retry_after_ms: None,
            cancelled: false,
        },
    ));
    store
        .transition(transitions(finishes, vec![]))
        .await
        .expect("finish");

    let minutes = store.ended_per_minute(since).await.expect("per minute");
    let count = |state| -> u64 {
        minutes
            .iter()
            .filter(|m| m.state == state)
            .map(|m| m.count)
            .sum()
    };
    assert_eq!(
        (count(JobState::Succeeded), count(JobState::Failed)),
        (1, 3)
    );
    assert!(
        minutes
            .iter()
            .all(|m| m.minute_ms % 60_000 == 0 && m.minute_ms >= since)
    );
    assert!(
        store
            .ended_per_minute(crate::domain::now_ms() + 120_000)
            .await
            .expect("per minute")
            .is_empty()
    );

    let oldest = store.oldest_queued().await.expect("oldest");
    let created = store
        .get(waiting[0].id)
        .await
        .expect("get")
        .expect("the job")
        .created_at_ms;
    assert_eq!(oldest, [("other".to_owned(), created)]);

    let groups = store.dead_letters(None, 10).await.expect("dead letters");
    let shown: Vec<(&str, Option<&str>, u64)> = groups
        .iter()
        .map(|g| (g.kind.as_str(), g.error.as_deref(), g.count))
        .collect();
    assert_eq!(
        shown,
        [
            ("echo", Some("boom"), 1),
            ("echo", Some("other"), 1),
            ("mail", Some("boom"), 1)
        ],
        "largest first, then by kind and error"
    );
    let acme = store
        .dead_letters(Some("acme".into()), 10)
        .await
        .expect("acme's");
    assert_eq!(acme.len(), 1);
    assert_eq!((acme[0].kind.as_str(), acme[0].count), ("echo", 1));
    assert_eq!(store.dead_letters(None, 1).await.expect("one").len(), 1);
}

/// Queues `a` and `b` counted by state from their jobs, one page each.
async fn counted(store: &dyn Store) -> Vec<crate::domain::QueueCounts> {
    let mut counts = Vec::new();
    for queue in ["a", "b"] {
        let page = store
            .list(ListFilter {
                queue: Some(queue.into()),
                page_size: 100,
                ..Default::default()
            })
            .await
            .expect("list");
        let mut c = crate::domain::QueueCounts {
            queue: queue.into(),
            ..Default::default()
        };
        for job in &page.jobs {
            c.count(job.state, 1);
        }
        counts.push(c);
    }
    counts
}

/// The counts `Stats` shows are kept as jobs move, and equal what the jobs themselves say:
/// after submits, starts, a success, a retry, a failure, cancels, a requeue and a prune, in
/// two queues.
async fn queue_counts_follow_every_change(b: Backend) {
    let store = &*b.store;
    let a = submit(store, (0..6).map(|_| new_job("a")).collect(), None).await;
    submit(store, (0..2).map(|_| new_job("b")).collect(), None).await;
    let ready: Vec<ReadyJob> = a.iter().map(|s| s.ready.clone().expect("ready")).collect();
    store
        .transition(transitions(vec![], ready[..4].iter().map(start).collect()))
        .await
        .expect("start four");
    let failed_once = Finish {
        job_id: ready[1].id,
        attempt: 1,
        outcome: failure(true),
    };
    store
        .transition(transitions(
            vec![
                finish(ready[0].id, 1, Outcome::Succeeded(vec![])),
                failed_once,
                finish(ready[2].id, 1, failure(false)),
            ],
            vec![],
        ))
        .await
        .expect("finish three");
    store
        .cancel(CancelTarget::Job(ready[4].id), "no".into())
        .await
        .expect("cancel");
    store.requeue(ready[2].id, None).await.expect("requeue");
    store
        .cancel(CancelTarget::Job(ready[2].id), "again".into())
        .await
        .expect("cancel the requeued");

    let kept = store.queue_counts().await.expect("counts");
    assert_eq!(kept, counted(store).await);
    assert_eq!(
        (kept[0].queued, kept[0].running, kept[0].succeeded),
        (2, 1, 1),
        "queue a: 1 never started and 1 retrying; 1 running; 1 succeeded"
    );
    assert_eq!(kept[0].cancelled, 1 + 1);

    // Pruning and deleting take jobs out of the counts.
    prune_until_done(store, prune_all(60_000, 500, vec![])).await;
    let after_prune = store.queue_counts().await.expect("counts");
    assert_eq!(after_prune, counted(store).await);
    assert_eq!(after_prune[0].succeeded + after_prune[0].cancelled, 0);
    assert_eq!(after_prune[1].queued, 2, "queue b is untouched");
}

/// Counts of what was undone stay as they were, and admission counts what the same batch
/// queued before: five submits at once into a tenant and a key that admit three, and a
/// submit refused after storing its first job, leave the counts equal to the jobs.
async fn counts_hold_through_undone_and_concurrent_submits(b: Backend) {
    let store = &*b.store;
    // Admission looks once before any limit exists; the limits set next still hold.
    submit(store, vec![new_job("b")], None).await;
    for scope in ["tenant:t", "key:k"] {
        store
            .set_quota(Quota {
                scope: scope.into(),
                max_queued: Some(3),
                ..Default::default()
            })
            .await
            .expect("quota");
    }
    let scoped = |key: Option<&str>| NewJob {
        tenant_id: Some("t".into()),
        concurrency_key: key.map(Into::into),
        ..new_job("a")
    };
    let attempts = (0..5).map(|i| {
        store.submit(submit_of(
            Origin::Submit,
            vec![scoped((i % 2 == 0).then_some("k"))],
        ))
    });
    // Three fit, whichever they are (a pool of connections takes them in any order).
    let results = futures::future::join_all(attempts).await;
    let stored: Vec<usize> = (0..results.len()).filter(|i| results[*i].is_ok()).collect();
    assert_eq!(stored.len(), 3, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(_) | Err(Error::QueueFull { .. }))),
        "{results:?}"
    );
    let keyed = stored.iter().filter(|i| *i % 2 == 0).count() as u64;
    // The first job is stored, then the second names no job: both are undone.
    let undone = store
        .submit(submit_of(
            Origin::Batch,
            vec![
                new_job("b"),
                NewJob {
                    depends_on: vec![JobId::new()],
                    ..new_job("b")
                },
            ],
        ))
        .await;
    assert!(
        matches!(undone, Err(Error::InvalidArgument { .. })),
        "{undone:?}"
    );
    let kept = store.queue_counts().await.expect("counts");
    assert_eq!(kept, counted(store).await);
    assert_eq!((kept[0].queued, kept[1].queued), (3, 1));
    assert_eq!(queued_in(store, "tenant:t").await, Some(3));
    assert_eq!(
        queued_in(store, "key:k").await,
        Some(keyed),
        "every other one carries the key"
    );

    // Starting one takes it out of its tenant's queued jobs, and a fourth then fits.
    let ready = store.recover().await.expect("recover").ready;
    let queued_a = ready
        .iter()
        .find(|r| r.queue == "a")
        .expect("a job of queue a");
    store
        .transition(transitions(vec![], vec![start(queued_a)]))
        .await
        .expect("start one");
    submit(store, vec![scoped(None)], None).await;
    assert_eq!(queued_in(store, "tenant:t").await, Some(3));
    assert_eq!(
        store.queue_counts().await.expect("counts"),
        counted(store).await
    );
}

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            #[tokio::test]
            async fn counts_hold_through_undone_and_concurrent_submits() {
                super::counts_hold_through_undone_and_concurrent_submits(super::$backend().await)
                    .await;
            }
            #[tokio::test]
            async fn queue_counts_follow_every_change() {
                super::queue_counts_follow_every_change(super::$backend().await).await;
            }
            #[tokio::test]
            async fn the_console_counts_ends_queues_and_dead_letters() {
                super::the_console_counts_ends_queues_and_dead_letters(super::$backend().await)
                    .await;
            }
            #[tokio::test]
            async fn bulk_actions_step_through_a_filter() {
                super::bulk_actions_step_through_a_filter(super::$backend().await).await;
            }
            #[tokio::test]
            async fn a_job_moves_through_its_states() {
                super::a_job_moves_through_its_states(super::$backend().await).await;
            }
            #[tokio::test]
            async fn stale_attempts_are_fenced_out() {
                super::stale_attempts_are_fenced_out(super::$backend().await).await;
            }
            #[tokio::test]
            async fn idempotency_keys_return_the_first_job() {
                super::idempotency_keys_return_the_first_job(super::$backend().await).await;
            }
            #[tokio::test]
            async fn admission_refuses_past_max_queued() {
                super::admission_refuses_past_max_queued(super::$backend().await).await;
            }
            #[tokio::test]
            async fn group_events_follow_each_end() {
                super::group_events_follow_each_end(super::$backend().await).await;
            }
            #[tokio::test]
            async fn cancels_reach_dependents_and_fence_running_attempts() {
                super::cancels_reach_dependents_and_fence_running_attempts(super::$backend().await)
                    .await;
            }
            #[tokio::test]
            async fn each_run_takes_a_new_epoch_and_attempts_keep_theirs() {
                super::each_run_takes_a_new_epoch_and_attempts_keep_theirs(super::$backend().await)
                    .await;
            }

            #[tokio::test]
            async fn a_restart_keeps_what_was_running_for_its_worker() {
                super::a_restart_keeps_what_was_running_for_its_worker(super::$backend().await)
                    .await;
            }
            #[tokio::test]
            async fn control_survives_a_restart() {
                super::control_survives_a_restart(super::$backend().await).await;
            }
            #[tokio::test]
            async fn keys_bind_for_a_window_or_while_their_job_is_live() {
                super::keys_bind_for_a_window_or_while_their_job_is_live(super::$backend().await)
                    .await;
            }
            #[tokio::test]
            async fn tenants_name_only_their_own_jobs_and_groups() {
                super::tenants_name_only_their_own_jobs_and_groups(super::$backend().await).await;
            }
            #[tokio::test]
            async fn schedules_fire_each_tick_once() {
                super::schedules_fire_each_tick_once(super::$backend().await).await;
            }
            #[tokio::test]
            async fn a_refused_fire_is_recorded() {
                super::a_refused_fire_is_recorded(super::$backend().await).await;
            }
            #[tokio::test]
            async fn progress_is_fenced_and_its_checkpoint_reaches_the_retry() {
                super::progress_is_fenced_and_its_checkpoint_reaches_the_retry(
                    super::$backend().await,
                )
                .await;
            }
            #[tokio::test]
            async fn children_end_with_their_parents_attempt() {
                super::children_end_with_their_parents_attempt(super::$backend().await).await;
            }
            #[tokio::test]
            async fn a_waiting_job_expires_at_its_deadline() {
                super::a_waiting_job_expires_at_its_deadline(super::$backend().await).await;
            }
            #[tokio::test]
            async fn a_queues_attempt_timeout_bounds_jobs_without_their_own() {
                super::a_queues_attempt_timeout_bounds_jobs_without_their_own(
                    super::$backend().await,
                )
                .await;
            }
            #[tokio::test]
            async fn prune_removes_finished_jobs_past_their_cutoff() {
                super::prune_removes_finished_jobs_past_their_cutoff(super::$backend().await).await;
            }
            #[tokio::test]
            async fn prune_keeps_dependencies_and_live_or_watched_groups() {
                super::prune_keeps_dependencies_and_live_or_watched_groups(super::$backend().await)
                    .await;
            }
            #[tokio::test]
            async fn prune_removes_expired_keys() {
                super::prune_removes_expired_keys(super::$backend().await).await;
            }
        }
    };
}

suite!(sqlite);
suite!(postgres);
