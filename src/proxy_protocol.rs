//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2) as
//! bytes: `parse` reads the header a front load balancer puts before a
//! client's first byte, `looks_like` tells whether first bytes could be one
//! (to refuse a header from a source that is not trusted to send it), and
//! `write` makes the header cutover sends ahead of an upstream connection.
//! Pure: it sees bytes and returns addresses, never a socket, a config or a
//! trust decision (those belong to the listener and the upstream connector),
//! and it is fuzzed (`fuzz/fuzz_targets/proxy_header.rs`).
//!
//! Written by hand rather than over the `ppp` crate (2.3.0): `ppp` takes a
//! port written `+80`, reports a complete `PROXY UNKNOWN a b c d e\r\n` as
//! incomplete forever (its field split stops at seven parts), refuses bytes
//! that are not UTF-8 after `UNKNOWN` (which the spec says to ignore), and
//! waits for any v2 length up to 64 KiB with no bound of the caller's. The
//! parser here is small, checks each byte as it arrives, and tells "read
//! more" (`Ok(None)`) apart from "refuse" (`Err`).
//!
//! Strictness choices: a v1 line is exactly `PROXY TCP4|TCP6 <src> <dst>
//! <sport> <dport>\r\n` with single spaces, addresses of the stated family
//! and ports in canonical decimal (no sign, no leading zero: `0` but not
//! `080`), or `PROXY UNKNOWN` followed by anything up to the first CRLF; the
//! line, CRLF included, is at most 107 bytes. A v2 header carries version 2,
//! command LOCAL or PROXY, and for PROXY one of the families the spec lists
//! with the STREAM transport (or UNSPEC); DGRAM is refused, since cutover
//! relays TCP. TLVs are skipped, never read.

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which PROXY protocol version to write (config: `"v1"` or `"v2"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

/// A PROXY header read at the start of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header took at the start of the buffer; what follows is the
    /// client's own data.
    pub len: usize,
    /// The client and the address it connected to, as the sender saw them
    /// (source, destination); `None` for v1 `UNKNOWN`, v2 `LOCAL`, or a v2
    /// family cutover does not route (`AF_UNIX`, `AF_UNSPEC`). A v4-mapped
    /// IPv6 address is returned as sent, not unmapped.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// Why bytes at the start of a connection are not a PROXY header cutover takes.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 line longer than {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("PROXY v1 line: expected TCP4, TCP6 or UNKNOWN after \"PROXY \"")]
    V1Protocol,
    #[error("PROXY v1 line: {0}")]
    V1Syntax(&'static str),
    #[error("PROXY v1 line: bad {0} address")]
    V1Address(Side),
    #[error("PROXY v1 line: bad {0} port")]
    V1Port(Side),
    #[error("PROXY v2 header: version {0}, expected 2")]
    V2Version(u8),
    #[error("PROXY v2 header: command {0}, expected LOCAL (0) or PROXY (1)")]
    V2Command(u8),
    #[error("PROXY v2 header: address family and transport {0:#04x} not taken (TCP over IPv4, IPv6, a UNIX socket, or UNSPEC)")]
    V2Family(u8),
    #[error("PROXY v2 header: length {len} cannot hold the {needed}-byte address block")]
    V2TooShort { len: u16, needed: u16 },
    #[error("PROXY v2 header: length {0} over cutover's bound of {V2_MAX_PAYLOAD} bytes")]
    V2TooLong(u16),
}

/// Which end of the connection a v1 field describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// Longest v1 line, CRLF included (the spec's bound: `PROXY UNKNOWN` with two
/// full-length IPv6 addresses and ports).
pub const V1_MAX_LEN: usize = 107;

/// Longest v2 payload (address block and TLVs) cutover accepts. The largest
/// address block is 216 bytes (`AF_UNIX`); the TLVs senders add (HAProxy's
/// ALPN, authority, unique ID and SSL fields, cloud load balancers' endpoint
/// IDs) come to a few hundred bytes. 4 KiB leaves room for all of them while
/// bounding what a trusted but broken sender can make cutover hold before the
/// client's first byte.
pub const V2_MAX_PAYLOAD: usize = 4096;

/// Upper bound on a header's length that cutover accepts: a v2 header's fixed
/// 16 bytes and the largest payload (a v1 line is shorter).
pub const MAX_LEN: usize = V2_FIXED + V2_MAX_PAYLOAD;

/// How a v1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";
/// How a v2 header starts.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport and the 2-byte length.
const V2_FIXED: usize = 16;
/// Longest text of an IPv4 address (`255.255.255.255`).
const IPV4_TEXT: usize = 15;
/// Longest text of an IPv6 address (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`).
const IPV6_TEXT: usize = 45;

