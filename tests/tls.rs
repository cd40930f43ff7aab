//! TLS terminated on http listeners: certificates chosen by SNI, ALPN `h2`
//! and `http/1.1`, certificate files swapped under a running proxy, bad
//! handshakes closed and counted, `redirect_https`, HTTPS for the admin API,
//! and GOAWAY with streams in flight. Real rustls handshakes with
//! certificates from a CA made per test, real hyper clients and backends.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use support::tcp::TestCa;
use support::{full, Backend, Config, Proxy};

/// A TLS connection to `addr` for `name`, offering `alpn`, trusting `ca`.
async fn connect(
    addr: SocketAddr,
    ca: &TestCa,
    name: &str,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    try_connect(addr, ca.client_config(), name, alpn)
        .await
        .unwrap()
}

async fn try_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut config = (*config).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    connector.connect(name, tcp).await
}

/// The subject alternative names of the certificate the server showed.
fn served_names(stream: &TlsStream<TcpStream>) -> Vec<String> {
    let (_, conn) = stream.get_ref();
    let leaf = &conn.peer_certificates().unwrap()[0];
    let (_, cert) = X509Certificate::from_der(leaf).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| {
            n.to_string()
                .trim_start_matches("DNSName(")
                .trim_end_matches(')')
                .to_owned()
        })
        .collect()
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn http1(stream: TlsStream<TcpStream>) -> H1 {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get1(sender: &mut H1, host: &str, path: &str) -> (StatusCode, http::HeaderMap, String) {
    sender.ready().await.unwrap();
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A proxy whose listener `web` terminates TLS with `pairs`, in front of
/// `backend`.
async fn tls_proxy(backend: &Backend, pairs: &[(&Path, &Path)], extra: &str) -> Proxy {
    let config = Config::new()
        .limits(|l| l.header_read_timeout("2s"))
        .admin()
        .listener("web")
        .tls(pairs, extra)
        .service("hello", |s| {
            s.health_none().pool("blue", 100, &[backend.addr])
        });
    Proxy::with_admin(&config.toml()).await
}

async fn metrics(proxy: &Proxy) -> String {
    let reply = support::get(proxy.admin.unwrap(), "admin", "/metrics").await;
    reply.text()
}

fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

#[tokio::test]
async fn terminates_tls_to_a_plain_backend_and_says_https_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.issue_files(dir.path(), "web", &["hello.test"]);
    let backend = Backend::start("blue").await;
    let proxy = tls_proxy(&backend, &[(&cert, &key)], "").await;

    let stream = connect(proxy.addr(), &ca, "hello.test", &[b"http/1.1"]).await;
    let mut sender = http1(stream).await;
    let (status, headers, body) = get1(&mut sender, "hello.test", "/x").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "blue");
    assert_eq!(headers["x-pool"], "blue");
    let seen = backend.last_seen();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");

    let metrics = metrics(&proxy).await;
    assert_eq!(
        sample(
            &metrics,
            r#"cutover_tls_handshakes_total{listener="web",result="success"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"cutover_tls_sessions_total{alpn="http/1.1",listener="web",version="1.3"}"#
        ),
        1.0
    );
    assert!(metrics.contains("cutover_tls_cert_expiry_timestamp_seconds{listener=\"web\""));
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_the_first_pair_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (a_cert, a_key) = ca.issue_files(dir.path(), "a", &["a.test"]);
    let (b_cert, b_key) = ca.issue_files(dir.path(), "b", &["b.test", "*.b.test"]);
    let backend = Backend::start("blue").await;
    let proxy = tls_proxy(&backend, &[(&a_cert, &a_key), (&b_cert, &b_key)], "").await;

    let a = connect(proxy.addr(), &ca, "a.test", &[]).await;
    assert_eq!(served_names(&a), ["a.test"]);
    let b = connect(proxy.addr(), &ca, "b.test", &[]).await;
    assert_eq!(served_names(&b), ["b.test", "*.b.test"]);
    let wildcard = connect(proxy.addr(), &ca, "www.b.test", &[]).await;
    assert_eq!(served_names(&wildcard), ["b.test", "*.b.test"]);
    // A name no certificate covers gets the first pair (and so fails
    // verification for that name).
    let unknown = try_connect(proxy.addr(), ca.client_config(), "c.test", &[]).await;
    assert!(unknown.is_err(), "c.test must not verify");
    // Served over the chosen certificate.
    let mut sender = http1(b).await;
    assert_eq!(get1(&mut sender, "b.test", "/").await.0, StatusCode::OK);
}

