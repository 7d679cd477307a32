//! `switchyard bulk` over 100,000 jobs against a real coordinator: a dry run counts them, a
//! run interrupted with Ctrl-C (SIGINT) says where to resume, the resumed run finishes the
//! rest, and every job was changed exactly once.

use std::process::Stdio;

use serde_json::Value;
use switchyard_client::{Batch, Client, JobSpec};
use switchyard_testkit::{Coordinator, signal};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const JOBS: u64 = 100_000;

fn switchyard(coordinator: &Coordinator, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command
        .arg("--coordinator")
        .arg(coordinator.url())
        .arg("--json")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs the CLI to its end; its exit code and its stdout as JSON lines.
async fn json_run(coordinator: &Coordinator, args: &[&str]) -> (i32, Vec<Value>) {
    let output = switchyard(coordinator, args)
        .output()
        .await
        .expect("run switchyard");
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    assert!(
        output.status.code().is_some(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), lines)
}

fn number(line: &Value, field: &str) -> u64 {
    line[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {line}"))
}

async fn dry_run(coordinator: &Coordinator, resume: Option<&str>) -> u64 {
    let mut args = vec!["bulk", "cancel", "--queue", "parked", "--dry-run"];
    if let Some(cursor) = resume {
        args.extend(["--resume", cursor]);
    }
    let (code, lines) = json_run(coordinator, &args).await;
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 1, "{lines:?}");
    number(&lines[0], "matched")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_cancel_of_100k_jobs_is_interrupted_resumed_and_counted_by_its_dry_run() {
    let coordinator = Coordinator::start().await;
    let client = Client::connect(coordinator.url()).await.expect("connect");
    // No worker serves `parked`: every job stays queued until the bulk cancel.
    for _ in 0..JOBS / 10_000 {
        client
            .submit_batch(Batch::new().jobs((0..10_000).map(|_| JobSpec::new("parked", "echo"))))
            .await
            .expect("submit 10,000");
    }
    let other = client
        .submit(JobSpec::new("elsewhere", "echo"))
        .await
        .expect("submit")
        .job_id;

    assert_eq!(dry_run(&coordinator, None).await, JOBS);

    // Interrupted after its first step: it finishes that step and says where to resume.
    let mut child = switchyard(
        &coordinator,
        &["bulk", "cancel", "--queue", "parked", "--step", "1000"],
    )
    .spawn()
    .expect("run switchyard");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let first = stdout
        .next_line()
        .await
        .expect("read")
        .expect("a first step");
    signal(child.id().expect("running"), "INT");
    let mut changed: u64 = number(&serde_json::from_str(&first).expect("JSON"), "changed");
    while let Some(line) = stdout.next_line().await.expect("read") {
        changed += number(&serde_json::from_str(&line).expect("JSON"), "changed");
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .await
        .expect("read stderr");
    let status = child.wait().await.expect("wait");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        changed > 0 && changed < JOBS,
        "{changed} changed before Ctrl-C"
    );
    let cursor = stderr
        .split("--resume ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no cursor in: {stderr}"))
        .to_owned();

    // From the cursor on, exactly what the interrupted run did not change is left.
    assert_eq!(dry_run(&coordinator, Some(&cursor)).await, JOBS - changed);
    let (code, lines) = json_run(
        &coordinator,
        &[
            "bulk", "cancel", "--queue", "parked", "--step", "5000", "--resume", &cursor,
        ],
    )
    .await;
    assert_eq!(code, 0);
    let resumed: u64 = lines.iter().map(|line| number(line, "changed")).sum();
    assert_eq!(changed + resumed, JOBS, "each job changed once");
    assert_eq!(
        lines.last().map(|line| line["next_cursor"].clone()),
        Some(Value::from(""))
    );

    assert_eq!(dry_run(&coordinator, None).await, 0, "none left to cancel");
    let stats = client.stats().await.expect("stats");
    let parked = stats
        .queues
        .iter()
        .find(|q| q.queue == "parked")
        .expect("the queue");
    assert_eq!((parked.queued, parked.cancelled), (0, JOBS));
    assert_eq!(
        client.get(&other).await.expect("get").state(),
        switchyard_proto::v1::JobState::Queued,
        "another queue's job is untouched"
    );
}
