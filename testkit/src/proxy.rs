//! A TCP forwarder to put between a client (or a worker) and the coordinator, to break the
//! network under them: `cut` drops every open connection at once, like a proxy or a NAT that
//! forgets them; `down` also refuses new ones until `up`, like a network that is gone for a
//! while.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

pub struct Proxy {
    addr: SocketAddr,
    /// Bumped at each cut; the flag says whether the network is down.
    state: watch::Sender<(u64, bool)>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port on 127.0.0.1 and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (state, states) = watch::channel((0u64, false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            // The connections' tasks live and die with the proxy's.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { return };
                        if states.borrow().1 {
                            // Down: the connection is dropped as it comes.
                            continue;
                        }
                        counter.fetch_add(1, Ordering::SeqCst);
                        let mut cuts = states.clone();
                        cuts.mark_unchanged();
                        connections.spawn(async move {
                            let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                                return;
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                // Dropping both sockets cuts the connection mid-stream.
                                _ = cuts.changed() => {}
                            }
                        });
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        Proxy {
            addr,
            state,
            accepted,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for clients and workers.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted (and forwarded) so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Drops every open connection; new ones are forwarded again at once.
    pub fn cut(&self) {
        self.state.send_modify(|(cuts, _)| *cuts += 1);
    }

    /// Drops every open connection and refuses new ones until [`Proxy::up`].
    pub fn down(&self) {
        self.state.send_modify(|(cuts, down)| {
            *cuts += 1;
            *down = true;
        });
    }

    /// Forwards new connections again.
    pub fn up(&self) {
        self.state.send_modify(|(_, down)| *down = false);
    }

    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
