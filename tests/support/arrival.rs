//! Every way a request can reach cutover, behind one client type, so a
//! behaviour test can run over all of them from a table: a plain keep-alive
//! GET, a chunked upload, an `Expect: 100-continue` upload that waits for
//! the `100` before sending its body, HTTP/1.0 with and without
//! `Connection: keep-alive`, a WebSocket upgrade, and HTTP/2 with prior
//! knowledge (h2c), bodiless and with a body. HTTP/1.x requests are written
//! byte by byte (`RawClient`), the WebSocket handshake by tokio-tungstenite,
//! h2c by hyper's HTTP/2 client. Every wait is bounded by `LIMIT`.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::{full, BoxBody, RawClient};

/// Upper bound on every wait for the proxy; generous, for a loaded machine.
pub const LIMIT: Duration = Duration::from_secs(10);

/// The body every body-carrying arrival sends.
pub const BODY: &str = "hello world";

/// The text a WebSocket arrival sends and expects echoed.
pub const PING: &str = "ping";

/// How a request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A GET on an HTTP/1.1 keep-alive connection.
    KeepAlive,
    /// A POST with `Transfer-Encoding: chunked`.
    Chunked,
    /// A POST with `Content-Length` and `Expect: 100-continue`; the body is
    /// sent only after a `100 Continue`.
    Expect,
    /// An HTTP/1.0 GET: the connection closes after the response.
    Http10,
    /// An HTTP/1.0 GET with `Connection: keep-alive`.
    Http10KeepAlive,
    /// An HTTP/1.1 upgrade to WebSocket, then an echo round trip.
    WebSocket,
    /// An HTTP/2 GET over cleartext with prior knowledge.
    H2c,
    /// An HTTP/2 POST with a body, over cleartext with prior knowledge.
    H2cUpload,
}

impl Arrival {
    pub const ALL: [Arrival; 8] = [
        Arrival::KeepAlive,
        Arrival::Chunked,
        Arrival::Expect,
        Arrival::Http10,
        Arrival::Http10KeepAlive,
        Arrival::WebSocket,
        Arrival::H2c,
        Arrival::H2cUpload,
    ];

    /// Every arrival that is an HTTP exchange (request, then response).
    pub const EXCHANGES: [Arrival; 7] = [
        Arrival::KeepAlive,
        Arrival::Chunked,
        Arrival::Expect,
        Arrival::Http10,
        Arrival::Http10KeepAlive,
        Arrival::H2c,
        Arrival::H2cUpload,
    ];

    pub fn has_body(self) -> bool {
        matches!(
            self,
            Arrival::Chunked | Arrival::Expect | Arrival::H2cUpload
        )
    }

    pub fn method(self) -> &'static str {
        if self.has_body() {
            "POST"
        } else {
            "GET"
        }
    }

    fn is_h2(self) -> bool {
        matches!(self, Arrival::H2c | Arrival::H2cUpload)
    }

    fn is_http10(self) -> bool {
        matches!(self, Arrival::Http10 | Arrival::Http10KeepAlive)
    }

    /// The connection may carry another request after a relayed response.
    pub fn keeps_alive(self) -> bool {
        !matches!(self, Arrival::Http10 | Arrival::WebSocket)
    }

    /// The `Via` entry the upstream should see: the client's protocol.
    pub fn via_upstream(self) -> &'static str {
        match self {
            _ if self.is_h2() => "2 cutover",
            _ if self.is_http10() => "1.0 cutover",
            _ => "1.1 cutover",
        }
    }

    /// What the upstream's echo says of this request to `target`.
    pub fn echo(self, target: &str) -> String {
        let body = if self.has_body() { BODY } else { "" };
        format!("{} {target} {body}", self.method())
    }

    /// Hop-by-hop fields this arrival can send, and the names of those that
    /// must not reach the upstream. HTTP/2 forbids connection-specific
    /// fields (RFC 9113 §8.2.2) and hyper's client refuses to send them;
    /// `TE: trailers` is the one it allows, and it is hop-by-hop too.
    pub fn hop_by_hop(self) -> (Vec<(&'static str, &'static str)>, Vec<&'static str>) {
        if self.is_h2() {
            return (vec![("te", "trailers")], vec!["te"]);
        }
        (
            vec![
                ("Connection", "x-drop-me"),
                ("X-Drop-Me", "1"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Proxy-Connection", "keep-alive"),
            ],
            vec!["x-drop-me", "keep-alive", "te", "proxy-connection"],
        )
    }
}

impl fmt::Display for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arrival::KeepAlive => "keep-alive GET",
            Arrival::Chunked => "chunked upload",
            Arrival::Expect => "100-continue upload",
            Arrival::Http10 => "HTTP/1.0",
            Arrival::Http10KeepAlive => "HTTP/1.0 keep-alive",
            Arrival::WebSocket => "WebSocket",
            Arrival::H2c => "h2c GET",
            Arrival::H2cUpload => "h2c upload",
        })
    }
}

