//! The coordinator's metrics: a small registry of counters, gauges and histograms with labels,
//! rendered in the Prometheus text exposition format 0.0.4, and [`Metrics`], the handle the
//! rest of the coordinator records through, with one method per thing worth counting.
//!
//! Recording never waits on I/O: each metric family sits behind its own short
//! `std::sync::Mutex` (a binary search and an add), and rendering takes the same locks one
//! family at a time, so a scrape never holds up the store's writer for long.

use std::{
    cmp::Ordering,
    fmt::{self, Write as _},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use crate::domain::{AttemptOutcome, JobState};

/// Most label sets one family keeps. Queue names come from clients, so without a bound the
/// series (and the scrape) would grow with whatever they send.
const MAX_SERIES: usize = 1000;

/// The value every label takes for label sets past [`MAX_SERIES`]. `~` is not allowed in
/// queue names, so it cannot be mistaken for a real queue.
pub const OVERFLOW: &str = "~other";

/// Seconds from a job becoming ready to its assignment going out: mostly milliseconds, but a
/// queue with no free worker waits as long as the fleet is busy.
const DISPATCH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];
/// Seconds an attempt runs: from an echo's round trip to an hour-long batch job.
const RUN_TIME_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Seconds per store transaction: an fsync is about a millisecond on a good disk.
const COMMIT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Commands per store transaction, in powers of two up to the writer's batch limit (2048).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

/// A cheap handle to the coordinator's metrics: clone it freely. Every method records at
/// once, in memory; [`Metrics::render`] produces the text a scrape returns.
#[derive(Clone)]
pub struct Metrics {
    families: Arc<Families>,
}

