//! Active health checks: one checker task per distinct endpoint and check
//! settings (services that share an endpoint and settings share its checker),
//! started, kept or stopped as snapshots are built, so a reload leaves
//! unchanged checkers and their state alone. Checks run on the control
//! plane's runtime; the data plane only reads `EndpointHealth`. A check
//! speaks to the endpoint as its pool does: over the pool's TLS (for a tcp
//! check, a completed handshake is the pass) and in its protocol (HTTP/2
//! by prior knowledge for an h2 pool without TLS).

mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{header, HeaderValue, Request, Uri};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, Change, EventKind, Source};
use crate::config::{Endpoint, Health, HealthKind, UpstreamProtocol};
use crate::metrics::EndpointMetrics;
use crate::tls::client::{EndpointTls, TlsIdentity};
use crate::upstream::Stream;
pub use state::{Detail, EndpointHealth};

/// Everything that makes two checks the same check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    address: Arc<str>,
    spec: Health,
    /// Host header of an HTTP check: the pool's rewrite, else the address;
    /// `None` for other checks.
    host: Option<HeaderValue>,
    /// The pool's TLS to the endpoint.
    tls: Option<TlsIdentity>,
    /// What an HTTP check speaks.
    protocol: UpstreamProtocol,
}

/// How a check reaches its endpoint, beyond its key.
#[derive(Clone)]
struct Reach {
    tls: Option<EndpointTls>,
    /// Where a verdict's change is recorded.
    audit: Audit,
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
    /// Where a verdict's change is recorded.
    audit: Audit,
}

impl HealthChecks {
    /// Checkers whose verdict changes are recorded in `audit`.
    pub(crate) fn new(audit: Audit) -> Self {
        Self {
            checkers: HashMap::new(),
            audit,
        }
    }

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
    /// are `metrics`), which speaks `protocol` to it, over `tls` if any.
    pub(crate) fn endpoint(
        &mut self,
        endpoint: &Endpoint,
        spec: &Health,
        rewrite: Option<&HeaderValue>,
        tls: Option<&EndpointTls>,
        protocol: UpstreamProtocol,
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
            tls: tls.map(EndpointTls::identity),
            protocol,
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
                    Reach {
                        tls: tls.cloned(),
                        audit: self.previous.audit.clone(),
                    },
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
    reach: Reach,
    health: Arc<EndpointHealth>,
    users: Arc<Mutex<Vec<EndpointMetrics>>>,
    stop: CancellationToken,
) {
    let spec = &key.spec;
    loop {
        let result = tokio::select! {
            result = tokio::time::timeout(spec.timeout, probe(&key, &reach)) => {
                result.unwrap_or_else(|_| Err(format!("no answer within {:?}", spec.timeout)))
            }
            () = stop.cancelled() => return,
        };
        let passed = result.is_ok();
        let error = result.as_ref().err().cloned();
        // An endpoint's first verdict, when it is healthy, is no change
        // worth an audit event: it was just not checked before.
        let first = !health.detail().checked;
        let change = health.record_check(result, spec.healthy_threshold, spec.unhealthy_threshold);
        let mut owners = Vec::new();
        for m in users.lock().expect("users lock").iter() {
            m.check(passed);
            if let Some(healthy) = change {
                m.set_healthy(healthy);
                owners.push(m.owner.clone());
            }
        }
        if let Some(healthy) = change.filter(|healthy| !(first && *healthy)) {
            let verdict = if healthy { "healthy" } else { "unhealthy" };
            let mut message = format!("endpoint {} is {verdict}", key.address);
            if let Some(error) = &error {
                message.push_str(&format!(": {error}"));
            }
            for owner in owners {
                reach.audit.record(
                    Change::new(EventKind::Health, Source::Health, message.clone())
                        .service(&owner.0)
                        .pool(&owner.1)
                        .endpoint(&key.address)
                        .before(serde_json::json!({ "healthy": !healthy }))
                        .after(serde_json::json!({ "healthy": healthy })),
                );
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

async fn probe(key: &Key, reach: &Reach) -> Result<(), String> {
    let tcp = TcpStream::connect(&*key.address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let stream = match &reach.tls {
        None => Stream::Plain(tcp),
        Some(tls) => Stream::Tls(Box::new(
            tls.handshake(tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?,
        )),
    };
    if key.spec.kind == HealthKind::Tcp {
        return Ok(());
    }
    let mut req = Request::new(Empty::<Bytes>::new());
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("cutover-health-check"),
    );
    let io = TokioIo::new(stream);
    let response = match key.protocol {
        UpstreamProtocol::Http1 => {
            *req.uri_mut() = Uri::from(key.spec.path.clone());
            if let Some(host) = &key.host {
                req.headers_mut().insert(header::HOST, host.clone());
            }
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let conn = tokio::spawn(conn);
            let response = sender.send_request(req).await;
            conn.abort();
            response
        }
        UpstreamProtocol::H2 => {
            // HTTP/2 carries the Host as the :authority of an absolute URI.
            let scheme = match reach.tls {
                Some(_) => Scheme::HTTPS,
                None => Scheme::HTTP,
            };
            let authority = key
                .host
                .as_ref()
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .ok_or("the Host is not an authority")?;
            let mut parts = Uri::from(key.spec.path.clone()).into_parts();
            parts.scheme = Some(scheme);
            parts.authority = Some(authority);
            *req.uri_mut() = Uri::from_parts(parts).map_err(|e| format!("request: {e}"))?;
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            let conn = tokio::spawn(conn);
            let response = sender.send_request(req).await;
            conn.abort();
            response
        }
    };
    let status = response
        .map_err(|e| format!("request: {e}"))?
        .status()
        .as_u16();
    if key.spec.expect.matches(status) {
        Ok(())
    } else {
        Err(format!("status {status}, expected {}", key.spec.expect))
    }
}
