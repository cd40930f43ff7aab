//! A backend that speaks HTTP/1.1 by hand over TCP, for tests that must see
//! every byte cutover sends upstream and choose every byte an upstream
//! answers with. Each connection's bytes are kept as they arrived; requests
//! are parsed out of them, strictly (a `Content-Length` or a chunked body,
//! never both, lines ended by CRLF), and each is answered by a script of
//! steps: writes, pauses, a signal to the test, a wait for the test. Bytes
//! that do not make a complete, well-framed request are kept as they came,
//! so a test can tell that nothing, or nothing whole, reached the upstream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Upper bound on every wait of a test on a raw backend, and of a raw
/// backend on its test.
pub const WAIT_LIMIT: Duration = Duration::from_secs(5);

/// One step of an answer.
pub enum Step {
    /// Bytes written in one `write_all`.
    Write(Vec<u8>),
    Pause(Duration),
    /// Tells the test this point was reached (`Notify::notify_one`).
    Signal(Arc<Notify>),
    /// Waits until the test calls `notify_one`, at most `WAIT_LIMIT`.
    Wait(Arc<Notify>),
}

/// What the backend does with its connection once an answer is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Reads the next request (or the proxy's close).
    KeepOpen,
    /// Closes the connection at once.
    Close,
}

/// The answer to one request.
pub struct Script {
    pub steps: Vec<Step>,
    pub then: Then,
}

impl Script {
    /// `bytes` in one write; the connection stays open.
    pub fn write(bytes: impl Into<Vec<u8>>) -> Self {
        Self::steps(vec![Step::Write(bytes.into())])
    }

    /// `steps` in order; the connection stays open.
    pub fn steps(steps: Vec<Step>) -> Self {
        Self {
            steps,
            then: Then::KeepOpen,
        }
    }

    /// The same answer, then a close.
    pub fn then_close(mut self) -> Self {
        self.then = Then::Close;
        self
    }
}

/// A `200 OK` with `body`, framed by `Content-Length`.
pub fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A request as the backend parsed it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Which connection it came on: 0 for the first accepted, and so on.
    pub conn: usize,
    /// Its place on that connection, from 0.
    pub nth: usize,
    /// The request line, as sent.
    pub line: String,
    pub method: String,
    pub target: String,
    /// Header fields in order: the name as sent, the value without the
    /// whitespace around it.
    pub headers: Vec<(String, String)>,
    /// The body, decoded from its framing.
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
}

impl RawRequest {
    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// "METHOD target".
    pub fn summary(&self) -> String {
        format!("{} {}", self.method, self.target)
    }
}

/// What one upstream connection carried.
#[derive(Debug, Default)]
struct ConnLog {
    received: Vec<u8>,
    /// Bytes of `received` that made whole requests.
    parsed: usize,
    /// The proxy closed (or reset) the connection.
    closed_by_proxy: bool,
    /// Why the bytes after `parsed` are not a request.
    garbled: Option<String>,
}

/// Gives the answer to a request.
type Answerer = Arc<dyn Fn(&RawRequest) -> Script + Send + Sync>;

/// A backend speaking HTTP/1.1 by hand (see the module comment).
#[derive(Clone)]
pub struct RawBackend {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<ConnLog>>>,
    requests: Arc<Mutex<Vec<RawRequest>>>,
}

