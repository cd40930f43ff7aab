//! One endpoint's upstream HTTP/1.1 connections: connect (with the service's
//! connect timeout), keep idle connections for reuse, count every open one in
//! the pool's gauge, and close the idle ones on demand. Connecting is a step
//! of its own, so a request that could not be sent is still in hand and can be
//! retried elsewhere.
//!
//! Hand-written over `hyper::client::conn::http1` rather than hyper-util's
//! pooled client because that client neither returns an unsent request on a
//! connect failure nor lets one endpoint's idle connections be closed.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How long an unused upstream connection is kept open for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per endpoint; more are closed when returned.
const MAX_IDLE: usize = 256;

/// The body sent upstream: the client's, streamed, or none. A request with
/// no body can be rebuilt and sent again.
pub enum UpBody {
    Stream(Incoming),
    Empty,
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Stream(body) => Pin::new(body).poll_frame(cx),
            UpBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Stream(body) => body.is_end_stream(),
            UpBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Stream(body) => body.size_hint(),
            UpBody::Empty => SizeHint::with_exact(0),
        }
    }
}

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
    #[error("HTTP/1.1 handshake with {address} failed: {source}")]
    Handshake {
        address: Arc<str>,
        #[source]
        source: hyper::Error,
    },
}

struct Idle {
    sender: SendRequest<UpBody>,
    since: Instant,
}

/// A plain upstream socket, for requests the data plane frames itself
/// (`http::fast`). It holds one count in its pool's gauge while open.
pub struct RawConn {
    pub stream: TcpStream,
    _open: OpenCount,
    /// Whether it served a request before (see `Conn::reused`).
    pub reused: bool,
}

impl RawConn {
    /// Whether an idle socket may still be used: one the upstream closed (or
    /// wrote to unasked) is readable. Readiness is what the reactor already
    /// knows, so the usual answer costs no system call.
    fn still_open(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
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
    idle: Mutex<Vec<Idle>>,
    raw_idle: Mutex<Vec<(RawConn, Instant)>>,
    /// Open connections of the endpoint's pool (shared by its endpoints).
    open: IntGauge,
    /// Cancelled to close every connection made so far, busy or not (a drain
    /// deadline); replaced so later connections are unaffected.
    kill: ArcSwap<CancellationToken>,
    /// Out of rotation: connections are closed when their request ends
    /// instead of kept for reuse, so a draining endpoint ends up holding none.
    retired: AtomicBool,
}

impl std::fmt::Debug for EndpointConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConns")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl EndpointConns {
    pub fn new(address: Arc<str>, connect_timeout: Duration, open: IntGauge) -> Self {
        Self {
            address,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
            raw_idle: Mutex::new(Vec::new()),
            open,
            kill: ArcSwap::from_pointee(CancellationToken::new()),
            retired: AtomicBool::new(false),
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// A ready connection: the most recently used idle one, or a new one.
    pub async fn checkout(self: &Arc<Self>) -> Result<Conn, ConnectError> {
        loop {
            let idle = {
                let mut idle = self.idle.lock().expect("idle lock");
                idle.pop()
            };
            let Some(Idle { mut sender, since }) = idle else {
                break;
            };
            if sender.is_closed() || since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // Usually ready at once; an error means the upstream closed it.
            if sender.ready().await.is_ok() {
                return Ok(Conn {
                    sender,
                    owner: self.clone(),
                    reused: true,
                });
            }
        }
        self.connect().await
    }

    async fn connect(self: &Arc<Self>) -> Result<Conn, ConnectError> {
        let stream = self.open_stream().await?;
        let io = Counted::new(TokioIo::new(stream), &self.open);
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake {
                address: self.address.clone(),
                source,
            })?;
        let address = self.address.clone();
        let kill = self.kill_token();
        tokio::spawn(async move {
            // With upgrades, the connection hands its socket to the tunnel
            // (which keeps the count) when a 101 comes back.
            tokio::select! {
                result = conn.with_upgrades() => if let Err(e) = result {
                    tracing::debug!(%address, error = %e, "upstream connection ended with an error");
                },
                () = kill.cancelled() => {}
            }
        });
        Ok(Conn {
            sender,
            owner: self.clone(),
            reused: false,
        })
    }

    /// Opens a socket to the endpoint, within the connect timeout.
    async fn open_stream(&self) -> Result<TcpStream, ConnectError> {
        let address = &*self.address;
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(source)) => {
                    return Err(ConnectError::Io {
                        address: self.address.clone(),
                        source,
                    })
                }
                Err(_) => {
                    return Err(ConnectError::Timeout {
                        address: self.address.clone(),
                        timeout: self.connect_timeout,
                    })
                }
            };
        // Best effort: a socket without TCP_NODELAY is slower, not broken.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(address, error = %e, "cannot set TCP_NODELAY");
        }
        Ok(stream)
    }

    /// A plain socket: the most recently used idle one, or a new one.
    pub async fn checkout_raw(&self) -> Result<RawConn, ConnectError> {
        loop {
            let idle = self.raw_idle.lock().expect("idle lock").pop();
            let Some((mut conn, since)) = idle else {
                break;
            };
            if since.elapsed() <= IDLE_TIMEOUT && conn.still_open() {
                conn.reused = true;
                return Ok(conn);
            }
        }
        let stream = self.open_stream().await?;
        Ok(RawConn {
            stream,
            _open: OpenCount::new(&self.open),
            reused: false,
        })
    }

    /// Keeps a plain socket whose last exchange ended cleanly, for reuse.
    pub fn put_back_raw(&self, conn: RawConn) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = self.raw_idle.lock().expect("idle lock");
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    fn put_back(&self, sender: SendRequest<UpBody>) {
        if sender.is_closed() || self.retired.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = self.idle.lock().expect("idle lock");
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Out of rotation (`true`): idle connections close now and busy ones
    /// when their request ends. Back in rotation (`false`): reuse resumes.
    pub fn retire(&self, retired: bool) {
        self.retired.store(retired, Ordering::Relaxed);
        if retired {
            self.close_idle();
        }
    }

    /// Closes every idle connection now.
    pub fn close_idle(&self) {
        self.idle.lock().expect("idle lock").clear();
        self.raw_idle.lock().expect("idle lock").clear();
    }

    /// Closes every connection now, busy ones included; the token returned
    /// before this call is what upgraded tunnels watch.
    pub fn close_all(&self) {
        self.close_idle();
        let old = self.kill.swap(Arc::new(CancellationToken::new()));
        old.cancel();
    }

    /// Cancelled when `close_all` is called, for work (tunnels) that outlives
    /// the connection task.
    pub fn kill_token(&self) -> CancellationToken {
        // Read per request: a lock-free load, not a mutex.
        CancellationToken::clone(&self.kill.load())
    }
}

