//! Several coordinators on one database: one leads, the others forward to it.
//!
//! The leader is the coordinator that holds the database's leadership lease
//! ([`crate::store::postgres::Lease`]). It alone runs the scheduler, the worker sessions and
//! every write, exactly as a coordinator on its own does. A follower serves the same gRPC
//! services on its own address, but forwards every call of them, byte for byte, to the
//! leader's advertised address ([`Switched`]): a worker connected to any coordinator is a
//! session of the leader's, a `Wait` on any of them is woken by the leader's fan-in, and a
//! quota is counted in one place. Health and reflection stay local.
//!
//! A follower tries to take the lease every quarter of its term ([`follow`]); it gets it when
//! the leader gave it up (a drain releases it after its last commit) or when it ran out (the
//! leader died). The leader renews it every quarter of its term ([`keep`]); once a renewal has
//! not succeeded for three quarters of a term, it raises the store's fence (no commit from
//! here on) and stops, so that it has stopped writing before anybody else can take over.
//! See docs/architecture.md, "Several coordinators".

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use http_body::Frame;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{
    Status,
    body::Body,
    codegen::{
        Bytes,
        http::{self, HeaderMap, HeaderValue},
    },
    server::NamedService,
    transport::{Channel, ClientTlsConfig, Endpoint},
};
use tower::Service;

use crate::{
    config::Tls,
    error::{Error, Result},
    store::postgres::Lease,
};

/// Where a call goes.
#[derive(Clone, Debug, Default)]
pub enum Forward {
    /// Not known yet (the election has not said, or this coordinator is taking over): a
    /// call waits for it, for up to [`UNKNOWN_WAIT`].
    #[default]
    Unknown,
    /// To the leader, over this channel.
    To(Channel),
    /// Served here: this coordinator leads.
    Here,
}

/// How long a call waits for the coordinator to learn where calls go.
const UNKNOWN_WAIT: Duration = Duration::from_secs(10);

/// One of the coordinator's services: served here once this coordinator leads (`local` is
/// set), forwarded to the leader until then.
pub struct Switched<S> {
    local: Arc<OnceLock<S>>,
    forward: watch::Receiver<Forward>,
    /// The drain: a forwarded call (and the stream of its response) ends when it starts.
    drain: CancellationToken,
}

impl<S> Clone for Switched<S> {
    fn clone(&self) -> Self {
        Switched {
            local: self.local.clone(),
            forward: self.forward.clone(),
            drain: self.drain.clone(),
        }
    }
}

impl<S> Switched<S> {
    pub fn new(forward: watch::Receiver<Forward>, drain: CancellationToken) -> Switched<S> {
        Switched {
            local: Arc::new(OnceLock::new()),
            forward,
            drain,
        }
    }

    /// From now on, calls are served here (the caller then sends [`Forward::Here`]).
    pub fn serve_here(&self, service: S) {
        // Set once: a coordinator leads at most once in its life.
        let _ = self.local.set(service);
    }
}

impl<S: NamedService> NamedService for Switched<S> {
    const NAME: &'static str = S::NAME;
}

type Forwarded = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> Service<http::Request<Body>> for Switched<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Forwarded;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The generated servers are always ready, and so is forwarding (a channel that is
        // not is waited for in the call, under the call's own deadline).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Forwarded {
        if let Some(local) = self.local.get() {
            let mut local = local.clone();
            return Box::pin(async move { local.call(request).await });
        }
        let (local, mut forward, drain) =
            (self.local.clone(), self.forward.clone(), self.drain.clone());
        Box::pin(async move {
            // `Unknown` still if the coordinator is stopping, or nobody said within the wait.
            let to = tokio::time::timeout(
                UNKNOWN_WAIT,
                forward.wait_for(|to| !matches!(to, Forward::Unknown)),
            )
            .await
            .ok()
            .and_then(|known| known.ok().map(|to| to.clone()))
            .unwrap_or_default();
            let mut channel = match to {
                Forward::Here => match local.get() {
                    Some(local) => return local.clone().call(request).await,
                    None => return Ok(Status::internal("no local service").into_http()),
                },
                Forward::To(channel) => channel,
                Forward::Unknown => {
                    return Ok(Status::unavailable(
                        "no coordinator leads the fleet yet (an election is under way); retry",
                    )
                    .into_http());
                }
            };
            let forwarded = async {
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await
            };
            let response = tokio::select! {
                response = forwarded => response,
                () = drain.cancelled() => {
                    return Ok(Status::unavailable("the coordinator is shutting down").into_http());
                }
            };
            Ok(match response {
                Ok(response) => response.map(|body| Body::new(UntilDrain::new(body, drain))),
                Err(err) => Status::unavailable(format!(
                    "the leading coordinator cannot be reached: {err}; retry"
                ))
                .into_http(),
            })
        })
    }
}

