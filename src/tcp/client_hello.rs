//! Reads the server name (SNI) out of a TLS ClientHello, for routing a TCP
//! connection without terminating its TLS. Owns only the parse: the caller
//! gathers the client's first flight into a buffer it later forwards upstream
//! unchanged, calls [`parse`] on everything read so far after every read, and
//! stops at a verdict; reading, byte caps, timeouts and the name's
//! normalisation (lowercase, trailing dot) belong to the caller and router.
//!
//! Hand-written rather than a TLS library's acceptor: only the server name is
//! needed, it must be read from a prefix of the stream that is neither
//! consumed nor copied, again on every read, without allocating, and an
//! acceptor builds a whole connection state per connection to get there.
//! The parse walks the handshake records' payloads as one stream (a
//! ClientHello may be split across records, and records across reads) and
//! checks each byte's rule as soon as the byte is there, in stream order. So
//! a verdict on a prefix never changes as more bytes arrive: `parse(prefix)`
//! is `Partial` or exactly what `parse` says of any longer buffer. It is
//! O(n), never indexes out of bounds and never panics.
//!
//! Strict where a lenient reading could route a connection differently from
//! how its server will read it: every length must fit its parent exactly, no
//! bytes may follow the extensions or share the last record with the
//! message, one server_name extension with at most one host_name. Record
//! versions 0x0300..=0x0304 are taken (and the same for the ClientHello's
//! legacy_version); the server decides what it speaks.

use std::fmt;
use std::ops::Deref;

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod build;

/// TLS record content type of handshake records.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Largest record payload (2^14, RFC 8446 §5.1).
pub const MAX_RECORD: usize = 16384;
/// Largest ClientHello body taken: what one full record holds after the
/// 4-byte handshake header.
pub const MAX_HELLO: usize = MAX_RECORD - 4;
/// Longest host_name taken (a DNS name's 253 characters).
pub const MAX_NAME: usize = 253;
/// Extension type of server_name (RFC 6066 §3), and its name type host_name.
const SERVER_NAME: usize = 0;
const HOST_NAME: u8 = 0;

/// What the bytes read so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a name joined across records is held inline (256 bytes), never allocated"
)]
pub enum Hello<'a> {
    /// A ClientHello so far, but not whole: read more.
    Partial,
    /// A whole ClientHello.
    Complete {
        /// Its SNI host_name, if it carries one, as sent (not lowercased,
        /// any trailing dot kept).
        server_name: Option<ServerName<'a>>,
        /// How many bytes of the buffer the records up to the end of the
        /// ClientHello take; whatever follows is the client's next flight.
        len: usize,
    },
}

/// Why a client's first bytes are not a ClientHello cutover will route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The first byte is not a TLS handshake record's: plaintext, or an
    /// SSLv2-style hello.
    #[error("not TLS: the first byte is not a handshake record's")]
    NotTls,
    /// TLS, but breaking the named rule.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

/// A ClientHello's host_name: 1..=253 bytes of ASCII letters, digits, `-`,
/// `.` and `_`, not only dots. Borrowed from the buffer when it lies within
/// one record; copied into a fixed array (no allocation) when a record
/// boundary splits it, which only a client fragmenting its hello does.
#[derive(Clone, Copy)]
pub struct ServerName<'a>(Name<'a>);

#[derive(Clone, Copy)]
#[allow(
    clippy::large_enum_variant,
    reason = "the joined name is held inline so that no read allocates"
)]
enum Name<'a> {
    Borrowed(&'a str),
    /// `len` (1..=MAX_NAME) checked bytes at the start of `bytes`.
    Joined {
        bytes: [u8; MAX_NAME],
        len: u8,
    },
}

impl<'a> ServerName<'a> {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Name::Borrowed(name) => name,
            // Checked ASCII when made, so neither fallback is ever taken.
            Name::Joined { bytes, len } => bytes
                .get(..usize::from(*len))
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default(),
        }
    }
}

impl Deref for ServerName<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ServerName<'_> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for ServerName<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ServerName<'_> {}

impl PartialEq<str> for ServerName<'_> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ServerName<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for ServerName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ServerName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the client's bytes so far say: `Partial` while they are the start of
/// a ClientHello, `Complete` once it is whole (bytes after it are ignored),
/// an error as soon as a byte breaks a rule. Call again with the longer
/// buffer after every read.
pub fn parse(buf: &[u8]) -> Result<Hello<'_>, HelloError> {
    match buf.first() {
        None => return Ok(Hello::Partial),
        Some(&first) if first != HANDSHAKE => return Err(HelloError::NotTls),
        Some(_) => {}
    }
    match client_hello(&mut Stream::new(buf)) {
        Ok(hello) => Ok(hello),
        Err(Stop::Partial) => Ok(Hello::Partial),
        Err(Stop::Bad(e)) => Err(e),
    }
}

