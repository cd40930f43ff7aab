//! Fuzzes cutover's HTTP/1 codec against references on the same bytes, as a
//! request, as a response and as a chunked body (and as the chunked body
//! after a head the codec accepts):
//!
//! - heads: where a head ends must be where `httparse` says it ends, and the
//!   request body's framing must be what its headers say (RFC 9112 §6.3);
//! - chunked bodies: a small decoder written here over
//!   `httparse::parse_chunk_size`. The codec is stricter (no bare LF, no
//!   control bytes, bounded extensions and trailers), so the rule is one
//!   way: whenever the codec reads a body to its end, the reference ends it
//!   at the same byte with the same data, and whatever the reference refuses
//!   the codec refuses too.

#![no_main]

use cutover::http::codec::chunked::Chunks;
use cutover::http::codec::{
    parse_request, parse_response, Asked, Framing, RequestBody, Scheme, Version, MAX_HEADERS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(body_at) = request(data) {
        chunked(&data[body_at..]);
    }
    if let Some(body_at) = response(data) {
        chunked(&data[body_at..]);
    }
    chunked(data);
});

/// Compares the request head with `httparse`'s reading; `Some(head_len)`
/// when the codec accepts it with a chunked body.
fn request(data: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut reference = httparse::Request::new(&mut headers);
    let expected = reference.parse(data);
    let request = match parse_request(data, b"192.0.2.7", Scheme::Http) {
        Ok(Some(r)) => r,
        Ok(None) => {
            assert!(
                matches!(expected, Ok(httparse::Status::Partial)),
                "the codec waits on a head httparse reads as {expected:?}"
            );
            return None;
        }
        Err(_) => return None,
    };
    match expected {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(
                request.head_len, n,
                "the request head ends elsewhere for httparse"
            )
        }
        other => panic!("the codec accepts a request head httparse reads as {other:?}"),
    }
    let fields = reference.headers.iter().map(|h| (h.name, h.value));
    assert_eq!(
        request.body,
        request_body(fields),
        "the request body framing differs"
    );
    (request.body == RequestBody::Chunked).then_some(request.head_len)
}

/// A request body's framing read from its headers (RFC 9112 §6.3), for a
/// head the codec accepted (so one that is not ambiguous).
fn request_body<'a>(fields: impl Iterator<Item = (&'a str, &'a [u8])>) -> RequestBody {
    let mut last_coding = None;
    let mut lengths = Vec::new();
    for (name, value) in fields {
        let text = || std::str::from_utf8(value).expect("a framing header that is not text");
        if name.eq_ignore_ascii_case("transfer-encoding") {
            let value = text();
            let mut codings = value
                .split(',')
                .map(|s| s.trim_matches([' ', '\t']))
                .filter(|c| !c.is_empty());
            last_coding = codings.next_back().or(last_coding).or(Some(""));
        } else if name.eq_ignore_ascii_case("content-length") {
            let value = text();
            for item in value.split(',').map(|s| s.trim_matches([' ', '\t'])) {
                assert!(
                    item.bytes().all(|b| b.is_ascii_digit()),
                    "content-length {value:?}"
                );
                lengths.push(item.parse::<u64>().expect("content-length"));
            }
        }
    }
    if let Some(coding) = last_coding {
        assert!(
            lengths.is_empty(),
            "accepted with transfer-encoding and content-length"
        );
        assert!(
            coding.eq_ignore_ascii_case("chunked"),
            "accepted ending in {coding:?}"
        );
        return RequestBody::Chunked;
    }
    let Some(&n) = lengths.first() else {
        return RequestBody::None;
    };
    assert!(
        lengths.iter().all(|&m| m == n),
        "accepted with lengths {lengths:?}"
    );
    if n == 0 {
        RequestBody::None
    } else {
        RequestBody::Length(n)
    }
}

/// Compares the response head (to a GET from an HTTP/1.1 client) with
/// `httparse`'s reading; `Some(head_len)` when the codec frames it chunked.
fn response(data: &[u8]) -> Option<usize> {
    let asked = Asked {
        head_method: false,
        upgrade: false,
        client: Version::Http11,
        close: false,
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut reference = httparse::Response::new(&mut headers);
    let expected = reference.parse(data);
    let response = match parse_response(data, asked, &mut Vec::new()) {
        Ok(Some(r)) => r,
        Ok(None) => {
            assert!(
                matches!(expected, Ok(httparse::Status::Partial)),
                "the codec waits on a head httparse reads as {expected:?}"
            );
            return None;
        }
        Err(_) => return None,
    };
    match expected {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(
                response.head_len, n,
                "the response head ends elsewhere for httparse"
            )
        }
        other => panic!("the codec accepts a response head httparse reads as {other:?}"),
    }
    (response.framing == Framing::Chunked).then_some(response.head_len)
}

/// The reference's reading of a chunked body.
#[derive(Debug)]
enum Reference {
    /// The body ends after `end` bytes.
    Complete {
        end: usize,
        data: Vec<u8>,
    },
    Partial,
    Rejected,
    /// A line ends in a bare LF before the end: outside this comparison.
    NotCrlf,
}

fn chunked(body: &[u8]) {
    let mut data = Vec::new();
    let codec = Chunks::new().decode(body, |r| data.extend_from_slice(&body[r]));
    match (codec, reference(body)) {
        (Ok(Some(end)), Reference::Complete { end: e, data: d }) => {
            assert_eq!(end, e, "the body ends elsewhere for the reference");
            assert_eq!(data, d, "the reference decodes other data");
        }
        (Ok(Some(end)), other) => {
            panic!("the codec ends the body at {end}, the reference reads {other:?}")
        }
        (Ok(None), Reference::Rejected) => {
            panic!("the codec waits on a body the reference refuses")
        }
        _ => {}
    }
}

/// Reads a chunked body (RFC 9112 §7.1) with `httparse::parse_chunk_size`
/// for the size lines; lenient on extensions and trailers.
fn reference(body: &[u8]) -> Reference {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let rest = &body[at..];
        let (line, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Reference::Partial,
            Err(_) => return Reference::Rejected,
        };
        if rest[..line - 1].contains(&b'\n') {
            return Reference::NotCrlf;
        }
        at += line;
        if size == 0 {
            break;
        }
        let rest = &body[at..];
        if (rest.len() as u64) < size {
            return Reference::Partial;
        }
        let size = size as usize;
        data.extend_from_slice(&rest[..size]);
        at += size;
        match &body[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [] | [b'\r'] => return Reference::Partial,
            _ => return Reference::Rejected,
        }
    }
    loop {
        let rest = &body[at..];
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            return Reference::Partial;
        };
        if lf == 0 || rest[lf - 1] != b'\r' {
            return Reference::NotCrlf;
        }
        at += lf + 1;
        if lf == 1 {
            return Reference::Complete { end: at, data };
        }
    }
}
