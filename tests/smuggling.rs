//! Request smuggling and response desync, over real loopback sockets, in the
//! spirit of smuggler.py and the published request-smuggling lists: the RFC
//! 9112 framing rules cutover's HTTP/1 engine holds on both sides. From
//! clients: `Transfer-Encoding` with `Content-Length`, a transfer coding
//! that does not end in `chunked`, duplicate or malformed lengths and
//! malformed header lines are refused with a 400 and the connection closed
//! before a byte reaches an upstream; a malformed chunked body is a 400 too,
//! and as a client's fault never counts against an endpoint. Valid requests
//! — pipelined, preceded by empty lines, in absolute form, or carrying what
//! looks like another request in their body — reach the upstream once each,
//! in order, in origin-form, framed one way. From upstreams: a response with
//! ambiguous framing or malformed header bytes is a 502 and its connection
//! is discarded; bytes past a response's end never answer a later request;
//! interim responses are bounded; a malformed chunk ends the client
//! connection without a clean end; an unasked `101` is a 502. Every
//! upstream is a raw TCP backend (`support::raw_backend`) that keeps each
//! byte it receives, so "nothing reached the upstream" is checked, not
//! assumed. Table-driven tests run every case and name each that failed.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use support::raw_backend::{ok, RawBackend, RawRequest, Script, Step, WAIT_LIMIT};
use support::{Config, Proxy, RawClient};
use tokio::sync::{Notify, Semaphore};

/// Cases of one table run at once, each with its own proxy and backend: few,
/// to stay light on a shared machine.
const PARALLEL_CASES: usize = 4;

/// One listener `web` in front of one pool with one endpoint: no active
/// health checks (they would reach the raw backend), passive ejection after
/// 3 failures in a row, and a Host rewrite when `host` is given.
fn config(endpoint: SocketAddr, host: Option<&str>) -> String {
    Config::new()
        .limits(|l| l.header_read_timeout("2s"))
        .listener("web")
        .service("hello", |s| {
            s.request_timeout("3s")
                .health_none()
                .outlier(3, "30s")
                .pool_with("blue", 100, &[endpoint], |p| match host {
                    Some(host) => p.host(host),
                    None => p,
                })
        })
        .toml()
}

/// The echo backend's answer: "METHOD target body-length".
fn echo(req: &RawRequest) -> Script {
    Script::write(ok(&echo_text(&req.summary(), req.body.len())))
}

fn echo_text(summary: &str, body_len: usize) -> String {
    format!("{summary} {body_len}")
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

/// `POST /smuggle` with `fields` (each ending in CRLF) after its Host, then
/// `body`.
fn post(fields: &[u8], body: &[u8]) -> Vec<u8> {
    [
        &b"POST /smuggle HTTP/1.1\r\nHost: x\r\n"[..],
        fields,
        b"\r\n",
        body,
    ]
    .concat()
}

/// A raw backend and a proxy in front of it.
struct Fixture {
    backend: RawBackend,
    proxy: Proxy,
}

impl Fixture {
    async fn start(answer: impl Fn(&RawRequest) -> Script + Send + Sync + 'static) -> Self {
        Self::start_with_host(answer, None).await
    }

    async fn start_with_host(
        answer: impl Fn(&RawRequest) -> Script + Send + Sync + 'static,
        host: Option<&str>,
    ) -> Self {
        let backend = RawBackend::start(answer).await;
        let proxy = Proxy::start(&config(backend.addr, host)).await;
        Self { backend, proxy }
    }

    async fn echo() -> Self {
        Self::start(echo).await
    }

    async fn connect(&self, case: &str) -> Conn {
        Conn::connect(self.proxy.addr(), case).await
    }

    /// What the backend received, for failure messages.
    fn upstream_log(&self) -> String {
        format!(
            "upstream requests {:?}, other upstream bytes {:?}",
            self.backend.summaries(),
            self.backend.leftovers()
        )
    }

    /// A GET of `/sentinel` on a fresh client connection is answered by the
    /// backend, and it is all the backend ever received: no other request,
    /// and no stray bytes.
    async fn assert_only_the_sentinel_arrives(&self, case: &str) {
        let mut conn = self.connect(case).await;
        conn.send(&get("/sentinel")).await;
        let reply = conn.reply().await;
        assert_eq!(
            (reply.status, reply.text()),
            (200, echo_text("GET /sentinel", 0)),
            "{case}: the request after it: {reply:?}"
        );
        assert_eq!(
            self.backend.summaries(),
            ["GET /sentinel"],
            "{case}: {}",
            self.upstream_log()
        );
        assert!(
            self.backend.leftovers().is_empty(),
            "{case}: {}",
            self.upstream_log()
        );
    }
}

// ---------------------------------------------------------------------------
// Raw client

/// A response as a raw client read it.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    /// The body, decoded from its framing.
    body: Vec<u8>,
    /// Interim (1xx other than 101) responses read before this one.
    interim: usize,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A proxy-made reply with a short `text/plain` body.
    fn assert_proxy_made(&self, case: &str, status: u16) {
        assert_eq!(self.status, status, "{case}: {self:?}");
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.starts_with("text/plain")),
            "{case}: a {status} without a text/plain body: {self:?}"
        );
        assert!(
            !self.body.is_empty() && self.body.len() < 200,
            "{case}: a {status} whose body is not a short text: {self:?}"
        );
    }

    /// The proxy's 400: a short text and `connection: close`.
    fn assert_refused(&self, case: &str) {
        self.assert_proxy_made(case, 400);
        assert!(
            self.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            "{case}: a 400 without connection: close: {self:?}"
        );
    }
}

/// A raw client connection whose every panic names its case.
struct Conn {
    raw: RawClient,
    case: String,
}

