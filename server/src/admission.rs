//! Admission at the RPC layer: ceilings on calls in flight across every connection. A call
//! past its ceiling is answered UNAVAILABLE at once (clients back off and retry), rather than
//! queued where its latency would grow without end.
//!
//! Calls are of three classes, each with its own bound, so that one cannot starve another:
//! - short calls (submits, reads, admin, a worker's `Connect` until its stream starts):
//!   `--max-in-flight`;
//! - long-polls (`Wait`, `Run`, `WatchGroup`), which may stay open for as long as their
//!   deadline: `--max-long-polls`, so that idle waiters never shed real work;
//! - health and reflection: never shed, so that a load balancer does not take a node out
//!   because clients were waiting.
//!
//! A call holds its permit until its response starts, so long-lived streams (worker
//! connections, `WatchGroup`) do not use up a ceiling while they stream.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::Semaphore;
use tonic::{Status, body::Body, codegen::http};
use tower::{Layer, Service};

#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    short: Arc<Semaphore>,
    long: Arc<Semaphore>,
}

impl AdmissionLayer {
    pub fn new(max_in_flight: usize, max_long_polls: usize) -> Self {
        AdmissionLayer {
            short: Arc::new(Semaphore::new(max_in_flight.max(1))),
            long: Arc::new(Semaphore::new(max_long_polls.max(1))),
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            short: self.short.clone(),
            long: self.long.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    short: Arc<Semaphore>,
    long: Arc<Semaphore>,
}

/// Which ceiling a call counts against, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Short,
    LongPoll,
    Exempt,
}

fn class(path: &str) -> Class {
    match path {
        "/switchyard.v1.JobService/Wait"
        | "/switchyard.v1.JobService/Run"
        | "/switchyard.v1.JobService/WatchGroup" => Class::LongPoll,
        p if p.starts_with("/grpc.health.") || p.starts_with("/grpc.reflection.") => Class::Exempt,
        _ => Class::Short,
    }
}

type Answer<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Admission<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Answer<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (permits, refusal) = match class(request.uri().path()) {
            Class::Exempt => return Box::pin(self.inner.call(request)),
            Class::Short => (
                &self.short,
                "the coordinator is at its limit of calls in flight; retry with backoff",
            ),
            Class::LongPoll => (
                &self.long,
                "the coordinator is at its limit of waiting calls (Wait, Run, WatchGroup); retry with backoff",
            ),
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    let response = call.await;
                    drop(permit);
                    response
                })
            }
            Err(_) => Box::pin(async move { Ok(Status::unavailable(refusal).into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_classed_by_path() {
        assert_eq!(class("/switchyard.v1.JobService/Wait"), Class::LongPoll);
        assert_eq!(class("/switchyard.v1.JobService/Run"), Class::LongPoll);
        assert_eq!(class("/switchyard.v1.JobService/Submit"), Class::Short);
        assert_eq!(class("/switchyard.v1.WorkerService/Connect"), Class::Short);
        assert_eq!(class("/grpc.health.v1.Health/Check"), Class::Exempt);
        assert_eq!(
            class("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Class::Exempt
        );
    }
}
