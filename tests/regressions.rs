//! Regressions of cutover's HTTP/1 engine, one test per defect, each over
//! real loopback sockets and named for the behaviour it holds: proxy-made
//! replies to `HEAD` carry no body, so a pipelined request after one is
//! answered in step; every wait on a client has its deadline (a body that
//! never comes after a local reply, a head that is neither HTTP/1 nor the
//! HTTP/2 preface, a body that stalls half-way) and a client's stall never
//! ejects an endpoint; bytes a client sends right behind an upgrade request
//! reach the upstream only after its `101`; failover onto a pool that is
//! draining survives that pool's drain deadline and reuses its upstream
//! connections; an upstream's early answer to a slow upload is relayed;
//! idle upstream connections the upstream closed are reaped, never left in
//! CLOSE-WAIT; and a client that hangs up mid-request releases its
//! connection. Where a defect is about bytes, the upstream is written by
//! hand (`support::raw_backend`, or a small TCP server here) and the client
//! is a raw socket, so every byte is the test's to choose and to see.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutover::metrics::Metrics;
use http::{Method, Request, StatusCode};
use support::raw_backend::{ok, RawBackend, Script, Step, WAIT_LIMIT};
use support::{full, Backend, Client, Proxy, RawClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The client-side deadlines of every proxy here: short, so a test can tell
/// a deadline kept from one missed.
const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
const BODY_TIMEOUT: Duration = Duration::from_secs(1);
/// Slack over a deadline for a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(1500);

/// One listener `web` in front of service `hello` (Host `hello.test` only)
/// with one pool `blue` of one endpoint: no active checks, ejection after a
/// single failure (so any failure counted against the endpoint shows), and
/// the short client deadlines above.
fn one_endpoint(endpoint: SocketAddr, request_timeout: &str) -> String {
    format!(
        r#"
[limits]
header_read_timeout = "1s"
body_read_timeout = "1s"

[[listener]]
name = "web"
bind = "127.0.0.1:0"
services = ["hello"]

[[service]]
name = "hello"
hosts = ["hello.test"]
request_timeout = "{request_timeout}"

  [[service.pool]]
  name = "blue"
  weight = 100
  endpoints = ["{endpoint}"]

  [service.health]
  kind = "none"

  [service.outlier]
  consecutive_failures = 1
  base_ejection = "30s"
"#
    )
}

/// An address nothing listens on.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// How long the passive ejection of endpoint 0 of pool `pool` of the first
/// service has left; `None` when it is not ejected.
fn ejected(proxy: &Proxy, pool: usize) -> Option<Duration> {
    proxy.handle.snapshot().services[0].pools[pool].endpoints[0]
        .health
        .ejected_for()
}

/// The value of the sample `series` (name and labels, as rendered) in a
/// proxy's metrics.
fn metric(metrics: &Metrics, series: &str) -> f64 {
    let text = String::from_utf8(metrics.render()).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no {series} in the metrics:\n{text}"))
}

const CLIENT_CONNECTIONS: &str = "cutover_connections_active{listener=\"web\"}";
const BLUE_UPSTREAM_CONNECTIONS: &str =
    "cutover_upstream_connections_active{pool=\"blue\",service=\"hello\"}";

/// Waits, at most `limit`, until `done` holds; panics with `what` and the
/// last `state` otherwise.
async fn until<S: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut state: impl FnMut() -> S,
    done: impl Fn(&S) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let now = state();
        if done(&now) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; last seen {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Raw client side

/// A response head as a raw client read it.
#[derive(Debug)]
struct Head {
    status: u16,
    text: String,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.text.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length").map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("a bad content-length: {self:?}"))
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads more (bounded by `support::RAW_LIMIT`); false at the proxy's
/// close, a reset counting as one.
async fn more(client: &mut RawClient, what: &str) -> bool {
    match client.try_fill(what).await {
        Ok(n) => n > 0,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Reads the next response head; the bytes must start with a status line
/// right where the previous response ended.
async fn read_head(client: &mut RawClient, what: &str) -> Head {
    let end = loop {
        if client.buf.len() >= 5 {
            assert!(
                client.buf.starts_with(b"HTTP/"),
                "{what}: the bytes where a response should start are not a status line: {:?}",
                String::from_utf8_lossy(&client.buf)
            );
        }
        if let Some(i) = find(&client.buf, b"\r\n\r\n") {
            break i + 4;
        }
        assert!(
            more(client, what).await,
            "{what}: closed before a whole response head; got {:?}",
            String::from_utf8_lossy(&client.buf)
        );
    };
    let text = String::from_utf8_lossy(&client.buf[..end]).into_owned();
    client.buf.drain(..end);
    let status = text
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{what}: not a status line: {text:?}"));
    Head { status, text }
}

/// Reads a `Content-Length` body.
async fn read_body(client: &mut RawClient, head: &Head, what: &str) -> String {
    let length = head
        .content_length()
        .unwrap_or_else(|| panic!("{what}: no content-length: {head:?}"));
    while client.buf.len() < length {
        assert!(
            more(client, what).await,
            "{what}: closed inside the body of {head:?}"
        );
    }
    String::from_utf8_lossy(&client.buf.drain(..length).collect::<Vec<_>>()).into_owned()
}

/// Reads up to the proxy's close; returns what came before it.
async fn until_closed(client: &mut RawClient, what: &str) -> Vec<u8> {
    while more(client, what).await {}
    std::mem::take(&mut client.buf)
}

// ---------------------------------------------------------------------------
// Hand-written upstreams

/// A TCP server on an ephemeral loopback port whose every accepted
/// connection goes to `serve` (with its number, from 0); nothing else.
async fn tcp_server<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream, usize) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            stream.set_nodelay(true).unwrap();
            tokio::spawn(serve(stream, n));
            n += 1;
        }
    });
    addr
}