impl Conn {
    async fn connect(addr: SocketAddr, case: &str) -> Self {
        Self {
            raw: RawClient::connect(addr).await,
            case: case.to_owned(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.raw.send(bytes).await;
    }

    /// Reads more; false at the proxy's close (a reset counts as one).
    async fn more(&mut self, what: &str) -> bool {
        let what = format!("{what} for [{}]", self.case);
        match self.raw.try_fill(&what).await {
            Ok(n) => n > 0,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("{what}: {e}"),
        }
    }

    /// Reads the next final response's head (interim ones are counted and
    /// passed over; a `101` is final).
    async fn head(&mut self) -> Reply {
        let mut interim = 0;
        loop {
            let head_end = loop {
                if let Some(i) = find(&self.raw.buf, b"\r\n\r\n") {
                    break i + 4;
                }
                if !self.more("response head").await {
                    panic!(
                        "{}: the connection closed before a response (after {interim} interim); got {:?}",
                        self.case,
                        String::from_utf8_lossy(&self.raw.buf)
                    );
                }
            };
            let head = String::from_utf8_lossy(&self.raw.buf[..head_end]).into_owned();
            self.raw.buf.drain(..head_end);
            let status: u16 = head
                .strip_prefix("HTTP/1.")
                .and_then(|rest| rest.get(2..5))
                .and_then(|code| code.parse().ok())
                .unwrap_or_else(|| panic!("{}: not an HTTP/1.x status line: {head:?}", self.case));
            if (100..200).contains(&status) && status != 101 {
                interim += 1;
                assert!(
                    interim <= 10_000,
                    "{}: endless interim responses",
                    self.case
                );
                continue;
            }
            return Reply {
                status,
                head,
                body: Vec::new(),
                interim,
            };
        }
    }

    /// Reads the body of a response to a request other than `HEAD`.
    async fn body(&mut self, reply: &mut Reply) {
        if reply.status == 101 || reply.status == 204 || reply.status == 304 {
            return;
        }
        let chunked = reply
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                match support::raw_backend::decode_chunked(&self.raw.buf) {
                    Ok(Some((body, used))) => {
                        reply.body = body;
                        self.raw.buf.drain(..used);
                        return;
                    }
                    Ok(None) => {
                        if !self.more("chunked body").await {
                            panic!("{}: closed inside a chunked body: {reply:?}", self.case);
                        }
                    }
                    Err(e) => panic!(
                        "{}: {e} in a chunked body: {reply:?} {:?}",
                        self.case,
                        String::from_utf8_lossy(&self.raw.buf)
                    ),
                }
            }
        }
        if let Some(length) = reply.header("content-length") {
            let length: usize = length
                .parse()
                .unwrap_or_else(|_| panic!("{}: a bad content-length: {reply:?}", self.case));
            while self.raw.buf.len() < length {
                if !self.more("response body").await {
                    panic!("{}: closed inside a body: {reply:?}", self.case);
                }
            }
            reply.body = self.raw.buf.drain(..length).collect();
            return;
        }
        while self.more("body up to the close").await {}
        reply.body = std::mem::take(&mut self.raw.buf);
    }

    async fn reply(&mut self) -> Reply {
        let mut reply = self.head().await;
        self.body(&mut reply).await;
        reply
    }

    /// Reads the proxy's 400 (its status checked before its body is read)
    /// and the close after it.
    async fn assert_refused_and_closed(&mut self) {
        let mut reply = self.head().await;
        assert_eq!(reply.status, 400, "{}: {reply:?}", self.case);
        self.body(&mut reply).await;
        reply.assert_refused(&self.case);
        self.assert_closed().await;
    }

    /// Reads the proxy's 502 (its status checked before its body is read).
    async fn assert_bad_gateway(&mut self) {
        let mut reply = self.head().await;
        assert_eq!(reply.status, 502, "{}: {reply:?}", self.case);
        self.body(&mut reply).await;
        reply.assert_proxy_made(&self.case, 502);
    }

    /// Everything up to the proxy's close.
    async fn rest_until_close(&mut self) -> Vec<u8> {
        while self.more("the close").await {}
        std::mem::take(&mut self.raw.buf)
    }

    /// The proxy closes the connection without another byte.
    async fn assert_closed(&mut self) {
        let rest = self.rest_until_close().await;
        assert!(
            rest.is_empty(),
            "{}: bytes before the close: {:?}",
            self.case,
            String::from_utf8_lossy(&rest)
        );
    }

