//! Fuzzes `codec::chunked::Chunks` on arbitrary bodies split into two reads
//! at an arbitrary point (the first two input bytes), as a socket would
//! split them: where the body ends, the data decoded and whether it is
//! refused must not depend on the split, `feed` must agree with `decode`,
//! and no more data can come out than went in.

#![no_main]

use cutover::http::codec::chunked::{BadChunk, Chunks};
use libfuzzer_sys::fuzz_target;

/// What following a body through some reads came to.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// `Ok(Some(n))`: the body ends after `n` bytes.
    end: Result<Option<usize>, BadChunk>,
    /// Data handed out before the end or the refusal.
    data: Vec<u8>,
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let (split, body) = input.split_at(2);
    let split = usize::from(u16::from_le_bytes([split[0], split[1]])) % (body.len() + 1);

    let whole = follow(body, &[body.len()]);
    let two_reads = follow(body, &[split, body.len()]);
    assert_eq!(whole, two_reads, "split at {split} changed the outcome");
    let bytewise: Vec<usize> = (1..=body.len()).collect();
    assert_eq!(
        whole,
        follow(body, &bytewise),
        "one byte a read changed the outcome"
    );

    let fed = Chunks::new().feed(body);
    assert_eq!(fed, whole.end, "feed and decode disagree");
    match whole.end {
        Ok(Some(end)) => {
            assert!(end <= body.len() && end > 0, "end {end} of {}", body.len());
            assert!(whole.data.len() < end, "more data than body");
        }
        _ => assert!(whole.data.len() <= body.len(), "more data than body"),
    }
});

/// Follows `body` in reads ending at each of `cuts` (ascending, the last
/// one `body.len()`), stopping at the end or the first refusal.
fn follow(body: &[u8], cuts: &[usize]) -> Outcome {
    let mut chunks = Chunks::new();
    let mut data = Vec::new();
    let mut at = 0;
    for &cut in cuts {
        let read = &body[at..cut];
        let result = chunks.decode(read, |range| {
            assert!(
                range.start <= range.end && range.end <= read.len(),
                "{range:?} past the read"
            );
            data.extend_from_slice(&read[range]);
        });
        match result {
            Ok(None) => at = cut,
            Ok(Some(n)) => {
                assert!(n <= read.len(), "end {n} past the read of {}", read.len());
                assert!(chunks.done(), "an end without done()");
                return Outcome {
                    end: Ok(Some(at + n)),
                    data,
                };
            }
            Err(e) => return Outcome { end: Err(e), data },
        }
    }
    assert!(!chunks.done(), "done() without an end");
    Outcome {
        end: Ok(None),
        data,
    }
}
