//! The Linux relay: each direction moves bytes socket → pipe → socket with
//! splice(2), so they never enter the proxy's memory (chosen by
//! measurement: see `relay`). One pipe per direction, made once that
//! direction turns out to be a bulk flow (a read fills a 4 KiB buffer);
//! until then, as HAProxy's `splice-auto` does, plain reads and writes
//! through a recycled buffer, so short exchanges and idle connections never
//! pay for pipes. Non-blocking splices driven by tokio's readiness of the
//! two sockets, through rustix's safe calls.
//!
//! Owns the byte moving only: what goes first, the counters and whether to
//! screen for a PROXY header are handed in by `relay`, which also owns
//! drain and migrate.

use std::io;
use std::os::fd::OwnedFd;

use prometheus::IntCounter;
use rustix::buffer::spare_capacity;
use rustix::net::Shutdown;
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::relay::{could_open_header, opens_with_header, untrusted_header, SCREENED};
use crate::http::buffers;

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
        if screen {
            let held = screen_first(client).await?;
            if let Some(bytes) = bytes_in {
                bytes.inc_by(held.len() as u64);
            }
            write_all(upstream, &held).await?;
        }
        one_way(client, upstream, bytes_in).await
    };
    let down = one_way(upstream, client, bytes_out);
    tokio::try_join!(up, down).map(|_| ())
}

/// Reads `from`'s first bytes until they can be judged (`SCREENED` of
/// them, or fewer that cannot open a PROXY header, or the end of the
/// stream), and refuses a PROXY header (`InvalidData`); else returns them.
async fn screen_first(from: &TcpStream) -> io::Result<Vec<u8>> {
    let mut held = Vec::with_capacity(SCREENED);
    while held.len() < SCREENED {
        let mut more = [0; SCREENED];
        let want = SCREENED - held.len();
        from.readable().await?;
        let n = match from.try_read(&mut more[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        held.extend_from_slice(&more[..n]);
        if !could_open_header(&held) {
            break;
        }
    }
    if opens_with_header(&held) {
        return Err(untrusted_header());
    }
    Ok(held)
}

/// Moves `from`'s bytes to `to` until `from` ends, then shuts `to`'s
/// writing side.
///
/// Short exchanges go through plain reads and writes and a recycled
/// buffer; the pipe is made, and splice takes over for good, once one read
/// fills that buffer (a bulk flow). So a connection that only trades a
/// request and a reply, or sits idle, never pays for a pipe: two more
/// system calls to make it, four descriptors to hold and close.
async fn one_way(from: &TcpStream, to: &TcpStream, bytes: Option<&IntCounter>) -> io::Result<()> {
    loop {
        // A buffer only once there is something to read: an idle
        // connection holds none.
        from.readable().await?;
        let mut buf = buffers::take();
        let read = from
            .async_io(Interest::READABLE, || {
                Ok(rustix::io::read(from, spare_capacity(&mut buf))?)
            })
            .await;
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                buffers::give(buf);
                return Err(e);
            }
        };
        if n == 0 {
            buffers::give(buf);
            rustix::net::shutdown(to, Shutdown::Write)?;
            return Ok(());
        }
        if let Some(bytes) = bytes {
            bytes.inc_by(n as u64);
        }
        let bulk = buf.len() == buf.capacity();
        let written = write_all(to, &buf).await;
        buffers::give(buf);
        written?;
        if bulk {
            break;
        }
    }
    let (pipe_out, pipe_in) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
    loop {
        // The pipe is empty here, so a splice that would block waits on
        // the socket, never on the pipe: readiness stays truthful.
        // `async_io` takes from the task's cooperative budget, as the copy
        // loop's reads do, so a busy relay lets the worker's other tasks run.
        let filled = from
            .async_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe_in, None, CHUNK, FLAGS)?)
            })
            .await?;
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
        let n = to
            .async_io(Interest::WRITABLE, || {
                Ok(splice(pipe_out, None, to, None, pending, FLAGS)?)
            })
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        pending -= n;
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
