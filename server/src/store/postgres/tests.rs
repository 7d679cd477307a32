//! What the conformance suite cannot show, since it calls the store one call at a time: that
//! the locks standing in for SQLite's single writer hold when calls race (see `mod.rs`), and
//! that health follows a database that goes away.

use std::{sync::Arc, time::Duration};

use super::PostgresStore;
use crate::{
    domain::{JobState, Quota},
    error::{Error, StoreFault},
    store::{
        DbUrl, Durability, NewJob, Origin, Store, StoreConfig, Submit,
        conformance::{new_job, start, transitions},
    },
    telemetry::Metrics,
};

fn config(url: String) -> StoreConfig {
    StoreConfig {
        readers: 4,
        write_queue: 256,
        ..StoreConfig::for_tests(DbUrl::Postgres(url))
    }
}

async fn open() -> Arc<PostgresStore> {
    let url = switchyard_testkit::postgres::database().await;
    Arc::new(
        PostgresStore::open(&config(url), Metrics::new())
            .await
            .expect("open"),
    )
}

fn one(job: NewJob) -> Submit {
    Submit {
        origin: Origin::Submit,
        jobs: vec![job],
        group: None,
        scope: None,
        durability: Durability::BeforeReply,
    }
}

/// Submits racing with one idempotency key find one job: the first stores it, every other
/// is its duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_submits_of_one_key_store_one_job() {
    let store = open().await;
    let calls = (0..16).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let job = NewJob {
                idempotency_key: Some("once".into()),
                ..new_job("q")
            };
            store.submit(one(job)).await.expect("submit")
        })
    });
    let done = futures::future::join_all(calls).await;
    let done: Vec<_> = done
        .into_iter()
        .map(|d| d.expect("task")[0].clone())
        .collect();
    assert_eq!(done.iter().filter(|s| !s.duplicate).count(), 1, "{done:?}");
    assert!(done.iter().all(|s| s.id == done[0].id));
    let counts = store.queue_counts().await.expect("counts");
    assert_eq!(counts[0].queued, 1);
    store.close().await.expect("close");
}

/// Submits racing into a queue with `max_queued` store no more than it allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_submits_stop_at_max_queued() {
    let store = open().await;
    store
        .set_quota(Quota {
            scope: "queue:q".into(),
            max_queued: Some(5),
            ..Quota::default()
        })
        .await
        .expect("quota");
    let calls = (0..20).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.submit(one(new_job("q"))).await })
    });
    let mut stored = 0;
    for call in futures::future::join_all(calls).await {
        match call.expect("task") {
            Ok(_) => stored += 1,
            Err(Error::QueueFull { .. }) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(stored, 5);
    store.close().await.expect("close");
}

/// A job whose dependency ends while it is being submitted is never left waiting for good:
/// either the submit sees the failure (and stores it cancelled), or the failure's cascade
/// sees the new dependent (and cancels it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dependency_that_fails_during_a_submit_still_cancels_it() {
    let store = open().await;
    for _ in 0..10 {
        let ready = store.submit(one(new_job("q"))).await.expect("submit")[0]
            .ready
            .clone()
            .expect("ready");
        store
            .transition(transitions(vec![], vec![start(&ready)]))
            .await
            .expect("start");
        let fail = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .transition(transitions(
                        vec![crate::store::Finish {
                            job_id: ready.id,
                            attempt: 1,
                            outcome: crate::domain::Outcome::Failed {
                                message: "boom".into(),
                                retryable: false,
                                retry_after_ms: None,
                                cancelled: false,
                            },
                        }],
                        vec![],
                    ))
                    .await
                    .expect("fail")
            })
        };
        let dependent = NewJob {
            depends_on: vec![ready.id],
            ..new_job("q")
        };
        let submitted = store.submit(one(dependent)).await.expect("submit")[0].clone();
        fail.await.expect("task");
        let job = store
            .get(submitted.id)
            .await
            .expect("get")
            .expect("the job");
        assert_eq!(job.state, JobState::Cancelled, "{job:?}");
    }
    store.close().await.expect("close");
}