struct Families {
    jobs_submitted: Counter,
    jobs_finished: Counter,
    attempts: Counter,
    queue_depth: Gauge,
    jobs_running: Gauge,
    dispatch_latency: Histogram,
    run_time: Histogram,
    workers: Gauge,
    worker_slots: Gauge,
    store_commit: Histogram,
    store_batch: Histogram,
    store_commits: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let families = Families {
            jobs_submitted: Counter::new(
                "switchyard_jobs_submitted_total",
                "Jobs stored by Submit, SubmitBatch and Run (a repeated idempotency key is not a new job).",
                &["queue"],
            ),
            jobs_finished: Counter::new(
                "switchyard_jobs_finished_total",
                "Jobs that reached a terminal state, by queue and state.",
                &["queue", "state"],
            ),
            attempts: Counter::new(
                "switchyard_attempts_total",
                "Attempts that ended, by queue and outcome.",
                &["queue", "outcome"],
            ),
            queue_depth: Gauge::new(
                "switchyard_queue_depth",
                "Ready jobs waiting in the scheduler's memory for a worker, by queue.",
                &["queue"],
            ),
            jobs_running: Gauge::new(
                "switchyard_jobs_running",
                "Attempts running now (leased to a worker), by queue.",
                &["queue"],
            ),
            dispatch_latency: Histogram::new(
                "switchyard_dispatch_latency_seconds",
                "Time from a job becoming ready to its assignment being sent to a worker.",
                &[],
                DISPATCH_BUCKETS,
            ),
            run_time: Histogram::new(
                "switchyard_run_time_seconds",
                "Time from an attempt's start to its result, by queue.",
                &["queue"],
                RUN_TIME_BUCKETS,
            ),
            workers: Gauge::new("switchyard_workers", "Connected worker sessions.", &[]),
            worker_slots: Gauge::new(
                "switchyard_worker_slots",
                "Slots (concurrent jobs) of all connected worker sessions together.",
                &[],
            ),
            store_commit: Histogram::new(
                "switchyard_store_commit_seconds",
                "Time of one store transaction, from BEGIN to a durable COMMIT.",
                &[],
                COMMIT_BUCKETS,
            ),
            store_batch: Histogram::new(
                "switchyard_store_commit_batch_size",
                "Commands carried by one store transaction (group commit).",
                &[],
                BATCH_BUCKETS,
            ),
            store_commits: Counter::new(
                "switchyard_store_commits_total",
                "Store transactions committed.",
                &[],
            ),
        };
        Metrics {
            families: Arc::new(families),
        }
    }

    /// A job was stored (not a repeat of an idempotency key). Call after the commit.
    pub fn job_submitted(&self, queue: &str) {
        self.families.jobs_submitted.add(&[queue], 1);
    }

    /// A job reached a terminal state. Call after the commit. A state that is not terminal is
    /// not counted.
    pub fn job_finished(&self, queue: &str, state: JobState) {
        if let Some(state) = state_label(state) {
            self.families.jobs_finished.add(&[queue, state], 1);
        }
    }

    /// An attempt started (its start committed): one more running in `queue`.
    pub fn attempt_started(&self, queue: &str) {
        self.families.jobs_running.add(&[queue], 1);
    }

    /// An attempt ended after running for `run_time`: counted by outcome, one fewer running in
    /// `queue`. An outcome that is not an end (`RUNNING`) is not counted.
    pub fn attempt_ended(&self, queue: &str, outcome: AttemptOutcome, run_time: Duration) {
        let Some(outcome) = outcome_label(outcome) else {
            return;
        };
        let families = &self.families;
        families.attempts.add(&[queue, outcome], 1);
        families.jobs_running.add(&[queue], -1);
        families.run_time.observe(&[queue], run_time.as_secs_f64());
    }

    /// An assignment went out `latency` after its job became ready.
    pub fn dispatched(&self, latency: Duration) {
        self.families
            .dispatch_latency
            .observe(&[], latency.as_secs_f64());
    }

    /// Sets how many ready jobs wait in `queue`. Set 0 when a queue empties: a queue once seen
    /// keeps its series.
    pub fn set_queue_depth(&self, queue: &str, depth: u64) {
        self.families
            .queue_depth
            .set(&[queue], saturating_i64(depth));
    }

    /// Sets the connected worker sessions and their slots in all.
    pub fn set_workers(&self, sessions: u64, slots: u64) {
        self.families.workers.set(&[], saturating_i64(sessions));
        self.families.worker_slots.set(&[], saturating_i64(slots));
    }

    /// The store committed one transaction of `commands` commands in `took`.
    pub fn store_committed(&self, took: Duration, commands: u64) {
        let families = &self.families;
        families.store_commits.add(&[], 1);
        families.store_commit.observe(&[], took.as_secs_f64());
        families.store_batch.observe(&[], commands as f64);
    }

    /// Counts what a committed transaction did.
    pub fn record(&self, tally: Tally) {
        for queue in &tally.submitted {
            self.job_submitted(queue);
        }
        for queue in &tally.started {
            self.attempt_started(queue);
        }
        for (queue, outcome, ran) in &tally.ended {
            self.attempt_ended(queue, *outcome, *ran);
        }
        for (queue, state) in &tally.finished {
            self.job_finished(queue, *state);
        }
    }

    /// Every metric in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let f = &self.families;
        let mut out = String::with_capacity(8 * 1024);
        f.jobs_submitted.render(&mut out);
        f.jobs_finished.render(&mut out);
        f.attempts.render(&mut out);
        f.queue_depth.render(&mut out);
        f.jobs_running.render(&mut out);
        f.dispatch_latency.render(&mut out);
        f.run_time.render(&mut out);
        f.workers.render(&mut out);
        f.worker_slots.render(&mut out);
        f.store_commit.render(&mut out);
        f.store_batch.render(&mut out);
        f.store_commits.render(&mut out);
        out
    }
}

/// What a store transaction did that metrics count, held until it commits: a command that
/// rolls back, or a commit that fails, counts nothing. [`Metrics::record`] counts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    submitted: Vec<String>,
    started: Vec<String>,
    ended: Vec<(String, AttemptOutcome, Duration)>,
    finished: Vec<(String, JobState)>,
}

