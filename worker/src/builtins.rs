//! The built-in kinds of `switchyard-worker`, for demos, load tests and faults: `echo`,
//! `sleep`, `fail`, `panic` and `sha256`.

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
                "sleep"
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
