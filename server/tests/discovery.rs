//! Tools find the coordinator without its `.proto` files: gRPC health checking and server
//! reflection (v1 and v1alpha).

mod support;

use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use support::start;

const SERVICES: [&str; 4] = [
    "switchyard.v1.JobService",
    "switchyard.v1.WorkerService",
    "switchyard.v1.AdminService",
    "grpc.health.v1.Health",
];

#[tokio::test]
async fn health_reports_serving() {
    let (_coordinator, client) = start().await;
    let mut health = HealthClient::new(client.channel().clone());
    for service in [
        "",
        "switchyard.v1.JobService",
        "switchyard.v1.WorkerService",
        "switchyard.v1.AdminService",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|status| panic!("check {service:?}: {status:?}"))
            .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    let status = health
        .check(HealthCheckRequest {
            service: "switchyard.v1.NoSuchService".into(),
        })
        .await
        .expect_err("an unknown service has no status");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn reflection_v1_lists_the_services_and_serves_their_files() {
    use v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let (_coordinator, client) = start().await;
    let mut reflection = ServerReflectionClient::new(client.channel().clone());
    let request = |message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let requests = vec![
        request(MessageRequest::ListServices(String::new())),
        request(MessageRequest::FileContainingSymbol(
            "switchyard.v1.JobService".into(),
        )),
    ];
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .expect("open the reflection stream")
        .into_inner();

    let listed = responses
        .message()
        .await
        .expect("a response")
        .and_then(|r| r.message_response);
    let Some(MessageResponse::ListServicesResponse(listed)) = listed else {
        panic!("expected a service list, got {listed:?}");
    };
    let names: Vec<&str> = listed.service.iter().map(|s| s.name.as_str()).collect();
    for service in SERVICES {
        assert!(
            names.contains(&service),
            "{service} is missing from {names:?}"
        );
    }

    let file = responses
        .message()
        .await
        .expect("a response")
        .and_then(|r| r.message_response);
    let Some(MessageResponse::FileDescriptorResponse(file)) = file else {
        panic!("expected the file of JobService, got {file:?}");
    };
    assert!(!file.file_descriptor_proto.is_empty());
    let contains = |needle: &[u8]| {
        file.file_descriptor_proto
            .iter()
            .any(|f| f.windows(needle.len()).any(|w| w == needle))
    };
    assert!(contains(b"switchyard/v1/jobs.proto"));
    assert!(contains(b"JobService"));
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_services() {
    use v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let (_coordinator, client) = start().await;
    let mut reflection = ServerReflectionClient::new(client.channel().clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let listed = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("open the reflection stream")
        .into_inner()
        .message()
        .await
        .expect("a response")
        .and_then(|r| r.message_response);
    let Some(MessageResponse::ListServicesResponse(listed)) = listed else {
        panic!("expected a service list, got {listed:?}");
    };
    let names: Vec<&str> = listed.service.iter().map(|s| s.name.as_str()).collect();
    for service in SERVICES {
        assert!(
            names.contains(&service),
            "{service} is missing from {names:?}"
        );
    }
}
