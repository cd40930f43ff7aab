//! Active health checks: one checker task per distinct endpoint and check
//! settings (services that share an endpoint and settings share its checker),
//! started, kept or stopped as snapshots are built, so a reload leaves
//! unchanged checkers and their state alone. Checks run on the control
//! plane's runtime; the data plane only reads `EndpointHealth`.

mod state;

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::{Health, HealthKind};
use crate::metrics::EndpointMetrics;
pub use state::{Detail, EndpointHealth};

/// HTTP statuses that pass a check, parsed from `expect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect(Vec<RangeInclusive<u16>>);

impl Expect {
    /// "200-399", "200", "200,204,300-399".
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("expect {text:?} is not a list of statuses or ranges, like \"200-399\" or \"200,204\"")
        };
        let ranges = text
            .split(',')
            .map(|part| {
                let part = part.trim();
                let (lo, hi) = part.split_once('-').unwrap_or((part, part));
                let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
                let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
                if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                    return Err(bad());
                }
                Ok(lo..=hi)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(ranges))
    }

    pub fn matches(&self, status: u16) -> bool {
        self.0.iter().any(|r| r.contains(&status))
    }
}

/// Everything that makes two checks the same check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    address: String,
    spec: Health,
    /// Host header of an HTTP check: the pool's rewrite, else the address.
    host: String,
}

struct Checker {
    health: Arc<EndpointHealth>,
    /// Metric handles of every service pool that uses this endpoint.
    users: Arc<Mutex<Vec<EndpointMetrics>>>,
    stop: CancellationToken,
}

/// The running checkers, kept by the control plane across snapshots.
#[derive(Default)]
pub struct HealthChecks {
    checkers: HashMap<Key, Checker>,
}

impl HealthChecks {
    pub fn next_generation(&mut self) -> HealthBuilder<'_> {
        HealthBuilder {
            previous: self,
            used: HashMap::new(),
            unmonitored: Vec::new(),
        }
    }

    /// Waits until every checker has a first verdict, at most `limit`.
    pub async fn first_round(&self, limit: Duration) {
        let all_checked = || self.checkers.values().all(|c| c.health.detail().checked);
        let deadline = tokio::time::Instant::now() + limit;
        while !all_checked() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The longest check timeout in force, to bound `first_round`.
    pub fn longest_timeout(&self) -> Duration {
        self.checkers
            .keys()
            .map(|k| k.spec.timeout)
            .max()
            .unwrap_or_default()
    }

    /// Stops every checker.
    pub fn stop(&mut self) {
        for checker in self.checkers.values() {
            checker.stop.cancel();
        }
        self.checkers.clear();
    }
}

pub struct HealthBuilder<'a> {
    previous: &'a mut HealthChecks,
    used: HashMap<Key, (Checker, Vec<EndpointMetrics>)>,
    unmonitored: Vec<(Arc<EndpointHealth>, EndpointMetrics)>,
}

