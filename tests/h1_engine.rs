//! cutover's HTTP/1 engine end to end, over real sockets: how it frames
//! upstream responses (chunked with trailers, `Content-Length`, none for
//! `HEAD`, until the upstream's close), when it reuses an upstream connection
//! and when it must not (`Connection: close`, an idle socket the upstream
//! closed, a reused socket closed under a request), large request bodies with
//! a pipelined request behind them, HTTP/1.0, chunked and `Expect:
//! 100-continue` requests later on a keep-alive connection (one engine serves
//! every HTTP/1.x request, whatever came before it on the connection), and
//! the 502 for an upstream response it cannot parse or whose head is too
//! large. Most backends here are raw TCP, so a test controls every byte and
//! every close, and counts upstream connections.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::{full, Backend, Config, Proxy, RawClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Pause between the pieces a raw backend writes, so the proxy reads them
/// separately.
const PIECE_GAP: Duration = Duration::from_millis(5);

/// One listener `web` in front of one pool with one endpoint and no active
/// health checks (they would connect to raw backends and skew their counts).
fn config(endpoint: SocketAddr) -> String {
    Config::new()
        .limits(|l| l.header_read_timeout("2s"))
        .listener("web")
        .service("hello", |s| {
            s.request_timeout("3s")
                .health_none()
                .pool("blue", 100, &[endpoint])
        })
        .toml()
}

// ---------------------------------------------------------------------------
// Raw TCP backend

/// What a raw backend does with its connection after writing an answer.
#[derive(Clone, Copy, Debug)]
enum Then {
    KeepOpen,
    /// Close at once.
    Close,
    /// Keep the socket for this long without answering, then close it; a
    /// byte the proxy sends meanwhile is counted as `late`.
    CloseLater(Duration),
    /// As `CloseLater`, but end with a reset (SO_LINGER 0).
    ResetLater(Duration),
}

/// One answer of a raw backend: written piece by piece, `PIECE_GAP` apart.
struct Answer {
    pieces: Vec<Vec<u8>>,
    after: Then,
}

impl Answer {
    fn new(after: Then, pieces: &[&[u8]]) -> Self {
        Self {
            pieces: pieces.iter().map(|p| p.to_vec()).collect(),
            after,
        }
    }

    /// Nothing at all: the connection closes with the request unanswered.
    fn none() -> Self {
        Self {
            pieces: Vec::new(),
            after: Then::Close,
        }
    }
}

/// A request as a raw backend read it (`Content-Length` bodies only).
#[derive(Debug, Clone)]
struct RawRequest {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// Gives the answer to a request, the `nth` (from 0) on its connection.
type Answerer = Arc<dyn Fn(&RawRequest, usize) -> Answer + Send + Sync>;

/// A backend speaking HTTP/1.1 by hand over TCP.
#[derive(Clone)]
struct RawBackend {
    addr: SocketAddr,
    /// Connections accepted.
    accepted: Arc<AtomicU64>,
    /// Bytes that arrived on a connection after the backend answered with
    /// intent to close it (see `Then::CloseLater`).
    late: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<RawRequest>>>,
}

impl RawBackend {
    async fn start(answer: impl Fn(&RawRequest, usize) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Self {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            late: Arc::default(),
            seen: Arc::default(),
        };
        let answer: Answerer = Arc::new(answer);
        let b = backend.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                b.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(b.clone().serve(stream, answer.clone()));
            }
        });
        backend
    }

    async fn serve(self, mut stream: TcpStream, answer: Answerer) {
        stream.set_nodelay(true).unwrap();
        let mut buf = Vec::new();
        for nth in 0.. {
            let Some(request) = read_request(&mut stream, &mut buf).await else {
                return;
            };
            self.seen.lock().unwrap().push(request.clone());
            let answer = answer(&request, nth);
            for (i, piece) in answer.pieces.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(PIECE_GAP).await;
                }
                if stream.write_all(piece).await.is_err() {
                    return;
                }
            }
            match answer.after {
                Then::KeepOpen => {}
                Then::Close => return,
                Then::CloseLater(wait) | Then::ResetLater(wait) => {
                    let mut byte = [0u8; 1];
                    if let Ok(Ok(1..)) = tokio::time::timeout(wait, stream.read(&mut byte)).await {
                        self.late.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Then::ResetLater(_) = answer.after {
                        stream.set_zero_linger().unwrap();
                    }
                    return;
                }
            }
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    fn late(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// The requests seen so far, in order, as "METHOD path".
    fn paths(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }
}

/// Reads one request head and its `Content-Length` body; `None` at EOF.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<RawRequest> {
    let mut chunk = vec![0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut line = head.lines().next().unwrap_or("").split(' ');
    let method = line.next().unwrap_or("").to_owned();
    let path = line.next().unwrap_or("").to_owned();
    let length: usize = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Some(RawRequest { method, path, body })
}

/// A 200 with `body` and a `Content-Length`, plus `extra` header lines.
fn ok(body: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------
// Raw client

/// A response as a raw client read it, its body decoded from its framing.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    /// "none", "length", "chunked" or "close".
    framing: &'static str,
    body: Vec<u8>,
    /// Trailer lines of a chunked body, each with its CRLF, without the
    /// final blank line.
    trailers: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.head, name)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A proxy-made 502: text body and all.
    fn assert_bad_gateway(&self) {
        assert_eq!(self.status, 502, "{self:?}");
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.starts_with("text/plain")),
            "{self:?}"
        );
        assert!(self.text().starts_with("502 Bad Gateway: "), "{self:?}");
    }
}

