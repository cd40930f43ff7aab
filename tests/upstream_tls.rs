//! TLS and HTTP/2 from the proxy to a pool's endpoints: a pool whose
//! ingress presents a certificate from a private CA is reached over
//! verified TLS; one whose certificate does not verify is a connect
//! failure (502, counted, logged), never a silent plaintext fallback;
//! health checks speak the pool's TLS; an h2 pool multiplexes many client
//! requests over few upstream connections.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::time::Instant;

use support::config::Service;
use support::tcp::TestCa;
use support::{Client, Config, Proxy};

/// An ingress stand-in: HTTP/1.1 or HTTP/2 (by prior knowledge, or ALPN
/// over TLS), answering `<method> <path> <host> <body>` and counting the
/// connections it accepted and the TLS handshakes it completed.
struct Ingress {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    handshakes: Arc<AtomicU64>,
}

impl Ingress {
    async fn start(tls: Option<(&TestCa, &str)>, h2: bool) -> Self {
        Self::start_with(tls, None, h2).await
    }

    /// An ingress that also asks for a client certificate `clients` signs.
    async fn start_with(tls: Option<(&TestCa, &str)>, clients: Option<&TestCa>, h2: bool) -> Self {
        let acceptor = tls.map(|(ca, name)| {
            let (cert, key) = ca.issue(&[name]);
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap();
            let builder = match clients {
                None => builder.with_no_client_auth(),
                Some(clients) => {
                    let roots = clients.roots();
                    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                        roots, provider,
                    )
                    .build()
                    .unwrap();
                    builder.with_client_cert_verifier(verifier)
                }
            };
            let mut config = builder.with_single_cert(vec![cert], key).unwrap();
            config.alpn_protocols = vec![if h2 {
                b"h2".to_vec()
            } else {
                b"http/1.1".to_vec()
            }];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ingress = Self {
            addr: listener.local_addr().unwrap(),
            connections: Arc::default(),
            handshakes: Arc::default(),
        };
        let (connections, handshakes) = (ingress.connections.clone(), ingress.handshakes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                connections.fetch_add(1, Ordering::Relaxed);
                let acceptor = acceptor.clone();
                let handshakes = handshakes.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(TokioIo::new(stream), h2).await,
                        Some(acceptor) => {
                            let Ok(Ok(tls)) =
                                tokio::time::timeout(WAIT, acceptor.accept(stream)).await
                            else {
                                return;
                            };
                            handshakes.fetch_add(1, Ordering::Relaxed);
                            serve(TokioIo::new(tls), h2).await;
                        }
                    }
                });
            }
        });
        ingress
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }
}

const WAIT: Duration = Duration::from_secs(5);

async fn serve<I>(io: TokioIo<I>, h2: bool)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(|req: Request<Incoming>| async move {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_owned();
        // A body the client broke off is answered as far as it came.
        let body = match req.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let text = format!("{method} {path} {host} {}", String::from_utf8_lossy(&body));
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
    });
    if h2 {
        _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    } else {
        _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    }
}

/// `ca`'s certificate in a file of `dir`, for a pool's `ca_file`.
fn ca_file(dir: &tempfile::TempDir, name: &str, ca: &TestCa) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, ca.pem()).unwrap();
    path
}

/// One service `hello` on listener `web`, with what `service` gives it.
fn config(service: impl FnOnce(Service) -> Service) -> String {
    Config::new()
        .limits(|l| l.header_read_timeout("2s"))
        .listener("web")
        .service("hello", service)
        .toml()
}

fn metric(proxy: &Proxy, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    String::from_utf8(proxy.handle.metrics.render())
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse().unwrap()))
        .unwrap_or(0.0)
}

