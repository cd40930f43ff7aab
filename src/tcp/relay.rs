//! The layer-4 relay: bytes both ways between a client and its upstream,
//! counted per listener and direction as they pass, until both directions
//! end. A FIN from one side is passed on as a FIN to the other (a write
//! shutdown), and the other direction keeps flowing; a reset ends both.
//! Ends early, closing both sides, when the pool's drain closes the
//! connection: at the drain deadline, or at the connection's turn in a
//! `migrate` window.
//!
//! What the client sent before routing (a ClientHello), and a PROXY header
//! for pools with `send_proxy`, go upstream first.
//!
//! How the bytes move, by measurement (`benches/compare/README.md`, "The
//! layer-4 relay"): on Linux by splice(2), socket → pipe → socket, never
//! through the proxy's memory (`splice`); elsewhere through tokio's copy
//! loop (`copy`). One iperf3 stream through cutover pinned to one core,
//! against `copy_bidirectional` with 16, 64 and 256 KiB buffers, medians of
//! 3 rounds (`python3 benches/compare/relay_variants.py --rounds 3
//! --duration 8` at commit 24d3b04):
//!
//! | relay   | CPU s per GB | RSS KiB per idle connection | kernel slab KiB |
//! | ------- | ------------ | --------------------------- | --------------- |
//! | copy16  | 0.826        | 26.7                        | 14.0            |
//! | copy64  | 0.651        | 74.2                        | 13.9            |
//! | copy256 | 0.464        | 263.1                       | 14.9            |
//! | splice  | 0.386        | 2.9                         | 24.3            |
//!
//! splice spends half the CPU per byte of the 16 KiB copy and 17% less
//! than the 256 KiB one; its two pipes (4 descriptors) cost about 10 KiB
//! of kernel memory per connection, far less than copy buffers. GB/s was
//! bound by the load side in every run and decided nothing. The pipes are
//! made only once a direction carries a bulk flow: with them made for
//! every connection, opening one cost 14% more CPU than HAProxy's; without,
//! about the same (`benches/compare/run --tcp-only`).

use std::io;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{Origin, Upstream};
use crate::metrics::{ListenerMetrics, Refusal};
use crate::proxy_protocol;
use crate::snapshot::Service;

/// A routed connection, ready to relay.
pub(super) struct Relay<'a> {
    pub client: TcpStream,
    /// Client bytes read while routing, to go upstream first.
    pub first: Vec<u8>,
    pub origin: Origin,
    pub upstream: Upstream,
    pub service: &'a Arc<Service>,
    pub metrics: &'a ListenerMetrics,
    /// Refuse client data that opens with a PROXY header: the listener
    /// trusts PROXY headers from some sources, and this is not one.
    pub screen_proxy: bool,
}

/// How a relay ended.
enum End {
    /// Both directions ended, or one failed.
    Done(io::Result<()>),
    /// Closed by its pool's drain: at the deadline, or at its migrate turn.
    Drained(&'static str),
}

/// Relays until both directions end or a drain closes the connection.
pub(super) async fn run(relay: Relay<'_>) {
    let Relay {
        client,
        first,
        origin,
        upstream,
        service,
        metrics,
        screen_proxy,
    } = relay;
    let pool = &service.pools[upstream.pool];
    let endpoint = &pool.endpoints[upstream.endpoint];
    let [bytes_in, bytes_out] = match &metrics.tcp_bytes {
        Some([bytes_in, bytes_out]) => [Some(bytes_in), Some(bytes_out)],
        None => [None, None],
    };
    let mut prefix = Vec::new();
    if let Some(version) = pool.send_proxy {
        match origin.destination.map_or_else(|| client.local_addr(), Ok) {
            Ok(destination) => {
                proxy_protocol::write(version, origin.client, destination, &mut prefix);
            }
            Err(e) => {
                tracing::debug!(client = %origin.client, error = %e, "client socket gone before relaying");
                return;
            }
        }
    }
    if let Some(counter) = bytes_in {
        counter.inc_by(first.len() as u64);
    }
    if prefix.is_empty() {
        prefix = first;
    } else {
        prefix.extend_from_slice(&first);
    }
    let counters = [bytes_in, bytes_out];
    #[cfg(not(target_os = "linux"))]
    let mut upstream = upstream;
    #[cfg(target_os = "linux")]
    let copy = super::splice::relay(
        &client,
        &upstream.conn.stream,
        &prefix,
        counters,
        screen_proxy,
    );
    #[cfg(not(target_os = "linux"))]
    let copy = super::copy::relay(
        client,
        &mut upstream.conn.stream,
        prefix,
        counters,
        screen_proxy,
    );
    let end = if service.migrate.is_some() {
        let ticket = upstream.migration.join();
        tokio::select! {
            result = copy => End::Done(result),
            () = ticket.turn() => End::Drained("moved at its turn in the pool's migrate window"),
        }
    } else {
        tokio::select! {
            result = copy => End::Done(result),
            () = upstream.cut.cancelled() => End::Drained("closed at its pool's drain deadline"),
        }
    };
    match end {
        End::Done(Ok(_)) => {}
        End::Done(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::debug!(client = %origin.client, "PROXY header from an untrusted source: closed");
            metrics.refused(Refusal::ProxyHeader);
        }
        End::Done(Err(e)) => {
            tracing::debug!(client = %origin.client, endpoint = %endpoint.address, error = %e, "tcp relay ended");
        }
        End::Drained(how) => {
            pool.metrics.drain_closed.inc();
            tracing::info!(service = %service.name, pool = %pool.name, endpoint = %endpoint.address, "tcp connection {how}");
        }
    }
}

/// Bytes a PROXY header screen judges (`proxy_protocol::looks_like`).
pub(super) const SCREENED: usize = 5;

/// Whether `bytes`, fewer than `SCREENED`, could be the start of a PROXY
/// header (v1 or v2), so more are needed to judge them.
pub(super) fn could_open_header(bytes: &[u8]) -> bool {
    [&b"PROXY"[..], &b"\r\n\r\n\0"[..]]
        .iter()
        .any(|opening| opening.starts_with(bytes))
}

/// Whether a client's first bytes are a PROXY header: the one rule for
/// refusing one from a source the listener does not trust, whether they
/// came while routing by SNI or through the relay.
pub(super) fn opens_with_header(bytes: &[u8]) -> bool {
    bytes.len() >= SCREENED && proxy_protocol::looks_like(bytes)
}

/// The error that refuses a PROXY header from an untrusted source.
pub(super) fn untrusted_header() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "PROXY header from an untrusted source",
    )
}
