//! The upstream side of a request to an `h2` pool, for both client
//! protocols: the request head the codec wrote for HTTP/1.1 turned into an
//! `http::Request` for hyper's HTTP/2 client (connection-specific headers
//! dropped, the Host as `:authority`), the body fed through a channel as the
//! client sends it, the send's errors sorted into the attempt loop's
//! `Failure`s, the response head rewritten for an HTTP/1 client, and the
//! response body handed on to an HTTP/2 client (`Passed`).
//!
//! An upgrade (WebSocket) cannot go to an `h2` pool: HTTP/2 has no 101, and
//! extended CONNECT (RFC 8441) is not spoken upstream. Such a request is
//! refused (501, see `UPGRADE_REFUSED`) rather than sent as a plain one,
//! and never counted against the endpoint.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::future::Future;
use tokio::sync::mpsc;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::attempt::{Answer, Failure};
use super::codec::{self, Asked, Framing, Refused, Version};
use super::replies::Reply;
use crate::upstream::{H2Body, H2Sender};

/// Most headers in a request head the codec wrote.
const MAX_HEADERS: usize = 128;
/// Body pieces in flight between the client's reads and the stream.
const BODY_QUEUE: usize = 4;

/// The answer to an upgrade request routed to an `h2` pool.
pub(crate) const UPGRADE_REFUSED: Failure = Failure::Client(Some(Reply::Refused(Refused {
    status: http::StatusCode::NOT_IMPLEMENTED,
    reason: "upgrade is not supported to an HTTP/2 upstream pool",
})));

/// Headers that say how one HTTP/1 connection carries the message, which
/// HTTP/2 forbids (RFC 9113 §8.2.2); `te` is kept when it says `trailers`.
fn connection_specific(name: &HeaderName, value: &HeaderValue) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == "keep-alive"
        || name == "proxy-connection"
        || (name == header::TE && value != "trailers")
}

/// The request for an HTTP/2 upstream from `head`, the HTTP/1.1 head the
/// codec wrote for it (`write_upstream`), with `body`. The Host becomes
/// the `:authority`; without one (HTTP/1.0), `endpoint`'s address.
pub(crate) fn request(
    head: &[u8],
    endpoint: &str,
    tls: bool,
    body: H2Body,
) -> Result<Request<H2Body>, Failure> {
    const INVALID: Failure = Failure::Client(Some(Reply::Refused(Refused {
        status: http::StatusCode::BAD_REQUEST,
        reason: "request cannot be sent over HTTP/2",
    })));
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    match parsed.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(INVALID),
    }
    let method = parsed
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or(INVALID)?;
    let mut request = Request::new(body);
    *request.method_mut() = method;
    let mut authority = None;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| INVALID)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| INVALID)?;
        if name == header::HOST {
            authority = Authority::try_from(h.value).ok();
        } else if !connection_specific(&name, &value) {
            request.headers_mut().append(name, value);
        }
    }
    let mut uri = parsed
        .path
        .unwrap_or("/")
        .parse::<Uri>()
        .map_err(|_| INVALID)?
        .into_parts();
    uri.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    let authority = match authority {
        Some(authority) => authority,
        None => Authority::try_from(endpoint).map_err(|_| INVALID)?,
    };
    uri.authority = Some(authority);
    *request.uri_mut() = Uri::from_parts(uri).map_err(|_| INVALID)?;
    Ok(request)
}

/// Sends `request` on `sender` and waits for the response head. A request
/// that never left (the connection was closing), that the upstream refused
/// unprocessed (REFUSED_STREAM), or that a graceful GOAWAY left out may go
/// again; any other failure after it left is a broken exchange.
pub(crate) async fn send(
    sender: &mut H2Sender,
    request: Request<H2Body>,
) -> Result<Response<Incoming>, Failure> {
    if let Err(e) = sender.ready().await {
        return Err(Failure::Unprocessed(io::Error::other(e)));
    }
    sender.try_send_request(request).await.map_err(|mut e| {
        let unsent = e.take_message().is_some();
        let error = e.into_error();
        if unsent || unprocessed(&error) {
            Failure::Unprocessed(io::Error::other(error))
        } else {
            Failure::Broken {
                error: io::Error::other(error),
                stale: false,
            }
        }
    })
}

/// Whether the upstream never processed the stream: it refused it
/// (REFUSED_STREAM), or said it is closing (a graceful GOAWAY, NO_ERROR)
/// and the stream was above its last one, or opened after it. An error
/// GOAWAY is not taken as one: h2 hands its error to the streams at or
/// below the last one too when the connection ends, and those may have
/// been processed.
fn unprocessed(error: &hyper::Error) -> bool {
    let Some(h2) = std::error::Error::source(error).and_then(|s| s.downcast_ref::<h2::Error>())
    else {
        return false;
    };
    match h2.reason() {
        Some(h2::Reason::REFUSED_STREAM) => true,
        Some(h2::Reason::NO_ERROR) => h2.is_go_away() && h2.is_remote(),
        _ => false,
    }
}