/// A raw client connection (`support::RawClient`) with this file's readers.
struct Conn(RawClient);

impl std::ops::Deref for Conn {
    type Target = RawClient;
    fn deref(&self) -> &RawClient {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut RawClient {
        &mut self.0
    }
}

impl Conn {
    async fn connect(addr: SocketAddr) -> Self {
        Self(RawClient::connect(addr).await)
    }

    /// Reads the response to a request other than `HEAD`.
    async fn reply(&mut self) -> Reply {
        self.read_reply(false).await
    }

    /// Reads the response to a `HEAD`: whatever it says, it has no body.
    async fn reply_to_head(&mut self) -> Reply {
        self.read_reply(true).await
    }

    async fn read_reply(&mut self, to_head: bool) -> Reply {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill("response head").await == 0 {
                panic!(
                    "connection closed before a response; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let status: u16 = head
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1.x status line: {head:?}"));
        let mut reply = Reply {
            status,
            head,
            framing: "none",
            body: Vec::new(),
            trailers: String::new(),
        };
        let chunked = reply
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = reply
            .header("content-length")
            .map(|v| v.parse::<usize>().unwrap());
        if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
            return reply;
        }
        if chunked {
            reply.framing = "chunked";
            loop {
                match decode_chunked(&self.buf) {
                    Ok(Some((body, trailers, used))) => {
                        reply.body = body;
                        reply.trailers = trailers;
                        self.buf.drain(..used);
                        return reply;
                    }
                    Ok(None) => {
                        if self.fill("chunked body").await == 0 {
                            panic!("connection closed inside a chunked body: {reply:?}");
                        }
                    }
                    Err(e) => panic!("{e}: {:?}", String::from_utf8_lossy(&self.buf)),
                }
            }
        }
        if let Some(length) = length {
            reply.framing = "length";
            while self.buf.len() < length {
                if self.fill("response body").await == 0 {
                    panic!("connection closed inside a body: {reply:?}");
                }
            }
            reply.body = self.buf.drain(..length).collect();
            return reply;
        }
        reply.framing = "close";
        while self.fill("body up to the close").await > 0 {}
        reply.body = std::mem::take(&mut self.buf);
        reply
    }

    /// Asserts nothing was read past the responses consumed so far.
    fn assert_nothing_extra(&self) {
        assert!(
            self.buf.is_empty(),
            "bytes past the response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// Asserts the proxy closes the connection without sending anything more.
    async fn assert_closed(&mut self) {
        let n = self.fill("close").await;
        assert_eq!(
            (n, self.buf.as_slice()),
            (0, &b""[..]),
            "expected a close with no bytes, got {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

/// A chunked body at the start of `b`: its data, its trailers, and how many
/// bytes it took; `None` while incomplete.
type Decoded = (Vec<u8>, String, usize);

fn decode_chunked(b: &[u8]) -> Result<Option<Decoded>, String> {
    let mut i = 0;
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(&b[i..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&b[i..i + eol]);
        let digits = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(digits, 16)
            .map_err(|_| format!("bad chunk-size line {line:?}"))?;
        i += eol + 2;
        if size == 0 {
            let start = i;
            loop {
                let Some(eol) = find(&b[i..], b"\r\n") else {
                    return Ok(None);
                };
                i += eol + 2;
                if eol == 0 {
                    let trailers = String::from_utf8_lossy(&b[start..i - 2]).into_owned();
                    return Ok(Some((body, trailers, i)));
                }
            }
        }
        if b.len() < i + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&b[i..i + size]);
        if &b[i + size..i + size + 2] != b"\r\n" {
            return Err(format!("chunk of {size} bytes not followed by CRLF"));
        }
        i += size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The first header `name` of a head, case-insensitively.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Bytes that are not all alike, the same in every run.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// FNV-1a, 64 bits: enough to tell a body changed in transit.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn chunked_response_with_trailers_arrives_whole_and_both_connections_are_reused() {
    // Written in pieces that split a chunk-size line, a 40 000-byte chunk
    // (more than one proxy read), the last chunk, its trailer and the final
    // CRLF.
    let big = "x".repeat(40_000);
    let big_chunk = format!("9c40\r\n{big}\r\n");
    let backend = RawBackend::start(move |req, _| {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\
             Trailer: X-Checksum\r\nX-Path: {}\r\n\r\n",
            req.path
        );
        Answer::new(
            Then::KeepOpen,
            &[
                head.as_bytes(),
                b"5;name=value\r\nhello\r\n1",
                b"0\r\n0123456789abcdef\r\n",
                big_chunk.as_bytes(),
                b"0\r\nX-Checksum: abc",
                b"\r\n\r",
                b"\n",
            ],
        )
    })
    .await;
    let proxy = Proxy::start(&config(backend.addr)).await;
    let expected = format!("hello0123456789abcdef{big}");

    let mut conn = Conn::connect(proxy.addr()).await;
    for round in 0..3 {
        let path = format!("/chunked/{round}");
        conn.send(&get(&path)).await;
        let reply = conn.reply().await;
        assert_eq!(reply.status, 200, "round {round}: {reply:?}");
        assert_eq!(reply.framing, "chunked", "round {round}: {}", reply.head);
        assert_eq!(reply.header("x-path"), Some(path.as_str()));
        assert_eq!(reply.header("content-length"), None, "{}", reply.head);
        assert_eq!(reply.header("connection"), None, "{}", reply.head);
        assert!(
            reply.text() == expected,
            "round {round}: body of {} bytes differs",
            reply.body.len()
        );
        assert_eq!(reply.trailers, "X-Checksum: abc\r\n", "round {round}");
        conn.assert_nothing_extra();
    }
    assert_eq!(
        backend.paths(),
        ["GET /chunked/0", "GET /chunked/1", "GET /chunked/2"]
    );
    assert_eq!(
        backend.accepted(),
        1,
        "the upstream connection was not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_post_is_relayed_byte_for_byte_and_a_pipelined_get_is_answered() {
    let backend = Backend::with_handler(
        "blue",
        Arc::new(|req: Request<Incoming>| {
            Box::pin(async move {
                let method = req.method().clone();
                let path = req.uri().path().to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let text = format!("{method} {path} {} {:016x}", body.len(), fnv1a(&body));
                Response::new(full(text))
            })
        }),
    )
    .await;
    let proxy = Proxy::start(&config(backend.addr)).await;

    // All on one client connection: a body that comes with its head, one
    // just over 64 KiB, and one of several hundred KiB.
    let mut conn = Conn::connect(proxy.addr()).await;
    for (round, size) in [10, 64 * 1024 + 1, 300_007].into_iter().enumerate() {
        let body = pseudo_random(size);
        let mut bytes = format!(
            "POST /upload/{round} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {size}\r\n\r\n"
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&get(&format!("/after/{round}")));
        conn.send(&bytes).await;

        let upload = conn.reply().await;
        assert_eq!(upload.status, 200, "{upload:?}");
        assert_eq!(
            upload.text(),
            format!("POST /upload/{round} {size} {:016x}", fnv1a(&body)),
            "the upstream did not receive the body as sent"
        );
        let after = conn.reply().await;
        assert_eq!(after.status, 200, "{after:?}");
        assert_eq!(
            after.text(),
            format!("GET /after/{round} 0 {:016x}", fnv1a(b""))
        );
        conn.assert_nothing_extra();
    }
    assert_eq!(backend.hits(), 6);
}

#[tokio::test]
async fn head_response_has_no_body_and_the_connection_goes_on() {
    let backend = RawBackend::start(|req, _| {
        let head: &[u8] = match (req.method.as_str(), req.path.as_str()) {
            // A length that describes the GET's body, not sent.
            ("HEAD", "/length") => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n"
            }
            ("HEAD", _) => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            _ => return Answer::new(Then::KeepOpen, &[&ok(&req.path, "")]),
        };
        Answer::new(Then::KeepOpen, &[head])
    })
    .await;
    let proxy = Proxy::start(&config(backend.addr)).await;

    let mut conn = Conn::connect(proxy.addr()).await;
    for (head_path, get_path) in [("/length", "/a"), ("/chunked", "/b")] {
        conn.send(format!("HEAD {head_path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        let reply = conn.reply_to_head().await;
        assert_eq!(reply.status, 200, "{reply:?}");
        if head_path == "/length" {
            assert_eq!(reply.header("content-length"), Some("1000"), "{reply:?}");
        }
        // Nothing follows the head: the next bytes are the GET's response.
        conn.send(&get(get_path)).await;
        let reply = conn.reply().await;
        assert_eq!((reply.status, reply.text().as_str()), (200, get_path));
        conn.assert_nothing_extra();
    }

    // HEAD and GET pipelined in one write.
    conn.send(&[&b"HEAD /length HTTP/1.1\r\nHost: x\r\n\r\n"[..], &get("/c")].concat())
        .await;
    let head = conn.reply_to_head().await;
    assert_eq!(head.status, 200, "{head:?}");
    let reply = conn.reply().await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "/c"));
    conn.assert_nothing_extra();

    assert_eq!(backend.paths().len(), 6);
    assert_eq!(
        backend.accepted(),
        1,
        "the upstream connection was not reused"
    );
}

#[tokio::test]
async fn upstream_connection_close_is_honoured_and_the_client_keeps_its_connection() {
    // `/fin`: closes at once after its answer. `/hold`: says close, but keeps
    // the socket a while; a request sent on it would be counted as late.
    let backend = RawBackend::start(|req, _| {
        let after = if req.path.starts_with("/hold") {
            Then::CloseLater(Duration::from_secs(3))
        } else {
            Then::Close
        };
        Answer::new(after, &[&ok(&req.path, "Connection: close\r\n")])
    })
    .await;
    let proxy = Proxy::start(&config(backend.addr)).await;

    let mut conn = Conn::connect(proxy.addr()).await;
    let mut sent = 0;
    for kind in ["fin", "hold"] {
        for i in 0..4 {
            let path = format!("/{kind}/{i}");
            let started = Instant::now();
            conn.send(&get(&path)).await;
            let reply = conn.reply().await;
            sent += 1;
            assert_eq!((reply.status, reply.text().as_str()), (200, path.as_str()));
            // The upstream's close is not the client's.
            assert_eq!(reply.header("connection"), None, "{reply:?}");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{path} took {:?}",
                started.elapsed()
            );
            conn.assert_nothing_extra();
        }
    }
    assert_eq!(
        backend.accepted(),
        sent,
        "one upstream connection per request"
    );
    assert_eq!(
        backend.late(),
        0,
        "a request was sent on a connection the upstream said it would close"
    );
}

#[tokio::test]
async fn response_delimited_by_upstream_close_reaches_the_client_which_is_then_closed() {
    let body = String::from_utf8(
        pseudo_random(60_000)
            .into_iter()
            .map(|b| b'a' + b % 26)
            .collect(),
    )
    .unwrap();
    let pieces = [
        body[..20_000].to_owned(),
        body[20_000..45_000].to_owned(),
        body[45_000..].to_owned(),
    ];
    let backend = RawBackend::start(move |req, _| {
        let status = if req.path == "/v10" {
            "HTTP/1.0 200 OK"
        } else {
            "HTTP/1.1 200 OK"
        };
        let head = format!("{status}\r\nContent-Type: text/plain\r\n\r\n");
        let [a, b, c] = &pieces;
        Answer::new(
            Then::Close,
            &[head.as_bytes(), a.as_bytes(), b.as_bytes(), c.as_bytes()],
        )
    })
    .await;
    let proxy = Proxy::start(&config(backend.addr)).await;

    for path in ["/v10", "/v11"] {
        let mut conn = Conn::connect(proxy.addr()).await;
        conn.send(&get(path)).await;
        // Read up to the proxy's close (bounded): the body has no other end.
        let reply = conn.reply().await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_eq!(reply.framing, "close", "{path}: {}", reply.head);
        assert_eq!(
            reply.header("connection"),
            Some("close"),
            "{path}: {}",
            reply.head
        );
        assert!(
            reply.text() == body,
            "{path}: body of {} bytes differs from the {} sent",
            reply.body.len(),
            body.len()
        );
    }
    assert_eq!(backend.accepted(), 2);
}

#[tokio::test]
async fn http10_chunked_and_expect_requests_later_on_a_keep_alive_connection_are_served() {
    let backend = Backend::with_handler(
        "blue",
        Arc::new(|req: Request<Incoming>| {
            Box::pin(async move {
                let method = req.method().clone();
                let path = req.uri().path().to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let text = format!("{method} {path} {}", String::from_utf8_lossy(&body));
                Response::new(full(text))
            })
        }),
    )
    .await;
    let proxy = Proxy::start(&config(backend.addr)).await;
    let chunked_post = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        .into_bytes()
    };
    let http10 = |path: &str| format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").into_bytes();

    // A GET, then an HTTP/1.0 request.
    let mut conn = Conn::connect(proxy.addr()).await;
    conn.send(&get("/first")).await;
    let reply = conn.reply().await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "GET /first "));
    conn.send(&http10("/old")).await;
    let reply = conn.reply().await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "GET /old "));
    assert_eq!(reply.framing, "length", "{}", reply.head);
    // HTTP/1.0 without keep-alive: the connection ends after it, and says so.
    assert_eq!(reply.header("connection"), Some("close"), "{}", reply.head);
    conn.assert_closed().await;

