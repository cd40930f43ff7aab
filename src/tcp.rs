//! The layer-4 data plane: a tcp listener's connection is routed once, when
//! it opens, and then relayed byte for byte until either side ends it.
//!
//! Routing: to the listener's one service, or with `sni` by the server name
//! of the TLS ClientHello (`client_hello`), read without being consumed —
//! the bytes go upstream exactly as they came — within
//! `header_read_timeout` and `MAX_FIRST_FLIGHT` bytes. Then a pool by weight and an
//! endpoint round-robin (the same pick as layer 7), a new upstream
//! connection, and on a connect failure another endpoint or pool, up to
//! `retries`, with passive ejection: the same policy as the attempt loop,
//! for a request whose only step is connecting. A pool with `send_proxy`
//! gets a PROXY header first. The relay (`relay`) passes a half-close on
//! and keeps the other direction flowing.
//!
//! A connection counts as work on its pool until it ends, so drains and
//! `safe_to_remove` see it; at the drain deadline it is closed — or, in a
//! service with `migrate`, closed at its turn within that window. This
//! module reads snapshots; it never changes them.

pub mod client_hello;
#[cfg(not(target_os = "linux"))]
mod copy;
mod relay;
#[cfg(target_os = "linux")]
mod splice;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BufMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::inbound::{proxy_header, Listening};
use crate::limit::Slot;
use crate::metrics::{ListenerMetrics, Refusal, UpstreamErrorKind};
use crate::snapshot::{Router, Service, Tried};
use crate::upstream::RawConn;
use client_hello::{Hello, HelloError};

/// Most bytes read from a client before its connection is routed: a
/// ClientHello larger than this (one full TLS record) is refused.
pub const MAX_FIRST_FLIGHT: usize = 16 * 1024;

/// Serves one accepted connection of a tcp listener until both directions
/// end, or its pool's drain closes it. `proxied`: the source is trusted to
/// open with a PROXY header.
pub(crate) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    proxied: bool,
    listening: Arc<Listening>,
    metrics: Arc<ListenerMetrics>,
    slot: Slot,
) {
    let _slot = slot;
    let _open = metrics.open();
    // One snapshot for the whole routing, held until the connection is
    // counted: the limits and routes it began under.
    let snapshot = listening.snapshot.load_full();
    let Some(router) = snapshot.router(listening.bind) else {
        return;
    };
    let timeout = snapshot.limits.header_read_timeout;
    let deadline = Instant::now() + timeout;
    let mut origin = Origin {
        client: peer,
        destination: None,
    };
    let mut first = Vec::new();
    if proxied {
        match proxy_header::read(&mut stream, peer, timeout).await {
            Ok(header) => {
                origin.client = header.client;
                origin.destination = header.destination;
                first = header.leftover;
            }
            Err(refusal) => return metrics.refused(refusal),
        }
    }
    let service = match route(&mut stream, &mut first, router, deadline).await {
        Ok(service) => service,
        Err(refusal) => {
            tracing::debug!(%peer, reason = refusal.as_str(), "connection refused before routing");
            return metrics.refused(refusal);
        }
    };
    let Some(upstream) = connect(&service).await else {
        return;
    };
    if let Some(counter) = router.tcp_connections(&service, upstream.pool) {
        counter.inc();
    }
    let screen_proxy = !proxied && !router.accept_proxy.is_empty();
    drop(snapshot);
    relay::run(relay::Relay {
        client: stream,
        first,
        origin,
        upstream,
        service: &service,
        metrics: &metrics,
        screen_proxy,
    })
    .await;
}

/// Where a connection comes from and goes to, as a PROXY header tells it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    pub client: SocketAddr,
    /// The address the client connected to, when a PROXY header said;
    /// else the client socket's local address, looked up when needed.
    pub destination: Option<SocketAddr>,
}

/// The service for a new connection. With `sni`, reads the ClientHello
/// into `first` and routes by its server name.
async fn route(
    stream: &mut TcpStream,
    first: &mut Vec<u8>,
    router: &Router,
    deadline: Instant,
) -> Result<Arc<Service>, Refusal> {
    let mut name = None;
    if router.sni {
        read_hello(stream, first, deadline).await?;
        if let Ok(Hello::Complete { server_name, .. }) = client_hello::parse(first) {
            name = server_name;
        }
    }
    router
        .route(name.as_deref())
        .cloned()
        .ok_or(Refusal::NoService)
}

/// Reads into `buf` until it holds a whole ClientHello.
async fn read_hello(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<(), Refusal> {
    loop {
        match client_hello::parse(buf) {
            Ok(Hello::Complete { .. }) => return Ok(()),
            Ok(Hello::Partial) if buf.len() >= MAX_FIRST_FLIGHT => return Err(Refusal::TooLarge),
            Ok(Hello::Partial) => {}
            Err(HelloError::NotTls) if relay::opens_with_header(buf) => {
                return Err(Refusal::ProxyHeader)
            }
            Err(HelloError::NotTls) => return Err(Refusal::NotTls),
            Err(_) => return Err(Refusal::BadHello),
        }
        // Into spare capacity, so a hello trickling in byte by byte costs
        // no refilling of the buffer.
        buf.reserve(4096);
        let room = MAX_FIRST_FLIGHT - buf.len();
        let mut spare = (&mut *buf).limit(room);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut spare)).await {
            Ok(Ok(0) | Err(_)) => return Err(Refusal::Truncated),
            Ok(Ok(_)) => {}
            Err(_) => return Err(Refusal::TooSlow),
        }
    }
}

/// An upstream connection for a layer-4 client, and what it holds.
pub(crate) struct Upstream {
    pub conn: RawConn<TcpStream>,
    pub pool: usize,
    pub endpoint: usize,
    /// The connection's work on its pool, for drains and `safe_to_remove`.
    pub _work: crate::drain::Work,
    /// Cancelled at the deadline of a drain begun while it was open.
    pub cut: tokio_util::sync::CancellationToken,
    /// The migration it joins if its pool leaves rotation (`migrate`).
    pub migration: Arc<crate::upstream::Migration>,
}

/// Connects to an endpoint picked by weight, and on failure to others, up
/// to the service's `retries`; `None` when none could be reached.
async fn connect(service: &Arc<Service>) -> Option<Upstream> {
    let Some((mut pool_at, mut endpoint_at)) = service.pick() else {
        service.metrics.unavailable.inc();
        return None;
    };
    let mut tried = Tried::default();
    loop {
        let pool = &service.pools[pool_at];
        let endpoint = &pool.endpoints[endpoint_at];
        tried.push(pool_at, endpoint_at);
        // Taken before connecting: a drain that begins meanwhile counts it.
        let work = pool.activity.start();
        let cut = endpoint.conns.cut_token();
        let migration = endpoint.conns.migration();
        match endpoint.conns.connect().await {
            Ok(conn) => {
                endpoint.health.record_success();
                return Some(Upstream {
                    conn,
                    pool: pool_at,
                    endpoint: endpoint_at,
                    _work: work,
                    cut,
                    migration,
                });
            }
            Err(e) => {
                pool.metrics.upstream_error(UpstreamErrorKind::Connect);
                service.eject_on_failure(pool, endpoint);
                tracing::warn!(service = %service.name, pool = %pool.name, error = %e, "upstream connect failed");
            }
        }
        let next = (tried.len() <= service.retries as usize)
            .then(|| service.pick_retry(pool_at, &tried))
            .flatten();
        let Some(next) = next else {
            tracing::warn!(service = %service.name, "no endpoint could be reached: connection closed");
            return None;
        };
        pool.metrics.retry();
        (pool_at, endpoint_at) = next;
    }
}
