//! The per-listener connection limit: a semaphore of `max_connections`
//! permits. The accept loop takes a `Slot` before it accepts; the connection
//! holds it until it closes, and dropping it is how the connection says it is
//! done. A reload that changes `max_connections` resizes the limit in place:
//! a larger one takes effect at once, a smaller one as connections close.
//! This module knows nothing of sockets or HTTP: `listener` takes slots,
//! `http` holds them, the server resizes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many connections one listener may hold open at once.
#[derive(Debug)]
pub(crate) struct ConnLimit {
    permits: Arc<Semaphore>,
    /// The limit in force; changed by `resize` only, under this lock.
    max: Mutex<usize>,
    /// Permits a shrink could not take back at once because connections
    /// held them: the slots dropped while this is above 0 are forgotten
    /// instead of given back, until it is 0.
    owed: Arc<AtomicUsize>,
}

/// One open connection's place under its listener's limit; given back (or,
/// after a shrink, forgotten) when dropped.
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    owed: Arc<AtomicUsize>,
}

impl ConnLimit {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max: Mutex::new(max),
            owed: Arc::default(),
        }
    }

    /// Waits until fewer than the limit's connections are open, then takes a
    /// place for one more.
    pub(crate) async fn acquire(&self) -> Slot {
        // The semaphore is never closed, so a permit always comes.
        let permit = self.permits.clone().acquire_owned().await.ok();
        Slot {
            permit,
            owed: self.owed.clone(),
        }
    }

    /// Makes `max` the limit. Open connections are never cut: when more
    /// than `max` are open, no new one is accepted until enough have closed.
    pub(crate) fn resize(&self, max: usize) {
        let mut current = self.max.lock().unwrap_or_else(PoisonError::into_inner);
        if max > *current {
            // What an earlier shrink still owes is simply no longer owed.
            let grow = max - *current;
            let repaid = take_up_to(&self.owed, grow);
            self.permits.add_permits(grow - repaid);
        } else if max < *current {
            let shrink = *current - max;
            let forgotten = self.permits.forget_permits(shrink);
            self.owed.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
        *current = max;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if take_up_to(&self.owed, 1) == 1 {
            if let Some(permit) = self.permit.take() {
                permit.forget();
            }
        }
    }
}

/// Takes up to `n` from `count`; returns how much it took.
fn take_up_to(count: &AtomicUsize, n: usize) -> usize {
    match count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
        (c > 0).then(|| c - c.min(n))
    }) {
        Ok(before) => before.min(n),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A slot, if one is had within a moment.
    async fn available(limit: &ConnLimit) -> Option<Slot> {
        tokio::time::timeout(Duration::from_millis(10), limit.acquire())
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_limit_waits_for_a_slot_to_be_dropped() {
        let limit = ConnLimit::new(2);
        let first = limit.acquire().await;
        let _second = limit.acquire().await;
        assert!(available(&limit).await.is_none());
        drop(first);
        assert!(available(&limit).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_smaller_limit_takes_effect_as_connections_close() {
        let limit = ConnLimit::new(3);
        let (a, b) = (limit.acquire().await, limit.acquire().await);
        limit.resize(1);
        assert!(available(&limit).await.is_none(), "two open, max 1");
        drop(a);
        assert!(available(&limit).await.is_none(), "one open, max 1");
        drop(b);
        assert_eq!(limit.permits.available_permits(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn growing_again_repays_what_a_shrink_still_owed() {
        let limit = ConnLimit::new(2);
        let (a, b) = (limit.acquire().await, limit.acquire().await);
        limit.resize(1);
        limit.resize(3);
        let c = available(&limit).await.expect("two open, max 3");
        assert!(available(&limit).await.is_none(), "three open, max 3");
        drop((a, b, c));
        assert_eq!(limit.permits.available_permits(), 3);
    }
}
