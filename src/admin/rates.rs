//! Requests per second per pool, for status: a background sampler reads the
//! pools' request counters once a second and keeps a short window, so a
//! status call reads a rate instead of computing one from a single point.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::server::Handle;

const EVERY: Duration = Duration::from_secs(1);
/// Samples kept: the rate is the average over the last few seconds.
const WINDOW: usize = 5;

type Key = (String, String);

#[derive(Default)]
pub struct Rates {
    samples: Mutex<HashMap<Key, VecDeque<(Instant, u64)>>>,
}

impl Rates {
    /// Requests per second of a pool over the window; 0 before two samples.
    pub fn get(&self, service: &str, pool: &str) -> f64 {
        let samples = self.samples.lock().expect("rates lock");
        let Some(window) = samples.get(&(service.to_owned(), pool.to_owned())) else {
            return 0.0;
        };
        match (window.front(), window.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                n1.saturating_sub(*n0) as f64 / (*t1 - *t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    fn sample(&self, handle: &Handle) {
        let snapshot = handle.snapshot();
        let now = Instant::now();
        let mut samples = self.samples.lock().expect("rates lock");
        let mut seen = Vec::new();
        for service in &snapshot.services {
            for pool in service.pools.iter() {
                let key = (service.name.to_string(), pool.name.to_string());
                let window = samples.entry(key.clone()).or_default();
                window.push_back((now, pool.metrics.totals().0));
                if window.len() > WINDOW {
                    window.pop_front();
                }
                seen.push(key);
            }
        }
        samples.retain(|k, _| seen.contains(k));
    }

    pub async fn run(&self, handle: Handle, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(&handle),
                () = shutdown.cancelled() => return,
            }
        }
    }
}
