//! SIGINT and SIGTERM, the same way in every Switchyard binary: either one cancels the
//! process's root [`CancellationToken`], and what hangs off that token drains.
//!
//! ```no_run
//! # async fn run(_shutdown: tokio_util::sync::CancellationToken) {}
//! # async fn demo() {
//! let shutdown = switchyard_telemetry::shutdown::on_signals();
//! run(shutdown.clone()).await; // returns once the drain is over
//! shutdown.cancel(); // ends the signal task if no signal came
//! # }
//! ```
//!
//! Only the first signal counts: a second one is swallowed rather than killing the process
//! half-way through its drain (the handlers stay installed for the life of the process).

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled on the first SIGINT or SIGTERM, logging which.
///
/// A spawned task waits for the signals; it ends on the first one, or when the token is
/// cancelled for another reason (cancel it once the process is done). See [`signalled`] for
/// a future to spawn (and track) yourself.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    tokio::spawn(signalled(token.clone()));
    token
}

/// A future that waits for the first SIGINT or SIGTERM, logs which, and cancels `token`. It
/// returns early, cancelling nothing, when `token` is cancelled for another reason (the
/// process stops on its own), so a task running it can be joined.
///
/// The handlers are installed by this call, not when the future is first polled: a signal
/// that comes before the task runs is neither lost nor fatal. Call it inside a Tokio runtime.
pub fn signalled(token: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
    Signals::install().cancel_on_first(token)
}

/// The two signals that mean "drain". One that cannot be listened for is left out (logged):
/// the other still works.
struct Signals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl Signals {
    fn install() -> Signals {
        let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(err) => {
                tracing::error!(cause = %err, signal = name, "cannot listen for the signal");
                None
            }
        };
        Signals {
            interrupt: listen(SignalKind::interrupt(), "SIGINT"),
            terminate: listen(SignalKind::terminate(), "SIGTERM"),
        }
    }

    async fn cancel_on_first(mut self, token: CancellationToken) {
        let name = tokio::select! {
            () = received(&mut self.interrupt) => "SIGINT",
            () = received(&mut self.terminate) => "SIGTERM",
            () = token.cancelled() => return,
        };
        tracing::info!(signal = name, "draining");
        token.cancel();
    }
}

/// Resolves when `signal` arrives; never for a signal that is not listened for (or whose
/// stream has ended), so it cannot be mistaken for one that came.
async fn received(signal: &mut Option<Signal>) {
    if let Some(signal) = signal
        && signal.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Sends `name` (`INT`, `TERM`) to this test process, as a shell or a supervisor would.
    fn raise(name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(std::process::id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    // One test for both signals: tests run in parallel in one process, and a signal reaches
    // every listener in it, so a second test could pass on the first one's signal.
    #[tokio::test]
    async fn sigint_and_sigterm_both_cancel_the_token() {
        for name in ["INT", "TERM"] {
            let token = on_signals();
            raise(name);
            tokio::time::timeout(Duration::from_secs(10), token.cancelled())
                .await
                .unwrap_or_else(|_| panic!("SIG{name} did not cancel the token"));
        }
    }

    #[tokio::test]
    async fn signalled_returns_when_the_token_is_cancelled_elsewhere() {
        let token = CancellationToken::new();
        let waiting = tokio::spawn(signalled(token.clone()));
        token.cancel();
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("signalled returned")
            .expect("signalled did not panic");
    }
}
