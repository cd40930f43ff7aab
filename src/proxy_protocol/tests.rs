//! Unit tests of `proxy_protocol`: the spec's v1 examples byte for byte,
//! write→parse round trips, partial headers, and the headers cutover refuses.

use super::*;

fn addr(text: &str) -> SocketAddr {
    match text.parse() {
        Ok(addr) => addr,
        Err(e) => panic!("test address {text}: {e}"),
    }
}

fn written(version: Version, source: &str, destination: &str) -> Vec<u8> {
    let mut out = Vec::new();
    write(version, addr(source), addr(destination), &mut out);
    out
}

/// Asserts `header` parses whole, with nothing read past it, and that every
/// strict prefix asks for more and looks like a PROXY header.
fn parses_whole(header: &[u8]) -> Header {
    for n in 0..header.len() {
        assert_eq!(parse(&header[..n]), Ok(None), "prefix of {n} bytes");
        assert!(looks_like(&header[..n]), "prefix of {n} bytes");
    }
    assert!(looks_like(header));
    let mut with_data = header.to_vec();
    with_data.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let parsed = match parse(&with_data) {
        Ok(Some(parsed)) => parsed,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(header)),
    };
    assert_eq!(parsed.len, header.len(), "the client's data was taken");
    assert_eq!(parse(header), Ok(Some(parsed)));
    parsed
}

#[test]
fn the_spec_v1_examples_are_written_and_read_byte_for_byte() {
    let tcp4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
    assert_eq!(
        written(Version::V1, "192.168.0.1:56324", "192.168.0.11:443"),
        tcp4
    );
    assert_eq!(
        parses_whole(tcp4).addresses,
        Some((addr("192.168.0.1:56324"), addr("192.168.0.11:443")))
    );

    let widest4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    assert_eq!(
        written(
            Version::V1,
            "255.255.255.255:65535",
            "255.255.255.255:65535"
        ),
        widest4
    );
    parses_whole(widest4);

    let full6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let widest6 = format!("PROXY TCP6 {full6} {full6} 65535 65535\r\n");
    let full6_addr = addr(&format!("[{full6}]:65535"));
    assert_eq!(
        written(
            Version::V1,
            &full6_addr.to_string(),
            &full6_addr.to_string()
        ),
        widest6.as_bytes()
    );
    assert_eq!(
        parses_whole(widest6.as_bytes()).addresses,
        Some((full6_addr, full6_addr))
    );

    assert_eq!(parses_whole(b"PROXY UNKNOWN\r\n").addresses, None);
    // The spec's longest line: UNKNOWN with the widest TCP6 fields, 107 bytes.
    let longest = format!("PROXY UNKNOWN {full6} {full6} 65535 65535\r\n");
    assert_eq!(longest.len(), V1_MAX_LEN);
    assert_eq!(parses_whole(longest.as_bytes()).len, V1_MAX_LEN);
}

#[test]
fn unknown_carries_anything_up_to_the_crlf() {
    let header = b"PROXY UNKNOWN a b c d e f \xff\x00\rx\r\n";
    assert_eq!(parses_whole(header).addresses, None);
    assert_eq!(parse(b"PROXY UNKNOWNX\r\n"), Err(ProxyError::V1Protocol));
}

#[test]
fn write_then_parse_gives_back_the_addresses() {
    let cases = [
        (
            "10.0.0.1:40000",
            "10.0.0.2:443",
            "10.0.0.1:40000",
            "10.0.0.2:443",
        ),
        (
            "[2001:db8::1]:1",
            "[2001:db8::2]:0",
            "[2001:db8::1]:1",
            "[2001:db8::2]:0",
        ),
        (
            "10.0.0.1:5",
            "[2001:db8::2]:80",
            "[::ffff:10.0.0.1]:5",
            "[2001:db8::2]:80",
        ),
        (
            "[::1]:65535",
            "127.0.0.1:8080",
            "[::1]:65535",
            "[::ffff:127.0.0.1]:8080",
        ),
    ];
    for version in [Version::V1, Version::V2] {
        for (source, destination, want_source, want_destination) in cases {
            let header = written(version, source, destination);
            assert!(header.len() <= MAX_LEN);
            let parsed = parses_whole(&header);
            assert_eq!(
                parsed.addresses,
                Some((addr(want_source), addr(want_destination))),
                "{version:?} {source} -> {destination}"
            );
        }
    }
}

#[test]
fn v2_headers_are_laid_out_as_the_spec_says() {
    let header = written(Version::V2, "127.0.0.1:80", "127.0.0.2:443");
    let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    want.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 2, 0, 80, 1, 187]);
    assert_eq!(header, want);
    assert_eq!(written(Version::V2, "[::1]:1", "[::2]:2").len(), 16 + 36);
}

/// A v2 header with this version/command and family bytes, a payload of
/// `len` bytes (all 7s) declared, and the payload itself.
fn v2(version_command: u8, family: u8, len: u16) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[version_command, family]);
    header.extend_from_slice(&len.to_be_bytes());
    header.resize(header.len() + usize::from(len), 7);
    header
}

