//! Test harness: real hyper backends on ephemeral loopback ports, a proxy
//! started from a configuration file in a temporary directory (written by
//! the `config` builder), and keep-alive HTTP/1.1 clients. Nothing here
//! fakes a socket.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cutover::server::{Handle, Options, Server};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub mod arrival;
pub mod config;
pub mod raw_backend;
mod raw_client;
pub mod tcp;

pub use config::Config;
#[allow(unused_imports)] // as with dead code: each binary uses a different part
pub use raw_client::{RawClient, RawResponse, RAW_LIMIT};

/// A request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
}

/// A backend standing in for one cluster: answers every request with its name
/// in the body and an `x-pool` header, and records what it saw.
#[derive(Clone)]
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicU64>,
    /// Connections open right now.
    pub open: Arc<AtomicU64>,
    handler: Handler,
    /// Cancelled to kill the backend: stop accepting and drop every connection.
    alive: Arc<Mutex<CancellationToken>>,
}

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> futures_util::future::BoxFuture<'static, Response<BoxBody>>
        + Send
        + Sync,
>;
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

pub fn full(text: impl Into<Bytes>) -> BoxBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

impl Backend {
    /// A backend that answers `name` to everything.
    pub async fn start(name: &'static str) -> Self {
        Self::with_handler(
            name,
            Arc::new(move |_req| Box::pin(async move { Response::new(full(name)) })),
        )
        .await
    }

    /// A backend whose responses come from `handler` (it still records and
    /// adds `x-pool`).
    pub async fn with_handler(name: &'static str, handler: Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Self {
            name,
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            seen: Arc::default(),
            connections: Arc::default(),
            open: Arc::default(),
            handler,
            alive: Arc::new(Mutex::new(CancellationToken::new())),
        };
        backend.serve(listener);
        backend
    }

    fn serve(&self, listener: TcpListener) {
        let b = self.clone();
        let alive = self.alive.lock().unwrap().clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    () = alive.cancelled() => return,
                };
                b.connections.fetch_add(1, Ordering::Relaxed);
                b.open.fetch_add(1, Ordering::Relaxed);
                let b = b.clone();
                let alive = alive.clone();
                let open = b.open.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let b = b.clone();
                        async move {
                            b.hits.fetch_add(1, Ordering::Relaxed);
                            b.seen.lock().unwrap().push(Seen {
                                method: req.method().clone(),
                                uri: req.uri().clone(),
                                headers: req.headers().clone(),
                            });
                            let mut resp = (b.handler)(req).await;
                            resp.headers_mut()
                                .insert("x-pool", http::HeaderValue::from_static(b.name));
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        // Killed: the connection is dropped, its socket closed.
                        () = alive.cancelled() => {}
                    }
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
    }

    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }

    /// Stops accepting and closes every open connection, as a process that
    /// died would.
    pub fn kill(&self) {
        self.alive.lock().unwrap().cancel();
    }

    /// Starts serving again on the same address after `kill`.
    pub async fn revive(&self) {
        *self.alive.lock().unwrap() = CancellationToken::new();
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

/// Answers a WebSocket upgrade request with a `101`, then echoes every
/// text message on the upgraded connection until the client closes.
pub fn websocket_echo(req: &mut Request<Incoming>) -> Response<BoxBody> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let io = TokioIo::new(upgraded);
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() && ws.send(msg).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(&key))
        .body(full(""))
        .unwrap()
}

/// A proxy running in this process from a file in a temporary directory, with
/// the file watcher on, as `cutover run` has it.
pub struct Proxy {
    pub handle: Handle,
    pub path: PathBuf,
    /// The admin API's address, when the test started it.
    pub admin: Option<SocketAddr>,
    _dir: tempfile::TempDir,
    stop_watching: CancellationToken,
}

