//! `switchyard batch`: jobs from JSON lines, checked as a whole and then submitted in one
//! transaction, optionally as a group that `--watch` follows to its outcome.

use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    fmt,
    io::BufRead,
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_client::{Batch, Client, JobSpec, SubmitResponse};

use crate::{exit::Exit, output, watch};

/// The most jobs one `SubmitBatch` stores (all or none).
pub const MAX_BATCH: usize = 10_000;

/// Bad lines listed in the error; the rest are only counted.
const MAX_REPORTED: usize = 20;

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// JSON lines, one job per line; `-` reads stdin.
    #[arg(default_value = "-")]
    file: String,
    /// The queue of every job whose line names none.
    #[arg(long, default_value = "default")]
    queue: String,
    /// Submit the jobs as a group with this id (1-128 of A-Z a-z 0-9 _ . : -). With
    /// --cancel-on-failure or --watch and no --group, a fresh id is made.
    #[arg(long)]
    group: Option<String>,
    /// errgroup: the first job of the group that ends badly cancels the others.
    #[arg(long)]
    cancel_on_failure: bool,
    /// Then follow the group to its outcome, as `switchyard watch` does (the exit code follows
    /// the group's outcome).
    #[arg(long)]
    watch: bool,
}

/// One line of the input, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    kind: String,
    queue: Option<String>,
    payload: Option<Value>,
    payload_base64: Option<String>,
    priority: Option<i32>,
    max_attempts: Option<u32>,
    timeout_ms: Option<u64>,
    idempotency_key: Option<String>,
    concurrency_key: Option<String>,
    weight: Option<u32>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(rename = "ref")]
    reference: Option<String>,
    #[serde(default)]
    depends_on: Vec<String>,
}

/// One job read from the input.
#[derive(Debug, Clone)]
pub struct LineJob {
    /// 1-based, for messages.
    pub line: usize,
    /// Everything but its dependencies, which may be rewritten when the input is split.
    spec: JobSpec,
    pub reference: Option<String>,
    pub depends_on: Vec<String>,
}

impl LineJob {
    /// The job to submit; a dependency on a `ref` of a batch already stored becomes that
    /// job's id, since a `ref` only names jobs of the same `SubmitBatch`.
    fn to_spec(&self, stored: &HashMap<String, String>) -> JobSpec {
        let mut spec = self.spec.clone();
        if let Some(reference) = &self.reference {
            spec = spec.reference(reference);
        }
        for dependency in &self.depends_on {
            spec = spec.depends_on(stored.get(dependency).unwrap_or(dependency));
        }
        spec
    }
}

/// Why the input was refused: the bad lines, by number.
#[derive(Debug, PartialEq)]
pub struct BadInput {
    /// The first [`MAX_REPORTED`] problems: (line, message). Line 0 is the input as a whole.
    pub problems: Vec<(usize, String)>,
    /// All of them, reported or not.
    pub count: usize,
}

impl BadInput {
    fn new() -> BadInput {
        BadInput {
            problems: Vec::new(),
            count: 0,
        }
    }

