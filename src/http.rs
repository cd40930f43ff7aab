//! The layer-7 data plane: one client connection served by hyper (HTTP/1.1, or
//! HTTP/2 by prior knowledge), each request routed afresh from the current
//! snapshot — by Host to a service, by weight to a pool, round-robin to an
//! endpoint — and forwarded over that endpoint's keep-alive pool with bodies
//! streamed both ways. This module reads snapshots; it never changes them.

mod body;
mod fast;
pub use fast::serve_connection;
mod guard;
mod headers;
mod prefixed;
pub mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{ListenerMetrics, UpstreamErrorKind};
use crate::snapshot::{Endpoint, Pool, Service, SharedSnapshot, Tried};
use crate::upstream::{SendError, UpBody};
use body::{Finish, ProxyBody};
pub use guard::GuardLimits;
use guard::{ConnActivity, Guarded};

/// What every connection of one listener shares.
pub struct Listening {
    /// The listener's configured bind address: its key in the snapshot.
    pub bind: SocketAddr,
    pub snapshot: SharedSnapshot,
    /// Cancelled to have connections finish their current request and close.
    pub stop: CancellationToken,
    /// Connection tasks and tunnels, so shutdown can wait for them.
    pub tracker: TaskTracker,
}

/// What every request of one client connection shares, on the hyper path.
struct ConnCtx {
    bind: SocketAddr,
    snapshot: SharedSnapshot,
    /// The client's IP as an `X-Forwarded-For` entry, formatted once.
    client_ip: HeaderValue,
    activity: Arc<ConnActivity>,
    /// Tunnels are tracked with connections, so shutdown waits for them.
    tracker: TaskTracker,
}

/// Hands a connection to hyper with the bytes the fast path read but did
/// not consume. A plain function returning a box, so that hyper's large
/// connection state is no part of a connection task until it is needed.
fn hyper_path(
    stream: TcpStream,
    read: Vec<u8>,
    peer: SocketAddr,
    listening: &Listening,
    metrics: Arc<ListenerMetrics>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let limits = GuardLimits::of(&listening.snapshot.load().limits);
    let ctx = ConnCtx {
        bind: listening.bind,
        snapshot: listening.snapshot.clone(),
        client_ip: HeaderValue::try_from(peer.ip().to_string())
            .expect("an IP address is a valid header value"),
        activity: Arc::new(ConnActivity::new(metrics.clone())),
        tracker: listening.tracker.clone(),
    };
    let io = prefixed::Prefixed::new(read, stream);
    let stop = listening.stop.clone();
    Box::pin(async move { serve_hyper(io, peer, ctx, &metrics, limits, stop).await })
}

/// Serves the rest of a connection with hyper: HTTP/2, upgrades, and every
/// request the fast path declines.
async fn serve_hyper(
    io: prefixed::Prefixed,
    peer: SocketAddr,
    ctx: ConnCtx,
    metrics: &ListenerMetrics,
    limits: GuardLimits,
    stop: CancellationToken,
) {
    let activity = ctx.activity.clone();
    let io = Guarded::new(io, limits, activity.clone());
    let ctx = Arc::new(ctx);
    let service = service_fn(move |req| {
        ctx.activity.request_started();
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, &ctx).await) }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        // The guard enforces max_header_bytes with a proper reply; hyper's own
        // limit sits above it as a backstop.
        .max_buf_size(limits.max_header_bytes.max(8192) + 16 * 1024)
        .max_headers(512);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    // The guard answered most bad requests itself; a malformed request that
    // was pipelined behind a good one is answered by hyper (same status, no
    // body) and is counted here.
    let parse_error = result.as_ref().err().and_then(|e| {
        let e = e.downcast_ref::<hyper::Error>()?;
        if e.is_parse_too_large() {
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        } else {
            e.is_parse().then_some(StatusCode::BAD_REQUEST)
        }
    });
    if let Some(status) = activity.rejected() {
        tracing::info!(%peer, status = status.as_u16(), "rejected a bad request");
    } else if let Some(status) = parse_error {
        metrics.rejected(status);
        tracing::info!(%peer, status = status.as_u16(), "rejected a bad request");
    } else if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

async fn handle(req: Request<Incoming>, ctx: &ConnCtx) -> Response<ProxyBody> {
    let started = Instant::now();
    let finish = Finish::new(ctx.activity.clone());
    let service = {
        let snapshot = ctx.snapshot.load();
        let host = request_host(&req);
        let router = snapshot.router(ctx.bind);
        match router.and_then(|r| r.route(host)) {
            Some(service) => service.clone(),
            None => {
                if let Some(router) = router {
                    router.metrics.rejected(StatusCode::NOT_FOUND);
                }
                return local(
                    StatusCode::NOT_FOUND,
                    "404 Not Found: no service for this host\n",
                    finish,
                );
            }
        }
    };
    forward(req, ctx, &service, finish, started).await
}

