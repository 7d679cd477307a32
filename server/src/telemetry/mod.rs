//! What the coordinator tells operators besides its logs: Prometheus metrics, recorded through
//! a [`Metrics`] handle and served by [`serve`] at `http://ADDR/metrics` when the server is
//! started with `--metrics ADDR`.

mod http;
mod metrics;

pub use http::serve;
pub use metrics::{Metrics, OVERFLOW, Tally};
