//! Bad client input, over real sockets: a malformed request (first on its
//! connection or a later keep-alive one), an oversized head, a head that
//! arrives too slowly, and a connection left idle. Each is answered by the
//! proxy itself — 400, 431, 408 with a short text body, or a silent close for
//! an idle connection — never reaches the backend, and leaves every other
//! connection serving. Also checks the limits do not misfire: a head exactly
//! at `max_header_bytes`, idle time that is not header time, and pipelined
//! requests are all served.
//!
//! The tests about a timeout run on tokio's paused clock (`start_paused`):
//! the proxy runs in the test's runtime, its timers fire in order and on
//! time, and waiting one out costs no real time. The sockets are real; the
//! clock jumps to the next timer only when no task can run and no socket
//! has anything to read, so bytes already sent on loopback are read before
//! a deadline behind them fires.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use support::config::Limits;
use support::{full, Backend, Client, Config, Proxy, RawClient};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Upper bound on every wait for the proxy; generous, for a loaded machine.
const LIMIT: Duration = Duration::from_secs(5);

/// On the paused clock a timeout fires when it is due; what is allowed past
/// it covers the test's own steps (a 50 ms drip, a 5 ms client pause), never
/// a slow machine.
const SLACK: Duration = Duration::from_millis(100);

/// The `header_read_timeout` and `idle_timeout` of the tests that time them.
const HEADER_READ: Duration = Duration::from_millis(300);
const IDLE: Duration = Duration::from_millis(500);

/// A duration as the configuration file writes it ("300ms").
fn text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Asserts `elapsed` is `timeout`, or up to `SLACK` past it: not before.
fn assert_at(what: &str, elapsed: Duration, timeout: Duration) {
    println!("{what} after {elapsed:?}");
    assert!(
        elapsed >= timeout && elapsed <= timeout + SLACK,
        "{what} after {elapsed:?}, not at {timeout:?}"
    );
}

/// One listener `web` in front of one pool, with the `[limits]` `limits` sets.
fn config(backend: &Backend, limits: impl FnOnce(Limits) -> Limits) -> String {
    Config::new()
        .limits(limits)
        .listener("web")
        .service("hello", |s| s.pool("blue", 100, &[backend.addr]))
        .toml()
}

/// A backend that answers each request with its path, to tell replies apart.
async fn echo_path() -> Backend {
    Backend::with_handler(
        "blue",
        Arc::new(|req| {
            let path = req.uri().path().to_owned();
            Box::pin(async move { Response::new(full(path)) })
        }),
    )
    .await
}

/// A response as read off a raw socket.
#[derive(Debug)]
struct RawReply {
    status: u16,
    head: String,
    body: String,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// A proxy-made reply: `status`, a text body that starts with the status
    /// line's words, and the connection marked for closing.
    fn assert_proxy_made(&self, status: StatusCode) {
        assert_eq!(self.status, status.as_u16(), "{self:?}");
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.starts_with("text/plain")),
            "{self:?}"
        );
        let reason = status.canonical_reason().unwrap();
        assert!(
            self.body
                .starts_with(&format!("{} {reason}: ", status.as_u16())),
            "{self:?}"
        );
        assert!(
            self.body.ends_with('\n') && self.body.len() < 200,
            "{self:?}"
        );
        assert_eq!(self.header("connection"), Some("close"), "{self:?}");
    }
}

/// A raw client connection (`support::RawClient`) with this file's readers.
struct Raw(RawClient);

impl std::ops::Deref for Raw {
    type Target = RawClient;
    fn deref(&self) -> &RawClient {
        &self.0
    }
}

impl std::ops::DerefMut for Raw {
    fn deref_mut(&mut self) -> &mut RawClient {
        &mut self.0
    }
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Self {
        Self(RawClient::connect(addr).await)
    }

    /// Reads one response with a `content-length` body.
    async fn response(&mut self) -> RawReply {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
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
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {head:?}"));
        let mut reply = RawReply {
            status,
            head,
            body: String::new(),
        };
        let length: usize = reply
            .header("content-length")
            .unwrap_or_else(|| panic!("no content-length: {reply:?}"))
            .parse()
            .unwrap();
        while self.buf.len() < head_end + length {
            if self.fill("response body").await == 0 {
                panic!("connection closed inside a body: {reply:?}");
            }
        }
        let rest = self.buf.split_off(head_end + length);
        reply.body = String::from_utf8_lossy(&self.buf[head_end..]).into_owned();
        self.buf = rest;
        reply
    }

