//! The HTTP/1.x codec: every request head a client sends and every response
//! head an upstream sends is parsed here (httparse for the head's syntax,
//! strict RFC 9112 framing rules on top) and rewritten for the other side in
//! one pass, with the one set of hop-by-hop and forwarding-header rules.
//! Chunked bodies are followed by `chunked::Chunks`. This module is pure: it
//! sees bytes and returns bytes and decisions, never a socket, so every part
//! of it is fuzzed (`fuzz/`).
//!
//! Written by hand over `httparse` because forwarding a message means copying
//! most of its head unchanged: building a typed `http::Request` and writing it
//! out again is most of a proxy's cost per small request, and no crate
//! applies a proxy's framing rules (refuse what two parsers could read
//! differently) to both directions.

pub mod chunked;

use std::mem::MaybeUninit;
use std::ops::Range;

use http::StatusCode;

/// Most headers a head may carry.
pub const MAX_HEADERS: usize = 128;
/// Most interim (1xx) responses accepted ahead of a final one.
pub const MAX_INTERIM: usize = 16;

/// HTTP/1.0 or HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How a request body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    None,
    Length(u64),
    Chunked,
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

/// Why a request head is refused: the status to answer and a short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub reason: &'static str,
}

const fn refuse(status: StatusCode, reason: &'static str) -> Refused {
    Refused { status, reason }
}

const fn bad(reason: &'static str) -> Refused {
    refuse(StatusCode::BAD_REQUEST, reason)
}

/// A client's request head, parsed, with its rewrite for upstream.
#[derive(Debug)]
pub struct Request {
    /// Bytes of the head in the client's buffer (with any empty lines before it).
    pub head_len: usize,
    pub version: Version,
    pub body: RequestBody,
    /// The connection may serve another request after this one.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending its body.
    pub expect_continue: bool,
    /// May be sent twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// A HEAD request: the response has no body whatever it says.
    pub head_method: bool,
    /// Asks to switch protocols (WebSocket): the `Upgrade` value.
    upgrade: Option<Box<[u8]>>,
    /// Request line and forwarded headers, without `Host`, framing and the
    /// end of the head (see `write_upstream`).
    upstream: Vec<u8>,
    /// Where the request line ends in `upstream`.
    line_end: usize,
    /// The host the request is for (absolute-form authority, else `Host`),
    /// within `upstream`.
    host: Option<Range<usize>>,
}

impl Request {
    /// The host the request is for, for routing.
    pub fn host(&self) -> Option<&str> {
        self.host
            .clone()
            .and_then(|r| std::str::from_utf8(&self.upstream[r]).ok())
    }

    pub fn wants_upgrade(&self) -> bool {
        self.upgrade.is_some()
    }

    /// The head as sent upstream: origin-form, `host` the pool's rewrite or
    /// else the client's, the body's framing said once by the proxy.
    pub fn write_upstream(&self, host: Option<&[u8]>, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.upstream[..self.line_end]);
        if let Some(host) = host.or_else(|| self.host.clone().map(|r| &self.upstream[r])) {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(host);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&self.upstream[self.line_end..]);
        write_framing(self.body, out);
        if let Some(protocol) = &self.upgrade {
            out.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
            out.extend_from_slice(protocol);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn write_framing(body: RequestBody, out: &mut Vec<u8>) {
    match body {
        RequestBody::None => {}
        RequestBody::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RequestBody::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
}

/// Hop-by-hop, framing and proxy-owned headers, told apart by name: the one
/// rule set for both directions and both client protocols.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name {
    Connection,
    /// Describes one hop only: dropped both ways.
    Hop,
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

pub(crate) fn classify(name: &[u8]) -> Name {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is(b"te") => Name::Hop,
        4 if is(b"host") => Name::Host,
        6 if is(b"expect") => Name::Expect,
        7 if is(b"upgrade") => Name::Upgrade,
        10 if is(b"connection") => Name::Connection,
        10 if is(b"keep-alive") => Name::Hop,
        14 if is(b"content-length") => Name::ContentLength,
        15 if is(b"x-forwarded-for") => Name::ForwardedFor,
        16 if is(b"proxy-connection") => Name::Hop,
        16 if is(b"x-forwarded-host") => Name::ForwardedOwn,
        17 if is(b"transfer-encoding") => Name::TransferEncoding,
        17 if is(b"x-forwarded-proto") => Name::ForwardedOwn,
        18 if is(b"proxy-authenticate") => Name::Hop,
        19 if is(b"proxy-authorization") => Name::Hop,
        _ => Name::Other,
    }
}

/// Items of a comma-separated header value, trimmed of optional whitespace,
/// empty ones skipped (RFC 9110 §5.6.1).
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// What a head's `Connection` headers say: `close`, `keep-alive`, `upgrade`,
/// and the names of further hop-by-hop headers (rare, so only then allocated).
#[derive(Default)]
pub(crate) struct ConnectionTokens<'a> {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    named: Vec<&'a [u8]>,
}

impl<'a> ConnectionTokens<'a> {
    pub(crate) fn of(headers: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut tokens = Self::default();
        for (name, value) in headers {
            if classify(name) != Name::Connection {
                continue;
            }
            for token in list(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    tokens.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    tokens.keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    tokens.upgrade = true;
                } else {
                    tokens.named.push(token);
                }
            }
        }
        tokens
    }

