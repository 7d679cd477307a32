//! The built-in kinds of `switchyard-worker`, for demos, load tests and faults: `echo`,
//! `sleep`, `fail`, `panic`, `sha256`, `hang`, `fanout`, and `steps` (progress and
//! checkpoints).

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{Error, JobContext, JobError, JobResult, Worker};

/// Every built-in kind, in the order `--help` lists them.
pub const KINDS: &[&str] = &[
    "echo",
    "sleep",
    "fail",
    "panic",
    "sha256",
    "hang",
    "fanout",
    "flaky-fanout",
    "steps",
];

/// Registers the built-in kinds on `worker`: all of them, or only those named in `only`.
/// Names that are not built-in kinds are an error.
pub fn register(mut worker: Worker, only: Option<&[String]>) -> Result<Worker, Error> {
    if let Some(only) = only
        && let Some(unknown) = only.iter().find(|kind| !KINDS.contains(&kind.as_str()))
    {
        return Err(Error::InvalidConfig(format!(
            "{unknown:?} is not a built-in kind (built-ins: {})",
            KINDS.join(", ")
        )));
    }
    let wanted = |kind: &str| only.is_none_or(|only| only.iter().any(|k| k == kind));
    if wanted("echo") {
        worker = worker.handle("echo", echo);
    }
    if wanted("sleep") {
        worker = worker.handle("sleep", sleep);
    }
    if wanted("fail") {
        worker = worker.handle("fail", fail);
    }
    if wanted("panic") {
        worker = worker.handle("panic", panic);
    }
    if wanted("sha256") {
        worker = worker.handle("sha256", sha256);
    }
    if wanted("hang") {
        worker = worker.handle("hang", hang);
    }
    if wanted("fanout") {
        worker = worker.handle("fanout", fanout);
    }
    if wanted("steps") {
        worker = worker.handle("steps", steps);
    }
    if wanted("flaky-fanout") {
        worker = worker.handle("flaky-fanout", flaky_fanout);
    }
    Ok(worker)
}

/// Payload = milliseconds. Waits that long and ignores cancellation: a handler that does not
/// listen, for seeing the worker abandon it.
pub async fn hang(ctx: JobContext) -> JobResult {
    let millis = parse_millis(&ctx.payload)?;
    tokio::time::sleep(Duration::from_millis(millis)).await;
    Ok(Vec::new())
}

/// Payload = `N KIND [CHILD_PAYLOAD]`. Submits N child jobs of KIND on this job's queue (they
/// inherit its deadline and are cancelled when its attempt ends other than in success), waits for all of them, and outputs their
/// outputs, one per line. A child that does not succeed fails this job.
pub async fn fanout(ctx: JobContext) -> JobResult {
    let (client, children) = submit_children(&ctx, "fanout").await?;
    let mut outputs = Vec::with_capacity(children.len());
    for child in children {
        let job = tokio::select! {
            job = client.wait(&child, None) => job.map_err(JobError::retry)?,
            () = ctx.cancelled() => return Err(JobError::cancelled("fanout: cancelled")),
        };
        if job.state() != switchyard_client::JobState::Succeeded {
            return Err(JobError::fatal(format!(
                "fanout: child {} ended {}: {}",
                job.job_id,
                job.state().as_str_name(),
                job.error
            )));
        }
        outputs.push(job.output);
    }
    Ok(outputs.join(&b'\n'))
}

/// Payload = `N [MS] [fail@K]`: N steps (1..=1000000) of MS milliseconds each (default 100).
/// After each step it checkpoints the step reached and reports progress (`step i of N`). It
/// starts from the checkpoint of an earlier attempt, if there is one. With `fail@K`, an
/// attempt that started from nothing fails (retryable, no backoff) right after checkpointing
/// step K, so that the retry resumes there. Output = `N steps, resumed from step S` (S = 0
/// for a fresh start).
pub async fn steps(ctx: JobContext) -> JobResult {
    let plan = Steps::parse(&ctx.payload)?;
    let from = match ctx.last_checkpoint() {
        None => 0,
        Some(checkpoint) => std::str::from_utf8(checkpoint)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .filter(|step| *step <= plan.count)
            .ok_or_else(|| {
                JobError::fatal(format!(
                    "steps: the checkpoint is not a step of {}: {:?}",
                    plan.count,
                    String::from_utf8_lossy(checkpoint)
                ))
            })?,
    };
    let fresh = ctx.last_checkpoint().is_none();
    for step in from + 1..=plan.count {
        tokio::select! {
            () = tokio::time::sleep(plan.each) => {}
            () = ctx.cancelled() => return Err(JobError::cancelled("steps: cancelled")),
        }
        ctx.checkpoint(step.to_string())?;
        ctx.progress(
            step as f64 / plan.count as f64,
            format!("step {step} of {}", plan.count),
        )?;
        if fresh && plan.fail_after == Some(step) {
            return Err(JobError::retry_after(
                format!("steps: failing once after step {step}, as asked"),
                Duration::ZERO,
            ));
        }
    }
    Ok(format!("{} steps, resumed from step {from}", plan.count).into_bytes())
}