/// An upstream socket that holds one count in its pool's gauge for as long as
/// it lives, through an upgrade too.
pub struct Counted {
    io: TokioIo<TcpStream>,
    _open: OpenCount,
}

impl Counted {
    fn new(io: TokioIo<TcpStream>, gauge: &IntGauge) -> Self {
        Self {
            io,
            _open: OpenCount::new(gauge),
        }
    }
}

impl hyper::rt::Read for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A connection checked out for one request.
pub struct Conn {
    sender: SendRequest<UpBody>,
    owner: Arc<EndpointConns>,
    /// Whether it served a request before: a reused connection the upstream
    /// closed meanwhile fails without the request having been sent.
    pub reused: bool,
}

/// A failed send: the error, and the request when it was never sent.
pub struct SendError {
    pub error: hyper::Error,
    pub unsent: Option<Request<UpBody>>,
}

impl Conn {
    /// Sends the request; the response body returns the connection to its
    /// endpoint's idle list once read to the end.
    pub async fn send(mut self, req: Request<UpBody>) -> Result<Response<PooledBody>, SendError> {
        match self.sender.try_send_request(req).await {
            Ok(response) => Ok(response.map(|body| PooledBody {
                body,
                conn: Some((self.sender, self.owner)),
            })),
            Err(mut e) => Err(SendError {
                unsent: e.take_message(),
                error: e.into_error(),
            }),
        }
    }
}

/// An upstream response body that hands its connection back for reuse when
/// it ends; dropped early, it takes the connection down with it.
pub struct PooledBody {
    body: Incoming,
    conn: Option<(SendRequest<UpBody>, Arc<EndpointConns>)>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none() {
            if let Some((sender, owner)) = self.conn.take() {
                owner.put_back(sender);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // hyper does not poll a body it knows is empty (Content-Length: 0, a
        // HEAD response): the connection is reusable all the same.
        if let Some((sender, owner)) = self.conn.take() {
            if self.body.is_end_stream() {
                owner.put_back(sender);
            }
        }
    }
}
