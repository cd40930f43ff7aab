//! The routing state the data plane reads: one immutable `Snapshot`, built from
//! a valid configuration by the control plane and published whole behind one
//! `ArcSwap`. Everything a request needs is resolved here, once per snapshot:
//! host maps, pick tables, Host rewrite values, upstream clients. This module
//! builds and reads snapshots; it never publishes one (see `server`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use ipnet::IpNet;
use prometheus::IntCounter;

use crate::balance::{PickTable, RoundRobin};
use crate::config::{Config, Host, Limits, Outlier, Protocol};
use crate::drain::{Activities, Activity};
use crate::health::{EndpointHealth, HealthChecks};
use crate::metrics::{ListenerMetrics, Metrics, PoolMetrics, ServiceMetrics};
use crate::proxy_protocol;
use crate::state::Overrides;
use crate::tls::client::EndpointTls;
use crate::tls::{ListenerTls, Material};
use crate::upstream::{EndpointConns, EndpointSpec, Upstreams};

/// The one place the data plane reads routing state from.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every published snapshot.
    pub(crate) generation: u64,
    pub(crate) limits: Limits,
    /// Host routing per listener, keyed by the listener's configured bind
    /// address, which is what identifies a listener across reloads.
    routers: Vec<(SocketAddr, Router)>,
    /// Every service, in configuration order.
    pub services: Vec<Arc<Service>>,
}

/// What a snapshot is built from besides the configuration: the override
/// rules, and the long-lived parts it reuses from the previous snapshot.
pub struct Inputs<'a> {
    /// The snapshot in force, whose services that stay keep their mode.
    pub previous: &'a Snapshot,
    pub overrides: &'a Overrides,
    pub upstreams: &'a mut Upstreams,
    pub checks: &'a mut HealthChecks,
    pub activities: &'a mut Activities,
    pub metrics: &'a Metrics,
    /// What the configuration's TLS settings read from files.
    pub tls: &'a Material,
}

/// One listener's routing: what it speaks, whom it trusts for PROXY
/// headers, and its host → service map (by `Host` at layer 7, by the
/// ClientHello's server name on a tcp listener with `sni`).
#[derive(Debug)]
pub(crate) struct Router {
    pub(crate) metrics: Arc<ListenerMetrics>,
    pub(crate) protocol: Protocol,
    /// tcp: route by the ClientHello's server name.
    pub(crate) sni: bool,
    /// Sources whose connections open with a PROXY header.
    pub(crate) accept_proxy: Box<[IpNet]>,
    /// http: TLS terminated here.
    pub(crate) tls: Option<Arc<ListenerTls>>,
    /// Plain http: every request answered with a redirect to https.
    pub(crate) redirect_https: bool,
    /// tcp: `cutover_tcp_connections_total` per service and pool, in the
    /// services' pool order.
    tcp_connections: Vec<(Arc<str>, Box<[IntCounter]>)>,
    exact: HashMap<Box<str>, Arc<Service>>,
    /// `*.suffix` entries as `.suffix`, longest first.
    wildcard: Vec<(Box<str>, Arc<Service>)>,
    default: Option<Arc<Service>>,
}

#[derive(Debug)]
pub struct Service {
    pub(crate) name: Arc<str>,
    pub pools: Box<[Pool]>,
    /// Picks among the pools in rotation; `None` when none is (all drained).
    table: Option<PickTable>,
    pub(crate) request_timeout: Duration,
    /// How long work on a pool or endpoint leaving rotation may finish.
    pub(crate) drain_timeout: Duration,
    pub(crate) retries: u32,
    failover: bool,
    pub(crate) outlier: Outlier,
    /// tcp: connections of a pool leaving rotation close one at a time
    /// over this window instead of at the drain deadline.
    pub(crate) migrate: Option<Duration>,
    pub(crate) metrics: ServiceMetrics,
    /// How the service is serving, to log and count transitions once:
    /// shared by every snapshot the service is in, so a reload during a
    /// failover is not a second failover.
    mode: Arc<AtomicU8>,
}

/// How a service is serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// From its weighted pools.
    Normal = 0,
    /// From a weight-0 pool, every weighted pool being down.
    Failover = 1,
    /// Not at all: no endpoint is healthy.
    Down = 2,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Failover => "failover",
            Mode::Down => "down",
        }
    }
}

