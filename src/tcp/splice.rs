//! The Linux relay: each direction moves bytes socket → pipe → socket with
//! splice(2), so they never enter the proxy's memory. One pipe per
//! direction, made when the relay starts; non-blocking splices driven by
//! tokio's readiness of the two sockets.
//!
//! Owns the byte moving only: what goes first, the counters and a PROXY
//! screen are handed in by `relay`, which also owns drain and migrate.

use std::io;
use std::os::fd::OwnedFd;

use prometheus::IntCounter;
use rustix::net::Shutdown;
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::proxy_protocol;

/// Most bytes one splice into a pipe asks for: a default pipe's capacity
/// (16 pages); the kernel moves what is there, up to that.
const CHUNK: usize = 64 * 1024;

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

/// Relays until both directions end (each end passed on as a write
/// shutdown), or one fails. `prefix` goes upstream before any client byte.
pub(super) async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    prefix: &[u8],
    [bytes_in, bytes_out]: [Option<&IntCounter>; 2],
    screen: bool,
) -> io::Result<()> {
    let up = async {
        write_all(upstream, prefix).await?;
        one_way(client, upstream, bytes_in, screen).await
    };
    let down = one_way(upstream, client, bytes_out, false);
    tokio::try_join!(up, down).map(|_| ())
}

/// Moves `from`'s bytes to `to` until `from` ends, then shuts `to`'s
/// writing side. With `screen`, the first bytes are peeked at first and a
/// PROXY header refused (`InvalidData`).
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    bytes: Option<&IntCounter>,
    screen: bool,
) -> io::Result<()> {
    if screen {
        let mut head = [0u8; 16];
        let n = from.peek(&mut head).await?;
        if n >= 5 && proxy_protocol::looks_like(&head[..n]) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "PROXY header from an untrusted source",
            ));
        }
    }
    let (pipe_out, pipe_in) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
    loop {
        // The pipe is empty here, so a splice that would block waits on
        // the socket, never on the pipe: readiness stays truthful.
        let filled = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe_in, None, CHUNK, FLAGS)?)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if filled == 0 {
            rustix::net::shutdown(to, Shutdown::Write)?;
            return Ok(());
        }
        if let Some(bytes) = bytes {
            bytes.inc_by(filled as u64);
        }
        drain(&pipe_out, to, filled).await?;
    }
}

/// Splices `pending` bytes from the pipe into `to`.
async fn drain(pipe_out: &OwnedFd, to: &TcpStream, mut pending: usize) -> io::Result<()> {
    while pending > 0 {
        to.writable().await?;
        match to.try_io(Interest::WRITABLE, || {
            Ok(splice(pipe_out, None, to, None, pending, FLAGS)?)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => pending -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `buf` to `to`.
async fn write_all(to: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        to.writable().await?;
        match to.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