impl Proxy {
    pub async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cutover.toml");
        std::fs::write(&path, config).unwrap();
        Self::start_at(dir, path).await
    }

    pub async fn start_at(dir: tempfile::TempDir, path: PathBuf) -> Self {
        Self::try_start_at(dir, path, false).await.unwrap()
    }

    /// Starts the proxy and its admin API (the config must set
    /// `[admin] listen`, normally to 127.0.0.1:0).
    pub async fn with_admin(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cutover.toml");
        std::fs::write(&path, config).unwrap();
        Self::try_start_at(dir, path, true).await.unwrap()
    }

    /// Starts from an existing file; the error is what start-up refused.
    pub async fn try_start_at(
        dir: tempfile::TempDir,
        path: PathBuf,
        admin: bool,
    ) -> Result<Self, String> {
        let (server, handle) = Server::start(&path, Options::current())
            .await
            .map_err(|e| e.to_string())?;
        let stop_watching = CancellationToken::new();
        let admin = if admin {
            let config = server.admin_config().clone();
            Some(
                cutover::start_admin(&handle, &config, server.admin_tls(), stop_watching.clone())
                    .await
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        let watcher = cutover::reload::FileWatcher::new(&path, handle.clone()).unwrap();
        tokio::spawn(watcher.run(stop_watching.clone()));
        tokio::spawn(server.run());
        Ok(Self {
            handle,
            path,
            admin,
            _dir: dir,
            stop_watching,
        })
    }

    /// Address of the listener named `web`.
    pub fn addr(&self) -> SocketAddr {
        self.handle.listener_addr("web").expect("listener web")
    }

    pub fn generation(&self) -> u64 {
        self.handle.status().generation()
    }

    /// Rewrites the configuration file as an editor does: write a temporary
    /// file beside it, then rename it over the original.
    pub fn rewrite(&self, config: &str) {
        let tmp = self.path.with_extension("toml.tmp");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    /// Waits (bounded) until the running generation reaches `generation`.
    pub async fn wait_generation(&self, generation: u64) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.handle.wait_for(|s| s.generation() >= generation),
        )
        .await
        .expect("reload within 10s");
    }

    /// Waits (bounded) until `n` reloads have failed.
    pub async fn wait_failed_reloads(&self, n: u64) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.handle.wait_for(|s| s.reloads_failed >= n),
        )
        .await
        .expect("failed reload within 10s");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop_watching.cancel();
        self.handle.shutdown();
    }
}

/// A config with one listener `web` on an ephemeral port and one default
/// service `hello` with a blue and a green pool, one endpoint each, and a
/// 2 s `header_read_timeout`.
pub fn blue_green(blue: &Backend, green: &Backend, wb: i64, wg: i64) -> Config {
    blue_green_with(blue, green, wb, wg, |s| s)
}

/// `blue_green`, with what `service` adds to the `hello` service.
pub fn blue_green_with(
    blue: &Backend,
    green: &Backend,
    wb: i64,
    wg: i64,
    service: impl FnOnce(config::Service) -> config::Service,
) -> Config {
    Config::new()
        .limits(|l| l.header_read_timeout("2s"))
        .listener("web")
        .service("hello", |s| {
            service(s)
                .pool("blue", wb, &[blue.addr])
                .pool("green", wg, &[green.addr])
        })
}

/// One client keep-alive connection (HTTP/1.1) to `addr`.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<BoxBody>,
    addr: SocketAddr,
}

/// What a test reads off a response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn pool(&self) -> &str {
        self.headers
            .get("x-pool")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { sender, addr }
    }

    /// Sends a GET for `path` with `headers`; errors are returned, not
    /// panicked on, so load tests can count them.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        let mut req = Request::get(path)
            .header("host", self.addr.to_string())
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        self.send(req).await
    }

    pub async fn send(&mut self, req: Request<BoxBody>) -> Result<Reply, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    let mut client = Client::connect(addr).await;
    client.get(path, &[("host", host)]).await.unwrap()
}

/// Sends raw bytes on a fresh connection and reads until the proxy closes it
/// (bounded by `limit`).
pub async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One call to the admin API of `proxy` (started with it), with extra
/// request `headers`, whatever its status.
pub async fn admin_call(
    proxy: &Proxy,
    method: http::Method,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut client = Client::connect(proxy.admin.expect("admin API")).await;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    client
        .send(req.body(full(body.to_owned())).unwrap())
        .await
        .unwrap()
}

/// Calls the admin API of `proxy` (started with it), expects success and
/// returns the JSON body.
pub async fn admin_json(
    proxy: &Proxy,
    method: http::Method,
    path: &str,
    body: &str,
) -> serde_json::Value {
    let mut client = Client::connect(proxy.admin.expect("admin API")).await;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(full(body.to_owned()))
        .unwrap();
    let reply = client.send(req).await.unwrap();
    assert!(
        reply.status.is_success(),
        "{path}: {} {}",
        reply.status,
        reply.text()
    );
    serde_json::from_slice(&reply.body).unwrap()
}
