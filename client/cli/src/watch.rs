//! `switchyard watch`: a group's fan-in as it happens. People get a progress bar on stderr
//! (redrawn in place on a terminal, periodic lines otherwise) and each failure as it
//! arrives; scripts get one JSON line per event with `--json`.

use std::{
    collections::VecDeque,
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use serde_json::{Value, json};
use switchyard_client::{Client, GroupOutcome, GroupUpdate, JobResult, JobState};

use crate::{exit::Exit, output};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The group to follow.
    group_id: String,
    /// Resume after this cursor: from a `--json` line, or the hint printed on Ctrl-C. The
    /// progress then counts only what comes after it.
    #[arg(long)]
    cursor: Option<String>,
}

/// How following a group ended.
#[derive(Debug)]
pub enum Finish {
    Outcome(GroupOutcome),
    /// Ctrl-C: the resume hint has been printed.
    Interrupted,
}

impl Finish {
    /// The group's outcome as a job's would be ([`Exit::of_state`]); Ctrl-C is
    /// [`Exit::Interrupted`].
    pub fn exit_code(&self) -> Exit {
        match self {
            Finish::Outcome(outcome) => Exit::of_state(outcome.state()),
            Finish::Interrupted => Exit::Interrupted,
        }
    }
}

pub async fn run(client: &Client, args: WatchArgs, json: bool) -> anyhow::Result<Exit> {
    // The group as it stands: its size for the bar and the ETA, and whether it has already
    // finished (then the time the watch took says nothing about the group). After a cursor
    // the counts start from zero, so a total would only mislead.
    let (total, already_finished) = if json {
        (None, false)
    } else {
        let group = client
            .group(&args.group_id)
            .await
            .with_context(|| format!("group {}", args.group_id))?;
        let total = args.cursor.is_none().then_some(u64::from(group.size));
        let ended = matches!(
            group.state(),
            JobState::Succeeded
                | JobState::Failed
                | JobState::Cancelled
                | JobState::DeadlineExceeded
        );
        (total, ended)
    };
    let view = View {
        total,
        json,
        indent: "",
        already_finished,
    };
    let finish = follow(client, &args.group_id, args.cursor, view, |_| {}).await?;
    Ok(finish.exit_code())
}

/// How [`follow`] shows a group.
#[derive(Debug, Clone, Copy, Default)]
pub struct View {
    /// Jobs in the group, for the bar, `pending` and the ETA.
    pub total: Option<u64>,
    /// One JSON line per event on stdout instead of the bar.
    pub json: bool,
    /// Put before every text line (not the JSON ones), to nest them in a narration.
    pub indent: &'static str,
    /// The group had ended before the watch began: its outcome shows no duration.
    pub already_finished: bool,
}

/// Follows a group to its outcome, showing it as `view` says, and calls `on_result` for each
/// job's result. Ctrl-C stops it and prints how to resume.
pub async fn follow(
    client: &Client,
    group_id: &str,
    cursor: Option<String>,
    view: View,
    mut on_result: impl FnMut(&JobResult),
) -> anyhow::Result<Finish> {
    let mut events = std::pin::pin!(client.watch_group(group_id, cursor.clone()));
    let mut screen = Screen::new(view);
    let mut last_cursor = cursor;
    let mut ticker = tokio::time::interval(screen.tick_every());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            event = events.next() => {
                let event = event
                    .context("the group's stream ended before its outcome")?
                    .with_context(|| format!("watching group {group_id}"))?;
                last_cursor = Some(event.cursor.clone());
                match &event.update {
                    GroupUpdate::Result(result) => {
                        on_result(result);
                        screen.result(result, &event.cursor);
                    }
                    GroupUpdate::Outcome(outcome) => {
                        screen.outcome(outcome, &event.cursor);
                        return Ok(Finish::Outcome(outcome.clone()));
                    }
                }
            }
            _ = ticker.tick() => screen.tick(),
            _ = &mut interrupt => {
                screen.clear();
                match last_cursor {
                    Some(cursor) => errln!(
                        "interrupted; resume with: switchyard watch {group_id} --cursor {cursor}"
                    ),
                    None => errln!("interrupted; resume with: switchyard watch {group_id}"),
                }
                return Ok(Finish::Interrupted);
            }
        }
    }
}

/// Cancelled jobs shown one by one before they are only counted: an errgroup that stops
/// early cancels the whole rest of the group.
const CANCELLED_SHOWN: u64 = 10;