/// A forwarded response's body, ended with `UNAVAILABLE` trailers when the drain starts (a
/// worker's stream or a `Wait` through a follower must not hold its drain up).
struct UntilDrain {
    inner: Body,
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
}

impl UntilDrain {
    fn new(inner: Body, drain: CancellationToken) -> UntilDrain {
        UntilDrain {
            inner,
            drain: Box::pin(drain.cancelled_owned()),
            ended: false,
        }
    }
}

impl http_body::Body for UntilDrain {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if this.drain.as_mut().poll(cx).is_ready() {
            this.ended = true;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("14"));
            trailers.insert(
                "grpc-message",
                HeaderValue::from_static("the coordinator is shutting down"),
            );
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}

/// How a follower reaches the leader: plain HTTP/2, or TLS trusting the CA of `--peer-ca`
/// (or this coordinator's own certificate), presenting this coordinator's certificate when
/// the leader asks for one.
#[derive(Clone, Debug, Default)]
pub struct PeerTls {
    tls: Option<ClientTlsConfig>,
}

impl PeerTls {
    pub fn new(tls: Option<&Tls>, peer_ca: Option<&std::path::Path>) -> Result<PeerTls> {
        let Some(tls) = tls else {
            return Ok(PeerTls::default());
        };
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
        };
        let ca = read(peer_ca.unwrap_or(&tls.cert))?;
        let config = ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .identity(tonic::transport::Identity::from_pem(
                read(&tls.cert)?,
                read(&tls.key)?,
            ));
        Ok(PeerTls { tls: Some(config) })
    }

    fn channel(&self, address: &str) -> Result<Channel> {
        let mut endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|err| Error::Config(format!("leader address {address:?}: {err}")))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint.connect_lazy())
    }
}

/// Follows the leader until this coordinator takes the lease (its epoch), keeping `forward`
/// pointed at whoever leads; `None` if `stop` fired first.
pub async fn follow(
    lease: &Lease,
    peers: &PeerTls,
    forward: &watch::Sender<Forward>,
    stop: &CancellationToken,
) -> Option<i64> {
    let every = lease.term() / 4;
    let mut following: Option<String> = None;
    loop {
        match lease.try_acquire().await {
            Ok(Some(epoch)) => {
                tracing::info!(
                    epoch,
                    address = lease.address(),
                    "this coordinator leads the fleet"
                );
                // Calls wait (`Unknown`) until this coordinator serves them itself.
                forward.send_replace(Forward::Unknown);
                return Some(epoch);
            }
            Ok(None) => match lease.leader().await {
                Ok(Some(leader)) if following.as_deref() != Some(leader.address.as_str()) => {
                    match peers.channel(&leader.address) {
                        Ok(channel) => {
                            tracing::info!(
                                leader = %leader.address,
                                epoch = leader.epoch,
                                "following the leading coordinator: calls are forwarded to it"
                            );
                            forward.send_replace(Forward::To(channel));
                            following = Some(leader.address);
                        }
                        Err(err) => {
                            tracing::warn!(cause = %err, "the leader's address is not usable");
                        }
                    }
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(cause = %err, "reading the leadership lease failed"),
            },
            Err(err) => tracing::warn!(cause = %err, "taking the leadership lease failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Renews the lease every quarter of its term until `stop` fires. When the lease is another's,
/// or no renewal has succeeded for three quarters of a term, it raises the fence (this
/// coordinator commits nothing more) and fires `lost`.
pub async fn keep(lease: Lease, epoch: i64, stop: CancellationToken, lost: CancellationToken) {
    let term = lease.term();
    let every = term / 4;
    // The latest renewal known to have taken effect started at `held_from`: the lease runs
    // at least a term from then, by any clock that runs at the database's rate.
    let mut held_from = Instant::now();
    let mut next_try = held_from + every;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next_try) => {}
        }
        let started = Instant::now();
        let deadline = held_from + term * 3 / 4;
        let renewed = tokio::time::timeout(
            deadline.saturating_duration_since(started),
            lease.renew(epoch),
        )
        .await;
        let why = match renewed {
            Ok(Ok(true)) => {
                held_from = started;
                next_try = held_from + every;
                continue;
            }
            Ok(Ok(false)) => "another coordinator holds the lease now".to_owned(),
            Ok(Err(err)) if Instant::now() < deadline => {
                tracing::warn!(cause = %err, "renewing the leadership lease failed; trying again");
                // Again soon, within what is left of the term.
                next_try = (Instant::now() + every / 4).min(deadline);
                continue;
            }
            Ok(Err(err)) => format!("the lease could not be renewed: {err}"),
            Err(_) => "the lease could not be renewed in time".to_owned(),
        };
        lease.fence().raise();
        tracing::error!(
            epoch,
            why,
            "this coordinator may no longer lead: it commits nothing more and stops"
        );
        lost.cancel();
        return;
    }
}
