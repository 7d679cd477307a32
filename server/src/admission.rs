//! Admission at the RPC layer: a ceiling on calls in flight across every connection. A call
//! past it is answered UNAVAILABLE at once (clients back off and retry), rather than queued
//! where its latency would grow without end. A stream holds its permit only until its response
//! starts, so long-lived streams (worker connections, `WatchGroup`) do not use up the ceiling.

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
    permits: Arc<Semaphore>,
}

impl AdmissionLayer {
    pub fn new(max_in_flight: usize) -> Self {
        AdmissionLayer {
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            permits: self.permits.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    permits: Arc<Semaphore>,
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
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    let response = call.await;
                    drop(permit);
                    response
                })
            }
            Err(_) => Box::pin(async {
                Ok(Status::unavailable(
                    "the coordinator is at its limit of calls in flight; retry with backoff",
                )
                .into_http())
            }),
        }
    }
}
