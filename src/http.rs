//! The layer-7 data plane. One HTTP/1 engine (`h1`) serves every HTTP/1.x
//! client connection over the project's own codec (`codec`); a connection
//! that opens with the HTTP/2 preface is served by hyper (`h2`). Each request
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

use crate::inbound::proxy_header;
pub(crate) use crate::inbound::Listening;
use crate::limit::Slot;
use crate::metrics::ListenerMetrics;
use transport::Prefixed;

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

/// Serves a client connection from a source trusted to open it with a
/// PROXY header: the header's client address is the one `X-Forwarded-For`
/// names.
pub(crate) async fn serve_proxied(
    mut stream: TcpStream,
    peer: SocketAddr,
    listening: Arc<Listening>,
    metrics: Arc<ListenerMetrics>,
    slot: Slot,
) {
    let timeout = listening.snapshot.load().limits.header_read_timeout;
    let proxied = match proxy_header::read(&mut stream, peer, timeout).await {
        Ok(proxied) => proxied,
        Err(refusal) => return metrics.refused(refusal),
    };
    let client = proxied.client;
    if proxied.leftover.is_empty() {
        h1::serve(stream, client, listening, metrics, slot).await;
    } else {
        let stream = Prefixed::new(proxied.leftover, stream);
        h1::serve(stream, client, listening, metrics, slot).await;
    }
}