    pub(crate) fn names(&self, name: &[u8]) -> bool {
        self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// A `Content-Length` value: one decimal number, or a list of the same one.
fn content_length(value: &[u8]) -> Option<u64> {
    let mut found = None;
    for item in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u64 = std::str::from_utf8(item).ok()?.parse().ok()?;
        if found.is_some_and(|m| m != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

/// Folds one more `Content-Length` header into what was seen; `Err` when it
/// is not a number or differs from an earlier one.
fn merge_length(seen: &mut Option<u64>, value: &[u8]) -> Result<(), ()> {
    match (content_length(value), *seen) {
        (Some(n), None) => {
            *seen = Some(n);
            Ok(())
        }
        (Some(n), Some(m)) if n == m => Ok(()),
        _ => Err(()),
    }
}

/// What the `Transfer-Encoding` headers of a head say, all taken together.
#[derive(Default)]
struct Codings {
    present: bool,
    /// The last coding is `chunked`.
    chunked_last: bool,
    /// Codings other than one final `chunked`.
    others: bool,
}

impl Codings {
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        for coding in list(value) {
            if self.chunked_last {
                // `chunked` must be the last coding, and appear once.
                self.others = true;
            }
            self.chunked_last = coding.eq_ignore_ascii_case(b"chunked");
            if !self.chunked_last {
                self.others = true;
            }
        }
    }
}

/// The request method, as far as the proxy cares.
fn method_facts(method: &str) -> (bool, bool) {
    let idempotent = matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    );
    (idempotent, method == "HEAD")
}

/// Where a request target points, in origin form, and the authority of an
/// absolute-form target.
fn split_target(
    method: &str,
    target: &str,
) -> Result<(Range<usize>, Option<Range<usize>>), Refused> {
    if target.starts_with('/') || (target == "*" && method == "OPTIONS") {
        return Ok((0..target.len(), None));
    }
    // Absolute form (RFC 9112 §3.2.2): `http://authority/path?query`.
    let lower = target
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let after_scheme = if lower.starts_with("http://") {
        7
    } else if lower.starts_with("https://") {
        8
    } else {
        return Err(bad(
            "the request target is not origin-form or absolute-form",
        ));
    };
    let rest = &target[after_scheme..];
    let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    if authority.is_empty()
        || authority.contains('@')
        || authority.parse::<http::uri::Authority>().is_err()
    {
        return Err(bad("the request target's authority is not valid"));
    }
    let path_at = after_scheme + authority_len;
    Ok((path_at..target.len(), Some(after_scheme..path_at)))
}

/// Parses a client's request head at the start of `buf` and rewrites it for
/// upstream. `Ok(None)`: more bytes are needed.
pub fn parse_request(buf: &[u8], client_ip: &[u8]) -> Result<Option<Request>, Refused> {
    // Left uninitialised: httparse writes only the entries it fills.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request has too many header fields",
            ))
        }
        Err(_) => return Err(bad("the request could not be parsed as HTTP/1.1")),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(bad("the request could not be parsed as HTTP/1.1"));
    };
    let version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    if method == "CONNECT" {
        return Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not served: this is a reverse proxy",
        ));
    }
    let (path, authority) = split_target(method, target)?;
    let fields = || req.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    let connection = ConnectionTokens::of(fields());

    let mut upstream = Vec::with_capacity(head_len + 128);
    upstream.extend_from_slice(method.as_bytes());
    upstream.push(b' ');
    let path = &target.as_bytes()[path];
    if !path.starts_with(b"/") && path != b"*" {
        upstream.push(b'/');
    }
    upstream.extend_from_slice(path);
    upstream.extend_from_slice(b" HTTP/1.1\r\n");
    let line_end = upstream.len();
    let mut host: Option<&[u8]> = None;
    let mut length = None;
    let mut codings = Codings::default();
    let mut expect_continue = false;
    let mut upgrade: Option<&[u8]> = None;
    let mut forwarded_for: Option<Vec<u8>> = None;
    for (name, value) in fields() {
        match classify(name) {
            Name::Connection | Name::Hop | Name::ForwardedOwn => continue,
            Name::TransferEncoding => {
                codings.add(value);
                continue;
            }
            Name::ContentLength => {
                if merge_length(&mut length, value).is_err() {
                    return Err(bad("the request's Content-Length is not one whole number"));
                }
                continue;
            }
            Name::Upgrade => {
                if connection.upgrade && version == Version::Http11 && !value.is_empty() {
                    upgrade = Some(value);
                }
                continue;
            }
            Name::Expect => {
                if !value.eq_ignore_ascii_case(b"100-continue") {
                    return Err(refuse(
                        StatusCode::EXPECTATION_FAILED,
                        "the only expectation served is 100-continue",
                    ));
                }
                expect_continue = version == Version::Http11;
                continue;
            }
            Name::Host => {
                if host.replace(value).is_some() {
                    return Err(bad("the request has more than one Host header"));
                }
                continue;
            }
            Name::ForwardedFor => {
                let list = forwarded_for.get_or_insert_with(Vec::new);
                if !list.is_empty() {
                    list.extend_from_slice(b", ");
                }
                list.extend_from_slice(value);
                continue;
            }
            Name::Other if connection.names(name) => continue,
            Name::Other => {}
        }
        push_header(&mut upstream, name, value);
    }
    let body = match (codings.present, length) {
        (true, Some(_)) => {
            return Err(bad(
                "the request has both Transfer-Encoding and Content-Length",
            ))
        }
        (true, None) if version == Version::Http10 => {
            return Err(bad("an HTTP/1.0 request cannot have a Transfer-Encoding"))
        }
        (true, None) if !codings.chunked_last => {
            return Err(bad("the request's final transfer coding is not chunked"))
        }
        (true, None) if codings.others => {
            return Err(refuse(
                StatusCode::NOT_IMPLEMENTED,
                "transfer codings other than chunked are not served",
            ))
        }
        (true, None) => RequestBody::Chunked,
        (false, Some(0) | None) => RequestBody::None,
        (false, Some(n)) => RequestBody::Length(n),
    };

    upstream.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = &forwarded_for {
        upstream.extend_from_slice(prior);
        upstream.extend_from_slice(b", ");
    }
    upstream.extend_from_slice(client_ip);
    upstream.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    let host = match authority {
        Some(range) => Some(&target.as_bytes()[range]),
        None => host,
    };
    let host = host.map(|value| {
        upstream.extend_from_slice(b"x-forwarded-host: ");
        let start = upstream.len();
        upstream.extend_from_slice(value);
        upstream.extend_from_slice(b"\r\n");
        start..start + value.len()
    });
    upstream.extend_from_slice(match version {
        Version::Http10 => b"via: 1.0 cutover\r\n",
        Version::Http11 => b"via: 1.1 cutover\r\n",
    });
    let (idempotent, head_method) = method_facts(method);
    Ok(Some(Request {
        head_len,
        version,
        body,
        keep_alive: match version {
            Version::Http11 => !connection.close,
            Version::Http10 => connection.keep_alive && !connection.close,
        },
        expect_continue: expect_continue && body != RequestBody::None,
        idempotent,
        head_method,
        upgrade: upgrade.map(Box::from),
        upstream,
        line_end,
        host,
    }))
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the response is an answer to.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    /// A HEAD request: no body follows whatever the head says.
    pub head_method: bool,
    /// The request asked to switch protocols: a 101 is welcome.
    pub upgrade: bool,
    /// The client's HTTP version: an HTTP/1.0 client gets no chunked body.
    pub client: Version,
    /// The client connection closes after this response.
    pub close: bool,
}