/// Reads a PROXY header at the start of `buf`. `Ok(None)`: a PROXY header so
/// far, read more. Never reads past the header: `Header::len` bytes are the
/// header, the rest is the client's. An error is final: more bytes cannot
/// mend it. `Ok(None)` only ever comes for fewer than `MAX_LEN` bytes, so a
/// reader needs no buffer, and no bound of its own, past `MAX_LEN`.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    if !looks_like(buf) {
        return Err(ProxyError::NotProxy);
    }
    match buf.first() {
        Some(b'P') if buf.len() >= V1_PREFIX.len() => parse_v1(buf),
        Some(b'\r') if buf.len() >= V2_SIGNATURE.len() => parse_v2(buf),
        _ => Ok(None),
    }
}

/// Whether these first bytes are (or could still become) a PROXY header
/// signature: `PROXY ` for v1, the 12-byte v2 signature. True for no bytes,
/// false as soon as a byte disagrees with both. True on fewer bytes than a
/// signature means "not yet known": `P` may become `PROXY ` or `POST`, `\r\n`
/// a v2 signature or a client's empty line before its request.
pub fn looks_like(buf: &[u8]) -> bool {
    agrees(buf, V1_PREFIX) || agrees(buf, &V2_SIGNATURE)
}

/// Whether `buf` and `signature` agree on the bytes both have.
fn agrees(buf: &[u8], signature: &[u8]) -> bool {
    let n = buf.len().min(signature.len());
    buf[..n] == signature[..n]
}

/// Appends the header for a connection from `source` to `destination`. Mixed
/// families are written as IPv6, the IPv4 one mapped (`::ffff:a.b.c.d`): v1
/// `TCP6`, v2 `AF_INET6`. v2 headers carry command PROXY and no TLVs.
pub fn write(version: Version, source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) {
    let ips = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ips::V4(s, d),
        (s, d) => Ips::V6(mapped(s), mapped(d)),
    };
    let (sport, dport) = (source.port(), destination.port());
    match version {
        Version::V1 => write_v1(ips, sport, dport, out),
        Version::V2 => write_v2(ips, sport, dport, out),
    }
}

