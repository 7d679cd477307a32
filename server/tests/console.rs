//! The web console, driven by a real browser: a coordinator with `--tokens` and `--metrics`
//! (the console's address), real workers, and headless Chromium steered over the DevTools
//! protocol by `tests/console/cdp.py` (its virtual environment made from PyPI once, under the
//! target directory, as the Python worker's test makes its own). What the pages show is
//! checked against what gRPC says; writes are checked through gRPC afterwards. Screenshots of
//! each page land in `CARGO_TARGET_TMPDIR/console-screenshots/`.
//!
//! Needs `chromium` (Debian's package; `.ci/run` installs it) and python3 with venv and pip.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use switchyard_client::{Batch, Client, JobSpec};
use switchyard_proto::v1::{AttemptOutcome, JobState};
use switchyard_testkit::{Coordinator, Worker};
use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use support::{COORDINATOR_FLAGS, PATIENCE, eventually, finished, http};

const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console");

const TOKENS: &str = "\
tok-admin-console    *      admin
tok-reader-console   *      reader
tok-worker-console   *      admin
tok-acme-console     acme   client
";
const ADMIN: &str = "tok-admin-console";
const READER: &str = "tok-reader-console";
const WORKER_TOKEN: &str = "tok-worker-console";
const ACME: &str = "tok-acme-console";

/// The virtual environment's interpreter, made once per run (see `support::python`).
fn venv_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        support::python::venv(
            "console-cdp",
            &Path::new(DRIVER).join("requirements.txt"),
            "the console tests",
        )
    })
}

/// Headless Chromium and the driver that steers its one tab; both killed when dropped.
struct Browser {
    _chromium: Child,
    _driver: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    _profile: TempDir,
    base: String,
    shots: PathBuf,
}

impl Browser {
    async fn start(console: std::net::SocketAddr, test: &str) -> Browser {
        let profile = tempfile::tempdir().expect("temporary profile directory");
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let chromium = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {chromium}: {e} (apt-get install chromium, or set $CHROMIUM)")
            });
        // Chromium writes the port it chose, then the browser's path, once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let port: u16 = eventually("chromium writes DevToolsActivePort", || {
            let port_file = port_file.clone();
            async move {
                let text = std::fs::read_to_string(&port_file).ok()?;
                let (port, _) = text.split_once('\n')?;
                port.trim().parse().ok()
            }
        })
        .await;
        let mut driver = Command::new(venv_python())
            .arg(Path::new(DRIVER).join("cdp.py"))
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start tests/console/cdp.py");
        let stdin = driver.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(driver.stdout.take().expect("piped stdout")).lines();
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
        std::fs::create_dir_all(&shots).expect("make the screenshots' directory");
        Browser {
            _chromium: chromium,
            _driver: driver,
            stdin,
            stdout,
            _profile: profile,
            base: format!("http://{console}"),
            shots: shots.join(test),
        }
    }

    async fn send(&mut self, command: Value) -> Value {
        let line = format!("{command}\n");
        let answer = tokio::time::timeout(PATIENCE, async {
            self.stdin
                .write_all(line.as_bytes())
                .await
                .expect("send to the driver");
            self.stdout
                .next_line()
                .await
                .expect("read the driver")
                .expect("the driver answers")
        })
        .await
        .unwrap_or_else(|_| panic!("the driver did not answer {command}"));
        let answer: Value = serde_json::from_str(&answer).expect("the driver answers JSON");
        assert_eq!(answer["ok"], true, "{command} failed: {answer}");
        answer
    }

    async fn goto(&mut self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.send(json!({"op": "goto", "url": url})).await;
    }

    async fn eval(&mut self, expr: &str) -> Value {
        self.send(json!({"op": "eval", "expr": expr})).await["value"].clone()
    }

    /// Runs `expr` (a click that posts a form) and waits for the page it leads to.
    async fn submit(&mut self, expr: &str) {
        self.send(json!({"op": "submit", "expr": expr})).await;
    }

    async fn screenshot(&mut self, name: &str) {
        std::fs::create_dir_all(&self.shots).expect("screenshots' directory");
        let path = self.shots.join(format!("{name}.png"));
        self.send(json!({"op": "screenshot", "path": path})).await;
    }

    async fn text(&mut self, selector: &str) -> String {
        let expr = format!(
            "(document.querySelector({}) || {{textContent: ''}}).textContent",
            json!(selector)
        );
        self.eval(&expr)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Signs in on the login page with `token`.
    async fn sign_in(&mut self, token: &str) {
        self.goto("/login").await;
        self.submit(&format!(
            "document.querySelector('#login input[name=token]').value = {}; \
             document.querySelector('#login button').click()",
            json!(token)
        ))
        .await;
        assert_eq!(
            self.eval("location.pathname").await,
            "/",
            "signed in, on the overview"
        );
    }
}

