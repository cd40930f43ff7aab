//! Unit tests of the codec's heads: rewrites both ways and the framing rules.

use super::*;

fn request(head: &str) -> Request {
    match parse_request(head.as_bytes(), b"10.0.0.1", Scheme::Http) {
        Ok(Some(r)) => r,
        Ok(None) => panic!("partial: {head:?}"),
        Err(e) => panic!("refused ({e:?}): {head:?}"),
    }
}

fn upstream_text(r: &Request, host: Option<&[u8]>) -> String {
    let mut out = Vec::new();
    r.write_upstream(host, &mut out);
    String::from_utf8(out).unwrap()
}

fn refused(head: &str) -> Refused {
    match parse_request(head.as_bytes(), b"1", Scheme::Http) {
        Err(e) => e,
        Ok(r) => panic!("accepted ({}): {head:?}", r.is_some()),
    }
}

#[test]
fn request_is_rewritten_for_upstream() {
    let r = request(
        "GET /a?b=1 HTTP/1.1\r\nHost: Shop.Example:8080\r\nConnection: keep-alive, x-secret\r\n\
         X-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 203.0.113.9\r\n\
         X-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n",
    );
    assert_eq!(r.host(), Some("Shop.Example:8080"));
    assert!(r.keep_alive && r.idempotent && !r.head_method);
    assert_eq!(
        upstream_text(&r, None),
        "GET /a?b=1 HTTP/1.1\r\nhost: Shop.Example:8080\r\nAccept: */*\r\n\
         x-forwarded-for: 203.0.113.9, 10.0.0.1\r\nx-forwarded-proto: http\r\n\
         x-forwarded-host: Shop.Example:8080\r\nvia: 1.1 cutover\r\n\r\n"
    );
    assert!(upstream_text(&r, Some(b"green.internal")).contains("\r\nhost: green.internal\r\n"));
}

