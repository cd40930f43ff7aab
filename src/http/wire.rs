//! HTTP/1.1 message heads as bytes, for the fast path (`fast`): a client's
//! request head parsed and rewritten for its upstream in one pass, an
//! upstream's response head rewritten for the client, and the framing of the
//! response body, so a keep-alive upstream connection is reused only after
//! exactly its response was read. Anything this module does not fully
//! understand is declined, and the connection goes to hyper instead.
//!
//! Written by hand over `httparse` because forwarding a message means copying
//! most of its head unchanged: building a typed `http::Request` and writing it
//! out again is most of a proxy's cost per small request.

use std::mem::MaybeUninit;
use std::ops::Range;

/// Most headers a request head may carry on the fast path; more and hyper
/// takes the request (it allows more).
const MAX_HEADERS: usize = 64;
/// Most headers an upstream response may carry: more than hyper's client
/// allows (100), so no response it would relay is refused here.
const MAX_RESPONSE_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions), and all trailers together.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// What a request head turned out to be.
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// Not for the fast path: malformed, or a feature hyper handles (HTTP/1.0,
    /// upgrades, `Expect`, chunked request bodies, absolute-form targets).
    Declined,
    Request(Request),
}

/// A request head, rewritten for upstream.
pub struct Request {
    /// Bytes of the head in the client's buffer.
    pub head_len: usize,
    /// Request line and forwarded headers, with the end-of-head blank line; the
    /// `Host` line goes in at `host_at`.
    upstream: Vec<u8>,
    host_at: usize,
    /// The client's `Host` value, within `upstream` (its X-Forwarded-Host).
    host: Option<Range<usize>>,
    pub content_length: u64,
    /// The client asked to close after this request.
    pub close: bool,
    /// May be sent twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// A HEAD request: the response has no body whatever it says.
    pub head_method: bool,
}

impl Request {
    /// Length of the head as sent upstream, less its `Host` line.
    pub fn upstream_len(&self) -> usize {
        self.upstream.len()
    }

    /// The client's `Host`, for routing.
    pub fn host(&self) -> Option<&str> {
        self.host
            .clone()
            .and_then(|r| std::str::from_utf8(&self.upstream[r]).ok())
    }

    /// The head as sent to an upstream: `host` is the pool's rewrite, else
    /// the client's own.
    pub fn write_upstream(&self, host: Option<&[u8]>, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.upstream[..self.host_at]);
        if let Some(host) = host.or_else(|| self.host.clone().map(|r| &self.upstream[r])) {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(host);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&self.upstream[self.host_at..]);
    }
}

/// Hop-by-hop and proxy-owned headers, told apart by name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Name {
    Connection,
    /// Hop-by-hop headers with no meaning to the proxy: dropped.
    Hop,
    /// Announces trailers: kept on a response, whose chunked body (trailers
    /// included) passes through unchanged.
    Trailer,
    TransferEncoding,
    ContentLength,
    Upgrade,
    Expect,
    Host,
    ForwardedFor,
    /// `X-Forwarded-Proto` and `-Host`: the proxy sets them.
    ForwardedOwn,
    Other,
}

fn classify(name: &str) -> Name {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is("te") => Name::Hop,
        4 if is("host") => Name::Host,
        6 if is("expect") => Name::Expect,
        7 if is("trailer") => Name::Trailer,
        7 if is("upgrade") => Name::Upgrade,
        10 if is("connection") => Name::Connection,
        10 if is("keep-alive") => Name::Hop,
        14 if is("content-length") => Name::ContentLength,
        15 if is("x-forwarded-for") => Name::ForwardedFor,
        16 if is("proxy-connection") => Name::Hop,
        16 if is("x-forwarded-host") => Name::ForwardedOwn,
        17 if is("transfer-encoding") => Name::TransferEncoding,
        17 if is("x-forwarded-proto") => Name::ForwardedOwn,
        18 if is("proxy-authenticate") => Name::Hop,
        19 if is("proxy-authorization") => Name::Hop,
        _ => Name::Other,
    }
}

/// What a head's `Connection` headers say: `close`, `upgrade`, and the names
/// of further hop-by-hop headers (rare, so only then allocated).
#[derive(Default)]
struct ConnectionTokens<'a> {
    close: bool,
    upgrade: bool,
    named: Vec<&'a str>,
}

