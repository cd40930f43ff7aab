//! Layer 4 end to end: tcp listeners split connections by weight, relay
//! every byte both ways (half-closes included), retry and eject dead
//! endpoints, fail over, drain and migrate long-lived connections after a
//! switch, route TLS by the ClientHello's server name without terminating
//! it, read and write PROXY headers, refuse bad first flights, and survive
//! reloads and shutdown, all on real loopback sockets.
//!
//! Tests that wait on a drain deadline or a migrate window run on tokio's
//! paused clock (`start_paused`), as tests/drain.rs does: proxy, admin API
//! and backends share the test's runtime, and the clock jumps to the next
//! timer only when nothing can run.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use support::tcp::{
    client_hello, closed, dead_addr, handshake_payload, parse_proxy, proxy_v1, proxy_v2,
    read_answer, read_to_close, reframe, tls_backend, tls_backend_name, tls_connect, Greeted,
    ProxyHeader, TcpBackend, TestCa, WAIT,
};
use support::{admin_json as admin, Backend, Config, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A client address a front load balancer reports in its PROXY headers.
const CLIENT: &str = "203.0.113.7:5555";
/// The address that client connected to, as the front load balancer saw it.
const FRONT: &str = "192.0.2.1:443";

fn client() -> SocketAddr {
    CLIENT.parse().unwrap()
}

fn front() -> SocketAddr {
    FRONT.parse().unwrap()
}

/// A tcp listener `edge` in front of service `hello`: pool blue on `blue`,
/// pool green on `green`, no active health checks, and what `service` adds.
fn tcp_blue_green(
    blue: &[SocketAddr],
    green: &[SocketAddr],
    wb: i64,
    wg: i64,
    service: impl FnOnce(support::config::Service) -> support::config::Service,
) -> Config {
    Config::new().tcp_listener("edge").service("hello", |s| {
        service(s.health_none())
            .pool("blue", wb, blue)
            .pool("green", wg, green)
    })
}

fn edge(proxy: &Proxy) -> SocketAddr {
    proxy.handle.listener_addr("edge").expect("listener edge")
}

fn metrics(proxy: &Proxy) -> String {
    String::from_utf8(proxy.handle.metrics.render()).unwrap()
}

/// One sample of the exposition, `name{labels}`; 0 for a series not
/// created yet (a counter nothing has counted).
fn sample(proxy: &Proxy, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    metrics(proxy)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse().unwrap()))
        .unwrap_or(0.0)
}

fn refused(proxy: &Proxy, listener: &str, reason: &str) -> f64 {
    sample(
        proxy,
        "cutover_connections_refused_total",
        &format!("listener=\"{listener}\",reason=\"{reason}\""),
    )
}

fn tcp_connections(proxy: &Proxy, service: &str, pool: &str) -> f64 {
    sample(
        proxy,
        "cutover_tcp_connections_total",
        &format!("listener=\"edge\",pool=\"{pool}\",service=\"{service}\""),
    )
}

fn drain_closed(proxy: &Proxy, pool: &str) -> f64 {
    sample(
        proxy,
        "cutover_drain_closed_total",
        &format!("pool=\"{pool}\",service=\"hello\""),
    )
}