/// Endpoints a request has tried, as (pool, endpoint) indexes.
#[derive(Debug, Default)]
pub(crate) struct Tried {
    items: [(u8, u16); 1 + crate::config::MAX_RETRIES as usize],
    len: usize,
}

impl Tried {
    pub fn push(&mut self, pool: usize, endpoint: usize) {
        if self.len < self.items.len() {
            self.items[self.len] = (pool as u8, endpoint as u16);
            self.len += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Forgets the last endpoint pushed.
    pub fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn contains(&self, pool: usize, endpoint: usize) -> bool {
        self.items[..self.len]
            .iter()
            .any(|&(p, e)| usize::from(p) == pool && usize::from(e) == endpoint)
    }
}

#[derive(Debug)]
pub struct Pool {
    pub(crate) name: Arc<str>,
    pub(crate) weight: u32,
    pub endpoints: Box<[Endpoint]>,
    /// Set to drain: takes no new work, whatever its weight.
    pub(crate) draining: bool,
    /// Host header for this pool's requests, when the pool rewrites it.
    pub(crate) host: Option<HeaderValue>,
    /// tcp: the PROXY header version its endpoints expect.
    pub(crate) send_proxy: Option<proxy_protocol::Version>,
    pub(crate) metrics: PoolMetrics,
    pub(crate) activity: Arc<Activity>,
    next: RoundRobin,
}

#[derive(Debug)]
pub struct Endpoint {
    /// As written in the configuration, `host:port`.
    pub(crate) address: Arc<str>,
    pub(crate) conns: Arc<EndpointConns>,
    pub health: Arc<EndpointHealth>,
    /// Set to drain: takes no new work.
    pub(crate) draining: bool,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::empty()
    }
}

impl Snapshot {
    /// Routes nothing: what the data plane sees before the first publish.
    pub fn empty() -> Self {
        Self {
            generation: 0,
            limits: Limits::default(),
            routers: Vec::new(),
            services: Vec::new(),
        }
    }

