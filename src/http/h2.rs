//! HTTP/2 clients (prior knowledge, h2c): hyper serves the connection, and
//! each request goes through the same attempt loop as HTTP/1 ones, to
//! HTTP/1.1 upstreams over the same codec and connection pools. Only the
//! client side differs: the request body comes from hyper's stream and is
//! sent upstream with the length it declared, or chunked; the response
//! body is read off the upstream socket and handed to hyper as frames. To
//! an `h2` pool, the request goes as a stream of its connection, and the
//! upstream's response body is handed on as it comes.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::attempt::{self, Answer, Exchange, Failure, Outcome};
use super::codec::chunked::{self, Chunks};
use super::codec::{self, Asked, Framing, RequestBody, Version};
use super::head::{read_head, Closing};
use super::replies::Reply;
use super::transport::Transport;
use super::upstream_h2;
use super::Listening;
use crate::metrics::ListenerMetrics;
use crate::upstream::{EndpointConns, H2Sender, RawConn};

/// How often an idle HTTP/2 connection is pinged, and how long a ping may
/// go unanswered before the connection is closed.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request of one HTTP/2 connection shares.
struct Ctx {
    bind: SocketAddr,
    snapshot: crate::snapshot::SharedSnapshot,
    metrics: Arc<ListenerMetrics>,
    client_ip: Vec<u8>,
    scheme: codec::Scheme,
    body_read_timeout: Duration,
    streams: Arc<Streams>,
}

/// Streams in flight on one connection, and when the last one ended: what
/// `idle_timeout` is measured from.
struct Streams {
    open: AtomicUsize,
    base: Instant,
    /// Milliseconds after `base` when a stream last ended.
    last_ms: AtomicU64,
}

impl Streams {
    fn idle_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.base.elapsed().saturating_sub(last))
    }
}

/// One stream in flight; dropped with its response body.
struct StreamGuard(Arc<Streams>);

