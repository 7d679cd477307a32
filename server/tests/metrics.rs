//! The Prometheus endpoint of a real coordinator (`--metrics 127.0.0.1:0`): it serves valid
//! text format 0.0.4 at `/metrics` and nothing elsewhere, its numbers move with the work, and
//! it stops with the coordinator.

mod support;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use switchyard_client::{Batch, Client, JobSpec};
use switchyard_proto::v1::JobState;
use switchyard_testkit::{Coordinator, Proxy, Worker};
use tokio::net::TcpStream;

use support::{PATIENCE, connect, eventually, finished, http, stats};

/// Every family the coordinator exposes, with its type.
const FAMILIES: &[(&str, &str)] = &[
    ("switchyard_jobs_submitted_total", "counter"),
    ("switchyard_jobs_finished_total", "counter"),
    ("switchyard_attempts_total", "counter"),
    ("switchyard_queue_depth", "gauge"),
    ("switchyard_jobs_running", "gauge"),
    ("switchyard_dispatch_latency_seconds", "histogram"),
    ("switchyard_run_time_seconds", "histogram"),
    ("switchyard_workers", "gauge"),
    ("switchyard_worker_slots", "gauge"),
    ("switchyard_store_commit_seconds", "histogram"),
    ("switchyard_store_commit_batch_size", "histogram"),
    ("switchyard_store_commits_total", "counter"),
    ("switchyard_store_faults_total", "counter"),
    ("switchyard_store_healthy", "gauge"),
    ("switchyard_progress_reports_total", "counter"),
    ("switchyard_attempts_detached", "gauge"),
    ("switchyard_attempts_readopted_total", "counter"),
    ("switchyard_store_bytes", "gauge"),
    ("switchyard_pruned_jobs_total", "counter"),
];

async fn coordinator(extra: &[&str]) -> (Coordinator, Client, SocketAddr) {
    let mut args = vec!["--metrics", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let coordinator = Coordinator::start_with(&args).await;
    let metrics = coordinator
        .metrics_addr()
        .expect("the coordinator prints where it serves metrics");
    let client = connect(&coordinator).await;
    (coordinator, client, metrics)
}

/// A parsed scrape: each sample by its series (`name{labels}` as written) and each family's
/// type. Parsing checks the format as it goes.
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    /// A sample's value; a series not shown yet counts as 0.
    fn value(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, headers, body) = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: test\r\nAccept: text/plain\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(&body)
}

/// Parses (and checks) the text format: `# HELP` then `# TYPE` for each family, then its
/// samples, each `name{label="value",...} number`, all names under the family's.
fn parse(body: &str) -> Scrape {
    assert!(body.ends_with('\n'), "the last line ends with a line feed");
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    let mut family: Option<(String, String)> = None;
    let mut help: Option<String> = None;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').expect("HELP name text");
            assert!(!text.is_empty(), "{line}");
            help = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert_eq!(help.as_deref(), Some(name), "HELP comes right before TYPE");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{name} is described once"
            );
            family = Some((name.to_owned(), kind.to_owned()));
        } else {
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let name = series.split('{').next().unwrap_or(series);
            assert!(name.starts_with("switchyard_"), "{line}");
            if let Some(labels) = series.strip_prefix(name) {
                assert!(
                    labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                    "{line}"
                );
            }
            let (family_name, kind) = family.as_ref().expect("samples follow their TYPE");
            let allowed = if kind == "histogram" {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name == format!("{family_name}{suffix}"))
            } else {
                name == family_name
            };
            assert!(allowed, "{line} under {family_name} ({kind})");
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "{series} appears once"
            );
        }
    }
    check_histograms(&samples, &types);
    Scrape { samples, types }
}

