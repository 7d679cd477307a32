//! Unique jobs through the real coordinator: an idempotency key that binds for a window or
//! while its job is live, a repeat that says when its payload differs, debounce, and exactly
//! one job per key and window however many submit at once.

mod support;

use std::time::Duration;

use switchyard_client::JobSpec;
use tokio::task::JoinSet;

use support::{eventually, ms_of, start};

fn keyed(key: &str, payload: &str) -> JobSpec {
    JobSpec::new("nobody", "echo")
        .idempotency_key(key)
        .payload(payload)
}

#[tokio::test]
async fn a_key_binds_for_its_window_then_makes_a_new_job() {
    let (_coordinator, client) = start().await;
    let window = Duration::from_millis(400);
    let first = client
        .submit(keyed("w", "x").unique_for(window))
        .await
        .expect("submit");
    let repeat = client
        .submit(keyed("w", "x").unique_for(window))
        .await
        .expect("repeat");
    assert!(repeat.duplicate && repeat.job_id == first.job_id);
    let second = eventually("a new job once the window passed", || async {
        let done = client
            .submit(keyed("w", "x").unique_for(window))
            .await
            .expect("submit");
        (!done.duplicate).then_some(done.job_id)
    })
    .await;
    let (a, b) = (
        client.get(&first.job_id).await.expect("first"),
        client.get(&second).await.expect("second"),
    );
    let apart = ms_of(&b.created_at.expect("time")) - ms_of(&a.created_at.expect("time"));
    assert!(apart >= 400, "the new job came {apart} ms after the first");
}

#[tokio::test]
async fn a_key_bound_while_active_is_free_once_its_job_ends() {
    let (_coordinator, client) = start().await;
    let first = client
        .submit(keyed("a", "x").unique_while_active())
        .await
        .expect("submit");
    let repeat = client
        .submit(keyed("a", "x").unique_while_active())
        .await
        .expect("repeat");
    assert!(repeat.duplicate, "bound while the job is queued");
    client.cancel(&first.job_id).await.expect("end the job");
    let after = client
        .submit(keyed("a", "x").unique_while_active())
        .await
        .expect("after");
    assert!(!after.duplicate && after.job_id != first.job_id);
    // A key bound forever (the default) stays bound after its job ended.
    let forever = client.submit(keyed("f", "x")).await.expect("submit");
    client.cancel(&forever.job_id).await.expect("end it");
    let again = client.submit(keyed("f", "x")).await.expect("again");
    assert!(again.duplicate && again.job_id == forever.job_id);
}

#[tokio::test]
async fn a_repeat_says_when_its_payload_differs_and_debounce_replaces_it() {
    let (_coordinator, client) = start().await;
    let first = client.submit(keyed("p", "one")).await.expect("submit");
    let same = client.submit(keyed("p", "one")).await.expect("same");
    assert!(same.duplicate && !same.payload_differs);
    let other = client.submit(keyed("p", "two")).await.expect("other");
    assert!(other.duplicate && other.payload_differs && !other.debounced);
    assert_eq!(
        client.get(&first.job_id).await.expect("get").payload,
        b"one",
        "without debounce the first payload stays"
    );
    let bounced = client
        .submit(keyed("p", "three").debounce())
        .await
        .expect("debounced");
    assert!(bounced.duplicate && bounced.debounced);
    assert_eq!(
        client.get(&first.job_id).await.expect("get").payload,
        b"three"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submitters_make_exactly_one_job_per_key() {
    const KEYS: usize = 8;
    const SUBMITTERS: usize = 24;
    let (_coordinator, client) = start().await;
    let mut calls = JoinSet::new();
    for k in 0..KEYS {
        for s in 0..SUBMITTERS {
            let client = client.clone();
            calls.spawn(async move {
                let spec =
                    keyed(&format!("k{k}"), &format!("{s}")).unique_for(Duration::from_secs(3600));
                (k, client.submit(spec).await.expect("submit"))
            });
        }
    }
    let mut per_key: Vec<Vec<(bool, String)>> = vec![Vec::new(); KEYS];
    for (k, done) in calls.join_all().await {
        per_key[k].push((done.duplicate, done.job_id));
    }
    for (k, answers) in per_key.iter().enumerate() {
        let created = answers.iter().filter(|(dup, _)| !dup).count();
        assert_eq!(created, 1, "key k{k}: {created} jobs created");
        let first = &answers.iter().find(|(dup, _)| !dup).expect("the one").1;
        assert!(
            answers.iter().all(|(_, id)| id == first),
            "key k{k}: every answer names it"
        );
    }
    assert_eq!(support::all_jobs(&client).await.len(), KEYS);
}
