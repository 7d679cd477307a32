//! Cron schedules against the real coordinator: each tick submits exactly one job across
//! SIGKILLs, missed ticks follow the misfire policy, overlap `SKIP` waits for the previous
//! run, and a bad expression or time zone is refused naming its field. Ticks are counted from
//! the fired jobs' idempotency keys (`schedule:<id>:<tick ms>`).

mod support;

use std::{collections::BTreeMap, time::Duration};

use switchyard_client::Client;
use switchyard_proto::v1::{self, MisfirePolicy, OverlapPolicy, Schedule};
use switchyard_testkit::Coordinator;
use tonic::Code;

use support::{all_jobs, assert_names, assert_nothing_stored, eventually, new_job, now_ms};

const EVERY_SECOND: &str = "* * * * * *";

fn schedule(id: &str, misfire: MisfirePolicy, overlap: OverlapPolicy) -> Schedule {
    Schedule {
        schedule_id: id.into(),
        cron: EVERY_SECOND.into(),
        job: Some(new_job("ticks", "echo")),
        misfire: misfire as i32,
        overlap: overlap as i32,
        ..Default::default()
    }
}

/// Each fired tick of schedule `id` (Unix ms), with how many jobs it stored, and which were
/// `RUN_ONCE` catch-ups.
async fn ticks(client: &Client, id: &str) -> (BTreeMap<i64, u32>, Vec<i64>) {
    let prefix = format!("schedule:{id}:");
    let mut counts = BTreeMap::new();
    let mut catch_ups = Vec::new();
    for job in all_jobs(client).await {
        let Some(tick) = job.idempotency_key.strip_prefix(&prefix) else {
            continue;
        };
        let tick: i64 = tick.parse().expect("a tick in the key");
        assert_eq!(
            job.labels.get("switchyard.schedule.tick"),
            Some(&tick.to_string()),
            "the tick label agrees with the key"
        );
        *counts.entry(tick).or_default() += 1;
        if job.labels.contains_key("switchyard.schedule.misfire") {
            catch_ups.push(tick);
        }
    }
    (counts, catch_ups)
}

/// Waits until schedule `id` has fired a tick at or after `after`; returns that tick.
async fn fired_after(client: &Client, id: &str, after: i64) -> i64 {
    eventually(&format!("{id} fires a tick after {after}"), || async {
        let (counts, _) = ticks(client, id).await;
        counts.range(after..).next().map(|(t, _)| *t)
    })
    .await
}

#[tokio::test]
async fn each_tick_fires_exactly_one_job_across_sigkills() {
    let (mut coordinator, client) = support::start().await;
    client
        .create_schedule(schedule(
            "heartbeat",
            MisfirePolicy::RunOnce,
            OverlapPolicy::Allow,
        ))
        .await
        .expect("create");
    let started = now_ms();
    // Down windows: (killed at, serving again at).
    let mut down = Vec::new();
    let mut seen = started;
    // Kill right after a tick fired, mid-way between ticks, and stay down over several ticks.
    for (round, (after_tick, stay_down)) in [(0, 0), (400, 0), (0, 2500), (800, 1200), (0, 0)]
        .into_iter()
        .enumerate()
    {
        seen = fired_after(&client, "heartbeat", seen + 1).await;
        // Where in the second the kill lands, and how long the coordinator stays down, is the
        // point of the test: these sleeps place it; nothing waits on them for a result.
        tokio::time::sleep(Duration::from_millis(after_tick)).await;
        let killed = now_ms();
        coordinator.kill().await;
        tokio::time::sleep(Duration::from_millis(stay_down)).await;
        coordinator.restart().await;
        down.push((killed, now_ms()));
        eprintln!("round {round}: down {:?}", down.last());
    }
    let last_up = down.last().map_or(started, |(_, up)| *up);
    fired_after(&client, "heartbeat", last_up + 2000).await;
    coordinator.kill().await;
    coordinator.restart().await;
    let (counts, catch_ups) = ticks(&client, "heartbeat").await;

    let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        duplicates.is_empty(),
        "ticks with more than one job: {duplicates:?}"
    );
    let fired: Vec<i64> = counts.keys().copied().collect();
    assert!(
        fired.iter().all(|t| t % 1000 == 0),
        "ticks on whole seconds"
    );
    // No gaps but those across a down window: a missing tick passed while it was down.
    for pair in fired.windows(2) {
        let mut missing = pair[0] + 1000;
        while missing < pair[1] {
            assert!(
                down.iter()
                    .any(|(killed, up)| *killed - 1000 < missing && missing < *up),
                "tick {missing} is missing but the coordinator was up: fired {fired:?}, down {down:?}"
            );
            missing += 1000;
        }
    }
    // RUN_ONCE: the long windows each left one catch-up, for their latest missed tick.
    for (killed, up) in down.iter().filter(|(k, u)| u - k > 2200) {
        let inside: Vec<_> = fired.iter().filter(|t| (killed..up).contains(t)).collect();
        assert_eq!(
            inside.len(),
            1,
            "one job for the ticks missed in {killed}..{up}: {inside:?}"
        );
        assert!(
            catch_ups.contains(inside[0]),
            "labelled a catch-up: {catch_ups:?}"
        );
    }
    assert!(fired.len() >= 8, "the schedule kept firing: {fired:?}");
}