/// An upstream's response head.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// Bytes of the head in the upstream's buffer.
    pub head_len: usize,
    pub status: u16,
    /// An interim (1xx, not 101) response: skipped, the final one follows.
    pub interim: bool,
    /// How the body ends as the upstream sends it.
    pub framing: Framing,
    /// The chunked body is decoded for the client (an HTTP/1.0 client).
    pub dechunk: bool,
    /// The upstream connection may serve another request afterwards.
    pub reusable: bool,
    /// The client connection must close after this response.
    pub close: bool,
}

/// Why a response head cannot be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Parses an upstream's response head at the start of `buf` and, for a final
/// response, writes its rewrite for the client into `out`. `Ok(None)`: more
/// bytes are needed. Interim responses are returned with `interim` set and
/// nothing written; the caller skips them, a bounded number of times.
pub fn parse_response(
    buf: &[u8],
    asked: Asked,
    out: &mut Vec<u8>,
) -> Result<Option<Response>, BadResponse> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(BadResponse("the response has too many header fields"))
        }
        Err(_) => return Err(BadResponse("the response head is not valid HTTP/1.1")),
    };
    let (Some(minor), Some(status)) = (res.version, res.code) else {
        return Err(BadResponse("the response head is not valid HTTP/1.1"));
    };
    if !(100..=999).contains(&status) {
        return Err(BadResponse("the response status is out of range"));
    }
    let switching = status == 101;
    if switching && !(asked.upgrade && minor == 1) {
        return Err(BadResponse(
            "101 Switching Protocols without an upgrade asked for",
        ));
    }
    if (100..200).contains(&status) && !switching {
        return Ok(Some(Response {
            head_len,
            status,
            interim: true,
            framing: Framing::None,
            dechunk: false,
            reusable: false,
            close: false,
        }));
    }
    let fields = || res.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    let connection = ConnectionTokens::of(fields());
    let mut codings = Codings::default();
    let mut length = None;
    for (name, value) in fields() {
        match classify(name) {
            Name::TransferEncoding => codings.add(value),
            Name::ContentLength if merge_length(&mut length, value).is_err() => {
                return Err(BadResponse(
                    "the response's Content-Length is not one whole number",
                ));
            }
            _ => {}
        }
    }
    if codings.present {
        if length.is_some() {
            return Err(BadResponse(
                "the response has both Transfer-Encoding and Content-Length",
            ));
        }
        if !codings.chunked_last || codings.others {
            return Err(BadResponse(
                "the response's transfer coding is not just chunked",
            ));
        }
    }
    let bodiless = asked.head_method || switching || status == 204 || status == 304;
    let framing = if bodiless {
        Framing::None
    } else {
        match (codings.present, length) {
            (true, _) => Framing::Chunked,
            (false, None) => Framing::UntilClose,
            (false, Some(0)) => Framing::None,
            (false, Some(n)) => Framing::Length(n),
        }
    };
    let upstream_keeps = match minor {
        1 => !connection.close,
        _ => connection.keep_alive && !connection.close,
    };
    let reusable = !switching && upstream_keeps && framing != Framing::UntilClose;
    let dechunk = framing == Framing::Chunked && asked.client == Version::Http10;
    let close = !switching && (asked.close || framing == Framing::UntilClose || dechunk);

    out.clear();
    out.reserve(head_len + 64);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    let reason = match res.reason {
        Some(r) if !r.is_empty() => r,
        _ => StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or(""),
    };
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in fields() {
        match classify(name) {
            Name::Connection | Name::Hop | Name::Upgrade | Name::TransferEncoding => continue,
            // Said once by the proxy below, or kept as information where no
            // body follows (HEAD, 304).
            Name::ContentLength if !bodiless || status == 204 || switching => continue,
            Name::ContentLength => {
                if let Some(n) = length {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    out.extend_from_slice(b"\r\n");
                    length = None;
                }
                continue;
            }
            Name::Other if connection.names(name) => continue,
            _ => {}
        }
        push_header(out, name, value);
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::None if !bodiless => out.extend_from_slice(b"content-length: 0\r\n"),
        Framing::Chunked if !dechunk => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    out.extend_from_slice(if minor == 0 {
        b"via: 1.0 cutover\r\n".as_slice()
    } else {
        b"via: 1.1 cutover\r\n".as_slice()
    });
    if switching {
        out.extend_from_slice(b"connection: upgrade\r\n");
        if let Some((_, protocol)) = fields().find(|(n, _)| classify(n) == Name::Upgrade) {
            push_header(out, b"upgrade", protocol);
        }
    } else if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if asked.client == Version::Http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Response {
        head_len,
        status,
        interim: false,
        framing,
        dechunk,
        reusable,
        close,
    }))
}

