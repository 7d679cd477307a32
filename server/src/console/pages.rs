//! The console's pages (GET): each reads through the api or the store, and renders.

use std::collections::BTreeMap;

use axum::{
    extract::{Path, State},
    http::{HeaderMap, Uri},
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use switchyard_proto::v1::{
    self, admin_service_server::AdminService, job_service_server::JobService,
};

use super::{
    Caller, Console, Failure, Params, age, csrf_field, millis, page, preview, request, respond,
    svg, time, wire_name,
};
use crate::{
    api::{convert, page_token, parse_page_token, validate},
    domain::{JobId, JobRecord, JobState, now_ms},
    store::ListFilter,
};

/// Jobs a list page shows.
const PAGE_SIZE: u32 = 50;
/// Jobs of a group drawn at most (the graph of a larger group shows its first ones).
pub(super) const GRAPH_JOBS: usize = 500;
/// Dependencies and children listed on a job's page at most.
const RELATED: u32 = 100;
/// Dead-letter groups shown at most.
const DEAD_LETTER_GROUPS: u32 = 100;

type Page = Result<Response, Failure>;

// --- overview ---------------------------------------------------------------------------------

pub(super) async fn overview(State(console): State<Console>, headers: HeaderMap) -> Page {
    let caller = console.caller(&headers)?;
    let live = overview_body(&console, &caller).await?;
    Ok(page(
        &console,
        &caller,
        "Overview",
        html! {
            div #live data-refresh="/fragments/overview" { (live) }
        },
    ))
}

/// The overview's live part, fetched again every few seconds by the page's script.
pub(super) async fn overview_fragment(State(console): State<Console>, headers: HeaderMap) -> Page {
    let caller = console.caller(&headers)?;
    let body = overview_body(&console, &caller).await?;
    Ok(respond(&caller, body))
}

async fn overview_body(console: &Console, caller: &Caller) -> Result<Markup, Failure> {
    if !caller.identity.sees_all() {
        return Ok(html! {
            p { "The overview counts every tenant's jobs; this token sees its own tenant's only: see "
                a href="/jobs" { "Jobs" } " and " a href="/dead-letters" { "Dead letters" } "." }
        });
    }
    let stats = console
        .admin
        .stats(request(caller, v1::StatsRequest {}))
        .await?
        .into_inner();
    let oldest: BTreeMap<String, i64> = console.store.oldest_queued().await?.into_iter().collect();
    let workers = console.scheduler.workers().await?;
    let now = now_ms();
    let first_minute = (now / 60_000 - 59) * 60_000;
    let mut bars = vec![svg::Bar::default(); 60];
    for m in console.store.ended_per_minute(first_minute).await? {
        let Some(bar) = usize::try_from((m.minute_ms - first_minute) / 60_000)
            .ok()
            .and_then(|i| bars.get_mut(i))
        else {
            continue;
        };
        match m.state {
            JobState::Succeeded => bar.succeeded += m.count,
            JobState::Failed | JobState::DeadlineExceeded => bar.failed += m.count,
            JobState::Cancelled => bar.cancelled += m.count,
            JobState::Queued | JobState::Running => {}
        }
    }
    let slots: u32 = workers.iter().map(|w| w.slots).sum();
    let busy: u32 = workers.iter().map(|w| w.running.min(w.slots)).sum();
    let hour_ok: u64 = bars.iter().map(|b| b.succeeded).sum();
    let hour_bad: u64 = bars.iter().map(|b| b.failed).sum();
    Ok(html! {
        div.cards {
            div.card { span.n #workers { (stats.workers) } " workers" }
            div.card { span.n #slots { (slots) } " slots" }
            div.card { span.n #free-slots { (slots - busy) } " free" }
            div.card { span.n #hour-succeeded { (hour_ok) } " succeeded (1 h)" }
            div.card { span.n #hour-failed { (hour_bad) } " failed (1 h)" }
        }
        h2 { "Jobs ended per minute, last hour" }
        (svg::chart(&bars))
        h2 { "Queues" }
        table #queues {
            thead { tr {
                th { "queue" } th { "queued" } th { "oldest queued" } th { "running" }
                th { "succeeded" } th { "failed" } th { "cancelled" } th { "deadline exceeded" }
                th { "paused" }
            } }
            tbody {
                @for q in &stats.queues {
                    tr data-queue=(q.queue) {
                        td { a href={"/jobs?queue=" (urlencode(&q.queue))} { (q.queue) } }
                        td data-state="queued" { (q.queued) }
                        td { @if let Some(t) = oldest.get(&q.queue) { (age(now - t)) } @else { "—" } }
                        td data-state="running" { (q.running) }
                        td data-state="succeeded" { (q.succeeded) }
                        td data-state="failed" { (q.failed) }
                        td data-state="cancelled" { (q.cancelled) }
                        td data-state="deadline_exceeded" { (q.deadline_exceeded) }
                        td { @if q.paused { strong { "paused" } } @else { "no" } }
                    }
                }
            }
        }
        p.note { "Refreshed " (time(now)) " UTC." }
    })
}

// --- queues -----------------------------------------------------------------------------------

pub(super) async fn queues(State(console): State<Console>, headers: HeaderMap) -> Page {
    let caller = console.caller(&headers)?;
    if !caller.identity.sees_all() {
        return Err(Failure::Forbidden(
            "queues and quotas need an admin or an all-tenants reader token".into(),
        ));
    }
    let stats = console
        .admin
        .stats(request(&caller, v1::StatsRequest {}))
        .await?
        .into_inner();
    let quotas = console
        .admin
        .list_quotas(request(&caller, v1::ListQuotasRequest {}))
        .await?
        .into_inner()
        .quotas;
    let write = caller.may_write();
    let content = html! {
        table #queues {
            thead { tr {
                th { "queue" } th { "queued" } th { "running" } th { "succeeded" } th { "failed" }
                th { "cancelled" } th { "deadline exceeded" } th { "paused" } th {}
            } }
            tbody {
                @for q in &stats.queues {
                    tr data-queue=(q.queue) {
                        td { a href={"/jobs?queue=" (urlencode(&q.queue))} { (q.queue) } }
                        td { (q.queued) } td { (q.running) } td { (q.succeeded) } td { (q.failed) }
                        td { (q.cancelled) } td { (q.deadline_exceeded) }
                        td.paused { @if q.paused { strong { "paused" } } @else { "no" } }
                        td {
                            @if write {
                                form.inline method="post"
                                    action=(if q.paused { "/queues/resume" } else { "/queues/pause" }) {
                                    (csrf_field(&console, &caller))
                                    input type="hidden" name="queue" value=(q.queue);
                                    button type="submit" { (if q.paused { "Resume" } else { "Pause" }) }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Quotas" }
        table #quotas {
            thead { tr {
                th { "scope" } th { "held / max in flight" } th { "queued / max queued" }
                th { "rate per second" } th { "burst" } th { "attempt timeout" }
            } }
            tbody {
                @for q in &quotas {
                    tr data-scope=(q.scope) {
                        td { (q.scope) }
                        td { (q.held) " / " (opt(q.max_in_flight)) }
                        td { (q.queued) " / " (opt(q.max_queued)) }
                        td { (opt(q.rate_per_second)) }
                        td { (opt(q.burst)) }
                        td { @if let Some(d) = &q.attempt_timeout { (age(d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)) } @else { "—" } }
                    }
                }
            }
        }
        @if write {
            h2 { "Set a quota" }
            p.note { "Fields left empty are unset; a quota with nothing set is removed." }
            form.grid #quota-form method="post" action="/quotas" {
                (csrf_field(&console, &caller))
                label { "scope " input name="scope" required placeholder="queue:emails, key:acct-1, tenant:acme"; }
                label { "max in flight " input name="max_in_flight" inputmode="numeric"; }
                label { "max queued " input name="max_queued" inputmode="numeric"; }
                label { "rate per second " input name="rate_per_second" inputmode="decimal"; }
                label { "burst " input name="burst" inputmode="numeric"; }
                label { "attempt timeout " input name="attempt_timeout" placeholder="30s"; }
                button type="submit" { "Set quota" }
            }
        }
    };
    Ok(page(&console, &caller, "Queues", content))
}

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| v.to_string())
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

// --- jobs -------------------------------------------------------------------------------------

/// `2026-01-02T03:04` (a `datetime-local` input, read as UTC) or ms since the epoch.
fn parse_time(field: &str, text: Option<&str>) -> Result<Option<i64>, Failure> {
    let Some(text) = text else { return Ok(None) };
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(Some(ms));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Ok(Some(t.and_utc().timestamp_millis()));
        }
    }
    Err(Failure::BadRequest(format!(
        "{field}: {text:?} is not a time (YYYY-MM-DDTHH:MM, UTC)"
    )))
}

fn bad(err: crate::error::Error) -> Failure {
    Failure::BadRequest(err.to_string())
}

/// The store's filter from a jobs page's query (or a bulk form): the same checks as `List`'s
/// and `Bulk`'s (`validate::filter`), a tenant's token bound to its tenant. `page` is the
/// page token.
pub(super) fn jobs_query(caller: &Caller, params: &Params) -> Result<ListFilter, Failure> {
    let state = match params.get("state") {
        Some(s) => JobState::parse(s)
            .map(|s| convert::state(s) as i32)
            .ok_or_else(|| Failure::BadRequest(format!("state: {s:?} is not a job state")))?,
        None => 0,
    };
    let after = parse_time("after", params.get("after"))?.map(convert::timestamp);
    let before = parse_time("before", params.get("before"))?.map(convert::timestamp);
    let fields = validate::FilterFields {
        queue: params.get("queue").unwrap_or(""),
        state,
        kind: params.get("kind").unwrap_or(""),
        label: params.get("label").unwrap_or(""),
        tenant_id: params.get("tenant").unwrap_or(""),
        submitted_after: after.as_ref(),
        submitted_before: before.as_ref(),
    };
    Ok(ListFilter {
        after_seq: parse_page_token("page", params.get("page").unwrap_or("")).map_err(bad)?,
        page_size: PAGE_SIZE,
        ..validate::filter(fields, caller.scope()).map_err(bad)?
    })
}

pub(super) async fn jobs(State(console): State<Console>, headers: HeaderMap, uri: Uri) -> Page {
    let caller = console.caller(&headers)?;
    let params = Params::query(&uri);
    let filter = jobs_query(&caller, &params)?;
    let listed = console.store.list(filter).await?;
    let jobs: Vec<&JobRecord> = listed.jobs.iter().collect();
    let next = listed.next_after_seq.map(|seq| {
        let mut kept: Vec<(String, String)> = params
            .0
            .iter()
            .filter(|(k, v)| k != "page" && !v.is_empty())
            .cloned()
            .collect();
        kept.push(("page".into(), page_token(seq)));
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept)
            .finish();
        format!("/jobs?{query}")
    });
    let value = |key: &str| params.get(key).unwrap_or("").to_owned();
    let content = html! {
        form.filters #job-filter method="get" action="/jobs" {
            label { "queue " input name="queue" value=(value("queue")); }
            label { "state "
                select name="state" {
                    option value="" { "any" }
                    @for s in JobState::ALL {
                        option value=(s.as_str()) selected[params.get("state") == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            label { "kind " input name="kind" value=(value("kind")); }
            (tenant_label_time_inputs(&caller, &params))
            button type="submit" { "Filter" }
        }
        (jobs_table(&jobs, None))
        @if let Some(next) = next {
            p { a #next-page href=(next) { "Next page →" } }
        }
    };
    Ok(page(&console, &caller, "Jobs", content))
}

/// A table of jobs; with `select` (the CSRF field's form id), a checkbox on each.
fn jobs_table(jobs: &[&JobRecord], select: Option<&str>) -> Markup {
    let now = now_ms();
    html! {
        table.jobs {
            thead { tr {
                @if select.is_some() { th { input type="checkbox" data-select-all="id" title="select all"; } }
                th { "job" } th { "queue" } th { "kind" } th { "state" } th { "attempts" }
                th { "tenant" } th { "labels" } th { "submitted" } th { "error" }
            } }
            tbody {
                @if jobs.is_empty() {
                    tr { td colspan="10" { "No jobs." } }
                }
                @for job in jobs {
                    tr data-job=(job.id) data-state=(job.state.as_str()) {
                        @if let Some(form) = select {
                            td { input type="checkbox" name="id" value=(job.id) form=(form); }
                        }
                        td { a href={"/jobs/" (job.id)} { code { (svg::short(&job.id.to_string(), 13)) } } }
                        td { (job.queue) }
                        td { (job.kind) }
                        td { span class={"state " (job.state.as_str())} { (job.state.as_str()) } }
                        td { (job.attempt) " / " (job.max_attempts) }
                        td { (job.tenant_id.as_deref().unwrap_or("")) }
                        td.labels { @for (k, v) in &job.labels { span.label { (k) "=" (v) } " " } }
                        td title=(time(job.created_at_ms)) { (age(now - job.created_at_ms)) " ago" }
                        td.error { (svg::short(job.error.as_deref().unwrap_or(""), 80)) }
                    }
                }
            }
        }
    }
}

// --- a job ------------------------------------------------------------------------------------

fn preview_block(id: &str, bytes: &[u8]) -> Markup {
    let p = preview::preview(bytes);
    html! {
        div.preview #(id) data-kind=(p.label()) {
            p.note {
                (p.label()) ", " (bytes.len()) " bytes"
                @if let Some(full) = p.shown().and_then(|s| s.full_bytes) {
                    strong { " — truncated: the first part of " (full) " bytes" }
                }
            }
            @if let Some(shown) = p.shown() {
                pre { (shown.text) }
            }
        }
    }
}

pub(super) async fn job(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Page {
    let caller = console.caller(&headers)?;
    let job = console
        .jobs
        .get(request(&caller, v1::GetRequest { job_id: id.clone() }))
        .await?
        .into_inner();
    let job_id: JobId = id
        .parse()
        .map_err(|_| Failure::NotFound(format!("job {id}: not found")))?;
    let children = console
        .store
        .list(ListFilter {
            parent_job_id: Some(job_id),
            tenant_id: caller.scope(),
            page_size: RELATED,
            ..Default::default()
        })
        .await?;
    let mut dependencies = Vec::new();
    for dep in job.depends_on.iter().take(RELATED as usize) {
        let record = match dep.parse::<JobId>() {
            Ok(dep) => console.store.get(dep).await?,
            Err(_) => None,
        }
        .filter(|r| {
            caller
                .identity
                .may_see(r.tenant_id.as_deref().unwrap_or(""))
        });
        dependencies.push((dep.clone(), record.map(|r| (r.kind, r.state))));
    }
    let state = wire_name(job.state().as_str_name(), "JOB_STATE_");
    let write = caller.may_write();
    let content = html! {
        div.actions {
            span class={"state big " (state)} #job-state { (state) }
            @if write {
                form.inline method="post" action={"/jobs/" (job.job_id) "/cancel"} {
                    (csrf_field(&console, &caller))
                    button type="submit" data-confirm="Cancel this job?" { "Cancel" }
                }
                form.inline method="post" action={"/jobs/" (job.job_id) "/requeue"} {
                    (csrf_field(&console, &caller))
                    button type="submit" #requeue { "Requeue" }
                }
            }
        }
        table.fields {
            tr { th { "id" } td { code #job-id { (job.job_id) } } }
            tr { th { "queue / kind" } td { (job.queue) " / " (job.kind) } }
            tr { th { "attempts" } td #attempt-count { (job.attempt) " of " (job.max_attempts) } }
            tr { th { "tenant" } td { (job.tenant_id) } }
            tr { th { "priority / weight" } td { (job.priority) " / " (job.weight) } }
            @if let Some(b) = &job.blocked_on {
                tr { th { "blocked on" } td #blocked-on {
                    (wire_name(b.reason().as_str_name(), "BLOCKED_REASON_"))
                    @if !b.detail.is_empty() { ": " (b.detail) }
                } }
            }
            tr { th { "trace id" } td { code { (job.trace_id) } } }
            @if !job.parent_job_id.is_empty() {
                tr { th { "parent" } td { a href={"/jobs/" (job.parent_job_id)} { code { (job.parent_job_id) } } } }
            }
            @if !job.group_id.is_empty() {
                tr { th { "group" } td { a href={"/groups/" (urlencode(&job.group_id))} { (job.group_id) } } }
            }
            @if !job.idempotency_key.is_empty() {
                tr { th { "idempotency key" } td { (job.idempotency_key) } }
            }
            @if !job.concurrency_key.is_empty() {
                tr { th { "concurrency key" } td { (job.concurrency_key) } }
            }
            tr { th { "labels" } td #labels { @for (k, v) in &job.labels { span.label { (k) "=" (v) } " " } } }
            tr { th { "submitted" } td { (millis(&job.created_at).map(time).unwrap_or_default()) } }
            tr { th { "started" } td { (millis(&job.started_at).map(time).unwrap_or_default()) } }
            tr { th { "finished" } td { (millis(&job.finished_at).map(time).unwrap_or_default()) } }
            @if !job.error.is_empty() {
                tr { th { "error" } td.error #job-error { (job.error) } }
            }
            @if let Some(p) = &job.progress {
                tr { th { "progress" } td {
                    @if let Some(f) = p.fraction { (format!("{:.0}%", f * 100.0)) " " }
                    (p.message) " (attempt " (p.attempt) ")"
                } }
            }
        }
        h2 { "Payload" }
        (preview_block("payload", &job.payload))
        h2 { "Output" }
        (preview_block("output", &job.output))
        h2 { "Attempts" }
        table #attempts {
            thead { tr { th { "#" } th { "worker" } th { "started" } th { "finished" } th { "outcome" } th { "error" } } }
            tbody {
                @for a in &job.attempts {
                    tr.attempt data-outcome=(wire_name(a.outcome().as_str_name(), "ATTEMPT_OUTCOME_")) {
                        td { (a.number) }
                        td { (a.worker_id) }
                        td { (millis(&a.started_at).map(time).unwrap_or_default()) }
                        td { (millis(&a.finished_at).map(time).unwrap_or_default()) }
                        td { (wire_name(a.outcome().as_str_name(), "ATTEMPT_OUTCOME_")) }
                        td.error { (a.error) }
                    }
                }
            }
        }
        h2 { "Dependencies" }
        @if dependencies.is_empty() { p { "None." } }
        ul #dependencies {
            @for (id, record) in &dependencies {
                li {
                    a href={"/jobs/" (id)} { code { (id) } }
                    @if let Some((kind, state)) = record { " " (kind) " " span class={"state " (state.as_str())} { (state.as_str()) } }
                }
            }
        }
        h2 { "Children" }
        @let children: Vec<&JobRecord> = children.jobs.iter().collect();
        (jobs_table(&children, None))
    };
    Ok(page(
        &console,
        &caller,
        &format!("Job {}", job.kind),
        content,
    ))
}

// --- groups -----------------------------------------------------------------------------------

pub(super) async fn groups(State(console): State<Console>, headers: HeaderMap, uri: Uri) -> Page {
    let caller = console.caller(&headers)?;
    if let Some(id) = Params::query(&uri).get("id") {
        return Ok(Redirect::to(&format!("/groups/{}", urlencode(id))).into_response());
    }
    let content = html! {
        form.filters method="get" action="/groups" {
            label { "group id " input name="id" required; }
            button type="submit" { "Show" }
        }
    };
    Ok(page(&console, &caller, "Groups", content))
}

pub(super) async fn group(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Page {
    let caller = console.caller(&headers)?;
    validate::name("group_id", &id).map_err(bad)?;
    let group = console
        .store
        .group(id.clone(), caller.scope())
        .await?
        .filter(|g| {
            caller
                .identity
                .may_see(g.tenant_id.as_deref().unwrap_or(""))
        })
        .ok_or_else(|| Failure::NotFound(format!("group {id}: not found")))?;
    let mut jobs = Vec::new();
    let mut after_seq = 0;
    while jobs.len() < GRAPH_JOBS {
        let listed = console
            .store
            .list(ListFilter {
                group_id: Some(id.clone()),
                tenant_id: group.tenant_id.clone(),
                after_seq,
                page_size: 100,
                ..Default::default()
            })
            .await?;
        jobs.extend(listed.jobs);
        match listed.next_after_seq {
            Some(seq) => after_seq = seq,
            None => break,
        }
    }
    jobs.truncate(GRAPH_JOBS);
    let nodes: Vec<svg::Node> = jobs
        .iter()
        .map(|j| svg::Node {
            id: j.id.to_string(),
            label: j.kind.clone(),
            state: j.state.as_str(),
            depends_on: j.depends_on.iter().map(ToString::to_string).collect(),
            href: format!("/jobs/{}", j.id),
        })
        .collect();
    let ended = group.succeeded + group.failed + group.cancelled + group.deadline_exceeded;
    let state = group.state().as_str();
    let content = html! {
        p {
            span class={"state big " (state)} #group-state { (state) } " "
            progress max=(group.size.max(1)) value=(ended) {} " "
            span #group-progress { (ended) " of " (group.size) " ended" }
        }
        table.fields {
            tr { th { "queued / running" } td { (group.queued) " / " (group.running) } }
            tr { th { "succeeded / failed" } td { (group.succeeded) " / " (group.failed) } }
            tr { th { "cancelled / past deadline" } td { (group.cancelled) " / " (group.deadline_exceeded) } }
            tr { th { "cancel on failure" } td { (group.cancel_on_failure) } }
            @if let Some(error) = &group.error {
                tr { th { "error" } td.error { (error) } }
            }
        }
        h2 { "Dependency graph" }
        @if jobs.len() >= GRAPH_JOBS { p.note { "The first " (GRAPH_JOBS) " jobs." } }
        div.graph-box { (svg::graph(&nodes)) }
        h2 { "Jobs" }
        @let shown: Vec<&JobRecord> = jobs.iter().collect();
        (jobs_table(&shown, None))
    };
    Ok(page(&console, &caller, &format!("Group {id}"), content))
}

// --- workers ----------------------------------------------------------------------------------

pub(super) async fn workers(State(console): State<Console>, headers: HeaderMap) -> Page {
    let caller = console.caller(&headers)?;
    crate::api::view(&caller.identity)?;
    let workers = console.scheduler.workers().await?;
    let running = console
        .store
        .list(ListFilter {
            state: Some(JobState::Running),
            page_size: validate::MAX_PAGE_SIZE,
            ..Default::default()
        })
        .await?;
    let mut by_worker: BTreeMap<&str, Vec<&JobRecord>> = BTreeMap::new();
    for job in &running.jobs {
        if let Some(worker) = &job.worker_id {
            by_worker.entry(worker.as_str()).or_default().push(job);
        }
    }
    let now = now_ms();
    let content = html! {
        table #workers {
            thead { tr {
                th { "worker" } th { "queues" } th { "kinds" } th { "slots (free)" }
                th { "in flight" } th { "last heartbeat" } th { "connected" } th { "peer" }
            } }
            tbody {
                @if workers.is_empty() { tr { td colspan="8" { "No workers connected." } } }
                @for w in &workers {
                    tr data-worker=(w.worker_id) {
                        td { (w.worker_id) }
                        td { (w.queues.join(", ")) }
                        td { @if w.kinds.is_empty() { "any" } @else { (w.kinds.join(", ")) } }
                        td { (w.slots) " (" (w.slots.saturating_sub(w.running)) ")" }
                        td {
                            @for job in by_worker.get(w.worker_id.as_str()).into_iter().flatten() {
                                a href={"/jobs/" (job.id)} { (job.kind) } " "
                            }
                        }
                        td.heartbeat { (age(now - w.last_heartbeat_ms)) " ago" }
                        td title=(time(w.connected_at_ms)) { (age(now - w.connected_at_ms)) " ago" }
                        td { (w.peer) }
                    }
                }
            }
        }
    };
    Ok(page(&console, &caller, "Workers", content))
}

// --- dead letters -----------------------------------------------------------------------------

pub(super) async fn dead_letters(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
) -> Page {
    let caller = console.caller(&headers)?;
    let params = Params::query(&uri);
    let mut filter = jobs_query(&caller, &params)?;
    filter.state = Some(JobState::Failed);
    let groups = console
        .store
        .dead_letters(caller.scope(), DEAD_LETTER_GROUPS)
        .await?;
    let listed = console.store.list(filter).await?;
    let jobs: Vec<&JobRecord> = listed.jobs.iter().collect();
    let value = |key: &str| params.get(key).unwrap_or("").to_owned();
    let next = listed.next_after_seq.map(|seq| {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                params
                    .0
                    .iter()
                    .filter(|(k, v)| k != "page" && !v.is_empty())
                    .cloned()
                    .chain([("page".to_owned(), page_token(seq))]),
            )
            .finish();
        format!("/dead-letters?{query}")
    });
    let write = caller.may_write();
    let content = html! {
        h2 { "By kind and error" }
        table #dead-letter-groups {
            thead { tr { th { "kind" } th { "error" } th { "jobs" } th { "last failed" } th {} } }
            tbody {
                @if groups.is_empty() { tr { td colspan="5" { "No failed jobs." } } }
                @for g in &groups {
                    tr {
                        td { (g.kind) }
                        td.error { (svg::short(g.error.as_deref().unwrap_or(""), 120)) }
                        td.count { (g.count) }
                        td { (g.last_failed_ms.map(time).unwrap_or_default()) }
                        td { a href={"/dead-letters?kind=" (urlencode(&g.kind))} { "show" } }
                    }
                }
            }
        }
        h2 { "Failed jobs" }
        form.filters method="get" action="/dead-letters" {
            label { "queue " input name="queue" value=(value("queue")); }
            label { "kind " input name="kind" value=(value("kind")); }
            (tenant_label_time_inputs(&caller, &params))
            button type="submit" { "Filter" }
        }
        form #bulk method="post" action="/dead-letters/bulk" {
            (csrf_field(&console, &caller))
            // The filter the "matching" buttons act on (the page's own).
            input type="hidden" name="queue" value=(value("queue"));
            input type="hidden" name="kind" value=(value("kind"));
            @for key in ["tenant", "label", "after", "before"] {
                input type="hidden" name=(key) value=(value(key));
            }
            @if write {
                div.actions {
                    span #selected-count data-count-of="id" { "0 selected" } " "
                    button type="submit" name="do" value="requeue" #requeue-selected { "Requeue selected" }
                    button type="submit" name="do" value="delete" data-confirm="Delete the selected jobs for good?" { "Delete selected" }
                    " · "
                    button type="submit" name="do" value="requeue-matching" #requeue-matching data-confirm="Requeue every failed job matching the filter?" { "Requeue all matching" }
                    // A dead letter has ended: what a cancel can still stop is the rest of the
                    // failing kind, the jobs of this filter still queued or running.
                    button type="submit" name="do" value="cancel-matching" data-confirm="Cancel every queued or running job matching the filter?" { "Cancel queued and running matching" }
                    button type="submit" name="do" value="delete-matching" data-confirm="Delete every failed job matching the filter for good?" { "Delete all matching" }
                }
            }
        }
        (jobs_table(&jobs, Some("bulk")))
        @if let Some(next) = next {
            p { a #next-page href=(next) { "Next page →" } }
        }
    };
    Ok(page(&console, &caller, "Dead letters", content))
}

/// The filter inputs the jobs and dead-letter pages share: tenant (for a caller who sees
/// every tenant), label and submit time, filled in from the page's query.
fn tenant_label_time_inputs(caller: &Caller, params: &Params) -> Markup {
    let value = |key: &str| params.get(key).unwrap_or("").to_owned();
    html! {
        @if caller.scope().is_none() {
            label { "tenant " input name="tenant" value=(value("tenant")); }
        }
        label { "label " input name="label" placeholder="key=value" value=(value("label")); }
        label { "submitted after " input name="after" type="datetime-local" value=(value("after")); }
        label { "before " input name="before" type="datetime-local" value=(value("before")); }
    }
}

// --- login ------------------------------------------------------------------------------------

pub(super) async fn login(State(console): State<Console>) -> Response {
    if console.tokens.is_none() {
        return Redirect::to("/").into_response();
    }
    login_page(None)
}

pub(super) fn login_page(error: Option<&str>) -> Response {
    let markup = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Switchyard: sign in" }
                link rel="stylesheet" href="/assets/console.css";
            }
            body {
                main.login {
                    h1 { "Switchyard" }
                    @if let Some(error) = error { p.error #login-error { (error) } }
                    form #login method="post" action="/login" {
                        label { "Token " input type="password" name="token" autocomplete="current-password" required autofocus; }
                        button type="submit" { "Sign in" }
                    }
                    p.note { "The tokens of the coordinator's --tokens file: an admin token may change things, the others only look." }
                }
            }
        }
    };
    let mut response = super::html_body(markup).into_response();
    super::headers(response.headers_mut());
    if error.is_some() {
        *response.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
    }
    response
}