impl<'a> ConnectionTokens<'a> {
    fn of(headers: &[httparse::Header<'a>]) -> Self {
        let mut tokens = Self::default();
        for h in headers {
            if h.name.len() != 10 || !h.name.eq_ignore_ascii_case("connection") {
                continue;
            }
            let value = std::str::from_utf8(h.value).unwrap_or("");
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    tokens.close = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    tokens.upgrade = true;
                } else if !token.is_empty() && !token.eq_ignore_ascii_case("keep-alive") {
                    tokens.named.push(token);
                }
            }
        }
        tokens
    }

    fn names(&self, name: &str) -> bool {
        self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The value of a `Content-Length` header, if it is a plain decimal number.
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Parses a client's request head and rewrites it for upstream: hop-by-hop
/// headers go, `X-Forwarded-For/Proto/Host` and `Via` are set, and `Host`
/// is left for `Request::write_upstream`.
pub fn parse_request(buf: &[u8], client_ip: &[u8]) -> Parsed {
    // Left uninitialised: httparse writes only the entries it fills.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Declined,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Declined;
    };
    let origin_form = target.starts_with('/') || (target == "*" && method == "OPTIONS");
    if !origin_form || method == "CONNECT" {
        return Parsed::Declined;
    }
    let connection = ConnectionTokens::of(req.headers);
    if connection.upgrade {
        return Parsed::Declined;
    }

    let mut upstream = Vec::with_capacity(head_len + 128);
    upstream.extend_from_slice(method.as_bytes());
    upstream.push(b' ');
    upstream.extend_from_slice(target.as_bytes());
    upstream.extend_from_slice(b" HTTP/1.1\r\n");
    let host_at = upstream.len();
    let mut host: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    let mut forwarded_for: Option<Vec<u8>> = None;
    for h in req.headers.iter() {
        match classify(h.name) {
            Name::Connection | Name::Hop | Name::Trailer | Name::ForwardedOwn => continue,
            Name::TransferEncoding | Name::Upgrade | Name::Expect => return Parsed::Declined,
            Name::Host => {
                if host.replace(h.value).is_some() {
                    return Parsed::Declined;
                }
                continue;
            }
            Name::ContentLength => match (content_length(h.value), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => continue,
                _ => return Parsed::Declined,
            },
            Name::ForwardedFor => {
                let list = forwarded_for.get_or_insert_with(Vec::new);
                if !list.is_empty() {
                    list.extend_from_slice(b", ");
                }
                list.extend_from_slice(h.value);
                continue;
            }
            Name::Other if connection.names(h.name) => continue,
            Name::Other => {}
        }
        upstream.extend_from_slice(h.name.as_bytes());
        upstream.extend_from_slice(b": ");
        upstream.extend_from_slice(h.value);
        upstream.extend_from_slice(b"\r\n");
    }
    upstream.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = &forwarded_for {
        upstream.extend_from_slice(prior);
        upstream.extend_from_slice(b", ");
    }
    upstream.extend_from_slice(client_ip);
    upstream.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    let host = host.map(|value| {
        upstream.extend_from_slice(b"x-forwarded-host: ");
        let start = upstream.len();
        upstream.extend_from_slice(value);
        upstream.extend_from_slice(b"\r\n");
        start..start + value.len()
    });
    upstream.extend_from_slice(b"via: 1.1 cutover\r\n\r\n");

    Parsed::Request(Request {
        head_len,
        upstream,
        host_at,
        host,
        content_length: length.unwrap_or(0),
        close: connection.close,
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        head_method: method == "HEAD",
    })
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// At the upstream's close: the client connection closes after it too.
    UntilClose,
}

/// An upstream's response head, rewritten for the client.
#[derive(Debug)]
pub struct Response {
    pub head_len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The upstream connection may serve another request afterwards.
    pub reusable: bool,
}

/// Why a response head cannot be forwarded.
#[derive(Debug, PartialEq, Eq)]
pub enum BadResponse {
    Malformed,
    /// A `101` without an upgrade having been asked for.
    UnaskedSwitch,
}