    // A GET, then a chunked upload, then another GET.
    let mut conn = Conn::connect(proxy.addr()).await;
    conn.send(&get("/first")).await;
    let reply = conn.reply().await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "GET /first "));
    conn.send(&chunked_post("/upload")).await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "POST /upload hello world")
    );
    conn.send(&get("/later")).await;
    let reply = conn.reply().await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "GET /later "));
    conn.assert_nothing_extra();

    // A GET, then an upload that waits for 100 Continue before its body,
    // then another GET. The 100 comes from cutover once the request is on
    // its way upstream; the upstream never sees the expectation.
    let mut conn = Conn::connect(proxy.addr()).await;
    conn.send(&get("/first")).await;
    let reply = conn.reply().await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "GET /first "));
    conn.send(
        b"POST /expect HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\
          Expect: 100-continue\r\n\r\n",
    )
    .await;
    let interim = conn.reply().await;
    assert_eq!(interim.status, 100, "{interim:?}");
    conn.assert_nothing_extra();
    conn.send(b"hello world").await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "POST /expect hello world")
    );
    assert!(
        !backend.last_seen().headers.contains_key("expect"),
        "the expectation reached the upstream"
    );
    conn.send(&get("/later")).await;
    let reply = conn.reply().await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "GET /later "));
    conn.assert_nothing_extra();

    // The same pipelined in one write: each request is found in the bytes
    // the one before it left in the connection's buffer.
    let mut conn = Conn::connect(proxy.addr()).await;
    conn.send(&[get("/one"), chunked_post("/two"), http10("/three")].concat())
        .await;
    for expected in ["GET /one ", "POST /two hello world", "GET /three "] {
        let reply = conn.reply().await;
        assert_eq!((reply.status, reply.text().as_str()), (200, expected));
    }
    conn.assert_closed().await;
    assert_eq!(backend.hits(), 11);
}