/// A coordinator with the console on `--metrics 127.0.0.1:0` and the tokens above, and an
/// admin client.
struct Fleet {
    coordinator: Coordinator,
    _tokens: TempDir,
    client: Client,
    workers: Vec<Worker>,
}

impl Fleet {
    async fn start(workers: usize) -> Fleet {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("tokens");
        std::fs::write(&path, TOKENS).expect("write the tokens file");
        let path = path.to_str().expect("a UTF-8 path").to_owned();
        let mut args = COORDINATOR_FLAGS.to_vec();
        args.extend(["--tokens", path.as_str(), "--metrics", "127.0.0.1:0"]);
        let coordinator = Coordinator::start_with(&args).await;
        let client = support::connect(&coordinator)
            .await
            .with_token(ADMIN)
            .expect("a printable token");
        let mut started = Vec::new();
        for _ in 0..workers {
            started.push(
                Worker::start(
                    &coordinator.url(),
                    &["--token", WORKER_TOKEN, "--concurrency", "4"],
                )
                .await,
            );
        }
        Fleet {
            coordinator,
            _tokens: dir,
            client,
            workers: started,
        }
    }

    fn console(&self) -> std::net::SocketAddr {
        self.coordinator
            .metrics_addr()
            .expect("the coordinator serves HTTP")
    }

