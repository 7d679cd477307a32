//! The console's writes (POST): each checks the session's CSRF token and the admin role first
//! ([`Console::writer`]), calls what gRPC calls, and sends the browser back to a page.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
};
use maud::html;
use switchyard_proto::v1::{
    self, admin_service_server::AdminService, cancel_request::Target,
    job_service_server::JobService,
};

use super::{Console, Failure, Params, page, pages, request, session_cookie};
use crate::{
    domain::{JobId, JobState},
    store::{Bulk, BulkAction},
};

type Done = Result<Response, Failure>;

/// Jobs per bulk step (one store transaction).
const BULK_STEP: u32 = 1000;
/// Steps one click takes at most, and the time after which it takes no more: what matches
/// beyond is left for another click (the page says so).
const MAX_STEPS: usize = 20;
const STEPS_FOR: std::time::Duration = std::time::Duration::from_secs(2);
/// Jobs a selection may name (the store's bound for one step's ids).
const MAX_SELECTED: usize = 1000;

pub(super) async fn pause(State(console): State<Console>, headers: HeaderMap, body: Bytes) -> Done {
    pause_queue(console, headers, body, true).await
}

pub(super) async fn resume(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Done {
    pause_queue(console, headers, body, false).await
}

async fn pause_queue(console: Console, headers: HeaderMap, body: Bytes, paused: bool) -> Done {
    let form = Params::form(&body);
    let caller = console.writer(&headers, &form)?;
    let queue = form.get("queue").unwrap_or("").to_owned();
    tracing::info!(who = %caller.who(), queue, paused, "console: pause or resume");
    if paused {
        console
            .admin
            .pause_queue(request(&caller, v1::PauseQueueRequest { queue }))
            .await?;
    } else {
        console
            .admin
            .resume_queue(request(&caller, v1::ResumeQueueRequest { queue }))
            .await?;
    }
    Ok(Redirect::to("/queues").into_response())
}

fn number<T: std::str::FromStr>(form: &Params, field: &str) -> Result<Option<T>, Failure> {
    form.get(field)
        .map(|text| {
            text.parse()
                .map_err(|_| Failure::BadRequest(format!("{field}: {text:?} is not a number")))
        })
        .transpose()
}

pub(super) async fn set_quota(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Done {
    let form = Params::form(&body);
    let caller = console.writer(&headers, &form)?;
    let attempt_timeout = match form.get("attempt_timeout") {
        Some(text) => Some(
            crate::config::parse_duration(text)
                .map_err(|e| Failure::BadRequest(format!("attempt_timeout: {e}")))?,
        ),
        None => None,
    };
    let quota = v1::Quota {
        scope: form.get("scope").unwrap_or("").to_owned(),
        max_in_flight: number(&form, "max_in_flight")?,
        max_queued: number(&form, "max_queued")?,
        rate_per_second: number(&form, "rate_per_second")?,
        burst: number(&form, "burst")?,
        attempt_timeout: attempt_timeout.and_then(|d| prost_types::Duration::try_from(d).ok()),
        held: 0,
        queued: 0,
    };
    tracing::info!(who = %caller.who(), scope = quota.scope, "console: set quota");
    console
        .admin
        .set_quota(request(&caller, v1::SetQuotaRequest { quota: Some(quota) }))
        .await?;
    Ok(Redirect::to("/queues").into_response())
}

pub(super) async fn cancel(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Done {
    let form = Params::form(&body);
    let caller = console.writer(&headers, &form)?;
    tracing::info!(who = %caller.who(), job.id = %id, "console: cancel");
    console
        .jobs
        .cancel(request(
            &caller,
            v1::CancelRequest {
                target: Some(Target::JobId(id.clone())),
                reason: "cancelled from the console".into(),
            },
        ))
        .await?;
    Ok(Redirect::to(&format!("/jobs/{id}")).into_response())
}

pub(super) async fn requeue(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Done {
    let form = Params::form(&body);
    let caller = console.writer(&headers, &form)?;
    tracing::info!(who = %caller.who(), job.id = %id, "console: requeue");
    console
        .jobs
        .requeue(request(
            &caller,
            v1::RequeueRequest {
                job_id: id.clone(),
                max_attempts: None,
            },
        ))
        .await?;
    Ok(Redirect::to(&format!("/jobs/{id}")).into_response())
}

/// What a bulk form asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Requeue,
    Cancel,
    Delete,
}

/// `requeue`, `cancel-matching`, …: the action, and whether it is for the whole filter.
pub(super) fn parse_do(text: &str) -> Option<(Action, bool)> {
    let (action, matching) = match text.strip_suffix("-matching") {
        Some(action) => (action, true),
        None => (text, false),
    };
    let action = match action {
        "requeue" => Action::Requeue,
        "cancel" => Action::Cancel,
        "delete" => Action::Delete,
        _ => return None,
    };
    Some((action, matching))
}

pub(super) async fn bulk(State(console): State<Console>, headers: HeaderMap, body: Bytes) -> Done {
    let form = Params::form(&body);
    let caller = console.writer(&headers, &form)?;
    let (action, matching) = form
        .get("do")
        .and_then(parse_do)
        .ok_or_else(|| Failure::BadRequest("do: expected requeue, cancel or delete".into()))?;
    // The page's filter, on dead letters only (a selection must also match it); except a
    // cancel, which stops the jobs of that filter still queued or running (a dead letter has
    // ended already).
    let mut filter = pages::jobs_query(&caller, &form)?;
    filter.state = match action {
        Action::Cancel if !matching => {
            return Err(Failure::BadRequest(
                "a dead letter has ended already: cancel the queued and running jobs matching the filter instead".into(),
            ));
        }
        Action::Cancel => None,
        Action::Requeue | Action::Delete => Some(JobState::Failed),
    };
    filter.after_seq = 0;
    filter.page_size = BULK_STEP;
    let ids = if matching {
        Vec::new()
    } else {
        let ids = form
            .all("id")
            .map(|id| {
                id.parse()
                    .map_err(|_| Failure::BadRequest(format!("id: {id:?} is not a job id")))
            })
            .collect::<Result<Vec<JobId>, _>>()?;
        if ids.is_empty() {
            return Err(Failure::BadRequest("select some jobs first".into()));
        }
        if ids.len() > MAX_SELECTED {
            return Err(Failure::BadRequest(format!(
                "at most {MAX_SELECTED} jobs at once"
            )));
        }
        ids
    };
    let action = match action {
        Action::Requeue => BulkAction::Requeue,
        Action::Cancel => BulkAction::Cancel,
        Action::Delete => BulkAction::Delete,
    };
    // Step by step through the matches, each step one transaction of the store's; bounded in
    // steps and in time, so that the answer comes well within the request's timeout. What is
    // left is another click away, and the page says so.
    let started = tokio::time::Instant::now();
    let (mut matched, mut changed, mut steps) = (0u64, 0u64, 0usize);
    let left = loop {
        let step = Bulk {
            action,
            filter: filter.clone(),
            ids: ids.clone(),
            dry_run: false,
            reason: "cancelled from the console".into(),
        };
        let (store, scheduler, notifier) = (
            console.store.clone(),
            console.scheduler.clone(),
            console.notifier.clone(),
        );
        // To its end even if the browser goes away (`to_the_end`).
        let done = crate::api::to_the_end(console.jobs.tasks(), async move {
            crate::api::bulk::bulk(&store, &scheduler, &notifier, step).await
        })
        .await?;
        matched += done.matched;
        changed += done.changed;
        steps += 1;
        match done.next_after_seq {
            None => break false,
            Some(_) if steps >= MAX_STEPS || started.elapsed() >= STEPS_FOR => break true,
            Some(seq) => filter.after_seq = seq,
        }
    };
    tracing::info!(
        who = %caller.who(), ?action, selected = ids.len(), matched, changed, more = left,
        "console: bulk action"
    );
    let verb = match action {
        BulkAction::Requeue => "requeued",
        BulkAction::Cancel => "cancelled",
        BulkAction::Delete => "deleted",
    };
    let content = html! {
        p #bulk-result data-matched=(matched) data-changed=(changed) data-more=(left) {
            (matched) " jobs matched, " (changed) " " (verb) "."
            @if left { strong { " More match: submit again for the next ones." } }
        }
        @if matched > changed {
            p.note { "A match that is not changed: a cancel of a job that has ended, a requeue whose dependency failed, or a job another job still needs." }
        }
        p { a href="/dead-letters" { "Back to the dead letters" } }
    };
    Ok(page(&console, &caller, "Bulk action", content))
}

pub(super) async fn login(State(console): State<Console>, body: Bytes) -> Response {
    let Some(tokens) = &console.tokens else {
        return Redirect::to("/").into_response();
    };
    let form = Params::form(&body);
    let Some(token) = form.get("token") else {
        return pages::login_page(Some("Enter a token."));
    };
    if tokens.token(token).is_none() {
        return pages::login_page(Some("That token is not one this coordinator knows."));
    }
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&session_cookie(token)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

pub(super) async fn logout(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Done {
    let form = Params::form(&body);
    let caller = console.caller(&headers)?;
    if !super::csrf_matches(
        &console.csrf(&caller.session),
        form.get("csrf").unwrap_or(""),
    ) {
        return Err(Failure::Forbidden(
            "the form's CSRF token does not match this session".into(),
        ));
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "switchyard_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(response)
}
