//! Response heads: an upstream's HTTP/1.x head parsed under the framing
//! rules and rewritten for an HTTP/1 client, or turned into the header map
//! an HTTP/2 client gets.

use std::mem::MaybeUninit;

use http::StatusCode;

use super::{
    classify, merge_length, push_header, Codings, ConnectionTokens, Framing, Name, Version,
    MAX_HEADERS,
};

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
