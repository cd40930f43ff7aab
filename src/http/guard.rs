//! Client-side limits on an HTTP/1 connection that hyper's server does not give
//! with the behaviour an operator expects: a header-read timeout that starts at
//! a request's first byte (not while a keep-alive connection is idle), a
//! separate idle timeout between requests, a head-size limit, and proxy-made
//! 400/408/414/431 replies that carry a short text body. It sits between the
//! socket and hyper as an I/O wrapper and sees bytes only; the request service
//! tells it when requests start and end through `ConnActivity`.
//!
//! Hand-written because no crate offers these semantics on top of hyper 1.x.
//! HTTP/2 connections (seen by their preface) pass through untouched.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::ListenerMetrics;
use tokio::time::{Instant, Sleep};

/// Shared between the guard and the request service of one connection.
#[derive(Debug)]
pub struct ConnActivity {
    /// Where rejections are counted, the moment they happen.
    metrics: Arc<ListenerMetrics>,
    started: AtomicU64,
    finished: AtomicU64,
    /// Status of the request the guard rejected, 0 if none.
    rejected: AtomicU16,
    /// The connection was upgraded: it carries a tunnel, not requests.
    upgraded: AtomicBool,
    /// The guard's reader while a request is served, woken when it ends.
    reader: std::sync::Mutex<Option<std::task::Waker>>,
}

impl ConnActivity {
    pub fn new(metrics: Arc<ListenerMetrics>) -> Self {
        Self {
            metrics,
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            rejected: AtomicU16::new(0),
            upgraded: AtomicBool::new(false),
            reader: std::sync::Mutex::new(None),
        }
    }

    /// Called by the service when hyper hands it a request.
    pub fn request_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// Called when a response has been written out (its body dropped).
    pub fn request_finished(&self) {
        self.finished.fetch_add(1, Ordering::Release);
        if let Some(waker) = self.reader.lock().expect("reader lock").take() {
            waker.wake();
        }
    }

