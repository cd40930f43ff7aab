//! Upstream HTTP clients, one per endpoint of each pool, each with its own
//! keep-alive connection pool whose open connections are counted in the pool's
//! `cutover_upstream_connections_active`. Clients outlive snapshots: a reload
//! that keeps an endpoint keeps its client and its warm connections. This
//! module owns client creation and reuse; choosing an endpoint is `snapshot`'s
//! and `balance`'s.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::net::TcpStream;

/// How long an unused upstream connection is kept open for reuse.
const UPSTREAM_IDLE: Duration = Duration::from_secs(50);

pub type UpstreamClient = Client<CountingConnector, Incoming>;

/// What makes two endpoints' clients interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    service: String,
    pool: String,
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

/// Where a client's connections go and how they are counted.
pub struct ClientSpec<'a> {
    pub service: &'a str,
    pub pool: &'a str,
    pub address: &'a str,
    pub connect_timeout: Duration,
    pub connections: &'a IntGauge,
}

impl UpstreamsBuilder<'_> {
    pub fn client(&mut self, spec: ClientSpec<'_>) -> UpstreamClient {
        let key = ClientKey {
            service: spec.service.to_owned(),
            pool: spec.pool.to_owned(),
            address: spec.address.to_owned(),
            connect_timeout: spec.connect_timeout,
        };
        if let Some(client) = self.used.get(&key) {
            return client.clone();
        }
        let client = self
            .previous
            .clients
            .get(&key)
            .cloned()
            .unwrap_or_else(|| new_client(spec.connect_timeout, spec.connections.clone()));
        self.used.insert(key, client.clone());
        client
    }

    /// Makes the clients handed out the current set; the others are dropped,
    /// which closes their idle connections.
    pub fn finish(self) {
        self.previous.clients = self.used;
    }
}

fn new_client(connect_timeout: Duration, connections: IntGauge) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(UPSTREAM_IDLE)
        .build(CountingConnector { http, connections })
}

/// An `HttpConnector` whose connections count themselves open in a gauge for
/// as long as they live.
#[derive(Clone)]
pub struct CountingConnector {
    http: HttpConnector,
    connections: IntGauge,
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<Counted, Box<dyn std::error::Error + Send + Sync>>> + Send>>;

impl tower_service::Service<Uri> for CountingConnector {
    type Response = Counted;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let gauge = self.connections.clone();
        Box::pin(async move {
            let io = connecting.await?;
            gauge.inc();
            Ok(Counted { io, gauge })
        })
    }
}

/// An upstream connection that holds one count in its pool's gauge.
pub struct Counted {
    io: TokioIo<TcpStream>,
    gauge: IntGauge,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
