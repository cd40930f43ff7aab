//! The one attempt loop, shared by HTTP/1 and HTTP/2 clients: pick a pool by
//! weight and an endpoint of it, check out an upstream connection, let the
//! client protocol's `Exchange` send the request and read the response head
//! (over an HTTP/1.1 connection, or a stream of an `h2` pool's connection),
//! and on failure decide — from which side failed and what was sent — whether
//! to retry elsewhere, eject the endpoint, and what to answer. Metrics, drain
//! tracking and the request deadline live here too, once.
//!
//! A client's fault (gone, too slow, malformed body) never counts against an
//! endpoint, and neither does a cut the proxy made itself at a drain
//! deadline.

use std::future::Future;
use std::io;
use std::sync::Arc;
use tokio::time::Instant;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use super::codec;
use super::replies::{Gateway, Reply};
use crate::drain::Work;
use crate::metrics::UpstreamErrorKind;
use crate::snapshot::{Service, Tried};
use crate::upstream::{ConnectError, EndpointConns, H2Sender, RawConn};

/// How many times a request that was never read (a kept connection the
/// upstream had closed) is sent again on a fresh one, beyond `retries`.
const UNSENT_RESENDS: u32 = 2;

/// Why one attempt failed, and on which side.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The upstream: no connection could be made. Nothing was sent.
    Connect(ConnectError),
    /// The upstream: the connection broke before a whole response head
    /// came. `stale`: on a reused connection, before any response byte, so
    /// the upstream never read the request.
    Broken { error: io::Error, stale: bool },
    /// The upstream: an HTTP/2 request it never processed (never sent,
    /// refused with REFUSED_STREAM, or above the last stream of a graceful
    /// GOAWAY), so it may go again, whatever its method. Never counted
    /// against the endpoint: its connection is closing or full.
    Unprocessed(io::Error),
    /// The upstream sent a head that cannot be forwarded.
    BadResponse(&'static str),
    /// The client: gone, too slow, or its body was malformed. Answered
    /// (when `Some`) and never counted against the endpoint.
    Client(Option<Reply>),
}

/// A client protocol's half of an attempt.
pub(crate) trait Exchange: Send {
    /// Sends the request over `conn` (head for `host`, then the body) and
    /// reads the final response head, skipping interim ones.
    fn attempt<'a>(
        &'a mut self,
        conn: &'a mut RawConn,
        host: Option<&'a [u8]>,
    ) -> impl Future<Output = Result<codec::Response, Failure>> + Send + 'a;

    /// Sends the request as a stream of an `h2` pool's connection to
    /// `conns`' endpoint (`host`: the pool's rewrite) and waits for the
    /// response head; the head for an HTTP/1 client is made from it.
    fn attempt_h2<'a>(
        &'a mut self,
        sender: &'a mut H2Sender,
        conns: &'a EndpointConns,
        host: Option<&'a [u8]>,
    ) -> impl Future<Output = Result<(codec::Response, Response<Incoming>), Failure>> + Send + 'a;

    /// Whether the whole request is still in hand: nothing of its body has
    /// been taken from the client yet.
    fn replayable(&self) -> bool;

    /// Whether the request's method may be sent twice (RFC 9110 §9.2.2);
    /// with a body, only while `replayable` (the body kept in hand).
    fn idempotent(&self) -> bool;
}

/// Where a response's body comes from.
pub(crate) enum Conn {
    /// An HTTP/1.1 connection, the body next on it.
    H1(RawConn),
    /// A stream of an HTTP/2 connection: the response, head and body.
    H2(Response<Incoming>),
}

/// A response head from an endpoint, with what relaying its body needs;
/// `C`, where the body comes from: either (`Conn`), or one known by type
/// (`RawConn`, `Response<Incoming>`, see `split`).
pub(crate) struct Answer<C = Conn> {
    /// For an HTTP/2 upstream, made from its response.
    pub head: codec::Response,
    pub conn: C,
    pub conns: Arc<EndpointConns>,
    /// Cancelled at the drain deadline of the endpoint's pool.
    pub cut: CancellationToken,
    /// The request's work on its pool, done when the body is.
    pub _work: Work,
    /// The pool was serving as failover (out of rotation).
    pub failover: bool,
    pub service: Arc<Service>,
    pub pool: usize,
}