/// Where the events go.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Style {
    /// One JSON line per event on stdout.
    Json,
    /// A bar redrawn in place on stderr (a terminal).
    Bar,
    /// A progress line on stderr now and then (a pipe or a file).
    Lines,
}

struct Screen {
    style: Style,
    indent: &'static str,
    progress: Progress,
    started: Instant,
    already_finished: bool,
    /// A bar is on the terminal's last line, to be cleared before anything else is printed.
    drawn: bool,
    /// Finished jobs at the last progress line (Lines style), to print only on change.
    printed: u64,
}

impl Screen {
    fn new(view: View) -> Screen {
        let stderr = std::io::stderr();
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        let style = match view.json {
            true => Style::Json,
            false if stderr.is_terminal() && !dumb => Style::Bar,
            false => Style::Lines,
        };
        Screen {
            style,
            indent: view.indent,
            progress: Progress::new(view.total),
            started: Instant::now(),
            already_finished: view.already_finished,
            drawn: false,
            printed: 0,
        }
    }

    fn tick_every(&self) -> Duration {
        match self.style {
            Style::Bar => Duration::from_millis(100),
            Style::Lines | Style::Json => Duration::from_secs(2),
        }
    }

    fn result(&mut self, result: &JobResult, cursor: &str) {
        self.progress.record(result.state());
        match self.style {
            Style::Json => outln!("{}", result_json(result, cursor)),
            Style::Bar | Style::Lines => {
                let state = result.state();
                let shown = match state {
                    JobState::Succeeded => false,
                    JobState::Cancelled => self.progress.cancelled <= CANCELLED_SHOWN,
                    _ => true,
                };
                if shown {
                    self.clear();
                    errln!(
                        "{}job {} {}: {}",
                        self.indent,
                        result.job_id,
                        output::state_name(result.state),
                        result.error
                    );
                    if state == JobState::Cancelled && self.progress.cancelled == CANCELLED_SHOWN {
                        errln!("{}(further cancelled jobs are only counted)", self.indent);
                    }
                }
            }
        }
    }

    /// Redraws the bar, or prints a progress line when something changed.
    fn tick(&mut self) {
        self.progress.sample(self.started.elapsed());
        match self.style {
            Style::Json => {}
            Style::Bar => {
                let mut stderr = std::io::stderr().lock();
                // A failed write to stderr leaves nothing better to do than to go on.
                let _ = write!(
                    stderr,
                    "\r\x1b[2K{}{}",
                    self.indent,
                    self.progress.bar_line(BAR_WIDTH)
                );
                let _ = stderr.flush();
                self.drawn = true;
            }
            Style::Lines => {
                if self.progress.finished() != self.printed {
                    self.printed = self.progress.finished();
                    errln!("{}{}", self.indent, self.progress.text_line());
                }
            }
        }
    }

    /// Takes the bar off the terminal's last line.
    fn clear(&mut self) {
        if self.drawn {
            err!("\r\x1b[2K");
            self.drawn = false;
        }
    }

    fn outcome(&mut self, outcome: &GroupOutcome, cursor: &str) {
        if self.style == Style::Json {
            outln!("{}", outcome_json(outcome, cursor));
            return;
        }
        self.progress.total = Some(u64::from(outcome.size));
        self.progress.sample(self.started.elapsed());
        self.clear();
        let last = match self.style {
            Style::Bar => self.progress.bar_line(BAR_WIDTH),
            Style::Lines | Style::Json => self.progress.text_line(),
        };
        errln!("{}{last}", self.indent);
        let took = (!self.already_finished).then(|| self.started.elapsed());
        let text = outcome_text(outcome, took);
        outln!(
            "{}{}",
            self.indent,
            text.replace('\n', &format!("\n{}", self.indent))
        );
    }
}

/// `group G succeeded: 50 done, 0 failed, 0 cancelled, 0 deadline exceeded, of 50 (1.2s)`,
/// and the group's error on a second line when it has one. `took` is how long the watch
/// followed it; `None` for a group that had finished before: `(had already finished)`.
pub fn outcome_text(outcome: &GroupOutcome, took: Option<Duration>) -> String {
    let mut text = format!(
        "group {} {}: {} done, {} failed, {} cancelled, {} deadline exceeded, of {} ({})",
        outcome.group_id,
        output::state_name(outcome.state),
        outcome.succeeded,
        outcome.failed,
        outcome.cancelled,
        outcome.deadline_exceeded,
        outcome.size,
        took.map_or_else(|| "had already finished".to_owned(), format_duration),
    );
    if !outcome.error.is_empty() {
        text.push_str(&format!("\n  error: {}", outcome.error));
    }
    text
}