#[tokio::test]
async fn alpn_h2_and_http11_are_both_served() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.issue_files(dir.path(), "web", &["hello.test"]);
    let backend = Backend::start("blue").await;
    let proxy = tls_proxy(&backend, &[(&cert, &key)], "").await;

    let h2 = connect(proxy.addr(), &ca, "hello.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("https://hello.test/h2")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"blue");
    }
    assert_eq!(backend.last_seen().headers["x-forwarded-proto"], "https");

    let h1 = connect(proxy.addr(), &ca, "hello.test", &[b"http/1.1"]).await;
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut sender = http1(h1).await;
    assert_eq!(
        get1(&mut sender, "hello.test", "/h1").await.0,
        StatusCode::OK
    );

    let metrics = metrics(&proxy).await;
    assert_eq!(
        sample(
            &metrics,
            r#"cutover_tls_sessions_total{alpn="h2",listener="web",version="1.3"}"#
        ),
        1.0
    );
}

/// Writes a new pair over `cert` and `key` the way a Kubernetes Secret
/// volume does: the files are symlinks into a data directory, and the
/// `..data` link is swapped in one rename.
fn swap_secret(dir: &Path, generation: u32, cert_pem: &[u8], key_pem: &[u8]) {
    let data = dir.join(format!("..2026_{generation}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("tls.crt"), cert_pem).unwrap();
    std::fs::write(data.join("tls.key"), key_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(file), &link).unwrap();
        }
    }
}

#[tokio::test]
async fn a_swapped_secret_is_picked_up_and_open_connections_keep_going() {
    let scratch = tempfile::tempdir().unwrap();
    let secret = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (old_cert, old_key) = ca.issue_files(scratch.path(), "old", &["hello.test"]);
    let (new_cert, new_key) = ca.issue_files(scratch.path(), "new", &["hello.test", "new.test"]);
    let read = |p: &Path| std::fs::read(p).unwrap();
    swap_secret(secret.path(), 1, &read(&old_cert), &read(&old_key));
    let backend = Backend::start("blue").await;
    let (cert, key) = (secret.path().join("tls.crt"), secret.path().join("tls.key"));
    let proxy = tls_proxy(&backend, &[(&cert, &key)], "").await;

    let kept = connect(proxy.addr(), &ca, "hello.test", &[b"http/1.1"]).await;
    assert_eq!(served_names(&kept), ["hello.test"]);
    let mut kept = http1(kept).await;
    assert_eq!(get1(&mut kept, "hello.test", "/").await.0, StatusCode::OK);

    let generation = proxy.generation();
    swap_secret(secret.path(), 2, &read(&new_cert), &read(&new_key));
    proxy.wait_generation(generation + 1).await;

    let fresh = connect(proxy.addr(), &ca, "hello.test", &[]).await;
    assert_eq!(served_names(&fresh), ["hello.test", "new.test"]);
    // The connection opened before the swap still serves requests.
    for _ in 0..3 {
        assert_eq!(get1(&mut kept, "hello.test", "/").await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_broken_new_key_is_refused_and_the_old_pair_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.issue_files(dir.path(), "web", &["hello.test"]);
    let (_, other_key) = ca.issue_files(dir.path(), "other", &["other.test"]);
    let backend = Backend::start("blue").await;
    let proxy = tls_proxy(&backend, &[(&cert, &key)], "").await;
    let generation = proxy.generation();

    // A key that is not the certificate's.
    std::fs::copy(&other_key, &key).unwrap();
    proxy.wait_failed_reloads(1).await;
    let error = proxy.handle.status().last_reload_error.unwrap();
    assert!(
        error.contains("web.key") && error.contains("KeyMismatch"),
        "{error}"
    );
    // Then no key at all.
    std::fs::write(&key, "not a key\n").unwrap();
    proxy.wait_failed_reloads(2).await;
    let error = proxy.handle.status().last_reload_error.unwrap();
    assert!(error.contains("no PEM private key"), "{error}");
    assert_eq!(proxy.generation(), generation);

    let stream = connect(proxy.addr(), &ca, "hello.test", &[]).await;
    assert_eq!(served_names(&stream), ["hello.test"]);
    let mut sender = http1(stream).await;
    assert_eq!(get1(&mut sender, "hello.test", "/").await.0, StatusCode::OK);
    let metrics = metrics(&proxy).await;
    assert!(
        sample(
            &metrics,
            r#"cutover_config_reloads_total{result="failure"}"#
        ) >= 2.0
    );
}

#[tokio::test]
async fn garbage_stalls_and_weak_versions_are_closed_counted_and_free_their_slot() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.issue_files(dir.path(), "web", &["hello.test"]);
    let backend = Backend::start("blue").await;
    let config = Config::new()
        .limits(|l| l.max_connections(1).handshake_timeout("1s"))
        .admin()
        .listener("web")
        .tls(&[(&cert, &key)], r#"min_version = "1.3""#)
        .service("hello", |s| {
            s.health_none().pool("blue", 100, &[backend.addr])
        });
    let proxy = Proxy::with_admin(&config.toml()).await;
    let addr = proxy.addr();

    // Not a ClientHello: closed at once.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: hello.test\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), garbage.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "garbage must be closed");

    // Silent after connecting: closed at the handshake timeout.
    let started = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut [0u8; 16])).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");

    // TLS 1.2 only, against min_version 1.3: refused.
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(
            rustls::pki_types::CertificateDer::pem_file_iter(ca.write_ca(dir.path()))
                .unwrap()
                .map(Result::unwrap),
        );
        roots
    })
    .with_no_client_auth();
    let weak = try_connect(addr, Arc::new(tls12), "hello.test", &[]).await;
    assert!(weak.is_err());

    // With max_connections = 1, the slot came back each time.
    let stream = connect(addr, &ca, "hello.test", &[]).await;
    let mut sender = http1(stream).await;
    assert_eq!(get1(&mut sender, "hello.test", "/").await.0, StatusCode::OK);
    let metrics = metrics(&proxy).await;
    assert_eq!(
        sample(
            &metrics,
            r#"cutover_tls_handshakes_total{listener="web",result="failure"}"#
        ),
        3.0
    );
}

