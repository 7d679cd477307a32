//! The Switchyard coordinator, as a library: [`run`] serves it on a listener until a
//! cancellation token fires. The `switchyard-server` binary parses flags, binds, and calls
//! [`run_with`].

pub mod admission;
pub mod api;
pub mod auth;
pub mod config;
pub mod console;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod fanin;
pub mod http;
pub mod retention;
pub mod scheduler;
pub mod store;
pub mod telemetry;
pub mod trace;

use std::time::Duration;

use switchyard_proto::{
    FILE_DESCRIPTOR_SET,
    v1::{
        admin_service_server::AdminServiceServer, job_service_server::JobServiceServer,
        worker_service_server::WorkerServiceServer,
    },
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::ServingStatus;
use tower::ServiceBuilder;

pub use config::{Config, ServerArgs};
pub use error::{Error, Result};
use fanin::Notifier;
use scheduler::Scheduler;
use telemetry::Metrics;

/// Serves the coordinator on `listener` until `shutdown` fires, then drains: health turns
/// `NOT_SERVING`, in-flight calls finish, and the store commits what it holds and closes.
/// With `config.metrics` set, it binds that address for HTTP too: the web console and metrics.
pub async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> Result<()> {
    let metrics = match config.metrics {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "serving metrics");
            Some(listener)
        }
        None => None,
    };
    run_with(listener, metrics, config, shutdown).await
}

/// [`run`], with the HTTP endpoint (console and metrics) on a listener the caller has bound (so
/// that it can tell the chosen port); `config.metrics` is not looked at. `None` serves no HTTP
/// (metrics are still recorded).
pub async fn run_with(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    shutdown: CancellationToken,
) -> Result<()> {
    // gRPC and the console take the same tokens.
    let tokens = match &config.tokens {
        Some(path) => Some(std::sync::Arc::new(
            auth::Tokens::load(path).map_err(Error::Config)?,
        )),
        None => None,
    };
    let metrics = Metrics::new();
    let store = store::open(&config.store, metrics.clone()).await?;
    let recovered = match store.recover().await {
        Ok(recovered) => recovered,
        Err(err) => {
            let _ = store.close().await;
            return Err(err);
        }
    };
    // The endpoint stops when the drain starts, or when `run` ends for any other reason.
    let telemetry_stop = shutdown.child_token();
    let telemetry = TaskTracker::new();
    let (health, health_service) = tonic_health::server::health_reporter();
    telemetry.spawn(follow_store_health(
        store.clone(),
        health.clone(),
        telemetry_stop.clone(),
    ));
    tracing::info!(ready = recovered.ready.len(), "store open");
    let notifier = Notifier::default();
    // The scheduler and the worker sessions stop with their own token, after the gRPC server
    // has stopped taking calls, so that nothing they commit is cut off.
    let inner = CancellationToken::new();
    // The scheduler stops last of all, once no session can hand it a result any more.
    let scheduler_stop = CancellationToken::new();
    let (scheduler, scheduler_task) = Scheduler::start(
        store.clone(),
        notifier.clone(),
        metrics.clone(),
        config.retry,
        config.reconnect_grace,
        recovered,
        scheduler_stop.clone(),
    );
    let ticker =
        scheduler::schedules::Ticker::start(store.clone(), scheduler.clone(), inner.clone()).await;
    let (ticker, ticker_task) = match ticker {
        Ok(ticker) => ticker,
        Err(err) => {
            inner.cancel();
            scheduler_stop.cancel();
            let _ = scheduler_task.await;
            let _ = store.close().await;
            return Err(err);
        }
    };
    // Housekeeping (the pruner) stops at the drain, before the store closes.
    let housekeeping = TaskTracker::new();
    retention::start(
        store.clone(),
        notifier.clone(),
        metrics.clone(),
        config.retention,
        inner.clone(),
        &housekeeping,
    );
    let sessions = TaskTracker::new();
    let services = Services {
        jobs: api::JobApi::new(
            store.clone(),
            scheduler.clone(),
            notifier.clone(),
            inner.clone(),
            sessions.clone(),
            config.max_deadline,
            config.idempotency_ttl,
        ),
        admin: api::AdminApi::new(store.clone(), scheduler.clone(), notifier.clone(), ticker),
        workers: dispatch::WorkerApi::new(
            scheduler.clone(),
            store.clone(),
            config.heartbeat_interval,
            config.reconnect_grace,
            config.max_result_bytes,
            inner.clone(),
            sessions.clone(),
        ),
    };
    if let Some(listener) = metrics_listener {
        let console = console::Console::new(
            services.jobs.clone(),
            services.admin.clone(),
            store.clone(),
            scheduler.clone(),
            notifier,
            tokens.clone(),
        );
        http::serve(
            listener,
            metrics.clone(),
            Some(console),
            telemetry_stop.clone(),
            &telemetry,
        );
    }
    // Long calls (worker streams, Wait) end when the drain starts, so the server can stop.
    let drain = inner.clone();
    let stopping = async move {
        shutdown.cancelled().await;
        drain.cancel();
    };
    let result = serve(
        listener,
        &config,
        tokens,
        services,
        (health, health_service),
        stopping,
    )
    .await;
    inner.cancel();
    housekeeping.close();
    sessions.close();
    sessions.wait().await;
    housekeeping.wait().await;
    // The ticker first: its last fire may still hand a job to the scheduler.
    if let Err(err) = ticker_task.await {
        tracing::error!(cause = %err, "schedule ticker failed");
    }
    scheduler_stop.cancel();
    if let Err(err) = scheduler_task.await {
        tracing::error!(cause = %err, "scheduler task failed");
    }
    let closed = store.close().await;
    telemetry_stop.cancel();
    telemetry.close();
    telemetry.wait().await;
    closed?;
    result
}