    /// Submits `n` jobs of the `fail` kind with two attempts each and waits until they are
    /// FAILED (dead letters).
    async fn dead_letters(&self, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let job = JobSpec::new("default", "fail").max_attempts(2);
            ids.push(self.client.submit(job).await.expect("submit").job_id);
        }
        for id in &ids {
            let job = finished(&self.client, id).await;
            assert_eq!(job.state(), JobState::Failed, "{job:?}");
        }
        ids
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_what_grpc_reports_and_escape_what_jobs_carry() {
    let fleet = Fleet::start(2).await;
    let client = &fleet.client;
    for i in 0..5 {
        let id = client
            .submit(JobSpec::new("default", "echo").payload(format!("{{\"n\": {i}}}")))
            .await
            .expect("submit")
            .job_id;
        finished(client, &id).await;
    }
    let failed = fleet.dead_letters(1).await.remove(0);
    let xss = client
        .submit(
            JobSpec::new("default", "echo")
                .payload("<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">")
                .label("note", "<script>window.pwned=3</script>"),
        )
        .await
        .expect("submit")
        .job_id;
    finished(client, &xss).await;
    let batch = Batch::new().group("console-graph").jobs([
        JobSpec::new("default", "echo").reference("a"),
        JobSpec::new("default", "echo")
            .reference("b")
            .depends_on("a"),
        JobSpec::new("default", "echo")
            .reference("c")
            .depends_on("a"),
        JobSpec::new("default", "echo")
            .reference("d")
            .depends_on("b")
            .depends_on("c"),
    ]);
    let group = client.submit_batch(batch).await.expect("submit the group");
    for job in &group.jobs {
        finished(client, &job.job_id).await;
    }

    let mut browser = Browser::start(fleet.console(), "pages").await;
    browser.goto("/").await;
    assert_eq!(
        browser.eval("location.pathname").await,
        "/login",
        "without a token the console asks for one"
    );
    browser.screenshot("login").await;
    browser.sign_in(ADMIN).await;

    // Overview: every queue's counts are Stats' counts, and the page refreshes itself.
    let stats = client.stats().await.expect("stats");
    let shown = browser
        .eval(
            "Object.fromEntries([...document.querySelectorAll('#queues tr[data-queue]')].map(tr => \
             [tr.dataset.queue, Object.fromEntries([...tr.querySelectorAll('td[data-state]')] \
             .map(td => [td.dataset.state, Number(td.textContent)]))]))",
        )
        .await;
    assert_eq!(stats.queues.len(), shown.as_object().map_or(0, |o| o.len()));
    for q in &stats.queues {
        let row = &shown[&q.queue];
        for (state, n) in [
            ("queued", q.queued),
            ("running", q.running),
            ("succeeded", q.succeeded),
            ("failed", q.failed),
            ("cancelled", q.cancelled),
            ("deadline_exceeded", q.deadline_exceeded),
        ] {
            assert_eq!(row[state], n, "{} {state}: page {shown}", q.queue);
        }
    }
    assert_eq!(
        browser.text("#workers").await,
        stats.workers.to_string(),
        "workers"
    );
    assert_eq!(
        browser.text("#hour-failed").await,
        "1",
        "one dead letter this hour"
    );
    assert_eq!(
        browser.text("#hour-succeeded").await,
        (stats.queues[0].succeeded).to_string()
    );
    let deadline = Instant::now() + PATIENCE;
    while browser
        .eval("Number(document.querySelector('#live').dataset.refreshed || 0)")
        .await
        .as_u64()
        < Some(1)
    {
        assert!(Instant::now() < deadline, "the overview never refreshed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        browser
            .eval("document.querySelectorAll('svg.chart g.bar').length")
            .await
            == 60
    );
    browser.screenshot("overview").await;

    // A failed job's page shows both of its attempts.
    browser.goto(&format!("/jobs/{failed}")).await;
    assert_eq!(browser.text("#job-state").await, "failed");
    let attempts = browser
        .eval(
            "[...document.querySelectorAll('#attempts tr.attempt')].map(tr => \
             [tr.dataset.outcome, tr.querySelector('td.error').textContent])",
        )
        .await;
    let job = client.get(&failed).await.expect("get");
    assert_eq!(job.attempts.len(), 2);
    assert!(
        job.attempts
            .iter()
            .all(|a| a.outcome() == AttemptOutcome::Failed)
    );
    assert_eq!(
        attempts,
        json!([["failed", "fail: as asked"], ["failed", "fail: as asked"]]),
        "{attempts}"
    );
    browser.screenshot("job-failed").await;

    // Markup in a payload and a label is text: shown as written, never run.
    browser.goto(&format!("/jobs/{xss}")).await;
    let payload = browser.text("#payload pre").await;
    assert!(
        payload.contains("<script>window.pwned=1</script><img src=x"),
        "{payload}"
    );
    assert!(
        browser
            .text("#labels")
            .await
            .contains("note=<script>window.pwned=3</script>")
    );
    assert_eq!(
        browser.eval("typeof window.pwned").await,
        "undefined",
        "no script of the job's ran"
    );
    assert_eq!(
        browser
            .eval("document.querySelectorAll('main script, main img').length")
            .await,
        0
    );
    browser.screenshot("job-escaped").await;

    // The group's graph: a node per job, coloured by state, an edge per dependency.
    browser.goto("/groups/console-graph").await;
    assert_eq!(browser.text("#group-state").await, "succeeded");
    assert_eq!(
        browser
            .eval("document.querySelectorAll('svg.graph g.node[data-state=succeeded]').length")
            .await,
        4
    );
    assert_eq!(
        browser
            .eval("document.querySelectorAll('svg.graph g.edges line').length")
            .await,
        4
    );
    browser.screenshot("group").await;

    // Workers: each connected one, with its last heartbeat.
    browser.goto("/workers").await;
    for worker in &fleet.workers {
        let row = browser
            .eval(&format!(
                "!!document.querySelector('tr[data-worker=\"{}\"] td.heartbeat')",
                worker.id()
            ))
            .await;
        assert_eq!(row, true, "worker {} listed", worker.id());
    }
    browser.screenshot("workers").await;

    // Jobs, filtered by kind and label; queues with their controls; dead letters.
    browser.goto("/jobs?kind=fail").await;
    assert_eq!(
        browser
            .eval("[...document.querySelectorAll('table.jobs tr[data-job]')].map(tr => tr.dataset.job)")
            .await,
        json!([failed])
    );
    browser
        .goto("/jobs?label=note%3D%3Cscript%3Ewindow.pwned%3D3%3C%2Fscript%3E")
        .await;
    assert_eq!(
        browser
            .eval("[...document.querySelectorAll('table.jobs tr[data-job]')].map(tr => tr.dataset.job)")
            .await,
        json!([xss])
    );
    browser.goto("/jobs").await;
    browser.screenshot("jobs").await;
    browser.goto("/queues").await;
    assert_eq!(
        browser
            .text("#queues tr[data-queue=default] td.paused")
            .await,
        "no"
    );
    browser
        .submit("document.querySelector('#queues tr[data-queue=default] button').click()")
        .await;
    assert_eq!(
        browser
            .text("#queues tr[data-queue=default] td.paused")
            .await,
        "paused"
    );
    let stats = client.stats().await.expect("stats");
    assert!(
        stats
            .queues
            .iter()
            .any(|q| q.queue == "default" && q.paused)
    );
    browser
        .submit(
            "const f = document.querySelector('#quota-form'); \
             f.querySelector('[name=scope]').value = 'queue:default'; \
             f.querySelector('[name=max_in_flight]').value = '3'; \
             f.querySelector('[name=rate_per_second]').value = '50'; \
             f.querySelector('button').click()",
        )
        .await;
    let quota = support::quota_of(client, "queue:default")
        .await
        .expect("the form set a quota");
    assert_eq!(
        (quota.max_in_flight, quota.rate_per_second),
        (Some(3), Some(50.0))
    );
    assert_eq!(
        browser
            .text("#quotas tr[data-scope=\"queue:default\"] td:nth-child(2)")
            .await,
        "0 / 3"
    );
    browser.screenshot("queues").await;
    browser.goto("/dead-letters").await;
    assert_eq!(browser.text("#dead-letter-groups td.count").await, "1");
    browser.screenshot("dead-letters").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_requeue_on_the_dead_letter_page_runs_the_selected_jobs_again() {
    let fleet = Fleet::start(1).await;
    let ids = fleet.dead_letters(3).await;
    let mut browser = Browser::start(fleet.console(), "bulk").await;
    browser.sign_in(ADMIN).await;
    browser.goto("/dead-letters?kind=fail").await;
    let listed = browser
        .eval("[...document.querySelectorAll('input[name=id]')].map(box => box.value).sort()")
        .await;
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, json!(expected));
    // Select all with the header's checkbox (the page's script ticks each).
    browser
        .eval("document.querySelector('[data-select-all]').click()")
        .await;
    assert_eq!(browser.text("#selected-count").await, "3 selected");
    browser.screenshot("dead-letters-selected").await;
    browser
        .submit("document.querySelector('#requeue-selected').click()")
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('#bulk-result').dataset.changed")
            .await,
        "3",
        "{}",
        browser.text("main").await
    );
    browser.screenshot("bulk-result").await;
    // Each ran again: two more attempts, failed again.
    for id in &ids {
        eventually(&format!("{id} ran again"), || async {
            let job = fleet.client.get(id).await.ok()?;
            (job.attempts.len() == 4 && job.state() == JobState::Failed).then_some(())
        })
        .await;
    }

    // Delete every job the filter matches (after the page's confirmation): they are gone.
    browser.goto("/dead-letters?kind=fail").await;
    browser
        .submit("document.querySelector('button[value=delete-matching]').click()")
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('#bulk-result').dataset.changed")
            .await,
        "3",
        "{}",
        browser.text("main").await
    );
    for id in &ids {
        let gone = fleet.client.get(id).await;
        assert!(gone.is_err(), "{id} deleted: {gone:?}");
    }
    browser.goto("/dead-letters").await;
    assert_eq!(
        browser.text("#dead-letter-groups td").await,
        "No failed jobs."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_the_admin_role_and_the_session_csrf_token() {
    let fleet = Fleet::start(1).await;
    let id = fleet.dead_letters(1).await.remove(0);
    let console = fleet.console();

    // A reader sees the dead letters, is offered no buttons, and a write it forges is 403.
    let mut browser = Browser::start(console, "reader").await;
    browser.sign_in(READER).await;
    browser.goto("/dead-letters").await;
    assert_eq!(
        browser
            .eval("!!document.querySelector('#requeue-selected')")
            .await,
        false
    );
    let status = browser
        .eval(&format!(
            "fetch('/dead-letters/bulk', {{method: 'POST', body: new URLSearchParams({{ \
             csrf: document.querySelector('input[name=csrf]').value, do: 'requeue', id: {} }})}}) \
             .then(r => r.status)",
            json!(id)
        ))
        .await;
    assert_eq!(status, 403, "a reader's write is refused");
    let status = browser
        .eval(&format!(
            "fetch('/jobs/{id}/requeue', {{method: 'POST', body: new URLSearchParams({{ \
             csrf: document.querySelector('input[name=csrf]').value }})}}).then(r => r.status)"
        ))
        .await;
    assert_eq!(status, 403);
    browser.screenshot("reader-dead-letters").await;

    // A tenant's token sees only its tenant's jobs: not this one, which has none.
    let get = |path: &str, token: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        )
    };
    let (status, _, page) = http(console, &get("/dead-letters", ACME)).await;
    assert_eq!(status, 200, "{page}");
    assert!(!page.contains(&id), "another tenant's job is not listed");
    let (status, _, page) = http(console, &get(&format!("/jobs/{id}"), ACME)).await;
    assert_eq!(status, 404, "{page}");
    let (status, _, page) = http(console, &get(&format!("/jobs/{id}"), READER)).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&id));

    // Over plain HTTP: no token is sent to sign in; an admin's token without the session's
    // CSRF token is 403; with it, the write is done.
    let post = |credential: &str, body: String| {
        format!(
            "POST /jobs/{id}/requeue HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{credential}\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let (status, headers, _) = http(console, &post("", String::new())).await;
    assert_eq!(
        (status, headers.get("location").map(String::as_str)),
        (303, Some("/login"))
    );
    let admin = format!("Authorization: Bearer {ADMIN}\r\n");
    let (status, _, body) = http(console, &post(&admin, "csrf=forged".into())).await;
    assert_eq!(status, 403, "{body}");
    let job = fleet.client.get(&id).await.expect("get");
    assert_eq!(
        (job.state(), job.attempts.len()),
        (JobState::Failed, 2),
        "refused writes changed nothing"
    );
    let (status, _, page) = http(
        console,
        &format!("GET /jobs/{id} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{admin}\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries a CSRF token")
        .to_owned();
    let (status, headers, _) = http(console, &post(&admin, format!("csrf={csrf}"))).await;
    assert_eq!(
        (status, headers.get("location").cloned()),
        (303, Some(format!("/jobs/{id}")))
    );
    eventually("the requeued job runs again", || async {
        let job = fleet.client.get(&id).await.ok()?;
        (job.attempts.len() > 2).then_some(())
    })
    .await;
}
