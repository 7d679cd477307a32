//! The coordinator's HTTP face: [`router`], the axum routes (`GET /metrics`, and the web
//! console of [`crate::console`] merged beside it), and [`serve`], which answers them on a
//! listener until shutdown. Any other path is 404, any other method on a route 405.
//!
//! It faces whatever can reach the port, so everything is bounded: connections open at once,
//! the time a client may take to send its request head and to be done, the head's size, and
//! how long a handler may run. Connections are driven by hyper's HTTP/1 builder rather than
//! `axum::serve`, which exposes none of these bounds. Each connection answers one request and
//! closes (no keep-alive): a scrape is one request, and a client cannot hold a connection slot
//! by idling between requests.

use std::{
    io,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    BoxError, Router,
    error_handling::HandleErrorLayer,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceBuilder;

use crate::{
    console::Console,
    telemetry::{self, Metrics},
};

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request head; a scrape sends it at once.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may take, from accept to the last byte of the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a handler may take before the client is told 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest buffered request head (hyper's minimum); a scrape sends a few hundred bytes.
/// Longer heads are answered 431.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// At shutdown, how long an answer being written may take to finish. A client that has sent
/// nothing yet is not waited for longer than this either.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Every route the coordinator answers over HTTP. Add routes here (or `merge` a router) so
/// that [`serve`]'s bounds cover them.
pub fn router(metrics: Metrics, console: Option<Console>) -> Router {
    let router = Router::new()
        .route("/metrics", get(scrape).fallback(method_not_allowed))
        .with_state(metrics);
    match console {
        Some(console) => router.merge(crate::console::router(console)),
        None => router,
    }
}

/// `GET /metrics` (axum answers `HEAD` from it too, without the body).
async fn scrape(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, telemetry::CONTENT_TYPE)],
        metrics.render(),
    )
}

/// Any other method on `/metrics`. axum writes `Allow` without a space after the comma;
/// this is the list as RFC 9110 writes it.
async fn method_not_allowed() -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "GET, HEAD")],
    )
}

/// A handler that ran past [`REQUEST_TIMEOUT`] (the only error the layers below make).
async fn timed_out(err: BoxError) -> StatusCode {
    tracing::debug!(cause = %err, "http: request failed");
    StatusCode::SERVICE_UNAVAILABLE
}

/// Serves [`router`] on `listener` until `shutdown` fires. The accept loop and every
/// connection are spawned on `tasks`, so the caller can wait for them to end.
pub fn serve(
    listener: TcpListener,
    metrics: Metrics,
    console: Option<Console>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    // Outermost first: a timeout turns into a 503 response, so the connection still answers.
    let app = router(metrics, console).layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(timed_out))
            .timeout(REQUEST_TIMEOUT),
    );
    tasks.spawn(accept(listener, app, shutdown, tasks.clone()));
}

async fn accept(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(false);
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
                    tracing::warn!(cause = %err, "http: accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let connection = http.serve_connection(
            TokioIo::new(StatusLine11::new(stream)),
            TowerToHyperService::new(app.clone()),
        );
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let mut connection = pin!(connection);
            let served = tokio::time::timeout(CLIENT_TIMEOUT, async {
                tokio::select! {
                    served = connection.as_mut() => served,
                    _ = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        match tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut()).await {
                            Ok(served) => served,
                            Err(_) => Ok(()),
                        }
                    }
                }
            })
            .await;
            match served {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!(cause = %err, "http: connection failed"),
                Err(_) => tracing::debug!("http: client too slow"),
            }
        });
    }
    tracing::debug!("http endpoint stopped");
}

/// A connection that answers `HTTP/1.1` in its status line, also to an HTTP/1.0 request.
///
/// hyper answers an HTTP/1.0 request with an `HTTP/1.0` status line; RFC 9110 (section 2.5)
/// says a server should send the highest version it conforms to, and clients (and the tests)
/// expect `HTTP/1.1`. hyper still speaks 1.0 in what follows (no chunked bodies, the
/// connection closes), so only the version's digits change, in place, in the first bytes
/// written.
struct StatusLine11 {
    stream: TcpStream,
    /// Bytes of the status line's version still to check (from the start of the connection).
    pending: usize,
}

/// What hyper writes first to an HTTP/1.0 request, and what goes out instead.
const HTTP10: &[u8] = b"HTTP/1.0 ";
const HTTP11: &[u8] = b"HTTP/1.1 ";

impl StatusLine11 {
    fn new(stream: TcpStream) -> Self {
        StatusLine11 {
            stream,
            pending: HTTP10.len(),
        }
    }
}

impl AsyncRead for StatusLine11 {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for StatusLine11 {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending == 0 {
            return Pin::new(&mut this.stream).poll_write(cx, buf);
        }
        // `at` bytes of the version went out already; `buf` goes on from there.
        let at = HTTP10.len() - this.pending;
        let n = this.pending.min(buf.len());
        if buf[..n] != HTTP10[at..at + n] {
            // Not an HTTP/1.0 answer: nothing to change.
            this.pending = 0;
            return Pin::new(&mut this.stream).poll_write(cx, buf);
        }
        let written =
            std::task::ready!(Pin::new(&mut this.stream).poll_write(cx, &HTTP11[at..at + n]))?;
        this.pending -= written;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use axum::{
        body::{Body, to_bytes},
        http::{Method, Request},
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    use super::*;

    async fn call(method: Method, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let metrics = Metrics::new();
        metrics.store_committed(Duration::from_millis(1), 3);
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let response = router(metrics, None)
            .oneshot(request)
            .await
            .expect("infallible");
        let (parts, body) = response.into_parts();
        let body = to_bytes(body, usize::MAX).await.expect("body");
        let body = String::from_utf8(body.to_vec()).expect("utf-8");
        (parts.status, parts.headers, body)
    }

    #[tokio::test]
    async fn only_get_or_head_of_metrics_is_answered_with_metrics() {
        let (status, headers, body) = call(Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(telemetry::CONTENT_TYPE.as_bytes())
        );
        assert!(
            body.contains("\nswitchyard_store_commits_total 1\n"),
            "{body}"
        );

        let (status, _, body) = call(Method::HEAD, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "", "no body after HEAD");

        assert_eq!(call(Method::GET, "/metrics?x=1").await.0, StatusCode::OK);
        assert_eq!(call(Method::GET, "/nope").await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            call(Method::GET, "/metrics/").await.0,
            StatusCode::NOT_FOUND
        );
        let (status, headers, _) = call(Method::POST, "/metrics").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            headers.get(header::ALLOW).map(|v| v.as_bytes()),
            Some(&b"GET, HEAD"[..])
        );
    }

    async fn request(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(bytes).await.expect("send");
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_one_answer_per_connection_until_shutdown_and_its_tasks_end() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        serve(listener, Metrics::new(), None, shutdown.clone(), &tasks);

        // A client that connects and says nothing holds one connection, not the endpoint.
        let _silent = TcpStream::connect(addr).await.expect("connect");
        // Read to the end: the connection closes after one answer.
        let answer = request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("\nswitchyard_store_commits_total 0\n"),
            "{answer}"
        );
        let old = request(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(old.starts_with("HTTP/1.1 200 OK\r\n"), "{old}");
        let missing = request(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        let garbled = request(addr, b"hello\r\n\r\n").await;
        assert!(
            garbled.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{garbled}"
        );
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend([b'a'; MAX_HEAD_BYTES + 100]);
        let refused = request(addr, &huge).await;
        assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");

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
