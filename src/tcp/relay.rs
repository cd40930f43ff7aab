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

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{Origin, Upstream};
use crate::http::transport::Prefixed;
use crate::metrics::{ListenerMetrics, Refusal};
use crate::proxy_protocol;
use crate::snapshot::Service;

/// Bytes each direction moves per read and write.
const BUFFER: usize = 16 * 1024;

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
        mut upstream,
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
    let copy = async {
        match variant() {
            #[cfg(target_os = "linux")]
            Variant::Splice => {
                super::splice::relay(
                    &client,
                    &upstream.conn.stream,
                    &prefix,
                    counters,
                    screen_proxy,
                )
                .await
            }
            Variant::Copy(size) => {
                copy(
                    client,
                    &mut upstream.conn.stream,
                    prefix,
                    counters,
                    screen_proxy,
                    size,
                )
                .await
            }
        }
    };
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

/// Which relay moves the bytes (a measurement switch, `CUTOVER_TCP_RELAY`).
#[derive(Clone, Copy)]
enum Variant {
    Copy(usize),
    #[cfg(target_os = "linux")]
    Splice,
}

fn variant() -> Variant {
    static VARIANT: std::sync::OnceLock<Variant> = std::sync::OnceLock::new();
    *VARIANT.get_or_init(|| {
        match std::env::var("CUTOVER_TCP_RELAY").as_deref() {
            Ok("copy64") => Variant::Copy(64 * 1024),
            Ok("copy256") => Variant::Copy(256 * 1024),
            #[cfg(target_os = "linux")]
            Ok("splice") => Variant::Splice,
            _ => Variant::Copy(BUFFER),
        }
    })
}

/// Relays with tokio's copy loop through two `size`-byte buffers.
async fn copy(
    client: TcpStream,
    upstream: &mut TcpStream,
    prefix: Vec<u8>,
    [bytes_in, bytes_out]: [Option<&IntCounter>; 2],
    screen: bool,
    size: usize,
) -> io::Result<()> {
    let mut client = Prefixed::new(prefix, Counted::new(client, bytes_in, screen));
    let mut to_upstream = Counted::new(upstream, bytes_out, false);
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut to_upstream, size, size)
        .await
        .map(|_| ())
}

/// A stream whose reads are counted into `bytes` as they happen, so a
/// long-lived connection's traffic shows while it flows.
struct Counted<'a, S> {
    inner: S,
    bytes: Option<&'a IntCounter>,
    /// Check the first data read for a PROXY header, and refuse it.
    screen: bool,
    /// First bytes held back while they could still open a PROXY header,
    /// so one sent a byte at a time is screened too.
    held: Vec<u8>,
}

impl<'a, S> Counted<'a, S> {
    fn new(inner: S, bytes: Option<&'a IntCounter>, screen: bool) -> Self {
        Self {
            inner,
            bytes,
            screen,
            held: Vec::new(),
        }
    }
}

/// Bytes `proxy_protocol::looks_like` is asked to judge.
const SCREENED: usize = 5;

/// Whether `bytes`, fewer than `SCREENED`, could be the start of a PROXY
/// header (v1 or v2), so more are needed to judge them.
fn could_open_header(bytes: &[u8]) -> bool {
    [&b"PROXY"[..], &b"\r\n\r\n\0"[..]]
        .iter()
        .any(|opening| opening.starts_with(bytes))
}

impl<S: AsyncRead + Unpin> Counted<'_, S> {
    /// Reads the first bytes until they can be judged (`SCREENED` of them,
    /// or fewer that cannot open a header, or the end of the stream), and
    /// refuses a PROXY header.
    fn poll_screen(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.held.len() < SCREENED {
            let mut more = [0; SCREENED];
            let mut more = ReadBuf::new(&mut more[..SCREENED - self.held.len()]);
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut more))?;
            if more.filled().is_empty() {
                break;
            }
            self.held.extend_from_slice(more.filled());
            if !could_open_header(&self.held) {
                break;
            }
        }
        self.screen = false;
        if self.held.len() >= SCREENED && proxy_protocol::looks_like(&self.held) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "PROXY header from an untrusted source",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.screen {
            std::task::ready!(this.poll_screen(cx))?;
        }
        if !this.held.is_empty() {
            let n = this.held.len().min(buf.remaining());
            buf.put_slice(&this.held[..n]);
            this.held.drain(..n);
            if let Some(bytes) = this.bytes {
                bytes.inc_by(n as u64);
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(bytes) = this.bytes {
            bytes.inc_by((buf.filled().len() - before) as u64);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