/// Reads a request head off `stream` (bounded by `WAIT_LIMIT`): the head's
/// text and the bytes read past it. `None` if the peer closed first.
async fn read_request_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
            return Some((head, buf[i + 4..].to_vec()));
        }
        match tokio::time::timeout(WAIT_LIMIT, stream.read(&mut chunk)).await {
            Ok(Ok(n @ 1..)) => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// Ends a connection as a careful server does after a final answer: the
/// write side first, then what the peer still sends is read and dropped
/// until it closes (at most `WAIT_LIMIT`), so the answer is not lost to a
/// reset. Returns how many bytes were dropped.
async fn close_gently(mut stream: TcpStream) -> usize {
    _ = stream.shutdown().await;
    let mut dropped = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
        dropped += n;
    }
    dropped
}

// ---------------------------------------------------------------------------
// 6. HEAD desync

/// Listener `web` in front of five kinds of Host: `ok.test` (a backend
/// answering "ok"), `down.test` (nothing listening: 502), `sick.test` (its
/// only endpoint fails its active check: 503), `slow.test` (a backend that
/// never answers, request_timeout 500ms: 504); any other Host is 404.
fn head_config(ok: SocketAddr, slow: SocketAddr) -> String {
    let down = closed_port();
    let sick = closed_port();
    format!(
        r#"
[limits]
header_read_timeout = "2s"

[[listener]]
name = "web"
bind = "127.0.0.1:0"
services = ["ok", "down", "sick", "slow"]

[[service]]
name = "ok"
hosts = ["ok.test"]

  [[service.pool]]
  name = "blue"
  weight = 100
  endpoints = ["{ok}"]

  [service.health]
  kind = "none"

[[service]]
name = "down"
hosts = ["down.test"]

  [[service.pool]]
  name = "blue"
  weight = 100
  endpoints = ["{down}"]

  [service.health]
  kind = "none"

  [service.outlier]
  consecutive_failures = 0

[[service]]
name = "sick"
hosts = ["sick.test"]

  [[service.pool]]
  name = "blue"
  weight = 100
  endpoints = ["{sick}"]

  [service.health]
  kind = "tcp"
  interval = "1s"
  timeout = "200ms"

[[service]]
name = "slow"
hosts = ["slow.test"]
request_timeout = "500ms"

  [[service.pool]]
  name = "blue"
  weight = 100
  endpoints = ["{slow}"]

  [service.health]
  kind = "none"
"#
    )
}

