//! Unit tests of the ClientHello parser: hellos built field by field and two
//! captured from OpenSSL 3.0's `s_client`, read whole, in every prefix, in
//! fragmented records, and with one rule broken at a time.

use super::build::{self, Builder};
use super::*;

/// `openssl s_client -connect 127.0.0.1:PORT -servername example.com`
/// (OpenSSL 3.0.19), as a listener read it: one 317-byte record.
const OPENSSL_EXAMPLE_COM: &str = concat!(
    "16030101380100013403033e8dbf019613e127da1dab1352263d7d7dad41fe275cb7c673922fab8917aa0e203e3f2e79",
    "13666f3fbcd459461a8a33a98522b50a6aa62487edba1b7a536d3de6003e130213031301c02cc030009fcca9cca8ccaa",
    "c02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff010000ad",
    "00000010000e00000b6578616d706c652e636f6d000b000403000102000a00160014001d0017001e0019001801000101",
    "010201030104002300000016000000170000000d002a0028040305030603080708080809080a080b0804080508060401",
    "05010601030303010302040205020602002b0009080304030303020301002d00020101003300260024001d002007dda6",
    "a4395f33d57ae9975d38a2ad50be6fe9fb49b852ac8f2ce2cc65ce6703",
);

/// `openssl s_client -connect 127.0.0.1:PORT -noservername -alpn
/// h2,http/1.1 -tls1_2`: TLS 1.2 only, ALPN, no server_name.
const OPENSSL_NO_SNI: &str = concat!(
    "16030100c9010000c5030306bae0678dca51b5453794d32a6ffd5f1519497e4dda7ae9d17f03fac16a777b000038c02c",
    "c030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c",
    "0035002f00ff01000064000b000403000102000a000c000a001d0017001e00190018002300000010000e000c02683208",
    "687474702f312e310016000000170000000d002a0028040305030603080708080809080a080b08040805080604010501",
    "0601030303010302040205020602",
);

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The name and length of a whole hello; panics on anything else.
fn complete(buf: &[u8]) -> (Option<String>, usize) {
    match parse(buf) {
        Ok(Hello::Complete { server_name, len }) => (server_name.map(|n| n.to_string()), len),
        other => panic!("not a whole hello: {other:?}"),
    }
}

fn name_of(buf: &[u8]) -> Option<String> {
    complete(buf).0
}

fn malformed(buf: &[u8]) -> &'static str {
    match parse(buf) {
        Err(HelloError::Malformed(rule)) => rule,
        other => panic!("not refused as malformed: {other:?}"),
    }
}

/// Every strict prefix of `buf` is `Partial` or what `buf` itself is.
fn prefixes_agree(buf: &[u8]) {
    let whole = parse(buf);
    for n in 0..buf.len() {
        let p = parse(&buf[..n]);
        assert!(
            p == Ok(Hello::Partial) || p == whole,
            "prefix of {n}: {p:?}, whole: {whole:?}"
        );
    }
}

fn browser_like(name: &[u8]) -> Builder {
    Builder::new()
        .server_name(name)
        .alpn(&[b"h2", b"http/1.1"])
        .padding(200)
}

#[test]
fn the_server_name_of_a_built_hello_is_found() {
    let hello = browser_like(b"shop.example.com").record();
    assert_eq!(
        complete(&hello),
        (Some("shop.example.com".into()), hello.len())
    );
}

#[test]
fn openssl_s_client_hellos_are_read() {
    let hello = hex(OPENSSL_EXAMPLE_COM);
    assert_eq!(complete(&hello), (Some("example.com".into()), 317));
    let hello = hex(OPENSSL_NO_SNI);
    assert_eq!(complete(&hello), (None, hello.len()));
}

#[test]
fn a_hello_without_server_name_is_complete_with_none() {
    let hello = Builder::new().alpn(&[b"h2"]).record();
    assert_eq!(name_of(&hello), None);
}

#[test]
fn a_hello_without_extensions_is_complete_with_none() {
    let hello = Builder {
        extensions: None,
        ..Builder::new()
    }
    .record();
    assert_eq!(complete(&hello), (None, hello.len()));
}

#[test]
fn a_hello_with_an_empty_extensions_block_is_complete_with_none() {
    let hello = Builder {
        extensions: Some(Vec::new()),
        ..Builder::new()
    }
    .record();
    assert_eq!(name_of(&hello), None);
}