/// Parses an upstream's response head. `Ok(None)`: more bytes are needed.
/// Interim (1xx) responses are skipped over: the fast path never asks for
/// one, and they carry nothing the client needs.
pub fn parse_response(
    buf: &[u8],
    head_method: bool,
    close_client: bool,
    out: &mut Vec<u8>,
) -> Result<Option<Response>, BadResponse> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse::Malformed),
    };
    let (Some(version), Some(status)) = (res.version, res.code) else {
        return Err(BadResponse::Malformed);
    };
    if status == 101 {
        return Err(BadResponse::UnaskedSwitch);
    }
    if (100..200).contains(&status) {
        // Skip the interim response and look at what follows it.
        return match parse_response(&buf[head_len..], head_method, close_client, out)? {
            Some(mut next) => {
                next.head_len += head_len;
                Ok(Some(next))
            }
            None => Ok(None),
        };
    }
    let connection = ConnectionTokens::of(res.headers);
    let mut chunked = None;
    let mut length = None;
    for h in res.headers.iter() {
        match classify(h.name) {
            Name::TransferEncoding => {
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            Name::ContentLength => match (content_length(h.value), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Err(BadResponse::Malformed),
            },
            _ => {}
        }
    }
    let framing = if head_method || status == 204 || status == 304 {
        Framing::None
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(0)) => Framing::None,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    let reusable = version == 1 && !connection.close && framing != Framing::UntilClose;

    out.clear();
    out.reserve(head_len + 64);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(status).as_slice());
    out.push(b' ');
    let reason = match res.reason {
        Some(r) if !r.is_empty() => r,
        _ => http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or(""),
    };
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in res.headers.iter() {
        match classify(h.name) {
            Name::Connection | Name::Hop | Name::Upgrade => continue,
            // The body's own framing wins over a length (RFC 9112 §6.3).
            Name::ContentLength if chunked.is_some() => continue,
            Name::Other if connection.names(h.name) => continue,
            _ => {}
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if version == 0 {
        b"via: 1.0 cutover\r\n".as_slice()
    } else {
        b"via: 1.1 cutover\r\n".as_slice()
    });
    if close_client || framing == Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Response {
        head_len,
        status,
        framing,
        reusable,
    }))
}