async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_pool_reaches_its_ingress_over_tls_verified_against_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ingress = Ingress::start(Some((&ca, "ingress.cluster-a")), false).await;
    let ca_path = ca_file(&dir, "ca.pem", &ca);
    let proxy = Proxy::start(&config(|s| {
        s.health_none()
            .pool_with("blue", 100, &[ingress.addr], |p| {
                p.tls("ingress.cluster-a", &ca_path)
            })
    }))
    .await;

    let mut client = Client::connect(proxy.addr()).await;
    for i in 0..3 {
        let reply = client.get("/hello", &[]).await.unwrap();
        assert_eq!(reply.status, 200, "request {i}");
        assert!(reply.text().starts_with("GET /hello "), "{}", reply.text());
    }
    assert_eq!(ingress.connections(), 1, "one connection, kept and reused");
    assert_eq!(ingress.handshakes(), 1, "and it is TLS");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_a_connect_failure_and_502() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let other = TestCa::new();
    let ingress = Ingress::start(Some((&ca, "ingress.cluster-a")), false).await;
    let wrong = ca_file(&dir, "other-ca.pem", &other);
    let proxy = Proxy::start(&config(|s| {
        s.health_none()
            .retries(0)
            .pool_with("blue", 100, &[ingress.addr], |p| {
                p.tls("ingress.cluster-a", &wrong)
            })
    }))
    .await;

    let reply = support::get(proxy.addr(), "hello.example.com", "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(ingress.handshakes(), 0, "no session was established");
    let connect_errors = metric(
        &proxy,
        "cutover_upstream_errors_total",
        "kind=\"connect\",pool=\"blue\",service=\"hello\"",
    );
    assert_eq!(connect_errors, 1.0);
}

#[tokio::test]
async fn health_checks_speak_the_pools_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let other = TestCa::new();
    let good = Ingress::start(Some((&ca, "ingress.cluster-a")), false).await;
    let bad = Ingress::start(Some((&other, "ingress.cluster-a")), false).await;
    let ca_path = ca_file(&dir, "ca.pem", &ca);
    let proxy = Proxy::start(&config(|s| {
        s.health(|h| {
            h.http("/healthz")
                .interval("100ms")
                .timeout("1s")
                .healthy_threshold(1)
                .unhealthy_threshold(1)
        })
        .pool_with("blue", 100, &[good.addr], |p| {
            p.tls("ingress.cluster-a", &ca_path)
        })
        .pool_with("green", 0, &[bad.addr], |p| {
            p.tls("ingress.cluster-a", &ca_path)
        })
    }))
    .await;

    let snapshot = proxy.handle.snapshot();
    let pools = &snapshot.services[0].pools;
    let (blue, green) = (&pools[0].endpoints[0], &pools[1].endpoints[0]);
    until("blue is healthy", || blue.health.healthy()).await;
    until("green has failed a check", || {
        green.health.detail().consecutive_failures > 0
    })
    .await;
    assert!(!green.health.healthy());
    assert!(good.handshakes() >= 1, "the check went over TLS");
    let error = green.health.detail().last_error.unwrap_or_default();
    assert!(
        error.contains("TLS handshake: invalid peer certificate"),
        "{error}"
    );
}

#[tokio::test]
async fn an_h2_pool_multiplexes_http1_clients_over_few_connections() {
    let ingress = Ingress::start(None, true).await;
    let proxy = Proxy::start(&config(|s| {
        s.health_none()
            .pool_with("blue", 100, &[ingress.addr], |p| p.protocol("h2"))
    }))
    .await;
    let addr = proxy.addr();

    let mut client = Client::connect(addr).await;
    let reply = client.get("/hello", &[]).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), format!("GET /hello {addr} "));
    let post = Request::post("/upload")
        .header("host", "hello.example.com")
        .body(support::full("a body"))
        .unwrap();
    let reply = client.send(post).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "POST /upload hello.example.com a body");
    let chunked = support::raw(
        addr,
        b"POST /chunked HTTP/1.1\r\nhost: hello.example.com\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 200"), "{chunked}");
    assert!(
        chunked.ends_with("POST /chunked hello.example.com hello world"),
        "{chunked}"
    );

    let requests = (0..50).map(|i| {
        tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let reply = client.get(&format!("/many/{i}"), &[]).await.unwrap();
            (reply.status, reply.text())
        })
    });
    for (i, request) in requests.enumerate() {
        let (status, text) = request.await.unwrap();
        assert_eq!(status, 200, "request {i}");
        assert!(text.starts_with(&format!("GET /many/{i} ")), "{text}");
    }
    assert!(
        ingress.connections() <= 2,
        "{} upstream connections for 53 requests",
        ingress.connections()
    );
    let open = metric(
        &proxy,
        "cutover_upstream_connections_active",
        "pool=\"blue\",service=\"hello\"",
    );
    assert!(
        open >= 1.0 && open <= ingress.connections() as f64,
        "the shared connection counts in the pool's gauge: {open}"
    );
}