/// What a `steps` payload asks for.
#[derive(Debug, PartialEq, Eq)]
struct Steps {
    count: u64,
    each: Duration,
    fail_after: Option<u64>,
}

impl Steps {
    fn parse(payload: &[u8]) -> Result<Steps, JobError> {
        let bad = || {
            JobError::fatal(format!(
                "steps: payload must be `N [MS] [fail@K]` with N in 1..=1000000, got {:?}",
                String::from_utf8_lossy(payload)
            ))
        };
        let text = std::str::from_utf8(payload).map_err(|_| bad())?;
        let mut words = text.split_whitespace();
        let count = words
            .next()
            .and_then(|n| n.parse().ok())
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(bad)?;
        let mut plan = Steps {
            count,
            each: Duration::from_millis(100),
            fail_after: None,
        };
        for word in words {
            if let Some(k) = word.strip_prefix("fail@") {
                plan.fail_after = Some(
                    k.parse()
                        .ok()
                        .filter(|k| (1..=count).contains(k))
                        .ok_or_else(bad)?,
                );
            } else {
                plan.each = Duration::from_millis(word.parse().map_err(|_| bad())?);
            }
        }
        Ok(plan)
    }
}

/// Payload as `fanout`'s. Its first attempt submits the children and then fails (retryable)
/// without waiting for them; later attempts are a `fanout`. For seeing the first attempt's
/// children cancelled with it and the retry's own children run.
pub async fn flaky_fanout(ctx: JobContext) -> JobResult {
    if ctx.attempt > 1 {
        return fanout(ctx).await;
    }
    submit_children(&ctx, "flaky-fanout").await?;
    Err(JobError::retry(
        "flaky-fanout: the first attempt fails after submitting its children",
    ))
}

/// Submits the children a `N KIND [PAYLOAD]` payload asks for; returns the client and their
/// ids.
async fn submit_children(
    ctx: &JobContext,
    name: &str,
) -> Result<(switchyard_client::Client, Vec<String>), JobError> {
    let text = std::str::from_utf8(&ctx.payload)
        .map_err(|_| JobError::fatal(format!("{name}: the payload is not text")))?;
    let mut parts = text.splitn(3, ' ');
    let count: usize = parts
        .next()
        .and_then(|n| n.trim().parse().ok())
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| {
            JobError::fatal(format!(
                "{name}: payload must be `N KIND [PAYLOAD]`, N in 1..=10000"
            ))
        })?;
    let kind = parts
        .next()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| JobError::fatal(format!("{name}: payload must be `N KIND [PAYLOAD]`")))?;
    let payload = parts.next().unwrap_or("").to_owned();
    let client = ctx.client()?;
    let batch = switchyard_client::Batch::new().jobs(
        (0..count)
            .map(|_| switchyard_client::JobSpec::new(&ctx.queue, kind).payload(payload.clone())),
    );
    let children = tokio::select! {
        done = client.submit_batch(batch) => done.map_err(JobError::retry)?,
        () = ctx.cancelled() => return Err(JobError::cancelled(format!("{name}: cancelled"))),
    };
    let ids = children.jobs.into_iter().map(|c| c.job_id).collect();
    Ok((client, ids))
}

/// Output = payload.
pub async fn echo(ctx: JobContext) -> JobResult {
    Ok(ctx.payload)
}

/// Payload = milliseconds as decimal text. Waits that long, or until the job is cancelled.
pub async fn sleep(ctx: JobContext) -> JobResult {
    let millis = parse_millis(&ctx.payload)?;
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(millis)) => Ok(Vec::new()),
        () = ctx.cancelled() => Err(JobError::cancelled("sleep: cancelled")),
    }
}

/// Always a retryable error.
pub async fn fail(_ctx: JobContext) -> JobResult {
    Err(JobError::retry("fail: as asked"))
}

/// Panics (the attempt fails; the worker lives on).
pub async fn panic(ctx: JobContext) -> JobResult {
    panic!("panic: as asked (job {})", ctx.job_id)
}

/// Output = the lowercase hex SHA-256 digest of the payload.
pub async fn sha256(ctx: JobContext) -> JobResult {
    Ok(hex(&Sha256::digest(&ctx.payload)).into_bytes())
}

