//! One endpoint's health as the data plane reads it — two atomics per pick —
//! and as status shows it. Active checks set the verdict; passive ejection
//! (failures seen on real traffic) takes an endpoint out for a while on top.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::Outlier;

/// Longest passive ejection, however often an endpoint was ejected.
const MAX_EJECTION_FACTOR: u32 = 10;

#[derive(Debug)]
pub struct EndpointHealth {
    /// The active checks' verdict.
    healthy: AtomicBool,
    /// Passive ejection: milliseconds after `base` until which the endpoint
    /// takes no traffic; 0 when not ejected.
    ejected_until: AtomicU64,
    /// Passive failures in a row.
    failures: AtomicU32,
    /// Ejections so far; each lasts longer than the one before.
    ejections: AtomicU32,
    base: Instant,
    detail: Mutex<Detail>,
}

/// What status shows of an endpoint's checks.
#[derive(Debug, Clone)]
pub struct Detail {
    /// Whether any active check has completed yet.
    pub(crate) checked: bool,
    pub consecutive_passes: u32,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// When the verdict last changed.
    pub(crate) since: SystemTime,
}

impl EndpointHealth {
    /// An endpoint with no verdict yet: it takes no traffic until its first
    /// check passes.
    pub(crate) fn unchecked() -> Self {
        Self::with(false, false)
    }

    /// An endpoint without active checks: healthy unless ejected.
    pub(crate) fn unmonitored() -> Self {
        Self::with(true, true)
    }

    fn with(healthy: bool, checked: bool) -> Self {
        Self {
            healthy: AtomicBool::new(healthy),
            ejected_until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            base: Instant::now(),
            detail: Mutex::new(Detail {
                checked,
                consecutive_passes: 0,
                consecutive_failures: 0,
                last_error: None,
                since: SystemTime::now(),
            }),
        }
    }

    /// A new checker's state for an endpoint that had another checker
    /// (its check settings changed): the verdict carries over.
    pub(crate) fn inherit(previous: &EndpointHealth) -> Self {
        let detail = previous.detail();
        let next = Self::with(previous.healthy.load(Ordering::Relaxed), detail.checked);
        *next.detail.lock().expect("health lock") = detail;
        next
    }

    fn now_ms(&self) -> u64 {
        // At least 1, so 0 can mean "not ejected".
        (self.base.elapsed().as_millis() as u64).max(1)
    }

    /// Whether the endpoint may take a request now.
    #[inline]
    pub(crate) fn usable(&self) -> bool {
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// When the current passive ejection ends, if one is in force.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    pub fn detail(&self) -> Detail {
        self.detail.lock().expect("health lock").clone()
    }

    /// A request to this endpoint succeeded.
    #[inline]
    pub(crate) fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A request to this endpoint failed (connect failure or 5xx). Returns
    /// the ejection's length when this failure ejected it.
    pub(crate) fn record_failure(&self, outlier: &Outlier) -> Option<Duration> {
        if outlier.consecutive_failures == 0 {
            return None;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < outlier.consecutive_failures || self.ejected_for().is_some() {
            return None;
        }
        self.failures.store(0, Ordering::Relaxed);
        let count = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = outlier.base_ejection * count.min(MAX_EJECTION_FACTOR);
        self.ejected_until
            .store(self.now_ms() + length.as_millis() as u64, Ordering::Relaxed);
        Some(length)
    }

    /// Records an active check's result; returns the new verdict when it
    /// changed. The first result decides at once; after that the thresholds
    /// apply. A pass also ends a passive ejection.
    pub(crate) fn record_check(
        &self,
        result: Result<(), String>,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        let mut detail = self.detail.lock().expect("health lock");
        let first = !detail.checked;
        detail.checked = true;
        let healthy = self.healthy.load(Ordering::Relaxed);
        let changed = match result {
            Ok(()) => {
                detail.consecutive_passes += 1;
                detail.consecutive_failures = 0;
                self.ejected_until.store(0, Ordering::Relaxed);
                if self.ejections.load(Ordering::Relaxed) != 0 && healthy {
                    self.ejections.store(0, Ordering::Relaxed);
                }
                !healthy && (first || detail.consecutive_passes >= healthy_threshold)
            }
            Err(error) => {
                detail.consecutive_failures += 1;
                detail.consecutive_passes = 0;
                detail.last_error = Some(error);
                healthy && detail.consecutive_failures >= unhealthy_threshold
            }
        };
        if changed || first {
            detail.since = SystemTime::now();
        }
        if changed {
            self.healthy.store(!healthy, Ordering::Relaxed);
            return Some(!healthy);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_apply_after_the_first_verdict() {
        let h = EndpointHealth::unchecked();
        assert!(!h.usable());
        assert_eq!(
            h.record_check(Ok(()), 2, 3),
            Some(true),
            "first pass decides"
        );
        assert_eq!(h.record_check(Err("x".into()), 2, 3), None);
        assert_eq!(h.record_check(Err("x".into()), 2, 3), None);
        assert!(h.usable());
        assert_eq!(
            h.record_check(Err("x".into()), 2, 3),
            Some(false),
            "third failure"
        );
        assert_eq!(h.record_check(Ok(()), 2, 3), None);
        assert_eq!(h.record_check(Ok(()), 2, 3), Some(true), "second pass");
        assert_eq!(h.detail().last_error.as_deref(), Some("x"));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_grows_and_a_check_pass_ends_it() {
        let h = EndpointHealth::unmonitored();
        let outlier = Outlier {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
        };
        assert_eq!(h.record_failure(&outlier), None);
        assert_eq!(h.record_failure(&outlier), Some(Duration::from_secs(10)));
        assert!(!h.usable());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(h.usable(), "ejection over");
        h.record_failure(&outlier);
        assert_eq!(
            h.record_failure(&outlier),
            Some(Duration::from_secs(20)),
            "longer"
        );
        h.record_check(Ok(()), 1, 1);
        assert!(h.usable(), "a pass brings it back");
    }
}