/// A database that goes away makes the store unhealthy, and its writes fail as `UNAVAILABLE`
/// store faults, not as internal errors.
#[tokio::test]
async fn health_follows_a_database_that_goes_away() {
    let server = switchyard_testkit::postgres::own_server().await;
    let url = server.database().await;
    let store = PostgresStore::open(
        &StoreConfig {
            busy_timeout: Duration::from_millis(500),
            ..config(url)
        },
        Metrics::new(),
    )
    .await
    .expect("open");
    let health = store.health();
    store.submit(one(new_job("q"))).await.expect("submit");
    store.probe().await.expect("probe");
    assert_eq!(*health.borrow(), None);
    drop(server);
    let err = store
        .submit(one(new_job("q")))
        .await
        .expect_err("no database");
    assert!(
        matches!(
            err,
            Error::Store {
                fault: StoreFault::Unreachable,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(*health.borrow(), Some(StoreFault::Unreachable));
    assert!(store.probe().await.is_err());
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::Unavailable,
        "retryable"
    );
    store.close().await.expect("close");
}

/// `store::open` picks the backend by the URL's scheme, `postgresql://` as `postgres://`.
#[tokio::test]
async fn store_open_picks_postgres_by_the_url() {
    let url =
        switchyard_testkit::postgres::database()
            .await
            .replacen("postgres://", "postgresql://", 1);
    let store = crate::store::open(&config(url), Metrics::new())
        .await
        .expect("open");
    store.submit(one(new_job("q"))).await.expect("submit");
    assert_eq!(store.writer_stats().commits, 1);
    store.close().await.expect("close");
    assert!(matches!(
        store.submit(one(new_job("q"))).await,
        Err(Error::ShuttingDown)
    ));
}

/// Fires of one tick racing (a retry, or another coordinator's ticker) store one job: the
/// first takes the schedule's row, the others find the tick handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_fires_of_one_tick_store_one_job() {
    use crate::store::{
        Fired,
        conformance::{fire_of, schedule},
    };
    let store = open().await;
    let s = schedule("a", "nightly", crate::domain::Overlap::Allow);
    let key = s.key.clone();
    store.create_schedule(s).await.expect("create");
    let calls = (0..8).map(|_| {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move { store.fire_schedule(fire_of(&key, 1000)).await })
    });
    let fired: Vec<Fired> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|call| call.expect("task").expect("fire"))
        .collect();
    let submitted = fired
        .iter()
        .filter(|f| matches!(f, Fired::Submitted(s) if !s.duplicate))
        .count();
    let stale = fired.iter().filter(|f| **f == Fired::Stale).count();
    assert_eq!((submitted, stale), (1, 7), "{fired:?}");
    store.close().await.expect("close");
}

/// A `Run`'s submit (`Durability::WithNext`) commits without waiting for the WAL flush;
/// every other submit leaves the wait as the store set it. Seen from inside each submit's own
/// transaction, on the real server (whose own default, for speed, is not to wait: each
/// transaction here starts out waiting).
#[tokio::test]
async fn only_a_submit_made_durable_by_the_next_commit_skips_the_wal_flush() {
    let store = open().await;
    for (durability, expected) in [
        (Durability::BeforeReply, "on"),
        (Durability::WithNext, "off"),
    ] {
        let mut tx = store.pool.begin().await.expect("begin");
        sqlx::query("SET LOCAL synchronous_commit TO ON")
            .execute(&mut *tx)
            .await
            .expect("wait for the flush");
        let submit = Submit {
            durability,
            ..one(new_job("q"))
        };
        super::submit::submit(&mut tx, &submit)
            .await
            .expect("submit");
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut *tx)
            .await
            .expect("show");
        assert_eq!(setting, expected, "{durability:?}");
        tx.rollback().await.expect("rollback");
    }
    store.close().await.expect("close");
}
