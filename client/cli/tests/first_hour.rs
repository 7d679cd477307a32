//! What a newcomer meets first, against the real binaries: exit codes that follow the job's
//! outcome, errors in words (one line, no backtrace), `--coordinator HOST:PORT`, `--help`,
//! and `switchyard dev` stopped by SIGINT while its output pipe is closed.

use std::{
    io::BufRead,
    process::{Output, Stdio},
    time::Duration,
};

use switchyard_client::{Client, JobSpec, JobState};
use switchyard_proto::v1::AttemptOutcome;
use switchyard_testkit::{Coordinator, Worker, bin, signal};

/// Runs the CLI with these arguments (no `--coordinator` added) and `RUST_BACKTRACE=1`, which
/// must change nothing about how errors are shown.
async fn run(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("SWITCHYARD_COORDINATOR")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run switchyard")
}

async fn cli(coordinator: &Coordinator, args: &[&str]) -> Output {
    let url = coordinator.url();
    let mut all = vec!["--coordinator", url.as_str()];
    all.extend_from_slice(args);
    run(&all).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited, not killed")
}

#[track_caller]
fn assert_exit(output: &Output, expected: i32, what: &str) {
    assert_eq!(
        code(output),
        expected,
        "{what}: stdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

/// The one line of stderr, checked word for word; never a backtrace or a `Caused by`.
#[track_caller]
fn assert_error(output: &Output, expected: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(
        stderr,
        format!("error: {expected}\n"),
        "stderr, word for word"
    );
    assert!(!stderr.contains("backtrace") && !stderr.contains("Caused by"));
}

/// A job id printed by `submit`.
fn job_id(output: &Output) -> String {
    assert_exit(output, 0, "submit");
    text(&output.stdout).trim().to_owned()
}

/// A port nothing listens on: bound, then let go.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local address").port()
}

#[tokio::test]
async fn exit_codes_follow_the_outcome() {
    let coordinator = Coordinator::start().await;
    let _worker = Worker::start(&coordinator.url(), &["--concurrency", "4"]).await;

    // 0: succeeded, through submit --wait and wait.
    let ok = cli(
        &coordinator,
        &["submit", "--kind", "echo", "--payload", "hi", "--wait"],
    )
    .await;
    assert_exit(&ok, 0, "a job that succeeds");
    assert!(text(&ok.stdout).contains("state: succeeded"));

    // 3: failed, both ways.
    let failed = cli(
        &coordinator,
        &["submit", "--kind", "fail", "--max-attempts", "2", "--wait"],
    )
    .await;
    assert_exit(&failed, 3, "submit --wait of a job that fails");
    assert!(text(&failed.stdout).contains("state: failed"));
    let id = job_id(
        &cli(
            &coordinator,
            &["submit", "--kind", "fail", "--max-attempts", "1"],
        )
        .await,
    );
    assert_exit(
        &cli(&coordinator, &["wait", &id]).await,
        3,
        "wait on a failed job",
    );
    // `get` showed what was asked: 0, whatever the job's state.
    assert_exit(
        &cli(&coordinator, &["get", &id]).await,
        0,
        "get of a failed job",
    );

    // 4: cancelled.
    let id = job_id(
        &cli(
            &coordinator,
            &["submit", "--kind", "sleep", "--payload", "60000"],
        )
        .await,
    );
    assert_exit(&cli(&coordinator, &["cancel", &id]).await, 0, "cancel");
    assert_exit(
        &cli(&coordinator, &["wait", &id]).await,
        4,
        "wait on a cancelled job",
    );
    // Cancelling it again: FAILED_PRECONDITION, an error of no special kind (1).
    let again = cli(&coordinator, &["cancel", &id]).await;
    assert_exit(&again, 1, "cancelling a cancelled job");
    assert_error(
        &again,
        &format!("failed precondition: job {id}: already ended (cancelled)"),
    );

    // 5: the deadline (--timeout becomes the job's deadline).
    let late = cli(
        &coordinator,
        &[
            "submit",
            "--kind",
            "sleep",
            "--payload",
            "60000",
            "--wait",
            "--timeout",
            "1s",
        ],
    )
    .await;
    assert_exit(&late, 5, "a job past its deadline");

    // 6: not found.
    let missing = cli(
        &coordinator,
        &["get", "0190d3c0-0000-7000-8000-000000000000"],
    )
    .await;
    assert_exit(&missing, 6, "an unknown job");
    assert_error(
        &missing,
        "job 0190d3c0-0000-7000-8000-000000000000: not found",
    );

    // 7: unavailable.
    let port = free_port().to_string();
    let away = run(&["--coordinator", &format!("127.0.0.1:{port}"), "stats"]).await;
    assert_exit(&away, 7, "no coordinator");

    // 2: usage, from clap and from the coordinator.
    assert_exit(
        &cli(
            &coordinator,
            &["submit", "--kind", "echo", "--no-such-flag"],
        )
        .await,
        2,
        "an unknown flag",
    );
    assert_exit(
        &cli(
            &coordinator,
            &["submit", "--queue", "bad queue", "--kind", "echo"],
        )
        .await,
        2,
        "INVALID_ARGUMENT",
    );

    // Groups: watch and batch --watch follow the group's outcome.
    let dir = tempfile::tempdir().expect("temporary directory");
    let lines = |kind: &str| {
        let path = dir.path().join(format!("{kind}.jsonl"));
        std::fs::write(
            &path,
            format!("{{\"kind\":\"{kind}\",\"max_attempts\":1}}\n").repeat(3),
        )
        .expect("write jobs");
        path.display().to_string()
    };
    let echo = lines("echo");
    let fail = lines("fail");
    let good = cli(
        &coordinator,
        &["batch", &echo, "--group", "good", "--watch"],
    )
    .await;
    assert_exit(&good, 0, "batch --watch of a group that succeeds");
    assert_exit(
        &cli(&coordinator, &["watch", "good"]).await,
        0,
        "watch, succeeded",
    );
    let bad = cli(&coordinator, &["batch", &fail, "--group", "bad", "--watch"]).await;
    assert_exit(&bad, 3, "batch --watch of a group that fails");
    let watched = cli(&coordinator, &["watch", "bad"]).await;
    assert_exit(&watched, 3, "watch, failed");
    // It had finished before this watch began: no duration that would only time the watch.
    assert!(
        text(&watched.stdout).contains("of 3 (had already finished)"),
        "{}",
        text(&watched.stdout)
    );
    let sleeps = dir.path().join("sleep.jsonl");
    std::fs::write(
        &sleeps,
        "{\"kind\":\"sleep\",\"payload\":\"60000\"}\n".repeat(2),
    )
    .expect("write jobs");
    let sleeps = sleeps.display().to_string();
    assert_exit(
        &cli(&coordinator, &["batch", &sleeps, "--group", "stopped"]).await,
        0,
        "batch",
    );
    assert_exit(
        &cli(&coordinator, &["cancel", "stopped", "--group"]).await,
        0,
        "cancel --group",
    );
    assert_exit(
        &cli(&coordinator, &["watch", "stopped"]).await,
        4,
        "watch, cancelled",
    );
}

#[tokio::test]
async fn errors_say_what_happened_in_one_line() {
    // No coordinator on the port: the address, and what to do.
    let port = free_port();
    let output = run(&["--coordinator", &format!("http://127.0.0.1:{port}"), "list"]).await;
    assert_exit(&output, 7, "no coordinator");
    assert_error(
        &output,
        &format!(
            "cannot reach the coordinator at http://127.0.0.1:{port} (connection refused); start \
             one with `switchyard dev`, or point --coordinator (or SWITCHYARD_COORDINATOR) at a \
             running one"
        ),
    );

    // Bad URLs.
    let output = run(&["--coordinator", "ftp://127.0.0.1:1", "list"]).await;
    assert_exit(&output, 2, "a scheme other than http(s)");
    assert_error(
        &output,
        "--coordinator \"ftp://127.0.0.1:1\" is not a coordinator address: the scheme is \"ftp\"; \
         expected http://HOST:PORT, https://HOST:PORT or HOST:PORT",
    );
    let output = run(&["--coordinator", "http://bad host:1", "list"]).await;
    assert_exit(&output, 2, "not a URL");
    assert_error(
        &output,
        "--coordinator \"http://bad host:1\" is not a coordinator address: expected \
         http://HOST:PORT, https://HOST:PORT or HOST:PORT",
    );
    let output = run(&["--coordinator", "https://127.0.0.1:1", "list"]).await;
    assert_exit(&output, 2, "https without a CA");
    assert_error(
        &output,
        "https://127.0.0.1:1 uses https: pass --ca-cert FILE, the CA certificate that signed the \
         coordinator's certificate (system roots are not used)",
    );
}

#[tokio::test]
async fn oversized_messages_are_refused_in_words() {
    let coordinator = Coordinator::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");

    // One payload of 20 MB: refused before it is sent, naming the limit.
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 20 * 1024 * 1024]).expect("write payload");
    let big = big.display().to_string();
    let output = cli(
        &coordinator,
        &["submit", "--kind", "echo", "--payload-file", &big],
    )
    .await;
    assert_exit(&output, 2, "a 20 MiB payload");
    assert_error(
        &output,
        "the payload is 20971520 bytes; a job's payload may be at most 1048576 bytes (1 MiB): \
         store large data elsewhere and pass a reference to it",
    );

    // A batch of payloads each within the limit, together past the coordinator's message
    // limit (16 MiB): the transport's refusal, said in words.
    let line = format!(
        "{{\"kind\":\"echo\",\"payload\":\"{}\"}}\n",
        "x".repeat(1024 * 1024)
    );
    let lines = dir.path().join("many.jsonl");
    std::fs::write(&lines, line.repeat(17)).expect("write jobs");
    let lines = lines.display().to_string();
    let output = cli(&coordinator, &["batch", &lines]).await;
    assert_exit(&output, 2, "a batch past the message limit");
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with(
            "error: submitting the batch; nothing was stored: message too large: the request is \
             17.0 MiB ("
        ) && stderr.ends_with(
            " bytes) and the coordinator accepts at most 16.0 MiB (16777216 bytes) per message\n"
        ) && stderr.lines().count() == 1,
        "{stderr}"
    );
    let listed = cli(&coordinator, &["list"]).await;
    assert_eq!(
        text(&listed.stdout).lines().count(),
        1,
        "only the header: nothing stored"
    );
}

