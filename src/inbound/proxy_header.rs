//! Reading the PROXY protocol header a trusted front load balancer opens a
//! connection with, for the client's address, on http and tcp listeners
//! alike. The header is read whole within `header_read_timeout` and at most
//! `proxy_protocol::MAX_LEN` bytes; whatever the client sent after it is
//! handed back to go first. Parsing is `proxy_protocol`'s; whom to trust is
//! the listener's `accept_proxy` (see `snapshot::Router::trusts_proxy`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BufMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::metrics::Refusal;
use crate::proxy_protocol;

/// A connection's origin as its PROXY header gave it.
#[derive(Debug)]
pub(crate) struct Proxied {
    /// The client: the header's source, or the peer itself for a header
    /// that carries no address (a health check's LOCAL, v1 UNKNOWN).
    pub client: SocketAddr,
    /// The address the client connected to, when the header says.
    pub destination: Option<SocketAddr>,
    /// Bytes read past the header: the client's first data.
    pub leftover: Vec<u8>,
}

/// Reads the PROXY header `stream` opens with, within `timeout`.
pub(crate) async fn read(
    stream: &mut TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<Proxied, Refusal> {
    let mut buf = Vec::with_capacity(256);
    let read = async {
        loop {
            match proxy_protocol::parse(&buf) {
                Ok(Some(header)) => {
                    let (client, destination) = match header.addresses {
                        Some((source, destination)) => (source, Some(destination)),
                        None => (peer, None),
                    };
                    let leftover = buf.split_off(header.len);
                    return Ok(Proxied {
                        client,
                        destination,
                        leftover,
                    });
                }
                Ok(None) if buf.len() < proxy_protocol::MAX_LEN => {}
                Ok(None) => {
                    tracing::debug!(%peer, "PROXY header longer than allowed");
                    return Err(Refusal::ProxyHeader);
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "bad PROXY header");
                    return Err(Refusal::ProxyHeader);
                }
            }
            let room = proxy_protocol::MAX_LEN - buf.len();
            match stream.read_buf(&mut (&mut buf).limit(room)).await {
                Ok(0) | Err(_) => return Err(Refusal::Truncated),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(Refusal::TooSlow))
}
