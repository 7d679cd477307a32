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
    api::validate,
    domain::{JobId, JobState},
};

type Done = Result<Response, Failure>;

/// Jobs one bulk action reaches at most (the filter's matches beyond it are left for another
/// click, and the page says so).
pub(super) const BULK_LIMIT: usize = 10_000;

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
    let ids: Vec<JobId> = if matching {
        let mut query = pages::jobs_query(&caller, &form)?;
        query.filter.state = Some(JobState::Failed);
        query.filter.page_size = validate::MAX_PAGE_SIZE;
        matching_ids(&console, query).await?
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
        if ids.len() > BULK_LIMIT {
            return Err(Failure::BadRequest(format!(
                "at most {BULK_LIMIT} jobs at once"
            )));
        }
        ids
    };
    // Until the store's bulk engine: one call per job, through the same handlers as gRPC.
    let mut changed = 0u64;
    let mut refused = Vec::new();
    for id in &ids {
        let done = match action {
            Action::Requeue => console
                .jobs
                .requeue(request(
                    &caller,
                    v1::RequeueRequest {
                        job_id: id.to_string(),
                        max_attempts: None,
                    },
                ))
                .await
                .map(drop),
            Action::Cancel => console
                .jobs
                .cancel(request(
                    &caller,
                    v1::CancelRequest {
                        target: Some(Target::JobId(id.to_string())),
                        reason: "cancelled from the console".into(),
                    },
                ))
                .await
                .map(drop),
            Action::Delete => Err(tonic::Status::unimplemented(
                "deleting jobs needs the store's bulk engine",
            )),
        };
        match done {
            Ok(()) => changed += 1,
            Err(status) => refused.push((*id, status.message().to_owned())),
        }
    }
    let matched = ids.len();
    let content = html! {
        p #bulk-result data-matched=(matched) data-changed=(changed) {
            (matched) " jobs matched, " (changed) " changed."
        }
        @if !refused.is_empty() {
            ul.error {
                @for (id, why) in refused.iter().take(50) {
                    li { a href={"/jobs/" (id)} { (id) } ": " (why) }
                }
            }
        }
        p { a href="/dead-letters" { "Back to the dead letters" } }
    };
    Ok(page(&console, &caller, "Bulk action", content))
}

/// Every failed job the filter matches, page by page, up to [`BULK_LIMIT`].
async fn matching_ids(
    console: &Console,
    mut query: pages::JobsQuery,
) -> Result<Vec<JobId>, Failure> {
    let mut ids = Vec::new();
    loop {
        let listed = console.store.list(query.filter.clone()).await?;
        ids.extend(
            listed
                .jobs
                .iter()
                .filter(|j| pages::passes(&query, j))
                .map(|j| j.id),
        );
        match listed.next_after_seq {
            Some(seq) if ids.len() < BULK_LIMIT => query.filter.after_seq = seq,
            _ => break,
        }
    }
    ids.truncate(BULK_LIMIT);
    Ok(ids)
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