impl Tally {
    /// See [`Metrics::job_submitted`].
    pub fn submitted(&mut self, queue: &str) {
        self.submitted.push(queue.to_owned());
    }

    /// See [`Metrics::attempt_started`].
    pub fn started(&mut self, queue: &str) {
        self.started.push(queue.to_owned());
    }

    /// See [`Metrics::attempt_ended`]. `started_at_ms` and `now_ms` are Unix milliseconds;
    /// an unknown start counts as a run time of zero.
    pub fn ended(
        &mut self,
        queue: &str,
        outcome: AttemptOutcome,
        started_at_ms: Option<i64>,
        now_ms: i64,
    ) {
        let ran = started_at_ms.map_or(0, |start| now_ms.saturating_sub(start).max(0));
        let ran = Duration::from_millis(u64::try_from(ran).unwrap_or(0));
        self.ended.push((queue.to_owned(), outcome, ran));
    }

    /// See [`Metrics::job_finished`].
    pub fn finished(&mut self, queue: &str, state: JobState) {
        self.finished.push((queue.to_owned(), state));
    }

    pub fn append(&mut self, other: &mut Tally) {
        self.submitted.append(&mut other.submitted);
        self.started.append(&mut other.started);
        self.ended.append(&mut other.ended);
        self.finished.append(&mut other.finished);
    }
}

/// The `state` label of a terminal job state.
fn state_label(state: JobState) -> Option<&'static str> {
    match state {
        JobState::Succeeded => Some("succeeded"),
        JobState::Failed => Some("failed"),
        JobState::Cancelled => Some("cancelled"),
        JobState::DeadlineExceeded => Some("deadline_exceeded"),
        JobState::Queued | JobState::Running => None,
    }
}

