//! A client connection driven byte by byte, for what HTTP clients will not
//! send (bad heads, pipelining, slow writes, a body held back until
//! `100 Continue`), and a reader of the responses that come back, each body
//! decoded from its framing. Every read is bounded by `RAW_LIMIT`; nothing
//! here retries or hides a close.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::raw_backend::decode_chunked;

/// Upper bound on every read of a `RawClient`; generous, for a loaded machine.
pub const RAW_LIMIT: Duration = Duration::from_secs(5);

/// A client connection whose bytes the test writes itself.
pub struct RawClient {
    stream: TcpStream,
    /// Bytes read but not yet consumed (the start of a later response).
    pub buf: Vec<u8>,
}

/// One response as a `RawClient` read it.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The status line and header lines as they came.
    pub head: String,
    pub headers: HeaderMap,
    /// The body, decoded from its framing (chunked, `Content-Length`, or up
    /// to the close).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether a `Connection` header of the response names `token`.
    pub fn connection_has(&self, token: &str) -> bool {
        self.headers
            .get_all("connection")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more bytes; panics on timeout or error, returns 0 at EOF.
    pub async fn fill(&mut self, what: &str) -> usize {
        self.try_fill(what)
            .await
            .unwrap_or_else(|e| panic!("reading {what}: {e}"))
    }

    /// Reads more bytes; panics on timeout, returns 0 at EOF.
    pub async fn try_fill(&mut self, what: &str) -> std::io::Result<usize> {
        self.try_fill_within(RAW_LIMIT, what).await
    }

    /// As `try_fill`, bounded by `limit` instead: for a test on tokio's
    /// paused clock that waits out a timeout longer than `RAW_LIMIT`.
    pub async fn try_fill_within(&mut self, limit: Duration, what: &str) -> std::io::Result<usize> {
        let mut chunk = vec![0u8; 16 * 1024];
        let n = tokio::time::timeout(limit, self.stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {what} within {limit:?}; have {:?}",
                    String::from_utf8_lossy(&self.buf)
                )
            })?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads the next response, an interim one included, to a request
    /// other than `HEAD`; panics if the connection ends before it does.
    pub async fn response(&mut self) -> RawResponse {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill("response head").await == 0 {
                panic!(
                    "the connection closed before a response; got {:?}",
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
        let mut headers = HeaderMap::new();
        for line in head.lines().skip(1).filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("a header line without a colon: {line:?}"));
            headers.append(
                HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                HeaderValue::from_str(value.trim()).unwrap(),
            );
        }
        let mut response = RawResponse {
            status,
            head,
            headers,
            body: Vec::new(),
        };
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return response;
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                match decode_chunked(&self.buf) {
                    Ok(Some((body, used))) => {
                        response.body = body;
                        self.buf.drain(..used);
                        return response;
                    }
                    Ok(None) => {
                        if self.fill("chunked body").await == 0 {
                            panic!("closed inside a chunked body: {response:?}");
                        }
                    }
                    Err(e) => panic!("{e} in a chunked body: {response:?}"),
                }
            }
        }
        if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().unwrap();
            while self.buf.len() < length {
                if self.fill("response body").await == 0 {
                    panic!("closed inside a body: {response:?}");
                }
            }
            response.body = self.buf.drain(..length).collect();
            return response;
        }
        while self.fill("body up to the close").await > 0 {}
        response.body = std::mem::take(&mut self.buf);
        response
    }

    /// Asserts the peer closes the connection (a reset counts) within
    /// `RAW_LIMIT`, sending nothing more.
    pub async fn assert_closed(&mut self, what: &str) {
        let read = match self.try_fill(&format!("close ({what})")).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("{what}: {e}"),
        };
        assert_eq!(
            read,
            0,
            "{what}: bytes instead of a close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
