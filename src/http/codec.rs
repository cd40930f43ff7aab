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
mod request;
mod response;

pub(crate) use request::h2_request;
pub use request::{parse_request, Request};
pub(crate) use response::response_headers;
pub use response::{parse_response, Asked, BadResponse, Response};

use http::StatusCode;

/// Most headers a head may carry.
pub const MAX_HEADERS: usize = 128;
/// Most headers a client's request head may carry: its rewrite adds up to
/// five (`host`, `x-forwarded-for`, `-proto`, `-host`, `via`), and must
/// still be a head cutover itself would take.
pub const MAX_REQUEST_HEADERS: usize = MAX_HEADERS - 5;
/// Most interim (1xx) responses accepted ahead of a final one.
pub const MAX_INTERIM: usize = 16;

/// How the client reached the proxy, as `X-Forwarded-Proto` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    /// Over TLS the proxy terminated.
    Https,
}

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

pub(super) const fn refuse(status: StatusCode, reason: &'static str) -> Refused {
    Refused { status, reason }
}

pub(super) const fn bad(reason: &'static str) -> Refused {
    refuse(StatusCode::BAD_REQUEST, reason)
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
pub(super) fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
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
pub(super) fn content_length(value: &[u8]) -> Option<u64> {
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
pub(super) fn merge_length(seen: &mut Option<u64>, value: &[u8]) -> Result<(), ()> {
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
pub(super) struct Codings {
    pub(super) present: bool,
    /// The last coding is `chunked`.
    pub(super) chunked_last: bool,
    /// Codings other than one final `chunked`.
    pub(super) others: bool,
}

impl Codings {
    pub(super) fn add(&mut self, value: &[u8]) {
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

pub(super) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
