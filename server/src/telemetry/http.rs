//! The `/metrics` endpoint: a deliberately tiny HTTP/1.1 server. Each connection gets one
//! answer and is closed. `GET /metrics` (or `HEAD`) returns the metrics; any other path is
//! 404, any other method 405, anything unreadable 400.
//!
//! It faces whatever can reach the port, so everything is bounded: the request head it reads,
//! the time a client may take, and how many connections are open at once.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::Metrics;

/// Largest request head (request line and headers) read; a scrape sends a few hundred bytes.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long one connection may take, from accept to the last byte of the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;
/// After answering, how much of what the client still sends is read (and dropped) before
/// closing, so that unread bytes do not turn the close into a reset that loses the answer.
const MAX_DRAIN_BYTES: usize = 64 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `metrics` on `listener` until `shutdown` fires. The accept loop and every
/// connection are spawned on `tasks`, so the caller can wait for them to end.
pub fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    tasks.spawn(accept(listener, metrics, shutdown, tasks.clone()));
}

async fn accept(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Take the permit before accepting: past the limit, connections wait in the backlog
        // instead of in our memory.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // pause briefly rather than spin, and go on.
                    tracing::warn!(cause = %err, "metrics endpoint: accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                done = tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, &metrics)) => {
                    match done {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => tracing::debug!(cause = %err, "metrics endpoint: connection failed"),
                        Err(_) => tracing::debug!("metrics endpoint: client too slow"),
                    }
                }
            }
        });
    }
    tracing::debug!("metrics endpoint stopped");
}

/// Reads one request head, writes one response, closes.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let response = match read_head(&mut stream).await? {
        Some(head) => respond(&head, metrics),
        None => Response::error(400, "Bad Request"),
    };
    stream.write_all(&response.into_bytes()).await?;
    stream.shutdown().await?;
    // The client may still be sending (a body, or more than MAX_HEAD_BYTES of head): read a
    // bounded amount so that closing with unread data does not reset the connection before
    // it has read the answer.
    let mut drained = 0;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while drained < MAX_DRAIN_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    Ok(())
}

/// The request head up to its blank line, or `None` if it is too long or the client stops
/// sending before it ends.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        // Look for the end only in the new bytes (and the three before them).
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(from + end);
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD_BYTES {
            return Ok(None);
        }
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    /// `HEAD`: the headers of the answer, without its body.
    head_only: bool,
    allow: bool,
}

impl Response {
    fn error(status: u16, reason: &'static str) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: format!("{status} {reason}\n"),
            head_only: false,
            allow: false,
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            if self.allow { "Allow: GET, HEAD\r\n" } else { "" },
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// Decides the answer from the request head (everything before the blank line).
fn respond(head: &[u8], metrics: &Metrics) -> Response {
    let Ok(head) = std::str::from_utf8(head) else {
        return Response::error(400, "Bad Request");
    };
    let request_line = head.split("\r\n").next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::error(400, "Bad Request");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::error(505, "HTTP Version Not Supported");
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Response {
                allow: true,
                ..Response::error(405, "Method Not Allowed")
            };
        }
    };
    if path != "/metrics" {
        return Response {
            head_only,
            ..Response::error(404, "Not Found")
        };
    }
    Response {
        status: 200,
        reason: "OK",
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: metrics.render(),
        head_only,
        allow: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(head: &str) -> u16 {
        respond(head.as_bytes(), &Metrics::new()).status
    }

    #[test]
    fn only_get_or_head_of_metrics_is_answered_with_metrics() {
        let ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x", &Metrics::new());
        assert_eq!(ok.status, 200);
        assert!(
            ok.body
                .contains("# TYPE switchyard_store_commits_total counter")
        );
        let bytes = String::from_utf8(ok.into_bytes()).expect("utf-8");
        assert!(bytes.starts_with("HTTP/1.1 200 OK\r\n"), "{bytes}");
        assert!(bytes.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(bytes.contains("\r\nConnection: close\r\n"));

        let head = respond(b"HEAD /metrics HTTP/1.0", &Metrics::new());
        assert_eq!(head.status, 200);
        let bytes = String::from_utf8(head.into_bytes()).expect("utf-8");
        assert!(bytes.ends_with("\r\n\r\n"), "no body after HEAD: {bytes}");

        assert_eq!(status_of("GET /metrics?x=1 HTTP/1.1"), 200);
        assert_eq!(status_of("GET / HTTP/1.1"), 404);
        assert_eq!(status_of("GET /metrics/ HTTP/1.1"), 404);
        assert_eq!(status_of("POST /metrics HTTP/1.1"), 405);
        assert_eq!(status_of("GET /metrics HTTP/2.0"), 505);
        assert_eq!(status_of("GET /metrics"), 400);
        assert_eq!(status_of("GET  /metrics HTTP/1.1"), 400);
        assert_eq!(status_of(""), 400);
        assert_eq!(respond(b"GET /\xff HTTP/1.1", &Metrics::new()).status, 400);
    }

    async fn request(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(bytes).await.expect("send");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_until_shutdown_and_its_tasks_end() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Metrics::new();
        metrics.store_committed(Duration::from_millis(1), 3);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        serve(listener, metrics, shutdown.clone(), &tasks);

        // A client that connects and says nothing holds one connection, not the endpoint.
        let _silent = TcpStream::connect(addr).await.expect("connect");
        let answer = request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("\nswitchyard_store_commits_total 1\n"),
            "{answer}"
        );
        let missing = request(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        let huge = [b'a'; MAX_HEAD_BYTES + 100];
        let refused = request(addr, &huge).await;
        assert!(
            refused.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{refused}"
        );

        shutdown.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("the endpoint's tasks end at shutdown, the silent client's too");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed after shutdown"
        );
    }
}
