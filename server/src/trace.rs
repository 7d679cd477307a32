//! The tower layer that reads the caller's W3C trace context (`traceparent`, `tracestate`)
//! with the OpenTelemetry propagator, once per call, and puts it in the request's extensions
//! as a [`RemoteParent`] for the api to store with the jobs the call submits.

use std::task::{Context, Poll};

use switchyard_telemetry::RemoteParent;
use tonic::codegen::http;
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextLayer;

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContext<S>;

    fn layer(&self, inner: S) -> TraceContext<S> {
        TraceContext { inner }
    }
}

#[derive(Debug, Clone)]
pub struct TraceContext<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for TraceContext<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        // A malformed traceparent is ignored, as the W3C spec asks: the work starts a new trace.
        if let Some(parent) =
            switchyard_telemetry::remote_parent(header("traceparent"), header("tracestate"))
        {
            request.extensions_mut().insert(parent);
        }
        self.inner.call(request)
    }
}

/// The caller's trace context, if the layer found one.
pub fn of<T>(request: &tonic::Request<T>) -> Option<RemoteParent> {
    request.extensions().get::<RemoteParent>().cloned()
}
