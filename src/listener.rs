//! Client-facing sockets: binding, and the accept loop, which takes a slot
//! of the listener's connection limit (`limit`) before each accept and hands
//! each connection to its protocol — `http` (over TLS when the listener
//! terminates it) or `tcp`, as the snapshot says at that moment, with
//! whether its source is trusted to open with a PROXY header. A listener is identified by its configured bind address, so
//! a reload that keeps the address keeps the socket. What a connection does
//! once handed over is its protocol's business.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Protocol;
use crate::inbound::Listening;
use crate::limit::ConnLimit;
use crate::snapshot::SharedSnapshot;

/// Binds a listening socket with `SO_REUSEADDR`, so a restart does not wait
/// for the previous process's connections in TIME_WAIT.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    // Small responses must not wait for Nagle. Linux passes TCP_NODELAY on
    // to accepted sockets, which saves a system call per connection.
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The accept loop of one listening socket.
pub struct AcceptLoop {
    pub listener: TcpListener,
    /// The configured bind address: the key of this listener's routes.
    pub bind: SocketAddr,
    pub snapshot: SharedSnapshot,
    /// Connection tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Open connections of this listener, against `max_connections`.
    pub limit: Arc<ConnLimit>,
}

impl AcceptLoop {
    /// Accepts until `stop` is cancelled; then the connections it started are
    /// asked to finish their current request and close.
    pub async fn run(self, stop: CancellationToken) {
        let listening = Arc::new(Listening {
            bind: self.bind,
            snapshot: self.snapshot.clone(),
            stop: stop.clone(),
        });
        loop {
            let slot = tokio::select! {
                slot = self.limit.acquire() => slot,
                () = stop.cancelled() => break,
            };
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = stop.cancelled() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    // Inherited from the listening socket on Linux (see `bind`).
                    #[cfg(not(target_os = "linux"))]
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
                    }
                    let snapshot = self.snapshot.load();
                    let Some(router) = snapshot.router(self.bind) else {
                        // Removed by a reload that has not stopped this loop yet.
                        break;
                    };
                    let metrics = router.metrics.clone();
                    let proxied = router.trusts_proxy(peer.ip());
                    let protocol = router.protocol;
                    let tls = router.tls.clone();
                    drop(snapshot);
                    let listening = listening.clone();
                    match (protocol, proxied || tls.is_some()) {
                        (Protocol::Http, false) => self.tracker.spawn(
                            crate::http::serve_connection(stream, peer, listening, metrics, slot),
                        ),
                        (Protocol::Http, true) => self.tracker.spawn(crate::http::serve_wrapped(
                            stream, peer, proxied, tls, listening, metrics, slot,
                        )),
                        (Protocol::Tcp, _) => self.tracker.spawn(crate::tcp::serve(
                            stream, peer, proxied, listening, metrics, slot,
                        )),
                    };
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::error!(bind = %self.bind, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tracing::info!(bind = %self.bind, "listener closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        #[cfg(not(target_os = "linux"))]
        accepted.set_nodelay(true).unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
