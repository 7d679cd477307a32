//! The caller's deadline, from `grpc-timeout`. tonic does not hand it to handlers and ignores a
//! malformed one; we parse it ourselves, in one tower layer ([`DeadlineLayer`]) for every call
//! to the job and admin services, and refuse what is malformed before the call runs.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use tonic::{
    Status,
    body::Body,
    codegen::http::{self, HeaderMap},
};
use tower::{Layer, Service};

use crate::error::{Error, Result};

/// The call's timeout, as the layer read it.
#[derive(Debug, Clone, Copy)]
struct CallTimeout(Duration);

/// The call's timeout, if the caller set one (the layer has refused a malformed one).
pub fn of<T>(request: &tonic::Request<T>) -> Option<Duration> {
    request.extensions().get::<CallTimeout>().map(|t| t.0)
}

/// The call's timeout, if the caller set one. Format (gRPC over HTTP/2): 1 to 8 ASCII digits
/// and a unit, `H` `M` `S` `m` `u` or `n`.
pub fn timeout(headers: &HeaderMap) -> Result<Option<Duration>> {
    let Some(value) = headers.get("grpc-timeout") else {
        return Ok(None);
    };
    let malformed = || {
        Error::invalid(
            "grpc-timeout",
            "must be 1 to 8 digits followed by a unit (H, M, S, m, u or n)",
        )
    };
    let text = value.to_str().map_err(|_| malformed())?;
    if text.len() < 2 || text.len() > 9 {
        return Err(malformed());
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let n: u64 = digits.parse().map_err(|_| malformed())?;
    let d = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(malformed()),
    };
    Ok(Some(d))
}

/// When to give up on a call with this timeout. tonic (on both ends) cuts a call off at its
/// `grpc-timeout` with CANCELLED; answering a little earlier lets the caller read our
/// DEADLINE_EXCEEDED instead. The margin covers the trip back: 5% of the timeout, at most 20ms.
pub fn answer_before(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / 20).min(Duration::from_millis(20)))
}

/// The tower layer that reads `grpc-timeout` once for every call to the job and admin
/// services: a malformed one is `INVALID_ARGUMENT` before the call runs; a well-formed one is
/// handed to the api in the request's extensions.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

/// The services whose calls a deadline binds (a worker's `Connect` stream has none).
fn bound(path: &str) -> bool {
    path.starts_with("/switchyard.v1.JobService/")
        || path.starts_with("/switchyard.v1.AdminService/")
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<http::Response<Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if bound(request.uri().path()) {
            match timeout(request.headers()) {
                Ok(Some(t)) => {
                    request.extensions_mut().insert(CallTimeout(t));
                }
                Ok(None) => {}
                Err(err) => {
                    let status = Status::from(err);
                    return futures::future::Either::Right(futures::future::ready(Ok(
                        status.into_http()
                    )));
                }
            }
        }
        futures::future::Either::Left(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<Option<Duration>> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().expect("ascii"));
        timeout(&headers)
    }

    #[test]
    fn well_formed_timeouts() {
        assert_eq!(parse("5S").ok().flatten(), Some(Duration::from_secs(5)));
        assert_eq!(
            parse("250m").ok().flatten(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse("2H").ok().flatten(), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse("99999999n").ok().flatten(),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(timeout(&HeaderMap::new()).ok().flatten(), None);
    }

    #[test]
    fn malformed_timeouts_are_refused() {
        for bad in [
            "",
            "S",
            "5",
            "5s",
            "-5S",
            "123456789S",
            "1.5S",
            "5 S",
            "abc",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
