//! The routing state the data plane reads: one immutable `Snapshot`, built from
//! a valid configuration by the control plane and published whole behind one
//! `ArcSwap`. Everything a request needs is resolved here, once per snapshot:
//! host maps, pick tables, Host rewrite values, upstream clients. This module
//! builds and reads snapshots; it never publishes one (see `server`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;
use http::HeaderValue;

use crate::balance::{PickTable, RoundRobin};
use crate::config::{Config, Limits};
use crate::metrics::{ListenerMetrics, Metrics, PoolMetrics};
use crate::state::Overrides;
use crate::upstream::{ClientSpec, UpstreamClient, Upstreams};

/// The one place the data plane reads routing state from.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every published snapshot.
    pub generation: u64,
    pub limits: Limits,
    /// Host routing per listener, keyed by the listener's configured bind
    /// address, which is what identifies a listener across reloads.
    routers: Vec<(SocketAddr, Router)>,
    /// Every service, in configuration order.
    pub services: Vec<Arc<Service>>,
}

/// Host → service map of one listener.
#[derive(Debug)]
pub struct Router {
    pub name: Arc<str>,
    pub metrics: Arc<ListenerMetrics>,
    exact: HashMap<Box<str>, Arc<Service>>,
    /// `*.suffix` entries as `.suffix`, longest first.
    wildcard: Vec<(Box<str>, Arc<Service>)>,
    default: Option<Arc<Service>>,
}

#[derive(Debug)]
pub struct Service {
    pub name: Arc<str>,
    pub pools: Box<[Pool]>,
    table: PickTable,
    pub request_timeout: Duration,
}

#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub weight: u32,
    pub endpoints: Box<[Endpoint]>,
    /// Host header for this pool's requests, when the pool rewrites it.
    pub host: Option<HeaderValue>,
    pub metrics: PoolMetrics,
    next: RoundRobin,
}

#[derive(Debug)]
pub struct Endpoint {
    /// As written in the configuration, `host:port`.
    pub address: Arc<str>,
    pub authority: Authority,
    pub client: UpstreamClient,
}

impl Snapshot {
    /// Builds the routing state for a configuration that `config::parse`
    /// accepted, with the weights `overrides` give. Clients for endpoints
    /// already in `upstreams` are reused; metric handles come from `metrics`.
    pub fn build(
        config: &Config,
        overrides: &Overrides,
        generation: u64,
        upstreams: &mut Upstreams,
        metrics: &Metrics,
    ) -> Self {
        let mut clients = upstreams.next_generation();
        let services: Vec<Arc<Service>> = config
            .services
            .iter()
            .map(|s| {
                let service_name = s.name.get_ref().as_str();
                let weights = overrides.effective(s);
                let pools: Box<[Pool]> = s
                    .pools
                    .iter()
                    .zip(&weights)
                    .map(|(p, &weight)| {
                        let pool_name = p.name.get_ref().as_str();
                        let pool_metrics = metrics.pool(service_name, pool_name);
                        Pool {
                            name: pool_name.into(),
                            weight,
                            endpoints: p
                                .endpoints
                                .iter()
                                .map(|e| {
                                    let address = e.get_ref().as_str();
                                    Endpoint {
                                        address: address.into(),
                                        authority: address
                                            .parse()
                                            .expect("validated endpoints are authorities"),
                                        client: clients.client(ClientSpec {
                                            service: service_name,
                                            pool: pool_name,
                                            address,
                                            connect_timeout: s.connect_timeout,
                                            connections: &pool_metrics.upstream_connections,
                                        }),
                                    }
                                })
                                .collect(),
                            host: p.host.as_ref().and_then(|h| h.get_ref().parse().ok()),
                            metrics: pool_metrics,
                            next: RoundRobin::default(),
                        }
                    })
                    .collect();
                Arc::new(Service {
                    name: service_name.into(),
                    table: PickTable::new(&weights)
                        .expect("effective weights keep a pool above zero"),
                    pools,
                    request_timeout: s.request_timeout,
                })
            })
            .collect();
        clients.finish();
        let by_name: HashMap<&str, &Arc<Service>> =
            services.iter().map(|s| (&*s.name, s)).collect();

        let routers = config
            .listeners
            .iter()
            .filter_map(|l| {
                let bind: SocketAddr = l.bind.get_ref().parse().ok()?;
                let mut router = Router {
                    name: l.name.get_ref().as_str().into(),
                    metrics: Arc::new(metrics.listener(l.name.get_ref())),
                    exact: HashMap::new(),
                    wildcard: Vec::new(),
                    default: None,
                };
                for name in l.services.get_ref() {
                    let Some(&service) = by_name.get(name.get_ref().as_str()) else {
                        continue;
                    };
                    let hosts = &config
                        .services
                        .iter()
                        .find(|s| s.name.get_ref() == name.get_ref())
                        .expect("service exists")
                        .hosts;
                    if hosts.is_empty() {
                        router.default = Some(service.clone());
                    }
                    for host in hosts {
                        let host = host.get_ref().to_ascii_lowercase();
                        match host.strip_prefix('*') {
                            Some(suffix) => router.wildcard.push((suffix.into(), service.clone())),
                            None => {
                                router.exact.insert(host.into(), service.clone());
                            }
                        }
                    }
                }
                router
                    .wildcard
                    .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
                Some((bind, router))
            })
            .collect();

        Self {
            generation,
            limits: config.limits.clone(),
            routers,
            services,
        }
    }

    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| &*s.name == name)
    }

    /// The host router of the listener configured with `bind`.
    #[inline]
    pub fn router(&self, bind: SocketAddr) -> Option<&Router> {
        self.routers
            .iter()
            .find(|(addr, _)| *addr == bind)
            .map(|(_, r)| r)
    }
}

impl Router {
    /// The service for a request's host (`Host` header or URI authority, port
    /// allowed); the listener's default service when no host matches.
    pub fn route(&self, host: Option<&str>) -> Option<&Arc<Service>> {
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
    /// The pool that serves the next request, by weight.
    #[inline]
    pub fn pick_pool(&self) -> &Pool {
        &self.pools[self.table.pick()]
    }
}

impl Pool {
    /// The endpoint that serves the next request of this pool, round-robin.
    #[inline]
    pub fn pick_endpoint(&self) -> &Endpoint {
        &self.endpoints[self.next.next(self.endpoints.len())]
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