#[tokio::test]
async fn an_h2_pool_over_tls_is_chosen_by_alpn_and_health_checked_in_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ingress = Ingress::start(Some((&ca, "ingress.cluster-a")), true).await;
    let ca_path = ca_file(&dir, "ca.pem", &ca);
    let proxy = Proxy::start(&config(|s| {
        s.health(|h| {
            h.http("/healthz")
                .interval("100ms")
                .timeout("1s")
                .healthy_threshold(1)
                .unhealthy_threshold(1)
        })
        .pool_with("blue", 100, &[ingress.addr], |p| {
            p.tls("ingress.cluster-a", &ca_path).protocol("h2")
        })
    }))
    .await;
    let snapshot = proxy.handle.snapshot();
    let endpoint = &snapshot.services[0].pools[0].endpoints[0];
    until("the endpoint is healthy", || endpoint.health.healthy()).await;

    let mut client = Client::connect(proxy.addr()).await;
    for i in 0..3 {
        let reply = client.get("/over-tls", &[]).await.unwrap();
        assert_eq!(reply.status, 200, "request {i}");
        assert!(
            reply.text().starts_with("GET /over-tls "),
            "{}",
            reply.text()
        );
    }
    assert!(
        ingress.handshakes() >= 2,
        "the check and the requests used TLS"
    );
}

#[tokio::test]
async fn an_http2_client_reaches_an_h2_pool() {
    let ingress = Ingress::start(None, true).await;
    let proxy = Proxy::start(&config(|s| {
        s.health_none()
            .pool_with("blue", 100, &[ingress.addr], |p| p.protocol("h2"))
    }))
    .await;
    let stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let uri = "http://hello.example.com/h2/upload";
    let request = Request::post(uri).body(support::full("from h2")).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"POST /h2/upload hello.example.com from h2");
    assert_eq!(ingress.connections(), 1);
}

#[tokio::test]
async fn a_reload_with_a_new_ca_file_verifies_new_connections_against_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let other = TestCa::new();
    let ingress = Ingress::start(Some((&ca, "ingress.cluster-a")), false).await;
    let ca_path = ca_file(&dir, "ca.pem", &other);
    let text = config(|s| {
        s.health_none()
            .retries(0)
            .pool_with("blue", 100, &[ingress.addr], |p| {
                p.tls("ingress.cluster-a", &ca_path)
            })
    });
    let proxy = Proxy::start(&text).await;
    let reply = support::get(proxy.addr(), "hello.example.com", "/").await;
    assert_eq!(reply.status, 502, "the other CA does not verify it");

    // The operator fixes the bundle: same path, same settings, new bytes.
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let generation = proxy.generation();
    proxy.rewrite(&format!("{text}\n# ca rotated\n"));
    proxy.wait_generation(generation + 1).await;
    let reply = support::get(proxy.addr(), "hello.example.com", "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(ingress.handshakes(), 1);
}

#[tokio::test]
async fn a_pool_presents_its_client_certificate_to_an_ingress_that_asks() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let clients = TestCa::new();
    let ingress =
        Ingress::start_with(Some((&ca, "ingress.cluster-a")), Some(&clients), false).await;
    let ca_path = ca_file(&dir, "ca.pem", &ca);
    let (cert, key) = clients.issue_pem(&["cutover.example.com"]);
    let (cert_path, key_path) = (dir.path().join("client.crt"), dir.path().join("client.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let proxy = Proxy::start(&config(|s| {
        s.health_none()
            .retries(0)
            .pool_with("blue", 100, &[ingress.addr], |p| {
                p.mtls("ingress.cluster-a", &ca_path, &cert_path, &key_path)
            })
    }))
    .await;

    let reply = support::get(proxy.addr(), "hello.example.com", "/mtls").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(ingress.handshakes(), 1);

    // Without the certificate, the ingress refuses the session.
    let without = Proxy::start(&config(|s| {
        s.health_none()
            .retries(0)
            .pool_with("blue", 100, &[ingress.addr], |p| {
                p.tls("ingress.cluster-a", &ca_path)
            })
    }))
    .await;
    let reply = support::get(without.addr(), "hello.example.com", "/").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
}

#[tokio::test]
async fn a_large_upload_crosses_a_tls_pool_whole() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ingress = Ingress::start(Some((&ca, "ingress.cluster-a")), false).await;
    let ca_path = ca_file(&dir, "ca.pem", &ca);
    let proxy = Proxy::start(&config(|s| {
        s.health_none()
            .pool_with("blue", 100, &[ingress.addr], |p| {
                p.tls("ingress.cluster-a", &ca_path)
            })
    }))
    .await;
    let body = "x".repeat(4 << 20);
    let mut client = Client::connect(proxy.addr()).await;
    let post = Request::post("/big")
        .header("host", "hello.example.com")
        .body(support::full(body.clone()))
        .unwrap();
    let reply = tokio::time::timeout(WAIT * 2, client.send(post))
        .await
        .expect("the upload ends")
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), format!("POST /big hello.example.com {body}"));
}