#[tokio::test]
async fn host_and_port_alone_mean_http() {
    let coordinator = Coordinator::start().await;
    let _worker = Worker::start(&coordinator.url(), &[]).await;
    let addr = coordinator.addr().to_string();
    let output = run(&[
        "--coordinator",
        &addr,
        "submit",
        "--kind",
        "echo",
        "--payload",
        "hi",
        "--wait",
    ])
    .await;
    assert_exit(&output, 0, "--coordinator HOST:PORT");
    assert!(
        text(&output.stdout).contains("output: hi"),
        "{}",
        text(&output.stdout)
    );
    // The SDK takes the same form.
    let client = Client::connect(addr).await.expect("connect to HOST:PORT");
    client.stats().await.expect("stats");
}

#[tokio::test]
async fn help_describes_every_flag_and_the_exit_codes() {
    let help = run(&["--help"]).await;
    assert_exit(&help, 0, "--help");
    let help = text(&help.stdout);
    assert!(help.contains("Global options:\n"), "{help}");
    assert!(help.contains("Exit codes:\n") && help.contains("  3  the job or group ended FAILED"));

    let help = text(&run(&["submit", "-h"]).await.stdout);
    // Every option line has words after it, and the global ones have their own heading.
    let (own, global) = help
        .split_once("Global options:")
        .expect("a global heading");
    assert!(global.contains("--coordinator <URL>") && !own.contains("--coordinator"));
    let lines: Vec<&str> = own.lines().collect();
    for flag in [
        "--kind",
        "--queue",
        "--priority",
        "--weight",
        "--idempotency-key",
    ] {
        let at = lines
            .iter()
            .position(|line| line.trim_start().starts_with(&format!("{flag} ")))
            .unwrap_or_else(|| panic!("{flag} is not in submit -h:\n{help}"));
        // Its words follow on the same line, or (when clap wraps) on the next one.
        let same_line = lines[at]
            .split("  ")
            .filter(|p| !p.trim().is_empty())
            .count()
            >= 2;
        let next_line = lines
            .get(at + 1)
            .map(|l| l.trim())
            .is_some_and(|l| !l.is_empty() && !l.starts_with('-'));
        assert!(same_line || next_line, "{flag} has no description:\n{help}");
    }
}

