//! Client transports: what the engines need of a client stream
//! (`Transport`: plain TCP, TLS the proxy terminated, or either with bytes
//! already read put back in front, `Prefixed`, so hyper reads an HTTP/2
//! connection from its preface).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::codec::Scheme;

/// A client stream the engine serves: plain TCP, or any transport that
/// wraps one (TLS, a PROXY-protocol prefix).
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// How the client reached the proxy, for `X-Forwarded-Proto`.
    const SCHEME: Scheme = Scheme::Http;

    /// Whether `poll_readable` tells real readiness, so that a read after it
    /// that finds nothing can give up rather than wait.
    const READINESS: bool = false;

    /// Ready once the client has sent something (or closed), without taking
    /// it; a transport that cannot tell is always ready and its read waits.
    fn poll_readable(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for TcpStream {
    const READINESS: bool = true;

    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Not `readable()`: its waiter node would sit in every idle task.
        self.poll_read_ready(cx)
    }
}

pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    /// Bytes of `prefix` already read.
    taken: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            taken: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.taken < this.prefix.len() {
            let n = (this.prefix.len() - this.taken).min(buf.remaining());
            buf.put_slice(&this.prefix[this.taken..this.taken + n]);
            this.taken += n;
            if this.taken == this.prefix.len() {
                this.prefix = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Transport> Transport for Prefixed<S> {
    const SCHEME: Scheme = S::SCHEME;
}

/// TLS the proxy terminated: ready when rustls holds decrypted bytes (or
/// the close) already, else when the socket is. A ready socket may still
/// hold only part of a record, so a read after it waits.
impl<S: Transport> Transport for tokio_rustls::server::TlsStream<S> {
    const SCHEME: Scheme = Scheme::Https;

    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (io, conn) = self.get_mut();
        if !conn.wants_read() {
            return Poll::Ready(Ok(()));
        }
        io.poll_readable(cx)
    }
}