pub fn result_json(result: &JobResult, cursor: &str) -> Value {
    json!({
        "event": "result",
        "job_id": result.job_id,
        "state": output::state_name(result.state),
        "output": output::bytes(&result.output),
        "error": result.error,
        "cursor": cursor,
    })
}

pub fn outcome_json(outcome: &GroupOutcome, cursor: &str) -> Value {
    json!({
        "event": "outcome",
        "group_id": outcome.group_id,
        "state": output::state_name(outcome.state),
        "size": outcome.size,
        "succeeded": outcome.succeeded,
        "failed": outcome.failed,
        "cancelled": outcome.cancelled,
        "deadline_exceeded": outcome.deadline_exceeded,
        "error": outcome.error,
        "cursor": cursor,
    })
}

/// Cells of the drawn bar.
const BAR_WIDTH: usize = 24;

/// The rate is measured over about this much of the recent past, so that it follows changes
/// and the burst of results that had finished before the watch began fades out of it.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// A rate over less than this is noise.
const RATE_MIN_SPAN: Duration = Duration::from_millis(500);

/// Samples kept at most, whatever the tick rate.
const MAX_SAMPLES: usize = 256;

/// The counts of a group's fan-in, and the arithmetic of its rate and ETA. Time is passed in
/// (time since the watch began), so that it is tested without a clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Jobs in the group, when known.
    pub total: Option<u64>,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub deadline_exceeded: u64,
    /// (time, finished) at each tick, oldest first, spanning about [`RATE_WINDOW`].
    samples: VecDeque<(Duration, u64)>,
}

impl Progress {
    pub fn new(total: Option<u64>) -> Progress {
        Progress {
            total,
            succeeded: 0,
            failed: 0,
            cancelled: 0,
            deadline_exceeded: 0,
            samples: VecDeque::new(),
        }
    }

    pub fn record(&mut self, state: JobState) {
        match state {
            JobState::Succeeded => self.succeeded += 1,
            JobState::Cancelled => self.cancelled += 1,
            JobState::DeadlineExceeded => self.deadline_exceeded += 1,
            // FAILED, and anything a newer coordinator may call terminal.
            _ => self.failed += 1,
        }
    }

    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled + self.deadline_exceeded
    }

    /// Jobs not finished yet (queued or running), when the total is known.
    pub fn pending(&self) -> Option<u64> {
        self.total
            .map(|total| total.saturating_sub(self.finished()))
    }

    /// Notes how many had finished at `at`; drops what fell out of the window, keeping one
    /// sample at or before its start so that the window is always covered.
    pub fn sample(&mut self, at: Duration) {
        self.samples.push_back((at, self.finished()));
        let start = at.saturating_sub(RATE_WINDOW);
        while self.samples.len() > MAX_SAMPLES
            || (self.samples.len() > 2 && self.samples[1].0 <= start)
        {
            self.samples.pop_front();
        }
    }

    /// Jobs finished per second over the window, once it spans long enough to mean something.
    pub fn rate(&self) -> Option<f64> {
        let (&(t0, n0), &(t1, n1)) = (self.samples.front()?, self.samples.back()?);
        let span = t1.checked_sub(t0)?;
        (span >= RATE_MIN_SPAN).then(|| n1.saturating_sub(n0) as f64 / span.as_secs_f64())
    }

    /// Time left at the current rate: zero when nothing is pending, unknown without a total
    /// or while nothing finishes.
    pub fn eta(&self) -> Option<Duration> {
        let pending = self.pending()?;
        if pending == 0 {
            return Some(Duration::ZERO);
        }
        let rate = self.rate().filter(|r| *r > 0.0)?;
        Duration::try_from_secs_f64(pending as f64 / rate).ok()
    }

    /// `[████████░░░░] 523/1000  done 500  failed 23  pending 477  312/s  ETA 1.5s`
    pub fn bar_line(&self, width: usize) -> String {
        let finished = self.finished();
        let mut line = match self.total {
            Some(total) => {
                let filled = if total == 0 {
                    width
                } else {
                    ((finished.min(total) as u128 * width as u128) / total as u128) as usize
                };
                format!(
                    "[{}{}] {finished}/{total}",
                    "█".repeat(filled),
                    "░".repeat(width - filled)
                )
            }
            None => format!("{finished} finished"),
        };
        line.push_str(&format!(
            "  done {}  failed {}",
            self.succeeded,
            self.failed + self.deadline_exceeded
        ));
        if self.cancelled > 0 {
            line.push_str(&format!("  cancelled {}", self.cancelled));
        }
        if let Some(pending) = self.pending() {
            line.push_str(&format!("  pending {pending}"));
        }
        if let Some(rate) = self.rate() {
            line.push_str(&format!("  {}", format_rate(rate)));
        }
        if let Some(eta) = self.eta().filter(|_| self.pending() != Some(0)) {
            line.push_str(&format!("  ETA {}", format_duration(eta)));
        }
        line
    }

    /// The same for a log: `523/1000 finished: 500 done, 23 failed, 477 pending; 312/s, ETA 1.5s`
    pub fn text_line(&self) -> String {
        let mut line = match self.total {
            Some(total) => format!("{}/{total} finished: ", self.finished()),
            None => format!("{} finished: ", self.finished()),
        };
        line.push_str(&format!(
            "{} done, {} failed",
            self.succeeded,
            self.failed + self.deadline_exceeded
        ));
        if self.cancelled > 0 {
            line.push_str(&format!(", {} cancelled", self.cancelled));
        }
        if let Some(pending) = self.pending() {
            line.push_str(&format!(", {pending} pending"));
        }
        if let Some(rate) = self.rate() {
            line.push_str(&format!("; {}", format_rate(rate)));
            if let Some(eta) = self.eta().filter(|_| self.pending() != Some(0)) {
                line.push_str(&format!(", ETA {}", format_duration(eta)));
            }
        }
        line
    }
}

