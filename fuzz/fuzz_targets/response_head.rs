//! Fuzzes `codec::parse_response` on arbitrary upstream bytes and every kind
//! of request it may answer (HEAD or not, upgrade asked or not, HTTP/1.0 or
//! 1.1 client, closing or not: the first input byte's low bits). The head
//! cutover writes for the client must parse whole with `httparse`, and a
//! client reading it by RFC 9112 §6.3 must frame the body exactly as cutover
//! will send it: never Transfer-Encoding and Content-Length together, one
//! Content-Length value, and `connection: close` whenever the body ends at
//! the close.

#![no_main]

use cutover::http::codec::{parse_response, Asked, Framing, Version};
use libfuzzer_sys::fuzz_target;

/// Room for every header an upstream may send and the few cutover adds: the
/// client is not cutover and has its own, larger, limits.
const CLIENT_HEADERS: usize = 256;

/// How a client reading cutover's head frames the body that follows.
#[derive(Debug, PartialEq, Eq)]
enum ClientFraming {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, upstream)) = data.split_first() else {
        return;
    };
    let asked = Asked {
        head_method: flags & 1 != 0,
        upgrade: flags & 2 != 0,
        client: if flags & 4 != 0 {
            Version::Http10
        } else {
            Version::Http11
        },
        close: flags & 8 != 0,
    };
    let mut out = Vec::new();
    let Ok(Some(response)) = parse_response(upstream, asked, &mut out) else {
        return;
    };
    assert!(
        response.head_len <= upstream.len(),
        "head_len past the buffer"
    );
    let status = response.status;
    if response.interim {
        assert!(
            (100..200).contains(&status) && status != 101,
            "interim {status}"
        );
        assert!(out.is_empty(), "an interim response wrote a head");
        return;
    }
    let switching = status == 101;
    assert!(
        !switching || asked.upgrade,
        "101 without an upgrade asked for"
    );

    let mut headers = [httparse::EMPTY_HEADER; CLIENT_HEADERS];
    let mut client = httparse::Response::new(&mut headers);
    match client.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "the client head ends early"),
        other => panic!(
            "the client head does not parse ({other:?}): {:?}",
            lossy(&out)
        ),
    }
    assert_eq!(client.version, Some(1), "the client head is not HTTP/1.1");
    assert_eq!(client.code, Some(status), "the status changed");

    let mut lengths = Vec::new();
    let mut codings = Vec::new();
    let mut connection = Vec::new();
    let mut via = false;
    for h in client.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = std::str::from_utf8(h.value).unwrap_or("");
        match name.as_str() {
            "content-length" => lengths.push(
                value
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("content-length {value:?}: {:?}", lossy(&out))),
            ),
            "transfer-encoding" => codings.push(value.to_ascii_lowercase()),
            "connection" => connection.push(value.to_ascii_lowercase()),
            "keep-alive"
            | "te"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization" => panic!("hop-by-hop {name} forwarded: {:?}", lossy(&out)),
            "upgrade" if !switching => panic!("upgrade forwarded on a {status}"),
            "via" => via |= value.ends_with(" cutover"),
            _ => {}
        }
    }
    assert!(via, "no via from cutover");
    assert!(
        codings.is_empty() || lengths.is_empty(),
        "transfer-encoding and content-length together: {:?}",
        lossy(&out)
    );
    assert!(
        codings.len() <= 1 && lengths.len() <= 1,
        "framing said twice: {:?}",
        lossy(&out)
    );
    assert!(
        connection.len() <= 1,
        "connection said twice: {:?}",
        lossy(&out)
    );
    let connection = connection.pop().unwrap_or_default();
    let tokens: Vec<&str> = connection.split(',').map(str::trim).collect();

    // What the client reads (RFC 9112 §6.3), and what cutover will send.
    let bodiless = asked.head_method || switching || status == 204 || status == 304;
    let reads = if bodiless {
        ClientFraming::None
    } else if let Some(coding) = codings.first() {
        assert_eq!(coding, "chunked", "a transfer coding other than chunked");
        ClientFraming::Chunked
    } else if let Some(&n) = lengths.first() {
        if n == 0 {
            ClientFraming::None
        } else {
            ClientFraming::Length(n)
        }
    } else {
        ClientFraming::UntilClose
    };
    let sends = match response.framing {
        Framing::None => ClientFraming::None,
        Framing::Length(n) => ClientFraming::Length(n),
        Framing::Chunked if response.dechunk => ClientFraming::UntilClose,
        Framing::Chunked => ClientFraming::Chunked,
        Framing::UntilClose => ClientFraming::UntilClose,
    };
    assert_eq!(
        reads,
        sends,
        "client and cutover frame the body differently: {:?}",
        lossy(&out)
    );
    if bodiless {
        assert_eq!(
            response.framing,
            Framing::None,
            "a body after a bodiless head"
        );
        assert!(
            codings.is_empty(),
            "transfer-encoding on a bodiless response"
        );
        if status == 204 || switching {
            assert!(lengths.is_empty(), "content-length on a {status}");
        }
    }
    if response.dechunk {
        assert_eq!(
            asked.client,
            Version::Http10,
            "dechunked for an HTTP/1.1 client"
        );
    }
    if switching {
        assert_eq!(tokens, ["upgrade"], "101 without connection: upgrade");
        assert!(!response.close && !response.reusable);
    } else {
        assert_eq!(
            tokens.contains(&"close"),
            response.close,
            "connection: {connection:?}"
        );
        assert!(response.close || !asked.close, "the client asked to close");
        if sends == ClientFraming::UntilClose {
            assert!(
                response.close,
                "the body ends at the close, the connection stays open"
            );
        }
        if !response.close && asked.client == Version::Http10 {
            assert!(
                tokens.contains(&"keep-alive"),
                "an HTTP/1.0 client kept without keep-alive"
            );
        }
    }
    if response.reusable {
        assert_ne!(
            response.framing,
            Framing::UntilClose,
            "reused after a body read to the close"
        );
    }
});

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
