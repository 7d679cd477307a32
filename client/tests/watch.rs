//! `Client::watch_group` against the real coordinator and real workers: every result once,
//! then the outcome, even when the connection is cut or the coordinator restarts under it.
//! These need the coordinator's `WatchGroup` (all but `retries_are_bounded`).

use std::{collections::HashSet, time::Duration};

use futures::{Stream, StreamExt};
use switchyard_client::{
    Batch, Client, Error, GroupEvent, GroupOutcome, GroupUpdate, JobSpec, JobState, Resume,
};
use switchyard_testkit::{Coordinator, Proxy, Worker};

/// How long a test waits for a group before calling it stuck.
const PATIENCE: Duration = Duration::from_secs(60);

/// Reads `events` until `n` results (or the outcome) have arrived.
async fn take_results(
    events: &mut (impl Stream<Item = Result<GroupEvent, Error>> + Unpin),
    n: usize,
    results: &mut Vec<String>,
) -> Option<GroupOutcome> {
    let target = results.len() + n;
    while results.len() < target {
        let event = tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("the next group event in time")
            .expect("the stream goes on until the outcome")
            .expect("a group event");
        match event.update {
            GroupUpdate::Result(result) => results.push(result.job_id),
            GroupUpdate::Outcome(outcome) => return Some(outcome),
        }
    }
    None
}

/// Submits `n` `sleep` jobs of `ms` as a group and returns the group id and the job ids.
async fn sleepers(client: &Client, n: usize, ms: u64) -> (String, HashSet<String>) {
    let batch =
        Batch::new().jobs((0..n).map(|_| JobSpec::new("default", "sleep").payload(ms.to_string())));
    let submitted = client.submit_group(batch).await.expect("submit the group");
    assert!(submitted.group_id.starts_with("grp-"));
    let ids = submitted.jobs.into_iter().map(|job| job.job_id).collect();
    (submitted.group_id, ids)
}

/// The rest of the stream: results up to the outcome, and nothing after it.
async fn finish(
    events: &mut (impl Stream<Item = Result<GroupEvent, Error>> + Unpin),
    results: &mut Vec<String>,
) -> GroupOutcome {
    let outcome = take_results(events, usize::MAX / 2, results)
        .await
        .expect("an outcome");
    assert!(
        events.next().await.is_none(),
        "the outcome is the last event"
    );
    outcome
}

fn assert_each_once(results: &[String], ids: &HashSet<String>) {
    let seen: HashSet<String> = results.iter().cloned().collect();
    assert_eq!(seen.len(), results.len(), "no result is repeated");
    assert_eq!(&seen, ids, "no result is lost");
}

#[tokio::test]
async fn a_cut_connection_is_resumed_without_loss_or_repeats() {
    let coordinator = Coordinator::start().await;
    let _worker = Worker::start(&coordinator.url(), &["--concurrency", "4"]).await;
    let proxy = Proxy::start(coordinator.addr()).await;
    let client = Client::connect(proxy.url()).await.expect("connect");
    let (group, ids) = sleepers(&client, 60, 100).await;

    let mut events = Box::pin(client.watch_group(&group, None));
    let mut results = Vec::new();
    assert!(take_results(&mut events, 10, &mut results).await.is_none());
    let before = proxy.accepted();
    proxy.cut();
    let outcome = finish(&mut events, &mut results).await;

    assert!(proxy.accepted() > before, "the client reconnected");
    assert_each_once(&results, &ids);
    assert_eq!(outcome.state(), JobState::Succeeded);
    assert_eq!((outcome.size, outcome.succeeded), (60, 60));
    drop(events);
    proxy.stop().await;
}

#[tokio::test]
async fn a_coordinator_restart_is_ridden_out() {
    let mut coordinator = Coordinator::start().await;
    let _worker = Worker::start(&coordinator.url(), &["--concurrency", "4"]).await;
    let client = Client::connect(coordinator.url()).await.expect("connect");
    let (group, ids) = sleepers(&client, 40, 100).await;

    let mut events = Box::pin(client.watch_group(&group, None));
    let mut results = Vec::new();
    assert!(take_results(&mut events, 5, &mut results).await.is_none());
    // Graceful: the coordinator ends the stream with UNAVAILABLE as it shuts down.
    coordinator.terminate().await;
    coordinator.restart().await;
    assert!(take_results(&mut events, 5, &mut results).await.is_none());
    // Abrupt: the connection just breaks.
    coordinator.kill().await;
    coordinator.restart().await;
    let outcome = finish(&mut events, &mut results).await;

    assert_each_once(&results, &ids);
    assert_eq!(outcome.state(), JobState::Succeeded);
    assert_eq!(outcome.succeeded, 40);
}

#[tokio::test]
async fn resuming_from_a_cursor_yields_what_came_after_it() {
    let coordinator = Coordinator::start().await;
    let _worker = Worker::start(&coordinator.url(), &["--concurrency", "8"]).await;
    let client = Client::connect(coordinator.url()).await.expect("connect");
    let (group, ids) = sleepers(&client, 20, 1).await;

    let all: Vec<GroupEvent> = client
        .watch_group(&group, None)
        .map(|event| event.expect("a group event"))
        .collect()
        .await;
    assert_eq!(all.len(), 21);
    assert!(all[20].outcome().is_some());
    let after: Vec<GroupEvent> = client
        .watch_group(&group, Some(all[7].cursor.clone()))
        .map(|event| event.expect("a group event"))
        .collect()
        .await;
    assert_eq!(after, all[8..]);
    let results: Vec<String> = all
        .iter()
        .filter_map(|event| match &event.update {
            GroupUpdate::Result(result) => Some(result.job_id.clone()),
            GroupUpdate::Outcome(_) => None,
        })
        .collect();
    assert_each_once(&results, &ids);
}

#[tokio::test]
async fn a_final_error_is_yielded_once_and_ends_the_stream() {
    let coordinator = Coordinator::start().await;
    let client = Client::connect(coordinator.url()).await.expect("connect");
    let events: Vec<Result<GroupEvent, Error>> =
        client.watch_group("no-such-group", None).collect().await;
    assert_eq!(events.len(), 1);
    assert!(
        matches!(events[0], Err(Error::NotFound(_))),
        "{:?}",
        events[0]
    );
}

#[tokio::test]
async fn retries_are_bounded() {
    // A port nothing listens on, once the coordinator that held it is gone.
    let mut coordinator = Coordinator::start().await;
    let client = Client::connect(coordinator.url()).await.expect("connect");
    coordinator.kill().await;
    let resume = Resume {
        max_retries: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
    };
    let events: Vec<Result<GroupEvent, Error>> = tokio::time::timeout(
        PATIENCE,
        client.watch_group_with("g", None, resume).collect(),
    )
    .await
    .expect("the stream gives up in time");
    assert_eq!(events.len(), 1);
    assert!(
        matches!(events[0], Err(Error::Unavailable(_))),
        "{:?}",
        events[0]
    );
}
