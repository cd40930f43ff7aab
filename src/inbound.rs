//! What the protocols' client connections share, below the accept loop
//! that starts them (`listener`): the listener they came through
//! (`Listening`), and the PROXY header a trusted front load balancer opens
//! them with (`proxy_header`).

pub(crate) mod proxy_header;

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::snapshot::SharedSnapshot;

/// What every connection of one listener shares.
pub struct Listening {
    /// The listener's configured bind address: its key in the snapshot.
    pub bind: SocketAddr,
    pub snapshot: SharedSnapshot,
    /// Cancelled to have connections finish their current request and close.
    pub stop: CancellationToken,
}