    /// Nothing was read past the responses consumed so far.
    fn assert_nothing_more(&self) {
        assert!(
            self.raw.buf.is_empty(),
            "{}: bytes past the responses: {:?}",
            self.case,
            String::from_utf8_lossy(&self.raw.buf)
        );
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Tables

type Case = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs every case (a few at a time) and fails naming each case that did.
async fn run_cases(table: &str, cases: Vec<(String, Case)>) {
    let permits = Arc::new(Semaphore::new(PARALLEL_CASES));
    let total = cases.len();
    let mut running = Vec::new();
    for (name, case) in cases {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let task = tokio::spawn(async move {
            case.await;
            drop(permit);
        });
        running.push((name, task));
    }
    let mut failed = Vec::new();
    for (name, task) in running {
        if let Err(e) = task.await {
            failed.push(format!("  [{name}] {}", panic_text(e)));
        }
    }
    assert!(
        failed.is_empty(),
        "{table}: {} of {total} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".to_owned()),
        Err(e) => e.to_string(),
    }
}

/// Each request, alone on a fresh proxy, is refused with a 400 and a close,
/// and not one byte reaches the upstream.
async fn refuse_all(table: &str, cases: Vec<(&str, Vec<u8>)>) {
    let cases = cases
        .into_iter()
        .map(|(name, bytes)| {
            let name = name.to_owned();
            let case: Case = Box::pin(refused_and_nothing_forwarded(name.clone(), bytes));
            (name, case)
        })
        .collect();
    run_cases(table, cases).await;
}

async fn refused_and_nothing_forwarded(case: String, request: Vec<u8>) {
    let f = Fixture::echo().await;
    let mut conn = f.connect(&case).await;
    conn.send(&request).await;
    conn.assert_refused_and_closed().await;
    assert_eq!(
        f.backend.bytes_received(),
        0,
        "{case}: bytes reached the upstream: {}",
        f.upstream_log()
    );
    f.assert_only_the_sentinel_arrives(&case).await;
}

// ---------------------------------------------------------------------------
// Client side: what a client sends

#[tokio::test]
async fn te_and_cl_together_are_refused_and_nothing_reaches_the_upstream() {
    let inner =
        "GPOST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: 15\r\n\r\nx=1";
    let te_cl = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{inner}\r\n0\r\n\r\n",
        inner.len()
    );
    refuse_all(
        "TE with CL",
        vec![
            (
                "CL.TE classic",
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"
                    .to_vec(),
            ),
            ("TE.CL classic", te_cl.into_bytes()),
            (
                "TE before CL",
                post(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"0\r\n\r\n"),
            ),
            (
                "CL 0 with TE",
                post(b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
            ),
            (
                "upper-case names",
                post(b"CONTENT-LENGTH: 5\r\nTRANSFER-ENCODING: chunked\r\n", b"0\r\n\r\n"),
            ),
            (
                "TE list ending in chunked, with CL",
                post(
                    b"Transfer-Encoding: identity, chunked\r\nContent-Length: 5\r\n",
                    b"0\r\n\r\n",
                ),
            ),
            (
                "TE.TE obfuscation with CL",
                post(
                    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\nContent-Length: 5\r\n",
                    b"0\r\n\r\n",
                ),
            ),
            (
                "GET with both",
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                    .to_vec(),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn transfer_encoding_whose_final_coding_is_not_chunked_is_refused_and_nothing_reaches_the_upstream(
) {
    let body = b"5\r\nhello\r\n0\r\n\r\n";
    refuse_all(
        "TE not ending in chunked",
        vec![
            ("gzip", post(b"Transfer-Encoding: gzip\r\n", body)),
            (
                "chunked, gzip",
                post(b"Transfer-Encoding: chunked, gzip\r\n", body),
            ),
            ("xchunked", post(b"Transfer-Encoding: xchunked\r\n", body)),
            (
                "quoted \"chunked\"",
                post(b"Transfer-Encoding: \"chunked\"\r\n", body),
            ),
            (
                "chunked;x=1",
                post(b"Transfer-Encoding: chunked;x=1\r\n", body),
            ),
            ("identity", post(b"Transfer-Encoding: identity\r\n", body)),
            (
                "two TE headers, chunked then identity",
                post(
                    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                    body,
                ),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn valid_chunked_request_is_forwarded_chunked_with_its_body_intact() {
    let plain = b"5\r\nhello\r\nA\r\n0123456789\r\n1\r\n!\r\n0\r\n\r\n".to_vec();
    let with_extras =
        b"5;name=value\r\nhello\r\na\r\n0123456789\r\n1;x\r\n!\r\n0\r\nX-Trailer: yes\r\n\r\n"
            .to_vec();
    let cases: [(&str, &[u8], Vec<u8>); 4] = [
        ("chunked", b"Transfer-Encoding: chunked\r\n", plain.clone()),
        ("cHuNkEd", b"Transfer-Encoding: cHuNkEd\r\n", plain.clone()),
        (
            "tab before chunked",
            b"Transfer-Encoding:\tchunked\r\n",
            plain,
        ),
        (
            "chunk extensions and a trailer",
            b"Transfer-Encoding: chunked\r\n",
            with_extras,
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(name, field, body)| {
            let name = name.to_owned();
            let bytes = [
                &b"POST /upload HTTP/1.1\r\nHost: x\r\n"[..],
                field,
                b"\r\n",
                &body,
                &get("/after"),
            ]
            .concat();
            let case: Case = Box::pin(chunked_is_forwarded(name.clone(), bytes));
            (name, case)
        })
        .collect();
    run_cases("valid chunked", cases).await;
}

async fn chunked_is_forwarded(case: String, bytes: Vec<u8>) {
    let f = Fixture::echo().await;
    let mut conn = f.connect(&case).await;
    conn.send(&bytes).await;
    for expected in [echo_text("POST /upload", 16), echo_text("GET /after", 0)] {
        let reply = conn.reply().await;
        assert_eq!((reply.status, reply.text()), (200, expected), "{case}");
    }
    conn.assert_nothing_more();
    let seen = f.backend.requests();
    assert_eq!(
        f.backend.summaries(),
        ["POST /upload", "GET /after"],
        "{case}: {}",
        f.upstream_log()
    );
    let upload = &seen[0];
    assert!(
        upload.chunked
            && upload.header_values("transfer-encoding").len() == 1
            && upload.header_values("transfer-encoding")[0].eq_ignore_ascii_case("chunked"),
        "{case}: not sent upstream with one `transfer-encoding: chunked`: {:?}",
        upload.headers
    );
    assert_eq!(
        upload.header_values("content-length"),
        Vec::<&str>::new(),
        "{case}: {:?}",
        upload.headers
    );
    assert_eq!(
        String::from_utf8_lossy(&upload.body),
        "hello0123456789!",
        "{case}"
    );
    assert!(
        f.backend.leftovers().is_empty(),
        "{case}: {}",
        f.upstream_log()
    );
}

#[tokio::test]
async fn differing_duplicate_content_lengths_are_refused_and_nothing_reaches_the_upstream() {
    refuse_all(
        "differing Content-Lengths",
        vec![
            (
                "two headers, 5 then 6",
                post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
            ),
            (
                "two headers, 0 then 5",
                post(b"Content-Length: 0\r\nContent-Length: 5\r\n", b"hello"),
            ),
            ("list 5, 6", post(b"Content-Length: 5, 6\r\n", b"hello!")),
            ("list 6, 5", post(b"Content-Length: 6, 5\r\n", b"hello!")),
        ],
    )
    .await;
}

#[tokio::test]
async fn identical_duplicate_content_lengths_are_forwarded_as_one_header() {
    let cases: [(&str, &[u8]); 3] = [
        ("two headers", b"Content-Length: 5\r\nContent-Length: 5\r\n"),
        ("list 5, 5", b"Content-Length: 5, 5\r\n"),
        ("list 5,5", b"Content-Length: 5,5\r\n"),
    ];
    let cases = cases
        .into_iter()
        .map(|(name, fields)| {
            let name = name.to_owned();
            let bytes = [
                &b"POST /dup HTTP/1.1\r\nHost: x\r\n"[..],
                fields,
                b"\r\nhello",
                &get("/after"),
            ]
            .concat();
            let case: Case = Box::pin(one_length_is_forwarded(name.clone(), bytes));
            (name, case)
        })
        .collect();
    run_cases("identical Content-Lengths", cases).await;
}

async fn one_length_is_forwarded(case: String, bytes: Vec<u8>) {
    let f = Fixture::echo().await;
    let mut conn = f.connect(&case).await;
    conn.send(&bytes).await;
    for expected in [echo_text("POST /dup", 5), echo_text("GET /after", 0)] {
        let reply = conn.reply().await;
        assert_eq!((reply.status, reply.text()), (200, expected), "{case}");
    }
    conn.assert_nothing_more();
    assert_eq!(
        f.backend.summaries(),
        ["POST /dup", "GET /after"],
        "{case}: {}",
        f.upstream_log()
    );
    let upload = &f.backend.requests()[0];
    assert_eq!(
        upload.header_values("content-length"),
        ["5"],
        "{case}: not one content-length upstream: {:?}",
        upload.headers
    );
    assert_eq!(upload.body, b"hello", "{case}");
}

#[tokio::test]
async fn content_length_that_is_not_plain_digits_is_refused_and_nothing_reaches_the_upstream() {
    let values: [(&str, &str); 8] = [
        ("plus sign", "+5"),
        ("negative", "-1"),
        ("hexadecimal", "0x5"),
        ("two numbers", "5 5"),
        ("decimal point", "5.0"),
        ("empty", ""),
        ("exponent", "1e2"),
        ("30 digits", "123456789012345678901234567890"),
    ];
    let cases = values
        .iter()
        .map(|(name, value)| {
            let field = format!("Content-Length: {value}\r\n");
            (*name, post(field.as_bytes(), b"hello"))
        })
        .collect();
    refuse_all("non-digit Content-Length", cases).await;
}

#[tokio::test]
async fn malformed_header_lines_are_refused_and_nothing_reaches_the_upstream() {
    let get_with =
        |field: &[u8]| [&b"GET /smuggle HTTP/1.1\r\nHost: x\r\n"[..], field, b"\r\n"].concat();
    refuse_all(
        "malformed header lines",
        vec![
            (
                "space before the colon of Content-Length",
                post(b"Content-Length : 5\r\n", b"hello"),
            ),
            (
                "tab before the colon of Content-Length",
                post(b"Content-Length\t: 5\r\n", b"hello"),
            ),
            (
                "space before the colon of Transfer-Encoding",
                post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
            ),
            ("obs-fold with a space", get_with(b"X-Folded: a\r\n b\r\n")),
            ("obs-fold with a tab", get_with(b"X-Folded: a\r\n\tb\r\n")),
            (
                "obs-fold carrying Transfer-Encoding",
                post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"),
            ),
            (
                "obs-fold hiding Transfer-Encoding after a CL",
                post(
                    b"Content-Length: 5\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\n",
                    b"0\r\n\r\n",
                ),
            ),
            ("bare CR in a value", get_with(b"X-Bad: a\rb\r\n")),
            (
                "bare CR hiding Content-Length",
                post(b"X-Bad: a\rContent-Length: 5\r\n", b"hello"),
            ),
            ("bare CR in a name", get_with(b"X-B\rad: a\r\n")),
            (
                "bare CR in the request line",
                b"GET /a\rb HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            ),
            ("NUL in a value", get_with(b"X-Bad: a\0b\r\n")),
            ("NUL in a name", get_with(b"X-B\0ad: a\r\n")),
            ("SOH in a value", get_with(b"X-Bad: a\x01b\r\n")),
            ("ESC in a value", get_with(b"X-Bad: a\x1bb\r\n")),
            ("vertical tab in a value", get_with(b"X-Bad: a\x0bb\r\n")),
            ("DEL in a value", get_with(b"X-Bad: a\x7fb\r\n")),
            ("form feed in a name", get_with(b"X-B\x0cad: a\r\n")),
        ],
    )
    .await;
}

#[tokio::test]
async fn malformed_chunked_bodies_are_400_and_close_and_never_eject_the_endpoint() {
    // All on one proxy, one after another with nothing good between them:
    // more than `consecutive_failures` (3) of them.
    let f = Fixture::echo().await;
    let cases: [(&str, &[u8]); 13] = [
        ("bare LF after the chunk size", b"5\nhello\r\n0\r\n\r\n"),
        ("bare LF after the chunk data", b"5\r\nhello\n0\r\n\r\n"),
        ("bare LF after the last chunk", b"5\r\nhello\r\n0\n\r\n"),
        ("bare LF ending the trailers", b"5\r\nhello\r\n0\r\n\n"),
        ("17 hex digits", b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
        (
            "size over 64 bits",
            b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("non-hex size", b"g\r\nhello\r\n0\r\n\r\n"),
        ("0x size", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("signed size", b"+5\r\nhello\r\n0\r\n\r\n"),
        ("empty size line", b"\r\nhello\r\n0\r\n\r\n"),
        ("data longer than its size", b"5\r\nhelloXX\r\n0\r\n\r\n"),
        ("data shorter than its size", b"5\r\nhel\r\n0\r\n\r\n"),
        ("size in words", b"five\r\nhello\r\n0\r\n\r\n"),
    ];
    let mut failed = Vec::new();
    for (case, body) in cases {
        let bytes = [
            &b"POST /chunky HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            body,
        ]
        .concat();
        let addr = f.proxy.addr();
        let task = tokio::spawn(async move {
            let mut conn = Conn::connect(addr, case).await;
            conn.send(&bytes).await;
            conn.assert_refused_and_closed().await;
        });
        if let Err(e) = task.await {
            failed.push(format!("  [{case}] {}", panic_text(e)));
        }
    }
    // The endpoint took no blame: good requests still reach it.
    for path in ["/good", "/good-again"] {
        let mut conn = f.connect("after the bad bodies").await;
        conn.send(&get(path)).await;
        let reply = conn.reply().await;
        assert_eq!(
            (reply.status, reply.text()),
            (200, echo_text(&format!("GET {path}"), 0)),
            "a good request after {} bad bodies (failed cases:\n{})",
            cases.len(),
            failed.join("\n")
        );
    }
    assert!(
        failed.is_empty(),
        "malformed chunked bodies: {} of {} cases failed:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
    // None of them reached the upstream as a whole request.
    assert_eq!(
        f.backend.summaries(),
        ["GET /good", "GET /good-again"],
        "{}",
        f.upstream_log()
    );
}

#[tokio::test]
async fn request_smuggled_inside_a_body_never_becomes_a_second_upstream_request() {
    let inner = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let n = inner.len();
    let mut cases: Vec<(String, Case)> = Vec::new();
    // Refused outright: nothing reaches the upstream.
    let refused = [
        (
            "CL.TE: CL 6, TE chunked, a G left over",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"
                .to_vec(),
        ),
        (
            "TE.CL: CL 4, a chunk holding a request",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
                 {n:x}\r\n{inner}\r\n0\r\n\r\n"
            )
            .into_bytes(),
        ),
        (
            "CL 0 then CL of the request behind it",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: {n}\r\n\r\n{inner}")
                .into_bytes(),
        ),
        (
            "TE with a space before the colon, and CL",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\nTransfer-Encoding : chunked\r\n\r\n{inner}"
            )
            .into_bytes(),
        ),
        (
            "xchunked TE and CL",
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\nTransfer-Encoding: xchunked\r\n\r\n{inner}"
            )
            .into_bytes(),
        ),
    ];
    for (name, bytes) in refused {
        cases.push((
            name.to_owned(),
            Box::pin(refused_and_nothing_forwarded(name.to_owned(), bytes)),
        ));
    }
    // Valid: each reaches the upstream as exactly the requests listed.
    let chunked_inner = format!("{n:x}\r\n{inner}\r\n0\r\n\r\n");
    let forwarded: Vec<(&str, String, Upstream)> = vec![
        (
            "CL body holding a whole request",
            format!("POST /outer HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n{inner}"),
            vec![("POST /outer", inner)],
        ),
        (
            "GET with a CL body holding a whole request",
            format!("GET /outer HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n{inner}"),
            vec![("GET /outer", inner)],
        ),
        (
            "chunked body holding a whole request",
            format!(
                "POST /outer HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_inner}"
            ),
            vec![("POST /outer", inner)],
        ),
        (
            "CL 0 and a request behind it",
            format!("POST /outer HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n{inner}"),
            vec![("POST /outer", ""), ("GET /smuggled", "")],
        ),
        (
            "CL shorter than the request behind it",
            format!("POST /outer HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello{inner}"),
            vec![("POST /outer", "hello"), ("GET /smuggled", "")],
        ),
        (
            "chunked body then a request behind it",
            format!(
                "POST /outer HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n{inner}"
            ),
            vec![("POST /outer", "hello"), ("GET /smuggled", "")],
        ),
    ];
    for (name, bytes, expected) in forwarded {
        let expected = expected
            .into_iter()
            .map(|(s, b)| (s.to_owned(), b.to_owned()))
            .collect();
        cases.push((
            name.to_owned(),
            Box::pin(forwarded_exactly(
                name.to_owned(),
                bytes.into_bytes(),
                expected,
            )),
        ));
    }
    run_cases("a request inside a body", cases).await;
}

/// The requests the upstream must see: ("METHOD target", body) each.
type Upstream = Vec<(&'static str, &'static str)>;

/// The request bytes reach the upstream as exactly `expected` ("METHOD
/// target", body), each answered in turn, and nothing else arrives.
async fn forwarded_exactly(case: String, bytes: Vec<u8>, expected: Vec<(String, String)>) {
    let f = Fixture::echo().await;
    let mut conn = f.connect(&case).await;
    conn.send(&bytes).await;
    for (summary, body) in &expected {
        let reply = conn.reply().await;
        assert_eq!(
            (reply.status, reply.text()),
            (200, echo_text(summary, body.len())),
            "{case}: {}",
            f.upstream_log()
        );
    }
    // A later request on the same connection gets its own answer.
    conn.send(&get("/sentinel")).await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.status, reply.text()),
        (200, echo_text("GET /sentinel", 0)),
        "{case}: {}",
        f.upstream_log()
    );
    conn.assert_nothing_more();
    let seen: Vec<(String, String)> = f
        .backend
        .requests()
        .iter()
        .map(|r| (r.summary(), String::from_utf8_lossy(&r.body).into_owned()))
        .collect();
    let mut want = expected.clone();
    want.push(("GET /sentinel".to_owned(), String::new()));
    assert_eq!(seen, want, "{case}: {}", f.upstream_log());
    assert!(
        f.backend.leftovers().is_empty(),
        "{case}: {}",
        f.upstream_log()
    );
}

/// Client connections open on the listener `web`, from the proxy's metrics.
fn client_connections(proxy: &Proxy) -> f64 {
    let text = String::from_utf8(proxy.handle.metrics.render()).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("cutover_connections_active{listener=\"web\"} "))
        .map(|v| v.trim().parse().unwrap())
        .expect("cutover_connections_active for listener web")
}

async fn wait_no_client_connections(proxy: &Proxy, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while client_connections(proxy) != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} client connection(s) still open after {WAIT_LIMIT:?}",
            client_connections(proxy)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn leading_empty_lines_before_a_request_are_skipped_and_a_closing_client_is_let_go() {
    let f = Fixture::echo().await;

    // HTTP/1.0, no Host, two empty lines first; then the client closes.
    let mut conn = f.connect("empty lines before an HTTP/1.0 GET").await;
    conn.send(b"\r\n\r\nGET / HTTP/1.0\r\n\r\n").await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.status, reply.text()),
        (200, echo_text("GET /", 0)),
        "{reply:?}"
    );
    drop(conn);
    wait_no_client_connections(&f.proxy, "after the HTTP/1.0 client closed").await;

    // HTTP/1.1 keep-alive: an empty line before the first request and
    // before the second.
    let mut conn = f.connect("empty lines between keep-alive requests").await;
    conn.send(b"\r\nGET /one HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.status, reply.text()),
        (200, echo_text("GET /one", 0))
    );
    conn.send(b"\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.status, reply.text()),
        (200, echo_text("GET /two", 0))
    );
    conn.assert_nothing_more();
    drop(conn);
    wait_no_client_connections(&f.proxy, "after the HTTP/1.1 client closed").await;

    assert_eq!(
        f.backend.summaries(),
        ["GET /", "GET /one", "GET /two"],
        "{}",
        f.upstream_log()
    );
}

/// A request with an absolute-form target, and what the upstream must get.
struct Aimed {
    name: &'static str,
    target: &'static str,
    /// The Host header the client sends.
    host: &'static str,
    /// The pool's Host rewrite.
    rewrite: Option<&'static str>,
    /// The request line upstream.
    line: &'static str,
    /// The one Host header upstream.
    upstream_host: &'static str,
}

#[tokio::test]
async fn absolute_form_targets_go_upstream_in_origin_form_with_the_right_host() {
    let cases = [
        Aimed {
            name: "path and query, differing Host",
            target: "http://other.example/path?q",
            host: "x",
            rewrite: None,
            line: "GET /path?q HTTP/1.1",
            upstream_host: "other.example",
        },
        Aimed {
            name: "authority with a port",
            target: "http://other.example:8080/p",
            host: "other.example:8080",
            rewrite: None,
            line: "GET /p HTTP/1.1",
            upstream_host: "other.example:8080",
        },
        Aimed {
            name: "no path",
            target: "http://other.example",
            host: "x",
            rewrite: None,
            line: "GET / HTTP/1.1",
            upstream_host: "other.example",
        },
        Aimed {
            name: "query without a path",
            target: "http://other.example?q=1",
            host: "other.example",
            rewrite: None,
            line: "GET /?q=1 HTTP/1.1",
            upstream_host: "other.example",
        },
        Aimed {
            name: "pool Host rewrite",
            target: "http://other.example/path?q",
            host: "x",
            rewrite: Some("rewritten.internal"),
            line: "GET /path?q HTTP/1.1",
            upstream_host: "rewritten.internal",
        },
    ];
    let cases = cases
        .into_iter()
        .map(|c| {
            let case: Case = Box::pin(async move {
                let f = Fixture::start_with_host(echo, c.rewrite).await;
                let mut conn = f.connect(c.name).await;
                let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", c.target, c.host);
                conn.send(request.as_bytes()).await;
                let reply = conn.reply().await;
                assert_eq!(
                    reply.status,
                    200,
                    "{}: {reply:?} {}",
                    c.name,
                    f.upstream_log()
                );
                let seen = f.backend.requests();
                assert_eq!(seen.len(), 1, "{}: {}", c.name, f.upstream_log());
                assert_eq!(seen[0].line, c.line, "{}", c.name);
                assert_eq!(
                    seen[0].header_values("host"),
                    [c.upstream_host],
                    "{}: {:?}",
                    c.name,
                    seen[0].headers
                );
            });
            (c.name.to_owned(), case)
        })
        .collect();
    run_cases("absolute-form targets", cases).await;
}

#[tokio::test]
async fn asterisk_form_options_goes_upstream_unchanged() {
    let f = Fixture::echo().await;
    let mut conn = f.connect("OPTIONS *").await;
    conn.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.status, reply.text()),
        (200, echo_text("OPTIONS *", 0)),
        "{reply:?}"
    );
    let seen = f.backend.requests();
    assert_eq!(seen.len(), 1, "{}", f.upstream_log());
    assert_eq!(seen[0].line, "OPTIONS * HTTP/1.1");
}

#[tokio::test]
async fn pipelined_requests_each_reach_the_upstream_once_in_order() {
    let f = Fixture::echo().await;
    let requests = [
        get("/p1"),
        b"POST /p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        b"POST /p3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            .to_vec(),
        b"DELETE /p4 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        get("/p5"),
    ]
    .concat();
    let expected = [
        ("GET /p1", 0),
        ("POST /p2", 5),
        ("POST /p3", 3),
        ("DELETE /p4", 0),
        ("GET /p5", 0),
    ];
    // In one write, then cut in 7-byte pieces.
    for (round, piece) in [(0, requests.len()), (1, 7)] {
        let mut conn = f.connect(&format!("round {round}")).await;
        for part in requests.chunks(piece) {
            conn.send(part).await;
        }
        for (summary, len) in expected {
            let reply = conn.reply().await;
            assert_eq!(
                (reply.status, reply.text()),
                (200, echo_text(summary, len)),
                "round {round}"
            );
        }
        conn.assert_nothing_more();
    }
    let once: Vec<&str> = expected.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        f.backend.summaries(),
        [once.clone(), once].concat(),
        "{}",
        f.upstream_log()
    );
    assert!(f.backend.leftovers().is_empty(), "{}", f.upstream_log());
}

// ---------------------------------------------------------------------------
// Upstream side: what a backend answers a plain GET with

/// A backend answering `/bad` with `bad`, and anything else with its path.
async fn answering_bad_with(bad: Vec<u8>) -> Fixture {
    Fixture::start(move |req| {
        if req.target == "/bad" {
            Script::write(bad.clone())
        } else {
            Script::write(ok(&req.target))
        }
    })
    .await
}

/// A GET of `/bad` is a 502; the upstream connection that answered it is
/// closed by the proxy, and the next request goes on a new one.
async fn bad_response_is_502_and_its_connection_discarded(case: String, bad: Vec<u8>) {
    let f = answering_bad_with(bad).await;
    let mut conn = f.connect(&case).await;
    conn.send(&get("/bad")).await;
    conn.assert_bad_gateway().await;

    let mut conn = f.connect(&case).await;
    conn.send(&get("/next")).await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "/next"),
        "{case}: the request after the bad response"
    );
    let seen = f.backend.requests();
    assert_eq!(
        f.backend.summaries(),
        ["GET /bad", "GET /next"],
        "{case}: {}",
        f.upstream_log()
    );
    assert_ne!(
        seen[1].conn, seen[0].conn,
        "{case}: the next request went on the upstream connection of the bad response"
    );
    f.backend
        .wait_closed_by_proxy(seen[0].conn, &format!("{case}: after the bad response"))
        .await;
}

#[tokio::test]
async fn upstream_response_with_te_and_cl_is_502_and_its_connection_is_discarded() {
    bad_response_is_502_and_its_connection_discarded(
        "TE and CL".to_owned(),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            .to_vec(),
    )
    .await;
}

#[tokio::test]
async fn upstream_response_with_bad_framing_or_header_bytes_is_502_and_its_connection_is_discarded()
{
    let with =
        |fields: &[u8], body: &[u8]| [&b"HTTP/1.1 200 OK\r\n"[..], fields, b"\r\n", body].concat();
    let chunked_body = b"5\r\nhello\r\n0\r\n\r\n";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("TE gzip", with(b"Transfer-Encoding: gzip\r\n", b"hello")),
        (
            "TE chunked, gzip",
            with(b"Transfer-Encoding: chunked, gzip\r\n", chunked_body),
        ),
        (
            "TE xchunked",
            with(b"Transfer-Encoding: xchunked\r\n", chunked_body),
        ),
        (
            "TE chunked then identity",
            with(
                b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                chunked_body,
            ),
        ),
        (
            "CL 5 then CL 6",
            with(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
        ),
        ("CL list 5, 6", with(b"Content-Length: 5, 6\r\n", b"hello!")),
        ("CL +5", with(b"Content-Length: +5\r\n", b"hello")),
        ("CL -1", with(b"Content-Length: -1\r\n", b"hello")),
        ("CL 0x5", with(b"Content-Length: 0x5\r\n", b"hello")),
        ("CL 5.0", with(b"Content-Length: 5.0\r\n", b"hello")),
        ("CL 5 5", with(b"Content-Length: 5 5\r\n", b"hello")),
        ("CL empty", with(b"Content-Length: \r\n", b"hello")),
        (
            "CL of 30 digits",
            with(
                b"Content-Length: 123456789012345678901234567890\r\n",
                b"hello",
            ),
        ),
        (
            "obs-fold",
            with(b"Content-Length: 5\r\nX-Folded: a\r\n b\r\n", b"hello"),
        ),
        (
            "bare CR in a value",
            with(b"Content-Length: 5\r\nX-Bad: a\rb\r\n", b"hello"),
        ),
        (
            "NUL in a value",
            with(b"Content-Length: 5\r\nX-Bad: a\0b\r\n", b"hello"),
        ),
        (
            "NUL in a name",
            with(b"Content-Length: 5\r\nX-B\0ad: a\r\n", b"hello"),
        ),
        (
            "SOH in a value",
            with(b"Content-Length: 5\r\nX-Bad: a\x01b\r\n", b"hello"),
        ),
        (
            "DEL in a value",
            with(b"Content-Length: 5\r\nX-Bad: a\x7fb\r\n", b"hello"),
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(name, bad)| {
            let name = name.to_owned();
            let case: Case = Box::pin(bad_response_is_502_and_its_connection_discarded(
                name.clone(),
                bad,
            ));
            (name, case)
        })
        .collect();
    run_cases("bad upstream responses", cases).await;
}

#[tokio::test]
async fn bytes_past_a_response_never_answer_a_later_request() {
    let extra = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle".to_vec();
    let first = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec();
    // The extra response in the same write, and a moment later (once the
    // proxy may have taken the connection back for reuse).
    for late in [false, true] {
        let case = if late {
            "extra response a moment later"
        } else {
            "extra response in the same write"
        };
        let written = Arc::new(Notify::new());
        let (first, extra, signal) = (first.clone(), extra.clone(), written.clone());
        let f = Fixture::start(move |req| {
            if req.target != "/split" {
                return Script::write(ok(&req.target));
            }
            let steps = if late {
                vec![
                    Step::Write(first.clone()),
                    Step::Pause(Duration::from_millis(50)),
                    Step::Write(extra.clone()),
                    Step::Signal(signal.clone()),
                ]
            } else {
                vec![
                    Step::Write([&first[..], &extra].concat()),
                    Step::Signal(signal.clone()),
                ]
            };
            Script::steps(steps)
        })
        .await;

        let mut conn = f.connect(case).await;
        conn.send(&get("/split")).await;
        let reply = conn.reply().await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "hello"),
            "{case}"
        );
        tokio::time::timeout(WAIT_LIMIT, written.notified())
            .await
            .expect("the backend wrote the extra response");
        // Let the extra bytes land in the proxy's socket.
        tokio::time::sleep(Duration::from_millis(20)).await;

        conn.send(&get("/next")).await;
        let reply = conn.reply().await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "/next"),
            "{case}: the second request got the upstream's extra bytes"
        );
        conn.assert_nothing_more();
        let seen = f.backend.requests();
        assert_eq!(
            f.backend.summaries(),
            ["GET /split", "GET /next"],
            "{case}: {}",
            f.upstream_log()
        );
        assert_ne!(
            seen[1].conn, seen[0].conn,
            "{case}: the upstream connection with extra bytes was reused"
        );
        f.backend.wait_closed_by_proxy(seen[0].conn, case).await;
    }
}

