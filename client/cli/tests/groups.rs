//! Groups through the `switchyard` CLI, against the real coordinator and real worker
//! processes: `batch` from JSON lines, `watch` (text and `--json`), and `demo`.
//!
//! All but the refused batch need the coordinator's `WatchGroup` (and `watch` its
//! `GetGroup`); against a coordinator without them they fail with `UNIMPLEMENTED`.

use std::{collections::HashSet, process::Output};

use serde_json::Value;
use switchyard_client::{Client, Error};
use switchyard_testkit::{Coordinator, Worker};
use tokio::io::AsyncWriteExt;

/// Runs the CLI against `coordinator`, with `stdin` as its input.
async fn cli_with_input(coordinator: &Coordinator, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--coordinator")
        .arg(coordinator.url())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run switchyard");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin).await.expect("write stdin");
    drop(input);
    child.wait_with_output().await.expect("wait for switchyard")
}

async fn cli(coordinator: &Coordinator, args: &[&str]) -> Output {
    cli_with_input(coordinator, args, b"").await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "switchyard failed: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn json_lines(output: &Output) -> Vec<Value> {
    text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

/// `n` JSON lines of `echo` jobs.
fn echo_lines(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"kind\":\"echo\",\"payload\":\"item {i}\"}}\n"))
        .collect()
}

#[tokio::test]
async fn batch_refuses_a_bad_line_with_its_number_and_stores_nothing() {
    let coordinator = Coordinator::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("jobs.jsonl");
    std::fs::write(
        &file,
        concat!(
            "{\"kind\":\"echo\",\"payload\":\"a\",\"ref\":\"a\"}\n",
            "{\"kind\":\"sha256\",\"depends_on\":[\"a\"]}\n",
            "{\"kind\":\"echo\",\"depends_on\":\"a\"}\n",
            "{\"kind\":\"echo\"}\n",
        ),
    )
    .expect("write the input");
    let path = file.to_str().expect("a UTF-8 path");

    let output = cli(
        &coordinator,
        &["batch", path, "--queue", "q", "--group", "refused"],
    )
    .await;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("line 3:"), "{stderr}");
    assert!(stderr.contains("nothing was submitted"), "{stderr}");
    assert!(
        !stderr.contains("line 1:") && !stderr.contains("line 4:"),
        "{stderr}"
    );

    let listed = succeeded(&cli(&coordinator, &["--json", "list"]).await);
    assert_eq!(listed.trim(), "", "a refused batch stores nothing");
    let client = Client::connect(coordinator.url()).await.expect("connect");
    assert!(
        matches!(client.group("refused").await, Err(Error::NotFound(_))),
        "nor its group"
    );

    // The same file without the bad line goes in, as the group, in input order.
    let good: String = std::fs::read_to_string(&file)
        .expect("read the input")
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, line)| format!("{line}\n"))
        .collect();
    std::fs::write(&file, good).expect("rewrite the input");
    let output = cli(
        &coordinator,
        &[
            "--json", "batch", path, "--queue", "q", "--group", "accepted",
        ],
    )
    .await;
    succeeded(&output);
    let answer = &json_lines(&output)[0];
    assert_eq!(answer["group_id"], "accepted");
    let jobs = answer["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 3);
    assert_eq!(jobs[0]["ref"], "a");
    let first = jobs[0]["job_id"].as_str().expect("job id");
    let second = client
        .get(jobs[1]["job_id"].as_str().expect("job id"))
        .await
        .expect("get the second job");
    assert_eq!(second.queue, "q");
    assert_eq!(
        second.depends_on,
        [first],
        "the ref became the first job's id"
    );
    assert_eq!(client.group("accepted").await.expect("the group").size, 3);
}

#[tokio::test]
async fn batch_watch_of_fifty_echo_jobs_reports_fifty_done() {
    let coordinator = Coordinator::start().await;
    let _workers = [
        Worker::start(&coordinator.url(), &["--concurrency", "8"]).await,
        Worker::start(&coordinator.url(), &["--concurrency", "8"]).await,
    ];
    let output = cli_with_input(
        &coordinator,
        &["batch", "-", "--queue", "default", "--watch"],
        echo_lines(50).as_bytes(),
    )
    .await;
    let stdout = succeeded(&output);
    let mut lines = stdout.lines();
    let header = lines.next().expect("the group line");
    assert!(
        header.starts_with("group grp-") && header.ends_with("(50 jobs)"),
        "{header}"
    );
    let ids: HashSet<&str> = lines.by_ref().take(50).collect();
    assert_eq!(ids.len(), 50, "{stdout}");
    let outcome = lines.next().expect("the outcome line");
    assert!(
        outcome.contains(" succeeded: 50 done, 0 failed, 0 cancelled, 0 deadline exceeded, of 50"),
        "{outcome}"
    );
    // Not a terminal: progress comes as plain lines on stderr, ending with the full count.
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("50/50 finished: 50 done, 0 failed, 0 pending"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\r'),
        "no redrawing into a pipe: {stderr:?}"
    );
}

