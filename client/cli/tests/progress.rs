//! `switchyard get` shows a job's progress: the fraction as a percentage, the message, the
//! attempt that reported it and the checkpoint's size.

use std::process::Output;

use serde_json::Value;
use switchyard_testkit::{Coordinator, Worker};

async fn cli(coordinator: &Coordinator, args: &[&str]) -> Output {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--coordinator")
        .arg(coordinator.url())
        .args(args)
        .output()
        .await
        .expect("run switchyard");
    assert!(
        output.status.success(),
        "switchyard {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_shows_the_progress_a_handler_reported() {
    let coordinator = Coordinator::start().await;
    let _worker = Worker::start(&coordinator.url(), &["--kinds", "steps"]).await;
    // Fails once after checkpointing step 2 of 4, then resumes there.
    let done = cli(
        &coordinator,
        &[
            "--json",
            "submit",
            "--kind",
            "steps",
            "--payload",
            "4 10 fail@2",
            "--max-attempts",
            "2",
            "--wait",
        ],
    )
    .await;
    let done: Value = serde_json::from_slice(&done.stdout).expect("one JSON object");
    let id = done["job_id"].as_str().expect("job_id").to_owned();

    let text = String::from_utf8_lossy(&cli(&coordinator, &["get", &id]).await.stdout).into_owned();
    assert!(
        text.contains("        progress: 100% step 4 of 4 (attempt 2, checkpoint 1 byte)\n"),
        "{text}"
    );
    assert!(text.contains("4 steps, resumed from step 2"), "{text}");

    let json: Value =
        serde_json::from_slice(&cli(&coordinator, &["--json", "get", &id]).await.stdout)
            .expect("one JSON object");
    let progress = &json["progress"];
    assert_eq!(progress["attempt"], 2, "{json}");
    assert_eq!(progress["fraction"], 1.0, "{json}");
    assert_eq!(progress["message"], "step 4 of 4", "{json}");
    assert_eq!(progress["checkpoint_bytes"], 1, "{json}");
}