fn parse_millis(payload: &[u8]) -> Result<u64, JobError> {
    std::str::from_utf8(payload)
        .ok()
        .map(str::trim)
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            JobError::fatal(format!(
                "sleep: payload must be milliseconds as decimal text, got {:?}",
                String::from_utf8_lossy(payload)
            ))
        })
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WorkerConfig;

    fn ctx(kind: &str, payload: &str) -> JobContext {
        JobContext::new("job-1", kind, payload)
    }

    #[tokio::test]
    async fn echo_returns_the_payload() {
        assert_eq!(echo(ctx("echo", "hello")).await, Ok(b"hello".to_vec()));
    }

    #[tokio::test]
    async fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256(ctx("sha256", "abc")).await,
            Ok(b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_vec())
        );
        assert_eq!(
            sha256(ctx("sha256", "")).await,
            Ok(b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_vec())
        );
    }

    #[tokio::test]
    async fn fail_is_retryable() {
        assert_eq!(
            fail(ctx("fail", "")).await,
            Err(JobError::retry("fail: as asked"))
        );
    }

    #[tokio::test]
    async fn panic_panics() {
        let joined = tokio::spawn(panic(ctx("panic", ""))).await;
        assert!(joined.is_err_and(|err| err.is_panic()));
    }

    #[test]
    fn sleep_payloads() {
        assert_eq!(parse_millis(b"250"), Ok(250));
        assert_eq!(parse_millis(b" 10\n"), Ok(10));
        for bad in [&b""[..], b"abc", b"-5", b"1.5", b"\xff"] {
            assert!(
                matches!(parse_millis(bad), Err(JobError::Fatal { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_sleeps() {
        let started = tokio::time::Instant::now();
        assert_eq!(sleep(ctx("sleep", "1500")).await, Ok(vec![]));
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_stops_when_cancelled() {
        let job = ctx("sleep", "60000");
        let token = job.cancellation.clone();
        let running = tokio::spawn(sleep(job));
        tokio::time::sleep(Duration::from_millis(10)).await;
        token.cancel();
        let result = running.await.expect("sleep does not panic");
        assert!(
            matches!(result, Err(JobError::Cancelled { .. })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn sleep_with_a_bad_payload_is_fatal() {
        assert!(matches!(
            sleep(ctx("sleep", "soon")).await,
            Err(JobError::Fatal { .. })
        ));
    }

    #[test]
    fn steps_payloads() {
        assert_eq!(
            Steps::parse(b"10"),
            Ok(Steps {
                count: 10,
                each: Duration::from_millis(100),
                fail_after: None
            })
        );
        assert_eq!(
            Steps::parse(b" 5 20 fail@3\n"),
            Ok(Steps {
                count: 5,
                each: Duration::from_millis(20),
                fail_after: Some(3)
            })
        );
        for bad in [
            &b""[..],
            b"0",
            b"x",
            b"5 fast",
            b"5 fail@6",
            b"5 fail@0",
            b"\xff",
        ] {
            assert!(
                matches!(Steps::parse(bad), Err(JobError::Fatal { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn steps_fail_once_and_resume_from_their_checkpoint() {
        let first = ctx("steps", "4 10 fail@2");
        let failed = steps(first).await;
        assert!(
            matches!(&failed, Err(JobError::Retry { after: Some(d), .. }) if d.is_zero()),
            "{failed:?}"
        );

        let mut again = JobContext::from_assignment(
            switchyard_proto::v1::Assignment {
                job_id: "job-1".into(),
                attempt: 2,
                kind: "steps".into(),
                payload: b"4 10 fail@2".to_vec(),
                checkpoint: b"2".to_vec(),
                ..Default::default()
            },
            crate::CancellationToken::new(),
            None,
        );
        assert_eq!(again.last_checkpoint(), Some(&b"2"[..]));
        again.attempt = 2;
        assert_eq!(
            steps(again).await,
            Ok(b"4 steps, resumed from step 2".to_vec())
        );
        assert_eq!(
            steps(ctx("steps", "3 0")).await,
            Ok(b"3 steps, resumed from step 0".to_vec())
        );
    }

    #[test]
    fn register_all_or_some() {
        let all = register(Worker::new(WorkerConfig::default()), None).expect("all");
        assert_eq!(
            all.kinds(),
            [
                "echo",
                "fail",
                "fanout",
                "flaky-fanout",
                "hang",
                "panic",
                "sha256",
                "sleep",
                "steps"
            ]
        );

        let only = ["sleep".to_owned(), "echo".to_owned()];
        let some = register(Worker::new(WorkerConfig::default()), Some(&only)).expect("some");
        assert_eq!(some.kinds(), ["echo", "sleep"]);

        let bad = ["echo".to_owned(), "teleport".to_owned()];
        assert!(matches!(
            register(Worker::new(WorkerConfig::default()), Some(&bad)),
            Err(Error::InvalidConfig(_))
        ));
    }
}
