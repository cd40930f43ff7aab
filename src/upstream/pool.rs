//! One endpoint's upstream connections: connect (with the service's connect
//! timeout, the TLS handshake of a pool with `tls` within it), keep idle
//! sockets for reuse, count every open one in the pool's gauge, close idle
//! ones the upstream closed or that aged out (`reap`), and end the work of
//! a drain when its deadline comes. An `h2` pool's endpoint shares one
//! connection instead (`multiplex`). Connecting is a step of
//! its own, so a request that could not be sent is still in hand and can be
//! retried elsewhere. What goes over a socket is `http`'s business.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntGauge;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::multiplex::{H2Conn, H2Sender, Multiplexed};
use super::stream::Stream;
use crate::config::UpstreamProtocol;
use crate::tls::client::EndpointTls;

/// How long an unused upstream connection is kept open for reuse.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// How long an endpoint out of rotation keeps an idle connection that
/// failover work put back: long enough for the next failover request.
const RETIRED_IDLE: Duration = Duration::from_secs(2);
/// Idle connections kept per endpoint; more are closed when returned. Sized
/// for a burst of a thousand requests in flight to one endpoint (say an
/// HTTP/2 client's streams): fewer made such a load close and reopen
/// connections all the time. An idle connection costs a socket and no
/// buffer.
const MAX_IDLE: usize = 1024;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {address} timed out after {timeout:?}")]
    Timeout {
        address: Arc<str>,
        timeout: Duration,
    },
    #[error("connect to {address} failed: {source}")]
    Io {
        address: Arc<str>,
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed: the certificate did not verify, the
    /// endpoint does not speak TLS, or it refused ours.
    #[error("TLS handshake with {address} failed: {error}")]
    Tls {
        address: Arc<str>,
        #[source]
        error: io::Error,
    },
    /// An `h2` pool's endpoint chose another protocol by ALPN.
    #[error("{address} does not speak HTTP/2: it chose another protocol by ALPN")]
    NotH2 { address: Arc<str> },
    /// The failed connect that every request waiting for an HTTP/2
    /// connection shares. `waited`: this request's task did not make the
    /// connect, only waited for it; the one that made it counts it.
    #[error("{error}")]
    Shared {
        error: Arc<ConnectError>,
        waited: bool,
    },
}

impl ConnectError {
    /// Whether this failure is to be counted against the endpoint: once
    /// per connect, not once per request that waited for it.
    pub fn counted(&self) -> bool {
        !matches!(self, Self::Shared { waited: true, .. })
    }
}

/// An endpoint of an `h2` pool: the way to its shared HTTP/2 connection.
pub struct H2Endpoint<'a> {
    conns: &'a EndpointConns,
    shared: &'a Multiplexed,
}

impl H2Endpoint<'_> {
    /// A sender on the endpoint's shared connection, and which connection
    /// it is (for `retire`).
    pub async fn sender(&self) -> Result<(H2Sender, H2Conn), ConnectError> {
        self.shared.sender(self.conns).await
    }

    /// Lets go of the shared connection `conn` if it is still the
    /// endpoint's: a request on it went unprocessed, so the next one opens
    /// a new connection.
    pub fn retire(&self, conn: &H2Conn) {
        self.shared.retire(conn);
    }
}

/// An upstream connection. It holds one count in its pool's gauge while
/// open. Layer-4 connections are `RawConn<TcpStream>`: plain, so the relay
/// can splice.
pub struct RawConn<S = Stream> {
    pub stream: S,
    _open: OpenCount,
    /// Whether it served a request before: a reused connection the upstream
    /// closed meanwhile fails before the request was read.
    pub reused: bool,
}

impl<S> RawConn<S> {
    /// The stream, and its place in the gauge to hold while it is open.
    pub(super) fn into_counted(self) -> (S, impl Send + 'static) {
        (self.stream, self._open)
    }
}

/// One open connection in a pool's gauge, for as long as it lives.
struct OpenCount(IntGauge);

