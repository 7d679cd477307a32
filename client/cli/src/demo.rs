//! `switchyard demo`: the group model on a running coordinator (meant for `switchyard dev`),
//! narrated step by step: fan-out and fan-in, an errgroup that stops early, a collect-all
//! group, and a pipeline. Each step checks what it claims, so the demo doubles as a smoke
//! test: it exits non-zero when the system did not behave as narrated.

use std::{
    collections::HashMap,
    future::Future,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail, ensure};
use clap::Args;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use switchyard_client::{Batch, Client, GroupOutcome, GroupUpdate, JobResult, JobSpec, JobState};

use crate::{
    exit::Exit,
    output,
    watch::{self, Finish, format_duration, format_rate, outcome_text},
};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The queue the demo's jobs go to (the workers of `switchyard dev` serve `default`).
    #[arg(long, default_value = "default")]
    queue: String,
    /// Jobs in the fan-out of the first step.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    jobs: u64,
}

/// The longest one step may take before the demo calls it broken.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long each `sleep` job of the errgroup would run if nothing stopped it.
const SLEEP_MS: u64 = 30_000;

pub async fn run(client: &Client, args: DemoArgs, coordinator: &str) -> anyhow::Result<Exit> {
    let workers = client
        .workers()
        .await
        .context("asking the coordinator for its workers")?;
    if workers.is_empty() {
        bail!(
            "no worker is connected to {coordinator}: start `switchyard dev` and run the demo \
             against it"
        );
    }
    let slots: u32 = workers.iter().map(|w| w.slots).sum();
    outln!(
        "Switchyard demo on {coordinator}: {} worker(s), {slots} slots in all; jobs go to queue \
         {:?}.",
        workers.len(),
        args.queue
    );
    let queue = args.queue.as_str();
    step(1, fan_out(client, queue, args.jobs)).await?;
    step(2, errgroup(client, queue, slots)).await?;
    step(3, collect_all(client, queue)).await?;
    step(4, pipeline(client, queue)).await?;
    outln!("\nAll four patterns behaved as described.");
    Ok(Exit::Success)
}

/// Runs one step within [`STEP_TIMEOUT`].
async fn step(number: u32, work: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    outln!();
    tokio::time::timeout(STEP_TIMEOUT, work)
        .await
        .with_context(|| {
            format!(
                "step {number} did not finish within {}",
                format_duration(STEP_TIMEOUT)
            )
        })?
        .with_context(|| format!("step {number}"))
}

async fn fan_out(client: &Client, queue: &str, n: u64) -> anyhow::Result<()> {
    outln!("1. Fan-out, fan-in: {n} sha256 jobs as one group, gathered as they finish.");
    let payloads: Vec<String> = (0..n).map(|i| format!("piece {i}")).collect();
    let batch = Batch::new().jobs(
        payloads
            .iter()
            .map(|payload| JobSpec::new(queue, "sha256").payload(payload.as_str())),
    );
    let started = Instant::now();
    let submitted = client.submit_group(batch).await?;
    let group = submitted.group_id.as_str();
    outln!(
        "   Submitted in one transaction as group {group} ({}). Results stream back:",
        format_duration(started.elapsed())
    );
    let expected: HashMap<&str, String> = submitted
        .jobs
        .iter()
        .zip(&payloads)
        .map(|(job, payload)| (job.job_id.as_str(), sha256_hex(payload.as_bytes())))
        .collect();
    let mut mismatched = Vec::new();
    let view = watch::View {
        total: Some(n),
        json: false,
        indent: "   ",
        already_finished: false,
    };
    let finish = watch::follow(client, group, None, view, |result| {
        if result.state() == JobState::Succeeded
            && expected.get(result.job_id.as_str()).map(String::as_bytes)
                != Some(result.output.as_slice())
        {
            mismatched.push(result.job_id.clone());
        }
    })
    .await?;
    let Finish::Outcome(outcome) = finish else {
        bail!("interrupted");
    };
    let took = started.elapsed();
    ensure!(
        outcome.state() == JobState::Succeeded && u64::from(outcome.succeeded) == n,
        "expected all {n} jobs to succeed; the group ended {}",
        outcome_text(&outcome, Some(took))
    );
    ensure!(
        mismatched.is_empty(),
        "{} outputs differ from the digest computed here, e.g. job {}",
        mismatched.len(),
        mismatched[0]
    );
    outln!(
        "   Every one of the {n} digests matches the one computed here: {} from submit to the \
         last result.",
        format_rate(n as f64 / took.as_secs_f64())
    );
    Ok(())
}

