//! Several coordinator addresses behind one client. Each address has a channel of its own (its
//! own connection, TLS server name and reconnects); calls go to the one that answered last. A
//! call whose connection cannot be made is made again on the next address, round robin: it
//! never left this process, so no coordinator sees it twice. A call that reached a coordinator
//! is not sent again, whatever it answered.
//!
//! Not tonic's `Channel::balance_list`: its balancer counts an address it cannot connect to as
//! ready (the connect error is kept for the next call on it), and with every address's load
//! at zero it picks among the ready ones at random, so about half the calls made after a
//! coordinator died would fail on it.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tonic::{Status, transport::Channel};

use crate::{Client, trace::Call};

/// A coordinator address and the channel to it.
#[derive(Debug)]
pub(crate) struct Route {
    /// As given (for logs); empty for a channel given by the caller.
    pub url: String,
    pub channel: Channel,
}

/// The addresses a client calls, in the order given, and the one calls go to now. Clones of
/// a client share it: when one of them moves on, they all do.
#[derive(Debug, Clone)]
pub(crate) struct Routes {
    routes: Arc<[Route]>,
    current: Arc<AtomicUsize>,
}

impl Routes {
    /// `routes` must not be empty; calls start at `current`, one of them.
    pub fn new(routes: Vec<Route>, current: usize) -> Routes {
        assert!(
            current < routes.len(),
            "calls start at one of the addresses"
        );
        Routes {
            routes: routes.into(),
            current: Arc::new(AtomicUsize::new(current)),
        }
    }

    /// The route calls go to now.
    pub fn current(&self) -> &Route {
        &self.routes[self.current.load(Ordering::Relaxed)]
    }
}

impl Client {
    /// Makes one call: `rpc` sends `message`, as [`Client::request`] prepares it (bounded by
    /// `timeout`), on the channel to the address calls go to now. If that address cannot be
    /// reached, the call is made on the next one, and so on round robin, each once; the first
    /// that answers is where the following calls go. With one address this is just the call.
    pub(crate) async fn send<M, R, F, Fut>(
        &self,
        call: &Call,
        message: M,
        timeout: Option<Duration>,
        rpc: F,
    ) -> Result<tonic::Response<R>, Status>
    where
        M: Clone,
        F: Fn(Channel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let routes = &self.routes.routes;
        let first = self.routes.current.load(Ordering::Relaxed);
        let try_on = |at: usize, message: M| {
            let mut request = self.request(call, message);
            self.bound(&mut request, timeout);
            rpc(routes[at].channel.clone(), request)
        };
        let mut step = 0;
        let (at, result) = loop {
            let at = (first + step) % routes.len();
            step += 1;
            // The last address gets the message itself; those before it, copies.
            if step == routes.len() {
                break (at, try_on(at, message).await);
            }
            match try_on(at, message.clone()).await {
                Err(status) if cannot_connect(&status) => tracing::debug!(
                    coordinator = %routes[at].url,
                    cause = %status.message(),
                    "cannot reach the coordinator; trying the next address"
                ),
                answered => break (at, answered),
            }
        };
        let answered = !matches!(&result, Err(status) if cannot_connect(status));
        if answered && at != first {
            self.routes.current.store(at, Ordering::Relaxed);
            tracing::info!(
                coordinator = %routes[at].url,
                from = %routes[first].url,
                "calls go to another coordinator address"
            );
        }
        result
    }
}

/// The call never reached a coordinator: its connection could not be made (refused, no route,
/// the connect timed out, the TLS handshake failed). tonic reports that as `UNAVAILABLE` with
/// its `ConnectError` among the causes; an `UNAVAILABLE` a coordinator sends (shutting down,
/// shedding load) has none, and may have done something.
fn cannot_connect(status: &Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut cause = std::error::Error::source(status);
    while let Some(err) = cause {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        cause = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_call_that_could_not_connect_moves_on() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let status = Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(cannot_connect(&status));
        // What a coordinator answered, even UNAVAILABLE, may have done something.
        assert!(!cannot_connect(&Status::unavailable(
            "the coordinator is shutting down"
        )));
        assert!(!cannot_connect(&Status::deadline_exceeded("too slow")));
    }
}