/// The HTTP/1.1 head for a client that `asked`, of `response` from an
/// HTTP/2 upstream, written to `out`: the body framed by its length when
/// the upstream said it, else chunked (or until close for HTTP/1.0).
pub(crate) fn head_for_h1(
    response: &Response<Incoming>,
    asked: Asked,
    out: &mut Vec<u8>,
) -> codec::Response {
    let status = response.status();
    let headers = response.headers();
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bodiless = asked.head_method || status.is_informational() || status == 204 || status == 304;
    let (framing, mut close) = match (bodiless, length) {
        (true, _) => (Framing::None, false),
        (false, Some(0)) => (Framing::None, false),
        (false, Some(n)) => (Framing::Length(n), false),
        (false, None) if response.body().is_end_stream() => (Framing::None, false),
        (false, None) if asked.client == Version::Http11 => (Framing::Chunked, false),
        (false, None) => (Framing::UntilClose, true),
    };
    close |= asked.close;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if connection_specific(name, value) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::None && length.is_none() && !bodiless {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    codec::Response {
        head_len: 0,
        status: status.as_u16(),
        interim: false,
        framing,
        dechunk: false,
        reusable: false,
        close,
    }
}

/// A piece of a request body on its way to the stream.
pub(crate) enum Piece {
    Data(Bytes),
    /// The body ended where its framing said: anything else that ends the
    /// channel is a body cut short, and resets the stream.
    End,
}

/// A request body fed from a channel: `Sender` gets the pieces, the body
/// hands them to hyper's stream.
pub(crate) fn channel(size: Option<u64>) -> (mpsc::Sender<Piece>, H2Body) {
    let (tx, rx) = mpsc::channel(BODY_QUEUE);
    (
        tx,
        Channel {
            rx,
            size,
            ended: false,
        }
        .boxed(),
    )
}

struct Channel {
    rx: mpsc::Receiver<Piece>,
    size: Option<u64>,
    ended: bool,
}

impl Body for Channel {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Piece::Data(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Piece::End)) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(Some(Err(io::Error::other("request body cut short"))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.size == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        self.size.map(SizeHint::with_exact).unwrap_or_default()
    }
}

/// An HTTP/2 client's request body, handed on to the stream; a pause
/// longer than `timeout` between its frames ends it with an error. The
/// stream's failure is then the client's, which `ClientFault` tells.
pub(crate) fn forward(body: Incoming, timeout: Duration) -> (H2Body, ClientFault) {
    let fault = ClientFault::default();
    let body = Forward {
        body,
        timeout,
        stall: Box::pin(tokio::time::sleep(timeout)),
        fault: fault.clone(),
    };
    (body.boxed(), fault)
}

/// Why a client's request body stopped short, when it did: hyper then
/// resets the upstream stream, and that failure is the client's, never
/// the endpoint's.
#[derive(Clone, Default)]
pub(crate) struct ClientFault(Arc<OnceLock<Option<Reply>>>);

impl ClientFault {
    /// The client's failure, if its body stopped short: too slow (answered
    /// 408) or broken off (nothing to answer).
    pub fn failure(&self) -> Option<Failure> {
        self.0.get().map(|reply| Failure::Client(*reply))
    }
}

struct Forward {
    body: Incoming,
    timeout: Duration,
    stall: Pin<Box<tokio::time::Sleep>>,
    fault: ClientFault,
}

impl Body for Forward {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                _ = self.fault.0.set(None);
                Poll::Ready(Some(Err(io::Error::other(e))))
            }
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + self.timeout;
                self.stall.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(io::Error::other)))
            }
            Poll::Pending => match self.stall.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    _ = self.fault.0.set(Some(Reply::BodyTimeout(self.timeout)));
                    Poll::Ready(Some(Err(io::Error::other("request body stalled"))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An `h2` pool's response body for an HTTP/2 client, handed on frame by
/// frame until it ends, its pool's drain deadline, or the upstream stalls
/// longer than the service's `request_timeout` between frames.
pub(crate) struct Passed {
    /// Holds the response and the request's work on its pool.
    answer: Answer<Response<Incoming>>,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The longest pause between the upstream's frames.
    idle: Duration,
    /// Ends the body when the upstream has paused `idle`; reset on each
    /// frame.
    stall: Pin<Box<tokio::time::Sleep>>,
}

impl Passed {
    pub fn new(answer: Answer<Response<Incoming>>) -> Self {
        let cut = Box::pin(answer.cut.clone().cancelled_owned());
        let idle = answer.service.request_timeout;
        Self {
            answer,
            cut,
            idle,
            stall: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl Body for Passed {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.cut.as_mut().poll(cx).is_ready() {
            this.answer.count_cut();
            return Poll::Ready(Some(Err(io::Error::other(
                "closed at its pool's drain deadline",
            ))));
        }
        match Pin::new(this.answer.conn.body_mut()).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + this.idle;
                this.stall.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(io::Error::other)))
            }
            Poll::Pending => match this.stall.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    tracing::warn!(endpoint = %this.answer.conns.address(), timeout = ?this.idle,
                        "upstream response body stalled");
                    Poll::Ready(Some(Err(io::Error::other(
                        "upstream response body stalled",
                    ))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.answer.conn.body().is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.answer.conn.body().size_hint()
    }
}

/// An empty request body.
pub(crate) fn empty() -> H2Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_specific_headers_are_dropped_and_host_becomes_the_authority() {
        let head = b"POST /upload?x=1 HTTP/1.1\r\nhost: hello.example.com\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\nte: trailers\r\ntransfer-encoding: chunked\r\nx-request-id: 7\r\n\r\n";
        let request = request(head, "10.0.0.1:443", true, empty()).unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(
            request.uri().to_string(),
            "https://hello.example.com/upload?x=1"
        );
        let headers = request.headers();
        assert!(headers.get("connection").is_none());
        assert!(headers.get("keep-alive").is_none());
        assert!(headers.get("transfer-encoding").is_none());
        assert!(headers.get("host").is_none());
        assert_eq!(headers["te"], "trailers");
        assert_eq!(headers["x-request-id"], "7");
    }

    #[test]
    fn a_head_without_host_goes_to_the_endpoint() {
        let request = request(b"GET / HTTP/1.0\r\n\r\n", "10.0.0.1:80", false, empty());
        assert_eq!(request.unwrap().uri().to_string(), "http://10.0.0.1:80/");
    }
}