#[tokio::test]
async fn redirect_https_answers_308_with_the_https_url() {
    let backend = Backend::start("blue").await;
    let config = Config::new()
        .listener("web")
        .redirect_https()
        .service("hello", |s| {
            s.health_none().pool("blue", 100, &[backend.addr])
        });
    let proxy = Proxy::start(&config.toml()).await;
    let reply = support::get(proxy.addr(), "shop.example.com:8080", "/cart?id=7").await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        reply.headers["location"],
        "https://shop.example.com/cart?id=7"
    );
    assert_eq!(backend.hits(), 0);
    // No host to send the client to: 400, not a redirect to nowhere.
    let raw = support::raw(
        proxy.addr(),
        b"GET / HTTP/1.0\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
}

#[tokio::test]
async fn the_admin_api_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.issue_files(dir.path(), "admin", &["localhost"]);
    let backend = Backend::start("blue").await;
    let config = Config::new()
        .admin()
        .admin_tls(&cert, &key)
        .listener("web")
        .service("hello", |s| {
            s.health_none().pool("blue", 100, &[backend.addr])
        });
    let proxy = Proxy::with_admin(&config.toml()).await;
    let admin = proxy.admin.unwrap();
    let stream = connect(admin, &ca, "localhost", &[b"http/1.1"]).await;
    let mut sender = http1(stream).await;
    let (status, _, body) = get1(&mut sender, "localhost", "/v1/status").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"hello\""), "{body}");
    // A renewed pair, written over the files, serves new handshakes.
    let generation = proxy.generation();
    let (new_cert, new_key) = ca.issue_files(dir.path(), "renewed", &["localhost", "admin.test"]);
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    proxy.wait_generation(generation + 1).await;
    let renewed = connect(admin, &ca, "localhost", &[b"http/1.1"]).await;
    assert_eq!(served_names(&renewed), ["localhost", "admin.test"]);
    // Plain HTTP to it gets no answer.
    let raw = support::raw(
        admin,
        b"GET /v1/status HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(!raw.contains("200 OK"), "{raw}");
}

#[tokio::test]
async fn shutdown_sends_goaway_and_streams_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.issue_files(dir.path(), "web", &["hello.test"]);
    let backend = Backend::with_handler(
        "blue",
        Arc::new(|_req| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                http::Response::new(full("slow"))
            })
        }),
    )
    .await;
    let proxy = tls_proxy(&backend, &[(&cert, &key)], "").await;
    let h2 = connect(proxy.addr(), &ca, "hello.test", &[b"h2"]).await;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let in_flight: Vec<_> = (0..4)
        .map(|i| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let req = Request::get(format!("https://hello.test/{i}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((status, body.to_bytes()))
            })
        })
        .collect();
    // Let the requests reach the backend, then stop the proxy.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.handle.shutdown();
    for request in in_flight {
        let (status, body) = request.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"slow");
    }
    // The connection ends with GOAWAY: hyper's connection future finishes
    // cleanly rather than with an error.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("connection closed after GOAWAY")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
}

#[tokio::test]
async fn pipelined_requests_in_one_tls_record_are_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.issue_files(dir.path(), "web", &["hello.test"]);
    let backend = Backend::start("blue").await;
    let proxy = tls_proxy(&backend, &[(&cert, &key)], "").await;
    let mut stream = connect(proxy.addr(), &ca, "hello.test", &[b"http/1.1"]).await;
    // Three requests in one write: rustls decrypts them together, and the
    // second and third must not wait for more bytes from the socket.
    let request = "GET / HTTP/1.1\r\nHost: hello.test\r\n\r\n";
    stream
        .write_all(request.repeat(3).as_bytes())
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("HTTP/1.1 200").count() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("three answers within 5s")
            .unwrap();
        assert!(n > 0, "closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(backend.hits(), 3);
}
