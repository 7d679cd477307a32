//! The operator's web console, served with `/metrics` on the coordinator's HTTP address
//! (`--http`): server-rendered HTML (maud templates, which escape everything they insert), a
//! small script of our own for live refresh and bulk selection, and forms that post. It reads
//! and writes through the same calls as gRPC (the api's `JobApi` and `AdminApi` with the
//! caller's [`Identity`], or the store and scheduler calls they make), so both agree.
//!
//! Who may do what: the tokens of `--tokens`, given on a login page (kept in an HttpOnly,
//! SameSite=Strict cookie) or as `authorization: Bearer`. Every token may read what its tenant
//! may see (an admin or a `*` reader sees everything); writes need the admin role. Without
//! `--tokens` the console is open, as gRPC is. Every write is a POST that carries the session's
//! CSRF token (a keyed digest of the session, checked before anything else).

mod actions;
mod pages;
pub mod preview;
pub mod svg;

use std::{fmt::Write as _, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    extract::DefaultBodyLimit,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use maud::{DOCTYPE, Markup, html};
use sha2::{Digest, Sha256};

use crate::{
    api::{AdminApi, JobApi},
    auth::{Identity, Role, Tokens},
    fanin::Notifier,
    scheduler::Scheduler,
    store::Store,
};

/// Largest form body accepted (a dead-letter page's selection is a few KiB).
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// The session cookie: the token itself (HttpOnly: no script reads it), or on an open console
/// a random id that only keys the CSRF token.
const COOKIE: &str = "switchyard_session";

const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// What the console's handlers share: cheap clones of the coordinator's handles.
#[derive(Clone)]
pub struct Console {
    jobs: JobApi,
    admin: AdminApi,
    store: Arc<dyn Store>,
    scheduler: Scheduler,
    notifier: Notifier,
    tokens: Option<Arc<Tokens>>,
    /// The key of CSRF tokens, new at each start (a restart asks forms to be reloaded).
    secret: Arc<[u8; 32]>,
}

impl Console {
    pub fn new(
        jobs: JobApi,
        admin: AdminApi,
        store: Arc<dyn Store>,
        scheduler: Scheduler,
        notifier: Notifier,
        tokens: Option<Arc<Tokens>>,
    ) -> Console {
        let mut secret = [0u8; 32];
        secret[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        secret[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Console {
            jobs,
            admin,
            store,
            scheduler,
            notifier,
            tokens,
            secret: Arc::new(secret),
        }
    }

    /// Who is asking: the bearer token, else the session cookie. Without tokens, everyone is
    /// the open coordinator's admin, and a caller without a cookie gets one (for CSRF).
    fn caller(&self, headers: &HeaderMap) -> Result<Caller, Failure> {
        let cookie = cookie(headers, COOKIE);
        match &self.tokens {
            Some(tokens) => {
                let token = crate::auth::bearer(headers)
                    .map(str::to_owned)
                    .or(cookie)
                    .ok_or(Failure::SignIn)?;
                let identity = tokens.token(&token).ok_or(Failure::SignIn)?;
                Ok(Caller {
                    identity,
                    session: token,
                    new_cookie: None,
                })
            }
            None => {
                let identity = Identity {
                    tenant: None,
                    role: Role::Admin,
                    authenticated: false,
                };
                Ok(match cookie.filter(|c| !c.is_empty() && c.len() <= 64) {
                    Some(session) => Caller {
                        identity,
                        session,
                        new_cookie: None,
                    },
                    None => {
                        let session = uuid::Uuid::new_v4().simple().to_string();
                        Caller {
                            identity,
                            session: session.clone(),
                            new_cookie: Some(session),
                        }
                    }
                })
            }
        }
    }

    /// The CSRF token of a session.
    fn csrf(&self, session: &str) -> String {
        csrf_token(&self.secret, session)
    }

    /// A write's caller: a session with the form's CSRF token, and the admin role.
    fn writer(&self, headers: &HeaderMap, form: &Params) -> Result<Caller, Failure> {
        let caller = self.caller(headers)?;
        if caller.new_cookie.is_some()
            || !csrf_matches(&self.csrf(&caller.session), form.get("csrf").unwrap_or(""))
        {
            return Err(Failure::Forbidden(
                "the form's CSRF token does not match this session: reload the page and try again"
                    .into(),
            ));
        }
        if caller.identity.role != Role::Admin && caller.identity.authenticated {
            return Err(Failure::Forbidden(
                "changes need a token with the admin role".into(),
            ));
        }
        Ok(caller)
    }
}

/// A session's CSRF token: a SHA-256 digest of it under the console's key, in hex. Only the
/// console can make one, and a page from another origin cannot read it.
fn csrf_token(secret: &[u8; 32], session: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(secret);
    digest.update(b"\0csrf\0");
    digest.update(session.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest.finalize().iter() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Compares in time that does not depend on where they differ.
fn csrf_matches(expected: &str, given: &str) -> bool {
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A caller of the console.
pub(crate) struct Caller {
    identity: Identity,
    /// What keys its CSRF token: its token, or an open console's session id.
    session: String,
    /// A session id to set as the cookie (an open console's first visit).
    new_cookie: Option<String>,
}

impl Caller {
    /// The tenant its job reads are bound to (`None`: every tenant's).
    fn scope(&self) -> Option<String> {
        if self.identity.authenticated && self.identity.role != Role::Admin {
            self.identity.tenant.clone()
        } else {
            None
        }
    }

    fn may_write(&self) -> bool {
        !self.identity.authenticated || self.identity.role == Role::Admin
    }

    fn who(&self) -> String {
        if !self.identity.authenticated {
            return "open console (no --tokens)".into();
        }
        format!(
            "{} of {}",
            self.identity.role.as_str(),
            self.identity.tenant.as_deref().unwrap_or("every tenant")
        )
    }
}

/// A gRPC request as the console's caller makes it, to call the api's handlers directly.
fn request<T>(caller: &Caller, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(caller.identity.clone());
    request
}

/// Every console route. [`crate::http::router`] merges them beside `/metrics`.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/fragments/overview", get(pages::overview_fragment))
        .route("/queues", get(pages::queues))
        .route("/queues/pause", post(actions::pause))
        .route("/queues/resume", post(actions::resume))
        .route("/quotas", post(actions::set_quota))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{id}", get(pages::job))
        .route("/jobs/{id}/cancel", post(actions::cancel))
        .route("/jobs/{id}/requeue", post(actions::requeue))
        .route("/groups", get(pages::groups))
        .route("/groups/{id}", get(pages::group))
        .route("/workers", get(pages::workers))
        .route("/dead-letters", get(pages::dead_letters))
        .route("/dead-letters/bulk", post(actions::bulk))
        .route("/login", get(pages::login).post(actions::login))
        .route("/logout", post(actions::logout))
        .route("/assets/console.js", get(script))
        .route("/assets/console.css", get(style))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(console)
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLE,
    )
}

/// Why a console request was not served; each is a page with its status.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("sign in with a token")]
    SignIn,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// What the api answered (its messages carry no internal detail).
    #[error("{}", .0.message())]
    Call(#[from] tonic::Status),
}

impl From<crate::error::Error> for Failure {
    fn from(err: crate::error::Error) -> Failure {
        // The one mapping: internal errors are logged there and reach us as INTERNAL.
        Failure::Call(err.into())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        use tonic::Code;
        let status = match &self {
            Failure::SignIn => return Redirect::to("/login").into_response(),
            Failure::Forbidden(_) => StatusCode::FORBIDDEN,
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::NotFound(_) => StatusCode::NOT_FOUND,
            Failure::Call(status) => match status.code() {
                Code::NotFound => StatusCode::NOT_FOUND,
                Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
                Code::PermissionDenied => StatusCode::FORBIDDEN,
                Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => {
                    StatusCode::CONFLICT
                }
                Code::Unavailable | Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
                Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        };
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { "Switchyard: " (status) } link rel="stylesheet" href="/assets/console.css"; }
                body {
                    main {
                        h1 { (status.canonical_reason().unwrap_or("error")) }
                        p.error #failure { (self.to_string()) }
                        p { a href="/" { "overview" } " · " a href="/login" { "sign in" } }
                    }
                }
            }
        };
        let mut response = (status, html_body(body)).into_response();
        headers(response.headers_mut());
        response
    }
}

/// The headers every page carries: no script but ours, no framing, no sniffing, no caching.
fn headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn html_body(markup: Markup) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
}

/// An HTML answer for `caller`, with the session cookie if it needs one.
fn respond(caller: &Caller, markup: Markup) -> Response {
    let mut response = html_body(markup).into_response();
    headers(response.headers_mut());
    if let Some(session) = &caller.new_cookie
        && let Ok(value) = HeaderValue::from_str(&session_cookie(session))
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The `Set-Cookie` value of a session (its value percent-encoded: tokens may hold anything
/// but whitespace).
fn session_cookie(session: &str) -> String {
    let value: String = form_urlencoded::byte_serialize(session.as_bytes()).collect();
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict")
}

/// The value of cookie `name`, decoded.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            form_urlencoded::parse(format!("v={v}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
}

/// A page in the console's frame: the navigation, who is signed in, and the content.
fn page(console: &Console, caller: &Caller, title: &str, content: Markup) -> Response {
    let csrf = console.csrf(&caller.session);
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Switchyard: " (title) }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                header {
                    strong { "Switchyard" }
                    nav {
                        a href="/" { "Overview" }
                        a href="/queues" { "Queues" }
                        a href="/jobs" { "Jobs" }
                        a href="/groups" { "Groups" }
                        a href="/workers" { "Workers" }
                        a href="/dead-letters" { "Dead letters" }
                    }
                    span.who #who data-role=(caller.identity.role.as_str()) { (caller.who()) }
                    @if caller.identity.authenticated {
                        form.inline method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (content)
                }
            }
        }
    };
    respond(caller, markup)
}

/// Form fields or query parameters, in order (repeated keys kept: checkboxes).
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    fn parse(bytes: &[u8]) -> Params {
        Params(
            form_urlencoded::parse(bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn query(uri: &axum::http::Uri) -> Params {
        Params::parse(uri.query().unwrap_or("").as_bytes())
    }

    fn form(body: &Bytes) -> Params {
        Params::parse(body)
    }

    /// The first non-empty value of `key`, trimmed.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.trim())
            .find(|v| !v.is_empty())
    }

    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }
}

/// The hidden field every form carries.
fn csrf_field(console: &Console, caller: &Caller) -> Markup {
    html! { input type="hidden" name="csrf" value=(console.csrf(&caller.session)); }
}

/// `2026-01-02 03:04:05` (UTC) of a time in ms.
fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// `3h 4m`, `5m 6s`, `7s`, `120ms`.
fn age(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Milliseconds of a wire timestamp.
fn millis(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// `failed` from `JOB_STATE_FAILED` (the console's names are the store's).
fn wire_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests;
