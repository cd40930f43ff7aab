//! Upstream HTTP clients, one per endpoint, each with its own keep-alive
//! connection pool. Clients outlive snapshots: a reload that keeps an endpoint
//! keeps its client and its warm connections. This module owns client creation
//! and reuse; choosing an endpoint is `snapshot`'s and `balance`'s.

use std::collections::HashMap;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How long an unused upstream connection is kept open for reuse.
const UPSTREAM_IDLE: Duration = Duration::from_secs(50);

pub type UpstreamClient = Client<HttpConnector, Incoming>;

/// What makes two endpoints' clients interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    address: String,
    connect_timeout: Duration,
}

/// The clients of the current snapshot, kept by the control plane so the next
/// snapshot can reuse them.
#[derive(Default)]
pub struct Upstreams {
    clients: HashMap<ClientKey, UpstreamClient>,
}

impl Upstreams {
    /// Starts a new generation: returns a builder that hands out clients, reusing
    /// this set's, and becomes the new set when finished.
    pub fn next_generation(&mut self) -> UpstreamsBuilder<'_> {
        UpstreamsBuilder {
            previous: self,
            used: HashMap::new(),
        }
    }
}

pub struct UpstreamsBuilder<'a> {
    previous: &'a mut Upstreams,
    used: HashMap<ClientKey, UpstreamClient>,
}

impl UpstreamsBuilder<'_> {
    pub fn client(&mut self, address: &str, connect_timeout: Duration) -> UpstreamClient {
        let key = ClientKey {
            address: address.to_owned(),
            connect_timeout,
        };
        if let Some(client) = self.used.get(&key) {
            return client.clone();
        }
        let client = self
            .previous
            .clients
            .get(&key)
            .cloned()
            .unwrap_or_else(|| new_client(connect_timeout));
        self.used.insert(key, client.clone());
        client
    }

    /// Makes the clients handed out the current set; the others are dropped,
    /// which closes their idle connections.
    pub fn finish(self) {
        self.previous.clients = self.used;
    }
}

fn new_client(connect_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(UPSTREAM_IDLE)
        .build(connector)
}
