//! Work in flight per pool, which is what a drain waits for. Every in-flight
//! request, streaming response and upgraded tunnel holds a `Work` guard on
//! its pool; dropping it is how the work says it is done. The records live
//! across snapshots (`Activities`), so a pool that leaves rotation still
//! counts what it has in flight. The data plane only holds guards; the drains
//! themselves, deadlines and all, are the server's (`server::drains`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one pool of one service has in flight, and when it last served.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    /// Unix milliseconds when the last piece of work ended; 0 if none yet.
    last_served_ms: AtomicU64,
}

impl Activity {
    /// Counts a piece of work in flight until the guard is dropped.
    #[inline]
    pub(crate) fn start(self: &Arc<Self>) -> Work {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Work(self.clone())
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// When the pool last finished serving something.
    pub(crate) fn last_served(&self) -> Option<SystemTime> {
        match self.last_served_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }
}

/// One piece of work in flight on a pool.
#[derive(Debug)]
pub(crate) struct Work(Arc<Activity>);

impl Drop for Work {
    fn drop(&mut self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        self.0.last_served_ms.store(now, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The pools' activity records, kept across snapshots by the control plane.
#[derive(Default)]
pub struct Activities {
    by_pool: HashMap<(String, String), Arc<Activity>>,
}

impl Activities {
    pub(crate) fn get(&mut self, service: &str, pool: &str) -> Arc<Activity> {
        self.by_pool
            .entry((service.to_owned(), pool.to_owned()))
            .or_default()
            .clone()
    }

    /// Forgets pools no longer configured, once nothing of theirs is in flight.
    pub(crate) fn retain(&mut self, keep: impl Fn(&str, &str) -> bool) {
        self.by_pool
            .retain(|(s, p), a| keep(s, p) || a.in_flight() > 0);
    }
}
