//! Follows a chunked body (RFC 9112 §7.1) as it passes through, byte by byte
//! and across any split into reads: where it ends, and which of its bytes
//! are data (for a client that cannot take chunked, or an HTTP/2 one).
//!
//! Strict on purpose, since the body is relayed unchanged and the next hop
//! must frame it exactly as the proxy did: every line ends in CRLF (a bare LF
//! or CR is refused), a chunk size is 1 to 16 hex digits, its data is
//! followed by CRLF, and extensions and trailers are bounded.
//!
//! A state machine by hand rather than `httparse::parse_chunk_size`, which
//! needs the whole size line in one buffer and accepts a bare LF.

use std::ops::Range;

/// Longest chunk-size line extension, and all trailers together.
const MAX_EXTENSION: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// Most hex digits in a chunk size: 16 fill a `u64`.
const MAX_DIGITS: u8 = 16;

#[derive(Debug, Clone)]
pub struct Chunks {
    state: State,
    /// Data left in the current chunk, or the size being read.
    size: u64,
    digits: u8,
    /// Bytes of the current extension, or of all trailers so far.
    line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    /// Whitespace after the size, before `;` or the line's end.
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that does not follow the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk(pub &'static str);

impl Default for Chunks {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunks {
    pub fn new() -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
        }
    }

    /// Whether the whole body, trailers included, has been seen.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads on through `bytes`. `Some(n)`: the body ends after `n` of them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, BadChunk> {
        self.decode(bytes, |_| {})
    }

    /// Reads on through `bytes` like `feed`, handing each run of chunk data
    /// (as a range of `bytes`) to `data`.
    pub fn decode(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            if self.state == State::Data {
                let take = self.size.min((bytes.len() - i) as u64) as usize;
                data(i..i + take);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = self.step(b)?;
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn step(&mut self, b: u8) -> Result<State, BadChunk> {
        Ok(match (self.state, b) {
            (State::Size, _) if b.is_ascii_hexdigit() => {
                if self.digits == MAX_DIGITS {
                    return Err(BadChunk("chunk size longer than 16 hex digits"));
                }
                let digit = (b as char).to_digit(16).map_or(0, u64::from);
                self.size = self.size << 4 | digit;
                self.digits += 1;
                State::Size
            }
            (State::Size | State::SizeSpace, b' ' | b'\t') if self.digits > 0 => State::SizeSpace,
            (State::Size | State::SizeSpace, b';') if self.digits > 0 => State::Extension,
            (State::Size | State::SizeSpace | State::Extension, b'\r') if self.digits > 0 => {
                State::SizeLf
            }
            (State::Extension, b'\n') => return Err(BadChunk("bare LF in a chunk extension")),
            (State::Extension, _) if b == b'\t' || !b.is_ascii_control() => {
                self.line += 1;
                if self.line > MAX_EXTENSION {
                    return Err(BadChunk("chunk extension too long"));
                }
                State::Extension
            }
            (State::SizeLf, b'\n') => {
                self.line = 0;
                self.digits = 0;
                if self.size == 0 {
                    State::TrailerStart
                } else {
                    State::Data
                }
            }
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size,
            (State::DataCr | State::DataLf, _) => {
                return Err(BadChunk("chunk data not followed by CRLF"))
            }
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::EndLf, b'\n') => State::Done,
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::TrailerStart | State::Trailer, _) if b == b'\t' || !b.is_ascii_control() => {
                self.trailer_byte()?;
                State::Trailer
            }
            (State::TrailerLf, b'\n') => {
                self.trailer_byte()?;
                State::TrailerStart
            }
            (State::Size, _) if self.digits == 0 => return Err(BadChunk("chunk size is not hex")),
            _ => return Err(BadChunk("chunked body is malformed")),
        })
    }

    fn trailer_byte(&mut self) -> Result<(), BadChunk> {
        self.line += 1;
        if self.line > MAX_TRAILERS {
            return Err(BadChunk("trailers too long"));
        }
        Ok(())
    }
}

/// Writes the chunk-size line of a chunk of `len` bytes (`len > 0`).
pub fn size_line(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_is_found_across_any_split() {
        let body = b"5;ext=1\r\nhello\r\n10 \r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut chunks = Chunks::new();
            let mut data = Vec::new();
            let first = chunks
                .decode(&body[..split], |r| data.extend_from_slice(&body[r]))
                .unwrap();
            let found = match first {
                Some(n) => n,
                None => {
                    let rest = &body[split..];
                    split
                        + chunks
                            .decode(rest, |r| data.extend_from_slice(&rest[r]))
                            .unwrap()
                            .unwrap()
                }
            };
            assert_eq!(found, end, "split at {split}");
            assert_eq!(data, b"hello0123456789abcdef", "split at {split}");
        }
        assert_eq!(Chunks::new().feed(b"0\r\n\r\n"), Ok(Some(5)));
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for body in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"10000000000000000\r\n",
            b"5\nhello\r\n",
            b"5\r\nhello\n",
            b"0\r\n\n",
            b"0\r\nX: 1\n\r\n",
            b"5;a\nb\r\n",
            b"5;\x00\r\n",
            b"-5\r\n",
            b" 5\r\n",
            b"0x5\r\n",
            b"0\r\nX: 1\r\r\n",
        ] {
            assert!(Chunks::new().feed(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn size_lines_are_hex() {
        let mut out = Vec::new();
        size_line(0x1a2b, &mut out);
        size_line(1, &mut out);
        assert_eq!(out, b"1a2b\r\n1\r\n");
    }
}
