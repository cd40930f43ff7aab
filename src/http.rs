//! The layer-7 data plane. One HTTP/1 engine (`h1`) serves every HTTP/1.x
//! client connection over the project's own codec (`codec`); a connection
//! that opens with the HTTP/2 preface, or that chose `h2` by ALPN on a
//! listener terminating TLS (`tls`), is served by hyper (`h2`). Each request
//! is routed afresh from the current snapshot — by Host to a service — and
//! forwarded by the one attempt loop (`attempt`): by weight to a pool,
//! round-robin to an endpoint, over that endpoint's kept HTTP/1.1
//! connections. Proxy-made replies come from one table (`replies`). This
//! module reads snapshots; it never changes them.

mod attempt;
pub(crate) mod buffers;
pub mod codec;
mod h1;
mod h2;
mod head;
mod replies;
pub(crate) mod transport;
mod upstream_h2;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::config::Alpn;
use crate::inbound::proxy_header;
pub(crate) use crate::inbound::Listening;
use crate::limit::Slot;
use crate::metrics::ListenerMetrics;
use crate::tls::ListenerTls;
use transport::{Prefixed, Transport};

/// Serves one accepted plain-TCP client connection until it closes.
pub(crate) fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    listening: Arc<Listening>,
    metrics: Arc<ListenerMetrics>,
    slot: Slot,
) -> impl std::future::Future<Output = ()> + Send {
    h1::serve(stream, peer, listening, metrics, slot)
}

/// Serves a client connection that is not plain HTTP from its first byte:
/// from a source trusted to open it with a PROXY header (whose client
/// address is the one `X-Forwarded-For` names), or on a listener that
/// terminates TLS, or both — the header first, then the handshake.
pub(crate) async fn serve_wrapped(
    mut stream: TcpStream,
    peer: SocketAddr,
    proxied: bool,
    tls: Option<Arc<ListenerTls>>,
    listening: Arc<Listening>,
    metrics: Arc<ListenerMetrics>,
    slot: Slot,
) {
    let (client, leftover) = if proxied {
        let timeout = listening.snapshot.load().limits.header_read_timeout;
        match proxy_header::read(&mut stream, peer, timeout).await {
            Ok(proxied) => (proxied.client, proxied.leftover),
            Err(refusal) => return metrics.refused(refusal),
        }
    } else {
        (peer, Vec::new())
    };
    let tls = tls.as_deref();
    if leftover.is_empty() {
        serve_over(stream, client, tls, listening, metrics, slot).await;
    } else {
        let stream = Prefixed::new(leftover, stream);
        serve_over(stream, client, tls, listening, metrics, slot).await;
    }
}

async fn serve_over<S: Transport>(
    stream: S,
    client: SocketAddr,
    tls: Option<&ListenerTls>,
    listening: Arc<Listening>,
    metrics: Arc<ListenerMetrics>,
    slot: Slot,
) {
    match tls {
        // Boxed: the handshake's and HTTP/2's state is no part of a plain
        // connection's task.
        Some(tls) => Box::pin(terminate(stream, client, tls, listening, metrics, slot)).await,
        None => h1::serve(stream, client, listening, metrics, slot).await,
    }
}

/// The TLS handshake, within `handshake_timeout`; then the engine ALPN
/// chose.
async fn terminate<S: Transport>(
    stream: S,
    client: SocketAddr,
    tls: &ListenerTls,
    listening: Arc<Listening>,
    metrics: Arc<ListenerMetrics>,
    slot: Slot,
) {
    let timeout = listening.snapshot.load().limits.handshake_timeout;
    // Boxed, like HTTP/2 below: neither is part of an idle HTTP/1 task.
    let Some(accepted) = Box::pin(tls.accept(stream, timeout, &metrics)).await else {
        return;
    };
    if accepted.alpn == Some(Alpn::H2) {
        let _slot = slot;
        let _open = metrics.open();
        Box::pin(h2::serve(accepted.stream, client, &listening, &metrics)).await;
    } else {
        h1::serve(accepted.stream, client, listening, metrics, slot).await;
    }
}