impl HealthBuilder<'_> {
    /// The health of `address` as `spec` checks it, for one pool of one
    /// service (whose metric handles are `metrics`).
    pub fn endpoint(
        &mut self,
        address: &str,
        spec: &Health,
        host: Option<&str>,
        metrics: EndpointMetrics,
    ) -> Arc<EndpointHealth> {
        if spec.kind == HealthKind::None {
            let health = Arc::new(EndpointHealth::unmonitored());
            self.unmonitored.push((health.clone(), metrics));
            return health;
        }
        // Only an HTTP check sends a Host; a TCP check is the same check
        // whatever the pool's rewrite.
        let host = match spec.kind {
            HealthKind::Http => host.unwrap_or(address),
            _ => "",
        };
        let key = Key {
            address: address.to_owned(),
            spec: spec.clone(),
            host: host.to_owned(),
        };
        if let Some((checker, users)) = self.used.get_mut(&key) {
            users.push(metrics);
            return checker.health.clone();
        }
        let checker = match self.previous.checkers.remove(&key) {
            Some(kept) => kept,
            None => {
                let inherited = self
                    .previous
                    .checkers
                    .iter()
                    .find(|(k, _)| k.address == key.address)
                    .map(|(_, c)| EndpointHealth::inherit(&c.health));
                let health = Arc::new(inherited.unwrap_or_else(EndpointHealth::unchecked));
                let checker = Checker {
                    health,
                    users: Arc::default(),
                    stop: CancellationToken::new(),
                };
                tokio::spawn(run(
                    key.clone(),
                    checker.health.clone(),
                    checker.users.clone(),
                    checker.stop.clone(),
                ));
                checker
            }
        };
        let health = checker.health.clone();
        self.used.insert(key, (checker, vec![metrics]));
        health
    }

    /// Stops the checkers no longer used and makes the used ones current,
    /// with their users' metric handles.
    pub fn finish(self) {
        for checker in self.previous.checkers.values() {
            checker.stop.cancel();
        }
        self.previous.checkers = self
            .used
            .into_iter()
            .map(|(key, (checker, users))| {
                for m in &users {
                    m.set_healthy(checker.health.healthy());
                }
                *checker.users.lock().expect("users lock") = users;
                (key, checker)
            })
            .collect();
        for (health, metrics) in self.unmonitored {
            metrics.set_healthy(health.healthy());
        }
    }
}

/// A checker: probe, record, wait (with jitter so many checkers spread out),
/// until stopped.
async fn run(
    key: Key,
    health: Arc<EndpointHealth>,
    users: Arc<Mutex<Vec<EndpointMetrics>>>,
    stop: CancellationToken,
) {
    let spec = &key.spec;
    let expect = Expect::parse(spec.expect.get_ref()).expect("validated expect");
    loop {
        let result = tokio::select! {
            result = tokio::time::timeout(spec.timeout, probe(&key, &expect)) => {
                result.unwrap_or_else(|_| Err(format!("no answer within {:?}", spec.timeout)))
            }
            () = stop.cancelled() => return,
        };
        let passed = result.is_ok();
        let error = result.as_ref().err().cloned();
        let change = health.record_check(
            result,
            *spec.healthy_threshold.get_ref(),
            *spec.unhealthy_threshold.get_ref(),
        );
        for m in users.lock().expect("users lock").iter() {
            m.check(passed);
            if let Some(healthy) = change {
                m.set_healthy(healthy);
            }
        }
        match change {
            Some(true) => tracing::info!(endpoint = %key.address, "endpoint is healthy"),
            Some(false) => tracing::warn!(
                endpoint = %key.address,
                error = error.as_deref().unwrap_or(""),
                "endpoint is unhealthy"
            ),
            None => {}
        }
        let jitter = spec.interval.mul_f64(fastrand::f64() * 0.1);
        tokio::select! {
            () = tokio::time::sleep(spec.interval + jitter) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn probe(key: &Key, expect: &Expect) -> Result<(), String> {
    let stream = TcpStream::connect(&key.address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if key.spec.kind == HealthKind::Tcp {
        return Ok(());
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = Request::get(key.spec.path.get_ref().as_str())
        .header(http::header::HOST, &key.host)
        .header(http::header::USER_AGENT, "cutover-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"));
    conn.abort();
    let status = response?.status().as_u16();
    if expect.matches(status) {
        Ok(())
    } else {
        Err(format!(
            "status {status}, expected {}",
            key.spec.expect.get_ref()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::Expect;

    #[test]
    fn expect_lists_and_ranges() {
        let e = Expect::parse("200-299, 304").unwrap();
        assert!(e.matches(204) && e.matches(304) && !e.matches(301) && !e.matches(500));
        for bad in ["", "2xx", "399-200", "200-", "99", "600"] {
            assert!(Expect::parse(bad).is_err(), "{bad}");
        }
    }
}