/// The server's TLS settings from PEM files (the binary checks them before binding).
pub fn tls_config(tls: &config::Tls) -> Result<tonic::transport::ServerTlsConfig> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    };
    let mut config = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?),
    );
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(config)
}

struct Services {
    jobs: api::JobApi,
    admin: api::AdminApi,
    workers: dispatch::WorkerApi,
}

/// The names health reports on: the server as a whole, and each service.
const SERVICE_NAMES: [&str; 4] = [
    "",
    "switchyard.v1.JobService",
    "switchyard.v1.WorkerService",
    "switchyard.v1.AdminService",
];

/// How often a store that cannot commit is tried again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Health follows the store: `NOT_SERVING` while it cannot commit (a full disk, a lock held by
/// another process), so that a load balancer sends work elsewhere, and `SERVING` again on its
/// own once a probe write commits. Stops at the drain, which then owns the status.
async fn follow_store_health(
    store: std::sync::Arc<dyn store::Store>,
    reporter: tonic_health::server::HealthReporter,
    stop: CancellationToken,
) {
    let mut health = store.health();
    let mut was = None;
    loop {
        let fault = *health.borrow_and_update();
        if fault != was {
            let status = match fault {
                None => {
                    tracing::info!("the store commits again: health SERVING");
                    ServingStatus::Serving
                }
                Some(fault) => {
                    tracing::warn!(
                        fault = fault.as_str(),
                        "the store cannot commit: health NOT_SERVING until it can"
                    );
                    ServingStatus::NotServing
                }
            };
            if stop.is_cancelled() {
                break;
            }
            for name in SERVICE_NAMES {
                reporter.set_service_status(name, status).await;
            }
            was = fault;
        }
        let probe = async {
            match fault {
                Some(_) => {
                    tokio::time::sleep(PROBE_EVERY).await;
                    // Its outcome arrives through `health`.
                    let _ = store.probe().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = health.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = probe => {}
        }
    }
}

async fn serve(
    listener: TcpListener,
    config: &Config,
    tokens: Option<std::sync::Arc<auth::Tokens>>,
    services: Services,
    (health, health_service): (
        tonic_health::server::HealthReporter,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let service_names = SERVICE_NAMES;
    for name in service_names {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let limit = config.max_message_bytes;
    let jobs = JobServiceServer::new(services.jobs)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let admin = AdminServiceServer::new(services.admin)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let workers = WorkerServiceServer::new(services.workers)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    // Every call passes these layers, outermost first:
    // 1. admission: a call past the ceiling is refused before it costs anything, not even a
    //    token check;
    // 2. auth: an unauthenticated call is refused before anything is read from it (every
    //    service but health and reflection needs a token when the server has tokens);
    // 3. trace context: the caller's traceparent is parsed once, only for calls that will be
    //    served, and handed to the api with the caller's identity;
    // 4. deadline: `grpc-timeout` is read the same way for every job and admin call, and a
    //    malformed one refused before the call runs.
    let stack = ServiceBuilder::new()
        .layer(admission::AdmissionLayer::new(
            config.max_in_flight,
            config.max_long_polls,
        ))
        .layer(auth::AuthLayer::new(tokens))
        .layer(trace::TraceContextLayer)
        .layer(api::deadline::DeadlineLayer)
        .into_inner();

    // Small responses must not wait on Nagle's algorithm for the peer's delayed ACK.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));

    let drained = async move {
        shutdown.await;
        tracing::info!("shutting down: health NOT_SERVING, finishing in-flight calls");
        for name in service_names {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    };

    // HTTP/2 limits are set here rather than left to defaults: calls per connection, frame
    // and header sizes, flow-control windows (messages are bounded per service above).
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls_config(tls)?)?;
    }
    builder
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_frame_size(Some(1 << 20))
        .http2_max_header_list_size(Some(64 * 1024))
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(4 << 20))
        .layer(stack)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(jobs)
        .add_service(admin)
        .add_service(workers)
        .serve_with_incoming_shutdown(incoming, drained)
        .await?;
    Ok(())
}