#[tokio::test]
async fn proxy_made_replies_to_head_carry_no_body_and_the_next_pipelined_request_is_answered_in_step(
) {
    let ok_backend =
        RawBackend::start(|req| Script::write(ok(&format!("ok {}", req.target)))).await;
    let slow = RawBackend::start(|_| {
        Script::steps(vec![
            Step::Pause(Duration::from_secs(30)),
            Step::Write(ok("late")),
        ])
    })
    .await;
    let proxy = Proxy::start(&head_config(ok_backend.addr, slow.addr)).await;

    let mut failed = Vec::new();
    for (host, status) in [
        ("nowhere.test", 404),
        ("down.test", 502),
        ("sick.test", 503),
        ("slow.test", 504),
    ] {
        let case = format!("HEAD to {host} ({status})");
        let outcome = tokio::spawn(head_then_get(proxy.addr(), host, status, case.clone())).await;
        if let Err(e) = outcome {
            failed.push(format!("  [{case}] {e}"));
        }
    }
    assert!(failed.is_empty(), "cases failed:\n{}", failed.join("\n"));
    assert_eq!(
        ok_backend.summaries(),
        [
            "GET /next-404",
            "GET /next-502",
            "GET /next-503",
            "GET /next-504"
        ],
        "each pipelined GET reached ok.test once, and nothing else did"
    );
}

/// A `HEAD` to `host` and, in the same write, a `GET` to `ok.test`: the
/// proxy's `status` reply to the HEAD ends at its head, and the GET's
/// response follows it at once, whole.
async fn head_then_get(addr: SocketAddr, host: &str, status: u16, case: String) {
    let mut client = RawClient::connect(addr).await;
    let pipelined = format!(
        "HEAD /probe HTTP/1.1\r\nHost: {host}\r\n\r\nGET /next-{status} HTTP/1.1\r\nHost: ok.test\r\n\r\n"
    );
    client.send(pipelined.as_bytes()).await;
    let head = read_head(&mut client, &case).await;
    assert_eq!(head.status, status, "{case}: {head:?}");
    assert!(
        !head
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close")),
        "{case}: the reply closes the connection, so the pipelined request is never served: {head:?}"
    );
    // What follows the head must be the next response, not a body.
    let next = read_head(&mut client, &format!("{case}, the GET after it")).await;
    assert_eq!(next.status, 200, "{case}: the GET after it: {next:?}");
    let body = read_body(&mut client, &next, &case).await;
    assert_eq!(body, format!("ok /next-{status}"), "{case}");
    assert!(
        client.buf.is_empty(),
        "{case}: bytes past the two responses: {:?}",
        String::from_utf8_lossy(&client.buf)
    );
}

// ---------------------------------------------------------------------------
// 7. Waits with deadlines

#[tokio::test]
async fn a_body_that_never_comes_after_a_local_404_closes_the_connection_within_body_read_timeout()
{
    let backend = RawBackend::start(|req| Script::write(ok(&req.target))).await;
    let proxy = Proxy::start(&one_endpoint(backend.addr, "3s")).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client
        .send(b"POST /x HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: 10\r\n\r\n")
        .await;
    let head = read_head(&mut client, "the reply to an unknown host").await;
    assert_eq!(head.status, 404, "{head:?}");
    read_body(&mut client, &head, "the 404's text").await;
    let replied = Instant::now();
    let rest = until_closed(&mut client, "the close after the body never came").await;
    let held = replied.elapsed();
    assert!(
        rest.is_empty(),
        "bytes after the 404: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        held <= BODY_TIMEOUT + SLACK,
        "the connection was held {held:?} waiting for a body that never came (body_read_timeout {BODY_TIMEOUT:?})"
    );
    assert_eq!(backend.bytes_received(), 0, "nothing went upstream");
}