/// The two addresses of a header, of one family.
#[derive(Clone, Copy)]
enum Ips {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

fn mapped(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn write_v1(ips: Ips, sport: u16, dport: u16, out: &mut Vec<u8>) {
    let mut ports = itoa::Buffer::new();
    out.extend_from_slice(V1_PREFIX);
    match ips {
        Ips::V4(s, d) => {
            out.extend_from_slice(b"TCP4 ");
            push_ipv4(s, out);
            out.push(b' ');
            push_ipv4(d, out);
        }
        Ips::V6(s, d) => {
            out.extend_from_slice(b"TCP6 ");
            out.extend_from_slice(s.to_string().as_bytes());
            out.push(b' ');
            out.extend_from_slice(d.to_string().as_bytes());
        }
    }
    out.push(b' ');
    out.extend_from_slice(ports.format(sport).as_bytes());
    out.push(b' ');
    out.extend_from_slice(ports.format(dport).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn push_ipv4(ip: Ipv4Addr, out: &mut Vec<u8>) {
    let mut octet = itoa::Buffer::new();
    for (i, byte) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        out.extend_from_slice(octet.format(byte).as_bytes());
    }
}

fn write_v2(ips: Ips, sport: u16, dport: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match ips {
        Ips::V4(s, d) => {
            out.extend_from_slice(&[0x11, 0, 12]); // AF_INET, STREAM; 12 bytes
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        Ips::V6(s, d) => {
            out.extend_from_slice(&[0x21, 0, 36]); // AF_INET6, STREAM; 36 bytes
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
    }
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&dport.to_be_bytes());
}

/// A v1 header: `buf` starts with `PROXY `.
fn parse_v1(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let (line, complete) = match window.windows(2).position(|pair| pair == b"\r\n") {
        Some(at) => (&window[..at], true),
        // A CR at the end may be the start of the CRLF.
        None => (window.strip_suffix(b"\r").unwrap_or(window), false),
    };
    let rest = &line[V1_PREFIX.len()..];
    let addresses = if let Some(after) = rest.strip_prefix(b"UNKNOWN") {
        // Anything may follow, up to the CRLF, after a space.
        if !after.is_empty() && after[0] != b' ' {
            return Err(ProxyError::V1Protocol);
        }
        None
    } else if let Some(fields) = rest.strip_prefix(b"TCP4 ") {
        v1_addresses(fields, complete, IPV4_TEXT, |text| {
            text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
        })?
    } else if let Some(fields) = rest.strip_prefix(b"TCP6 ") {
        v1_addresses(fields, complete, IPV6_TEXT, |text| {
            text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        })?
    } else if !complete
        && [&b"TCP4 "[..], b"TCP6 ", b"UNKNOWN"]
            .iter()
            .any(|p| p.starts_with(rest))
    {
        return Ok(None);
    } else {
        return Err(ProxyError::V1Protocol);
    };
    if !complete {
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(None)
        };
    }
    Ok(Some(Header {
        len: line.len() + 2,
        addresses,
    }))
}

/// The four fields after `TCP4 ` or `TCP6 `: `<src> <dst> <sport> <dport>`.
/// When the line is not `complete`, the last field present may be cut short
/// and later ones missing; what is there must still be able to become valid,
/// and the answer is `None`.
fn v1_addresses(
    fields: &[u8],
    complete: bool,
    max_text: usize,
    parse_ip: impl Fn(&str) -> Option<IpAddr>,
) -> Result<Option<(SocketAddr, SocketAddr)>, ProxyError> {
    let mut ips = [None; 2];
    let mut ports = [0u16; 2];
    let mut count = 0;
    let total = fields.split(|&b| b == b' ').count();
    for (i, field) in fields.split(|&b| b == b' ').enumerate() {
        let cut = !complete && i + 1 == total;
        if field.is_empty() && !cut {
            return Err(ProxyError::V1Syntax(
                "fields must be separated by exactly one space",
            ));
        }
        match i {
            0 | 1 => {
                let side = if i == 0 {
                    Side::Source
                } else {
                    Side::Destination
                };
                let bad = ProxyError::V1Address(side);
                if cut {
                    let allowed = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
                    if field.len() > max_text || !field.iter().all(|&b| allowed(b)) {
                        return Err(bad);
                    }
                } else {
                    let text = std::str::from_utf8(field).map_err(|_| bad.clone())?;
                    ips[i] = Some(parse_ip(text).ok_or(bad)?);
                }
            }
            2 | 3 => {
                let side = if i == 2 {
                    Side::Source
                } else {
                    Side::Destination
                };
                ports[i - 2] = v1_port(field, cut).ok_or(ProxyError::V1Port(side))?;
            }
            _ => {
                return Err(ProxyError::V1Syntax(
                    "expected CRLF after the destination port",
                ))
            }
        }
        count += 1;
    }
    if !complete {
        return Ok(None);
    }
    match (count, ips) {
        (4, [Some(s), Some(d)]) => Ok(Some((
            SocketAddr::new(s, ports[0]),
            SocketAddr::new(d, ports[1]),
        ))),
        _ => Err(ProxyError::V1Syntax(
            "expected four fields after the protocol",
        )),
    }
}

/// A port in canonical decimal: 0..=65535, no sign, no leading zero. A `cut`
/// field may be empty or a prefix of one.
fn v1_port(field: &[u8], cut: bool) -> Option<u16> {
    if field.is_empty() {
        return cut.then_some(0);
    }
    if field.len() > 5
        || !field.iter().all(u8::is_ascii_digit)
        || (field[0] == b'0' && field.len() > 1)
    {
        return None;
    }
    let value = field
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(value).ok()
}

/// A v2 header: `buf` starts with the 12-byte signature. Each byte is
/// checked as soon as it is there.
fn parse_v2(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    let Some(&version_command) = buf.get(12) else {
        return Ok(None);
    };
    if version_command >> 4 != 2 {
        return Err(ProxyError::V2Version(version_command >> 4));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        command => return Err(ProxyError::V2Command(command)),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(None);
    };
    // LOCAL: the receiver uses the real connection's endpoints and ignores
    // the family (spec, section 2.2).
    let needed: u16 = match (local, family) {
        (true, _) | (false, 0x00) => 0,
        (false, 0x11) => 12,
        (false, 0x21) => 36,
        (false, 0x31) => 216,
        (false, other) => return Err(ProxyError::V2Family(other)),
    };
    let (Some(&high), Some(&low)) = (buf.get(14), buf.get(15)) else {
        return Ok(None);
    };
    let len = u16::from_be_bytes([high, low]);
    if usize::from(len) > V2_MAX_PAYLOAD {
        return Err(ProxyError::V2TooLong(len));
    }
    if len < needed {
        return Err(ProxyError::V2TooShort { len, needed });
    }
    let total = V2_FIXED + usize::from(len);
    let Some(payload) = buf.get(V2_FIXED..total) else {
        return Ok(None);
    };
    let addresses = match (local, family) {
        (false, 0x11) => {
            let ip = |at: usize| {
                Ipv4Addr::new(
                    payload[at],
                    payload[at + 1],
                    payload[at + 2],
                    payload[at + 3],
                )
            };
            let port = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
            Some((
                SocketAddr::new(ip(0).into(), port(8)),
                SocketAddr::new(ip(4).into(), port(10)),
            ))
        }
        (false, 0x21) => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&payload[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
            Some((
                SocketAddr::new(ip(0).into(), port(32)),
                SocketAddr::new(ip(16).into(), port(34)),
            ))
        }
        _ => None,
    };
    Ok(Some(Header {
        len: total,
        addresses,
    }))
}
