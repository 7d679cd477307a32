//! A scripted coordinator for the worker's tests: it plays the coordinator's side of
//! `WorkerService.Connect` in-process and hands each stream, after its `Hello`, to the test.

#![allow(dead_code)] // each test file uses its own part of it

use std::time::Duration;

use switchyard_proto::v1::{
    Assignment, AttemptResult, CoordinatorMessage, Credit, Heartbeat, HeldAttempt, Hello,
    JobFailure, Release, Welcome, WorkerMessage,
    attempt_result::Outcome,
    coordinator_message,
    worker_message::Message,
    worker_service_server::{WorkerService, WorkerServiceServer},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

pub const STEP: Duration = Duration::from_secs(5);
/// The epoch of the scripted coordinator's run: its assignments carry it, and the worker's
/// messages about them must carry it back.
pub const EPOCH: u64 = 7;

/// One `Connect` stream, from the coordinator's side.
pub struct Session {
    pub hello: Hello,
    inbound: Streaming<WorkerMessage>,
    outbound: mpsc::Sender<Result<CoordinatorMessage, Status>>,
    pinger: Option<JoinHandle<()>>,
    pub last_heartbeat: Option<Heartbeat>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(pinger) = self.pinger.take() {
            pinger.abort();
        }
    }
}

impl Session {
    pub async fn send(&self, message: coordinator_message::Message) {
        self.outbound
            .send(Ok(CoordinatorMessage {
                message: Some(message),
            }))
            .await
            .expect("the stream to the worker is open");
    }

    /// Welcomes the worker; with `ping`, also heartbeats every `interval` as a live
    /// coordinator does.
    pub async fn welcome(&mut self, interval: Duration, ping: bool) {
        self.welcome_adopting(interval, ping, &[]).await;
    }

    /// A welcome that re-adopts these held attempts (of [`EPOCH`]).
    pub async fn welcome_adopting(
        &mut self,
        interval: Duration,
        ping: bool,
        adopted: &[(&str, u32)],
    ) {
        self.send(coordinator_message::Message::Welcome(Welcome {
            session_id: "session-1".into(),
            heartbeat_interval: Some(interval.try_into().expect("small")),
            adopted: adopted
                .iter()
                .map(|(job_id, attempt)| HeldAttempt {
                    job_id: (*job_id).into(),
                    attempt: *attempt,
                    finished: false,
                    epoch: EPOCH,
                })
                .collect(),
            ..Default::default()
        }))
        .await;
        if ping {
            let outbound = self.outbound.clone();
            self.pinger = Some(tokio::spawn(async move {
                for sequence in 1.. {
                    tokio::time::sleep(interval).await;
                    let heartbeat = coordinator_message::Message::Heartbeat(Heartbeat {
                        sequence,
                        sent_at: None,
                        ack: 0,
                    });
                    let message = CoordinatorMessage {
                        message: Some(heartbeat),
                    };
                    if outbound.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
            }));
        }
    }

    /// Assigns `job_id`'s `attempt` of [`EPOCH`].
    pub async fn assign(&self, job_id: &str, attempt: u32, kind: &str, payload: &str) {
        self.send_assignment(Assignment {
            job_id: job_id.into(),
            attempt,
            epoch: EPOCH,
            queue: "default".into(),
            kind: kind.into(),
            payload: payload.into(),
            max_attempts: 3,
            ..Default::default()
        })
        .await;
    }

    pub async fn send_assignment(&self, assignment: Assignment) {
        self.send(coordinator_message::Message::Assignment(assignment))
            .await;
    }

    /// The worker's next message other than a heartbeat; `None` once it ended the stream.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            let message = tokio::time::timeout(STEP, self.inbound.message())
                .await
                .expect("the worker says something in time");
            match message {
                Ok(Some(WorkerMessage {
                    message: Some(Message::Heartbeat(heartbeat)),
                })) => self.last_heartbeat = Some(heartbeat),
                Ok(Some(WorkerMessage { message })) => return message,
                Ok(None) | Err(_) => return None,
            }
        }
    }

    pub async fn expect_result(&mut self) -> AttemptResult {
        match self.next().await {
            Some(Message::Result(result)) => result,
            other => panic!("expected a result, got {other:?}"),
        }
    }

    pub async fn expect_failure(&mut self, job_id: &str) -> JobFailure {
        let result = self.expect_result().await;
        assert_eq!(result.job_id, job_id);
        match result.outcome {
            Some(Outcome::Failure(failure)) => failure,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    pub async fn expect(&mut self, expected: Message) {
        assert_eq!(self.next().await, Some(expected));
    }

    /// Nothing but heartbeats for `quiet`.
    pub async fn expect_quiet(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, self.inbound.message()).await {
                Err(_) => return,
                Ok(Ok(Some(WorkerMessage {
                    message: Some(Message::Heartbeat(heartbeat)),
                }))) => self.last_heartbeat = Some(heartbeat),
                Ok(other) => panic!("expected nothing, got {other:?}"),
            }
        }
    }
}

pub fn credit() -> Message {
    Message::Credit(Credit { slots: 1 })
}

/// The release of `job_id`'s `attempt` of [`EPOCH`].
pub fn release(job_id: &str, attempt: u32) -> Message {
    Message::Release(Release {
        job_id: job_id.into(),
        attempt,
        epoch: EPOCH,
    })
}

/// A coordinator that hands each stream, after its `Hello`, to the test.
struct Script {
    sessions: mpsc::Sender<Session>,
}

#[tonic::async_trait]
impl WorkerService for Script {
    type ConnectStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let Some(WorkerMessage {
            message: Some(Message::Hello(hello)),
        }) = inbound.message().await?
        else {
            return Err(Status::invalid_argument("Hello first"));
        };
        if hello.worker_id == "refused" {
            return Err(Status::invalid_argument(
                "hello.worker_id: not welcome here",
            ));
        }
        let (outbound, rx) = mpsc::channel(64);
        let session = Session {
            hello,
            inbound,
            outbound,
            pinger: None,
            last_heartbeat: None,
        };
        self.sessions
            .send(session)
            .await
            .map_err(|_| Status::unavailable("the test is over"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

pub struct Coordinator {
    pub url: String,
    sessions: mpsc::Receiver<Session>,
    server: JoinHandle<()>,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Coordinator {
    pub async fn start() -> Coordinator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let (tx, sessions) = mpsc::channel(8);
        let service = WorkerServiceServer::new(Script { sessions: tx });
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Coordinator {
            url,
            sessions,
            server,
        }
    }

    pub async fn session(&mut self) -> Session {
        tokio::time::timeout(STEP, self.sessions.recv())
            .await
            .expect("the worker connects in time")
            .expect("the server runs")
    }
}
