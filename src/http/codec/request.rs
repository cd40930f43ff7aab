//! Request heads: a client's HTTP/1.x head parsed under the framing rules
//! and rewritten for an HTTP/1.1 upstream, and an HTTP/2 request's head
//! rewritten the same way.

use std::mem::MaybeUninit;
use std::ops::Range;

use http::StatusCode;

use super::{
    bad, classify, merge_length, push_header, refuse, Codings, ConnectionTokens, Name, Refused,
    RequestBody, Scheme, Version, MAX_REQUEST_HEADERS,
};

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

    /// The request target as sent upstream (origin-form).
    pub fn target(&self) -> &[u8] {
        let line = &self.upstream[..self.line_end];
        let mut parts = line.splitn(3, |&b| b == b' ');
        parts.nth(1).unwrap_or(b"/")
    }

    pub fn wants_upgrade(&self) -> bool {
        self.upgrade.is_some()
    }

    /// The head as sent upstream: origin-form, `host` the pool's rewrite or
    /// else the client's, the body's framing said once by the proxy.
    pub fn write_upstream(&self, host: Option<&[u8]>, out: &mut Vec<u8>) {
        out.clear();
        // One allocation: the head, a host line and the framing lines.
        out.reserve(self.upstream.len() + host.map_or(0, <[u8]>::len) + 128);
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

/// Adds one `X-Forwarded-For` header's value to the list the client sent.
fn add_forwarded_for(list: &mut Option<Vec<u8>>, value: &[u8]) {
    let list = list.get_or_insert_with(Vec::new);
    if !list.is_empty() {
        list.extend_from_slice(b", ");
    }
    list.extend_from_slice(value);
}

/// Writes the forwarding headers the proxy sets: `X-Forwarded-For` (the
/// client appended to any list it sent), `X-Forwarded-Proto` and, when the
/// request names a host, `X-Forwarded-Host`; returns where that host sits.
fn push_forwarding(
    upstream: &mut Vec<u8>,
    forwarded_for: Option<&[u8]>,
    client_ip: &[u8],
    scheme: Scheme,
    host: Option<&[u8]>,
) -> Option<Range<usize>> {
    upstream.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = forwarded_for {
        upstream.extend_from_slice(prior);
        upstream.extend_from_slice(b", ");
    }
    upstream.extend_from_slice(client_ip);
    upstream.extend_from_slice(match scheme {
        Scheme::Http => b"\r\nx-forwarded-proto: http\r\n",
        Scheme::Https => b"\r\nx-forwarded-proto: https\r\n",
    });
    host.map(|value| {
        upstream.extend_from_slice(b"x-forwarded-host: ");
        let start = upstream.len();
        upstream.extend_from_slice(value);
        upstream.extend_from_slice(b"\r\n");
        start..start + value.len()
    })
}

/// Parses a client's request head at the start of `buf` and rewrites it for
/// upstream. `Ok(None)`: more bytes are needed.
pub fn parse_request(
    buf: &[u8],
    client_ip: &[u8],
    scheme: Scheme,
) -> Result<Option<Request>, Refused> {
    // Left uninitialised: httparse writes only the entries it fills.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_REQUEST_HEADERS];
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
                add_forwarded_for(&mut forwarded_for, value);
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

    let host = match authority {
        Some(range) => Some(&target.as_bytes()[range]),
        None => host,
    };
    let host = push_forwarding(
        &mut upstream,
        forwarded_for.as_deref(),
        client_ip,
        scheme,
        host,
    );
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

/// Rewrites an HTTP/2 request's head for an HTTP/1.1 upstream, by the same
/// rules as `parse_request`: origin-form, hop-by-hop headers dropped,
/// forwarding headers set, and the body's framing said once.
pub(crate) fn h2_request(
    parts: &http::request::Parts,
    body: RequestBody,
    client_ip: &[u8],
    scheme: Scheme,
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
            Name::ForwardedFor => add_forwarded_for(&mut forwarded_for, value.as_bytes()),
            _ => {}
        }
    }
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(http::header::HOST).map(|h| h.as_bytes()));
    let host = push_forwarding(
        &mut upstream,
        forwarded_for.as_deref(),
        client_ip,
        scheme,
        authority,
    );
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
