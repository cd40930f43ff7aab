//! HTTP/2 to one endpoint of an `h2` pool: one shared connection that every
//! request of the endpoint multiplexes its streams on, opened when first
//! needed (one connect however many requests wait for it, and counted
//! once) and again once the upstream closed it or a request found it
//! closing (`retire`). The connection counts in its pool's gauge while
//! its task runs; dropping the shared sender (a drain, a reload that drops
//! the endpoint) lets it close once its streams end. What goes over a
//! stream is `http`'s business.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::OnceCell;

use super::pool::{ConnectError, EndpointConns};
use super::stream::Stream;

/// A request body sent over an HTTP/2 stream.
pub type H2Body = BoxBody<Bytes, io::Error>;
/// Sends requests over an endpoint's HTTP/2 connection.
pub type H2Sender = http2::SendRequest<H2Body>;

/// How often an upstream HTTP/2 connection is pinged, and how long a
/// ping may go unanswered before it is closed.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One connect: its outcome, shared by every request that waited for it.
type Connecting = OnceCell<Result<H2Sender, Arc<ConnectError>>>;

/// The shared HTTP/2 connection of one endpoint.
#[derive(Default)]
pub(super) struct Multiplexed {
    /// The current connect; replaced by a fresh one when it failed or its
    /// connection closed. The lock is held only to read or swap it.
    current: Mutex<Arc<Connecting>>,
}

/// Which shared connection a sender came from: handed back to `retire`
/// it when the connection stopped taking new streams.
pub struct H2Conn(Arc<Connecting>);

impl Multiplexed {
    /// A sender on the endpoint's connection, connecting when there is none.
    /// A failed connect is the error of the request whose task made it;
    /// the requests that waited for it share it as `Shared { waited: true }`.
    pub async fn sender(&self, conns: &EndpointConns) -> Result<(H2Sender, H2Conn), ConnectError> {
        let connecting = {
            let mut current = self.current.lock().expect("h2 lock");
            let stale = match current.get() {
                None => false,
                Some(Ok(sender)) => sender.is_closed(),
                Some(Err(_)) => true,
            };
            if stale {
                *current = Arc::default();
            }
            current.clone()
        };
        let mut made = false;
        let outcome = connecting
            .get_or_init(|| {
                made = true;
                connect(conns)
            })
            .await;
        match outcome {
            Ok(sender) => Ok((sender.clone(), H2Conn(connecting.clone()))),
            Err(error) => Err(ConnectError::Shared {
                error: error.clone(),
                waited: !made,
            }),
        }
    }

    /// Lets go of `conn` if it is still the endpoint's connection: the
    /// upstream is closing it (GOAWAY) or refused a stream on it, so the
    /// next request opens a new one. Its streams still run to their end.
    pub fn retire(&self, conn: &H2Conn) {
        let mut current = self.current.lock().expect("h2 lock");
        if Arc::ptr_eq(&current, &conn.0) {
            *current = Arc::default();
        }
    }

    /// Lets go of the connection: it closes once its streams end.
    pub fn close(&self) {
        *self.current.lock().expect("h2 lock") = Arc::default();
    }
}

/// Opens the connection (TLS included) and its HTTP/2 handshake, within the
/// connect timeout; a task drives it until it closes.
async fn connect(conns: &EndpointConns) -> Result<H2Sender, Arc<ConnectError>> {
    let deadline = tokio::time::Instant::now() + conns.connect_timeout();
    let (stream, count) = conns.open().await.map_err(Arc::new)?.into_counted();
    if let Stream::Tls(tls) = &stream {
        let alpn = tls.get_ref().1.alpn_protocol();
        if alpn.is_some_and(|p| p != b"h2") {
            return Err(Arc::new(ConnectError::NotH2 {
                address: conns.address().into(),
            }));
        }
    }
    let handshake = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        // An idle connection whose upstream vanished is found before a
        // request is lost on it.
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream));
    let (sender, connection) = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(handshake)) => handshake,
        Ok(Err(e)) => {
            return Err(Arc::new(ConnectError::Io {
                address: conns.address().into(),
                source: io::Error::other(e),
            }))
        }
        Err(_) => return Err(Arc::new(conns.timed_out())),
    };
    let address = conns.address().to_owned();
    tokio::spawn(async move {
        let _count = count;
        if let Err(e) = connection.await {
            tracing::debug!(%address, error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}