/// Headers of an upstream response as an HTTP/2 client gets them: the same
/// rules as `parse_response`'s rewrite, into a header map.
pub(crate) fn response_headers(head: &[u8]) -> Option<(u16, http::HeaderMap)> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, head, &mut headers)
        .ok()?;
    let status = res.code?;
    let fields = || res.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    let connection = ConnectionTokens::of(fields());
    let mut map = http::HeaderMap::with_capacity(res.headers.len() + 1);
    for (name, value) in fields() {
        match classify(name) {
            Name::Connection | Name::Hop | Name::Upgrade | Name::TransferEncoding => continue,
            Name::ContentLength => continue,
            Name::Other if connection.names(name) => continue,
            _ => {}
        }
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map.append(
        http::header::VIA,
        http::HeaderValue::from_static("1.1 cutover"),
    );
    Some((status, map))
}

/// Rewrites an HTTP/2 request's head for an HTTP/1.1 upstream, by the same
/// rules as `parse_request`: origin-form, hop-by-hop headers dropped,
/// forwarding headers set, and the body's framing said once.
pub(crate) fn h2_request(
    parts: &http::request::Parts,
    body: RequestBody,
    client_ip: &[u8],
) -> Request {
    let method = parts.method.as_str();
    let target = match parts.uri.path_and_query() {
        Some(p) if !p.as_str().is_empty() => p.as_str(),
        _ if parts.method == http::Method::OPTIONS => "*",
        _ => "/",
    };
    let mut upstream = Vec::with_capacity(256);
    upstream.extend_from_slice(method.as_bytes());
    upstream.push(b' ');
    upstream.extend_from_slice(target.as_bytes());
    upstream.extend_from_slice(b" HTTP/1.1\r\n");
    let line_end = upstream.len();
    let mut forwarded_for: Option<Vec<u8>> = None;
    for (name, value) in &parts.headers {
        match classify(name.as_str().as_bytes()) {
            Name::Other => push_header(&mut upstream, name.as_str().as_bytes(), value.as_bytes()),
            Name::ForwardedFor => {
                let list = forwarded_for.get_or_insert_with(Vec::new);
                if !list.is_empty() {
                    list.extend_from_slice(b", ");
                }
                list.extend_from_slice(value.as_bytes());
            }
            _ => {}
        }
    }
    upstream.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = &forwarded_for {
        upstream.extend_from_slice(prior);
        upstream.extend_from_slice(b", ");
    }
    upstream.extend_from_slice(client_ip);
    upstream.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(http::header::HOST).map(|h| h.as_bytes()));
    let host = authority.map(|value| {
        upstream.extend_from_slice(b"x-forwarded-host: ");
        let start = upstream.len();
        upstream.extend_from_slice(value);
        upstream.extend_from_slice(b"\r\n");
        start..start + value.len()
    });
    upstream.extend_from_slice(b"via: 2 cutover\r\n");
    let (idempotent, head_method) = method_facts(method);
    Request {
        head_len: 0,
        version: Version::Http11,
        body,
        keep_alive: true,
        expect_continue: false,
        idempotent,
        head_method,
        upgrade: None,
        upstream,
        line_end,
        host,
    }
}

#[cfg(test)]
mod tests;