impl RawBackend {
    pub async fn start(answer: impl Fn(&RawRequest) -> Script + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Self {
            addr: listener.local_addr().unwrap(),
            conns: Arc::default(),
            requests: Arc::default(),
        };
        let answer: Answerer = Arc::new(answer);
        let b = backend.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let id = {
                    let mut conns = b.conns.lock().unwrap();
                    conns.push(ConnLog::default());
                    conns.len() - 1
                };
                tokio::spawn(b.clone().serve(stream, id, answer.clone()));
            }
        });
        backend
    }

    async fn serve(self, mut stream: TcpStream, id: usize, answer: Answerer) {
        stream.set_nodelay(true).unwrap();
        let mut chunk = vec![0u8; 16 * 1024];
        let mut nth = 0;
        loop {
            while let Some(request) = self.next_request(id, nth) {
                nth += 1;
                let script = answer(&request);
                self.requests.lock().unwrap().push(request);
                if !self.play(&mut stream, id, script.steps).await {
                    return;
                }
                if script.then == Then::Close {
                    return;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    self.conns.lock().unwrap()[id].closed_by_proxy = true;
                    return;
                }
                Ok(n) => self.conns.lock().unwrap()[id]
                    .received
                    .extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next whole request among the bytes connection `id` received.
    fn next_request(&self, id: usize, nth: usize) -> Option<RawRequest> {
        let mut conns = self.conns.lock().unwrap();
        let log = &mut conns[id];
        if log.garbled.is_some() {
            return None;
        }
        match parse_request(&log.received[log.parsed..]) {
            Ok(Some((mut request, used))) => {
                log.parsed += used;
                request.conn = id;
                request.nth = nth;
                Some(request)
            }
            Ok(None) => None,
            Err(why) => {
                log.garbled = Some(why);
                None
            }
        }
    }

    /// Plays an answer; false when the proxy went away meanwhile.
    async fn play(&self, stream: &mut TcpStream, id: usize, steps: Vec<Step>) -> bool {
        for step in steps {
            match step {
                Step::Write(bytes) => {
                    if stream.write_all(&bytes).await.is_err() {
                        self.conns.lock().unwrap()[id].closed_by_proxy = true;
                        return false;
                    }
                }
                Step::Pause(pause) => tokio::time::sleep(pause).await,
                Step::Signal(notify) => notify.notify_one(),
                Step::Wait(notify) => {
                    _ = tokio::time::timeout(WAIT_LIMIT, notify.notified()).await;
                }
            }
        }
        true
    }

    /// Upstream connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Bytes received so far, on all connections.
    pub fn bytes_received(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        conns.iter().map(|c| c.received.len()).sum()
    }

    /// Every whole request received so far, in the order they were parsed.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// "METHOD target" of every whole request so far.
    pub fn summaries(&self) -> Vec<String> {
        self.requests().iter().map(RawRequest::summary).collect()
    }

    /// Received bytes that are not (yet) part of a whole request, per
    /// connection, each with why: empty when everything received was whole,
    /// well-framed requests.
    pub fn leftovers(&self) -> Vec<String> {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.parsed < c.received.len())
            .map(|(i, c)| {
                format!(
                    "connection {i}, {}: {:?}",
                    c.garbled.as_deref().unwrap_or("incomplete"),
                    String::from_utf8_lossy(&c.received[c.parsed..])
                )
            })
            .collect()
    }

    /// Whether the proxy closed upstream connection `conn`.
    pub fn closed_by_proxy(&self, conn: usize) -> bool {
        self.conns
            .lock()
            .unwrap()
            .get(conn)
            .is_some_and(|c| c.closed_by_proxy)
    }

    /// Waits, at most `WAIT_LIMIT`, until the proxy closes upstream
    /// connection `conn`; panics with `what` otherwise.
    pub async fn wait_closed_by_proxy(&self, conn: usize, what: &str) {
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        while !self.closed_by_proxy(conn) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: the proxy kept upstream connection {conn} open for {WAIT_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A whole request at the start of `buf` and how many bytes it took;
/// `Ok(None)` while incomplete; `Err` when the bytes are not a well-framed
/// request.
fn parse_request(buf: &[u8]) -> Result<Option<(RawRequest, usize)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    for line in text.split("\r\n") {
        if line.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(format!("a control byte, bare CR or bare LF in {line:?}"));
        }
    }
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("").to_owned();
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    for field in lines {
        let Some((name, value)) = field.split_once(':') else {
            return Err(format!("a header line without a colon: {field:?}"));
        };
        if name.is_empty() || name.ends_with([' ', '\t']) || field.starts_with([' ', '\t']) {
            return Err(format!("a malformed header line: {field:?}"));
        }
        headers.push((name.to_owned(), value.trim_matches([' ', '\t']).to_owned()));
    }
    let mut request = RawRequest {
        conn: 0,
        nth: 0,
        line,
        method,
        target,
        headers,
        body: Vec::new(),
        chunked: false,
    };
    let te = request.header_values("transfer-encoding").join(",");
    let lengths = request.header_values("content-length").join(",");
    let start = end + 4;
    if !te.is_empty() {
        if !lengths.is_empty() {
            return Err("both Transfer-Encoding and Content-Length".to_owned());
        }
        let last = te.rsplit(',').next().unwrap_or("").trim();
        if !last.eq_ignore_ascii_case("chunked") {
            return Err(format!("Transfer-Encoding {te:?} does not end in chunked"));
        }
        request.chunked = true;
        return Ok(decode_chunked(&buf[start..])?.map(|(body, used)| {
            request.body = body;
            (request, start + used)
        }));
    }
    let length = if lengths.is_empty() {
        0
    } else {
        let values: Vec<&str> = lengths.split(',').map(str::trim).collect();
        if values.iter().any(|v| v != &values[0])
            || values[0].is_empty()
            || !values[0].bytes().all(|b| b.is_ascii_digit())
        {
            return Err(format!("a bad Content-Length {lengths:?}"));
        }
        values[0]
            .parse::<usize>()
            .map_err(|e| format!("Content-Length {lengths:?}: {e}"))?
    };
    if buf.len() < start + length {
        return Ok(None);
    }
    request.body = buf[start..start + length].to_vec();
    Ok(Some((request, start + length)))
}

/// A chunked body at the start of `b`, strictly framed: its data and how
/// many bytes it took (trailers included); `Ok(None)` while incomplete.
pub fn decode_chunked(b: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut i = 0;
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(&b[i..], b"\r\n") else {
            if b[i..].contains(&b'\n') {
                return Err("a chunk-size line ended by a bare LF".to_owned());
            }
            return Ok(None);
        };
        let line = &b[i..i + eol];
        let digits = line.split(|&c| c == b';').next().unwrap_or(b"");
        let digits = digits.trim_ascii_end();
        if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!(
                "a bad chunk-size line {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let size = usize::from_str_radix(std::str::from_utf8(digits).unwrap(), 16)
            .map_err(|e| format!("chunk size: {e}"))?;
        i += eol + 2;
        if size == 0 {
            loop {
                let Some(eol) = find(&b[i..], b"\r\n") else {
                    return Ok(None);
                };
                if b[i..i + eol].contains(&b'\n') {
                    return Err("a trailer line ended by a bare LF".to_owned());
                }
                i += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, i)));
                }
            }
        }
        if b.len() < i + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&b[i..i + size]);
        if &b[i + size..i + size + 2] != b"\r\n" {
            return Err(format!("a chunk of {size} bytes not followed by CRLF"));
        }
        i += size + 2;
    }
}