#[tokio::test]
async fn upstream_closing_idle_connections_silently_costs_no_request() {
    // Keep-alive by every header, then closed 50 ms later: with a FIN for
    // `/fin/..`, a reset for `/rst/..`.
    let backend = RawBackend::start(|req, _| {
        let wait = Duration::from_millis(50);
        let after = if req.path.starts_with("/rst") {
            Then::ResetLater(wait)
        } else {
            Then::CloseLater(wait)
        };
        let body = format!("{} {} {}", req.method, req.path, req.body.len());
        Answer::new(
            after,
            &[&ok(
                &body,
                "Connection: keep-alive\r\nKeep-Alive: timeout=60\r\n",
            )],
        )
    })
    .await;
    let proxy = Proxy::start(&config(backend.addr)).await;

    // POSTs too: with a body, and not idempotent, they may not be resent, so
    // the proxy must notice the closed socket before it writes.
    let mut conn = Conn::connect(proxy.addr()).await;
    let mut sent = 0;
    for i in 0..3 {
        for kind in ["fin", "rst"] {
            for method in ["GET", "POST"] {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let path = format!("/{kind}/{i}");
                let request = match method {
                    "GET" => get(&path),
                    _ => {
                        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
                            .into_bytes()
                    }
                };
                conn.send(&request).await;
                let reply = conn.reply().await;
                sent += 1;
                let length = if method == "GET" { 0 } else { 4 };
                assert_eq!(
                    (reply.status, reply.text()),
                    (200, format!("{method} {path} {length}")),
                    "request {sent}"
                );
                conn.assert_nothing_extra();
            }
        }
    }
    assert_eq!(backend.late(), 0, "a request was sent inside the 50 ms");
    assert_eq!(backend.paths().len(), sent, "{:?}", backend.paths());
    assert_eq!(backend.accepted(), sent as u64);
}

