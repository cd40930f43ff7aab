//! The proxy's behaviour over every way a request can arrive
//! (`support::arrival`): a keep-alive GET, a chunked upload, an `Expect:
//! 100-continue` upload, HTTP/1.0 with and without keep-alive, a WebSocket
//! upgrade, and h2c. For each, table-driven: routing by Host with the pool's
//! Host rewrite and an origin-form target upstream; forwarding headers set
//! and hop-by-hop ones dropped; a refusing endpoint retried on the next one,
//! bodies included (nothing was sent); 502 when no endpoint can be reached
//! and 503 when none is healthy, each a proper reply of the client's
//! protocol; 504 after `request_timeout`; 404 for an unknown Host; and a
//! weight switch that lets a request in flight on blue finish while new
//! ones go to green. A WebSocket is a tunnel once open, so it is checked
//! for routing, headers, the 404 and an echo round trip only. Upstreams are
//! real hyper backends speaking HTTP/1.1 (h2c clients included: cutover
//! speaks HTTP/1.1 upstream), each recording what it saw. Every case runs
//! on its own proxy; a table names every case that failed.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::arrival::{Arrival, Conn, LIMIT, PING};
use support::config::Service;
use support::{full, Backend, Config, Proxy};
use tokio::sync::Notify;

/// How long `/slow` takes to answer: past every `request_timeout` here.
const SLOW: Duration = Duration::from_secs(5);
/// `request_timeout` of the 504 cases.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------
// Upstreams

/// A backend and the gate its `/held` requests wait at.
struct Upstream {
    backend: Backend,
    gate: Arc<Notify>,
}

/// A backend serving `/ws` (a WebSocket echo), `/slow` (answers after
/// `SLOW`), `/held` (reads the body, then waits for the gate, at most
/// `LIMIT`), and elsewhere an echo: "METHOD target body", with hop-by-hop
/// fields of its own that must not reach the client.
async fn upstream(name: &'static str) -> Upstream {
    let gate = Arc::new(Notify::new());
    let held = gate.clone();
    let backend = Backend::with_handler(
        name,
        Arc::new(move |mut req: Request<Incoming>| {
            let held = held.clone();
            Box::pin(async move {
                let path = req.uri().path().to_owned();
                if path == "/ws" {
                    return support::websocket_echo(&mut req);
                }
                if path == "/slow" {
                    tokio::time::sleep(SLOW).await;
                    return Response::new(full("late"));
                }
                let method = req.method().clone();
                let target = req.uri().to_string();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                if path == "/held" {
                    _ = tokio::time::timeout(LIMIT, held.notified()).await;
                }
                let text = format!("{method} {target} {}", String::from_utf8_lossy(&body));
                Response::builder()
                    .header("connection", "x-internal")
                    .header("x-internal", "secret")
                    .header("keep-alive", "timeout=5")
                    .header("x-kept", "yes")
                    .body(full(text))
                    .unwrap()
            })
        }),
    )
    .await;
    Upstream { backend, gate }
}