/// A three-digit status code as text.
fn itoa3(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

/// Follows a chunked body as it passes through unchanged, to find where it
/// ends (RFC 9112 §7.1).
#[derive(Debug)]
pub struct Chunks {
    state: Chunk,
    size: u64,
    digits: u8,
    /// Bytes of the current chunk-size line, or of all trailers.
    line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    EndLf,
    Done,
}

/// A chunked body that does not follow the format.
#[derive(Debug, PartialEq, Eq)]
pub struct BadChunk;

impl Default for Chunks {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunks {
    pub fn new() -> Self {
        Self {
            state: Chunk::Size,
            size: 0,
            digits: 0,
            line: 0,
        }
    }

    /// Reads on through `bytes`; `Some(n)`: the body ends after `n` of them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            if self.state == Chunk::Data {
                let take = self.size.min((bytes.len() - i) as u64);
                i += take as usize;
                self.size -= take;
                if self.size == 0 {
                    self.state = Chunk::DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (Chunk::Size, _) if b.is_ascii_hexdigit() => {
                    if self.digits == 15 {
                        return Err(BadChunk);
                    }
                    let digit = (b as char).to_digit(16).map_or(0, u64::from);
                    self.size = self.size * 16 + digit;
                    self.digits += 1;
                    Chunk::Size
                }
                (Chunk::Size, b';' | b' ' | b'\t') if self.digits > 0 => Chunk::Extension,
                (Chunk::Size | Chunk::Extension, b'\r') if self.digits > 0 => Chunk::SizeLf,
                (Chunk::Size | Chunk::Extension | Chunk::SizeLf, b'\n') if self.digits > 0 => {
                    self.after_size()
                }
                (Chunk::Extension, _) => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(BadChunk);
                    }
                    Chunk::Extension
                }
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataCr | Chunk::DataLf, b'\n') => {
                    self.digits = 0;
                    self.line = 0;
                    Chunk::Size
                }
                (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
                (Chunk::TrailerStart | Chunk::EndLf, b'\n') => {
                    self.state = Chunk::Done;
                    return Ok(Some(i));
                }
                (Chunk::TrailerStart | Chunk::Trailer, _) => {
                    self.line += 1;
                    if self.line > MAX_TRAILERS {
                        return Err(BadChunk);
                    }
                    if b == b'\n' {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Trailer
                    }
                }
                _ => return Err(BadChunk),
            };
        }
        Ok(None)
    }

    fn after_size(&mut self) -> Chunk {
        self.line = 0;
        if self.size == 0 {
            Chunk::TrailerStart
        } else {
            Chunk::Data
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str) -> Request {
        match parse_request(head.as_bytes(), b"10.0.0.1") {
            Parsed::Request(r) => r,
            Parsed::Partial => panic!("partial: {head:?}"),
            Parsed::Declined => panic!("declined: {head:?}"),
        }
    }

    fn upstream_text(r: &Request, host: Option<&[u8]>) -> String {
        let mut out = Vec::new();
        r.write_upstream(host, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_is_rewritten_for_upstream() {
        let r = request(
            "GET /a?b=1 HTTP/1.1\r\nHost: Shop.Example:8080\r\nConnection: keep-alive, x-secret\r\n\
             X-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 203.0.113.9\r\n\
             X-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(r.host(), Some("Shop.Example:8080"));
        assert!(!r.close && r.idempotent && !r.head_method);
        assert_eq!(
            upstream_text(&r, None),
            "GET /a?b=1 HTTP/1.1\r\nhost: Shop.Example:8080\r\nAccept: */*\r\n\
             x-forwarded-for: 203.0.113.9, 10.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: Shop.Example:8080\r\nvia: 1.1 cutover\r\n\r\n"
        );
        assert!(upstream_text(&r, Some(b"green.internal")).contains("\r\nhost: green.internal\r\n"));
    }

    #[test]
    fn requests_the_fast_path_leaves_to_hyper_are_declined() {
        for head in [
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(head.as_bytes(), b"1"), Parsed::Declined),
                "{head:?}"
            );
        }
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n", b"1"),
            Parsed::Partial
        ));
    }

    #[test]
    fn request_body_length_and_close_are_read() {
        let r = request("POST /x HTTP/1.1\r\nContent-Length: 12\r\nConnection: close\r\n\r\n");
        assert_eq!(r.content_length, 12);
        assert!(r.close && !r.idempotent);
        assert_eq!(r.host(), None);
        assert!(upstream_text(&r, None).contains("Content-Length: 12\r\n"));
    }

    fn response(head: &str, head_method: bool, close: bool) -> (Response, String) {
        let mut out = Vec::new();
        let r = parse_response(head.as_bytes(), head_method, close, &mut out)
            .unwrap()
            .unwrap();
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing_and_reuse() {
        let (r, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\nhello",
            false,
            false,
        );
        assert_eq!(
            (r.status, r.framing, r.reusable),
            (200, Framing::Length(5), true)
        );
        assert_eq!(r.head_len, 70);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nvia: 1.1 cutover\r\n\r\n"
        );

        let (r, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
            true,
        );
        assert_eq!((r.framing, r.reusable), (Framing::Chunked, true));
        assert!(!out.contains("Content-Length") && out.contains("connection: close\r\n"));

        let (r, out) = response("HTTP/1.0 200 OK\r\n\r\n", false, false);
        assert_eq!((r.framing, r.reusable), (Framing::UntilClose, false));
        assert!(out.contains("via: 1.0 cutover") && out.contains("connection: close"));

        let (r, _) = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false);
        assert_eq!((r.framing, r.reusable), (Framing::None, true));

        let (r, _) = response(
            "HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n",
            false,
            false,
        );
        assert_eq!((r.framing, r.reusable), (Framing::None, false));

        let (r, out) = response(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 \r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        );
        assert_eq!((r.status, r.framing, r.head_len), (201, Framing::None, 61));
        assert!(out.starts_with("HTTP/1.1 201 Created\r\n"));
    }

    #[test]
    fn bad_responses_are_refused() {
        let mut out = Vec::new();
        for head in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTQ/1.1 200 OK\r\n\r\n",
        ] {
            assert_eq!(
                parse_response(head.as_bytes(), false, false, &mut out).unwrap_err(),
                BadResponse::Malformed,
                "{head:?}"
            );
        }
        assert_eq!(
            parse_response(
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                false,
                false,
                &mut out
            )
            .unwrap_err(),
            BadResponse::UnaskedSwitch
        );
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\n", false, false, &mut out)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn chunked_end_is_found_across_any_split() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut chunks = Chunks::new();
            let first = chunks.feed(&body[..split]).unwrap();
            let found = match first {
                Some(n) => n,
                None => split + chunks.feed(&body[split..]).unwrap().unwrap(),
            };
            assert_eq!(found, end, "split at {split}");
        }
        let mut chunks = Chunks::new();
        assert_eq!(chunks.feed(b"0\r\n\r\n"), Ok(Some(5)));
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for body in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"1000000000000000\r\n",
        ] {
            assert_eq!(Chunks::new().feed(body), Err(BadChunk), "{body:?}");
        }
    }
}