#[tokio::test]
async fn get_on_a_reused_connection_closed_under_it_is_resent_on_a_fresh_one() {
    // Each upstream connection answers its first request and closes on its
    // second without a word: a close racing the proxy's reuse.
    let backend = RawBackend::start(|req, nth| match nth {
        0 => Answer::new(Then::KeepOpen, &[&ok(&req.path, "")]),
        _ => Answer::none(),
    })
    .await;
    let proxy = Proxy::start(&config(backend.addr)).await;

    let mut conn = Conn::connect(proxy.addr()).await;
    for path in ["/a", "/b", "/c"] {
        conn.send(&get(path)).await;
        let reply = conn.reply().await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, path),
            "{reply:?}"
        );
    }
    assert_eq!(
        backend.paths(),
        ["GET /a", "GET /b", "GET /b", "GET /c", "GET /c"]
    );
    assert_eq!(backend.accepted(), 3);

    // A POST with a body is not resent: it may have been acted on.
    conn.send(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
        .await;
    conn.reply().await.assert_bad_gateway();
    assert_eq!(
        backend.paths().iter().filter(|p| *p == "POST /p").count(),
        1
    );
}

#[tokio::test]
async fn malformed_upstream_response_is_502_and_serving_goes_on() {
    let backend = RawBackend::start(|req, _| {
        let (bad, after): (&[u8], Then) = match req.path.as_str() {
            "/garbage" => (b"NOT HTTP AT ALL\r\n\r\n", Then::KeepOpen),
            "/bad-status" => (b"HTTP/1.1 2000 OK\r\n\r\n", Then::KeepOpen),
            "/two-lengths" => (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
                Then::KeepOpen,
            ),
            "/truncated" => (b"HTTP/1.1 200 OK\r\nContent-Le", Then::Close),
            _ => return Answer::new(Then::KeepOpen, &[&ok(&req.path, "")]),
        };
        Answer::new(after, &[bad])
    })
    .await;
    let proxy = Proxy::start(&config(backend.addr)).await;

    let mut conn = Conn::connect(proxy.addr()).await;
    let cases = [
        ("/garbage", "not valid HTTP/1.1"),
        ("/bad-status", "not valid HTTP/1.1"),
        ("/two-lengths", "not valid HTTP/1.1"),
        ("/truncated", "connection failed"),
    ];
    for (bad, why) in cases {
        conn.send(&get(bad)).await;
        let reply = conn.reply().await;
        reply.assert_bad_gateway();
        assert!(reply.text().contains(why), "{bad}: {reply:?}");
        // The same client connection goes on.
        let ok_path = format!("/ok-after{bad}");
        conn.send(&get(&ok_path)).await;
        let reply = conn.reply().await;
        assert_eq!((reply.status, reply.text()), (200, ok_path), "after {bad}");
        conn.assert_nothing_extra();
    }
    // And so do others.
    let mut other = Conn::connect(proxy.addr()).await;
    other.send(&get("/other")).await;
    let reply = other.reply().await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "/other"));
}