    /// Builds the routing state for a configuration that `config::parse`
    /// accepted, with the weights and drains `inputs.overrides` give.
    /// Connections, health checkers and activity records of endpoints that
    /// stay are reused, and so is the mode of services that stay; metric
    /// handles come from `inputs.metrics`.
    pub fn build(config: &Config, generation: u64, inputs: Inputs<'_>) -> Self {
        let mut clients = inputs.upstreams.next_generation();
        let mut health = inputs.checks.next_generation();
        let services: Vec<Arc<Service>> = config
            .services
            .iter()
            .map(|s| {
                let service_name = s.name.as_str();
                let weights = inputs.overrides.effective(s);
                let pools: Box<[Pool]> = s
                    .pools
                    .iter()
                    .zip(&weights)
                    .map(|(p, &weight)| {
                        let pool_name = p.name.as_str();
                        let pool_metrics = inputs.metrics.pool(service_name, pool_name);
                        let client = p.tls.as_ref().and_then(|tls| {
                            let client = inputs.tls.pools.get(&(s.name.clone(), p.name.clone()))?;
                            Some((tls, client))
                        });
                        let endpoints = p
                            .endpoints
                            .iter()
                            .map(|e| {
                                let address = e.address();
                                let tls = client.map(|(tls, client)| {
                                    EndpointTls::new(
                                        client,
                                        tls.sni.as_deref(),
                                        p.host.as_ref(),
                                        &e.authority,
                                    )
                                });
                                Endpoint {
                                    address: address.into(),
                                    conns: clients.endpoint(EndpointSpec {
                                        service: service_name,
                                        pool: pool_name,
                                        address,
                                        connect_timeout: s.connect_timeout,
                                        tls: tls.clone(),
                                        protocol: p.protocol,
                                        connections: &pool_metrics.upstream_connections,
                                    }),
                                    health: health.endpoint(
                                        e,
                                        &s.health,
                                        p.host.as_ref(),
                                        tls.as_ref(),
                                        p.protocol,
                                        inputs.metrics.endpoint(service_name, pool_name, address),
                                    ),
                                    draining: inputs.overrides.is_drained(
                                        service_name,
                                        pool_name,
                                        Some(address),
                                    ),
                                }
                            })
                            .collect();
                        Pool {
                            name: pool_name.into(),
                            weight,
                            draining: inputs.overrides.is_drained(service_name, pool_name, None),
                            endpoints,
                            host: p.host.clone(),
                            send_proxy: p.send_proxy,
                            metrics: pool_metrics,
                            activity: inputs.activities.get(service_name, pool_name),
                            next: RoundRobin::default(),
                        }
                    })
                    .collect();
                let in_rotation: Vec<u32> = pools
                    .iter()
                    .map(|p| if p.draining { 0 } else { p.weight })
                    .collect();
                Arc::new(Service {
                    name: service_name.into(),
                    table: PickTable::new(&in_rotation),
                    pools,
                    request_timeout: s.request_timeout,
                    drain_timeout: s.drain_timeout,
                    retries: s.retries,
                    failover: s.failover,
                    outlier: s.outlier.clone(),
                    migrate: s.migrate,
                    metrics: inputs.metrics.service(service_name),
                    mode: inputs
                        .previous
                        .service(service_name)
                        .map_or_else(Arc::default, |before| before.mode.clone()),
                })
            })
            .collect();
        clients.finish();
        health.finish();
        let metrics = inputs.metrics;
        // Built in configuration order, so each service pairs with its hosts.
        let by_name: HashMap<&str, (&Arc<Service>, &[Host])> = services
            .iter()
            .zip(&config.services)
            .map(|(s, c)| (&*s.name, (s, c.hosts.as_slice())))
            .collect();

        let routers = config
            .listeners
            .iter()
            .map(|l| {
                let tcp = l.protocol == Protocol::Tcp;
                let tls = inputs.tls.listeners.get(&l.bind).cloned();
                let mut router = Router {
                    metrics: Arc::new(metrics.listener(&l.name, tcp, tls.is_some())),
                    protocol: l.protocol,
                    sni: l.sni,
                    accept_proxy: l.accept_proxy.as_slice().into(),
                    tls,
                    redirect_https: l.redirect_https,
                    tcp_connections: Vec::new(),
                    exact: HashMap::new(),
                    wildcard: Vec::new(),
                    default: None,
                };
                for name in &l.services {
                    let Some(&(service, hosts)) = by_name.get(name.as_str()) else {
                        continue;
                    };
                    if tcp {
                        let counters = service
                            .pools
                            .iter()
                            .map(|p| metrics.tcp_connections(&l.name, &service.name, &p.name))
                            .collect();
                        router
                            .tcp_connections
                            .push((service.name.clone(), counters));
                        if !l.sni {
                            // Validation allows one service here: every
                            // connection's, whatever its hosts.
                            router.default = Some(service.clone());
                            continue;
                        }
                    }
                    if hosts.is_empty() {
                        router.default = Some(service.clone());
                    }
                    for host in hosts {
                        match host {
                            Host::Suffix(suffix) => router
                                .wildcard
                                .push((suffix.as_str().into(), service.clone())),
                            Host::Exact(name) => {
                                router.exact.insert(name.as_str().into(), service.clone());
                            }
                        }
                    }
                }
                router
                    .wildcard
                    .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
                (l.bind, router)
            })
            .collect();

        Self {
            generation,
            limits: config.limits.clone(),
            routers,
            services,
        }
    }

    pub(crate) fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| &*s.name == name)
    }

    /// The host router of the listener configured with `bind`.
    #[inline]
    pub(crate) fn router(&self, bind: SocketAddr) -> Option<&Router> {
        self.routers
            .iter()
            .find(|(addr, _)| *addr == bind)
            .map(|(_, r)| r)
    }
}

impl Router {
    /// `cutover_tcp_connections_total` of one pool of a service this
    /// listener routes to.
    pub(crate) fn tcp_connections(&self, service: &Service, pool: usize) -> Option<&IntCounter> {
        self.tcp_connections
            .iter()
            .find(|(name, _)| Arc::ptr_eq(name, &service.name))
            .and_then(|(_, counters)| counters.get(pool))
    }

    /// Whether connections from `ip` open with a PROXY header.
    pub(crate) fn trusts_proxy(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.accept_proxy.iter().any(|net| net.contains(&ip))
    }