/// Why the parse stopped short of a whole ClientHello.
enum Stop {
    /// Every byte so far fits; the next one is not there yet.
    Partial,
    Bad(HelloError),
}

fn bad(rule: &'static str) -> Stop {
    Stop::Bad(HelloError::Malformed(rule))
}

fn client_hello<'a>(s: &mut Stream<'a>) -> Result<Hello<'a>, Stop> {
    if s.byte()? != CLIENT_HELLO {
        return Err(bad("handshake type"));
    }
    let len = s.u24()?;
    if len > MAX_HELLO {
        return Err(bad("too large"));
    }
    s.begin_message(len)?;

    s.need(2, "legacy_version")?;
    let (major, minor) = (s.byte()?, s.byte()?);
    if major != 3 || minor > 4 {
        return Err(bad("legacy_version"));
    }
    s.need(32, "random")?;
    s.skip(32)?;
    s.need(1, "session_id")?;
    let session_id = usize::from(s.byte()?);
    if session_id > 32 {
        return Err(bad("session_id length"));
    }
    s.need(session_id, "session_id length")?;
    s.skip(session_id)?;
    s.need(2, "cipher_suites")?;
    let suites = s.u16()?;
    if suites < 2 || suites % 2 != 0 {
        return Err(bad("cipher_suites length"));
    }
    s.need(suites, "cipher_suites length")?;
    s.skip(suites)?;
    s.need(1, "compression_methods")?;
    let compression = usize::from(s.byte()?);
    if compression == 0 {
        return Err(bad("compression_methods length"));
    }
    s.need(compression, "compression_methods length")?;
    s.skip(compression)?;

    let mut server_name = None;
    if s.message_left() > 0 {
        s.need(2, "extensions")?;
        let extensions = s.u16()?;
        if extensions > s.message_left() {
            return Err(bad("extensions length"));
        }
        if extensions < s.message_left() {
            return Err(bad("trailing bytes after extensions"));
        }
        let mut seen_server_name = false;
        while s.message_left() > 0 {
            s.need(4, "extension header")?;
            let kind = s.u16()?;
            let len = s.u16()?;
            s.need(len, "extension length")?;
            if kind == SERVER_NAME {
                if seen_server_name {
                    return Err(bad("duplicate server_name extension"));
                }
                seen_server_name = true;
                server_name = server_name_list(s, len)?;
            } else {
                s.skip(len)?;
            }
        }
    }
    Ok(Hello::Complete {
        server_name,
        len: s.pos,
    })
}

/// Reads a server_name extension's `len` bytes of data (RFC 6066 §3): a
/// non-empty list of (name_type, name); its host_name, if any.
fn server_name_list<'a>(s: &mut Stream<'a>, len: usize) -> Result<Option<ServerName<'a>>, Stop> {
    if len < 2 {
        return Err(bad("server_name extension length"));
    }
    let list = s.u16()?;
    if list != len - 2 {
        return Err(bad("server name list length"));
    }
    if list == 0 {
        return Err(bad("empty server name list"));
    }
    let mut left = list;
    let mut host_name = None;
    while left > 0 {
        if left < 3 {
            return Err(bad("server name entry"));
        }
        let kind = s.byte()?;
        let len = s.u16()?;
        left -= 3;
        if len > left {
            return Err(bad("server name length"));
        }
        left -= len;
        if kind != HOST_NAME {
            s.skip(len)?;
        } else if host_name.is_some() {
            // RFC 6066: at most one name of a type. Servers refuse a second
            // host_name or could pick it; routing on either would be a guess.
            return Err(bad("duplicate host_name"));
        } else {
            host_name = Some(s.name(len)?);
        }
    }
    Ok(host_name)
}

/// Whether `b` may appear in a host_name cutover routes on (which must
/// also hold something other than dots).
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
}

/// The handshake records' payloads in `buf`, read as one stream from the
/// first record on. Reads past the end of `buf` stop with `Stop::Partial`;
/// a record header is read (and checked) when the stream needs its first
/// payload byte.
struct Stream<'a> {
    buf: &'a [u8],
    /// The next unread byte of `buf`.
    pos: usize,
    /// Payload bytes of the current record not yet read, as declared (some
    /// may not have arrived).
    in_record: usize,
    /// Bytes of the handshake message not yet read; `usize::MAX` until its
    /// header is read. Once known, `in_record` never exceeds it, so the
    /// message ends where a record ends.
    message_left: usize,
}