/// An h2c ingress that closes each connection (GOAWAY) after its first
/// request, as one restarting would; returns its address and how many
/// connections it accepted.
async fn one_request_per_connection() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let served = Arc::new(tokio::sync::Notify::new());
                let done = served.clone();
                let service = service_fn(move |_req: Request<Incoming>| {
                    let done = done.clone();
                    async move {
                        done.notify_one();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("once"))))
                    }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = served.notified() => conn.as_mut().graceful_shutdown(),
                }
                _ = conn.await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn an_h2_pool_reconnects_when_its_upstream_closes_the_connection() {
    let (addr, connections) = one_request_per_connection().await;
    let proxy = Proxy::start(&config(|s| {
        s.health_none()
            .pool_with("blue", 100, &[addr], |p| p.protocol("h2"))
    }))
    .await;
    let mut client = Client::connect(proxy.addr()).await;
    for i in 0..5 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        assert_eq!(reply.text(), "once");
    }
    // A request may still ride the closing connection (graceful GOAWAY
    // serves what it already has); the rest needed new ones.
    assert!(connections.load(Ordering::Relaxed) >= 2);
}

/// An h2c ingress that closes each connection after `per_connection`
/// requests with one graceful GOAWAY (NO_ERROR) naming the last stream it
/// processed, as nginx does on a reload: the streams the proxy had already
/// sent beyond it are left unprocessed. Spoken frame by frame, since hyper's
/// server always announces a shutdown in two steps, which leaves none.
/// Each request is answered `200` with no body; returns its address and
/// how many connections it accepted.
async fn goaway_after(per_connection: usize) -> (SocketAddr, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut preface = [0; PREFACE.len()];
                if stream.read_exact(&mut preface).await.is_err() {
                    return;
                }
                if stream.write_all(&frame(4, 0, 0, &[])).await.is_err() {
                    return;
                }
                let mut served = 0;
                let serve = async {
                    loop {
                        let mut head = [0; 9];
                        stream.read_exact(&mut head).await?;
                        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                        let id =
                            u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & !(1 << 31);
                        let mut payload = vec![0; len];
                        stream.read_exact(&mut payload).await?;
                        match head[3] {
                            // SETTINGS, PING: acknowledged.
                            4 if head[4] & 1 == 0 => stream.write_all(&frame(4, 1, 0, &[])).await?,
                            6 if head[4] & 1 == 0 => {
                                stream.write_all(&frame(6, 1, 0, &payload)).await?
                            }
                            // HEADERS: `:status 200` (static index 8), ended.
                            1 if served < per_connection => {
                                served += 1;
                                stream.write_all(&frame(1, 0x5, id, &[0x88])).await?;
                                if served == per_connection {
                                    let mut goaway = id.to_be_bytes().to_vec();
                                    goaway.extend_from_slice(&0u32.to_be_bytes());
                                    stream.write_all(&frame(7, 0, 0, &goaway)).await?;
                                }
                            }
                            // Anything past the GOAWAY is ignored.
                            _ => {}
                        }
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), std::io::Error>(())
                };
                // Read until the proxy closes its side.
                _ = tokio::time::timeout(WAIT, serve).await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn an_h2_pool_resends_what_a_graceful_goaway_left_unprocessed() {
    let (addr, connections) = goaway_after(20).await;
    let proxy = Proxy::start(&config(|s| {
        s.health_none()
            .retries(0)
            .outlier(1, "30s")
            .pool_with("blue", 100, &[addr], |p| p.protocol("h2"))
    }))
    .await;
    let proxy_addr = proxy.addr();
    let stream = tokio::net::TcpStream::connect(proxy_addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    // HTTP/2 and HTTP/1 clients at once, in waves, many more requests
    // than one upstream connection serves.
    for wave in 0..10 {
        let h2 = (0..10).map(|i| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let path = format!("/h2/{wave}/{i}");
                let uri = format!("http://hello.example.com{path}");
                let request = Request::get(uri).body(support::full("")).unwrap();
                let response = sender.send_request(request).await.unwrap();
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned(), path)
            })
        });
        let h1 = (0..5).map(|i| {
            tokio::spawn(async move {
                let path = format!("/h1/{wave}/{i}");
                let mut client = Client::connect(proxy_addr).await;
                let reply = client.get(&path, &[]).await.unwrap();
                (reply.status.as_u16(), reply.text(), path)
            })
        });
        let requests: Vec<_> = h2.chain(h1).collect();
        for request in requests {
            let (status, text, path) = request.await.unwrap();
            assert_eq!(status, 200, "{path}: {text}");
        }
    }
    assert!(
        connections.load(Ordering::Relaxed) >= 5,
        "the upstream went away {} times",
        connections.load(Ordering::Relaxed)
    );
    let resets = metric(
        &proxy,
        "cutover_upstream_errors_total",
        "kind=\"reset\",pool=\"blue\",service=\"hello\"",
    );
    assert_eq!(resets, 0.0, "a graceful GOAWAY is no upstream error");
    let snapshot = proxy.handle.snapshot();
    let endpoint = &snapshot.services[0].pools[0].endpoints[0];
    assert!(endpoint.health.healthy(), "and the endpoint is not ejected");
    assert_eq!(endpoint.health.detail().consecutive_failures, 0);
}