/// `312/s`, `12.5/s`, `0.40/s`: about three significant digits.
pub fn format_rate(rate: f64) -> String {
    if rate >= 100.0 {
        format!("{rate:.0}/s")
    } else if rate >= 10.0 {
        format!("{rate:.1}/s")
    } else {
        format!("{rate:.2}/s")
    }
}

/// `850ms`, `12.3s`, `4m05s`, `2h03m`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn finish(progress: &mut Progress, n: u64, state: JobState) {
        for _ in 0..n {
            progress.record(state);
        }
    }

    #[test]
    fn counts_and_pending() {
        let mut p = Progress::new(Some(10));
        finish(&mut p, 4, JobState::Succeeded);
        finish(&mut p, 1, JobState::Failed);
        finish(&mut p, 2, JobState::Cancelled);
        finish(&mut p, 1, JobState::DeadlineExceeded);
        assert_eq!(p.finished(), 8);
        assert_eq!(p.pending(), Some(2));
        assert_eq!(Progress::new(None).pending(), None);
        // More results than the total thought (a stale count) never underflows.
        let mut p = Progress::new(Some(1));
        finish(&mut p, 3, JobState::Succeeded);
        assert_eq!(p.pending(), Some(0));
    }

    #[test]
    fn rate_and_eta_over_the_window() {
        let mut p = Progress::new(Some(1000));
        p.sample(secs(0.0));
        assert_eq!(p.rate(), None, "one sample is no rate");
        finish(&mut p, 100, JobState::Succeeded);
        p.sample(secs(0.2));
        assert_eq!(p.rate(), None, "0.2s is too short to mean anything");
        finish(&mut p, 200, JobState::Succeeded);
        p.sample(secs(2.0));
        assert_eq!(p.rate(), Some(150.0));
        // 700 pending at 150/s.
        let eta = p.eta().expect("an ETA");
        assert!((eta.as_secs_f64() - 700.0 / 150.0).abs() < 1e-9, "{eta:?}");
    }

    #[test]
    fn the_window_forgets_the_initial_burst() {
        let mut p = Progress::new(Some(10_000));
        p.sample(secs(0.0));
        // Results that had finished before the watch arrive at once…
        finish(&mut p, 5000, JobState::Succeeded);
        p.sample(secs(0.1));
        // …then 10 per second for 10 seconds.
        for tick in 1..=100 {
            finish(&mut p, 1, JobState::Succeeded);
            p.sample(secs(0.1 + f64::from(tick) * 0.1));
        }
        let rate = p.rate().expect("a rate");
        assert!((rate - 10.0).abs() < 0.5, "{rate}");
        assert!(p.samples.len() <= 52, "{} samples kept", p.samples.len());
        // The oldest sample kept is the last one at or before the window's start (10.1s - 5s).
        let first = p.samples.front().expect("samples").0;
        assert!(first > secs(4.95) && first < secs(5.15), "{first:?}");
    }

    #[test]
    fn eta_edges() {
        let mut p = Progress::new(None);
        p.sample(secs(0.0));
        finish(&mut p, 10, JobState::Succeeded);
        p.sample(secs(1.0));
        assert_eq!(p.eta(), None, "no total, no ETA");

        let mut p = Progress::new(Some(10));
        p.sample(secs(0.0));
        p.sample(secs(3.0));
        assert_eq!(p.rate(), Some(0.0));
        assert_eq!(p.eta(), None, "nothing finishing, no ETA");
        finish(&mut p, 10, JobState::Succeeded);
        assert_eq!(p.eta(), Some(Duration::ZERO));
    }

    #[test]
    fn samples_are_bounded() {
        let mut p = Progress::new(None);
        for i in 0..10_000 {
            p.sample(Duration::from_micros(i));
        }
        assert!(p.samples.len() <= MAX_SAMPLES);
    }

    #[test]
    fn lines() {
        let mut p = Progress::new(Some(8));
        p.sample(secs(0.0));
        finish(&mut p, 3, JobState::Succeeded);
        finish(&mut p, 1, JobState::Failed);
        p.sample(secs(2.0));
        assert_eq!(
            p.bar_line(8),
            "[████░░░░] 4/8  done 3  failed 1  pending 4  2.00/s  ETA 2.0s"
        );
        assert_eq!(
            p.text_line(),
            "4/8 finished: 3 done, 1 failed, 4 pending; 2.00/s, ETA 2.0s"
        );
        finish(&mut p, 4, JobState::Cancelled);
        assert_eq!(
            p.bar_line(8),
            "[████████] 8/8  done 3  failed 1  cancelled 4  pending 0  2.00/s"
        );
        let mut p = Progress::new(None);
        finish(&mut p, 2, JobState::Succeeded);
        assert_eq!(p.bar_line(8), "2 finished  done 2  failed 0");
        assert_eq!(
            Progress::new(Some(0)).bar_line(4),
            "[████] 0/0  done 0  failed 0  pending 0"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(secs(12.34)), "12.3s");
        assert_eq!(format_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(format_duration(Duration::from_secs(7380)), "2h03m");
        assert_eq!(format_rate(312.4), "312/s");
        assert_eq!(format_rate(12.46), "12.5/s");
        assert_eq!(format_rate(0.4), "0.40/s");
    }

    #[test]
    fn exit_codes() {
        let outcome = |state: JobState| {
            Finish::Outcome(GroupOutcome {
                state: state as i32,
                ..GroupOutcome::default()
            })
        };
        assert_eq!(outcome(JobState::Succeeded).exit_code(), Exit::Success);
        assert_eq!(outcome(JobState::Failed).exit_code(), Exit::Failed);
        assert_eq!(outcome(JobState::Cancelled).exit_code(), Exit::Cancelled);
        assert_eq!(Finish::Interrupted.exit_code(), Exit::Interrupted);
    }

    #[test]
    fn json_events() {
        let result = JobResult {
            job_id: "j1".into(),
            state: JobState::Failed as i32,
            output: vec![0xff],
            error: "boom".into(),
        };
        assert_eq!(
            result_json(&result, "c1").to_string(),
            r#"{"event":"result","job_id":"j1","state":"failed","output":{"hex":"ff"},"error":"boom","cursor":"c1"}"#
        );
        let outcome = GroupOutcome {
            group_id: "g".into(),
            state: JobState::Succeeded as i32,
            size: 2,
            succeeded: 2,
            ..GroupOutcome::default()
        };
        let line = outcome_json(&outcome, "c2");
        assert_eq!(line["event"], "outcome");
        assert_eq!(line["state"], "succeeded");
        assert_eq!(line["size"], 2);
        assert_eq!(
            outcome_text(&outcome, Some(Duration::from_millis(1200))),
            "group g succeeded: 2 done, 0 failed, 0 cancelled, 0 deadline exceeded, of 2 (1.2s)"
        );
        assert_eq!(
            outcome_text(&outcome, None),
            "group g succeeded: 2 done, 0 failed, 0 cancelled, 0 deadline exceeded, of 2 (had already finished)"
        );
    }
}