#[test]
fn every_prefix_of_a_hello_is_partial() {
    for hello in [
        browser_like(b"example.com").record(),
        hex(OPENSSL_EXAMPLE_COM),
        build::records(&browser_like(b"example.com").message(), &[1, 7, 100]),
    ] {
        for n in 0..hello.len() {
            assert_eq!(parse(&hello[..n]), Ok(Hello::Partial), "prefix of {n}");
        }
    }
}

#[test]
fn the_first_bytes_of_a_handshake_record_are_partial() {
    for bytes in [
        &[][..],
        &[0x16],
        &[0x16, 3],
        &[0x16, 3, 1],
        &[0x16, 3, 1, 0, 200],
    ] {
        assert_eq!(parse(bytes), Ok(Hello::Partial), "{bytes:?}");
    }
}

#[test]
fn a_hello_fragmented_into_small_records_reads_the_same() {
    let message = browser_like(b"a-rather-long-name.under.example.com").message();
    for sizes in [&[1][..], &[7], &[100], &[3, 50, 1], &[45]] {
        let hello = build::records(&message, sizes);
        assert_eq!(
            complete(&hello),
            (
                Some("a-rather-long-name.under.example.com".into()),
                hello.len()
            ),
            "records of {sizes:?}"
        );
        prefixes_agree(&hello);
    }
}

#[test]
fn a_name_across_a_record_boundary_is_joined_without_allocating() {
    let message = Builder::new().server_name(b"split.example.com").message();
    let at = message.len() - 8;
    let hello = build::records(&message, &[at, 8]);
    match parse(&hello) {
        Ok(Hello::Complete {
            server_name: Some(name),
            ..
        }) => {
            assert!(matches!(name.0, Name::Joined { .. }));
            assert_eq!(name, "split.example.com");
        }
        other => panic!("{other:?}"),
    }
    let one = Builder::new().server_name(b"split.example.com").record();
    assert!(matches!(
        parse(&one),
        Ok(Hello::Complete {
            server_name: Some(ServerName(Name::Borrowed(_))),
            ..
        })
    ));
}

#[test]
fn names_are_kept_as_sent() {
    for name in [
        "Example.COM",
        "example.com.",
        "_acme-challenge.example.com",
        "a",
        "10.0.0.1",
    ] {
        let hello = Builder::new().server_name(name.as_bytes()).record();
        assert_eq!(name_of(&hello).as_deref(), Some(name));
    }
    let longest = "a".repeat(MAX_NAME);
    let hello = Builder::new().server_name(longest.as_bytes()).record();
    assert_eq!(name_of(&hello), Some(longest));
}

#[test]
fn bad_names_are_refused() {
    let too_long = vec![b'a'; MAX_NAME + 1];
    for name in [
        &b""[..],
        b".",
        b"...",
        b"exa mple.com",
        b"example.com\0",
        b"ex\0ample.com",
        b"caf\xc3\xa9.example",
        b"example.com/",
        &too_long,
    ] {
        let hello = Builder::new().server_name(name).record();
        assert_eq!(malformed(&hello), "server name", "{name:?}");
        prefixes_agree(&hello);
        let split = build::records(&Builder::new().server_name(name).message(), &[7]);
        assert_eq!(malformed(&split), "server name", "{name:?} in records");
    }
}

#[test]
fn a_bad_name_byte_is_refused_before_the_name_is_whole() {
    let hello = Builder::new().server_name(b"a b.example.com").record();
    let space = hello.windows(3).position(|w| w == b"a b").unwrap() + 1;
    assert_eq!(malformed(&hello[..=space]), "server name");
    assert_eq!(parse(&hello[..space]), Ok(Hello::Partial));
}

#[test]
fn plaintext_and_sslv2_are_not_tls_from_the_first_byte() {
    for bytes in [
        &b"G"[..],
        b"GET / HTTP/1.1\r\nhost: example.com\r\n\r\n",
        b"PRI * HTTP/2.0\r\n",
        &[0x80, 0x2e, 0x01, 0x03, 0x01],
        &[0x17, 3, 3, 0, 1, 0],
        &[0],
    ] {
        assert_eq!(parse(bytes), Err(HelloError::NotTls), "{bytes:?}");
    }
}

#[test]
fn a_non_handshake_record_before_the_hello_is_whole_is_refused() {
    let message = browser_like(b"example.com").message();
    let mut hello = build::records(&message, &[100]);
    for kind in [20, 21, 23, 0x80] {
        hello[105] = kind;
        assert_eq!(malformed(&hello), "record type", "type {kind}");
        prefixes_agree(&hello);
    }
}

