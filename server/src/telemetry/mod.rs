//! What the coordinator tells operators besides its logs: Prometheus metrics, recorded through
//! a [`Metrics`] handle and served by [`crate::http::serve`] at `http://ADDR/metrics` when the
//! server is started with `--metrics ADDR`.

mod metrics;

pub use metrics::{CONTENT_TYPE, Metrics, OVERFLOW, Tally};
