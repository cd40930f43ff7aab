//! The HTTP/1 engine's client side: one connection task reads each request
//! head (`codec`), routes it afresh from the current snapshot, forwards it
//! through the attempt loop (`attempt`, with `exchange` as its HTTP/1 half)
//! and relays the response, then reads the next one — keep-alive, pipelined,
//! HTTP/1.0, chunked or `Content-Length` bodies, `Expect`, and upgrades alike.
//! A connection that opens with the HTTP/2 preface goes to `h2`.
//!
//! Every wait has a deadline: the head (`header_read_timeout`, from its first
//! byte), the quiet between requests (`idle_timeout`), each stall of a
//! request body (`body_read_timeout`) and of the client reading a response
//! (`send_timeout`). An idle connection holds no buffer.

pub(crate) mod exchange;

use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::attempt::{self, Outcome};
use super::codec::{self, RequestBody};
use super::replies::{self, Reply};
use super::transport::{Prefixed, Transport};
use super::{buffers, Listening};
use crate::limit::Slot;
use crate::metrics::ListenerMetrics;
use exchange::H1Exchange;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request body up to this size is read and dropped after a proxy-made
/// reply, so the connection stays usable; a larger one closes it.
const DISCARD_LIMIT: u64 = 64 * 1024;
/// How long and how much a refused connection is read and dropped before it
/// closes, so the reply is not lost to a reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// Limits of one connection, from the snapshot its request started under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub send_timeout: Duration,
}

impl Limits {
    fn of(limits: &crate::config::Limits) -> Self {
        Self {
            max_header_bytes: *limits.max_header_bytes.get_ref(),
            header_read_timeout: limits.header_read_timeout,
            body_read_timeout: limits.body_read_timeout,
            send_timeout: limits.send_timeout,
        }
    }
}

/// What the requests of one client connection share; built per request
/// from the connection's few fields, so none of it is kept between requests.
pub(crate) struct Conn<'a> {
    pub peer: &'a SocketAddr,
    pub listening: &'a Listening,
    pub metrics: &'a ListenerMetrics,
    pub limits: Limits,
    /// The client's IP as an `X-Forwarded-For` entry: up to 45 bytes.
    client_ip: ([u8; 45], usize),
    /// How the client reached the proxy.
    scheme: codec::Scheme,
}

impl<'a> Conn<'a> {
    fn new(
        peer: &'a SocketAddr,
        listening: &'a Listening,
        metrics: &'a ListenerMetrics,
        scheme: codec::Scheme,
    ) -> Self {
        let mut ip = [0u8; 45];
        let len = {
            let mut cursor = io::Cursor::new(&mut ip[..]);
            _ = write!(cursor, "{}", peer.ip());
            cursor.position() as usize
        };
        Self {
            peer,
            listening,
            metrics,
            limits: Limits::of(&listening.snapshot.load().limits),
            client_ip: (ip, len),
            scheme,
        }
    }

    pub fn client_ip(&self) -> &[u8] {
        &self.client_ip.0[..self.client_ip.1]
    }

    /// The connection is to close after the current request.
    pub fn stopping(&self) -> bool {
        self.listening.stop.is_cancelled()
    }
}

/// What the connection loop does after a request.
enum Next {
    KeepAlive,
    Close,
    /// The HTTP/2 preface arrived: hand the connection to `h2`.
    Http2,
}

/// Serves one accepted client connection until it closes, or until the
/// listener's `stop` asks it to finish its current request and close.
///
/// An idle connection is this function's own state and nothing else — the
/// stream, a timer, the stop signal — so it is kept small: everything a
/// request needs lives in a box for the length of the request.
///
/// A plain function returning an `async move` block, not an `async fn`: an
/// `async fn` keeps its arguments twice in its state, as arguments and as
/// locals.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice in every idle connection"
)]
pub(crate) fn serve<S: Transport>(
    mut stream: S,
    peer: SocketAddr,
    listening: Arc<Listening>,
    metrics: Arc<ListenerMetrics>,
    slot: Slot,
) -> impl Future<Output = ()> + Send {
    async move {
        let _slot = slot;
        let _open = metrics.open();
        let idle_timeout = || listening.snapshot.load().limits.idle_timeout;
        let stopped = listening.stop.cancelled();
        tokio::pin!(stopped);
        let idle = tokio::time::sleep(idle_timeout());
        tokio::pin!(idle);
        let mut buf: Vec<u8> = Vec::new();
        let mut first = true;
        loop {
            if buf.is_empty() {
                // Between requests: no buffer is held while the client is quiet.
                buffers::give(std::mem::take(&mut buf));
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + idle_timeout());
                let read = read_when_ready(&mut stream, &mut buf);
                tokio::select! {
                    biased;
                    () = &mut stopped => return,
                    read = read => match read {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => return,
                    },
                    () = &mut idle => return,
                }
            }
            let at_start = std::mem::replace(&mut first, false);
            let request = async {
                let conn = Conn::new(&peer, &listening, &metrics, S::SCHEME);
                let mut client = Client {
                    stream: &mut stream,
                    conn: &conn,
                };
                client.next_request(&mut buf, at_start).await
            };
            match Box::pin(request).await {
                Next::KeepAlive => {}
                Next::Close => return,
                Next::Http2 => {
                    // Boxed: hyper's connection state is no part of an idle
                    // HTTP/1 connection's task.
                    let io = Prefixed::new(buf, stream);
                    return Box::pin(super::h2::serve(io, peer, &listening, &metrics)).await;
                }
            }
        }
    }
}