#[tokio::test]
async fn a_connection_opening_with_pri_but_no_whole_http2_preface_is_refused_within_header_read_timeout(
) {
    let backend = RawBackend::start(|req| Script::write(ok(&req.target))).await;
    let proxy = Proxy::start(&one_endpoint(backend.addr, "3s")).await;
    let mut failed = Vec::new();
    for opening in [
        &b"PRI garbage"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM",
        b"PRI * HTTP/2.0\r\n",
    ] {
        let case = format!("{:?} then nothing", String::from_utf8_lossy(opening));
        let addr = proxy.addr();
        let opening = opening.to_vec();
        let run = tokio::spawn({
            let case = case.clone();
            async move {
                let mut client = RawClient::connect(addr).await;
                let sent = Instant::now();
                client.send(&opening).await;
                let head = read_head(&mut client, &case).await;
                let answered = sent.elapsed();
                assert!(head.status == 408 || head.status == 400, "{case}: {head:?}");
                assert!(
                    answered <= HEAD_TIMEOUT + SLACK,
                    "{case}: answered after {answered:?} (header_read_timeout {HEAD_TIMEOUT:?})"
                );
                read_body(&mut client, &head, &case).await;
                until_closed(&mut client, &case).await;
                assert!(
                    sent.elapsed() <= HEAD_TIMEOUT + SLACK + Duration::from_secs(1),
                    "{case}: the connection was held open {:?}",
                    sent.elapsed()
                );
            }
        })
        .await;
        if let Err(e) = run {
            failed.push(format!("  [{case}] {e}"));
        }
    }
    assert!(failed.is_empty(), "cases failed:\n{}", failed.join("\n"));
    assert_eq!(backend.bytes_received(), 0, "nothing went upstream");
}