async fn set_weights(proxy: &Proxy, blue: u32, green: u32) {
    let body = format!(r#"{{"blue": {blue}, "green": {green}}}"#);
    admin(proxy, Method::PUT, "/v1/services/hello/weights", &body).await;
}

/// The status of pool `index` of service `hello`.
async fn pool_status(proxy: &Proxy, index: usize) -> serde_json::Value {
    let status = admin(proxy, Method::GET, "/v1/status", "").await;
    status["services"][0]["pools"][index].clone()
}

/// Waits, bounded, for a refusal to be counted.
async fn until_refused(proxy: &Proxy, listener: &str, reasons: &[&str], n: f64) {
    let counted = || {
        reasons
            .iter()
            .map(|r| refused(proxy, listener, r))
            .sum::<f64>()
    };
    let deadline = Instant::now() + WAIT;
    while counted() < n {
        assert!(
            Instant::now() < deadline,
            "no refusal {reasons:?} counted on {listener}:\n{}",
            metrics(proxy)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counted(), n, "{reasons:?}");
}

#[test]
fn the_test_proxy_header_parser_reads_back_what_the_test_writes() {
    for (bytes, version) in [
        (proxy_v1(client(), front()), 1),
        (proxy_v2(client(), front()), 2),
    ] {
        let mut with_data = bytes.clone();
        with_data.extend_from_slice(b"data");
        let (header, rest) = parse_proxy(&with_data).unwrap();
        assert_eq!(header.version, version);
        assert_eq!(header.source, client());
        assert_eq!(header.destination, front());
        assert_eq!(rest, b"data");
    }
    let v6 = proxy_v2(
        "[2001:db8::7]:5555".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    assert_eq!(parse_proxy(&v6).unwrap().0.version, 2);
    assert!(parse_proxy(b"PROXY TCP4 203.0.113.7 192.0.2.1 05555 443\r\n").is_err());
    assert!(parse_proxy(b"PROXY TCP6 203.0.113.7 192.0.2.1 5555 443\r\n").is_err());
    assert!(parse_proxy(b"GET / HTTP/1.1\r\n").is_err());
}

// ---- Weights, bytes and half-closes ----

#[tokio::test]
async fn connections_split_80_20_by_weight_and_each_pool_counts_its_own() {
    let blue = TcpBackend::named("blue").await;
    let green = TcpBackend::named("green").await;
    let config = tcp_blue_green(&[blue.addr], &[green.addr], 80, 20, |s| s);
    let proxy = Proxy::start(&config.toml()).await;
    let (mut to_blue, mut to_green) = (0, 0);
    for _ in 0..100 {
        match read_answer(edge(&proxy)).await.unwrap().as_str() {
            "blue" => to_blue += 1,
            "green" => to_green += 1,
            other => panic!("answered {other:?}"),
        }
    }
    assert_eq!((to_blue, to_green), (80, 20), "smooth weighted round robin");
    assert_eq!((blue.accepted(), green.accepted()), (80, 20));
    assert_eq!(tcp_connections(&proxy, "hello", "blue"), 80.0);
    assert_eq!(tcp_connections(&proxy, "hello", "green"), 20.0);
}

#[tokio::test]
async fn five_mib_come_back_byte_for_byte_and_are_counted_both_ways() {
    const SIZE: usize = 5 * 1024 * 1024;
    let blue = TcpBackend::echo("blue").await;
    let config = tcp_blue_green(&[blue.addr], &[blue.addr], 100, 0, |s| s);
    let proxy = Proxy::start(&config.toml()).await;
    let payload: Arc<Vec<u8>> = Arc::new(
        std::iter::repeat_with(|| fastrand::u8(..))
            .take(SIZE)
            .collect(),
    );
    let stream = TcpStream::connect(edge(&proxy)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut echoed = Vec::with_capacity(SIZE);
    tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut echoed))
        .await
        .expect("the echo within 30s")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(echoed.len(), SIZE);
    assert!(echoed == *payload, "the echo differs from what was sent");
    let bytes = |direction: &str| {
        sample(
            &proxy,
            "cutover_tcp_bytes_total",
            &format!("direction=\"{direction}\",listener=\"edge\""),
        )
    };
    assert_eq!(bytes("in"), SIZE as f64);
    assert_eq!(bytes("out"), SIZE as f64);
}

#[tokio::test]
async fn a_client_that_closes_its_side_first_still_gets_the_whole_reply() {
    // Reads to the client's FIN, then answers with what it got, and closes.
    let blue = TcpBackend::start(
        "blue",
        support::tcp::serve(|mut stream, _| async move {
            let mut got = Vec::new();
            if stream.read_to_end(&mut got).await.is_err() {
                return;
            }
            let reply = format!("got {} bytes: {}", got.len(), String::from_utf8_lossy(&got));
            _ = stream.write_all(reply.repeat(1000).as_bytes()).await;
        }),
    )
    .await;
    let config = tcp_blue_green(&[blue.addr], &[blue.addr], 100, 0, |s| s);
    let proxy = Proxy::start(&config.toml()).await;
    let mut stream = TcpStream::connect(edge(&proxy)).await.unwrap();
    stream.write_all(b"question").await.unwrap();
    stream.shutdown().await.unwrap();
    let reply = read_to_close(&mut stream).await.unwrap();
    assert_eq!(reply, "got 8 bytes: question".repeat(1000));
}

#[tokio::test]
async fn a_backend_that_closes_its_side_first_still_receives_the_client() {
    let (report, mut received) = tokio::sync::mpsc::unbounded_channel();
    let blue = TcpBackend::start(
        "blue",
        support::tcp::serve(move |mut stream, _| {
            let report = report.clone();
            async move {
                if stream.write_all(b"done talking").await.is_err() {
                    return;
                }
                _ = stream.shutdown().await;
                let mut got = Vec::new();
                _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut got)).await;
                _ = report.send(got);
            }
        }),
    )
    .await;
    let config = tcp_blue_green(&[blue.addr], &[blue.addr], 100, 0, |s| s);
    let proxy = Proxy::start(&config.toml()).await;
    let stream = TcpStream::connect(edge(&proxy)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    assert_eq!(read_to_close(&mut read).await.unwrap(), "done talking");
    // The backend's side is closed; the client's still carries data.
    let late = b"still sending after your FIN".repeat(500);
    write.write_all(&late).await.unwrap();
    write.shutdown().await.unwrap();
    let got = tokio::time::timeout(WAIT, received.recv())
        .await
        .expect("the backend reports within the limit")
        .unwrap();
    assert!(got == late, "the backend got {} bytes", got.len());
}

// ---- Failures and failover ----

#[tokio::test]
async fn a_dead_endpoint_is_retried_around_then_ejected() {
    let alive = TcpBackend::named("blue").await;
    let dead = dead_addr();
    let green = TcpBackend::named("green").await;
    let config = tcp_blue_green(&[dead, alive.addr], &[green.addr], 100, 0, |s| {
        s.outlier(3, "60s")
    })
    .admin();
    let proxy = Proxy::with_admin(&config.toml()).await;
    let connect_errors = || {
        sample(
            &proxy,
            "cutover_upstream_errors_total",
            "kind=\"connect\",pool=\"blue\",service=\"hello\"",
        )
    };
    for i in 0..20 {
        let answer = read_answer(edge(&proxy)).await;
        assert_eq!(answer.unwrap(), "blue", "connection {i}");
    }
    assert_eq!(connect_errors(), 3.0, "ejected after 3 failures in a row");
    assert_eq!(
        sample(
            &proxy,
            "cutover_retries_total",
            "pool=\"blue\",service=\"hello\""
        ),
        3.0
    );
    let blue = pool_status(&proxy, 0).await;
    let endpoint = &blue["endpoints"][0];
    assert_eq!(endpoint["address"], dead.to_string());
    assert!(
        endpoint["ejected_for_seconds"]
            .as_f64()
            .is_some_and(|s| s > 0.0),
        "{endpoint}"
    );
    for i in 0..20 {
        let answer = read_answer(edge(&proxy)).await;
        assert_eq!(answer.unwrap(), "blue", "connection {i} after the ejection");
    }
    assert_eq!(connect_errors(), 3.0, "an ejected endpoint is not tried");
    assert_eq!(alive.accepted(), 40);
    assert_eq!(tcp_connections(&proxy, "hello", "blue"), 40.0);
}

#[tokio::test]
async fn with_every_blue_endpoint_dead_connections_fail_over_to_green_at_weight_0() {
    let green = TcpBackend::named("green").await;
    let config = tcp_blue_green(&[dead_addr(), dead_addr()], &[green.addr], 100, 0, |s| s);
    let proxy = Proxy::start(&config.toml()).await;
    for i in 0..5 {
        let answer = read_answer(edge(&proxy)).await;
        assert_eq!(answer.unwrap(), "green", "connection {i}");
    }
    assert_eq!(tcp_connections(&proxy, "hello", "green"), 5.0);
    assert!(
        sample(
            &proxy,
            "cutover_upstream_errors_total",
            "kind=\"connect\",pool=\"blue\",service=\"hello\""
        ) >= 2.0
    );
}

// ---- Switches, drains and migration ----

#[tokio::test(start_paused = true)]
async fn a_connection_on_blue_keeps_flowing_after_the_switch_until_drain_timeout() {
    let blue = TcpBackend::greeting("blue").await;
    let green = TcpBackend::greeting("green").await;
    let drain_timeout = Duration::from_secs(1);
    let config = tcp_blue_green(&[blue.addr], &[green.addr], 100, 0, |s| {
        s.drain_timeout("1s")
    })
    .admin();
    let proxy = Proxy::with_admin(&config.toml()).await;
    let mut old = Greeted::connect(edge(&proxy)).await.unwrap();
    assert_eq!(old.backend, "blue");
    old.echo("before").await.unwrap();
    let switched = Instant::now();
    set_weights(&proxy, 0, 100).await;
    let new = Greeted::connect(edge(&proxy)).await.unwrap();
    assert_eq!(new.backend, "green", "a new connection after the switch");
    old.echo("after the switch").await.unwrap();
    let blue_now = pool_status(&proxy, 0).await;
    assert_eq!(
        blue_now["in_flight"], 1,
        "the connection is work: {blue_now}"
    );
    assert_eq!(blue_now["safe_to_remove"], false);
    // Echoes until drain_timeout, then is closed.
    let step = Duration::from_millis(50);
    let closed_in_time = tokio::time::timeout(Duration::from_secs(5), async {
        while old.echo("ping").await.is_ok() {
            tokio::time::sleep(step).await;
        }
    })
    .await;
    assert!(closed_in_time.is_ok(), "the connection outlived the drain");
    let closed_after = switched.elapsed();
    assert!(
        closed_after >= drain_timeout && closed_after <= drain_timeout + step * 2,
        "closed {closed_after:?} after the switch, not at drain_timeout"
    );
    assert_eq!(drain_closed(&proxy, "blue"), 1.0);
    assert_eq!(drain_closed(&proxy, "green"), 0.0);
    assert_eq!(tcp_connections(&proxy, "hello", "blue"), 1.0);
    drop(new);
    // Safe to remove once blue held nothing for a drain window, which is
    // read off the wall clock: from here time runs for real.
    tokio::time::resume();
    let deadline = Instant::now() + WAIT;
    loop {
        let blue_now = pool_status(&proxy, 0).await;
        if blue_now["safe_to_remove"] == true {
            assert_eq!(blue_now["in_flight"], 0);
            assert_eq!(blue_now["upstream_connections_active"], 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never safe to remove: {blue_now}"
        );
        tokio::time::sleep(step).await;
    }
}

#[tokio::test(start_paused = true)]
async fn migrate_closes_blue_connections_one_at_a_time_over_the_window() {
    let blue = TcpBackend::greeting("blue").await;
    let green = TcpBackend::greeting("green").await;
    let config = tcp_blue_green(&[blue.addr], &[green.addr], 100, 0, |s| {
        s.drain_timeout("60s").migrate("8s")
    })
    .admin();
    let proxy = Proxy::with_admin(&config.toml()).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let conn = Greeted::connect(edge(&proxy)).await.unwrap();
        assert_eq!(conn.backend, "blue");
        open.push(conn);
    }
    let switched = Instant::now();
    set_weights(&proxy, 0, 100).await;
    let closes: Vec<_> = open
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                let mut buf = [0; 64];
                let closed = tokio::time::timeout(Duration::from_secs(30), async {
                    while let Ok(1..) = conn.stream.read(&mut buf).await {}
                })
                .await;
                assert!(closed.is_ok(), "a blue connection outlived the window");
                switched.elapsed()
            })
        })
        .collect();
    assert_eq!(
        Greeted::connect(edge(&proxy)).await.unwrap().backend,
        "green",
        "new connections go to green meanwhile"
    );
    let mut at = Vec::new();
    for close in closes {
        at.push(close.await.unwrap());
    }
    at.sort();
    let secs: Vec<f64> = at.iter().map(Duration::as_secs_f64).collect();
    assert!(secs[0] >= 1.5, "the first closed too early: {secs:?}");
    assert!(secs[3] <= 8.5, "the last closed after the window: {secs:?}");
    for gap in secs.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            (1.5..=2.5).contains(&gap),
            "closes not evenly spread: {secs:?}"
        );
    }
    assert_eq!(drain_closed(&proxy, "blue"), 4.0);
}