/// Waits until the client sends, then takes a buffer and reads once.
/// `WouldBlock`: the readiness was stale; wait again.
async fn read_when_ready<S: Transport>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    std::future::poll_fn(|cx| stream.poll_readable(cx)).await?;
    if buf.capacity() == 0 {
        *buf = buffers::take();
    }
    // Through `poll_read`: unlike `try_read`, a short read there clears the
    // socket's readiness, which saves the next wait a system call that
    // would only say "nothing yet".
    std::future::poll_fn(|cx| {
        match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf) {
            Poll::Pending if S::READINESS => Poll::Ready(Err(io::ErrorKind::WouldBlock.into())),
            ready => ready,
        }
    })
    .await
}

/// One request being served.
pub(crate) struct Client<'a, S> {
    pub stream: &'a mut S,
    pub conn: &'a Conn<'a>,
}

impl<S: Transport> Client<'_, S> {
    /// Reads the rest of a request head from the client and serves it.
    async fn next_request(&mut self, buf: &mut Vec<u8>, first: bool) -> Next {
        let request = match self.complete_head(buf, first).await {
            Ok(Some(request)) => request,
            Ok(None) => return Next::Http2,
            Err(()) => return Next::Close,
        };
        let started = Instant::now();
        buf.drain(..request.head_len);
        if self.handle(request, buf, started).await {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Reads until `buf` holds a whole head (`Some`), or the HTTP/2 preface
    /// at the start of a connection (`None`); `Err` when the client is gone
    /// or was refused.
    async fn complete_head(
        &mut self,
        buf: &mut Vec<u8>,
        first: bool,
    ) -> Result<Option<codec::Request>, ()> {
        let limits = self.conn.limits;
        let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
        let refusal = loop {
            let preface = first && buf.len() <= PREFACE.len() && PREFACE.starts_with(buf);
            if first && buf.starts_with(PREFACE) {
                return Ok(None);
            }
            if !preface {
                match codec::parse_request(buf, self.conn.client_ip(), self.conn.scheme) {
                    Ok(Some(r)) if r.head_len <= limits.max_header_bytes => return Ok(Some(r)),
                    Ok(Some(_)) => break Reply::HeadTooLarge(limits.max_header_bytes),
                    Ok(None) if buf.len() > limits.max_header_bytes => {
                        break Reply::HeadTooLarge(limits.max_header_bytes)
                    }
                    Ok(None) => {}
                    Err(refused) => break Reply::Refused(refused),
                }
            }
            buf.reserve(buffers::HEAD_READ);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(()),
                Ok(Ok(_)) => {}
                Err(_) => break Reply::HeadTimeout(limits.header_read_timeout),
            }
        };
        self.refuse(refusal).await;
        Err(())
    }

    /// Answers a request the proxy refuses before routing, then closes
    /// gently: the write side first, and what the client still sends is
    /// read and dropped for a moment, so the reply is not lost to a reset.
    async fn refuse(&mut self, reply: Reply) {
        let status = reply.status();
        self.conn.metrics.rejected(status);
        tracing::info!(peer = %self.conn.peer, status = status.as_u16(), "refused a bad request");
        if self.write(&reply.h1(false, true, false)).await {
            _ = tokio::time::timeout(LINGER, self.stream.shutdown()).await;
            self.linger().await;
        }
    }

    async fn linger(&mut self) {
        let mut scratch = vec![0u8; 4096];
        let mut dropped = 0;
        let until = tokio::time::Instant::now() + LINGER;
        while let Ok(Ok(n @ 1..)) =
            tokio::time::timeout_at(until, self.stream.read(&mut scratch)).await
        {
            dropped += n;
            if dropped > LINGER_BYTES {
                break;
            }
        }
    }

    /// Writes to the client within `send_timeout`; `false` when it could not.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(self.conn.limits.send_timeout, self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Routes and forwards one request whose head was taken off `buf`; on
    /// return `buf` holds what the client sent after it. `true`: the
    /// connection may serve another request.
    async fn handle(
        &mut self,
        request: codec::Request,
        buf: &mut Vec<u8>,
        started: Instant,
    ) -> bool {
        let service = {
            let snapshot = self.conn.listening.snapshot.load();
            let router = snapshot.router(self.conn.listening.bind);
            if router.is_some_and(|r| r.redirect_https) {
                drop(snapshot);
                let location = replies::https_location(request.host(), request.target());
                return self.redirect(&request, buf, location).await;
            }
            match router.and_then(|r| r.route(request.host())) {
                Some(service) => service.clone(),
                None => {
                    if let Some(router) = router {
                        router.metrics.rejected(StatusCode::NOT_FOUND);
                    }
                    return self.local(&request, buf, Reply::NoService).await;
                }
            }
        };
        let mut exchange = H1Exchange::new(self, &request, buf);
        let outcome = attempt::forward(&service, &mut exchange, started).await;
        let untouched = exchange.replayable_body();
        let (reply, close) = match outcome {
            Outcome::Answer(answer) => return exchange.relay(answer).await,
            Outcome::Gone => return false,
            Outcome::Reply { reply, close } => (reply, close),
        };
        drop(exchange);
        if reply.is_rejection() {
            self.conn.metrics.rejected(reply.status());
        }
        if close || !untouched {
            let bytes = reply.h1(request.head_method, true, false);
            self.write(&bytes).await;
            return false;
        }
        self.local(&request, buf, reply).await
    }

    /// `redirect_https`: a 308 to the request's https URL, or a 400 when it
    /// names no host to send the client to.
    async fn redirect(
        &mut self,
        request: &codec::Request,
        buf: &mut Vec<u8>,
        location: Option<String>,
    ) -> bool {
        match location {
            Some(location) => {
                let head = request.head_method;
                self.answer(request, buf, |close, http10| {
                    replies::redirect_h1(&location, head, close, http10)
                })
                .await
            }
            None => {
                self.conn.metrics.rejected(StatusCode::BAD_REQUEST);
                self.local(request, buf, Reply::NoHostToRedirect).await
            }
        }
    }

    /// A proxy-made reply to a request whose body was not touched. A small
    /// `Content-Length` body is read and dropped, so the connection can go
    /// on; otherwise the connection closes after the reply.
    async fn local(&mut self, request: &codec::Request, buf: &mut Vec<u8>, reply: Reply) -> bool {
        let head = request.head_method;
        self.answer(request, buf, |close, http10| reply.h1(head, close, http10))
            .await
    }

    /// Writes a proxy-made response, made by `bytes(close, http10)`, to a
    /// request whose body was not touched; see `local`.
    async fn answer(
        &mut self,
        request: &codec::Request,
        buf: &mut Vec<u8>,
        bytes: impl FnOnce(bool, bool) -> Vec<u8>,
    ) -> bool {
        let unread = match request.body {
            RequestBody::None => Some(0),
            // A client waiting for 100 Continue may never send its body.
            _ if request.expect_continue => None,
            RequestBody::Length(n) => {
                let in_hand = n.min(buf.len() as u64);
                buf.drain(..in_hand as usize);
                Some(n - in_hand).filter(|&unread| unread <= DISCARD_LIMIT)
            }
            RequestBody::Chunked => None,
        };
        let close = !request.keep_alive || self.conn.stopping() || unread.is_none();
        let http10 = request.version == codec::Version::Http10;
        if !self.write(&bytes(close, http10)).await {
            return false;
        }
        match unread {
            None => {
                _ = tokio::time::timeout(LINGER, self.stream.shutdown()).await;
                self.linger().await;
                false
            }
            Some(_) if close => false,
            Some(0) => true,
            Some(unread) => self.discard(unread).await,
        }
    }

    /// Reads and drops the rest of a small body, each read within
    /// `body_read_timeout`.
    async fn discard(&mut self, mut unread: u64) -> bool {
        let mut scratch = buffers::take();
        while unread > 0 {
            scratch.clear();
            let want = unread.min(scratch.capacity() as u64);
            let mut limited = (&mut *self.stream).take(want);
            let read = limited.read_buf(&mut scratch);
            match tokio::time::timeout(self.conn.limits.body_read_timeout, read).await {
                Ok(Ok(n @ 1..)) => unread -= n as u64,
                _ => return false,
            }
        }
        buffers::give(scratch);
        true
    }
}
