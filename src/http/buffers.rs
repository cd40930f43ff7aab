//! Recycled read buffers, per worker thread. Requests take one or two 4 KiB
//! buffers (a layer-4 relay one per short exchange, see `tcp::splice`) and
//! give them back when done; glibc's malloc serves that size
//! from its general bins, which showed in profiles, and an idle connection
//! must hold none (so they cannot simply stay with the connection).

use std::cell::RefCell;

/// Room for one read of a request head, or of an upstream response head.
pub(crate) const HEAD_READ: usize = 4 * 1024;
/// Buffers kept per thread: enough for the requests one thread has in
/// flight at once under load, and at most 128 KiB.
const KEEP: usize = 32;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn take() -> Vec<u8> {
    FREE.with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(HEAD_READ))
}

/// Keeps `buffer` for reuse if it is one of ours and unchanged in size.
pub(crate) fn give(mut buffer: Vec<u8>) {
    if buffer.capacity() != HEAD_READ {
        return;
    }
    buffer.clear();
    FREE.with_borrow_mut(|free| {
        if free.len() < KEEP {
            free.push(buffer);
        }
    });
}
