//! The scheduler's core, driven in-process on paused time: the commits a store would make are
//! played back by hand, so each decision can be checked on its own.

use std::{collections::HashMap, time::Duration};

use super::{
    attempts::Phase,
    core::{Core, Effect, Held, Token},
    lanes::tests::{job, test_id},
    sessions::tests::info,
    timers::Clock,
};
use crate::{
    domain::{Dispatch, JobId, Outcome, Quota, ReadyJob},
    store::{RetryPolicy, Started, TransitionOutcome, Transitions},
};

const RETRY: RetryPolicy = RetryPolicy {
    base_ms: 10,
    cap_ms: 100,
};
const EPOCH_MS: i64 = 1_700_000_000_000;

fn core() -> Core {
    Core::new(Clock::tokio(EPOCH_MS))
}

/// The starts of this round, as (job, session).
fn picked(core: &mut Core) -> Vec<(JobId, u64)> {
    core.pick();
    let ops = core.plan(RETRY);
    let starts = ops.as_ref().map(|o| o.starts.clone()).unwrap_or_default();
    if let Some(ops) = ops {
        commit(core, ops, None);
    }
    starts.into_iter().map(|s| (s.job_id, s.session)).collect()
}

/// Plays back what the store would commit for `ops`: every start happens, with attempts
/// ending at `ends_ms` (if set).
fn commit(core: &mut Core, ops: Transitions, ends_ms: Option<i64>) {
    let started = ops
        .starts
        .iter()
        .map(|s| Started {
            session: s.session,
            dispatch: dispatch(s.job_id, s.attempt, ends_ms),
            queued_since_ms: EPOCH_MS,
        })
        .collect();
    core.settle(TransitionOutcome {
        started,
        ..Default::default()
    });
}

fn dispatch(job_id: JobId, attempt: u32, ends_ms: Option<i64>) -> Dispatch {
    Dispatch {
        job_id,
        attempt,
        epoch: 0,
        queue: "q".into(),
        kind: "k".into(),
        payload: vec![],
        ends_ms,
        traceparent: String::new(),
        tracestate: String::new(),
        dependency_outputs: vec![],
        labels: Default::default(),
        group_id: None,
        tenant_id: None,
        max_attempts: 3,
        checkpoint: None,
    }
}

fn limit(scope: &str, max: u32) -> Quota {
    Quota {
        scope: scope.into(),
        max_in_flight: Some(max),
        ..Default::default()
    }
}

fn keyed(id: u128, key: &str, weight: u32) -> ReadyJob {
    ReadyJob {
        concurrency_key: Some(key.into()),
        weight,
        ..job(id, "q", 0, id as i64)
    }
}