#[tokio::test]
async fn a_switch_under_load_fails_no_connection() {
    let blue = TcpBackend::named("blue").await;
    let green = TcpBackend::named("green").await;
    let config = tcp_blue_green(&[blue.addr], &[green.addr], 100, 0, |s| s).admin();
    let proxy = Arc::new(Proxy::with_admin(&config.toml()).await);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (addr, stop, done) = (edge(&proxy), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match read_answer(addr).await {
                        Ok(name) if name == "blue" || name == "green" => {}
                        other => failures.push(format!("{other:?}")),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();
    let until_done = |n: u64| {
        let done = done.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(20), async {
                while done.load(Ordering::Relaxed) < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the clients make progress");
        }
    };
    for flip in 1..=6u64 {
        until_done(flip * 100).await;
        let (b, g) = if flip % 2 == 1 { (0, 100) } else { (100, 0) };
        set_weights(&proxy, b, g).await;
    }
    until_done(700).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.unwrap());
    }
    assert!(failures.is_empty(), "failed connections: {failures:?}");
    let served =
        tcp_connections(&proxy, "hello", "blue") + tcp_connections(&proxy, "hello", "green");
    assert_eq!(served, done.load(Ordering::Relaxed) as f64);
    assert!(blue.accepted() > 0 && green.accepted() > 0);
}

