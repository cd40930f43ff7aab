//! Fuzzes `proxy_protocol::parse` on arbitrary first bytes of a connection
//! and `proxy_protocol::write` on addresses taken from them: no panic; more
//! bytes are asked for only below `MAX_LEN`; an accepted header is no longer
//! than the bytes read nor than `MAX_LEN`; every shorter prefix of it asks
//! for more, and the header alone reads the same as with the bytes after it;
//! whatever parses looks like a PROXY header, and whatever looks like one is
//! not refused as none; any header cutover writes reads back whole, with the
//! addresses written (IPv4 mapped into IPv6 when the families are mixed).
//! The seed `seed-v2-longest-noop-tlv` (a header of `MAX_LEN` bytes and 8
//! more) lifts libFuzzer's input bound past `MAX_LEN`.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use cutover::proxy_protocol::{looks_like, parse, write, Version, MAX_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    check_parse(input);
    if let Some((version, source, destination)) = addresses(input) {
        check_round_trip(version, source, destination);
    }
});

fn check_parse(input: &[u8]) {
    let result = parse(input);
    if looks_like(input) {
        assert_ne!(
            result,
            Err(cutover::proxy_protocol::ProxyError::NotProxy),
            "looks like a header yet refused as none"
        );
    }
    let header = match result {
        Ok(Some(header)) => header,
        Ok(None) => {
            assert!(input.len() < MAX_LEN, "asks for more after {}", input.len());
            return;
        }
        Err(_) => return,
    };
    assert!(looks_like(input), "parsed without looking like a header");
    assert!(header.len <= input.len(), "{} past the input", header.len);
    assert!(header.len <= MAX_LEN, "{} past MAX_LEN", header.len);
    assert_eq!(
        parse(&input[..header.len]),
        Ok(Some(header)),
        "header alone"
    );
    for n in 0..header.len {
        assert_eq!(parse(&input[..n]), Ok(None), "prefix of {n} bytes");
        assert!(looks_like(&input[..n]), "prefix of {n} bytes");
    }
}

/// A version and two socket addresses from the input's first 37 bytes: byte
/// 0 picks the version (bit 0) and each side's family (bits 1 and 2).
fn addresses(input: &[u8]) -> Option<(Version, SocketAddr, SocketAddr)> {
    let (&flags, rest) = input.split_first()?;
    let version = if flags & 1 == 0 {
        Version::V1
    } else {
        Version::V2
    };
    let (source, rest) = socket(flags & 2 != 0, rest)?;
    let (destination, _) = socket(flags & 4 != 0, rest)?;
    Some((version, source, destination))
}

fn socket(v6: bool, bytes: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let (ip, rest): (IpAddr, _) = if v6 {
        let (ip, rest) = bytes.split_first_chunk::<16>()?;
        (Ipv6Addr::from(*ip).into(), rest)
    } else {
        let (ip, rest) = bytes.split_first_chunk::<4>()?;
        (Ipv4Addr::from(*ip).into(), rest)
    };
    let (port, rest) = rest.split_first_chunk::<2>()?;
    Some((SocketAddr::new(ip, u16::from_be_bytes(*port)), rest))
}

fn check_round_trip(version: Version, source: SocketAddr, destination: SocketAddr) {
    let mut out = b"leftover".to_vec();
    write(version, source, destination, &mut out);
    let header = &out[b"leftover".len()..];
    let mut with_data = header.to_vec();
    with_data.extend_from_slice(b"\x16\x03\x01");
    let parsed = match parse(&with_data) {
        Ok(Some(parsed)) => parsed,
        other => panic!("{version:?} {source} -> {destination}: {header:?} read as {other:?}"),
    };
    assert_eq!(parsed.len, header.len(), "{version:?} header length");
    let want = match (source, destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => (source, destination),
        _ => (mapped(source), mapped(destination)),
    };
    assert_eq!(parsed.addresses, Some(want), "{version:?} addresses");
    check_parse(&with_data);
}

fn mapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(v4) => SocketAddr::new(v4.to_ipv6_mapped().into(), addr.port()),
        IpAddr::V6(_) => addr,
    }
}
