//! The HTTP/1.1 fast path: plain keep-alive requests (origin-form, no body or
//! a `Content-Length` one) are read, routed and forwarded by the client
//! connection's own task, over a plain upstream socket, with heads rewritten
//! as bytes (`wire`) and bodies relayed as they come. The first request the
//! fast path declines — HTTP/2, an upgrade, `Expect`, a chunked upload, a
//! malformed or oversized head — hands the connection, with every byte not
//! yet consumed, to the hyper path, which serves it from then on.
//!
//! Same rules as the hyper path: the header-read timer starts at a request's
//! first byte, idle connections close quietly at `idle_timeout`, retries and
//! passive ejection follow `forward`'s, and work on a pool ends at its drain
//! deadline. An idle connection holds no buffer.

use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::guard::{self, GuardLimits};
use super::wire::{self, Framing, Parsed};
use super::Listening;
use crate::listener::Slot;
use crate::metrics::{ListenerMetrics, UpstreamErrorKind};
use crate::snapshot::{Service, Tried};
use crate::upstream::{EndpointConns, RawConn};

/// Room for one read of a request head, or of an upstream response.
const HEAD_READ: usize = 4 * 1024;
const BODY_READ: usize = 64 * 1024;
/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// A request body up to this size is read and dropped after a proxy-made
/// reply, so the connection stays usable; a larger one closes it.
const DISCARD_LIMIT: u64 = 64 * 1024;

/// What the requests of one client connection share; built per request from
/// the connection's few fields, so none of it is kept between requests.
struct Conn<'a> {
    peer: &'a SocketAddr,
    listening: &'a Listening,
    metrics: &'a ListenerMetrics,
    limits: GuardLimits,
    /// The client's IP as an `X-Forwarded-For` entry: up to 45 bytes.
    client_ip: ([u8; 45], usize),
}

impl<'a> Conn<'a> {
    fn new(peer: &'a SocketAddr, listening: &'a Listening, metrics: &'a ListenerMetrics) -> Self {
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
            limits: GuardLimits::of(&listening.snapshot.load().limits),
            client_ip: (ip, len),
        }
    }

    fn client_ip(&self) -> &[u8] {
        &self.client_ip.0[..self.client_ip.1]
    }
}

/// One request being served.
struct Client<'a> {
    stream: &'a mut TcpStream,
    conn: &'a Conn<'a>,
    /// Bytes of the current request's body not yet taken from the client.
    body_left: u64,
}

/// Why one try of a request on one endpoint failed.
enum Failure {
    Connect(crate::upstream::ConnectError),
    /// The connection broke or the response could not be read; `stale`: on
    /// a reused connection, before a single response byte.
    Broken {
        error: io::Error,
        stale: bool,
    },
    BadResponse(&'static str),
    Timeout,
    /// The client went away while its body was being relayed.
    ClientGone,
}

/// How a forwarded request ended.
enum Ended {
    KeepAlive,
    Close,
}

/// What the connection loop does after a request.
enum Next {
    KeepAlive,
    Close,
    Fallback,
}

/// Counts a connection in the listener's gauge while it is open.
struct Open<'a>(&'a ListenerMetrics);

impl<'a> Open<'a> {
    fn new(metrics: &'a ListenerMetrics) -> Self {
        metrics.connections_active.inc();
        Self(metrics)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.connections_active.dec();
    }
}