#[test]
fn bad_record_headers_are_refused() {
    let hello = Builder::new().server_name(b"example.com").record();
    let with = |i: usize, b: u8| {
        let mut h = hello.clone();
        h[i] = b;
        h
    };
    assert_eq!(malformed(&with(1, 2)), "record version");
    assert_eq!(malformed(&with(2, 5)), "record version");
    assert_eq!(malformed(&[0x16, 4]), "record version");
    assert_eq!(malformed(&[0x16, 3, 1, 0, 0]), "record length");
    assert_eq!(malformed(&[0x16, 3, 1, 0x40, 1]), "record length");
    for minor in 0..=4 {
        assert_eq!(name_of(&with(2, minor)).as_deref(), Some("example.com"));
    }
}

#[test]
fn an_oversize_declared_hello_is_refused_from_its_header() {
    let header = [0x16, 3, 1, 0x40, 0, 1, 0, 0x3f, 0xfd];
    assert_eq!(malformed(&header), "too large");
    assert_eq!(parse(&header[..8]), Ok(Hello::Partial));

    // The largest hello taken fills one record exactly.
    let builder = Builder::new().server_name(b"example.com");
    let pad = MAX_HELLO - builder.body().len() - 4;
    let largest = builder.clone().padding(pad).record();
    assert_eq!(largest.len(), 5 + MAX_RECORD);
    assert_eq!(name_of(&largest).as_deref(), Some("example.com"));
    let message = builder.padding(pad + 1).message();
    assert_eq!(malformed(&build::records(&message, &[1000])), "too large");
}

#[test]
fn other_handshake_messages_are_refused() {
    let mut hello = Builder::new().record();
    hello[5] = 2;
    assert_eq!(malformed(&hello[..6]), "handshake type");
}

#[test]
fn lengths_that_do_not_fit_are_refused() {
    let b = Builder::new;
    let cases: [(&str, Builder); 5] = [
        (
            "session_id length",
            Builder {
                session_id: vec![1; 33],
                ..b()
            },
        ),
        (
            "cipher_suites length",
            Builder {
                suites: vec![],
                ..b()
            },
        ),
        (
            "compression_methods length",
            Builder {
                compression: vec![],
                ..b()
            },
        ),
        (
            "legacy_version",
            Builder {
                legacy_version: [2, 0],
                ..b()
            },
        ),
        (
            "legacy_version",
            Builder {
                legacy_version: [3, 5],
                ..b()
            },
        ),
    ];
    for (rule, builder) in cases {
        let hello = builder.record();
        assert_eq!(malformed(&hello), rule);
        prefixes_agree(&hello);
    }

    // Odd cipher_suites length: the last byte of a suite dropped.
    let mut body = b().body();
    body[68] = 5;
    assert_eq!(
        malformed(&build::records(&build::message(&body), &[usize::MAX])),
        "cipher_suites length"
    );

    // A body cut short at each fixed field.
    let body = Builder {
        extensions: None,
        ..b()
    }
    .body();
    for (cut, rule) in [
        (0, "legacy_version"),
        (1, "legacy_version"),
        (2, "random"),
        (33, "random"),
        (34, "session_id"),
        (40, "session_id length"),
        (67, "cipher_suites"),
        (68, "cipher_suites"),
        (70, "cipher_suites length"),
        (75, "compression_methods"),
        (76, "compression_methods length"),
    ] {
        let hello = build::records(&build::message(&body[..cut]), &[usize::MAX]);
        assert_eq!(malformed(&hello), rule, "body cut at {cut}");
    }
    // One byte where the extensions' length should be.
    let mut cut = body.clone();
    cut.push(0);
    let hello = build::records(&build::message(&cut), &[usize::MAX]);
    assert_eq!(malformed(&hello), "extensions");
}

#[test]
fn extension_lengths_must_fit_exactly() {
    let body = Builder::new().server_name(b"example.com").body();
    let extensions_at = body.len() - (4 + 5) - (4 + 16) - 2;
    let with_body = |body: &[u8]| build::records(&build::message(body), &[usize::MAX]);

    let mut longer = body.clone();
    longer[extensions_at + 1] += 1;
    assert_eq!(malformed(&with_body(&longer)), "extensions length");
    let mut shorter = body.clone();
    shorter[extensions_at + 1] -= 1;
    assert_eq!(
        malformed(&with_body(&shorter)),
        "trailing bytes after extensions"
    );

    // supported_versions' length one past the block.
    let mut past = body.clone();
    past[extensions_at + 5] = 5 + 4 + 16 + 1;
    assert_eq!(malformed(&with_body(&past)), "extension length");

    // Three stray bytes after the last extension, inside the block.
    let mut stray = body.clone();
    stray.extend_from_slice(&[0, 0, 0]);
    stray[extensions_at + 1] += 3;
    assert_eq!(malformed(&with_body(&stray)), "extension header");
}

