//! Weighted pool selection. A pick table is built once per snapshot from the
//! pools' weights, off the request path; a request picks with one atomic
//! increment and an index. This module knows nothing of pools or endpoints,
//! only of weights and slots.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest table built. Weights whose reduced sum is larger are scaled down to
/// fit, which keeps every non-zero weight at least one slot.
const MAX_SLOTS: u64 = 65_536;

/// A cyclic sequence of pool indexes in which each pool appears in proportion to
/// its weight, spread evenly (smooth weighted round-robin), so a 90/10 split
/// sends one request in ten to the small pool rather than runs of ten.
#[derive(Debug)]
pub struct PickTable {
    slots: Box<[u8]>,
    next: AtomicUsize,
}

impl PickTable {
    /// Builds the table; `None` when every weight is zero. At most 256 weights.
    pub fn new(weights: &[u32]) -> Option<Self> {
        assert!(weights.len() <= 256, "at most 256 pools");
        let divisor = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
        if divisor == 0 {
            return None;
        }
        let mut reduced: Vec<u64> = weights.iter().map(|w| u64::from(w / divisor)).collect();
        let total: u64 = reduced.iter().sum();
        if total > MAX_SLOTS {
            let scale = total.div_ceil(MAX_SLOTS);
            for w in reduced.iter_mut().filter(|w| **w > 0) {
                *w = (*w / scale).max(1);
            }
        }
        let total: i64 = reduced.iter().sum::<u64>() as i64;
        let mut current = vec![0i64; reduced.len()];
        let mut slots = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in reduced.iter().enumerate() {
                current[i] += *w as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            slots.push(best as u8);
        }
        Some(Self {
            slots: slots.into_boxed_slice(),
            next: AtomicUsize::new(0),
        })
    }

    /// The index of the pool that serves the next request.
    #[inline]
    pub fn pick(&self) -> usize {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        usize::from(self.slots[n % self.slots.len()])
    }

    /// How many slots one cycle of the table has.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Round-robin over `len` items, shared by all threads.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    #[inline]
    pub fn next(&self, len: usize) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(table: &PickTable, n: usize, pools: usize) -> Vec<usize> {
        let mut c = vec![0; pools];
        for _ in 0..n {
            c[table.pick()] += 1;
        }
        c
    }

    #[test]
    fn all_zero_weights_have_no_table() {
        assert!(PickTable::new(&[0, 0]).is_none());
        assert!(PickTable::new(&[]).is_none());
    }

    #[test]
    fn ninety_ten_is_exact_per_cycle_and_smooth() {
        let table = PickTable::new(&[90, 10]).unwrap();
        assert_eq!(table.len(), 10);
        assert_eq!(counts(&table, 10_000, 2), vec![9_000, 1_000]);
        // Smooth: the small pool appears once in every ten picks.
        let picks: Vec<usize> = (0..100).map(|_| table.pick()).collect();
        for window in picks.chunks(10) {
            assert_eq!(window.iter().filter(|p| **p == 1).count(), 1);
        }
    }

    #[test]
    fn zero_weight_pool_is_never_picked() {
        let table = PickTable::new(&[0, 100]).unwrap();
        assert_eq!(counts(&table, 1_000, 2), vec![0, 1_000]);
    }

    #[test]
    fn uneven_weights_are_proportional() {
        let table = PickTable::new(&[33, 67]).unwrap();
        assert_eq!(table.len(), 100);
        assert_eq!(counts(&table, 10_000, 2), vec![3_300, 6_700]);
    }

    #[test]
    fn huge_tables_are_scaled_and_keep_small_weights() {
        let weights: Vec<u32> = (0..200).map(|i| 10_000 - i).collect();
        let mut with_one = weights.clone();
        with_one.push(1);
        let table = PickTable::new(&with_one).unwrap();
        assert!(table.len() as u64 <= MAX_SLOTS + 256);
        let c = counts(&table, table.len(), with_one.len());
        assert!(c.iter().all(|n| *n > 0));
    }
}