#[tokio::test]
async fn one_failed_h2_connect_counts_once_however_many_requests_waited_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_path = ca_file(&dir, "ca.pem", &ca);
    // Takes connections into its backlog and never answers: each TLS
    // handshake runs to the connect timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(&config(|s| {
        s.health_none()
            .retries(0)
            .connect_timeout("500ms")
            .pool_with("blue", 100, &[silent.local_addr().unwrap()], |p| {
                p.tls("ingress.cluster-a", &ca_path).protocol("h2")
            })
    }))
    .await;
    let addr = proxy.addr();
    let requests: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                client.get(&format!("/{i}"), &[]).await.unwrap().status
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 502);
    }
    let connect_errors = metric(
        &proxy,
        "cutover_upstream_errors_total",
        "kind=\"connect\",pool=\"blue\",service=\"hello\"",
    );
    assert!(
        (1.0..=3.0).contains(&connect_errors),
        "one connect failed, counted {connect_errors} times"
    );
}

#[tokio::test]
async fn an_http2_clients_stalled_body_is_its_own_fault_not_the_h2_pools() {
    let ingress = Ingress::start(None, true).await;
    let proxy = Proxy::start(
        &Config::new()
            .limits(|l| l.body_read_timeout("500ms"))
            .listener("web")
            .service("hello", |s| {
                s.health_none().retries(0).outlier(1, "30s").pool_with(
                    "blue",
                    100,
                    &[ingress.addr],
                    |p| p.protocol("h2"),
                )
            })
            .toml(),
    )
    .await;
    let stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    // A piece of the body, then nothing more.
    let stalled = futures_util::stream::once(async {
        Ok::<_, hyper::Error>(http_body::Frame::data(Bytes::from("a piece")))
    })
    .chain(futures_util::stream::pending());
    let request = Request::post("http://hello.example.com/upload")
        .body(support::BoxBody::new(http_body_util::StreamBody::new(
            stalled,
        )))
        .unwrap();
    let answer = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("the stalled request ends");
    if let Ok(response) = answer {
        assert_eq!(response.status(), 408);
    }
    let resets = metric(
        &proxy,
        "cutover_upstream_errors_total",
        "kind=\"reset\",pool=\"blue\",service=\"hello\"",
    );
    assert_eq!(
        resets, 0.0,
        "the client's stall is not the endpoint's fault"
    );

    // With one failure enough to eject it, the only endpoint still serves.
    let request = Request::post("http://hello.example.com/after")
        .body(support::full("whole"))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn an_h2_pools_stalled_response_body_ends_at_the_request_timeout() {
    // An h2c ingress that sends its head, then nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service_fn(|_req: Request<Incoming>| async {
                let never =
                    futures_util::stream::pending::<Result<http_body::Frame<Bytes>, Infallible>>();
                Ok::<_, Infallible>(Response::new(http_body_util::StreamBody::new(never)))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    let proxy = Proxy::start(&config(|s| {
        s.health_none()
            .request_timeout("1s")
            .pool_with("blue", 100, &[addr], |p| p.protocol("h2"))
    }))
    .await;
    let stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = Request::get("http://hello.example.com/stalls")
        .body(support::full(""))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("the stalled body ends");
    assert!(body.is_err(), "and ends broken off, not complete");
}