/// Every histogram series: buckets ascend by `le`, are cumulative, end at `+Inf`, and the
/// `+Inf` bucket equals `_count`.
fn check_histograms(samples: &BTreeMap<String, f64>, types: &BTreeMap<String, String>) {
    for (family, _) in types.iter().filter(|(_, kind)| *kind == "histogram") {
        // Buckets grouped by their other labels, in the order written is not kept by the
        // map, so sort by `le`.
        let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let bucket = format!("{family}_bucket");
        for (series, value) in samples {
            let Some(labels) = series.strip_prefix(&bucket) else {
                continue;
            };
            let labels = labels.trim_start_matches('{').trim_end_matches('}');
            let (others, le) = labels
                .rsplit_once("le=\"")
                .unwrap_or_else(|| panic!("{series}: le is the last label"));
            let le = le.trim_end_matches('"');
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le is a number")
            };
            groups
                .entry(others.trim_end_matches(',').to_owned())
                .or_default()
                .push((le, *value));
        }
        for (others, mut buckets) in groups {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family}{{{others}}}: buckets are cumulative: {buckets:?}"
            );
            let (last_le, last) = *buckets.last().expect("a bucket");
            assert_eq!(last_le, f64::INFINITY, "{family}{{{others}}} ends at +Inf");
            let suffix = if others.is_empty() {
                String::new()
            } else {
                format!("{{{others}}}")
            };
            assert_eq!(
                samples.get(&format!("{family}_count{suffix}")),
                Some(&last),
                "{family}{suffix}: +Inf bucket = _count"
            );
            assert!(
                samples.contains_key(&format!("{family}_sum{suffix}")),
                "{family}{suffix} has a _sum"
            );
        }
    }
}