#[test]
fn absolute_form_goes_upstream_in_origin_form_and_its_authority_wins() {
    let r = request("GET http://Other.Example:81/p?q HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.host(), Some("Other.Example:81"));
    let text = upstream_text(&r, None);
    assert!(
        text.starts_with("GET /p?q HTTP/1.1\r\nhost: Other.Example:81\r\n"),
        "{text}"
    );
    let r = request("GET http://a HTTP/1.1\r\n\r\n");
    assert!(upstream_text(&r, None).starts_with("GET / HTTP/1.1\r\n"));
    let r = request("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(upstream_text(&r, None).starts_with("OPTIONS * HTTP/1.1\r\n"));
}

#[test]
fn framing_is_said_once_by_the_proxy() {
    let r = request("POST /x HTTP/1.1\r\nContent-Length: 12\r\nContent-Length: 12, 12\r\nConnection: close\r\n\r\n");
    assert_eq!(r.body, RequestBody::Length(12));
    assert!(!r.keep_alive && !r.idempotent);
    let text = upstream_text(&r, None);
    assert_eq!(text.matches("content-length: 12\r\n").count(), 1, "{text}");
    assert!(!text.contains("Content-Length"));

    let r = request("POST /x HTTP/1.1\r\nTransfer-Encoding: cHuNkEd\r\n\r\n");
    assert_eq!(r.body, RequestBody::Chunked);
    let text = upstream_text(&r, None);
    assert_eq!(
        text.matches("transfer-encoding: chunked\r\n").count(),
        1,
        "{text}"
    );
}

#[test]
fn leading_empty_lines_are_skipped() {
    let r = request("\r\n\r\nGET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.head_len, 22);
    assert_eq!(r.version, Version::Http10);
    assert!(!r.keep_alive);
    assert!(request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
}

#[test]
fn ambiguous_framing_is_refused() {
    for head in [
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 0x3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\n",
        "POST / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        "POST / HTTP/1.1\r\nX: a\rb\r\n\r\n",
        "POST / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "GET nope HTTP/1.1\r\n\r\n",
        "GET ftp://a/ HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(refused(head).status, StatusCode::BAD_REQUEST, "{head:?}");
    }
    assert_eq!(
        refused("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").status,
        StatusCode::NOT_IMPLEMENTED
    );
    assert_eq!(
        refused("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n").status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        refused("PUT / HTTP/1.1\r\nExpect: teapot\r\n\r\n").status,
        StatusCode::EXPECTATION_FAILED
    );
    assert!(matches!(
        parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n", b"1", Scheme::Http),
        Ok(None)
    ));
}

#[test]
fn upgrades_and_expect_are_carried() {
    let r = request("GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(r.wants_upgrade());
    let text = upstream_text(&r, None);
    assert!(
        text.ends_with("connection: upgrade\r\nupgrade: websocket\r\n\r\n"),
        "{text}"
    );
    // Upgrade without Connection: upgrade is a plain request.
    let r = request("GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n");
    assert!(!r.wants_upgrade());
    assert!(!upstream_text(&r, None).contains("pgrade"));
    let r = request("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    assert!(r.expect_continue);
    assert!(!upstream_text(&r, None)
        .to_ascii_lowercase()
        .contains("expect"));
}

const ASKED: Asked = Asked {
    head_method: false,
    upgrade: false,
    client: Version::Http11,
    close: false,
};

fn response(head: &str, asked: Asked) -> (Response, String) {
    let mut out = Vec::new();
    let r = parse_response(head.as_bytes(), asked, &mut out)
        .unwrap()
        .unwrap();
    (r, String::from_utf8(out).unwrap())
}

#[test]
fn response_framing_and_reuse() {
    let (r, out) = response(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\nhello",
        ASKED,
    );
    assert_eq!(
        (r.status, r.framing, r.reusable),
        (200, Framing::Length(5), true)
    );
    assert_eq!(r.head_len, 70);
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 5\r\nvia: 1.1 cutover\r\n\r\n"
    );

    let (r, out) = response(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        Asked {
            close: true,
            ..ASKED
        },
    );
    assert_eq!(
        (r.framing, r.reusable, r.close),
        (Framing::Chunked, true, true)
    );
    assert!(
        out.contains("transfer-encoding: chunked\r\n") && out.contains("connection: close\r\n")
    );

    let (r, out) = response(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        Asked {
            client: Version::Http10,
            ..ASKED
        },
    );
    assert!(r.dechunk && r.close && !out.contains("chunked"), "{out}");

    let (r, out) = response("HTTP/1.0 200 OK\r\n\r\n", ASKED);
    assert_eq!((r.framing, r.reusable), (Framing::UntilClose, false));
    assert!(out.contains("via: 1.0 cutover") && out.contains("connection: close"));

    let (r, out) = response(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        Asked {
            head_method: true,
            ..ASKED
        },
    );
    assert_eq!((r.framing, r.reusable), (Framing::None, true));
    assert!(out.contains("content-length: 5\r\n"), "{out}");

    let (r, _) = response(
        "HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n",
        ASKED,
    );
    assert_eq!((r.framing, r.reusable), (Framing::None, false));

    let (r, _) = response("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 \r\n", ASKED);
    assert!(r.interim && r.head_len == 25);
    let (r, out) = response("HTTP/1.1 201 \r\nContent-Length: 0\r\n\r\n", ASKED);
    assert_eq!((r.status, r.framing), (201, Framing::None));
    assert!(out.starts_with("HTTP/1.1 201 Created\r\n"));
}

#[test]
fn bad_responses_are_refused() {
    let mut out = Vec::new();
    for head in [
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTQ/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ] {
        assert!(
            parse_response(head.as_bytes(), ASKED, &mut out).is_err(),
            "{head:?}"
        );
    }
    let asked = Asked {
        upgrade: true,
        ..ASKED
    };
    let (r, text) = response(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        asked,
    );
    assert_eq!(
        (r.status, r.framing, r.reusable),
        (101, Framing::None, false)
    );
    assert!(
        text.ends_with("connection: upgrade\r\nupgrade: websocket\r\n\r\n"),
        "{text}"
    );
    assert!(parse_response(b"HTTP/1.1 200 OK\r\n", ASKED, &mut out)
        .unwrap()
        .is_none());
}

#[test]
fn a_head_cutover_accepts_is_rewritten_into_one_it_would_accept() {
    // Found by fuzzing: 125 fields and a pool's Host rewrite went upstream
    // as 129, past the 128 an upstream head may carry.
    let mut head = String::from("GET / HTTP/1.1\r\n");
    for _ in 0..MAX_REQUEST_HEADERS {
        head.push_str("a: 1\r\n");
    }
    head.push_str("\r\n");
    let r = request(&head);
    let upstream = upstream_text(&r, Some(b"green.internal"));
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = httparse::Request::new(&mut fields).parse(upstream.as_bytes());
    assert_eq!(parsed, Ok(httparse::Status::Complete(upstream.len())));
    head.insert_str(16, "b: 2\r\n");
    assert_eq!(
        refused(&head).status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}