async fn errgroup(client: &Client, queue: &str, slots: u32) -> anyhow::Result<()> {
    // Every sleeper and the failing job get a slot at once, so the failure stops jobs that
    // are running, not only queued ones.
    let sleepers = slots.saturating_sub(1).clamp(1, 5);
    outln!(
        "2. errgroup: {sleepers} `sleep {SLEEP_MS}` jobs and one `fail` job (max_attempts 1, \
         starting half a second later) in a group with cancel_on_failure."
    );
    let batch = Batch::new()
        .jobs((0..sleepers).map(|_| JobSpec::new(queue, "sleep").payload(SLEEP_MS.to_string())))
        .job(
            JobSpec::new(queue, "fail")
                .max_attempts(1)
                .run_at(SystemTime::now() + Duration::from_millis(500)),
        )
        .cancel_on_failure(true);
    let started = Instant::now();
    let submitted = client.submit_group(batch).await?;
    let kinds = kinds_by_id(&submitted.jobs, |i| {
        if i < sleepers as usize {
            "sleep"
        } else {
            "fail"
        }
    });
    let outcome = gather(client, &submitted.group_id, |result| {
        outln!("   {}", result_line(result, &kinds));
    })
    .await?;
    let took = started.elapsed();
    print_outcome(&outcome, took);
    ensure!(
        outcome.state() != JobState::Succeeded && outcome.failed >= 1,
        "expected the group to fail with the `fail` job"
    );
    ensure!(
        outcome.cancelled == sleepers,
        "expected the {sleepers} sleepers to be cancelled, {} were",
        outcome.cancelled
    );
    ensure!(
        took < Duration::from_millis(SLEEP_MS),
        "the group took {} although its first failure should have stopped it",
        format_duration(took)
    );
    outln!(
        "   It stopped after {} instead of {}: the failure cancelled its running siblings.",
        format_duration(took),
        format_duration(Duration::from_millis(SLEEP_MS))
    );
    Ok(())
}

async fn collect_all(client: &Client, queue: &str) -> anyhow::Result<()> {
    const ECHOES: u32 = 12;
    const FAILS: u32 = 3;
    outln!(
        "3. Collect-all: {ECHOES} `echo` and {FAILS} `fail` jobs (max_attempts 1) in a group \
         without cancel_on_failure: everything runs, the outcome counts."
    );
    let batch = Batch::new()
        .jobs((0..ECHOES).map(|i| JobSpec::new(queue, "echo").payload(format!("echo {i}"))))
        .jobs((0..FAILS).map(|_| JobSpec::new(queue, "fail").max_attempts(1)));
    let started = Instant::now();
    let submitted = client.submit_group(batch).await?;
    let kinds = kinds_by_id(&submitted.jobs, |i| {
        if i < ECHOES as usize { "echo" } else { "fail" }
    });
    let outcome = gather(client, &submitted.group_id, |result| {
        if result.state() != JobState::Succeeded {
            outln!("   {}", result_line(result, &kinds));
        }
    })
    .await?;
    print_outcome(&outcome, started.elapsed());
    ensure!(
        (outcome.succeeded, outcome.failed, outcome.cancelled) == (ECHOES, FAILS, 0),
        "expected {ECHOES} succeeded, {FAILS} failed and none cancelled"
    );
    outln!("   No failure stopped the others: {ECHOES} succeeded and {FAILS} failed.");
    Ok(())
}