#[tokio::test]
async fn watch_json_lines_parse_and_end_with_the_outcome() {
    let coordinator = Coordinator::start().await;
    let _worker = Worker::start(&coordinator.url(), &["--concurrency", "8"]).await;
    let mut input = echo_lines(18);
    input.push_str(&"{\"kind\":\"fail\",\"max_attempts\":1}\n".repeat(2));
    let submitted = cli_with_input(
        &coordinator,
        &["--json", "batch", "--group", "mixed"],
        input.as_bytes(),
    )
    .await;
    succeeded(&submitted);
    let submitted: HashSet<String> = json_lines(&submitted)[0]["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| job["job_id"].as_str().expect("job id").to_owned())
        .collect();

    let output = cli(&coordinator, &["--json", "watch", "mixed"]).await;
    assert_eq!(
        output.status.code(),
        Some(3),
        "a failed group exits 3 (FAILED)"
    );
    let events = json_lines(&output);
    assert_eq!(events.len(), 21, "20 results and the outcome");
    let (outcome, results) = events.split_last().expect("events");
    let seen: HashSet<String> = results
        .iter()
        .map(|event| {
            assert_eq!(event["event"], "result");
            assert!(!event["cursor"].as_str().expect("cursor").is_empty());
            event["job_id"].as_str().expect("job id").to_owned()
        })
        .collect();
    assert_eq!(seen, submitted, "every job once");
    let failed: Vec<&Value> = results.iter().filter(|e| e["state"] == "failed").collect();
    assert_eq!(failed.len(), 2);
    assert!(
        failed
            .iter()
            .all(|e| e["error"].as_str().is_some_and(|s| !s.is_empty()))
    );
    assert!(
        results
            .iter()
            .filter(|e| e["state"] == "succeeded")
            .all(|e| e["output"].as_str().is_some_and(|s| s.starts_with("item ")))
    );
    assert_eq!(outcome["event"], "outcome");
    assert_eq!(outcome["group_id"], "mixed");
    assert_eq!(outcome["state"], "failed");
    assert_eq!(
        (&outcome["size"], &outcome["succeeded"], &outcome["failed"]),
        (&Value::from(20), &Value::from(18), &Value::from(2))
    );

    // From the tenth event's cursor: exactly the rest.
    let cursor = results[9]["cursor"].as_str().expect("cursor");
    let resumed = cli(
        &coordinator,
        &["--json", "watch", "mixed", "--cursor", cursor],
    )
    .await;
    let resumed = json_lines(&resumed);
    assert_eq!(&resumed[..resumed.len() - 1], &results[10..]);
    assert_eq!(
        resumed.last().map(|e| &e["event"]),
        Some(&Value::from("outcome"))
    );

    // For people: each failure on stderr, the outcome on stdout.
    let output = cli(&coordinator, &["watch", "mixed"]).await;
    assert_eq!(output.status.code(), Some(3));
    let stderr = text(&output.stderr);
    for event in &failed {
        let id = event["job_id"].as_str().expect("job id");
        assert!(stderr.contains(&format!("job {id} failed: ")), "{stderr}");
    }
    let stdout = text(&output.stdout);
    assert!(
        stdout.starts_with("group mixed failed: 18 done, 2 failed, 0 cancelled"),
        "{stdout}"
    );

    // An unknown group is refused, not waited on.
    let output = cli(&coordinator, &["watch", "no-such-group"]).await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("not found"),
        "{}",
        text(&output.stderr)
    );
}

#[tokio::test]
async fn a_succeeded_group_exits_zero() {
    let coordinator = Coordinator::start().await;
    let _worker = Worker::start(&coordinator.url(), &["--concurrency", "8"]).await;
    succeeded(
        &cli_with_input(
            &coordinator,
            &["batch", "--group", "fine"],
            echo_lines(5).as_bytes(),
        )
        .await,
    );
    let stdout = succeeded(&cli(&coordinator, &["watch", "fine"]).await);
    assert!(
        stdout.starts_with("group fine succeeded: 5 done"),
        "{stdout}"
    );
}

// Needs WatchGroup, cancel_on_failure that stops running jobs, and pipelines by ref.
#[tokio::test]
async fn the_demo_runs_to_completion_with_two_workers() {
    let coordinator = Coordinator::start().await;
    let _workers = [
        Worker::start(&coordinator.url(), &["--concurrency", "8"]).await,
        Worker::start(&coordinator.url(), &["--concurrency", "8"]).await,
    ];
    let output = cli(&coordinator, &["demo"]).await;
    let stdout = succeeded(&output);
    for expected in [
        "1. Fan-out, fan-in: 1000 sha256 jobs",
        "Every one of the 1000 digests matches",
        "2. errgroup:",
        "the failure cancelled its running siblings",
        "3. Collect-all:",
        "12 succeeded and 3 failed",
        "4. Pipeline:",
        "The last output equals sha256(sha256(\"hello\"))",
        "All four patterns behaved as described.",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn the_demo_needs_a_worker() {
    let coordinator = Coordinator::start().await;
    let output = cli(&coordinator, &["demo"]).await;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("no worker is connected"), "{stderr}");
    let listed = succeeded(&cli(&coordinator, &["--json", "list"]).await);
    assert_eq!(listed.trim(), "", "nothing was submitted");
}
