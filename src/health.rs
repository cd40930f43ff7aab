//! Active health checks: one checker task per distinct endpoint and check
//! settings (services that share an endpoint and settings share its checker),
//! started, kept or stopped as snapshots are built, so a reload leaves
//! unchanged checkers and their state alone. Checks run on the control
//! plane's runtime; the data plane only reads `EndpointHealth`.

mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::{Endpoint, Health, HealthKind};
use crate::metrics::EndpointMetrics;
pub use state::{Detail, EndpointHealth};

/// Everything that makes two checks the same check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    address: Arc<str>,
    spec: Health,
    /// Host header of an HTTP check: the pool's rewrite, else the address;
    /// `None` for other checks.
    host: Option<HeaderValue>,
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
    pub(crate) fn next_generation(&mut self) -> HealthBuilder<'_> {
        HealthBuilder {
            previous: self,
            used: HashMap::new(),
            unmonitored: Vec::new(),
        }
    }

    /// Waits until every checker has a first verdict, at most `limit`.
    pub(crate) async fn first_round(&self, limit: Duration) {
        let all_checked = || self.checkers.values().all(|c| c.health.detail().checked);
        let deadline = tokio::time::Instant::now() + limit;
        while !all_checked() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The longest check timeout in force, to bound `first_round`.
    pub(crate) fn longest_timeout(&self) -> Duration {
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

pub(crate) struct HealthBuilder<'a> {
    previous: &'a mut HealthChecks,
    used: HashMap<Key, (Checker, Vec<EndpointMetrics>)>,
    unmonitored: Vec<(Arc<EndpointHealth>, EndpointMetrics)>,
}

impl HealthBuilder<'_> {
    /// The health of `endpoint` as `spec` checks it, for one pool of one
    /// service (whose Host rewrite is `rewrite`, and whose metric handles
    /// are `metrics`).
    pub(crate) fn endpoint(
        &mut self,
        endpoint: &Endpoint,
        spec: &Health,
        rewrite: Option<&HeaderValue>,
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
            HealthKind::Http => Some(rewrite.unwrap_or(&endpoint.host).clone()),
            _ => None,
        };
        let key = Key {
            address: endpoint.address().into(),
            spec: spec.clone(),
            host,
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
    pub(crate) fn finish(self) {
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
    loop {
        let result = tokio::select! {
            result = tokio::time::timeout(spec.timeout, probe(&key)) => {
                result.unwrap_or_else(|_| Err(format!("no answer within {:?}", spec.timeout)))
            }
            () = stop.cancelled() => return,
        };
        let passed = result.is_ok();
        let error = result.as_ref().err().cloned();
        let change = health.record_check(result, spec.healthy_threshold, spec.unhealthy_threshold);
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

async fn probe(key: &Key) -> Result<(), String> {
    let stream = TcpStream::connect(&*key.address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if key.spec.kind == HealthKind::Tcp {
        return Ok(());
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = Uri::from(key.spec.path.clone());
    let headers = req.headers_mut();
    if let Some(host) = &key.host {
        headers.insert(header::HOST, host.clone());
    }
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static("cutover-health-check"),
    );
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"));
    conn.abort();
    let status = response?.status().as_u16();
    if key.spec.expect.matches(status) {
        Ok(())
    } else {
        Err(format!("status {status}, expected {}", key.spec.expect))
    }
}