/// What came back for one request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// "HTTP/1.1 502 Bad Gateway" as it came, or "HTTP/2".
    pub status_line: String,
    pub headers: HeaderMap,
    /// The body; for a WebSocket, the echoed message.
    pub body: Vec<u8>,
    /// Statuses of the interim responses before this one.
    pub interim: Vec<u16>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The backend that answered (`support::Backend` names itself in
    /// `x-pool`).
    pub fn pool(&self) -> &str {
        self.header("x-pool").unwrap_or("")
    }

    fn connection_has(&self, token: &str) -> bool {
        self.headers
            .get_all("connection")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// A reply cutover made itself: `status`, its words in the status line
    /// (HTTP/1), and a short text body starting with them.
    pub fn assert_proxy_made(&self, status: u16, what: &str) {
        let reason = http::StatusCode::from_u16(status)
            .unwrap()
            .canonical_reason()
            .unwrap();
        let words = format!("{status} {reason}");
        assert_eq!(self.status, status, "{what}: {self:?}");
        if self.status_line.starts_with("HTTP/1") {
            assert_eq!(
                self.status_line,
                format!("HTTP/1.1 {words}"),
                "{what}: {self:?}"
            );
            assert_eq!(
                self.header("content-length"),
                Some(self.body.len().to_string().as_str()),
                "{what}: {self:?}"
            );
        }
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.starts_with("text/plain")),
            "{what}: {self:?}"
        );
        let text = self.text();
        assert!(
            text.starts_with(&format!("{words}: ")) && text.ends_with('\n') && text.len() < 200,
            "{what}: {self:?}"
        );
    }
}

/// One client connection of an arrival kind.
pub enum Conn {
    H1 {
        kind: Arrival,
        raw: RawClient,
    },
    H2 {
        kind: Arrival,
        sender: hyper::client::conn::http2::SendRequest<BoxBody>,
    },
    /// A WebSocket opens its connection with each request.
    Ws(SocketAddr),
}

