//! The `switchyard` CLI against a real coordinator process.

use std::process::Output;

use serde_json::Value;
use switchyard_testkit::Coordinator;

async fn cli(coordinator: &Coordinator, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--coordinator")
        .arg(coordinator.url())
        .args(args)
        .output()
        .await
        .expect("run switchyard")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "switchyard failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_str(stdout(output).trim()).expect("one JSON object")
}

#[tokio::test]
async fn submit_get_list_cancel_stats_round_trip() {
    let coordinator = Coordinator::start().await;

    let submitted = json(
        &cli(
            &coordinator,
            &[
                "--json",
                "submit",
                "--queue",
                "mail",
                "--kind",
                "echo",
                "--payload",
                "hello",
                "--priority",
                "-5",
                "--label",
                "team=ml",
                "--max-attempts",
                "7",
            ],
        )
        .await,
    );
    let id = submitted["job_id"].as_str().expect("job_id").to_owned();
    assert_eq!(submitted["state"], "queued");
    assert_eq!(submitted["duplicate"], false);

    let job = json(&cli(&coordinator, &["--json", "get", &id]).await);
    assert_eq!(job["job_id"], id.as_str());
    assert_eq!(job["queue"], "mail");
    assert_eq!(job["payload"], "hello");
    assert_eq!(job["priority"], -5);
    assert_eq!(job["max_attempts"], 7);
    assert_eq!(job["labels"]["team"], "ml");
    assert_eq!(job["blocked_on"]["reason"], "no_worker");

    // Human output names the fields too.
    let text = stdout(&cli(&coordinator, &["get", &id]).await);
    assert!(text.contains(&id) && text.contains("queued"), "{text}");

    cli(
        &coordinator,
        &["submit", "--queue", "other", "--kind", "echo"],
    )
    .await;
    let listed = stdout(&cli(&coordinator, &["--json", "list", "--queue", "mail"]).await);
    let ids: Vec<String> = listed
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line")["job_id"].to_string())
        .collect();
    assert_eq!(ids, vec![format!("{id:?}")]);

    let cancelled = json(&cli(&coordinator, &["--json", "cancel", &id]).await);
    assert_eq!(cancelled["state"], "cancelled");
    let listed = stdout(&cli(&coordinator, &["--json", "list", "--state", "cancelled"]).await);
    assert_eq!(listed.lines().count(), 1);

    let stats = json(&cli(&coordinator, &["--json", "stats"]).await);
    let queues = stats["queues"].as_array().expect("queues");
    let mail = queues
        .iter()
        .find(|q| q["queue"] == "mail")
        .expect("mail queue");
    assert_eq!(mail["cancelled"], 1);
    assert_eq!(mail["queued"], 0);
    assert!(stats["store"]["commits"].as_u64().expect("commits") >= 3);
}

#[tokio::test]
async fn refusals_exit_non_zero_with_the_servers_reason() {
    let coordinator = Coordinator::start().await;
    let output = cli(
        &coordinator,
        &["submit", "--queue", "bad queue", "--kind", "echo"],
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid argument") && stderr.contains("queue"),
        "{stderr}"
    );

    let output = cli(&coordinator, &["get", "no-such-job"]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not found"));

    let listed = stdout(&cli(&coordinator, &["--json", "list"]).await);
    assert_eq!(listed.trim(), "", "a refused submit stores nothing");
}