/// Polls `get` until the job runs: the coordinator offers no event for "started".
async fn until_running(client: &Client, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if client.get(id).await.expect("get").state() == JobState::Running {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `switchyard dev 2>&1 | tee dev.log`, then Ctrl-C: `tee` goes first, so `dev` meets a closed
/// pipe on stdout and stderr while it stops. It must still drain its workers (the short job
/// finishes, the long one is given back), stop the coordinator after them, and wait for every
/// child.
#[tokio::test]
async fn dev_drains_every_child_on_sigint_with_its_output_closed() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = format!("sqlite://{}", dir.path().join("dev.db").display());
    let (reader, writer) = std::io::pipe().expect("a pipe");
    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--db",
            &db,
            "--workers",
            "2",
            "--concurrency",
            "2",
            "--drain-grace",
            "3s",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(writer.try_clone().expect("clone the pipe"))
        .stderr(writer)
        .kill_on_drop(true)
        .spawn()
        .expect("start switchyard dev");
    // Read up to the end of the banner, then close the pipe, as `tee` dying does.
    let banner = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(reader).lines() {
            let line = line.expect("read dev's output");
            let last = line.starts_with("Ctrl-C stops everything");
            lines.push(line);
            if last {
                return lines;
            }
        }
        panic!("dev ended before its banner:\n{}", lines.join("\n"));
    })
    .await
    .expect("read the banner");
    let url = banner
        .iter()
        .find_map(|line| line.trim_start().strip_prefix("coordinator  "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the coordinator's address")
        .to_owned();
    let pids: Vec<u32> = banner
        .iter()
        .filter_map(|line| line.split_once("(pid ").map(|(_, rest)| rest))
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .expect("a pid")
        })
        .collect();
    assert_eq!(pids.len(), 3, "a coordinator and two workers: {banner:?}");

    let client = Client::connect(url).await.expect("connect");
    let short = client
        .submit(JobSpec::new("default", "sleep").payload("1000"))
        .await
        .expect("submit")
        .job_id;
    let long = client
        .submit(JobSpec::new("default", "sleep").payload("60000"))
        .await
        .expect("submit")
        .job_id;
    until_running(&client, &short).await;
    until_running(&client, &long).await;
    drop(client);

    signal(dev.id().expect("dev runs"), "INT");
    let status = tokio::time::timeout(Duration::from_secs(60), dev.wait())
        .await
        .expect("dev stops within a minute")
        .expect("wait for dev");
    assert!(status.success(), "dev exited {status}");
    for pid in pids {
        assert!(!alive(pid), "child {pid} outlived dev (or is a zombie)");
    }

    // The record, read by a coordinator on the same database.
    let mut server = tokio::process::Command::new(bin("switchyard-server"))
        .args(["--listen", "127.0.0.1:0", "--db", &db])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start switchyard-server");
    let stdout = server.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = lines
        .next_line()
        .await
        .expect("read")
        .expect("the coordinator says where it listens");
    let addr = line.rsplit(' ').next().expect("an address").to_owned();
    let client = Client::connect(addr).await.expect("connect");
    let job = client.get(&short).await.expect("get");
    assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
    assert_eq!(job.attempts.len(), 1);
    assert_eq!(job.attempts[0].outcome(), AttemptOutcome::Succeeded);
    let job = client.get(&long).await.expect("get");
    assert_eq!(job.state(), JobState::Queued, "{job:?}");
    assert_eq!(
        job.attempts[0].outcome(),
        AttemptOutcome::Released,
        "given back by the drain, not lost or interrupted: {job:?}"
    );
    let _ = server.start_kill();
    let _ = server.wait().await;
}