/// Serves one accepted client connection until it closes, or until the
/// listener's `stop` asks it to finish its current request and close: on the
/// fast path while it can, then on hyper's (`super::hyper_path`).
///
/// An idle connection is this function's own state and nothing else — the
/// socket, a timer, the stop signal — so it is kept small: everything a
/// request needs lives in a box for the length of the request.
///
/// A plain function returning an `async move` block, not an `async fn`: an
/// `async fn` keeps its arguments twice in its state, as arguments and as
/// locals.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice in every idle connection"
)]
pub fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    listening: Arc<Listening>,
    metrics: Arc<ListenerMetrics>,
    slot: Slot,
) -> impl Future<Output = ()> + Send {
    async move {
        let _slot = slot;
        let _open = Open::new(&metrics);
        let idle_timeout = || listening.snapshot.load().limits.idle_timeout;
        let stopped = listening.stop.cancelled();
        tokio::pin!(stopped);
        let idle = tokio::time::sleep(idle_timeout());
        tokio::pin!(idle);
        let mut buf: Vec<u8> = Vec::new();
        loop {
            if buf.is_empty() {
                // Between requests: no buffer is held while the client is quiet.
                buffers::give(std::mem::take(&mut buf));
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + idle_timeout());
                tokio::select! {
                    biased;
                    () = &mut stopped => return,
                    // Not `readable()`: its waiter node would sit in every idle task.
                    ready = std::future::poll_fn(|cx| stream.poll_read_ready(cx)) => if ready.is_err() {
                        return;
                    },
                    () = &mut idle => return,
                }
                buf = buffers::take();
                // One read, through `poll_read`: unlike `try_read`, a short read
                // there clears the socket's readiness, which saves the next wait a
                // system call that would only say "nothing yet".
                let read = std::future::poll_fn(|cx| {
                    match tokio_util::io::poll_read_buf(Pin::new(&mut stream), cx, &mut buf) {
                        Poll::Pending => Poll::Ready(Err(io::ErrorKind::WouldBlock.into())),
                        ready => ready,
                    }
                })
                .await;
                match read {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return,
                }
            }
            let request = async {
                let conn = Conn::new(&peer, &listening, &metrics);
                let mut client = Client {
                    stream: &mut stream,
                    conn: &conn,
                    body_left: 0,
                };
                client.next_request(&mut buf).await
            };
            match Box::pin(request).await {
                Next::KeepAlive => {}
                Next::Close => return,
                Next::Fallback => {
                    let hyper = super::hyper_path(stream, buf, peer, &listening, metrics.clone());
                    return hyper.await;
                }
            }
        }
    }
}