/// Runs on a thread of its own with a large stack: an engine that takes
/// each interim response in a new stack frame then fails this test by its
/// answer (a 200 after 1000 interim ones) rather than by aborting every test
/// of this binary with a stack overflow.
#[test]
fn a_flood_of_interim_responses_is_cut_short_with_502_and_serving_goes_on() {
    let thread = std::thread::Builder::new()
        .name("interim-flood".to_owned())
        .stack_size(256 * 1024 * 1024)
        .spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(interim_flood())
        })
        .unwrap();
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn interim_flood() {
    let flood = [
        "HTTP/1.1 100 Continue\r\n\r\n".repeat(1000).into_bytes(),
        ok("late"),
    ]
    .concat();
    let f = Fixture::start(move |req| {
        if req.target == "/flood" {
            Script::write(flood.clone())
        } else {
            Script::write(ok(&req.target))
        }
    })
    .await;

    let mut conn = f.connect("1000 interim responses").await;
    conn.send(&get("/flood")).await;
    let mut reply = conn.head().await;
    assert_eq!(
        reply.status, 502,
        "1000 interim responses ({} of them relayed) then: {reply:?}",
        reply.interim
    );
    conn.body(&mut reply).await;
    reply.assert_proxy_made("1000 interim responses", 502);

    let mut conn = f.connect("after the flood").await;
    conn.send(&get("/ok")).await;
    let reply = conn.reply().await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "/ok"));
}