    fn add(&mut self, line: usize, message: impl Into<String>) {
        self.count += 1;
        if self.problems.len() < MAX_REPORTED {
            self.problems.push((line, message.into()));
        }
    }
}

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let noun = if self.count == 1 {
            "problem"
        } else {
            "problems"
        };
        write!(
            f,
            "{} {noun} in the input; nothing was submitted",
            self.count
        )?;
        for (line, message) in &self.problems {
            match line {
                0 => write!(f, "\n  {message}")?,
                n => write!(f, "\n  line {n}: {message}")?,
            }
        }
        if self.count > self.problems.len() {
            write!(f, "\n  … and {} more", self.count - self.problems.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for BadInput {}

/// Reads every line and checks it, so that a bad line refuses the whole input before anything
/// is stored. Blank lines are skipped.
pub fn parse_jobs(input: impl BufRead, default_queue: &str) -> Result<Vec<LineJob>, BadInput> {
    let mut jobs = Vec::new();
    let mut bad = BadInput::new();
    // ref → line that names it.
    let mut refs: HashMap<String, usize> = HashMap::new();
    for (index, text) in input.split(b'\n').enumerate() {
        let number = index + 1;
        let text = match text {
            Ok(bytes) => bytes,
            Err(e) => {
                bad.add(number, format!("cannot read: {e}"));
                break;
            }
        };
        let Ok(text) = std::str::from_utf8(&text) else {
            bad.add(number, "not UTF-8");
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        match parse_line(text, default_queue) {
            Ok(job) => {
                if let Some(reference) = &job.reference {
                    match refs.entry(reference.clone()) {
                        Entry::Occupied(first) => bad.add(
                            number,
                            format!("ref {reference:?} is already used on line {}", first.get()),
                        ),
                        Entry::Vacant(slot) => {
                            slot.insert(number);
                        }
                    }
                }
                jobs.push(LineJob {
                    line: number,
                    ..job
                });
            }
            Err(message) => bad.add(number, message),
        }
    }
    if jobs.is_empty() && bad.count == 0 {
        bad.add(0, "no jobs: the input is empty");
    }
    check_splits(&jobs, &mut bad);
    if bad.count > 0 { Err(bad) } else { Ok(jobs) }
}

/// Past [`MAX_BATCH`] jobs the input goes in several batches, and a `ref` can only be turned
/// into a job id once its batch is stored: a job may depend on a `ref` of its own batch or an
/// earlier one, never a later one.
fn check_splits(jobs: &[LineJob], bad: &mut BadInput) {
    if jobs.len() <= MAX_BATCH {
        return;
    }
    let at: HashMap<&str, (usize, usize)> = jobs
        .iter()
        .enumerate()
        .filter_map(|(i, job)| Some((job.reference.as_deref()?, (i, job.line))))
        .collect();
    for (i, job) in jobs.iter().enumerate() {
        for dependency in &job.depends_on {
            if let Some(&(j, line)) = at.get(dependency.as_str())
                && j / MAX_BATCH > i / MAX_BATCH
            {
                bad.add(
                    job.line,
                    format!(
                        "depends on ref {dependency:?} (line {line}), which falls in a later \
                         batch of {MAX_BATCH}; move that line up"
                    ),
                );
            }
        }
    }
}

/// One line to a job (its line number is filled in by the caller).
fn parse_line(text: &str, default_queue: &str) -> Result<LineJob, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| {
        // serde_json ends its message with "at line 1 column N": only the column means
        // anything here.
        let message = e.to_string();
        let message = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(m, _)| m);
        format!("column {}: {message}", e.column())
    })?;
    let payload = match (line.payload, line.payload_base64) {
        (Some(_), Some(_)) => return Err("set payload or payload_base64, not both".into()),
        (None, Some(encoded)) => {
            decode_base64(&encoded).map_err(|e| format!("payload_base64: {e}"))?
        }
        (Some(Value::String(text)), None) => text.into_bytes(),
        (Some(Value::Null) | None, None) => Vec::new(),
        // A number or an object is sent as its JSON text: `"payload": 500` for `sleep`.
        (Some(value), None) => value.to_string().into_bytes(),
    };
    if line.kind.is_empty() {
        return Err("kind is empty".into());
    }
    let queue = line.queue.unwrap_or_else(|| default_queue.to_owned());
    let mut spec = JobSpec::new(queue, line.kind)
        .payload(payload)
        .labels(line.labels.into_iter().collect());
    if let Some(priority) = line.priority {
        spec = spec.priority(priority);
    }
    if let Some(attempts) = line.max_attempts {
        spec = spec.max_attempts(attempts);
    }
    if let Some(ms) = line.timeout_ms {
        spec = spec.timeout(Duration::from_millis(ms));
    }
    if let Some(key) = line.idempotency_key {
        spec = spec.idempotency_key(key);
    }
    if let Some(key) = line.concurrency_key {
        spec = spec.concurrency_key(key);
    }
    if let Some(weight) = line.weight {
        spec = spec.weight(weight);
    }
    Ok(LineJob {
        line: 0,
        spec,
        reference: line.reference.filter(|r| !r.is_empty()),
        depends_on: line.depends_on,
    })
}