#[test]
fn v2_tlvs_are_skipped_and_local_unspec_and_unix_carry_no_address() {
    let mut with_tlvs = written(Version::V2, "10.1.1.1:1000", "10.1.1.2:443");
    with_tlvs[15] += 7;
    with_tlvs.extend_from_slice(&[0x02, 0, 4, b'h', b'o', b's', b't']);
    assert_eq!(
        parses_whole(&with_tlvs).addresses,
        Some((addr("10.1.1.1:1000"), addr("10.1.1.2:443")))
    );

    // LOCAL ignores the family, even one PROXY could not carry.
    assert_eq!(parses_whole(&v2(0x20, 0x00, 0)).addresses, None);
    assert_eq!(parses_whole(&v2(0x20, 0x12, 3)).addresses, None);
    assert_eq!(parses_whole(&v2(0x21, 0x00, 5)).addresses, None);
    assert_eq!(parses_whole(&v2(0x21, 0x31, 216)).addresses, None);
    assert_eq!(
        parses_whole(&v2(0x21, 0x11, V2_MAX_PAYLOAD as u16)).len,
        MAX_LEN
    );
}

#[test]
fn malformed_v1_lines_are_refused() {
    let refused: [(&[u8], ProxyError); 16] = [
        (
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            ProxyError::V1Protocol,
        ),
        (
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            ProxyError::V1Syntax("fields must be separated by exactly one space"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            ProxyError::V1Port(Side::Destination),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            ProxyError::V1Port(Side::Source),
        ),
        // Leading zeros: one spelling per port, as HAProxy writes them.
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
            ProxyError::V1Port(Side::Source),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 -2\r\n",
            ProxyError::V1Port(Side::Destination),
        ),
        (
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            ProxyError::V1Address(Side::Source),
        ),
        (
            b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n",
            ProxyError::V1Address(Side::Destination),
        ),
        (
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            ProxyError::V1Address(Side::Source),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            ProxyError::V1Syntax("fields must be separated by exactly one space"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            ProxyError::V1Syntax("expected CRLF after the destination port"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            ProxyError::V1Syntax("expected four fields after the protocol"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            ProxyError::V1Port(Side::Destination),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            ProxyError::V1Port(Side::Destination),
        ),
        (
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            ProxyError::V1Protocol,
        ),
        (
            b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            ProxyError::V1Protocol,
        ),
    ];
    for (line, error) in refused {
        assert_eq!(
            parse(line),
            Err(error),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn a_v1_line_past_107_bytes_is_refused_without_waiting_for_more() {
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(V1_MAX_LEN - 1, b'a');
    assert_eq!(parse(&line), Ok(None));
    line.push(b'\r');
    assert_eq!(parse(&line), Err(ProxyError::V1TooLong));
    line.push(b'\n');
    assert_eq!(line.len(), 108);
    assert_eq!(parse(&line), Err(ProxyError::V1TooLong));
}

#[test]
fn malformed_v2_headers_are_refused_as_soon_as_the_byte_is_there() {
    let sig = &V2_SIGNATURE[..];
    assert_eq!(
        parse(&[sig, &[0x11]].concat()),
        Err(ProxyError::V2Version(1))
    );
    assert_eq!(
        parse(&[sig, &[0x31]].concat()),
        Err(ProxyError::V2Version(3))
    );
    assert_eq!(
        parse(&[sig, &[0x22]].concat()),
        Err(ProxyError::V2Command(2))
    );
    assert_eq!(
        parse(&[sig, &[0x21, 0x12]].concat()),
        Err(ProxyError::V2Family(0x12))
    );
    assert_eq!(
        parse(&[sig, &[0x21, 0x10]].concat()),
        Err(ProxyError::V2Family(0x10))
    );
    assert_eq!(
        parse(&[sig, &[0x21, 0x41]].concat()),
        Err(ProxyError::V2Family(0x41))
    );
    assert_eq!(
        parse(&[sig, &[0x21, 0x11, 0, 11]].concat()),
        Err(ProxyError::V2TooShort {
            len: 11,
            needed: 12
        })
    );
    assert_eq!(
        parse(&[sig, &[0x21, 0x21, 0, 12]].concat()),
        Err(ProxyError::V2TooShort {
            len: 12,
            needed: 36
        })
    );
    let over = V2_MAX_PAYLOAD as u16 + 1;
    assert_eq!(
        parse(&v2(0x21, 0x11, over)[..16]),
        Err(ProxyError::V2TooLong(over))
    );
    assert_eq!(
        parse(&v2(0x20, 0x00, over)[..16]),
        Err(ProxyError::V2TooLong(over))
    );
}

#[test]
fn other_protocols_do_not_look_like_a_proxy_header() {
    for first in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"\x16\x03\x01\x02\x00",
        b"PROXY\t",
        b"\r\n\r\n\0\r\nQUIT\r",
    ] {
        assert!(!looks_like(first), "{first:?}");
        assert_eq!(parse(first), Err(ProxyError::NotProxy), "{first:?}");
    }
    assert!(looks_like(b""));
    assert!(looks_like(b"PRO"));
    assert!(looks_like(b"\r\n\r\n"));
}