#[tokio::test]
async fn missed_ticks_follow_the_misfire_policy() {
    let (mut coordinator, client) = support::start().await;
    for (id, misfire) in [
        ("skip", MisfirePolicy::Skip),
        ("once", MisfirePolicy::RunOnce),
    ] {
        client
            .create_schedule(schedule(id, misfire, OverlapPolicy::Allow))
            .await
            .expect("create");
    }
    for id in ["skip", "once"] {
        fired_after(&client, id, 0).await;
    }
    let stopped = now_ms();
    coordinator.kill().await;
    // Down over several ticks: the only way to miss them is to let them pass.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    coordinator.restart().await;
    let up = now_ms();
    for id in ["skip", "once"] {
        fired_after(&client, id, up + 1000).await;
    }
    // Ticks that surely passed while it was down (the last second before `up` may have been
    // the new coordinator's own).
    let missed = stopped + 1..up - 1000;

    let (skip, skip_catch_ups) = ticks(&client, "skip").await;
    let inside: Vec<_> = skip.keys().filter(|t| missed.contains(t)).collect();
    assert!(inside.is_empty(), "SKIP fired missed ticks {inside:?}");
    assert!(skip_catch_ups.is_empty());

    let (once, catch_ups) = ticks(&client, "once").await;
    assert_eq!(
        catch_ups.len(),
        1,
        "RUN_ONCE fires exactly one catch-up: {catch_ups:?}"
    );
    assert!(
        (stopped..up).contains(&catch_ups[0]),
        "for a tick missed while down"
    );
    let others: Vec<_> = once
        .keys()
        .filter(|t| missed.contains(t) && !catch_ups.contains(t))
        .collect();
    assert!(
        others.is_empty(),
        "RUN_ONCE fired more missed ticks: {others:?}"
    );
    assert!(once.values().all(|n| *n == 1));
}

