//! The coordinator's metrics: [`Metrics`], the handle the rest of the coordinator records
//! through, with one method per thing worth counting, over a `prometheus-client` registry
//! that renders the Prometheus text format 0.0.4.
//!
//! Two things the crate does not do are added here: [`Bounded`] caps the label sets of a
//! family (queue names come from clients), folding those past [`MAX_SERIES`] into one
//! [`OVERFLOW`] set; and [`Described`] shows a family before its first series, so a scrape
//! always lists every family. Recording never waits on I/O: a known label set costs a read
//! lock, a hash of its labels and an atomic add (a histogram's buckets have their own short
//! lock).

use std::{
    fmt,
    hash::Hash,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, prometheus_text},
    metrics::{
        MetricType,
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::Histogram,
    },
    registry::{Metric, Registry},
};

use crate::domain::{AttemptOutcome, JobState};

/// Most label sets one family keeps. Queue names come from clients, so without a bound the
/// series (and the scrape) would grow with whatever they send.
const MAX_SERIES: usize = 1000;

/// The value every label takes for label sets past [`MAX_SERIES`]. `~` is not allowed in
/// queue names, so it cannot be mistaken for a real queue.
pub const OVERFLOW: &str = "~other";

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    queue: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    fault: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    queue: String,
    outcome: &'static str,
}

/// Label sets that can stand aside for [`OVERFLOW`].
trait Overflow {
    fn overflow() -> Self;
}

impl Overflow for QueueLabels {
    fn overflow() -> Self {
        QueueLabels {
            queue: OVERFLOW.into(),
        }
    }
}

impl Overflow for StateLabels {
    fn overflow() -> Self {
        StateLabels {
            queue: OVERFLOW.into(),
            state: OVERFLOW,
        }
    }
}

impl Overflow for OutcomeLabels {
    fn overflow() -> Self {
        OutcomeLabels {
            queue: OVERFLOW.into(),
            outcome: OVERFLOW,
        }
    }
}

/// A [`Family`] that keeps at most [`MAX_SERIES`] label sets; later ones are counted under
/// the [`OVERFLOW`] set.
struct Bounded<S, M, C = fn() -> M> {
    name: &'static str,
    family: Family<S, M, C>,
    /// Label sets created. Every set is created through [`Bounded::with`], under this lock,
    /// so that two new ones cannot both take the last place.
    created: Mutex<usize>,
}

impl<S, M, C> Bounded<S, M, C>
where
    S: Clone + Hash + Eq + Overflow,
    M: Clone,
    C: MetricConstructor<M> + Clone,
    Described<Family<S, M, C>>: Metric,
{
    fn register(
        registry: &mut Registry,
        name: &'static str,
        help: &'static str,
        family: Family<S, M, C>,
    ) -> Self {
        registry.register(name, help, Described(family.clone()));
        Bounded {
            name,
            family,
            created: Mutex::new(0),
        }
    }

    /// Applies `f` to the metric of `labels`, or of the [`OVERFLOW`] set once the family is
    /// full.
    fn with(&self, labels: S, f: impl FnOnce(&M)) {
        if let Some(metric) = self.family.get(&labels) {
            return f(&metric);
        }
        // A count is whole after any panic: a poisoned lock is still good.
        let mut created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        let labels = if self.family.get(&labels).is_some() {
            labels
        } else if *created < MAX_SERIES {
            *created += 1;
            labels
        } else {
            let overflow = S::overflow();
            if self.family.get(&overflow).is_none() {
                tracing::warn!(
                    metric = self.name,
                    "too many label sets; counting new ones as {OVERFLOW:?}"
                );
            }
            overflow
        };
        f(&self.family.get_or_create(&labels));
    }
}

/// A family shown (its HELP and TYPE) before it has any series, so that a scrape always
/// lists every family; the crate leaves an empty family out.
#[derive(Debug)]
struct Described<M>(M);

impl<M: EncodeMetric> EncodeMetric for Described<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// A cheap handle to the coordinator's metrics: clone it freely. Every method records at
/// once, in memory; [`Metrics::render`] produces the text a scrape returns.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    jobs_submitted: Bounded<QueueLabels, Counter>,
    jobs_finished: Bounded<StateLabels, Counter>,
    attempts: Bounded<OutcomeLabels, Counter>,
    queue_depth: Bounded<QueueLabels, Gauge>,
    jobs_running: Bounded<QueueLabels, Gauge>,
    dispatch_latency: Histogram,
    run_time: Bounded<QueueLabels, Histogram>,
    workers: Gauge,
    worker_slots: Gauge,
    store_commit: Histogram,
    store_batch: Histogram,
    store_commits: Counter,
    store_faults: Family<FaultLabels, Counter>,
    store_healthy: Gauge,
    progress_reports: Bounded<QueueLabels, Counter>,
    attempts_detached: Gauge,
    attempts_readopted: Counter,
    store_bytes: Gauge,
    pruned_jobs: Counter,
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