    /// The service for a request's host (`Host` header or URI authority, port
    /// allowed); the listener's default service when no host matches.
    pub(crate) fn route(&self, host: Option<&str>) -> Option<&Arc<Service>> {
        let Some(host) = host.map(strip_port).filter(|h| !h.is_empty()) else {
            return self.default.as_ref();
        };
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        self.exact
            .get(host)
            .or_else(|| {
                self.wildcard
                    .iter()
                    .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(&**suffix))
                    .map(|(_, s)| s)
            })
            .or(self.default.as_ref())
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port or [v6]
        return rest.split_once(']').map_or(host, |(addr, _)| addr);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

impl Service {
    /// The (pool, endpoint) that serves a request's first attempt: a pool by
    /// weight, then a usable endpoint of it round-robin. A pool with no usable
    /// endpoint passes its turn to the other weighted pools, then (failover)
    /// to the weight-0 ones. `None` when nothing is usable.
    #[inline]
    pub fn pick(&self) -> Option<(usize, usize)> {
        let Some(table) = &self.table else {
            return self.pick_other(0, &Tried::default());
        };
        let pool = table.pick();
        if let Some(endpoint) = self.pools[pool].pick_endpoint(pool, &Tried::default()) {
            self.set_mode(Mode::Normal);
            return Some((pool, endpoint));
        }
        self.pick_other(pool, &Tried::default())
    }

    /// The (pool, endpoint) for a retry after `pool` failed: another usable
    /// endpoint of the same pool not tried yet, else of another pool.
    pub(crate) fn pick_retry(&self, pool: usize, tried: &Tried) -> Option<(usize, usize)> {
        if let Some(endpoint) = self.pools[pool].pick_endpoint(pool, tried) {
            return Some((pool, endpoint));
        }
        self.pick_other(pool, tried)
    }

    fn pick_other(&self, from: usize, tried: &Tried) -> Option<(usize, usize)> {
        let n = self.pools.len();
        let others = (1..n).map(|i| (from + i) % n);
        let weighted = others.clone().filter(|&i| self.pools[i].in_rotation());
        for pool in weighted {
            if let Some(endpoint) = self.pools[pool].pick_endpoint(pool, tried) {
                self.set_mode(Mode::Normal);
                return Some((pool, endpoint));
            }
        }
        if self.failover {
            let standby = (0..n).filter(|&i| self.pools[i].weight == 0 && !self.pools[i].draining);
            for pool in standby {
                if let Some(endpoint) = self.pools[pool].pick_endpoint(pool, tried) {
                    self.set_mode(Mode::Failover);
                    return Some((pool, endpoint));
                }
            }
        }
        if tried.is_empty() {
            self.set_mode(Mode::Down);
        }
        None
    }

    /// Counts a failure of `endpoint` (of `pool`, one of this service's)
    /// towards its passive ejection, and says when it ejects it.
    pub(crate) fn eject_on_failure(&self, pool: &Pool, endpoint: &Endpoint) {
        if let Some(length) = endpoint.health.record_failure(&self.outlier) {
            tracing::warn!(service = %self.name, pool = %pool.name, endpoint = %endpoint.address,
                ejection = ?length, "endpoint failed repeatedly: ejected");
        }
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Relaxed) {
            0 => Mode::Normal,
            1 => Mode::Failover,
            _ => Mode::Down,
        }
    }

    /// Records how the service serves; logs and counts a change once.
    #[inline]
    fn set_mode(&self, mode: Mode) {
        if self.mode.load(Ordering::Relaxed) == mode as u8 {
            return;
        }
        let before = self.mode.swap(mode as u8, Ordering::Relaxed);
        if before == mode as u8 {
            return;
        }
        match mode {
            Mode::Normal => {
                tracing::info!(service = %self.name, "serving from the weighted pools again")
            }
            Mode::Failover => {
                self.metrics.failovers.inc();
                tracing::warn!(service = %self.name, "every weighted pool is down: failing over to a weight-0 pool");
            }
            Mode::Down => {
                tracing::error!(service = %self.name, "no healthy endpoint: answering 503")
            }
        }
    }
}

impl Pool {
    /// Whether the pool takes its share of new work.
    pub(crate) fn in_rotation(&self) -> bool {
        self.weight > 0 && !self.draining
    }

    /// A usable endpoint of this pool (index `me` in its service) not in
    /// `tried`, round-robin.
    #[inline]
    fn pick_endpoint(&self, me: usize, tried: &Tried) -> Option<usize> {
        let n = self.endpoints.len();
        let start = self.next.next(n);
        (0..n).map(|i| (start + i) % n).find(|&i| {
            let endpoint = &self.endpoints[i];
            !endpoint.draining && endpoint.health.usable() && !tried.contains(me, i)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
    }
}