#[tokio::test]
async fn a_few_early_hints_before_the_final_response_are_passed_over() {
    let hinted = [
        "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            .repeat(3)
            .into_bytes(),
        ok("hinted"),
    ]
    .concat();
    let f = Fixture::start(move |req| {
        if req.target == "/hints" {
            Script::write(hinted.clone())
        } else {
            Script::write(ok(&req.target))
        }
    })
    .await;

    let mut conn = f.connect("3 early hints").await;
    conn.send(&get("/hints")).await;
    let reply = conn.reply().await;
    println!("{} interim responses relayed before the 200", reply.interim);
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "hinted"),
        "{reply:?}"
    );
    // The connection goes on, its framing intact.
    conn.send(&get("/after")).await;
    let reply = conn.reply().await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "/after"));
    conn.assert_nothing_more();
}

#[tokio::test]
async fn malformed_chunk_in_a_relayed_response_ends_the_client_connection_without_a_clean_end() {
    let cases: [(&str, &[u8]); 3] = [
        ("17 hex digits", b"00000000000000005\r\nworld\r\n0\r\n\r\n"),
        ("non-hex size", b"zz\r\nworld\r\n0\r\n\r\n"),
        (
            "size over 64 bits",
            b"fffffffffffffffff\r\nworld\r\n0\r\n\r\n",
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(name, bad)| {
            let case: Case = Box::pin(async move {
                let head_read = Arc::new(Notify::new());
                let wait = head_read.clone();
                let f = Fixture::start(move |req| {
                    if req.target != "/chunked" {
                        return Script::write(ok(&req.target));
                    }
                    Script::steps(vec![
                        Step::Write(
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                                .to_vec(),
                        ),
                        // The bad chunk only once the client has the head.
                        Step::Wait(wait.clone()),
                        Step::Write(bad.to_vec()),
                    ])
                })
                .await;

                let mut conn = f.connect(name).await;
                conn.send(&get("/chunked")).await;
                let reply = conn.head().await;
                assert_eq!(reply.status, 200, "{name}: {reply:?}");
                head_read.notify_one();
                let rest = conn.rest_until_close().await;
                assert!(
                    !matches!(support::raw_backend::decode_chunked(&rest), Ok(Some(_))),
                    "{name}: the client got a complete chunked body: {:?}",
                    String::from_utf8_lossy(&rest)
                );
                assert!(
                    find(&rest, b"0\r\n\r\n").is_none(),
                    "{name}: the client got a chunked terminator: {:?}",
                    String::from_utf8_lossy(&rest)
                );

                let mut conn = f.connect(name).await;
                conn.send(&get("/ok")).await;
                let reply = conn.reply().await;
                assert_eq!(
                    (reply.status, reply.text().as_str()),
                    (200, "/ok"),
                    "{name}: after"
                );
            });
            (name.to_owned(), case)
        })
        .collect();
    run_cases("malformed response chunks", cases).await;
}

#[tokio::test]
async fn unasked_101_switching_protocols_is_502() {
    let f = Fixture::start(|req| {
        if req.target == "/switch" {
            Script::write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                    .to_vec(),
            )
        } else {
            Script::write(ok(&req.target))
        }
    })
    .await;

    let mut conn = f.connect("101 to a plain GET").await;
    conn.send(&get("/switch")).await;
    conn.assert_bad_gateway().await;

    let mut conn = f.connect("after the 101").await;
    conn.send(&get("/ok")).await;
    let reply = conn.reply().await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "/ok"));
}