#[test]
fn server_name_lists_must_fit_exactly() {
    let sni = |data: Vec<u8>| Builder::new().extension(0, data).record();
    assert_eq!(malformed(&sni(vec![])), "server_name extension length");
    assert_eq!(malformed(&sni(vec![0])), "server_name extension length");
    assert_eq!(malformed(&sni(vec![0, 0])), "empty server name list");
    assert_eq!(
        malformed(&sni(vec![0, 5, 0, 0, 1, b'a'])),
        "server name list length"
    );
    assert_eq!(
        malformed(&sni(vec![0, 3, 0, 0, 1, b'a'])),
        "server name list length"
    );
    assert_eq!(
        malformed(&sni(vec![0, 5, 0, 0, 3, b'a', 0])),
        "server name length"
    );
    assert_eq!(
        malformed(&sni(vec![0, 6, 0, 0, 1, b'a', 0, 0])),
        "server name entry"
    );
}

#[test]
fn other_name_types_are_passed_over() {
    let data = build::server_names(&[(7, b"\x00\xff opaque"), (0, b"example.com")]);
    let hello = Builder::new().extension(0, data).record();
    assert_eq!(name_of(&hello).as_deref(), Some("example.com"));
    let data = build::server_names(&[(7, b"not a host")]);
    let hello = Builder::new().extension(0, data).record();
    assert_eq!(name_of(&hello), None);
}

#[test]
fn a_second_server_name_is_refused() {
    let twice = Builder::new()
        .server_name(b"a.example.com")
        .alpn(&[b"h2"])
        .server_name(b"b.example.com")
        .record();
    assert_eq!(malformed(&twice), "duplicate server_name extension");
    prefixes_agree(&twice);

    let data = build::server_names(&[(0, b"a.example.com"), (0, b"b.example.com")]);
    let two_names = Builder::new().extension(0, data).record();
    assert_eq!(malformed(&two_names), "duplicate host_name");
}

#[test]
fn bytes_after_the_hello_in_its_record_are_refused() {
    let message = browser_like(b"example.com").message();
    let mut payload = message.clone();
    payload.extend_from_slice(b"\x14\x00\x00\x00");
    let hello = build::records(&payload, &[usize::MAX]);
    assert_eq!(malformed(&hello), "record runs past the ClientHello");
    prefixes_agree(&hello);

    // The same in a later record of a fragmented hello.
    let hello = build::records(&payload, &[100]);
    assert_eq!(malformed(&hello), "record runs past the ClientHello");
    prefixes_agree(&hello);
}

#[test]
fn records_after_the_hello_are_left_alone() {
    let hello = browser_like(b"example.com").record();
    let mut flight = hello.clone();
    // change_cipher_spec, then early application data.
    flight.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
    flight.extend_from_slice(&[23, 3, 3, 0, 3, 1, 2, 3]);
    assert_eq!(complete(&flight), (Some("example.com".into()), hello.len()));
    flight.extend_from_slice(b"garbage");
    assert_eq!(complete(&flight), (Some("example.com".into()), hello.len()));
    prefixes_agree(&flight);
}

#[test]
fn malformed_inputs_are_refused_the_same_in_every_prefix() {
    let mut inputs = vec![hex(OPENSSL_EXAMPLE_COM), hex(OPENSSL_NO_SNI)];
    for i in [5, 9, 43, 76, 150, 300] {
        let mut h = hex(OPENSSL_EXAMPLE_COM);
        h[i] ^= 0x41;
        inputs.push(h);
    }
    for input in inputs {
        prefixes_agree(&input);
    }
}

#[test]
fn a_server_name_reads_as_a_str() {
    let hello = Builder::new().server_name(b"example.com").record();
    let Ok(Hello::Complete {
        server_name: Some(name),
        ..
    }) = parse(&hello)
    else {
        panic!("no name");
    };
    assert_eq!(name.len(), 11);
    assert_eq!(name.as_ref(), "example.com");
    assert_eq!(format!("{name} {name:?}"), "example.com \"example.com\"");
    assert!(name.ends_with(".com"));
}