/// Registers an unlabelled metric and returns it.
fn unlabelled<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Self {
        // Names and help as `prometheus-client` wants them: a counter's name without its
        // `_total` (the encoder adds it), help without its final period (the registry adds it).
        let mut registry = Registry::default();
        let r = &mut registry;
        // A family's constructor is a plain `fn`: the buckets are fixed at compile time.
        let run_time: fn() -> Histogram = || Histogram::new(RUN_TIME_BUCKETS.to_vec());
        let inner = Inner {
            jobs_submitted: Bounded::register(
                r,
                "switchyard_jobs_submitted",
                "Jobs stored by Submit, SubmitBatch and Run (a repeated idempotency key is not a new job)",
                Family::default(),
            ),
            jobs_finished: Bounded::register(
                r,
                "switchyard_jobs_finished",
                "Jobs that reached a terminal state, by queue and state",
                Family::default(),
            ),
            attempts: Bounded::register(
                r,
                "switchyard_attempts",
                "Attempts that ended, by queue and outcome",
                Family::default(),
            ),
            queue_depth: Bounded::register(
                r,
                "switchyard_queue_depth",
                "Ready jobs waiting in the scheduler's memory for a worker, by queue",
                Family::default(),
            ),
            jobs_running: Bounded::register(
                r,
                "switchyard_jobs_running",
                "Attempts running now (leased to a worker), by queue",
                Family::default(),
            ),
            dispatch_latency: unlabelled(
                r,
                "switchyard_dispatch_latency_seconds",
                "Time from a job becoming ready to its assignment being sent to a worker",
                Histogram::new(DISPATCH_BUCKETS.to_vec()),
            ),
            run_time: Bounded::register(
                r,
                "switchyard_run_time_seconds",
                "Time from an attempt's start to its result, by queue",
                Family::new_with_constructor(run_time),
            ),
            workers: unlabelled(
                r,
                "switchyard_workers",
                "Connected worker sessions",
                Gauge::default(),
            ),
            worker_slots: unlabelled(
                r,
                "switchyard_worker_slots",
                "Slots (concurrent jobs) of all connected worker sessions together",
                Gauge::default(),
            ),
            store_commit: unlabelled(
                r,
                "switchyard_store_commit_seconds",
                "Time of one store transaction, from BEGIN to a durable COMMIT",
                Histogram::new(COMMIT_BUCKETS.to_vec()),
            ),
            store_batch: unlabelled(
                r,
                "switchyard_store_commit_batch_size",
                "Commands carried by one store transaction (group commit)",
                Histogram::new(BATCH_BUCKETS.to_vec()),
            ),
            store_commits: unlabelled(
                r,
                "switchyard_store_commits",
                "Store transactions committed",
                Counter::default(),
            ),
            store_faults: {
                // Two label values at most: no bound needed, but shown before its first fault.
                let family = Family::default();
                r.register(
                    "switchyard_store_faults",
                    "Store transactions that could not commit for a reason a caller can act on, by fault (full: the disk or the database's size cap; busy: another process holds the write lock)",
                    Described(family.clone()),
                );
                family
            },
            store_healthy: unlabelled(
                r,
                "switchyard_store_healthy",
                "1 while the store can commit, 0 while it cannot (health answers NOT_SERVING then)",
                Gauge::default(),
            ),
            progress_reports: Bounded::register(
                r,
                "switchyard_progress_reports",
                "Progress reports of running attempts stored with their jobs, by queue (reports of attempts no longer current are not counted)",
                Family::default(),
            ),
            attempts_detached: unlabelled(
                r,
                "switchyard_attempts_detached",
                "Running attempts whose worker's stream is gone, kept for it to come back within --reconnect-grace",
                Gauge::default(),
            ),
            attempts_readopted: unlabelled(
                r,
                "switchyard_attempts_readopted",
                "Attempts a reconnecting worker held on to and took up again (after a network blip or a coordinator restart)",
                Counter::default(),
            ),
            store_bytes: unlabelled(
                r,
                "switchyard_store_bytes",
                "Size of the database: its pages times the page size, which is the main file's size once the WAL is checkpointed (the WAL itself is not counted). Measured at start and after each pruning pass",
                Gauge::default(),
            ),
            pruned_jobs: unlabelled(
                r,
                "switchyard_pruned_jobs",
                "Finished jobs removed by retention (with their attempts and other rows)",
                Counter::default(),
            ),
            registry,
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// A job was stored (not a repeat of an idempotency key). Call after the commit.
    pub fn job_submitted(&self, queue: &str) {
        self.inner.jobs_submitted.with(queue_labels(queue), |c| {
            c.inc();
        });
    }

    /// A job reached a terminal state. Call after the commit. A state that is not terminal is
    /// not counted.
    pub fn job_finished(&self, queue: &str, state: JobState) {
        if !state.is_terminal() {
            return;
        }
        let labels = StateLabels {
            queue: queue.to_owned(),
            state: state.as_str(),
        };
        self.inner.jobs_finished.with(labels, |c| {
            c.inc();
        });
    }

    /// An attempt started (its start committed): one more running in `queue`.
    pub fn attempt_started(&self, queue: &str) {
        self.inner.jobs_running.with(queue_labels(queue), |g| {
            g.inc();
        });
    }

    /// An attempt ended after running for `run_time`: counted by outcome, one fewer running in
    /// `queue`. An outcome that is not an end (`Running`) is not counted.
    pub fn attempt_ended(&self, queue: &str, outcome: AttemptOutcome, run_time: Duration) {
        if outcome == AttemptOutcome::Running {
            return;
        }
        let inner = &self.inner;
        let labels = OutcomeLabels {
            queue: queue.to_owned(),
            outcome: outcome.as_str(),
        };
        inner.attempts.with(labels, |c| {
            c.inc();
        });
        inner.jobs_running.with(queue_labels(queue), |g| {
            g.dec();
        });
        inner
            .run_time
            .with(queue_labels(queue), |h| h.observe(run_time.as_secs_f64()));
    }

    /// An assignment went out `latency` after its job became ready.
    pub fn dispatched(&self, latency: Duration) {
        self.inner.dispatch_latency.observe(latency.as_secs_f64());
    }

    /// Sets how many ready jobs wait in `queue`. Set 0 when a queue empties: a queue once seen
    /// keeps its series.
    pub fn set_queue_depth(&self, queue: &str, depth: u64) {
        self.inner.queue_depth.with(queue_labels(queue), |g| {
            g.set(saturating_i64(depth));
        });
    }

    /// Sets the connected worker sessions and their slots in all.
    pub fn set_workers(&self, sessions: u64, slots: u64) {
        self.inner.workers.set(saturating_i64(sessions));
        self.inner.worker_slots.set(saturating_i64(slots));
    }

    /// The store committed one transaction of `commands` commands in `took`.
    pub fn store_committed(&self, took: Duration, commands: u64) {
        let inner = &self.inner;
        inner.store_commits.inc();
        inner.store_commit.observe(took.as_secs_f64());
        inner.store_batch.observe(commands as f64);
    }

    /// The store met a fault (`full`, `busy`) and could not commit.
    pub fn store_fault(&self, fault: &'static str) {
        self.inner
            .store_faults
            .get_or_create(&FaultLabels { fault })
            .inc();
    }

    /// Whether the store can commit now.
    pub fn set_store_healthy(&self, healthy: bool) {
        self.inner.store_healthy.set(i64::from(healthy));
    }

    /// Sets the attempts waiting, detached, for their worker.
    pub fn set_detached(&self, attempts: u64) {
        self.inner.attempts_detached.set(saturating_i64(attempts));
    }

    /// A reconnecting worker took up `attempts` it held.
    pub fn readopted(&self, attempts: u64) {
        self.inner.attempts_readopted.inc_by(attempts);
    }

    /// Sets the database's size in bytes.
    pub fn set_store_bytes(&self, bytes: u64) {
        self.inner.store_bytes.set(saturating_i64(bytes));
    }

    /// Retention removed `jobs` finished jobs. Call after the commit.
    pub fn pruned(&self, jobs: u64) {
        self.inner.pruned_jobs.inc_by(jobs);
    }

    /// A running attempt's progress report was stored. Call after the commit.
    pub fn progress_stored(&self, queue: &str) {
        self.inner.progress_reports.with(queue_labels(queue), |c| {
            c.inc();
        });
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
        for queue in &tally.progress {
            self.progress_stored(queue);
        }
    }

    /// Every metric in the Prometheus text format 0.0.4 (see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a `String` cannot fail, and the encoder adds no errors of its own.
        if let Err(err) = prometheus_text::encode(&mut out, &self.inner.registry) {
            tracing::error!(cause = %err, "metrics: encoding failed");
        }
        out
    }
}