/// The host a request is for: the authority of an absolute URI (HTTP/2, or an
/// absolute-form HTTP/1 target), else the `Host` header.
fn request_host(req: &Request<Incoming>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
}

/// Methods whose requests may be sent twice (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// How many times a request that was never sent (a pooled connection the
/// upstream had closed) is tried again on a fresh one, beyond `retries`.
const UNSENT_RESENDS: u32 = 2;

/// Forwards a request to the service, retrying on another endpoint when it
/// could not be sent, or when it was reset before the response headers and
/// is idempotent without a body; bounded by `retries` and `request_timeout`.
async fn forward(
    req: Request<Incoming>,
    ctx: &ConnCtx,
    service: &Service,
    finish: Finish,
    started: Instant,
) -> Response<ProxyBody> {
    let Some((mut pool_at, mut endpoint_at)) = service.pick() else {
        service.metrics.unavailable.inc();
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable: no healthy upstream endpoint\n",
            finish,
        );
    };
    let mut req = req;
    // An HTTP/1.1 upgrade (WebSocket) is forwarded and, on a 101, the two
    // connections are joined.
    let upgrade = headers::upgrade_of(&req).cloned();
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let original_host = match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => parts.headers.get(HOST).cloned(),
    };
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::add_forwarding(
        &mut parts.headers,
        &ctx.client_ip,
        "http",
        original_host.clone(),
        parts.version,
    );
    if let Some(protocol) = &upgrade {
        headers::ask_upgrade(&mut parts.headers, protocol.clone());
    }
    parts.version = Version::HTTP_11;
    let body = if body.is_end_stream() {
        UpBody::Empty
    } else {
        UpBody::Stream(body)
    };
    // What a resend after a reset needs; kept only when one is allowed.
    let spare =
        (service.retries > 0 && matches!(body, UpBody::Empty) && is_idempotent(&parts.method))
            .then(|| {
                (
                    parts.method.clone(),
                    parts.uri.clone(),
                    parts.headers.clone(),
                )
            });
    let mut req = Request::from_parts(parts, body);
    let deadline = tokio::time::Instant::from_std(started + service.request_timeout);
    let mut tried = Tried::default();
    let mut resends = 0;
    loop {
        let pool = &service.pools[pool_at];
        let endpoint = &pool.endpoints[endpoint_at];
        tried.push(pool_at, endpoint_at);
        aim(&mut req, pool, endpoint, original_host.as_ref());
        let work = pool.activity.start();

        let conn = match tokio::time::timeout_at(deadline, endpoint.conns.checkout()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e),
            Err(_) => return timed_out(service, pool, endpoint, started, finish),
        };
        let failure = match conn {
            Err(e) => {
                pool.metrics.upstream_error(UpstreamErrorKind::Connect);
                eject_on_failure(service, pool, endpoint);
                tracing::warn!(service = %service.name, pool = %pool.name, error = %e, "upstream connect failed");
                "502 Bad Gateway: the upstream could not be reached\n"
            }
            Ok(conn) => match tokio::time::timeout_at(deadline, conn.send(req)).await {
                Ok(Ok(response)) => {
                    if response.status().is_server_error() {
                        eject_on_failure(service, pool, endpoint);
                    } else {
                        endpoint.health.record_success();
                    }
                    pool.metrics.response(response.status(), started.elapsed());
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                        if let (Some(client), Some(protocol)) = (client_upgrade, &upgrade) {
                            return join_upgrade(
                                ctx, pool, endpoint, client, response, protocol, finish,
                            );
                        }
                    }
                    let (mut parts, body) = response.into_parts();
                    headers::strip_hop_by_hop(&mut parts.headers);
                    parts
                        .headers
                        .append(http::header::VIA, headers::via(parts.version));
                    let body = ProxyBody::upstream(body, finish, work);
                    return Response::from_parts(parts, body);
                }
                Ok(Err(SendError {
                    unsent: Some(unsent),
                    error,
                })) if resends < UNSENT_RESENDS => {
                    // A pooled connection closed under us; nothing was sent.
                    tracing::debug!(endpoint = %endpoint.address, %error, "resending on a fresh connection");
                    resends += 1;
                    req = unsent;
                    tried.pop();
                    continue;
                }
                Ok(Err(SendError { error, .. })) => {
                    pool.metrics.upstream_error(UpstreamErrorKind::Reset);
                    eject_on_failure(service, pool, endpoint);
                    tracing::warn!(service = %service.name, pool = %pool.name, endpoint = %endpoint.address,
                        error = %ErrorChain(&error), "upstream request failed");
                    // Only a bodiless idempotent request can be sent again.
                    let Some((method, uri, headers)) = spare.clone() else {
                        return bad_gateway(
                            pool,
                            started,
                            "502 Bad Gateway: the upstream connection failed\n",
                            finish,
                        );
                    };
                    req = Request::new(UpBody::Empty);
                    *req.method_mut() = method;
                    *req.uri_mut() = uri;
                    *req.headers_mut() = headers;
                    "502 Bad Gateway: the upstream connection failed\n"
                }
                Err(_) => return timed_out(service, pool, endpoint, started, finish),
            },
        };
        let next = (tried.len() <= service.retries as usize)
            .then(|| service.pick_retry(pool_at, &tried))
            .flatten();
        let Some(next) = next else {
            return bad_gateway(pool, started, failure, finish);
        };
        pool.metrics.retry();
        (pool_at, endpoint_at) = next;
    }
}

