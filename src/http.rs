//! The layer-7 data plane. One HTTP/1 engine (`h1`) serves every HTTP/1.x
//! client connection over the project's own codec (`codec`); a connection
//! that opens with the HTTP/2 preface is served by hyper (`h2`). Each request
//! is routed afresh from the current snapshot — by Host to a service — and
//! forwarded by the one attempt loop (`attempt`): by weight to a pool,
//! round-robin to an endpoint, over that endpoint's kept HTTP/1.1
//! connections. Proxy-made replies come from one table (`replies`). This
//! module reads snapshots; it never changes them.

mod attempt;
mod buffers;
pub mod codec;
mod h1;
mod h2;
mod head;
mod replies;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limit::Slot;
use crate::metrics::ListenerMetrics;
use crate::snapshot::SharedSnapshot;

/// What every connection of one listener shares.
pub struct Listening {
    /// The listener's configured bind address: its key in the snapshot.
    pub bind: SocketAddr,
    pub snapshot: SharedSnapshot,
    /// Cancelled to have connections finish their current request and close.
    pub stop: CancellationToken,
    /// Connection tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
}

/// Serves one accepted plain-TCP client connection until it closes.
pub fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    listening: Arc<Listening>,
    metrics: Arc<ListenerMetrics>,
    slot: Slot,
) -> impl std::future::Future<Output = ()> + Send {
    h1::serve(stream, peer, listening, metrics, slot)
}
