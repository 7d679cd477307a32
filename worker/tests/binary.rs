//! The `switchyard-worker` binary's flags. What it does with jobs is tested against the real
//! coordinator in `server/tests/workers.rs`.

use switchyard_testkit::bin;

#[tokio::test]
async fn refuses_bad_flags() {
    for args in [
        &["--concurrency", "0"][..],
        &["--heartbeat-interval", "0s"],
        &["--kinds", "echo,teleport"],
        &["--queues", ","],
        &["--drain-grace", "soon"],
    ] {
        let output = tokio::process::Command::new(bin("switchyard-worker"))
            .args(args)
            .output()
            .await
            .expect("run switchyard-worker");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
}