#[tokio::test]
async fn overlap_skip_waits_for_the_previous_run() {
    // No worker: every fired job stays queued.
    let (_coordinator, client) = support::start().await;
    for (id, overlap) in [
        ("skip", OverlapPolicy::Skip),
        ("allow", OverlapPolicy::Allow),
    ] {
        client
            .create_schedule(schedule(id, MisfirePolicy::Skip, overlap))
            .await
            .expect("create");
    }
    let first = fired_after(&client, "allow", 0).await;
    fired_after(&client, "allow", first + 3000).await;
    let (allow, _) = ticks(&client, "allow").await;
    let allowed: Vec<i64> = allow.keys().copied().collect();
    assert!(
        allowed.windows(2).all(|w| w[1] - w[0] == 1000),
        "ALLOW fires every tick: {allowed:?}"
    );
    let (skip, _) = ticks(&client, "skip").await;
    assert_eq!(skip.len(), 1, "SKIP fires only the first: {skip:?}");

    let listed = client.schedules().await.expect("list");
    let skipped = listed
        .iter()
        .find(|s| s.schedule_id == "skip")
        .expect("listed");
    assert!(
        skipped.last_error.contains("still queued"),
        "says why: {skipped:?}"
    );
    let last_fired = skipped.last_fired.as_ref().map(support::ms_of);
    assert!(
        last_fired > skip.keys().next().copied(),
        "later ticks are handled, not left pending: {skipped:?}"
    );
}

#[tokio::test]
async fn list_shows_next_runs_and_pause_stops_firing() {
    let (_coordinator, client) = support::start().await;
    let created = client
        .create_schedule(Schedule {
            schedule_id: "nightly".into(),
            cron: "30 2 * * *".into(),
            time_zone: "Europe/Berlin".into(),
            job: Some(new_job("reports", "echo")),
            ..Default::default()
        })
        .await
        .expect("create");
    assert_eq!(created.next_runs.len(), 3);
    let runs: Vec<i64> = created.next_runs.iter().map(support::ms_of).collect();
    assert!(runs.windows(2).all(|w| w[1] > w[0]) && runs[0] > now_ms());
    assert_eq!(created.misfire(), MisfirePolicy::Skip, "the default");
    assert_eq!(created.overlap(), OverlapPolicy::Skip, "the default");
    assert_eq!(
        client
            .create_schedule(created.clone())
            .await
            .expect_err("taken")
            .code(),
        Some(Code::AlreadyExists)
    );
    let paused = client.pause_schedule("nightly", true).await.expect("pause");
    assert!(paused.paused && paused.next_runs.is_empty());
    let resumed = client
        .pause_schedule("nightly", false)
        .await
        .expect("resume");
    assert_eq!(resumed.next_runs.len(), 3);
    client.delete_schedule("nightly").await.expect("delete");
    assert!(client.schedules().await.expect("list").is_empty());
    assert_eq!(
        client
            .delete_schedule("nightly")
            .await
            .expect_err("gone")
            .code(),
        Some(Code::NotFound)
    );

    // A paused schedule fires nothing; resumed, it fires again (from its next tick).
    client
        .create_schedule(Schedule {
            paused: true,
            ..schedule("later", MisfirePolicy::RunOnce, OverlapPolicy::Allow)
        })
        .await
        .expect("create paused");
    let resumed_at = now_ms();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        ticks(&client, "later").await.0.is_empty(),
        "paused fires nothing"
    );
    client.pause_schedule("later", false).await.expect("resume");
    let tick = fired_after(&client, "later", 0).await;
    assert!(
        tick > resumed_at + 1000,
        "ticks passed while paused are not fired"
    );
}

#[tokio::test]
async fn schedules_are_their_tenants_and_fire_as_it() {
    let coordinator = Coordinator::start().await;
    let a = support::connect(&coordinator)
        .await
        .with_tenant("acme")
        .expect("tenant");
    let b = support::connect(&coordinator)
        .await
        .with_tenant("globex")
        .expect("tenant");
    a.create_schedule(schedule("tick", MisfirePolicy::Skip, OverlapPolicy::Allow))
        .await
        .expect("acme's");
    // The same name is another tenant's own.
    b.create_schedule(Schedule {
        paused: true,
        ..schedule("tick", MisfirePolicy::Skip, OverlapPolicy::Allow)
    })
    .await
    .expect("globex's");
    let listed = a.schedules().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].tenant_id, "acme");
    assert!(!listed[0].paused);
    b.delete_schedule("tick")
        .await
        .expect("globex deletes its own");
    assert_eq!(a.schedules().await.expect("list").len(), 1, "acme's stays");
    let job = eventually("acme's schedule fires", || async {
        all_jobs(&a).await.into_iter().next()
    })
    .await;
    assert_eq!(job.tenant_id, "acme");
}