/// The `outcome` label of an attempt's end.
fn outcome_label(outcome: AttemptOutcome) -> Option<&'static str> {
    match outcome {
        AttemptOutcome::Succeeded => Some("succeeded"),
        AttemptOutcome::Failed => Some("failed"),
        AttemptOutcome::Cancelled => Some("cancelled"),
        AttemptOutcome::DeadlineExceeded => Some("deadline_exceeded"),
        AttemptOutcome::Lost => Some("lost"),
        AttemptOutcome::Released => Some("released"),
        AttemptOutcome::Interrupted => Some("interrupted"),
        AttemptOutcome::Running => None,
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One metric family: its name, help, label names, and a value per label set, kept sorted by
/// label values so that lookups need no allocation and the output order is stable.
struct Family<V> {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<Vec<(Box<[String]>, V)>>,
}

impl<V> Family<V> {
    fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        unlabelled: impl FnOnce() -> V,
    ) -> Self {
        // A family without labels has exactly one series, shown (as zero) from the start.
        let series = if labels.is_empty() {
            vec![(Box::default(), unlabelled())]
        } else {
            Vec::new()
        };
        Family {
            name,
            help,
            labels,
            series: Mutex::new(series),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(Box<[String]>, V)>> {
        // The values are plain numbers, whole after any panic: a poisoned lock is still good.
        self.series.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `f` to the value of the label set `values`, creating it with `make` if new.
    fn with(&self, values: &[&str], make: impl FnOnce() -> V, f: impl FnOnce(&mut V)) {
        debug_assert_eq!(
            values.len(),
            self.labels.len(),
            "{}: label count",
            self.name
        );
        let mut series = self.lock();
        let at = match find(&series, values) {
            Ok(at) => at,
            Err(at) if series.len() < MAX_SERIES => {
                series.insert(at, (values.iter().map(|v| v.to_string()).collect(), make()));
                at
            }
            Err(_) => {
                let overflow = vec![OVERFLOW; values.len()];
                match find(&series, &overflow) {
                    Ok(at) => at,
                    Err(at) => {
                        tracing::warn!(
                            metric = self.name,
                            "too many label sets; counting new ones as {OVERFLOW:?}"
                        );
                        series.insert(
                            at,
                            (overflow.iter().map(|v| v.to_string()).collect(), make()),
                        );
                        at
                    }
                }
            }
        };
        f(&mut series[at].1);
    }

    fn header(&self, out: &mut String, kind: &str) {
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {kind}", self.name);
    }
}

fn find<V>(series: &[(Box<[String]>, V)], values: &[&str]) -> Result<usize, usize> {
    series.binary_search_by(|(key, _)| compare(key, values))
}

fn compare(key: &[String], values: &[&str]) -> Ordering {
    key.iter().map(String::as_str).cmp(values.iter().copied())
}

/// A monotonically increasing count.
struct Counter(Family<u64>);

impl Counter {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Counter(Family::new(name, help, labels, || 0))
    }

    fn add(&self, values: &[&str], n: u64) {
        self.0.with(values, || 0, |v| *v = v.saturating_add(n));
    }

    fn render(&self, out: &mut String) {
        self.0.header(out, "counter");
        for (values, value) in self.0.lock().iter() {
            sample(out, self.0.name, "", self.0.labels, values, None, value);
        }
    }
}

/// A value that goes up and down.
struct Gauge(Family<i64>);

impl Gauge {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Gauge(Family::new(name, help, labels, || 0))
    }

    fn set(&self, values: &[&str], n: i64) {
        self.0.with(values, || 0, |v| *v = n);
    }

    fn add(&self, values: &[&str], n: i64) {
        self.0.with(values, || 0, |v| *v = v.saturating_add(n));
    }

    fn render(&self, out: &mut String) {
        self.0.header(out, "gauge");
        for (values, value) in self.0.lock().iter() {
            sample(out, self.0.name, "", self.0.labels, values, None, value);
        }
    }
}

/// Observations counted into fixed buckets, with their sum and count.
struct Histogram {
    family: Family<Buckets>,
    /// Upper bounds, ascending; the `+Inf` bucket is implied.
    bounds: &'static [f64],
}

struct Buckets {
    /// Observations per bucket (not cumulative): one per bound, then one past the last.
    counts: Box<[u64]>,
    sum: f64,
    count: u64,
}

impl Buckets {
    fn new(bounds: usize) -> Self {
        Buckets {
            counts: vec![0; bounds + 1].into_boxed_slice(),
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Self {
        debug_assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "{name}: bounds ascend"
        );
        Histogram {
            family: Family::new(name, help, labels, || Buckets::new(bounds.len())),
            bounds,
        }
    }

    fn observe(&self, values: &[&str], value: f64) {
        // `le` is inclusive: a value equal to a bound falls in that bound's bucket.
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.family.with(
            values,
            || Buckets::new(self.bounds.len()),
            |b| {
                b.counts[bucket] += 1;
                b.sum += value;
                b.count += 1;
            },
        );
    }

    fn render(&self, out: &mut String) {
        let family = &self.family;
        family.header(out, "histogram");
        for (values, buckets) in family.lock().iter() {
            let mut cumulative = 0u64;
            for (bound, n) in self.bounds.iter().zip(buckets.counts.iter()) {
                cumulative += n;
                let le = float(*bound);
                let label = Some(("le", le.as_str()));
                sample(
                    out,
                    family.name,
                    "_bucket",
                    family.labels,
                    values,
                    label,
                    &cumulative,
                );
            }
            let label = Some(("le", "+Inf"));
            sample(
                out,
                family.name,
                "_bucket",
                family.labels,
                values,
                label,
                &buckets.count,
            );
            let sum = float(buckets.sum);
            sample(out, family.name, "_sum", family.labels, values, None, &sum);
            sample(
                out,
                family.name,
                "_count",
                family.labels,
                values,
                None,
                &buckets.count,
            );
        }
    }
}

/// One sample line: `name{a="x",le="0.5"} value`.
fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[&str],
    values: &[String],
    extra: Option<(&str, &str)>,
    value: &dyn fmt::Display,
) {
    out.push_str(name);
    out.push_str(suffix);
    let mut pairs = labels
        .iter()
        .zip(values.iter().map(String::as_str))
        .map(|(label, value)| (*label, value))
        .chain(extra)
        .peekable();
    if pairs.peek().is_some() {
        out.push('{');
        for (i, (label, value)) in pairs.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, value);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value inside double quotes: backslash, double quote and line feed are escaped.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: backslash and line feed are escaped (a double quote is not).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A float as Prometheus reads it: `+Inf`, `-Inf`, `NaN`, or a plain decimal.
fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample lines of `text` that start with `prefix`.
    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn label_values_are_escaped() {
        let counter = Counter::new(
            "t_total",
            "Help with a \\ and a\nnewline \"quoted\".",
            &["q"],
        );
        counter.add(&["a\\b\"c\nd"], 2);
        let mut out = String::new();
        counter.render(&mut out);
        assert_eq!(
            out,
            "# HELP t_total Help with a \\\\ and a\\nnewline \"quoted\".\n\
             # TYPE t_total counter\n\
             t_total{q=\"a\\\\b\\\"c\\nd\"} 2\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_sum_and_count() {
        // Dyadic values, so that the sum is exact.
        let histogram = Histogram::new("t_seconds", "Help.", &["q"], &[0.25, 1.0, 10.0]);
        for value in [0.125, 0.25, 0.5, 2.0, 20.0] {
            histogram.observe(&["a"], value);
        }
        let mut out = String::new();
        histogram.render(&mut out);
        assert_eq!(
            out,
            "# HELP t_seconds Help.\n\
             # TYPE t_seconds histogram\n\
             t_seconds_bucket{q=\"a\",le=\"0.25\"} 2\n\
             t_seconds_bucket{q=\"a\",le=\"1\"} 3\n\
             t_seconds_bucket{q=\"a\",le=\"10\"} 4\n\
             t_seconds_bucket{q=\"a\",le=\"+Inf\"} 5\n\
             t_seconds_sum{q=\"a\"} 22.875\n\
             t_seconds_count{q=\"a\"} 5\n"
        );
    }

    #[test]
    fn unlabelled_series_show_zero_before_anything_is_recorded() {
        let out = Metrics::new().render();
        assert!(
            out.contains("\nswitchyard_store_commits_total 0\n"),
            "{out}"
        );
        assert!(out.contains("\nswitchyard_workers 0\n"), "{out}");
        assert!(
            out.contains("\nswitchyard_dispatch_latency_seconds_bucket{le=\"+Inf\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("\nswitchyard_dispatch_latency_seconds_count 0\n"),
            "{out}"
        );
        // A labelled family with no series yet still says what it is.
        assert!(
            out.contains("# TYPE switchyard_queue_depth gauge\n"),
            "{out}"
        );
        assert!(lines(&out, "switchyard_queue_depth{").is_empty(), "{out}");
    }

    #[test]
    fn every_family_has_help_and_type_and_every_name_is_switchyards() {
        let metrics = Metrics::new();
        metrics.job_submitted("a");
        metrics.job_finished("a", JobState::Succeeded);
        metrics.attempt_started("a");
        metrics.attempt_ended("a", AttemptOutcome::Succeeded, Duration::from_millis(3));
        metrics.dispatched(Duration::from_millis(1));
        metrics.set_queue_depth("a", 4);
        metrics.set_workers(2, 16);
        metrics.store_committed(Duration::from_micros(700), 5);
        let out = metrics.render();
        let mut typed = Vec::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("name and type");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                typed.push((name, kind));
            } else if !line.starts_with("# HELP ") {
                let (series, value) = line.rsplit_once(' ').expect("series and value");
                assert!(series.starts_with("switchyard_"), "{line}");
                assert!(value.parse::<f64>().is_ok(), "{line}");
                let name = series.split('{').next().unwrap_or(series);
                let family = typed.last().expect("a sample follows its TYPE line");
                assert!(
                    name == family.0
                        || (family.1 == "histogram"
                            && ["_bucket", "_sum", "_count"]
                                .iter()
                                .any(|s| name == format!("{}{s}", family.0))),
                    "{line} under {family:?}"
                );
            }
        }
        assert_eq!(typed.len(), 12, "{out}");
        assert!(out.contains("switchyard_jobs_submitted_total{queue=\"a\"} 1\n"));
        assert!(
            out.contains("switchyard_jobs_finished_total{queue=\"a\",state=\"succeeded\"} 1\n")
        );
        assert!(out.contains("switchyard_attempts_total{queue=\"a\",outcome=\"succeeded\"} 1\n"));
        assert!(out.contains("switchyard_jobs_running{queue=\"a\"} 0\n"));
        assert!(out.contains("switchyard_run_time_seconds_count{queue=\"a\"} 1\n"));
        assert!(out.contains("switchyard_run_time_seconds_bucket{queue=\"a\",le=\"0.001\"} 0\n"));
        assert!(out.contains("switchyard_run_time_seconds_bucket{queue=\"a\",le=\"0.005\"} 1\n"));
        assert!(out.contains("switchyard_queue_depth{queue=\"a\"} 4\n"));
        assert!(out.contains("switchyard_workers 2\n"));
        assert!(out.contains("switchyard_worker_slots 16\n"));
        assert!(out.contains("switchyard_store_commits_total 1\n"));
        assert!(out.contains("switchyard_store_commit_batch_size_bucket{le=\"4\"} 0\n"));
        assert!(out.contains("switchyard_store_commit_batch_size_bucket{le=\"8\"} 1\n"));
        assert!(out.contains("switchyard_store_commit_batch_size_sum 5\n"));
        assert!(out.contains("switchyard_store_commit_seconds_bucket{le=\"0.001\"} 1\n"));
    }

    #[test]
    fn series_are_sorted_by_label_values() {
        let metrics = Metrics::new();
        for queue in ["c", "a", "b", "a"] {
            metrics.job_submitted(queue);
        }
        let out = metrics.render();
        assert_eq!(
            lines(&out, "switchyard_jobs_submitted_total{"),
            [
                "switchyard_jobs_submitted_total{queue=\"a\"} 2",
                "switchyard_jobs_submitted_total{queue=\"b\"} 1",
                "switchyard_jobs_submitted_total{queue=\"c\"} 1",
            ]
        );
    }

    #[test]
    fn non_terminal_states_are_not_counted() {
        let metrics = Metrics::new();
        metrics.job_finished("a", JobState::Running);
        metrics.attempt_ended("a", AttemptOutcome::Running, Duration::ZERO);
        let out = metrics.render();
        assert!(
            lines(&out, "switchyard_jobs_finished_total{").is_empty(),
            "{out}"
        );
        assert!(
            lines(&out, "switchyard_attempts_total{").is_empty(),
            "{out}"
        );
        assert!(lines(&out, "switchyard_jobs_running{").is_empty(), "{out}");
    }

    #[test]
    fn label_sets_past_the_bound_are_counted_together() {
        let metrics = Metrics::new();
        for i in 0..MAX_SERIES + 50 {
            metrics.job_submitted(&format!("q{i}"));
        }
        let out = metrics.render();
        let series = lines(&out, "switchyard_jobs_submitted_total{");
        assert_eq!(series.len(), MAX_SERIES + 1);
        assert!(
            series.contains(&"switchyard_jobs_submitted_total{queue=\"~other\"} 50"),
            "{series:?}"
        );
    }

    #[test]
    fn floats_render_as_prometheus_reads_them() {
        assert_eq!(float(0.0005), "0.0005");
        assert_eq!(float(1.0), "1");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
    }
}
