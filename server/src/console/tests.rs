//! The console's own pieces: CSRF, escaping, cookies, forms.

use axum::http::{HeaderMap, HeaderValue, header};
use maud::html;

use super::*;

#[test]
fn csrf_tokens_are_per_session_and_key_and_compared_whole() {
    let key = [7u8; 32];
    let a = csrf_token(&key, "session-a");
    assert_eq!(a.len(), 64);
    assert_eq!(
        a,
        csrf_token(&key, "session-a"),
        "the same session, the same token"
    );
    assert_ne!(a, csrf_token(&key, "session-b"));
    assert_ne!(
        a,
        csrf_token(&[8u8; 32], "session-a"),
        "a restart's key makes others"
    );
    assert!(csrf_matches(&a, &a));
    assert!(!csrf_matches(&a, &csrf_token(&key, "session-b")));
    assert!(!csrf_matches(&a, &a[..63]), "a prefix is not the token");
    assert!(!csrf_matches(&a, ""));
}

#[test]
fn templates_escape_what_they_insert() {
    let payload = "<script>window.pwned=1</script>\"'&";
    let out = html! { td title=(payload) { (payload) } }.into_string();
    assert!(!out.contains("<script>"), "{out}");
    assert!(
        out.contains("&lt;script&gt;window.pwned=1&lt;/script&gt;"),
        "{out}"
    );
    assert!(
        out.contains("&quot;"),
        "attribute quotes are escaped: {out}"
    );
}

#[test]
fn cookies_round_trip_any_token() {
    let token = "t0k;en=with,odd\"chars";
    let set = session_cookie(token);
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let value = set.split(';').next().expect("pair");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::COOKIE,
        HeaderValue::from_str(&format!("other=1; {value}")).expect("header"),
    );
    assert_eq!(cookie(&headers, COOKIE).as_deref(), Some(token));
    assert_eq!(cookie(&headers, "missing"), None);
}

#[test]
fn forms_keep_repeated_fields() {
    let form = Params::parse(b"csrf=abc&id=1&id=2&id=&do=requeue-matching&kind=+email+");
    assert_eq!(form.all("id").collect::<Vec<_>>(), ["1", "2"]);
    assert_eq!(form.get("kind"), Some("email"));
    assert_eq!(form.get("missing"), None);
    assert_eq!(
        actions::parse_do(form.get("do").unwrap_or("")),
        Some((actions::Action::Requeue, true))
    );
    assert_eq!(
        actions::parse_do("delete"),
        Some((actions::Action::Delete, false))
    );
    assert_eq!(actions::parse_do("drop"), None);
}

#[test]
fn ages_read_well() {
    assert_eq!(age(120), "120ms");
    assert_eq!(age(65_000), "1m 5s");
    assert_eq!(age(2 * 3_600_000 + 60_000), "2h 1m");
    assert_eq!(
        wire_name("JOB_STATE_DEADLINE_EXCEEDED", "JOB_STATE_"),
        "deadline_exceeded"
    );
}