impl<'a> Stream<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            in_record: 0,
            message_left: usize::MAX,
        }
    }

    /// Reads the next record's header at `pos`, byte by byte.
    fn next_record(&mut self) -> Result<(), Stop> {
        let at = |i: usize| self.buf.get(self.pos + i).copied().ok_or(Stop::Partial);
        if at(0)? != HANDSHAKE {
            return Err(bad("record type"));
        }
        if at(1)? != 3 || at(2)? > 4 {
            return Err(bad("record version"));
        }
        let len = usize::from(u16::from_be_bytes([at(3)?, at(4)?]));
        if len == 0 || len > MAX_RECORD {
            return Err(bad("record length"));
        }
        if len > self.message_left {
            return Err(bad("record runs past the ClientHello"));
        }
        self.pos += 5;
        self.in_record = len;
        Ok(())
    }

    /// Sets the message's length from its header, `len` bytes after it.
    fn begin_message(&mut self, len: usize) -> Result<(), Stop> {
        if self.in_record > len {
            return Err(bad("record runs past the ClientHello"));
        }
        self.message_left = len;
        Ok(())
    }

    fn message_left(&self) -> usize {
        self.message_left
    }

    /// Refuses, as breaking `rule`, a field of `n` bytes that would run past
    /// the message.
    fn need(&self, n: usize, rule: &'static str) -> Result<(), Stop> {
        if n > self.message_left {
            return Err(bad(rule));
        }
        Ok(())
    }

    /// Makes the current record one with a payload byte to read: reads the
    /// next header if this record is used up.
    fn enter(&mut self) -> Result<(), Stop> {
        if self.message_left == 0 {
            // Every field is checked with `need` first; kept as a guard.
            return Err(bad("field past the ClientHello"));
        }
        if self.in_record == 0 {
            self.next_record()?;
        }
        Ok(())
    }

    fn byte(&mut self) -> Result<u8, Stop> {
        self.enter()?;
        let b = self.buf.get(self.pos).copied().ok_or(Stop::Partial)?;
        self.advance(1);
        Ok(b)
    }

    fn u16(&mut self) -> Result<usize, Stop> {
        Ok(usize::from(u16::from_be_bytes([
            self.byte()?,
            self.byte()?,
        ])))
    }

    fn u24(&mut self) -> Result<usize, Stop> {
        let (a, b, c) = (self.byte()?, self.byte()?, self.byte()?);
        Ok((usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c))
    }

    /// Moves `n` bytes on, all of them present and in the current record.
    fn advance(&mut self, n: usize) {
        self.pos += n;
        self.in_record -= n;
        self.message_left = self.message_left.saturating_sub(n);
    }

    /// Passes over `n` bytes, across records.
    fn skip(&mut self, mut n: usize) -> Result<(), Stop> {
        while n > 0 {
            self.enter()?;
            let here = self.buf.len().saturating_sub(self.pos);
            let step = n.min(self.in_record).min(here);
            if step == 0 {
                return Err(Stop::Partial);
            }
            self.advance(step);
            n -= step;
        }
        Ok(())
    }

    /// Reads a host_name of `len` bytes: borrowed when it lies in the
    /// current record, copied across a record boundary otherwise. Each byte
    /// is checked as soon as it is there.
    fn name(&mut self, len: usize) -> Result<ServerName<'a>, Stop> {
        if len == 0 || len > MAX_NAME {
            return Err(bad("server name"));
        }
        self.enter()?;
        if len <= self.in_record {
            let here = self.buf.get(self.pos..).unwrap_or_default();
            let arrived = here.get(..len).unwrap_or(here);
            if !arrived.iter().all(|&b| name_byte(b)) {
                return Err(bad("server name"));
            }
            let bytes = here.get(..len).ok_or(Stop::Partial)?;
            if bytes.iter().all(|&b| b == b'.') {
                return Err(bad("server name"));
            }
            let name = std::str::from_utf8(bytes).map_err(|_| bad("server name"))?;
            self.advance(len);
            return Ok(ServerName(Name::Borrowed(name)));
        }
        let mut bytes = [0; MAX_NAME];
        for slot in bytes.iter_mut().take(len) {
            let b = self.byte()?;
            if !name_byte(b) {
                return Err(bad("server name"));
            }
            *slot = b;
        }
        if bytes.iter().take(len).all(|&b| b == b'.') {
            return Err(bad("server name"));
        }
        let len = u8::try_from(len).map_err(|_| bad("server name"))?;
        Ok(ServerName(Name::Joined { bytes, len }))
    }
}

#[cfg(test)]
mod tests;