/// Standard (`+/`) or URL-safe (`-_`) base64, padding optional.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let body = text.trim_end_matches('=');
    if text.len() - body.len() > 2 || body.len() % 4 == 1 {
        return Err("not valid base64 (wrong length or padding)".into());
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for (at, c) in body.bytes().enumerate() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => {
                return Err(format!(
                    "not valid base64: {:?} at offset {at}",
                    char::from(c)
                ));
            }
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

pub async fn run(client: &Client, args: BatchArgs, json: bool) -> anyhow::Result<Exit> {
    let jobs = if args.file == "-" {
        parse_jobs(std::io::stdin().lock(), &args.queue)?
    } else {
        let file =
            std::fs::File::open(&args.file).with_context(|| format!("opening {}", args.file))?;
        parse_jobs(std::io::BufReader::new(file), &args.queue)?
    };
    let group = match args.group {
        Some(group) => Some(group),
        None if args.cancel_on_failure || args.watch => Some(switchyard_client::new_group_id()),
        None => None,
    };
    if group.is_some() && jobs.len() > MAX_BATCH {
        anyhow::bail!(
            "{} jobs: a group is stored by one SubmitBatch, which holds at most {MAX_BATCH}; \
             nothing was submitted",
            jobs.len()
        );
    }

    let batches = jobs.len().div_ceil(MAX_BATCH);
    // ref → job id, for the dependencies of later batches.
    let mut stored: HashMap<String, String> = HashMap::new();
    let mut submitted: Vec<SubmitResponse> = Vec::with_capacity(jobs.len());
    for (n, chunk) in jobs.chunks(MAX_BATCH).enumerate() {
        let mut batch = Batch::new().jobs(chunk.iter().map(|job| job.to_spec(&stored)));
        if let Some(group) = &group {
            batch = batch.group(group).cancel_on_failure(args.cancel_on_failure);
        }
        let response = client.submit_batch(batch).await.with_context(|| {
            if batches == 1 {
                "submitting the batch; nothing was stored".to_owned()
            } else {
                format!(
                    "submitting batch {} of {batches} (lines {}-{}); the batches before it are \
                     stored, this one and the rest are not",
                    n + 1,
                    chunk.first().map_or(0, |j| j.line),
                    chunk.last().map_or(0, |j| j.line),
                )
            }
        })?;
        anyhow::ensure!(
            response.jobs.len() == chunk.len(),
            "the coordinator answered {} jobs for a batch of {}",
            response.jobs.len(),
            chunk.len()
        );
        for (job, answer) in chunk.iter().zip(&response.jobs) {
            if let Some(reference) = &job.reference {
                stored.insert(reference.clone(), answer.job_id.clone());
            }
        }
        submitted.extend(response.jobs);
    }

    if json {
        let listed: Vec<Value> = jobs
            .iter()
            .zip(&submitted)
            .map(|(job, answer)| {
                json!({
                    "job_id": answer.job_id,
                    "duplicate": answer.duplicate,
                    "state": output::state_name(answer.state),
                    "ref": job.reference,
                })
            })
            .collect();
        outln!("{}", json!({ "group_id": group, "jobs": listed }));
    } else {
        if let Some(group) = &group {
            outln!("group {group} ({} jobs)", submitted.len());
        }
        for answer in &submitted {
            if answer.duplicate {
                outln!("{} (duplicate of an earlier submit)", answer.job_id);
            } else {
                outln!("{}", answer.job_id);
            }
        }
    }

    match (&group, args.watch) {
        (Some(group), true) => {
            // A duplicate is a job stored earlier, outside this group.
            let fresh = submitted.iter().filter(|a| !a.duplicate).count() as u64;
            let view = watch::View {
                total: Some(fresh),
                json,
                indent: "",
                already_finished: false,
            };
            let finish = watch::follow(client, group, None, view, |_| {}).await?;
            Ok(finish.exit_code())
        }
        _ => Ok(Exit::Success),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<LineJob>, BadInput> {
        parse_jobs(text.as_bytes(), "q")
    }

    #[test]
    fn every_field_of_a_line() {
        let jobs = parse(concat!(
            r#"{"kind":"echo","payload":"hi","ref":"a"}"#,
            "\n\n",
            r#"{"kind":"sha256","queue":"other","priority":-3,"max_attempts":2,"timeout_ms":1500,"#,
            r#""idempotency_key":"k","concurrency_key":"c","weight":4,"labels":{"team":"ml"},"#,
            r#""depends_on":["a","0190-some-job"],"payload_base64":"aGVsbG8="}"#,
            "\n",
            r#"{"kind":"sleep","payload":250}"#,
        ))
        .expect("valid input");
        assert_eq!(jobs.len(), 3);
        assert_eq!(
            jobs.iter().map(|j| j.line).collect::<Vec<_>>(),
            [1, 3, 4],
            "blank lines are skipped but counted"
        );

        let first = jobs[0].to_spec(&HashMap::new()).into_request();
        assert_eq!((first.queue.as_str(), first.kind.as_str()), ("q", "echo"));
        assert_eq!(first.payload, b"hi");
        assert_eq!(first.r#ref, "a");

        let second = jobs[1].to_spec(&HashMap::new()).into_request();
        assert_eq!(second.queue, "other");
        assert_eq!(second.payload, b"hello");
        assert_eq!(second.priority, -3);
        assert_eq!(second.max_attempts, Some(2));
        assert_eq!(
            second.timeout,
            Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        assert_eq!(second.idempotency_key, "k");
        assert_eq!(second.concurrency_key, "c");
        assert_eq!(second.weight, Some(4));
        assert_eq!(second.labels.get("team").map(String::as_str), Some("ml"));
        assert_eq!(second.depends_on, ["a", "0190-some-job"]);

        let third = jobs[2].to_spec(&HashMap::new()).into_request();
        assert_eq!(
            third.payload, b"250",
            "a number payload is sent as its text"
        );
    }

    #[test]
    fn bad_lines_are_reported_by_number() {
        let bad = parse(concat!(
            r#"{"kind":"echo"}"#,
            "\n",
            r#"{"payload":"no kind"}"#,
            "\n",
            r#"{"kind":"echo","payload":"x","payload_base64":"eA=="}"#,
            "\n",
            r#"{"kind":"echo","prority":5}"#,
            "\n",
            "not json\n",
            r#"{"kind":"echo","payload_base64":"*!*"}"#,
            "\n",
            r#"{"kind":"echo","labels":{"n":1}}"#,
            "\n",
            r#"{"kind":""}"#,
        ))
        .expect_err("bad input");
        let lines: Vec<usize> = bad.problems.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(bad.count, 7);
        let text = bad.to_string();
        assert!(
            text.starts_with("7 problems in the input; nothing was submitted"),
            "{text}"
        );
        assert!(
            text.contains("line 2: column 21: missing field `kind`"),
            "{text}"
        );
        assert!(
            text.contains("line 3: set payload or payload_base64"),
            "{text}"
        );
        assert!(
            text.contains("line 4: column 24: unknown field `prority`"),
            "{text}"
        );
        assert!(
            text.contains("line 6: payload_base64: not valid base64"),
            "{text}"
        );
        assert!(
            !text.contains("at line 1"),
            "serde's own position is dropped: {text}"
        );
    }

    #[test]
    fn refs_are_unique_and_input_not_empty() {
        let bad = parse("{\"kind\":\"echo\",\"ref\":\"a\"}\n{\"kind\":\"echo\",\"ref\":\"a\"}\n")
            .expect_err("duplicate ref");
        assert_eq!(
            bad.problems,
            [(2, "ref \"a\" is already used on line 1".to_owned())]
        );
        let bad = parse("\n  \n").expect_err("empty");
        assert_eq!(
            bad.to_string(),
            "1 problem in the input; nothing was submitted\n  no jobs: the input is empty"
        );
    }

    #[test]
    fn reports_are_capped() {
        let text = "nope\n".repeat(50);
        let bad = parse(&text).expect_err("bad input");
        assert_eq!(bad.count, 50);
        assert_eq!(bad.problems.len(), MAX_REPORTED);
        assert!(bad.to_string().ends_with("… and 30 more"));
    }

    #[test]
    fn split_input_may_only_depend_backwards() {
        let mut text = String::new();
        text.push_str("{\"kind\":\"echo\",\"ref\":\"early\",\"depends_on\":[\"late\"]}\n");
        for _ in 1..MAX_BATCH {
            text.push_str("{\"kind\":\"echo\"}\n");
        }
        // Line MAX_BATCH + 1 opens the second batch.
        text.push_str("{\"kind\":\"echo\",\"ref\":\"late\",\"depends_on\":[\"early\"]}\n");
        let bad = parse(&text).expect_err("forward dependency across batches");
        assert_eq!(bad.problems.len(), 1);
        assert_eq!(bad.problems[0].0, 1);
        assert!(
            bad.problems[0].1.contains("line 10001"),
            "{:?}",
            bad.problems
        );

        // Backwards is fine, and becomes the stored job's id.
        let text = text.replacen("\"depends_on\":[\"late\"]", "\"depends_on\":[]", 1);
        let jobs = parse(&text).expect("backward dependency");
        let stored = HashMap::from([("early".to_owned(), "job-1".to_owned())]);
        let last = jobs[MAX_BATCH].to_spec(&stored).into_request();
        assert_eq!(last.depends_on, ["job-1"]);
    }

    #[test]
    fn base64() {
        assert_eq!(decode_base64("aGVsbG8="), Ok(b"hello".to_vec()));
        assert_eq!(decode_base64("aGVsbG8"), Ok(b"hello".to_vec()));
        assert_eq!(decode_base64(""), Ok(Vec::new()));
        assert_eq!(decode_base64("//8-_w=="), Ok(vec![0xff, 0xff, 0x3e, 0xff]));
        assert!(decode_base64("a").is_err());
        assert!(decode_base64("aGVsbG8===").is_err());
        assert!(decode_base64("aGV sbG8=").is_err());
    }
}