    /// Called before a 101 goes out: the guard stops watching the connection.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    /// The status the guard answered a bad request with, if it did.
    pub fn rejected(&self) -> Option<StatusCode> {
        StatusCode::from_u16(self.rejected.load(Ordering::Relaxed)).ok()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct GuardLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
}

impl GuardLimits {
    pub fn of(limits: &crate::config::Limits) -> Self {
        Self {
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            max_header_bytes: *limits.max_header_bytes.get_ref(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests; the idle timer runs.
    Idle,
    /// Bytes of a request head are arriving; the header timer runs.
    Head,
    /// The head is complete and hyper is about to hand it to the service.
    AwaitDispatch,
    /// A request is being served.
    Busy,
    /// HTTP/2: hyper's own connection management applies.
    Passthrough,
    /// A rejected request was answered and the write side shut: the rest of
    /// what the client sends is read and dropped for a moment, so closing
    /// with unread data does not reset the connection and destroy the reply.
    Closing(io::ErrorKind),
}

/// How long and how much a rejected connection is drained before it closes.
pub const LINGER: Duration = Duration::from_secs(1);
pub const LINGER_BYTES: usize = 256 * 1024;

pub struct Guarded<S> {
    inner: S,
    limits: GuardLimits,
    activity: Arc<ConnActivity>,
    phase: Phase,
    timer: Pin<Box<Sleep>>,
    /// Requests dispatched when the guard last looked.
    seen_started: u64,
    /// Bytes of the current head read so far.
    head_bytes: usize,
    /// Consecutive line feeds seen (carriage returns ignored); two end a head.
    newlines: u8,
    first_read: bool,
    line: [u8; 18],
    line_len: usize,
    has_body: bool,
    held: Vec<u8>,
    /// A proxy-made reply replacing hyper's bodiless one: bytes and how many are
    /// written. While set, hyper's writes are discarded.
    reply: Option<(Vec<u8>, usize)>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, limits: GuardLimits, activity: Arc<ConnActivity>) -> Self {
        Self {
            inner,
            limits,
            activity,
            phase: Phase::Idle,
            timer: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            seen_started: 0,
            head_bytes: 0,
            newlines: 0,
            first_read: true,
            line: [0; 18],
            line_len: 0,
            has_body: false,
            held: Vec::new(),
            reply: None,
        }
    }

    /// Follows the service's progress: a dispatched request makes the
    /// connection busy; once every request has finished it is idle again.
    fn refresh(&mut self) {
        if matches!(self.phase, Phase::Passthrough | Phase::Closing(_)) {
            return;
        }
        if self.activity.upgraded.load(Ordering::Acquire) {
            self.phase = Phase::Passthrough;
            return;
        }
        let started = self.activity.started.load(Ordering::Relaxed);
        if started != self.seen_started {
            self.seen_started = started;
            self.phase = Phase::Busy;
        }
        if self.phase == Phase::Busy && self.activity.finished.load(Ordering::Acquire) == started {
            self.phase = Phase::Idle;
            let deadline = Instant::now() + self.limits.idle_timeout;
            self.timer.as_mut().reset(deadline);
        }
    }

    /// Accounts for bytes just read while no request is being served.
    fn on_read(&mut self, bytes: &[u8]) -> Result<Option<usize>, StatusCode> {
        if std::mem::take(&mut self.first_read) && bytes.starts_with(b"PRI ") {
            self.phase = Phase::Passthrough;
            return Ok(None);
        }
        match self.phase {
            Phase::Idle => {
                self.phase = Phase::Head;
                self.head_bytes = 0;
                self.newlines = 0;
                self.line_len = 0;
                self.has_body = false;
                let deadline = Instant::now() + self.limits.header_read_timeout;
                self.timer.as_mut().reset(deadline);
            }
            Phase::Head => {}
            Phase::AwaitDispatch | Phase::Busy | Phase::Passthrough | Phase::Closing(_) => {
                return Ok(None)
            }
        }
        let mut end = None;
        for (i, &b) in bytes.iter().enumerate() {
            self.head_bytes += 1;
            match b {
                b'\n' => {
                    let line = &self.line[..self.line_len];
                    if line.starts_with(b"content-length:")
                        || line.starts_with(b"transfer-encoding:")
                    {
                        self.has_body = true;
                    }
                    self.line_len = 0;
                    self.newlines += 1;
                    if self.newlines == 2 {
                        self.phase = Phase::AwaitDispatch;
                        if !self.has_body {
                            end = Some(i + 1);
                        }
                        break;
                    }
                }
                b'\r' => {}
                _ => {
                    self.newlines = 0;
                    if self.line_len < self.line.len() {
                        self.line[self.line_len] = b.to_ascii_lowercase();
                        self.line_len += 1;
                    }
                }
            }
        }
        if self.head_bytes > self.limits.max_header_bytes {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        Ok(end)
    }

    fn reject(&mut self, status: StatusCode) -> Vec<u8> {
        self.activity
            .rejected
            .store(status.as_u16(), Ordering::Relaxed);
        self.activity.metrics.rejected(status);
        rejection(status, &self.limits)
    }
}

/// The proxy's reply to a request it rejects before routing: a short text
/// body saying what was wrong, then the connection closes.
pub fn rejection(status: StatusCode, limits: &GuardLimits) -> Vec<u8> {
    let detail = match status {
        StatusCode::REQUEST_TIMEOUT => format!(
            "the request head did not arrive within {:?}",
            limits.header_read_timeout
        ),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => format!(
            "the request head is larger than {} bytes",
            limits.max_header_bytes
        ),
        StatusCode::URI_TOO_LONG => "the request target is too long".to_owned(),
        _ => "the request could not be parsed as HTTP".to_owned(),
    };
    let reason = status.canonical_reason().unwrap_or("Error");
    let body = format!("{} {reason}: {detail}\n", status.as_u16());
    format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        body.len()
    )
    .into_bytes()
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// Writes what is left of a proxy-made reply; ready once all of it is out.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.reply {
            if *written == bytes.len() {
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Answers a rejected request from inside a read — a best-effort single
    /// write, as a client this slow or this broken has an empty send buffer —
    /// then shuts the write side and lingers before failing the read.
    fn reject_now(
        &mut self,
        cx: &mut Context<'_>,
        status: StatusCode,
        kind: io::ErrorKind,
    ) -> Poll<io::Result<()>> {
        let reply = self.reject(status);
        if let Poll::Ready(Ok(n)) = Pin::new(&mut self.inner).poll_write(cx, &reply) {
            if n < reply.len() {
                tracing::debug!(%status, "reply to a rejected request was cut short");
            }
        }
        // Pending or failed, the reply is as out as it will get.
        _ = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.phase = Phase::Closing(kind);
        self.head_bytes = 0;
        self.timer.as_mut().reset(Instant::now() + LINGER);
        self.poll_linger(cx, kind)
    }

    /// Reads and drops what the client still sends, until it closes, the
    /// linger time passes, or enough was dropped; then fails with `kind`.
    fn poll_linger(&mut self, cx: &mut Context<'_>, kind: io::ErrorKind) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.head_bytes += buf.filled().len();
                    if self.head_bytes > LINGER_BYTES {
                        break;
                    }
                }
                Poll::Ready(_) => break,
                Poll::Pending => {
                    if self.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    break;
                }
            }
        }
        Poll::Ready(Err(io::Error::new(kind, "request rejected")))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Phase::Closing(kind) = this.phase {
            return this.poll_linger(cx, kind);
        }
        this.refresh();
        let before = buf.filled().len();
        let polled = if this.held.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else if this.phase == Phase::Idle {
            let n = this.held.len().min(buf.remaining());
            buf.put_slice(&this.held[..n]);
            this.held.drain(..n);
            Poll::Ready(Ok(()))
        } else {
            *this.activity.reader.lock().expect("reader lock") = Some(cx.waker().clone());
            this.refresh();
            if this.phase == Phase::Idle {
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                match this.on_read(&buf.filled()[before..]) {
                    Err(status) => {
                        buf.set_filled(before);
                        return this.reject_now(cx, status, io::ErrorKind::InvalidData);
                    }
                    Ok(Some(end)) if before + end < buf.filled().len() => {
                        let mut held = buf.filled()[before + end..].to_vec();
                        held.append(&mut this.held);
                        this.held = held;
                        buf.set_filled(before + end);
                    }
                    Ok(_) => {}
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.phase == Phase::Busy {
                    *this.activity.reader.lock().expect("reader lock") = Some(cx.waker().clone());
                    // The request may have ended before the waker was stored.
                    this.refresh();
                }
                let timed = matches!(this.phase, Phase::Idle | Phase::Head | Phase::AwaitDispatch);
                if timed && this.timer.as_mut().poll(cx).is_ready() {
                    if this.phase == Phase::Idle {
                        // An idle keep-alive connection: end it as if the client
                        // had closed, which hyper handles quietly.
                        return Poll::Ready(Ok(()));
                    }
                    return this.reject_now(
                        cx,
                        StatusCode::REQUEST_TIMEOUT,
                        io::ErrorKind::TimedOut,
                    );
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.refresh();
        if this.reply.is_none()
            && matches!(this.phase, Phase::Head | Phase::AwaitDispatch)
            && buf.starts_with(b"HTTP/1.")
        {
            // No request was handed to the service, so this is hyper's own
            // bodiless error reply to a head it could not parse: send ours
            // with the same status instead.
            let status = buf
                .get(9..12)
                .and_then(|code| StatusCode::from_bytes(code).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            this.reply = Some((this.reject(status), 0));
        }
        if this.reply.is_some() {
            ready!(this.poll_reply(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.reply.is_none() && matches!(this.phase, Phase::Busy | Phase::Passthrough) {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        // Rare path: let poll_write inspect the first non-empty buffer.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        Pin::new(this).poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_reply(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_reply(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
