//! The portable relay, used where splice(2) is not (every OS but Linux):
//! tokio's copy loop through two 16 KiB buffers, each direction's reads
//! counted as they happen. Owns only the byte moving; `relay` owns what
//! goes first, drain and migrate.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::relay::{could_open_header, opens_with_header, untrusted_header, SCREENED};
use crate::http::transport::Prefixed;

/// Bytes each direction moves per read and write.
const BUFFER: usize = 16 * 1024;

/// Relays until both directions end (each end passed on as a write
/// shutdown), or one fails. `prefix` goes upstream before any client byte.
pub(super) async fn relay(
    client: TcpStream,
    upstream: &mut TcpStream,
    prefix: Vec<u8>,
    [bytes_in, bytes_out]: [Option<&IntCounter>; 2],
    screen: bool,
) -> io::Result<()> {
    let mut client = Prefixed::new(prefix, Counted::new(client, bytes_in, screen));
    let mut to_upstream = Counted::new(upstream, bytes_out, false);
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut to_upstream, BUFFER, BUFFER)
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
        if opens_with_header(&self.held) {
            return Poll::Ready(Err(untrusted_header()));
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