impl Answer {
    /// Puts the connection back for reuse: its response ended where its
    /// framing said, with nothing extra behind it.
    pub fn reuse(self) {
        if let Ok(answer) = self.split() {
            answer.reuse();
        }
    }

    /// The answer with its body's source in its type: an HTTP/1.1
    /// connection (`Ok`) or an HTTP/2 stream's response (`Err`).
    pub fn split(self) -> Result<Answer<RawConn>, Box<Answer<Response<Incoming>>>> {
        match self.replace(()) {
            (Conn::H1(conn), answer) => Ok(answer.replace(conn).1),
            (Conn::H2(response), answer) => Err(Box::new(answer.replace(response).1)),
        }
    }
}

impl<C> Answer<C> {
    /// The same answer with `conn` in place of its own, which it returns.
    fn replace<D>(self, conn: D) -> (C, Answer<D>) {
        let Answer {
            head,
            conn: own,
            conns,
            cut,
            _work,
            failover,
            service,
            pool,
        } = self;
        let answer = Answer {
            head,
            conn,
            conns,
            cut,
            _work,
            failover,
            service,
            pool,
        };
        (own, answer)
    }
}

impl Answer<RawConn> {
    /// Puts the connection back for reuse: its response ended where its
    /// framing said, with nothing extra behind it.
    pub fn reuse(self) {
        if self.head.reusable {
            self.conns.put_back(self.conn, self.failover);
        }
    }
}

impl<C> Answer<C> {
    /// Counts a response body the drain deadline cut short.
    pub fn count_cut(&self) {
        self.service.pools[self.pool].metrics.drain_closed.inc();
    }
}

/// How forwarding ended before any response went to the client.
pub(crate) enum Outcome {
    Answer(Answer),
    /// Answer the client with this; `close`: the connection cannot go on.
    Reply {
        reply: Reply,
        close: bool,
    },
    /// The client went away: nothing to answer.
    Gone,
}