#[tokio::test]
async fn response_head_over_64_kib_is_refused_however_it_arrives() {
    // The engine's stated limit for an upstream response head is 64 KiB.
    let huge = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    )
    .into_bytes();
    let backend = RawBackend::start(move |req, _| {
        if req.path == "/in-pieces" {
            let pieces: Vec<&[u8]> = huge.chunks(1024).collect();
            Answer::new(Then::Close, &pieces)
        } else {
            Answer::new(Then::Close, &[&huge])
        }
    })
    .await;
    let proxy = Proxy::start(&config(backend.addr)).await;

    for path in ["/in-pieces", "/at-once"] {
        let mut conn = Conn::connect(proxy.addr()).await;
        conn.send(&get(path)).await;
        let reply = conn.reply().await;
        assert_eq!(
            reply.status,
            502,
            "{path}: a head of {} bytes was relayed",
            reply.head.len()
        );
        reply.assert_bad_gateway();
    }
}

#[tokio::test]
async fn response_with_many_headers_is_relayed_whatever_the_request_target_form() {
    // 80 headers: valid HTTP/1.1, and within the 128 the codec reads.
    let mut many = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
    for i in 0..80 {
        many.push_str(&format!("X-Header-{i}: {i}\r\n"));
    }
    many.push_str("\r\nok");
    let backend =
        RawBackend::start(move |_, _| Answer::new(Then::KeepOpen, &[many.as_bytes()])).await;
    let proxy = Proxy::start(&config(backend.addr)).await;
    let count = |reply: &Reply| {
        reply
            .head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-header-"))
            .count()
    };

    // An absolute-form target: sent upstream in origin-form.
    let mut conn = Conn::connect(proxy.addr()).await;
    conn.send(b"GET http://x/many HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "ok"),
        "absolute-form: {reply:?}"
    );
    assert_eq!(count(&reply), 80, "absolute-form");

    // An origin-form target.
    let mut conn = Conn::connect(proxy.addr()).await;
    conn.send(&get("/many")).await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "ok"),
        "origin-form: {reply:?}"
    );
    assert_eq!(count(&reply), 80, "origin-form");
    assert_eq!(backend.paths(), ["GET /many", "GET /many"]);
}