// ---- Reload and shutdown ----

#[tokio::test]
async fn a_reload_sends_new_connections_to_the_new_endpoint_and_keeps_open_ones_and_the_socket() {
    let old = TcpBackend::greeting("old").await;
    let new = TcpBackend::greeting("new").await;
    let config = |backend: &TcpBackend| {
        Config::new()
            .tcp_listener("edge")
            .service("hello", |s| {
                s.health_none().pool("blue", 100, &[backend.addr])
            })
            .toml()
    };
    let proxy = Proxy::start(&config(&old)).await;
    let addr = edge(&proxy);
    let mut open = Greeted::connect(addr).await.unwrap();
    assert_eq!(open.backend, "old");
    let generation = proxy.generation();
    proxy.rewrite(&config(&new));
    proxy.wait_generation(generation + 1).await;
    assert_eq!(edge(&proxy), addr, "the listener is not bound again");
    assert_eq!(Greeted::connect(addr).await.unwrap().backend, "new");
    open.echo("still on the old endpoint").await.unwrap();
    assert_eq!(old.accepted(), 1);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_an_open_connection_finish() {
    let blue = TcpBackend::greeting("blue").await;
    let config = tcp_blue_green(&[blue.addr], &[blue.addr], 100, 0, |s| {
        s.drain_timeout("30s")
    });
    let proxy = Proxy::start(&config.toml()).await;
    let addr = edge(&proxy);
    let mut open = Greeted::connect(addr).await.unwrap();
    proxy.handle.shutdown();
    let deadline = Instant::now() + WAIT;
    while Greeted::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting after the shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    open.echo("still flowing during the shutdown")
        .await
        .unwrap();
    open.stream.shutdown().await.unwrap();
    assert!(closed(&mut open.stream).await);
    let deadline = Instant::now() + WAIT;
    while blue.open() > 0 {
        assert!(Instant::now() < deadline, "the upstream side stayed open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- SNI ----

/// Services `a` (a.example.com) and `b` (b.example.com and its
/// subdomains) behind a tcp listener with sni, each on a TLS backend of its
/// own, and with `default` a service without hosts.
async fn sni_proxy(ca: &TestCa, default: bool) -> (Proxy, Vec<TcpBackend>) {
    let a = tls_backend("a", ca, &["a.example.com"]).await;
    let b = tls_backend("b", ca, &["b.example.com", "*.b.example.com"]).await;
    let other = tls_backend("default", ca, &["other.example.org"]).await;
    let mut config = Config::new()
        .tcp_listener("edge")
        .sni()
        .service("a", |s| {
            s.hosts(["a.example.com"])
                .health_none()
                .pool("main", 100, &[a.addr])
        })
        .service("b", |s| {
            s.hosts(["*.b.example.com", "b.example.com"])
                .health_none()
                .pool("main", 100, &[b.addr])
        });
    if default {
        config = config.service("default", |s| {
            s.health_none().pool("main", 100, &[other.addr])
        });
    }
    (Proxy::start(&config.toml()).await, vec![a, b, other])
}

#[tokio::test]
async fn sni_routes_tls_by_server_name_to_backends_that_terminate_it() {
    let ca = TestCa::new();
    let (proxy, backends) = sni_proxy(&ca, true).await;
    let addr = edge(&proxy);
    for (server_name, backend) in [
        ("a.example.com", "a"),
        ("b.example.com", "b"),
        ("x.b.example.com", "b"),
        ("other.example.org", "default"),
    ] {
        let answered = tls_backend_name(addr, server_name, ca.client_config()).await;
        assert_eq!(answered.unwrap(), backend, "{server_name}");
    }
    assert_eq!(tcp_connections(&proxy, "a", "main"), 1.0);
    assert_eq!(tcp_connections(&proxy, "b", "main"), 2.0);
    assert_eq!(tcp_connections(&proxy, "default", "main"), 1.0);
    let accepted: Vec<u64> = backends.iter().map(TcpBackend::accepted).collect();
    assert_eq!(accepted, [1, 2, 1]);
}

#[tokio::test]
async fn sni_refuses_an_unknown_name_when_no_service_is_the_default() {
    let ca = TestCa::new();
    let (proxy, backends) = sni_proxy(&ca, false).await;
    let addr = edge(&proxy);
    let unknown = tls_connect(addr, "other.example.org", ca.client_config()).await;
    assert!(unknown.is_err(), "an unknown name was served");
    until_refused(&proxy, "edge", &["no_service"], 1.0).await;
    let known = tls_backend_name(addr, "a.example.com", ca.client_config()).await;
    assert_eq!(known.unwrap(), "a");
    assert_eq!(backends[2].accepted(), 0);
}

/// Services `a` and `b` (by server name) on recording backends.
async fn recording_sni_proxy() -> (
    Proxy,
    [(TcpBackend, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>); 2],
) {
    let a = TcpBackend::recorder("a").await;
    let b = TcpBackend::recorder("b").await;
    let config = Config::new()
        .tcp_listener("edge")
        .sni()
        .service("a", |s| {
            s.hosts(["a.example.com"])
                .health_none()
                .pool("main", 100, &[a.0.addr])
        })
        .service("b", |s| {
            s.hosts(["b.example.com"])
                .health_none()
                .pool("main", 100, &[b.0.addr])
        });
    (Proxy::start(&config.toml()).await, [a, b])
}

/// Sends `bytes` through the proxy in pieces of `piece` bytes with a pause
/// after each, closes the sending side, and returns the backend's answer.
async fn send_in_pieces(addr: SocketAddr, bytes: &[u8], piece: usize) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for chunk in bytes.chunks(piece) {
        stream.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stream.shutdown().await.unwrap();
    read_to_close(&mut stream).await.unwrap()
}

#[tokio::test]
async fn a_client_hello_sent_a_byte_at_a_time_is_routed_and_passed_on_unchanged() {
    let ca = TestCa::new();
    let (proxy, [a, mut b]) = recording_sni_proxy().await;
    let hello = client_hello(ca.client_config(), "b.example.com");
    assert_eq!(send_in_pieces(edge(&proxy), &hello, 1).await, "b");
    let got = tokio::time::timeout(WAIT, b.1.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        got == hello,
        "the backend got {} of {} bytes, or others",
        got.len(),
        hello.len()
    );
    assert_eq!(a.0.accepted(), 0);
}

#[tokio::test]
async fn a_client_hello_split_across_small_records_is_routed_and_passed_on_unchanged() {
    let ca = TestCa::new();
    let (proxy, [mut a, b]) = recording_sni_proxy().await;
    let hello = client_hello(ca.client_config(), "a.example.com");
    let (payload, _) = handshake_payload(&hello);
    let name_at = payload
        .windows(13)
        .position(|w| w == b"a.example.com")
        .expect("the server name in the hello");
    for framed in [
        reframe(&hello, 50, 50),
        // A record boundary in the middle of the server name.
        reframe(&hello, name_at + 6, 50),
    ] {
        assert!(framed.len() >= hello.len() + 5, "more than one record");
        // Pieces that end mid-record and mid-header.
        assert_eq!(send_in_pieces(edge(&proxy), &framed, 37).await, "a");
        let got = tokio::time::timeout(WAIT, a.1.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            got == framed,
            "the backend got {} of {} bytes, or others",
            got.len(),
            framed.len()
        );
    }
    assert_eq!(b.0.accepted(), 0);
}

#[tokio::test]
async fn bad_first_flights_are_refused_and_leave_a_good_connection_alone() {
    let ca = TestCa::new();
    let site = tls_backend("site", &ca, &["site.example.com"]).await;
    let config = Config::new()
        .limits(|l| l.header_read_timeout("1s"))
        .tcp_listener("edge")
        .sni()
        .service("site", |s| {
            s.hosts(["site.example.com"])
                .health_none()
                .pool("main", 100, &[site.addr])
        });
    let proxy = Proxy::start(&config.toml()).await;
    let addr = edge(&proxy);
    let (mut good, name) = tls_connect(addr, "site.example.com", ca.client_config())
        .await
        .unwrap();
    assert_eq!(name, "site");
    let hello = client_hello(ca.client_config(), "site.example.com");

    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(closed(&mut garbage).await, "plain HTTP was not closed");
    until_refused(&proxy, "edge", &["not_tls"], 1.0).await;

    let mut truncated = TcpStream::connect(addr).await.unwrap();
    truncated
        .write_all(&hello[..hello.len() / 2])
        .await
        .unwrap();
    truncated.shutdown().await.unwrap();
    assert!(closed(&mut truncated).await);
    until_refused(&proxy, "edge", &["truncated"], 1.0).await;

    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(&hello[..3]).await.unwrap();
    assert!(closed(&mut slow).await, "a stalled hello was kept");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before header_read_timeout"
    );
    until_refused(&proxy, "edge", &["too_slow"], 1.0).await;

    // A record claiming more than the 16 KiB a record may hold.
    let mut large = TcpStream::connect(addr).await.unwrap();
    let mut oversized = vec![0x16, 0x03, 0x01, 0x40, 0x01, 0x01, 0x00, 0x3f, 0xfd];
    oversized.resize(20 * 1024, 0x41);
    // The proxy may close before taking it all.
    _ = large.write_all(&oversized).await;
    assert!(closed(&mut large).await);
    until_refused(&proxy, "edge", &["bad_hello", "too_large"], 1.0).await;

    good.write_all(b"still here").await.unwrap();
    let mut back = [0; 10];
    tokio::time::timeout(WAIT, good.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"still here");
    assert_eq!(site.accepted(), 1, "nothing refused reached the backend");
}

// ---- PROXY protocol ----

/// A PROXY header `header` in from a trusted source, one of version
/// `send` out to the backend: the backend sees the client's address.
async fn proxy_header_passes_through(
    header: fn(SocketAddr, SocketAddr) -> Vec<u8>,
    send: &'static str,
    version: u8,
) {
    let (backend, mut received) = TcpBackend::proxy_reader("blue").await;
    let config = Config::new()
        .tcp_listener("edge")
        .accept_proxy(["127.0.0.0/8"])
        .service("hello", |s| {
            s.health_none()
                .pool_with("blue", 100, &[backend.addr], |p| p.send_proxy(send))
        });
    let proxy = Proxy::start(&config.toml()).await;
    let mut stream = TcpStream::connect(edge(&proxy)).await.unwrap();
    let mut first = header(client(), front());
    first.extend_from_slice(b"payload");
    stream.write_all(&first).await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut stream).await.unwrap(), "blue");
    let got = tokio::time::timeout(WAIT, received.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.header,
        Ok(ProxyHeader {
            version,
            source: client(),
            destination: front(),
        })
    );
    assert_eq!(
        String::from_utf8_lossy(&got.payload),
        "payload",
        "the client's header is not passed on as data"
    );
}

#[tokio::test]
async fn a_v1_header_from_a_trusted_source_reaches_the_backend_as_v2() {
    proxy_header_passes_through(proxy_v1, "v2", 2).await;
}

#[tokio::test]
async fn a_v2_header_from_a_trusted_source_reaches_the_backend_as_v1() {
    proxy_header_passes_through(proxy_v2, "v1", 1).await;
}

#[tokio::test]
async fn a_trusted_source_without_a_proxy_header_is_refused() {
    let blue = TcpBackend::echo("blue").await;
    let config = Config::new()
        .tcp_listener("edge")
        .accept_proxy(["127.0.0.0/8"])
        .service("hello", |s| s.health_none().pool("blue", 100, &[blue.addr]));
    let proxy = Proxy::start(&config.toml()).await;
    let mut stream = TcpStream::connect(edge(&proxy)).await.unwrap();
    stream
        .write_all(b"hello without a header\r\n")
        .await
        .unwrap();
    assert!(closed(&mut stream).await);
    until_refused(&proxy, "edge", &["proxy_header"], 1.0).await;
    assert_eq!(blue.accepted(), 0);
}

#[tokio::test]
async fn an_http_listener_takes_the_client_address_from_a_proxy_header() {
    let blue = Backend::start("blue").await;
    let config = Config::new()
        .listener("web")
        .accept_proxy(["127.0.0.0/8"])
        .service("hello", |s| s.health_none().pool("blue", 100, &[blue.addr]));
    let proxy = Proxy::start(&config.toml()).await;
    let mut request = proxy_v1(client(), front());
    request.extend_from_slice(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let reply = support::raw(proxy.addr(), &request, WAIT).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = blue.last_seen();
    let forwarded = seen.headers["x-forwarded-for"].to_str().unwrap();
    assert_eq!(forwarded, "203.0.113.7");
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_source_is_refused() {
    let (blue, mut received) = TcpBackend::recorder("blue").await;
    let config = Config::new()
        .tcp_listener("edge")
        .accept_proxy(["10.0.0.0/8"])
        .service("hello", |s| s.health_none().pool("blue", 100, &[blue.addr]));
    let proxy = Proxy::start(&config.toml()).await;
    let mut spoofed = TcpStream::connect(edge(&proxy)).await.unwrap();
    let mut first = proxy_v1(client(), front());
    first.extend_from_slice(b"data");
    spoofed.write_all(&first).await.unwrap();
    assert!(closed(&mut spoofed).await);
    until_refused(&proxy, "edge", &["proxy_header"], 1.0).await;
    // The upstream connection may have opened; it got nothing.
    if let Ok(Some(got)) = tokio::time::timeout(WAIT, received.recv()).await {
        assert!(
            got.is_empty(),
            "the backend got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    // A connection without a header is relayed as usual.
    let mut plain = TcpStream::connect(edge(&proxy)).await.unwrap();
    plain.write_all(b"data").await.unwrap();
    plain.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut plain).await.unwrap(), "blue");
    let got = tokio::time::timeout(WAIT, received.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"data");
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_source_is_refused_when_sent_a_byte_first() {
    let (blue, mut received) = TcpBackend::recorder("blue").await;
    let config = Config::new()
        .tcp_listener("edge")
        .accept_proxy(["10.0.0.0/8"])
        .service("hello", |s| s.health_none().pool("blue", 100, &[blue.addr]));
    let proxy = Proxy::start(&config.toml()).await;
    let mut spoofed = TcpStream::connect(edge(&proxy)).await.unwrap();
    spoofed.set_nodelay(true).unwrap();
    let mut header = proxy_v1(client(), front());
    header.extend_from_slice(b"data");
    // One byte, read by the proxy on its own, then the rest.
    spoofed.write_all(&header[..1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    _ = spoofed.write_all(&header[1..]).await;
    assert!(closed(&mut spoofed).await);
    until_refused(&proxy, "edge", &["proxy_header"], 1.0).await;
    if let Ok(Some(got)) = tokio::time::timeout(WAIT, received.recv()).await {
        assert!(
            got.is_empty(),
            "the backend got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    // Data that starts like a header and then differs is relayed whole.
    let mut plain = TcpStream::connect(edge(&proxy)).await.unwrap();
    plain.set_nodelay(true).unwrap();
    plain.write_all(b"PR").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    plain.write_all(b"ESS START").await.unwrap();
    plain.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut plain).await.unwrap(), "blue");
    let got = tokio::time::timeout(WAIT, received.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"PRESS START");
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_source_is_refused_on_an_sni_listener() {
    let ca = TestCa::new();
    let site = tls_backend("site", &ca, &["site.example.com"]).await;
    let config = Config::new()
        .tcp_listener("edge")
        .sni()
        .accept_proxy(["10.0.0.0/8"])
        .service("site", |s| {
            s.hosts(["site.example.com"])
                .health_none()
                .pool("main", 100, &[site.addr])
        });
    let proxy = Proxy::start(&config.toml()).await;
    let mut spoofed = TcpStream::connect(edge(&proxy)).await.unwrap();
    let mut first = proxy_v1(client(), front());
    first.extend_from_slice(&client_hello(ca.client_config(), "site.example.com"));
    spoofed.write_all(&first).await.unwrap();
    assert!(closed(&mut spoofed).await);
    until_refused(&proxy, "edge", &["proxy_header"], 1.0).await;
    assert_eq!(site.accepted(), 0);
    let name = tls_backend_name(edge(&proxy), "site.example.com", ca.client_config()).await;
    assert_eq!(name.unwrap(), "site");
}

// ---- Validation ----

const L4_PROBLEMS: &str = r#"# Layer-4 keys where they cannot apply.
[[listener]]
name = "edge"
bind = "127.0.0.1:7000"
protocol = "tcp"
services = ["a", "b"]          # two services and no sni

[[listener]]
name = "web"
bind = "127.0.0.1:7001"
services = ["site"]
sni = true
accept_proxy = ["10.0.0.0/8", "10.0.0.0/33"]

[[service]]
name = "a"
  [[service.pool]]
  name = "main"
  weight = 100
  endpoints = ["127.0.0.1:9000"]

[[service]]
name = "b"
  [[service.pool]]
  name = "main"
  weight = 100
  endpoints = ["127.0.0.1:9001"]

[[service]]
name = "site"                  # an http service
migrate = "5m"
  [[service.pool]]
  name = "main"
  weight = 100
  endpoints = ["127.0.0.1:9002"]
  send_proxy = "v2"
"#;

/// `file:line:col` of `value` on the only line of `text` holding `marker`.
fn position(text: &str, marker: &str, value: &str) -> String {
    let mut lines = text.lines().enumerate().filter(|(_, l)| l.contains(marker));
    let (index, line) = lines
        .next()
        .unwrap_or_else(|| panic!("no line has {marker:?}"));
    assert!(lines.next().is_none(), "more than one line has {marker:?}");
    let byte = line
        .find(value)
        .unwrap_or_else(|| panic!("{value:?} not on {line:?}"));
    format!(
        "cutover.toml:{}:{}",
        index + 1,
        line[..byte].chars().count() + 1
    )
}

#[test]
fn layer_4_keys_where_they_cannot_apply_are_refused_with_their_position() {
    let error = cutover::config::parse(Path::new("cutover.toml"), L4_PROBLEMS.to_owned())
        .expect_err("an invalid file");
    let lines = error.lines();
    let text = L4_PROBLEMS;
    let expected: [(String, &[&str]); 5] = [
        (
            position(text, "two services and no sni", "[\"a\""),
            &["\"edge\"", "2 services", "sni"],
        ),
        (
            position(text, "sni = true", "true"),
            &["\"web\"", "sni", "tcp"],
        ),
        (
            position(text, "accept_proxy =", "\"10.0.0.0/33\""),
            &["accept_proxy", "10.0.0.0/33", "CIDR"],
        ),
        (
            position(text, "an http service", "\"site\""),
            &["\"site\"", "migrate", "no tcp listener"],
        ),
        (
            position(text, "send_proxy", "\"v2\""),
            &["send_proxy", "\"site\"", "http listener"],
        ),
    ];
    for (at, words) in &expected {
        let prefix = format!("{at}: ");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&prefix) && words.iter().all(|w| l.contains(w))),
            "no problem at {at} mentioning {words:?} in:\n{}",
            lines.join("\n")
        );
    }
    assert_eq!(
        lines.len(),
        expected.len(),
        "unexpected problems:\n{}",
        lines.join("\n")
    );
}