fn queue_labels(queue: &str) -> QueueLabels {
    QueueLabels {
        queue: queue.to_owned(),
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
    progress: Vec<String>,
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

    /// See [`Metrics::progress_stored`].
    pub fn progress(&mut self, queue: &str) {
        self.progress.push(queue.to_owned());
    }

    pub fn append(&mut self, other: &mut Tally) {
        self.submitted.append(&mut other.submitted);
        self.started.append(&mut other.started);
        self.ended.append(&mut other.ended);
        self.finished.append(&mut other.finished);
        self.progress.append(&mut other.progress);
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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
        let metrics = Metrics::new();
        metrics.job_submitted("a\\b\"c\nd");
        let out = metrics.render();
        assert_eq!(
            lines(&out, "switchyard_jobs_submitted_total{"),
            ["switchyard_jobs_submitted_total{queue=\"a\\\\b\\\"c\\nd\"} 1"]
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
        metrics.progress_stored("a");
        metrics.progress_stored("a");
        let out = metrics.render();
        let mut typed = Vec::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("name and type");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                typed.push((name, kind));
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (_, help) = rest.split_once(' ').expect("name and help");
                assert!(help.ends_with('.') && !help.ends_with(".."), "{line}");
            } else {
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
        assert_eq!(typed.len(), 19, "{out}");
        assert!(out.contains("switchyard_progress_reports_total{queue=\"a\"} 2\n"));
        assert!(out.contains("switchyard_jobs_submitted_total{queue=\"a\"} 1\n"));
        assert!(
            out.contains("switchyard_jobs_finished_total{queue=\"a\",state=\"succeeded\"} 1\n")
        );
        assert!(out.contains("switchyard_attempts_total{queue=\"a\",outcome=\"succeeded\"} 1\n"));
        assert!(out.contains("switchyard_jobs_running{queue=\"a\"} 0\n"));
        assert!(out.contains("switchyard_run_time_seconds_count{queue=\"a\"} 1\n"));
        assert!(out.contains("switchyard_run_time_seconds_bucket{queue=\"a\",le=\"0.001\"} 0\n"));
        assert!(out.contains("switchyard_run_time_seconds_bucket{queue=\"a\",le=\"0.005\"} 1\n"));
        assert!(out.contains("switchyard_run_time_seconds_bucket{queue=\"a\",le=\"3600\"} 1\n"));
        assert!(out.contains("switchyard_queue_depth{queue=\"a\"} 4\n"));
        assert!(out.contains("switchyard_workers 2\n"));
        assert!(out.contains("switchyard_worker_slots 16\n"));
        assert!(out.contains("switchyard_store_commits_total 1\n"));
        assert!(out.contains("switchyard_store_commit_batch_size_bucket{le=\"4\"} 0\n"));
        assert!(out.contains("switchyard_store_commit_batch_size_bucket{le=\"8\"} 1\n"));
        assert!(out.contains("switchyard_store_commit_batch_size_sum 5"));
        assert!(out.contains("switchyard_store_commit_seconds_bucket{le=\"0.0005\"} 0\n"));
        assert!(out.contains("switchyard_store_commit_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(out.contains("switchyard_dispatch_latency_seconds_bucket{le=\"300\"} 1\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_a_bound_is_inclusive() {
        let metrics = Metrics::new();
        // Dyadic batch sizes, so that the sum is exact; 2 falls in `le="2"`.
        for commands in [1, 2, 3, 3000] {
            metrics.store_committed(Duration::ZERO, commands);
        }
        let out = metrics.render();
        let batch = "switchyard_store_commit_batch_size";
        assert!(
            out.contains(&format!("{batch}_bucket{{le=\"1\"}} 1\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{batch}_bucket{{le=\"2\"}} 2\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{batch}_bucket{{le=\"4\"}} 3\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{batch}_bucket{{le=\"2048\"}} 3\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{batch}_bucket{{le=\"+Inf\"}} 4\n")),
            "{out}"
        );
        assert!(out.contains(&format!("{batch}_count 4\n")), "{out}");
        let sum = lines(&out, &format!("{batch}_sum "));
        assert_eq!(sum.len(), 1, "{out}");
        assert_eq!(
            sum[0].rsplit_once(' ').map(|(_, v)| v.parse::<f64>()),
            Some(Ok(3006.0))
        );
    }

    #[test]
    fn non_terminal_states_are_not_counted() {
        let metrics = Metrics::new();
        metrics.job_finished("a", JobState::Queued);
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
        assert!(
            lines(&out, "switchyard_run_time_seconds_count{").is_empty(),
            "{out}"
        );
    }

    #[test]
    fn every_end_is_labelled_by_its_stored_name() {
        let metrics = Metrics::new();
        let mut tally = Tally::default();
        for state in JobState::ALL {
            tally.finished("a", state);
        }
        for outcome in AttemptOutcome::ALL {
            tally.ended("a", outcome, Some(1_000), 1_250);
        }
        metrics.record(tally);
        let out = metrics.render();
        for state in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            let series =
                format!("switchyard_jobs_finished_total{{queue=\"a\",state=\"{state}\"}} 1\n");
            assert!(out.contains(&series), "{series} in {out}");
        }
        assert_eq!(lines(&out, "switchyard_jobs_finished_total{").len(), 4);
        for outcome in AttemptOutcome::ALL
            .into_iter()
            .filter(|o| *o != AttemptOutcome::Running)
        {
            let series =
                format!("switchyard_attempts_total{{queue=\"a\",outcome=\"{outcome}\"}} 1\n");
            assert!(out.contains(&series), "{series} in {out}");
        }
        assert_eq!(lines(&out, "switchyard_attempts_total{").len(), 7);
        // Seven ends of attempts never counted as started: the gauge goes below zero, as it
        // did before; run time is 250 ms each.
        assert!(out.contains("switchyard_run_time_seconds_bucket{queue=\"a\",le=\"0.5\"} 7\n"));
    }

    #[test]
    fn label_sets_past_the_bound_are_counted_together() {
        let metrics = Metrics::new();
        for i in 0..MAX_SERIES + 50 {
            metrics.job_submitted(&format!("q{i}"));
        }
        // A queue seen before the bound keeps its own series.
        metrics.job_submitted("q0");
        let out = metrics.render();
        let series = lines(&out, "switchyard_jobs_submitted_total{");
        assert_eq!(series.len(), MAX_SERIES + 1);
        assert!(
            series.contains(&"switchyard_jobs_submitted_total{queue=\"~other\"} 50"),
            "{series:?}"
        );
        assert!(
            series.contains(&"switchyard_jobs_submitted_total{queue=\"q0\"} 2"),
            "{series:?}"
        );
        // Each family has its own bound.
        metrics.job_finished("q5000", JobState::Failed);
        let out = metrics.render();
        assert_eq!(
            lines(&out, "switchyard_jobs_finished_total{"),
            ["switchyard_jobs_finished_total{queue=\"q5000\",state=\"failed\"} 1"]
        );
    }

    #[test]
    #[ignore = "timing: cargo test --release -p switchyard-server --lib cost -- --ignored --nocapture"]
    fn hot_path_cost() {
        use std::time::Instant;
        const N: u32 = 1_000_000;
        let metrics = Metrics::new();
        let queues: Vec<String> = (0..8).map(|i| format!("queue-{i}")).collect();
        for q in &queues {
            metrics.job_finished(q, JobState::Succeeded);
        }
        let start = Instant::now();
        for i in 0..N as usize {
            metrics.job_finished(&queues[i % 8], JobState::Succeeded);
        }
        eprintln!("job_finished: {:?}/call", start.elapsed() / N);
        let start = Instant::now();
        for i in 0..N as usize {
            metrics.attempt_ended(
                &queues[i % 8],
                AttemptOutcome::Succeeded,
                Duration::from_millis(3),
            );
        }
        eprintln!("attempt_ended: {:?}/call", start.elapsed() / N);
        let start = Instant::now();
        for _ in 0..N {
            metrics.store_committed(Duration::from_micros(700), 5);
        }
        eprintln!("store_committed: {:?}/call", start.elapsed() / N);
        for i in 0..1000 {
            metrics.job_submitted(&format!("q{i}"));
        }
        let start = Instant::now();
        let mut len = 0;
        for _ in 0..100 {
            len += metrics.render().len();
        }
        eprintln!(
            "render (1000 queues): {:?}/scrape, {} bytes",
            start.elapsed() / 100,
            len / 100
        );
    }
}
