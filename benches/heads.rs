//! Head rewriting by the HTTP/1 codec, per message: a browser-like request head
//! parsed and rewritten for upstream, and a typical response head rewritten
//! for the client. Run with `cargo bench --bench heads`.
//!
//! They use only the crate's public API, bind no socket and send nothing on
//! the network.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use cutover::http::codec::{self, Asked, Version};

const REQUEST: &[u8] = b"GET /api/v1/items?page=2 HTTP/1.1\r\n\
Host: shop.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: application/json\r\n\
Accept-Language: en-GB,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Cookie: session=4f2d9c0a7e1b; theme=dark\r\n\
Connection: keep-alive\r\n\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx\r\n\
Date: Sun, 29 Nov 2026 14:00:00 GMT\r\n\
Content-Type: application/json\r\n\
Content-Length: 1234\r\n\
Connection: keep-alive\r\n\
Cache-Control: no-store\r\n\r\n";

fn heads(c: &mut Criterion) {
    let mut group = c.benchmark_group("heads");
    let mut out = Vec::with_capacity(1024);
    group.bench_function("request_parse_and_rewrite", |b| {
        b.iter(|| {
            let Ok(Some(request)) =
                codec::parse_request(black_box(REQUEST), b"192.0.2.10", codec::Scheme::Http)
            else {
                panic!("the sample request is valid");
            };
            request.write_upstream(None, &mut out);
            black_box(&out);
        })
    });
    group.bench_function("response_parse_and_rewrite", |b| {
        b.iter(|| {
            let asked = Asked {
                head_method: false,
                upgrade: false,
                client: Version::Http11,
                close: false,
            };
            let head = codec::parse_response(black_box(RESPONSE), asked, &mut out);
            black_box((head.is_ok(), &out));
        })
    });
    group.finish();
}

criterion_group!(benches, heads);
criterion_main!(benches);