#[tokio::test]
async fn a_bad_cron_or_time_zone_is_refused_naming_the_field() {
    let (_coordinator, client) = support::start().await;
    let cases = [
        (
            Schedule {
                cron: "61 * * * *".into(),
                ..schedule("bad", MisfirePolicy::Skip, OverlapPolicy::Skip)
            },
            "schedule.cron",
        ),
        (
            Schedule {
                cron: "* * * *".into(),
                ..schedule("bad", MisfirePolicy::Skip, OverlapPolicy::Skip)
            },
            "schedule.cron",
        ),
        (
            Schedule {
                time_zone: "Mars/Olympus_Mons".into(),
                ..schedule("bad", MisfirePolicy::Skip, OverlapPolicy::Skip)
            },
            "schedule.time_zone",
        ),
        (
            Schedule {
                schedule_id: "no spaces".into(),
                ..schedule("bad", MisfirePolicy::Skip, OverlapPolicy::Skip)
            },
            "schedule.schedule_id",
        ),
        (
            Schedule {
                job: Some(v1::SubmitRequest {
                    idempotency_key: "mine".into(),
                    ..new_job("q", "echo")
                }),
                ..schedule("bad", MisfirePolicy::Skip, OverlapPolicy::Skip)
            },
            "schedule.job.idempotency_key",
        ),
        (
            Schedule {
                job: Some(new_job("", "echo")),
                ..schedule("bad", MisfirePolicy::Skip, OverlapPolicy::Skip)
            },
            "schedule.job.queue",
        ),
    ];
    for (bad, field) in cases {
        let status = support::admin(&client)
            .create_schedule(v1::CreateScheduleRequest {
                schedule: Some(bad),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_names(&status, field);
    }
    assert!(client.schedules().await.expect("list").is_empty());
    assert_nothing_stored(&client).await;
}

#[tokio::test]
async fn tenant_bound_tokens_see_and_manage_only_their_own_schedules() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("tokens");
    std::fs::write(
        &path,
        "tok-acme acme client\ntok-globex globex client\ntok-admin * admin\n",
    )
    .expect("write the tokens file");
    let path = path.to_str().expect("a UTF-8 path").to_owned();
    let coordinator = Coordinator::start_with(&["--tokens", path.as_str()]).await;
    let channel = support::connect(&coordinator).await.channel().clone();
    let as_token = |token: &str| {
        Client::from_channel(channel.clone())
            .with_token(token)
            .expect("a printable token")
    };
    let (acme, globex, admin) = (
        as_token("tok-acme"),
        as_token("tok-globex"),
        as_token("tok-admin"),
    );
    acme.create_schedule(schedule("tick", MisfirePolicy::Skip, OverlapPolicy::Skip))
        .await
        .expect("acme's");
    assert!(globex.schedules().await.expect("list").is_empty());
    // Naming another tenant does not reach past the token's own.
    let posing = as_token("tok-globex").with_tenant("acme").expect("tenant");
    assert!(posing.schedules().await.expect("list").is_empty());
    for result in [
        globex.pause_schedule("tick", true).await.map(drop),
        posing.delete_schedule("tick").await,
    ] {
        assert_eq!(
            result.expect_err("not globex's").code(),
            Some(Code::NotFound)
        );
    }
    let all = admin
        .schedules()
        .await
        .expect("an admin sees every tenant's");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].tenant_id, "acme");
    // The fired job is acme's: acme sees it, globex does not.
    let job = eventually("acme's schedule fires", || async {
        all_jobs(&acme).await.into_iter().next()
    })
    .await;
    assert_eq!(job.tenant_id, "acme");
    assert!(all_jobs(&globex).await.is_empty());
}
