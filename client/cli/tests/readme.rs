//! The README's examples, run as written. Its Rust snippets are compiled as doc-tests of the
//! worker crate (`ReadmeDoctests` in worker/src/lib.rs); here its command lines run against a
//! real `switchyard dev` in a temporary directory, its "Try:" lines too, and its grpcurl
//! bodies are checked against the `.proto` files. A line added to the README that this test
//! does not know fails it, until it runs or is skipped below with a reason.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;
use switchyard_client::{Client, JobSpec, JobState};
use tokio::io::{AsyncBufReadExt, BufReader};

const README: &str = include_str!("../../../README.md");

/// Lines of the README's `sh` blocks that do not run here, by how they start, and why.
const SKIPPED: &[(&str, &str)] = &[
    (
        "cargo build --release && ./target/release/switchyard dev",
        "builds a release and runs `dev` in the foreground: this test runs `dev` itself",
    ),
    (
        "cargo install --locked --path",
        "installs into ~/.cargo/bin; the test puts the built binaries on PATH instead",
    ),
    (
        "cargo test --workspace",
        "this test is part of that command",
    ),
    (
        "cargo build --release",
        "a release build takes minutes; the test uses the binaries of this build",
    ),
    (
        "./target/release/switchyard bench",
        "a benchmark: minutes of load for numbers, not a check",
    ),
    (
        "grpcurl ",
        "grpcurl is not installed where tests run; its bodies are checked against the .proto \
         files by readme_request_bodies_name_real_fields",
    ),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT=",
        "needs an OTLP collector: tests/trace.rs runs this command against its own receiver",
    ),
    (
        "ghz ",
        "ghz is not installed where tests run (a load generator)",
    ),
    (
        "switchyard-server --http ",
        "runs a coordinator in the foreground: server/tests/console.rs starts one with --http \
         and --tokens and signs in to its console",
    ),
];

/// Every line of the README's ` ```sh ` blocks, continuation lines joined, comments cut.
fn sh_lines() -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in README.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        // A comment: a whole line, or from ` #` on.
        let line = match line.find(" #") {
            _ if line.trim_start().starts_with('#') => "",
            Some(at) => &line[..at],
            None => line,
        };
        let line = line.trim();
        if let Some(start) = line.strip_suffix('\\') {
            pending.push_str(start);
            continue;
        }
        pending.push_str(line);
        if !pending.trim().is_empty() {
            lines.push(pending.trim().to_owned());
        }
        pending.clear();
    }
    lines
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchyard"))
        .parent()
        .expect("the binary's directory")
        .to_path_buf()
}

/// `switchyard dev` in `dir` on a free port, its stdout read up to the end of its banner.
async fn start_dev(dir: &Path) -> (tokio::process::Child, Vec<String>) {
    let log = std::fs::File::create(dir.join("dev.log")).expect("create dev.log");
    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["dev", "--listen", "127.0.0.1:0", "--drain-grace", "1s"])
        .current_dir(dir)
        .env_remove("SWITCHYARD_COORDINATOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start switchyard dev");
    let stdout = dev.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("dev is ready within a minute")
            .expect("read dev's stdout")
            .unwrap_or_else(|| panic!("dev ended: {}", read(&dir.join("dev.log"))));
        let last = line.starts_with("Ctrl-C stops everything");
        banner.push(line);
        if last {
            break;
        }
    }
    // Keep reading, so that `dev` never meets a closed stdout here.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (dev, banner)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs one shell line in `dir`, with the built binaries first on `PATH` (as after