/// A WebSocket-style upstream: answers an upgrade request with `101`, then
/// echoes every byte. Bytes that reach it before it has answered (within
/// 300 ms of the head) are recorded in `early`, then echoed too.
async fn upgrade_echo_server(early: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    tcp_server(move |mut stream, _| {
        let early = early.clone();
        async move {
            let Some((_head, mut before)) = read_request_head(&mut stream).await else {
                return;
            };
            let mut chunk = vec![0u8; 4096];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), stream.read(&mut chunk)).await
            {
                before.extend_from_slice(&chunk[..n]);
            }
            early.lock().unwrap().extend_from_slice(&before);
            let switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
            if stream.write_all(switching).await.is_err() || stream.write_all(&before).await.is_err()
            {
                return;
            }
            loop {
                match tokio::time::timeout(WAIT_LIMIT, stream.read(&mut chunk)).await {
                    Ok(Ok(n @ 1..)) => {
                        if stream.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn bytes_sent_right_behind_an_upgrade_request_reach_the_upstream_after_its_101() {
    let early = Arc::new(Mutex::new(Vec::new()));
    let upstream = upgrade_echo_server(early.clone()).await;
    let proxy = Proxy::start(&one_endpoint(upstream, "3s")).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client
        .send(
            b"GET /ws HTTP/1.1\r\nHost: hello.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
              early-bytes",
        )
        .await;
    let head = read_head(&mut client, "the upgrade's answer").await;
    assert_eq!(head.status, 101, "{head:?}");
    assert!(
        head.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{head:?}"
    );
    while !client.buf.starts_with(b"early-bytes") {
        assert!(
            client.buf.len() < b"early-bytes".len() && b"early-bytes".starts_with(&client.buf[..]),
            "the tunnel carried {:?} where the early bytes' echo should be",
            String::from_utf8_lossy(&client.buf)
        );
        assert!(
            more(&mut client, "the echo of the early bytes").await,
            "the tunnel closed before the early bytes' echo; got {:?}",
            String::from_utf8_lossy(&client.buf)
        );
    }
    client.buf.drain(..b"early-bytes".len());
    assert!(
        early.lock().unwrap().is_empty(),
        "the early bytes reached the upstream before it switched protocols: {:?}",
        String::from_utf8_lossy(&early.lock().unwrap())
    );
    client.send(b"later").await;
    while client.buf.len() < b"later".len() {
        assert!(
            more(&mut client, "the echo of a later write").await,
            "the tunnel closed"
        );
    }
    assert_eq!(client.buf, b"later", "the tunnel's echo");
}

#[tokio::test]
async fn a_body_stalled_half_way_gets_408_within_body_read_timeout_and_never_ejects_the_endpoint() {
    let backend = RawBackend::start(|req| Script::write(ok(&req.summary()))).await;
    let proxy = Proxy::start(&one_endpoint(backend.addr, "10s")).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    let sent = Instant::now();
    client
        .send(b"POST /stall HTTP/1.1\r\nHost: hello.test\r\nContent-Length: 100\r\n\r\n0123456789")
        .await;
    let head = read_head(&mut client, "the answer to a stalled body").await;
    let answered = sent.elapsed();
    assert_eq!(head.status, 408, "{head:?}");
    assert!(
        answered <= BODY_TIMEOUT + SLACK,
        "408 after {answered:?} (body_read_timeout {BODY_TIMEOUT:?})"
    );
    read_body(&mut client, &head, "the 408's text").await;
    until_closed(&mut client, "the close after the 408").await;

    assert_eq!(
        ejected(&proxy, 0),
        None,
        "the client's stall was counted against the endpoint"
    );
    let after = support::get(proxy.addr(), "hello.test", "/after").await;
    assert_eq!(
        (after.status, after.text().as_str()),
        (StatusCode::OK, "GET /after"),
        "a request after the stall"
    );
    assert_eq!(
        backend.summaries(),
        ["GET /after"],
        "the stalled POST never became a whole upstream request"
    );
}

// ---------------------------------------------------------------------------
// 8. Drain deadline vs failover

/// blue (weight 100) and green (weight 0), failover on, drain_timeout 2s,
/// no active checks; an endpoint is ejected at its first failure, for 30s,
/// so an ejection of blue at any time during a test still shows at its end.
fn failover_config(blue: &Backend, green: &Backend) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[limits]
header_read_timeout = "2s"

[[listener]]
name = "web"
bind = "127.0.0.1:0"
services = ["hello"]

[[service]]
name = "hello"
drain_timeout = "2s"
failover = true
retries = 2
connect_timeout = "1s"
request_timeout = "5s"

  [[service.pool]]
  name = "blue"
  weight = 100
  endpoints = ["{}"]

  [[service.pool]]
  name = "green"
  weight = 0
  endpoints = ["{}"]

  [service.health]
  kind = "none"

  [service.outlier]
  consecutive_failures = 1
  base_ejection = "30s"
"#,
        blue.addr, green.addr
    )
}

async fn admin_put(proxy: &Proxy, path: &str, body: &str) {
    let mut client = Client::connect(proxy.admin.unwrap()).await;
    let req = Request::builder()
        .method(Method::PUT)
        .uri(path)
        .header("host", "admin")
        .body(full(body.to_owned()))
        .unwrap();
    let reply = client.send(req).await.unwrap();
    assert!(
        reply.status.is_success(),
        "{path}: {} {}",
        reply.status,
        reply.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_onto_a_draining_pool_loses_nothing_across_its_drain_deadline_and_reuses_connections(
) {
    const CLIENTS: usize = 4;
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::with_admin(&failover_config(&blue, &green)).await;
    assert_eq!(
        support::get(proxy.addr(), "x", "/").await.pool(),
        "blue",
        "before the switch"
    );

    admin_put(
        &proxy,
        "/v1/services/hello/weights",
        r#"{"blue": 0, "green": 100}"#,
    )
    .await;
    let switched = Instant::now();
    let drain_deadline = switched + Duration::from_secs(2);
    assert_eq!(
        support::get(proxy.addr(), "x", "/").await.pool(),
        "green",
        "after the switch"
    );
    green.kill();
    let blue_connections_before = blue.connections.load(Ordering::Relaxed);

    // Steady keep-alive load from the kill until well past blue's deadline.
    let stop_at = drain_deadline + Duration::from_millis(1500);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let addr = proxy.addr();
        let mut client = Client::connect(addr).await;
        tasks.push(tokio::spawn(async move {
            let mut served = Vec::new();
            let mut failed = Vec::new();
            while Instant::now() < stop_at {
                match client.get("/", &[]).await {
                    Ok(r) if r.status == StatusCode::OK && r.pool() == "blue" => {
                        served.push(Instant::now());
                        // Steady, not flat out: the machine is shared.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(r) => failed.push(format!("{} from {:?}: {}", r.status, r.pool(), r.text())),
                    Err(e) => {
                        failed.push(e);
                        // The connection is gone; go on with a fresh one.
                        client = Client::connect(addr).await;
                    }
                }
            }
            (served, failed)
        }));
    }
    let mut served = Vec::new();
    let mut failed = Vec::new();
    for task in tasks {
        let (s, f) = task.await.unwrap();
        served.extend(s);
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during failover, e.g. {:?}",
        failed.len(),
        failed.len() + served.len(),
        &failed[..failed.len().min(5)]
    );
    let after_deadline = served
        .iter()
        .filter(|t| **t > drain_deadline + Duration::from_millis(200))
        .count();
    assert!(
        served.len() >= 40 && after_deadline >= 10,
        "not steady load across the drain deadline: {} requests, {after_deadline} after it",
        served.len()
    );
    assert_eq!(
        ejected(&proxy, 0),
        None,
        "blue was ejected while it carried the failover"
    );
    let opened = blue.connections.load(Ordering::Relaxed) - blue_connections_before;
    assert!(
        opened <= 2 * CLIENTS as u64 + 2,
        "blue saw {opened} new connections for {} requests from {CLIENTS} keep-alive clients: \
         failover does not reuse upstream connections",
        served.len()
    );
    assert_eq!(
        metric(
            &proxy.handle.metrics,
            "cutover_drain_closed_total{pool=\"blue\",service=\"hello\"}"
        ),
        0.0,
        "failover work begun after the switch was cut at blue's drain deadline"
    );
}

// ---------------------------------------------------------------------------
// 9. Early upstream answer to a slow upload

/// An upstream that answers a `Content-Length: 1000000` POST with `413` as
/// soon as its head arrives, then closes (gently: its write side at once,
/// then it reads and drops the rest); anything else gets "ok" and a close.
/// `early` counts the 413s sent.
async fn refusing_server(early: Arc<AtomicU64>) -> SocketAddr {
    tcp_server(move |mut stream, _| {
        let early = early.clone();
        async move {
            let Some((head, _)) = read_request_head(&mut stream).await else {
                return;
            };
            let big = head
                .to_ascii_lowercase()
                .contains("\r\ncontent-length: 1000000\r\n");
            let answer: &[u8] = if big {
                early.fetch_add(1, Ordering::Relaxed);
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            };
            if stream.write_all(answer).await.is_ok() {
                close_gently(stream).await;
            }
        }
    })
    .await
}

#[tokio::test]
async fn an_upstream_answering_a_slow_upload_early_is_relayed_and_not_ejected() {
    let early = Arc::new(AtomicU64::new(0));
    let upstream = refusing_server(early.clone()).await;
    let proxy = Proxy::start(&one_endpoint(upstream, "10s")).await;

    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let mut start =
        b"POST /upload HTTP/1.1\r\nHost: hello.test\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    start.extend_from_slice(&[b'a'; 4096]);
    writer.write_all(&start).await.unwrap();
    // Then a trickle, while the answer is read.
    let trickle = tokio::spawn(async move {
        let until = Instant::now() + WAIT_LIMIT;
        while Instant::now() < until {
            if writer.write_all(&[b'b'; 64]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let mut got = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    let closed = loop {
        let head_end = find(&got, b"\r\n\r\n");
        if head_end.is_some_and(|end| got.len() >= end + 4 + 4) {
            break false;
        }
        match tokio::time::timeout_at(deadline, reader.read(&mut chunk)).await {
            Ok(Ok(n @ 1..)) => got.extend_from_slice(&chunk[..n]),
            Ok(_) => break true,
            Err(_) => panic!(
                "no whole answer within {WAIT_LIMIT:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    };
    trickle.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 413 "),
        "the upstream's early 413 was not relayed (closed: {closed}): {text:?}"
    );
    assert!(text.ends_with("\r\n\r\nbig!"), "{text:?}");
    assert_eq!(early.load(Ordering::Relaxed), 1);

    assert_eq!(
        ejected(&proxy, 0),
        None,
        "an upstream's early answer was counted as its failure"
    );
    let after = support::get(proxy.addr(), "hello.test", "/after").await;
    assert_eq!(
        (after.status, after.text().as_str()),
        (StatusCode::OK, "ok"),
        "a request after the early answer"
    );
}

// ---------------------------------------------------------------------------
// 10. Idle upstream connections closed by the upstream are reaped

/// Sockets in CLOSE-WAIT (state 08) with `port` at either end, from
/// /proc/net/tcp and /proc/net/tcp6: "local remote" lines.
fn close_wait_sockets(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 || fields[3] != "08" {
                continue;
            }
            let port_of = |field: &str| {
                field
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            if port_of(fields[1]) == Some(port) || port_of(fields[2]) == Some(port) {
                found.push(format!("{table}: {} {}", fields[1], fields[2]));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_the_upstream_closed_are_reaped_not_left_in_close_wait() {
    const REQUESTS: usize = 20;
    // The upstream holds each answer until all the requests have arrived,
    // so each takes a connection of its own; answers with keep-alive; then
    // closes every connection ~200 ms after the test lets it.
    let (arrived_tx, arrived_rx) = tokio::sync::watch::channel(0usize);
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let arrived_tx = Arc::new(arrived_tx);
    let upstream = tcp_server(move |mut stream, _| {
        let arrived_tx = arrived_tx.clone();
        let mut arrived_rx = arrived_rx.clone();
        let mut release_rx = release_rx.clone();
        async move {
            if read_request_head(&mut stream).await.is_none() {
                return;
            }
            arrived_tx.send_modify(|n| *n += 1);
            _ = tokio::time::timeout(WAIT_LIMIT, arrived_rx.wait_for(|n| *n >= REQUESTS)).await;
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=60\r\n\r\nok";
            if stream.write_all(answer).await.is_err() {
                return;
            }
            _ = tokio::time::timeout(WAIT_LIMIT, release_rx.wait_for(|r| *r)).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Closed with nothing unread: a FIN, not a reset.
            drop(stream);
        }
    })
    .await;
    let proxy = Proxy::start(&one_endpoint(upstream, "10s")).await;

    let mut clients = Vec::new();
    for i in 0..REQUESTS {
        let addr = proxy.addr();
        clients.push(tokio::spawn(async move {
            support::get(addr, "hello.test", &format!("/{i}")).await
        }));
    }
    for client in clients {
        let reply = client.await.unwrap();
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::OK, "ok")
        );
    }
    assert_eq!(
        metric(&proxy.handle.metrics, BLUE_UPSTREAM_CONNECTIONS),
        REQUESTS as f64,
        "each answered upstream connection is parked for reuse"
    );

    release_tx.send_replace(true);
    let port = upstream.port();
    until(
        "the proxy closed the upstream connections its upstream closed",
        Duration::from_secs(3),
        || {
            (
                close_wait_sockets(port),
                metric(&proxy.handle.metrics, BLUE_UPSTREAM_CONNECTIONS),
            )
        },
        |(close_wait, open)| close_wait.is_empty() && *open == 0.0,
    )
    .await;
}

// ---------------------------------------------------------------------------
// A client that hangs up mid-request

#[tokio::test]
async fn a_client_hanging_up_mid_request_releases_its_connection() {
    let mut failed = Vec::new();
    for (case, request) in [
        (
            "a GET waiting for its response",
            &b"GET /slow HTTP/1.1\r\nHost: hello.test\r\n\r\n"[..],
        ),
        (
            "a POST whose body stops half-way",
            b"POST /slow HTTP/1.1\r\nHost: hello.test\r\nContent-Length: 100\r\n\r\n0123456789",
        ),
    ] {
        let run = tokio::spawn(hang_up_mid_request(request.to_vec(), case.to_owned())).await;
        if let Err(e) = run {
            failed.push(format!("  [{case}] {e}"));
        }
    }
    assert!(failed.is_empty(), "cases failed:\n{}", failed.join("\n"));
}

/// Sends `request` to a proxy of its own whose upstream takes 30s to
/// answer (request_timeout 20s, so only noticing the client's close can
/// end the wait within this test), waits until the upstream has the
/// request's first bytes, hangs up, and waits for the proxy to let go of
/// the client connection and of the upstream one.
async fn hang_up_mid_request(request: Vec<u8>, case: String) {
    let backend = RawBackend::start(|_| {
        Script::steps(vec![
            Step::Pause(Duration::from_secs(30)),
            Step::Write(ok("late")),
        ])
    })
    .await;
    let proxy = Proxy::start(&one_endpoint(backend.addr, "20s")).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client.send(&request).await;
    until(
        &format!("{case}: the request reached the upstream"),
        WAIT_LIMIT,
        || backend.bytes_received(),
        |n| *n > 0,
    )
    .await;
    assert_eq!(metric(&proxy.handle.metrics, CLIENT_CONNECTIONS), 1.0);
    drop(client);
    until(
        &format!("{case}: the client hung up; (client, upstream) connections released"),
        Duration::from_secs(3),
        || {
            (
                metric(&proxy.handle.metrics, CLIENT_CONNECTIONS),
                metric(&proxy.handle.metrics, BLUE_UPSTREAM_CONNECTIONS),
            )
        },
        |(client, upstream)| *client == 0.0 && *upstream == 0.0,
    )
    .await;
}
