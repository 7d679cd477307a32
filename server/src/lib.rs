//! The Switchyard coordinator, as a library: [`run`] serves it on a listener until a
//! cancellation token fires. The `switchyard-server` binary parses flags, binds, and calls
//! [`run_with`].

pub mod admission;
pub mod api;
pub mod auth;
pub mod cluster;
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
///
/// On a database that several coordinators share (Postgres), this coordinator first follows:
/// it serves every call by forwarding it to the leader ([`cluster`]), until it takes the
/// leadership lease; then it leads, as a coordinator on its own does from the start.
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
    let local = listener.local_addr()?;
    let lease = store.lease(advertised(&config, local), config.leader_lease);
    // The address stays this coordinator's (bound, if no longer accepting) until its last
    // commit, so that one that takes the lease over on the same address knows that its
    // holder has stopped (`Lease::try_acquire`).
    let _bound = match &lease {
        Some(_) => Some(std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned()?),
        None => None,
    };
    let peers = cluster::PeerTls::new(config.tls.as_ref(), config.peer_ca.as_deref())?;
    let (health, health_service) = tonic_health::server::health_reporter();
    // Long calls (worker streams, Wait, forwarded calls) end when the drain starts, so the
    // server can stop. The server stops taking calls when `halt` fires: at shutdown, or when
    // leading failed or the lease was lost; `served` fires once it has stopped.
    let inner = CancellationToken::new();
    let halt = shutdown.child_token();
    let served = CancellationToken::new();
    let (forward_tx, forward) = tokio::sync::watch::channel(cluster::Forward::Unknown);
    let switched = Switched {
        jobs: cluster::Switched::new(forward.clone(), inner.clone()),
        admin: cluster::Switched::new(forward.clone(), inner.clone()),
        workers: cluster::Switched::new(forward, inner.clone()),
    };
    let stopping = {
        let (halt, drain) = (halt.clone(), inner.clone());
        async move {
            halt.cancelled().await;
            drain.cancel();
        }
    };
    let serving = async {
        let result = serve(
            listener,
            &config,
            tokens.clone(),
            switched.clone(),
            (health.clone(), health_service),
            stopping,
        )
        .await;
        served.cancel();
        result
    };
    let leading = async {
        let epoch = match &lease {
            None => None,
            Some(lease) => match cluster::follow(lease, &peers, &forward_tx, &halt).await {
                Some(epoch) => Some(epoch),
                None => {
                    // Stopped before it led: it never wrote.
                    lease.close().await;
                    return store.close().await;
                }
            },
        };
        let led = lead(Leading {
            store: store.clone(),
            config: &config,
            metrics,
            tokens: tokens.clone(),
            metrics_listener,
            switched: &switched,
            health: health.clone(),
            inner: inner.clone(),
            halt: halt.clone(),
            served: served.clone(),
            lease: lease.clone().zip(epoch),
            forward: &forward_tx,
        })
        .await;
        if led.is_err() {
            halt.cancel();
        }
        led
    };
    let (served, led) = tokio::join!(serving, leading);
    led.and(served)
}

/// Where the other coordinators on the database reach this one: `--advertise`, or the
/// address it listens on (127.0.0.1's port when that is every interface).
fn advertised(config: &Config, local: std::net::SocketAddr) -> String {
    if let Some(url) = &config.advertise {
        return url.clone();
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut addr = local;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("{scheme}://{addr}")
}

/// What leading needs from [`run_with`].
struct Leading<'a> {
    store: std::sync::Arc<dyn store::Store>,
    config: &'a Config,
    metrics: Metrics,
    tokens: Option<std::sync::Arc<auth::Tokens>>,
    metrics_listener: Option<TcpListener>,
    switched: &'a Switched,
    health: tonic_health::server::HealthReporter,
    inner: CancellationToken,
    halt: CancellationToken,
    served: CancellationToken,
    /// The lease and its epoch, on a database several coordinators share.
    lease: Option<(store::postgres::Lease, i64)>,
    forward: &'a tokio::sync::watch::Sender<cluster::Forward>,
}

/// Leads: recovers what the store holds, starts the scheduler and the rest, serves the
/// services here, and once the server has stopped (`served`), drains and closes the store,
/// then gives the lease up.
async fn lead(leading: Leading<'_>) -> Result<()> {
    // The lease is renewed until the store has closed; once it may have run out, the
    // fence refuses every commit and the server stops.
    let lease = leading.lease.clone();
    let keeper_stop = CancellationToken::new();
    let keeper = lease.clone().map(|(lease, epoch)| {
        let (stop, lost) = (keeper_stop.clone(), leading.halt.clone());
        tokio::spawn(cluster::keep(lease, epoch, stop, lost))
    });
    let led = lead_until_served(leading).await;
    keeper_stop.cancel();
    if let Some(keeper) = keeper {
        let _ = keeper.await;
    }
    if let Some((lease, epoch)) = lease {
        if lease.fence().is_raised() {
            lease.close().await;
            return led.and(Err(Error::NotLeading));
        }
        if let Err(err) = lease.release(epoch).await {
            tracing::warn!(cause = %err, "the leadership lease could not be given up; it runs out by itself");
        }
        lease.close().await;
    }
    led
}

/// [`lead`]'s work between the lease's take-over and its release.
async fn lead_until_served(leading: Leading<'_>) -> Result<()> {
    let Leading {
        store,
        config,
        metrics,
        tokens,
        metrics_listener,
        switched,
        health,
        inner,
        served,
        forward,
        ..
    } = leading;
    let recovered = match store.recover().await {
        Ok(recovered) => recovered,
        Err(err) => {
            let _ = store.close().await;
            return Err(err);
        }
    };
    // The endpoint stops when the drain starts, or when `run` ends for any other reason.
    let telemetry_stop = inner.child_token();
    let telemetry = TaskTracker::new();
    telemetry.spawn(follow_store_health(
        store.clone(),
        health,
        telemetry_stop.clone(),
    ));
    tracing::info!(ready = recovered.ready.len(), "store open");
    let notifier = Notifier::default();
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
            telemetry_stop.cancel();
            telemetry.close();
            telemetry.wait().await;
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
        admin: api::AdminApi::new(
            store.clone(),
            scheduler.clone(),
            notifier.clone(),
            ticker,
            sessions.clone(),
        ),
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
            tokens,
        );
        http::serve(
            listener,
            metrics.clone(),
            Some(console),
            telemetry_stop.clone(),
            &telemetry,
        );
    }
    switched.serve_here(services, config.max_message_bytes);
    forward.send_replace(cluster::Forward::Here);
    // The scheduler and the worker sessions stop after the gRPC server has stopped taking
    // calls, so that nothing they commit is cut off.
    served.cancelled().await;
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
    closed
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

/// The three services as the server routes them: here once this coordinator leads,
/// forwarded to the leader until then.
#[derive(Clone)]
struct Switched {
    jobs: cluster::Switched<JobServiceServer<api::JobApi>>,
    admin: cluster::Switched<AdminServiceServer<api::AdminApi>>,
    workers: cluster::Switched<WorkerServiceServer<dispatch::WorkerApi>>,
}

impl Switched {
    /// Serves them here from now on, each message bounded by `limit` bytes.
    fn serve_here(&self, services: Services, limit: usize) {
        self.jobs.serve_here(
            JobServiceServer::new(services.jobs)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        );
        self.admin.serve_here(
            AdminServiceServer::new(services.admin)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        );
        self.workers.serve_here(
            WorkerServiceServer::new(services.workers)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        );
    }
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
    services: Switched,
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

    let Switched {
        jobs,
        admin,
        workers,
    } = services;
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