/// `cargo install`) or not, and returns (exit code, stdout, stderr).
async fn sh(
    dir: &Path,
    line: &str,
    coordinator: Option<&str>,
    on_path: bool,
) -> (i32, String, String) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = if on_path {
        std::env::join_paths(std::iter::once(bin_dir()).chain(std::env::split_paths(&path)))
            .expect("a PATH")
    } else {
        path
    };
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("SWITCHYARD_COORDINATOR")
        .stdin(Stdio::null());
    if let Some(url) = coordinator {
        command.env("SWITCHYARD_COORDINATOR", url);
    }
    let output = command.output().await.expect("run sh");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn readme_command_lines_run_against_dev() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (mut dev, banner) = start_dev(dir.path()).await;
    let url = banner
        .iter()
        .find_map(|line| line.trim_start().strip_prefix("coordinator  "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the coordinator's address")
        .to_owned();

    // dev's own hints, as printed: `switchyard` is not on this PATH, so they must name the
    // binary by its path.
    let hints: Vec<&str> = banner
        .iter()
        .map(|line| line.trim())
        .skip_while(|line| *line != "Try:")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .collect();
    assert!(hints.len() >= 5, "{banner:?}");
    for hint in hints {
        let hint = hint.split(" #").next().unwrap_or(hint).trim();
        if hint.starts_with("grpcurl ") || hint.ends_with(" demo") {
            // grpcurl is not installed here; the demo runs below, from the README.
            continue;
        }
        let (code, stdout, stderr) = sh(dir.path(), hint, None, false).await;
        assert_eq!(code, 0, "dev's hint {hint:?} failed:\n{stdout}\n{stderr}");
    }

    // What the README's placeholders stand for: a job that succeeded, one still running (to
    // cancel), one that failed (to requeue); and the input file its batch line reads.
    let client = Client::connect(url.clone()).await.expect("connect");
    let done = client
        .run(JobSpec::new("default", "echo").payload("hello"), None)
        .await
        .expect("run");
    let running = client
        .submit(JobSpec::new("default", "sleep").payload("60000"))
        .await
        .expect("submit")
        .job_id;
    let failed = client
        .run(JobSpec::new("default", "fail").max_attempts(1), None)
        .await
        .expect("run");
    assert_eq!(failed.state(), JobState::Failed);
    std::fs::write(
        dir.path().join("jobs.jsonl"),
        "{\"kind\":\"sha256\",\"payload\":\"a\"}\n".repeat(5),
    )
    .expect("write jobs.jsonl");
    let placeholders: HashMap<&str, &str> = HashMap::from([
        ("switchyard cancel ", running.as_str()),
        ("switchyard requeue ", failed.job_id.as_str()),
    ]);

    let mut ran = 0;
    for line in sh_lines() {
        if let Some((_, why)) = SKIPPED.iter().find(|(start, _)| line.starts_with(start)) {
            eprintln!("skipped {line:?}: {why}");
            continue;
        }
        assert!(
            line.starts_with("switchyard "),
            "the README line {line:?} is neither run nor skipped: add it to SKIPPED with a reason"
        );
        let id = placeholders
            .iter()
            .find(|(start, _)| line.starts_with(*start))
            .map_or(done.job_id.as_str(), |(_, id)| *id);
        let command = line.replace("JOB_ID", id);
        let (code, stdout, stderr) = sh(dir.path(), &command, Some(&url), true).await;
        assert_eq!(
            code, 0,
            "the README line {line:?} ({command}) failed:\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        eprintln!("ran {command:?}");
        ran += 1;
    }
    assert!(ran >= 19, "only {ran} README lines ran");

    switchyard_testkit::signal(dev.id().expect("dev runs"), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(60), dev.wait())
        .await
        .expect("dev stops")
        .expect("wait for dev");
    assert!(
        status.success(),
        "dev exited {status}: {}",
        read(&dir.path().join("dev.log"))
    );
}

/// Fields of each message in the `.proto` files: name → (field → type).
fn proto_fields() -> HashMap<String, HashMap<String, String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/proto/switchyard/v1");
    let mut messages: HashMap<String, HashMap<String, String>> = HashMap::new();
    for file in ["jobs.proto", "admin.proto", "workers.proto"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("read a .proto");
        let mut current: Option<String> = None;
        let mut depth = 0;
        for line in text.lines() {
            let line = line.split("//").next().unwrap_or("").trim();
            if depth == 0
                && let Some(name) = line.strip_prefix("message ")
            {
                let name = name
                    .split(|c: char| c == '{' || c.is_whitespace())
                    .next()
                    .unwrap_or(name)
                    .to_owned();
                messages.entry(name.clone()).or_default();
                current = Some(name);
            }
            depth += line.matches('{').count();
            depth -= line.matches('}').count().min(depth);
            if depth == 0 {
                current = None;
                continue;
            }
            // `[repeated|optional] TYPE NAME = N;` or `map<K, V> NAME = N;`
            if let (Some(message), Some((left, _))) = (&current, line.split_once(" = ")) {
                let words: Vec<&str> = left
                    .split_whitespace()
                    .filter(|w| *w != "repeated" && *w != "optional")
                    .collect();
                if let [.., kind, name] = words.as_slice()
                    && let Some(fields) = messages.get_mut(message)
                {
                    fields.insert((*name).to_owned(), (*kind).to_owned());
                }
            }
        }
    }
    messages
}

/// Every key of `body` is a field of `message` (and so on into nested messages).
fn check_body(
    messages: &HashMap<String, HashMap<String, String>>,
    message: &str,
    body: &Value,
    rpc: &str,
) {
    let fields = messages
        .get(message)
        .unwrap_or_else(|| panic!("{rpc}: no message {message} in the .proto files"));
    let Value::Object(object) = body else {
        return;
    };
    for (key, value) in object {
        let kind = fields
            .get(key)
            .unwrap_or_else(|| panic!("{rpc}: {message} has no field named {key:?}"));
        let kind = kind.rsplit('.').next().unwrap_or(kind);
        match value {
            Value::Array(items) => {
                for item in items {
                    check_body(messages, kind, item, rpc);
                }
            }
            Value::Object(_) if messages.contains_key(kind) => {
                check_body(messages, kind, value, rpc)
            }
            _ => {}
        }
    }
}

#[test]
fn readme_request_bodies_name_real_fields() {
    let messages = proto_fields();
    let mut checked = 0;
    // The table: | `Service/Method`, … | `{…}` … |
    for line in README
        .lines()
        .filter(|l| l.starts_with("| `") && l.contains("Service/"))
    {
        let cells: Vec<&str> = line.split(" | ").collect();
        let rpc = cells[0].trim_start_matches("| `");
        let method = rpc
            .split('`')
            .next()
            .and_then(|r| r.split('/').nth(1))
            .expect("Service/Method");
        for body in cells[1].split('`').filter(|part| part.starts_with('{')) {
            let Ok(body) = serde_json::from_str::<Value>(body) else {
                continue;
            };
            check_body(&messages, &format!("{method}Request"), &body, rpc);
            checked += 1;
        }
    }
    // The grpcurl lines: -d '{…}' … switchyard.v1.Service/Method
    for line in sh_lines().iter().filter(|l| l.starts_with("grpcurl ")) {
        let (Some(body), Some(target)) = (line.split('\'').nth(1), line.split_whitespace().last())
        else {
            continue;
        };
        let Some(method) = target
            .strip_prefix("switchyard.v1.")
            .and_then(|t| t.split('/').nth(1))
        else {
            continue;
        };
        let body: Value = serde_json::from_str(body).expect("a JSON body");
        check_body(&messages, &format!("{method}Request"), &body, target);
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} bodies checked");
}
