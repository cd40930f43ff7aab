//! Reading an HTTP/1.1 upstream's response head, for both client protocols
//! (an `h2` pool's heads come from hyper, see `upstream_h2`): interim responses skipped a bounded number
//! of times, the whole within a bounded size, and whether the client
//! connection closes after it decided when the head arrives.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::attempt::Failure;
use super::buffers::HEAD_READ;
use super::codec::{self, Asked, MAX_INTERIM};
use crate::upstream::ReadHalf;

/// Largest upstream response head accepted, interim ones included.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// What, besides the request, closes the client connection after the
/// response: known only when the head arrives.
#[derive(Clone, Copy)]
pub(crate) struct Closing<'a> {
    /// The body is still going up: a response that comes now ends the
    /// client connection, as the rest of the body is never read.
    pub uploading: &'a AtomicBool,
    /// The listener is stopping.
    pub stop: Option<&'a CancellationToken>,
}

impl Closing<'_> {
    fn now(&self) -> bool {
        self.uploading.load(Ordering::Relaxed) || self.stop.is_some_and(|s| s.is_cancelled())
    }
}

/// Reads the final response head, skipping interim ones (a bounded number,
/// within a bounded size). The head for an HTTP/1 client goes to `out`, the
/// head as the upstream sent it to `raw` when asked, and bytes past it stay
/// in `rest`. Shared with the HTTP/2 client side, for its HTTP/1.1 pools.
pub(crate) async fn read_head(
    upstream: &mut ReadHalf<'_>,
    asked: Asked,
    closing: Closing<'_>,
    rest: &mut Vec<u8>,
    out: &mut Vec<u8>,
    raw: Option<&mut Vec<u8>>,
    reused: bool,
) -> Result<codec::Response, Failure> {
    rest.clear();
    let mut interims = 0;
    let mut seen = 0;
    loop {
        if !rest.is_empty() {
            let asked = Asked {
                close: asked.close || closing.now(),
                ..asked
            };
            match codec::parse_response(rest, asked, out) {
                Ok(Some(head)) if head.interim => {
                    interims += 1;
                    if interims > MAX_INTERIM {
                        return Err(Failure::BadResponse("too many interim (1xx) responses"));
                    }
                    rest.drain(..head.head_len);
                    continue;
                }
                Ok(Some(head)) if head.head_len > MAX_RESPONSE_HEAD => {
                    return Err(Failure::BadResponse("response head too large"))
                }
                Ok(Some(head)) => {
                    if let Some(raw) = raw {
                        raw.clear();
                        raw.extend_from_slice(&rest[..head.head_len]);
                    }
                    rest.drain(..head.head_len);
                    return Ok(head);
                }
                Ok(None) if rest.len() > MAX_RESPONSE_HEAD => {
                    return Err(Failure::BadResponse("response head too large"))
                }
                Ok(None) => {}
                Err(codec::BadResponse(what)) => return Err(Failure::BadResponse(what)),
            }
        }
        if seen > MAX_RESPONSE_HEAD {
            return Err(Failure::BadResponse("response heads too large"));
        }
        rest.reserve(HEAD_READ);
        let before = rest.len();
        match upstream.read_buf(rest).await {
            Ok(0) => {
                return Err(Failure::Broken {
                    error: io::ErrorKind::UnexpectedEof.into(),
                    stale: reused && seen == 0,
                })
            }
            Ok(n) => seen += n,
            Err(error) => {
                return Err(Failure::Broken {
                    error,
                    stale: reused && seen == 0,
                })
            }
        }
        debug_assert!(rest.len() > before);
    }
}