impl OpenCount {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The connections of one endpoint, as one pool of one service uses it.
pub struct EndpointConns {
    address: Arc<str>,
    connect_timeout: Duration,
    /// The pool speaks TLS to the endpoint.
    tls: Option<EndpointTls>,
    /// An `h2` pool's shared connection; `None` for HTTP/1.1.
    h2: Option<Multiplexed>,
    idle: Mutex<Vec<(RawConn, Instant)>>,
    /// Open connections of the endpoint's pool (shared by its endpoints).
    open: IntGauge,
    /// What work started now watches: cancelled at the deadline of a drain
    /// that began after the work did. A drain swaps in a fresh token, so work
    /// that starts later — failover onto a pool out of rotation — is never
    /// cut by that drain's deadline.
    cut: ArcSwap<CancellationToken>,
    /// What layer-4 connections started now watch to be moved off the
    /// endpoint one at a time (`migrate`); swapped with `cut` by a drain.
    migration: ArcSwap<Migration>,
    /// Out of rotation: a connection is closed when its request ends instead
    /// of kept, unless failover work is using the endpoint.
    retired: AtomicBool,
}

/// Layer-4 connections of one endpoint that a drain may move off it one at
/// a time: each waits on `turn`, and the drain wakes one per step.
#[derive(Debug, Default)]
pub struct Migration {
    turn: Notify,
    /// Connections waiting on `turn`.
    waiting: AtomicUsize,
    /// The window is over: a connection that joins only now (its relay
    /// began after the drain's last step) goes at once.
    over: AtomicBool,
}

impl Migration {
    /// Holds a place among the connections to move until the guard drops.
    pub fn join(self: &Arc<Self>) -> MigrationTicket {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        MigrationTicket(self.clone())
    }

    /// Connections still to move.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Tells one waiting connection to close.
    pub fn move_one(&self) {
        self.turn.notify_one();
    }

    /// Tells every waiting connection to close.
    pub fn move_all(&self) {
        self.over.store(true, Ordering::Release);
        self.turn.notify_waiters();
    }
}

/// One connection's place among those a migration moves.
#[derive(Debug)]
pub struct MigrationTicket(Arc<Migration>);

impl MigrationTicket {
    /// Ready when the connection's turn to close has come.
    pub async fn turn(&self) {
        let notified = self.0.turn.notified();
        tokio::pin!(notified);
        // Registered before `over` is read, so a `move_all` in between
        // still wakes it.
        notified.as_mut().enable();
        if self.0.over.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

impl Drop for MigrationTicket {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for EndpointConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConns")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl EndpointConns {
    pub fn new(
        address: Arc<str>,
        connect_timeout: Duration,
        tls: Option<EndpointTls>,
        protocol: UpstreamProtocol,
        open: IntGauge,
    ) -> Self {
        Self {
            address,
            connect_timeout,
            tls,
            h2: (protocol == UpstreamProtocol::H2).then(Multiplexed::default),
            idle: Mutex::new(Vec::new()),
            open,
            cut: ArcSwap::from_pointee(CancellationToken::new()),
            migration: ArcSwap::from_pointee(Migration::default()),
            retired: AtomicBool::new(false),
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub(super) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Whether the endpoint is spoken to over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The endpoint's shared HTTP/2 connection when its pool is `h2`;
    /// otherwise (`None`) it is spoken to in HTTP/1.1 (`checkout`).
    pub fn h2(&self) -> Option<H2Endpoint<'_>> {
        self.h2.as_ref().map(|shared| H2Endpoint {
            conns: self,
            shared,
        })
    }

    /// A connection: the most recently used idle one, or a new one (over
    /// TLS when the pool has it).
    pub async fn checkout(&self) -> Result<RawConn, ConnectError> {
        loop {
            let idle = self.idle.lock().expect("idle lock").pop();
            let Some((mut conn, since)) = idle else {
                break;
            };
            if since.elapsed() <= IDLE_TIMEOUT && conn.stream.still_open() {
                conn.reused = true;
                return Ok(conn);
            }
        }
        self.open().await
    }

    /// A new connection, TLS included when the pool has it.
    pub(super) async fn open(&self) -> Result<RawConn, ConnectError> {
        let address = &*self.address;
        let open = async {
            let tcp = self.open_tcp().await?;
            match &self.tls {
                None => Ok(Stream::Plain(tcp)),
                Some(tls) => match tls.handshake(tcp).await {
                    Ok(tls) => Ok(Stream::Tls(Box::new(tls))),
                    Err(error) => Err(ConnectError::Tls {
                        address: self.address.clone(),
                        error,
                    }),
                },
            }
        };
        // The handshake is part of connecting, and shares its timeout.
        let stream = tokio::time::timeout(self.connect_timeout, open)
            .await
            .map_err(|_| self.timed_out())??;
        tracing::trace!(address, "upstream connection opened");
        Ok(RawConn {
            stream,
            _open: OpenCount::new(&self.open),
            reused: false,
        })
    }

    /// A new plain socket, never an idle one: for a layer-4 connection,
    /// which is the upstream's for its whole life (tcp pools have no TLS).
    pub async fn connect(&self) -> Result<RawConn<TcpStream>, ConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout, self.open_tcp())
            .await
            .map_err(|_| self.timed_out())??;
        Ok(RawConn {
            stream,
            _open: OpenCount::new(&self.open),
            reused: false,
        })
    }

    pub(super) fn timed_out(&self) -> ConnectError {
        ConnectError::Timeout {
            address: self.address.clone(),
            timeout: self.connect_timeout,
        }
    }

    /// Opens a socket to the endpoint; the caller bounds the wait.
    async fn open_tcp(&self) -> Result<TcpStream, ConnectError> {
        let address = &*self.address;
        let stream = TcpStream::connect(address)
            .await
            .map_err(|source| ConnectError::Io {
                address: self.address.clone(),
                source,
            })?;
        // Best effort: a socket without TCP_NODELAY is slower, not broken.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(address, error = %e, "cannot set TCP_NODELAY");
        }
        Ok(stream)
    }

