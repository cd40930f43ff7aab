//! Fuzzes `tcp::client_hello::parse`, which reads a client's first bytes
//! again after every read, in two modes picked by the first input byte.
//!
//! Raw (even first byte): the rest is a client's bytes. `parse` never
//! panics; a verdict never changes as bytes arrive: every prefix (all of
//! them up to 128 bytes, a sample of 80 past that) parses to
//! `Partial` or to exactly what the whole input does (the same error, or
//! `Complete` with the same name and length); a `Complete` of length `len`
//! is already `Complete` on the first `len` bytes and `Partial` on one
//! fewer, its name borrowed from the input or joined across records with
//! the same bytes; `NotTls` only ever for a first byte that is not 22.
//!
//! Built (odd first byte): the rest gives a host_name (letters, digits,
//! `-`, `.`, `_`, 1..=253 bytes), padding and record payload sizes; the
//! hello built from them, fragmented so, parses to that name at its full
//! length, its prefixes (as sampled above) are `Partial`, and records after
//! it change nothing.

#![no_main]

use cutover::tcp::client_hello::build::{self, Builder};
use cutover::tcp::client_hello::{parse, Hello, HelloError, MAX_NAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        raw(rest);
    } else {
        built(rest);
    }
});

fn raw(input: &[u8]) {
    let whole = parse(input);
    if whole == Err(HelloError::NotTls) {
        assert_ne!(input.first(), Some(&22), "NotTls for a handshake record");
    }
    for n in prefixes(input) {
        let p = parse(&input[..n]);
        assert!(
            p == Ok(Hello::Partial) || p == whole,
            "prefix of {n}: {p:?}, whole: {whole:?}"
        );
    }
    if let Ok(Hello::Complete { server_name, len }) = whole {
        assert!(
            len > 0 && len <= input.len(),
            "len {len} of {}",
            input.len()
        );
        assert_eq!(parse(&input[..len]), whole, "the hello alone");
        assert_eq!(parse(&input[..len - 1]), Ok(Hello::Partial), "one short");
        if let Some(name) = server_name {
            assert!((1..=MAX_NAME).contains(&name.len()));
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
            assert!(name.bytes().any(|b| b != b'.'));
            // The name's bytes are in the input, whole or around record
            // headers: at least as a subsequence.
            let mut rest = input[..len].iter();
            assert!(
                name.bytes().all(|b| rest.any(|&c| c == b)),
                "{name:?} not in the input"
            );
        }
    }
}

fn built(input: &[u8]) {
    const NAME_BYTES: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._";
    let Some((&name_len, rest)) = input.split_first() else {
        return;
    };
    let Some((&pad, rest)) = rest.split_first() else {
        return;
    };
    let name_len = usize::from(name_len) % MAX_NAME + 1;
    let (name_seed, sizes) = rest.split_at(name_len.min(rest.len()));
    let mut name: Vec<u8> = (0..name_len)
        .map(|i| {
            let seed = name_seed.get(i).copied().unwrap_or(i as u8);
            NAME_BYTES[usize::from(seed) % NAME_BYTES.len()]
        })
        .collect();
    if name.iter().all(|&b| b == b'.') {
        name[0] = b'x';
    }
    // Record payload sizes: one byte each (1..=256), or one record whole.
    let sizes: Vec<usize> = sizes.iter().map(|&s| usize::from(s) + 1).collect();
    let sizes = if sizes.is_empty() {
        vec![usize::MAX]
    } else {
        sizes
    };

    let message = Builder::new()
        .alpn(&[b"h2", b"http/1.1"])
        .server_name(&name)
        .padding(usize::from(pad))
        .message();
    let hello = build::records(&message, &sizes);
    let expected = std::str::from_utf8(&name).expect("built from ASCII");
    match parse(&hello) {
        Ok(Hello::Complete {
            server_name: Some(got),
            len,
        }) => {
            assert_eq!(got, expected);
            assert_eq!(len, hello.len());
        }
        other => panic!("{expected:?} in records of {sizes:?}: {other:?}"),
    }
    for n in prefixes(&hello) {
        assert_eq!(parse(&hello[..n]), Ok(Hello::Partial), "prefix of {n}");
    }
    let mut flight = hello.clone();
    flight.extend_from_slice(&[20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 2, 0xde, 0xad]);
    assert_eq!(parse(&flight), parse(&hello), "records after the hello");
}

/// The strict prefix lengths of `bytes` to check: all of them up to 128
/// bytes; past that (all would be quadratic) 64 spread evenly from an
/// offset the bytes pick, and the last 16.
fn prefixes(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let len = bytes.len();
    let stride = if len <= 128 { 1 } else { len / 64 };
    let offset = usize::from(bytes.last().copied().unwrap_or(0)) % stride;
    let tail = len.saturating_sub(16);
    (0..len).filter(move |&n| n % stride == offset || n >= tail || n < 8)
}
