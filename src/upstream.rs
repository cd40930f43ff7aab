//! Upstream connections, per endpoint of each pool (see `pool`), and their
//! reuse across snapshots: a reload that keeps an endpoint keeps its idle
//! connections; one that drops it closes them. Choosing an endpoint is
//! `snapshot`'s and `balance`'s.

mod multiplex;
mod pool;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;

pub(crate) use multiplex::{H2Body, H2Sender};
pub(crate) use pool::{ConnectError, EndpointConns, Migration, RawConn};
pub(crate) use stream::{ReadHalf, Stream, WriteHalf};

use crate::config::UpstreamProtocol;
use crate::tls::client::{EndpointTls, TlsIdentity};

/// What makes two endpoints' connections interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    service: String,
    pool: String,
    address: String,
    connect_timeout: Duration,
    /// TLS settings, files and server name: changing any of them makes new
    /// connections.
    tls: Option<TlsIdentity>,
    protocol: UpstreamProtocol,
}

/// The endpoint connection sets of the current snapshot, kept by the control
/// plane so the next snapshot can reuse them.
#[derive(Default)]
pub struct Upstreams {
    endpoints: HashMap<Key, Arc<EndpointConns>>,
}

/// Where an endpoint's connections go and how they are counted.
pub(crate) struct EndpointSpec<'a> {
    pub service: &'a str,
    pub pool: &'a str,
    pub address: &'a str,
    pub connect_timeout: Duration,
    /// TLS to the endpoint, when its pool has it.
    pub tls: Option<EndpointTls>,
    pub protocol: UpstreamProtocol,
    /// The pool's open-connections gauge.
    pub connections: &'a IntGauge,
}

impl Upstreams {
    /// Closes idle connections that their upstream closed or that aged out,
    /// on every endpoint; the server calls it on a timer.
    pub(crate) fn reap(&self) {
        for conns in self.endpoints.values() {
            conns.reap();
        }
    }

    /// Starts a new generation: hands out connection sets, reusing this
    /// one's, and becomes the new set when finished.
    pub(crate) fn next_generation(&mut self) -> UpstreamsBuilder<'_> {
        UpstreamsBuilder {
            previous: self,
            used: HashMap::new(),
        }
    }
}

pub(crate) struct UpstreamsBuilder<'a> {
    previous: &'a mut Upstreams,
    used: HashMap<Key, Arc<EndpointConns>>,
}

impl UpstreamsBuilder<'_> {
    pub(crate) fn endpoint(&mut self, spec: EndpointSpec<'_>) -> Arc<EndpointConns> {
        let key = Key {
            service: spec.service.to_owned(),
            pool: spec.pool.to_owned(),
            address: spec.address.to_owned(),
            connect_timeout: spec.connect_timeout,
            tls: spec.tls.as_ref().map(EndpointTls::identity),
            protocol: spec.protocol,
        };
        let previous = &self.previous.endpoints;
        self.used
            .entry(key)
            .or_insert_with_key(|key| {
                previous.get(key).cloned().unwrap_or_else(|| {
                    Arc::new(EndpointConns::new(
                        spec.address.into(),
                        spec.connect_timeout,
                        spec.tls,
                        spec.protocol,
                        spec.connections.clone(),
                    ))
                })
            })
            .clone()
    }

    /// Makes the sets handed out the current ones; the idle connections of
    /// the others are closed (busy ones finish their request first).
    pub(crate) fn finish(self) {
        for (key, conns) in &self.previous.endpoints {
            if !self.used.contains_key(key) {
                conns.retire(true);
            }
        }
        self.previous.endpoints = self.used;
    }
}