    /// Keeps a socket whose last exchange ended cleanly, for reuse. An
    /// endpoint out of rotation keeps it only for `failover` work, briefly.
    pub fn put_back(&self, conn: RawConn, failover: bool) {
        if self.retired.load(Ordering::Relaxed) && !failover {
            return;
        }
        let mut idle = self.idle.lock().expect("idle lock");
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    /// Closes idle sockets the upstream closed, and those unused too long;
    /// called on a timer, so no socket lingers in CLOSE-WAIT.
    pub fn reap(&self) {
        let keep_for = if self.retired.load(Ordering::Relaxed) {
            RETIRED_IDLE
        } else {
            IDLE_TIMEOUT
        };
        self.idle
            .lock()
            .expect("idle lock")
            .retain_mut(|(conn, since)| since.elapsed() <= keep_for && conn.stream.still_open());
    }

    /// Out of rotation (`true`): idle connections close now and busy ones
    /// when their request ends. Back in rotation (`false`): reuse resumes.
    pub fn retire(&self, retired: bool) {
        self.retired.store(retired, Ordering::Relaxed);
        if retired {
            self.close_idle();
        }
    }

    /// Closes every idle connection now; an HTTP/2 one once its streams end.
    pub fn close_idle(&self) {
        self.idle.lock().expect("idle lock").clear();
        if let Some(h2) = &self.h2 {
            h2.close();
        }
    }

    /// Starts a drain: returns the token the work in flight now watches,
    /// to be cancelled at the drain's deadline; work started from now on
    /// watches a fresh one.
    pub fn begin_drain(&self) -> (CancellationToken, Arc<Migration>) {
        let migration = self.migration.swap(Arc::default());
        let cut = CancellationToken::clone(&self.cut.swap(Arc::new(CancellationToken::new())));
        (cut, migration)
    }

    /// The migration layer-4 connections started now join.
    pub fn migration(&self) -> Arc<Migration> {
        self.migration.load_full()
    }

    /// Cancelled at the deadline of a drain that began while the work
    /// holding it was in flight.
    pub fn cut_token(&self) -> CancellationToken {
        // Read per request: a lock-free load, not a mutex.
        CancellationToken::clone(&self.cut.load())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_handshake_says_with_whom_and_why() {
        let why = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let error = ConnectError::Tls {
            address: "127.0.0.1:8443".into(),
            error: io::Error::new(io::ErrorKind::InvalidData, why),
        };
        assert_eq!(
            error.to_string(),
            "TLS handshake with 127.0.0.1:8443 failed: invalid peer certificate: UnknownIssuer"
        );
    }
}