/// Forwards a request to `service`: picks, tries, retries, ejects, counts;
/// bounded by `retries` and `request_timeout` from `started`.
pub(crate) async fn forward<E: Exchange>(
    service: &Arc<Service>,
    exchange: &mut E,
    started: Instant,
) -> Outcome {
    let Some((mut pool_at, mut endpoint_at)) = service.pick() else {
        service.metrics.unavailable.inc();
        return reply(Reply::Unavailable, false);
    };
    let deadline = started + service.request_timeout;
    let mut tried = Tried::default();
    let mut resends = 0;
    loop {
        let pool = &service.pools[pool_at];
        let endpoint = &pool.endpoints[endpoint_at];
        tried.push(pool_at, endpoint_at);
        let work = pool.activity.start();
        let cut = endpoint.conns.cut_token();
        let attempt = async {
            let host = pool.host.as_ref().map(|h| h.as_bytes());
            let conns = &endpoint.conns;
            if let Some(h2) = conns.h2() {
                let (mut sender, shared) = h2.sender().await.map_err(Failure::Connect)?;
                let result = exchange.attempt_h2(&mut sender, conns, host).await;
                if let Err(Failure::Unprocessed(_)) = &result {
                    // The connection takes no new streams (GOAWAY) or
                    // refused this one: the resend opens a new one.
                    h2.retire(&shared);
                }
                let (head, response) = result?;
                return Ok((Conn::H2(response), head));
            }
            let mut conn = conns.checkout().await.map_err(Failure::Connect)?;
            let head = exchange.attempt(&mut conn, host).await?;
            Ok::<_, Failure>((Conn::H1(conn), head))
        };
        let result = tokio::select! {
            biased;
            result = attempt => result,
            () = cut.cancelled() => {
                pool.metrics.drain_closed.inc();
                tracing::info!(endpoint = %endpoint.address, "request closed at its pool's drain deadline");
                return reply(Reply::BadGateway(Gateway::Drained), !exchange.replayable());
            }
            () = tokio::time::sleep_until(deadline) => {
                pool.metrics.upstream_error(UpstreamErrorKind::Timeout);
                pool.metrics.response(StatusCode::GATEWAY_TIMEOUT, started.elapsed());
                tracing::warn!(service = %service.name, pool = %pool.name, endpoint = %endpoint.address,
                    timeout = ?service.request_timeout, "upstream did not answer in time");
                return reply(Reply::GatewayTimeout, !exchange.replayable());
            }
        };
        // `failed`: the attempt failed on this pool, as opposed to one the
        // upstream declined to process (its flow control, not its fault).
        let (retry_ok, gateway, failed) = match result {
            Ok((conn, head)) => {
                if head.status >= 500 {
                    service.eject_on_failure(pool, endpoint);
                } else {
                    endpoint.health.record_success();
                }
                let status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
                pool.metrics.response(status, started.elapsed());
                return Outcome::Answer(Answer {
                    head,
                    conn,
                    conns: endpoint.conns.clone(),
                    cut,
                    _work: work,
                    failover: !pool.in_rotation(),
                    service: service.clone(),
                    pool: pool_at,
                });
            }
            Err(Failure::Client(None)) => return Outcome::Gone,
            Err(Failure::Client(Some(answer))) => return reply(answer, true),
            Err(Failure::Connect(e)) => {
                if e.counted() {
                    pool.metrics.upstream_error(UpstreamErrorKind::Connect);
                    service.eject_on_failure(pool, endpoint);
                    tracing::warn!(service = %service.name, pool = %pool.name, error = %e, "upstream connect failed");
                } else {
                    // Another request's connect, counted by that request.
                    tracing::debug!(service = %service.name, pool = %pool.name, error = %e, "shared upstream connect failed");
                }
                // Nothing was sent: the request may go elsewhere.
                (exchange.replayable(), Gateway::Unreachable, true)
            }
            Err(Failure::Broken { error, stale }) => {
                // Still in hand and safe to send twice: the upstream may
                // have read it before closing.
                let whole = exchange.replayable() && exchange.idempotent();
                if stale && whole && resends < UNSENT_RESENDS {
                    // A kept connection the upstream had closed meanwhile.
                    tracing::debug!(endpoint = %endpoint.address, %error, "resending on a fresh connection");
                    resends += 1;
                    tried.pop();
                    continue;
                }
                pool.metrics.upstream_error(UpstreamErrorKind::Reset);
                service.eject_on_failure(pool, endpoint);
                tracing::warn!(service = %service.name, pool = %pool.name, endpoint = %endpoint.address,
                    %error, "upstream request failed");
                (whole, Gateway::Failed, true)
            }
            Err(Failure::Unprocessed(error)) => {
                if exchange.replayable() && resends < UNSENT_RESENDS {
                    tracing::debug!(endpoint = %endpoint.address, %error, "resending a request the upstream did not process");
                    resends += 1;
                    tried.pop();
                    continue;
                }
                // A closing connection or a refused stream is the
                // upstream's flow control, not its failure: never counted.
                tracing::debug!(service = %service.name, pool = %pool.name, endpoint = %endpoint.address,
                    %error, "upstream did not process the request");
                (exchange.replayable(), Gateway::Failed, false)
            }
            Err(Failure::BadResponse(what)) => {
                pool.metrics.upstream_error(UpstreamErrorKind::Reset);
                service.eject_on_failure(pool, endpoint);
                tracing::warn!(service = %service.name, pool = %pool.name, endpoint = %endpoint.address,
                    error = what, "upstream response refused");
                (
                    exchange.replayable() && exchange.idempotent(),
                    Gateway::Invalid,
                    true,
                )
            }
        };
        drop(work);
        let next = (retry_ok && tried.len() <= service.retries as usize)
            .then(|| service.pick_retry(pool_at, &tried))
            .flatten();
        let Some(next) = next else {
            pool.metrics
                .response(StatusCode::BAD_GATEWAY, started.elapsed());
            return reply(Reply::BadGateway(gateway), !exchange.replayable());
        };
        if failed {
            pool.metrics.retry();
        }
        (pool_at, endpoint_at) = next;
    }
}

fn reply(reply: Reply, close: bool) -> Outcome {
    Outcome::Reply { reply, close }
}