impl Conn {
    pub async fn open(kind: Arrival, addr: SocketAddr) -> Self {
        match kind {
            Arrival::WebSocket => Conn::Ws(addr),
            _ if kind.is_h2() => {
                let stream = TcpStream::connect(addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let handshake = hyper::client::conn::http2::handshake(
                    TokioExecutor::new(),
                    TokioIo::new(stream),
                );
                let (sender, conn) = tokio::time::timeout(LIMIT, handshake)
                    .await
                    .expect("HTTP/2 handshake in time")
                    .expect("HTTP/2 handshake");
                tokio::spawn(conn);
                Conn::H2 { kind, sender }
            }
            _ => Conn::H1 {
                kind,
                raw: RawClient::connect(addr).await,
            },
        }
    }

    /// Sends this arrival's request for `target` to `host` with `extra`
    /// header fields, and reads what comes back.
    pub async fn request(&mut self, host: &str, target: &str, extra: &[(&str, &str)]) -> Answer {
        match self {
            Conn::H1 { kind, raw } => h1_request(*kind, raw, host, target, extra).await,
            Conn::H2 { kind, sender } => h2_request(*kind, sender, host, target, extra).await,
            Conn::Ws(addr) => websocket(*addr, host, target, extra).await,
        }
    }

    /// Checks the connection after `answer` does what the answer said: an
    /// HTTP/1.1 response without `close`, or an HTTP/1.0 one with
    /// `keep-alive`, leaves it serving the next request (a GET to `host`);
    /// otherwise it closes. HTTP/2 connections serve on.
    pub async fn assert_goes_on_as_said(&mut self, answer: &Answer, host: &str, what: &str) {
        match self {
            Conn::Ws(_) => {}
            Conn::H2 { .. } => {
                let next = self.request(host, "/next", &[]).await;
                assert!(next.status >= 200, "{what}: the next request: {next:?}");
            }
            Conn::H1 { kind, raw } => {
                let kept = if kind.is_http10() {
                    answer.connection_has("keep-alive") && !answer.connection_has("close")
                } else {
                    !answer.connection_has("close")
                };
                assert!(
                    !(*kind == Arrival::Http10 && kept),
                    "{what}: an HTTP/1.0 request without keep-alive was answered \
                     as if the connection went on: {answer:?}"
                );
                if !kept {
                    let said: Vec<_> = answer.headers.get_all("connection").iter().collect();
                    let why = if *kind == Arrival::Http10KeepAlive {
                        "an HTTP/1.0 keep-alive client not told `keep-alive` takes the \
                         connection as ending with this response"
                    } else {
                        "the response ends the connection"
                    };
                    raw.assert_closed(&format!("{what}: {why}; Connection: {said:?}"))
                        .await;
                    return;
                }
                let next = if kind.is_http10() {
                    format!("GET /next HTTP/1.0\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n")
                } else {
                    format!("GET /next HTTP/1.1\r\nHost: {host}\r\n\r\n")
                };
                raw.send(next.as_bytes()).await;
                let next = raw.response().await;
                assert!(next.status >= 200, "{what}: the next request: {next:?}");
            }
        }
    }
}

async fn h1_request(
    kind: Arrival,
    raw: &mut RawClient,
    host: &str,
    target: &str,
    extra: &[(&str, &str)],
) -> Answer {
    let version = if kind.is_http10() { "1.0" } else { "1.1" };
    let mut head = format!(
        "{} {target} HTTP/{version}\r\nHost: {host}\r\n",
        kind.method()
    );
    match kind {
        Arrival::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
        Arrival::Expect => head.push_str(&format!(
            "Content-Length: {}\r\nExpect: 100-continue\r\n",
            BODY.len()
        )),
        Arrival::Http10KeepAlive => head.push_str("Connection: keep-alive\r\n"),
        _ => {}
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    if kind == Arrival::Chunked {
        // The body in two chunks, as "hello world".
        head.push_str("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    }
    raw.send(head.as_bytes()).await;
    let mut interim = Vec::new();
    let response = loop {
        let response = raw.response().await;
        if !(100..200).contains(&response.status) {
            break response;
        }
        interim.push(response.status);
        assert!(interim.len() < 10, "{kind}: endless interim responses");
        if kind == Arrival::Expect && response.status == 100 && interim.len() == 1 {
            raw.send(BODY.as_bytes()).await;
        }
    };
    Answer {
        status: response.status,
        status_line: response.head.lines().next().unwrap_or("").to_owned(),
        headers: response.headers,
        body: response.body,
        interim,
    }
}

async fn h2_request(
    kind: Arrival,
    sender: &mut hyper::client::conn::http2::SendRequest<BoxBody>,
    host: &str,
    target: &str,
    extra: &[(&str, &str)],
) -> Answer {
    let body = if kind == Arrival::H2cUpload {
        full(BODY)
    } else {
        Empty::new().map_err(|never| match never {}).boxed()
    };
    let mut request = Request::builder()
        .method(kind.method())
        .uri(format!("http://{host}{target}"));
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let exchange = async {
        sender.ready().await.expect("the HTTP/2 connection is open");
        let response = sender
            .send_request(request.body(body).unwrap())
            .await
            .expect("an HTTP/2 response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("a whole HTTP/2 body");
        Answer {
            status: parts.status.as_u16(),
            status_line: "HTTP/2".to_owned(),
            headers: parts.headers,
            body: body.to_bytes().to_vec(),
            interim: Vec::new(),
        }
    };
    tokio::time::timeout(LIMIT, exchange)
        .await
        .expect("an HTTP/2 answer in time")
}

/// Opens a WebSocket to `target` on `host` through `addr` and, once it is
/// open, sends `PING` and reads the echo (the answer's body). A refused
/// handshake is answered with its status.
async fn websocket(addr: SocketAddr, host: &str, target: &str, extra: &[(&str, &str)]) -> Answer {
    let mut request = format!("ws://{host}{target}")
        .into_client_request()
        .unwrap();
    for (name, value) in extra {
        let value = if name.eq_ignore_ascii_case("connection") {
            // The handshake's own `Connection: Upgrade`, with more tokens.
            format!("Upgrade, {value}")
        } else {
            (*value).to_owned()
        };
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(&value).unwrap(),
        );
    }
    let exchange = async {
        let stream = TcpStream::connect(addr).await.unwrap();
        match tokio_tungstenite::client_async(request, stream).await {
            Ok((mut ws, response)) => {
                ws.send(Message::text(PING)).await.expect("a message sent");
                let echo = match ws.next().await {
                    Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
                    other => panic!("no echo: {other:?}"),
                };
                ws.close(None).await.ok();
                Answer {
                    status: response.status().as_u16(),
                    // The handshake library keeps no status line.
                    status_line: String::new(),
                    headers: response.headers().clone(),
                    body: echo,
                    interim: Vec::new(),
                }
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Answer {
                status: response.status().as_u16(),
                status_line: String::new(),
                headers: response.headers().clone(),
                body: response.body().clone().unwrap_or_default(),
                interim: Vec::new(),
            },
            Err(e) => panic!("WebSocket handshake: {e}"),
        }
    };
    tokio::time::timeout(LIMIT, exchange)
        .await
        .expect("a WebSocket answer in time")
}
