//! Admin connections: the accept loop, the bound on how many are open at once,
//! and the timeouts that keep a slow or silent client from holding one open.
//! Each request is answered by the admin API's `handle`; this file knows
//! nothing of routes, tokens or the server behind them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{handle, Admin};

/// Longest an HTTP/1 request head may take to arrive. The same clock runs
/// while a keep-alive connection waits for its next request, so it also
/// closes HTTP/1 connections left idle.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a connection may stay open with no request being answered. It
/// bounds what the header timeout does not see: the first bytes, read before
/// the protocol is known, and an HTTP/2 connection with no request open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Admin connections open at once; past that, new ones wait in the listen
/// backlog until one closes.
pub const MAX_CONNECTIONS: usize = 256;

/// Serves the admin API on `listener` until `shutdown`; over HTTPS when
/// `tls` is given, each handshake with the configuration in it then.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Taken before accepting, so at the limit the listener is not read.
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // Never closed: it lives as long as this loop.
                Err(_) => return,
            },
            () = shutdown.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let (builder, admin, shutdown) = (builder.clone(), admin.clone(), shutdown.clone());
        let Some(tls) = &tls else {
            tokio::spawn(connection(stream, peer, builder, admin, shutdown, permit));
            continue;
        };
        let accept = tokio_rustls::TlsAcceptor::from(tls.load_full()).accept(stream);
        tokio::spawn(async move {
            match tokio::time::timeout(HEADER_READ_TIMEOUT, accept).await {
                Ok(Ok(stream)) => connection(stream, peer, builder, admin, shutdown, permit).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
            }
        });
    }
}

/// Serves one connection until the client closes it, it has been idle for
/// `IDLE_TIMEOUT`, or shutdown has let its open requests finish. Dropping
/// `_permit` makes room for another connection.
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    builder: auto::Builder<TokioExecutor>,
    admin: Arc<Admin>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            let busy = activity.enter();
            let admin = admin.clone();
            async move {
                let response = handle(req, &admin, peer).await;
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let idle = tokio::time::sleep(IDLE_TIMEOUT);
    tokio::pin!(idle);
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            () = activity.changed.notified() => {
                idle.as_mut().reset(Instant::now() + IDLE_TIMEOUT);
            }
            () = idle.as_mut(), if activity.is_idle() => {
                // Nothing is being answered, so nothing is lost by dropping it.
                tracing::debug!(%peer, "admin connection idle for {IDLE_TIMEOUT:?}; closed");
                return;
            }
            () = shutdown.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "admin connection error");
    }
}

/// Requests being answered on one connection. Every change is signalled on
/// `changed`, which restarts the connection's idle clock.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    /// One waiter, the connection task; `notify_one` keeps a signal sent
    /// while it was not waiting.
    changed: Notify,
}

impl Activity {
    fn enter(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
        Busy(self.clone())
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }
}

/// Held while one request is answered; dropping it ends that request.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_one();
    }
}