async fn pipeline(client: &Client, queue: &str) -> anyhow::Result<()> {
    outln!(
        "4. Pipeline: echo \"hello\" → sha256 → sha256, chained by refs; each stage has an \
         empty payload and receives its dependency's output."
    );
    let batch = Batch::new()
        .job(
            JobSpec::new(queue, "echo")
                .payload("hello")
                .reference("greet"),
        )
        .job(
            JobSpec::new(queue, "sha256")
                .reference("digest")
                .depends_on("greet"),
        )
        .job(
            JobSpec::new(queue, "sha256")
                .reference("digest-of-digest")
                .depends_on("digest"),
        );
    let started = Instant::now();
    let submitted = client.submit_group(batch).await?;
    let stages: HashMap<&str, usize> = submitted
        .jobs
        .iter()
        .enumerate()
        .map(|(i, job)| (job.job_id.as_str(), i + 1))
        .collect();
    let last = submitted
        .jobs
        .last()
        .context("the coordinator answered no jobs")?
        .job_id
        .clone();
    let mut last_output = None;
    let outcome = gather(client, &submitted.group_id, |result| {
        let stage = stages.get(result.job_id.as_str()).copied().unwrap_or(0);
        outln!(
            "   stage {stage} {}: {}",
            output::state_name(result.state),
            if result.state() == JobState::Succeeded {
                String::from_utf8_lossy(&result.output).into_owned()
            } else {
                result.error.clone()
            }
        );
        if result.job_id == last {
            last_output = Some(result.output.clone());
        }
    })
    .await?;
    print_outcome(&outcome, started.elapsed());
    ensure!(
        outcome.state() == JobState::Succeeded,
        "expected every stage to succeed"
    );
    // The second stage hashes the first digest as the worker wrote it: lowercase hex text.
    let expected = sha256_hex(sha256_hex(b"hello").as_bytes());
    let got = last_output.context("no result for the last stage")?;
    ensure!(
        got == expected.as_bytes(),
        "the last stage output {:?}, but sha256(sha256(\"hello\")) is {expected}",
        String::from_utf8_lossy(&got)
    );
    outln!("   The last output equals sha256(sha256(\"hello\")) computed here: {expected}.");
    Ok(())
}

/// Follows a group to its outcome, calling `each` with every result as it arrives.
async fn gather(
    client: &Client,
    group_id: &str,
    mut each: impl FnMut(&JobResult),
) -> anyhow::Result<GroupOutcome> {
    let mut events = std::pin::pin!(client.watch_group(group_id, None));
    while let Some(event) = events.next().await {
        match event
            .with_context(|| format!("watching group {group_id}"))?
            .update
        {
            GroupUpdate::Result(result) => each(&result),
            GroupUpdate::Outcome(outcome) => return Ok(outcome),
        }
    }
    bail!("the stream of group {group_id} ended before its outcome")
}

/// The outcome, nested in the narration.
fn print_outcome(outcome: &GroupOutcome, took: Duration) {
    for line in outcome_text(outcome, Some(took)).lines() {
        outln!("   {line}");
    }
}

/// Job id → kind, from the order of the submit's answer.
fn kinds_by_id(
    jobs: &[switchyard_client::SubmitResponse],
    kind: impl Fn(usize) -> &'static str,
) -> HashMap<String, &'static str> {
    jobs.iter()
        .enumerate()
        .map(|(i, job)| (job.job_id.clone(), kind(i)))
        .collect()
}

/// `job ID (sleep) cancelled: reason`
fn result_line(result: &JobResult, kinds: &HashMap<String, &'static str>) -> String {
    let kind = kinds.get(&result.job_id).copied().unwrap_or("?");
    let mut line = format!(
        "job {} ({kind}) {}",
        result.job_id,
        output::state_name(result.state)
    );
    if !result.error.is_empty() {
        line.push_str(&format!(": {}", result.error));
    }
    line
}

/// Lowercase hex of the SHA-256 digest, as the built-in `sha256` kind outputs it.
fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"hello"),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }
}