#[tokio::test]
async fn the_endpoint_serves_prometheus_text_at_metrics_beside_the_console() {
    let (_coordinator, client, metrics) = coordinator(&[]).await;
    client
        .submit(JobSpec::new("default", "echo"))
        .await
        .expect("gRPC works beside the metrics endpoint");

    let scrape = scrape(metrics).await;
    for (name, kind) in FAMILIES {
        assert_eq!(
            scrape.types.get(*name).map(String::as_str),
            Some(*kind),
            "{name}"
        );
    }
    assert_eq!(scrape.types.len(), FAMILIES.len(), "{:?}", scrape.types);

    // `/` is the web console (open: this coordinator has no tokens), other paths are 404.
    let (status, headers, _) = http(metrics, "GET / HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("text/html; charset=utf-8")
    );
    let (status, _, _) = http(metrics, "GET /metricsx HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 404);
    let (status, headers, _) = http(metrics, "POST /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 405);
    assert_eq!(headers.get("allow").map(String::as_str), Some("GET, HEAD"));
    let (status, _, _) = http(metrics, "hello\r\n\r\n").await;
    assert_eq!(status, 400);
    // HTTP/1.0 clients (and curl --http1.0) are answered too.
    let (status, _, body) = http(metrics, "GET /metrics HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200);
    parse(&body);
}

#[tokio::test]
async fn without_the_flag_there_is_no_endpoint() {
    let coordinator = Coordinator::start().await;
    assert_eq!(coordinator.metrics_addr(), None);
    let client = connect(&coordinator).await;
    client
        .submit(JobSpec::new("default", "echo"))
        .await
        .expect("submit");
}

#[tokio::test]
async fn the_store_counts_commits_submits_and_cancels_as_they_commit() {
    let (_coordinator, client, metrics) = coordinator(&[]).await;
    let before = scrape(metrics).await;
    assert_eq!(before.value("switchyard_store_commits_total"), 0.0);

    client
        .submit(JobSpec::new("m", "echo"))
        .await
        .expect("submit");
    let jobs = (0..50).map(|i| JobSpec::new("m", "echo").payload(format!("{i}")));
    client
        .submit_batch(Batch::new().jobs(jobs))
        .await
        .expect("submit a batch");
    // A repeated idempotency key is stored once: committed twice, submitted once.
    for _ in 0..2 {
        client
            .submit(JobSpec::new("other", "echo").idempotency_key("once"))
            .await
            .expect("submit");
    }

    // A queued job cancelled (no worker serves "c") is finished, CANCELLED.
    let id = client
        .submit(JobSpec::new("c", "echo"))
        .await
        .expect("submit")
        .job_id;
    client.cancel(&id).await.expect("cancel");

    let after = scrape(metrics).await;
    let store = stats(&client)
        .await
        .store
        .expect("stats carry the store's numbers");
    let commits = after.value("switchyard_store_commits_total");
    assert!(commits >= 2.0, "{commits}");
    assert_eq!(
        commits, store.commits as f64,
        "the same commits as Stats counts"
    );
    assert_eq!(
        after.value("switchyard_store_commit_seconds_count"),
        commits
    );
    assert_eq!(
        after.value("switchyard_store_commit_batch_size_count"),
        commits
    );
    assert_eq!(
        after.value("switchyard_store_commit_batch_size_sum"),
        store.commands as f64,
        "commands per commit add up to the commands Stats counts"
    );
    assert!(after.value("switchyard_store_commit_seconds_sum") > 0.0);
    assert_eq!(
        after.value("switchyard_jobs_submitted_total{queue=\"m\"}"),
        51.0
    );
    assert_eq!(
        after.value("switchyard_jobs_submitted_total{queue=\"other\"}"),
        1.0
    );
    assert_eq!(
        after.value("switchyard_jobs_finished_total{queue=\"c\",state=\"cancelled\"}"),
        1.0
    );
}

/// Collects the checks that fail, so that one run lists every series that did not move.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn moved(&mut self, before: &Scrape, after: &Scrape, series: &str, by: f64) {
        let moved = after.value(series) - before.value(series);
        if moved != by {
            self.0
                .push(format!("{series} moved by {moved}, expected {by}"));
        }
    }

    fn is(&mut self, scrape: &Scrape, series: &str, expected: f64) {
        let value = scrape.value(series);
        if value != expected {
            self.0
                .push(format!("{series} is {value}, expected {expected}"));
        }
    }

    fn assert_none(self, what: &str) {
        assert!(self.0.is_empty(), "{what}:\n  {}", self.0.join("\n  "));
    }
}

/// Scrapes until `ready` holds, for at most a few seconds; returns the last scrape either way,
/// so that the checks on it report what did not hold.
async fn settled(addr: SocketAddr, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let scrape = scrape(addr).await;
        if ready(&scrape) || tokio::time::Instant::now() > give_up {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A coordinator and a real worker run jobs; two scrapes show the numbers move.
///
/// Jobs, attempts, run time, running attempts and commits are recorded by the store as its
/// transactions commit. Workers, slots, queue depth and dispatch latency are recorded by the
/// scheduler's call sites (see `telemetry::Metrics`); until those are wired, the `scheduler`
/// checks below fail and say which series did not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_jobs_run() {
    let (coordinator, client, metrics) = coordinator(&[
        "--heartbeat-interval",
        "200ms",
        "--retry-base",
        "20ms",
        "--retry-cap",
        "100ms",
    ])
    .await;
    let _worker = Worker::start(&coordinator.url(), &["--concurrency", "4"]).await;
    // Gauges follow the scheduler's rounds, a moment behind what clients see: poll them.
    let first = settled(metrics, |s| s.value("switchyard_workers") == 1.0).await;

    // 20 jobs that succeed, one that fails both its attempts.
    let mut ids = Vec::new();
    let jobs = (0..20).map(|i| JobSpec::new("default", "echo").payload(format!("{i}")));
    let done = client
        .submit_batch(Batch::new().jobs(jobs))
        .await
        .expect("submit a batch");
    ids.extend(done.jobs.into_iter().map(|j| j.job_id));
    let failing = client
        .submit(JobSpec::new("default", "fail").max_attempts(2))
        .await
        .expect("submit")
        .job_id;
    for id in &ids {
        let job = client.wait(id, Some(PATIENCE)).await.expect("wait");
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
    }
    let job = client.wait(&failing, Some(PATIENCE)).await.expect("wait");
    assert_eq!(job.state(), JobState::Failed, "{job:?}");

    // Hold every slot with jobs that sleep, and queue two more behind them.
    let mut sleepers = Vec::new();
    for _ in 0..6 {
        let job = JobSpec::new("default", "sleep").payload("1500");
        sleepers.push(client.submit(job).await.expect("submit").job_id);
    }
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let workers = client.workers().await.expect("workers");
        if workers.iter().map(|w| w.running).sum::<u32>() == 4 {
            break;
        }
        assert!(tokio::time::Instant::now() < give_up, "4 sleepers running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Settled apart: should one never come, waiting for it must not outlast the other.
    let busy = settled(metrics, |s| {
        s.value("switchyard_jobs_running{queue=\"default\"}") == 4.0
    })
    .await;
    let queued = settled(metrics, |s| {
        s.value("switchyard_queue_depth{queue=\"default\"}") == 2.0
    })
    .await;
    for id in &sleepers {
        let job = client.wait(id, Some(PATIENCE)).await.expect("wait");
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
    }
    let last = settled(metrics, |s| {
        s.value("switchyard_jobs_running{queue=\"default\"}") == 0.0
            && s.value("switchyard_queue_depth{queue=\"default\"}") == 0.0
    })
    .await;

    let moved = |series: &str| last.value(series) - first.value(series);

    // Recorded by the store as its transactions commit.
    let mut store = Checks::default();
    let default = |name: &str, labels: &str| format!("{name}{{queue=\"default\"{labels}}}");
    store.moved(
        &first,
        &last,
        &default("switchyard_jobs_submitted_total", ""),
        27.0,
    );
    let finished = "switchyard_jobs_finished_total";
    store.moved(
        &first,
        &last,
        &default(finished, ",state=\"succeeded\""),
        26.0,
    );
    store.moved(&first, &last, &default(finished, ",state=\"failed\""), 1.0);
    let attempts = "switchyard_attempts_total";
    store.moved(
        &first,
        &last,
        &default(attempts, ",outcome=\"succeeded\""),
        26.0,
    );
    store.moved(
        &first,
        &last,
        &default(attempts, ",outcome=\"failed\""),
        2.0,
    );
    store.moved(
        &first,
        &last,
        &default("switchyard_run_time_seconds_count", ""),
        28.0,
    );
    // The sleepers ran 1.5 s each: at least 6 × 1.5 s of run time.
    let ran = moved(&default("switchyard_run_time_seconds_sum", ""));
    if ran < 9.0 {
        store
            .0
            .push(format!("run time sum moved by {ran}, expected at least 9"));
    }
    store.is(&busy, &default("switchyard_jobs_running", ""), 4.0);
    store.is(&last, &default("switchyard_jobs_running", ""), 0.0);
    let commits = moved("switchyard_store_commits_total");
    if commits < 3.0 {
        store.0.push(format!("only {commits} store commits"));
    }
    store.assert_none("store metrics that did not move");

    // Recorded by the scheduler's call sites: these hold once they are wired.
    let mut scheduler = Checks::default();
    scheduler.is(&first, "switchyard_workers", 1.0);
    scheduler.is(&first, "switchyard_worker_slots", 4.0);
    scheduler.is(&queued, &default("switchyard_queue_depth", ""), 2.0);
    scheduler.is(&last, &default("switchyard_queue_depth", ""), 0.0);
    scheduler.moved(
        &first,
        &last,
        "switchyard_dispatch_latency_seconds_count",
        28.0,
    );
    scheduler.assert_none("scheduler metrics that did not move (call sites not wired yet?)");
}

#[tokio::test]
async fn the_endpoint_stops_with_the_coordinator() {
    let (mut coordinator, _client, metrics) = coordinator(&[]).await;
    // A client that connects and never sends must not hold up the shutdown.
    let _silent = TcpStream::connect(metrics).await.expect("connect");
    scrape(metrics).await;
    let status = coordinator.terminate().await;
    assert!(status.success(), "{status:?}\n{}", coordinator.log());
    assert!(
        TcpStream::connect(metrics).await.is_err(),
        "nothing listens on the metrics port after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_blip_shows_detached_then_readopted_attempts() {
    let (coordinator, client, metrics) =
        coordinator(&["--heartbeat-interval", "200ms", "--reconnect-grace", "30s"]).await;
    let proxy = Proxy::start(coordinator.addr()).await;
    let mut worker = Worker::start(
        &proxy.url(),
        &[
            "--concurrency",
            "3",
            "--log",
            "info,switchyard_worker=debug",
        ],
    )
    .await;
    let jobs = (0..3).map(|_| JobSpec::new("default", "sleep").payload("3000"));
    let done = client
        .submit_batch(Batch::new().jobs(jobs))
        .await
        .expect("submit");
    // Every handler runs on the worker (an assignment still in flight would not be held).
    eventually("three handlers started", || async {
        (worker
            .log()
            .matches("switchyard_worker::session: starting")
            .count()
            >= 3)
            .then_some(())
    })
    .await;
    proxy.down();
    eventually("three detached attempts", || async {
        (scrape(metrics).await.value("switchyard_attempts_detached") == 3.0).then_some(())
    })
    .await;
    proxy.up();
    worker.next_connected().await;
    // The gauge follows at the end of the scheduler's round that took the worker back.
    eventually("the three attempts taken up again", || async {
        let after = scrape(metrics).await;
        (after.value("switchyard_attempts_readopted_total") == 3.0
            && after.value("switchyard_attempts_detached") == 0.0)
            .then_some(())
    })
    .await;
    for job in &done.jobs {
        let job = finished(&client, &job.job_id).await;
        assert_eq!(job.state(), JobState::Succeeded);
        assert_eq!(job.attempts.len(), 1);
    }
    proxy.stop().await;
}