#[tokio::test(start_paused = true)]
async fn a_saturated_key_waits_without_holding_up_other_keys() {
    let mut core = core();
    core.set_quota(&limit("key:busy", 1));
    core.enqueue(keyed(1, "busy", 1));
    core.enqueue(keyed(2, "busy", 1));
    core.enqueue(keyed(3, "free", 1));
    core.connect(info(1, &["q"], &[], 10), &[]);
    let mut ids: Vec<JobId> = picked(&mut core).into_iter().map(|(id, _)| id).collect();
    ids.sort();
    assert_eq!(
        ids,
        [test_id(1), test_id(3)],
        "one permit of key:busy, and the free key goes"
    );
    assert_eq!(core.held("key:busy"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stopped_attempt_keeps_its_permits_until_its_handler_returns() {
    let mut core = core();
    core.set_quota(&limit("key:k", 1));
    core.enqueue(keyed(1, "k", 1));
    core.enqueue(keyed(2, "k", 1));
    core.connect(info(1, &["q"], &[], 2), &[]);
    assert_eq!(picked(&mut core), [(test_id(1), 1)]);
    // Cancelled in the store: the worker is told to stop, the permit stays held.
    core.stop_ended(test_id(1), 1, "cancelled");
    assert!(matches!(
        core.take_effects().as_slice(),
        [Effect::Assign { .. }, Effect::Stop { attempt: 1, .. }]
    ));
    assert!(picked(&mut core).is_empty(), "its handler may still run");
    // Its worker reports the stopped attempt: refused, and now the permit is free.
    core.result(1, token(1, 1), Outcome::Succeeded(vec![]));
    assert!(matches!(
        core.take_effects().as_slice(),
        [Effect::Refused { attempt: 1, .. }]
    ));
    assert_eq!(picked(&mut core), [(test_id(2), 1)]);
}

/// A cancel that commits while the attempt's start is still committing (two rounds in
/// flight) reaches the core before the start settles: the attempt is never sent, and its
/// slot and permit come back.
#[tokio::test(start_paused = true)]
async fn an_attempt_cancelled_while_its_start_commits_is_never_sent() {
    let mut core = core();
    core.set_quota(&limit("key:k", 1));
    core.enqueue(keyed(1, "k", 1));
    core.enqueue(keyed(2, "k", 1));
    core.connect(info(1, &["q"], &[], 1), &[]);
    core.pick();
    let ops = core.plan(RETRY).expect("a start");
    assert_eq!(ops.starts[0].job_id, test_id(1));
    core.stop_ended(test_id(1), 1, "cancelled");
    assert!(core.take_effects().is_empty(), "nothing to stop yet");
    commit(&mut core, ops, None);
    assert!(
        core.take_effects().is_empty(),
        "the cancelled attempt is not assigned"
    );
    assert_eq!(core.held("key:k"), 0);
    // The slot and the permit serve the next job.
    assert_eq!(picked(&mut core), [(test_id(2), 1)]);
    assert!(matches!(
        core.take_effects().as_slice(),
        [Effect::Assign { .. }]
    ));
}

#[tokio::test(start_paused = true)]
async fn tenants_are_served_round_robin_within_a_queue() {
    let mut core = core();
    for i in 0..100 {
        core.enqueue(ReadyJob {
            tenant_id: Some("a".into()),
            ..job(i, "q", 0, i as i64)
        });
    }
    for i in 0..3 {
        core.enqueue(ReadyJob {
            tenant_id: Some("b".into()),
            ..job(1000 + i, "q", 0, 100 + i as i64)
        });
    }
    core.connect(info(1, &["q"], &[], 6), &[]);
    let b = picked(&mut core)
        .iter()
        .filter(|(id, _)| [1000, 1001, 1002].map(test_id).contains(id))
        .count();
    assert_eq!(b, 3, "tenant b's three jobs go in the first six");
}

#[tokio::test(start_paused = true)]
async fn a_paused_queue_dispatches_nothing() {
    let mut core = core();
    core.enqueue(job(1, "q", 0, 1));
    core.pause("q".into(), true);
    core.connect(info(1, &["q"], &[], 1), &[]);
    assert!(picked(&mut core).is_empty());
    core.pause("q".into(), false);
    assert_eq!(picked(&mut core).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn never_more_than_the_credits_and_spread_over_sessions() {
    let mut core = core();
    for i in 0..10 {
        core.enqueue(job(i, "q", 0, i as i64));
    }
    core.connect(info(1, &["q"], &[], 2), &[]);
    core.connect(info(2, &["q"], &[], 3), &[]);
    let starts = picked(&mut core);
    assert_eq!(starts.len(), 5);
    assert_eq!(starts.iter().filter(|(_, s)| *s == 1).count(), 2);
    assert_eq!(starts.iter().filter(|(_, s)| *s == 2).count(), 3);
    assert!(picked(&mut core).is_empty(), "no credit left");
    assert!(!core.can_dispatch());
    // A credit beyond the free slots gives nothing.
    core.credit(1, 5);
    assert!(picked(&mut core).is_empty());
}

#[tokio::test(start_paused = true)]
async fn jobs_go_only_to_sessions_that_serve_their_queue_and_kind() {
    let mut core = core();
    core.enqueue(ReadyJob {
        kind: "sha256".into(),
        ..job(1, "q", 0, 1)
    });
    core.enqueue(job(2, "other", 0, 2));
    core.connect(info(1, &["q"], &["echo"], 5), &[]);
    assert!(picked(&mut core).is_empty());
    core.connect(info(2, &["q"], &["sha256"], 5), &[]);
    assert_eq!(picked(&mut core), [(test_id(1), 2)]);
}

#[tokio::test(start_paused = true)]
async fn results_from_a_stale_attempt_are_refused() {
    let mut core = core();
    core.enqueue(job(1, "q", 0, 1));
    core.connect(info(1, &["q"], &[], 1), &[]);
    picked(&mut core);
    assert!(matches!(
        core.take_effects().as_slice(),
        [Effect::Assign { session: 1, dispatch, .. }] if dispatch.job_id == test_id(1)
    ));
    core.result(1, token(1, 1), Outcome::Succeeded(vec![]));
    let ops = core.plan(RETRY).expect("the result is to be committed");
    assert_eq!(ops.finishes.len(), 1);
    // A second result for attempt 1, one for an attempt never given, and one from another
    // session are stale.
    core.result(1, token(1, 1), Outcome::Succeeded(vec![]));
    core.result(1, token(1, 2), Outcome::Succeeded(vec![]));
    core.result(9, token(1, 1), Outcome::Succeeded(vec![]));
    assert_eq!(core.take_effects().len(), 3);
    assert!(core.plan(RETRY).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_lost_session_gives_its_jobs_back_as_lost_attempts() {
    let mut core = core();
    core.enqueue(job(1, "q", 0, 1));
    core.connect(info(1, &["q"], &[], 1), &[]);
    picked(&mut core);
    core.drop_session(1, "test");
    let ops = core.plan(RETRY).expect("a lost attempt to commit");
    assert!(matches!(
        ops.finishes.as_slice(),
        [crate::store::Finish {
            attempt: 1,
            outcome: Outcome::Lost(_),
            ..
        }]
    ));
    assert_eq!(core.parts().0.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_session_that_dies_while_its_start_commits_gives_the_job_back_unblamed() {
    let mut core = core();
    core.enqueue(job(1, "q", 0, 1));
    core.connect(info(1, &["q"], &[], 1), &[]);
    core.pick();
    let ops = core.plan(RETRY).expect("a start");
    core.drop_session(1, "gone");
    commit(&mut core, ops, None);
    let ops = core.plan(RETRY).expect("a release");
    assert!(matches!(
        ops.finishes.as_slice(),
        [crate::store::Finish {
            outcome: Outcome::Released(_),
            ..
        }]
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failed_commit_puts_its_picks_back() {
    let mut core = core();
    core.set_quota(&limit("queue:q", 1));
    core.enqueue(job(1, "q", 0, 1));
    core.connect(info(1, &["q"], &[], 1), &[]);
    core.pick();
    let ops = core.plan(RETRY).expect("a start");
    assert_eq!(core.held("queue:q"), 1);
    core.unplan(ops);
    assert_eq!(core.held("queue:q"), 0, "the permit came back");
    assert_eq!(core.queued(), 1, "the job is queued again");
    assert_eq!(picked(&mut core), [(test_id(1), 1)], "and its credit too");
}

#[tokio::test(start_paused = true)]
async fn delayed_jobs_become_ready_on_time() {
    let mut core = core();
    core.enqueue(ReadyJob {
        run_at_ms: EPOCH_MS + 60_000,
        ..job(1, "q", 0, 1)
    });
    core.connect(info(1, &["q"], &[], 1), &[]);
    assert!(picked(&mut core).is_empty());
    let wake = core.next_wake().expect("a timer");
    tokio::time::sleep_until(wake - Duration::from_millis(1)).await;
    core.tick();
    assert!(picked(&mut core).is_empty(), "not a millisecond early");
    tokio::time::sleep_until(wake).await;
    core.tick();
    assert_eq!(picked(&mut core), [(test_id(1), 1)]);
}

#[tokio::test(start_paused = true)]
async fn queued_jobs_past_their_deadline_expire_and_are_never_picked() {
    let mut core = core();
    core.enqueue(ReadyJob {
        deadline_ms: Some(EPOCH_MS + 1_000),
        ..job(1, "q", 0, 1)
    });
    core.enqueue(ReadyJob {
        deadline_ms: Some(EPOCH_MS + 60_000),
        ..job(2, "q", 0, 2)
    });
    tokio::time::advance(Duration::from_millis(1_000)).await;
    core.tick();
    core.connect(info(1, &["q"], &[], 5), &[]);
    core.pick();
    let ops = core.plan(RETRY).expect("an expiry and a start");
    assert_eq!(ops.expire, [test_id(1)]);
    assert_eq!(ops.starts.len(), 1);
    assert_eq!(ops.starts[0].job_id, test_id(2));
}

#[tokio::test(start_paused = true)]
async fn a_running_attempt_past_its_end_is_stopped_on_its_worker() {
    let mut core = core();
    core.enqueue(ReadyJob {
        deadline_ms: Some(EPOCH_MS + 1_000),
        ..job(1, "q", 0, 1)
    });
    core.connect(info(1, &["q"], &[], 1), &[]);
    core.pick();
    let ops = core.plan(RETRY).expect("a start");
    commit(&mut core, ops, Some(EPOCH_MS + 1_000));
    core.take_effects();
    tokio::time::advance(Duration::from_millis(999)).await;
    core.tick();
    assert!(core.plan(RETRY).is_none(), "not yet");
    tokio::time::advance(Duration::from_millis(1)).await;
    core.tick();
    let ops = core.plan(RETRY).expect("the attempt ends");
    assert!(matches!(
        ops.finishes.as_slice(),
        [crate::store::Finish {
            attempt: 1,
            outcome: Outcome::Expired,
            ..
        }]
    ));
    assert!(matches!(
        core.take_effects().as_slice(),
        [Effect::Stop { attempt: 1, .. }]
    ));
    // Its late result is stale.
    core.result(1, token(1, 1), Outcome::Succeeded(vec![]));
    assert!(core.plan(RETRY).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_wakes_the_scheduler_when_its_next_token_is_due() {
    let mut core = core();
    core.set_quota(&Quota {
        scope: "queue:q".into(),
        rate_per_second: Some(10.0),
        burst: Some(1),
        ..Default::default()
    });
    for i in 0..3 {
        core.enqueue(job(i, "q", 0, i as i64));
    }
    core.connect(info(1, &["q"], &[], 10), &[]);
    assert_eq!(picked(&mut core).len(), 1, "the burst");
    assert!(picked(&mut core).is_empty());
    let wake = core.next_wake().expect("a wake for the next token");
    assert_eq!(
        wake - tokio::time::Instant::now(),
        Duration::from_millis(100)
    );
    tokio::time::sleep_until(wake).await;
    assert_eq!(picked(&mut core).len(), 1, "one token per 100 ms at 10/s");
}

/// Random schedules of starts, results, losses, cancels, deadlines and limit changes: the
/// attempts table and the permits never disagree, a pick never takes a scope past its limit,
/// no job is both queued and started, and a session never has more out than its slots.
#[tokio::test(start_paused = true)]
async fn the_attempts_table_and_the_permits_agree_over_random_schedules() {
    let mut rng = fastrand::Rng::with_seed(11);
    for _round in 0..60 {
        let mut core = core();
        let mut limits: HashMap<String, u32> = HashMap::new();
        let mut next_job: u128 = 1;
        let mut next_session = 1u64;
        let mut sessions: Vec<u64> = Vec::new();
        for _ in 0..2 {
            core.connect(info(next_session, &["q"], &[], rng.u32(1..5)), &[]);
            sessions.push(next_session);
            next_session += 1;
        }
        for _step in 0..150 {
            let held_before: HashMap<String, u32> = ["key:a", "key:b", "tenant:t"]
                .iter()
                .map(|s| (s.to_string(), core.held(s)))
                .collect();
            match rng.u8(0..10) {
                // Submit.
                0 | 1 => {
                    let key = ["a", "b"][rng.usize(..2)];
                    let deadline = rng.bool().then(|| core.now_ms() + rng.i64(50..2_000));
                    core.enqueue(ReadyJob {
                        deadline_ms: deadline,
                        tenant_id: rng.bool().then(|| "t".to_string()),
                        ..keyed(next_job, key, rng.u32(1..3))
                    });
                    next_job += 1;
                }
                // A round: pick, and the store commits (or fails to).
                2 | 3 => {
                    core.tick();
                    core.pick();
                    if let Some(ops) = core.plan(RETRY) {
                        if rng.u8(0..8) == 0 {
                            core.unplan(ops);
                        } else {
                            let ends = Some(core.now_ms() + rng.i64(10..500));
                            commit(&mut core, ops, ends);
                        }
                    }
                }
                // A worker reports one of its attempts (maybe a stale one).
                4 | 5 => {
                    if let Some((key, session)) = any_attempt(&core, &mut rng) {
                        let outcome = if rng.bool() {
                            Outcome::Succeeded(vec![])
                        } else {
                            Outcome::Failed {
                                message: "x".into(),
                                retryable: true,
                                retry_after_ms: None,
                                cancelled: false,
                            }
                        };
                        core.result(
                            session,
                            Token {
                                job_id: key.0,
                                attempt: key.1,
                                epoch: 0,
                            },
                            outcome,
                        );
                        core.credit(session, 1);
                    }
                }
                // A worker is lost; another connects.
                6 => {
                    if !sessions.is_empty() {
                        let gone = sessions.swap_remove(rng.usize(..sessions.len()));
                        core.drop_session(gone, "lost");
                    }
                    core.connect(info(next_session, &["q"], &[], rng.u32(1..5)), &[]);
                    sessions.push(next_session);
                    next_session += 1;
                }
                // A cancel reaches a running attempt.
                7 => {
                    if let Some((key, _)) = any_attempt(&core, &mut rng) {
                        core.stop_ended(key.0, key.1, "cancelled");
                    }
                }
                // Time passes: deadlines and attempt ends fire.
                8 => {
                    tokio::time::advance(Duration::from_millis(rng.u64(1..400))).await;
                    core.tick();
                }
                // A limit changes at run time.
                _ => {
                    let scope = ["key:a", "key:b", "tenant:t"][rng.usize(..3)].to_string();
                    let max = rng.u32(1..4);
                    core.set_quota(&limit(&scope, max));
                    limits.insert(scope, max);
                }
            }
            // Whatever finishes were decided are committed (the store's part is not under test).
            if let Some(ops) = core.plan(RETRY) {
                let ends = Some(core.now_ms() + 100);
                commit(&mut core, ops, ends);
            }
            core.take_effects();
            check(&core, &limits, &held_before);
        }
    }
}

/// Some attempt in the table, with the session holding it.
fn any_attempt(core: &Core, rng: &mut fastrand::Rng) -> Option<((JobId, u32), u64)> {
    let mut all: Vec<_> = core
        .parts()
        .0
        .iter()
        .map(|(k, e)| (*k, e.session))
        .collect();
    all.sort();
    (!all.is_empty()).then(|| all[rng.usize(..all.len())])
}

fn check(core: &Core, limits: &HashMap<String, u32>, held_before: &HashMap<String, u32>) {
    let (attempts, quotas, sessions) = core.parts();
    let mut expected: HashMap<String, u32> = HashMap::new();
    let mut busy: HashMap<u64, u32> = HashMap::new();
    for (key, entry) in attempts.iter() {
        assert_eq!(
            key.1,
            entry.job.attempt + 1,
            "an entry is its job's next attempt"
        );
        for scope in entry.job.scopes() {
            *expected.entry(scope).or_default() += entry.job.weight;
        }
        if entry.phase != Phase::Stopping {
            *busy.entry(entry.session).or_default() += 1;
            assert!(!core.is_queued(key.0), "a started job is not queued too");
        }
    }
    for scope in ["queue:q", "key:a", "key:b", "tenant:t"] {
        let want = expected.get(scope).copied().unwrap_or(0);
        assert_eq!(
            quotas.held(scope),
            want,
            "permits of {scope} match the table"
        );
    }
    for (scope, max) in limits {
        let (before, now) = (
            held_before.get(scope).copied().unwrap_or(0),
            quotas.held(scope),
        );
        assert!(
            now <= before.max(*max),
            "{scope}: a pick took it to {now} past its limit {max}"
        );
    }
    for session in sessions.iter() {
        let id = session.info.id;
        assert_eq!(attempts.busy(id), busy.get(&id).copied().unwrap_or(0));
        assert!(
            session.credits + attempts.busy(id) <= session.info.slots,
            "session {id} has more out than its slots"
        );
    }
}

// --- attempts that outlive their stream ---------------------------------------------------

const GRACE: Duration = Duration::from_secs(5);

fn graced() -> Core {
    let mut core = core();
    core.set_reconnect_grace(GRACE);
    core
}

/// A worker's message about attempt `attempt` of job `id`, from a worker that sends no epoch.
fn token(id: u128, attempt: u32) -> Token {
    Token {
        job_id: test_id(id),
        attempt,
        epoch: 0,
    }
}

/// An attempt a reconnecting worker holds, from a worker that sends no epoch.
fn holds(id: u128, attempt: u32, finished: bool) -> Held {
    Held {
        key: (test_id(id), attempt),
        epoch: 0,
        finished,
    }
}

/// Session `id` of worker `w1`.
fn again(id: u64, slots: u32) -> crate::scheduler::SessionInfo {
    crate::scheduler::SessionInfo {
        id,
        ..info(1, &["q"], &[], slots)
    }
}

fn finishes(core: &mut Core) -> Vec<(JobId, u32, Outcome)> {
    core.plan(RETRY)
        .map(|ops| {
            ops.finishes
                .into_iter()
                .map(|f| (f.job_id, f.attempt, f.outcome))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_lost_stream_keeps_its_attempts_for_their_worker_to_reclaim() {
    let mut core = graced();
    core.set_quota(&limit("queue:q", 1));
    core.enqueue(job(1, "q", 0, 1));
    core.enqueue(job(2, "q", 0, 2));
    core.connect(info(1, &["q"], &[], 2), &[]);
    assert_eq!(picked(&mut core), [(test_id(1), 1)]);
    core.drop_session(1, "the stream broke");
    assert!(finishes(&mut core).is_empty(), "nothing is lost yet");
    assert_eq!(
        core.held("queue:q"),
        1,
        "it keeps its permit: it may still run"
    );
    tokio::time::advance(GRACE / 2).await;
    core.tick();
    let adopted = core.connect(again(2, 2), &[holds(1, 1, false)]);
    assert_eq!(adopted, [holds(1, 1, false)]);
    assert!(picked(&mut core).is_empty(), "the permit is still its");
    tokio::time::advance(GRACE).await;
    core.tick();
    assert!(finishes(&mut core).is_empty(), "adopted: no grace runs out");
    core.result(2, token(1, 1), Outcome::Succeeded(b"done".to_vec()));
    assert!(matches!(
        finishes(&mut core).as_slice(),
        [(_, 1, Outcome::Succeeded(_))]
    ));
    assert_eq!(core.held("queue:q"), 0);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_nobody_reclaims_within_the_grace_is_lost_and_its_late_result_refused() {
    let mut core = graced();
    core.enqueue(job(1, "q", 0, 1));
    core.connect(info(1, &["q"], &[], 1), &[]);
    picked(&mut core);
    core.take_effects();
    core.drop_session(1, "gone");
    tokio::time::advance(GRACE - Duration::from_millis(1)).await;
    core.tick();
    assert!(finishes(&mut core).is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(
        core.next_wake()
            .is_some_and(|w| w <= tokio::time::Instant::now())
    );
    core.tick();
    assert!(matches!(
        finishes(&mut core).as_slice(),
        [(_, 1, Outcome::Lost(_))]
    ));
    // Too late: the worker comes back with it and its result.
    let adopted = core.connect(again(2, 1), &[holds(1, 1, true)]);
    assert!(adopted.is_empty(), "replaced, not re-adopted");
    core.result(2, token(1, 1), Outcome::Succeeded(vec![]));
    assert!(matches!(
        core.take_effects().as_slice(),
        [.., Effect::Refused { attempt: 1, .. }]
    ));
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_comes_back_without_an_attempt_loses_it_at_once() {
    let mut core = graced();
    core.enqueue(job(1, "q", 0, 1));
    core.enqueue(job(2, "q", 0, 2));
    core.connect(info(1, &["q"], &[], 2), &[]);
    assert_eq!(picked(&mut core).len(), 2);
    core.drop_session(1, "gone");
    let adopted = core.connect(again(2, 2), &[holds(2, 1, false)]);
    assert_eq!(adopted, [holds(2, 1, false)]);
    let lost = finishes(&mut core);
    assert!(
        matches!(lost.as_slice(), [(id, 1, Outcome::Lost(_))] if *id == test_id(1)),
        "{lost:?}"
    );
    // Another worker cannot claim what was given to w1.
    core.drop_session(2, "gone again");
    let thief = core.connect(info(3, &["q"], &[], 2), &[holds(2, 1, false)]);
    assert!(thief.is_empty());
}

#[tokio::test(start_paused = true)]
async fn credit_leaves_out_the_held_attempts_still_running() {
    let mut core = graced();
    for i in 1..=6 {
        core.enqueue(job(i, "q", 0, i as i64));
    }
    core.connect(info(1, &["q"], &[], 4), &[]);
    assert_eq!(picked(&mut core).len(), 4);
    core.drop_session(1, "blip");
    let held: Vec<_> = (1..=4).map(|i| holds(i, 1, i == 4)).collect();
    assert_eq!(core.connect(again(2, 4), &held).len(), 4);
    // Three handlers still run: one slot is free.
    assert_eq!(picked(&mut core).len(), 1);
    let (attempts, _, sessions) = core.parts();
    assert_eq!(attempts.busy(2), 5);
    assert_eq!(sessions.get(2).map(|s| s.credits), Some(0));
}

#[tokio::test(start_paused = true)]
async fn attempts_running_at_a_restart_wait_for_their_workers_then_are_interrupted() {
    let mut core = graced();
    core.set_quota(&limit("queue:q", 2));
    let running = |id: u128| crate::domain::RunningAttempt {
        job: job(id, "q", 0, id as i64),
        attempt: 1,
        worker_id: "w1".into(),
        epoch: 0,
        ends_ms: None,
    };
    core.recovered(vec![running(1), running(2)]);
    core.enqueue(job(3, "q", 0, 3));
    assert_eq!(
        core.held("queue:q"),
        2,
        "recovered attempts hold their permits"
    );
    core.connect(info(9, &["q"], &[], 4), &[]);
    assert!(
        picked(&mut core).is_empty(),
        "the quota is full of what still runs"
    );
    let adopted = core.connect(again(2, 4), &[holds(1, 1, false)]);
    assert_eq!(adopted, [holds(1, 1, false)]);
    let ended = finishes(&mut core);
    assert!(
        matches!(ended.as_slice(), [(id, 1, Outcome::Interrupted(_))] if *id == test_id(2)),
        "w1 came back without job 2: {ended:?}"
    );
}

/// After a crash that lost a start, the next run hands the same attempt number out again
/// under a higher epoch: a worker that holds the number from the lost start, or from a run
/// before the one that really started the attempt, holds another attempt and is not adopted.
#[tokio::test(start_paused = true)]
async fn a_held_attempt_is_adopted_only_with_the_epoch_it_was_started_in() {
    // Run 7 found job 1's first attempt running, started by run 5 on w1.
    let restarted = || {
        let mut core = graced();
        core.set_epoch(7);
        core.recovered(vec![crate::domain::RunningAttempt {
            job: job(1, "q", 0, 1),
            attempt: 1,
            worker_id: "w1".into(),
            epoch: 5,
            ends_ms: None,
        }]);
        core
    };
    let mut core = restarted();
    let from = |epoch| Held {
        key: (test_id(1), 1),
        epoch,
        finished: false,
    };
    assert!(
        core.connect(again(2, 1), &[from(6)]).is_empty(),
        "started in epoch 5, not 6"
    );
    let ended = finishes(&mut core);
    assert!(
        matches!(ended.as_slice(), [(_, 1, Outcome::Interrupted(_))]),
        "{ended:?}"
    );

    let mut core = restarted();
    assert_eq!(core.connect(again(2, 1), &[from(5)]), [from(5)]);
    assert!(finishes(&mut core).is_empty());
}

/// A report under the same number from another run is about another attempt (a start a
/// crash lost): refused, and the attempt this run started goes on.
#[tokio::test(start_paused = true)]
async fn a_report_from_another_epoch_is_refused_and_changes_nothing() {
    let mut core = graced();
    core.set_epoch(7);
    core.enqueue(job(1, "q", 0, 1));
    core.connect(info(1, &["q"], &[], 1), &[]);
    assert_eq!(picked(&mut core).len(), 1);
    core.take_effects();
    let of = |epoch| Token {
        job_id: test_id(1),
        attempt: 1,
        epoch,
    };
    core.result(1, of(6), Outcome::Succeeded(b"stale".to_vec()));
    core.release(1, of(6));
    assert!(matches!(
        core.take_effects().as_slice(),
        [Effect::Refused { .. }, Effect::Refused { .. }]
    ));
    assert!(finishes(&mut core).is_empty(), "nothing ended");
    assert_eq!(
        core.held("queue:q"),
        1,
        "the attempt still holds its permit"
    );
    core.result(1, of(7), Outcome::Succeeded(b"fresh".to_vec()));
    assert!(matches!(
        finishes(&mut core).as_slice(),
        [(_, 1, Outcome::Succeeded(out))] if out == b"fresh"
    ));
}

/// What a run starts carries its epoch to the store.
#[tokio::test(start_paused = true)]
async fn starts_carry_the_runs_epoch() {
    let mut core = graced();
    core.set_epoch(42);
    core.enqueue(job(1, "q", 0, 1));
    core.connect(info(1, &["q"], &[], 1), &[]);
    core.pick();
    let ops = core.plan(RETRY).expect("a start");
    assert_eq!(ops.starts.iter().map(|s| s.epoch).collect::<Vec<_>>(), [42]);
}

#[tokio::test(start_paused = true)]
async fn a_recovered_attempt_nobody_reclaims_is_interrupted_when_the_window_closes() {
    let mut core = graced();
    core.recovered(vec![crate::domain::RunningAttempt {
        job: job(1, "q", 0, 1),
        attempt: 2,
        worker_id: "gone".into(),
        epoch: 0,
        ends_ms: None,
    }]);
    core.tick();
    assert!(finishes(&mut core).is_empty());
    tokio::time::advance(GRACE).await;
    core.tick();
    assert!(matches!(
        finishes(&mut core).as_slice(),
        [(_, 2, Outcome::Interrupted(_))]
    ));
}

#[tokio::test(start_paused = true)]
async fn a_detached_attempt_past_its_deadline_ends_without_waiting_for_its_worker() {
    let mut core = graced();
    core.enqueue(job(1, "q", 0, 1));
    core.connect(info(1, &["q"], &[], 1), &[]);
    core.pick();
    let ops = core.plan(RETRY).expect("a start");
    commit(&mut core, ops, Some(EPOCH_MS + 1_000));
    core.drop_session(1, "gone");
    tokio::time::advance(Duration::from_secs(1)).await;
    core.tick();
    assert!(matches!(
        finishes(&mut core).as_slice(),
        [(_, 1, Outcome::TimedOut | Outcome::Expired)]
    ));
    assert_eq!(core.parts().0.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_job_waiting_on_its_dependencies_expires_at_its_deadline() {
    let mut core = core();
    let deadline = EPOCH_MS + 1_000;
    for id in 1..=3 {
        core.wait(test_id(id), deadline);
    }
    // Job 2 becomes ready first (its deadline is then the lanes' to keep); job 3 is cancelled
    // while it waits.
    core.enqueue(ReadyJob {
        deadline_ms: Some(EPOCH_MS + 60_000),
        ..job(2, "q", 0, 2)
    });
    core.remove(test_id(3));
    // Job 4 was ready before its submit's answer reached the scheduler: no waiting timer.
    core.enqueue(job(4, "q", 0, 4));
    core.wait(test_id(4), deadline);
    assert_eq!(
        core.next_wake(),
        Some(tokio::time::Instant::now() + Duration::from_millis(1_000))
    );
    tokio::time::advance(Duration::from_millis(999)).await;
    core.tick();
    assert!(core.plan(RETRY).is_none(), "not a millisecond early");
    tokio::time::advance(Duration::from_millis(1)).await;
    core.tick();
    let ops = core.plan(RETRY).expect("an expiry");
    assert_eq!(ops.expire, [test_id(1)], "only the job still waiting");
    assert!(core.is_queued(test_id(2)) && core.is_queued(test_id(4)));
    assert_eq!(
        core.next_wake(),
        Some(tokio::time::Instant::now() + Duration::from_millis(59_000)),
        "what is left is job 2's own deadline in the lanes"
    );
}

/// The store ends an attempt of a job with no timeout of its own at its queue's default
/// (`Dispatch.ends_ms`); past it the scheduler stops it as TIMED_OUT, and the permits stay
/// held until its handler returns.
#[tokio::test(start_paused = true)]
async fn an_attempt_past_its_queues_timeout_is_stopped_and_its_permits_come_back_on_return() {
    let mut core = core();
    core.set_quota(&Quota {
        scope: "queue:q".into(),
        max_in_flight: Some(1),
        attempt_timeout_ms: Some(1_000),
        ..Default::default()
    });
    core.enqueue(job(1, "q", 0, 1));
    core.enqueue(job(2, "q", 0, 2));
    core.connect(info(1, &["q"], &[], 2), &[]);
    core.pick();
    let ops = core.plan(RETRY).expect("a start");
    assert_eq!(ops.starts.len(), 1, "one permit of queue:q");
    commit(&mut core, ops, Some(EPOCH_MS + 1_000));
    core.take_effects();
    tokio::time::advance(Duration::from_millis(1_000)).await;
    core.tick();
    let ops = core.plan(RETRY).expect("the attempt ends");
    assert!(matches!(
        ops.finishes.as_slice(),
        [crate::store::Finish {
            attempt: 1,
            outcome: Outcome::TimedOut,
            ..
        }]
    ));
    assert!(matches!(
        core.take_effects().as_slice(),
        [Effect::Stop { attempt: 1, reason, .. }] if reason.contains("timeout")
    ));
    core.settle(TransitionOutcome::default());
    assert_eq!(core.held("queue:q"), 1, "its handler may still run");
    assert!(picked(&mut core).is_empty());
    // The handler returns (cancelled): refused as stale, and the permit is back.
    core.result(
        1,
        token(1, 1),
        Outcome::Failed {
            message: "cancelled".into(),
            retryable: false,
            retry_after_ms: None,
            cancelled: true,
        },
    );
    assert!(matches!(
        core.take_effects().as_slice(),
        [Effect::Refused { attempt: 1, .. }]
    ));
    assert_eq!(core.held("queue:q"), 0);
    assert_eq!(picked(&mut core), [(test_id(2), 1)]);
}

#[tokio::test(start_paused = true)]
async fn a_job_handed_back_goes_back_to_its_place_not_behind_later_jobs() {
    let mut core = core();
    core.enqueue(job(1, "q", 0, 1));
    core.connect(info(1, &["q"], &[], 1), &[]);
    assert_eq!(picked(&mut core), [(test_id(1), 1)]);
    core.enqueue(job(2, "q", 0, 2));
    core.release(1, token(1, 1));
    core.plan(RETRY).expect("the release");
    // The store queues it again as due now.
    core.enqueue(ReadyJob {
        run_at_ms: EPOCH_MS,
        attempt: 1,
        ..job(1, "q", 0, 1)
    });
    core.credit(1, 1);
    assert_eq!(
        picked(&mut core),
        [(test_id(1), 1)],
        "submitted first, it runs first"
    );
}