/// Answers a 101 from upstream: the client gets the 101, and once both sides
/// have switched, a tunnel task joins them. The tunnel counts as work on the
/// pool, and ends at the endpoint's drain deadline if it is still open then.
fn join_upgrade(
    ctx: &ConnCtx,
    pool: &Pool,
    endpoint: &Endpoint,
    client: hyper::upgrade::OnUpgrade,
    mut response: Response<crate::upstream::PooledBody>,
    protocol: &HeaderValue,
    finish: Finish,
) -> Response<ProxyBody> {
    let upstream = hyper::upgrade::on(&mut response);
    // From here the client connection carries the tunnel's bytes, not HTTP.
    ctx.activity.upgraded();
    let work = pool.activity.start();
    let kill = endpoint.conns.kill_token();
    let address = endpoint.address.clone();
    ctx.tracker.spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(sides) => sides,
            Err(e) => {
                tracing::debug!(endpoint = %address, error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                if let Err(e) = result {
                    tracing::debug!(endpoint = %address, error = %e, "tunnel ended with an error");
                }
            }
            () = kill.cancelled() => {
                tracing::info!(endpoint = %address, "tunnel closed at its pool's drain deadline");
            }
        }
        drop(work);
    });
    let (mut parts, _) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::ask_upgrade(&mut parts.headers, protocol.clone());
    parts
        .headers
        .append(http::header::VIA, headers::via(parts.version));
    Response::from_parts(parts, ProxyBody::local(Bytes::new(), finish))
}

/// Points a request at an endpoint: its URI's authority, and the Host the
/// pool wants (its rewrite, else the client's).
fn aim(
    req: &mut Request<UpBody>,
    pool: &Pool,
    endpoint: &Endpoint,
    original_host: Option<&HeaderValue>,
) {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(endpoint.authority.clone());
    uri.path_and_query = Some(path);
    *req.uri_mut() = Uri::from_parts(uri).expect("scheme, authority and path make a valid URI");
    if let Some(host) = pool.host.as_ref().or(original_host) {
        req.headers_mut().insert(HOST, host.clone());
    }
}

fn eject_on_failure(service: &Service, pool: &Pool, endpoint: &Endpoint) {
    if let Some(length) = endpoint.health.record_failure(&service.outlier) {
        tracing::warn!(service = %service.name, pool = %pool.name, endpoint = %endpoint.address,
            ejection = ?length, "endpoint failed repeatedly: ejected");
    }
}

fn bad_gateway(
    pool: &Pool,
    started: Instant,
    text: &'static str,
    finish: Finish,
) -> Response<ProxyBody> {
    pool.metrics
        .response(StatusCode::BAD_GATEWAY, started.elapsed());
    local(StatusCode::BAD_GATEWAY, text, finish)
}

fn timed_out(
    service: &Service,
    pool: &Pool,
    endpoint: &Endpoint,
    started: Instant,
    finish: Finish,
) -> Response<ProxyBody> {
    pool.metrics.upstream_error(UpstreamErrorKind::Timeout);
    pool.metrics
        .response(StatusCode::GATEWAY_TIMEOUT, started.elapsed());
    log_timeout(service, pool, endpoint);
    local(
        StatusCode::GATEWAY_TIMEOUT,
        "504 Gateway Timeout: the upstream did not answer in time\n",
        finish,
    )
}

fn log_timeout(service: &Service, pool: &Pool, endpoint: &Endpoint) {
    tracing::warn!(
        service = %service.name,
        pool = %pool.name,
        endpoint = %endpoint.address,
        timeout = ?service.request_timeout,
        "upstream did not answer in time"
    );
}

/// A proxy-made response with a short text body.
fn local(status: StatusCode, text: &'static str, finish: Finish) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::local(
        Bytes::from_static(text.as_bytes()),
        finish,
    ));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Displays an error with its sources, "outer: inner: root".
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