/// A loopback address with nothing listening: bound, then let go.
fn refusing() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One listener `web` serving one default service `hello`, shaped by `service`.
fn one_service(service: impl FnOnce(Service) -> Service) -> String {
    Config::new()
        .limits(|l| l.header_read_timeout("2s"))
        .listener("web")
        .service("hello", service)
        .toml()
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The value of the metric sample starting with `prefix` (name and labels).
fn sample(proxy: &Proxy, prefix: &str) -> Option<f64> {
    let text = String::from_utf8(proxy.handle.metrics.render()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// The interim responses a relayed request gets: the `100` an `Expect`
/// upload waits for, once; nothing for the others.
fn expected_interim(kind: Arrival) -> Vec<u16> {
    if kind == Arrival::Expect {
        vec![100]
    } else {
        Vec::new()
    }
}

// ---------------------------------------------------------------------------
// The table runner

type Case = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `case` for each of `kinds`, one at a time and each on its own
/// proxy, and fails naming every kind that failed.
async fn each_arrival(behaviour: &str, kinds: &[Arrival], case: impl Fn(Arrival) -> Case) {
    let mut failed = Vec::new();
    for &kind in kinds {
        let outcome = tokio::spawn(case(kind)).await;
        let verdict = match outcome {
            Ok(()) => "pass".to_owned(),
            Err(e) => {
                let why = panic_text(e);
                failed.push(format!("  [{kind}] {why}"));
                "FAIL".to_owned()
            }
        };
        eprintln!("{behaviour} | {kind} | {verdict}");
    }
    assert!(
        failed.is_empty(),
        "{behaviour}: {} of {} arrivals failed:\n{}",
        failed.len(),
        kinds.len(),
        failed.join("\n")
    );
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".to_owned()),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------
// (1) Routing by Host, Host rewrite, origin-form upstream

#[tokio::test]
async fn each_request_is_routed_by_its_host_with_the_pools_host_rewrite() {
    each_arrival("routing", &Arrival::ALL, |kind| Box::pin(routing(kind))).await;
}

async fn routing(kind: Arrival) {
    let shop = upstream("shop").await;
    let api = upstream("api").await;
    let config = Config::new()
        .limits(|l| l.header_read_timeout("2s"))
        .listener("web")
        .service("shop", |s| {
            s.hosts(["shop.example"]).health_none().pool_with(
                "blue",
                100,
                &[shop.backend.addr],
                |p| p.host("shop.internal"),
            )
        })
        .service("api", |s| {
            s.hosts(["api.example"])
                .health_none()
                .pool("blue", 100, &[api.backend.addr])
        });
    let proxy = Proxy::start(&config.toml()).await;
    let target = if kind == Arrival::WebSocket {
        "/ws"
    } else {
        "/items?id=7"
    };

    let mut conn = Conn::open(kind, proxy.addr()).await;
    let answer = conn.request("shop.example", target, &[]).await;
    if kind == Arrival::WebSocket {
        assert_eq!(answer.status, 101, "{answer:?}");
        assert_eq!(answer.text(), PING, "the echo");
    } else {
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.text(), kind.echo(target), "{answer:?}");
        assert_eq!(answer.interim, expected_interim(kind), "{answer:?}");
    }
    assert_eq!(answer.pool(), "shop", "{answer:?}");
    assert_eq!(answer.header("via"), Some("1.1 cutover"), "{answer:?}");
    let seen = shop.backend.last_seen();
    assert_eq!(seen.method.as_str(), kind.method());
    assert_eq!(seen.headers["host"], "shop.internal", "the pool's rewrite");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example");
    assert!(
        seen.uri.scheme().is_none() && seen.uri.authority().is_none(),
        "not origin-form upstream: {}",
        seen.uri
    );
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), target);
    assert_eq!(api.backend.hits(), 0);

    // The next request on the same connection is routed by its own Host,
    // and without a rewrite the client's goes through.
    if kind.keeps_alive() {
        let answer = conn.request("api.example", "/v1?x=2", &[]).await;
        assert_eq!((answer.status, answer.pool()), (200, "api"), "{answer:?}");
        assert_eq!(answer.text(), kind.echo("/v1?x=2"));
        let seen = api.backend.last_seen();
        assert_eq!(seen.headers["host"], "api.example");
        assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/v1?x=2");
    }
    if let Conn::H1 { raw, .. } = &mut conn {
        if kind == Arrival::Http10 {
            assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
            raw.assert_closed("after an HTTP/1.0 response").await;
        }
    }
    if kind == Arrival::Http10KeepAlive {
        assert_eq!(
            answer.header("connection"),
            Some("keep-alive"),
            "{answer:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// (2) Forwarding headers set, hop-by-hop headers dropped

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_ones_dropped() {
    each_arrival("forwarding headers", &Arrival::ALL, |kind| {
        Box::pin(forwarding(kind))
    })
    .await;
}

async fn forwarding(kind: Arrival) {
    let blue = upstream("blue").await;
    let proxy = Proxy::start(&one_service(|s| {
        s.health_none().pool("blue", 100, &[blue.backend.addr])
    }))
    .await;
    let (mut extra, dropped) = kind.hop_by_hop();
    extra.push(("X-Forwarded-For", "203.0.113.9"));
    extra.push(("X-Keep-Me", "1"));
    let target = if kind == Arrival::WebSocket {
        "/ws"
    } else {
        "/fwd"
    };

    let mut conn = Conn::open(kind, proxy.addr()).await;
    let answer = conn.request("shop.example", target, &extra).await;
    let expected = if kind == Arrival::WebSocket { 101 } else { 200 };
    assert_eq!(answer.status, expected, "{answer:?}");

    let seen = blue.backend.last_seen();
    let field = |name: &str| {
        seen.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        field("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1"),
        "appended to"
    );
    assert_eq!(field("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(field("x-forwarded-host").as_deref(), Some("shop.example"));
    assert_eq!(field("via").as_deref(), Some(kind.via_upstream()));
    assert_eq!(field("x-keep-me").as_deref(), Some("1"));
    for name in dropped {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the upstream: {:?}",
            seen.headers
        );
    }
    if kind == Arrival::WebSocket {
        // The upgrade itself is what the upstream must see of `Connection`.
        assert_eq!(field("connection").as_deref(), Some("upgrade"));
        assert_eq!(field("upgrade").as_deref(), Some("websocket"));
        assert_eq!(answer.text(), PING, "the echo");
        return;
    }
    assert_eq!(field("connection"), None, "{:?}", seen.headers);
    // And the upstream's own hop-by-hop fields stop at the proxy too.
    for name in ["x-internal", "keep-alive"] {
        assert!(
            !answer.headers.contains_key(name),
            "{name} reached the client: {answer:?}"
        );
    }
    assert!(
        answer
            .headers
            .get_all("connection")
            .iter()
            .all(|v| !v.to_str().unwrap().contains("x-internal")),
        "{answer:?}"
    );
    assert_eq!(answer.header("x-kept"), Some("yes"), "{answer:?}");
}

// ---------------------------------------------------------------------------
// (3) A refusing endpoint is retried on the next one

#[tokio::test]
async fn a_refusing_endpoint_is_retried_on_the_next_one() {
    each_arrival("retry", &Arrival::EXCHANGES, |kind| Box::pin(retry(kind))).await;
}

async fn retry(kind: Arrival) {
    let blue = upstream("blue").await;
    // Round-robin starts at the first endpoint: the refusing one.
    let proxy = Proxy::start(&one_service(|s| {
        s.retries(2)
            .health_none()
            .pool("blue", 100, &[refusing(), blue.backend.addr])
    }))
    .await;
    let mut conn = Conn::open(kind, proxy.addr()).await;
    let answer = conn.request("x", "/retried", &[]).await;
    assert_eq!((answer.status, answer.pool()), (200, "blue"), "{answer:?}");
    // The body went up whole, once: nothing had been sent to the first.
    assert_eq!(answer.text(), kind.echo("/retried"), "{answer:?}");
    assert_eq!(answer.interim, expected_interim(kind), "{answer:?}");
    assert_eq!(blue.backend.hits(), 1);
    assert_eq!(
        sample(
            &proxy,
            "cutover_retries_total{pool=\"blue\",service=\"hello\"}"
        ),
        Some(1.0),
        "the first attempt did not go to the refusing endpoint"
    );
    conn.assert_goes_on_as_said(&answer, "x", "after a retried request")
        .await;
}

// ---------------------------------------------------------------------------
// (4) 502 when no endpoint can be reached, 503 when none is healthy

#[tokio::test]
async fn no_reachable_endpoint_is_a_502_in_the_clients_protocol() {
    each_arrival("502", &Arrival::EXCHANGES, |kind| {
        Box::pin(unreachable(kind))
    })
    .await;
}

async fn unreachable(kind: Arrival) {
    let proxy = Proxy::start(&one_service(|s| {
        s.failover(false)
            .health_none()
            .pool("blue", 100, &[refusing(), refusing()])
    }))
    .await;
    let mut conn = Conn::open(kind, proxy.addr()).await;
    let answer = conn.request("x", "/", &[]).await;
    answer.assert_proxy_made(502, "no endpoint reachable");
    assert!(answer.text().contains("could not be reached"), "{answer:?}");
    // A body the proxy will not forward is not asked for.
    assert_eq!(answer.interim, Vec::<u16>::new(), "{answer:?}");
    conn.assert_goes_on_as_said(&answer, "x", "after a 502")
        .await;
}

#[tokio::test]
async fn no_healthy_endpoint_is_a_503_in_the_clients_protocol() {
    each_arrival("503", &Arrival::EXCHANGES, |kind| Box::pin(unhealthy(kind))).await;
}

async fn unhealthy(kind: Arrival) {
    let proxy = Proxy::start(&one_service(|s| {
        s.health(|h| {
            h.tcp()
                .interval("50ms")
                .timeout("500ms")
                .healthy_threshold(2)
                .unhealthy_threshold(2)
        })
        .pool("blue", 100, &[refusing()])
    }))
    .await;
    let snapshot = proxy.handle.snapshot();
    let health = snapshot.services[0].pools[0].endpoints[0].health.clone();
    until("the endpoint is down", || !health.healthy()).await;

    let mut conn = Conn::open(kind, proxy.addr()).await;
    let answer = conn.request("x", "/", &[]).await;
    answer.assert_proxy_made(503, "no endpoint healthy");
    assert!(answer.text().contains("no healthy upstream"), "{answer:?}");
    assert_eq!(answer.interim, Vec::<u16>::new(), "{answer:?}");
    conn.assert_goes_on_as_said(&answer, "x", "after a 503")
        .await;
}

// ---------------------------------------------------------------------------
// (5) 504 after request_timeout

#[tokio::test]
async fn a_slow_upstream_is_a_504_after_request_timeout() {
    each_arrival("504", &Arrival::EXCHANGES, |kind| Box::pin(slow(kind))).await;
}

async fn slow(kind: Arrival) {
    let blue = upstream("blue").await;
    let proxy = Proxy::start(&one_service(|s| {
        s.request_timeout(&format!("{}ms", REQUEST_TIMEOUT.as_millis()))
            .health_none()
            .pool("blue", 100, &[blue.backend.addr])
    }))
    .await;
    let mut conn = Conn::open(kind, proxy.addr()).await;
    let started = Instant::now();
    let answer = conn.request("x", "/slow", &[]).await;
    let took = started.elapsed();
    answer.assert_proxy_made(504, "a slow upstream");
    assert!(
        took >= REQUEST_TIMEOUT - Duration::from_millis(50) && took < SLOW - Duration::from_secs(1),
        "the 504 came after {took:?}"
    );
    // The request did go upstream, so its body was asked for.
    assert_eq!(answer.interim, expected_interim(kind), "{answer:?}");
    assert_eq!(blue.backend.hits(), 1);
    conn.assert_goes_on_as_said(&answer, "x", "after a 504")
        .await;
}

// ---------------------------------------------------------------------------
// (6) 404 for an unknown Host

#[tokio::test]
async fn an_unknown_host_is_a_404() {
    each_arrival("404", &Arrival::ALL, |kind| Box::pin(unknown_host(kind))).await;
}

async fn unknown_host(kind: Arrival) {
    let shop = upstream("shop").await;
    let config = Config::new()
        .limits(|l| l.header_read_timeout("2s"))
        .listener("web")
        .service("shop", |s| {
            s.hosts(["shop.example"])
                .health_none()
                .pool("blue", 100, &[shop.backend.addr])
        });
    let proxy = Proxy::start(&config.toml()).await;
    let target = if kind == Arrival::WebSocket {
        "/ws"
    } else {
        "/"
    };
    let mut conn = Conn::open(kind, proxy.addr()).await;
    let answer = conn.request("nope.example", target, &[]).await;
    assert_eq!(shop.backend.hits(), 0, "the upstream saw the request");
    if kind == Arrival::WebSocket {
        // The handshake library keeps the status and what body it read.
        assert_eq!(answer.status, 404, "{answer:?}");
        assert!(
            answer.body.is_empty() || answer.text().starts_with("404 Not Found: "),
            "{answer:?}"
        );
        return;
    }
    answer.assert_proxy_made(404, "an unknown host");
    assert!(answer.text().contains("no service for this host"));
    assert_eq!(answer.interim, Vec::<u16>::new(), "{answer:?}");
    conn.assert_goes_on_as_said(&answer, "shop.example", "after a 404")
        .await;
}

// ---------------------------------------------------------------------------
// (7) A weight switch lets work in flight finish

#[tokio::test]
async fn a_weight_switch_lets_a_request_in_flight_finish_and_sends_new_ones_to_green() {
    each_arrival("drain", &Arrival::EXCHANGES, |kind| Box::pin(drain(kind))).await;
}

async fn drain(kind: Arrival) {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    let config = |wb, wg| {
        support::blue_green_with(&blue.backend, &green.backend, wb, wg, |s| {
            s.drain_timeout("10s").health_none()
        })
        .toml()
    };
    let proxy = Proxy::start(&config(100, 0)).await;

    let mut held = Conn::open(kind, proxy.addr()).await;
    let in_flight = tokio::spawn(async move {
        let answer = held.request("x", "/held", &[]).await;
        (held, answer)
    });
    until("the request reaches blue", || blue.backend.hits() == 1).await;

    proxy.rewrite(&config(0, 100));
    proxy.wait_generation(2).await;
    let mut fresh = Conn::open(kind, proxy.addr()).await;
    let answer = fresh.request("x", "/new", &[]).await;
    assert_eq!((answer.status, answer.pool()), (200, "green"), "{answer:?}");
    assert_eq!(answer.text(), kind.echo("/new"));

    blue.gate.notify_one();
    let (mut held, answer) = tokio::time::timeout(LIMIT, in_flight)
        .await
        .expect("the request in flight finishes")
        .expect("the request in flight");
    assert_eq!((answer.status, answer.pool()), (200, "blue"), "{answer:?}");
    assert_eq!(answer.text(), kind.echo("/held"), "{answer:?}");
    assert_eq!(answer.interim, expected_interim(kind), "{answer:?}");
    // Its connection follows the new weights from its next request on.
    if kind.keeps_alive() {
        let answer = held.request("x", "/after", &[]).await;
        assert_eq!((answer.status, answer.pool()), (200, "green"), "{answer:?}");
    }
    assert_eq!(
        blue.backend.hits(),
        1,
        "blue took a request after the switch"
    );
}