impl StreamGuard {
    fn new(streams: &Arc<Streams>) -> Self {
        streams.open.fetch_add(1, Ordering::AcqRel);
        Self(streams.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let ms = self.0.base.elapsed().as_millis() as u64;
        self.0.last_ms.store(ms, Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves an HTTP/2 connection whose preface has arrived (it is still in
/// `io`'s first bytes) until it closes or the listener stops.
pub(crate) async fn serve<S: Transport>(
    io: S,
    peer: SocketAddr,
    listening: &Listening,
    metrics: &Arc<ListenerMetrics>,
) {
    let limits = listening.snapshot.load().limits.clone();
    let streams = Arc::new(Streams {
        open: AtomicUsize::new(0),
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let ctx = Arc::new(Ctx {
        streams: streams.clone(),
        bind: listening.bind,
        snapshot: listening.snapshot.clone(),
        metrics: metrics.clone(),
        client_ip: peer.ip().to_string().into_bytes(),
        scheme: S::SCHEME,
        body_read_timeout: limits.body_read_timeout,
    });
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, &ctx).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(
            u32::try_from(*limits.max_header_bytes.get_ref()).unwrap_or(u32::MAX),
        );
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Closes the connection once no stream was open for `idle_timeout`.
    let idle = async {
        let mut wait = limits.idle_timeout;
        loop {
            tokio::time::sleep(wait).await;
            match streams.idle_for() {
                Some(idle) if idle >= limits.idle_timeout => return,
                Some(idle) => wait = limits.idle_timeout - idle,
                None => wait = limits.idle_timeout,
            }
        }
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = listening.stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = idle => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
    }
}

type H2Response = Response<H2Body>;

async fn handle(req: Request<Incoming>, ctx: &Ctx) -> H2Response {
    let guard = StreamGuard::new(&ctx.streams);
    let mut response = route_and_forward(req, ctx).await;
    response.body_mut().guard = Some(guard);
    response
}

async fn route_and_forward(req: Request<Incoming>, ctx: &Ctx) -> H2Response {
    let started = Instant::now();
    let service = {
        let snapshot = ctx.snapshot.load();
        let router = snapshot.router(ctx.bind);
        let host = req.uri().authority().map(|a| a.as_str()).or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        if router.is_some_and(|r| r.redirect_https) {
            let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
            return match super::replies::https_location(host, target.as_bytes()) {
                Some(location) => super::replies::redirect_h2(&location)
                    .map(|text| H2Body::new(Kind::Local(Some(text)))),
                None => {
                    ctx.metrics.rejected(StatusCode::BAD_REQUEST);
                    local(Reply::NoHostToRedirect)
                }
            };
        }
        match router.and_then(|r| r.route(host)) {
            Some(service) => service.clone(),
            None => {
                ctx.metrics.rejected(StatusCode::NOT_FOUND);
                return local(Reply::NoService);
            }
        }
    };
    let (parts, body) = req.into_parts();
    let framing = if body.is_end_stream() {
        RequestBody::None
    } else {
        match body.size_hint().exact() {
            Some(n) => RequestBody::Length(n),
            None => RequestBody::Chunked,
        }
    };
    let request = codec::h2_request(&parts, framing, &ctx.client_ip, ctx.scheme);
    let mut exchange = H2Exchange {
        request,
        body: Some(body),
        body_read_timeout: ctx.body_read_timeout,
        taken: false,
        rest: Vec::new(),
        out: Vec::new(),
        raw: Vec::new(),
    };
    match attempt::forward(&service, &mut exchange, started).await {
        Outcome::Answer(answer) => respond(answer, exchange.rest, &exchange.raw),
        Outcome::Reply { reply, .. } => {
            if reply.is_rejection() {
                ctx.metrics.rejected(reply.status());
            }
            local(reply)
        }
        Outcome::Gone => local(Reply::BodyTimeout(ctx.body_read_timeout)),
    }
}

fn local(reply: Reply) -> H2Response {
    reply.h2().map(|text| H2Body::new(Kind::Local(Some(text))))
}

/// The response to an HTTP/2 client from an upstream's head and body.
fn respond(answer: Answer, rest: Vec<u8>, raw: &[u8]) -> H2Response {
    let answer = match answer.split() {
        Ok(h1) => h1,
        Err(h2) => {
            // From an h2 pool: its head as it came, its body handed on.
            let mut passed = Response::new(());
            *passed.status_mut() = h2.conn.status();
            *passed.headers_mut() = h2.conn.headers().clone();
            let body = upstream_h2::Passed::new(*h2);
            return passed.map(|()| H2Body::new(Kind::Passed(Box::new(body))));
        }
    };
    let Some((status, headers)) = codec::response_headers(raw) else {
        return local(Reply::BadGateway(super::replies::Gateway::Invalid));
    };
    let framing = answer.head.framing;
    let idle = answer.service.request_timeout;
    let cut = answer.cut.clone().cancelled_owned();
    let body = H2Body::new(Kind::Upstream(Box::new(Upstream {
        left: match framing {
            Framing::Length(n) => n,
            _ => 0,
        },
        done: framing == Framing::None,
        framing,
        chunks: Chunks::new(),
        buf: rest,
        clean: true,
        idle,
        stall: Box::pin(tokio::time::sleep(idle)),
        cut: Box::pin(cut),
        answer: Some(answer),
    })));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    *response.headers_mut() = headers;
    response
}

struct H2Exchange {
    request: codec::Request,
    body: Option<Incoming>,
    body_read_timeout: Duration,
    /// A frame of the body was taken: the request cannot be sent again.
    taken: bool,
    rest: Vec<u8>,
    out: Vec<u8>,
    raw: Vec<u8>,
}

impl Exchange for H2Exchange {
    async fn attempt<'a>(
        &'a mut self,
        conn: &'a mut RawConn,
        host: Option<&'a [u8]>,
    ) -> Result<codec::Response, Failure> {
        let reused = conn.reused;
        self.request.write_upstream(host, &mut self.out);
        let (mut upstream_read, mut upstream_write) = conn.stream.split();
        if let Err(error) = upstream_write.send(&self.out).await {
            return Err(Failure::Broken {
                error,
                stale: reused && !self.taken,
            });
        }
        let asked = Asked {
            head_method: self.request.head_method,
            upgrade: false,
            client: Version::Http11,
            close: false,
        };
        let uploading = AtomicBool::new(self.request.body != RequestBody::None);
        let chunked = self.request.body == RequestBody::Chunked;
        let timeout = self.body_read_timeout;
        let body = &mut self.body;
        let taken = &mut self.taken;
        let upload = async {
            let Some(body) = body.as_mut() else {
                return Ok(());
            };
            let mut framed = Vec::new();
            loop {
                let frame = match tokio::time::timeout(timeout, body.frame()).await {
                    Ok(Some(Ok(frame))) => frame,
                    Ok(None) => break,
                    Ok(Some(Err(_))) => return Err(Failure::Client(None)),
                    Err(_) => return Err(Failure::Client(Some(Reply::BodyTimeout(timeout)))),
                };
                *taken = true;
                let Ok(data) = frame.into_data() else {
                    continue; // trailers are not forwarded
                };
                if data.is_empty() {
                    continue;
                }
                let bytes: &[u8] = if chunked {
                    framed.clear();
                    chunked::size_line(data.len(), &mut framed);
                    framed.extend_from_slice(&data);
                    framed.extend_from_slice(b"\r\n");
                    &framed
                } else {
                    &data
                };
                if let Err(error) = upstream_write.send(bytes).await {
                    return Err(Failure::Broken {
                        error,
                        stale: false,
                    });
                }
            }
            if chunked {
                if let Err(error) = upstream_write.send(chunked::LAST_CHUNK).await {
                    return Err(Failure::Broken {
                        error,
                        stale: false,
                    });
                }
            }
            Ok(())
        };
        let closing = Closing {
            uploading: &uploading,
            stop: None,
        };
        let read = read_head(
            &mut upstream_read,
            asked,
            closing,
            &mut self.rest,
            &mut self.out,
            Some(&mut self.raw),
            reused,
        );
        tokio::pin!(upload);
        tokio::pin!(read);
        loop {
            tokio::select! {
                biased;
                head = &mut read => {
                    let mut head = head?;
                    // A response before the whole body went up leaves the
                    // connection in no state to reuse.
                    head.reusable &= !uploading.load(Ordering::Relaxed);
                    return Ok(head);
                }
                up = &mut upload, if uploading.load(Ordering::Relaxed) => match up {
                    Ok(()) => uploading.store(false, Ordering::Relaxed),
                    Err(Failure::Broken { .. }) => {
                        // The upstream may have answered already: read on.
                        uploading.store(false, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                },
            }
        }
    }

    async fn attempt_h2<'a>(
        &'a mut self,
        sender: &'a mut H2Sender,
        conns: &'a EndpointConns,
        host: Option<&'a [u8]>,
    ) -> Result<(codec::Response, Response<Incoming>), Failure> {
        self.request.write_upstream(host, &mut self.out);
        let (body, fault) = match self.body.take() {
            Some(body) if !body.is_end_stream() => {
                self.taken = true;
                let (body, fault) = upstream_h2::forward(body, self.body_read_timeout);
                (body, Some(fault))
            }
            _ => (upstream_h2::empty(), None),
        };
        let request = upstream_h2::request(&self.out, conns.address(), conns.is_tls(), body)?;
        // A stream hyper reset because the client's body stopped short
        // failed by the client's fault, not the endpoint's.
        let response = upstream_h2::send(sender, request)
            .await
            .map_err(|e| fault.and_then(|f| f.failure()).unwrap_or(e))?;
        let asked = Asked {
            head_method: self.request.head_method,
            upgrade: false,
            client: Version::Http11,
            close: false,
        };
        let head = upstream_h2::head_for_h1(&response, asked, &mut self.out);
        Ok((head, response))
    }

    fn replayable(&self) -> bool {
        !self.taken
    }

    fn idempotent(&self) -> bool {
        self.request.idempotent
    }
}

/// A response body for hyper: a proxy-made text or an upstream's body. It
/// holds its stream's place in the connection's count while it lives.
struct H2Body {
    kind: Kind,
    guard: Option<StreamGuard>,
}

enum Kind {
    Local(Option<Bytes>),
    Upstream(Box<Upstream>),
    Passed(Box<upstream_h2::Passed>),
}

impl H2Body {
    fn new(kind: Kind) -> Self {
        Self { kind, guard: None }
    }
}

/// An upstream's response body, read off its socket as hyper asks.
struct Upstream {
    framing: Framing,
    left: u64,
    done: bool,
    chunks: Chunks,
    /// Bytes read and not yet handed on.
    buf: Vec<u8>,
    /// Nothing past the end of the response arrived.
    clean: bool,
    idle: Duration,
    /// Ends the body if the upstream stalls this long.
    stall: Pin<Box<tokio::time::Sleep>>,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The upstream's HTTP/1.1 connection the body is read from.
    answer: Option<Answer<RawConn>>,
}

impl Upstream {
    /// Takes the data of `buf` this body's framing says is its own.
    fn take(&mut self) -> Result<Bytes, io::Error> {
        let data = match self.framing {
            Framing::None => Bytes::new(),
            Framing::Length(_) => {
                let n = self.left.min(self.buf.len() as u64) as usize;
                self.left -= n as u64;
                self.done = self.left == 0;
                let data = Bytes::copy_from_slice(&self.buf[..n]);
                self.clean &= n == self.buf.len();
                data
            }
            Framing::Chunked => {
                let mut plain = Vec::new();
                let buf = &self.buf;
                match self
                    .chunks
                    .decode(buf, |r| plain.extend_from_slice(&buf[r]))
                {
                    Ok(Some(end)) => {
                        self.done = true;
                        self.clean &= end == self.buf.len();
                    }
                    Ok(None) => {}
                    Err(chunked::BadChunk(why)) => return Err(io::Error::other(why)),
                }
                Bytes::from(plain)
            }
            Framing::UntilClose => Bytes::copy_from_slice(&self.buf),
        };
        self.buf.clear();
        Ok(data)
    }

    fn finish(&mut self) {
        if let Some(answer) = self.answer.take() {
            if self.clean {
                answer.reuse();
            }
        }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, io::Error>>> {
        loop {
            if !self.buf.is_empty() {
                let data = self.take()?;
                if self.done {
                    self.finish();
                }
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(data)));
                }
            }
            if self.done {
                self.finish();
                return Poll::Ready(None);
            }
            let Some(answer) = self.answer.as_mut() else {
                return Poll::Ready(None);
            };
            if self.cut.as_mut().poll(cx).is_ready() {
                answer.count_cut();
                self.answer = None;
                return Poll::Ready(Some(Err(io::Error::other(
                    "closed at its pool's drain deadline",
                ))));
            }
            self.buf.reserve(64 * 1024);
            let read =
                tokio_util::io::poll_read_buf(Pin::new(&mut answer.conn.stream), cx, &mut self.buf);
            match read {
                Poll::Ready(Ok(0)) if self.framing == Framing::UntilClose => {
                    self.answer = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    self.answer = None;
                    return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
                }
                Poll::Ready(Ok(_)) => {
                    let deadline = tokio::time::Instant::now() + self.idle;
                    self.stall.as_mut().reset(deadline);
                }
                Poll::Ready(Err(e)) => {
                    self.answer = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => {
                    ready!(self.stall.as_mut().poll(cx));
                    self.answer = None;
                    return Poll::Ready(Some(Err(io::Error::other(
                        "upstream response body stalled",
                    ))));
                }
            }
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Local(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
            Kind::Upstream(body) => body.poll_data(cx).map(|d| d.map(|d| d.map(Frame::data))),
            Kind::Passed(body) => Pin::new(&mut **body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(text) => text.is_none(),
            Kind::Upstream(body) => body.done && body.buf.is_empty(),
            Kind::Passed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(text) => SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64)),
            Kind::Upstream(body) => match body.framing {
                Framing::Length(n) if body.buf.is_empty() && body.left == n => {
                    SizeHint::with_exact(n)
                }
                _ => SizeHint::default(),
            },
            Kind::Passed(body) => body.size_hint(),
        }
    }
}
