//! Fuzzes `codec::parse_request` on arbitrary client bytes, and the rewrite
//! it makes for upstream: whatever head cutover accepts, the head it sends
//! upstream (with the client's host and with a pool's host rewrite) must be
//! one that cutover itself reads back whole, with the same body framing,
//! host and upgrade, and nothing after it. A proxy that forwards a head the
//! next hop frames differently is a request-smuggling hole. The rewrite adds
//! up to five header fields; a client head near the limit may go upstream
//! with more than a client may send, but never more than `MAX_HEADERS`.

#![no_main]

use cutover::http::codec::{parse_request, Request, Scheme, MAX_HEADERS};
use libfuzzer_sys::fuzz_target;

const CLIENT_IP: &[u8] = b"192.0.2.7";
/// A pool's host rewrite, as a validated config would give it.
const POOL_HOST: &[u8] = b"green.internal:8080";

fuzz_target!(|data: &[u8]| {
    let Ok(Some(request)) = parse_request(data, CLIENT_IP, Scheme::Http) else {
        return;
    };
    assert!(request.head_len <= data.len(), "head_len past the buffer");
    let mut upstream = Vec::new();
    for rewrite in [None, Some(POOL_HOST)] {
        request.write_upstream(rewrite, &mut upstream);
        let Some(again) = reparse(&upstream) else {
            continue;
        };
        assert_eq!(
            again.head_len,
            upstream.len(),
            "the upstream head ends early: {:?}",
            String::from_utf8_lossy(&upstream)
        );
        assert_eq!(
            again.body, request.body,
            "the body framing changed on the way upstream"
        );
        assert_eq!(
            again.wants_upgrade(),
            request.wants_upgrade(),
            "the upgrade changed"
        );
        assert_eq!(again.head_method, request.head_method);
        assert_eq!(again.idempotent, request.idempotent);
        let host = match rewrite {
            Some(h) => Some(std::str::from_utf8(h).unwrap()),
            None => request.host(),
        };
        assert_eq!(again.host(), host, "the host changed on the way upstream");
    }
});

fn reparse(upstream: &[u8]) -> Option<Request> {
    match parse_request(upstream, CLIENT_IP, Scheme::Http) {
        Ok(Some(r)) => Some(r),
        Err(refused) if refused.status == 431 => {
            // More fields than a client may send: still a whole head within
            // what an upstream head may carry.
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(upstream) {
                Ok(httparse::Status::Complete(n)) if n == upstream.len() => None,
                other => panic!(
                    "the upstream head is past {MAX_HEADERS} fields or not whole ({other:?}): {:?}",
                    String::from_utf8_lossy(upstream)
                ),
            }
        }
        Ok(None) => panic!(
            "the upstream head is partial: {:?}",
            String::from_utf8_lossy(upstream)
        ),
        Err(refused) => panic!(
            "cutover refuses its own upstream head ({} {}): {:?}",
            refused.status,
            refused.reason,
            String::from_utf8_lossy(upstream)
        ),
    }
}
