//! The Switchyard coordinator, as a library: [`run`] serves it on a listener until a
//! cancellation token fires. The `switchyard-server` binary parses flags and calls it.

pub mod api;
pub mod config;
pub mod error;
pub mod store;

use std::time::Duration;

use switchyard_proto::{
    FILE_DESCRIPTOR_SET,
    v1::{
        admin_service_server::AdminServiceServer, job_service_server::JobServiceServer,
        worker_service_server::WorkerServiceServer,
    },
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::ServingStatus;

pub use config::{Config, ServerArgs};
pub use error::{Error, Result};
use store::Store;

/// Serves the coordinator on `listener` until `shutdown` fires, then drains: health turns
/// `NOT_SERVING`, in-flight calls finish, and the store commits what it holds and closes.
pub async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> Result<()> {
    let store = Store::open(&config.store)?;
    let result = serve(listener, &config, store.clone(), shutdown).await;
    store.close().await?;
    result
}

async fn serve(
    listener: TcpListener,
    config: &Config,
    store: Store,
    shutdown: CancellationToken,
) -> Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let service_names = [
        "",
        "switchyard.v1.JobService",
        "switchyard.v1.WorkerService",
        "switchyard.v1.AdminService",
    ];
    for name in service_names {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let limit = config.max_message_bytes;
    let jobs = JobServiceServer::new(api::JobApi::new(store.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let admin = AdminServiceServer::new(api::AdminApi::new(store.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let workers = WorkerServiceServer::new(api::WorkerApi)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

    // Small responses must not wait on Nagle's algorithm for the peer's delayed ACK.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));

    let drained = async move {
        shutdown.cancelled().await;
        tracing::info!("shutting down: health NOT_SERVING, finishing in-flight calls");
        for name in service_names {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    };

    Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_frame_size(Some(1 << 20))
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