    /// Asserts the proxy closes the connection without sending anything more;
    /// returns when it did.
    async fn assert_closed(&mut self) -> Instant {
        self.assert_closed_within(support::RAW_LIMIT).await
    }

    /// `assert_closed`, waiting up to `limit` for the close.
    async fn assert_closed_within(&mut self, limit: Duration) -> Instant {
        let n = self
            .try_fill_within(limit, "close")
            .await
            .unwrap_or_else(|e| panic!("reading close: {e}"));
        assert_eq!(
            (n, self.buf.as_slice()),
            (0, &b""[..]),
            "expected a close with no bytes, got {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        Instant::now()
    }

    /// As `assert_closed`, but a reset also counts: a proxy that stops
    /// reading a head that is too large may close with unread bytes, which
    /// the kernel turns into a reset.
    async fn assert_closed_or_reset(&mut self) {
        match self.try_fill("close").await {
            Ok(n) => assert_eq!(
                (n, self.buf.as_slice()),
                (0, &b""[..]),
                "expected a close with no bytes, got {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
}

/// A GET of `path` whose head is exactly `len` bytes, padded with a header.
fn head_of_len(path: &str, len: usize) -> Vec<u8> {
    let bare = format!("GET {path} HTTP/1.1\r\nhost: x\r\nx-pad: \r\n\r\n");
    let head = format!(
        "GET {path} HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        "a".repeat(len - bare.len())
    );
    assert_eq!(head.len(), len);
    head.into_bytes()
}

/// Keep-alive clients that send requests until told to stop, each asserting a
/// 200 for every request; then each sends one more. Returns how many requests
/// each served.
fn keep_busy(clients: Vec<Client>, stop: Arc<AtomicBool>) -> Vec<JoinHandle<u64>> {
    clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut served = 0;
                loop {
                    let last = stop.load(Ordering::Relaxed);
                    let reply = client.get("/", &[]).await.unwrap_or_else(|e| {
                        panic!("client {i} failed after {served} requests: {e}")
                    });
                    assert_eq!(reply.status, StatusCode::OK, "client {i}: {reply:?}");
                    served += 1;
                    if last {
                        return served;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_while_other_connections_keep_working() {
    let backend = Backend::start("blue").await;
    let proxy = Proxy::start(&config(&backend, |l| l.header_read_timeout("2s"))).await;
    let addr = proxy.addr();

    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = Client::connect(addr).await;
        assert_eq!(client.get("/", &[]).await.unwrap().status, StatusCode::OK);
        clients.push(client);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let busy = keep_busy(clients, stop.clone());

    let bad: [(&str, &[u8]); 4] = [
        ("not HTTP", b"GARBAGE\r\n\r\n"),
        (
            "header line without a colon",
            b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
        ),
        ("broken request line", b"G T / HTTP/1.1\r\nHost: x\r\n\r\n"),
        // Someone speaking TLS to a plain HTTP port: no line ends at all.
        (
            "TLS ClientHello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ),
    ];
    for _round in 0..3 {
        for (what, bytes) in bad {
            let mut conn = Raw::connect(addr).await;
            conn.send(bytes).await;
            let reply = conn.response().await;
            reply.assert_proxy_made(StatusCode::BAD_REQUEST);
            assert!(
                reply.body.contains("could not be parsed"),
                "{what}: {reply:?}"
            );
            conn.assert_closed().await;
        }
    }

    stop.store(true, Ordering::Relaxed);
    let mut good = 4;
    for task in busy {
        let served = tokio::time::timeout(LIMIT, task)
            .await
            .expect("busy clients finish")
            .unwrap();
        assert!(served >= 2, "a client served only {served} requests");
        good += served;
    }
    assert_eq!(backend.hits(), good, "the backend saw a bad request");
}

#[tokio::test]
async fn head_over_max_header_bytes_is_431_and_one_at_the_limit_is_served() {
    let backend = echo_path().await;
    let proxy = Proxy::start(&config(&backend, |l| l.max_header_bytes(4096))).await;
    let addr = proxy.addr();

    // Exactly at the limit, and then another request on the same connection.
    let mut conn = Raw::connect(addr).await;
    conn.send(&head_of_len("/at-limit", 4096)).await;
    let reply = conn.response().await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "/at-limit"));
    conn.send(&head_of_len("/again", 4000)).await;
    let reply = conn.response().await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "/again"));

    // One byte over, well over, and over on a later keep-alive request.
    for len in [4097, 6000, 16 * 1024] {
        let mut conn = Raw::connect(addr).await;
        conn.send(&head_of_len("/too-big", len)).await;
        let reply = conn.response().await;
        reply.assert_proxy_made(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert!(reply.body.contains("4096 bytes"), "{len}: {reply:?}");
        conn.assert_closed_or_reset().await;
    }
    let mut conn = Raw::connect(addr).await;
    conn.send(&head_of_len("/first", 100)).await;
    assert_eq!(conn.response().await.status, 200);
    conn.send(&head_of_len("/too-big", 5000)).await;
    let reply = conn.response().await;
    reply.assert_proxy_made(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    conn.assert_closed_or_reset().await;

    assert_eq!(backend.hits(), 3, "the backend saw an oversized request");
}

#[tokio::test(start_paused = true)]
async fn slow_head_gets_408_after_header_read_timeout() {
    let backend = Backend::start("blue").await;
    let proxy = Proxy::start(&config(&backend, |l| {
        l.header_read_timeout(&text(HEADER_READ)).idle_timeout("5s")
    }))
    .await;
    let addr = proxy.addr();

    let mut normal = Client::connect(addr).await;
    assert_eq!(normal.get("/", &[]).await.unwrap().status, StatusCode::OK);
    let stop = Arc::new(AtomicBool::new(false));
    let busy = keep_busy(vec![normal], stop.clone());

    // A partial head, then nothing.
    let mut slow = Raw::connect(addr).await;
    let started = Instant::now();
    slow.send(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    let reply = slow.response().await;
    let elapsed = started.elapsed();
    reply.assert_proxy_made(StatusCode::REQUEST_TIMEOUT);
    let within = format!("within {}", text(HEADER_READ));
    assert!(reply.body.contains(&within), "{reply:?}");
    assert_at("408 for a stalled head", elapsed, HEADER_READ);
    slow.assert_closed().await;

    // A head dripped a byte at a time: the timeout counts from its first
    // byte, it is not renewed by each one (renewed, it would come 300 ms
    // after the last byte, past the slack).
    let mut drip = Raw::connect(addr).await;
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n\r\n";
    for byte in head {
        drip.send(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > HEADER_READ {
            break;
        }
    }
    let reply = drip.response().await;
    let elapsed = started.elapsed();
    reply.assert_proxy_made(StatusCode::REQUEST_TIMEOUT);
    assert_at("408 for a dripped head", elapsed, HEADER_READ);

    stop.store(true, Ordering::Relaxed);
    let served = tokio::time::timeout(LIMIT, busy.into_iter().next().unwrap())
        .await
        .expect("normal client finishes")
        .unwrap();
    assert!(served >= 2, "the normal client served {served} requests");
    assert_eq!(backend.hits(), 1 + served, "the backend saw a slow request");
}

#[tokio::test(start_paused = true)]
async fn idle_keep_alive_connection_is_closed_silently_after_idle_timeout() {
    let backend = Backend::start("blue").await;
    let proxy = Proxy::start(&config(&backend, |l| {
        l.header_read_timeout("2s").idle_timeout(&text(IDLE))
    }))
    .await;
    let addr = proxy.addr();

    // Idle after a request.
    let mut conn = Raw::connect(addr).await;
    let sent = Instant::now();
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(conn.response().await.status, 200);
    let idle = conn.assert_closed().await - sent;
    assert_at("idle keep-alive connection closed", idle, IDLE);

    // Idle from the start: never sent a byte.
    let mut silent = Raw::connect(addr).await;
    let opened = Instant::now();
    let idle = silent.assert_closed().await - opened;
    assert_at("silent connection closed", idle, IDLE);

    // Gaps shorter than the timeout, over a lifetime longer than it: each
    // request restarts the idle clock.
    let mut busy = Raw::connect(addr).await;
    let opened = Instant::now();
    let mut served = 0;
    while opened.elapsed() < 3 * IDLE {
        busy.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(busy.response().await.status, 200, "after {served}");
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(backend.hits(), 1 + served);
}

#[tokio::test(start_paused = true)]
async fn idle_time_does_not_count_against_header_read_timeout() {
    let backend = Backend::start("blue").await;
    let proxy = Proxy::start(&config(&backend, |l| {
        l.header_read_timeout("300ms").idle_timeout("5s")
    }))
    .await;
    let addr = proxy.addr();

    // Idle before the first request, and between requests.
    let mut conn = Raw::connect(addr).await;
    for round in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let reply = conn.response().await;
        assert_eq!(reply.status, 200, "round {round}: {reply:?}");
    }

    // The same through hyper's client, which holds the connection for reuse.
    let mut client = Client::connect(addr).await;
    for round in 0..2 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "round {round}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(client.get("/", &[]).await.unwrap().status, StatusCode::OK);
    assert_eq!(backend.hits(), 6);
}

#[tokio::test(start_paused = true)]
async fn later_requests_on_a_keep_alive_connection_are_guarded_too() {
    let backend = Backend::start("blue").await;
    let proxy = Proxy::start(&config(&backend, |l| {
        l.header_read_timeout(&text(HEADER_READ))
            .idle_timeout("5s")
            .max_header_bytes(4096)
    }))
    .await;
    let addr = proxy.addr();
    let good = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    // Malformed second (and third) request.
    for earlier in [1, 2] {
        let mut conn = Raw::connect(addr).await;
        for _ in 0..earlier {
            conn.send(good).await;
            assert_eq!(conn.response().await.status, 200);
        }
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n")
            .await;
        let reply = conn.response().await;
        reply.assert_proxy_made(StatusCode::BAD_REQUEST);
        conn.assert_closed().await;
    }

    // Stalled second request: the header timer starts at its first byte.
    let mut conn = Raw::connect(addr).await;
    conn.send(good).await;
    assert_eq!(conn.response().await.status, 200);
    let started = Instant::now();
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    let reply = conn.response().await;
    let elapsed = started.elapsed();
    reply.assert_proxy_made(StatusCode::REQUEST_TIMEOUT);
    assert_at("408 for a stalled second request", elapsed, HEADER_READ);
    conn.assert_closed().await;

    assert_eq!(backend.hits(), 4, "the backend saw a bad request");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let backend = echo_path().await;
    let proxy = Proxy::start(&config(&backend, |l| l.header_read_timeout("2s"))).await;

    let mut conn = Raw::connect(proxy.addr()).await;
    conn.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let first = conn.response().await;
    let second = conn.response().await;
    assert_eq!((first.status, first.body.as_str()), (200, "/first"));
    assert_eq!((second.status, second.body.as_str()), (200, "/second"));

    // The connection is still usable afterwards.
    conn.send(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let third = conn.response().await;
    assert_eq!((third.status, third.body.as_str()), (200, "/third"));
    assert_eq!(backend.hits(), 3);
}

#[tokio::test(start_paused = true)]
async fn pipelined_bad_requests_are_guarded_like_any_other() {
    let backend = echo_path().await;
    let proxy = Proxy::start(&config(&backend, |l| {
        l.header_read_timeout(&text(HEADER_READ))
            .idle_timeout("5s")
            .max_header_bytes(4096)
    }))
    .await;
    let addr = proxy.addr();
    let good = b"GET /good HTTP/1.1\r\nHost: x\r\n\r\n";

    let cases: [(&[u8], StatusCode); 3] = [
        (b"GARBAGE\r\n\r\n", StatusCode::BAD_REQUEST),
        (
            b"GET /slow HTTP/1.1\r\nHost: x\r\n",
            StatusCode::REQUEST_TIMEOUT,
        ),
        (
            &head_of_len("/too-big", 6000),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
    ];
    for (bad, status) in cases {
        let mut conn = Raw::connect(addr).await;
        conn.send(&[&good[..], bad].concat()).await;
        let started = Instant::now();
        let reply = conn.response().await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "/good"));
        conn.response().await.assert_proxy_made(status);
        let elapsed = started.elapsed();
        if status == StatusCode::REQUEST_TIMEOUT {
            assert_at("408 for a pipelined stalled head", elapsed, HEADER_READ);
        } else {
            assert!(elapsed <= SLACK, "{status} after {elapsed:?}");
        }
        conn.assert_closed_or_reset().await;
    }
    assert_eq!(backend.hits(), 3, "the backend saw a bad request");
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_longer_than_hyper_default_is_honoured() {
    let backend = Backend::start("blue").await;
    let proxy = Proxy::start(&config(&backend, |l| {
        l.header_read_timeout("10s").idle_timeout("60s")
    }))
    .await;
    let idle_timeout = Duration::from_secs(60);

    // Still open after 32 s idle, past hyper's own 30 s default...
    let mut conn = Raw::connect(proxy.addr()).await;
    for round in 0..2 {
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let reply = conn.response().await;
        assert_eq!(reply.status, 200, "round {round}: {reply:?}");
        if round == 0 {
            tokio::time::sleep(Duration::from_secs(32)).await;
        }
    }
    // ...and closed at the configured 60 s.
    let answered = Instant::now();
    let idle = conn.assert_closed_within(2 * idle_timeout).await - answered;
    assert_at("idle connection closed", idle, idle_timeout);
}
