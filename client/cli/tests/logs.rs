//! `--log-format json`: every line each binary writes to stderr is a JSON object with its
//! level and message, for log shippers.

use switchyard_testkit::{Coordinator, Worker};

/// Every non-empty line of `log` as a JSON object with a `level` and a `message`.
fn json_lines(who: &str, log: &str) -> Vec<serde_json::Value> {
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("{who}: {line:?} is not JSON ({err})"));
            assert!(value.is_object(), "{who}: {line:?} is not an object");
            for key in ["level", "message", "timestamp"] {
                assert!(value[key].is_string(), "{who}: {line:?} has no {key}");
            }
            value
        })
        .collect();
    assert!(!lines.is_empty(), "{who} logged nothing");
    lines
}

fn has_message(lines: &[serde_json::Value], level: &str, message: &str) -> bool {
    lines
        .iter()
        .any(|line| line["level"] == level && line["message"] == message)
}

#[tokio::test]
async fn every_binary_logs_json_lines_when_asked() {
    let mut coordinator = Coordinator::start_with(&["--log-format", "json"]).await;
    let mut worker = Worker::start(&coordinator.url(), &["--log-format", "json"]).await;

    // The CLI: its logs, and its report of a failed command, are JSON lines too.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--coordinator", &coordinator.url(), "get", "no-such-job"])
        .env("SWITCHYARD_LOG_FORMAT", "json")
        .env("SWITCHYARD_LOG", "info")
        .output()
        .await
        .expect("run switchyard");
    assert!(!output.status.success(), "{output:?}");
    let cli = json_lines("switchyard", &String::from_utf8_lossy(&output.stderr));
    assert!(
        cli.iter().any(|line| line["level"] == "ERROR"),
        "the failure is an ERROR line: {cli:?}"
    );

    // Stopped (a drain), so that their last lines are in the logs too.
    assert!(worker.terminate().await.success());
    assert!(coordinator.terminate().await.success());
    let worker_lines = json_lines("switchyard-worker", &worker.log());
    assert!(
        has_message(&worker_lines, "INFO", "worker starting"),
        "{worker_lines:?}"
    );
    let coordinator_lines = json_lines("switchyard-server", &coordinator.log());
    for message in ["coordinator starting", "coordinator stopped"] {
        assert!(
            has_message(&coordinator_lines, "INFO", message),
            "{message:?} missing: {coordinator_lines:?}"
        );
    }
    let starting = coordinator_lines
        .iter()
        .find(|line| line["message"] == "coordinator starting")
        .expect("the start line");
    assert!(
        starting["addr"].is_string(),
        "an event's fields sit beside its message: {starting}"
    );
}

#[tokio::test]
async fn a_bad_log_format_is_refused_before_starting() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--log-format", "yaml", "workers"])
        .output()
        .await
        .expect("run switchyard");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--log-format"), "{stderr}");
}

/// A binary that cannot start says why in one more JSON line, not in Rust's `Error:` text.
#[tokio::test]
async fn a_failed_start_is_a_json_error_line() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let output = tokio::process::Command::new(switchyard_testkit::bin("switchyard-server"))
        .args(["--log-format", "json", "--listen", &addr, "--db"])
        .arg(format!("sqlite://{}", dir.path().join("db").display()))
        .output()
        .await
        .expect("run switchyard-server");
    assert!(!output.status.success(), "{output:?}");
    let lines = json_lines(
        "switchyard-server",
        &String::from_utf8_lossy(&output.stderr),
    );
    let last = lines.last().expect("a line");
    assert_eq!(last["level"], "ERROR", "{lines:?}");
    assert!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("binding {addr}"))),
        "{last}"
    );
}

/// `dev --log-format json` passes the format to the coordinator and the workers it starts.
#[tokio::test]
async fn dev_passes_the_format_to_its_children() {
    use tokio::io::AsyncBufReadExt as _;

    let dir = tempfile::tempdir().expect("temporary directory");
    let log = std::fs::File::create(dir.path().join("dev.log")).expect("create dev.log");
    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--log-format", "json", "dev", "--listen", "127.0.0.1:0"])
        .args(["--workers", "1", "--drain-grace", "1s"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start switchyard dev");
    let stdout = dev.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    // The banner's last line: by then the coordinator and the worker have started.
    loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .expect("dev is ready within a minute")
            .expect("read dev's stdout")
            .expect("dev printed its banner");
        if line.starts_with("Ctrl-C stops everything") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let pid = nix::unistd::Pid::from_raw(dev.id().expect("dev's pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM dev");
    let status = dev.wait().await.expect("dev exits");
    assert!(status.success(), "{status}");

    // dev's own words to a person stay text; its children's logs are JSON lines.
    let log = std::fs::read_to_string(dir.path().join("dev.log")).expect("read dev.log");
    let children: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    for message in ["coordinator starting", "worker starting"] {
        assert!(
            has_message(&children, "INFO", message),
            "{message:?} is not a JSON line in:\n{log}"
        );
    }
}