impl Client<'_> {
    /// Reads the rest of a request head from the client and serves it.
    async fn next_request(&mut self, buf: &mut Vec<u8>) -> Next {
        let request = match self.complete_head(buf).await {
            Ok(Some(request)) => request,
            Ok(None) => return Next::Fallback,
            Err(()) => return Next::Close,
        };
        // Closing needs no `shutdown` first: the response is out and the
        // request read, so dropping the socket ends it with a FIN.
        match self.handle(request, buf).await {
            Ended::KeepAlive => Next::KeepAlive,
            Ended::Close => Next::Close,
        }
    }

    /// Reads until `buf` holds a whole head the fast path takes (`Some`), or
    /// one it declines (`None`, for hyper); `Err` when the client is gone or
    /// was sent a 408.
    async fn complete_head(&mut self, buf: &mut Vec<u8>) -> Result<Option<wire::Request>, ()> {
        let mut deadline = None;
        loop {
            match wire::parse_request(buf, self.conn.client_ip()) {
                Parsed::Request(r) if r.head_len <= self.conn.limits.max_header_bytes => {
                    return Ok(Some(r))
                }
                Parsed::Request(_) | Parsed::Declined => return Ok(None),
                Parsed::Partial if buf.len() > self.conn.limits.max_header_bytes => {
                    return Ok(None)
                }
                Parsed::Partial => {}
            }
            let deadline = *deadline.get_or_insert_with(|| {
                tokio::time::Instant::now() + self.conn.limits.header_read_timeout
            });
            buf.reserve(HEAD_READ);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(()),
                Ok(Ok(_)) => {}
                Err(_) => {
                    self.reject(StatusCode::REQUEST_TIMEOUT).await;
                    return Err(());
                }
            }
        }
    }

    /// Answers a request the proxy refuses before routing, then closes
    /// gently: the write side first, and what the client still sends is
    /// read and dropped for a moment, so the reply is not lost to a reset.
    async fn reject(&mut self, status: StatusCode) {
        self.conn.metrics.rejected(status);
        tracing::info!(peer = %self.conn.peer, status = status.as_u16(), "rejected a bad request");
        let reply = guard::rejection(status, &self.conn.limits);
        if self.stream.write_all(&reply).await.is_ok() {
            _ = self.stream.shutdown().await;
            self.linger().await;
        }
    }

    async fn linger(&mut self) {
        let mut scratch = vec![0u8; 4096];
        let mut dropped = 0;
        let until = tokio::time::Instant::now() + guard::LINGER;
        while let Ok(Ok(n @ 1..)) =
            tokio::time::timeout_at(until, self.stream.read(&mut scratch)).await
        {
            dropped += n;
            if dropped > guard::LINGER_BYTES {
                break;
            }
        }
    }

    /// Routes and forwards one request whose head is at the start of `buf`;
    /// on return `buf` holds what the client sent after it.
    async fn handle(&mut self, request: wire::Request, buf: &mut Vec<u8>) -> Ended {
        let started = Instant::now();
        buf.drain(..request.head_len);
        self.body_left = request.content_length;
        let service = {
            let snapshot = self.conn.listening.snapshot.load();
            let router = snapshot.router(self.conn.listening.bind);
            match router.and_then(|r| r.route(request.host())) {
                Some(service) => service.clone(),
                None => {
                    if let Some(router) = router {
                        router.metrics.rejected(StatusCode::NOT_FOUND);
                    }
                    return self
                        .local(
                            &request,
                            buf,
                            StatusCode::NOT_FOUND,
                            "404 Not Found: no service for this host\n",
                        )
                        .await;
                }
            }
        };
        self.forward(&request, buf, &service, started).await
    }

    /// `forward`'s retry rules (see `http::forward`) over plain sockets.
    async fn forward(
        &mut self,
        request: &wire::Request,
        buf: &mut Vec<u8>,
        service: &Service,
        started: Instant,
    ) -> Ended {
        let Some((mut pool_at, mut endpoint_at)) = service.pick() else {
            service.metrics.unavailable.inc();
            return self
                .local(
                    request,
                    buf,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "503 Service Unavailable: no healthy upstream endpoint\n",
                )
                .await;
        };
        let retryable = service.retries > 0 && request.content_length == 0 && request.idempotent;
        let deadline = tokio::time::Instant::from_std(started + service.request_timeout);
        let mut tried = Tried::default();
        let mut resends = 0;
        let mut out = Vec::with_capacity(request.upstream_len() + 256);
        loop {
            let pool = &service.pools[pool_at];
            let endpoint = &pool.endpoints[endpoint_at];
            tried.push(pool_at, endpoint_at);
            request.write_upstream(pool.host.as_ref().map(|h| h.as_bytes()), &mut out);
            let work = pool.activity.start();
            let kill = endpoint.conns.kill_token();
            let killed = kill.cancelled();
            tokio::pin!(killed);

            let attempt = async {
                let mut conn = endpoint
                    .conns
                    .checkout_raw()
                    .await
                    .map_err(Failure::Connect)?;
                let head = self.exchange(&mut conn, request, buf, &mut out).await?;
                Ok((conn, head))
            };
            let result = tokio::select! {
                biased;
                result = attempt => result,
                () = &mut killed => Err(Failure::Broken {
                    error: io::Error::other("closed at the pool's drain deadline"),
                    stale: false,
                }),
                () = tokio::time::sleep_until(deadline) => Err(Failure::Timeout),
            };
            let (unsent, failure) = match result {
                Ok((conn, (response, body))) => {
                    if response.status >= 500 {
                        super::eject_on_failure(service, pool, endpoint);
                    } else {
                        endpoint.health.record_success();
                    }
                    let status =
                        StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY);
                    pool.metrics.response(status, started.elapsed());
                    let close = request.close
                        || self.conn.listening.stop.is_cancelled()
                        || response.framing == Framing::UntilClose;
                    let relayed = tokio::select! {
                        biased;
                        relayed = self.relay(&endpoint.conns, conn, response, body, out) => relayed,
                        () = &mut killed => {
                            tracing::info!(endpoint = %endpoint.address, "response closed at its pool's drain deadline");
                            None
                        }
                    };
                    drop(work);
                    return match relayed {
                        Some(()) if !close => Ended::KeepAlive,
                        _ => Ended::Close,
                    };
                }
                Err(Failure::Timeout) => {
                    super::log_timeout(service, pool, endpoint);
                    pool.metrics.upstream_error(UpstreamErrorKind::Timeout);
                    pool.metrics
                        .response(StatusCode::GATEWAY_TIMEOUT, started.elapsed());
                    return self
                        .local(
                            request,
                            buf,
                            StatusCode::GATEWAY_TIMEOUT,
                            "504 Gateway Timeout: the upstream did not answer in time\n",
                        )
                        .await;
                }
                Err(Failure::ClientGone) => return Ended::Close,
                Err(Failure::Connect(e)) => {
                    pool.metrics.upstream_error(UpstreamErrorKind::Connect);
                    super::eject_on_failure(service, pool, endpoint);
                    tracing::warn!(service = %service.name, pool = %pool.name, error = %e, "upstream connect failed");
                    // Nothing was sent: any request may go elsewhere.
                    (true, "502 Bad Gateway: the upstream could not be reached\n")
                }
                Err(Failure::Broken { error, stale }) => {
                    // Only a request without a body is still whole in hand.
                    let whole = request.content_length == 0;
                    if stale && whole && request.idempotent && resends < super::UNSENT_RESENDS {
                        // A kept connection the upstream had closed meanwhile.
                        tracing::debug!(endpoint = %endpoint.address, %error, "resending on a fresh connection");
                        resends += 1;
                        tried.pop();
                        continue;
                    }
                    pool.metrics.upstream_error(UpstreamErrorKind::Reset);
                    super::eject_on_failure(service, pool, endpoint);
                    tracing::warn!(service = %service.name, pool = %pool.name, endpoint = %endpoint.address,
                        %error, "upstream request failed");
                    (false, "502 Bad Gateway: the upstream connection failed\n")
                }
                Err(Failure::BadResponse(what)) => {
                    pool.metrics.upstream_error(UpstreamErrorKind::Reset);
                    super::eject_on_failure(service, pool, endpoint);
                    tracing::warn!(service = %service.name, pool = %pool.name, endpoint = %endpoint.address,
                        error = what, "upstream response refused");
                    (
                        false,
                        "502 Bad Gateway: the upstream sent a response that is not valid HTTP/1.1\n",
                    )
                }
            };
            let next = ((unsent || retryable) && tried.len() <= service.retries as usize)
                .then(|| service.pick_retry(pool_at, &tried))
                .flatten();
            let Some(next) = next else {
                pool.metrics
                    .response(StatusCode::BAD_GATEWAY, started.elapsed());
                return self
                    .local(request, buf, StatusCode::BAD_GATEWAY, failure)
                    .await;
            };
            pool.metrics.retry();
            (pool_at, endpoint_at) = next;
        }
    }

    /// Sends the request (head, then its body from the client) and reads the
    /// response head. On success `out` holds the head for the client and the
    /// returned buffer the response bytes read past the upstream's head.
    async fn exchange(
        &mut self,
        conn: &mut RawConn,
        request: &wire::Request,
        buf: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(wire::Response, Vec<u8>), Failure> {
        let reused = conn.reused;
        let broken = |error: io::Error, stale: bool| Failure::Broken { error, stale };
        // What of the body the client already sent goes with the head.
        let in_hand = self.body_left.min(buf.len() as u64) as usize;
        out.extend_from_slice(&buf[..in_hand]);
        buf.drain(..in_hand);
        self.body_left -= in_hand as u64;
        conn.stream
            .write_all(out)
            .await
            .map_err(|e| broken(e, reused))?;
        let mut chunk = buffers::take();
        while self.body_left > 0 {
            chunk.clear();
            chunk.reserve(BODY_READ.min(self.body_left as usize));
            let want = (chunk.capacity() as u64).min(self.body_left);
            match (&mut *self.stream).take(want).read_buf(&mut chunk).await {
                Ok(0) | Err(_) => return Err(Failure::ClientGone),
                Ok(n) => self.body_left -= n as u64,
            }
            conn.stream
                .write_all(&chunk)
                .await
                .map_err(|e| broken(e, false))?;
        }

        let mut response = chunk;
        response.clear();
        loop {
            response.reserve(HEAD_READ);
            match conn.stream.read_buf(&mut response).await {
                Ok(0) => {
                    return Err(broken(
                        io::ErrorKind::UnexpectedEof.into(),
                        reused && response.is_empty(),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(broken(e, reused && response.is_empty())),
            }
            let close = request.close || self.conn.listening.stop.is_cancelled();
            match wire::parse_response(&response, request.head_method, close, out) {
                Ok(Some(head)) if head.head_len > MAX_RESPONSE_HEAD => {
                    return Err(Failure::BadResponse("response head too large"))
                }
                Ok(Some(head)) => {
                    response.drain(..head.head_len);
                    return Ok((head, response));
                }
                Ok(None) if response.len() > MAX_RESPONSE_HEAD => {
                    return Err(Failure::BadResponse("response head too large"))
                }
                Ok(None) => {}
                Err(wire::BadResponse::Malformed) => {
                    return Err(Failure::BadResponse("malformed response head"))
                }
                Err(wire::BadResponse::UnaskedSwitch) => {
                    return Err(Failure::BadResponse("101 without an upgrade asked for"))
                }
            }
        }
    }

    /// Writes the response head and relays its body; the upstream connection
    /// goes back to its endpoint when the body ended exactly where its framing
    /// said. `None` when either side broke off.
    async fn relay(
        &mut self,
        owner: &EndpointConns,
        mut conn: RawConn,
        response: wire::Response,
        mut body: Vec<u8>,
        mut out: Vec<u8>,
    ) -> Option<()> {
        let mut chunks = wire::Chunks::new();
        let mut left = match response.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut ended = response.framing == Framing::None;
        let mut clean = true;
        let mut first = true;
        loop {
            let take = match response.framing {
                _ if ended => 0,
                Framing::None => 0,
                Framing::Length(_) => {
                    let n = left.min(body.len() as u64);
                    left -= n;
                    ended = left == 0;
                    n as usize
                }
                Framing::Chunked => match chunks.feed(&body) {
                    Ok(Some(end)) => {
                        ended = true;
                        end
                    }
                    Ok(None) => body.len(),
                    Err(wire::BadChunk) => {
                        tracing::warn!(endpoint = %owner.address(), "upstream sent a malformed chunked body");
                        return None;
                    }
                },
                Framing::UntilClose => body.len(),
            };
            // Bytes past the end of the response leave the connection in no
            // state to reuse.
            clean &= take == body.len();
            if first {
                // The head and what came with it of the body: one write.
                out.extend_from_slice(&body[..take]);
                self.stream.write_all(&out).await.ok()?;
                first = false;
            } else if take > 0 {
                self.stream.write_all(&body[..take]).await.ok()?;
            }
            if ended {
                break;
            }
            body.clear();
            body.reserve(BODY_READ);
            match conn.stream.read_buf(&mut body).await {
                Ok(0) if response.framing == Framing::UntilClose => {
                    clean = false;
                    break;
                }
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        if clean && response.reusable {
            owner.put_back_raw(conn);
        }
        buffers::give(body);
        Some(())
    }

    /// A proxy-made reply with a short text body. A request body not yet
    /// read is read and dropped when small, so the connection can go on;
    /// otherwise the connection closes after the reply.
    async fn local(
        &mut self,
        request: &wire::Request,
        buf: &mut Vec<u8>,
        status: StatusCode,
        text: &'static str,
    ) -> Ended {
        let in_hand = self.body_left.min(buf.len() as u64);
        buf.drain(..in_hand as usize);
        let unread = self.body_left - in_hand;
        self.body_left = 0;
        let close =
            request.close || self.conn.listening.stop.is_cancelled() || unread > DISCARD_LIMIT;
        let reply = local_reply(status, text, close);
        if self.stream.write_all(&reply).await.is_err() {
            return Ended::Close;
        }
        if close {
            if unread > 0 {
                _ = self.stream.shutdown().await;
                self.linger().await;
            }
            return Ended::Close;
        }
        if unread > 0 {
            let mut rest = Vec::with_capacity(unread as usize);
            let read = (&mut *self.stream)
                .take(unread)
                .read_to_end(&mut rest)
                .await;
            if !matches!(read, Ok(n) if n as u64 == unread) {
                return Ended::Close;
            }
        }
        Ended::KeepAlive
    }
}

/// The bytes of a proxy-made reply.
fn local_reply(status: StatusCode, text: &str, close: bool) -> Vec<u8> {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut reply = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\ndate: {date}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        text.len()
    );
    if close {
        reply.push_str("connection: close\r\n");
    }
    reply.push_str("\r\n");
    reply.push_str(text);
    reply.into_bytes()
}

/// Recycled read buffers, per worker thread. Requests take one or two 4 KiB
/// buffers and give them back when done; glibc's malloc serves that size
/// from its general bins, which showed in profiles, and an idle connection
/// must hold none (so they cannot simply stay with the connection).
mod buffers {
    use std::cell::RefCell;

    use super::HEAD_READ;

    /// Buffers kept per thread: enough for the requests one thread has in
    /// flight at once under load, and at most 128 KiB.
    const KEEP: usize = 32;

    thread_local! {
        static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> Vec<u8> {
        FREE.with_borrow_mut(Vec::pop)
            .unwrap_or_else(|| Vec::with_capacity(HEAD_READ))
    }

    /// Keeps `buffer` for reuse if it is one of ours and unchanged in size.
    pub fn give(mut buffer: Vec<u8>) {
        if buffer.capacity() != HEAD_READ {
            return;
        }
        buffer.clear();
        FREE.with_borrow_mut(|free| {
            if free.len() < KEEP {
                free.push(buffer);
            }
        });
    }
}
